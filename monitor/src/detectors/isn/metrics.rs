//! The SYN-ACK sampler's metrics: samples, the service table, the scoring budget, the scores
//! of the services with a label ([`crate::export::labels`]; series are removed when a service
//! loses its label or is evicted), and mirrors of the sampler's kernel counters.

use std::sync::Arc;

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use seqwatch_common::packet::Counter;

use crate::{
    export::metrics::Registry,
    kernel::counters::{Mirrors, PerCpuCounters},
};

/// The reasons of `seqwatch_synacks_not_sampled_total`, and their counters.
const NOT_SAMPLED: [(Counter, &str); 2] = [
    (Counter::SynAcksUnsolicited, "unsolicited"),
    (Counter::SynAcksForwarded, "forwarded"),
];

pub struct IsnMetrics {
    pub samples_received: IntCounterVec,
    pub services: IntGauge,
    pub service_evictions: IntCounter,
    /// Services whose newest samples are not scored yet (scoring has a CPU budget).
    pub scoring_backlog: IntGauge,
    pub scoring_seconds: prometheus::Counter,
    pub samples: IntGaugeVec,
    pub guess_bits: GaugeVec,
    pub attack_feasibility: GaugeVec,
    pub weak: IntGaugeVec,
    pub nmap_sp: IntGaugeVec,
    pub nmap_gcd: IntGaugeVec,
    pub nmap_isr: IntGaugeVec,
    synacks: IntCounter,
    ringbuf_dropped: IntCounter,
    syns_recorded: IntCounter,
    synacks_not_sampled: IntCounterVec,
}

impl IsnMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let int = |name: &str, help: &str| registry.gauges(name, help, &["service"]);
        let float = |name: &str, help: &str| registry.float_gauges(name, help, &["service"]);
        let synacks_not_sampled = registry.counters(
            "seqwatch_synacks_not_sampled_total",
            "SYN-ACKs the SYN-ACK origin check kept from the scorer (ingress sampling on): \
             unsolicited (arriving, answering no SYN that left by their interface) or \
             forwarded (leaving, judged where they came in).",
            &["reason"],
        )?;
        // Every reason is a series from the start, so that rate() sees the first one.
        for (_, reason) in NOT_SAMPLED {
            synacks_not_sampled.with_label_values(&[reason]);
        }
        Ok(IsnMetrics {
            samples_received: registry.counters(
                "seqwatch_synack_samples_total",
                "SYN-ACK samples received from the kernel.",
                &["interface", "direction"],
            )?,
            services: registry.gauge("seqwatch_services", "Services currently tracked.")?,
            service_evictions: registry.counter(
                "seqwatch_service_evictions_total",
                "Services dropped because the service cap was reached (the least recently \
                 seen without a label first).",
            )?,
            scoring_backlog: registry.gauge(
                "seqwatch_scoring_backlog",
                "Services with samples their published scores do not include yet: scoring \
                 gets a quarter of one CPU, stalest service first.",
            )?,
            scoring_seconds: registry.register(prometheus::Counter::new(
                "seqwatch_scoring_seconds_total",
                "Time spent scoring services.",
            )?)?,
            samples: int(
                "seqwatch_isn_samples",
                "ISN samples scored for the service.",
            )?,
            guess_bits: float(
                // Not `_bits`: Prometheus reserves unit suffixes for base units (promtool would
                // say "use bytes"), and this is log2 of a count of ISNs, not a data size.
                "seqwatch_isn_guess_space_log2",
                "log2 of the ISN range a blind attacker must search (the residual spread of the best ISN model, or the next ISN's rank among a recovered generator's candidates): the scorer's guess bits.",
            )?,
            attack_feasibility: float(
                "seqwatch_isn_attack_feasibility",
                "Probability that a blind attacker hits the next ISN within the configured guesses.",
            )?,
            weak: int(
                "seqwatch_isn_weak",
                "1 if the service's ISN generator is judged weak.",
            )?,
            nmap_sp: int(
                "seqwatch_isn_nmap_sp",
                "nmap's sequence predictability index over the last 6 samples (comparison only).",
            )?,
            nmap_gcd: int(
                "seqwatch_isn_nmap_gcd",
                "nmap's GCD of ISN differences over the last 6 samples.",
            )?,
            nmap_isr: int(
                "seqwatch_isn_nmap_isr",
                "nmap's ISN counter rate over the last 6 samples.",
            )?,
            synacks: registry.counter(
                "seqwatch_synacks_total",
                "SYN-ACKs the sampler took, including ones dropped on a full ring buffer \
                 (not those in seqwatch_synacks_not_sampled_total).",
            )?,
            ringbuf_dropped: registry.counter(
                "seqwatch_ringbuf_dropped_total",
                "SYN-ACK records dropped in the kernel because the ring buffer was full.",
            )?,
            syns_recorded: registry.counter(
                "seqwatch_syns_recorded_total",
                "SYNs leaving whose answer the SYN-ACK origin check waits for (ingress sampling \
                 on), retransmissions included.",
            )?,
            synacks_not_sampled,
        })
    }

    /// The sampler's kernel counters, mirrored before each scrape.
    pub fn mirror(&self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(Counter::SynAcks as u32, self.synacks.clone());
        mirrors.add(Counter::RingbufDropped as u32, self.ringbuf_dropped.clone());
        mirrors.add(Counter::SynsRecorded as u32, self.syns_recorded.clone());
        for (counter, reason) in NOT_SAMPLED {
            let mirror = self.synacks_not_sampled.with_label_values(&[reason]);
            mirrors.add(counter as u32, mirror);
        }
        registry.before_scrape(move || mirrors.refresh());
    }

    /// Removes a service's score series.
    pub fn remove_scores(&self, service: &str) {
        let labels = [service];
        for gauges in [
            &self.samples,
            &self.weak,
            &self.nmap_sp,
            &self.nmap_gcd,
            &self.nmap_isr,
        ] {
            let _ = gauges.remove_label_values(&labels);
        }
        for gauges in [&self.guess_bits, &self.attack_feasibility] {
            let _ = gauges.remove_label_values(&labels);
        }
    }
}
