//! Kernel TCP signals beside the packets, userspace half: tells the BTF tracepoint programs
//! where this kernel keeps what they read (offsets from its BTF) and which network namespace
//! is this process's, attaches what it can (a program that cannot be loaded or attached is
//! logged and reported as not attached; the rest carry on), reads their events and counts
//! them: SYN-ACK retransmits per service, listeners opened (the listener health detector and
//! the labels hear of them) and closed (the listener-loss detector judges them); and mirrors
//! the resets the kernel counts: received per service, sent per kernel reason. It seeds the
//! kernel's count of listeners per port, which tells a reset's service, from /proc/net/tcp{,6}.
//! With `--netns all` it lends the programs' set of followed namespaces to
//! [`FollowedNamespaces`] and counts their events apart ([`namespaces`]).

mod namespaces;

use std::{
    collections::HashMap, net::SocketAddr, os::unix::fs::MetadataExt as _, sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    Btf, Endianness,
    maps::{Array, HashMap as KernelHashMap, MapData, PerCpuArray, PerCpuHashMap},
};
use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::tcp_events::{
    OWN_NETNS, RESET_REASON_SLOTS, ResetService, ResetsSent, SocketEnds, TcpEvent, TcpEventCounter,
    TcpEventKind, TcpEventsConfig,
};
use tokio::sync::Notify;

use crate::{
    detectors::{
        detector::{Context, Detector},
        listener_loss::correlator::{ClosedListener, Correlator},
    },
    export::{
        labels::{ServiceCounters, ServiceLabels},
        metrics::Registry,
    },
    kernel::{
        btf::{KernelBtf, VMLINUX_BTF},
        counters::{Mirrors, PerCpuCounters, advance, per_key_totals},
        loader::{Globals, LoadedObject},
        namespaces::FollowedNamespaces,
        reader::{Reader, Rings, Schedule},
        records::{decode, socket_address, word_bytes},
    },
    settings::{NetnsMode, Settings},
};
use namespaces::{NetnsDropMetrics, NetnsTcpMetrics, OtherNamespaceCounts};

/// The reader reads its events, and the resets sent, every 100 ms; the per-service reset
/// counts once a second (two system calls per service).
const SCHEDULE: Schedule = Schedule {
    poll: Duration::from_millis(100),
    refresh: Duration::from_secs(1),
};
/// Events handled per read at most.
const MAX_EVENTS_PER_READ: usize = 4096;
/// The `reason` label of a reset whose reason the kernel's enum does not name.
const UNKNOWN_REASON: &str = "unknown";
/// The programs, each named after the kernel tracepoint it attaches to (and its `program`
/// label).
const PROGRAMS: [&str; 4] = [
    "tcp_retransmit_synack",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sock_set_state",
];

/// The program names, for documentation and tests.
pub fn program_names() -> Vec<&'static str> {
    PROGRAMS.to_vec()
}

/// The detector, before it starts.
pub struct TcpEvents {
    metrics: TcpEventMetrics,
    /// `--netns all`: the other namespaces' metrics (registered to document them otherwise).
    other_namespaces: Option<(NetnsTcpMetrics, NetnsDropMetrics)>,
    follow_others: bool,
    /// The kernel's layout, once read (at `configure`).
    layout: Option<anyhow::Result<KernelLayout>>,
}

impl TcpEvents {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        let follow_others = settings.netns == NetnsMode::All;
        let other_namespaces = (follow_others || registry.documents_all())
            .then(|| {
                anyhow::Ok((
                    NetnsTcpMetrics::new(registry)?,
                    NetnsDropMetrics::new(registry)?,
                ))
            })
            .transpose()?;
        Ok(TcpEvents {
            metrics: TcpEventMetrics::new(registry)?,
            other_namespaces,
            follow_others,
            layout: None,
        })
    }
}

impl Detector for TcpEvents {
    fn name(&self) -> &'static str {
        "TCP event"
    }

    /// Tells the programs where this kernel keeps what they read; silent without a layout.
    fn configure(&mut self, globals: &mut Globals) -> anyhow::Result<()> {
        let layout = KernelLayout::read();
        let mut config = layout
            .as_ref()
            .map_or(TcpEventsConfig::SILENT, |layout| layout.config);
        config.follow_others = self.follow_others.into();
        globals.set("TCP_EVENTS_CONFIG", &config);
        self.layout = Some(layout);
        Ok(())
    }

    /// Attaches what this kernel allows and starts the reader. Only an unusable object is an
    /// error: a kernel without these tracepoints or BTF leaves these signals off, logged.
    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let name = self.name();
        let layout = match self.layout {
            Some(Ok(layout)) => layout,
            Some(Err(err)) => {
                log::warn!("kernel TCP events off: {err:#}");
                for program in PROGRAMS {
                    ctx.object.attach_metrics().set_tracepoint(program, false);
                }
                return Ok(());
            }
            None => anyhow::bail!("the TCP event detector was not configured"),
        };
        for program in PROGRAMS {
            ctx.object.attach_tracepoint(program, &layout.types);
        }
        let reasons = if ctx.object.is_tracepoint_attached("tcp_send_reset") {
            // Every named reason's series exists from the start (the reader makes handles).
            self.metrics
                .resets_sent
                .with_label_values(&[UNKNOWN_REASON]);
            reset_reasons(&layout.btf)
        } else {
            log::warn!("no reset reasons: tcp_send_reset is not attached");
            HashMap::new()
        };
        let counters = Arc::new(ctx.object.take::<PerCpuCounters>("TCP_EVENT_COUNTERS")?);
        self.metrics.mirror(counters.clone(), ctx.registry);
        let other_namespaces = match self.other_namespaces.filter(|_| self.follow_others) {
            Some((metrics, drops)) => {
                drops.mirror(counters.clone(), ctx.registry);
                Some(follow_other_namespaces(ctx, metrics)?)
            }
            None => None,
        };
        let reader = TcpEventReader {
            other_namespaces,
            synack_retransmits: ServiceCounters::new(self.metrics.synack_retransmits.clone()),
            resets_received: ResetsReceived::new(ctx.object, self.metrics.resets_received.clone())?,
            resets_sent: ResetCounters::new(ctx.object, &self.metrics.resets_sent, &reasons)?,
            metrics: self.metrics,
            counters,
            services: ctx.service_labels(),
            listener_opened: ctx.shared.listener_opened.clone(),
            listener_loss: ctx.shared.listener_loss.clone(),
        };
        seed_listening_ports(ctx.object)?;
        let events = Rings::one(ctx.object.take("TCP_EVENTS")?)?;
        ctx.tasks.spawn(name, events, SCHEDULE, None, reader);
        Ok(())
    }
}

/// Lends the programs' set of followed namespaces to the detectors' shared
/// [`FollowedNamespaces`], and takes their resets sent.
fn follow_other_namespaces(
    ctx: &mut Context<'_>,
    metrics: NetnsTcpMetrics,
) -> anyhow::Result<OtherNamespaceCounts> {
    let followed: KernelHashMap<MapData, u32, u32> = ctx.object.take("FOLLOWED_NETNS")?;
    let listening = ctx.object.take("NETNS_LISTENING")?;
    let namespaces: FollowedNamespaces = ctx.shared.namespaces.clone();
    namespaces.attach_kernel(followed, listening);
    let resets_sent = ctx.object.take("NETNS_RESETS_SENT")?;
    Ok(OtherNamespaceCounts::new(metrics, namespaces, resets_sent))
}

/// The detector's metrics.
pub struct TcpEventMetrics {
    synack_retransmits: IntCounterVec,
    resets_sent: IntCounterVec,
    resets_received: IntCounterVec,
    listeners_closed: IntCounter,
    events_dropped: IntCounter,
    netns_unreadable: IntCounter,
}

impl TcpEventMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(TcpEventMetrics {
            synack_retransmits: registry.counters(
                "seqwatch_synack_retransmits_total",
                "SYN-ACKs a listener of this namespace retransmitted (no third ACK came), \
                 by local service (services without a label of their own are \"other\").",
                &["service"],
            )?,
            resets_sent: registry.counters(
                "seqwatch_resets_sent_total",
                "RSTs this namespace sent, by the kernel's reason (enum sk_rst_reason).",
                &["reason"],
            )?,
            resets_received: registry.counters(
                "seqwatch_resets_received_total",
                "RSTs sockets of this namespace received, by service: the local listener's \
                 address:port, or the remote server's for outgoing connections.",
                &["service"],
            )?,
            listeners_closed: registry.counter(
                "seqwatch_listeners_closed_total",
                "TCP listeners of this namespace that closed (or whose process exited).",
            )?,
            events_dropped: registry.counter(
                "seqwatch_tcp_events_dropped_total",
                "Kernel TCP events lost because their ring buffer was full.",
            )?,
            netns_unreadable: registry.counter(
                "seqwatch_tcp_events_netns_unreadable_total",
                "Kernel TCP events skipped because their socket's network namespace could not \
                 be read.",
            )?,
        })
    }

    /// The programs' kernel counters, mirrored before each scrape.
    fn mirror(&self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(
            TcpEventCounter::EventsDropped as u32,
            self.events_dropped.clone(),
        );
        mirrors.add(
            TcpEventCounter::NetnsUnreadable as u32,
            self.netns_unreadable.clone(),
        );
        registry.before_scrape(move || mirrors.refresh());
    }
}

/// What the programs are built against: the kernel's BTF (aya loads the BTF tracepoints
/// against it) and, from it, where this kernel keeps what they read.
struct KernelLayout {
    types: Btf,
    btf: KernelBtf,
    config: TcpEventsConfig,
}

impl KernelLayout {
    /// Reads the kernel's BTF once and parses it twice: by aya, and by [`KernelBtf`] for
    /// struct offsets and enum names (aya exposes neither).
    fn read() -> anyhow::Result<Self> {
        let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
        let types = Btf::parse(&data, Endianness::default())
            .with_context(|| format!("parsing {VMLINUX_BTF}"))?;
        let btf = KernelBtf::parse(&data).with_context(|| format!("parsing {VMLINUX_BTF}"))?;
        let config = monitored_netns_config(&btf)?;
        Ok(KernelLayout { types, btf, config })
    }
}

/// This process's network namespace, and where the kernel keeps what the programs read.
fn monitored_netns_config(btf: &KernelBtf) -> anyhow::Result<TcpEventsConfig> {
    let netns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let common = |member: &str| btf.offset_of("sock", &["__sk_common", member]);
    let request = |member: &str| btf.offset_of("request_sock", &["__req_common", member]);
    Ok(TcpEventsConfig {
        netns_inum: netns.ino() as u32,
        sock_net: btf.offset_of("sock", &["__sk_common", "skc_net", "net"])?,
        net_inum: btf.offset_of("net", &["ns", "inum"])?,
        skb_dev: btf.offset_of("sk_buff", &["dev"])?,
        dev_net: btf.offset_of("net_device", &["nd_net", "net"])?,
        sock_protocol: btf.offset_of("sock", &["sk_protocol"])?,
        sock_family: common("skc_family")?,
        socket: SocketEnds {
            local_port: common("skc_num")?,
            remote_port: common("skc_dport")?,
            local_v4: common("skc_rcv_saddr")?,
            remote_v4: common("skc_daddr")?,
            local_v6: common("skc_v6_rcv_saddr")?,
            remote_v6: common("skc_v6_daddr")?,
        },
        request_port: request("skc_num")?,
        request_v4: request("skc_rcv_saddr")?,
        request_v6: request("skc_v6_rcv_saddr")?,
        sock_state: common("skc_state")?,
        skb_head: btf.offset_of("sk_buff", &["head"])?,
        skb_network_header: btf.offset_of("sk_buff", &["network_header"])?,
        skb_transport_header: btf.offset_of("sk_buff", &["transport_header"])?,
        reset_reason_tcp_flags: reset_reason(btf, "SK_RST_REASON_TCP_FLAGS").unwrap_or(u32::MAX),
        follow_others: 0,
    })
}

/// The value of a reason of the kernel's `enum sk_rst_reason`, if it has it.
fn reset_reason(btf: &KernelBtf, name: &str) -> Option<u32> {
    let values = btf.enum_values("sk_rst_reason").ok()?;
    let (_, value) = values.iter().find(|(known, _)| known == name)?;
    u32::try_from(*value).ok()
}

/// The reset reasons the kernel's `enum sk_rst_reason` names:
/// `SK_RST_REASON_NO_SOCKET` = 1 → 1 → `no_socket` (the names its tracepoint prints).
fn reset_reasons(btf: &KernelBtf) -> HashMap<u32, String> {
    let values = match btf.enum_values("sk_rst_reason") {
        Ok(values) => values,
        Err(err) => {
            log::warn!("resets sent are counted as \"{UNKNOWN_REASON}\": {err:#}");
            return HashMap::new();
        }
    };
    values
        .iter()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("SK_RST_REASON_")?.to_ascii_lowercase();
            (name != "max").then_some((u32::try_from(*value).ok()?, name))
        })
        .collect()
}

/// Gives the kernel's count of listeners per port (see
/// `seqwatch_common::tcp_events::LISTENING_PORTS`) the listeners open now. Runs once the
/// listener events are attached, so that none opened in between is missed; one the kernel
/// has already counted is not counted twice (the larger count stays).
fn seed_listening_ports(object: &mut LoadedObject) -> anyhow::Result<()> {
    let mut counts: Array<MapData, u32> = object.take("LISTENING")?;
    let mut open: HashMap<u16, u32> = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for port in listening_ports(&text) {
            *open.entry(port).or_insert(0) += 1;
        }
    }
    for (port, listeners) in open {
        let counted = counts.get(&u32::from(port), 0).unwrap_or(0);
        counts
            .set(u32::from(port), &listeners.max(counted), 0)
            .context("seeding the listening ports")?;
    }
    Ok(())
}

/// Local ports of the LISTEN (0A) rows of a /proc/net/tcp table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut columns = line.split_whitespace().skip(1);
        let local = columns.next()?;
        let state = columns.nth(1)?;
        let port = local.rsplit(':').next()?;
        (state == "0A").then(|| u16::from_str_radix(port, 16).ok())?
    })
}

/// One decoded event.
struct Decoded {
    kind: TcpEventKind,
    local: SocketAddr,
    event: TcpEvent,
}

fn decode_event(bytes: &[u8]) -> Option<Decoded> {
    let event = decode::<TcpEvent>(bytes)?;
    Some(Decoded {
        kind: TcpEventKind::from_u8(event.kind)?,
        local: socket_address(event.family, event.local_addr, event.local_port),
        event,
    })
}

/// `seqwatch_resets_received_total`, from the kernel's per-service counts: what each service
/// counted since the last read is added under its label.
struct ResetsReceived {
    kernel: PerCpuHashMap<MapData, ResetService, u64>,
    counters: ServiceCounters,
    /// Each service's total at the last read, and that of the unkeyed ones.
    seen: HashMap<ResetService, u64>,
    unkeyed_seen: u64,
}

impl ResetsReceived {
    fn new(object: &mut LoadedObject, family: IntCounterVec) -> anyhow::Result<Self> {
        Ok(ResetsReceived {
            kernel: object.take("RESETS_RECEIVED")?,
            counters: ServiceCounters::new(family),
            seen: HashMap::new(),
            unkeyed_seen: 0,
        })
    }

    fn refresh(
        &mut self,
        labels: &mut ServiceLabels,
        counters: &PerCpuCounters,
        mut others: Option<&mut OtherNamespaceCounts>,
    ) {
        for (service, total) in per_key_totals(&self.kernel) {
            let seen = self.seen.insert(service, total).unwrap_or(0);
            if service.netns != OWN_NETNS {
                if let Some(others) = others.as_deref_mut().filter(|_| total > seen) {
                    others.resets_received(service.netns, service.port, total - seen);
                }
            } else if total > seen {
                let address =
                    socket_address(service.family, word_bytes(service.addr), service.port);
                self.counters.add(labels.admit(address), total - seen);
            }
        }
        let unkeyed = counters.read(TcpEventCounter::ResetsReceivedUnkeyed as u32);
        if unkeyed > self.unkeyed_seen {
            self.counters.add(None, unkeyed - self.unkeyed_seen);
            self.unkeyed_seen = unkeyed;
        }
    }

    /// Removes a forgotten namespace's counts, here and in the kernel.
    fn forget_namespace(&mut self, netns: u32) {
        let services: Vec<ResetService> = self
            .seen
            .keys()
            .filter(|service| service.netns == netns)
            .copied()
            .collect();
        for service in services {
            self.seen.remove(&service);
            let _ = self.kernel.remove(&service);
        }
    }
}

/// `seqwatch_resets_sent_total`, from the kernel's counts per reason slot: a handle for
/// each slot of a reason the kernel names, made once; every other slot is `unknown`.
struct ResetCounters {
    kernel: PerCpuArray<MapData, ResetsSent>,
    family: IntCounterVec,
    by_slot: HashMap<usize, IntCounter>,
    unknown: Option<IntCounter>,
}

impl ResetCounters {
    fn new(
        object: &mut LoadedObject,
        family: &IntCounterVec,
        reasons: &HashMap<u32, String>,
    ) -> anyhow::Result<Self> {
        let by_slot = reasons
            .iter()
            .filter(|(number, _)| named_slot(**number).is_some())
            .map(|(number, name)| (*number as usize, family.with_label_values(&[name])))
            .collect();
        Ok(ResetCounters {
            kernel: object.take("RESETS_SENT")?,
            family: family.clone(),
            by_slot,
            unknown: None,
        })
    }

    fn refresh(&mut self) {
        let Ok(per_cpu) = self.kernel.get(&0, 0) else {
            return;
        };
        let mut totals = [0u64; RESET_REASON_SLOTS];
        for counts in per_cpu.iter() {
            for (total, count) in totals.iter_mut().zip(counts.by_reason) {
                *total += count;
            }
        }
        let mut unknown = 0;
        for (slot, total) in totals.into_iter().enumerate() {
            match self.by_slot.get(&slot) {
                Some(counter) => advance(counter, total),
                None => unknown += total,
            }
        }
        if unknown > 0 {
            let counter = self
                .unknown
                .get_or_insert_with(|| self.family.with_label_values(&[UNKNOWN_REASON]));
            advance(counter, unknown);
        }
    }
}

/// The slot of a reason the kernel counts apart from the others; `None` for the last slot,
/// which it shares with every larger reason.
fn named_slot(reason: u32) -> Option<usize> {
    let slot = ResetsSent::slot(reason);
    (slot == reason as usize && slot < RESET_REASON_SLOTS - 1).then_some(slot)
}

/// The detector's task.
struct TcpEventReader {
    metrics: TcpEventMetrics,
    /// `--netns all`.
    other_namespaces: Option<OtherNamespaceCounts>,
    counters: Arc<PerCpuCounters>,
    services: ServiceLabels,
    synack_retransmits: ServiceCounters,
    resets_received: ResetsReceived,
    resets_sent: ResetCounters,
    listener_opened: Arc<Notify>,
    listener_loss: Option<Correlator>,
}

impl TcpEventReader {
    fn handle(&mut self, decoded: &Decoded) {
        let Decoded { kind, local, event } = decoded;
        if event.netns != OWN_NETNS {
            self.handle_other_namespace(decoded);
            return;
        }
        match kind {
            TcpEventKind::SynAckRetransmit => {
                self.synack_retransmits.inc(&mut self.services, *local);
            }
            TcpEventKind::ListenerOpened => {
                self.services.note_listener(*local);
                self.listener_opened.notify_one();
            }
            TcpEventKind::ListenerClosed => {
                self.metrics.listeners_closed.inc();
                if let Some(listener_loss) = &self.listener_loss {
                    listener_loss.listener_closed(ClosedListener {
                        listener: *local,
                        ts_ns: event.ts_ns,
                        pid: event.pid,
                        comm: event.comm,
                        netns: None,
                    });
                }
            }
        }
    }

    /// An event of a followed namespace: its listeners opening are not this namespace's
    /// services, so only retransmits and closes count.
    fn handle_other_namespace(&mut self, decoded: &Decoded) {
        let Decoded { kind, local, event } = decoded;
        let Some(others) = &mut self.other_namespaces else {
            return;
        };
        match kind {
            TcpEventKind::SynAckRetransmit => {
                others.synack_retransmitted(event.netns, local.port());
            }
            TcpEventKind::ListenerOpened => {}
            TcpEventKind::ListenerClosed => {
                let netns = others.listener_closed(event.netns);
                if let (Some(listener_loss), Some(netns)) = (&self.listener_loss, netns) {
                    listener_loss.listener_closed(ClosedListener {
                        listener: *local,
                        ts_ns: event.ts_ns,
                        pid: event.pid,
                        comm: event.comm,
                        netns: Some(netns),
                    });
                }
            }
        }
    }
}

impl Reader for TcpEventReader {
    /// At most [`MAX_EVENTS_PER_READ`]: the rest wait for the next read, so that the (single)
    /// runtime thread is never held for long.
    fn read(&mut self, rings: &mut Rings) -> anyhow::Result<()> {
        rings.drain(MAX_EVENTS_PER_READ, |item| match decode_event(item) {
            Some(decoded) => self.handle(&decoded),
            None => log::warn!("undecodable TCP event of {} bytes ignored", item.len()),
        });
        Ok(())
    }

    fn polled(&mut self) -> anyhow::Result<()> {
        self.resets_sent.refresh();
        Ok(())
    }

    /// Removes the series of services that lost their label, and counts the resets received.
    fn refresh(&mut self) -> anyhow::Result<()> {
        for service in self.services.update() {
            self.synack_retransmits.forget(service);
            self.resets_received.counters.forget(service);
        }
        let others = self.other_namespaces.as_mut();
        self.resets_received
            .refresh(&mut self.services, &self.counters, others);
        if let Some(others) = &mut self.other_namespaces {
            let received = &mut self.resets_received;
            others.refresh(|netns| received.forget_namespace(netns));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use seqwatch_common::synack::FAMILY_IPV4;

    use super::*;

    #[test]
    fn reset_reasons_come_from_the_kernel_enum() {
        let layout = KernelLayout::read().unwrap();
        let reasons = reset_reasons(&layout.btf);
        assert_eq!(reasons[&0], "not_specified");
        assert_eq!(reasons[&1], "no_socket");
        assert!(
            !reasons.values().any(|name| name == "max"),
            "MAX is not a reason"
        );
    }

    #[test]
    fn listening_ports_are_read_from_proc_tables() {
        let table = "  sl  local_address rem_address   st tx_queue
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0100C70A:1F90 0200C70A:A000 01 00000000:00000000 00:00000000 00000000     0
   2: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 0";
        assert_eq!(listening_ports(table).collect::<Vec<_>>(), [8080, 22]);
    }

    #[test]
    fn only_reasons_below_the_shared_slot_keep_their_own() {
        assert_eq!(named_slot(1), Some(1));
        assert_eq!(
            named_slot(RESET_REASON_SLOTS as u32 - 2),
            Some(RESET_REASON_SLOTS - 2)
        );
        assert_eq!(named_slot(RESET_REASON_SLOTS as u32 - 1), None);
        assert_eq!(named_slot(1000), None);
    }

    #[test]
    fn short_or_unknown_events_are_not_decoded() {
        assert!(decode_event(&[0; 8]).is_none());
        let mut bytes = [0u8; size_of::<TcpEvent>()];
        bytes[std::mem::offset_of!(TcpEvent, kind)] = 99;
        assert!(decode_event(&bytes).is_none());
        bytes[std::mem::offset_of!(TcpEvent, kind)] = TcpEventKind::ListenerOpened as u8;
        bytes[std::mem::offset_of!(TcpEvent, family)] = FAMILY_IPV4;
        let decoded = decode_event(&bytes).unwrap();
        assert_eq!(decoded.local, "0.0.0.0:0".parse().unwrap());
    }
}
