//! One ISN scorer per service, under a cap, and the scores of the services with a label.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use seqwatch_common::Direction;
use serde::Serialize;

use super::{metrics::IsnMetrics, sample::Sample};
use crate::{
    export::{
        event_log::EventLog,
        labels::{
            ServiceLabels,
            admission::{Candidate, ranking_decay},
        },
    },
    host::netns::NetnsReport,
    kernel::namespaces::FollowedNamespaces,
    scorer::{Finding, ScorerConfig, ServiceReport, ServiceScorer, Severity, Verdict},
    util::clock::{Clock, monotonic_ns},
};

/// A service's report is computed again at most this often: a full window takes tens of
/// milliseconds to score, and a second's new samples barely move it.
pub const RESCORE_AFTER: Duration = Duration::from_secs(2);
/// And no sooner than this many times its last scoring took, so that rescoring a busy
/// service stays under a quarter per cent of one CPU whatever its window costs to score.
const RESCORE_COST_FACTOR: u32 = 400;

struct ServiceState {
    scorer: ServiceScorer,
    /// New samples since the last published report.
    dirty: bool,
    /// When the service was last scored; `None` before its first report.
    scored_at: Option<Instant>,
    /// How long after `scored_at` it may be scored again.
    rescore_after: Duration,
    report: Option<ServiceReport>,
    /// Its gauges show `report` (it has a label).
    published: bool,
    /// Handshakes over about the last hour, for the label ranking, and the samples it counted.
    recent: f64,
    ranked_samples: u64,
}

/// One scorer per service, at most `cap`. A newcomer beyond the cap evicts the least recently
/// seen service without a label ([`ServiceLabels`]): a flood of new services never evicts a
/// service labelled for its listener or its handshakes. Only labelled services have gauges;
/// every service has its report in the JSON API.
pub struct ServiceTable {
    /// Unbounded to lru, capped here: `LruCache::new` would reserve a slot for every service
    /// of the cap up front.
    services: LruCache<SocketAddr, ServiceState>,
    cap: usize,
    labels: ServiceLabels,
    config: ScorerConfig,
    ranked_at: Option<Instant>,
    /// Where an `isn_weak` line goes when a service's verdict turns weak.
    event_log: Option<(EventLog, Clock)>,
    namespaces: FollowedNamespaces,
}

/// The event-log line written when a service's ISN generator is first judged weak (again
/// after a report that was not): its weaknesses, e.g. the generator recognised.
#[derive(Serialize)]
struct WeakEvent<'a> {
    time: String,
    kind: &'static str,
    service: &'a str,
    samples: u64,
    guess_bits: Option<f64>,
    attack_feasibility: Option<f64>,
    findings: Vec<&'a Finding>,
    /// The followed namespace (`--netns all`) serving it, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsReport>,
}

/// A service's report as `/api/v1/services` serves it.
#[derive(Serialize)]
pub struct ServedReport {
    #[serde(flatten)]
    pub report: ServiceReport,
    /// The followed namespace (`--netns all`) with the service's address, if one has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsReport>,
}

impl ServiceTable {
    pub fn new(cap: NonZeroUsize, config: ScorerConfig, labels: ServiceLabels) -> Self {
        ServiceTable {
            services: LruCache::unbounded(),
            cap: cap.get(),
            labels,
            config,
            ranked_at: None,
            event_log: None,
            namespaces: FollowedNamespaces::default(),
        }
    }

    pub fn log_events_to(&mut self, log: EventLog) {
        self.event_log = Some((log, Clock::now()));
    }

    /// Names the services of the other namespaces followed (`--netns all`).
    pub fn name_namespaces_with(&mut self, namespaces: FollowedNamespaces) {
        self.namespaces = namespaces;
    }

    /// Feeds one sample to its service's scorer; returns the service evicted to make room.
    pub fn ingest(&mut self, sample: &Sample, syncookies: bool) -> Option<SocketAddr> {
        let observation = sample.observation(syncookies);
        if let Some(state) = self.seen_again(&sample.server) {
            state.scorer.ingest(&observation);
            state.dirty = true;
            return None;
        }
        if sample.direction == Direction::Egress.as_str() {
            // This host's own SYN-ACK: on a local address, its listener's evidence.
            self.labels.admit_server(sample.server);
        }
        let evicted = (self.services.len() >= self.cap)
            .then(|| self.evict())
            .flatten();
        let mut scorer = ServiceScorer::new(&self.config);
        scorer.ingest(&observation);
        let state = ServiceState {
            scorer,
            dirty: true,
            scored_at: None,
            rescore_after: RESCORE_AFTER,
            report: None,
            published: false,
            recent: 0.0,
            ranked_samples: 0,
        };
        self.services.push(sample.server, state);
        evicted
    }

    /// Removes the least recently seen service without a label (labelled ones it passes are
    /// moved to the front, so the next search does not pass them again); the least recently
    /// seen of all if every one has a label.
    fn evict(&mut self) -> Option<SocketAddr> {
        for _ in 0..self.services.len() {
            let (&oldest, _) = self.services.peek_lru()?;
            if self.labels.admit(oldest).is_none() {
                self.services.pop_lru();
                return Some(oldest);
            }
            self.services.promote(&oldest);
        }
        let (oldest, _) = self.services.pop_lru()?;
        self.labels.forget(oldest);
        Some(oldest)
    }

    /// A known service's state, now the most recently seen. A busy service's samples come in
    /// runs, so the most recent one is checked first, which needs no hashing and no relinking.
    fn seen_again(&mut self, service: &SocketAddr) -> Option<&mut ServiceState> {
        if self
            .services
            .peek_mru()
            .is_some_and(|(mru, _)| mru == service)
        {
            return self.services.iter_mut().next().map(|(_, state)| state);
        }
        self.services.get_mut(service)
    }

    /// Once a second: offers the services' handshakes to the label ranking, removes the
    /// gauges of services that lost their label and publishes those of services that gained
    /// one.
    pub fn rank(&mut self, metrics: &IsnMetrics, now: Instant) {
        let decay = self
            .ranked_at
            .map_or(1.0, |at| ranking_decay(now.saturating_duration_since(at)));
        self.ranked_at = Some(now);
        let mut candidates = Vec::with_capacity(self.services.len());
        for (service, state) in self.services.iter_mut() {
            let samples = state.scorer.samples();
            state.recent = state.recent * decay + (samples - state.ranked_samples) as f64;
            state.ranked_samples = samples;
            candidates.push(Candidate {
                service: *service,
                handshakes: samples,
                recent: state.recent,
            });
        }
        self.labels.rerank(&candidates, now);
        for service in self.labels.update() {
            metrics.remove_scores(&service.to_string());
            if let Some(state) = self.services.peek_mut(&service) {
                state.published = false;
            }
        }
        for (service, state) in self.services.iter_mut() {
            if state.published || self.labels.admit(*service).is_none() {
                continue;
            }
            if let Some(report) = &state.report {
                set_gauges(metrics, report);
                state.published = true;
            }
        }
    }

    /// Scores the service with new samples whose report is the stalest (never-scored ones
    /// first), publishes its gauges if it has a label, and returns it; `None` when no service
    /// is waiting.
    pub fn score_stalest(&mut self, metrics: &IsnMetrics, now: Instant) -> Option<SocketAddr> {
        let service = self
            .services
            .iter()
            .filter(|(_, state)| {
                state.dirty
                    && state
                        .scored_at
                        .is_none_or(|at| now.duration_since(at) >= state.rescore_after)
            })
            .min_by_key(|(_, state)| state.scored_at)
            .map(|(service, _)| *service)?;
        let labelled = self.labels.admit(service).is_some();
        let state = self.services.peek_mut(&service)?;
        state.dirty = false;
        state.scored_at = Some(now);
        let started = Instant::now();
        let report = state.scorer.report(&service.to_string());
        state.rescore_after = RESCORE_AFTER.max(started.elapsed() * RESCORE_COST_FACTOR);
        if labelled {
            set_gauges(metrics, &report);
            state.published = true;
        }
        let was_weak = state
            .report
            .as_ref()
            .is_some_and(|r| r.verdict == Verdict::Weak);
        if report.verdict == Verdict::Weak
            && !was_weak
            && let Some((log, clock)) = &self.event_log
        {
            let netns = self.namespaces.netns_of(service.ip());
            write_weak_event(log, clock, &report, netns);
        }
        state.report = Some(report);
        Some(service)
    }

    pub fn tracked(&self) -> usize {
        self.services.len()
    }

    /// Services with samples that their published report does not include yet.
    pub fn backlog(&self) -> usize {
        self.services
            .iter()
            .filter(|(_, state)| state.dirty)
            .count()
    }

    /// The latest report of every service, as served by the JSON endpoint.
    pub fn reports(&self) -> Vec<ServiceReport> {
        let mut reports: Vec<_> = self
            .services
            .iter()
            .filter_map(|(_, state)| state.report.clone())
            .collect();
        reports.sort_by(|a, b| a.service.cmp(&b.service));
        reports
    }

    /// [`Self::reports`], each with the followed namespace serving it.
    pub fn served_reports(&self) -> Vec<ServedReport> {
        let mut served: Vec<_> = self
            .services
            .iter()
            .filter_map(|(service, state)| {
                Some(ServedReport {
                    report: state.report.clone()?,
                    netns: self.namespaces.netns_of(service.ip()),
                })
            })
            .collect();
        served.sort_by(|a, b| a.report.service.cmp(&b.report.service));
        served
    }
}

fn write_weak_event(
    log: &EventLog,
    clock: &Clock,
    report: &ServiceReport,
    netns: Option<NetnsReport>,
) {
    let event = WeakEvent {
        time: clock.rfc3339(monotonic_ns()),
        kind: "isn_weak",
        service: &report.service,
        samples: report.samples,
        guess_bits: report.guess_bits,
        attack_feasibility: report.attack_feasibility,
        findings: report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Weakness)
            .collect(),
        netns,
    };
    log.write_line(&event);
}

fn set_gauges(isn: &IsnMetrics, report: &ServiceReport) {
    let labels = [report.service.as_str()];
    isn.samples
        .with_label_values(&labels)
        .set(report.samples as i64);
    isn.weak
        .with_label_values(&labels)
        .set(i64::from(report.verdict == Verdict::Weak));
    if let Some(bits) = report.guess_bits {
        isn.guess_bits.with_label_values(&labels).set(bits);
    }
    if let Some(feasibility) = report.attack_feasibility {
        isn.attack_feasibility
            .with_label_values(&labels)
            .set(feasibility);
    }
    if let Some(nmap) = &report.nmap {
        isn.nmap_sp.with_label_values(&labels).set(nmap.sp.into());
        isn.nmap_gcd.with_label_values(&labels).set(nmap.gcd.into());
        isn.nmap_isr.with_label_values(&labels).set(nmap.isr.into());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::IpAddr;

    use seqwatch_common::synack::FAMILY_IPV4;

    use super::*;
    use crate::{
        detectors::isn::sample::tests::record,
        export::{
            labels::admission::{LabelPolicy, MIN_HANDSHAKES},
            metrics::Registry,
        },
    };

    /// A table of at most `cap` services, where 192.0.2.1 is a local address with
    /// `listening` ports.
    pub(in crate::detectors::isn) fn table(cap: usize, listening: &[u16]) -> ServiceTable {
        let local = IpAddr::from([192, 0, 2, 1]);
        let listening: Vec<SocketAddr> = listening
            .iter()
            .map(|port| SocketAddr::new(local, *port))
            .collect();
        let cap = NonZeroUsize::new(cap).unwrap();
        let policy = LabelPolicy::fixed(cap.get(), &listening, &[local]);
        ServiceTable::new(
            cap,
            ScorerConfig::default(),
            ServiceLabels::new(cap, policy),
        )
    }

    /// A SYN-ACK of 192.0.2.1:`port` to its `client`-th client.
    fn sample_to(port: u16, client: u16) -> Sample {
        let mut sample = Sample::from_record(&record(FAMILY_IPV4, port, &[]));
        sample.client.set_port(client);
        sample.seq = u32::from(client) * 7919;
        sample
    }

    /// The services with a `seqwatch_isn_samples` series.
    fn gauge_services(metrics: &IsnMetrics) -> Vec<String> {
        use prometheus::core::Collector as _;
        let mut services: Vec<String> = metrics.samples.collect()[0]
            .get_metric()
            .iter()
            .map(|metric| metric.get_label()[0].value().to_owned())
            .collect();
        services.sort();
        services
    }

    #[test]
    fn a_flood_of_new_services_never_evicts_a_labelled_one() {
        let mut table = table(4, &[443]);
        let metrics = IsnMetrics::new(&Registry::default()).unwrap();
        let listener = sample_to(443, 1);
        table.ingest(&listener, false);
        let mut evicted = 0;
        for port in 1000..3000 {
            evicted += usize::from(table.ingest(&sample_to(port, 1), false).is_some());
            if port % 100 == 0 {
                table.ingest(&sample_to(443, port), false);
            }
        }
        assert_eq!(evicted, 2000 - 3);
        assert_eq!(table.tracked(), 4);
        while table.score_stalest(&metrics, Instant::now()).is_some() {}
        let reports = table.reports();
        let kept = reports.iter().find(|r| r.service == "192.0.2.1:443");
        assert_eq!(
            kept.map(|r| r.samples),
            Some(21),
            "every sample of it scored"
        );
        assert_eq!(
            gauge_services(&metrics),
            ["192.0.2.1:443"],
            "gauges only for labels"
        );
    }

    #[test]
    fn handshakes_earn_a_label_and_its_gauges() {
        let mut table = table(8, &[]);
        let metrics = IsnMetrics::new(&Registry::default()).unwrap();
        let start = Instant::now();
        for client in 0..MIN_HANDSHAKES as u16 {
            table.ingest(&sample_to(80, client), false);
            table.ingest(&sample_to(81, 0), false);
        }
        while table.score_stalest(&metrics, start).is_some() {}
        assert_eq!(
            gauge_services(&metrics),
            Vec::<String>::new(),
            "not ranked yet"
        );
        table.rank(&metrics, start);
        assert_eq!(
            gauge_services(&metrics),
            ["192.0.2.1:80"],
            "81 repeated one handshake"
        );
    }

    #[test]
    fn the_least_recently_seen_service_is_evicted_at_the_cap() {
        let mut table = table(2, &[]);
        let sample = |port| Sample::from_record(&record(FAMILY_IPV4, port, &[]));
        assert_eq!(table.ingest(&sample(1), false), None);
        assert_eq!(table.ingest(&sample(2), false), None);
        assert_eq!(
            table.ingest(&sample(1), false),
            None,
            "1 is now the most recent"
        );
        let evicted = table.ingest(&sample(3), false);
        assert_eq!(evicted, Some("192.0.2.1:2".parse().unwrap()));
        let metrics = IsnMetrics::new(&Registry::default()).unwrap();
        while table.score_stalest(&metrics, Instant::now()).is_some() {}
        let services: Vec<_> = table.reports().into_iter().map(|r| r.service).collect();
        assert_eq!(services, ["192.0.2.1:1", "192.0.2.1:3"]);
        assert_eq!(table.tracked(), 2);
    }

    #[test]
    fn the_stalest_waiting_service_is_scored_first() {
        let mut table = table(8, &[]);
        let metrics = IsnMetrics::new(&Registry::default()).unwrap();
        let sample = |port| Sample::from_record(&record(FAMILY_IPV4, port, &[]));
        let start = Instant::now();
        let score = |table: &mut ServiceTable, at: u64| {
            table
                .score_stalest(&metrics, start + Duration::from_secs(at))
                .map(|service| service.port())
        };
        table.ingest(&sample(1), false);
        assert_eq!(score(&mut table, 0), Some(1));
        table.ingest(&sample(2), false);
        assert_eq!(score(&mut table, 1), Some(2));
        assert_eq!(score(&mut table, 1), None, "nothing new to score");
        for port in [2, 1, 3] {
            table.ingest(&sample(port), false);
        }
        assert_eq!(table.backlog(), 3);
        assert_eq!(score(&mut table, 1), Some(3), "never scored: at once");
        assert_eq!(
            score(&mut table, 1),
            None,
            "the others were scored too recently"
        );
        let order: Vec<_> = (0..3).filter_map(|_| score(&mut table, 10)).collect();
        assert_eq!(order, [1, 2], "then the stalest first");
        assert_eq!(table.backlog(), 0);
    }
}
