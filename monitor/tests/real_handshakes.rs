//! Unusual but legitimate handshakes made by the kernel's own TCP stacks in the lab, not
//! crafted: TCP Fast Open (data in the SYN, RFC 7413) and a simultaneous open (RFC 9293 3.5,
//! both sides connect and their SYNs cross). The handshake tracker (both directions, in the
//! server namespace) must count the TFO SYNs apart, as the kernels' own counters do, follow
//! the simultaneous open to its end, and flag nothing; on the client's side, the SYN-ACK
//! origin check must score every answer to its Fast Open SYNs (which ack the data too).
//! Needs root; every lab namespace is removed when its test ends.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    thread,
    time::Duration,
};

use common::{
    capture::Capture,
    daemon::{Daemon, MonitoredLab, read_json_lines},
    lab::{ip, netstat, send_crafted, set_neighbour, write_sysctl},
    prometheus::series_value,
    wait_for,
};
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::TcpFastOpenConnect,
    },
};
use seqwatch::{
    lab::{Crafter, Lab, LabOptions, flags::SYN},
    sock_diag::{self, state},
};

/// Not a TLS port: the echo server speaks plain bytes.
const TFO_PORT: u16 = 8088;
const TFO_CONNECTIONS: usize = 20;
/// The ports of the simultaneous open: neither side listens.
const SERVER_SIDE_PORT: u16 = 7001;
const CLIENT_SIDE_PORT: u16 = 7002;

/// Every anomaly series and event-log line: there must be none.
fn assert_no_anomaly(scene: &MonitoredLab) {
    // The anomaly reader drains its ring buffer, and mirrors the counters, each second.
    thread::sleep(Duration::from_millis(1500));
    let metrics = scene.daemon.metrics(&scene.lab);
    let anomalies: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("seqwatch_handshake_anomalies_total{"))
        .collect();
    assert_eq!(
        anomalies,
        Vec::<&str>::new(),
        "{:#?}",
        read_json_lines(&scene.events)
    );
    assert_eq!(
        read_json_lines(&scene.events),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn fast_open_syns_with_data_are_counted_apart_and_not_flagged() {
    let scene = MonitoredLab::start();
    let lab = &scene.lab;
    let sent_with_data = fast_open_exchanges(lab);
    // The kernel counters are mirrored once a second.
    let tfo_syns =
        || series_value(&scene.daemon.metrics(lab), "seqwatch_tfo_syns_total").unwrap_or(-1.0);
    wait_for(Duration::from_secs(5), || {
        tfo_syns() == sent_with_data as f64
    });
    assert_eq!(
        tfo_syns(),
        sent_with_data as f64,
        "every SYN with data and a cookie, and nothing else"
    );
    assert_no_anomaly(&scene);
    scene.stop();
}

/// The same seen from the client, sampling ingress: the server's answers to the Fast Open SYNs
/// ack their data too, and are still answers to SYNs that left: each is scored, none refused.
#[test]
fn fast_open_answers_are_scored_on_the_clients_side() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let client_if = lab.client_if.clone();
    let flags = [
        "--interface",
        &client_if,
        "--direction",
        "ingress",
        "--event-log",
        events.to_str().unwrap(),
    ];
    let mut daemon = Daemon::start(&lab, &lab.client_ns, dir.path(), &flags);
    daemon.wait_attached(&lab, &client_if, "ingress");
    fast_open_exchanges(&lab);
    let samples = daemon.samples(TFO_CONNECTIONS);
    assert_eq!(samples.len(), TFO_CONNECTIONS, "one per connection");
    // The anomaly reader drains its ring buffer, and mirrors the counters, each second.
    thread::sleep(Duration::from_millis(1500));
    let unsolicited = "seqwatch_synacks_not_sampled_total{reason=\"unsolicited\"}";
    assert_eq!(series_value(&daemon.metrics(&lab), unsolicited), Some(0.0));
    assert_eq!(read_json_lines(&events), Vec::<serde_json::Value>::new());
    daemon.stop();
}

/// `TFO_CONNECTIONS` Fast Open requests from the client to an echo server (Fast Open on in
/// both namespaces); returns how many SYNs carried data, which the server took.
fn fast_open_exchanges(lab: &Lab) -> u64 {
    for ns in [&lab.client_ns, &lab.server_ns] {
        // Client and server TFO on, in the lab's namespaces only.
        write_sysctl(lab, ns, "net.ipv4.tcp_fastopen", "3");
    }
    let server = SocketAddr::new(lab.server_v4.into(), TFO_PORT);
    let listener = lab.run_in(&lab.server_ns, || fast_open_listener(server));
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 5];
            if stream.read_exact(&mut request).is_ok() {
                let _ = stream.write_all(&request);
            }
        }
    });
    lab.run_in(&lab.client_ns, || {
        for i in 0..TFO_CONNECTIONS {
            let echoed = fast_open_request(server, b"hello")
                .unwrap_or_else(|err| panic!("TFO connection {i}: {err}"));
            assert_eq!(&echoed, b"hello");
        }
    });
    let client = netstat(lab, &lab.client_ns);
    let server_counters = netstat(lab, &lab.server_ns);
    // The first connection only fetches a cookie; the others carry data in their SYN.
    let sent_with_data = client["TcpExtTCPFastOpenActive"];
    assert_eq!(sent_with_data, TFO_CONNECTIONS as u64 - 1, "{client:?}");
    assert_eq!(server_counters["TcpExtTCPFastOpenPassive"], sent_with_data);
    sent_with_data
}

/// Both sides connect() from bound sockets and the SYNs cross on the wire, every time: the
/// client's frames are held (see [`ClientFramesHeld`]) while both connect, so the server's SYN
/// finds the client in SYN-SENT, and the client's SYN, released after it, finds the server in
/// SYN-SENT too. Each side answers with a SYN-ACK of its own ISN, and both end ESTABLISHED.
#[test]
fn a_real_simultaneous_open_is_followed_and_not_flagged() {
    let scene = MonitoredLab::start();
    let lab = &scene.lab;
    let server_side = SocketAddrV4::new(lab.server_v4, SERVER_SIDE_PORT);
    let client_side = SocketAddrV4::new(lab.client_v4, CLIENT_SIDE_PORT);
    let dir = tempfile::tempdir().unwrap();
    let filter = format!("tcp port {SERVER_SIDE_PORT}");
    let capture = Capture::start(
        lab,
        &lab.server_ns,
        &lab.server_if,
        &filter,
        dir.path().join("simultaneous-open.pcap"),
    );
    let crafter = Crafter::client_to_server(lab).unwrap();

    let held = ClientFramesHeld::start(lab, &crafter);
    let client = lab.run_in(&lab.client_ns, || start_connect(client_side, server_side));
    let server = lab.run_in(&lab.server_ns, || start_connect(server_side, client_side));
    // The server's SYN met the client in SYN-SENT: it answered with a SYN-ACK, held too.
    wait_for_state(lab, &lab.client_ns, client_side, state::SYN_RECV);
    held.release();
    wait_for_state(lab, &lab.client_ns, client_side, state::ESTABLISHED);
    wait_for_state(lab, &lab.server_ns, server_side, state::ESTABLISHED);
    let (mut client, mut server) = (blocking_stream(client), blocking_stream(server));
    exchange(&mut client, &mut server, b"ping");
    exchange(&mut server, &mut client, b"pong");

    let synacks = capture.stop();
    let [
        (from, to, isn, ack),
        (back_from, back_to, back_isn, back_ack),
    ] = synacks[..]
    else {
        panic!("one SYN-ACK each way, not {synacks:?}");
    };
    assert_eq!((from, to), (back_to, back_from), "{synacks:?}");
    assert_eq!(
        (ack, back_ack),
        (back_isn.wrapping_add(1), isn.wrapping_add(1)),
        "each SYN-ACK acks the other side's SYN: {synacks:?}"
    );
    assert_no_anomaly(&scene);

    // The tracker followed it to the end: a SYN on the same 4-tuple now hits an established
    // connection. (Had it missed the handshake, that SYN would open a new one, silently.)
    send_crafted(
        &crafter,
        (client_side.into(), server_side.into()),
        SYN,
        (424_242, 0),
        &[],
    );
    let mut events = Vec::new();
    wait_for(Duration::from_secs(5), || {
        events = read_json_lines(&scene.events);
        !events.is_empty()
    });
    let kinds: Vec<_> = events.iter().map(|e| (&e["kind"], &e["source"])).collect();
    assert_eq!(
        kinds,
        [(
            &serde_json::json!("syn_on_established"),
            &serde_json::json!(client_side.to_string())
        )]
    );
    drop((client, server));
    scene.stop();
}

/// Holds every frame the client namespace sends to the server, in order, until released: the
/// server ignores ARP, and the client has no entry for it, so the client's frames wait in its
/// neighbour queue (for up to 3 s of ARP probes; a hold lasts milliseconds). The server keeps
/// reaching the client through a permanent entry.
struct ClientFramesHeld<'a> {
    lab: &'a Lab,
    server_mac: [u8; 6],
}

impl<'a> ClientFramesHeld<'a> {
    fn start(lab: &'a Lab, crafter: &Crafter) -> Self {
        let arp_ignore = format!("net.ipv4.conf.{}.arp_ignore", lab.server_if);
        // 8: answer no ARP request at all.
        write_sysctl(lab, &lab.server_ns, &arp_ignore, "8");
        let client = (lab.client_v4, crafter.source_mac());
        set_neighbour(lab, &lab.server_ns, client, &lab.server_if);
        ip(
            lab,
            &lab.client_ns,
            &["neigh", "flush", "dev", &lab.client_if],
        );
        ClientFramesHeld {
            lab,
            server_mac: crafter.destination_mac(),
        }
    }

    /// The client learns the server's MAC address and sends what it held.
    fn release(self) {
        let server = (self.lab.server_v4, self.server_mac);
        set_neighbour(self.lab, &self.lab.client_ns, server, &self.lab.client_if);
    }
}

/// A non-blocking connect() from a bound socket: the SYN is on its way when it returns.
fn start_connect(local: SocketAddrV4, remote: SocketAddrV4) -> OwnedFd {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .expect("a TCP socket");
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).expect("bind");
    assert_eq!(
        connect(fd.as_raw_fd(), &SockaddrIn::from(remote)),
        Err(Errno::EINPROGRESS)
    );
    fd
}

/// Waits (up to 5 s) until the kernel of `ns` reports the socket bound to `local` in `want`.
fn wait_for_state(lab: &Lab, ns: &str, local: SocketAddrV4, want: u8) {
    let current = || {
        let sockets = lab.run_in(ns, sock_diag::dump_tcp).expect("sock_diag dump");
        let local = SocketAddr::V4(local);
        sockets
            .into_iter()
            .find(|s| s.local == local)
            .map(|s| s.state)
    };
    wait_for(Duration::from_secs(5), || current() == Some(want));
    assert_eq!(current(), Some(want), "the state of {local} in {ns}");
}

fn blocking_stream(fd: OwnedFd) -> TcpStream {
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// `message` from one end to the other.
fn exchange(from: &mut TcpStream, to: &mut TcpStream, message: &[u8]) {
    from.write_all(message).unwrap();
    let mut received = vec![0u8; message.len()];
    to.read_exact(&mut received).unwrap();
    assert_eq!(received, message);
}

/// A listener that accepts data in SYNs (a Fast Open queue of 16).
fn fast_open_listener(addr: SocketAddr) -> TcpListener {
    let listener = TcpListener::bind(addr).expect("bind the TFO listener");
    let queue: libc::c_int = 16;
    // SAFETY: a valid socket and a c_int option of the right size.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&raw const queue).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "TCP_FASTOPEN: {}", std::io::Error::last_os_error());
    listener
}

/// Sends `request` with TCP_FASTOPEN_CONNECT (in the SYN once a cookie is cached) and reads
/// as many bytes back.
fn fast_open_request(server: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let SocketAddr::V4(server) = server else {
        panic!("an IPv4 server")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, TcpFastOpenConnect, &true)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(server))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    let mut reply = vec![0u8; request.len()];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}
