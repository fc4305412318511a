//! Top anomaly sources and spoofing scores against the real kernel: the real daemon (both
//! directions) in the server namespace of a lab, crafted segments from spoofed sources sent
//! from the client namespace. Ranks and counts come out exactly in the gauge, the JSON API and
//! the event log; a flood of 5 000 distinct sources keeps at most K series and K listed sources
//! while its heavy hitter stays rank 1 with its exact count; blind ISN and RST guesses raise
//! their service's spoofing score by exactly their number per minute, a clean service stays 0,
//! and SYNs into an established connection show up in the challenge-ACK score as the kernel
//! counted them. Behind a SYN flood (`hping3 -S --rand-source --flood`, as ./x setup installs
//! it, from the client namespace) 20 third packets to handshakes opened from a forged client
//! guess our ISN wrong: every guess is counted as a spoofing attempt, exactly once, by the
//! handshake tracker, whose open handshakes the flood could not evict, and by the kernel's own
//! verdict (the listener's reset) when the tracker has no state to judge with; during the flood
//! a scrape stays under a second and the daemon's memory does not grow. Needs root; every lab
//! namespace is removed when its test ends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, http_get, read_json_lines, sampled_server_isn, start_both_directions_with},
    lab::{listen_and_hold, netstat, route_spoofed, send_crafted, write_sysctl},
    prometheus::series_value,
    wait_for,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::lab::{Crafter, Lab, LabOptions, flags::*};
use seqwatch_common::handshake::STATE_SLOTS;
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

// Spoofing attempts behind a SYN flood.

const HANDSHAKES: u16 = 20;
/// The forged client's ISN: its third packets carry ISN + 1 and a wrong ack.
const CLIENT_ISN: u32 = 1000;
const WRONG_ACK: u32 = 0x5eed_0001;
/// The flood goes on until the server has answered this many SYNs: twice the state table's
/// slots, which wipes a direct-mapped table (each SYN takes a slot at random) and its
/// 65 536-slot filter, all but certainly ...
const FLOOD_SYNS: u64 = 2 * STATE_SLOTS as u64;
/// ... or until this long has passed (the flood is then too small to test anything).
const FLOOD_AT_MOST: Duration = Duration::from_secs(15);
/// The daemon's resident memory may not grow more than this during the flood.
const RSS_GROWTH_AT_MOST_KIB: u64 = 8 << 10;

struct FloodScene {
    lab: Lab,
    crafter: Crafter,
    guessed: SocketAddr,
    _dir: tempfile::TempDir,
}

impl FloodScene {
    /// A lab whose server routes every address (the flood's SYN-ACKs leave, and the client
    /// namespace drops them) and listens on the guessed port.
    fn new() -> FloodScene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let crafter = Crafter::client_to_server(&lab).unwrap();
        route_spoofed(&lab, SPOOFED, Some(crafter.source_mac()));
        let client = lab.client_v4.to_string();
        common::lab::ip(
            &lab,
            &lab.server_ns,
            &["route", "add", "default", "via", &client],
        );
        let guessed = SocketAddr::new(lab.server_v4.into(), GUESSED_PORT);
        listen_and_hold(&lab, guessed);
        FloodScene {
            lab,
            crafter,
            guessed,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn daemon(&self) -> Daemon {
        let events = self._dir.path().join("events.jsonl");
        let flags = ["--anomaly-window", "60"];
        start_both_directions_with(&self.lab, self._dir.path(), &events, &flags)
    }

    fn spoofed(port: u16) -> SocketAddr {
        SocketAddr::new(SPOOFED.into(), 40_000 + port)
    }

    /// The forged client's SYNs: the server's listener answers each.
    fn open_handshakes(&self) {
        for port in 1..=HANDSHAKES {
            let segment = (Self::spoofed(port), self.guessed);
            send_crafted(&self.crafter, segment, SYN, (CLIENT_ISN, 0), &[]);
        }
    }

    /// One third packet per handshake, with the right seq and a wrong ack.
    fn guess(&self) {
        for port in 1..=HANDSHAKES {
            let segment = (Self::spoofed(port), self.guessed);
            send_crafted(
                &self.crafter,
                segment,
                ACK,
                (CLIENT_ISN + 1, WRONG_ACK),
                &[],
            );
        }
    }

    /// A TcpExt counter of the server's namespace.
    fn netstat(&self, field: &str) -> u64 {
        netstat(&self.lab, &self.lab.server_ns)[&format!("TcpExt{field}")]
    }

    /// `seqwatch_<name>{service="<guessed>"}`, 0 when absent.
    fn per_service(&self, metrics: &str, name: &str) -> f64 {
        let series = format!("seqwatch_{name}{{service=\"{}\"}}", self.guessed);
        series_value(metrics, &series).unwrap_or(0.0)
    }

    fn wrong_acks(&self, metrics: &str) -> f64 {
        let series = format!(
            "seqwatch_handshake_anomalies_total{{kind=\"handshake_ack_wrong_ack\",service=\"{}\"}}",
            self.guessed
        );
        series_value(metrics, &series).unwrap_or(0.0)
    }

    /// Waits (at most 15 s) until the service's spoofing score is at least `guesses`, then
    /// a refresh longer: what /metrics says then.
    fn scored(&self, daemon: &Daemon, guesses: f64) -> String {
        wait_for(Duration::from_secs(15), || {
            self.per_service(&daemon.metrics(&self.lab), "spoofing_attempt_score") >= guesses
        });
        thread::sleep(Duration::from_millis(1500));
        daemon.metrics(&self.lab)
    }
}

/// `hping3 -S --rand-source --flood` at the guessed port, from the client namespace.
struct Flood(Child);

impl Flood {
    fn start(scene: &FloodScene) -> Flood {
        let port = GUESSED_PORT.to_string();
        let server = scene.lab.server_v4.to_string();
        let child = scene
            .lab
            .command_in(&scene.lab.client_ns, "hping3")
            .args(["-q", "-S", "--rand-source", "--flood", "-p", &port, &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hping3 (apt-get install hping3; ./x setup does)");
        Flood(child)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let _ = self.0.wait();
    }
}

/// The daemon's resident memory, KiB.
fn rss_kib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 20 half-open handshakes, a flood of random-source SYNs that outnumbers the state table's
/// slots twice over, then 20 wrong-ack guesses: all 20 are flagged by the tracker with the
/// numbers their handshakes expect, and the service's spoofing score (a one-minute window:
/// the number of guesses) is exactly 20, the kernel's resets adding nothing to what the
/// tracker judged. The flood's cookie handshakes gave up their ways; no open handshake was
/// refused or evicted. Scrapes stayed under a second and the daemon's RSS flat.
#[test]
fn wrong_ack_guesses_behind_a_syn_flood_are_all_counted() {
    let scene = FloodScene::new();
    let daemon = scene.daemon();
    scene.open_handshakes();
    let opened = wait_for(Duration::from_secs(5), || {
        let metrics = daemon.metrics(&scene.lab);
        series_value(&metrics, "seqwatch_handshake_state_lookups_total")
            >= Some(2.0 * f64::from(HANDSHAKES))
    });
    assert!(opened, "the SYNs and SYN-ACKs never reached the tracker");

    let answered_before = scene.netstat("SyncookiesSent");
    let rss_before = rss_kib(&daemon);
    let (mut slowest_scrape, mut rss_most) = (Duration::ZERO, rss_before);
    let started = Instant::now();
    let flood = Flood::start(&scene);
    let mut flooded = 0;
    while flooded < FLOOD_SYNS && started.elapsed() < FLOOD_AT_MOST {
        thread::sleep(Duration::from_millis(250));
        let scrape = Instant::now();
        daemon.metrics(&scene.lab);
        slowest_scrape = slowest_scrape.max(scrape.elapsed());
        rss_most = rss_most.max(rss_kib(&daemon));
        flooded = scene.netstat("SyncookiesSent") - answered_before;
    }
    drop(flood);
    let took = started.elapsed();
    assert!(
        flooded >= FLOOD_SYNS,
        "the flood is too small to test anything: {flooded} SYNs answered in {took:?}"
    );
    eprintln!(
        "flood: {flooded} SYN cookies in {took:?}; slowest scrape {slowest_scrape:?}; \
         RSS {rss_before} KiB, at most {rss_most} KiB"
    );

    scene.guess();
    let metrics = scene.scored(&daemon, f64::from(HANDSHAKES));
    let guesses = f64::from(HANDSHAKES);
    assert_eq!(
        scene.per_service(&metrics, "spoofing_attempt_score"),
        guesses,
        "every guess counted, once"
    );
    assert_eq!(
        scene.wrong_acks(&metrics),
        guesses,
        "all judged by the tracker"
    );
    assert_eq!(
        scene.per_service(&metrics, "spoofing_kernel_guesses_total"),
        0.0
    );
    let evicted = |reason: &str| {
        let series = format!("seqwatch_handshake_state_evicted_total{{reason=\"{reason}\"}}");
        series_value(&metrics, &series).unwrap_or(0.0)
    };
    assert!(evicted("cookie") > 0.0, "the flood's ways were taken back");
    assert_eq!(
        evicted("expired"),
        0.0,
        "no open handshake lost its protection"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1),
        "{slowest_scrape:?}"
    );
    assert!(
        rss_most - rss_before <= RSS_GROWTH_AT_MOST_KIB,
        "RSS {rss_before} -> {rss_most} KiB"
    );
    daemon.stop();
}

/// Handshakes the tracker never saw (opened before the daemon, and answered with SYN cookies,
/// which the kernel never retransmits) leave it nothing to judge their guesses with: the
/// listener's resets count them instead, once each. The kernel checks every guess against
/// its cookie (TcpExt SyncookiesFailed) and resets it for its flags, which the daemon counts
/// per service: score 20, no double count with SyncookiesFailed; over IPv6 too (5 guesses
/// from the client's own address, at an IPv6 listener).
#[test]
fn guesses_the_tracker_cannot_judge_are_counted_from_the_kernels_resets() {
    const V6_GUESSES: u16 = 5;
    let scene = FloodScene::new();
    write_sysctl(
        &scene.lab,
        &scene.lab.server_ns,
        "net.ipv4.tcp_syncookies",
        "2",
    );
    let guessed_v6 = SocketAddr::new(scene.lab.server_v6.into(), GUESSED_PORT);
    listen_and_hold(&scene.lab, guessed_v6);
    let client_v6 = |port: u16| SocketAddr::new(scene.lab.client_v6.into(), 40_000 + port);
    scene.open_handshakes();
    for port in 1..=V6_GUESSES {
        let segment = (client_v6(port), guessed_v6);
        send_crafted(&scene.crafter, segment, SYN, (CLIENT_ISN, 0), &[]);
    }
    let all = u64::from(HANDSHAKES + V6_GUESSES);
    let answered = wait_for(Duration::from_secs(5), || {
        scene.netstat("SyncookiesSent") >= all
    });
    assert!(answered, "the SYNs were not answered");
    let daemon = scene.daemon();
    let failed_before = scene.netstat("SyncookiesFailed");

    scene.guess();
    for port in 1..=V6_GUESSES {
        let segment = (client_v6(port), guessed_v6);
        send_crafted(
            &scene.crafter,
            segment,
            ACK,
            (CLIENT_ISN + 1, WRONG_ACK),
            &[],
        );
    }
    let metrics = scene.scored(&daemon, f64::from(HANDSHAKES));
    let guesses = f64::from(HANDSHAKES);
    assert_eq!(
        scene.per_service(&metrics, "spoofing_attempt_score"),
        guesses,
        "every guess counted, once"
    );
    assert_eq!(
        scene.per_service(&metrics, "spoofing_kernel_guesses_total"),
        guesses
    );
    assert_eq!(scene.wrong_acks(&metrics), 0.0, "the tracker had no state");
    let v6 = |name: &str| {
        let series = format!("seqwatch_{name}{{service=\"{guessed_v6}\"}}");
        series_value(&metrics, &series)
    };
    assert_eq!(v6("spoofing_attempt_score"), Some(f64::from(V6_GUESSES)));
    assert_eq!(
        v6("spoofing_kernel_guesses_total"),
        Some(f64::from(V6_GUESSES))
    );
    assert_eq!(
        scene.netstat("SyncookiesFailed") - failed_before,
        all,
        "each guess failed its cookie check"
    );
    daemon.stop();
}
