//! The SYN-ACK path against the real kernel: the real daemon attached in a lab namespace,
//! real TCP handshakes over a veth, and tcpdump on the same interface as the referee.
//! Needs root (CI runs as root); every lab namespace is removed when its test ends.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    capture::{Capture, sample_tuples},
    daemon::{Daemon, http_get, read_json_lines, scrape},
    lab::{connect_many, listen},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{
    Crafter, GeneratorKind, Lab, LabOptions, PrngPreset, Responder, ResponderConfig,
};

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
    let series =
        format!("seqwatch_synack_samples_total{{direction=\"egress\",interface=\"{attach_if}\"}}");
    assert_eq!(series_value(&metrics, &series), Some(CONNECTIONS as f64));
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
        let mut daemon = Daemon::start(
            &lab,
            &lab.server_ns,
            dir.path(),
            &["--interface", &lab.server_if],
        );
        daemon.wait_attached(&lab, &lab.server_if, "egress");
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
