//! Listener health and who holds the shared resources, from the kernel's own socket table
//! (sock_diag, [`crate::host::sock_diag`]) read every second: per listening port the accept
//! queue, its backlog, the SYN queue and the listener's drops; connections waiting in an accept
//! queue and for how long; per owner (uid and cgroup) the sockets, waiting connections and
//! ephemeral ports they hold; the ephemeral port range's use; the conntrack table's fill.
//!
//! A listening port is *unresponsive* once a connection has waited `--unresponsive-after`
//! seconds in its accept queue: the kernel completed the handshake and nobody accepted it
//! (a stopped or hung server, a listener that never accepts). A connection in an accept
//! queue has no socket inode until `accept(2)` gives it a file, which is how it is told
//! from an accepted one without asking the kernel anything else. Beside the queues, each
//! listening port's SYNs received, SYN-ACKs sent and handshakes completed come from the
//! kernel programs' per-port counters ([`port_counts`]).
//!
//! Labels are bounded: ports keep their label while they listen, at most [`crate::export::labels::ports::MAX_PORTS`]
//! of them (later ones are `other`); owners are the top [`MAX_OWNERS`] by sockets, the rest
//! `other`.

pub mod namespaces;
pub mod port_counts;
pub mod silence;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, routing::get};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde::Serialize;

use crate::export::labels::ports::{OTHER, PortLabels};
use crate::{
    detectors::detector::{Context, Detector},
    export::{event_log::EventLog, metrics::Registry},
    host::{
        netns::{Identity, NetnsReport, identity_of_cgroup},
        runtime_names::RuntimeNames,
        sock_diag::{self, TcpSocket, state},
    },
    kernel::reader::{Reader, Rings, Schedule, Wakeup},
    settings::{Directions, NetnsMode, Settings},
    util::{
        clock::{Clock, monotonic_ns},
        lock,
    },
};
use namespaces::{NetnsMetrics, OtherNamespaces};
use port_counts::{HandshakeReport, PortCountMetrics, PortCounters, Sources};
use silence::{SilenceEvent, SilenceMetrics, SilenceWatch};

/// The socket table is read every second (refresh: nothing is due apart).
const SCHEDULE: Schedule = Schedule {
    poll: Duration::from_secs(1),
    refresh: Duration::from_secs(1),
};
/// When a listener opens, the socket table is read again at once (so that its port is counted
/// from then on, [`port_counts`]), but not sooner than this after the last read.
const OPENED_POLL_GAP: Duration = Duration::from_millis(100);
/// Owners (uid, cgroup) with their own labels; the rest are summed as `other`.
pub const MAX_OWNERS: usize = 10;
/// Owners listed in `/api/v1/owners`, most sockets first.
const MAX_REPORTED_OWNERS: usize = 100;
/// Connections in accept queues whose waiting time is tracked (one entry each).
const MAX_WAITING: usize = 65_536;
/// Processes and descriptors read when looking for a listener's process.
const MAX_PROCESSES: usize = 4096;
const MAX_FDS_PER_PROCESS: usize = 4096;
/// How often /proc may be walked again for a listener's unknown process (an event forces it).
const PROCESSES_AGAIN: Duration = Duration::from_secs(10);
/// How often the cgroup tree may be walked again for an unknown cgroup id: each poll, as a
/// walk reads only directories (at most [`MAX_CGROUPS`]) and new cgroups are common.
const CGROUPS_AGAIN: Duration = SCHEDULE.poll;
/// Cgroup directories walked at most.
const MAX_CGROUPS: usize = 10_000;

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const CONNTRACK_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The detector, before it starts.
pub struct Listeners {
    metrics: ListenerMetrics,
    unresponsive_after: Duration,
    syns_received: bool,
    synacks_sent: bool,
    /// `--netns all`: the other namespaces are followed too.
    other_namespaces: bool,
    /// `--netns-only`.
    netns_only: Vec<String>,
}

impl Listeners {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        let other_namespaces = settings.netns == NetnsMode::All;
        Ok(Listeners {
            metrics: ListenerMetrics::new(registry, other_namespaces)?,
            unresponsive_after: Duration::from_secs(settings.unresponsive_after),
            syns_received: settings.direction != Directions::Egress,
            synacks_sent: settings.direction != Directions::Ingress,
            other_namespaces,
            netns_only: settings.netns_only.0.clone(),
        })
    }
}

impl Detector for Listeners {
    fn name(&self) -> &'static str {
        "listener"
    }

    /// Reads the socket table now (so that a kernel without sock_diag is said at start), then
    /// every second and when a listener opens. Started after the TCP event detector: the
    /// per-port completions are counted only if its `inet_sock_set_state` attached.
    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let name = self.name();
        let sources = Sources {
            syns_received: self.syns_received,
            synacks_sent: self.synacks_sent,
            handshakes_completed: ctx.object.is_tracepoint_attached("inet_sock_set_state"),
        };
        let maps = (
            ctx.object.take("LISTENER_PORT_SLOTS")?,
            ctx.object.take("LISTENER_SLOT_COUNTS")?,
        );
        let counts = PortCounters::new(maps, sources);
        if self.metrics.conntrack.is_none() {
            log::info!(
                "no conntrack table in this network namespace ({CONNTRACK_COUNT} is absent): \
                 seqwatch_conntrack_* are not exported"
            );
        }
        let report = SharedReport::default();
        let served = report.clone();
        ctx.api.add(
            "/api/v1/owners",
            "listeners, and who holds sockets and ports, JSON",
            get(move || {
                let report = lock(&served).clone();
                async move { Json(report) }
            }),
        );
        if let Err(err) = sock_diag::dump_tcp() {
            log::warn!("listener health and owners off: {err:#}");
            return Ok(());
        }
        let other_namespaces = match (&self.metrics.netns, self.other_namespaces) {
            (Some(metrics), true) => Some(OtherNamespaces::new(
                metrics.clone(),
                self.metrics.dump_failures.clone(),
                ctx.shared.namespaces.clone(),
                ctx.shared.policy.clone(),
                self.netns_only,
            )?),
            _ => None,
        };
        let reader = SocketTableReader {
            other_namespaces,
            metrics: self.metrics,
            unresponsive_after: self.unresponsive_after,
            log: ctx.shared.event_log.clone(),
            report,
            labels: PortLabels::default(),
            waits: WaitClock::default(),
            drops: HashMap::new(),
            port_drops: HashMap::new(),
            unresponsive: BTreeSet::new(),
            names: Names::default(),
            clock: Clock::now(),
            silence: SilenceWatch::default(),
            counts,
        };
        let wakeup = Wakeup {
            notify: ctx.shared.listener_opened.clone(),
            gap: OPENED_POLL_GAP,
        };
        ctx.tasks
            .spawn(name, Rings::none(), SCHEDULE, Some(wakeup), reader);
        Ok(())
    }
}

/// The detector's metrics.
#[derive(Clone)]
pub struct ListenerMetrics {
    queues: QueueGauges,
    drops: IntCounterVec,
    unresponsive_episodes: IntCounterVec,
    owner_sockets: IntGaugeVec,
    owner_waiting: IntGaugeVec,
    owner_ephemeral_ports: IntGaugeVec,
    ephemeral_in_use: IntGauge,
    ephemeral_available: IntGauge,
    /// None without conntrack in this namespace when the daemon started.
    conntrack: Option<ConntrackMetrics>,
    dump_failures: IntCounter,
    silence: SilenceMetrics,
    port_counts: PortCountMetrics,
    /// None unless other namespaces are followed.
    netns: Option<NetnsMetrics>,
}

impl ListenerMetrics {
    pub fn new(registry: &Registry, other_namespaces: bool) -> anyhow::Result<Self> {
        let gauges = |name: &str, help: &str, labels: &[&str]| registry.gauges(name, help, labels);
        let counters =
            |name: &str, help: &str, labels: &[&str]| registry.counters(name, help, labels);
        let port = &["port"];
        let owner = &["uid", "cgroup"];
        Ok(ListenerMetrics {
            queues: QueueGauges {
                accept_queue: gauges(
                    "seqwatch_listener_accept_queue",
                    "Connections waiting in the accept queues of the port's listeners.",
                    port,
                )?,
                accept_queue_max: gauges(
                    "seqwatch_listener_accept_queue_max",
                    "The listeners' backlog: the accept queue is full (and overflows) once it \
                     holds more than this.",
                    port,
                )?,
                syn_queue: gauges(
                    "seqwatch_listener_syn_queue",
                    "Handshakes in the port's SYN queue (request sockets, SYN-ACK sent, no ACK \
                     yet).",
                    port,
                )?,
                oldest_wait: gauges(
                    "seqwatch_listener_oldest_wait_seconds",
                    "How long the oldest connection in the port's accept queues has waited for \
                     accept(2); 0 when none waits.",
                    port,
                )?,
                unresponsive: gauges(
                    "seqwatch_listener_unresponsive",
                    "1 while a connection has waited longer than --unresponsive-after in the \
                     port's accept queue.",
                    port,
                )?,
            },
            drops: counters(
                "seqwatch_listener_drops_total",
                "Segments the port's listeners dropped, from the kernel's per-socket drop \
                 counter: SYNs and handshake completions refused (a full SYN or accept queue, \
                 no route: TcpExt ListenDrops), and segments of handshakes in progress \
                 discarded (an RST that ends one: TcpExt EmbryonicRsts; a repeated SYN; a \
                 segment out of window). Forged RSTs raise it as surely as a full queue.",
                port,
            )?,
            unresponsive_episodes: counters(
                "seqwatch_listener_unresponsive_total",
                "Times the port became unresponsive.",
                port,
            )?,
            owner_sockets: gauges(
                "seqwatch_owner_sockets",
                "TCP sockets (not TIME_WAIT, not half-open) by owner: the top owners by \
                 sockets, the rest summed as uid=\"other\". With --netns all, the other \
                 namespaces' listeners only.",
                owner,
            )?,
            owner_waiting: gauges(
                "seqwatch_owner_listen_backlog",
                "Connections waiting in the accept queues of the owner's listeners.",
                owner,
            )?,
            owner_ephemeral_ports: gauges(
                "seqwatch_owner_ephemeral_ports",
                "Local ports of net.ipv4.ip_local_port_range the owner's sockets hold.",
                owner,
            )?,
            ephemeral_in_use: registry.gauge(
                "seqwatch_ephemeral_ports_in_use",
                "Local ports of net.ipv4.ip_local_port_range held by a TCP socket \
                     (TIME_WAIT included).",
            )?,
            ephemeral_available: registry.gauge(
                "seqwatch_ephemeral_ports_available",
                "Ports of net.ipv4.ip_local_port_range no TCP socket holds.",
            )?,
            conntrack: (conntrack().is_some() || registry.documents_all())
                .then(|| ConntrackMetrics::new(registry))
                .transpose()?,
            dump_failures: registry.counter(
                "seqwatch_sock_diag_failures_total",
                "Reads of the socket table (sock_diag netlink) that failed.",
            )?,
            silence: SilenceMetrics::new(registry)?,
            port_counts: PortCountMetrics::new(registry)?,
            netns: (other_namespaces || registry.documents_all())
                .then(|| NetnsMetrics::new(registry))
                .transpose()?,
        })
    }
}

/// The conntrack table's gauges, which exist only where conntrack does.
#[derive(Clone)]
struct ConntrackMetrics {
    entries: IntGauge,
    max: IntGauge,
}

impl ConntrackMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(ConntrackMetrics {
            entries: registry.gauge(
                "seqwatch_conntrack_entries",
                "Connections in the conntrack table (nf_conntrack_count).",
            )?,
            max: registry.gauge(
                "seqwatch_conntrack_entries_max",
                "The conntrack table's size (nf_conntrack_max).",
            )?,
        })
    }
}

/// The latest report, for `GET /api/v1/owners`.
pub type SharedReport = Arc<Mutex<Report>>;

/// What `GET /api/v1/owners` returns.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub listeners: Vec<ListenerReport>,
    pub owners: Vec<OwnerReport>,
    pub ephemeral_ports: Option<EphemeralReport>,
    pub conntrack: Option<ConntrackReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListenerReport {
    pub port: u16,
    pub addresses: Vec<SocketAddr>,
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub syn_queue: u32,
    pub drops: u64,
    pub oldest_wait_seconds: f64,
    pub unresponsive: bool,
    pub owner: Owner,
    #[serde(flatten)]
    pub handshakes: HandshakeReport,
    /// The listener's network namespace, if not the daemon's (`--netns all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OwnerReport {
    pub uid: u32,
    pub user: Option<String>,
    pub cgroup: Option<String>,
    pub sockets: u32,
    pub listeners: u32,
    pub listen_backlog: u32,
    pub ephemeral_ports: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct EphemeralReport {
    pub range: [u16; 2],
    pub in_use: u32,
    pub available: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConntrackReport {
    pub entries: u64,
    pub max: u64,
}

/// Who owns a listener: uid and cgroup from the socket, processes from /proc (best effort:
/// after the daemon drops its capabilities it can read only its own users' descriptors).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Owner {
    pub uid: u32,
    pub user: Option<String>,
    pub cgroup: Option<String>,
    /// The short ID of the container the cgroup is: in a pod of several containers, the one
    /// serving (the namespace's `container` is the pod's sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// That container's name, from the runtimes' state files (`--netns all` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    pub processes: Vec<Process>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
}

/// An event-log line: the time, then the event's own fields.
#[derive(Serialize)]
struct Timed<'a, T: Serialize> {
    time: String,
    #[serde(flatten)]
    event: &'a T,
}

/// The `listener_unresponsive` / `listener_recovered` lines of the event log.
#[derive(Clone, Debug, Serialize)]
pub struct ListenerEvent {
    pub time: String,
    pub kind: &'static str,
    pub port: u16,
    pub addresses: Vec<SocketAddr>,
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub syn_queue: u32,
    pub oldest_wait_seconds: f64,
    pub owner: Owner,
    /// The listener's network namespace, if not the daemon's (`--netns all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsReport>,
}

impl ListenerEvent {
    pub const UNRESPONSIVE: &'static str = "listener_unresponsive";
    pub const RECOVERED: &'static str = "listener_recovered";
}

/// One listening port, all its listeners (IPv4, IPv6, SO_REUSEPORT groups) together.
#[derive(Clone, Debug, Default, PartialEq)]
struct Port {
    addresses: BTreeSet<SocketAddr>,
    accept_queue: u32,
    accept_queue_max: u32,
    syn_queue: u32,
    /// The first listener's owner and every listener's inode.
    uid: u32,
    cgroup_id: Option<u64>,
    inodes: Vec<u32>,
}

/// Per-owner totals of one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OwnerTotals {
    sockets: u32,
    listeners: u32,
    listen_backlog: u32,
    ephemeral_ports: BTreeSet<u16>,
}

/// (uid, cgroup id) of a socket.
type OwnerKey = (u32, Option<u64>);

/// What one read of the socket table says.
#[derive(Debug, Default)]
struct Snapshot {
    ports: BTreeMap<u16, Port>,
    /// Connections in accept queues: (local, remote) → local port.
    waiting: Vec<(SocketAddr, SocketAddr)>,
    owners: HashMap<OwnerKey, OwnerTotals>,
    /// Ports of the ephemeral range held by any socket.
    ephemeral_in_use: BTreeSet<u16>,
    /// Each listener's drop counter, by inode.
    drops: HashMap<u32, u32>,
}

impl Snapshot {
    fn build(sockets: &[TcpSocket], range: Option<(u16, u16)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let in_range = |port: u16| range.is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
        for socket in sockets.iter().filter(|s| s.state == state::LISTEN) {
            let port = snapshot.ports.entry(socket.local.port()).or_default();
            if port.inodes.is_empty() {
                port.uid = socket.uid;
                port.cgroup_id = socket.cgroup_id;
            }
            port.addresses.insert(socket.local);
            port.accept_queue += socket.rqueue;
            port.accept_queue_max += socket.wqueue;
            port.inodes.push(socket.inode);
            snapshot
                .drops
                .insert(socket.inode, socket.drops.unwrap_or_default());
            let owner = snapshot
                .owners
                .entry((socket.uid, socket.cgroup_id))
                .or_default();
            owner.listeners += 1;
            owner.listen_backlog += socket.rqueue;
        }
        for socket in sockets {
            let local_port = socket.local.port();
            if in_range(local_port) {
                snapshot.ephemeral_in_use.insert(local_port);
            }
            let half_open = socket.state == state::SYN_RECV && socket.inode == 0;
            if half_open && let Some(port) = snapshot.ports.get_mut(&local_port) {
                port.syn_queue += 1;
            }
            if half_open || socket.state == state::TIME_WAIT {
                continue;
            }
            let queued = socket.inode == 0
                && matches!(socket.state, state::ESTABLISHED | state::CLOSE_WAIT)
                && snapshot.ports.contains_key(&local_port);
            if queued {
                snapshot.waiting.push((socket.local, socket.remote));
            }
            let owner = snapshot
                .owners
                .entry((socket.uid, socket.cgroup_id))
                .or_default();
            owner.sockets += 1;
            if in_range(local_port) && socket.state != state::LISTEN {
                owner.ephemeral_ports.insert(local_port);
            }
        }
        snapshot
    }
}

/// How long each connection in an accept queue has waited, from the first snapshot that
/// showed it.
#[derive(Default)]
struct WaitClock(HashMap<(SocketAddr, SocketAddr), Instant>);

impl WaitClock {
    /// Keeps the connections still waiting; returns the oldest wait per local port.
    fn update(
        &mut self,
        waiting: &[(SocketAddr, SocketAddr)],
        now: Instant,
    ) -> HashMap<u16, Duration> {
        let mut next = HashMap::with_capacity(waiting.len().min(MAX_WAITING));
        for connection in waiting.iter().take(MAX_WAITING) {
            let since = self.0.get(connection).copied().unwrap_or(now);
            next.insert(*connection, since);
        }
        self.0 = next;
        let mut oldest: HashMap<u16, Duration> = HashMap::new();
        for ((local, _), since) in &self.0 {
            let waited = now.saturating_duration_since(*since);
            let entry = oldest.entry(local.port()).or_default();
            *entry = (*entry).max(waited);
        }
        oldest
    }
}

/// The detector's task.
struct SocketTableReader {
    /// `--netns all`.
    other_namespaces: Option<OtherNamespaces>,
    metrics: ListenerMetrics,
    unresponsive_after: Duration,
    log: Option<EventLog>,
    report: SharedReport,
    labels: PortLabels,
    waits: WaitClock,
    /// Each listener's drop counter at the last snapshot, by inode.
    drops: HashMap<u32, u32>,
    /// Drops seen per port since the daemon started.
    port_drops: HashMap<u16, u64>,
    unresponsive: BTreeSet<u16>,
    names: Names,
    clock: Clock,
    silence: SilenceWatch,
    counts: PortCounters,
}

impl Reader for SocketTableReader {
    fn read(&mut self, _rings: &mut Rings) -> anyhow::Result<()> {
        self.poll(Instant::now());
        Ok(())
    }
}

impl SocketTableReader {
    fn poll(&mut self, now: Instant) {
        let sockets = match sock_diag::dump_tcp() {
            Ok(sockets) => sockets,
            Err(err) => {
                log::warn!("reading the socket table: {err:#}");
                self.metrics.dump_failures.inc();
                return;
            }
        };
        let after = self.unresponsive_after;
        if let Some(event) = self.silence.poll(&self.metrics.silence, now, after) {
            self.write_silence(&event);
        }
        let range = ephemeral_range();
        let mut snapshot = Snapshot::build(&sockets, range);
        let oldest = self.waits.update(&snapshot.waiting, now);
        let new_drops = self.count_drops(&snapshot);
        let mut listeners = self.publish_ports(&snapshot, &oldest, &new_drops);
        let mut others = match &mut self.other_namespaces {
            Some(namespaces) => namespaces.poll(now, after, &mut self.names),
            None => namespaces::Found::default(),
        };
        listeners.append(&mut others.listeners);
        for (kind, report) in &others.changed {
            self.write_other_event(kind, report);
        }
        let names = &mut self.names.processes;
        names
            .retain(|inode, _| snapshot.drops.contains_key(inode) || others.inodes.contains(inode));
        for (key, totals) in others.owners {
            let owner = snapshot.owners.entry(key).or_default();
            owner.sockets += totals.sockets;
            owner.listeners += totals.listeners;
            owner.listen_backlog += totals.listen_backlog;
        }
        let owners = self.publish_owners(&snapshot);
        let ephemeral = range.map(|range| self.publish_ephemeral(range, &snapshot));
        let conntrack = conntrack();
        if let (Some(table), Some(gauges)) = (&conntrack, &self.metrics.conntrack) {
            gauges.entries.set(table.entries as i64);
            gauges.max.set(table.max as i64);
        }
        *lock(&self.report) = Report {
            listeners,
            owners,
            ephemeral_ports: ephemeral,
            conntrack,
        };
    }

    /// Each port's drops since the last snapshot (a listener that reopened starts at 0).
    fn count_drops(&mut self, snapshot: &Snapshot) -> HashMap<u16, u64> {
        let mut new_drops = HashMap::new();
        for (number, port) in &snapshot.ports {
            let new: u64 = port
                .inodes
                .iter()
                .map(|inode| {
                    let now = snapshot.drops.get(inode).copied().unwrap_or_default();
                    let before = self.drops.get(inode).copied().unwrap_or_default();
                    u64::from(now.saturating_sub(before))
                })
                .sum();
            *self.port_drops.entry(*number).or_default() += new;
            new_drops.insert(*number, new);
        }
        self.drops.clone_from(&snapshot.drops);
        self.port_drops
            .retain(|port, _| snapshot.ports.contains_key(port));
        new_drops
    }

    /// Sets the per-port series from scratch (ports beyond the cap add up under `other`).
    fn publish_ports(
        &mut self,
        snapshot: &Snapshot,
        oldest: &HashMap<u16, Duration>,
        new_drops: &HashMap<u16, u64>,
    ) -> Vec<ListenerReport> {
        for gone in self.labels.retain(&snapshot.ports) {
            let label = gone.to_string();
            let _ = self.metrics.drops.remove_label_values(&[&label]);
            let _ = self
                .metrics
                .unresponsive_episodes
                .remove_label_values(&[&label]);
            self.metrics.port_counts.remove(&label);
            self.unresponsive.remove(&gone);
        }
        let m = self.metrics.clone();
        m.queues.reset();
        let own_label: BTreeMap<u16, bool> = snapshot
            .ports
            .keys()
            .map(|&number| (number, self.labels.label(number) != OTHER))
            .collect();
        let mut handshakes = self.counts.update(&own_label, &m.port_counts);
        let mut listeners = Vec::with_capacity(snapshot.ports.len());
        for (&number, port) in &snapshot.ports {
            let label = self.labels.label(number);
            let labels = [label.as_str()];
            let waited = oldest.get(&number).copied().unwrap_or_default();
            m.drops
                .with_label_values(&labels)
                .inc_by(new_drops.get(&number).copied().unwrap_or_default());
            let becomes = waited >= self.unresponsive_after && !self.unresponsive.contains(&number);
            // A new episode's event names the processes even if /proc was walked just now.
            let runtime_names = self.other_namespaces.as_mut().map(|o| &mut o.runtime_names);
            let owner = self.names.owner(port, becomes, runtime_names);
            let unresponsive = self.judge(number, port, waited, &owner, &label);
            m.queues.add(&labels, port, waited, unresponsive);
            listeners.push(ListenerReport {
                port: number,
                addresses: port.addresses.iter().copied().collect(),
                accept_queue: port.accept_queue,
                accept_queue_max: port.accept_queue_max,
                syn_queue: port.syn_queue,
                drops: self.port_drops.get(&number).copied().unwrap_or_default(),
                oldest_wait_seconds: waited.as_secs_f64(),
                unresponsive,
                owner,
                handshakes: handshakes.remove(&number).unwrap_or_default(),
                netns: None,
            });
        }
        listeners
    }

    /// Reports a port whose oldest waiting connection passed the limit, and its recovery.
    fn judge(
        &mut self,
        number: u16,
        port: &Port,
        waited: Duration,
        owner: &Owner,
        label: &str,
    ) -> bool {
        let unresponsive = waited >= self.unresponsive_after;
        let was = self.unresponsive.contains(&number);
        if unresponsive != was {
            let kind = if unresponsive {
                self.unresponsive.insert(number);
                self.metrics
                    .unresponsive_episodes
                    .with_label_values(&[label])
                    .inc();
                ListenerEvent::UNRESPONSIVE
            } else {
                self.unresponsive.remove(&number);
                ListenerEvent::RECOVERED
            };
            self.write_event(kind, number, port, waited, owner);
        }
        unresponsive
    }

    fn write_event(
        &self,
        kind: &'static str,
        number: u16,
        port: &Port,
        waited: Duration,
        owner: &Owner,
    ) {
        self.write_listener_event(ListenerEvent {
            time: self.clock.rfc3339(monotonic_ns()),
            kind,
            port: number,
            addresses: port.addresses.iter().copied().collect(),
            accept_queue: port.accept_queue,
            accept_queue_max: port.accept_queue_max,
            syn_queue: port.syn_queue,
            oldest_wait_seconds: waited.as_secs_f64(),
            owner: owner.clone(),
            netns: None,
        });
    }

    /// [`Self::write_event`] for a listener of another namespace.
    fn write_other_event(&self, kind: &'static str, report: &ListenerReport) {
        self.write_listener_event(ListenerEvent {
            time: self.clock.rfc3339(monotonic_ns()),
            kind,
            port: report.port,
            addresses: report.addresses.clone(),
            accept_queue: report.accept_queue,
            accept_queue_max: report.accept_queue_max,
            syn_queue: report.syn_queue,
            oldest_wait_seconds: report.oldest_wait_seconds,
            owner: report.owner.clone(),
            netns: report.netns.clone(),
        });
    }

    fn write_listener_event(&self, event: ListenerEvent) {
        let owner = &event.owner;
        let netns = event.netns.as_ref().map(|netns| netns.inode);
        log::warn!(
            "{}: port {} (network namespace {netns:?}), {} waiting in the accept queue \
             (backlog {}), oldest {:.1} s; uid {} cgroup {:?} processes {:?}",
            event.kind,
            event.port,
            event.accept_queue,
            event.accept_queue_max,
            event.oldest_wait_seconds,
            owner.uid,
            owner.cgroup,
            owner.processes
        );
        if let Some(log) = &self.log {
            log.write_line(&event);
        }
    }

    fn write_silence(&self, event: &SilenceEvent) {
        log::warn!(
            "{}: {} TCP segments arrived and none left in {:.1} s",
            event.kind,
            event.segments_unanswered,
            event.silent_seconds
        );
        let line = Timed {
            time: self.clock.rfc3339(monotonic_ns()),
            event,
        };
        if let Some(log) = &self.log {
            log.write_line(&line);
        }
    }

    fn publish_owners(&mut self, snapshot: &Snapshot) -> Vec<OwnerReport> {
        let mut ranked: Vec<(&OwnerKey, &OwnerTotals)> = snapshot.owners.iter().collect();
        ranked.sort_by(|a, b| b.1.sockets.cmp(&a.1.sockets).then(a.0.cmp(b.0)));
        let m = &self.metrics;
        m.owner_sockets.reset();
        m.owner_waiting.reset();
        m.owner_ephemeral_ports.reset();
        let mut reports = Vec::with_capacity(ranked.len().min(MAX_REPORTED_OWNERS));
        for (rank, ((uid, cgroup_id), totals)) in ranked.into_iter().enumerate() {
            let cgroup = cgroup_id.and_then(|id| self.names.cgroup(id, false));
            let (uid_label, cgroup_label) = if rank < MAX_OWNERS {
                (uid.to_string(), cgroup.clone().unwrap_or_default())
            } else {
                (OTHER.to_owned(), OTHER.to_owned())
            };
            let labels = [uid_label.as_str(), cgroup_label.as_str()];
            add(&m.owner_sockets, &labels, i64::from(totals.sockets));
            add(&m.owner_waiting, &labels, i64::from(totals.listen_backlog));
            add(
                &m.owner_ephemeral_ports,
                &labels,
                totals.ephemeral_ports.len() as i64,
            );
            if rank >= MAX_REPORTED_OWNERS {
                continue;
            }
            reports.push(OwnerReport {
                uid: *uid,
                user: self.names.user(*uid),
                cgroup,
                sockets: totals.sockets,
                listeners: totals.listeners,
                listen_backlog: totals.listen_backlog,
                ephemeral_ports: totals.ephemeral_ports.len() as u32,
            });
        }
        reports
    }

    fn publish_ephemeral(&self, (lo, hi): (u16, u16), snapshot: &Snapshot) -> EphemeralReport {
        let size = u32::from(hi) - u32::from(lo) + 1;
        let in_use = snapshot.ephemeral_in_use.len() as u32;
        let available = size.saturating_sub(in_use);
        self.metrics.ephemeral_in_use.set(i64::from(in_use));
        self.metrics.ephemeral_available.set(i64::from(available));
        EphemeralReport {
            range: [lo, hi],
            in_use,
            available,
        }
    }
}

/// Adds to a series (ports and owners beyond the cap add up under `other`).
fn add(gauges: &IntGaugeVec, labels: &[&str], value: i64) {
    gauges.with_label_values(labels).add(value);
}

/// The gauges of listening ports' queues, in this namespace (`seqwatch_listener_*`) or in the
/// others (`seqwatch_netns_listener_*`).
#[derive(Clone)]
struct QueueGauges {
    accept_queue: IntGaugeVec,
    accept_queue_max: IntGaugeVec,
    syn_queue: IntGaugeVec,
    oldest_wait: IntGaugeVec,
    unresponsive: IntGaugeVec,
}

impl QueueGauges {
    /// Before a snapshot's ports are added: ports that closed leave no series.
    fn reset(&self) {
        for gauges in [
            &self.accept_queue,
            &self.accept_queue_max,
            &self.syn_queue,
            &self.oldest_wait,
            &self.unresponsive,
        ] {
            gauges.reset();
        }
    }

    /// Adds one port under `labels`: ports that share a label (`other`) sum their queues and
    /// show the longest wait, and are unresponsive if any one is.
    fn add(&self, labels: &[&str], port: &Port, waited: Duration, unresponsive: bool) {
        add(&self.accept_queue, labels, i64::from(port.accept_queue));
        add(
            &self.accept_queue_max,
            labels,
            i64::from(port.accept_queue_max),
        );
        add(&self.syn_queue, labels, i64::from(port.syn_queue));
        let gauge = self.oldest_wait.with_label_values(labels);
        gauge.set(gauge.get().max(waited.as_secs() as i64));
        let gauge = self.unresponsive.with_label_values(labels);
        gauge.set(gauge.get().max(i64::from(unresponsive)));
    }
}

/// `net.ipv4.ip_local_port_range` of this namespace.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string(PORT_RANGE).ok()?;
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

fn conntrack() -> Option<ConntrackReport> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    Some(ConntrackReport {
        entries: read(CONNTRACK_COUNT)?,
        max: read(CONNTRACK_MAX)?,
    })
}

/// User names, cgroup paths and listeners' processes, cached; the cgroup tree and /proc are
/// walked again for an unknown one at most every [`CGROUPS_AGAIN`] / [`PROCESSES_AGAIN`].
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    cgroups: HashMap<u64, String>,
    cgroups_walked: Option<Instant>,
    /// The container each cgroup of `cgroups` is, from its path, and its name once found.
    containers: HashMap<u64, Identity>,
    processes: HashMap<u32, Vec<Process>>,
    processes_walked: Option<Instant>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|user| user.name)
            })
            .clone()
    }

    fn cgroup(&mut self, id: u64, now: bool) -> Option<String> {
        if !self.cgroups.contains_key(&id) && (due(&mut self.cgroups_walked, CGROUPS_AGAIN) || now)
        {
            self.cgroups = walk_cgroups();
            let cgroups = &self.cgroups;
            self.containers.retain(|id, _| cgroups.contains_key(id));
        }
        self.cgroups.get(&id).cloned()
    }

    /// The container cgroup `id` (at `path`) is, its path parsed once; its name looked up in
    /// `runtime_names` while unknown (a stat of each runtime's state per call).
    fn container(
        &mut self,
        id: u64,
        path: &str,
        runtime_names: Option<&mut RuntimeNames>,
    ) -> &Identity {
        let container = self
            .containers
            .entry(id)
            .or_insert_with(|| identity_of_cgroup(path));
        if container.container_name.is_none()
            && let (Some(full_id), Some(runtime_names)) =
                (container.full_container_id.as_deref(), runtime_names)
        {
            container.container_name = runtime_names.container_name(full_id);
        }
        container
    }

    /// Who owns `port`'s listeners; their container's name only with `runtime_names`.
    fn owner(&mut self, port: &Port, now: bool, runtime_names: Option<&mut RuntimeNames>) -> Owner {
        let (uid, cgroup_id, inodes) = (port.uid, port.cgroup_id, port.inodes.as_slice());
        let unknown = inodes
            .iter()
            .any(|inode| !self.processes.contains_key(inode));
        let unnamed = inodes
            .iter()
            .any(|inode| self.processes.get(inode).is_none_or(Vec::is_empty));
        if (unknown && due(&mut self.processes_walked, PROCESSES_AGAIN)) || (now && unnamed) {
            let mut found = processes_of(inodes);
            for inode in inodes {
                // Not found (gone, or not readable): remembered as such until forced.
                let processes = found.remove(inode).unwrap_or_default();
                self.processes.insert(*inode, processes);
            }
        }
        let mut processes: Vec<Process> = inodes
            .iter()
            .filter_map(|inode| self.processes.get(inode))
            .flatten()
            .cloned()
            .collect();
        processes.sort_by_key(|p| p.pid);
        processes.dedup();
        let cgroup = cgroup_id.and_then(|id| self.cgroup(id, now));
        let container = match (cgroup_id, cgroup.as_deref()) {
            (Some(id), Some(path)) => self.container(id, path, runtime_names).clone(),
            _ => Identity::default(),
        };
        Owner {
            uid,
            user: self.user(uid),
            cgroup,
            container: container.container,
            container_name: container.container_name,
            processes,
        }
    }
}

/// True (and restarts the clock) if the last walk was long enough ago.
fn due(last: &mut Option<Instant>, every: Duration) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < every) {
        return false;
    }
    *last = Some(now);
    true
}

/// Cgroup v2 ids (the directory's inode number) to paths, from the cgroup2 mount.
fn walk_cgroups() -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let Some(root) = cgroup2_mount() else {
        return found;
    };
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        if found.len() >= MAX_CGROUPS {
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
        found.insert(meta.ino(), format!("/{}", relative.display()));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        pending.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    found
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The processes holding any of `inodes`, by a bounded walk of /proc/*/fd.
fn processes_of(inodes: &[u32]) -> HashMap<u32, Vec<Process>> {
    let mut found: HashMap<u32, Vec<Process>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let pids = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .take(MAX_PROCESSES);
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten().take(MAX_FDS_PER_PROCESS) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                found.entry(inode).or_default().push(Process {
                    pid,
                    name: name.trim_end().to_owned(),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(state: u8, local: &str, remote: &str, uid: u32, inode: u32) -> TcpSocket {
        TcpSocket {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid,
            inode,
            rqueue: 0,
            wqueue: 0,
            cgroup_id: Some(7),
            drops: None,
        }
    }

    #[test]
    fn a_snapshot_sums_listeners_per_port_and_counts_what_each_owner_holds() {
        let mut v4 = socket(state::LISTEN, "0.0.0.0:80", "0.0.0.0:0", 33, 10);
        (v4.rqueue, v4.wqueue, v4.drops) = (2, 4, Some(5));
        let mut v6 = socket(state::LISTEN, "[::]:80", "[::]:0", 33, 11);
        (v6.rqueue, v6.wqueue) = (1, 4);
        let sockets = [
            v4,
            v6,
            // In the accept queue (no inode yet), half-open, accepted, TIME_WAIT, outgoing.
            socket(state::ESTABLISHED, "10.0.0.1:80", "10.0.0.2:5000", 33, 0),
            socket(state::SYN_RECV, "10.0.0.1:80", "10.0.0.2:5001", 0, 0),
            socket(state::ESTABLISHED, "10.0.0.1:80", "10.0.0.2:5002", 33, 12),
            socket(state::TIME_WAIT, "10.0.0.1:40001", "10.0.0.3:443", 0, 0),
            socket(
                state::ESTABLISHED,
                "10.0.0.1:40002",
                "10.0.0.3:443",
                1000,
                13,
            ),
            socket(
                state::ESTABLISHED,
                "10.0.0.1:40003",
                "10.0.0.3:443",
                1000,
                14,
            ),
        ];
        let snapshot = Snapshot::build(&sockets, Some((40000, 40009)));
        let port = &snapshot.ports[&80];
        assert_eq!(port.addresses.len(), 2);
        assert_eq!((port.accept_queue, port.accept_queue_max), (3, 8));
        assert_eq!(port.syn_queue, 1);
        assert_eq!(snapshot.drops[&10], 5);
        assert_eq!(
            snapshot.waiting,
            [(
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:5000".parse().unwrap()
            )]
        );
        assert_eq!(
            snapshot.ephemeral_in_use,
            BTreeSet::from([40001, 40002, 40003])
        );
        let server = &snapshot.owners[&(33, Some(7))];
        assert_eq!(
            (server.sockets, server.listeners, server.listen_backlog),
            (4, 2, 3)
        );
        let client = &snapshot.owners[&(1000, Some(7))];
        assert_eq!(client.sockets, 2);
        assert_eq!(client.ephemeral_ports, BTreeSet::from([40002, 40003]));
        assert!(
            !snapshot.owners.contains_key(&(0, Some(7))),
            "TIME_WAIT has no owner"
        );
    }

    #[test]
    fn a_connection_waits_from_the_first_snapshot_that_shows_it_until_it_leaves() {
        let start = Instant::now();
        let a = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:1".parse().unwrap(),
        );
        let b = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
        );
        let mut clock = WaitClock::default();
        clock.update(&[a], start);
        let oldest = clock.update(&[a, b], start + Duration::from_secs(5));
        assert_eq!(oldest[&80], Duration::from_secs(5));
        let oldest = clock.update(&[b], start + Duration::from_secs(6));
        assert_eq!(oldest[&80], Duration::from_secs(1), "a was accepted");
        assert!(clock.update(&[], start + Duration::from_secs(7)).is_empty());
    }
}
