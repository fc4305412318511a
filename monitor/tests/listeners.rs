//! Listener health and resource owners against the real kernel: the real daemon in the server
//! namespace of a lab, servers and clients in child processes that run as user nobody in a
//! cgroup of their own. A listener that never accepts is reported unresponsive with its full
//! accept queue, its drops and its owner; a stopped server is reported within the configured
//! time and recovers when continued; a process that holds every port of a small ephemeral
//! range is named as their owner. Needs root and a cgroup2 mount; every namespace and cgroup
//! is removed when its test ends.

use std::{
    ffi::CString,
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, METRICS_ADDR, read_json_lines},
    host::cgroup2_mount,
    lab::{backlog_listener, connect_many, listen, netstat, write_sysctl},
    prometheus::series_value,
    wait_for,
};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, fork},
};
use seqwatch::lab::{Lab, LabOptions};

/// The unprivileged owner of the test servers and clients.
const NOBODY: u32 = 65534;
/// `--unresponsive-after` in these tests, seconds.
const LIMIT: u64 = 2;
/// Forking copies every open descriptor: a socket of one test must not end up in the child
/// of another.
static FORK: Mutex<()> = Mutex::new(());

/// The daemon in the lab's server namespace, with its event log.
struct Scene {
    lab: Lab,
    daemon: Daemon,
    events: PathBuf,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn start() -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        Self::start_in(lab)
    }

    fn start_in(lab: Lab) -> Scene {
        Self::start_with(lab, "egress")
    }

    /// With both classifiers attached, so that SYNs coming in are counted too.
    fn start_both_directions() -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        Self::start_with(lab, "both")
    }

    fn start_with(lab: Lab, direction: &str) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let server_if = lab.server_if.clone();
        let limit = LIMIT.to_string();
        let mut daemon = Daemon::start(
            &lab,
            &lab.server_ns,
            dir.path(),
            &[
                "--interface",
                &server_if,
                "--unresponsive-after",
                &limit,
                "--event-log",
                events.to_str().unwrap(),
                "--direction",
                direction,
            ],
        );
        daemon.wait_attached(&lab, &server_if, "egress");
        if direction == "both" {
            daemon.wait_attached(&lab, &server_if, "ingress");
        }
        Scene {
            lab,
            daemon,
            events,
            _dir: dir,
        }
    }

    /// A server child in the server namespace, once it listens and the daemon counts its port.
    fn serve(&self, role: Role) -> Owned {
        let port = match &role {
            Role::NeverAccepts { at, .. } | Role::AcceptsAndCloses { at, .. } => at.port(),
            Role::HoldsConnections { .. } => unreachable!("a client, not a server"),
        };
        let server = Owned::spawn(&self.lab, &self.lab.server_ns, role);
        assert_eq!(server.read_report(1), [1], "the child listens");
        self.wait_counted(port);
        server
    }

    /// Waits until the daemon counts the listening port's handshakes (it does from the socket
    /// table read that first shows the port listening): its series exist. Returns them.
    fn wait_counted(&self, port: u16) -> [Option<f64>; 3] {
        let mut last = [None; 3];
        let counted = wait_for(Duration::from_secs(5), || {
            last = handshake_counts(self, port);
            last[1].is_some()
        });
        assert!(counted, "port {port} not counted:\n{}", self.daemon.log());
        last
    }

    fn server(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.lab.server_v4, port)
    }

    fn value(&self, series: &str) -> Option<f64> {
        series_value(&self.get("/metrics"), series)
    }

    /// GET from the daemon, from a source port of its own outside every ephemeral range
    /// (one test exhausts the namespace's range; a bound port needs none of it).
    fn get(&self, path: &str) -> String {
        static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20_000);
        let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = format!("GET {path} HTTP/1.0\r\nHost: seqwatch\r\n\r\n");
        let response = self
            .lab
            .run_in(&self.lab.server_ns, || -> std::io::Result<String> {
                use std::io::{Read as _, Write as _};
                let socket = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::empty(),
                    None,
                )?;
                let local = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
                nix::sys::socket::bind(
                    socket.as_raw_fd(),
                    &nix::sys::socket::SockaddrIn::from(local),
                )?;
                let daemon: SocketAddrV4 = METRICS_ADDR.parse().unwrap();
                nix::sys::socket::connect(
                    socket.as_raw_fd(),
                    &nix::sys::socket::SockaddrIn::from(daemon),
                )?;
                let mut stream = std::net::TcpStream::from(socket);
                stream.write_all(request.as_bytes())?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            });
        let response =
            response.unwrap_or_else(|err| panic!("GET {path}: {err}\n{}", self.daemon.log()));
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        body.to_owned()
    }

    /// Waits up to `limit` for the series to have `expected`; returns what it had last.
    fn wait_value(&self, series: &str, expected: f64, limit: Duration) -> Option<f64> {
        let mut last = None;
        wait_for(limit, || {
            last = self.value(series);
            last == Some(expected)
        });
        last
    }

    /// The first event of `kind` for `port`, waiting up to `limit` for it.
    fn event(&self, kind: &str, port: u16, limit: Duration) -> Option<serde_json::Value> {
        let mut found = None;
        wait_for(limit, || {
            found = read_json_lines(&self.events)
                .into_iter()
                .find(|e| e["kind"] == kind && e["port"] == port);
            found.is_some()
        });
        found
    }

    /// The port's `listener_unresponsive` event, which must come within LIMIT + 5 s.
    fn unresponsive(&self, port: u16) -> serde_json::Value {
        let limit = Duration::from_secs(LIMIT + 5);
        self.event("listener_unresponsive", port, limit)
            .unwrap_or_else(|| panic!("no listener_unresponsive:\n{}", self.daemon.log()))
    }

    fn owners(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/v1/owners")).unwrap()
    }
}

/// What a child process does, with async-signal-safe calls only (the test is threaded).
enum Role {
    /// listen(2) with this backlog and never accept.
    NeverAccepts { at: SocketAddrV4, backlog: i32 },
    /// listen(2), then accept and close every connection.
    AcceptsAndCloses { at: SocketAddrV4, backlog: i32 },
    /// Connect to `to` until connect(2) fails, holding every connection open.
    HoldsConnections { to: SocketAddrV4, attempts: u8 },
}

/// A child process in a namespace and a cgroup of its own, running as nobody; killed, reaped
/// and its cgroup removed on drop.
struct Owned {
    pid: Pid,
    cgroup: PathBuf,
    /// What the child reported: one byte per step (see `Role`).
    report: OwnedFd,
}

impl Owned {
    fn spawn(lab: &Lab, ns: &str, role: Role) -> Owned {
        let cgroup = new_cgroup();
        let procs = CString::new(cgroup.join("cgroup.procs").to_str().unwrap()).unwrap();
        let _fork = FORK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let pid = lab.run_in(ns, || {
            // SAFETY: the child makes raw system calls only, then exits with _exit(2).
            match unsafe { fork() }.expect("fork") {
                ForkResult::Child => unsafe { child(&procs, write.as_raw_fd(), &role) },
                ForkResult::Parent { child } => child,
            }
        });
        drop(write);
        Owned {
            pid,
            cgroup,
            report: read,
        }
    }

    /// The cgroup as the daemon names it: the path under the cgroup2 mount.
    fn cgroup_name(&self) -> String {
        let relative = self.cgroup.strip_prefix(cgroup2_mount()).unwrap();
        format!("/{}", relative.display())
    }

    /// Reads `count` report bytes (waiting up to 10 s).
    fn read_report(&self, count: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while bytes.len() < count && Instant::now() < deadline {
            let mut poll = libc::pollfd {
                fd: self.report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
                continue;
            }
            let mut byte = [0u8; 1];
            match nix::unistd::read(&self.report, &mut byte) {
                Ok(1) => bytes.push(byte[0]),
                _ => break,
            }
        }
        bytes
    }

    /// Waits up to 5 s for the child's state in /proc/PID/stat to be `state`.
    fn wait_state(&self, state: char) -> bool {
        let stat = format!("/proc/{}/stat", self.pid);
        wait_for(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // "pid (comm) S ...": the state follows the last ')'.
            text.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with(state))
        })
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid, signal).expect("signal the child");
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// The child: closes every descriptor it inherited but `report` (the other tests' sockets: a
/// listener one of them closes must not live on here), joins its cgroup (before any socket,
/// which takes its creator's cgroup), drops to nobody, plays its role, reporting each step as
/// one byte on `report`.
unsafe fn child(procs: &CString, report: i32, role: &Role) -> ! {
    unsafe {
        let report_fd = report as u32;
        if libc::close_range(3, report_fd - 1, 0) != 0
            || libc::close_range(report_fd + 1, u32::MAX, 0) != 0
        {
            libc::_exit(13);
        }
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(10);
        }
        libc::close(fd);
        if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
            libc::_exit(11);
        }
        let say = |byte: u8| {
            libc::write(report, (&raw const byte).cast(), 1);
        };
        match *role {
            Role::NeverAccepts { at, backlog } => {
                let listener = listening(at, backlog);
                say(1);
                loop {
                    libc::pause();
                    let _ = listener;
                }
            }
            Role::AcceptsAndCloses { at, backlog } => {
                let listener = listening(at, backlog);
                say(1);
                loop {
                    let connection =
                        libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
                    if connection >= 0 {
                        libc::close(connection);
                    }
                }
            }
            Role::HoldsConnections { to, attempts } => {
                let address = sockaddr(to);
                for _ in 0..attempts {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let size = size_of::<libc::sockaddr_in>() as u32;
                    if libc::connect(fd, (&raw const address).cast(), size) == 0 {
                        say(0);
                    } else {
                        say(*libc::__errno_location() as u8);
                    }
                }
                loop {
                    libc::pause();
                }
            }
        }
    }
}

unsafe fn listening(at: SocketAddrV4, backlog: i32) -> i32 {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let address = sockaddr(at);
        let size = size_of::<libc::sockaddr_in>() as u32;
        if fd < 0
            || libc::bind(fd, (&raw const address).cast(), size) != 0
            || libc::listen(fd, backlog) != 0
        {
            libc::_exit(12);
        }
        fd
    }
}

fn sockaddr(at: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: at.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*at.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A cgroup of its own for one child: `seqwatch-test-<pid>-<n>` under the cgroup2 mount.
fn new_cgroup() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = cgroup2_mount().join(format!("seqwatch-test-{}-{n}", std::process::id()));
    std::fs::create_dir(&path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
    path
}

/// `count` non-blocking connection attempts from `ns` to `to`, held open by the caller.
fn connect_nonblocking(lab: &Lab, ns: &str, to: SocketAddrV4, count: usize) -> Vec<OwnedFd> {
    lab.run_in(ns, || {
        (0..count)
            .map(|_| {
                // SAFETY: plain system calls on a descriptor this function owns.
                unsafe {
                    let fd =
                        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                    assert!(fd >= 0, "socket");
                    let address = sockaddr(to);
                    let size = size_of::<libc::sockaddr_in>() as u32;
                    libc::connect(fd, (&raw const address).cast(), size);
                    OwnedFd::from_raw_fd(fd)
                }
            })
            .collect()
    })
}

fn series(metric: &str, labels: &str) -> String {
    format!("{metric}{{{labels}}}")
}

#[test]
fn a_listener_that_never_accepts_is_unresponsive_and_named_by_uid_and_cgroup() {
    let scene = Scene::start();
    let at = scene.server(8080);
    let server = scene.serve(Role::NeverAccepts { at, backlog: 2 });
    let started = Instant::now();
    let _clients = connect_nonblocking(&scene.lab, &scene.lab.client_ns, at, 12);

    let event = scene.unresponsive(8080);
    assert!(
        started.elapsed() >= Duration::from_secs(LIMIT),
        "not before the limit"
    );
    // Linux queues backlog + 1 connections; the rest are dropped.
    assert_eq!(event["accept_queue"], 3, "{event}");
    assert_eq!(event["accept_queue_max"], 2, "{event}");
    assert_eq!(event["addresses"][0], at.to_string());
    assert_eq!(event["owner"]["uid"], NOBODY, "{event}");
    assert_eq!(event["owner"]["user"], "nobody");
    assert_eq!(event["owner"]["cgroup"], server.cgroup_name(), "{event}");
    assert!(event["oldest_wait_seconds"].as_f64().unwrap() >= LIMIT as f64);

    let port = "port=\"8080\"";
    let metric = |name: &str| scene.value(&series(name, port));
    assert_eq!(metric("seqwatch_listener_unresponsive"), Some(1.0));
    assert_eq!(metric("seqwatch_listener_unresponsive_total"), Some(1.0));
    assert_eq!(metric("seqwatch_listener_accept_queue"), Some(3.0));
    assert_eq!(metric("seqwatch_listener_accept_queue_max"), Some(2.0));
    // Egress only: SYN-ACKs are counted, SYNs (seen on ingress) are not exported at all.
    assert_eq!(metric("seqwatch_listener_syns_received_total"), None);
    let synacks = metric("seqwatch_listener_synacks_sent_total");
    assert!(synacks.is_some_and(|n| n >= 3.0), "{synacks:?}");
    // The listener's drops are all of the namespace's: equal to its ListenDrops once the
    // clients' SYN retransmits pause.
    let mut drops = (None, 0);
    let equal = wait_for(Duration::from_secs(8), || {
        let kernel = netstat(&scene.lab, &scene.lab.server_ns)["TcpExtListenDrops"];
        drops = (metric("seqwatch_listener_drops_total"), kernel);
        drops.0 == Some(kernel as f64) && kernel > 0
    });
    assert!(
        equal,
        "listener drops {:?} vs TcpExtListenDrops {}",
        drops.0, drops.1
    );

    // Its owner holds the listener and the three queued connections.
    let owner = format!("cgroup=\"{}\",uid=\"{NOBODY}\"", server.cgroup_name());
    assert_eq!(
        scene.value(&series("seqwatch_owner_sockets", &owner)),
        Some(4.0)
    );
    assert_eq!(
        scene.value(&series("seqwatch_owner_listen_backlog", &owner)),
        Some(3.0)
    );
    let owners = scene.owners();
    let listener = owners["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 8080)
        .expect("the listener in /api/v1/owners");
    assert_eq!(listener["unresponsive"], true);
    assert_eq!(listener["owner"]["uid"], NOBODY);
    let nobody = owners["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["uid"] == NOBODY)
        .expect("nobody among the owners");
    assert_eq!(nobody["listeners"], 1);
    assert_eq!(nobody["listen_backlog"], 3);
    scene.daemon.stop();
}

#[test]
fn a_stopped_server_is_unresponsive_within_the_limit_and_recovers_when_continued() {
    let scene = Scene::start();
    let at = scene.server(8081);
    let server = scene.serve(Role::AcceptsAndCloses { at, backlog: 16 });
    // While it serves, connections leave the queue at once: nothing is reported.
    let served = connect_nonblocking(&scene.lab, &scene.lab.client_ns, at, 5);
    std::thread::sleep(Duration::from_secs(LIMIT + 1));
    assert!(
        scene
            .event("listener_unresponsive", 8081, Duration::ZERO)
            .is_none(),
        "a serving listener was reported:\n{}",
        scene.daemon.log()
    );
    drop(served);

    server.signal(Signal::SIGSTOP);
    assert!(server.wait_state('T'), "the server never stopped");
    let stopped = Instant::now();
    let _waiting = connect_nonblocking(&scene.lab, &scene.lab.client_ns, at, 3);
    let event = scene.unresponsive(8081);
    let after = stopped.elapsed();
    // The socket table is read every second: reported between LIMIT and LIMIT + 1 s (plus
    // the event log's flush and this test's polling).
    assert!(after >= Duration::from_secs(LIMIT), "{after:?}");
    assert!(
        after <= Duration::from_millis(LIMIT * 1000 + 2500),
        "{after:?}"
    );
    assert_eq!(event["accept_queue"], 3, "{event}");
    assert_eq!(event["owner"]["uid"], NOBODY);
    assert_eq!(event["owner"]["cgroup"], server.cgroup_name());

    server.signal(Signal::SIGCONT);
    let recovered = scene.event("listener_recovered", 8081, Duration::from_secs(5));
    assert!(recovered.is_some(), "no recovery:\n{}", scene.daemon.log());
    let port = "port=\"8081\"";
    assert_eq!(
        scene.wait_value(
            &series("seqwatch_listener_unresponsive", port),
            0.0,
            Duration::from_secs(3)
        ),
        Some(0.0)
    );
    assert_eq!(
        scene.value(&series("seqwatch_listener_unresponsive_total", port)),
        Some(1.0)
    );
    assert_eq!(
        scene.value(&series("seqwatch_listener_accept_queue", port)),
        Some(0.0)
    );
    scene.daemon.stop();
}

#[test]
fn a_process_holding_every_ephemeral_port_is_named_as_their_owner() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    // Ten ephemeral ports, in the server namespace only.
    lab.run_in(&lab.server_ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40009")
    })
    .unwrap();
    let scene = Scene::start_in(lab);
    let to = SocketAddrV4::new(scene.lab.client_v4, 9000);
    let _far_end = backlog_listener(&scene.lab, &scene.lab.client_ns, to, 64);
    let client = Owned::spawn(
        &scene.lab,
        &scene.lab.server_ns,
        Role::HoldsConnections { to, attempts: 11 },
    );
    let results = client.read_report(11);
    assert_eq!(results[..10], [0; 10], "ten connections: {results:?}");
    assert_eq!(
        results[10],
        libc::EADDRNOTAVAIL as u8,
        "the eleventh finds no port"
    );

    let owner = format!("cgroup=\"{}\",uid=\"{NOBODY}\"", client.cgroup_name());
    assert_eq!(
        scene.wait_value(
            &series("seqwatch_owner_ephemeral_ports", &owner),
            10.0,
            Duration::from_secs(3)
        ),
        Some(10.0),
        "{}",
        scene.get("/metrics")
    );
    assert_eq!(scene.value("seqwatch_ephemeral_ports_in_use"), Some(10.0));
    assert_eq!(scene.value("seqwatch_ephemeral_ports_available"), Some(0.0));
    assert_eq!(
        scene.value(&series("seqwatch_owner_sockets", &owner)),
        Some(10.0)
    );
    let owners = scene.owners();
    assert_eq!(
        owners["ephemeral_ports"],
        serde_json::json!({"range": [40000, 40009], "in_use": 10, "available": 0})
    );
    let top = &owners["owners"][0];
    assert_eq!(top["uid"], NOBODY, "{owners}");
    assert_eq!(top["ephemeral_ports"], 10);
    scene.daemon.stop();
}

/// The way back to the clients blackholed: their SYNs arrive and nothing at all leaves the
/// server namespace, so the host is reported silent (and not before the limit); with the route
/// back, the next retransmitted SYN is answered and the host answering again.
#[test]
fn a_host_that_answers_nobody_is_silent_until_it_answers_again() {
    let scene = Scene::start();
    let lab = &scene.lab;
    // Without reverse-path filtering the SYNs are taken in although the way back is gone.
    for interface in ["all", lab.server_if.as_str()] {
        let key = format!("net.ipv4.conf.{interface}.rp_filter");
        write_sysctl(lab, &lab.server_ns, &key, "0");
    }
    let at = scene.server(8090);
    let _listener = backlog_listener(lab, &lab.server_ns, at, 16);
    let route = |verb: &str| {
        let client = format!("{}/32", lab.client_v4);
        let status = lab
            .command_in(&lab.server_ns, "ip")
            .args(["route", verb, "blackhole", &client])
            .status();
        assert!(status.unwrap().success(), "ip route {verb} blackhole");
    };
    route("add");
    // From here on nothing of the test talks TCP in the server namespace (no scrapes).
    let started = Instant::now();
    let _clients = connect_nonblocking(lab, &lab.client_ns, at, 4);
    let event_of = |kind: &str| {
        read_json_lines(&scene.events)
            .into_iter()
            .find(|event| event["kind"] == kind)
    };
    let limit = Duration::from_secs(LIMIT + 8);
    assert!(wait_for(limit, || event_of("host_silent").is_some()));
    let silent = event_of("host_silent").unwrap();
    assert!(started.elapsed() >= Duration::from_secs(LIMIT), "{silent}");
    assert!(
        silent["silent_seconds"].as_f64().unwrap() >= LIMIT as f64,
        "{silent}"
    );
    assert!(
        silent["segments_unanswered"].as_u64().unwrap() >= 4,
        "{silent}"
    );

    route("del");
    assert!(wait_for(limit, || event_of("host_answering").is_some()));
    let metrics = scene.daemon.metrics(lab);
    assert_eq!(series_value(&metrics, "seqwatch_host_silent"), Some(0.0));
    assert_eq!(
        series_value(&metrics, "seqwatch_host_silent_total"),
        Some(1.0)
    );
}

/// A port's SYNs received, SYN-ACKs sent and handshakes completed, from one scrape (`None`
/// for a series that does not exist).
fn handshake_counts(scene: &Scene, port: u16) -> [Option<f64>; 3] {
    let metrics = scene.get("/metrics");
    let labels = format!("port=\"{port}\"");
    [
        "seqwatch_listener_syns_received_total",
        "seqwatch_listener_synacks_sent_total",
        "seqwatch_listener_handshakes_completed_total",
    ]
    .map(|name| series_value(&metrics, &series(name, &labels)))
}

/// Waits up to 5 s for the port's three counters to be `expected`; returns what they were last.
fn wait_counts(scene: &Scene, port: u16, expected: [f64; 3]) -> [Option<f64>; 3] {
    let mut last = [None; 3];
    wait_for(Duration::from_secs(5), || {
        last = handshake_counts(scene, port);
        last == expected.map(Some)
    });
    last
}

/// N real connections: exactly N SYNs in, N SYN-ACKs out and N completions on the port, over
/// IPv4 and IPv6; a port nobody listens on gets no series although its SYNs arrive; a listener
/// that closes loses its series, which comes back where it was when the port listens again.
#[test]
fn each_connection_to_a_listener_counts_one_syn_one_synack_and_one_completed_handshake() {
    let scene = Scene::start_both_directions();
    let lab = &scene.lab;
    let at = scene.server(8082);
    let listener = backlog_listener(lab, &lab.server_ns, at, 64);
    assert_eq!(
        scene.wait_counted(8082),
        [Some(0.0); 3],
        "a new port starts at 0"
    );
    connect_many(lab, &lab.client_ns, at.into(), 20);
    let counts = wait_counts(&scene, 8082, [20.0; 3]);
    assert_eq!(counts, [Some(20.0); 3], "{}", scene.daemon.log());
    let v6 = std::net::SocketAddr::new(lab.server_v6.into(), 8085);
    listen(lab, &lab.server_ns, v6);
    scene.wait_counted(8085);
    connect_many(lab, &lab.client_ns, v6, 7);
    assert_eq!(wait_counts(&scene, 8085, [7.0; 3]), [Some(7.0); 3], "IPv6");
    let listeners = scene.owners()["listeners"].clone();
    let report = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 8082)
        .expect("8082 in /api/v1/owners");
    for field in ["syns_received", "synacks_sent", "handshakes_completed"] {
        assert_eq!(report[field], 20, "{field}: {report}");
    }

    // Refused: the SYN arrives (and is counted in the kernel), but 8083 does not listen.
    let closed = scene.server(8083);
    let refused = lab.run_in(&lab.client_ns, || {
        std::net::TcpStream::connect_timeout(&closed.into(), Duration::from_secs(5))
    });
    assert!(refused.is_err(), "nothing listens on 8083");
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = scene.get("/metrics");
    assert!(
        !metrics.contains("port=\"8083\""),
        "a non-listening port has series:\n{metrics}"
    );
    assert_eq!(handshake_counts(&scene, 8082), [Some(20.0); 3], "no more");

    drop(listener);
    let gone = wait_for(Duration::from_secs(5), || {
        handshake_counts(&scene, 8082) == [None; 3]
    });
    assert!(gone, "the series outlived the listener");
    let _listener = backlog_listener(lab, &lab.server_ns, at, 64);
    assert_eq!(
        scene.wait_counted(8082),
        [Some(20.0); 3],
        "back where it was"
    );
    connect_many(lab, &lab.client_ns, at.into(), 5);
    let counts = wait_counts(&scene, 8082, [25.0; 3]);
    assert_eq!(counts, [Some(25.0); 3], "counted on from 20");
    scene.daemon.stop();
}

/// A listener that never accepts: once its accept queue is full, no handshake completes and
/// its SYNs are dropped unanswered, while the clients' retransmitted SYNs keep arriving.
#[test]
fn a_full_accept_queue_stops_completions_while_syns_keep_arriving() {
    let scene = Scene::start_both_directions();
    let lab = &scene.lab;
    let at = scene.server(8084);
    let _listener = backlog_listener(lab, &lab.server_ns, at, 2);
    scene.wait_counted(8084);
    let clients = 12;
    let _clients = connect_nonblocking(lab, &lab.client_ns, at, clients);

    // Linux queues backlog + 1 connections: three handshakes complete, no more.
    let port = "port=\"8084\"";
    let queued = scene.wait_value(
        &series("seqwatch_listener_accept_queue", port),
        3.0,
        Duration::from_secs(5),
    );
    assert_eq!(queued, Some(3.0));
    let [syns, _, completed] = handshake_counts(&scene, 8084);
    assert_eq!(completed, Some(3.0));
    let first = syns.expect("SYNs counted");
    assert!(
        first >= clients as f64,
        "{first} SYNs for {clients} clients"
    );

    // The clients retransmit their SYNs (after 1 s, then 2 s more): the count rises.
    let mut last = [None; 3];
    let rose = wait_for(Duration::from_secs(8), || {
        last = handshake_counts(&scene, 8084);
        last[0].is_some_and(|syns| syns > first)
    });
    assert!(rose, "SYNs stayed at {first}: {last:?}");
    let [syns, synacks, completed] = last.map(Option::unwrap);
    assert_eq!(completed, 3.0, "{last:?}");
    assert!(synacks >= completed && synacks < syns, "{last:?}");
    scene.daemon.stop();
}
