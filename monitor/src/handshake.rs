//! The handshake anomaly engine's userspace half: reads the kernel tracker's anomaly events,
//! counts them per kind and service (services capped, overflow labelled `other`), ranks their
//! sources per kind (`top_sources`), scores blind spoofing guesses per service (`spoofing`), and
//! writes each as one JSON line for a SIEM, rate-limited per (source address, kind).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use lru::LruCache;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use seqwatch_common::{
    Direction,
    handshake::{AnomalyEvent, AnomalyKind, Expects, HandshakeCounter},
    synack::FAMILY_IPV4,
};
use serde::Serialize;

use crate::{
    crash::SharedHistory,
    daemon::lock,
    event_reader::{self, EventReader},
    lab::monotonic_ns,
    metrics::register,
    netstat::read_tcpext,
    spoofing::{ChallengeAcks, KernelGuesses, SpoofingMetrics, SpoofingScores},
    top_sources::{SharedTopSources, SourcePrefix, TopSourceMetrics, TopSources},
};

/// The service label of anomalies beyond the service cap.
pub const OTHER_SERVICE: &str = "other";

/// Events per (source, kind) let through at once, and refilled per second, by the log's limit.
const LOG_BURST: f64 = 10.0;
const LOG_REFILL_PER_SECOND: f64 = 1.0;
/// (source, kind) buckets remembered; the least recently used is forgotten.
const LOG_BUCKETS: usize = 4096;

/// Options of the engine, from `seqwatch run`.
pub struct EngineOptions {
    pub event_log: Option<EventLog>,
    pub max_services: NonZeroUsize,
    /// Where every anomaly is remembered for crash correlation.
    pub history: SharedHistory,
    /// The per-kind source ranking, shared with the HTTP API.
    pub top_sources: SharedTopSources,
    /// The window of the top sources and of the spoofing scores.
    pub anomaly_window: Duration,
}

/// The engine's metrics, registered with the daemon's registry.
#[derive(Clone)]
pub struct HandshakeMetrics {
    pub anomalies: IntCounterVec,
    pub events_dropped: IntCounter,
    pub events_rate_limited: IntCounter,
    pub tfo_syns: IntCounter,
    pub state_lookups: IntCounter,
    pub state_evicted: IntCounterVec,
    pub state_refused: IntCounter,
    pub kernel_guesses: IntCounterVec,
    pub top_sources: TopSourceMetrics,
    pub spoofing: SpoofingMetrics,
}

impl HandshakeMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help)?);
        Ok(HandshakeMetrics {
            anomalies: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "seqwatch_handshake_anomalies_total",
                        "TCP handshake and flag anomalies, by kind and local service \
                         (services beyond the cap are \"other\").",
                    ),
                    &["kind", "service"],
                )?,
            )?,
            events_dropped: counter(
                "seqwatch_anomaly_events_dropped_total",
                "Anomaly events lost in the kernel because their ring buffer was full.",
            )?,
            events_rate_limited: counter(
                "seqwatch_anomaly_events_rate_limited_total",
                "Anomaly events counted but left out of the event log by the per-source limit.",
            )?,
            tfo_syns: counter(
                "seqwatch_tfo_syns_total",
                "SYNs carrying data with a TCP Fast Open option (legitimate, not anomalies).",
            )?,
            state_lookups: counter(
                "seqwatch_handshake_state_lookups_total",
                "Segments that went to the kernel tracker's state table (a lookup, or a new SYN's insert).",
            )?,
            state_evicted: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "seqwatch_handshake_state_evicted_total",
                        "Handshake states the kernel tracker dropped to make room for a new \
                         handshake, by what they were: a SYN-cookie handshake, a SYN not \
                         answered, a completed handshake, an open one past its protection.",
                    ),
                    &["reason"],
                )?,
            )?,
            state_refused: counter(
                "seqwatch_handshake_state_refused_total",
                "New handshakes the kernel tracker did not track: their state set (or filter \
                 set) held only open handshakes still protected from eviction.",
            )?,
            kernel_guesses: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "seqwatch_spoofing_kernel_guesses_total",
                        "ACKs a listener of the service answered with a reset for their flags \
                         (no handshake of its own, or a wrong ack) that the kernel tracker had \
                         no state to judge: blind guesses (or ACK scans) counted from the \
                         kernel's verdict alone (services beyond the cap are \"other\").",
                    ),
                    &["service"],
                )?,
            )?,
            top_sources: TopSourceMetrics::new(registry)?,
            spoofing: SpoofingMetrics::new(registry)?,
        })
    }

    fn refresh(&self, counters: &HandshakeCounters) {
        advance(
            &self.events_dropped,
            counters.read(HandshakeCounter::EventsDropped),
        );
        advance(&self.tfo_syns, counters.read(HandshakeCounter::TfoSyns));
        advance(
            &self.state_lookups,
            counters.read(HandshakeCounter::StateLookups),
        );
        for (reason, counter) in EVICTION_REASONS {
            let total = counters.read(counter);
            advance(&self.state_evicted.with_label_values(&[reason]), total);
        }
        advance(
            &self.state_refused,
            counters.read(HandshakeCounter::StateRefused),
        );
    }
}

/// The `reason` labels of `seqwatch_handshake_state_evicted_total`, and their counters.
const EVICTION_REASONS: [(&str, HandshakeCounter); 4] = [
    ("cookie", HandshakeCounter::EvictedCookie),
    ("unanswered", HandshakeCounter::EvictedUnanswered),
    ("completed", HandshakeCounter::EvictedCompleted),
    ("expired", HandshakeCounter::EvictedExpired),
];

fn advance(mirror: &IntCounter, total: u64) {
    let delta = total.saturating_sub(mirror.get());
    if delta > 0 {
        mirror.inc_by(delta);
    }
}

/// The tracker's per-CPU counters, summed over CPUs on read.
pub struct HandshakeCounters(pub PerCpuArray<MapData, u64>);

impl HandshakeCounters {
    pub fn read(&self, counter: HandshakeCounter) -> u64 {
        self.0
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// One anomaly, decoded. Also the line format of `--event-log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// RFC 3339, UTC, from the kernel's monotonic timestamp.
    pub time: String,
    pub kind: &'static str,
    /// The local side: the listener on ingress, the sender on egress.
    pub service: SocketAddr,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub direction: &'static str,
    pub ifindex: u32,
    /// TCP flags as letters: F S R P A U E C.
    pub flags: String,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_ack: Option<u32>,
    #[serde(skip)]
    pub ts_ns: u64,
    #[serde(skip)]
    pub anomaly_kind: AnomalyKind,
}

impl Anomaly {
    /// `None` for a kind this build does not know (never expected from our program).
    pub fn from_event(event: &AnomalyEvent, clock: &Clock) -> Option<Self> {
        let kind = AnomalyKind::from_u8(event.kind)?;
        let (saddr, daddr) = if event.family == FAMILY_IPV4 {
            (ipv4(&event.saddr), ipv4(&event.daddr))
        } else {
            (
                IpAddr::V6(Ipv6Addr::from(event.saddr)),
                IpAddr::V6(Ipv6Addr::from(event.daddr)),
            )
        };
        let source = SocketAddr::new(saddr, event.sport);
        let destination = SocketAddr::new(daddr, event.dport);
        let direction = Direction::from_u8(event.direction)?;
        let service = match direction {
            Direction::Ingress => destination,
            Direction::Egress => source,
        };
        let (expected_seq, expected_ack) = match kind.expects() {
            Expects::Nothing => (None, None),
            Expects::Seq => (Some(event.expected_seq), None),
            Expects::SeqAndAck => (Some(event.expected_seq), Some(event.expected_ack)),
        };
        Some(Anomaly {
            time: clock.rfc3339(event.ts_ns),
            kind: kind.as_str(),
            service,
            source,
            destination,
            direction: direction.as_str(),
            ifindex: event.ifindex,
            flags: flag_letters(event.flags),
            seq: event.seq,
            ack: event.ack,
            payload_len: event.payload_len,
            expected_seq,
            expected_ack,
            ts_ns: event.ts_ns,
            anomaly_kind: kind,
        })
    }
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn flag_letters(flags: u8) -> String {
    b"FSRPAUEC"
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, letter)| char::from(*letter))
        .collect()
}

/// Turns `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) into wall-clock time.
pub struct Clock {
    wall_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        let monotonic = crate::lab::monotonic_ns() as i128;
        Clock {
            wall_minus_monotonic_ns: wall - monotonic,
        }
    }

    pub(crate) fn rfc3339(&self, monotonic_ns: u64) -> String {
        let unix_ns = (monotonic_ns as i128 + self.wall_minus_monotonic_ns).max(0);
        let (secs, millis) = (
            (unix_ns / 1_000_000_000) as i64,
            (unix_ns / 1_000_000) % 1000,
        );
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Service labels under a cap: the first `cap` services keep their own label, later ones are
/// counted as `other`, so that a port scan cannot grow the series without bound.
pub struct ServiceLabels {
    cap: usize,
    known: HashSet<SocketAddr>,
}

impl ServiceLabels {
    pub fn new(cap: NonZeroUsize) -> Self {
        ServiceLabels {
            cap: cap.get(),
            known: HashSet::new(),
        }
    }

    pub fn label(&mut self, service: SocketAddr) -> String {
        label_of(self.admit(service))
    }

    /// The service itself if it keeps its own label, `None` if it is counted as `other`.
    pub fn admit(&mut self, service: SocketAddr) -> Option<SocketAddr> {
        if self.known.contains(&service) {
            return Some(service);
        }
        (self.known.len() < self.cap).then(|| {
            self.known.insert(service);
            service
        })
    }
}

/// The label of a service [`ServiceLabels::admit`] answered for.
pub fn label_of(admitted: Option<SocketAddr>) -> String {
    admitted.map_or_else(|| OTHER_SERVICE.to_owned(), |service| service.to_string())
}

/// A counter family labelled by service alone, keeping the handle of every label it has
/// counted (at most the cap plus `other`): counting an event then formats no address and
/// hashes no label strings, which per event cost more than all the rest of its handling. A
/// service with a handle is counted after one lookup; the labels are asked only for a new one.
pub struct ServiceCounters {
    family: IntCounterVec,
    own: HashMap<SocketAddr, IntCounter>,
    other: Option<IntCounter>,
}

impl ServiceCounters {
    pub fn new(family: IntCounterVec) -> Self {
        ServiceCounters {
            family,
            own: HashMap::new(),
            other: None,
        }
    }

    /// Counts one event of `service`, under the label `labels` gives it.
    pub fn inc(&mut self, labels: &mut ServiceLabels, service: SocketAddr) {
        if let Some(counter) = self.own.get(&service) {
            counter.inc();
            return;
        }
        self.counter(labels.admit(service)).inc();
    }

    /// Counts `events` of a service [`ServiceLabels::admit`] answered for.
    pub fn add(&mut self, admitted: Option<SocketAddr>, events: u64) {
        self.counter(admitted).inc_by(events);
    }

    fn counter(&mut self, admitted: Option<SocketAddr>) -> &IntCounter {
        let family = &self.family;
        match admitted {
            Some(service) => self
                .own
                .entry(service)
                .or_insert_with(|| family.with_label_values(&[service.to_string()])),
            None => self
                .other
                .get_or_insert_with(|| family.with_label_values(&[OTHER_SERVICE])),
        }
    }
}

/// A token bucket per (source address, kind), in a bounded LRU.
pub struct RateLimiter {
    buckets: LruCache<(IpAddr, AnomalyKind), (f64, Instant)>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: LruCache::new(NonZeroUsize::new(LOG_BUCKETS).expect("non-zero")),
        }
    }
}

impl RateLimiter {
    pub fn allow(&mut self, source: IpAddr, kind: AnomalyKind, now: Instant) -> bool {
        let (tokens, last) = self
            .buckets
            .get_or_insert_mut((source, kind), || (LOG_BURST, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * LOG_REFILL_PER_SECOND;
        *tokens = (*tokens + refill).min(LOG_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Everything the reader task owns.
struct Engine {
    metrics: HandshakeMetrics,
    counters: HandshakeCounters,
    services: ServiceLabels,
    limiter: RateLimiter,
    log: Option<EventLog>,
    history: SharedHistory,
    clock: Clock,
    top_sources: SharedTopSources,
    /// Each ranked (kind, source)'s rank at the last refresh, for the event log.
    source_ranks: HashMap<(AnomalyKind, SourcePrefix), usize>,
    spoofing: SpoofingScores,
    challenge_acks: ChallengeAcks,
    kernel_guesses: KernelGuesses,
    kernel_guess_counters: ServiceCounters,
}

/// An event-log line: the anomaly, and its source's rank among the top sources of its kind.
#[derive(Serialize)]
struct LogLine<'a> {
    #[serde(flatten)]
    anomaly: &'a Anomaly,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_rank: Option<usize>,
}

impl Engine {
    fn handle(
        &mut self,
        anomaly: &Anomaly,
        top: &mut TopSources,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let service = self.services.label(anomaly.service);
        self.metrics
            .anomalies
            .with_label_values(&[anomaly.kind, service.as_str()])
            .inc();
        let (kind, source) = (anomaly.anomaly_kind, anomaly.source.ip());
        top.record(kind, source, now_ns);
        self.spoofing.observe(&service, kind, now_ns);
        lock(&self.history).record(anomaly);
        let Some(log) = self.log.as_ref() else {
            return Ok(());
        };
        if !self.limiter.allow(source, kind, Instant::now()) {
            self.metrics.events_rate_limited.inc();
            return Ok(());
        }
        let source_rank = self
            .source_ranks
            .get(&(kind, SourcePrefix::of(source)))
            .copied();
        log.write_line(&LogLine {
            anomaly,
            source_rank,
        })
    }
}

impl Engine {
    /// The guesses only the kernel saw since the last refresh, into their services' counters
    /// and spoofing scores.
    fn count_kernel_guesses(&mut self, now_ns: u64) {
        let unkeyed = self.counters.read(HandshakeCounter::KernelGuessesUnkeyed);
        for (service, guesses) in self.kernel_guesses.read(unkeyed) {
            let admitted = service.and_then(|service| self.services.admit(service));
            self.kernel_guess_counters.add(admitted, guesses);
            self.spoofing
                .add_guesses(&label_of(admitted), guesses, now_ns);
        }
    }
}

impl EventReader for Engine {
    fn drain(&mut self, events: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        let now_ns = monotonic_ns();
        let top_sources = self.top_sources.clone();
        let mut top = lock(&top_sources);
        while let Some(item) = events.next() {
            let Some(anomaly) =
                decode_event(&item).and_then(|e| Anomaly::from_event(&e, &self.clock))
            else {
                log::warn!("undecodable anomaly event of {} bytes ignored", item.len());
                continue;
            };
            self.handle(&anomaly, &mut top, now_ns)?;
        }
        drop(top);
        if let Some(log) = self.log.as_ref() {
            log.flush()?;
        }
        self.metrics.refresh(&self.counters);
        Ok(())
    }

    /// Once a second: the kernel counters, the top-sources gauge and the spoofing scores.
    fn refresh(&mut self) {
        let now_ns = monotonic_ns();
        self.metrics.refresh(&self.counters);
        self.source_ranks = self
            .metrics
            .top_sources
            .publish(&lock(&self.top_sources), now_ns);
        self.challenge_acks.observe(read_tcpext().as_ref(), now_ns);
        self.count_kernel_guesses(now_ns);
        self.metrics
            .spoofing
            .publish(&self.spoofing, &self.challenge_acks, now_ns);
    }
}

/// Decodes one ring-buffer item; `None` for a short item.
pub fn decode_event(bytes: &[u8]) -> Option<AnomalyEvent> {
    if bytes.len() < size_of::<AnomalyEvent>() {
        return None;
    }
    // SAFETY: AnomalyEvent is plain old data and the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<AnomalyEvent>()) })
}

/// The JSON-lines event log (`--event-log`), shared by the engines that write to it; each
/// line is written whole under the lock, so lines of different engines never interleave.
#[derive(Clone)]
pub struct EventLog(Arc<Mutex<Box<dyn Write + Send>>>);

impl EventLog {
    /// Opens a file for appending, or stdout for `-`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let writer: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the event log {}", path.display()))?;
            Box::new(BufWriter::new(file))
        };
        Ok(EventLog(Arc::new(Mutex::new(writer))))
    }

    pub fn write_line(&self, value: &impl Serialize) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        lock(&self.0).write_all(&line)?;
        Ok(())
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        lock(&self.0).flush()?;
        Ok(())
    }
}

/// Starts the reader task: it runs until the runtime stops. `events` and `counters` are the
/// tracker's maps, taken from the loaded object.
pub fn start(
    events: RingBuf<MapData>,
    counters: HandshakeCounters,
    kernel_guesses: KernelGuesses,
    metrics: HandshakeMetrics,
    options: &EngineOptions,
) -> anyhow::Result<()> {
    let kernel_guess_counters = ServiceCounters::new(metrics.kernel_guesses.clone());
    let engine = Engine {
        metrics,
        counters,
        services: ServiceLabels::new(options.max_services),
        limiter: RateLimiter::default(),
        log: options.event_log.clone(),
        history: options.history.clone(),
        clock: Clock::now(),
        top_sources: options.top_sources.clone(),
        source_ranks: HashMap::new(),
        spoofing: SpoofingScores::new(options.anomaly_window),
        challenge_acks: ChallengeAcks::new(options.anomaly_window),
        kernel_guesses,
        kernel_guess_counters,
    };
    event_reader::spawn("anomaly", events, engine)
}

/// The Markdown table of `docs/anomalies.md`, generated from `AnomalyKind`.
pub fn markdown_table() -> String {
    let or_dash = |names: &'static str| if names.is_empty() { "—" } else { names };
    let mut table = String::from("| kind | what | Suricata | Zeek |\n|---|---|---|---|\n");
    for kind in AnomalyKind::ALL {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            kind.as_str(),
            kind.description(),
            or_dash(kind.suricata()),
            or_dash(kind.zeek()),
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/anomalies.md` carries the table generated from the code: it cannot drift.
    #[test]
    fn the_docs_table_is_the_generated_one() {
        let docs = include_str!("../../docs/anomalies.md");
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/anomalies.md is out of date; replace its table with:\n\n{table}"
        );
    }

    #[test]
    fn services_beyond_the_cap_are_other() {
        let mut labels = ServiceLabels::new(NonZeroUsize::new(2).unwrap());
        let service = |port| SocketAddr::from(([10, 0, 0, 1], port));
        assert_eq!(labels.label(service(1)), "10.0.0.1:1");
        assert_eq!(labels.label(service(2)), "10.0.0.1:2");
        assert_eq!(labels.label(service(3)), OTHER_SERVICE);
        assert_eq!(
            labels.label(service(1)),
            "10.0.0.1:1",
            "known ones keep theirs"
        );
    }

    #[test]
    fn service_counters_count_under_the_capped_labels() {
        let registry = Registry::new();
        let family = IntCounterVec::new(Opts::new("events", "Events."), &["service"]).unwrap();
        registry.register(Box::new(family.clone())).unwrap();
        let mut labels = ServiceLabels::new(NonZeroUsize::new(1).unwrap());
        let mut counters = ServiceCounters::new(family.clone());
        let service = |port| SocketAddr::from(([10, 0, 0, 1], port));
        for port in [1, 2, 1, 3, 1] {
            counters.inc(&mut labels, service(port));
        }
        let count = |label: &str| family.with_label_values(&[label]).get();
        assert_eq!((count("10.0.0.1:1"), count(OTHER_SERVICE)), (3, 2));
        assert_eq!(
            registry.gather()[0].get_metric().len(),
            2,
            "no other series"
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_one_per_second() {
        let mut limiter = RateLimiter::default();
        let source = IpAddr::from([192, 0, 2, 9]);
        let start = Instant::now();
        let allowed = (0..100)
            .filter(|_| limiter.allow(source, AnomalyKind::NullFlags, start))
            .count();
        assert_eq!(allowed, LOG_BURST as usize);
        assert!(
            limiter.allow(source, AnomalyKind::SynFin, start),
            "per kind"
        );
        assert!(!limiter.allow(source, AnomalyKind::NullFlags, start));
        let later = start + Duration::from_secs(1);
        assert!(limiter.allow(source, AnomalyKind::NullFlags, later));
        assert!(!limiter.allow(source, AnomalyKind::NullFlags, later));
    }

    #[test]
    fn times_and_flags_are_readable() {
        let clock = Clock {
            wall_minus_monotonic_ns: 1_700_000_000_123_000_000,
        };
        assert_eq!(clock.rfc3339(0), "2023-11-14T22:13:20.123Z");
        assert_eq!(flag_letters(0x12), "SA");
        assert_eq!(flag_letters(0x29), "FPU");
    }
}
