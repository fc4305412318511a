//! Kernel TCP signals beside the packets, userspace half: tells the BTF tracepoint programs
//! where this kernel keeps what they read (offsets from its BTF) and which network namespace
//! is this process's, attaches what it can (a program that cannot be loaded or attached is logged and
//! reported as not attached; the rest carry on), reads their events and counts them:
//! SYN-ACK retransmits per service, listeners closed, and listeners lost right after an
//! anomaly (see [`crate::crash`]); and mirrors the resets the kernel counts: received per
//! service, sent per kernel reason. It seeds the kernel's count of listeners per port, which
//! tells a reset's service, from /proc/net/tcp{,6}.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Btf, Endianness,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use seqwatch_common::{
    synack::FAMILY_IPV4,
    tcp_events::{
        RESET_REASON_SLOTS, ResetService, ResetsSent, SocketEnds, TcpEvent, TcpEventCounter,
        TcpEventKind, TcpEventsConfig,
    },
};
use tokio::{io::unix::AsyncFd, sync::Notify};

use crate::{
    crash::{ListenerLost, SharedHistory},
    handshake::{EventLog, ServiceCounters, ServiceLabels},
    kernel_btf::{KernelBtf, VMLINUX_BTF},
    metrics::{Metrics, advance, register},
    probes::{Probes, per_cpu_total},
    util::clock::Clock,
};

/// How long a listener's close waits before it is judged, so that anomalies the kernel
/// reported just before it (read from another ring buffer) have arrived.
const JUDGE_AFTER: Duration = Duration::from_millis(1000);
/// How often the kernel's per-service reset counts are read: two system calls per service.
const RESETS_RECEIVED_READ_EVERY: Duration = Duration::from_secs(1);
/// Events handled per drain at most.
const MAX_EVENTS_PER_DRAIN: usize = 4096;
/// Listener closes waiting to be judged; beyond it the oldest is judged at once.
const MAX_PENDING: usize = 1024;
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

/// The metrics of this module, registered with the daemon's registry.
#[derive(Clone)]
pub struct TcpEventMetrics {
    pub synack_retransmits: IntCounterVec,
    pub resets_sent: IntCounterVec,
    pub resets_received: IntCounterVec,
    pub listeners_closed: IntCounter,
    pub listener_lost_after_anomaly: IntCounterVec,
    pub events_dropped: IntCounter,
    pub netns_unreadable: IntCounter,
}

impl TcpEventMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help)?);
        let vec = |name: &str, help: &str, label: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &[label])?,
            )
        };
        Ok(TcpEventMetrics {
            synack_retransmits: vec(
                "seqwatch_synack_retransmits_total",
                "SYN-ACKs a listener of this namespace retransmitted (no third ACK came), \
                 by local service (services without a label of their own are \"other\").",
                "service",
            )?,
            resets_sent: vec(
                "seqwatch_resets_sent_total",
                "RSTs this namespace sent, by the kernel's reason (enum sk_rst_reason).",
                "reason",
            )?,
            resets_received: vec(
                "seqwatch_resets_received_total",
                "RSTs sockets of this namespace received, by service: the local listener's \
                 address:port, or the remote server's for outgoing connections.",
                "service",
            )?,
            listeners_closed: counter(
                "seqwatch_listeners_closed_total",
                "TCP listeners of this namespace that closed (or whose process exited).",
            )?,
            listener_lost_after_anomaly: vec(
                "seqwatch_listener_lost_after_anomaly_total",
                "Listeners that closed within the window after a handshake anomaly to their \
                 port, by the anomalies' service.",
                "service",
            )?,
            events_dropped: counter(
                "seqwatch_tcp_events_dropped_total",
                "Kernel TCP events lost because their ring buffer was full.",
            )?,
            netns_unreadable: counter(
                "seqwatch_tcp_events_netns_unreadable_total",
                "Kernel TCP events skipped because their socket's network namespace could not \
                 be read.",
            )?,
        })
    }

    fn refresh(&self, counters: &TcpEventCounters) {
        advance(
            &self.events_dropped,
            counters.read(TcpEventCounter::EventsDropped),
        );
        advance(
            &self.netns_unreadable,
            counters.read(TcpEventCounter::NetnsUnreadable),
        );
    }
}

/// The programs' per-CPU counters, summed over CPUs on read.
pub struct TcpEventCounters(pub PerCpuArray<MapData, u64>);

impl TcpEventCounters {
    fn read(&self, counter: TcpEventCounter) -> u64 {
        per_cpu_total(&self.0, counter as u32)
    }
}

/// Options of the reader, from `seqwatch run`.
pub struct TcpEventOptions {
    pub services: ServiceLabels,
    pub event_log: Option<EventLog>,
    pub history: SharedHistory,
    /// Notified when a listener of this namespace opens (the listener watch reads it).
    pub listener_opened: Arc<Notify>,
}

/// What the programs are built against: the kernel's BTF (aya loads the BTF tracepoints
/// against it) and, from it, where this kernel keeps what they read.
pub struct KernelLayout {
    types: Btf,
    btf: KernelBtf,
    config: TcpEventsConfig,
}

impl KernelLayout {
    /// Reads the kernel's BTF once and parses it twice: by aya, and by [`KernelBtf`] for
    /// struct offsets and enum names (aya exposes neither).
    pub fn read() -> anyhow::Result<Self> {
        let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
        let types = Btf::parse(&data, Endianness::default())
            .with_context(|| format!("parsing {VMLINUX_BTF}"))?;
        let btf = KernelBtf::parse(&data).with_context(|| format!("parsing {VMLINUX_BTF}"))?;
        let config = monitored_netns_config(&btf)?;
        Ok(KernelLayout { types, btf, config })
    }

    /// What the object's programs are loaded with: silent without a layout.
    pub fn config(layout: &anyhow::Result<Self>) -> TcpEventsConfig {
        layout
            .as_ref()
            .map_or(TcpEventsConfig::SILENT, |layout| layout.config)
    }
}

/// Attaches what this kernel allows and starts the reader task. Only an unusable object is
/// an error: a kernel without these tracepoints or BTF leaves these signals off, logged.
pub fn start(
    probes: &mut Probes,
    metrics: &Metrics,
    options: TcpEventOptions,
    layout: anyhow::Result<KernelLayout>,
) -> anyhow::Result<()> {
    let layout = match layout {
        Ok(layout) => layout,
        Err(err) => {
            log::warn!("kernel TCP events off: {err:#}");
            mark_all_unattached(metrics);
            return Ok(());
        }
    };
    attach_programs(probes, metrics, &layout.types);
    if !probes.is_tracepoint_attached("tcp_send_reset") {
        log::warn!("no reset reasons: tcp_send_reset is not attached");
        return spawn_reader(probes, metrics, options, HashMap::new());
    }
    // Every named reason's series exists from the start (the reader makes their handles).
    metrics.tcp.resets_sent.with_label_values(&[UNKNOWN_REASON]);
    spawn_reader(probes, metrics, options, reset_reasons(&layout.btf))
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
    })
}

/// The value of a reason of the kernel's `enum sk_rst_reason`, if it has it.
fn reset_reason(btf: &KernelBtf, name: &str) -> Option<u32> {
    let values = btf.enum_values("sk_rst_reason").ok()?;
    let (_, value) = values.iter().find(|(known, _)| known == name)?;
    u32::try_from(*value).ok()
}

fn mark_all_unattached(metrics: &Metrics) {
    for program in PROGRAMS {
        set_attached(metrics, program, false);
    }
}

fn set_attached(metrics: &Metrics, program: &str, attached: bool) {
    // Tracepoints have no interface or direction: those labels stay empty.
    metrics
        .program_attached
        .with_label_values(&[program, "", ""])
        .set(i64::from(attached));
}

/// Attaches each program this kernel accepts; one it does not is logged and left off.
fn attach_programs(probes: &mut Probes, metrics: &Metrics, types: &Btf) {
    for program in PROGRAMS {
        let attached = match probes.attach_tracepoint(program, types) {
            Ok(verified) => {
                log::info!(
                    "attached {program} (BTF tracepoint; loaded and verified in {verified:?})"
                );
                true
            }
            Err(err) => {
                log::warn!("{program} off: {err:#}");
                false
            }
        };
        set_attached(metrics, program, attached);
    }
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

fn spawn_reader(
    probes: &mut Probes,
    metrics: &Metrics,
    options: TcpEventOptions,
    reasons: HashMap<u32, String>,
) -> anyhow::Result<()> {
    let tcp = &metrics.tcp;
    let mut reader = Reader {
        metrics: tcp.clone(),
        counters: probes.take_tcp_event_counters()?,
        services: options.services,
        synack_retransmits: ServiceCounters::new(tcp.synack_retransmits.clone()),
        resets_received: ResetsReceived::new(probes, tcp.resets_received.clone())?,
        resets_sent: ResetCounters::new(probes, &tcp.resets_sent, &reasons)?,
        history: options.history,
        listener_opened: options.listener_opened,
        pending: VecDeque::new(),
        log: options.event_log,
        clock: Clock::now(),
    };
    seed_listening_ports(probes)?;
    // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
    let mut events = unsafe { AsyncFd::register(probes.take_tcp_events()?) }
        .map_err(|err| anyhow::anyhow!("polling the TCP event ring buffer: {err}"))?;
    tokio::spawn(async move {
        // Also the drain when the kernel has not woken us (it does once an eighth is full).
        let mut tick = crate::util::ticks::interval(Duration::from_millis(100));
        let mut services_tick = crate::util::ticks::interval(RESETS_RECEIVED_READ_EVERY);
        loop {
            let result = tokio::select! {
                guard = events.readable_mut() => match guard {
                    Ok(mut guard) => {
                        reader.drain(guard.get_inner_mut());
                        guard.clear_ready();
                        Ok(())
                    }
                    Err(err) => Err(anyhow::Error::from(err)),
                },
                _ = tick.tick() => {
                    reader.drain(events.get_mut());
                    reader.metrics.refresh(&reader.counters);
                    reader.resets_sent.refresh();
                    reader.judge_due(Instant::now());
                    Ok(())
                }
                _ = services_tick.tick() => {
                    reader.forget_withdrawn();
                    reader.resets_received.refresh(&mut reader.services, &reader.counters);
                    Ok(())
                }
            };
            if let Err(err) = result {
                log::error!("TCP event reader stopped: {err:#}");
                return;
            }
        }
    });
    Ok(())
}

/// Gives the kernel's count of listeners per port (see
/// `seqwatch_common::tcp_events::LISTENING_PORTS`) the listeners open now. Runs once the
/// listener events are attached, so that none opened in between is missed; one the kernel
/// has already counted is not counted twice (the larger count stays).
fn seed_listening_ports(probes: &mut Probes) -> anyhow::Result<()> {
    let mut counts: Array<MapData, u32> = Array::try_from(probes.take_map("LISTENING")?)?;
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

fn decode(bytes: &[u8]) -> Option<Decoded> {
    if bytes.len() < size_of::<TcpEvent>() {
        return None;
    }
    // SAFETY: TcpEvent is plain old data and the length was checked.
    let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TcpEvent>()) };
    Some(Decoded {
        kind: TcpEventKind::from_u8(event.kind)?,
        local: socket_address(event.family, event.local_addr, event.local_port),
        event,
    })
}

/// An address in the kernel's form (network byte order, IPv4 in the first four bytes).
pub(crate) fn socket_address(family: u8, bytes: [u8; 16], port: u16) -> SocketAddr {
    let ip = if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
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
    fn new(probes: &mut Probes, family: IntCounterVec) -> anyhow::Result<Self> {
        Ok(ResetsReceived {
            kernel: PerCpuHashMap::try_from(probes.take_map("RESETS_RECEIVED")?)?,
            counters: ServiceCounters::new(family),
            seen: HashMap::new(),
            unkeyed_seen: 0,
        })
    }

    fn refresh(&mut self, labels: &mut ServiceLabels, counters: &TcpEventCounters) {
        let totals: Vec<(ResetService, u64)> = self
            .kernel
            .iter()
            .filter_map(Result::ok)
            .map(|(service, per_cpu)| (service, per_cpu.iter().sum()))
            .collect();
        for (service, total) in totals {
            let seen = self.seen.insert(service, total).unwrap_or(0);
            if total > seen {
                let address =
                    socket_address(service.family, word_bytes(service.addr), service.port);
                self.counters.add(labels.admit(address), total - seen);
            }
        }
        let unkeyed = counters.read(TcpEventCounter::ResetsReceivedUnkeyed);
        if unkeyed > self.unkeyed_seen {
            self.counters.add(None, unkeyed - self.unkeyed_seen);
            self.unkeyed_seen = unkeyed;
        }
    }
}

/// The bytes of an address the kernel stored as four words in memory order.
pub(crate) fn word_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0; 16];
    for (chunk, word) in bytes.as_chunks_mut::<4>().0.iter_mut().zip(words) {
        *chunk = word.to_ne_bytes();
    }
    bytes
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
        probes: &mut Probes,
        family: &IntCounterVec,
        reasons: &HashMap<u32, String>,
    ) -> anyhow::Result<Self> {
        let by_slot = reasons
            .iter()
            .filter(|(number, _)| named_slot(**number).is_some())
            .map(|(number, name)| (*number as usize, family.with_label_values(&[name])))
            .collect();
        Ok(ResetCounters {
            kernel: PerCpuArray::try_from(probes.take_map("RESETS_SENT")?)?,
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

/// A listener close waiting to be judged.
struct PendingClose {
    due: Instant,
    listener: SocketAddr,
    ts_ns: u64,
    pid: u32,
    comm: [u8; 16],
}

/// Everything the reader task owns.
struct Reader {
    metrics: TcpEventMetrics,
    counters: TcpEventCounters,
    services: ServiceLabels,
    synack_retransmits: ServiceCounters,
    resets_received: ResetsReceived,
    resets_sent: ResetCounters,
    history: SharedHistory,
    listener_opened: Arc<Notify>,
    pending: VecDeque<PendingClose>,
    log: Option<EventLog>,
    clock: Clock,
}

impl Reader {
    /// At most [`MAX_EVENTS_PER_DRAIN`]: the rest wait for the next drain, so that the (single)
    /// runtime thread is never held for long.
    fn drain(&mut self, events: &mut RingBuf<MapData>) {
        for _ in 0..MAX_EVENTS_PER_DRAIN {
            let Some(item) = events.next() else {
                break;
            };
            match decode(&item) {
                Some(decoded) => self.handle(&decoded),
                None => log::warn!("undecodable TCP event of {} bytes ignored", item.len()),
            }
        }
    }

    fn handle(&mut self, decoded: &Decoded) {
        let Decoded { kind, local, event } = decoded;
        match kind {
            TcpEventKind::SynAckRetransmit => {
                self.synack_retransmits.inc(&mut self.services, *local);
            }
            TcpEventKind::ListenerOpened => {
                self.services.note_listener(*local);
                self.listener_opened.notify_one();
            }
            TcpEventKind::ListenerClosed => self.listener_closed(*local, event),
        }
    }

    fn listener_closed(&mut self, listener: SocketAddr, event: &TcpEvent) {
        self.metrics.listeners_closed.inc();
        if self.pending.len() == MAX_PENDING
            && let Some(oldest) = self.pending.pop_front()
        {
            self.judge(&oldest);
        }
        self.pending.push_back(PendingClose {
            due: Instant::now() + JUDGE_AFTER,
            listener,
            ts_ns: event.ts_ns,
            pid: event.pid,
            comm: event.comm,
        });
    }

    fn judge_due(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|p| p.due <= now) {
            let close = self.pending.pop_front().expect("checked");
            self.judge(&close);
        }
    }

    /// Removes the series of services that lost their label.
    fn forget_withdrawn(&mut self) {
        for service in self.services.update() {
            self.synack_retransmits.forget(service);
            self.resets_received.counters.forget(service);
            let _ = self
                .metrics
                .listener_lost_after_anomaly
                .remove_label_values(&[&service.to_string()]);
        }
    }

    /// Reports the close if anomalies to its port came just before it.
    fn judge(&mut self, close: &PendingClose) {
        let port = close.listener.port();
        let precursors = crate::util::lock(&self.history).take_before(port, close.ts_ns);
        let Some(precursors) = precursors else {
            return;
        };
        let service = self.services.label(precursors.service);
        self.metrics
            .listener_lost_after_anomaly
            .with_label_values(&[service.as_str()])
            .inc();
        let lost = ListenerLost {
            time: self.clock.rfc3339(close.ts_ns),
            kind: ListenerLost::KIND,
            listener: close.listener,
            port,
            service: precursors.service,
            pid: close.pid,
            process: comm_name(&close.comm),
            anomaly_kinds: precursors.kinds,
            anomalies: precursors.anomalies,
            sources: precursors.sources,
            seconds_after_last_anomaly: close.ts_ns.saturating_sub(precursors.last_ts_ns) as f64
                / 1e9,
        };
        log::warn!(
            "listener {} (process {} {}) lost {:.1} s after anomalies {:?} from {:?}",
            lost.listener,
            lost.pid,
            lost.process,
            lost.seconds_after_last_anomaly,
            lost.anomaly_kinds,
            lost.sources
        );
        if let Some(log) = &self.log {
            log.write_line(&lost);
        }
    }
}

fn comm_name(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
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
    fn kernel_address_words_keep_their_byte_order() {
        let words = [u32::from_ne_bytes([10, 199, 0, 1]), 0, 0, 0];
        assert_eq!(
            socket_address(FAMILY_IPV4, word_bytes(words), 8080),
            "10.199.0.1:8080".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn short_or_unknown_events_are_not_decoded() {
        assert!(decode(&[0; 8]).is_none());
        let mut bytes = [0u8; size_of::<TcpEvent>()];
        bytes[std::mem::offset_of!(TcpEvent, kind)] = 99;
        assert!(decode(&bytes).is_none());
        bytes[std::mem::offset_of!(TcpEvent, kind)] = TcpEventKind::ListenerOpened as u8;
        bytes[std::mem::offset_of!(TcpEvent, family)] = FAMILY_IPV4;
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.local, "0.0.0.0:0".parse().unwrap());
    }
}
