//! ISN sampling against the real kernel: the real daemon attached in a lab namespace, real TCP
//! handshakes over a veth, and tcpdump on the same interface as the referee. Every SYN-ACK is
//! one sample, field for field what tcpdump saw (IPv4, IPv6, VLAN tags, ingress); the weak
//! responders' ISNs come out exactly as generated and are named weak. A sample's time is
//! CLOCK_MONOTONIC at the SYN-ACK's sending: on egress the kernel's own departure stamp, also
//! for syncookie SYN-ACKs, whose stamp some kernels set from their TCP timestamp option
//! instead. Forged SYN-ACKs (anyone can send a host SYN-ACKs "from" a server with ISNs of their
//! choosing) answer no SYN that left, so the SYN-ACK origin check refuses them: counted as
//! `unsolicited_synack` under the server they claim, never scored; before the check each
//! forgery's verdict flipped, while the answers to Fast Open SYNs, which ack the SYN's data
//! too, are answers all the same: each is scored. A SYN flood's retransmitted SYN-ACKs are each
//! dropped as retransmissions, and leave a strong server strong. Needs root; every lab
//! namespace is removed when its test ends.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    thread,
    time::Duration,
};

use common::{
    capture::{Capture, sample_tuples},
    daemon::{Daemon, http_get, read_json_lines, scrape},
    lab::{
        TFO_CONNECTIONS, backlog_listener, connect_many, fast_open_exchanges, listen, netstat,
        route_spoofed, routed_lab, send_crafted, write_sysctl,
    },
    prometheus::{series_value, synack_samples},
    wait_for,
};
use seqwatch::{
    lab::{
        Crafter, GeneratorKind, Lab, LabOptions, PrngPreset, Responder, ResponderConfig, Segment,
        flags::{self, *},
    },
    util::clock::monotonic_ns,
};
use serde_json::Value as Json;

const CONNECTIONS: usize = 500;
const PORT: u16 = 8080;

/// Every SYN-ACK the server sent is one sample, field for field what tcpdump saw.
fn assert_samples_equal_capture(lab: &Lab, server: IpAddr, capture_if: &str, attach_if: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(lab, &lab.server_ns, dir.path(), &["--interface", attach_if]);
    daemon.wait_attached(lab, attach_if, "egress");
    let capture = Capture::start(
        lab,
        &lab.server_ns,
        capture_if,
        "tcp",
        dir.path().join("c.pcap"),
    );
    let service = SocketAddr::new(server, PORT);
    listen(lab, &lab.server_ns, service);
    connect_many(lab, &lab.client_ns, service, CONNECTIONS);

    let samples = daemon.samples(CONNECTIONS);
    let mut captured = capture.stop();
    let mut sampled = sample_tuples(&samples);
    assert_eq!(captured.len(), CONNECTIONS, "tcpdump saw every SYN-ACK");
    assert_eq!(sampled.len(), CONNECTIONS, "exactly one sample per SYN-ACK");
    captured.sort();
    sampled.sort();
    assert_eq!(sampled, captured);
    assert!(samples.iter().all(|s| s["server"] == service.to_string()));

    let metrics = daemon.metrics(lab);
    let sampled = synack_samples(&metrics, attach_if, "egress");
    assert_eq!(sampled, Some(CONNECTIONS as f64));
    assert_eq!(
        series_value(&metrics, "seqwatch_ringbuf_dropped_total"),
        Some(0.0)
    );
    daemon.stop();
}

#[test]
fn ipv4_samples_equal_a_capture_of_the_same_interface() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    assert_samples_equal_capture(&lab, lab.server_v4.into(), &lab.server_if, &lab.server_if);
}

#[test]
fn ipv6_samples_equal_a_capture_of_the_same_interface() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    assert_samples_equal_capture(&lab, lab.server_v6.into(), &lab.server_if, &lab.server_if);
}

/// Tagged SYN-ACKs (802.1Q, and 802.1ad + 802.1Q) on a real veth: the classifier walks the
/// tags. This kernel has no VLAN devices, so the frames are crafted and sent through an
/// AF_PACKET socket, which hands the classifier the tags in the frame itself.
#[test]
fn vlan_tagged_samples_equal_a_capture() {
    const PER_TAGGING: u32 = 100;
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let mut daemon = Daemon::start(
        &lab,
        &lab.client_ns,
        dir.path(),
        &["--interface", &client_if],
    );
    daemon.wait_attached(&lab, &client_if, "egress");
    let capture = Capture::start(
        &lab,
        &lab.client_ns,
        &client_if,
        "vlan",
        dir.path().join("c.pcap"),
    );
    let crafter = Crafter::client_to_server(&lab).unwrap();
    let mut sent = Vec::new();
    for (tagging, vlans) in [&[100u16][..], &[200, 100]].into_iter().enumerate() {
        for i in 0..PER_TAGGING {
            let n = tagging as u32 * PER_TAGGING + i;
            let server = SocketAddr::new(lab.client_v4.into(), PORT);
            let client = SocketAddr::new(lab.server_v4.into(), 30_000 + n as u16);
            let (seq, ack) = (n.wrapping_mul(2_654_435_761), n + 1);
            crafter
                .send_synack(vlans, server, client, seq, ack)
                .unwrap();
            sent.push((server, client, seq, ack));
        }
    }
    let total = sent.len();
    let mut sampled = sample_tuples(&daemon.samples(total));
    let mut captured = capture.stop();
    sent.sort();
    sampled.sort();
    captured.sort();
    assert_eq!(captured, sent, "tcpdump saw the tagged SYN-ACKs");
    assert_eq!(sampled, sent, "one sample per tagged SYN-ACK, fields exact");
    let metrics = daemon.metrics(&lab);
    for reason in ["vlan_too_deep", "truncated"] {
        let series = format!("seqwatch_parse_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(series_value(&metrics, &series), Some(0.0), "{reason}");
    }
    daemon.stop();
}

/// On ingress the samples are the remote server's SYN-ACKs, as a client sees them.
#[test]
fn ingress_samples_remote_servers_synacks() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let mut daemon = Daemon::start(
        &lab,
        &lab.client_ns,
        dir.path(),
        &["--interface", &client_if, "--direction", "ingress"],
    );
    daemon.wait_attached(&lab, &client_if, "ingress");
    let capture = Capture::start(
        &lab,
        &lab.client_ns,
        &client_if,
        "tcp",
        dir.path().join("c.pcap"),
    );
    let service = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, service);
    connect_many(&lab, &lab.client_ns, service, 100);
    let mut sampled = sample_tuples(&daemon.samples(100));
    let mut captured = capture.stop();
    sampled.sort();
    captured.sort();
    assert_eq!(sampled.len(), 100);
    assert_eq!(sampled, captured);
    daemon.stop();
}

/// The weak responder's ISNs come out of the sampler exactly as generated, and the scorer
/// calls the counters weak and uniform ISNs not weak.
#[test]
fn weak_responder_isns_come_out_exactly_as_generated() {
    let cases = [
        (GeneratorKind::Step64k, "weak"),
        (GeneratorKind::Clock250k, "weak"),
        // 64 samples are past the scorer's minimum: a verdict, not "insufficient".
        (GeneratorKind::Uniform, "strong"),
    ];
    for (generator, verdict) in cases {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::on_server_egress(&lab, dir.path(), &[]);
        let responder = Responder::spawn_in(
            &lab,
            ResponderConfig {
                interface: lab.server_if.clone(),
                port: PORT,
                generator,
                seed: 7,
                record: None,
            },
        )
        .unwrap();
        let service = SocketAddr::new(lab.server_v4.into(), PORT);
        connect_many(&lab, &lab.client_ns, service, 64);
        let samples = daemon.samples(64);
        let sent = responder.stop().unwrap();
        let mut generated: Vec<_> = sent
            .iter()
            .map(|s| {
                let server = SocketAddr::new(s.saddr, s.sport);
                (server, SocketAddr::new(s.daddr, s.dport), s.isn, s.ack)
            })
            .collect();
        let mut sampled = sample_tuples(&samples);
        generated.sort();
        sampled.sort();
        assert_eq!(sampled, generated, "{generator}");

        let scored = wait_for(Duration::from_secs(5), || {
            http_get(&lab, &lab.server_ns, "/api/v1/services").is_some_and(|body| {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                json["services"][0]["samples"] == 64 && json["services"][0]["verdict"] == verdict
            })
        });
        assert!(scored, "{generator} should score {verdict}");
        daemon.stop();
    }
}

/// Pseudo-random responders on the live path: the kernel samples their SYN-ACKs, the daemon
/// names each generator's family from 48 of them, /metrics calls the services weak with next to
/// no guess bits left, and the event log says which generator was recognised.
#[test]
fn prng_responders_are_named_weak_through_the_daemon() {
    const SYNACKS: usize = 48;
    let cases = [
        (PrngPreset::JavaRandom, "truncated_lcg"),
        (PrngPreset::GlibcRandom, "lagged_fibonacci"),
        (PrngPreset::PicoTcp, "step_with_clock"),
    ];
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut daemon = Daemon::start(
        &lab,
        &lab.server_ns,
        dir.path(),
        &[
            "--interface",
            &lab.server_if,
            "--event-log",
            events.to_str().unwrap(),
        ],
    );
    daemon.wait_attached(&lab, &lab.server_if, "egress");
    let mut responders = Vec::new();
    for (i, (preset, _)) in cases.iter().enumerate() {
        let port = PORT + i as u16;
        responders.push(
            Responder::spawn_in(
                &lab,
                ResponderConfig {
                    interface: lab.server_if.clone(),
                    port,
                    generator: GeneratorKind::Prng(*preset),
                    seed: 11 + i as u64,
                    record: None,
                },
            )
            .unwrap(),
        );
        connect_many(
            &lab,
            &lab.client_ns,
            SocketAddr::new(lab.server_v4.into(), port),
            SYNACKS,
        );
    }
    let services: Vec<String> = (0..cases.len())
        .map(|i| SocketAddr::new(lab.server_v4.into(), PORT + i as u16).to_string())
        .collect();
    let gauge = |metrics: &str, name: &str, service: &str| {
        series_value(metrics, &format!("{name}{{service=\"{service}\"}}"))
    };
    let all_weak = wait_for(Duration::from_secs(15), || {
        scrape(&lab, &lab.server_ns).is_some_and(|metrics| {
            services.iter().all(|service| {
                gauge(&metrics, "seqwatch_isn_weak", service) == Some(1.0)
                    && gauge(&metrics, "seqwatch_isn_samples", service) == Some(SYNACKS as f64)
            })
        })
    });
    let metrics = daemon.metrics(&lab);
    assert!(all_weak, "not every PRNG service scored weak:\n{metrics}");
    for service in &services {
        let bits = gauge(&metrics, "seqwatch_isn_guess_space_log2", service).unwrap();
        let feasibility = gauge(&metrics, "seqwatch_isn_attack_feasibility", service).unwrap();
        assert!(
            bits <= 1.0 && feasibility >= 0.5,
            "{service}: {bits} bits, {feasibility}"
        );
    }

    let body = http_get(&lab, &lab.server_ns, "/api/v1/services").unwrap();
    let reports: serde_json::Value = serde_json::from_str(&body).unwrap();
    let family_of = |findings: &serde_json::Value| -> Vec<String> {
        findings
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["kind"] == "prng")
            .map(|f| f["generator"]["family"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // The daemon flushes the event log on its own tick.
    let mut logged = Vec::new();
    wait_for(Duration::from_secs(5), || {
        logged = read_json_lines(&events)
            .into_iter()
            .filter(|e| e["kind"] == "isn_weak")
            .collect();
        logged.len() >= services.len()
    });
    for (service, (preset, family)) in services.iter().zip(cases) {
        let report = reports["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["service"] == service.as_str())
            .unwrap_or_else(|| panic!("{service} not in {body}"));
        assert!(
            family_of(&report["findings"]).iter().any(|f| f == family),
            "{preset:?}: {:#}",
            report["findings"]
        );
        let event = logged
            .iter()
            .find(|e| e["service"] == service.as_str())
            .unwrap_or_else(|| panic!("no isn_weak line for {service}: {logged:#?}"));
        eprintln!("{preset:?}: {event}");
    }
    for responder in responders {
        responder.stop().unwrap();
    }
    daemon.stop();
}

// When each SYN-ACK was sent: the sample's time.

const TIMED_CONNECTIONS: usize = 20;

/// The daemon sampling the lab server's egress, with its sample log.
fn sampling_daemon(lab: &Lab, dir: &std::path::Path) -> Daemon {
    Daemon::on_server_egress(lab, dir, &[])
}

/// Connects `TIMED_CONNECTIONS` times, returning each client address with the CLOCK_MONOTONIC
/// readings just before the connect and just after it returned: its SYN-ACK was sent between.
fn timed_connections(lab: &Lab, server: SocketAddr) -> HashMap<SocketAddr, (u64, u64)> {
    lab.run_in(&lab.client_ns, || {
        (0..TIMED_CONNECTIONS)
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

fn client(sample: &Json) -> SocketAddr {
    sample["client"].as_str().unwrap().parse().unwrap()
}

fn ts_ns(sample: &Json) -> u64 {
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
    let samples = daemon.samples(TIMED_CONNECTIONS);
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
    assert_eq!(samples.len(), TIMED_CONNECTIONS);
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
    assert!(
        sent >= TIMED_CONNECTIONS as u64,
        "every SYN-ACK was a syncookie"
    );
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

// Forged SYN-ACKs: the origin check refuses them, and verdicts stay.

/// Genuine handshakes scored before the attack: past the scorer's minimum of 8.
const GENUINE: u64 = 40;
/// The report's "samples" and "verdict" as the scorer published them.
type Report = (u64, String);

/// A daemon in `ns`, `--direction` `direction` on `interfaces`.
fn start_daemon(
    lab: &Lab,
    ns: &str,
    dir: &std::path::Path,
    direction: &str,
    interfaces: &[&str],
) -> Daemon {
    Daemon::with_ingress_on(lab, (ns, dir), (direction, interfaces), &[])
}

/// The service's latest report, once it has one.
fn report(lab: &Lab, ns: &str, service: SocketAddr) -> Option<Report> {
    let body = http_get(lab, ns, "/api/v1/services")?;
    let json: Json = serde_json::from_str(&body).ok()?;
    let report = json["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service.to_string())?;
    Some((
        report["samples"].as_u64()?,
        report["verdict"].as_str()?.to_owned(),
    ))
}

/// Waits for the service's report to hold `samples` samples, and returns its verdict.
fn scored(lab: &Lab, daemon: &Daemon, service: SocketAddr, samples: u64) -> String {
    let mut latest = None;
    let done = wait_for(Duration::from_secs(15), || {
        latest = report(lab, &daemon.ns, service);
        latest.as_ref().is_some_and(|(n, _)| *n == samples)
    });
    assert!(
        done,
        "{service}: {latest:?}, not {samples} samples\n{}",
        daemon.log()
    );
    latest.unwrap().1
}

/// `count` SYN-ACKs "from" `server` to ports of `client` that sent no SYN, with the ISNs
/// `isn` gives, sent where the server's own would come from.
fn forge(lab: &Lab, server: SocketAddr, client: Ipv4Addr, count: u16, isn: impl Fn(u16) -> u32) {
    let crafter = Crafter::server_to_client(lab).unwrap();
    for i in 0..count {
        let to = SocketAddr::new(client.into(), 20_000 + i);
        let ack = u32::from(i).wrapping_mul(2_654_435_761);
        send_crafted(&crafter, (server, to), SYN | ACK, (isn(i), ack), &[]);
    }
}

/// Forgeries counted as `unsolicited_synack`, under whichever label the claimed server has: its
/// own once it has earned one by its handshakes, else `other` (a forger's claims earn none).
fn unsolicited(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("seqwatch_handshake_anomalies_total{kind=\"unsolicited_synack\",")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// After `forged` forged SYN-ACKs claiming `service`: once the daemon has either refused them
/// all or scored them all (and then had time to score any that got through), the service's
/// report must be what it was, and the forgeries counted as unsolicited.
fn assert_forgeries_refused(
    lab: &Lab,
    daemon: &Daemon,
    service: SocketAddr,
    forged: u64,
    before: &Report,
) {
    let accounted = wait_for(Duration::from_secs(20), || {
        let refused = unsolicited(&daemon.metrics(lab)) == forged as f64;
        let scored = report(lab, &daemon.ns, service).is_some_and(|(n, _)| n >= before.0 + forged);
        refused || scored
    });
    assert!(
        accounted,
        "the forged SYN-ACKs neither refused nor scored:\n{}",
        daemon.metrics(lab)
    );
    // A service is scored again at most every 2 s.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        report(lab, &daemon.ns, service).as_ref(),
        Some(before),
        "{forged} forged SYN-ACKs were scored as {service}'s"
    );
    let metrics = daemon.metrics(lab);
    let weak = format!("seqwatch_isn_weak{{service=\"{service}\"}}");
    let was_weak = f64::from(u8::from(before.1 == "weak"));
    assert_eq!(series_value(&metrics, &weak), Some(was_weak));
    assert_eq!(unsolicited(&metrics), forged as f64, "{metrics}");
    let not_sampled = "seqwatch_synacks_not_sampled_total{reason=\"unsolicited\"}";
    assert_eq!(series_value(&metrics, not_sampled), Some(forged as f64));
}

/// The source ranked first for `kind`, and its events.
fn top_source(lab: &Lab, daemon: &Daemon, kind: &str) -> Option<(String, u64)> {
    let body = http_get(lab, &daemon.ns, "/api/v1/anomalies/top-sources")?;
    let json: Json = serde_json::from_str(&body).ok()?;
    let kinds = json["kinds"].as_array()?;
    let first = &kinds.iter().find(|k| k["kind"] == kind)?["sources"][0];
    Some((
        first["source"].as_str()?.to_owned(),
        first["events"].as_u64()?,
    ))
}

/// A SYN flood from a spoofed source at a strong Linux listener: the kernel retransmits each
/// half-open handshake's SYN-ACK (after 1 s, 3 s, …), with the same ISN. Each retransmission
/// must be dropped as one: scored as a new sample it repeats an ISN, and the repeats test
/// turns the server weak, which a flood of a few hundred SYNs did before the scorer kept the
/// window's 4-tuples exactly.
#[test]
fn a_syn_floods_retransmitted_synacks_do_not_turn_a_strong_server_weak() {
    const HALF_OPEN: u16 = 300;
    // A source the client namespace drops what is sent to, so it never resets a handshake.
    const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 77);
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::on_server_egress(&lab, dir.path(), &[]);
    // Every request is kept (and its SYN-ACK retransmitted), none answered by a cookie.
    write_sysctl(&lab, &lab.server_ns, "net.ipv4.tcp_syncookies", "0");
    write_sysctl(&lab, &lab.server_ns, "net.ipv4.tcp_max_syn_backlog", "4096");
    let server = SocketAddrV4::new(lab.server_v4, PORT);
    let _listener = backlog_listener(&lab, &lab.server_ns, server, 1024);
    let crafter = Crafter::client_to_server(&lab).unwrap();
    route_spoofed(&lab, SPOOFED, Some(crafter.source_mac()));
    for i in 0..HALF_OPEN {
        let from = SocketAddr::new(SPOOFED.into(), 30_000 + i);
        let isn = u32::from(i).wrapping_mul(2_654_435_761);
        send_crafted(&crafter, (from, server.into()), SYN, (isn, 0), &[]);
    }
    // Each SYN-ACK sent, and sent again twice.
    let sent = 3.0 * f64::from(HALF_OPEN);
    let retransmitted = wait_for(Duration::from_secs(15), || {
        synack_samples(&daemon.metrics(&lab), &lab.server_if, "egress").is_some_and(|n| n >= sent)
    });
    assert!(retransmitted, "{}", daemon.metrics(&lab));
    // A service is scored again at most every 2 s.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        report(&lab, &daemon.ns, server.into()),
        Some((HALF_OPEN.into(), "strong".to_owned()))
    );
    daemon.stop();
}

/// Ten forged SYN-ACKs with one ISN from a strong Linux server (as ten samples they repeat
/// one value: weak).
#[test]
fn one_isn_forged_ten_times_does_not_turn_a_strong_server_weak() {
    const FORGED: u16 = 10;
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let daemon = start_daemon(&lab, &lab.client_ns, dir.path(), "ingress", &[&client_if]);
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, server);
    connect_many(&lab, &lab.client_ns, server, GENUINE as usize);
    let before = (GENUINE, scored(&lab, &daemon, server, GENUINE));
    assert_eq!(before.1, "strong");

    forge(&lab, server, lab.client_v4, FORGED, |_| 0x5eed_0001);
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    let ranked = wait_for(Duration::from_secs(3), || {
        top_source(&lab, &daemon, "unsolicited_synack")
            == Some((lab.server_v4.to_string(), FORGED.into()))
    });
    assert!(
        ranked,
        "{:?}",
        top_source(&lab, &daemon, "unsolicited_synack")
    );
    daemon.stop();
}

/// 2 100 forged SYN-ACKs with random ISNs from a weak responder (64 000 per connection):
/// scored, they would fill its 2 048-sample window and make it strong.
#[test]
fn random_isns_forged_2100_times_do_not_turn_a_weak_server_strong() {
    const FORGED: u16 = 2_100;
    const WEAK_SAMPLES: u64 = 64;
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let daemon = start_daemon(&lab, &lab.client_ns, dir.path(), "both", &[&client_if]);
    let responder = Responder::spawn_in(
        &lab,
        ResponderConfig {
            interface: lab.server_if.clone(),
            port: PORT,
            generator: GeneratorKind::Step64k,
            seed: 7,
            record: None,
        },
    )
    .unwrap();
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    connect_many(&lab, &lab.client_ns, server, WEAK_SAMPLES as usize);
    let before = (WEAK_SAMPLES, scored(&lab, &daemon, server, WEAK_SAMPLES));
    assert_eq!(before.1, "weak");

    forge(&lab, server, lab.client_v4, FORGED, |_| rand::random());
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    responder.stop().unwrap();
    daemon.stop();
}

/// A gateway watching a LAN (`--direction` `direction` on both of a router's interfaces):
/// real handshakes from the client through it to a Linux server are scored once, at the
/// router's interface towards the server (the SYN left by it); the same SYN-ACKs leaving
/// towards the client were forwarded, and are not sampled again. Forgeries of that server
/// that the router forwards are refused where they come in, and not sampled where they leave.
fn a_gateway_scores_forwarded_handshakes_and_refuses_forgeries(direction: &str) {
    const FORGED: u16 = 10;
    let lab = routed_lab();
    let router = lab.router.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (towards_server, towards_client) = (router.server_if.as_str(), router.client_if.as_str());
    let interfaces = [towards_server, towards_client];
    let daemon = start_daemon(&lab, &router.ns, dir.path(), direction, &interfaces);
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, server);
    connect_many(&lab, &lab.client_ns, server, GENUINE as usize);
    let before = (GENUINE, scored(&lab, &daemon, server, GENUINE));
    assert_eq!(before.1, "strong");
    let metrics = daemon.metrics(&lab);
    let samples = |interface: &str, direction: &str| synack_samples(&metrics, interface, direction);
    assert_eq!(
        samples(towards_server, "ingress"),
        Some(GENUINE as f64),
        "{metrics}"
    );
    for (interface, direction) in [(towards_client, "ingress"), (towards_client, "egress")] {
        assert_eq!(
            samples(interface, direction),
            None,
            "{interface} {direction}"
        );
    }

    forge(&lab, server, lab.client_v4, FORGED, |_| 0x5eed_0001);
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    // With egress sampling, every SYN-ACK the router forwarded to the client, genuine or
    // forged, was left unsampled on its way out.
    let forwarded = match direction {
        "both" => GENUINE + u64::from(FORGED),
        _ => 0,
    };
    let series = "seqwatch_synacks_not_sampled_total{reason=\"forwarded\"}";
    let metrics = daemon.metrics(&lab);
    assert_eq!(series_value(&metrics, series), Some(forwarded as f64));
    daemon.stop();
}

#[test]
fn a_gateway_sampling_both_directions_scores_forwarded_handshakes_and_refuses_forgeries() {
    a_gateway_scores_forwarded_handshakes_and_refuses_forgeries("both");
}

/// Ingress only: the router's egress hooks only record the SYNs it forwards.
#[test]
fn a_gateway_sampling_ingress_scores_forwarded_handshakes_and_refuses_forgeries() {
    a_gateway_scores_forwarded_handshakes_and_refuses_forgeries("ingress");
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
