//! Which services earn a `service` label of their own. An attacker chooses the addresses and
//! ports it sends to, and the servers it makes this host connect to (a web page can), so a
//! label is earned by evidence, never by arrival order:
//!
//! - **A local listener.** The service's address is one of this namespace's and a socket
//!   listens on it (on that address, or on the wildcard of the port), or did within the last
//!   [`LISTENER_GRACE`]. Listeners and addresses are read from the kernel (sock_diag, the
//!   interface addresses) every second, and the listeners again at once, at most every
//!   [`LISTENERS_READ_GAP`], when a detector meets a service on a local address whose port is
//!   not known to listen (a listener opened since the last read). A SYN-ACK this host sent
//!   from a local address (an egress ISN sample, a TLS session it served) shows its listener
//!   too, however briefly it listened. With `--netns all`, a listener of a followed namespace
//!   counts for the addresses that namespace's sockets use ([`MAX_OTHER_LISTENERS`] of each).
//! - **Genuine handshakes.** Any other service (a remote server this host connects to, or a
//!   server behind it) with at least [`MIN_HANDSHAKES`] ISN samples competes for one of
//!   [`RANKED_LABELS`] labels, ranked once a second by its handshakes over about the last hour
//!   (an exponentially decayed count). A newcomer takes a free label, or displaces the
//!   labelled service with the fewest recent handshakes if it has at least
//!   [`DISPLACE_FACTOR`] times as many; either way it spends one of the hourly
//!   [`RANKED_CHANGES_PER_HOUR`] admissions (a token bucket of as many), so at most
//!   `RANKED_LABELS + 2 × RANKED_CHANGES_PER_HOUR` (192) ranked label values appear in any hour.
//!
//! Everything else is counted under `other` in the metrics and keeps its details in the JSON
//! API. Each detector holds at most `--max-services` labels of its own
//! ([`super::ServiceLabels`]), which ask this policy about each new service.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntGauge};

use crate::{export::metrics::Registry, host::sock_diag, util::token_bucket::TokenBucket};

/// ISN samples (new 4-tuples: retransmits and reuses excluded) before a service without a
/// local listener may hold a label.
pub const MIN_HANDSHAKES: u64 = 16;
/// Services labelled by their handshakes at once.
pub const RANKED_LABELS: usize = 64;
/// Admissions to the ranked labels per hour, and the burst.
pub const RANKED_CHANGES_PER_HOUR: f64 = 64.0;
/// How many times the recent handshakes of the weakest labelled service a newcomer needs to
/// displace it.
pub const DISPLACE_FACTOR: f64 = 2.0;
/// The time constant of the recent-handshakes count the ranking uses.
const RANKING_MEMORY: Duration = Duration::from_secs(3600);
/// A listener that closed keeps its services' labels this long (a restart keeps its series).
pub const LISTENER_GRACE: Duration = Duration::from_secs(3600);
/// Closed listeners remembered for the grace; the longest closed are forgotten first.
const CLOSED_LISTENERS_KEPT: usize = 4096;
/// Services of one followed namespace's listeners that count as local ones.
pub const MAX_OTHER_LISTENERS: usize = 64;
/// How often listeners and addresses are read in any case.
const READ_EVERY: Duration = Duration::from_secs(1);
/// The shortest gap between two reads of the listeners that detectors asked for.
pub const LISTENERS_READ_GAP: Duration = Duration::from_millis(50);

/// The policy, shared by the detectors and the service table.
pub type SharedPolicy = Arc<Mutex<LabelPolicy>>;

/// What the policy admits at one moment. Detectors keep one and ask it about each service
/// they have not labelled yet; a new one is published when anything changes.
#[derive(Debug, Default, PartialEq)]
pub struct Admitted {
    listening: HashSet<SocketAddr>,
    local_addresses: HashSet<IpAddr>,
    ranked: HashSet<SocketAddr>,
}

impl Admitted {
    pub fn admits(&self, service: SocketAddr) -> bool {
        self.ranked.contains(&service) || self.is_local_listener(service)
    }

    fn is_local_listener(&self, service: SocketAddr) -> bool {
        if self.listening.contains(&service) {
            return true;
        }
        let wildcards = [
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), service.port()),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), service.port()),
        ];
        self.is_local(service) && wildcards.iter().any(|w| self.listening.contains(w))
    }

    /// On one of this namespace's addresses: a listener may have opened since this was read.
    pub fn is_local(&self, service: SocketAddr) -> bool {
        self.local_addresses.contains(&service.ip())
    }
}

/// A service of the ISN scorer, as the ranking sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub service: SocketAddr,
    /// ISN samples since it was first seen.
    pub handshakes: u64,
    /// Handshakes over about the last hour (decayed with [`RANKING_MEMORY`]).
    pub recent: f64,
}

/// The weight of what a decayed count held `elapsed` ago.
pub fn ranking_decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / RANKING_MEMORY.as_secs_f64()).exp()
}

/// `seqwatch_ranked_services` and `seqwatch_ranked_service_admissions_total`.
#[derive(Clone)]
pub struct LabelMetrics {
    ranked: IntGauge,
    admissions: IntCounter,
}

impl LabelMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(LabelMetrics {
            ranked: registry.gauge(
                "seqwatch_ranked_services",
                "Services without a local listener that hold a service label by their \
                     handshakes (at most 64).",
            )?,
            admissions: registry.counter(
                "seqwatch_ranked_service_admissions_total",
                "Services given a label by their handshakes, each displacing at most one \
                     (at most 64 an hour, after a burst of 64).",
            )?,
        })
    }
}

pub struct LabelPolicy {
    /// Off in unit tests, which tell the policy what listens.
    reads_kernel: bool,
    /// Listening addresses, each with when it was last seen listening.
    listeners: HashMap<SocketAddr, Instant>,
    local_addresses: HashSet<IpAddr>,
    listeners_read_at: Option<Instant>,
    addresses_read_at: Option<Instant>,
    /// The ranked services and their recent handshakes at the last ranking.
    ranked: HashMap<SocketAddr, f64>,
    ranked_slots: usize,
    changes: TokenBucket,
    admitted: Arc<Admitted>,
    metrics: Option<LabelMetrics>,
    /// A failing read is logged once, until one succeeds again.
    read_failing: bool,
}

impl LabelPolicy {
    /// A policy that reads listeners and addresses from the kernel; `max_services` bounds the
    /// ranked labels too.
    pub fn shared(max_services: usize, metrics: LabelMetrics) -> SharedPolicy {
        let mut policy = LabelPolicy::new(max_services, true, Instant::now());
        policy.metrics = Some(metrics);
        Arc::new(Mutex::new(policy))
    }

    fn new(max_services: usize, reads_kernel: bool, now: Instant) -> Self {
        LabelPolicy {
            reads_kernel,
            listeners: HashMap::new(),
            local_addresses: HashSet::new(),
            listeners_read_at: None,
            addresses_read_at: None,
            ranked: HashMap::new(),
            ranked_slots: RANKED_LABELS.min(max_services),
            changes: TokenBucket::full(
                RANKED_CHANGES_PER_HOUR,
                RANKED_CHANGES_PER_HOUR / 3600.0,
                now,
            ),
            admitted: Arc::default(),
            metrics: None,
            read_failing: false,
        }
    }

    /// A policy told what listens instead of reading it (tests).
    pub fn fixed(
        max_services: usize,
        listening: &[SocketAddr],
        local_addresses: &[IpAddr],
    ) -> SharedPolicy {
        let now = Instant::now();
        let mut policy = LabelPolicy::new(max_services, false, now);
        policy.local_addresses = local_addresses.iter().copied().collect();
        policy.set_listening(listening.iter().copied(), now);
        Arc::new(Mutex::new(policy))
    }

    /// What is admitted now.
    pub fn admitted(&self) -> Arc<Admitted> {
        self.admitted.clone()
    }

    /// Once a second: reads the listeners and this namespace's addresses.
    pub fn tick(&mut self, now: Instant) {
        let due = |at: Option<Instant>| at.is_none_or(|at| now.duration_since(at) >= READ_EVERY);
        if self.reads_kernel && due(self.addresses_read_at) {
            self.addresses_read_at = Some(now);
            match local_addresses() {
                Ok(addresses) => self.local_addresses = addresses,
                Err(err) => self.read_failed("this namespace's addresses", &err),
            }
            self.read_listeners(now);
        }
    }

    /// What is admitted, after reading the listeners again unless they were read within the
    /// last [`LISTENERS_READ_GAP`].
    pub fn fresh_listeners(&mut self, now: Instant) -> Arc<Admitted> {
        let stale = self
            .listeners_read_at
            .is_none_or(|at| now.duration_since(at) >= LISTENERS_READ_GAP);
        if self.reads_kernel && stale {
            self.read_listeners(now);
        }
        self.admitted()
    }

    /// Services another namespace followed listens on (at most [`MAX_OTHER_LISTENERS`] of
    /// each: the caller's bound): they count as listeners read now, kept for the grace.
    pub fn note_other_listeners(&mut self, listening: impl IntoIterator<Item = SocketAddr>) {
        let now = Instant::now();
        let mut new = false;
        for listener in listening {
            new |= self.listeners.insert(listener, now).is_none();
        }
        if new {
            self.publish();
        }
    }

    /// This host showed that `listener` listens (its own stack answered a SYN from it): it
    /// counts as a listener read now, kept for the grace like any other.
    pub fn note_listener(&mut self, listener: SocketAddr, now: Instant) {
        if self.listeners.insert(listener, now).is_none() {
            self.publish();
        }
    }

    fn read_listeners(&mut self, now: Instant) {
        self.listeners_read_at = Some(now);
        match sock_diag::dump_listeners() {
            Ok(listening) => {
                self.read_failing = false;
                self.set_listening(listening, now);
            }
            Err(err) => self.read_failed("the listeners", &err),
        }
    }

    fn read_failed(&mut self, what: &str, err: &anyhow::Error) {
        if !self.read_failing {
            log::warn!("reading {what} (services keep the labels they have): {err:#}");
            self.read_failing = true;
        }
    }

    /// Listeners open now; those seen before keep their labels for [`LISTENER_GRACE`].
    pub(crate) fn set_listening(
        &mut self,
        listening: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) {
        for address in listening {
            self.listeners.insert(address, now);
        }
        self.listeners
            .retain(|_, seen| now.duration_since(*seen) < LISTENER_GRACE);
        let mut closed: Vec<(Instant, SocketAddr)> = self
            .listeners
            .iter()
            .filter(|(_, seen)| **seen < now)
            .map(|(address, seen)| (*seen, *address))
            .collect();
        if closed.len() > CLOSED_LISTENERS_KEPT {
            closed.sort_unstable();
            for (_, address) in &closed[..closed.len() - CLOSED_LISTENERS_KEPT] {
                self.listeners.remove(address);
            }
        }
        self.publish();
    }

    /// Ranks the services without a local listener by their recent handshakes (once a second).
    pub fn rerank(&mut self, candidates: &[Candidate], now: Instant) {
        let admitted = self.admitted.clone();
        let recent: HashMap<SocketAddr, f64> =
            candidates.iter().map(|c| (c.service, c.recent)).collect();
        for (service, score) in &mut self.ranked {
            *score = recent.get(service).copied().unwrap_or(0.0);
        }
        let mut newcomers: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.handshakes >= MIN_HANDSHAKES && !self.ranked.contains_key(&c.service))
            .filter(|c| !admitted.is_local_listener(c.service))
            .collect();
        newcomers.sort_by(|a, b| {
            b.recent
                .total_cmp(&a.recent)
                .then(a.service.cmp(&b.service))
        });
        let mut changed = false;
        for newcomer in newcomers {
            if !self.admit_ranked(newcomer, now) {
                break;
            }
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    /// Gives `newcomer` a free ranked label or the weakest one's; false if it may not.
    fn admit_ranked(&mut self, newcomer: &Candidate, now: Instant) -> bool {
        if self.ranked.len() >= self.ranked_slots {
            let weakest = self
                .ranked
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
                .map(|(service, score)| (*service, *score));
            match weakest {
                Some((service, score)) if newcomer.recent >= DISPLACE_FACTOR * score.max(1.0) => {
                    if !self.changes.take(now) {
                        return false;
                    }
                    self.ranked.remove(&service);
                }
                _ => return false,
            }
        } else if !self.changes.take(now) {
            return false;
        }
        self.ranked.insert(newcomer.service, newcomer.recent);
        if let Some(metrics) = &self.metrics {
            metrics.admissions.inc();
        }
        true
    }

    /// Makes the current decisions what detectors see, if they changed.
    fn publish(&mut self) {
        let admitted = Admitted {
            listening: self.listeners.keys().copied().collect(),
            local_addresses: self.local_addresses.clone(),
            ranked: self.ranked.keys().copied().collect(),
        };
        if let Some(metrics) = &self.metrics {
            metrics.ranked.set(admitted.ranked.len() as i64);
        }
        if admitted != *self.admitted {
            self.admitted = Arc::new(admitted);
        }
    }
}

/// Every address of this network namespace's interfaces.
fn local_addresses() -> anyhow::Result<HashSet<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((address, port))
    }

    fn candidate(port: u16, handshakes: u64, recent: f64) -> Candidate {
        Candidate {
            service: at([192, 0, 2, 1], port),
            handshakes,
            recent,
        }
    }

    fn admitted(policy: &SharedPolicy) -> Arc<Admitted> {
        policy.lock().unwrap().admitted()
    }

    #[test]
    fn a_listener_admits_its_local_addresses_only() {
        let local = IpAddr::from([10, 0, 0, 1]);
        let listening = [
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 80),
            at([10, 0, 0, 1], 22),
        ];
        let policy = LabelPolicy::fixed(4096, &listening, &[local]);
        let admitted = admitted(&policy);
        assert!(admitted.admits(at([10, 0, 0, 1], 80)), "the wildcard");
        assert!(admitted.admits(at([10, 0, 0, 1], 22)));
        assert!(!admitted.admits(at([10, 0, 0, 1], 81)), "nothing listens");
        assert!(
            !admitted.admits(at([10, 9, 9, 9], 80)),
            "a forged destination on the listener's port"
        );
    }

    #[test]
    fn a_closed_listener_keeps_its_label_for_the_grace() {
        let service = at([10, 0, 0, 1], 8080);
        let policy = LabelPolicy::fixed(4096, &[service], &[service.ip()]);
        let start = Instant::now();
        let mut policy = policy.lock().unwrap();
        policy.set_listening([], start + Duration::from_secs(60));
        assert!(policy.admitted().admits(service));
        policy.set_listening([], start + LISTENER_GRACE + Duration::from_secs(1));
        assert!(!policy.admitted().admits(service));
    }

    #[test]
    fn services_earn_ranked_labels_by_handshakes_at_a_bounded_rate() {
        let policy = LabelPolicy::fixed(4096, &[], &[]);
        let mut policy = policy.lock().unwrap();
        let start = Instant::now();
        let few = candidate(1, MIN_HANDSHAKES - 1, 1000.0);
        let busy = candidate(2, 500, 500.0);
        policy.rerank(&[few, busy], start);
        let admitted = policy.admitted();
        assert!(admitted.admits(busy.service));
        assert!(!admitted.admits(few.service), "too few handshakes");

        // An hour of floods: every second ten new services with enough handshakes each, the
        // last second's gone quiet. They take the free labels and then displace each other as
        // fast as the hourly admissions allow; none has the handshakes to displace the busy one.
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        for second in 0..3600u16 {
            let flood = (0..10).map(|n| candidate(100 + 10 * second + n, MIN_HANDSHAKES, 200.0));
            let candidates: Vec<Candidate> = flood.chain([busy]).collect();
            policy.rerank(&candidates, start + Duration::from_secs(second.into()));
            seen.extend(policy.admitted().ranked.iter().copied());
            assert!(policy.admitted().admits(busy.service), "second {second}");
        }
        let bound = RANKED_LABELS + 2 * RANKED_CHANGES_PER_HOUR as usize;
        assert!(
            (RANKED_LABELS..=bound).contains(&seen.len()),
            "{} ranked labels in an hour",
            seen.len()
        );
        assert_eq!(policy.ranked.len(), RANKED_LABELS);
    }

    #[test]
    fn a_newcomer_displaces_only_with_twice_the_handshakes() {
        let policy = LabelPolicy::fixed(1, &[], &[]);
        let mut policy = policy.lock().unwrap();
        let start = Instant::now();
        let incumbent = candidate(1, 100, 100.0);
        policy.rerank(&[incumbent], start);
        let close = candidate(2, 190, 190.0);
        policy.rerank(&[incumbent, close], start);
        assert!(policy.admitted().admits(incumbent.service), "190 < 2 × 100");
        let twice = candidate(3, 200, 200.0);
        policy.rerank(&[incumbent, twice], start);
        let admitted = policy.admitted();
        assert!(admitted.admits(twice.service) && !admitted.admits(incumbent.service));
    }

    #[test]
    fn local_listeners_need_no_ranked_label() {
        let service = at([10, 0, 0, 1], 443);
        let policy = LabelPolicy::fixed(4096, &[service], &[service.ip()]);
        let mut policy = policy.lock().unwrap();
        let listener = Candidate {
            service,
            handshakes: 1000,
            recent: 1000.0,
        };
        policy.rerank(&[listener], Instant::now());
        assert!(policy.ranked.is_empty());
    }
}
