//! Bounds that hold against a hostile network: the real daemon (both directions) on a lab's
//! server veth, floods of crafted segments from the client namespace and of real handshakes.
//! Needs root; every lab namespace is removed when its test ends.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::{
        METRICS_ADDR, read_json_lines, scrape, start_both_directions, start_both_directions_with,
    },
    host::rss_bytes,
    lab::{ip, listen, send_crafted},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{
    Crafter, Lab, LabOptions,
    flags::{FIN, SYN},
};

/// How long the floods last.
const FLOOD: Duration = Duration::from_secs(8);
/// Nothing listens here.
const CLOSED_PORT: u16 = 8081;

/// The daemon's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The sum of every series of `name`.
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split_once('{').map_or(series, |(name, _)| name);
            (series_name == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// SYN+FIN segments from random sources in 10.200.0.0/16 to `to`, until `stop`.
fn flag_flood(crafter: &Crafter, to: SocketAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while !stop.load(Ordering::Relaxed) {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let bits = (state >> 32) as u32;
        let source = Ipv4Addr::new(10, 200, (bits >> 8) as u8, bits as u8);
        let from = SocketAddr::new(source.into(), 1024 + (bits >> 16) as u16 % 60_000);
        send_crafted(crafter, (from, to), SYN | FIN, (1, 0), &[]);
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The attack of issue 23's item 2: a flag flood from random sources (`hping3 --rand-source`),
/// which a per-source limit cannot hold. It used to fill the disk with the event log, and a
/// scrape waited for the flood to end. Here, 8 s of SYN+FIN segments from random sources to a
/// closed port: the event log stays within its budget and size, every line left out is
/// counted, the daemon takes under a quarter of one CPU, and every scrape answers within a
/// second.
#[test]
fn a_random_source_flag_flood_leaves_the_event_log_cpu_and_scrapes_bounded() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let flags = ["--event-log-max-bytes", "1048576"];
    let daemon = start_both_directions_with(&lab, dir.path(), &events, &flags);
    let crafter = Crafter::client_to_server(&lab).unwrap();
    let closed = SocketAddr::new(lab.server_v4.into(), CLOSED_PORT);
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let cpu_before = cpu_seconds(daemon.pid());
    let started = Instant::now();
    let mut slowest_scrape = Duration::ZERO;
    thread::scope(|scope| {
        scope.spawn(|| flag_flood(&crafter, closed, &stop, &sent));
        while started.elapsed() < FLOOD {
            let asked = Instant::now();
            scrape(&lab, &daemon.ns).expect("a scrape during the flood");
            slowest_scrape = slowest_scrape.max(asked.elapsed());
            thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let flood_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.pid()) - cpu_before;
    let sent = sent.load(Ordering::Relaxed);
    let mut metrics = String::new();
    let mut counted = -1.0;
    // Until the daemon has read what the flood left in the ring buffer.
    wait_for(Duration::from_secs(20), || {
        metrics = daemon.metrics(&lab);
        let now = total(&metrics, "seqwatch_handshake_anomalies_total");
        let settled = now == counted;
        counted = now;
        settled
    });
    let log_bytes: u64 = [events.clone(), events.with_extension("jsonl.1")]
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let lines = read_json_lines(&events);
    let written = total(&metrics, "seqwatch_event_log_lines_total");
    let suppressed = total(&metrics, "seqwatch_event_log_lines_suppressed_total");
    let global = series_value(
        &metrics,
        "seqwatch_event_log_lines_suppressed_total{reason=\"global_rate\"}",
    );
    eprintln!(
        "{sent} sent in {flood_seconds:.1} s; {counted} counted, {} dropped in the kernel; \
         daemon CPU {cpu:.2} s; slowest scrape {slowest_scrape:?}; event log: {written} lines \
         ({log_bytes} bytes), {suppressed} suppressed",
        total(&metrics, "seqwatch_anomaly_events_dropped_total"),
    );
    assert!(
        slowest_scrape < Duration::from_secs(1),
        "a scrape took {slowest_scrape:?}"
    );
    assert!(
        cpu < 0.25 * flood_seconds,
        "the daemon took {cpu:.2} s of CPU in {flood_seconds:.1} s"
    );
    // The log's budget: a burst of 1000 lines, then 100 a second; at most 1 MiB a file.
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        written <= 1000.0 + 100.0 * seconds,
        "{written} lines in {seconds:.1} s"
    );
    assert!(log_bytes <= 2 << 20, "{log_bytes} bytes of event log");
    assert_eq!(lines.len() as f64, written, "no rotation at these sizes");
    assert!(lines.iter().all(|line| line["kind"] == "syn_fin"));
    // Every line left out is counted: by the global budget, as the sources are all new.
    assert!(global.is_some_and(|global| global > 0.0 && global == suppressed));
    assert_eq!(written + suppressed, counted, "{metrics}");
    daemon.stop();
}

/// Remote services the label flood makes this host connect to, one handshake each: twice the
/// default `--max-services`.
const FLOOD_SERVICES: u32 = 8192;
/// The closed ports the anomaly flood hits: as many as `--max-services`.
const FLOOD_PORTS: u16 = 4096;
/// A real local service, a real remote one this host keeps connecting to, and a local service
/// that starts listening after the floods, on a high port (above the ephemeral range, which
/// the flood's connections have used).
const LOCAL_PORT: u16 = 8080;
const REMOTE_PORT: u16 = 9000;
const LATE_PORT: u16 = 61_000;
/// The daemon's resident memory at the cap, at most.
const MAX_RSS_BYTES: u64 = 96 << 20;

/// Every `service` label value of a scrape.
fn service_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .split("service=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(value, _)| value.to_owned()))
        .collect()
}

/// Connects from `ns` to `to` over and over (closing each), until `stop`.
fn keep_connecting(lab: &Lab, ns: &str, to: SocketAddr, stop: &AtomicBool) {
    lab.run_in(ns, || {
        while !stop.load(Ordering::Relaxed) {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .unwrap_or_else(|err| panic!("connecting to {to}: {err}"));
            thread::sleep(Duration::from_millis(20));
        }
    });
}

/// The attack of issue 23's item 5: remote `address:port` services rotated through the
/// service cap (here 8192 real handshakes, to 8192 servers: a web page can make a host do
/// that), and anomalies to 4096 closed ports, which used to take every anomaly label for
/// good. A real local service and a real remote one this host keeps using keep their labels
/// and their scorers throughout; the `service` values seen across scrapes stay those of real
/// services; a service that starts listening after the floods gets its own label; and the
/// daemon's memory at the cap stays under [`MAX_RSS_BYTES`].
#[test]
fn label_floods_neither_churn_labels_nor_crowd_out_real_services() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let daemon = start_both_directions(&lab, dir.path(), &events);
    let (server_ns, client_ns) = (lab.server_ns.as_str(), lab.client_ns.as_str());
    // Every address of 10.198.0.0/16 is the client namespace's, where port 80 listens.
    ip(
        &lab,
        client_ns,
        &["route", "add", "local", "10.198.0.0/16", "dev", "lo"],
    );
    let via = lab.client_v4.to_string();
    ip(
        &lab,
        server_ns,
        &["route", "add", "10.198.0.0/16", "via", &via],
    );
    listen(&lab, client_ns, SocketAddr::from(([0, 0, 0, 0], 80)));
    let local = SocketAddr::new(lab.server_v4.into(), LOCAL_PORT);
    let remote = SocketAddr::new(lab.client_v4.into(), REMOTE_PORT);
    listen(&lab, server_ns, local);
    listen(&lab, client_ns, remote);
    let real = BTreeSet::from([local.to_string(), remote.to_string()]);
    let samples = |metrics: &str, service: &String| {
        series_value(
            metrics,
            &format!("seqwatch_isn_samples{{service=\"{service}\"}}"),
        )
    };
    let stop = AtomicBool::new(false);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut last_samples: Vec<f64> = vec![0.0; real.len()];
    let mut scrapes = 0;
    thread::scope(|scope| {
        scope.spawn(|| keep_connecting(&lab, client_ns, local, &stop));
        scope.spawn(|| keep_connecting(&lab, server_ns, remote, &stop));
        let labelled = wait_for(Duration::from_secs(20), || {
            let metrics = daemon.metrics(&lab);
            real.iter()
                .all(|service| samples(&metrics, service).is_some())
        });
        assert!(
            labelled,
            "the real services never got their labels:\n{}",
            daemon.metrics(&lab)
        );
        let flood = scope.spawn(|| {
            let crafter = Crafter::client_to_server(&lab).unwrap();
            for port in 1..=FLOOD_PORTS {
                let from = SocketAddr::from(([10, 200, (port >> 8) as u8, port as u8], 40_000));
                let to = SocketAddr::new(lab.server_v4.into(), port);
                send_crafted(&crafter, (from, to), SYN | FIN, (1, 0), &[]);
            }
            lab.run_in(server_ns, || {
                for n in 0..FLOOD_SERVICES {
                    let to = SocketAddr::from(([10, 198, (n >> 8) as u8, n as u8], 80));
                    TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .unwrap_or_else(|err| panic!("connecting to {to}: {err}"));
                }
            });
        });
        while !flood.is_finished() || scrapes < 8 {
            let metrics = daemon.metrics(&lab);
            seen.extend(service_labels(&metrics));
            for (last, service) in last_samples.iter_mut().zip(&real) {
                let now = samples(&metrics, service);
                assert!(
                    now.is_some_and(|now| now >= *last),
                    "{service} lost its label or its scorer: {now:?} samples after {last}"
                );
                *last = now.unwrap_or_default();
            }
            scrapes += 1;
            thread::sleep(Duration::from_millis(250));
        }
        flood.join().unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    let metrics = daemon.metrics(&lab);
    let tracked = series_value(&metrics, "seqwatch_services").unwrap();
    let rss = rss_bytes(daemon.pid());
    eprintln!(
        "{scrapes} scrapes; service labels seen: {seen:?}; {tracked} services tracked, \
         daemon RSS {} MiB",
        rss >> 20
    );
    assert_eq!(tracked, 4096.0, "the flood filled the cap");
    assert!(
        rss <= MAX_RSS_BYTES,
        "{} MiB resident at the cap",
        rss >> 20
    );

    // A listener that opens after the floods gets its own label.
    let late = SocketAddr::new(lab.server_v4.into(), LATE_PORT);
    listen(&lab, server_ns, late);
    let crafter = Crafter::client_to_server(&lab).unwrap();
    send_crafted(
        &crafter,
        (SocketAddr::from(([10, 200, 0, 1], 40_000)), late),
        SYN | FIN,
        (1, 0),
        &[],
    );
    let series =
        format!("seqwatch_handshake_anomalies_total{{kind=\"syn_fin\",service=\"{late}\"}}");
    let counted = wait_for(Duration::from_secs(10), || {
        series_value(&daemon.metrics(&lab), &series) == Some(1.0)
    });
    assert!(counted, "{series} never came:\n{}", daemon.metrics(&lab));
    let other = "seqwatch_handshake_anomalies_total{kind=\"syn_fin\",service=\"other\"}";
    assert_eq!(series_value(&metrics, other), Some(f64::from(FLOOD_PORTS)));
    // Only real services had labels of their own (the daemon's own /metrics listener too: the
    // scrapes' resets), far within the documented bound.
    let allowed: BTreeSet<String> = real
        .iter()
        .cloned()
        .chain([METRICS_ADDR.to_owned(), "other".to_owned()])
        .collect();
    assert!(seen.is_subset(&allowed), "{seen:?}");
    daemon.stop();
}
