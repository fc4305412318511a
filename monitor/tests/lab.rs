//! Integration tests of the veth lab and the weak ISN responder. They need root: they create
//! network namespaces, and only send traffic inside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::Pid;
use seqwatch::lab::{
    GeneratorKind, Lab, LabOptions, Responder, ResponderConfig, SentSynAck, cleanup_stale,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn namespace_exists(ns: &str) -> bool {
    Lab::netns_path(ns).exists()
}

/// True if `ip netns list` names `ns`.
fn listed_by_ip(ns: &str) -> bool {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(ns))
}

fn assert_gone(server_ns: &str, client_ns: &str) {
    for ns in [server_ns, client_ns] {
        assert!(!namespace_exists(ns), "{ns} still mounted");
        assert!(!listed_by_ip(ns), "{ns} still listed by ip netns");
    }
}

/// Sends a line from the client namespace to a listener in the server namespace at
/// `server`, and checks it arrives and the echo comes back.
fn assert_tcp_works(lab: &Lab, server: IpAddr) {
    let listener = lab.run_in(&lab.server_ns, || TcpListener::bind((server, 0)).unwrap());
    let address = listener.local_addr().unwrap();
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| {
            let (mut stream, peer) = listener.accept().unwrap();
            let mut line = [0u8; 5];
            stream.read_exact(&mut line).unwrap();
            stream.write_all(&line).unwrap();
            (peer, line)
        });
        let mut client = lab.run_in(&lab.client_ns, || {
            TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).unwrap()
        });
        client.write_all(b"hello").unwrap();
        let mut reply = [0u8; 5];
        client.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hello");
        let (peer, line) = echo.join().unwrap();
        assert_eq!(&line, b"hello");
        let expected_client: IpAddr = match server {
            IpAddr::V4(_) => lab.client_v4.into(),
            IpAddr::V6(_) => lab.client_v6.into(),
        };
        assert_eq!(peer.ip(), expected_client);
    });
}

fn interface_exists(lab: &Lab, ns: &str, interface: &str) -> bool {
    lab.command_in(ns, "ip")
        .args(["link", "show", "dev", interface])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn lab_connects_over_ipv4_and_ipv6_and_drop_removes_it() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let (server_ns, client_ns) = (lab.server_ns.clone(), lab.client_ns.clone());
    assert!(namespace_exists(&server_ns) && namespace_exists(&client_ns));
    assert!(listed_by_ip(&server_ns) && listed_by_ip(&client_ns));
    assert!(interface_exists(&lab, &server_ns, &lab.server_if));
    assert!(interface_exists(&lab, &client_ns, &lab.client_if));
    // The veth ends are in their own namespaces only.
    assert!(!interface_exists(&lab, &client_ns, &lab.server_if));
    assert_tcp_works(&lab, lab.server_v4.into());
    assert_tcp_works(&lab, lab.server_v6.into());
    drop(lab);
    assert_gone(&server_ns, &client_ns);
}

/// A routed lab: server and client on subnets of their own, TCP between them through the
/// router namespace (and none of the three left after drop).
#[test]
fn routed_lab_connects_through_its_router_and_drop_removes_it() {
    let lab = Lab::create(&LabOptions {
        routed: true,
        ..LabOptions::default()
    })
    .unwrap();
    let router = lab.router.as_ref().unwrap();
    let (server_ns, client_ns, router_ns) = (
        lab.server_ns.clone(),
        lab.client_ns.clone(),
        router.ns.clone(),
    );
    assert!(interface_exists(&lab, &router_ns, &router.server_if));
    assert!(interface_exists(&lab, &router_ns, &router.client_if));
    assert!(!interface_exists(&lab, &server_ns, &router.client_if));
    assert_tcp_works(&lab, lab.server_v4.into());
    assert_tcp_works(&lab, lab.server_v6.into());
    drop(lab);
    assert_gone(&server_ns, &client_ns);
    assert!(!namespace_exists(&router_ns), "{router_ns} still mounted");
}

#[test]
fn labs_are_isolated_from_each_other() {
    let first = Lab::create(&LabOptions::default()).unwrap();
    let second = Lab::create(&LabOptions::default()).unwrap();
    assert_ne!(first.server_ns, second.server_ns);
    // Same addresses in both labs, yet a listener in one is unreachable from the other.
    let listener = first.run_in(&first.server_ns, || {
        TcpListener::bind((first.server_v4, 0)).unwrap()
    });
    let address = listener.local_addr().unwrap();
    let refused = second.run_in(&second.client_ns, || {
        TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).unwrap_err()
    });
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// A host that runs containers forwards IPv4, and new namespaces copy that: a forwarding client
/// namespace would answer SYN-ACKs to spoofed clients with ICMP, and the server would drop
/// those handshakes. The lab turns it off whatever the host's setting, which this host's own
/// setting is made to be on for the duration of the check.
#[test]
fn lab_namespaces_do_not_forward_whatever_the_host_does() {
    let host = "/proc/sys/net/ipv4/ip_forward";
    let before = std::fs::read_to_string(host).unwrap();
    std::fs::write(host, "1").unwrap();
    let lab = Lab::create(&LabOptions::default());
    std::fs::write(host, before.trim()).unwrap();
    let lab = lab.unwrap();
    for ns in [&lab.server_ns, &lab.client_ns] {
        let forwarding = lab.run_in(ns, || std::fs::read_to_string(host).unwrap());
        assert_eq!(forwarding.trim(), "0", "{ns} forwards");
    }
}

#[test]
fn panicking_while_a_lab_is_up_still_removes_it() {
    let names = Mutex::new(None);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        *names.lock().unwrap() = Some((lab.server_ns.clone(), lab.client_ns.clone()));
        lab.run_in(&lab.server_ns, || panic!("test failure inside the lab"));
    }));
    assert!(outcome.is_err());
    let (server_ns, client_ns) = names.into_inner().unwrap().unwrap();
    assert_gone(&server_ns, &client_ns);
}

#[test]
fn a_name_in_use_is_refused_and_left_alone() {
    let name = format!("sw-dup-{}", std::process::id());
    let lab = Lab::create_named(&name, &LabOptions::default()).unwrap();
    let error = Lab::create_named(&name, &LabOptions::default()).unwrap_err();
    assert!(format!("{error:#}").contains("already exists"), "{error:#}");
    assert!(namespace_exists(&lab.server_ns) && namespace_exists(&lab.client_ns));
    assert_tcp_works(&lab, lab.server_v4.into());
}

#[test]
fn kept_lab_survives_drop_until_destroyed_by_name() {
    let name = format!("sw-kept-{}", std::process::id());
    let lab = Lab::create_named(&name, &LabOptions::default()).unwrap();
    let (server_ns, client_ns) = (lab.server_ns.clone(), lab.client_ns.clone());
    lab.keep();
    let still_up = namespace_exists(&server_ns) && namespace_exists(&client_ns);
    Lab::destroy_named(&name).unwrap();
    assert!(still_up);
    assert_gone(&server_ns, &client_ns);
    assert!(Lab::destroy_named(&name).is_err());
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes_only() {
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let stale = format!("sw-{dead_pid}-0-s");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    let live = Lab::create(&LabOptions::default()).unwrap();

    let deleted = cleanup_stale("sw").unwrap();

    let stale_left = namespace_exists(&stale);
    if stale_left {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert!(!stale_left, "stale namespace {stale} kept");
    assert!(deleted.contains(&stale));
    assert!(namespace_exists(&live.server_ns) && namespace_exists(&live.client_ns));
}

/// A kernel built without 802.1Q cannot have VLAN sub-interfaces; elsewhere the VLAN lab
/// must carry TCP over them.
#[test]
fn vlan_lab_uses_sub_interfaces_or_fails_cleanly() {
    static VLAN_ID: u16 = 42;
    let name = format!("sw-vlan-{}", std::process::id());
    let options = LabOptions {
        vlan: Some(VLAN_ID),
        ..LabOptions::default()
    };
    match Lab::create_named(&name, &options) {
        Ok(lab) => {
            let server_vlan = lab.server_vlan_if.clone().unwrap();
            let client_vlan = lab.client_vlan_if.clone().unwrap();
            assert!(interface_exists(&lab, &lab.server_ns, &server_vlan));
            assert!(interface_exists(&lab, &lab.client_ns, &client_vlan));
            let details = lab
                .command_in(&lab.server_ns, "ip")
                .args(["-d", "addr", "show", "dev", &server_vlan])
                .output()
                .unwrap();
            let details = String::from_utf8_lossy(&details.stdout);
            assert!(details.contains(&format!("vlan protocol 802.1Q id {VLAN_ID}")));
            assert!(details.contains(&lab.server_v4.to_string()));
            assert_tcp_works(&lab, lab.server_v4.into());
            assert_tcp_works(&lab, lab.server_v6.into());
        }
        Err(error) => {
            assert!(
                !kernel_has_vlan_support(),
                "VLAN lab failed on a kernel with 802.1Q: {error:#}"
            );
            assert!(format!("{error:#}").contains("CONFIG_VLAN_8021Q"));
            // The namespaces made before the VLAN step failed are gone again.
            assert_gone(&format!("{name}-s"), &format!("{name}-c"));
        }
    }
}

fn kernel_has_vlan_support() -> bool {
    let config = Command::new("sh")
        .args(["-c", "zcat /proc/config.gz"])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&config.stdout).contains("# CONFIG_VLAN_8021Q is not set")
}

#[test]
fn run_in_returns_the_closures_value_from_inside_the_namespace() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let address: SocketAddr = (lab.server_v4, 0).into();
    // Binding the server address only succeeds where it is configured.
    assert!(lab.run_in(&lab.server_ns, || TcpListener::bind(address).is_ok()));
    assert!(!lab.run_in(&lab.client_ns, || TcpListener::bind(address).is_ok()));
}

const RESPONDER_PORT: u16 = 8080;
const CONNECTIONS: usize = 50;

/// A TCP segment seen by tcpdump.
#[derive(Debug)]
struct Segment {
    time_us: u64,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    syn: bool,
    ack: bool,
    rst: bool,
    seq: u32,
    ack_number: u32,
}

/// tcpdump writing TCP segments on `interface` of `ns` to a pcap file.
struct Capture {
    tcpdump: Child,
    file: PathBuf,
    /// Kept open so tcpdump's exit summary does not hit a closed pipe.
    _stderr: BufReader<ChildStderr>,
}

/// How long a capture may take to show the segments a test expects.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(10);

impl Capture {
    fn start(lab: &Lab, ns: &str, interface: &str, dir: &Path) -> Capture {
        let file = dir.join("capture.pcap");
        // --immediate-mode and -U: each packet reaches the file at once, so the test can
        // wait for what it expects. -s: headers only; with the default 256 KiB snap length
        // the kernel ring holds a handful of frames and bursts are dropped. -Z root:
        // Debian's tcpdump otherwise drops to a user that cannot write `dir`.
        let mut tcpdump = lab
            .command_in(ns, "tcpdump")
            .args([
                "--immediate-mode",
                "-U",
                "-s",
                "200",
                "-Z",
                "root",
                "-n",
                "-i",
                interface,
                "-w",
            ])
            .arg(&file)
            .arg("tcp")
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump) must be installed");
        let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if line.contains("listening on") {
                return Capture {
                    tcpdump,
                    file,
                    _stderr: stderr,
                };
            }
            line.clear();
        }
        panic!("tcpdump ended before capturing: {:?}", tcpdump.wait());
    }

    fn segments(&self) -> Vec<Segment> {
        let data = std::fs::read(&self.file).unwrap();
        let (_, capture) = pcap_parser::parse_pcap(&data).unwrap();
        capture
            .blocks
            .iter()
            .map(|block| {
                let time_us = u64::from(block.ts_sec) * 1_000_000 + u64::from(block.ts_usec);
                parse_segment(block.data, time_us)
            })
            .collect()
    }

    /// Stops tcpdump once the capture satisfies `complete` (or at the deadline: the
    /// caller's assertions then show what is missing), and returns what it captured.
    fn stop_when(mut self, complete: impl Fn(&[Segment]) -> bool) -> Vec<Segment> {
        let deadline = std::time::Instant::now() + CAPTURE_DEADLINE;
        while !complete(&self.segments()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(Pid::from_raw(self.tcpdump.id() as i32), Signal::SIGINT).unwrap();
        assert!(self.tcpdump.wait().unwrap().success());
        self.segments()
    }
}

fn parse_segment(frame: &[u8], time_us: u64) -> Segment {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let (saddr, daddr): (IpAddr, IpAddr) = match packet.net.unwrap() {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => panic!("ARP in a TCP capture"),
    };
    let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
        panic!("not TCP")
    };
    Segment {
        time_us,
        saddr,
        sport: tcp.source_port(),
        daddr,
        dport: tcp.destination_port(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        seq: tcp.sequence_number(),
        ack_number: tcp.acknowledgment_number(),
    }
}

/// What one responder run produced: the responder's own account, its record file, and what
/// tcpdump saw on the client's veth end.
struct Run {
    sent: Vec<SentSynAck>,
    recorded: Vec<SentSynAck>,
    wire: Vec<Segment>,
    server: IpAddr,
}

/// Runs a responder with `generator` in a fresh lab and completes `CONNECTIONS` handshakes
/// with it from the client namespace, `spacing` apart.
fn run_responder(generator: GeneratorKind, ipv6: bool, spacing: Duration) -> Run {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("sent.jsonl");
    let capture = Capture::start(&lab, &lab.client_ns, &lab.client_if, dir.path());
    let responder = Responder::spawn_in(
        &lab,
        ResponderConfig {
            interface: lab.server_if.clone(),
            port: RESPONDER_PORT,
            generator,
            seed: 2024,
            record: Some(record.clone()),
        },
    )
    .unwrap();
    let server: IpAddr = if ipv6 {
        lab.server_v6.into()
    } else {
        lab.server_v4.into()
    };
    lab.run_in(&lab.client_ns, || {
        for _ in 0..CONNECTIONS {
            let stream =
                TcpStream::connect_timeout(&(server, RESPONDER_PORT).into(), CONNECT_TIMEOUT)
                    .expect("handshake with the responder");
            // Close with a RST: the responder never answers a FIN.
            setsockopt(
                &stream,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .unwrap();
            drop(stream);
            std::thread::sleep(spacing);
        }
    });
    let sent = responder.stop().unwrap();
    // Complete: every SYN-ACK and every closing RST of the client is in.
    let wire = capture.stop_when(|wire| {
        let syn_acks = wire.iter().filter(|s| s.saddr == server && s.syn).count();
        let closes = wire.iter().filter(|s| s.daddr == server && s.rst).count();
        syn_acks >= sent.len() && closes >= CONNECTIONS
    });
    let recorded = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    Run {
        sent,
        recorded,
        wire,
        server,
    }
}

impl Run {
    /// The fresh ISNs in order, after checking that the run matches the record and the wire.
    fn checked_isns(&self) -> Vec<u32> {
        assert_eq!(
            self.sent, self.recorded,
            "record file differs from stop()'s list"
        );
        let fresh: Vec<&SentSynAck> = self.sent.iter().filter(|s| !s.retransmission).collect();
        assert_eq!(fresh.len(), CONNECTIONS);
        let from_server = |segment: &&Segment| segment.saddr == self.server;
        let syn_acks: Vec<&Segment> = self.wire.iter().filter(from_server).collect();
        let sent_ports: Vec<u16> = self.sent.iter().map(|s| s.dport).collect();
        let wire_ports: Vec<u16> = syn_acks.iter().map(|s| s.dport).collect();
        assert_eq!(
            wire_ports, sent_ports,
            "SYN-ACKs captured vs sent (by client port)"
        );
        for (wire, sent) in syn_acks.iter().zip(&self.sent) {
            assert!(wire.syn && wire.ack && !wire.rst, "{wire:?}");
            assert_eq!(
                (
                    wire.saddr,
                    wire.sport,
                    wire.daddr,
                    wire.dport,
                    wire.seq,
                    wire.ack_number
                ),
                (
                    sent.saddr, sent.sport, sent.daddr, sent.dport, sent.isn, sent.ack
                )
            );
            let syn = self
                .wire
                .iter()
                .find(|s| s.syn && !s.ack && s.sport == sent.dport && s.daddr == sent.saddr)
                .expect("the SYN answered");
            assert_eq!(syn.seq.wrapping_add(1), sent.ack);
        }
        fresh.iter().map(|s| s.isn).collect()
    }
}

fn differences(isns: &[u32]) -> Vec<u32> {
    isns.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
}

#[test]
fn responder_constant_sends_one_isn_and_the_kernel_stays_silent() {
    let run = run_responder(GeneratorKind::Constant, false, Duration::ZERO);
    let isns = run.checked_isns();
    assert!(isns.iter().all(|&isn| isn == isns[0]), "{isns:?}");
    // The client's ACKs and RSTs reach the server namespace, whose kernel has no socket
    // on the port: none of its RSTs may get out.
    assert!(run.wire.iter().any(|s| s.daddr == run.server && s.rst));
    let server_rsts: Vec<&Segment> = run
        .wire
        .iter()
        .filter(|s| s.saddr == run.server && s.rst)
        .collect();
    assert!(server_rsts.is_empty(), "{server_rsts:?}");
}

#[test]
fn responder_step64k_over_ipv6_adds_64000_per_connection() {
    let run = run_responder(GeneratorKind::Step64k, true, Duration::ZERO);
    assert!(run.server.is_ipv6());
    let diffs = differences(&run.checked_isns());
    assert!(diffs.iter().all(|&d| d == 64_000), "{diffs:?}");
}

#[test]
fn responder_clock250k_follows_the_clock() {
    let run = run_responder(GeneratorKind::Clock250k, false, Duration::from_millis(5));
    let isns = run.checked_isns();
    // Exactly 250 000 ticks per second of the responder's clock (in u128: ns × 250 000
    // overflows u64 once the machine has been up for about 20.5 hours)...
    let ticks = |ns: u64| u128::from(ns) * 250_000 / 1_000_000_000;
    for (pair, diff) in run.sent.windows(2).zip(differences(&isns)) {
        let elapsed = ticks(pair[1].monotonic_ns) - ticks(pair[0].monotonic_ns);
        assert_eq!(u128::from(diff), elapsed);
    }
    // ...and, against tcpdump's clock, over the whole run (≥ 245 ms): within 2 ms.
    let syn_acks: Vec<&Segment> = run.wire.iter().filter(|s| s.saddr == run.server).collect();
    let elapsed_us = syn_acks.last().unwrap().time_us - syn_acks[0].time_us;
    let advance = u64::from(isns.last().unwrap().wrapping_sub(isns[0]));
    let expected = elapsed_us * 250_000 / 1_000_000;
    assert!(
        advance.abs_diff(expected) <= 500,
        "advanced {advance} ticks in {elapsed_us} µs"
    );
}

#[test]
fn responder_small_random_increments_stay_small() {
    let run = run_responder(GeneratorKind::SmallRandom, false, Duration::ZERO);
    let diffs = differences(&run.checked_isns());
    assert!(
        diffs.iter().all(|&d| (1..=65_536).contains(&d)),
        "{diffs:?}"
    );
    assert!(diffs.iter().any(|&d| d != diffs[0]));
}

#[test]
fn responder_uniform_isns_are_far_apart() {
    let run = run_responder(GeneratorKind::Uniform, true, Duration::ZERO);
    let diffs = differences(&run.checked_isns());
    // A uniform difference lands within ±2^20 of zero with probability 2^-11.
    let close = diffs
        .iter()
        .filter(|&&d| d.min(d.wrapping_neg()) < 1 << 20)
        .count();
    assert!(
        close <= 2,
        "{close} of {} differences are small",
        diffs.len()
    );
}

#[test]
fn responder_pool_and_rfc6528_complete_handshakes_as_recorded() {
    for generator in [GeneratorKind::Pool, GeneratorKind::Rfc6528] {
        let isns = run_responder(generator, false, Duration::ZERO).checked_isns();
        let distinct: std::collections::HashSet<u32> = isns.iter().copied().collect();
        assert!(distinct.len() > CONNECTIONS / 2, "{generator}: {isns:?}");
    }
}
