//! Blind spoofing behind a SYN flood, against the real kernel: the real daemon (both
//! directions) on the server's veth of a lab, 20 handshakes opened from a forged client, a
//! random-source SYN flood (`hping3 -S --rand-source --flood`, as ./x setup installs it) from
//! the client namespace, then 20 third packets that guess our ISN wrong. Every guess is
//! counted as a spoofing attempt, exactly once: by the handshake tracker, whose open
//! handshakes the flood could not evict; and by the kernel's own verdict (the listener's
//! reset) when the tracker has no state to judge with. During the flood a scrape stays under
//! a second and the daemon's memory does not grow. Needs root; every lab namespace is removed
//! when its test ends.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, start_both_directions_with},
    lab::{ip, listen_and_hold, netstat, route_spoofed, send_crafted, write_sysctl},
    prometheus::series_value,
    wait_for,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::lab::{Crafter, Lab, LabOptions, flags::*};
use seqwatch_common::handshake::STATE_SLOTS;

const GUESSED_PORT: u16 = 8080;
const HANDSHAKES: u16 = 20;
/// The forged client of the spoofed handshakes; the server reaches it through a neighbour
/// entry the client namespace ignores, so they stay half-open.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 77);
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

struct Scene {
    lab: Lab,
    crafter: Crafter,
    guessed: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Scene {
    /// A lab whose server routes every address (the flood's SYN-ACKs leave, and the client
    /// namespace drops them) and listens on the guessed port.
    fn new() -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let crafter = Crafter::client_to_server(&lab).unwrap();
        route_spoofed(&lab, SPOOFED, Some(crafter.source_mac()));
        let client = lab.client_v4.to_string();
        ip(
            &lab,
            &lab.server_ns,
            &["route", "add", "default", "via", &client],
        );
        let guessed = SocketAddr::new(lab.server_v4.into(), GUESSED_PORT);
        listen_and_hold(&lab, guessed);
        Scene {
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
    fn start(scene: &Scene) -> Flood {
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
    let scene = Scene::new();
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
    let scene = Scene::new();
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
