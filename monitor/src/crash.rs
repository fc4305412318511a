//! Crash correlation: a listener that closes (or whose process exits) within a window after
//! an anomalous handshake to its port is reported as `listener_lost_after_anomaly`, naming the
//! anomaly kinds and the sources seen just before. The handshake engine records anomalies
//! here; the TCP event reader asks when a listener closes. Everything is bounded: ports
//! remembered (least recently hit evicted), anomalies per port, sources per report.

use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

use lru::LruCache;
use seqwatch_common::handshake::AnomalyKind;
use serde::Serialize;

use crate::handshake::Anomaly;

/// The default window between an anomaly and the loss of its listener.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Ports whose recent anomalies are remembered; the least recently hit is forgotten.
const MAX_PORTS: usize = 1024;
/// Anomalies remembered per port; the oldest is forgotten.
const MAX_PER_PORT: usize = 64;
/// Sources named in one report.
pub const MAX_SOURCES: usize = 8;

/// The history, shared by the handshake engine (writer) and the TCP event reader.
pub type SharedHistory = Arc<Mutex<AnomalyHistory>>;

struct Seen {
    ts_ns: u64,
    kind: AnomalyKind,
    source: SocketAddr,
    service: SocketAddr,
}

/// Recent anomalies per local port.
pub struct AnomalyHistory {
    window_ns: u64,
    ports: LruCache<u16, VecDeque<Seen>>,
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

    pub fn shared(window: Duration) -> SharedHistory {
        Arc::new(Mutex::new(Self::new(window)))
    }

    pub fn record(&mut self, anomaly: &Anomaly) {
        let seen = self
            .ports
            .get_or_insert_mut(anomaly.service.port(), VecDeque::new);
        if seen.len() == MAX_PER_PORT {
            seen.pop_front();
        }
        seen.push_back(Seen {
            ts_ns: anomaly.ts_ns,
            kind: anomaly.anomaly_kind,
            source: anomaly.source,
            service: anomaly.service,
        });
    }

    /// The anomalies to `port` in the window before `closed_ns`, if any. The port's history
    /// is cleared either way, so that one loss is reported once (a process with IPv4 and IPv6
    /// listeners on the port closes both).
    pub fn take_before(&mut self, port: u16, closed_ns: u64) -> Option<Precursors> {
        let seen = self.ports.pop(&port)?;
        let since = closed_ns.saturating_sub(self.window_ns);
        let recent: Vec<&Seen> = seen
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
}

impl ListenerLost {
    pub const KIND: &'static str = "listener_lost_after_anomaly";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::clock::Clock;

    fn anomaly(kind: AnomalyKind, source_port: u16, service_port: u16, ts_ns: u64) -> Anomaly {
        let event = seqwatch_common::handshake::AnomalyEvent {
            ts_ns,
            saddr: [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ifindex: 2,
            seq: 1,
            ack: 0,
            expected_seq: 0,
            expected_ack: 0,
            sport: source_port,
            dport: service_port,
            payload_len: 0,
            family: seqwatch_common::synack::FAMILY_IPV4,
            direction: seqwatch_common::Direction::Ingress as u8,
            kind: kind as u8,
            flags: 0,
            _pad: [0; 2],
        };
        Anomaly::from_event(&event, &Clock::now()).unwrap()
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_loss_within_the_window_names_kinds_and_sources_once() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        history.record(&anomaly(AnomalyKind::SynFin, 4000, 22, 100 * SECOND));
        history.record(&anomaly(AnomalyKind::NullFlags, 4001, 22, 101 * SECOND));
        history.record(&anomaly(AnomalyKind::SynFin, 4000, 80, 101 * SECOND));
        let found = history.take_before(22, 105 * SECOND).unwrap();
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
        assert_eq!(history.take_before(22, 105 * SECOND), None, "reported once");
        assert!(
            history.take_before(80, 105 * SECOND).is_some(),
            "ports apart"
        );
    }

    #[test]
    fn old_or_later_anomalies_do_not_count() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        history.record(&anomaly(AnomalyKind::SynFin, 4000, 22, 100 * SECOND));
        assert_eq!(history.take_before(22, 111 * SECOND), None, "too old");
        history.record(&anomaly(AnomalyKind::SynFin, 4000, 22, 200 * SECOND));
        assert_eq!(
            history.take_before(22, 199 * SECOND),
            None,
            "after the close"
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut history = AnomalyHistory::new(Duration::from_secs(10));
        for port in 0..(MAX_PORTS as u16 + 10) {
            for source in 0..(MAX_PER_PORT as u16 + 10) {
                history.record(&anomaly(AnomalyKind::SynFin, source, port, SECOND));
            }
        }
        assert_eq!(history.ports.len(), MAX_PORTS);
        assert!(
            history
                .ports
                .iter()
                .all(|(_, seen)| seen.len() == MAX_PER_PORT)
        );
        assert_eq!(history.take_before(0, SECOND), None, "the oldest port went");
        let last = MAX_PORTS as u16 + 9;
        let found = history.take_before(last, SECOND).unwrap();
        assert_eq!(found.anomalies, MAX_PER_PORT);
        assert_eq!(found.sources.len(), MAX_SOURCES);
    }
}
