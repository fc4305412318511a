//! The classifiers' own counters, which every detector's packets pass through: packets seen,
//! fragments skipped, and packets that could not be parsed, by reason. They are slots of the
//! per-CPU array that also holds the SYN-ACK sampler's counters (which that detector mirrors).

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::packet::Counter;

use super::counters::{Mirrors, PerCpuCounters};
use crate::export::metrics::Registry;

/// The map the classifiers count in.
pub const PACKET_COUNTERS: &str = "PACKET_COUNTERS";

#[derive(Clone)]
pub struct PacketMetrics {
    packets_seen: IntCounter,
    non_first_fragments: IntCounter,
    parse_errors: IntCounterVec,
}

impl PacketMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let parse_errors = registry.counters(
            "seqwatch_parse_errors_total",
            "Packets the classifier could not parse, by reason.",
            &["reason"],
        )?;
        // Every reason is a series from the start, so that rate() sees the first error.
        for (_, reason) in Counter::PARSE_ERRORS {
            parse_errors.with_label_values(&[reason]);
        }
        Ok(PacketMetrics {
            packets_seen: registry.counter(
                "seqwatch_packets_seen_total",
                "Packets the classifiers ran on.",
            )?,
            non_first_fragments: registry.counter(
                "seqwatch_non_first_fragments_total",
                "IP fragments after the first, skipped because they carry no TCP header.",
            )?,
            parse_errors,
        })
    }

    /// Mirrors the kernel's counts before each scrape.
    pub fn mirror(&self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(Counter::PacketsSeen as u32, self.packets_seen.clone());
        mirrors.add(
            Counter::NonFirstFragment as u32,
            self.non_first_fragments.clone(),
        );
        for (counter, reason) in Counter::PARSE_ERRORS {
            mirrors.add(
                counter as u32,
                self.parse_errors.with_label_values(&[reason]),
            );
        }
        registry.before_scrape(move || mirrors.refresh());
    }

    /// The series of a parse error that userspace finds (in what the kernel copied raw).
    pub fn parse_error(&self, reason: &str) -> IntCounter {
        self.parse_errors.with_label_values(&[reason])
    }
}
