//! The TcpExt counters and the hardening posture against the real kernel: the real daemon in a
//! lab's server namespace, a listener flooded from the client namespace with that namespace's
//! own /proc/net/netstat as the referee (the per-listener drop counter too), and
//! per-namespace sysctls set in the lab only.
//! Needs root; every lab namespace is removed when its test ends, and no host-wide sysctl is
//! written.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use common::{
    daemon::{Daemon, scrape},
    lab::{
        backlog_listener, connect_many, ip, listen, netstat, read_sysctl, send_crafted,
        write_sysctl,
    },
    prometheus::series_value,
    wait_for,
};
use seqwatch::{
    host::netstat::TCPEXT_COUNTERS,
    lab::{Crafter, Lab, LabOptions, Segment, command_in_netns, flags},
};

/// The exported TcpExt counters, by field name.
type Counters = HashMap<&'static str, u64>;

/// A lab with the daemon attached in its server namespace.
fn lab_with_daemon(dir: &std::path::Path) -> (Lab, Daemon) {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let daemon = Daemon::on_server_egress(&lab, dir, &[]);
    (lab, daemon)
}

fn tcpext_of_netstat(lab: &Lab, ns: &str) -> Counters {
    let all = netstat(lab, ns);
    TCPEXT_COUNTERS
        .iter()
        .map(|c| (c.field, all[&format!("TcpExt{}", c.field)]))
        .collect()
}

fn tcpext_of_metrics(metrics: &str) -> Counters {
    TCPEXT_COUNTERS
        .iter()
        .map(|c| {
            let value = series_value(metrics, c.metric)
                .unwrap_or_else(|| panic!("{} missing from /metrics", c.metric));
            (c.field, value as u64)
        })
        .collect()
}

/// The daemon's counters, checked against the namespace's: read netstat, scrape, read netstat
/// again. Counters only rise, so every scraped value lies between the two readings; once the
/// namespace is quiet but for the scrape's own handshake (which raises each of `per_scrape` by
/// one), the scrape must equal the second reading exactly.
fn settled_counters(lab: &Lab, daemon: &Daemon, per_scrape: &[&'static str]) -> Counters {
    let mut moved = Counters::new();
    for _ in 0..50 {
        let before = tcpext_of_netstat(lab, &daemon.ns);
        let metrics = scrape(lab, &daemon.ns).expect("/metrics");
        let after = tcpext_of_netstat(lab, &daemon.ns);
        let scraped = tcpext_of_metrics(&metrics);
        for (field, value) in &scraped {
            assert!(
                (before[field]..=after[field]).contains(value),
                "{field}: scraped {value}, netstat {} then {}",
                before[field],
                after[field]
            );
        }
        moved = after
            .iter()
            .map(|(&field, &value)| (field, value - before[field]))
            .filter(|&(_, moved)| moved > 0)
            .collect();
        let expected: Counters = per_scrape.iter().map(|&field| (field, 1)).collect();
        if moved == expected {
            assert_eq!(scraped, after);
            return scraped;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the namespace's TcpExt counters never settled; last moved: {moved:?}");
}

fn delta(before: &Counters, after: &Counters, field: &str) -> u64 {
    after[field] - before[field]
}

/// A listener with an accept queue of one that never accepts, and connection attempts that
/// give up after one SYN: every attempt after the queue is full is one ListenOverflows and
/// one ListenDrops. Then one crafted SYN into a queued, established connection: one challenge
/// ACK (RFC 5961 section 4). The daemon's /metrics says exactly what the namespace says.
#[test]
fn listen_overflows_and_challenge_acks_equal_the_namespaces_netstat() {
    const ATTEMPTS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let (lab, daemon) = lab_with_daemon(dir.path());
    let addr = SocketAddrV4::new(lab.server_v4, 9000);
    let _listener = backlog_listener(&lab, &lab.server_ns, addr, 1);
    let before = settled_counters(&lab, &daemon, &[]);

    let completed = lab.run_in(&lab.client_ns, || {
        (0..ATTEMPTS)
            // Short enough that the client never retransmits its SYN (first RTO: 1 s).
            .filter_map(|_| {
                TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_millis(200)).ok()
            })
            .collect::<Vec<_>>()
    });
    let overflowed = settled_counters(&lab, &daemon, &[]);
    // Linux queues backlog + 1 connections: 2 complete, every later SYN overflows.
    assert_eq!(completed.len(), 2);
    let refused = ATTEMPTS - 2;
    assert_eq!(delta(&before, &overflowed, "ListenOverflows"), refused);
    assert_eq!(delta(&before, &overflowed, "ListenDrops"), refused);

    Crafter::client_to_server(&lab)
        .unwrap()
        .send_segment(&Segment {
            from: completed[0].local_addr().unwrap(),
            to: SocketAddr::V4(addr),
            flags: flags::SYN,
            seq: 12_345,
            ack: 0,
            options: &[],
            payload: &[],
        })
        .unwrap();
    let challenged = settled_counters(&lab, &daemon, &[]);
    assert_eq!(delta(&overflowed, &challenged, "TCPSYNChallenge"), 1);
    assert_eq!(delta(&overflowed, &challenged, "TCPChallengeACK"), 1);
    daemon.stop();
}

/// `tcp_syncookies = 2` in the server namespace only: every SYN is answered with a cookie and
/// every handshake completes on one — the scrapes' own handshakes too.
#[test]
fn forced_syncookies_equal_the_namespaces_netstat() {
    const CONNECTIONS: u64 = 30;
    const COOKIE_HANDSHAKE: [&str; 3] =
        ["SyncookiesSent", "SyncookiesRecv", "TCPReqQFullDoCookies"];
    let dir = tempfile::tempdir().unwrap();
    let (lab, daemon) = lab_with_daemon(dir.path());
    let host_syncookies = read_sysctl(None, "net.ipv4.tcp_syncookies");
    write_sysctl(&lab, &lab.server_ns, "net.ipv4.tcp_syncookies", "2");
    assert_eq!(
        read_sysctl(None, "net.ipv4.tcp_syncookies"),
        host_syncookies,
        "the host's own value is untouched"
    );
    let service = SocketAddr::new(lab.server_v4.into(), 9001);
    listen(&lab, &lab.server_ns, service);
    settled_counters(&lab, &daemon, &COOKIE_HANDSHAKE);

    // No scrape in between: the namespace's own count of the connections.
    let before = tcpext_of_netstat(&lab, &lab.server_ns);
    connect_many(&lab, &lab.client_ns, service, CONNECTIONS as usize);
    let after = tcpext_of_netstat(&lab, &lab.server_ns);
    for field in COOKIE_HANDSHAKE {
        assert_eq!(delta(&before, &after, field), CONNECTIONS, "{field}");
    }
    assert_eq!(delta(&before, &after, "SyncookiesFailed"), 0);
    // And the daemon says exactly what the namespace says.
    settled_counters(&lab, &daemon, &COOKIE_HANDSHAKE);
    daemon.stop();
}

/// A listener's drop counter, `seqwatch_listener_drops_total`, is the kernel's per-socket
/// `sk_drops`: SYNs the listener refused (TcpExt `ListenDrops`) and also the segments of its
/// half-open handshakes the kernel discarded, RSTs among them (`EmbryonicRsts`). Ten SYNs
/// from the client's own address (its kernel resets each SYN-ACK: ten embryonic resets), then
/// a SYN flood from 300 forged sources onto a SYN queue of 8 without cookies: the port's
/// counter is exactly the sum of the two TcpExt counters, and its help says so.
#[test]
fn listener_drops_are_listen_drops_plus_embryonic_resets() {
    const RESET: u16 = 10;
    const FLOOD: u32 = 300;
    let dir = tempfile::tempdir().unwrap();
    let (lab, daemon) = lab_with_daemon(dir.path());
    write_sysctl(&lab, &lab.server_ns, "net.ipv4.tcp_syncookies", "0");
    // The flood's SYN-ACKs leave (towards the client, which drops them): requests are made.
    let client = lab.client_v4.to_string();
    ip(
        &lab,
        &lab.server_ns,
        &["route", "add", "default", "via", &client],
    );
    let addr = SocketAddrV4::new(lab.server_v4, 9002);
    let _listener = backlog_listener(&lab, &lab.server_ns, addr, 8);
    let crafter = Crafter::client_to_server(&lab).unwrap();
    let counters = |lab: &Lab| {
        let all = netstat(lab, &lab.server_ns);
        (all["TcpExtListenDrops"], all["TcpExtEmbryonicRsts"])
    };
    let before = counters(&lab);

    for port in 0..RESET {
        let from = SocketAddr::new(lab.client_v4.into(), 41_000 + port);
        send_crafted(
            &crafter,
            (from, SocketAddr::V4(addr)),
            flags::SYN,
            (7, 0),
            &[],
        );
    }
    let reset = wait_for(Duration::from_secs(5), || {
        counters(&lab).1 - before.1 == u64::from(RESET)
    });
    assert!(
        reset,
        "embryonic resets: {:?} then {:?}",
        before,
        counters(&lab)
    );
    for i in 0..FLOOD {
        let forged = std::net::Ipv4Addr::from(0x6440_0000 + i); // 100.64.0.0/10
        let from = SocketAddr::new(forged.into(), 20_000 + (i % 40_000) as u16);
        send_crafted(
            &crafter,
            (from, SocketAddr::V4(addr)),
            flags::SYN,
            (i, 0),
            &[],
        );
    }

    let metric = "seqwatch_listener_drops_total{port=\"9002\"}";
    let mut last = (None, before);
    let summed = wait_for(Duration::from_secs(10), || {
        let kernel = counters(&lab);
        last = (series_value(&daemon.metrics(&lab), metric), kernel);
        let sum = (kernel.0 - before.0) + (kernel.1 - before.1);
        kernel.0 > before.0 && last.0 == Some(sum as f64)
    });
    assert!(
        summed,
        "{metric} {:?}, (ListenDrops, EmbryonicRsts) {:?} from {before:?}",
        last.0, last.1
    );
    let (drops, (listen_drops, embryonic)) = (last.0.unwrap(), last.1);
    eprintln!(
        "{drops} listener drops = {} ListenDrops + {} EmbryonicRsts",
        listen_drops - before.0,
        embryonic - before.1
    );
    let help = daemon
        .metrics(&lab)
        .lines()
        .find(|line| line.starts_with("# HELP seqwatch_listener_drops_total "))
        .expect("a help line")
        .to_owned();
    for counted in ["ListenDrops", "EmbryonicRsts"] {
        assert!(help.contains(counted), "{help}");
    }
    daemon.stop();
}

/// Per-namespace sysctls set against advice and as advised in a fresh namespace: `seqwatch
/// posture --json` run there (nsenter) judges each as expected, leaves the host-wide
/// `net.core.bpf_jit_harden` (absent outside the host's namespace) unjudged and exits 3; the
/// daemon there exports the same verdicts, and no series for the unjudged check. The host's
/// own values are the same before and after.
#[test]
fn posture_verdicts_follow_the_namespaces_sysctls() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let ns = lab.server_ns.clone();
    let host_before = posture_values(None);
    // Against advice, then as advised (accept_redirects needs both all and default).
    let settings = [
        ("net.ipv4.tcp_syncookies", "0"),
        ("net.ipv4.tcp_timestamps", "2"),
        ("net.ipv4.ip_local_port_range", "60000 60100"),
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.default.accept_redirects", "0"),
        ("net.ipv4.tcp_synack_retries", "2"),
        ("net.ipv4.tcp_rfc1337", "1"),
        ("net.ipv4.conf.all.log_martians", "1"),
    ];
    for (name, value) in settings {
        write_sysctl(&lab, &ns, name, value);
    }

    let (status, checks) = posture_json(Some(&ns));
    let verdict = |check: &str| checks[check]["ok"].as_bool();
    let expected = [
        ("tcp_syncookies", Some(false)),
        ("tcp_timestamps", Some(false)),
        ("ip_local_port_range", Some(false)),
        ("rp_filter", Some(true)),
        ("accept_redirects", Some(true)),
        ("tcp_synack_retries", Some(true)),
        ("tcp_rfc1337", Some(true)),
        ("log_martians", Some(true)),
        ("bpf_jit_harden", None),
    ];
    for (check, ok) in expected {
        assert_eq!(verdict(check), ok, "{check}: {}", checks[check]);
    }
    assert_eq!(checks["ip_local_port_range"]["value"], "60000 60100");
    assert_eq!(status, Some(3), "a check failed: exit status 3");

    let mut daemon = Daemon::start(&lab, &ns, dir.path(), &["--interface", &lab.server_if]);
    daemon.wait_attached(&lab, &lab.server_if, "egress");
    let metrics = daemon.metrics(&lab);
    for (check, assessment) in &checks {
        let series = format!(
            "seqwatch_posture_check{{check=\"{check}\",scope=\"{}\"}}",
            assessment["scope"].as_str().unwrap()
        );
        let exported = series_value(&metrics, &series);
        let expected = assessment["ok"].as_bool().map(|ok| f64::from(u8::from(ok)));
        assert_eq!(exported, expected, "{series}");
    }
    assert!(!metrics.contains("check=\"bpf_jit_harden\""));
    daemon.stop();
    assert_eq!(
        posture_values(None),
        host_before,
        "the host's sysctls are untouched"
    );
}

/// `seqwatch posture --json`, in `ns` (via nsenter) or in this process's namespace: the exit
/// status and each check's object by name.
fn posture_json(ns: Option<&str>) -> (Option<i32>, HashMap<String, serde_json::Value>) {
    let seqwatch = env!("CARGO_BIN_EXE_seqwatch");
    let mut command = match ns {
        Some(ns) => command_in_netns(ns, seqwatch),
        None => std::process::Command::new(seqwatch),
    };
    let output = command
        .args(["posture", "--json"])
        .output()
        .expect("run seqwatch posture");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&output.stderr)));
    let checks = json["checks"]
        .as_array()
        .expect("a checks array")
        .iter()
        .map(|check| (check["check"].as_str().unwrap().to_owned(), check.clone()))
        .collect();
    (output.status.code(), checks)
}

/// What `seqwatch posture` reads, check by check.
fn posture_values(ns: Option<&str>) -> HashMap<String, serde_json::Value> {
    let (_, checks) = posture_json(ns);
    checks
        .into_iter()
        .map(|(check, assessment)| (check, assessment["value"].clone()))
        .collect()
}
