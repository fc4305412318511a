//! The `service` label of every detector's metrics. Which services earn one is the label
//! policy's decision ([`admission`]); each detector holds at most `--max-services` labels of
//! its own ([`ServiceLabels`]) and counts everything else as [`OTHER_SERVICE`].

pub mod admission;
pub mod ports;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::Instant,
};

use prometheus::{IntCounter, IntCounterVec};

use crate::util::lock;
use admission::{Admitted, Candidate, SharedPolicy};

/// The service label of anomalies beyond the service cap.
pub const OTHER_SERVICE: &str = "other";

/// The service labels of one detector's metrics: a service keeps its own label while the
/// label policy admits it ([`crate::export::labels::admission`]: a local listener, or its
/// handshakes), at most `cap` at once; every other service is counted as `other`. The policy's
/// decisions are taken from a snapshot, so asking about a service locks nothing, except once per
/// [`crate::export::labels::admission::LISTENERS_READ_GAP`] for a service on a local address whose
/// port is not known to listen.
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
    /// ([`crate::export::labels::admission::LabelPolicy::rerank`]).
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

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use prometheus::{Opts, Registry};

    use super::*;
    use crate::export::labels::admission::LabelPolicy;

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
        let later = Instant::now() + admission::LISTENER_GRACE + Duration::from_secs(1);
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
}
