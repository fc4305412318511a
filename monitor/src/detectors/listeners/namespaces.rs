//! Listener health in the host's other network namespaces (`--netns all`): each namespace the
//! kernel shows ([`crate::host::netns`]) is followed with a sock_diag socket opened inside it,
//! its table read at each poll like this namespace's, its listeners exported under
//! `seqwatch_netns_listener_*{netns, port}` and listed in `/api/v1/owners` with the container
//! or pod the namespace belongs to; its owners are counted with this namespace's. A namespace
//! that disappears is forgotten at the next rescan: its socket closed, its series gone.
//! Each namespace's TcpExt counters and hardening posture are exported too, as this
//! namespace's are: `seqwatch_netns_tcpext_*{netns}` (its netstat, kept open like the socket,
//! read at each scrape) and `seqwatch_netns_posture_check{netns, check, scope}` (its sysctls,
//! read every minute by a thread that enters it).
//!
//! Bounded: at most [`MAX_FOLLOWED`] namespaces (the rest are counted in
//! `seqwatch_netns_unfollowed`), [`MAX_PORTS_PER_NAMESPACE`] port labels in each.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntGauge, IntGaugeVec};
use serde::Serialize;

use super::{
    ListenerReport, Names, OwnerKey, OwnerTotals, QueueGauges, Snapshot, WaitClock,
    port_labels::PortLabels,
};
use crate::{
    export::metrics::{Kind, Registry},
    host::{
        netns::{self, Identity, NetnsInode},
        netstat::{NetnsNetstat, NetnsNetstats, NetstatFile, TcpExtCollector},
        posture::{self, NetnsPosture},
        sock_diag::DiagSocket,
    },
};

/// Network namespaces followed at once.
pub const MAX_FOLLOWED: usize = 256;
/// Listening ports with their own `port` label in each namespace; beyond it: `other`.
pub const MAX_PORTS_PER_NAMESPACE: usize = 8;
/// How often the host's namespaces are looked for again.
const RESCAN: Duration = Duration::from_secs(2);

/// The other namespaces' metrics.
#[derive(Clone)]
pub struct NetnsMetrics {
    info: IntGaugeVec,
    followed: IntGauge,
    unfollowed: IntGauge,
    queues: QueueGauges,
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
                "1 for each network namespace followed (--netns all): its inode (netns), and \
                 the short ID of the container (container) and the UID of the Kubernetes pod \
                 (pod) its cgroup names, empty if none; namespace (Kubernetes) is not read yet \
                 and always empty. Join on netns.",
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
                    "seqwatch_listener_syn_queue in another network namespace.",
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

/// Which namespace a listener of `/api/v1/owners` is in, when it is not the daemon's.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsReport {
    pub inode: NetnsInode,
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// One namespace followed.
struct Followed {
    inode: NetnsInode,
    /// The `netns` label: the inode in decimal.
    label: String,
    /// Kept to enter the namespace again, for its posture.
    namespace: File,
    socket: DiagSocket,
    /// Its TcpExt counters' entry: dropped with the rest, the file closed, the series gone.
    _netstat: NetnsNetstat,
    posture: NetnsPosture,
    pids: Vec<u32>,
    identity: Identity,
    waits: WaitClock,
    ports: PortLabels,
}

/// What the other namespaces add to a poll.
#[derive(Default)]
pub(super) struct Found {
    pub(super) listeners: Vec<ListenerReport>,
    pub(super) owners: HashMap<OwnerKey, OwnerTotals>,
    /// Every listener's socket inode, for the processes' cache.
    pub(super) inodes: HashSet<u32>,
}

/// The namespaces followed and their state.
pub(super) struct OtherNamespaces {
    own: NetnsInode,
    /// [`MAX_FOLLOWED`], but in tests.
    max_followed: usize,
    metrics: NetnsMetrics,
    dump_failures: IntCounter,
    followed: BTreeMap<NetnsInode, Followed>,
    scanned: Option<Instant>,
    said_unfollowed: bool,
}

impl OtherNamespaces {
    pub(super) fn new(metrics: NetnsMetrics, dump_failures: IntCounter) -> anyhow::Result<Self> {
        Ok(OtherNamespaces {
            own: netns::own()?,
            max_followed: MAX_FOLLOWED,
            metrics,
            dump_failures,
            followed: BTreeMap::new(),
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
            match followed.socket.dump_tcp() {
                Ok(sockets) => {
                    let snapshot = Snapshot::build(&sockets, None);
                    let m = &self.metrics;
                    followed.publish(&snapshot, now, unresponsive_after, names, m, &mut found);
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
            self.followed.remove(&inode);
        }
        found
    }

    /// Forgets the namespaces gone (closing their sockets), follows new ones up to the bound,
    /// and names the ones still unnamed.
    fn rescan(&mut self) {
        let mut seen = netns::scan(self.own);
        self.followed.retain(|inode, _| seen.contains_key(inode));
        let mut unfollowed = 0;
        for (inode, seen) in &mut seen {
            if let Some(followed) = self.followed.get_mut(inode) {
                followed.pids = std::mem::take(&mut seen.pids);
                if followed.identity == Identity::default() {
                    followed.identity = netns::identify(&followed.pids);
                }
                continue;
            }
            if self.followed.len() >= self.max_followed {
                unfollowed += 1;
                continue;
            }
            match open_in(&seen.path, *inode) {
                Ok((namespace, socket, netstat)) => {
                    let pids = std::mem::take(&mut seen.pids);
                    let identity = netns::identify(&pids);
                    log::info!("following network namespace {inode}: {identity:?}");
                    let label = inode.to_string();
                    let m = &self.metrics;
                    self.followed.insert(
                        *inode,
                        Followed {
                            inode: *inode,
                            _netstat: m.netstats.add(label.clone(), netstat),
                            posture: NetnsPosture::new(label.clone(), m.posture.clone()),
                            label,
                            namespace,
                            socket,
                            pids,
                            identity,
                            waits: WaitClock::default(),
                            ports: PortLabels::at_most(MAX_PORTS_PER_NAMESPACE),
                        },
                    );
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
        m.info.reset();
        for followed in self.followed.values() {
            let identity = &followed.identity;
            let container = identity.container.as_deref().unwrap_or_default();
            let pod = identity.pod.as_deref().unwrap_or_default();
            m.info
                .with_label_values(&[followed.label.as_str(), container, pod, ""])
                .set(1);
        }
    }
}

/// A handle on the namespace at `path`, and its socket and netstat, opened inside it.
fn open_in(
    path: &std::path::Path,
    inode: NetnsInode,
) -> anyhow::Result<(File, DiagSocket, NetstatFile)> {
    let namespace = netns::open(path, inode)?;
    let (socket, netstat) = netns::run_in(&namespace, inode, || {
        Ok((DiagSocket::open()?, NetstatFile::open_here()?))
    })?;
    Ok((namespace, socket, netstat))
}

impl Followed {
    /// Exports one namespace's listeners and adds them and its owners to `found`.
    fn publish(
        &mut self,
        snapshot: &Snapshot,
        now: Instant,
        unresponsive_after: Duration,
        names: &mut Names,
        m: &NetnsMetrics,
        found: &mut Found,
    ) {
        let netns = NetnsReport {
            inode: self.inode,
            container: self.identity.container.clone(),
            pod: self.identity.pod.clone(),
        };
        self.ports.retain(&snapshot.ports);
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
            found.listeners.push(ListenerReport {
                port: number,
                addresses: port.addresses.iter().copied().collect(),
                accept_queue: port.accept_queue,
                accept_queue_max: port.accept_queue_max,
                syn_queue: port.syn_queue,
                drops,
                oldest_wait_seconds: waited.as_secs_f64(),
                unresponsive,
                owner: names.owner(port.uid, port.cgroup_id, &port.inodes, false),
                handshakes: Default::default(),
                netns: Some(netns.clone()),
            });
        }
        for (key, totals) in &snapshot.owners {
            let merged = found.owners.entry(*key).or_default();
            merged.sockets += totals.sockets;
            merged.listeners += totals.listeners;
            merged.listen_backlog += totals.listen_backlog;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

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
        let mut namespaces = OtherNamespaces::new(metrics.clone(), failures).unwrap();
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
}
