//! The SYN-ACK record's time, in the real kernel: on egress the classifier takes the kernel's
//! own departure stamp instead of reading the clock, and whichever it uses, the time must be
//! CLOCK_MONOTONIC at the SYN-ACK's sending — also for syncookie SYN-ACKs, whose stamp some
//! kernels set from their TCP timestamp option instead. Needs root; every lab namespace is
//! removed when its test ends.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::{
    daemon::Daemon,
    lab::{listen, netstat, write_sysctl},
};
use seqwatch::lab::{Crafter, Lab, LabOptions, Segment, flags, monotonic_ns};
use serde_json::Value;

const PORT: u16 = 8080;
const CONNECTIONS: usize = 20;

/// The daemon sampling the lab server's egress, with its sample log.
fn sampling_daemon(lab: &Lab, dir: &std::path::Path) -> Daemon {
    Daemon::on_server_egress(lab, dir, &[])
}

/// Connects `CONNECTIONS` times, returning each client address with the CLOCK_MONOTONIC
/// readings just before the connect and just after it returned: its SYN-ACK was sent between.
fn timed_connections(lab: &Lab, server: SocketAddr) -> HashMap<SocketAddr, (u64, u64)> {
    lab.run_in(&lab.client_ns, || {
        (0..CONNECTIONS)
            .map(|i| {
                let before = monotonic_ns();
                let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                    .unwrap_or_else(|err| panic!("connection {i}: {err}"));
                let after = monotonic_ns();
                (stream.local_addr().unwrap(), (before, after))
            })
            .collect()
    })
}

fn client(sample: &Value) -> SocketAddr {
    sample["client"].as_str().unwrap().parse().unwrap()
}

fn ts_ns(sample: &Value) -> u64 {
    sample["ts_ns"].as_u64().unwrap()
}

/// Every connection's SYN-ACK is in the sample log, timed within its connect.
fn assert_sent_within_connects(lab: &Lab, syncookies: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_sysctl(lab, &lab.server_ns, "net.ipv4.tcp_syncookies", syncookies);
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(lab, &lab.server_ns, server);
    let daemon = sampling_daemon(lab, dir.path());
    let windows = timed_connections(lab, server);
    let samples = daemon.samples(CONNECTIONS);
    for sample in &samples {
        let (before, after) = windows[&client(sample)];
        let ts = ts_ns(sample);
        assert!(
            (before..=after).contains(&ts),
            "syncookies={syncookies}: SYN-ACK to {} at {ts}, outside its connect {before}..={after}",
            client(sample)
        );
        assert!(sample["tsval"].is_u64(), "the SYN-ACK carried timestamps");
    }
    assert_eq!(samples.len(), CONNECTIONS);
    daemon.stop();
}

#[test]
fn the_kernels_synacks_are_timed_on_the_monotonic_clock_when_sent() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    assert_sent_within_connects(&lab, "0");
}

/// With syncookies always on: some kernels stamp each SYN-ACK with its TCP timestamp option's
/// time, up to 64 ms before it was sent, which the classifier must not take.
#[test]
fn syncookie_synacks_are_timed_when_sent_not_by_their_timestamp_option() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let sent_before = netstat(&lab, &lab.server_ns)["TcpExtSyncookiesSent"];
    assert_sent_within_connects(&lab, "2");
    let sent = netstat(&lab, &lab.server_ns)["TcpExtSyncookiesSent"] - sent_before;
    // And the daemon's /metrics answered on loopback with cookies too.
    assert!(sent >= CONNECTIONS as u64, "every SYN-ACK was a syncookie");
}

/// Crafted SYN-ACKs leave the server's veth stamped with a chosen CLOCK_MONOTONIC time (as a
/// packet socket's SO_TXTIME stamps them): an ordinary stamp is recorded as is, a whole number
/// of microseconds (a syncookie's) and no stamp at all are not trusted.
#[test]
fn an_egress_stamp_is_recorded_as_is_unless_untrusted() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = sampling_daemon(&lab, dir.path());
    let crafter = Crafter::server_to_client(&lab).unwrap();
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    let synack = |seq, client_port| Segment {
        from: server,
        to: SocketAddr::new(lab.client_v4.into(), client_port),
        flags: flags::SYN | flags::ACK,
        seq,
        ack: 1,
        options: &[],
        payload: &[],
    };
    let start = monotonic_ns();
    // Stamps far from now (half the uptime: CLOCK_MONOTONIC starts at boot, and CI's
    // machines are minutes old), so that only taking one as is can give it back.
    let whole_microseconds = start / 2 - start / 2 % 1_000;
    let exact = whole_microseconds + 1;
    crafter
        .send_segment_departing(&synack(1, 40_001), exact)
        .unwrap();
    crafter
        .send_segment_departing(&synack(2, 40_002), whole_microseconds)
        .unwrap();
    crafter.send_segment(&synack(3, 40_003)).unwrap();
    let end = monotonic_ns();
    let samples = daemon.samples(3);
    let time_of = |seq: u64| {
        let sample = samples.iter().find(|s| s["seq"].as_u64() == Some(seq));
        ts_ns(sample.unwrap_or_else(|| panic!("no sample of SYN-ACK {seq}: {samples:?}")))
    };
    assert_eq!(time_of(1), exact, "a monotonic departure stamp is the time");
    for seq in [2, 3] {
        assert!(
            (start..=end).contains(&time_of(seq)),
            "SYN-ACK {seq} timed {} outside {start}..={end}",
            time_of(seq)
        );
    }
    daemon.stop();
}
