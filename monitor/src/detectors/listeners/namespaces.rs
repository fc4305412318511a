//! Listener health in the host's other network namespaces (`--netns all`): each namespace the
//! kernel shows ([`crate::host::netns`]) is followed with a sock_diag socket opened inside it,
//! its table read at each poll like this namespace's, its listeners exported under
//! `seqwatch_netns_listener_*{netns, port}` and listed in `/api/v1/owners` with the container
//! or pod the namespace belongs to (IDs from its cgroups, names from the runtimes' state files,
//! looked up while unnamed: [`crate::host::runtime_names`]); its owners are counted with this
//! namespace's. A namespace that disappears is forgotten at the next rescan: its socket closed,
//! its series gone. The namespaces followed are shared ([`FollowedNamespaces`]): the TCP event
//! detector's programs keep their events, and name them with it.
//!
//! Each poll reads a namespace's listeners only; its request sockets and connections waiting
//! in accept queues are read with them when a listener's accept queue holds any, its drop
//! counter rose or its listeners changed, and otherwise every [`HANDSHAKES_AGAIN`]: that read
//! makes the kernel walk the host's whole established table (shared by the namespaces), about
//! a millisecond here whatever the namespace holds. So an idle namespace's SYN queue is at most
//! that old, and its owners count its listeners only.
//!
//! Each namespace's TcpExt counters and hardening posture are exported too, as this
//! namespace's are: `seqwatch_netns_tcpext_*{netns}` (its netstat, kept open like the socket,
//! read at each scrape) and `seqwatch_netns_posture_check{netns, check, scope}` (its sysctls,
//! read every minute by a thread that enters it). Its interfaces' addresses are read at each
//! rescan through a route netlink socket kept beside the others.
//!
//! Its listeners' unresponsive episodes are counted in
//! `seqwatch_netns_listener_unresponsive_total{netns, port}`, whose series go with the port's
//! label or the namespace.
//!
//! Bounded: at most [`MAX_FOLLOWED`] namespaces (the rest are counted in
//! `seqwatch_netns_unfollowed`), [`MAX_PORTS_PER_NAMESPACE`] port labels in each.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs::File,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{
    ListenerEvent, ListenerReport, Names, Owner, OwnerKey, OwnerTotals, Port, QueueGauges,
    Snapshot, WaitClock,
};
use crate::{
    export::{
        labels::{
            admission::{MAX_OTHER_LISTENERS, SharedPolicy},
            ports::{OTHER, PortLabels},
        },
        metrics::{Kind, Registry},
    },
    host::{
        interface_addresses::AddressSocket,
        netns::{self, Identity, NetnsInode, NetnsReport},
        netstat::{NetnsNetstat, NetnsNetstats, NetstatFile, TcpExtCollector},
        posture::{self, NetnsPosture},
        runtime_names::{RuntimeNames, StateRoots},
        sock_diag::{DiagSocket, TcpSocket, state},
    },
    kernel::namespaces::FollowedNamespaces,
    util::lock,
};

/// Network namespaces followed at once.
pub const MAX_FOLLOWED: usize = 256;
/// Listening ports with their own `port` label in each namespace; beyond it: `other`.
pub const MAX_PORTS_PER_NAMESPACE: usize = 8;
/// How often the host's namespaces are looked for again.
const RESCAN: Duration = Duration::from_secs(2);
/// How often an idle namespace's request sockets are read (its SYN queues), give or take a
/// second.
const HANDSHAKES_AGAIN: Duration = Duration::from_secs(10);

/// The other namespaces' metrics.
#[derive(Clone)]
pub struct NetnsMetrics {
    info: IntGaugeVec,
    followed: IntGauge,
    unfollowed: IntGauge,
    queues: QueueGauges,
    unresponsive_episodes: IntCounterVec,
    posture: IntGaugeVec,
    netstats: NetnsNetstats,
}

impl NetnsMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let ports = |name: &str, help: &str| registry.gauges(name, help, &["netns", "port"]);
        let netstats = NetnsNetstats::default();
        let tcpext = TcpExtCollector::for_namespaces(netstats.clone())?;
        registry.register_collector(tcpext, Kind::Counter)?;
        Ok(NetnsMetrics {
            info: registry.gauges(
                "seqwatch_netns_info",
                "1 for each network namespace followed (--netns all): its inode (netns), the \
                 container (its name from Docker's, podman's or kubelet's state files, else \
                 the short ID its cgroup names), the Kubernetes pod (its name, else its UID) \
                 and the pod's Kubernetes namespace; empty where none. Join on netns.",
                &["netns", "container", "pod", "namespace"],
            )?,
            followed: registry.gauge(
                "seqwatch_netns_followed",
                "Other network namespaces whose socket table is read (--netns all).",
            )?,
            unfollowed: registry.gauge(
                "seqwatch_netns_unfollowed",
                "Network namespaces not followed because 256 already are.",
            )?,
            queues: QueueGauges {
                accept_queue: ports(
                    "seqwatch_netns_listener_accept_queue",
                    "seqwatch_listener_accept_queue in another network namespace.",
                )?,
                accept_queue_max: ports(
                    "seqwatch_netns_listener_accept_queue_max",
                    "seqwatch_listener_accept_queue_max in another network namespace.",
                )?,
                syn_queue: ports(
                    "seqwatch_netns_listener_syn_queue",
                    "seqwatch_listener_syn_queue in another network namespace: up to 11 s \
                     old while its accept queues are empty and its listeners drop nothing.",
                )?,
                oldest_wait: ports(
                    "seqwatch_netns_listener_oldest_wait_seconds",
                    "seqwatch_listener_oldest_wait_seconds in another network namespace.",
                )?,
                unresponsive: ports(
                    "seqwatch_netns_listener_unresponsive",
                    "seqwatch_listener_unresponsive in another network namespace.",
                )?,
            },
            unresponsive_episodes: registry.counters(
                "seqwatch_netns_listener_unresponsive_total",
                "seqwatch_listener_unresponsive_total in another network namespace.",
                &["netns", "port"],
            )?,
            posture: registry.gauges(
                "seqwatch_netns_posture_check",
                "seqwatch_posture_check of the per-namespace checks (scope netns) in another \
                 network namespace.",
                &["netns", "check", "scope"],
            )?,
            netstats,
        })
    }
}

/// One namespace followed.
struct Followed {
    inode: NetnsInode,
    /// The `netns` label: the inode in decimal.
    label: String,
    /// Kept to enter the namespace again, for its posture.
    namespace: File,
    socket: DiagSocket,
    /// Reads its interfaces' addresses.
    addresses: AddressSocket,
    /// Its TcpExt counters' entry: dropped with the rest, the file closed, the series gone.
    _netstat: NetnsNetstat,
    posture: NetnsPosture,
    pids: Vec<u32>,
    identity: Identity,
    waits: WaitClock,
    ports: PortLabels,
    /// Whether the kernel's count of its listeners per port was given the first dump's.
    seeded: bool,
    /// Its ports that are unresponsive.
    unresponsive: BTreeSet<u16>,
    /// Its request sockets (and, while an accept queue holds any, its waiting connections)
    /// as last read, and when they are read again unless something calls for it sooner.
    handshakes: Vec<TcpSocket>,
    handshakes_due: Instant,
    /// Its listeners' inodes and drops at the last poll, to see them change.
    listening: (Vec<u32>, u64),
}

/// What the other namespaces add to a poll.
#[derive(Default)]
pub(super) struct Found {
    pub(super) listeners: Vec<ListenerReport>,
    pub(super) owners: HashMap<OwnerKey, OwnerTotals>,
    /// Every listener's socket inode, for the processes' cache.
    pub(super) inodes: HashSet<u32>,
    /// Listeners that became unresponsive ([`super::ListenerEvent::UNRESPONSIVE`]) or
    /// recovered, for the event log.
    pub(super) changed: Vec<(&'static str, ListenerReport)>,
}

/// The namespaces followed and their state.
pub(super) struct OtherNamespaces {
    own: NetnsInode,
    /// [`MAX_FOLLOWED`], but in tests.
    max_followed: usize,
    metrics: NetnsMetrics,
    dump_failures: IntCounter,
    shared: FollowedNamespaces,
    /// Reads the daemon's own namespace's addresses, which name no other namespace.
    own_addresses: AddressSocket,
    /// Their listeners earn their services labels, as this namespace's do.
    policy: SharedPolicy,
    /// `--netns-only`: the names of the only namespaces followed; empty: every one.
    only: Vec<String>,
    followed: BTreeMap<NetnsInode, Followed>,
    /// Names the namespaces' containers and pods, and the listeners' owners' containers.
    pub(super) runtime_names: RuntimeNames,
    scanned: Option<Instant>,
    said_unfollowed: bool,
}

impl OtherNamespaces {
    pub(super) fn new(
        metrics: NetnsMetrics,
        dump_failures: IntCounter,
        shared: FollowedNamespaces,
        policy: SharedPolicy,
        only: Vec<String>,
    ) -> anyhow::Result<Self> {
        Ok(OtherNamespaces {
            own: netns::own()?,
            max_followed: MAX_FOLLOWED,
            metrics,
            dump_failures,
            shared,
            own_addresses: AddressSocket::open()?,
            policy,
            only,
            followed: BTreeMap::new(),
            runtime_names: RuntimeNames::new(StateRoots::host()),
            scanned: None,
            said_unfollowed: false,
        })
    }

    /// Looks for namespaces again when due, then reads every followed one's socket table.
    pub(super) fn poll(
        &mut self,
        now: Instant,
        unresponsive_after: Duration,
        names: &mut Names,
    ) -> Found {
        if self
            .scanned
            .is_none_or(|at| now.duration_since(at) >= RESCAN)
        {
            self.scanned = Some(now);
            self.rescan();
        }
        self.metrics.queues.reset();
        let mut found = Found::default();
        let mut failed = Vec::new();
        let mut services = Vec::new();
        let runtime_names = &mut self.runtime_names;
        let mut owner = |port: &Port| names.owner(port, false, Some(&mut *runtime_names));
        for (inode, followed) in &mut self.followed {
            if followed.posture.due(now) {
                let assessed = netns::run_in(&followed.namespace, *inode, || {
                    Ok(posture::assess_namespace_here())
                });
                // Entering fails only without CAP_SYS_ADMIN: the last values stay.
                let assessments = assessed.unwrap_or_else(|err| {
                    log::debug!("posture of network namespace {inode}: {err:#}");
                    Vec::new()
                });
                followed.posture.refresh(now, &assessments);
            }
            match followed.read(now) {
                Ok(sockets) => {
                    let snapshot = Snapshot::build(&sockets, None);
                    let addresses = self.shared.addresses(*inode);
                    services.extend(listening_services(&snapshot, &addresses));
                    if !std::mem::replace(&mut followed.seeded, true) {
                        let listeners = snapshot.ports.iter();
                        let counts = listeners.map(|(&port, p)| (port, p.inodes.len() as u32));
                        self.shared.seed_listeners(*inode, counts);
                    }
                    let m = &self.metrics;
                    let owner = &mut owner;
                    followed.publish(&snapshot, now, unresponsive_after, owner, m, &mut found);
                }
                Err(err) => {
                    // Reopened at the next rescan, if the namespace is still there.
                    log::warn!("reading the socket table of network namespace {inode}: {err:#}");
                    self.dump_failures.inc();
                    failed.push(*inode);
                }
            }
        }
        for inode in failed {
            self.forget(inode);
        }
        lock(&self.policy).note_other_listeners(services);
        found
    }

    /// Forgets the namespaces gone (closing their sockets), follows new ones up to the bound,
    /// and names the ones still unnamed.
    fn rescan(&mut self) {
        match self.own_addresses.dump() {
            Ok(addresses) => self.shared.set_own_addresses(addresses),
            Err(err) => log::debug!("this namespace's addresses: {err:#}"),
        }
        let mut seen = netns::scan(self.own);
        let gone: Vec<NetnsInode> = self
            .followed
            .keys()
            .filter(|inode| !seen.contains_key(inode))
            .copied()
            .collect();
        for inode in gone {
            self.forget(inode);
        }
        let mut unfollowed = 0;
        for (inode, seen) in &mut seen {
            if let Some(followed) = self.followed.get_mut(inode) {
                followed.read_addresses(&self.shared);
                followed.pids = std::mem::take(&mut seen.pids);
                let known = followed.identity.clone();
                if followed.identity.is_unknown() {
                    followed.identity = netns::identify(&followed.pids);
                }
                if RuntimeNames::unnamed(&followed.identity) {
                    self.runtime_names.name(&mut followed.identity);
                }
                if followed.identity != known {
                    self.shared.follow(*inode, &followed.identity);
                }
                continue;
            }
            let mut identity = netns::identify(&seen.pids);
            self.runtime_names.name(&mut identity);
            if !wanted(&self.only, &seen.path, &identity) {
                continue;
            }
            if self.followed.len() >= self.max_followed {
                unfollowed += 1;
                continue;
            }
            match open_in(&seen.path, *inode) {
                Ok(opened) => {
                    let pids = std::mem::take(&mut seen.pids);
                    log::info!("following network namespace {inode}: {identity:?}");
                    self.shared.follow(*inode, &identity);
                    let followed = Followed::new(*inode, opened, &self.metrics, pids, identity);
                    followed.read_addresses(&self.shared);
                    self.followed.insert(*inode, followed);
                }
                // Its last process exited since the scan, most likely.
                Err(err) => log::debug!("network namespace {inode} not followed: {err:#}"),
            }
        }
        if unfollowed > 0 && !self.said_unfollowed {
            self.said_unfollowed = true;
            log::warn!(
                "{unfollowed} network namespaces not followed: {} already are \
                 (seqwatch_netns_unfollowed)",
                self.max_followed
            );
        }
        let m = &self.metrics;
        m.unfollowed.set(unfollowed);
        m.followed.set(self.followed.len() as i64);
        let followed = &self.followed;
        self.runtime_names.retain_containers(|id| {
            let of = |f: &Followed| f.identity.full_container_id.as_deref() == Some(id);
            followed.values().any(of)
        });
        m.info.reset();
        for followed in self.followed.values() {
            let [container, pod, namespace] = followed.identity.label_values();
            m.info
                .with_label_values(&[followed.label.as_str(), container, pod, namespace])
                .set(1);
        }
    }
}

/// Whether `--netns-only` lets a namespace be followed: by its /run/netns name (its `path`),
/// its container's name or short ID, or its pod's name.
fn wanted(only: &[String], path: &std::path::Path, identity: &Identity) -> bool {
    if only.is_empty() {
        return true;
    }
    let bind_mount = path
        .strip_prefix(netns::NAMED_NAMESPACES)
        .ok()
        .and_then(|name| name.to_str());
    let names = [
        bind_mount,
        identity.container_name.as_deref(),
        identity.container.as_deref(),
        identity.pod_name.as_deref(),
    ];
    let named = |name: &str| only.iter().any(|wanted| wanted == name);
    names.into_iter().flatten().any(named)
}

/// The services a namespace's listeners serve, at most [`MAX_OTHER_LISTENERS`]: each listening
/// address, a wildcard one standing for each of `addresses` (the namespace's own) of its
/// family (IPv6's for both: a dual-stack socket).
fn listening_services(snapshot: &Snapshot, addresses: &[IpAddr]) -> Vec<SocketAddr> {
    let listening = snapshot.ports.values().flat_map(|port| &port.addresses);
    listening
        .flat_map(|listener| {
            let ip = listener.ip();
            let served: Vec<IpAddr> = if ip.is_unspecified() {
                let dual_stack = ip.is_ipv6();
                let same_family = |a: &&IpAddr| dual_stack || a.is_ipv4();
                addresses.iter().filter(same_family).copied().collect()
            } else {
                vec![ip]
            };
            served
                .into_iter()
                .map(move |ip| SocketAddr::new(ip, listener.port()))
        })
        .take(MAX_OTHER_LISTENERS)
        .collect()
}

impl OtherNamespaces {
    /// Out of the shared set (and the kernel's) first, then its socket closed: the socket
    /// keeps the namespace, and so its inode number, alive until then. Its counts go with it
    /// (its gauges are set afresh at each poll).
    fn forget(&mut self, inode: NetnsInode) {
        self.shared.forget(inode);
        if let Some(followed) = self.followed.remove(&inode) {
            let ports = followed.ports.labelled().map(|port| port.to_string());
            for port in ports.chain([OTHER.to_owned()]) {
                followed.remove_counts(&self.metrics, &port);
            }
        }
    }
}

/// What a namespace followed is read through: a handle on it (kept to enter it again), and a
/// socket of its socket table, one of its addresses and its netstat, opened inside it.
struct Opened {
    namespace: File,
    socket: DiagSocket,
    addresses: AddressSocket,
    netstat: NetstatFile,
}

/// [`Opened`], for the namespace at `path`.
fn open_in(path: &std::path::Path, inode: NetnsInode) -> anyhow::Result<Opened> {
    let namespace = netns::open(path, inode)?;
    let (socket, addresses, netstat) = netns::run_in(&namespace, inode, || {
        Ok((
            DiagSocket::open()?,
            AddressSocket::open()?,
            NetstatFile::open_here()?,
        ))
    })?;
    Ok(Opened {
        namespace,
        socket,
        addresses,
        netstat,
    })
}

impl Followed {
    fn new(
        inode: NetnsInode,
        opened: Opened,
        metrics: &NetnsMetrics,
        pids: Vec<u32>,
        identity: Identity,
    ) -> Self {
        let label = inode.to_string();
        Followed {
            inode,
            _netstat: metrics.netstats.add(label.clone(), opened.netstat),
            posture: NetnsPosture::new(label.clone(), metrics.posture.clone()),
            label,
            namespace: opened.namespace,
            socket: opened.socket,
            addresses: opened.addresses,
            pids,
            identity,
            waits: WaitClock::default(),
            ports: PortLabels::at_most(MAX_PORTS_PER_NAMESPACE),
            seeded: false,
            unresponsive: BTreeSet::new(),
            handshakes: Vec::new(),
            handshakes_due: Instant::now(),
            listening: (Vec::new(), 0),
        }
    }

    /// Its interfaces' addresses, for the shared set to name its services by (kept as they
    /// were if the read fails).
    fn read_addresses(&self, shared: &FollowedNamespaces) {
        match self.addresses.dump() {
            Ok(addresses) => shared.set_addresses(self.inode, addresses),
            Err(err) => log::debug!("network namespace {}: addresses: {err:#}", self.inode),
        }
    }

    /// Its listeners, then what waits on them: read again when one of them calls for it or
    /// it is due, otherwise the last read's request sockets.
    fn read(&mut self, now: Instant) -> anyhow::Result<Vec<TcpSocket>> {
        let mut sockets = self.socket.dump_listening()?;
        let inodes: Vec<u32> = sockets.iter().map(|socket| socket.inode).collect();
        let drops = sockets
            .iter()
            .map(|socket| u64::from(socket.drops.unwrap_or_default()))
            .sum();
        let listening = (inodes, drops);
        let changed = listening != self.listening;
        self.listening = listening;
        let queued = sockets.iter().any(|socket| socket.rqueue > 0);
        if sockets.is_empty() {
            self.handshakes.clear();
        } else if queued || changed || now >= self.handshakes_due {
            self.handshakes = self.socket.dump_handshakes()?;
            // Up to a second later by inode, so that namespaces followed together drift apart
            // and their reads stop falling on the same poll.
            let spread = Duration::from_millis(self.inode % 1000);
            self.handshakes_due = now + HANDSHAKES_AGAIN + spread;
        } else {
            // No accept queue holds a connection: none waits.
            self.handshakes
                .retain(|socket| socket.state == state::SYN_RECV);
        }
        sockets.extend_from_slice(&self.handshakes);
        Ok(sockets)
    }

    /// Exports one namespace's listeners and adds them and its owners to `found`.
    fn publish(
        &mut self,
        snapshot: &Snapshot,
        now: Instant,
        unresponsive_after: Duration,
        owner: &mut impl FnMut(&Port) -> Owner,
        m: &NetnsMetrics,
        found: &mut Found,
    ) {
        let netns = NetnsReport::new(self.inode, &self.identity);
        for gone in self.ports.retain(&snapshot.ports) {
            self.remove_counts(m, &gone.to_string());
        }
        self.unresponsive
            .retain(|port| snapshot.ports.contains_key(port));
        let oldest = self.waits.update(&snapshot.waiting, now);
        for (&number, port) in &snapshot.ports {
            let port_label = self.ports.label(number);
            let labels = [self.label.as_str(), port_label.as_str()];
            let waited = oldest.get(&number).copied().unwrap_or_default();
            let unresponsive = waited >= unresponsive_after;
            m.queues.add(&labels, port, waited, unresponsive);
            let drops: u64 = port
                .inodes
                .iter()
                .map(|inode| u64::from(snapshot.drops.get(inode).copied().unwrap_or_default()))
                .sum();
            found.inodes.extend(&port.inodes);
            let report = ListenerReport {
                port: number,
                addresses: port.addresses.iter().copied().collect(),
                accept_queue: port.accept_queue,
                accept_queue_max: port.accept_queue_max,
                syn_queue: port.syn_queue,
                drops,
                oldest_wait_seconds: waited.as_secs_f64(),
                unresponsive,
                owner: owner(port),
                handshakes: Default::default(),
                netns: Some(netns.clone()),
            };
            let changed = if unresponsive {
                self.unresponsive.insert(number)
            } else {
                self.unresponsive.remove(&number)
            };
            if changed {
                let kind = match unresponsive {
                    true => {
                        m.unresponsive_episodes.with_label_values(&labels).inc();
                        ListenerEvent::UNRESPONSIVE
                    }
                    false => ListenerEvent::RECOVERED,
                };
                found.changed.push((kind, report.clone()));
            }
            found.listeners.push(report);
        }
        // Its other sockets are not read: its owners hold its listeners.
        for (key, totals) in snapshot.owners.iter().filter(|(_, t)| t.listeners > 0) {
            let merged = found.owners.entry(*key).or_default();
            merged.sockets += totals.listeners;
            merged.listeners += totals.listeners;
            merged.listen_backlog += totals.listen_backlog;
        }
    }

    /// Removes the counts of one of its port labels.
    fn remove_counts(&self, m: &NetnsMetrics, port: &str) {
        let labels = [self.label.as_str(), port];
        let _ = m.unresponsive_episodes.remove_label_values(&labels);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::unix::fs::MetadataExt as _,
        path::Path,
        process::Command,
    };

    use super::*;
    use crate::export::labels::admission::LabelPolicy;

    fn ip_netns(verb: &str, name: &str) {
        let status = Command::new("ip").args(["netns", verb, name]).status();
        assert!(status.unwrap().success(), "ip netns {verb} {name}");
    }

    /// With three namespaces of its own there are at least three others than the test's: at a
    /// bound of 2, two are followed (a socket and an info series each) and the rest counted.
    #[test]
    fn namespaces_beyond_the_bound_are_counted_not_followed() {
        let names: Vec<String> = (0..3)
            .map(|n| format!("sw-bound-{}-{n}", std::process::id()))
            .collect();
        for name in &names {
            ip_netns("add", name);
        }
        let registry = Registry::default();
        let metrics = NetnsMetrics::new(&registry).unwrap();
        let failures = IntCounter::new("failures", "failures").unwrap();
        let shared = FollowedNamespaces::default();
        let policy = LabelPolicy::fixed(16, &[], &[]);
        let mut namespaces =
            OtherNamespaces::new(metrics.clone(), failures, shared, policy, Vec::new()).unwrap();
        namespaces.max_followed = 2;
        namespaces.rescan();
        let followed = namespaces.followed.len();
        for name in &names {
            ip_netns("del", name);
        }
        assert_eq!(followed, 2);
        assert_eq!(metrics.followed.get(), 2);
        assert!(
            metrics.unfollowed.get() >= 1,
            "{}",
            metrics.unfollowed.get()
        );
        let info = prometheus::core::Collector::collect(&metrics.info);
        assert_eq!(
            info[0].get_metric().len(),
            2,
            "one info series per namespace followed"
        );
    }

    /// A namespace made by `ip netns add`, deleted on drop (a failed assertion too).
    struct Named(String);

    impl Drop for Named {
        fn drop(&mut self) {
            ip_netns("del", &self.0);
        }
    }

    /// Runs `f` on a thread inside the namespace at `path`.
    fn in_namespace<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(path).unwrap();
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            });
            thread.join().unwrap()
        })
    }

    /// Between two due reads of what waits on its listeners, a namespace's listener whose
    /// accept queue fills has that connection read at the next poll, and it waits from then.
    #[test]
    fn a_connection_in_another_namespaces_accept_queue_is_read_at_the_next_poll() {
        let name = Named(format!("sw-queued-{}", std::process::id()));
        ip_netns("add", &name.0);
        let path = Path::new("/run/netns").join(&name.0);
        let inode = std::fs::metadata(&path).unwrap().ino();
        let up = Command::new("ip")
            .args(["-n", &name.0, "link", "set", "lo", "up"])
            .status();
        assert!(up.unwrap().success());
        let opened = open_in(&path, inode).unwrap();
        let listener = in_namespace(&path, || TcpListener::bind("127.0.0.1:0")).unwrap();
        let metrics = NetnsMetrics::new(&Registry::default()).unwrap();
        let identity = Identity::default();
        let mut followed = Followed::new(inode, opened, &metrics, Vec::new(), identity);
        let start = Instant::now();
        let first = Snapshot::build(&followed.read(start).unwrap(), None);
        assert_eq!(first.ports.len(), 1);
        assert!(first.waiting.is_empty());

        let address = listener.local_addr().unwrap();
        let _client = in_namespace(&path, || TcpStream::connect(address)).unwrap();
        let next = start + Duration::from_secs(1);
        assert!(next < followed.handshakes_due, "not due on its own");
        let second = Snapshot::build(&followed.read(next).unwrap(), None);
        assert_eq!(second.ports[&address.port()].accept_queue, 1);
        let waiting = &second.waiting;
        assert_eq!(waiting.len(), 1, "the queued connection, read at once");
        assert_eq!(waiting[0].0, address);
    }
}
