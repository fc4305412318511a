//! The handshake anomaly engine's userspace half: reads the kernel tracker's anomaly events (at
//! most [`MAX_EVENTS_PER_SECOND`]), counts them per kind and service (services labelled by
//! evidence, [`crate::admission`]; the rest `other`), ranks their sources per kind
//! (`top_sources`), scores blind spoofing guesses per service (`spoofing`), and writes each as
//! one JSON line for a SIEM, rate-limited per (source address, kind) and by the event log's
//! budget ([`EventLog`]).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    fs::File,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
use serde::{Serialize, Serializer};

use crate::{
    admission::{Admitted, Candidate, SharedPolicy},
    crash::SharedHistory,
    event_reader::{self, EventReader},
    host::netstat::read_tcpext,
    metrics::register,
    spoofing::{ChallengeAcks, KernelGuesses, SpoofingMetrics, SpoofingScores},
    top_sources::{SharedTopSources, SourcePrefix, TopSourceMetrics, TopSources},
    util::{
        clock::{Clock, WallTime, monotonic_ns},
        lock,
        token_bucket::TokenBucket,
    },
};

/// The service label of anomalies beyond the service cap.
pub const OTHER_SERVICE: &str = "other";

/// Events per (source, kind) let through at once, and refilled per second, by the log's limit.
const LOG_BURST: f64 = 10.0;
const LOG_REFILL_PER_SECOND: f64 = 1.0;
/// (source, kind) buckets remembered; the least recently used is forgotten.
const LOG_BUCKETS: usize = 4096;
/// Lines per second the event log takes from all its writers together, and the burst: random
/// sources each get a fresh per-source burst, so this is what bounds a flood's lines.
const LOG_LINES_PER_SECOND: f64 = 100.0;
const LOG_LINES_BURST: f64 = 1000.0;
/// The default size at which the event log file is rotated (`--event-log-max-bytes`).
pub const DEFAULT_EVENT_LOG_MAX_BYTES: u64 = 64 << 20;
/// Why a line was left out of the event log: the `reason` label's values.
const SUPPRESSED_REASONS: [&str; 4] = ["per_source", "global_rate", "too_long", "write_error"];
/// Anomaly events read per second at most, and the burst. Beyond it they wait in the ring
/// buffer, and what overflows it the kernel counts (`seqwatch_anomaly_events_dropped_total`):
/// a flood's cost to the daemon is bounded, whatever its rate.
pub const MAX_EVENTS_PER_SECOND: f64 = 100_000.0;
const MAX_EVENTS_BURST: f64 = 10_000.0;

/// Options of the engine, from `seqwatch run`.
pub struct EngineOptions {
    pub event_log: Option<EventLog>,
    pub max_services: NonZeroUsize,
    /// Which services earn a label.
    pub policy: SharedPolicy,
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
    pub event_log: EventLogMetrics,
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
                         (services without a listener or handshakes of their own, or beyond \
                         the cap, are \"other\").",
                    ),
                    &["kind", "service"],
                )?,
            )?,
            events_dropped: counter(
                "seqwatch_anomaly_events_dropped_total",
                "Anomaly events lost in the kernel because their ring buffer was full.",
            )?,
            event_log: EventLogMetrics::new(registry)?,
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

/// One anomaly, decoded. Also the line format of `--event-log`. Nothing is formatted until a
/// line is written: most events of a flood are only counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// RFC 3339, UTC, from the kernel's monotonic timestamp.
    pub time: WallTime,
    pub kind: &'static str,
    /// The local side: the listener on ingress, the sender on egress; for
    /// `unsolicited_synack`, the server it claims to come from (the service whose ISN samples
    /// it would have forged; the local side is a port nobody listens on).
    pub service: SocketAddr,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub direction: &'static str,
    pub ifindex: u32,
    /// TCP flags as letters: F S R P A U E C.
    pub flags: FlagLetters,
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
        let service = match (direction, kind) {
            (Direction::Egress, _) | (_, AnomalyKind::UnsolicitedSynAck) => source,
            (Direction::Ingress, _) => destination,
        };
        let (expected_seq, expected_ack) = match kind.expects() {
            Expects::Nothing => (None, None),
            Expects::Seq => (Some(event.expected_seq), None),
            Expects::SeqAndAck => (Some(event.expected_seq), Some(event.expected_ack)),
        };
        Some(Anomaly {
            time: clock.wall_time(event.ts_ns),
            kind: kind.as_str(),
            service,
            source,
            destination,
            direction: direction.as_str(),
            ifindex: event.ifindex,
            flags: FlagLetters(event.flags),
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

/// TCP flags, written as letters: F S R P A U E C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagLetters(pub u8);

impl fmt::Display for FlagLetters {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in b"FSRPAUEC".iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                write!(formatter, "{}", char::from(*letter))?;
            }
        }
        Ok(())
    }
}

impl Serialize for FlagLetters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The service labels of one detector's metrics: a service keeps its own label while the
/// label policy admits it ([`crate::admission`]: a local listener, or its handshakes), at
/// most `cap` at once; every other service is counted as `other`. The policy's decisions are
/// taken from a snapshot, so asking about a service locks nothing, except once per
/// [`crate::admission::LISTENERS_READ_GAP`] for a service on a local address whose port is
/// not known to listen.
pub struct ServiceLabels {
    cap: usize,
    policy: SharedPolicy,
    /// The decisions new services are admitted by.
    admitted: Arc<Admitted>,
    /// The decisions the known services were last checked against.
    checked: Arc<Admitted>,
    known: HashSet<SocketAddr>,
}

impl ServiceLabels {
    pub fn new(cap: NonZeroUsize, policy: SharedPolicy) -> Self {
        let admitted = lock(&policy).admitted();
        ServiceLabels {
            cap: cap.get(),
            policy,
            checked: admitted.clone(),
            admitted,
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
        if self.known.len() >= self.cap || !self.admissible(service) {
            return None;
        }
        self.known.insert(service);
        Some(service)
    }

    /// [`ServiceLabels::admit`] for a service whose server this host is (its own stack sent
    /// the SYN-ACK): on a local address, that shows its listener.
    pub fn admit_server(&mut self, service: SocketAddr) -> Option<SocketAddr> {
        let unknown = !self.known.contains(&service) && !self.admitted.admits(service);
        if unknown && self.admitted.is_local(service) {
            let mut policy = lock(&self.policy);
            policy.note_listener(service, Instant::now());
            self.admitted = policy.admitted();
        }
        self.admit(service)
    }

    /// A listener the kernel reported opening: its services need not wait for the next read.
    pub fn note_listener(&mut self, listener: SocketAddr) {
        let mut policy = lock(&self.policy);
        policy.note_listener(listener, Instant::now());
        self.admitted = policy.admitted();
    }

    fn admissible(&mut self, service: SocketAddr) -> bool {
        if self.admitted.admits(service) {
            return true;
        }
        if !self.admitted.is_local(service) {
            return false;
        }
        // Perhaps a listener opened since the snapshot.
        self.admitted = lock(&self.policy).fresh_listeners(Instant::now());
        self.admitted.admits(service)
    }

    /// Takes the policy's latest decisions; returns the services that lost their label, whose
    /// series the caller removes.
    pub fn update(&mut self) -> Vec<SocketAddr> {
        let latest = lock(&self.policy).admitted();
        if Arc::ptr_eq(&latest, &self.checked) {
            return Vec::new();
        }
        self.admitted = latest.clone();
        self.checked = latest;
        let withdrawn: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|service| !self.admitted.admits(**service))
            .copied()
            .collect();
        for service in &withdrawn {
            self.known.remove(service);
        }
        withdrawn
    }

    /// Gives up a service's label (its state is gone), making room for another.
    pub fn forget(&mut self, service: SocketAddr) {
        self.known.remove(&service);
    }

    /// Offers the scored services to the policy's ranking
    /// ([`crate::admission::LabelPolicy::rerank`]).
    pub fn rerank(&self, candidates: &[Candidate], now: Instant) {
        lock(&self.policy).rerank(candidates, now);
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

    /// Removes the series of a service that lost its label.
    pub fn forget(&mut self, service: SocketAddr) {
        if self.own.remove(&service).is_some() {
            let _ = self.family.remove_label_values(&[&service.to_string()]);
        }
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
    buckets: LruCache<(IpAddr, AnomalyKind), TokenBucket>,
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
        self.buckets
            .get_or_insert_mut((source, kind), || {
                TokenBucket::full(LOG_BURST, LOG_REFILL_PER_SECOND, now)
            })
            .take(now)
    }
}

/// `seqwatch_handshake_anomalies_total` handles per kind and labelled service, and per kind
/// for `other`, each with its service label (for the spoofing score): counting an event
/// formats nothing and looks up one map entry.
struct AnomalyCounters {
    family: IntCounterVec,
    own: HashMap<(AnomalyKind, SocketAddr), Counted>,
    other: HashMap<AnomalyKind, Counted>,
}

struct Counted {
    counter: IntCounter,
    service: Arc<str>,
}

impl AnomalyCounters {
    fn new(family: IntCounterVec) -> Self {
        AnomalyCounters {
            family,
            own: HashMap::new(),
            other: HashMap::new(),
        }
    }

    fn get(
        &mut self,
        labels: &mut ServiceLabels,
        kind: AnomalyKind,
        service: SocketAddr,
    ) -> &Counted {
        if self.own.contains_key(&(kind, service)) {
            return &self.own[&(kind, service)];
        }
        let family = &self.family;
        let counted = |service: Arc<str>| Counted {
            counter: family.with_label_values(&[kind.as_str(), &service]),
            service,
        };
        match labels.admit(service) {
            Some(service) => self
                .own
                .entry((kind, service))
                .or_insert_with(|| counted(service.to_string().into())),
            None => self
                .other
                .entry(kind)
                .or_insert_with(|| counted(OTHER_SERVICE.into())),
        }
    }

    /// Removes every series of a service that lost its label.
    fn forget(&mut self, service: SocketAddr) {
        let family = &self.family;
        self.own.retain(|(kind, own), counted| {
            let keep = *own != service;
            if !keep {
                let _ = family.remove_label_values(&[kind.as_str(), &counted.service]);
            }
            keep
        });
    }
}

/// Everything the reader task owns.
struct Engine {
    metrics: HandshakeMetrics,
    counters: HandshakeCounters,
    services: ServiceLabels,
    anomalies: AnomalyCounters,
    /// Events that may still be read this second.
    reads: TokenBucket,
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
    fn handle(&mut self, anomaly: &Anomaly, top: &mut TopSources, now_ns: u64, now: Instant) {
        let (kind, source) = (anomaly.anomaly_kind, anomaly.source.ip());
        let counted = self
            .anomalies
            .get(&mut self.services, kind, anomaly.service);
        counted.counter.inc();
        self.spoofing.observe(&counted.service, kind, now_ns);
        top.record(kind, source, now_ns);
        // The crash history is per local listening port, which an unsolicited SYN-ACK is not to.
        if kind != AnomalyKind::UnsolicitedSynAck {
            lock(&self.history).record(anomaly);
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let limiter = &mut self.limiter;
        let source_ranks = &self.source_ranks;
        log.write_limited(
            now,
            || limiter.allow(source, kind, now),
            || LogLine {
                anomaly,
                source_rank: source_ranks.get(&(kind, SourcePrefix::of(source))).copied(),
            },
        );
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
    /// Reads what the second's budget allows, so that one drain never holds the (single)
    /// runtime thread for long, whatever the kernel sends.
    fn drain(&mut self, events: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let allowed = self.reads.take_up_to(MAX_EVENTS_BURST, now) as u64;
        let top_sources = self.top_sources.clone();
        let mut top = lock(&top_sources);
        let mut read = 0;
        while read < allowed
            && let Some(item) = events.next()
        {
            read += 1;
            let Some(anomaly) =
                decode_event(&item).and_then(|e| Anomaly::from_event(&e, &self.clock))
            else {
                log::warn!("undecodable anomaly event of {} bytes ignored", item.len());
                continue;
            };
            self.handle(&anomaly, &mut top, now_ns, now);
        }
        drop(top);
        // Unused reads go back: the budget is spent on events, not on drains.
        self.reads.give_back((allowed - read) as f64);
        self.metrics.refresh(&self.counters);
        Ok(())
    }

    /// Once a second: the labels, the kernel counters, the top-sources gauge and the
    /// spoofing scores.
    fn refresh(&mut self) {
        let now_ns = monotonic_ns();
        for service in self.services.update() {
            self.anomalies.forget(service);
            let label = service.to_string();
            self.spoofing.forget(&label);
            self.metrics.spoofing.forget(&label);
        }
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

/// `seqwatch_event_log_lines_total`, `seqwatch_event_log_lines_suppressed_total{reason}` and
/// `seqwatch_event_log_rotations_total`.
#[derive(Clone)]
pub struct EventLogMetrics {
    lines: IntCounter,
    suppressed: HashMap<&'static str, IntCounter>,
    rotations: IntCounter,
}

impl EventLogMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help)?);
        let suppressed = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "seqwatch_event_log_lines_suppressed_total",
                    "Event-log lines left out, by reason: per_source (a source's limit per \
                     kind), global_rate (the log's lines per second), too_long (longer than \
                     the file's size limit), write_error.",
                ),
                &["reason"],
            )?,
        )?;
        Ok(EventLogMetrics {
            lines: counter(
                "seqwatch_event_log_lines_total",
                "Lines written to the event log.",
            )?,
            // Every reason is a series from the start.
            suppressed: SUPPRESSED_REASONS
                .into_iter()
                .map(|reason| (reason, suppressed.with_label_values(&[reason])))
                .collect(),
            rotations: counter(
                "seqwatch_event_log_rotations_total",
                "Times the event log file reached its size limit and was renamed to FILE.1 \
                 (replacing the previous one).",
            )?,
        })
    }

    fn suppressed(&self, reason: &'static str) {
        self.suppressed[reason].inc();
    }
}

/// The JSON-lines event log (`--event-log`), shared by the engines that write to it. Bounded
/// three ways: all writers together get [`LOG_LINES_PER_SECOND`] (a burst of
/// [`LOG_LINES_BURST`]); a file is renamed to `FILE.1` (replacing the previous one) before it
/// would pass `max_bytes`, so the two files never hold more than twice that; and a line that
/// cannot be written is dropped, never retried. Every line left out is counted by reason.
/// Each line is one write(2) of the whole line, so lines never interleave and nothing waits
/// in a buffer.
#[derive(Clone)]
pub struct EventLog(Arc<Mutex<LogWriter>>);

struct LogWriter {
    sink: Sink,
    budget: TokenBucket,
    metrics: EventLogMetrics,
    /// A write error is logged once, until a write succeeds again.
    failing: bool,
}

enum Sink {
    Stdout,
    File(LogFile),
}

/// The log file, renamed to `FILE.1` when the next line would take it past `max_bytes`.
struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl LogFile {
    fn open(path: &Path, max_bytes: u64) -> std::io::Result<LogFile> {
        let file = File::options().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_owned(),
            file,
            written,
            max_bytes,
        })
    }

    /// Appends a line; returns whether the file was rotated first.
    fn append(&mut self, line: &[u8]) -> std::io::Result<bool> {
        let rotate = self.written + line.len() as u64 > self.max_bytes;
        if rotate {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(rotate)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        match std::fs::rename(&self.path, &rotated) {
            // Moved away by someone else: start a new file where it was.
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        *self = LogFile::open(&self.path, self.max_bytes)?;
        Ok(())
    }
}

impl EventLog {
    /// Opens a file for appending (rotated at `max_bytes`), or stdout for `-`.
    pub fn open(path: &Path, max_bytes: u64, metrics: EventLogMetrics) -> anyhow::Result<Self> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File(
                LogFile::open(path, max_bytes)
                    .with_context(|| format!("opening the event log {}", path.display()))?,
            )
        };
        Ok(EventLog(Arc::new(Mutex::new(LogWriter {
            sink,
            budget: TokenBucket::full(LOG_LINES_BURST, LOG_LINES_PER_SECOND, Instant::now()),
            metrics,
            failing: false,
        }))))
    }

    /// Writes a line within the log's budget.
    pub fn write_line(&self, value: &impl Serialize) {
        self.write_limited(Instant::now(), || true, || value);
    }

    /// Writes the line `line` makes, if the log's budget and then `allowed` (a per-source
    /// limit) let it through; otherwise only counts it, building nothing.
    pub fn write_limited<T: Serialize>(
        &self,
        now: Instant,
        allowed: impl FnOnce() -> bool,
        line: impl FnOnce() -> T,
    ) {
        let mut writer = lock(&self.0);
        if writer.budget.available(now) < 1.0 {
            writer.metrics.suppressed("global_rate");
            return;
        }
        if !allowed() {
            writer.metrics.suppressed("per_source");
            return;
        }
        writer.budget.take(now);
        let mut bytes = match serde_json::to_vec(&line()) {
            Ok(bytes) => bytes,
            Err(err) => return writer.failed(&err.into()),
        };
        bytes.push(b'\n');
        writer.write(&bytes);
    }
}

impl LogWriter {
    fn write(&mut self, line: &[u8]) {
        let written = match &mut self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(line).map(|()| false),
            Sink::File(file) if line.len() as u64 > file.max_bytes => {
                self.metrics.suppressed("too_long");
                return;
            }
            Sink::File(file) => file.append(line),
        };
        match written {
            Ok(rotated) => {
                self.failing = false;
                self.metrics.lines.inc();
                if rotated {
                    self.metrics.rotations.inc();
                }
            }
            Err(err) => self.failed(&err.into()),
        }
    }

    fn failed(&mut self, err: &anyhow::Error) {
        self.metrics.suppressed("write_error");
        if !self.failing {
            log::error!("writing the event log: {err:#}");
            self.failing = true;
        }
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
        anomalies: AnomalyCounters::new(metrics.anomalies.clone()),
        metrics,
        counters,
        services: ServiceLabels::new(options.max_services, options.policy.clone()),
        reads: TokenBucket::full(MAX_EVENTS_BURST, MAX_EVENTS_PER_SECOND, Instant::now()),
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
    use crate::admission::LabelPolicy;

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

    /// Listeners on 10.0.0.1, ports 1 to 3, and nothing on port 4.
    fn listening_policy() -> SharedPolicy {
        let listening: Vec<SocketAddr> = (1..=3).map(service).collect();
        LabelPolicy::fixed(4096, &listening, &[IpAddr::from([10, 0, 0, 1])])
    }

    fn service(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn services_without_evidence_or_beyond_the_cap_are_other() {
        let mut labels = ServiceLabels::new(NonZeroUsize::new(2).unwrap(), listening_policy());
        assert_eq!(labels.label(service(4)), OTHER_SERVICE, "nothing listens");
        assert_eq!(labels.label(service(1)), "10.0.0.1:1");
        assert_eq!(labels.label(service(2)), "10.0.0.1:2");
        assert_eq!(labels.label(service(3)), OTHER_SERVICE, "the cap");
        assert_eq!(
            labels.label(service(1)),
            "10.0.0.1:1",
            "known ones keep theirs"
        );
    }

    #[test]
    fn a_service_that_loses_its_evidence_loses_its_label_and_its_series() {
        let policy = listening_policy();
        let registry = Registry::new();
        let family = IntCounterVec::new(Opts::new("events", "Events."), &["service"]).unwrap();
        registry.register(Box::new(family.clone())).unwrap();
        let mut labels = ServiceLabels::new(NonZeroUsize::new(8).unwrap(), policy.clone());
        let mut counters = ServiceCounters::new(family.clone());
        for port in [1, 2, 4] {
            counters.inc(&mut labels, service(port));
        }
        assert_eq!(labels.update(), [], "nothing changed");
        let later = Instant::now() + crate::admission::LISTENER_GRACE + Duration::from_secs(1);
        lock(&policy).set_listening([service(2)], later);
        // Asking about a new service on a local address takes the latest decisions too; the
        // known ones are still checked against them.
        assert_eq!(labels.admit(service(5)), None);
        let withdrawn = labels.update();
        assert_eq!(withdrawn, [service(1)]);
        for service in withdrawn {
            counters.forget(service);
        }
        let series: Vec<String> = registry.gather()[0]
            .get_metric()
            .iter()
            .map(|metric| metric.get_label()[0].value().to_owned())
            .collect();
        assert_eq!(series, ["10.0.0.1:2", OTHER_SERVICE]);
        counters.inc(&mut labels, service(1));
        assert_eq!(family.with_label_values(&[OTHER_SERVICE]).get(), 2);
    }

    #[test]
    fn service_counters_count_under_the_capped_labels() {
        let registry = Registry::new();
        let family = IntCounterVec::new(Opts::new("events", "Events."), &["service"]).unwrap();
        registry.register(Box::new(family.clone())).unwrap();
        let mut labels = ServiceLabels::new(NonZeroUsize::new(1).unwrap(), listening_policy());
        let mut counters = ServiceCounters::new(family.clone());
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
    fn flags_are_readable() {
        assert_eq!(FlagLetters(0x12).to_string(), "SA");
        assert_eq!(FlagLetters(0x29).to_string(), "FPU");
    }

    fn event_log(path: &Path, max_bytes: u64) -> (EventLog, Registry) {
        let registry = Registry::new();
        let metrics = EventLogMetrics::new(&registry).unwrap();
        (EventLog::open(path, max_bytes, metrics).unwrap(), registry)
    }

    /// `name{reason="…"}` → value for every counter of the registry.
    fn counts(registry: &Registry) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for family in registry.gather() {
            for metric in family.get_metric() {
                let labels: Vec<String> = metric
                    .get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect();
                let name = match labels.as_slice() {
                    [] => family.name().to_owned(),
                    labels => format!("{}{{{}}}", family.name(), labels.join(",")),
                };
                counts.insert(name, metric.get_counter().value() as u64);
            }
        }
        counts
    }

    #[test]
    fn the_event_log_takes_a_burst_then_its_rate_from_all_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (log, registry) = event_log(&path, DEFAULT_EVENT_LOG_MAX_BYTES);
        let start = Instant::now();
        for n in 0..3 * LOG_LINES_BURST as u64 {
            // A third of the lines are over their source's own limit.
            log.write_limited(start, || n % 3 != 0, || n);
        }
        let after_burst = counts(&registry);
        let written = LOG_LINES_BURST as u64;
        assert_eq!(after_burst["seqwatch_event_log_lines_total"], written);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(lines, written);
        let suppressed = |reason: &str| {
            after_burst[&format!("seqwatch_event_log_lines_suppressed_total{{{reason}}}")]
        };
        // Up to the 1500th line, every third was over its source's limit.
        assert_eq!(suppressed("per_source"), written / 2);
        assert_eq!(
            suppressed("global_rate"),
            3 * written - written - written / 2
        );
        let second_later = start + Duration::from_secs(1);
        for _ in 0..1000 {
            log.write_limited(second_later, || true, || "x");
        }
        assert_eq!(
            counts(&registry)["seqwatch_event_log_lines_total"],
            written + LOG_LINES_PER_SECOND as u64
        );
    }

    #[test]
    fn the_event_log_rotates_once_and_never_holds_more_than_twice_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "x".repeat(900) + "\n").unwrap();
        let (log, registry) = event_log(&path, 1000);
        let line = "y".repeat(98);
        let start = Instant::now();
        for n in 0..30u32 {
            log.write_limited(start + Duration::from_secs(n.into()), || true, || &line);
        }
        log.write_line(&"z".repeat(2000));
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        let rotated = dir.path().join("events.jsonl.1");
        assert!(size(&path) <= 1000 && size(&rotated) <= 1000);
        // The old file's 901 bytes, then 30 lines of 101: rotated before the 1st, 10th and 19th
        // and 28th line.
        assert_eq!((size(&path), size(&rotated)), (3 * 101, 9 * 101));
        let counts = counts(&registry);
        assert_eq!(counts["seqwatch_event_log_rotations_total"], 4);
        assert_eq!(counts["seqwatch_event_log_lines_total"], 30);
        assert_eq!(
            counts["seqwatch_event_log_lines_suppressed_total{too_long}"],
            1
        );
    }
}
