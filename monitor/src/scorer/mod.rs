//! ISN predictability scorer: fed the SYN-ACKs of one service in arrival order, it says how
//! well a blind attacker could guess the next ISN, and whether the generator is weak.
//!
//! `ingest` is O(1) and allocation-free once the window is full; all statistics are computed
//! lazily by `report`, which caches its result until the next sample. The math, the null
//! distribution of every test and the false-alarm budget are in `docs/scorer.md`.

mod algebraic;
mod estimators;
mod findings;
mod models;
mod nmap;
mod stats;
mod window;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use algebraic::{Family, Recovered};
pub use findings::{Finding, FindingKind, Severity};
pub use models::Model;
pub use nmap::{NmapIndex, difficulty_label, nmap_index};

use window::{SampleWindow, TupleVerdict};

/// The TCP options of the SYN-ACK, as far as the scorer cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptionsSummary {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub tsval: Option<u32>,
}

/// One SYN-ACK sent by a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsnObservation {
    /// The SYN-ACK's sequence number.
    pub isn: u32,
    /// Monotonic nanoseconds (`bpf_ktime_get_ns`, or the pcap timestamp).
    pub ts_ns: u64,
    pub server: SocketAddr,
    pub client: SocketAddr,
    /// The client's ISN (the SYN-ACK's ack − 1).
    pub peer_isn: u32,
    pub options: TcpOptionsSummary,
    /// The host was sending SYN cookies when this was seen.
    pub syncookies: bool,
}

#[derive(Clone, Debug)]
pub struct ScorerConfig {
    /// Guesses a blind attacker may spend on one ISN (attack feasibility).
    pub guesses: u64,
    /// Samples kept per service; the tests run over this window.
    pub window: usize,
    /// Below this many samples a window without a detected weakness is `insufficient`.
    pub min_samples: usize,
    /// Probability, per window, of calling a uniform generator weak (split over the tests).
    pub false_alarm_budget: f64,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            guesses: 5000,
            window: 2048,
            min_samples: 8,
            false_alarm_budget: 1e-6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Weak,
    Strong,
    Insufficient,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceReport {
    pub service: String,
    /// SYN-ACKs scored since the start (retransmits and same-4-tuple reuses excluded).
    pub samples: u64,
    pub verdict: Verdict,
    pub guess_bits: Option<f64>,
    pub attack_feasibility: Option<f64>,
    pub findings: Vec<Finding>,
    pub nmap: Option<NmapIndex>,
}

/// The predictability state of one service.
pub struct ServiceScorer {
    config: ScorerConfig,
    window: SampleWindow,
    samples: u64,
    retransmits: u64,
}

impl ServiceScorer {
    pub fn new(config: &ScorerConfig) -> Self {
        let window = config.window.max(nmap::NMAP_SAMPLES);
        Self {
            config: config.clone(),
            window: SampleWindow::new(window),
            samples: 0,
            retransmits: 0,
        }
    }

    /// Records one SYN-ACK. O(1), no allocation once the window is full.
    pub fn ingest(&mut self, obs: &IsnObservation) {
        match self.window.ingest(obs) {
            TupleVerdict::Retransmit => self.retransmits += 1,
            // Same 4-tuple again: kept for the clock check, not scored as a fresh ISN.
            TupleVerdict::Reused => {}
            TupleVerdict::New => self.samples += 1,
        }
    }

    /// SYN-ACKs counted as new handshakes since the start (retransmits and reuses excluded).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The current assessment, computed afresh: the daemon asks only after new samples and
    /// keeps the report it publishes, so a cached copy here would double each service's
    /// memory for nothing.
    pub fn report(&self, service: &str) -> ServiceReport {
        findings::assess(
            &self.config,
            service,
            self.samples,
            self.retransmits,
            &self.window.in_order(),
            &self.window.reuse_pairs(),
        )
    }
}
