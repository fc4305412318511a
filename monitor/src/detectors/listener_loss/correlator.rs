//! The correlation itself: recent anomalies per local port, the listener closes waiting to be
//! judged against them, and the report of a listener lost after anomalies. Everything is
//! bounded: ports remembered (least recently hit evicted), anomalies per port, sources per
//! report, closes waiting to be judged.

use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lru::LruCache;
use prometheus::IntCounterVec;
use seqwatch_common::handshake::AnomalyKind;
use serde::Serialize;

use crate::{
    export::{event_log::EventLog, labels::ServiceLabels},
    host::netns::NetnsReport,
    kernel::namespaces::FollowedNamespaces,
    util::{clock::Clock, lock},
};
/// Ports whose recent anomalies are remembered; the least recently hit is forgotten.
const MAX_PORTS: usize = 1024;
/// Anomalies remembered per port; the oldest is forgotten.
const MAX_PER_PORT: usize = 64;
/// Sources named in one report.
pub const MAX_SOURCES: usize = 8;

/// How long a listener's close waits before it is judged, so that anomalies the kernel
/// reported just before it (read from another ring buffer) have arrived.
const JUDGE_AFTER: Duration = Duration::from_millis(1000);
/// Listener closes waiting to be judged; beyond it the oldest is judged at once.
const MAX_PENDING: usize = 1024;

/// An anomaly, as the history remembers it.
pub struct AnomalySeen {
    pub ts_ns: u64,
    pub kind: AnomalyKind,
    pub source: SocketAddr,
    pub service: SocketAddr,
}

/// Recent anomalies per local port.
pub struct AnomalyHistory {
    window_ns: u64,
    ports: LruCache<u16, VecDeque<AnomalySeen>>,
}

/// What the anomalies before a listener's loss were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precursors {
    /// The service (local address:port) of the latest anomaly.
    pub service: SocketAddr,
    pub kinds: Vec<&'static str>,
    /// Distinct sources, latest first, at most [`MAX_SOURCES`].
    pub sources: Vec<SocketAddr>,
    pub anomalies: usize,
    pub last_ts_ns: u64,
}

impl AnomalyHistory {
    pub fn new(window: Duration) -> Self {
        AnomalyHistory {
            window_ns: window.as_nanos().min(u128::from(u64::MAX)) as u64,
            ports: LruCache::new(NonZeroUsize::new(MAX_PORTS).expect("non-zero")),
        }
    }

    pub fn record(&mut self, anomaly: AnomalySeen) {
        let seen = self
            .ports
            .get_or_insert_mut(anomaly.service.port(), VecDeque::new);
        if seen.len() == MAX_PER_PORT {
            seen.pop_front();
        }
        seen.push_back(anomaly);
    }

    /// The anomalies to `port` of the services `served` accepts (the closed listener's
    /// namespace's) in the window before `closed_ns`, if any. Those are cleared from the port's
    /// history either way, so that one loss is reported once (a process with IPv4 and IPv6
    /// listeners on the port closes both); another namespace's stay.
    pub fn take_before(
        &mut self,
        port: u16,
        closed_ns: u64,
        mut served: impl FnMut(SocketAddr) -> bool,
    ) -> Option<Precursors> {
        let history = self.ports.peek_mut(&port)?;
        let (seen, others): (VecDeque<AnomalySeen>, VecDeque<AnomalySeen>) =
            history.drain(..).partition(|s| served(s.service));
        *history = others;
        if history.is_empty() {
            self.ports.pop(&port);
        }
        let since = closed_ns.saturating_sub(self.window_ns);
        let recent: Vec<&AnomalySeen> = seen
            .iter()
            .rev()
            .filter(|s| (since..=closed_ns).contains(&s.ts_ns))
            .collect();
        let latest = recent.first()?;
        let kinds: BTreeSet<&'static str> = recent.iter().map(|s| s.kind.as_str()).collect();
        let mut sources: Vec<SocketAddr> = Vec::new();
        for s in &recent {
            if sources.len() < MAX_SOURCES && !sources.contains(&s.source) {
                sources.push(s.source);
            }
        }
        Some(Precursors {
            service: latest.service,
            kinds: kinds.into_iter().collect(),
            sources,
            anomalies: recent.len(),
            last_ts_ns: latest.ts_ns,
        })
    }
}

/// The `listener_lost_after_anomaly` line of the event log.
#[derive(Clone, Debug, Serialize)]
pub struct ListenerLost {
    pub time: String,
    pub kind: &'static str,
    /// The listener's own address (often the unspecified address).
    pub listener: SocketAddr,
    pub port: u16,
    /// The service the anomalies were against (the `service` label).
    pub service: SocketAddr,
    /// The process that closed it (the one that exited, when it exited).
    pub pid: u32,
    pub process: String,
    pub anomaly_kinds: Vec<&'static str>,
    pub anomalies: usize,
    pub sources: Vec<SocketAddr>,
    pub seconds_after_last_anomaly: f64,
    /// The listener's network namespace and who it belongs to, if not the daemon's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsReport>,
}

impl ListenerLost {
    pub const KIND: &'static str = "listener_lost_after_anomaly";
}

/// A listener that closed, as the TCP event detector saw it.
pub struct ClosedListener {
    pub listener: SocketAddr,
    pub ts_ns: u64,
    /// Its namespace, if not the daemon's (`--netns all`).
    pub netns: Option<NetnsReport>,
    pub pid: u32,
    pub comm: [u8; 16],
}

/// A close waiting to be judged.
struct PendingClose {
    due: Instant,
    close: ClosedListener,
}

/// What the correlator holds: the history, the closes waiting, and what a judged loss is
/// counted and written with.
struct Correlation {
    /// Which followed namespace (`--netns all`) an anomaly's service is in.
    namespaces: FollowedNamespaces,
    history: AnomalyHistory,
    pending: VecDeque<PendingClose>,
    services: ServiceLabels,
    lost: IntCounterVec,
    log: Option<EventLog>,
    clock: Clock,
}

/// The detector's side that the handshake and TCP event detectors feed.
#[derive(Clone)]
pub struct Correlator(Arc<Mutex<Correlation>>);

impl Correlator {
    pub fn new(
        window: Duration,
        services: ServiceLabels,
        lost: IntCounterVec,
        log: Option<EventLog>,
        namespaces: FollowedNamespaces,
    ) -> Self {
        Correlator(Arc::new(Mutex::new(Correlation {
            namespaces,
            history: AnomalyHistory::new(window),
            pending: VecDeque::new(),
            services,
            lost,
            log,
            clock: Clock::now(),
        })))
    }

    /// An anomaly to a local port (the handshake detector).
    pub fn anomaly(&self, anomaly: AnomalySeen) {
        lock(&self.0).history.record(anomaly);
    }

    /// A listener of this namespace closed (the TCP event detector).
    pub fn listener_closed(&self, close: ClosedListener) {
        let mut correlation = lock(&self.0);
        if correlation.pending.len() == MAX_PENDING
            && let Some(oldest) = correlation.pending.pop_front()
        {
            correlation.judge(&oldest.close);
        }
        correlation.pending.push_back(PendingClose {
            due: Instant::now() + JUDGE_AFTER,
            close,
        });
    }

    /// Judges the closes that waited long enough.
    pub fn judge_due(&self, now: Instant) {
        lock(&self.0).judge_due(now);
    }

    /// Removes the series of services that lost their label.
    pub fn forget_withdrawn(&self) {
        lock(&self.0).forget_withdrawn();
    }
}

impl Correlation {
    fn judge_due(&mut self, now: Instant) {
        while let Some(pending) = self.pending.pop_front_if(|p| p.due <= now) {
            self.judge(&pending.close);
        }
    }

    /// Reports the close if anomalies to its port came just before it.
    fn judge(&mut self, close: &ClosedListener) {
        let port = close.listener.port();
        // Anomalies to the closing listener's namespace: to one followed (`--netns all`) if it
        // is that one's, to none followed if it is the daemon's.
        let namespaces = &self.namespaces;
        let inode = close.netns.as_ref().map(|netns| netns.inode);
        let served = |service: SocketAddr| {
            namespaces.netns_of(service.ip()).map(|netns| netns.inode) == inode
        };
        let Some(precursors) = self.history.take_before(port, close.ts_ns, served) else {
            return;
        };
        let service = self.services.label(precursors.service);
        self.lost.with_label_values(&[service.as_str()]).inc();
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
            netns: close.netns.clone(),
        };
        log::warn!(
            "listener {}{} (process {} {}) lost {:.1} s after anomalies {:?} from {:?}",
            lost.listener,
            lost.netns.as_ref().map(in_namespace).unwrap_or_default(),
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

    /// Removes the series of services that lost their label.
    fn forget_withdrawn(&mut self) {
        for service in self.services.update() {
            let _ = self.lost.remove_label_values(&[&service.to_string()]);
        }
    }
}

/// ` in network namespace N (container C, pod P)`, for the log: names where known, else IDs.
fn in_namespace(netns: &NetnsReport) -> String {
    let mut text = format!(" in network namespace {}", netns.inode);
    let [container, pod, _] = netns.identity.label_values();
    if !container.is_empty() {
        text += &format!(" (container {container})");
    }
    if !pod.is_empty() {
        text += &format!(" (pod {pod})");
    }
    text
}

fn comm_name(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn anomaly(kind: AnomalyKind, source_port: u16, service_port: u16, ts_ns: u64) -> AnomalySeen {
        AnomalySeen {
            ts_ns,
            kind,
            source: SocketAddr::from(([192, 0, 2, 7], source_port)),
            service: SocketAddr::from(([10, 0, 0, 1], service_port)),
        }
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_loss_within_the_window_names_kinds_and_sources_once() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        history.record(anomaly(AnomalyKind::SynFin, 4000, 22, 100 * SECOND));
        history.record(anomaly(AnomalyKind::NullFlags, 4001, 22, 101 * SECOND));
        history.record(anomaly(AnomalyKind::SynFin, 4000, 80, 101 * SECOND));
        let found = history.take_before(22, 105 * SECOND, |_| true).unwrap();
        assert_eq!(found.kinds, ["null_flags", "syn_fin"]);
        assert_eq!(
            found.sources,
            [
                "192.0.2.7:4001".parse().unwrap(),
                "192.0.2.7:4000".parse().unwrap()
            ]
        );
        assert_eq!(found.anomalies, 2);
        assert_eq!(found.service, "10.0.0.1:22".parse().unwrap());
        assert_eq!(
            history.take_before(22, 105 * SECOND, |_| true),
            None,
            "reported once"
        );
        assert!(
            history.take_before(80, 105 * SECOND, |_| true).is_some(),
            "ports apart"
        );
    }

    #[test]
    fn a_close_takes_its_own_namespaces_anomalies_and_leaves_the_others() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        let mut elsewhere = anomaly(AnomalyKind::SynFin, 4000, 22, 100 * SECOND);
        elsewhere.service = "10.88.0.2:22".parse().unwrap();
        history.record(elsewhere);
        history.record(anomaly(AnomalyKind::NullFlags, 4001, 22, 101 * SECOND));
        let own = |service: SocketAddr| service.ip() != "10.88.0.2".parse::<IpAddr>().unwrap();
        let found = history.take_before(22, 105 * SECOND, own).unwrap();
        assert_eq!(found.kinds, ["null_flags"]);
        assert_eq!(
            history.take_before(22, 105 * SECOND, own),
            None,
            "reported once"
        );
        let other = history.take_before(22, 105 * SECOND, |_| true).unwrap();
        assert_eq!(other.service, "10.88.0.2:22".parse().unwrap());
    }

    #[test]
    fn old_or_later_anomalies_do_not_count() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        history.record(anomaly(AnomalyKind::SynFin, 4000, 22, 100 * SECOND));
        assert_eq!(
            history.take_before(22, 111 * SECOND, |_| true),
            None,
            "too old"
        );
        history.record(anomaly(AnomalyKind::SynFin, 4000, 22, 200 * SECOND));
        assert_eq!(
            history.take_before(22, 199 * SECOND, |_| true),
            None,
            "after the close"
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        for port in 0..(MAX_PORTS as u16 + 10) {
            for source in 0..(MAX_PER_PORT as u16 + 10) {
                history.record(anomaly(AnomalyKind::SynFin, source, port, SECOND));
            }
        }
        assert_eq!(history.ports.len(), MAX_PORTS);
        assert!(
            history
                .ports
                .iter()
                .all(|(_, seen)| seen.len() == MAX_PER_PORT)
        );
        assert_eq!(
            history.take_before(0, SECOND, |_| true),
            None,
            "the oldest port went"
        );
        let last = MAX_PORTS as u16 + 9;
        let found = history.take_before(last, SECOND, |_| true).unwrap();
        assert_eq!(found.anomalies, MAX_PER_PORT);
        assert_eq!(found.sources.len(), MAX_SOURCES);
    }
}
