//! Unusual but legitimate handshakes made by the kernel's own TCP stacks in the lab, not
//! crafted: TCP Fast Open (data in the SYN, RFC 7413). The handshake tracker (both directions,
//! in the server namespace) must count the TFO SYNs apart, as the kernels' own counters do, and
//! flag nothing.
//! Needs root; every lab namespace is removed when its test ends.

// This crate uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use common::{
    crafted::MonitoredLab, netstat, read_json_lines, series_value, sysctl::write as write_sysctl,
    wait_for,
};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket,
    sockopt::TcpFastOpenConnect,
};

/// Not a TLS port: the echo server speaks plain bytes.
const TFO_PORT: u16 = 8088;
const TFO_CONNECTIONS: usize = 20;

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
