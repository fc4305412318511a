//! The handshake anomaly engine against the real kernel: the real daemon (both directions) in
//! the server namespace of a lab, a real Linux listener there, and crafted segments from the
//! client namespace. Each anomaly kind is counted exactly once, under the right service, and
//! logged; ordinary connections (IPv4, IPv6, and under packet loss) raise none. Neither do
//! unusual but legitimate handshakes made by the kernels' own TCP stacks, not crafted: TCP Fast
//! Open (data in the SYN, RFC 7413), whose SYNs are counted apart as the kernels' own counters
//! count them, and a simultaneous open (RFC 9293 3.5, both sides connect and their SYNs cross),
//! which the tracker follows to its end. Needs root; every lab namespace is removed when its
//! test ends.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::{
    capture::{Capture, CapturedSegment},
    daemon::{MonitoredLab, read_json_lines, sampled_server_isn},
    lab::{
        backlog_listener, connect_many, fast_open_exchanges, ip, listen, listen_and_hold, netstat,
        route_spoofed, send_crafted, set_neighbour, write_sysctl,
    },
    prometheus::series_value,
    wait_for,
};
use nix::{
    errno::Errno,
    sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket},
};
use seqwatch::{
    host::sock_diag::{self, state},
    lab::{Crafter, Lab, Segment, flags::*},
};
use seqwatch_common::handshake::AnomalyKind;

/// The real listener; it keeps every connection open, so a completed handshake stays so.
const LISTENER_PORT: u16 = 8080;
/// Nothing listens here: the stateless cases need no listener.
const CLOSED_PORT: u16 = 8081;
/// A spoofed client address the server reaches through a static neighbour entry (the client
/// namespace drops what is sent to it, so it never answers with RSTs of its own).
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 77);
/// The ports of the simultaneous open: neither side listens.
const SERVER_SIDE_PORT: u16 = 7001;
const CLIENT_SIDE_PORT: u16 = 7002;
/// A spoofed client address with no neighbour entry: the server's SYN-ACKs to it wait for ARP
/// and never leave, so its handshakes stay at "SYN seen".
const UNANSWERED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 88);

/// The monitored lab, with crafters on both sides.
struct Scene {
    monitored: MonitoredLab,
    crafter: Crafter,
    server_crafter: Crafter,
}

impl std::ops::Deref for Scene {
    type Target = MonitoredLab;

    fn deref(&self) -> &MonitoredLab {
        &self.monitored
    }
}

impl Scene {
    fn start() -> Scene {
        let monitored = MonitoredLab::start();
        let lab = &monitored.lab;
        let crafter = Crafter::client_to_server(lab).unwrap();
        let server_crafter = Crafter::server_to_client(lab).unwrap();
        route_spoofed(lab, SPOOFED, Some(crafter.source_mac()));
        route_spoofed(lab, UNANSWERED, None);
        Scene {
            monitored,
            crafter,
            server_crafter,
        }
    }

    fn listener(&self) -> SocketAddr {
        SocketAddr::new(self.lab.server_v4.into(), LISTENER_PORT)
    }

    /// Sends one segment from `client` to `server`.
    fn send(&self, client: SocketAddr, server: SocketAddr, flags: u8, seq: u32, ack: u32) {
        self.send_data(client, server, flags, seq, ack, &[]);
    }

    fn send_data(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) {
        send_crafted(&self.crafter, (client, server), flags, (seq, ack), payload);
    }

    /// The ISN of the server's SYN-ACK to `client`, from the daemon's own sample log.
    fn server_isn(&self, client: SocketAddr) -> u32 {
        sampled_server_isn(&self.daemon, client).unwrap_or_else(|| {
            panic!(
                "no SYN-ACK to {client} sampled; anomalies {:?}\n{}",
                self.anomaly_counts(),
                self.daemon.log()
            )
        })
    }

    /// Every `seqwatch_handshake_anomalies_total` series as (kind, service) → value.
    fn anomaly_counts(&self) -> BTreeMap<(String, String), f64> {
        let metrics = self.daemon.metrics(&self.lab);
        metrics
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("seqwatch_handshake_anomalies_total{")?;
                let (labels, value) = rest.rsplit_once("} ")?;
                let label = |name: &str| {
                    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                    let end = labels[start..].find('"')? + start;
                    Some(labels[start..end].to_owned())
                };
                Some(((label("kind")?, label("service")?), value.parse().ok()?))
            })
            .collect()
    }
}

fn client(address: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(address), port)
}

#[test]
fn each_anomaly_kind_is_counted_once_with_its_service() {
    let scene = Scene::start();
    listen_and_hold(&scene.lab, scene.listener());
    let listener = scene.listener();
    let closed = SocketAddr::new(scene.lab.server_v4.into(), CLOSED_PORT);
    let mut expected: Vec<(AnomalyKind, SocketAddr)> = Vec::new();

    // Stateless: illegal flag sets and a SYN with data, at a port nobody listens on.
    let stateless = [
        (SYN | FIN, AnomalyKind::SynFin),
        (SYN | RST, AnomalyKind::SynRst),
        (0, AnomalyKind::NullFlags),
        (FIN | PSH | URG, AnomalyKind::XmasFlags),
        (FIN, AnomalyKind::InvalidFlags),
    ];
    for (port, (flags, kind)) in (41_000..).zip(stateless) {
        scene.send(client(SPOOFED, port), closed, flags, 1, 0);
        expected.push((kind, closed));
    }
    scene.send_data(client(SPOOFED, 41_100), closed, SYN, 1, 0, b"early");
    expected.push((AnomalyKind::SynWithData, closed));

    // The third packet, against the listener's real SYN-ACK (its ISN from the sample log).
    let third_packets = [
        (42_001, true, false, AnomalyKind::HandshakeAckWrongAck),
        (42_002, false, true, AnomalyKind::HandshakeAckWrongSeq),
        (
            42_003,
            false,
            false,
            AnomalyKind::HandshakeAckWrongSeqAndAck,
        ),
    ];
    for (port, right_seq, right_ack, kind) in third_packets {
        let from = client(SPOOFED, port);
        scene.send(from, listener, SYN, 1000, 0);
        let isn = scene.server_isn(from);
        let seq = if right_seq { 1001 } else { 1001 + (1 << 30) };
        let ack = if right_ack {
            isn.wrapping_add(1)
        } else {
            isn.wrapping_add(1 << 30)
        };
        scene.send(from, listener, ACK, seq, ack);
        expected.push((kind, listener));
    }

    // Handshakes the server never answered (its SYN-ACK waits for ARP).
    let unanswered = client(UNANSWERED, 43_001);
    scene.send(unanswered, listener, SYN, 5000, 0);
    scene.send_data(unanswered, listener, ACK | PSH, 5001, 1, b"early");
    scene.send(unanswered, listener, ACK, 5001, 1);
    scene.send(unanswered, listener, FIN | ACK, 5001, 1);
    expected.extend([
        (AnomalyKind::DataBeforeHandshake, listener),
        (AnomalyKind::AckWithoutSynAck, listener),
        (AnomalyKind::FinBeforeHandshake, listener),
    ]);

    // Retransmissions with other numbers, a SYN-ACK to the listener, a blind RST.
    let from = client(SPOOFED, 44_001);
    scene.send(from, listener, SYN, 7000, 0);
    scene.server_isn(from);
    // Outside the window: the kernel answers with an ACK and keeps its request (inside, it
    // would reset it, and the tracker would forget the handshake with it).
    scene.send(from, listener, SYN, 7000 + (1 << 30), 0);
    expected.push((AnomalyKind::SynRetransmitDifferentIsn, listener));
    let synack = |seq, ack| Segment {
        from: listener,
        to: from,
        flags: SYN | ACK,
        seq,
        ack,
        options: &[],
        payload: &[],
    };
    let isn = scene.server_isn(from);
    let other_isn = isn.wrapping_add(12_345);
    scene
        .server_crafter
        .send_segment(&synack(other_isn, 7001))
        .unwrap();
    expected.push((AnomalyKind::SynAckRetransmitDifferentSeq, listener));
    scene
        .server_crafter
        .send_segment(&synack(isn, 7778))
        .unwrap();
    expected.push((AnomalyKind::SynAckRetransmitDifferentAck, listener));
    scene.send(from, listener, SYN | ACK, 99, isn.wrapping_add(1));
    expected.push((AnomalyKind::SynAckToListener, listener));
    // A SYN-ACK to a port nobody listens on answering no SYN: its service is its sender.
    let sender = client(SPOOFED, 44_002);
    scene.send(sender, closed, SYN | ACK, 99, 1);
    expected.push((AnomalyKind::UnsolicitedSynAck, sender));
    scene.send(from, listener, RST, 7001 + (1 << 20), 0);
    expected.push((AnomalyKind::RstOutOfWindow, listener));

    // A completed handshake, then a SYN on the same 4-tuple.
    let from = client(SPOOFED, 45_001);
    scene.send(from, listener, SYN, 9000, 0);
    let isn = scene.server_isn(from);
    scene.send(from, listener, ACK, 9001, isn.wrapping_add(1));
    scene.send(from, listener, SYN, 424_242, 0);
    expected.push((AnomalyKind::SynOnEstablished, listener));

    let kinds: Vec<_> = expected.iter().map(|(kind, _)| *kind).collect();
    let mut every_kind = kinds.clone();
    every_kind.sort();
    assert_eq!(
        every_kind,
        AnomalyKind::ALL,
        "the test covers every kind once"
    );
    // Nothing listens on the closed port, and the unsolicited SYN-ACK's sender made no
    // handshakes: services without evidence count as `other`.
    let label = |service: &SocketAddr| {
        if *service == closed || *service == sender {
            "other".to_owned()
        } else {
            service.to_string()
        }
    };
    let want: BTreeMap<(String, String), f64> = expected
        .iter()
        .map(|(kind, service)| ((kind.as_str().to_owned(), label(service)), 1.0))
        .collect();
    let mut counts = BTreeMap::new();
    wait_for(Duration::from_secs(10), || {
        counts = scene.anomaly_counts();
        counts.len() >= want.len()
    });
    // Late extra events would show up within a second, and must not.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(scene.anomaly_counts(), want, "\n{}", scene.daemon.log());

    assert_event_log(&scene.events, &kinds);
    let metrics = scene.daemon.metrics(&scene.lab);
    assert_eq!(
        series_value(&metrics, "seqwatch_anomaly_events_dropped_total"),
        Some(0.0)
    );
    scene.monitored.stop();
}

/// Our RST during a handshake to the listener, and then the client's SYN again: the tracker
/// must keep its state exactly when the kernel keeps its request (the capture shows what the
/// kernel did, its socket table that it accepted the handshakes).
/// - An unacceptable third packet gets a RST without ACK, and the request stays: the same SYN
///   again is answered with the same SYN-ACK, and the right third packet completes it.
/// - A SYN with another ISN inside the window gets a RST with ACK (an "embryonic reset"), and
///   the request is dropped: the next SYN is a new handshake, with a new ISN, and must not be
///   judged against the old one.
#[test]
fn after_our_rst_a_handshake_is_kept_exactly_when_the_kernel_keeps_it() {
    let scene = Scene::start();
    let listener = scene.listener();
    listen_and_hold(&scene.lab, listener);
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        &scene.lab,
        &scene.lab.server_ns,
        &scene.lab.server_if,
        &format!("tcp and host {SPOOFED}"),
        dir.path().join("rst.pcap"),
    );

    let kept = client(SPOOFED, 46_001);
    scene.send(kept, listener, SYN, 1000, 0);
    let isn = scene.server_isn(kept);
    let wrong_ack = isn.wrapping_add(1 << 30);
    scene.send(kept, listener, ACK, 1001, wrong_ack);
    scene.send(kept, listener, SYN, 1000, 0);
    scene.send(kept, listener, ACK, 1001, isn.wrapping_add(1));

    let reset = client(SPOOFED, 46_002);
    scene.send(reset, listener, SYN, 2000, 0);
    let first_isn = scene.server_isn(reset);
    scene.send(reset, listener, SYN, 2100, 0);
    scene.send(reset, listener, SYN, 90_000, 0);
    let second_isn = synack_isn(&scene, reset, 90_001);
    scene.send(reset, listener, ACK, 90_001, second_isn.wrapping_add(1));

    let established = |remote: SocketAddr| {
        let sockets = scene.lab.run_in(&scene.lab.server_ns, sock_diag::dump_tcp);
        sockets
            .unwrap()
            .iter()
            .any(|s| s.remote == remote && s.state == state::ESTABLISHED)
    };
    wait_for(Duration::from_secs(5), || {
        established(kept) && established(reset)
    });
    assert!(established(kept) && established(reset), "both accepted");
    let segments = capture.stop_segments();
    let replies = |to: SocketAddr| -> Vec<(u8, u32, u32)> {
        let from_listener = |s: &&CapturedSegment| s.from == listener && s.to == to;
        let replies = segments.iter().filter(from_listener);
        replies.map(|s| (s.flags, s.seq, s.ack)).collect()
    };
    let kept_replies = replies(kept);
    let kept_rst = kept_replies.iter().position(|r| r.0 & RST != 0).unwrap();
    assert_eq!(
        kept_replies[kept_rst],
        (RST, wrong_ack, 0),
        "{kept_replies:?}"
    );
    assert_eq!(
        kept_replies.get(kept_rst + 1),
        Some(&(SYN | ACK, isn, 1001)),
        "the request stayed: {kept_replies:?}"
    );
    let reset_replies = replies(reset);
    let reset_rst = reset_replies.iter().position(|r| r.0 & RST != 0).unwrap();
    assert_eq!(
        reset_replies[reset_rst..=reset_rst + 1],
        [(RST | ACK, 0, 2101), (SYN | ACK, second_isn, 90_001)],
        "{reset_replies:?}"
    );
    assert_ne!(second_isn, first_isn, "a new request");

    let want = BTreeMap::from([
        (
            ("handshake_ack_wrong_ack".to_owned(), listener.to_string()),
            1.0,
        ),
        (
            (
                "syn_retransmit_different_isn".to_owned(),
                listener.to_string(),
            ),
            1.0,
        ),
    ]);
    wait_for(Duration::from_secs(5), || scene.anomaly_counts().len() >= 2);
    // Late extra events would show up within a second, and must not.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        scene.anomaly_counts(),
        want,
        "{:#?}",
        read_json_lines(&scene.events)
    );
    scene.monitored.stop();
}

/// The ISN of the server's SYN-ACK to `client` that acks `ack`, from the daemon's sample log.
fn synack_isn(scene: &Scene, client: SocketAddr, ack: u32) -> u32 {
    let mut isn = None;
    wait_for(Duration::from_secs(10), || {
        isn = read_json_lines(&scene.daemon.sample_log)
            .iter()
            .find(|s| s["client"] == client.to_string() && s["ack"] == ack)
            .map(|s| s["seq"].as_u64().unwrap() as u32);
        isn.is_some()
    });
    isn.unwrap_or_else(|| panic!("no SYN-ACK to {client} acking {ack} sampled"))
}

/// One JSON line per anomaly, with the fields a SIEM needs.
fn assert_event_log(path: &Path, kinds: &[AnomalyKind]) {
    let mut lines = Vec::new();
    wait_for(Duration::from_secs(5), || {
        lines = read_json_lines(path);
        lines.len() >= kinds.len()
    });
    let mut logged: Vec<String> = lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
    logged.sort();
    want.sort();
    assert_eq!(logged, want);
    let wrong_ack = lines
        .iter()
        .find(|l| l["kind"] == "handshake_ack_wrong_ack")
        .unwrap();
    assert_eq!(wrong_ack["source"], "10.199.0.77:42001");
    assert_eq!(wrong_ack["destination"], "10.199.0.1:8080");
    assert_eq!(wrong_ack["flags"], "A");
    assert_eq!(wrong_ack["seq"], 1001);
    assert_eq!(wrong_ack["expected_seq"], 1001);
    // The guess was the server's ISN + 2^30; the expected ack is the ISN + 1.
    let guess = wrong_ack["ack"].as_u64().unwrap() as u32;
    let expected = wrong_ack["expected_ack"].as_u64().unwrap() as u32;
    assert_eq!(expected, guess.wrapping_sub(1 << 30).wrapping_add(1));
    assert!(wrong_ack["time"].as_str().unwrap().ends_with('Z'));
}

/// Ordinary traffic: many connections over IPv4 and IPv6, then a burst at a listener whose
/// accept queue overflows (dropped SYNs and third ACKs, so SYN and SYN-ACK retransmissions;
/// this kernel has no netem): no anomaly at all.
#[test]
fn normal_connections_raise_no_anomaly() {
    const IPV4_CONNECTIONS: usize = 10_000;
    const IPV6_CONNECTIONS: usize = 1_000;
    const BURST: usize = 30;
    let scene = Scene::start();
    let v4 = SocketAddr::new(scene.lab.server_v4.into(), LISTENER_PORT);
    let v6 = SocketAddr::new(scene.lab.server_v6.into(), LISTENER_PORT);
    listen(&scene.lab, &scene.lab.server_ns, v4);
    listen(&scene.lab, &scene.lab.server_ns, v6);
    let started = Instant::now();
    connect_many(&scene.lab, &scene.lab.client_ns, v4, IPV4_CONNECTIONS);
    connect_many(&scene.lab, &scene.lab.client_ns, v6, IPV6_CONNECTIONS);
    eprintln!(
        "{} connections in {:?}",
        IPV4_CONNECTIONS + IPV6_CONNECTIONS,
        started.elapsed()
    );

    let overflowing = SocketAddr::new(scene.lab.server_v4.into(), CLOSED_PORT);
    slow_listener(&scene.lab, overflowing, Duration::from_millis(1500));
    scene.lab.run_in(&scene.lab.client_ns, || {
        thread::scope(|scope| {
            for i in 0..BURST {
                scope.spawn(move || {
                    // Up to four SYN retransmissions (1+2+4+8 s) before giving up.
                    TcpStream::connect_timeout(&overflowing, Duration::from_secs(20))
                        .unwrap_or_else(|err| panic!("burst connection {i}: {err}"));
                });
            }
        });
    });
    let syn_retransmits = tcp_ext(&scene.lab, &scene.lab.client_ns, "TCPSynRetrans");
    let overflows = tcp_ext(&scene.lab, &scene.lab.server_ns, "ListenOverflows");
    assert!(
        syn_retransmits > 0,
        "the burst made clients retransmit SYNs"
    );
    assert!(overflows > 0, "the burst overflowed the accept queue");
    eprintln!("burst: {syn_retransmits} SYN retransmissions, {overflows} listen overflows");
    // Let retransmitted FINs and SYN-ACKs drain, then look.
    thread::sleep(Duration::from_secs(2));
    let metrics = scene.daemon.metrics(&scene.lab);
    assert_eq!(scene.anomaly_counts(), BTreeMap::new(), "{metrics}");
    let lookups = series_value(&metrics, "seqwatch_handshake_state_lookups_total").unwrap();
    assert!(
        lookups >= (IPV4_CONNECTIONS + IPV6_CONNECTIONS) as f64,
        "the tracker looked at every handshake ({lookups} lookups)"
    );
    assert!(read_json_lines(&scene.events).is_empty());
    scene.monitored.stop();
}

/// A listener with an accept queue of one that starts accepting only after `pause`.
fn slow_listener(lab: &Lab, addr: SocketAddr, pause: Duration) {
    let SocketAddr::V4(addr) = addr else {
        panic!("an IPv4 address")
    };
    let listener = backlog_listener(lab, &lab.server_ns, addr, 1);
    thread::spawn(move || {
        thread::sleep(pause);
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
}

/// A `TcpExt:` counter of a namespace.
fn tcp_ext(lab: &Lab, ns: &str, name: &str) -> u64 {
    netstat(lab, ns)[&format!("TcpExt{name}")]
}

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
