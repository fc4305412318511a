//! Top anomaly sources and spoofing scores against the real kernel: the real daemon (both
//! directions) in the server namespace of a lab, crafted segments from spoofed sources sent
//! from the client namespace. Ranks and counts come out exactly in the gauge, the JSON API and
//! the event log; a flood of 5 000 distinct sources keeps at most K series and K listed sources
//! while its heavy hitter stays rank 1 with its exact count; blind ISN and RST guesses raise
//! their service's spoofing score by exactly their number per minute, a clean service stays 0,
//! and SYNs into an established connection show up in the challenge-ACK score as the kernel
//! counted them. Needs root; every lab namespace is removed when its test ends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use common::{
    daemon::{Daemon, http_get, read_json_lines, sampled_server_isn, start_both_directions_with},
    lab::{listen_and_hold, netstat, route_spoofed, send_crafted},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{Crafter, Lab, LabOptions, flags::*};
use serde_json::Value as Json;

/// Nothing listens here: illegal flag sets need no listener.
const CLOSED_PORT: u16 = 9000;
const GUESSED_PORT: u16 = 8080;
const CLEAN_PORT: u16 = 8082;
/// A spoofed client the server reaches through a static neighbour entry that the client
/// namespace ignores, so the spoofed handshakes stay half-open.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 77);

struct Scene {
    lab: Lab,
    daemon: Daemon,
    crafter: Crafter,
    dir: tempfile::TempDir,
}

const EVENT_LOG: &str = "events.jsonl";

impl Scene {
    fn start(flags: &[&str]) -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join(EVENT_LOG);
        let daemon = start_both_directions_with(&lab, dir.path(), &events, flags);
        let crafter = Crafter::client_to_server(&lab).unwrap();
        Scene {
            crafter,
            daemon,
            dir,
            lab,
        }
    }

    fn event_log(&self) -> Vec<Json> {
        read_json_lines(&self.dir.path().join(EVENT_LOG))
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, flags: u8, seq: u32, ack: u32) {
        send_crafted(&self.crafter, (from, to), flags, (seq, ack), &[]);
    }

    /// `count` segments with `flags` from `source` (a new port each) to a closed port.
    fn illegal_flags(&self, source: IpAddr, flags: u8, count: u16) {
        let closed = match source {
            IpAddr::V4(_) => SocketAddr::new(self.lab.server_v4.into(), CLOSED_PORT),
            IpAddr::V6(_) => SocketAddr::new(self.lab.server_v6.into(), CLOSED_PORT),
        };
        for port in 0..count {
            self.send(SocketAddr::new(source, 20_000 + port), closed, flags, 1, 0);
        }
    }

    fn metrics(&self) -> String {
        self.daemon.metrics(&self.lab)
    }

    fn top_sources_json(&self) -> Json {
        let body = http_get(&self.lab, &self.daemon.ns, "/api/v1/anomalies/top-sources")
            .expect("GET /api/v1/anomalies/top-sources");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `events` anomalies are counted, then lets the gauges refresh (every second).
    fn settle(&self, events: f64) {
        let counted = wait_for(Duration::from_secs(15), || {
            anomaly_total(&self.metrics()) >= events
        });
        assert!(counted, "not {events} anomalies:\n{}", self.metrics());
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(anomaly_total(&self.metrics()), events, "no stray anomalies");
        assert_eq!(
            series_value(&self.metrics(), "seqwatch_anomaly_events_dropped_total"),
            Some(0.0)
        );
    }
}

fn anomaly_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("seqwatch_handshake_anomalies_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The value of a label in a series line's `{…}`.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// Every `seqwatch_anomaly_top_source_events` series as kind → [(rank, events)], by rank.
fn top_gauge(metrics: &str) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut gauge: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("seqwatch_anomaly_top_source_events{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let rank = label(labels, "rank").unwrap().parse().unwrap();
        gauge
            .entry(label(labels, "kind").unwrap().to_owned())
            .or_default()
            .push((rank, value.parse().unwrap()));
    }
    for ranks in gauge.values_mut() {
        ranks.sort_by_key(|&(rank, _)| rank);
    }
    gauge
}

/// The JSON list of one kind as (rank, source, events, max_events).
fn json_sources(report: &Json, kind: &str) -> Vec<(u64, String, u64, u64)> {
    let kinds = report["kinds"].as_array().unwrap();
    let entry = kinds
        .iter()
        .find(|k| k["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {report}"));
    entry["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["rank"].as_u64().unwrap(),
                s["source"].as_str().unwrap().to_owned(),
                s["events"].as_u64().unwrap(),
                s["max_events"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn kind_events(report: &Json, kind: &str) -> u64 {
    let kinds = report["kinds"].as_array().unwrap();
    kinds.iter().find(|k| k["kind"] == kind).unwrap()["events"]
        .as_u64()
        .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn spoofed_sources_are_ranked_exactly_per_kind() {
    let scene = Scene::start(&["--top-sources", "3"]);
    // null_flags: four IPv4 sources, one more than K.
    let null_flags = [
        ("192.0.2.1", 5),
        ("192.0.2.2", 3),
        ("192.0.2.3", 2),
        ("192.0.2.4", 1),
    ];
    for (source, count) in null_flags {
        scene.illegal_flags(ip(source), 0, count);
    }
    // xmas_flags: other counts from two of them.
    scene.illegal_flags(ip("192.0.2.2"), FIN | PSH | URG, 4);
    scene.illegal_flags(ip("192.0.2.1"), FIN | PSH | URG, 1);
    // syn_fin over IPv6: two addresses of one /64 are one source.
    scene.illegal_flags(ip("fd00:aaaa:0:1::5"), SYN | FIN, 2);
    scene.illegal_flags(ip("fd00:aaaa:0:1:ffff::9"), SYN | FIN, 2);
    scene.illegal_flags(ip("fd00:aaaa:0:2::5"), SYN | FIN, 1);
    scene.settle(21.0);

    let want_gauge = BTreeMap::from([
        ("null_flags".to_owned(), vec![(1, 5.0), (2, 3.0), (3, 2.0)]),
        ("syn_fin".to_owned(), vec![(1, 4.0), (2, 1.0)]),
        ("xmas_flags".to_owned(), vec![(1, 4.0), (2, 1.0)]),
    ]);
    assert_eq!(top_gauge(&scene.metrics()), want_gauge);

    let report = scene.top_sources_json();
    assert_eq!(report["k"], 3);
    assert_eq!(report["window_seconds"], 300);
    let exact = |rank, source: &str, events| (rank, source.to_owned(), events, events);
    assert_eq!(
        json_sources(&report, "null_flags"),
        [
            exact(1, "192.0.2.1", 5),
            exact(2, "192.0.2.2", 3),
            exact(3, "192.0.2.3", 2)
        ]
    );
    assert_eq!(
        json_sources(&report, "xmas_flags"),
        [exact(1, "192.0.2.2", 4), exact(2, "192.0.2.1", 1)]
    );
    assert_eq!(
        json_sources(&report, "syn_fin"),
        [
            exact(1, "fd00:aaaa:0:1::/64", 4),
            exact(2, "fd00:aaaa:0:2::/64", 1)
        ]
    );
    assert_eq!(
        kind_events(&report, "null_flags"),
        11,
        "every source counts"
    );

    // Once ranked, a source's next event-log line carries its rank.
    scene.illegal_flags(ip("192.0.2.1"), 0, 1);
    scene.settle(22.0);
    let lines = scene.event_log();
    assert_eq!(lines.len(), 22, "every event logged (none rate-limited)");
    let last = lines.last().unwrap();
    assert_eq!(last["kind"], "null_flags");
    assert_eq!(last["source"], "192.0.2.1:20000");
    assert_eq!(last["source_rank"], 1);
    assert!(lines[0].get("source_rank").is_none(), "nothing ranked yet");
    scene.daemon.stop();
}

#[test]
fn a_flood_of_spoofed_sources_keeps_k_series_and_the_heavy_hitter_exact() {
    const K: usize = 10;
    const FLOOD: u32 = 5_000;
    const EVERY: u32 = 50;
    let scene = Scene::start(&[]);
    let heavy = ip("192.0.2.200");
    let mut heavy_events = 0;
    for i in 0..FLOOD {
        if i % EVERY == 0 {
            scene.illegal_flags(heavy, 0, 1);
            heavy_events += 1;
        }
        let spoofed = IpAddr::from((0x0ac8_0000 + i).to_be_bytes()); // 10.200.0.0/16
        scene.illegal_flags(spoofed, 0, 1);
    }
    scene.settle(f64::from(FLOOD + heavy_events));

    let gauge = top_gauge(&scene.metrics());
    let null_flags = &gauge["null_flags"];
    assert_eq!(null_flags.len(), K, "K series: {gauge:?}");
    assert_eq!(null_flags[0], (1, f64::from(heavy_events)));
    assert_eq!(gauge.len(), 1, "one kind");

    let report = scene.top_sources_json();
    let sources = json_sources(&report, "null_flags");
    assert_eq!(sources.len(), K);
    let events = u64::from(heavy_events);
    assert_eq!(sources[0], (1, heavy.to_string(), events, events));
    assert_eq!(
        kind_events(&report, "null_flags"),
        u64::from(FLOOD + heavy_events)
    );
    scene.daemon.stop();
}

fn spoofing_score(metrics: &str, service: SocketAddr) -> Option<f64> {
    let series = format!("seqwatch_spoofing_attempt_score{{service=\"{service}\"}}");
    series_value(metrics, &series)
}

/// Challenge ACKs sent and rate-limited in the server namespace so far.
fn challenge_acks(lab: &Lab) -> u64 {
    let counters = netstat(lab, &lab.server_ns);
    counters["TcpExtTCPChallengeACK"] + counters["TcpExtTCPACKSkippedChallenge"]
}

#[test]
fn blind_guesses_raise_their_services_spoofing_score_exactly() {
    // A one-minute window: the score is the number of guesses.
    let scene = Scene::start(&["--anomaly-window", "60"]);
    let challenge_acks_before = challenge_acks(&scene.lab);
    route_spoofed(&scene.lab, SPOOFED, Some(scene.crafter.source_mac()));
    let guessed = SocketAddr::new(scene.lab.server_v4.into(), GUESSED_PORT);
    let clean = SocketAddr::new(scene.lab.server_v4.into(), CLEAN_PORT);
    listen_and_hold(&scene.lab, guessed);
    listen_and_hold(&scene.lab, clean);

    // Three spoofed handshakes, four ISN guesses each (right seq, wrong ack), then one with both
    // numbers wrong, one with only the seq wrong (no guess: it acks our ISN) and a blind RST.
    let mut guesses = 0;
    for port in 30_001..=30_003 {
        let from = SocketAddr::new(SPOOFED.into(), port);
        scene.send(from, guessed, SYN, 1000, 0);
        let isn = sampled_server_isn(&scene.daemon, from).expect("the SYN-ACK sampled");
        for guess in 1..=4u32 {
            scene.send(from, guessed, ACK, 1001, isn.wrapping_add(guess << 20));
            guesses += 1;
        }
        scene.send(
            from,
            guessed,
            ACK,
            1001 + (1 << 30),
            isn.wrapping_add(7 << 24),
        );
        scene.send(from, guessed, ACK, 1001 + (1 << 30), isn.wrapping_add(1));
        guesses += 1;
    }
    let from = SocketAddr::new(SPOOFED.into(), 30_010);
    scene.send(from, guessed, SYN, 5000, 0);
    sampled_server_isn(&scene.daemon, from).expect("the SYN-ACK sampled");
    scene.send(from, guessed, RST, 5001 + (1 << 20), 0);
    guesses += 1;
    // The clean service: an anomaly that is no guess, and an ordinary connection.
    scene.send(SocketAddr::new(SPOOFED.into(), 30_020), clean, 0, 1, 0);
    let connection = scene.lab.run_in(&scene.lab.client_ns, || {
        TcpStream::connect_timeout(&clean, Duration::from_secs(5)).expect("connect")
    });
    // 3 × (4 + 1 + 1) third packets, a RST, a NULL segment.
    scene.settle(20.0);

    let metrics = scene.metrics();
    assert_eq!(spoofing_score(&metrics, guessed), Some(f64::from(guesses)));
    assert_eq!(spoofing_score(&metrics, clean), Some(0.0), "{metrics}");

    // SYNs into the established connection: RFC 5961 challenge ACKs, per namespace.
    let established = connection.local_addr().unwrap();
    for seq in [1, 2, 3] {
        scene.send(established, clean, SYN, seq, 0);
    }
    let kernel = wait_for(Duration::from_secs(5), || {
        challenge_acks(&scene.lab) - challenge_acks_before >= 3
    });
    assert!(kernel, "the kernel counted no challenge ACKs");
    let counted = challenge_acks(&scene.lab) - challenge_acks_before;
    let scored = wait_for(Duration::from_secs(5), || {
        series_value(&scene.metrics(), "seqwatch_spoofing_challenge_ack_score")
            == Some(counted as f64)
    });
    assert!(scored, "challenge ACKs {counted}:\n{}", scene.metrics());
    eprintln!("{guesses} guesses scored; {counted} challenge ACKs (sent + rate-limited) scored");
    assert_eq!(
        spoofing_score(&scene.metrics(), clean),
        Some(0.0),
        "not attributed to a service"
    );
    scene.daemon.stop();
}
