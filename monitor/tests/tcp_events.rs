//! Kernel TCP events against the real kernel: the real daemon in the server namespace of a
//! lab, real Linux listeners (in child processes where their exit matters), real and crafted
//! segments from the client namespace. A listener whose process exits right after an
//! anomalous handshake is reported once, with its port, kind and source; one closed without
//! an anomaly is not; resets and SYN-ACK retransmits are counted exactly, under the right
//! service and reason; and the same traffic in a namespace the daemon does not monitor counts
//! nothing. Needs root; every lab namespace is removed when its test ends.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    thread,
    time::Duration,
};

use common::{
    container::ContainerCgroup,
    daemon::{
        Daemon, MonitoredLab, assert_tcp_event_programs_attached, event_lines, listed_owner,
        sampled_server_isn, service_report, start_both_directions,
    },
    lab::{
        OnceServer, connect_many, ip, listen, route_own_server_address, route_spoofed, routed_lab,
        send_crafted, serve_once_then_exit, set_neighbour,
    },
    prometheus::series_value,
    wait_for,
};
use nix::sys::socket::{setsockopt, sockopt};
use seqwatch::lab::{Crafter, Lab, LabOptions, Segment, flags::*};

/// The listener the scenarios are about.
const SERVICE_PORT: u16 = 8080;
/// Nothing listens here.
const CLOSED_PORT: u16 = 8081;
/// A spoofed client the server reaches through a static neighbour entry: the client
/// namespace drops what is sent to it, so it never completes a handshake or answers.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 77);

/// The monitored lab, with every tracepoint program attached, and a crafter.
struct Scene {
    monitored: MonitoredLab,
    crafter: Crafter,
}

impl std::ops::Deref for Scene {
    type Target = MonitoredLab;

    fn deref(&self) -> &MonitoredLab {
        &self.monitored
    }
}

impl Scene {
    fn start() -> Scene {
        Scene::start_with(&[])
    }

    /// With more `seqwatch run` flags.
    fn start_with(flags: &[&str]) -> Scene {
        let monitored = MonitoredLab::start_with(flags);
        let (lab, daemon) = (&monitored.lab, &monitored.daemon);
        let metrics = daemon.metrics(lab);
        assert_tcp_event_programs_attached(&metrics, || daemon.log());
        let crafter = Crafter::client_to_server(lab).unwrap();
        route_spoofed(lab, SPOOFED, Some(crafter.source_mac()));
        Scene { monitored, crafter }
    }

    fn service(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.lab.server_v4.into(), port)
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, flags: u8, seq: u32, ack: u32, data: &[u8]) {
        send_crafted(&self.crafter, (from, to), flags, (seq, ack), data);
    }

    /// The ISN of the server's SYN-ACK to `client`, from the daemon's sample log.
    fn server_isn(&self, client: SocketAddr) -> u32 {
        sampled_server_isn(&self.daemon, client)
            .unwrap_or_else(|| panic!("no SYN-ACK to {client}:\n{}", self.daemon.log()))
    }

    fn lost_events(&self) -> Vec<serde_json::Value> {
        event_lines(&self.events, "listener_lost_after_anomaly")
    }

    fn counter(&self, series: &str) -> Option<f64> {
        series_value(&self.daemon.metrics(&self.lab), series)
    }

    /// Every non-zero series of the reset and retransmit metrics, as `name{labels}` → value.
    fn reset_and_retransmit_counts(&self) -> BTreeMap<String, f64> {
        [
            "seqwatch_resets_sent_total",
            "seqwatch_resets_received_total",
            "seqwatch_synack_retransmits_total",
        ]
        .into_iter()
        .flat_map(|metric| {
            self.series(metric)
                .into_iter()
                .map(move |(labels, value)| (format!("{metric}{{{labels}}}"), value))
        })
        .collect()
    }

    /// The counts once two reads a second apart agree (within 10 s).
    fn settled_reset_and_retransmit_counts(&self) -> BTreeMap<String, f64> {
        let mut last = self.reset_and_retransmit_counts();
        for _ in 0..10 {
            thread::sleep(Duration::from_secs(1));
            let now = self.reset_and_retransmit_counts();
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("the reset and retransmit counts never settled: {last:?}");
    }

    /// Every non-zero series of one metric as (labels, value).
    fn series(&self, metric: &str) -> Vec<(String, f64)> {
        let prefix = format!("{metric}{{");
        self.daemon
            .metrics(&self.lab)
            .lines()
            .filter_map(|line| {
                let (labels, value) = line.strip_prefix(&prefix)?.rsplit_once("} ")?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .filter(|(_, value)| *value != 0.0)
            .collect()
    }
}

/// Waits for the listener's close to be judged (the daemon waits a second for late
/// anomalies) and reaps the child.
fn wait_closed(scene: &Scene, mut child: OnceServer) {
    let exited = child.reap_within(Duration::from_secs(10));
    assert!(
        exited,
        "the child server never accepted a connection:\n{}",
        scene.daemon.log()
    );
    let closed = wait_for(Duration::from_secs(5), || {
        scene.counter("seqwatch_listeners_closed_total") == Some(1.0)
    });
    assert!(closed, "the close was not seen:\n{}", scene.daemon.log());
    thread::sleep(Duration::from_secs(2));
}

#[test]
fn a_listener_lost_right_after_an_anomaly_is_reported_once() {
    let scene = Scene::start();
    let service = scene.service(SERVICE_PORT);
    let child = serve_once_then_exit(&scene.lab, &scene.lab.server_ns, service);
    // A SYN carrying data (anomaly `syn_with_data`; Linux ignores the data), then the third
    // ACK for the server's real SYN-ACK: the child accepts that connection and exits.
    let attacker = SocketAddr::new(SPOOFED.into(), 46_001);
    scene.send(attacker, service, SYN, 1000, 0, b"poison");
    let isn = scene.server_isn(attacker);
    scene.send(attacker, service, ACK, 1001, isn.wrapping_add(1), &[]);
    let pid = child.pid;
    wait_closed(&scene, child);

    let lost = scene.lost_events();
    assert_eq!(lost.len(), 1, "{lost:?}\n{}", scene.daemon.log());
    let lost = &lost[0];
    assert_eq!(lost["port"], SERVICE_PORT);
    assert_eq!(lost["listener"], service.to_string());
    assert_eq!(lost["service"], service.to_string());
    assert_eq!(lost["anomaly_kinds"], serde_json::json!(["syn_with_data"]));
    assert_eq!(lost["sources"], serde_json::json!([attacker.to_string()]));
    assert_eq!(lost["anomalies"], 1);
    assert_eq!(lost["pid"], pid.as_raw(), "the process that exited");
    assert!(lost["seconds_after_last_anomaly"].as_f64().unwrap() < 10.0);
    assert_eq!(
        scene.series("seqwatch_listener_lost_after_anomaly_total"),
        [(format!("service=\"{service}\""), 1.0)]
    );
    assert_eq!(scene.counter("seqwatch_listeners_closed_total"), Some(1.0));
    scene.monitored.stop();
}

#[test]
fn a_listener_closed_without_an_anomaly_is_not_reported() {
    let scene = Scene::start();
    let service = scene.service(SERVICE_PORT);
    let child = serve_once_then_exit(&scene.lab, &scene.lab.server_ns, service);
    scene.lab.run_in(&scene.lab.client_ns, || {
        TcpStream::connect_timeout(&service, Duration::from_secs(5)).expect("connect");
    });
    wait_closed(&scene, child);

    assert_eq!(scene.lost_events(), Vec::<serde_json::Value>::new());
    assert_eq!(
        scene.series("seqwatch_listener_lost_after_anomaly_total"),
        []
    );
    assert_eq!(
        scene.series("seqwatch_handshake_anomalies_total"),
        [],
        "no anomaly"
    );
    scene.monitored.stop();
}

/// Connects from `from_ns` to `to` and aborts at once: a RST from the client's side.
fn abort_from(lab: &Lab, from_ns: &str, to: SocketAddr) {
    let stream = lab
        .run_in(from_ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .unwrap();
    abort(stream);
}

/// Closes with a RST (SO_LINGER 0).
fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&stream, sockopt::Linger, &linger).unwrap();
}

/// What `after` counts beyond `before`, series that did not move left out.
fn difference(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(series, value)| (series.clone(), value - before.get(series).unwrap_or(&0.0)))
        .filter(|(_, added)| *added != 0.0)
        .collect()
}

/// The traffic of the counting test, in any lab: 3 connections to a closed port (3 resets
/// sent, reason no_socket, by the server), 2 connections the client aborts (2 resets
/// received by the server's 8080 sockets; the client's own resets and the resets it
/// receives are the client namespace's), and a SYN never completed (1 SYN-ACK retransmit,
/// with tcp_synack_retries = 1).
fn reset_and_retransmit_traffic(lab: &Lab, crafter: &Crafter) {
    lab.run_in(&lab.server_ns, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_synack_retries", "1").unwrap();
    });
    let service = SocketAddr::new(lab.server_v4.into(), SERVICE_PORT);
    let closed = SocketAddr::new(lab.server_v4.into(), CLOSED_PORT);
    let listener = lab
        .run_in(&lab.server_ns, || TcpListener::bind(service))
        .unwrap();
    lab.run_in(&lab.client_ns, || {
        for _ in 0..3 {
            let refused = TcpStream::connect_timeout(&closed, Duration::from_secs(5));
            assert!(refused.is_err(), "port {CLOSED_PORT} is closed");
        }
        for _ in 0..2 {
            let stream = TcpStream::connect_timeout(&service, Duration::from_secs(5)).unwrap();
            let abort = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(&stream, sockopt::Linger, &abort).unwrap();
        }
    });
    let segment = Segment {
        from: SocketAddr::new(SPOOFED.into(), 47_001),
        to: service,
        flags: SYN,
        seq: 5000,
        ack: 0,
        options: &[],
        payload: &[],
    };
    crafter.send_segment(&segment).unwrap();
    // The retransmit comes after 1 s; with one retry the request is dropped after 3 s.
    thread::sleep(Duration::from_secs(4));
    drop(listener);
}

#[test]
fn resets_and_synack_retransmits_are_counted_in_the_monitored_namespace_only() {
    // The same traffic first in a lab nobody monitors: tracepoints fire for every namespace,
    // and none of it may be counted.
    let unmonitored = Lab::create(&LabOptions::default()).unwrap();
    let unmonitored_crafter = Crafter::client_to_server(&unmonitored).unwrap();
    route_spoofed(
        &unmonitored,
        SPOOFED,
        Some(unmonitored_crafter.source_mac()),
    );
    let scene = Scene::start();
    // The test's scrapes before /metrics was served were refused with resets of this
    // namespace (no_socket): counted, so compare against what is counted once those have
    // come through (the reader drains its ring buffer on a timer).
    let before = scene.settled_reset_and_retransmit_counts();
    reset_and_retransmit_traffic(&unmonitored, &unmonitored_crafter);
    assert_eq!(
        scene.reset_and_retransmit_counts(),
        before,
        "nothing counted"
    );

    reset_and_retransmit_traffic(&scene.lab, &scene.crafter);
    let service = scene.service(SERVICE_PORT);
    let added = difference(&scene.reset_and_retransmit_counts(), &before);
    let want = BTreeMap::from([
        (
            "seqwatch_resets_sent_total{reason=\"no_socket\"}".to_owned(),
            3.0,
        ),
        (
            format!("seqwatch_resets_received_total{{service=\"{service}\"}}"),
            2.0,
        ),
        (
            format!("seqwatch_synack_retransmits_total{{service=\"{service}\"}}"),
            1.0,
        ),
    ]);
    assert_eq!(added, want, "{}", scene.daemon.log());
    for counter in [
        "seqwatch_tcp_events_dropped_total",
        "seqwatch_tcp_events_netns_unreadable_total",
    ] {
        assert_eq!(scene.counter(counter), Some(0.0), "{counter}");
    }
    scene.monitored.stop();
}

#[test]
fn resets_received_are_counted_under_the_server_for_listeners_older_than_the_daemon() {
    // A listener open before the daemon starts (the daemon learns of it from /proc, not from
    // a listener event), over IPv6; and an outgoing connection of the monitored namespace,
    // over IPv4, whose server is in the client namespace.
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let old_service = SocketAddr::new(lab.server_v6.into(), SERVICE_PORT);
    let old_listener = lab
        .run_in(&lab.server_ns, || TcpListener::bind(old_service))
        .unwrap();
    let remote_service = SocketAddr::new(lab.client_v4.into(), 9090);
    let remote_listener = lab
        .run_in(&lab.client_ns, || TcpListener::bind(remote_service))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_both_directions(&lab, dir.path(), &dir.path().join("events.jsonl"));
    // A remote server earns its label by handshakes (docs/limits.md).
    for _ in 0..seqwatch::export::labels::admission::MIN_HANDSHAKES {
        let outgoing = lab.run_in(&lab.server_ns, || TcpStream::connect(remote_service));
        drop((outgoing, remote_listener.accept()));
    }
    let labelled = format!("seqwatch_isn_samples{{service=\"{remote_service}\"}}");
    wait_for(Duration::from_secs(10), || {
        series_value(&daemon.metrics(&lab), &labelled).is_some()
    });

    for _ in 0..2 {
        abort_from(&lab, &lab.client_ns, old_service);
        let outgoing = lab.run_in(&lab.server_ns, || {
            TcpStream::connect_timeout(&remote_service, Duration::from_secs(5))
        });
        let (accepted, _) = remote_listener.accept().unwrap();
        abort(accepted);
        drop(outgoing);
    }
    let want = [
        (format!("service=\"{old_service}\""), 2.0),
        (format!("service=\"{remote_service}\""), 2.0),
    ];
    let received = || {
        let metrics = daemon.metrics(&lab);
        want.iter()
            .map(|(labels, _)| {
                let series = format!("seqwatch_resets_received_total{{{labels}}}");
                (
                    labels.clone(),
                    series_value(&metrics, &series).unwrap_or(0.0),
                )
            })
            .collect::<Vec<_>>()
    };
    wait_for(Duration::from_secs(10), || received() == want);
    assert_eq!(received(), want, "{}", daemon.log());
    drop(old_listener);
    daemon.stop();
}

/// The inode number of a lab namespace: its `netns` label under `--netns all`.
fn netns_label(ns: &str) -> String {
    let inode = std::fs::metadata(Lab::netns_path(ns)).unwrap().ino();
    format!("netns=\"{inode}\"")
}

/// Every series of the other namespaces' reset and retransmit metrics with `netns`.
fn netns_counts(daemon: &Daemon, lab: &Lab, netns: &str) -> BTreeMap<String, f64> {
    let metrics = daemon.metrics(lab);
    let metric_names = [
        "seqwatch_netns_resets_sent_total",
        "seqwatch_netns_resets_received_total",
        "seqwatch_netns_synack_retransmits_total",
    ];
    metrics
        .lines()
        .filter(|line| metric_names.iter().any(|name| line.starts_with(name)))
        .filter(|line| line.contains(netns))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `--netns all`: the same traffic in another lab (a "container" host's other namespaces)
/// counts nothing of the daemon's own, and is counted under the other lab's server
/// namespace, exactly; once that namespace is gone, so are its series.
#[test]
fn resets_and_synack_retransmits_of_a_followed_namespace_are_counted_under_it() {
    let other = Lab::create(&LabOptions::default()).unwrap();
    let other_crafter = Crafter::client_to_server(&other).unwrap();
    route_spoofed(&other, SPOOFED, Some(other_crafter.source_mac()));
    let netns = netns_label(&other.server_ns);
    let scene = Scene::start_with(&["--netns", "all"]);
    let followed = wait_for(Duration::from_secs(10), || {
        let metrics = scene.daemon.metrics(&scene.lab);
        metrics
            .lines()
            .any(|line| line.starts_with("seqwatch_netns_info") && line.contains(&netns))
    });
    assert!(followed, "{netns} never followed:\n{}", scene.daemon.log());
    let before = scene.settled_reset_and_retransmit_counts();

    reset_and_retransmit_traffic(&other, &other_crafter);
    let port = format!("port=\"{SERVICE_PORT}\"");
    let want = BTreeMap::from([
        (format!("seqwatch_netns_resets_sent_total{{{netns}}}"), 3.0),
        (
            format!("seqwatch_netns_resets_received_total{{{netns},{port}}}"),
            2.0,
        ),
        (
            format!("seqwatch_netns_synack_retransmits_total{{{netns},{port}}}"),
            1.0,
        ),
    ]);
    // Resets received are read from the kernel once a second.
    wait_for(Duration::from_secs(5), || {
        netns_counts(&scene.daemon, &scene.lab, &netns) == want
    });
    let counted = netns_counts(&scene.daemon, &scene.lab, &netns);
    assert_eq!(counted, want, "{}", scene.daemon.log());
    assert_eq!(
        scene.reset_and_retransmit_counts(),
        before,
        "none of this namespace's"
    );

    drop(other);
    let forgotten = wait_for(Duration::from_secs(10), || {
        netns_counts(&scene.daemon, &scene.lab, &netns).is_empty()
    });
    assert!(
        forgotten,
        "{:?}",
        netns_counts(&scene.daemon, &scene.lab, &netns)
    );
    scene.monitored.stop();
}

/// A container behind a gateway: the routed lab's router runs the daemon (`--netns all`, both
/// directions on both its interfaces), its server namespace is the container, whose listener's
/// process is in a podman container's cgroup. A listener lost right after an anomalous
/// handshake forwarded to it is reported once, naming the container's namespace and ID.
#[test]
fn a_container_listener_lost_after_an_anomaly_is_reported_with_its_container() {
    let lab = routed_lab();
    let router = lab.router.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let (towards_client, towards_server) = (router.client_if.as_str(), router.server_if.as_str());
    let flags = ["--event-log", events.to_str().unwrap(), "--netns", "all"];
    let interfaces = [towards_client, towards_server];
    let place = (router.ns.as_str(), dir.path());
    let daemon = Daemon::with_ingress_on(&lab, place, ("both", &interfaces), &flags);
    // The server's answers to the spoofed client leave the router for the client's MAC
    // address, and the client namespace drops them.
    let crafter = Crafter::client_to_server(&lab).unwrap();
    let spoofed = format!("{SPOOFED}/32");
    ip(
        &lab,
        &router.ns,
        &["route", "add", &spoofed, "dev", towards_client],
    );
    set_neighbour(
        &lab,
        &router.ns,
        (SPOOFED, crafter.source_mac()),
        towards_client,
    );

    // The container's services on an address of its own.
    let own = route_own_server_address(&lab);
    let service = SocketAddr::new(own.into(), SERVICE_PORT);
    let mut child = serve_once_then_exit(&lab, &lab.server_ns, service);
    let mut cgroup = ContainerCgroup::create();
    cgroup.start_process_in(&lab.server_ns);
    let (netns, container) = (
        netns_label(&lab.server_ns),
        format!("container=\"{}\"", cgroup.short_id()),
    );
    daemon.wait_netns_named(&lab, [&netns, &container]);

    let attacker = SocketAddr::new(SPOOFED.into(), 46_002);
    send_crafted(&crafter, (attacker, service), SYN, (1000, 0), b"poison");
    let isn = sampled_server_isn(&daemon, attacker)
        .unwrap_or_else(|| panic!("no SYN-ACK to {attacker}:\n{}", daemon.log()));
    send_crafted(
        &crafter,
        (attacker, service),
        ACK,
        (1001, isn.wrapping_add(1)),
        &[],
    );
    let exited = child.reap_within(Duration::from_secs(10));
    assert!(
        exited,
        "the container's server never accepted:\n{}",
        daemon.log()
    );
    let lost = || event_lines(&events, "listener_lost_after_anomaly");
    wait_for(Duration::from_secs(5), || !lost().is_empty());
    let lost = lost();
    assert_eq!(lost.len(), 1, "{lost:?}\n{}", daemon.log());
    let inode = std::fs::metadata(Lab::netns_path(&lab.server_ns))
        .unwrap()
        .ino();
    assert_eq!(lost[0]["netns"]["inode"], inode, "{}", lost[0]);
    assert_eq!(
        lost[0]["netns"]["container"],
        cgroup.short_id(),
        "{}",
        lost[0]
    );
    assert_eq!(lost[0]["service"], service.to_string());
    assert_eq!(
        lost[0]["anomaly_kinds"],
        serde_json::json!(["syn_with_data"])
    );
    let closed = format!("seqwatch_netns_listeners_closed_total{{{netns}}}");
    assert_eq!(series_value(&daemon.metrics(&lab), &closed), Some(1.0));
    // The anomaly's line names the container serving the service too. It is judged once, as
    // it comes in: the router's egress hook towards the server leaves the forwarded SYN alone
    // (it would see it as a SYN of the router's own, the client's port its service).
    let anomalies = event_lines(&events, "syn_with_data");
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(anomalies[0]["service"], service.to_string());
    assert_eq!(anomalies[0]["netns"]["container"], cgroup.short_id());

    // So does its ISN report, for another of its services, on the wildcard address; whose
    // listener earns it a label at once, as this namespace's listeners do (a service without
    // one needs 16 handshakes and a ranked label).
    let wildcard = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), CLOSED_PORT);
    listen(&lab, &lab.server_ns, wildcard);
    let seen = wait_for(Duration::from_secs(5), || {
        listed_owner(&lab, &router.ns, CLOSED_PORT, inode).is_some()
    });
    assert!(seen, "the container's second listener:\n{}", daemon.log());
    let other = SocketAddr::new(own.into(), CLOSED_PORT);
    connect_many(&lab, &lab.client_ns, other, 4);
    let mut report = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), || {
        report = service_report(&lab, &router.ns, other).unwrap_or_default();
        !report.is_null()
    });
    assert_eq!(report["netns"]["inode"], inode, "{report}");
    assert_eq!(report["netns"]["container"], cgroup.short_id(), "{report}");
    // Labels are published at the detector's next ranking, once a second.
    let labelled = format!("seqwatch_isn_samples{{service=\"{other}\"}}");
    wait_for(Duration::from_secs(5), || {
        series_value(&daemon.metrics(&lab), &labelled).is_some()
    });
    let metrics = daemon.metrics(&lab);
    assert_eq!(series_value(&metrics, &labelled), Some(4.0), "{metrics}");
    daemon.stop();
}
