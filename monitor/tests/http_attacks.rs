//! The HTTP endpoints against a hostile network, on the real daemon in a lab namespace:
//! 1 100 idle connections to a daemon limited to 1 024 descriptors. A scrape must answer within
//! a second, the socket-table reader must keep working, and the daemon's memory stays bounded.
//! A client that stops reading its responses is cut off.
//! Needs root; the lab namespaces go with the test.

// This crate uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use common::{Daemon, METRICS_ADDR, series_value, wait_for};
use prometheus::{Encoder as _, Registry};
use seqwatch::{
    lab::{Lab, LabOptions},
    web::{HttpMetrics, MAX_CONNECTIONS, WebSecurity},
};

/// What the attacks were reported with.
const IDLE_CONNECTIONS: usize = 1100;
const DESCRIPTORS: u64 = 1024;
/// A scrape under attack answers within this.
const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
/// The daemon's resident memory under the attack: about 25 MiB when idle here; 256
/// connections' buffers and the attackers' requests must not double it.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// How long a connection may sit without a complete request (the daemon's header timeout,
/// 10 s), with room for a loaded machine.
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(14);

/// Loading the classifiers takes 10-20 s of CPU here: the daemons start one at a time.
static DAEMON_LOADING: Mutex<()> = Mutex::new(());

fn metrics_addr() -> SocketAddrV4 {
    METRICS_ADDR.parse().unwrap()
}

/// The daemon on the lab server's veth, through `wrapper`; returns once it serves.
fn start_daemon(lab: &Lab, dir: &Path, wrapper: &[&str], flags: &[&str]) -> Daemon {
    let loading = DAEMON_LOADING
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut args = vec!["--interface", lab.server_if.as_str()];
    args.extend_from_slice(flags);
    let daemon = Daemon::start_wrapped(lab, &lab.server_ns, dir, wrapper, &args);
    let serving = format!("serving http://{METRICS_ADDR}/metrics");
    let up = wait_for(Duration::from_secs(60), || daemon.log().contains(&serving));
    drop(loading);
    assert!(up, "the daemon never served:\n{}", daemon.log());
    daemon
}

/// A line of /proc/PID/status, without its name, such as `VmRSS:` or `Threads:`.
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// GET `path` from inside `ns` with a 5 s limit: the status and body, and how long it took.
fn timed_get(
    lab: &Lab,
    ns: &str,
    path: &str,
    auth: Option<&str>,
) -> (Option<(u16, String)>, Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{METRICS_ADDR}{path}");
    lab.run_in(ns, || {
        let started = Instant::now();
        let mut request = agent.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.call().ok().and_then(|mut response| {
            let body = response.body_mut().read_to_string().ok()?;
            Some((response.status().as_u16(), body))
        });
        (response, started.elapsed())
    })
}

/// Whether the daemon has closed the connection (EOF or reset), without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != ErrorKind::WouldBlock,
    }
}

#[test]
fn idle_connections_neither_exhaust_descriptors_nor_lock_out_a_scrape() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nofile = format!("--nofile={DESCRIPTORS}:{DESCRIPTORS}");
    let daemon = start_daemon(&lab, dir.path(), &["prlimit", &nofile, "--"], &[]);
    assert_eq!(open_files_limit(daemon.pid()), DESCRIPTORS);

    let addr = SocketAddr::from(metrics_addr());
    let held: Vec<TcpStream> = lab.run_in(&lab.server_ns, || {
        (0..IDLE_CONNECTIONS)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect()
    });
    assert!(
        held.len() >= DESCRIPTORS as usize,
        "only {} connections",
        held.len()
    );
    eprintln!("holding {} idle connections", held.len());

    for _ in 0..3 {
        let (response, took) = timed_get(&lab, &lab.server_ns, "/metrics", None);
        assert!(
            response.as_ref().is_some_and(|(status, _)| *status == 200) && took < SCRAPE_LIMIT,
            "a scrape while {} idle connections are held: {:?} after {took:?}\n{}",
            held.len(),
            response.map(|(status, _)| status),
            daemon.log()
        );
        eprintln!("scrape under idle connections: {took:?}");
    }
    // The socket table is still read: its latest report counts the held connections'
    // ephemeral ports, which only a dump taken after they opened can.
    let mut in_use = 0;
    let seen = wait_for(Duration::from_secs(5), || {
        let (response, _) = timed_get(&lab, &lab.server_ns, "/api/v1/owners", None);
        in_use = response
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|report| report["ephemeral_ports"]["in_use"].as_u64())
            .unwrap_or(0);
        in_use >= held.len() as u64
    });
    assert!(
        seen,
        "/api/v1/owners saw {in_use} ephemeral ports in use:\n{}",
        daemon.log()
    );
    let metrics = daemon.metrics(&lab);
    assert_eq!(
        series_value(&metrics, "seqwatch_sock_diag_failures_total"),
        Some(0.0)
    );
    assert!(
        !daemon.log().contains("Too many open files"),
        "{}",
        daemon.log()
    );
    let max = series_value(&metrics, "seqwatch_http_connections_max").unwrap();
    let open = series_value(&metrics, "seqwatch_http_connections").unwrap();
    let evicted = series_value(&metrics, "seqwatch_http_connections_evicted_total").unwrap();
    assert!(
        open <= max && max + 256.0 <= DESCRIPTORS as f64,
        "{metrics}"
    );
    assert!(
        evicted >= held.len() as f64 - max,
        "evicted {evicted} of {} at a cap of {max}",
        held.len()
    );
    let rss = status_field(daemon.pid(), "VmRSS:");
    eprintln!("cap {max}, open {open}, evicted {evicted}, RSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "RSS {rss} KiB");

    // Connections that send nothing are closed once the header timeout passes.
    let started = Instant::now();
    let all_closed = wait_for(IDLE_CLOSE_LIMIT, || held.iter().all(closed_by_server));
    let still_open = held.iter().filter(|s| !closed_by_server(s)).count();
    assert!(
        all_closed,
        "{still_open} idle connections still open after {IDLE_CLOSE_LIMIT:?}"
    );
    eprintln!("every idle connection closed after {:?}", started.elapsed());
    let metrics = daemon.metrics(&lab);
    assert!(
        series_value(&metrics, "seqwatch_http_timeouts_total").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    daemon.stop();
}

/// The HTTP server alone (no kernel programs), in the lab's server namespace, serving a 1 MiB
/// body at /big: its address, and its metrics' registry.
fn big_body_server(lab: &Lab, runtime: &tokio::runtime::Runtime) -> (SocketAddr, Registry) {
    let registry = Registry::new();
    let metrics = HttpMetrics::new(&registry).unwrap();
    let app = Router::new().route("/big", get(|| async { vec![b'x'; 1 << 20] }));
    let addr = lab.run_in(&lab.server_ns, || {
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            WebSecurity::plain().serve(listener, app, MAX_CONNECTIONS, metrics);
            addr
        })
    });
    (addr, registry)
}

fn render(registry: &Registry) -> String {
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    String::from_utf8(text).unwrap()
}

/// A client that asks for many large responses and never reads them: the kernel gives up on
/// the unacknowledged data (TCP_USER_TIMEOUT) and the connection is closed, where it used to
/// be held forever.
#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (addr, registry) = big_body_server(&lab, &runtime);
    let client = lab.run_in(&lab.server_ns, || TcpStream::connect(addr).unwrap());
    // Far more than the socket buffers on both sides hold.
    let requests = "GET /big HTTP/1.1\r\nHost: seqwatch\r\n\r\n".repeat(64);
    (&client).write_all(requests.as_bytes()).unwrap();
    let started = Instant::now();
    let connections = |metrics: &str| series_value(metrics, "seqwatch_http_connections");
    let stuck = wait_for(Duration::from_secs(2), || {
        connections(&render(&registry)) == Some(1.0)
    });
    assert!(stuck, "{}", render(&registry));
    let cut_off = wait_for(Duration::from_secs(30), || {
        let metrics = render(&registry);
        connections(&metrics) == Some(0.0)
            && series_value(&metrics, "seqwatch_http_timeouts_total") == Some(1.0)
    });
    assert!(
        cut_off,
        "a client that does not read still holds its connection after {:?}:\n{}",
        started.elapsed(),
        render(&registry)
    );
    eprintln!(
        "a client that stopped reading was cut off after {:?}",
        started.elapsed()
    );
}
