//! The TCP events of the other network namespaces followed (`--netns all`): SYN-ACK
//! retransmits and resets received per namespace and port, resets sent and listeners closed
//! per namespace, under the namespace's inode (`netns`, joined with `seqwatch_netns_info`).
//! A port is the service's: the local listener's, or the remote server's for a connection
//! the namespace opened; the first [`MAX_PORTS_PER_NAMESPACE`] ports seen keep a label of
//! their own, the rest are `other`. A namespace forgotten takes its series and its kernel
//! counts with it.

use std::{collections::BTreeMap, sync::Arc};

use aya::maps::{MapData, PerCpuHashMap};
use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::tcp_events::TcpEventCounter;

use crate::{
    export::{
        labels::ports::{OTHER, PortLabels},
        metrics::Registry,
    },
    host::netns::NetnsReport,
    kernel::{
        counters::{Mirrors, PerCpuCounters, advance, per_key_totals},
        namespaces::FollowedNamespaces,
    },
};

/// Ports with their own `port` label in each namespace (as its listeners have).
const MAX_PORTS_PER_NAMESPACE: usize = 8;

/// The other namespaces' TCP event metrics.
pub struct NetnsTcpMetrics {
    synack_retransmits: IntCounterVec,
    resets_received: IntCounterVec,
    resets_sent: IntCounterVec,
    listeners_closed: IntCounterVec,
}

impl NetnsTcpMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let ports = &["netns", "port"];
        Ok(NetnsTcpMetrics {
            synack_retransmits: registry.counters(
                "seqwatch_netns_synack_retransmits_total",
                "SYN-ACKs a listener of another network namespace retransmitted, by namespace \
                 and local port.",
                ports,
            )?,
            resets_received: registry.counters(
                "seqwatch_netns_resets_received_total",
                "RSTs sockets of another network namespace received, by namespace and the \
                 service's port: the local listener's, or the remote server's.",
                ports,
            )?,
            resets_sent: registry.counters(
                "seqwatch_netns_resets_sent_total",
                "RSTs another network namespace sent.",
                &["netns"],
            )?,
            listeners_closed: registry.counters(
                "seqwatch_netns_listeners_closed_total",
                "TCP listeners of another network namespace that closed (or whose process \
                 exited).",
                &["netns"],
            )?,
        })
    }
}

/// One namespace's labels.
struct Counted {
    label: String,
    ports: PortLabels,
}

/// The other namespaces' counts.
pub struct OtherNamespaceCounts {
    metrics: NetnsTcpMetrics,
    followed: FollowedNamespaces,
    /// `NETNS_RESETS_SENT`: per namespace, per CPU.
    resets_sent: PerCpuHashMap<MapData, u32, u64>,
    counted: BTreeMap<u32, Counted>,
}

impl OtherNamespaceCounts {
    pub fn new(
        metrics: NetnsTcpMetrics,
        followed: FollowedNamespaces,
        resets_sent: PerCpuHashMap<MapData, u32, u64>,
    ) -> Self {
        OtherNamespaceCounts {
            metrics,
            followed,
            resets_sent,
            counted: BTreeMap::new(),
        }
    }

    /// A followed namespace's labels; `None` once it is forgotten (an event read late).
    fn counted(&mut self, netns: u32) -> Option<&mut Counted> {
        if !self.counted.contains_key(&netns) && !self.followed.is_followed(netns) {
            return None;
        }
        Some(self.counted.entry(netns).or_insert_with(|| Counted {
            label: netns.to_string(),
            ports: PortLabels::at_most(MAX_PORTS_PER_NAMESPACE),
        }))
    }

    /// The `netns` and `port` labels of a followed namespace's port.
    fn port_labels(&mut self, netns: u32, port: u16) -> Option<[String; 2]> {
        let counted = self.counted(netns)?;
        Some([counted.label.clone(), counted.ports.label(port)])
    }

    pub fn synack_retransmitted(&mut self, netns: u32, port: u16) {
        if let Some(labels) = self.port_labels(netns, port) {
            let counter = self.metrics.synack_retransmits.with_label_values(&labels);
            counter.inc();
        }
    }

    pub fn resets_received(&mut self, netns: u32, port: u16, resets: u64) {
        if let Some(labels) = self.port_labels(netns, port) {
            let counter = self.metrics.resets_received.with_label_values(&labels);
            counter.inc_by(resets);
        }
    }

    /// Counts a listener's close; who its namespace is, for the listener-loss detector.
    pub fn listener_closed(&mut self, netns: u32) -> Option<NetnsReport> {
        let label = self.counted(netns)?.label.clone();
        let counter = self.metrics.listeners_closed.with_label_values(&[label]);
        counter.inc();
        self.followed.report(netns)
    }

    /// Reads the resets sent, and forgets the namespaces no longer followed: their series,
    /// their labels and their kernel counts (`forget_received` removes their resets
    /// received).
    pub fn refresh(&mut self, mut forget_received: impl FnMut(u32)) {
        for (netns, total) in per_key_totals(&self.resets_sent) {
            if !self.followed.is_followed(netns) {
                let _ = self.resets_sent.remove(&netns);
                continue;
            }
            if let Some(counted) = self.counted(netns) {
                let label = counted.label.clone();
                advance(&self.metrics.resets_sent.with_label_values(&[label]), total);
            }
        }
        let gone: Vec<u32> = self
            .counted
            .keys()
            .filter(|netns| !self.followed.is_followed(**netns))
            .copied()
            .collect();
        for netns in gone {
            self.forget(netns);
            forget_received(netns);
        }
    }

    fn forget(&mut self, netns: u32) {
        let Some(counted) = self.counted.remove(&netns) else {
            return;
        };
        let label = counted.label.as_str();
        let ports = counted.ports.labelled().map(|port| port.to_string());
        for port in ports.chain([OTHER.to_owned()]) {
            let labels = [label, port.as_str()];
            let _ = self.metrics.synack_retransmits.remove_label_values(&labels);
            let _ = self.metrics.resets_received.remove_label_values(&labels);
        }
        let _ = self.metrics.resets_sent.remove_label_values(&[label]);
        let _ = self.metrics.listeners_closed.remove_label_values(&[label]);
    }
}

/// The counters of the kernel's drops for these maps.
pub struct NetnsDropMetrics {
    ports_unkept: IntCounter,
    resets_sent_unkeyed: IntCounter,
}

impl NetnsDropMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(NetnsDropMetrics {
            ports_unkept: registry.counter(
                "seqwatch_netns_listening_ports_unkept_total",
                "Listeners opened in other network namespaces on a port the kernel's table \
                 (16384 ports together) had no room for: resets to it count as outgoing.",
            )?,
            resets_sent_unkeyed: registry.counter(
                "seqwatch_netns_resets_sent_unkeyed_total",
                "Resets sent in other network namespaces the kernel's table had no room for.",
            )?,
        })
    }

    /// The programs' kernel counters, mirrored before each scrape.
    pub fn mirror(self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(TcpEventCounter::NetnsPortsUnkept as u32, self.ports_unkept);
        let unkeyed = TcpEventCounter::NetnsResetsSentUnkeyed as u32;
        mirrors.add(unkeyed, self.resets_sent_unkeyed);
        registry.before_scrape(move || mirrors.refresh());
    }
}
