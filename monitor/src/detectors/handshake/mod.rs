//! The handshake checks' userspace half: reads the kernel tracker's anomaly events (at most
//! [`MAX_EVENTS_PER_SECOND`]), counts them per kind and service (services labelled by
//! evidence, [`crate::export::labels`]; the rest `other`), ranks their sources per kind
//! ([`top_sources`]), scores blind spoofing guesses per service ([`spoofing`]), tells the
//! listener-loss detector, and writes each as one JSON line for a SIEM, rate-limited per
//! (source address, kind) and by the event log's budget ([`EventLog`]).

pub mod anomaly;
pub mod spoofing;
pub mod top_sources;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, routing::get};
use aya::maps::{Array, PerCpuHashMap};
use lru::LruCache;
use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::handshake::{
    AnomalyEvent, AnomalyKind, HandshakeCounter, protection_ticks, request_lifetime_seconds,
};
use serde::Serialize;

use crate::{
    detectors::{
        detector::{Context, Detector},
        listener_loss::correlator::{AnomalySeen, Correlator},
    },
    export::{
        event_log::EventLog,
        labels::{OTHER_SERVICE, ServiceCounters, ServiceLabels, label_of},
        metrics::Registry,
    },
    host::{netns::NetnsReport, netstat::read_tcpext},
    kernel::{
        counters::{Mirrors, PerCpuCounters},
        namespaces::FollowedNamespaces,
        reader::{RING_SCHEDULE, Reader, Rings},
        records::decode,
    },
    settings::{Directions, Settings},
    util::{
        clock::{Clock, monotonic_ns},
        lock,
        token_bucket::TokenBucket,
    },
};
use anomaly::Anomaly;
use spoofing::{ChallengeAcks, KernelGuesses, SpoofingMetrics, SpoofingScores};
use top_sources::{SharedTopSources, SourcePrefix, TopSourceMetrics, TopSources};

/// Events per (source, kind) let through at once, and refilled per second, by the log's limit.
const LOG_BURST: f64 = 10.0;
const LOG_REFILL_PER_SECOND: f64 = 1.0;
/// (source, kind) buckets remembered; the least recently used is forgotten.
const LOG_BUCKETS: usize = 4096;
/// Anomaly events read per second at most, and the burst. Beyond it they wait in the ring
/// buffer, and what overflows it the kernel counts (`seqwatch_anomaly_events_dropped_total`):
/// a flood's cost to the daemon is bounded, whatever its rate.
pub const MAX_EVENTS_PER_SECOND: f64 = 100_000.0;
const MAX_EVENTS_BURST: f64 = 10_000.0;

/// The detector, before it starts.
pub struct Handshake {
    metrics: HandshakeMetrics,
    /// Both directions are attached: the stateful checks are sound.
    stateful: bool,
    top_sources: usize,
    anomaly_window: Duration,
}

impl Handshake {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        Ok(Handshake {
            metrics: HandshakeMetrics::new(registry)?,
            stateful: settings.direction == Directions::Both,
            top_sources: settings.top_sources,
            anomaly_window: Duration::from_secs(settings.anomaly_window),
        })
    }
}

impl Detector for Handshake {
    fn name(&self) -> &'static str {
        "anomaly"
    }

    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let name = self.name();
        if self.stateful {
            enable_tracking(ctx.object.map_mut("HANDSHAKE_CONFIG")?)?;
        }
        let counters = Arc::new(ctx.object.take::<PerCpuCounters>("HANDSHAKE_COUNTERS")?);
        self.metrics.mirror(counters.clone(), ctx.registry);
        let kernel_guesses = KernelGuesses::new(
            ctx.object
                .take::<PerCpuHashMap<_, _, _>>("KERNEL_GUESSES")?,
        );
        let top_sources = TopSources::shared(self.top_sources, self.anomaly_window);
        let served = top_sources.clone();
        ctx.api.add(
            "/api/v1/anomalies/top-sources",
            "top anomaly sources per kind, JSON",
            get(move || {
                let report = lock(&served).report(monotonic_ns());
                async move { Json(report) }
            }),
        );
        let metrics = self.metrics;
        let reader = AnomalyReader {
            anomalies: AnomalyCounters::new(metrics.anomalies.clone()),
            kernel_guess_counters: ServiceCounters::new(metrics.kernel_guesses.clone()),
            metrics,
            counters,
            services: ctx.service_labels(),
            reads: TokenBucket::full(MAX_EVENTS_BURST, MAX_EVENTS_PER_SECOND, Instant::now()),
            limiter: RateLimiter::default(),
            log: ctx.shared.event_log.clone(),
            namespaces: ctx.shared.namespaces.clone(),
            listener_loss: ctx.shared.listener_loss.clone(),
            clock: Clock::now(),
            top_sources,
            source_ranks: HashMap::new(),
            spoofing: SpoofingScores::new(self.anomaly_window),
            challenge_acks: ChallengeAcks::new(self.anomaly_window),
            kernel_guesses,
        };
        let events = Rings::one(ctx.object.take("ANOMALY_EVENTS")?)?;
        ctx.tasks.spawn(name, events, RING_SCHEDULE, None, reader);
        Ok(())
    }
}

/// Turns on the handshake tracker's stateful checks: only sound when both directions are
/// attached, so that it sees SYNs coming in and SYN-ACKs going out. Open handshakes are
/// protected from eviction for as long as this namespace's kernel keeps a request.
fn enable_tracking(mut config: Array<&mut aya::maps::MapData, u32>) -> anyhow::Result<()> {
    let lifetime = request_lifetime_seconds(synack_retries());
    config.set(1, &protection_ticks(lifetime), 0)?;
    // Non-zero: on; and the seed of the state table's slot hash, secret so that a remote
    // host cannot pick 4-tuples that take a given handshake's slot.
    let seed = rand::random::<u32>() | 1;
    config.set(0, &seed, 0)?;
    Ok(())
}

/// This namespace's `net.ipv4.tcp_synack_retries`, or the kernel's default (5) if unreadable.
fn synack_retries() -> u8 {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_synack_retries";
    match std::fs::read_to_string(PATH).map(|text| text.trim().parse::<u8>()) {
        Ok(Ok(retries)) => retries,
        other => {
            log::warn!(
                "reading {PATH} ({other:?}): open handshakes are protected as for 5 retries"
            );
            5
        }
    }
}

/// The detector's metrics.
pub struct HandshakeMetrics {
    pub anomalies: IntCounterVec,
    pub events_dropped: IntCounter,
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
        let counter = |name: &str, help: &str| registry.counter(name, help);
        Ok(HandshakeMetrics {
            anomalies: registry.counters(
                "seqwatch_handshake_anomalies_total",
                "TCP handshake and flag anomalies, by kind and local service \
                         (services without a listener or handshakes of their own, or beyond \
                         the cap, are \"other\").",
                &["kind", "service"],
            )?,
            events_dropped: counter(
                "seqwatch_anomaly_events_dropped_total",
                "Anomaly events lost in the kernel because their ring buffer was full.",
            )?,
            tfo_syns: counter(
                "seqwatch_tfo_syns_total",
                "SYNs carrying data with a TCP Fast Open option (legitimate, not anomalies).",
            )?,
            state_lookups: counter(
                "seqwatch_handshake_state_lookups_total",
                "Segments that went to the kernel tracker's state table (a lookup, or a new SYN's insert).",
            )?,
            state_evicted: registry.counters(
                "seqwatch_handshake_state_evicted_total",
                "Handshake states the kernel tracker dropped to make room for a new \
                         handshake, by what they were: a SYN-cookie handshake, a SYN not \
                         answered, a completed handshake, an open one past its protection.",
                &["reason"],
            )?,
            state_refused: counter(
                "seqwatch_handshake_state_refused_total",
                "New handshakes the kernel tracker did not track: their state set (or filter \
                 set) held only open handshakes still protected from eviction.",
            )?,
            kernel_guesses: registry.counters(
                "seqwatch_spoofing_kernel_guesses_total",
                "ACKs a listener of the service answered with a reset for their flags \
                         (no handshake of its own, or a wrong ack) that the kernel tracker had \
                         no state to judge: blind guesses (or ACK scans) counted from the \
                         kernel's verdict alone (services beyond the cap are \"other\").",
                &["service"],
            )?,
            top_sources: TopSourceMetrics::new(registry)?,
            spoofing: SpoofingMetrics::new(registry)?,
        })
    }

    /// The tracker's kernel counters, mirrored before each scrape.
    fn mirror(&self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(
            HandshakeCounter::EventsDropped as u32,
            self.events_dropped.clone(),
        );
        mirrors.add(HandshakeCounter::TfoSyns as u32, self.tfo_syns.clone());
        mirrors.add(
            HandshakeCounter::StateLookups as u32,
            self.state_lookups.clone(),
        );
        for (reason, counter) in EVICTION_REASONS {
            mirrors.add(
                counter as u32,
                self.state_evicted.with_label_values(&[reason]),
            );
        }
        mirrors.add(
            HandshakeCounter::StateRefused as u32,
            self.state_refused.clone(),
        );
        registry.before_scrape(move || mirrors.refresh());
    }
}

/// The `reason` labels of `seqwatch_handshake_state_evicted_total`, and their counters.
const EVICTION_REASONS: [(&str, HandshakeCounter); 4] = [
    ("cookie", HandshakeCounter::EvictedCookie),
    ("unanswered", HandshakeCounter::EvictedUnanswered),
    ("completed", HandshakeCounter::EvictedCompleted),
    ("expired", HandshakeCounter::EvictedExpired),
];

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

/// The detector's task.
struct AnomalyReader {
    metrics: HandshakeMetrics,
    counters: Arc<PerCpuCounters>,
    services: ServiceLabels,
    anomalies: AnomalyCounters,
    /// Events that may still be read this second.
    reads: TokenBucket,
    limiter: RateLimiter,
    log: Option<EventLog>,
    namespaces: FollowedNamespaces,
    listener_loss: Option<Correlator>,
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
    /// The followed namespace (`--netns all`) serving the service, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsReport>,
}

impl AnomalyReader {
    fn handle(&mut self, anomaly: &Anomaly, top: &mut TopSources, now_ns: u64, now: Instant) {
        let (kind, source) = (anomaly.anomaly_kind, anomaly.source.ip());
        let counted = self
            .anomalies
            .get(&mut self.services, kind, anomaly.service);
        counted.counter.inc();
        self.spoofing.observe(&counted.service, kind, now_ns);
        top.record(kind, source, now_ns);
        // The crash history is per local listening port, which an unsolicited SYN-ACK is not to.
        if kind != AnomalyKind::UnsolicitedSynAck
            && let Some(listener_loss) = &self.listener_loss
        {
            listener_loss.anomaly(AnomalySeen {
                ts_ns: anomaly.ts_ns,
                kind,
                source: anomaly.source,
                service: anomaly.service,
            });
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let limiter = &mut self.limiter;
        let (source_ranks, namespaces) = (&self.source_ranks, &self.namespaces);
        log.write_limited(
            now,
            || limiter.allow(source, kind, now),
            || LogLine {
                anomaly,
                source_rank: source_ranks.get(&(kind, SourcePrefix::of(source))).copied(),
                netns: namespaces.netns_of(anomaly.service.ip()),
            },
        );
    }
}

impl AnomalyReader {
    /// The guesses only the kernel saw since the last refresh, into their services' counters
    /// and spoofing scores.
    fn count_kernel_guesses(&mut self, now_ns: u64) {
        let unkeyed = self
            .counters
            .read(HandshakeCounter::KernelGuessesUnkeyed as u32);
        for (service, guesses) in self.kernel_guesses.read(unkeyed) {
            let admitted = service.and_then(|service| self.services.admit(service));
            self.kernel_guess_counters.add(admitted, guesses);
            self.spoofing
                .add_guesses(&label_of(admitted), guesses, now_ns);
        }
    }
}

impl Reader for AnomalyReader {
    /// Reads what the second's budget allows, so that one read never holds the (single)
    /// runtime thread for long, whatever the kernel sends.
    fn read(&mut self, rings: &mut Rings) -> anyhow::Result<()> {
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let allowed = self.reads.take_up_to(MAX_EVENTS_BURST, now) as usize;
        let top_sources = self.top_sources.clone();
        let mut top = lock(&top_sources);
        let read = rings.drain(allowed, |item| {
            match decode::<AnomalyEvent>(item).and_then(|e| Anomaly::from_event(&e, &self.clock)) {
                Some(anomaly) => self.handle(&anomaly, &mut top, now_ns, now),
                None => log::warn!("undecodable anomaly event of {} bytes ignored", item.len()),
            }
        });
        drop(top);
        // Unused reads go back: the budget is spent on events, not on reads.
        self.reads.give_back((allowed - read) as f64);
        Ok(())
    }

    /// Once a second: the labels, the top-sources gauge and the spoofing scores.
    fn refresh(&mut self) -> anyhow::Result<()> {
        let now_ns = monotonic_ns();
        for service in self.services.update() {
            self.anomalies.forget(service);
            let label = service.to_string();
            self.spoofing.forget(&label);
            self.metrics.spoofing.forget(&label);
        }
        self.source_ranks = self
            .metrics
            .top_sources
            .publish(&lock(&self.top_sources), now_ns);
        self.challenge_acks.observe(read_tcpext().as_ref(), now_ns);
        self.count_kernel_guesses(now_ns);
        self.metrics
            .spoofing
            .publish(&self.spoofing, &self.challenge_acks, now_ns);
        Ok(())
    }
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
    use std::time::Duration;

    use super::*;

    /// `docs/anomalies.md` carries the table generated from the code: it cannot drift.
    #[test]
    fn the_docs_table_is_the_generated_one() {
        let docs = include_str!("../../../../docs/anomalies.md");
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/anomalies.md is out of date; replace its table with:\n\n{table}"
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
}
