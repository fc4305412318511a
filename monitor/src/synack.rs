//! The SYN-ACK sampler's userspace half: turns kernel records into ISN observations, keeps one
//! scorer per service under a cap, and publishes the scores of the services with a label.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use etherparse::{TcpOptionElement, TcpOptionsIterator};
use lru::LruCache;
use prometheus::IntCounter;
use seqwatch_common::{
    Direction,
    synack::{FAMILY_IPV4, MAX_TCP_OPTIONS, SynAckRecord},
};
use serde::Serialize;

use crate::{
    admission::{Candidate, ranking_decay},
    handshake::{EventLog, ServiceLabels},
    metrics::Metrics,
    scorer::{
        Finding, IsnObservation, ScorerConfig, ServiceReport, ServiceScorer, Severity,
        TcpOptionsSummary, Verdict,
    },
    util::clock::Clock,
};

/// One SYN-ACK, decoded. Also the line format of `--sample-log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub direction: &'static str,
    /// The SYN-ACK's sender: the service whose ISN this is.
    pub server: SocketAddr,
    pub client: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub ttl: u8,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub tsval: Option<u32>,
    pub options_malformed: bool,
}

impl Sample {
    pub fn from_record(record: &SynAckRecord) -> Self {
        let (saddr, daddr) = if record.family == FAMILY_IPV4 {
            (ipv4(&record.saddr), ipv4(&record.daddr))
        } else {
            (
                IpAddr::V6(Ipv6Addr::from(record.saddr)),
                IpAddr::V6(Ipv6Addr::from(record.daddr)),
            )
        };
        let options_len = usize::from(record.options_len).min(MAX_TCP_OPTIONS);
        let mut sample = Sample {
            ts_ns: record.ts_ns,
            ifindex: record.ifindex,
            direction: Direction::from_u8(record.direction)
                .unwrap_or(Direction::Egress)
                .as_str(),
            server: SocketAddr::new(saddr, record.sport),
            client: SocketAddr::new(daddr, record.dport),
            seq: record.seq,
            ack: record.ack,
            window: record.window,
            ttl: record.ttl,
            mss: None,
            window_scale: None,
            sack_permitted: false,
            tsval: None,
            options_malformed: false,
        };
        sample.summarize_options(&record.options[..options_len]);
        sample
    }

    /// Keeps the options the scorer uses; a malformed list keeps what came before the fault.
    fn summarize_options(&mut self, options: &[u8]) {
        for option in TcpOptionsIterator::from_slice(options) {
            match option {
                Ok(TcpOptionElement::MaximumSegmentSize(mss)) => self.mss = Some(mss),
                Ok(TcpOptionElement::WindowScale(shift)) => self.window_scale = Some(shift),
                Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => {
                    self.sack_permitted = true
                }
                Ok(TcpOptionElement::Timestamp(tsval, _)) => self.tsval = Some(tsval),
                Ok(_) => {}
                Err(_) => {
                    self.options_malformed = true;
                    return;
                }
            }
        }
    }

    fn observation(&self, syncookies: bool) -> IsnObservation {
        IsnObservation {
            isn: self.seq,
            ts_ns: self.ts_ns,
            server: self.server,
            client: self.client,
            peer_isn: self.ack.wrapping_sub(1),
            options: TcpOptionsSummary {
                mss: self.mss,
                wscale: self.window_scale,
                sack_permitted: self.sack_permitted,
                tsval: self.tsval,
            },
            syncookies,
        }
    }
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

/// A service's report is computed again at most this often: a full window takes tens of
/// milliseconds to score, and a second's new samples barely move it.
pub const RESCORE_AFTER: Duration = Duration::from_secs(2);
/// And no sooner than this many times its last scoring took: a busy service's scoring then
/// stays under a quarter per cent of one CPU (a full window, ~25 ms here, is rescored about
/// every 10 s: a change of a service's generator shows within that).
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
        }
    }

    pub fn log_events_to(&mut self, log: EventLog) {
        self.event_log = Some((log, Clock::now()));
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
    pub fn rank(&mut self, metrics: &Metrics, now: Instant) {
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
            metrics.isn.remove(&service.to_string());
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
    pub fn score_stalest(&mut self, metrics: &Metrics, now: Instant) -> Option<SocketAddr> {
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
            write_weak_event(log, clock, &report);
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
}

fn write_weak_event(log: &EventLog, clock: &Clock, report: &ServiceReport) {
    let event = WeakEvent {
        time: clock.rfc3339(crate::util::clock::monotonic_ns()),
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
    };
    log.write_line(&event);
}

fn set_gauges(metrics: &Metrics, report: &ServiceReport) {
    let labels = [report.service.as_str()];
    let isn = &metrics.isn;
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

/// Counts samples per interface and direction; interface names come from the attach list.
/// The counter handles are kept (keyed by the kernel's ifindex, never by packet contents), the
/// last one used in front: looking the labels up in the metric family, or even hashing the
/// key, for every sample cost more than the rest of the sample's handling but scoring.
#[derive(Default)]
pub struct SampleCounter {
    names: HashMap<u32, String>,
    handles: HashMap<HandleKey, IntCounter>,
    last: Option<(HandleKey, IntCounter)>,
}

/// Interface index and direction.
type HandleKey = (u32, &'static str);

impl SampleCounter {
    pub fn name_interface(&mut self, ifindex: u32, name: &str) {
        self.names.insert(ifindex, name.to_owned());
        self.forget_handles();
    }

    fn forget_handles(&mut self) {
        self.handles.clear();
        self.last = None;
    }

    /// Forgets interfaces that are no longer present, returning them.
    pub fn vanished(
        &mut self,
        present: &std::collections::BTreeMap<u32, crate::interfaces::Interface>,
    ) -> Vec<(u32, String)> {
        let gone: Vec<_> = self
            .names
            .iter()
            .filter(|(index, name)| present.get(index).is_none_or(|i| i.name != **name))
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        for (index, _) in &gone {
            self.names.remove(index);
        }
        if !gone.is_empty() {
            self.forget_handles();
        }
        gone
    }

    pub fn count(&mut self, metrics: &Metrics, sample: &Sample) {
        let key = (sample.ifindex, sample.direction);
        match &self.last {
            Some((last, counter)) if *last == key => counter.inc(),
            _ => {
                let names = &self.names;
                let counter = self.handles.entry(key).or_insert_with(|| {
                    let interface = names.get(&key.0).map_or("unknown", String::as_str);
                    metrics
                        .synack_samples
                        .with_label_values(&[interface, key.1])
                });
                counter.inc();
                self.last = Some((key, counter.clone()));
            }
        }
    }
}

/// Writes every sample as one JSON line (for tests, and for offline analysis).
pub struct SampleLog(std::io::BufWriter<std::fs::File>);

impl SampleLog {
    pub fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|err| anyhow::anyhow!("cannot create sample log {}: {err}", path.display()))?;
        Ok(SampleLog(std::io::BufWriter::new(file)))
    }

    pub fn write(&mut self, sample: &Sample) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.0, sample)?;
        self.0.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.0.flush()?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use seqwatch_common::synack::FAMILY_IPV6;

    use super::*;
    use crate::admission::{LabelPolicy, MIN_HANDSHAKES};

    /// A record from 192.0.2.1:`sport` to 198.51.100.2:40000 (also used by the daemon's tests).
    pub(crate) fn record(family: u8, sport: u16, options: &[u8]) -> SynAckRecord {
        let mut record = SynAckRecord {
            ts_ns: 5,
            saddr: [0; 16],
            daddr: [0; 16],
            ifindex: 3,
            seq: 0xdead_beef,
            ack: 1_001,
            sport,
            dport: 40_000,
            window: 65_535,
            family,
            direction: Direction::Ingress as u8,
            ttl: 64,
            options_len: options.len() as u8,
            options: [0; MAX_TCP_OPTIONS],
            _pad: [0; 2],
        };
        record.options[..options.len()].copy_from_slice(options);
        record.saddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        record.daddr[..4].copy_from_slice(&[198, 51, 100, 2]);
        record
    }

    #[test]
    fn decodes_an_ipv4_record_and_its_options() {
        let options = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let sample = Sample::from_record(&record(FAMILY_IPV4, 443, &options));
        assert_eq!(sample.server, "192.0.2.1:443".parse().unwrap());
        assert_eq!(sample.client, "198.51.100.2:40000".parse().unwrap());
        assert_eq!(sample.direction, "ingress");
        assert_eq!(
            (sample.mss, sample.window_scale, sample.tsval),
            (Some(1460), Some(7), Some(9))
        );
        assert!(sample.sack_permitted && !sample.options_malformed);
        assert_eq!(sample.observation(false).peer_isn, 1_000);
    }

    #[test]
    fn decodes_ipv6_addresses_whole() {
        let mut raw = record(FAMILY_IPV6, 22, &[]);
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let sample = Sample::from_record(&raw);
        assert_eq!(sample.server, "[::1]:22".parse().unwrap());
        assert_eq!(sample.mss, None);
    }

    /// A length the kernel would never send is clamped, not trusted.
    #[test]
    fn an_overlong_options_length_is_clamped() {
        let mut raw = record(FAMILY_IPV4, 80, &[1; 40]);
        raw.options_len = 255;
        assert!(!Sample::from_record(&raw).options_malformed);
    }

    #[test]
    fn samples_are_counted_under_the_interface_name_of_the_moment() {
        let metrics = Metrics::new().unwrap();
        let mut counter = SampleCounter::default();
        let sample = Sample::from_record(&record(FAMILY_IPV4, 80, &[]));
        counter.count(&metrics, &sample);
        counter.name_interface(sample.ifindex, "eth0");
        counter.count(&metrics, &sample);
        counter.count(&metrics, &sample);
        counter.vanished(&Default::default());
        counter.count(&metrics, &sample);
        let count = |interface| {
            metrics
                .synack_samples
                .with_label_values(&[interface, "ingress"])
                .get()
        };
        assert_eq!((count("unknown"), count("eth0")), (2, 2));
    }

    /// A table of at most `cap` services, where 192.0.2.1 is a local address with
    /// `listening` ports.
    pub(crate) fn table(cap: usize, listening: &[u16]) -> ServiceTable {
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
    fn gauge_services(metrics: &Metrics) -> Vec<String> {
        use prometheus::core::Collector as _;
        let mut services: Vec<String> = metrics.isn.samples.collect()[0]
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
        let metrics = Metrics::new().unwrap();
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
        let metrics = Metrics::new().unwrap();
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
        let metrics = Metrics::new().unwrap();
        while table.score_stalest(&metrics, Instant::now()).is_some() {}
        let services: Vec<_> = table.reports().into_iter().map(|r| r.service).collect();
        assert_eq!(services, ["192.0.2.1:1", "192.0.2.1:3"]);
        assert_eq!(table.tracked(), 2);
    }

    #[test]
    fn the_stalest_waiting_service_is_scored_first() {
        let mut table = table(8, &[]);
        let metrics = Metrics::new().unwrap();
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
