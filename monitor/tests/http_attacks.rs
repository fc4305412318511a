//! The HTTP endpoints against a hostile network, on the real daemon in a lab namespace:
//! 1 100 idle connections to a daemon limited to 1 024 descriptors, and 64 clients hammering
//! basic auth with wrong passwords. Under each, a scrape must answer within a second, the
//! socket-table reader must keep working, and the daemon's threads, CPU and memory stay
//! bounded; an unknown user's rejection must cost what a known user's wrong password costs.
//! A client that stops reading its responses is cut off.
//! Needs root; the lab namespaces go with the test.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use common::{
    daemon::{Daemon, METRICS_ADDR},
    prometheus::series_value,
    wait_for,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use prometheus::Encoder as _;
use seqwatch::{
    export::{
        metrics::Registry,
        web::{HttpMetrics, MAX_CONNECTIONS, WebSecurity},
    },
    lab::{Lab, LabOptions},
};

/// What the attacks were reported with.
const IDLE_CONNECTIONS: usize = 1100;
const DESCRIPTORS: u64 = 1024;
const WRONG_PASSWORD_CLIENTS: usize = 64;
/// A scrape under attack answers within this.
const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
/// The daemon's resident memory under either attack: about 25 MiB when idle here; 256
/// connections' buffers and the attackers' requests must not double it.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// The daemon's threads under the password flood: the runtime's one, the bcrypt worker, and
/// room for the runtime's blocking pool's occasional file reads.
const THREAD_LIMIT: u64 = 6;
/// CPU of the whole daemon during the password flood, in cores: one for bcrypt, the rest for
/// answering the flood's requests.
const CPU_LIMIT: f64 = 1.5;
/// An unknown user's 401 and a known user's wrong-password 401 take the same time within
/// this share of the latter (medians of alternating requests).
const TIMING_TOLERANCE: f64 = 0.25;
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

/// A line of /proc/PID/status, without its name, such as `VmRSS:` or `Threads:`; `None` once
/// the process has exited (a zombie's status has no memory lines).
fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    line.split_whitespace().next()?.parse().ok()
}

/// CPU seconds the process has used, every thread included.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
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

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A connection to the daemon from `source` (another loopback address than the scraper's).
fn connect_from(lab: &Lab, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    lab.run_in(&lab.server_ns, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(source, 0)),
        )?;
        connect(fd.as_raw_fd(), &SockaddrIn::from(metrics_addr()))?;
        let stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    })
}

/// One keep-alive GET /metrics with `auth` on `stream`: the status, once the whole response
/// has been read.
fn request(stream: &TcpStream, auth: &str) -> std::io::Result<u16> {
    let mut writer = stream;
    write!(
        writer,
        "GET /metrics HTTP/1.1\r\nHost: seqwatch\r\nAuthorization: {auth}\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, line.clone()))?;
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
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
    let rss = status_field(daemon.pid(), "VmRSS:").expect("the daemon runs");
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

/// Requests with wrong passwords from `clients` keep-alive connections from `source`, until
/// `stop`: how often each status came back.
fn hammer(lab: &Lab, source: Ipv4Addr, clients: usize, stop: &AtomicBool) -> BTreeMap<u16, usize> {
    let statuses = Mutex::new(BTreeMap::new());
    thread::scope(|scope| {
        for client in 0..clients {
            let statuses = &statuses;
            scope.spawn(move || {
                // Half of them guess at a user that exists, half at one that does not.
                let user = if client % 2 == 0 {
                    "prometheus"
                } else {
                    "mallory"
                };
                let mut stream = None;
                let mut guess = 0;
                while !stop.load(Ordering::Relaxed) {
                    guess += 1;
                    let auth = basic(user, &format!("guess-{client}-{guess}"));
                    let connection = match stream.take() {
                        Some(connection) => connection,
                        None => match connect_from(lab, source) {
                            Ok(connection) => connection,
                            Err(_) => continue,
                        },
                    };
                    if let Ok(status) = request(&connection, &auth) {
                        *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                        stream = Some(connection);
                    }
                }
            });
        }
    });
    statuses.into_inner().unwrap()
}

/// Sets the flag when dropped, so that a failed assertion stops the attackers too.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[test]
fn wrong_password_floods_leave_scrapes_fast_and_users_unknown() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("scrape-me", 10).unwrap();
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    let daemon = start_daemon(
        &lab,
        dir.path(),
        &[],
        &["--web-config", web_config.to_str().unwrap()],
    );
    let pid = daemon.pid();

    // Timing: an unknown user against a known user's wrong password, alternating.
    let (mut unknown, mut known) = (Vec::new(), Vec::new());
    for round in 0..9 {
        for (user, times) in [("mallory", &mut unknown), ("prometheus", &mut known)] {
            let auth = basic(user, &format!("wrong-{round}"));
            let (response, took) = timed_get(&lab, &lab.server_ns, "/metrics", Some(&auth));
            assert_eq!(response.map(|(status, _)| status), Some(401), "{user}");
            times.push(took);
        }
    }
    let (unknown, known) = (median(unknown), median(known));
    eprintln!("median 401: unknown user {unknown:?}, known user {known:?}");
    assert!(
        unknown.abs_diff(known).as_secs_f64() <= TIMING_TOLERANCE * known.as_secs_f64(),
        "an unknown user takes {unknown:?}, a known user's wrong password {known:?}"
    );

    let stop = AtomicBool::new(false);
    let right = basic("prometheus", "scrape-me");
    let (statuses, peak_threads, peak_rss, cpu) = thread::scope(|scope| {
        let attack = scope.spawn(|| {
            hammer(
                &lab,
                Ipv4Addr::new(127, 0, 0, 2),
                WRONG_PASSWORD_CLIENTS,
                &stop,
            )
        });
        let sampler = scope.spawn(|| {
            let (mut threads, mut rss) = (0, 0);
            // Sampling ends with the flood, or when SIGTERM has ended the daemon.
            while !stop.load(Ordering::Relaxed) {
                let (Some(now_threads), Some(now_rss)) =
                    (status_field(pid, "Threads:"), status_field(pid, "VmRSS:"))
                else {
                    break;
                };
                threads = threads.max(now_threads);
                rss = rss.max(now_rss);
                thread::sleep(Duration::from_millis(50));
            }
            (threads, rss)
        });
        let stopping = StopOnDrop(&stop);
        thread::sleep(Duration::from_secs(1));
        let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
        // The first scrape's credentials are not cached yet: it needs bcrypt too.
        for attempt in ["not cached", "cached"] {
            let (response, took) = timed_get(&lab, &lab.server_ns, "/metrics", Some(&right));
            eprintln!("scrape ({attempt}) under the password flood: {took:?}");
            assert!(
                response.as_ref().is_some_and(|(status, _)| *status == 200) && took < SCRAPE_LIMIT,
                "a scrape ({attempt}) with the right password under the flood: {:?} after {took:?}",
                response.map(|(status, _)| status)
            );
        }
        // bcrypt ran for the first scrape only; the flood's extra requests were turned away
        // without it.
        let (response, _) = timed_get(&lab, &lab.server_ns, "/metrics", Some(&right));
        let metrics = response.map(|(_, body)| body).unwrap_or_default();
        let outcome = |name: &str| {
            let series = format!("seqwatch_http_auth_total{{outcome=\"{name}\"}}");
            series_value(&metrics, &series).unwrap_or(0.0)
        };
        eprintln!(
            "auth outcomes: verified {}, cached {}, denied {}, throttled {}, busy {}",
            outcome("verified"),
            outcome("cached"),
            outcome("denied"),
            outcome("throttled"),
            outcome("busy")
        );
        assert!(
            outcome("verified") == 1.0 && outcome("cached") >= 2.0 && outcome("throttled") > 0.0,
            "{metrics}"
        );
        thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
        // SIGTERM while the flood goes on: the daemon does not wait for bcrypt.
        let signalled = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let exited = wait_for(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}/stat")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .unwrap()
                        .1
                        .trim_start()
                        .starts_with('Z')
                })
        });
        let exit_time = signalled.elapsed();
        drop(stopping);
        assert!(
            exited && exit_time < Duration::from_secs(2),
            "exit after SIGTERM took {exit_time:?}"
        );
        eprintln!("exit after SIGTERM under the flood: {exit_time:?}");
        let (threads, rss) = sampler.join().unwrap();
        (attack.join().unwrap(), threads, rss, cpu)
    });
    eprintln!(
        "flood: statuses {statuses:?}, daemon CPU {cpu:.2} cores, peak threads {peak_threads}, \
         peak RSS {peak_rss} KiB"
    );
    assert!(statuses.get(&401).is_some_and(|&n| n > 0), "{statuses:?}");
    assert!(cpu <= CPU_LIMIT, "the daemon used {cpu:.2} cores");
    assert!(peak_threads <= THREAD_LIMIT, "{peak_threads} threads");
    assert!(peak_rss < RSS_LIMIT_KIB, "RSS {peak_rss} KiB");
    drop(daemon);
}
