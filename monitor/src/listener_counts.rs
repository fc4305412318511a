//! Per listening port: SYNs received, SYN-ACKs sent and handshakes completed, from the kernel's
//! per-port counters (`LISTENER_PORT_COUNTS`, one slot per TCP port, see
//! `seqwatch_common::listener_counts`). The kernel counts every port; at each read of the
//! socket table the listener watch publishes only the listening ports' slots, under the same
//! `port` labels (and cap, `other` beyond it) as the other listener metrics.
//!
//! A port's own series is the kernel's count for the port since the daemon started, less what
//! was published under `other` while the port had no label of its own: it never decreases,
//! also when the port stops listening (its series goes) and listens again (it comes back).
//! Which counters exist depends on what is attached: SYNs need the ingress classifier, SYN-ACKs
//! the egress one, completions the `inet_sock_set_state` tracepoint.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray};
use prometheus::{IntCounterVec, Opts, Registry};
use seqwatch_common::listener_counts::PortCounts;
use serde::Serialize;

use crate::metrics::register;

/// The per-port counters, registered with the daemon's registry.
#[derive(Clone)]
pub struct PortCountMetrics {
    syns_received: IntCounterVec,
    synacks_sent: IntCounterVec,
    handshakes_completed: IntCounterVec,
}

impl PortCountMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counters = |name: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["port"])?,
            )
        };
        Ok(PortCountMetrics {
            syns_received: counters(
                "seqwatch_listener_syns_received_total",
                "SYNs that arrived for the listening port on the monitored interfaces (ingress \
                 classifier: --direction ingress or both), retransmitted SYNs included.",
            )?,
            synacks_sent: counters(
                "seqwatch_listener_synacks_sent_total",
                "SYN-ACKs the listening port sent on the monitored interfaces (egress \
                 classifier), retransmitted SYN-ACKs included.",
            )?,
            handshakes_completed: counters(
                "seqwatch_listener_handshakes_completed_total",
                "Connections to the listening port that completed their handshake (SYN_RECV \
                 to ESTABLISHED, from the sock:inet_sock_set_state tracepoint).",
            )?,
        })
    }

    /// Removes a port's series when it stops listening.
    pub fn remove(&self, label: &str) {
        for vec in self.all() {
            let _ = vec.remove_label_values(&[label]);
        }
    }

    fn all(&self) -> [&IntCounterVec; 3] {
        [
            &self.syns_received,
            &self.synacks_sent,
            &self.handshakes_completed,
        ]
    }
}

/// Which counters the attached programs can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    pub syns_received: bool,
    pub synacks_sent: bool,
    pub handshakes_completed: bool,
}

impl Sources {
    /// In the order of [`PortCountMetrics::all`].
    fn exported(&self) -> [bool; 3] {
        [
            self.syns_received,
            self.synacks_sent,
            self.handshakes_completed,
        ]
    }

    fn report(&self, kernel: PortCounts) -> HandshakeReport {
        HandshakeReport {
            syns_received: self.syns_received.then_some(kernel.syns_received),
            synacks_sent: self.synacks_sent.then_some(kernel.synacks_sent),
            handshakes_completed: self
                .handshakes_completed
                .then_some(kernel.handshakes_completed),
        }
    }

    /// Says once which counters are off and why.
    pub fn log_missing(&self) {
        if !self.syns_received {
            log::info!(
                "seqwatch_listener_syns_received_total off: SYNs are seen on ingress only \
                 (--direction ingress or both)"
            );
        }
        if !self.synacks_sent {
            log::info!(
                "seqwatch_listener_synacks_sent_total off: SYN-ACKs are seen on egress only \
                 (--direction egress or both)"
            );
        }
        if !self.handshakes_completed {
            log::info!(
                "seqwatch_listener_handshakes_completed_total off: the inet_sock_set_state \
                 tracepoint is not attached"
            );
        }
    }
}

/// A listening port's counters in `/api/v1/owners`: since the daemon started, `null` where the
/// source is not attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeReport {
    pub syns_received: Option<u64>,
    pub synacks_sent: Option<u64>,
    pub handshakes_completed: Option<u64>,
}

/// The kernel's per-port counters and what of them has been published.
pub struct PortCounters {
    kernel: PerCpuArray<MapData, PortCounts>,
    sources: Sources,
    ledger: Ledger,
}

impl PortCounters {
    pub fn new(kernel: PerCpuArray<MapData, PortCounts>, sources: Sources) -> Self {
        sources.log_missing();
        PortCounters {
            kernel,
            sources,
            ledger: Ledger::default(),
        }
    }

    /// Publishes one listening port: under its own label, or added to `other` (`shared`).
    /// Returns its counts since the daemon started, for `/api/v1/owners`.
    pub fn publish(
        &mut self,
        port: u16,
        label: &str,
        shared: bool,
        metrics: &PortCountMetrics,
    ) -> HandshakeReport {
        let Some(kernel) = self.read(port) else {
            return HandshakeReport::default();
        };
        let values = if shared {
            self.ledger.shared_increase(port, kernel)
        } else {
            self.ledger.own_total(port, kernel)
        };
        let series = metrics.all().into_iter().zip(self.sources.exported());
        for ((vec, exported), value) in series.zip(fields(values)) {
            if !exported {
                continue;
            }
            let counter = vec.with_label_values(&[label]);
            // `other` gains the increase; a port's own series is raised to its total.
            let increase = if shared {
                value
            } else {
                value.saturating_sub(counter.get())
            };
            counter.inc_by(increase);
        }
        self.sources.report(kernel)
    }

    /// The port's slot summed over the CPUs.
    fn read(&self, port: u16) -> Option<PortCounts> {
        let per_cpu = self.kernel.get(&u32::from(port), 0).ok()?;
        Some(
            per_cpu
                .iter()
                .fold(PortCounts::default(), |sum, cpu| sum.plus(*cpu)),
        )
    }
}

fn fields(counts: PortCounts) -> [u64; 3] {
    [
        counts.syns_received,
        counts.synacks_sent,
        counts.handshakes_completed,
    ]
}

/// Per port that has listened: how much of the kernel's count has been published, and how
/// much of that under `other`. At most one entry per local port (65 536), and only ports
/// that listened in this namespace: never an attacker's choice.
#[derive(Default)]
struct Ledger(HashMap<u16, Entry>);

#[derive(Clone, Copy, Default)]
struct Entry {
    published: PortCounts,
    shared: PortCounts,
}

impl Ledger {
    /// The value of the port's own series: all the kernel counted for it, less what went to
    /// `other`.
    fn own_total(&mut self, port: u16, kernel: PortCounts) -> PortCounts {
        let entry = self.0.entry(port).or_default();
        entry.published = kernel;
        kernel.since(entry.shared)
    }

    /// What `other` gains from the port: what the kernel counted since it was last published.
    fn shared_increase(&mut self, port: u16, kernel: PortCounts) -> PortCounts {
        let entry = self.0.entry(port).or_default();
        let new = kernel.since(entry.published);
        entry.published = kernel;
        entry.shared = entry.shared.plus(new);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u64) -> PortCounts {
        PortCounts {
            syns_received: n,
            synacks_sent: n,
            handshakes_completed: n,
        }
    }

    #[test]
    fn a_port_keeps_its_count_across_a_stint_under_other_and_never_counts_twice() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.own_total(80, counts(5)), counts(5));
        // Stopped and listening again beyond the cap: only what came since goes to other.
        assert_eq!(ledger.shared_increase(80, counts(7)), counts(2));
        assert_eq!(ledger.shared_increase(80, counts(10)), counts(3));
        // Its own label again: the kernel's count less the 5 other holds, not below 5.
        assert_eq!(ledger.own_total(80, counts(12)), counts(7));
        // A port first seen beyond the cap gives other everything the kernel counted for it.
        assert_eq!(ledger.shared_increase(443, counts(4)), counts(4));
        assert_eq!(ledger.shared_increase(443, counts(4)), counts(0));
    }
}
