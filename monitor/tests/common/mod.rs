//! Shared parts of the kernel tests: the real daemon in a lab namespace, a real tcpdump
//! capture of the same interface, TCP traffic, and /metrics scrapes.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::{
    analyze::{
        capture::{Frame, read_frames},
        packet::parse_synack,
    },
    lab::Lab,
};

/// /metrics inside the daemon's own namespace: every test has its own loopback.
pub const METRICS_ADDR: &str = "127.0.0.1:10045";

/// `seqwatch run` in a lab namespace; killed on drop if the test did not stop it.
pub struct Daemon {
    child: Child,
    pub ns: String,
    /// Where its /metrics is served, inside `ns`.
    pub listen: String,
    pub sample_log: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn start(lab: &Lab, ns: &str, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_wrapped(lab, ns, dir, &[], args)
    }

    /// A daemon serving /metrics on `listen`, so that a second one can run in the same
    /// namespace (give each its own `dir`).
    pub fn start_listening(lab: &Lab, ns: &str, dir: &Path, listen: &str, args: &[&str]) -> Daemon {
        Self::spawn(lab, ns, dir, listen, &[], args)
    }

    /// The daemon on the lab server's veth with more `seqwatch run` flags; returns once the
    /// egress classifier is attached (the only one unless the flags add a direction).
    pub fn on_server_egress(lab: &Lab, dir: &Path, flags: &[&str]) -> Daemon {
        let server_if = lab.server_if.as_str();
        let mut args = vec!["--interface", server_if];
        args.extend_from_slice(flags);
        let mut daemon = Daemon::start(lab, &lab.server_ns, dir, &args);
        daemon.wait_attached(lab, server_if, "egress");
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /metrics says the sampler is attached to `interface`.
    pub fn wait_attached(&mut self, lab: &Lab, interface: &str, direction: &str) {
        let series = format!(
            "seqwatch_program_attached{{direction=\"{direction}\",interface=\"{interface}\",program=\"synack_{direction}\"}} 1"
        );
        let attached = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("seqwatch exited early ({status}):\n{}", self.log());
            }
            self.scrape(lab)
                .is_some_and(|text| text.lines().any(|l| l == series))
        });
        assert!(attached, "never attached to {interface}:\n{}", self.log());
    }

    pub fn metrics(&self, lab: &Lab) -> String {
        self.scrape(lab)
            .unwrap_or_else(|| panic!("no /metrics:\n{}", self.log()))
    }

    /// GET /metrics from this daemon; None on any error.
    pub fn scrape(&self, lab: &Lab) -> Option<String> {
        http_get_from(lab, &self.ns, &self.listen, "/metrics")
    }

    /// SIGTERM, then the exit status must be success within 10 s.
    pub fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "seqwatch exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "seqwatch ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sample log holds `count` lines (it is flushed every second).
    pub fn samples(&self, count: usize) -> Vec<serde_json::Value> {
        let mut samples = Vec::new();
        wait_for(Duration::from_secs(15), || {
            samples = read_json_lines(&self.sample_log);
            samples.len() >= count
        });
        samples
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The complete lines of a JSON-lines file (the writer may be mid-line).
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON sample line"))
        .collect()
}

/// GET /metrics from inside `ns`.
pub fn scrape(lab: &Lab, ns: &str) -> Option<String> {
    http_get(lab, ns, "/metrics")
}

pub fn http_get(lab: &Lab, ns: &str, path: &str) -> Option<String> {
    http_get_from(lab, ns, METRICS_ADDR, path)
}

/// GET `http://{addr}{path}` from inside `ns`: None on any error or a non-2xx status.
pub fn http_get_from(lab: &Lab, ns: &str, addr: &str, path: &str) -> Option<String> {
    let url = format!("http://{addr}{path}");
    lab.run_in(ns, || {
        ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })
}

/// The value of one exact series line (`name{labels}`), if present.
pub fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A real listener in `ns` that accepts and closes every connection, until the process ends.
pub fn listen(lab: &Lab, ns: &str, addr: SocketAddr) {
    let listener = lab
        .run_in(ns, || TcpListener::bind(addr))
        .expect("bind the test listener");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
}

/// A listener in `ns` whose accept queue holds `backlog` (+1, as Linux counts) connections;
/// nothing accepts from it until the caller does.
// Used by tests/handshake.rs and tests/hardening.rs; every test crate compiles this module.
#[allow(dead_code)]
pub fn backlog_listener(lab: &Lab, ns: &str, addr: SocketAddrV4, backlog: i32) -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket,
    };
    lab.run_in(ns, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).expect("bind the backlog listener");
        listen(&fd, Backlog::new(backlog).expect("a valid backlog")).expect("listen");
        fd.into()
    })
}

/// The counters of `ns`'s /proc/net/netstat, named as nstat names them (`TcpExtListenDrops`).
// Used by tests/handshake.rs and tests/hardening.rs.
#[allow(dead_code)]
pub fn netstat(lab: &Lab, ns: &str) -> HashMap<String, u64> {
    // /proc/net is the namespace of the process's main thread; thread-self is this thread's.
    let text = lab.run_in(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat")
    });
    seqwatch::host::netstat::parse(&text)
}

/// `count` complete TCP handshakes from `ns` to `to`, one after another.
pub fn connect_many(lab: &Lab, ns: &str, to: SocketAddr, count: usize) {
    lab.run_in(ns, || {
        for i in 0..count {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .unwrap_or_else(|err| panic!("connection {i} to {to}: {err}"));
        }
    });
}

/// tcpdump writing a pcap of one interface in a namespace.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(lab: &Lab, ns: &str, interface: &str, filter: &str, file: PathBuf) -> Capture {
        let mut child = lab
            .command_in(ns, "tcpdump")
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "200",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump (apt-get install tcpdump; ./x setup does)");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .is_some_and(|line| line.contains("listening on"));
        assert!(ready, "tcpdump did not start");
        thread::spawn(move || lines.for_each(drop));
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns every SYN-ACK it captured as
    /// (server, client, seq, ack).
    pub fn stop(self) -> Vec<(SocketAddr, SocketAddr, u32, u32)> {
        let mut synacks = Vec::new();
        self.stop_and_read(|frame| {
            if let Some(synack) = parse_synack(frame.linktype, frame.data) {
                synacks.push((
                    synack.server,
                    synack.client,
                    synack.isn,
                    synack.peer_isn.wrapping_add(1),
                ));
            }
        });
        synacks
    }

    /// Stops tcpdump and returns every IPv4 TCP segment it captured, in order.
    // Used by tests/handshake.rs only.
    #[allow(dead_code)]
    pub fn stop_segments(self) -> Vec<CapturedSegment> {
        let mut segments = Vec::new();
        self.stop_and_read(|frame| {
            let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(frame.data) else {
                return;
            };
            let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
                (sliced.net, sliced.transport)
            else {
                return;
            };
            let header = ip.header();
            segments.push(CapturedSegment {
                from: SocketAddr::from((header.source_addr(), tcp.source_port())),
                to: SocketAddr::from((header.destination_addr(), tcp.destination_port())),
                // Byte 13 of the TCP header: CWR … FIN.
                flags: tcp.slice()[13],
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
            });
        });
        segments
    }

    fn stop_and_read(mut self, each: impl FnMut(Frame<'_>)) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT tcpdump");
        self.child.wait().expect("wait tcpdump");
        let file = std::fs::File::open(&self.file).expect("open capture");
        read_frames(file, each).expect("read the capture");
    }
}

/// One TCP segment of a capture: its flags byte as on the wire (FIN 0x01 … ACK 0x10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedSegment {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (server, client, seq, ack) of each sample, for comparison with a capture.
pub fn sample_tuples(samples: &[serde_json::Value]) -> Vec<(SocketAddr, SocketAddr, u32, u32)> {
    samples
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap().parse().unwrap(),
                s["client"].as_str().unwrap().parse().unwrap(),
                s["seq"].as_u64().unwrap() as u32,
                s["ack"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// Everything attached to an interface's TC hooks, as the kernel reports it: tcx programs
/// (BPF_PROG_QUERY), tc filters and a clsact qdisc. Empty when nothing is.
pub fn attachments(lab: &Lab, ns: &str, interface: &str) -> Vec<String> {
    let name = std::ffi::CString::new(interface).unwrap();
    let mut found: Vec<String> = lab.run_in(ns, || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|hook| {
                let (_, programs) =
                    SchedClassifier::query_tcx(name.as_c_str(), hook).expect("query tcx programs");
                programs
                    .into_iter()
                    .map(move |program| format!("tcx {hook:?}: {:?}", program.name_as_str()))
            })
            .collect()
    });
    let tc = |args: &[&str]| {
        let out = lab.command_in(ns, "tc").args(args).output().expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for hook in ["ingress", "egress"] {
        let filters = tc(&["filter", "show", "dev", interface, hook]);
        found.extend(filters.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    let qdiscs = tc(&["qdisc", "show", "dev", interface]);
    found.extend(
        qdiscs
            .lines()
            .filter(|l| l.contains("clsact"))
            .map(str::to_owned),
    );
    found
}

// Used by tests/privileges.rs only; every test crate compiles this module.
#[allow(dead_code)]
impl Daemon {
    /// Like [`Daemon::start`], with `seqwatch` run through `wrapper` (e.g. `setpriv …`), which
    /// must exec it so that the child's pid is the daemon's.
    pub fn start_wrapped(
        lab: &Lab,
        ns: &str,
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
    ) -> Daemon {
        Self::spawn(lab, ns, dir, METRICS_ADDR, wrapper, args)
    }

    fn spawn(
        lab: &Lab,
        ns: &str,
        dir: &Path,
        listen: &str,
        wrapper: &[&str],
        args: &[&str],
    ) -> Daemon {
        let sample_log = dir.join(format!("samples-{ns}.jsonl"));
        let log = dir.join(format!("daemon-{ns}.log"));
        let seqwatch = env!("CARGO_BIN_EXE_seqwatch");
        let mut command = match wrapper {
            [program, prefix @ ..] => {
                let mut command = lab.command_in(ns, program);
                command.args(prefix).arg(seqwatch);
                command
            }
            [] => lab.command_in(ns, seqwatch),
        };
        let child = command
            .args(["run", "--listen", listen, "--sample-log"])
            .arg(&sample_log)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start seqwatch run");
        Daemon {
            child,
            ns: ns.to_owned(),
            listen: listen.to_owned(),
            sample_log,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Per-namespace sysctls of the lab (tests/hardening.rs, tests/real_handshakes.rs); every test
/// crate compiles this module.
#[allow(dead_code)]
pub mod sysctl {
    use seqwatch::lab::Lab;

    /// A sysctl as `nsenter --net` would see it in `ns` (or in this process's namespace).
    pub fn read(ns: Option<(&Lab, &str)>, name: &str) -> String {
        let path = sysctl_path(name);
        let read = move || std::fs::read_to_string(&path).expect("read a sysctl");
        match ns {
            Some((lab, ns)) => lab.run_in(ns, read),
            None => read(),
        }
    }

    /// Sets a per-namespace sysctl in `ns` only (the namespace dies with the lab).
    pub fn write(lab: &Lab, ns: &str, name: &str, value: &str) {
        let path = sysctl_path(name);
        lab.run_in(ns, || std::fs::write(&path, value))
            .unwrap_or_else(|err| panic!("setting {name} in {ns}: {err}"));
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(&read(Some((lab, ns)), name)), value, "{name} in {ns}");
    }

    fn sysctl_path(name: &str) -> String {
        format!("/proc/sys/{}", name.replace('.', "/"))
    }
}

/// Helpers of the tests with crafted handshakes (tests/handshake.rs, tests/tcp_events.rs);
/// every test crate compiles this module.
#[allow(dead_code)]
pub mod crafted {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpListener},
        path::Path,
        thread,
        time::Duration,
    };

    use seqwatch::lab::{Crafter, Lab, Segment};

    use super::{Daemon, read_json_lines, wait_for};

    /// A lab whose server veth the daemon monitors in both directions, with an event log.
    pub struct MonitoredLab {
        pub lab: Lab,
        pub daemon: Daemon,
        pub events: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl MonitoredLab {
        pub fn start() -> MonitoredLab {
            let lab = Lab::create(&seqwatch::lab::LabOptions::default()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let events = dir.path().join("events.jsonl");
            let daemon = start_both_directions(&lab, dir.path(), &events);
            MonitoredLab {
                lab,
                daemon,
                events,
                _dir: dir,
            }
        }

        /// Stops the daemon, which must exit cleanly.
        pub fn stop(self) {
            self.daemon.stop();
        }
    }

    /// The daemon on the lab server's veth in both directions (the handshake tracker's stateful
    /// checks on), writing its event log to `events`; returns once both classifiers are attached.
    pub fn start_both_directions(lab: &Lab, dir: &Path, events: &Path) -> Daemon {
        start_both_directions_with(lab, dir, events, &[])
    }

    /// [`start_both_directions`] with more `seqwatch run` flags.
    pub fn start_both_directions_with(
        lab: &Lab,
        dir: &Path,
        events: &Path,
        flags: &[&str],
    ) -> Daemon {
        let events = events.to_str().expect("a UTF-8 path");
        let mut args = vec!["--direction", "both", "--event-log", events];
        args.extend_from_slice(flags);
        let mut daemon = Daemon::on_server_egress(lab, dir, &args);
        daemon.wait_attached(lab, &lab.server_if, "ingress");
        daemon
    }

    /// The ISN of the server's SYN-ACK to `client`, from the daemon's own sample log (waits up
    /// to 10 s for it).
    pub fn sampled_server_isn(daemon: &Daemon, client: SocketAddr) -> Option<u32> {
        let mut isn = None;
        wait_for(Duration::from_secs(10), || {
            isn = read_json_lines(&daemon.sample_log)
                .iter()
                .find(|s| s["client"] == client.to_string())
                .map(|s| s["seq"].as_u64().unwrap() as u32);
            isn.is_some()
        });
        isn
    }

    /// Routes `spoofed` out of the server's veth; with `via`, to that MAC address (a permanent
    /// neighbour entry: the client namespace drops what is sent to an address it does not have,
    /// so a spoofed client never answers), without, it stays unresolved and nothing is sent.
    pub fn route_spoofed(lab: &Lab, spoofed: Ipv4Addr, via: Option<[u8; 6]>) {
        let server_if = lab.server_if.as_str();
        let route = format!("{spoofed}/32");
        ip(
            lab,
            &lab.server_ns,
            &["route", "add", &route, "dev", server_if],
        );
        if let Some(mac) = via {
            set_neighbour(lab, &lab.server_ns, (spoofed, mac), server_if);
        }
    }

    /// A permanent neighbour entry in `ns`: frames to the address go to the MAC address at
    /// once, without ARP.
    pub fn set_neighbour(lab: &Lab, ns: &str, (address, mac): (Ipv4Addr, [u8; 6]), dev: &str) {
        let (address, mac) = (
            address.to_string(),
            mac.map(|b| format!("{b:02x}")).join(":"),
        );
        ip(
            lab,
            ns,
            &[
                "neigh",
                "replace",
                &address,
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        );
    }

    /// `ip ARGS` in `ns`, which must succeed.
    pub fn ip(lab: &Lab, ns: &str, args: &[&str]) {
        let status = lab.command_in(ns, "ip").args(args).status();
        assert!(status.unwrap().success(), "ip {args:?} in {ns}");
    }

    /// One crafted segment, without TCP options.
    pub fn send(
        crafter: &Crafter,
        (from, to): (SocketAddr, SocketAddr),
        flags: u8,
        (seq, ack): (u32, u32),
        payload: &[u8],
    ) {
        let segment = Segment {
            from,
            to,
            flags,
            seq,
            ack,
            options: &[],
            payload,
        };
        crafter.send_segment(&segment).unwrap();
    }

    /// A listener in the lab's server namespace that keeps every accepted connection open until
    /// the process ends, so a completed handshake stays so.
    pub fn listen_and_hold(lab: &Lab, addr: SocketAddr) {
        let listener = lab
            .run_in(&lab.server_ns, || TcpListener::bind(addr))
            .expect("bind the holding listener");
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
    }
}

/// Real TLS sessions over the lab (rustls, with a certificate for the server's address),
/// among them one whose server writes raw bytes onto its socket mid-session.
pub mod tls {
    use std::{
        io::{self, Read, Write},
        net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
        sync::Arc,
        thread,
        time::Duration,
    };

    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    };
    use seqwatch::lab::Lab;

    /// What the leaky server writes past TLS: no record header starts like this.
    pub const LEAK: &[u8] = b"PLAINTEXT LEAK: HTTP/1.1 200 OK\r\n\r\n";

    /// A self-signed certificate for the lab server's IPv4 address.
    pub struct Credentials {
        pub cert: rcgen::CertifiedKey<rcgen::KeyPair>,
        server_name: ServerName<'static>,
    }

    /// The session [`leak_once`] broke.
    pub struct LeakedSession {
        pub client: SocketAddr,
        /// Where the leak starts in the server's byte stream (its first payload byte is 0).
        pub offset: usize,
    }

    impl Credentials {
        pub fn for_server(lab: &Lab) -> Credentials {
            let name = lab.server_v4.to_string();
            Credentials {
                cert: rcgen::generate_simple_self_signed(vec![name.clone()]).unwrap(),
                server_name: ServerName::try_from(name).unwrap(),
            }
        }

        pub fn client_config(&self) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from(self.cert.cert.der().to_vec()))
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        }

        fn server_config(&self) -> Arc<ServerConfig> {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                self.cert.signing_key.serialize_der(),
            ));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.cert.cert.der().clone()], key)
                .unwrap();
            Arc::new(config)
        }

        /// A client session to the lab server over a fresh connection from the client
        /// namespace, with a bounded read time.
        pub fn connect(
            &self,
            lab: &Lab,
            to: SocketAddrV4,
        ) -> StreamOwned<ClientConnection, TcpStream> {
            let socket = connect(lab, to);
            let connection =
                ClientConnection::new(self.client_config(), self.server_name.clone()).unwrap();
            StreamOwned::new(connection, socket)
        }

        /// One TLS 1.3 session to a server on `at` in the lab's server namespace that sends
        /// `before` bytes of application data and then writes [`LEAK`] onto the TCP socket
        /// itself, as a racing TLS stack would. The client fails on it, sends its alert and
        /// closes; so does the server.
        pub fn leak_once(&self, lab: &Lab, at: SocketAddrV4, before: usize) -> LeakedSession {
            let listener = lab
                .run_in(&lab.server_ns, || TcpListener::bind(at))
                .unwrap();
            let config = self.server_config();
            let server = thread::spawn(move || leaky_server(&listener, config, before));
            let socket = connect(lab, at);
            let client = socket.local_addr().unwrap();
            let recording = Recording {
                socket,
                received: Vec::new(),
            };
            let connection =
                ClientConnection::new(self.client_config(), self.server_name.clone()).unwrap();
            let mut tls = StreamOwned::new(connection, recording);
            tls.write_all(b"GET ").unwrap();
            let err = tls
                .read_to_end(&mut Vec::new())
                .expect_err("the leak breaks the session");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            while tls.conn.wants_write() {
                tls.conn.write_tls(&mut tls.sock).unwrap();
            }
            tls.sock.socket.shutdown(std::net::Shutdown::Write).unwrap();
            server.join().unwrap();
            let offset = tls
                .sock
                .received
                .windows(LEAK.len())
                .position(|window| window == LEAK)
                .expect("the leak reached the client");
            LeakedSession { client, offset }
        }
    }

    fn connect(lab: &Lab, to: SocketAddrV4) -> TcpStream {
        let socket = lab
            .run_in(&lab.client_ns, || TcpStream::connect(to))
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    /// The socket a rustls client runs over, keeping every byte received: where the leak
    /// sits in it is its offset in the server's byte stream.
    struct Recording {
        socket: TcpStream,
        received: Vec<u8>,
    }

    impl Read for Recording {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let read = self.socket.read(buf)?;
            self.received.extend_from_slice(&buf[..read]);
            Ok(read)
        }
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.socket.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.socket.flush()
        }
    }

    /// Accepts one connection, reads the client's 4-byte request, sends `before` bytes of
    /// application data, writes [`LEAK`] past TLS, and closes once the client has gone.
    fn leaky_server(listener: &TcpListener, config: Arc<ServerConfig>, before: usize) {
        let (socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), socket);
        let mut request = [0u8; 4];
        tls.read_exact(&mut request).unwrap();
        tls.write_all(&vec![0x5a; before]).unwrap();
        tls.flush().unwrap();
        tls.sock.write_all(LEAK).unwrap();
        let mut sink = [0u8; 4096];
        while tls.sock.read(&mut sink).is_ok_and(|read| read > 0) {}
    }
}

/// Crafted frames through the real classifiers with BPF_PROG_TEST_RUN.
pub mod test_run {
    use aya::{
        Ebpf,
        programs::{SchedClassifier, TestRun, TestRunOptions},
    };

    /// TC_ACT_UNSPEC: "carry on", the only verdict the classifiers ever give.
    const TC_ACT_UNSPEC: u32 = u32::MAX;

    /// The daemon's own object with both classifiers loaded.
    pub fn load_classifiers() -> Ebpf {
        let mut ebpf = Ebpf::load(seqwatch::kernel::object().unwrap()).unwrap();
        for name in ["synack_ingress", "synack_egress"] {
            classifier(&mut ebpf, name).load().unwrap();
        }
        ebpf
    }

    pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
        ebpf.program_mut(name).unwrap().try_into().unwrap()
    }

    /// Runs one frame through a classifier, which must pass it on, unchanged.
    pub fn run_unchanged(ebpf: &mut Ebpf, name: &str, frame: &[u8]) {
        run_unchanged_times(ebpf, name, frame, 1);
    }

    /// Runs one frame through a classifier `repeat` times in one call; it must pass it on,
    /// unchanged.
    pub fn run_unchanged_times(ebpf: &mut Ebpf, name: &str, frame: &[u8], repeat: u32) {
        let mut out = vec![0u8; frame.len() + 64];
        let result = classifier(ebpf, name)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            result.return_value, TC_ACT_UNSPEC,
            "never drops or redirects"
        );
        assert_eq!(
            &out[..result.data_size_out as usize],
            frame,
            "never rewrites"
        );
    }
}
