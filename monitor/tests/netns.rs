//! Other network namespaces (`--netns all`) against the real kernel: the daemon in the lab's
//! server namespace, a "container" namespace the test makes once the daemon serves (and has
//! dropped the capabilities it does not keep), with a listener and a process in
//! a cgroup whose path is a podman container's (`libpod-<64 hex>.scope`). The container's
//! listener is in listener health under the namespace's inode, the namespace is named by the
//! container's ID, and once the namespace is deleted its series go. Its TcpExt counters and
//! posture are its own, not the daemon's namespace's, and go with it too, leaving the daemon
//! nothing open in it. Then a real podman container (`--network=none`, a Perl listener from
//! the host's /usr), named by podman's name. Beside 100 namespaces with a listener each, the
//! daemon's memory stays bounded. Needs root, a cgroup2 mount and podman with runc (`./x test`
//! installs them); the namespaces, the process, the cgroup and the podman container are
//! removed even on failure.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{
    container::{Container, ListeningNamespaces},
    daemon::{Daemon, event_lines, listed_owner, read_json_lines, service_report},
    host::{rss_bytes, thread_caps},
    lab::{
        backlog_listener, connect_many, ip, netstat, read_sysctl, route_own_server_address,
        routed_lab, send_crafted, write_sysctl,
    },
    prometheus::{series_value, synack_samples},
    wait_for,
};
use seqwatch::lab::{Crafter, Lab, LabOptions, flags::*};

const PORT: u16 = 8443;
/// Namespaces followed at once in the memory bound's test, and the bound (docs/limits.md): the
/// daemon takes about 29 MiB with them as without.
const MANY_NAMESPACES: usize = 100;
const MAX_RSS_WITH_MANY_BYTES: u64 = 48 << 20;

/// The lines of `metrics` that are series of `name` and carry every one of `labels`.
fn series<'a>(metrics: &'a str, name: &str, labels: &[String]) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .collect()
}

/// The daemon with `--netns all` (run through `wrapper`), then a container with a listener.
struct Scene {
    lab: Lab,
    container: Container,
    listener: TcpListener,
    daemon: Daemon,
    /// The container's `netns` label.
    netns: String,
    _dir: tempfile::TempDir,
}

/// The daemon with `--netns all` (run through `wrapper`) in a lab, serving; its directory.
fn start_daemon(wrapper: &[&str]) -> (Lab, Daemon, tempfile::TempDir) {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    // Writable by the daemon whoever it runs as.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let args = ["--netns", "all"];
    let daemon = Daemon::start_wrapped(&lab, &lab.server_ns, dir.path(), wrapper, &args);
    // Serving means attached and its capabilities dropped: the container comes later.
    let serving = wait_for(Duration::from_secs(30), || daemon.scrape(&lab).is_some());
    assert!(serving, "no /metrics:\n{}", daemon.log());
    (lab, daemon, dir)
}

/// The `seqwatch_netns*` lines of `metrics`.
fn netns_series(metrics: &str) -> String {
    let lines = metrics
        .lines()
        .filter(|line| line.starts_with("seqwatch_netns"));
    lines.collect::<Vec<_>>().join("\n")
}

impl Scene {
    fn start(wrapper: &[&str]) -> Scene {
        let (lab, daemon, dir) = start_daemon(wrapper);
        let container = Container::create();
        let listener = lab.run_in(&container.ns, || {
            TcpListener::bind(("127.0.0.1", PORT)).unwrap()
        });
        let netns = format!("netns=\"{}\"", container.inode());
        Scene {
            lab,
            container,
            listener,
            daemon,
            netns,
            _dir: dir,
        }
    }

    /// `seqwatch_netns_info`'s series naming the container.
    fn named(&self, metrics: &str) -> Vec<String> {
        let short_id = format!("container=\"{}\"", &self.container.id[..12]);
        let labels = [self.netns.clone(), short_id];
        let lines = series(metrics, "seqwatch_netns_info", &labels);
        lines.into_iter().map(str::to_owned).collect()
    }

    /// The container's listener's backlog, as listener health exports it.
    fn backlog<'a>(&self, metrics: &'a str) -> Vec<&'a str> {
        let labels = [self.netns.clone(), format!("port=\"{PORT}\"")];
        series(metrics, "seqwatch_netns_listener_accept_queue_max", &labels)
    }

    /// Waits until the container's listener and name are exported; returns /metrics.
    fn wait_for_the_container(&self) -> String {
        let seen = wait_for(Duration::from_secs(15), || {
            self.daemon.scrape(&self.lab).is_some_and(|metrics| {
                self.backlog(&metrics).len() == 1 && self.named(&metrics).len() == 1
            })
        });
        let metrics = self.daemon.metrics(&self.lab);
        assert!(
            seen,
            "the container's listener and name, {} {}:\n{}\n{}",
            self.netns,
            self.container.id,
            netns_series(&metrics),
            self.daemon.log()
        );
        metrics
    }
}

#[test]
fn a_containers_listener_is_watched_named_by_its_container_and_forgotten_with_it() {
    let mut scene = Scene::start(&[]);
    let metrics = scene.wait_for_the_container();
    let backlog = scene.backlog(&metrics);
    assert!(backlog[0].ends_with(" 128"), "std's backlog: {backlog:?}");
    let named = scene.named(&metrics);
    assert!(named[0].ends_with(" 1"), "{named:?}");

    let (lab, inode) = (&scene.lab, scene.container.inode());
    let listed = listed_owner(lab, &lab.server_ns, PORT, inode)
        .expect("the container's listener in /api/v1/owners");
    let short_id = &scene.container.id[..12];
    assert_eq!(listed["netns"]["container"], short_id, "{listed}");

    // The container ends: its processes exit, its namespace goes, and so do its series.
    drop(scene.listener);
    scene.container.stop();
    let forgotten = wait_for(Duration::from_secs(6), || {
        let metrics = scene.daemon.scrape(&scene.lab);
        metrics.is_some_and(|metrics| !metrics.contains(&scene.netns))
    });
    let metrics = scene.daemon.metrics(&scene.lab);
    assert!(forgotten, "{} still has series:\n{metrics}", scene.netns);
    scene.daemon.stop();
}

/// CAP_NET_ADMIN, CAP_SYS_PTRACE and CAP_SYS_ADMIN (capabilities 12, 19 and 21).
const KEPT_FOR_ALL: u64 = 1 << 12 | 1 << 19 | 1 << 21;

/// As the unit runs it with `netns = "all"` (not root, its three capabilities and the two its
/// comments add), the daemon keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE beside CAP_NET_ADMIN and
/// nothing else, and with them finds and enters a root process's namespace.
#[test]
fn as_the_unit_runs_it_all_keeps_sys_admin_and_sys_ptrace_and_follows_the_container() {
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+bpf,+net_admin,+perfmon,+sys_admin,+sys_ptrace",
        "--ambient-caps=+bpf,+net_admin,+perfmon,+sys_admin,+sys_ptrace",
    ];
    let scene = Scene::start(&wrapper);
    scene.wait_for_the_container();
    let pid = scene.daemon.pid();
    for set in ["CapEff", "CapPrm"] {
        let caps = thread_caps(pid, set);
        assert!(
            caps.iter().all(|&c| c == KEPT_FOR_ALL),
            "{set} of every thread: {caps:x?}\n{}",
            scene.daemon.log()
        );
    }
    scene.daemon.stop();
}

/// The daemon following 100 namespaces, each listener exported, within its memory bound.
#[test]
fn following_a_hundred_namespaces_with_a_listener_each_keeps_memory_bounded() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let namespaces = ListeningNamespaces::create(&lab, MANY_NAMESPACES, PORT);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&lab, &lab.server_ns, dir.path(), &["--netns", "all"]);
    let port = format!("port=\"{PORT}\"");
    let mut listeners = 0;
    let exported = wait_for(Duration::from_secs(30), || {
        let metrics = daemon.scrape(&lab).unwrap_or_default();
        let backlogs = series(&metrics, "seqwatch_netns_listener_accept_queue_max", &[]);
        // Other tests' namespaces may have listeners on the port too.
        listeners = backlogs.iter().filter(|line| line.contains(&port)).count();
        listeners >= MANY_NAMESPACES
    });
    assert!(
        exported,
        "{listeners} listeners exported:\n{}",
        daemon.log()
    );
    let rss = rss_bytes(daemon.pid());
    eprintln!("{listeners} listeners followed: RSS {} KiB", rss >> 10);
    assert!(
        rss <= MAX_RSS_WITH_MANY_BYTES,
        "RSS {} MiB with {listeners} namespaces followed",
        rss >> 20
    );
    daemon.stop();
    drop(namespaces);
}

/// A podman container, removed (killed at once) on drop.
struct PodmanContainer {
    name: String,
    /// The full ID `podman run` printed.
    id: String,
}

impl PodmanContainer {
    /// `podman run --detach` of `command` in a namespace of its own (`--network=none`), on a
    /// root of symlinks into the host's /usr (mounted read-only): nothing to pull, no network.
    /// The host workarounds are tests/packaging.rs's: runc (Debian 12's crun refuses this
    /// hybrid cgroup host) and explicit ulimits.
    fn run(rootfs: &std::path::Path, command: &[&str]) -> PodmanContainer {
        for dir in ["usr", "proc", "dev", "sys", "etc", "tmp", "run"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        for link in ["bin", "lib", "lib64", "sbin"] {
            if std::path::Path::new("/usr").join(link).is_dir() {
                std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).unwrap();
            }
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let name = format!("sw-netns-{}-{}", std::process::id(), nanos.as_nanos());
        let mut container = PodmanContainer {
            name,
            id: String::new(),
        };
        let out = Command::new("podman")
            .args(["run", "--detach", "--name", &container.name])
            .args([
                "--runtime=runc",
                "--ulimit=nofile=4096:4096",
                "--ulimit=nproc=4096:4096",
            ])
            .args(["--network=none", "--volume=/usr:/usr:ro", "--rootfs"])
            .arg(rootfs)
            .args(command)
            .output()
            .expect("podman (./x test installs it)");
        assert!(out.status.success(), "podman run: {out:?}");
        container.id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        container
    }

    /// The inode of the container's network namespace.
    fn netns_inode(&self) -> u64 {
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .unwrap();
        assert!(out.status.success(), "podman inspect: {out:?}");
        let pid = String::from_utf8(out.stdout).unwrap();
        std::fs::metadata(format!("/proc/{}/ns/net", pid.trim()))
            .unwrap()
            .ino()
    }

    fn remove(&self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time=0", &self.name])
            .output();
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A real podman container with a listener: its listener is watched under its namespace's
/// inode, `seqwatch_netns_info` names it by podman's name (from podman's containers.json) and
/// /api/v1/owners gives its short ID and name, and its owner's; once `podman rm` removes it,
/// its series go.
#[test]
fn a_podman_containers_listener_is_named_by_its_podman_name_and_forgotten_with_it() {
    let (lab, daemon, _dir) = start_daemon(&[]);
    let rootfs = tempfile::tempdir().unwrap();
    let listen = format!(
        "my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => {PORT}, \
         Listen => 128) or die $!; sleep 120"
    );
    let command = ["perl", "-MIO::Socket::INET", "-e", &listen];
    let container = PodmanContainer::run(rootfs.path(), &command);
    let inode = container.netns_inode();
    let netns = format!("netns=\"{inode}\"");
    let info = format!(
        "seqwatch_netns_info{{container=\"{}\",namespace=\"\",{netns},pod=\"\"}} 1",
        container.name
    );
    let backlog = |metrics: &str| {
        let labels = [netns.clone(), format!("port=\"{PORT}\"")];
        let name = "seqwatch_netns_listener_accept_queue_max";
        series(metrics, name, &labels).len() == 1
    };
    let seen = wait_for(Duration::from_secs(15), || {
        let metrics = daemon.scrape(&lab).unwrap_or_default();
        backlog(&metrics) && metrics.lines().any(|line| line == info)
    });
    let metrics = daemon.metrics(&lab);
    assert!(
        seen,
        "{info} and its listener:\n{}\n{}",
        netns_series(&metrics),
        daemon.log()
    );

    let listed = listed_owner(&lab, &lab.server_ns, PORT, inode)
        .expect("the container's listener in /api/v1/owners");
    assert_eq!(listed["netns"]["container"], container.id[..12], "{listed}");
    assert_eq!(
        listed["netns"]["container_name"], container.name,
        "{listed}"
    );
    // Its owner, by the listening process's own cgroup (in a pod, its container, not the pod's).
    assert_eq!(listed["owner"]["container"], container.id[..12], "{listed}");
    assert_eq!(
        listed["owner"]["container_name"], container.name,
        "{listed}"
    );

    container.remove();
    let forgotten = wait_for(Duration::from_secs(6), || {
        let metrics = daemon.scrape(&lab);
        metrics.is_some_and(|metrics| !metrics.contains(&netns))
    });
    let metrics = daemon.metrics(&lab);
    assert!(
        forgotten,
        "{netns} still has series:\n{}",
        netns_series(&metrics)
    );
    daemon.stop();
}

/// What the daemon has open, from /proc/PID/fd: its handles on network namespaces (by inode),
/// its netstat files, and all its descriptors.
struct Descriptors {
    namespaces: Vec<u64>,
    netstats: usize,
    all: usize,
}

impl std::fmt::Debug for Descriptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (handles, netstats, all) = (self.namespaces.len(), self.netstats, self.all);
        write!(
            f,
            "{handles} namespace handles, {netstats} netstats, {all} descriptors"
        )
    }
}

fn descriptors(pid: u32) -> Descriptors {
    let nsfs = std::fs::metadata("/proc/self/ns/net").unwrap().dev();
    let paths: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    // A handle opened at /run/netns/NAME links there: what it is open on tells.
    let namespaces = paths
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .filter(|meta| meta.dev() == nsfs)
        .map(|meta| meta.ino())
        .collect();
    let netstats = paths
        .iter()
        .filter_map(|path| std::fs::read_link(path).ok())
        .filter(|target| target.ends_with("net/netstat"))
        .count();
    Descriptors {
        namespaces,
        netstats,
        all: paths.len(),
    }
}

/// The container's own TcpExt counters and posture, not the daemon's namespace's: SYN cookies
/// off and listen overflows provoked in the container only. Once it is deleted its series go,
/// the daemon keeps nothing open in it, and the kernel frees it (a veth end it had in the
/// lab's client namespace goes with it).
#[test]
fn a_containers_tcpext_counters_and_posture_are_its_own_and_go_with_it() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let mut container = Container::create();
    // Set before the daemon starts, so that its first reading has it.
    let ns = container.ns.clone();
    write_sysctl(&lab, &ns, "net.ipv4.tcp_syncookies", "0");
    let probe = format!("swp{}", std::process::id());
    let (peer, client_ns) = (&probe, &lab.client_ns);
    ip(
        &lab,
        &ns,
        &[
            "link", "add", &probe, "type", "veth", "peer", peer, "netns", client_ns,
        ],
    );
    // An accept queue of two that nothing accepts from: the SYNs after it are dropped there.
    let queue = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT + 1);
    let listener = backlog_listener(&lab, &ns, queue, 1);
    let clients: Vec<TcpStream> = lab.run_in(&ns, || {
        (0..6)
            .filter_map(|_| {
                let timeout = Duration::from_millis(200);
                TcpStream::connect_timeout(&SocketAddr::V4(queue), timeout).ok()
            })
            .collect()
    });
    let overflows = netstat(&lab, &ns)["TcpExtListenOverflows"];
    let own_overflows = netstat(&lab, &lab.server_ns)["TcpExtListenOverflows"];
    assert!(
        overflows >= 3,
        "{overflows} overflows, {} clients",
        clients.len()
    );
    assert_eq!(
        read_sysctl(Some((&lab, &lab.server_ns)), "net.ipv4.tcp_syncookies"),
        "1\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&lab, &lab.server_ns, dir.path(), &["--netns", "all"]);
    let netns = format!("netns=\"{}\"", container.inode());
    let tcpext = format!("seqwatch_netns_tcpext_listen_overflows_total{{{netns}}}");
    // One series, and 0: not as recommended.
    let syncookies_off = |metrics: &str| {
        let labels = [netns.clone(), "check=\"tcp_syncookies\"".into()];
        let lines = series(metrics, "seqwatch_netns_posture_check", &labels);
        lines.len() == 1 && lines[0].ends_with(" 0")
    };
    let exported = wait_for(Duration::from_secs(20), || {
        daemon.scrape(&lab).is_some_and(|metrics| {
            series_value(&metrics, &tcpext) == Some(overflows as f64) && syncookies_off(&metrics)
        })
    });
    let metrics = daemon.metrics(&lab);
    let shown = |prefix: &str| {
        let lines = metrics.lines().filter(|line| line.starts_with(prefix));
        lines.collect::<Vec<_>>().join("\n")
    };
    assert!(
        exported,
        "{overflows} overflows and syncookies 0 under {netns}:\n{}\n{}",
        shown("seqwatch_netns_tcpext_listen_overflows"),
        shown("seqwatch_netns_posture_check{check=\"tcp_syncookies\""),
    );
    // The daemon's own namespace still shows its own.
    let own = "seqwatch_tcpext_listen_overflows_total";
    assert_eq!(series_value(&metrics, own), Some(own_overflows as f64));
    let own_posture = "seqwatch_posture_check{check=\"tcp_syncookies\",scope=\"netns\"}";
    assert_eq!(series_value(&metrics, own_posture), Some(1.0));

    // One handle and one netstat per namespace followed, the container's among them: compared
    // until a scrape and the count agree (other namespaces on the host come and go).
    let pid = daemon.pid();
    let inode = container.inode();
    let one_each = || {
        let metrics = daemon.scrape(&lab);
        let followed = metrics.and_then(|m| series_value(&m, "seqwatch_netns_followed"));
        let open = descriptors(pid);
        let count = open.namespaces.len() as f64;
        followed.is_some_and(|n| count == n && open.netstats as f64 == n)
    };
    let consistent = wait_for(Duration::from_secs(10), || {
        one_each() && descriptors(pid).namespaces.contains(&inode)
    });
    let open_following = descriptors(pid);
    assert!(consistent, "{open_following:?}");

    drop(clients);
    drop(listener);
    container.stop();
    // The veth end outlives the container's namespace only while something holds that.
    let probe_alive = || {
        let mut show = lab.command_in(&lab.client_ns, "ip");
        show.args(["link", "show", &probe]);
        show.output().unwrap().status.success()
    };
    let forgotten = wait_for(Duration::from_secs(10), || {
        let gone = daemon
            .scrape(&lab)
            .is_some_and(|metrics| !metrics.contains(&netns));
        let freed = !probe_alive();
        gone && freed && !descriptors(pid).namespaces.contains(&inode)
    });
    let metrics = daemon.metrics(&lab);
    let series_left: Vec<_> = metrics.lines().filter(|l| l.contains(&netns)).collect();
    let open_after = descriptors(pid);
    assert!(
        forgotten,
        "{netns}: series left {series_left:?}; still alive: {}; a handle on it: {}; {open_after:?}",
        probe_alive(),
        open_after.namespaces.contains(&inode)
    );
    assert!(
        wait_for(Duration::from_secs(10), one_each),
        "{open_after:?}"
    );
    eprintln!(
        "descriptors: {} while following the container, {} after",
        open_following.all, open_after.all
    );
    daemon.stop();
}

/// A container's listener that never accepts: once a connection has waited the limit in its
/// accept queue, the event log says so, naming the container, and the episode is counted under
/// its namespace; the event log says so again when it recovers. The count goes with the
/// namespace (its listener still open: not with the port).
#[test]
fn a_containers_listener_that_never_accepts_is_reported_unresponsive_naming_it() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let args = [
        "--netns",
        "all",
        "--unresponsive-after",
        "1",
        "--event-log",
        events.to_str().unwrap(),
    ];
    let daemon = Daemon::start(&lab, &lab.server_ns, dir.path(), &args);
    let serving = wait_for(Duration::from_secs(30), || daemon.scrape(&lab).is_some());
    assert!(serving, "no /metrics:\n{}", daemon.log());
    let mut container = Container::create();
    let listener = lab.run_in(&container.ns, || {
        TcpListener::bind(("127.0.0.1", PORT)).unwrap()
    });
    let waiting = lab.run_in(&container.ns, || {
        TcpStream::connect(("127.0.0.1", PORT)).unwrap()
    });
    let inode = container.inode();
    let line = |kind: &str| {
        read_json_lines(&events)
            .into_iter()
            .find(|line| line["kind"] == kind && line["netns"]["inode"] == inode)
    };
    let reported = wait_for(Duration::from_secs(15), || {
        line("listener_unresponsive").is_some()
    });
    assert!(
        reported,
        "no listener_unresponsive for {inode}:\n{}",
        daemon.log()
    );
    let event = line("listener_unresponsive").unwrap();
    assert_eq!(event["port"], PORT);
    assert_eq!(event["accept_queue"], 1, "{event}");
    assert_eq!(event["netns"]["container"], &container.id[..12], "{event}");
    let episodes =
        format!("seqwatch_netns_listener_unresponsive_total{{netns=\"{inode}\",port=\"{PORT}\"}}");
    let counted = || series_value(&daemon.metrics(&lab), &episodes);
    assert_eq!(counted(), Some(1.0), "{}", daemon.metrics(&lab));

    let accepted = listener.accept().unwrap();
    let recovered = wait_for(Duration::from_secs(10), || {
        line("listener_recovered").is_some()
    });
    assert!(
        recovered,
        "no listener_recovered for {inode}:\n{}",
        daemon.log()
    );
    assert_eq!(counted(), Some(1.0), "one episode");

    container.stop();
    let forgotten = wait_for(Duration::from_secs(6), || counted().is_none());
    assert!(forgotten, "{episodes} outlives its namespace");
    drop((listener, accepted, waiting));
    daemon.stop();
}

/// `--netns-only NAME`: of two named namespaces with a listener each, only the one named is
/// followed; no other namespace of the host is.
#[test]
fn netns_only_follows_the_namespaces_named_and_no_other() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let namespaces = ListeningNamespaces::create(&lab, 2, PORT);
    let (named, other) = (&namespaces.names[0], &namespaces.names[1]);
    let inode = |name: &str| std::fs::metadata(Lab::netns_path(name)).unwrap().ino();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--netns", "all", "--netns-only", named.as_str()];
    let daemon = Daemon::start(&lab, &lab.server_ns, dir.path(), &args);
    let label = |name: &str| format!("netns=\"{}\"", inode(name));
    let backlog = |metrics: &str, name: &str| {
        let labels = [label(name), format!("port=\"{PORT}\"")];
        series(metrics, "seqwatch_netns_listener_accept_queue_max", &labels).len()
    };
    let exported = wait_for(Duration::from_secs(15), || {
        daemon
            .scrape(&lab)
            .is_some_and(|metrics| backlog(&metrics, named) == 1)
    });
    let metrics = daemon.metrics(&lab);
    assert!(exported, "{named}:\n{}", netns_series(&metrics));
    assert!(!metrics.contains(&label(other)), "{other} is not named");
    let followed = series_value(&metrics, "seqwatch_netns_followed");
    assert_eq!(followed, Some(1.0), "{}", netns_series(&metrics));
    daemon.stop();
}

/// Two containers on a bridge of the daemon's namespace (as Docker's and podman's default
/// networks are): a connection from one to the other's service is bridged, never routed, and
/// the daemon samples its SYN-ACK as it comes in by the server's bridge port (not again where
/// it leaves by the client's), and names the service's container in `/api/v1/services`. Once
/// the server's namespace is deleted, its port's programs and series are gone.
#[test]
fn a_service_of_a_bridged_container_is_scored_and_named_by_its_container() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let host = lab.server_ns.as_str();
    ip(&lab, host, &["link", "add", "swbr0", "type", "bridge"]);
    ip(&lab, host, &["link", "set", "swbr0", "up"]);
    let containers = [Container::create(), Container::create()];
    for (n, container) in containers.iter().enumerate() {
        let port = format!("swbp{n}");
        let address = format!("10.77.0.{}/24", n + 1);
        let ns = container.ns.as_str();
        ip(
            &lab,
            host,
            &[
                "link", "add", &port, "type", "veth", "peer", "eth0", "netns", ns,
            ],
        );
        ip(&lab, host, &["link", "set", &port, "master", "swbr0", "up"]);
        ip(&lab, ns, &["addr", "add", &address, "dev", "eth0"]);
        ip(&lab, ns, &["link", "set", "eth0", "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&lab, host, dir.path(), &["--netns", "all"]);
    daemon.wait_attached(&lab, "swbp0", "egress");
    let [client, server] = &containers;
    let service = SocketAddr::from(([10, 77, 0, 2], PORT));
    let listener = lab.run_in(&server.ns, || TcpListener::bind(service).unwrap());
    // Followed (and its addresses read) before the handshakes, so that they are named.
    let followed = wait_for(Duration::from_secs(10), || {
        let metrics = daemon.scrape(&lab).unwrap_or_default();
        let label = format!("netns=\"{}\"", server.inode());
        series(
            &metrics,
            "seqwatch_netns_listener_accept_queue_max",
            &[label],
        )
        .len()
            == 1
    });
    assert!(followed, "{}", daemon.log());
    lab.run_in(&client.ns, || {
        for _ in 0..4 {
            let stream = TcpStream::connect_timeout(&service, Duration::from_secs(5));
            drop((stream.unwrap(), listener.accept().unwrap()));
        }
    });
    let mut report = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), || {
        report = service_report(&lab, host, service).unwrap_or_default();
        report["samples"] == 4
    });
    assert_eq!(report["samples"], 4, "{report}\n{}", daemon.log());
    assert_eq!(report["netns"]["inode"], server.inode(), "{report}");
    assert_eq!(report["netns"]["container"], &server.id[..12], "{report}");

    let metrics = daemon.metrics(&lab);
    let sampled_in = synack_samples(&metrics, "swbp1", "ingress");
    assert_eq!(sampled_in, Some(4.0), "{metrics}");
    let sampled_out = synack_samples(&metrics, "swbp0", "egress");
    assert_eq!(sampled_out, None, "{metrics}");

    // The sampler on the server's bridge port's ingress goes with its namespace, and so does
    // every series of the port.
    let sampler = "seqwatch_program_attached{direction=\"ingress\",interface=\"swbp1\",\
                   program=\"synack_from_netns\"}";
    assert_eq!(series_value(&daemon.metrics(&lab), sampler), Some(1.0));
    drop(listener);
    let [_, mut server] = containers;
    server.stop();
    let gone = wait_for(Duration::from_secs(10), || {
        daemon
            .scrape(&lab)
            .is_some_and(|metrics| !metrics.contains("interface=\"swbp1\""))
    });
    assert!(gone, "{}", daemon.metrics(&lab));
    daemon.stop();
}

/// A container's SYN-ACKs and handshakes, with the daemon sampling egress only (the default)
/// and following the other namespaces: the routed lab's router runs the daemon, its server
/// namespace is the container. A connection from the router itself is answered by a SYN-ACK
/// that never leaves by an egress hook: it is sampled as it comes in by the container's veth.
/// One from the client, forwarded, is sampled there too and not again as it leaves towards the
/// client. A SYN-ACK the container forges, answering no SYN, is refused. A SYN with data
/// forwarded to the container is reported once, under the container's service.
#[test]
fn a_containers_synacks_are_sampled_once_as_they_come_in_and_its_forgeries_refused() {
    let lab = routed_lab();
    let router = lab.router.as_ref().unwrap();
    // The container's address of its own, there before the daemon first reads them.
    let own = route_own_server_address(&lab);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let flags = ["--netns", "all", "--event-log", events.to_str().unwrap()];
    let daemon = Daemon::start(&lab, &router.ns, dir.path(), &flags);
    let attached = format!(
        "seqwatch_program_attached{{direction=\"ingress\",interface=\"{}\",program=\"synack_from_netns\"}}",
        router.server_if
    );
    let ready = wait_for(Duration::from_secs(30), || {
        daemon
            .scrape(&lab)
            .is_some_and(|metrics| series_value(&metrics, &attached) == Some(1.0))
    });
    assert!(ready, "{attached} never 1:\n{}", daemon.log());
    let service = SocketAddr::from((own, PORT));
    let _listener = lab.run_in(&lab.server_ns, || TcpListener::bind(service).unwrap());
    let inode = std::fs::metadata(Lab::netns_path(&lab.server_ns))
        .unwrap()
        .ino();
    let followed = wait_for(Duration::from_secs(10), || {
        listed_owner(&lab, &router.ns, PORT, inode).is_some()
    });
    assert!(followed, "{}", daemon.log());

    connect_many(&lab, &router.ns, service, 4);
    connect_many(&lab, &lab.client_ns, service, 4);
    let mut report = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), || {
        report = service_report(&lab, &router.ns, service).unwrap_or_default();
        report["samples"] == 8
    });
    assert_eq!(report["samples"], 8, "{report}\n{}", daemon.log());
    assert_eq!(report["netns"]["inode"], inode, "{report}");
    let metrics = daemon.metrics(&lab);
    let samples = |interface: &str, direction: &str| synack_samples(&metrics, interface, direction);
    assert_eq!(
        samples(&router.server_if, "ingress"),
        Some(8.0),
        "{metrics}"
    );
    assert_eq!(samples(&router.client_if, "egress"), None, "{metrics}");
    let forwarded = "seqwatch_synacks_not_sampled_total{reason=\"forwarded\"}";
    assert_eq!(series_value(&metrics, forwarded), Some(4.0), "{metrics}");

    let forger = Crafter::server_to_client(&lab).unwrap();
    let client = SocketAddr::from((lab.client_v4, 40_000));
    send_crafted(&forger, (service, client), SYN | ACK, (7, 1001), &[]);
    let unsolicited = "seqwatch_synacks_not_sampled_total{reason=\"unsolicited\"}";
    let refused = wait_for(Duration::from_secs(5), || {
        series_value(&daemon.metrics(&lab), unsolicited) == Some(1.0)
    });
    assert!(refused, "{}", daemon.metrics(&lab));
    let report = service_report(&lab, &router.ns, service).unwrap();
    assert_eq!(report["samples"], 8, "{report}");

    let attacker = Crafter::client_to_server(&lab).unwrap();
    let source = SocketAddr::from((lab.client_v4, 40_001));
    send_crafted(&attacker, (source, service), SYN, (1000, 0), b"poison");
    let with_data = || event_lines(&events, "syn_with_data");
    wait_for(Duration::from_secs(5), || !with_data().is_empty());
    let reported = with_data();
    assert_eq!(reported.len(), 1, "{reported:?}\n{}", daemon.log());
    assert_eq!(
        reported[0]["service"],
        service.to_string(),
        "{}",
        reported[0]
    );
    assert_eq!(reported[0]["source"], source.to_string(), "{}", reported[0]);
    assert_eq!(reported[0]["netns"]["inode"], inode, "{}", reported[0]);
    daemon.stop();
}
