//! The spoofing-attempt score: blind guesses per minute over the anomaly window.
//!
//! Per service, a guess is a handshake anomaly that only an off-path attacker produces on
//! purpose: a third packet whose ack is not our ISN + 1 (`handshake_ack_wrong_ack`,
//! `handshake_ack_wrong_seq_and_ack`: a guess at the server's ISN, to complete a handshake
//! from a forged address) and a handshake RST outside the window (`rst_out_of_window`: a
//! guess at the client's sequence number, to tear a handshake down). A legitimate stack
//! acks what it received, so these are all but absent from ordinary traffic. A
//! third packet with the right ack but a wrong seq (`handshake_ack_wrong_seq`) is not a guess:
//! whoever sent it saw our SYN-ACK.
//!
//! Guesses the tracker could not judge — their handshake's state was refused for lack of room
//! (a flood), lost, or opened before the tracker — are counted from the kernel's own verdict:
//! a listener answers an ACK that matches no handshake it keeps, or acks the wrong ISN, with
//! a reset of reason `tcp_flags` (under SYN cookies the failed cookie check, TcpExt
//! `SyncookiesFailed`, leads to that same reset). The kernel programs count those per service
//! unless the tracker had the 4-tuple's state to judge the segment itself, so that no guess
//! is counted twice ([`KernelGuesses`], `seqwatch_spoofing_kernel_guesses_total`). ACK scans
//! and late third packets of handshakes the kernel dropped meet the same reset and are
//! counted too.
//!
//! Host-wide, RFC 5961 challenge ACKs answer in-window RSTs, SYNs on established connections
//! and out-of-window ACKs: blind reset and injection guesses against *established*
//! connections. The kernel counts them only per network namespace (TcpExt `TCPChallengeACK`,
//! and `TCPACKSkippedChallenge` for those its per-socket rate limit held back), so they form a
//! separate score with no service: `seqwatch_spoofing_challenge_ack_score`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use aya::maps::{MapData, PerCpuHashMap};
use prometheus::{Gauge, GaugeVec};
use seqwatch_common::{handshake::AnomalyKind, tcp_events::ResetService};

use super::top_sources::BUCKETS;
use crate::{
    export::metrics::Registry,
    host::netstat::TcpExt,
    kernel::{
        counters::per_key_totals,
        records::{socket_address, word_bytes},
    },
    util::sketch::Buckets,
};

/// The anomaly kinds that count as blind guesses.
pub const GUESS_KINDS: [AnomalyKind; 3] = [
    AnomalyKind::HandshakeAckWrongAck,
    AnomalyKind::HandshakeAckWrongSeqAndAck,
    AnomalyKind::RstOutOfWindow,
];

/// Challenge ACKs sent, and those skipped by the per-socket limit: together, the segments that
/// called for one.
const CHALLENGE_ACK_FIELDS: [&str; 2] = ["TCPChallengeACK", "TCPACKSkippedChallenge"];

fn per_minute(events: u64, window: Duration) -> f64 {
    events as f64 * 60.0 / window.as_secs_f64()
}

/// Guesses per service over the window. Services are the anomaly engine's capped labels, so
/// the map holds at most the cap plus `other`.
pub struct SpoofingScores {
    window: Duration,
    services: HashMap<String, Buckets<u64>>,
}

impl SpoofingScores {
    pub fn new(window: Duration) -> Self {
        SpoofingScores {
            window,
            services: HashMap::new(),
        }
    }

    /// Every anomaly gives its service a score (0 until a guess); guesses raise it.
    pub fn observe(&mut self, service: &str, kind: AnomalyKind, now_ns: u64) {
        let guesses = if GUESS_KINDS.contains(&kind) { 1 } else { 0 };
        self.add_guesses(service, guesses, now_ns);
    }

    /// Adds `guesses` to the service's score (which it gets, 0, if it had none).
    pub fn add_guesses(&mut self, service: &str, guesses: u64, now_ns: u64) {
        if !self.services.contains_key(service) {
            let empty = Buckets::new(self.window, BUCKETS, 0);
            self.services.insert(service.to_owned(), empty);
        }
        let counts = self.services.get_mut(service).expect("inserted above");
        *counts.current(now_ns) += guesses;
    }

    /// Forgets a service that lost its label.
    pub fn forget(&mut self, service: &str) {
        self.services.remove(service);
    }

    /// (service, guesses per minute over the window) for every service seen.
    pub fn scores(&self, now_ns: u64) -> impl Iterator<Item = (&str, f64)> {
        self.services.iter().map(move |(service, guesses)| {
            let events = guesses.live(now_ns).sum();
            (service.as_str(), per_minute(events, self.window))
        })
    }
}

/// The guesses only the kernel saw, from the kernel programs' per-service counts
/// (`KERNEL_GUESSES`, at most `KERNEL_GUESS_SERVICES` services) and the count of those beyond.
pub struct KernelGuesses {
    kernel: PerCpuHashMap<MapData, ResetService, u64>,
    /// Each service's total at the last read (as many as the kernel map holds), and that of
    /// the services beyond it.
    seen: HashMap<ResetService, u64>,
    unkeyed_seen: u64,
}

impl KernelGuesses {
    pub fn new(kernel: PerCpuHashMap<MapData, ResetService, u64>) -> Self {
        KernelGuesses {
            kernel,
            seen: HashMap::new(),
            unkeyed_seen: 0,
        }
    }

    /// What each service gained since the last read (`None`: the services beyond the kernel
    /// map, whose total is `unkeyed_total`).
    pub fn read(&mut self, unkeyed_total: u64) -> Vec<(Option<SocketAddr>, u64)> {
        let mut gained = Vec::new();
        for (service, total) in per_key_totals(&self.kernel) {
            let seen = self.seen.insert(service, total).unwrap_or(0);
            if total > seen {
                let address =
                    socket_address(service.family, word_bytes(service.addr), service.port);
                gained.push((Some(address), total - seen));
            }
        }
        if unkeyed_total > self.unkeyed_seen {
            gained.push((None, unkeyed_total - self.unkeyed_seen));
            self.unkeyed_seen = unkeyed_total;
        }
        gained
    }
}

/// Challenge ACKs per minute over the window, from the namespace's TcpExt counters.
pub struct ChallengeAcks {
    window: Duration,
    last_total: Option<u64>,
    counts: Buckets<u64>,
}

impl ChallengeAcks {
    pub fn new(window: Duration) -> Self {
        ChallengeAcks {
            window,
            last_total: None,
            counts: Buckets::new(window, BUCKETS, 0),
        }
    }

    /// Adds what the counters gained since the previous reading (the first is the baseline);
    /// a reading without them (unreadable file, a kernel without the counter) adds nothing.
    pub fn observe(&mut self, tcpext: Option<&TcpExt>, now_ns: u64) {
        let Some(total) = tcpext.and_then(challenge_ack_total) else {
            return;
        };
        if let Some(last) = self.last_total {
            *self.counts.current(now_ns) += total.saturating_sub(last);
        }
        self.last_total = Some(total);
    }

    pub fn score(&self, now_ns: u64) -> f64 {
        per_minute(self.counts.live(now_ns).sum(), self.window)
    }
}

fn challenge_ack_total(tcpext: &TcpExt) -> Option<u64> {
    let [sent, skipped] = CHALLENGE_ACK_FIELDS.map(|field| tcpext.get(field));
    Some(sent? + skipped.unwrap_or(0))
}

/// `seqwatch_spoofing_attempt_score{service}` and `seqwatch_spoofing_challenge_ack_score`.
#[derive(Clone)]
pub struct SpoofingMetrics {
    score: GaugeVec,
    challenge_acks: Gauge,
}

impl SpoofingMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(SpoofingMetrics {
            score: registry.float_gauges(
                "seqwatch_spoofing_attempt_score",
                "Blind spoofing guesses against the service per minute over the anomaly \
                         window: third packets with a wrong ack and out-of-window handshake RSTs \
                         the tracker judged, and ACKs the listener rejected that it could not \
                         (seqwatch_spoofing_kernel_guesses_total).",
                &["service"],
            )?,
            challenge_acks: registry.register(Gauge::new(
                "seqwatch_spoofing_challenge_ack_score",
                "RFC 5961 challenge ACKs (sent or rate-limited) per minute over the anomaly \
                     window in the daemon's network namespace: blind guesses against established \
                     connections, of any service.",
            )?)?,
        })
    }

    /// Removes the series of a service that lost its label.
    pub fn forget(&self, service: &str) {
        let _ = self.score.remove_label_values(&[service]);
    }

    pub fn publish(&self, scores: &SpoofingScores, challenge_acks: &ChallengeAcks, now_ns: u64) {
        for (service, score) in scores.scores(now_ns) {
            self.score.with_label_values(&[service]).set(score);
        }
        self.challenge_acks.set(challenge_acks.score(now_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn guesses_per_minute_per_service_and_other_anomalies_score_zero() {
        let mut scores = SpoofingScores::new(Duration::from_secs(300));
        for kind in GUESS_KINDS {
            for _ in 0..5 {
                scores.observe("10.0.0.1:22", kind, SECOND);
            }
        }
        scores.observe("10.0.0.1:22", AnomalyKind::HandshakeAckWrongSeq, SECOND);
        scores.observe("10.0.0.2:80", AnomalyKind::NullFlags, SECOND);
        let at = |now| scores.scores(now).collect::<HashMap<_, _>>();
        // 15 guesses in a 5-minute window: 3 per minute.
        assert_eq!(
            at(2 * SECOND),
            HashMap::from([("10.0.0.1:22", 3.0), ("10.0.0.2:80", 0.0)])
        );
        assert_eq!(at(301 * SECOND)["10.0.0.1:22"], 0.0, "out of the window");
    }

    fn tcpext(sent: u64, skipped: u64) -> TcpExt {
        TcpExt::parse(&format!(
            "TcpExt: TCPChallengeACK TCPACKSkippedChallenge\nTcpExt: {sent} {skipped}\n"
        ))
    }

    #[test]
    fn challenge_acks_count_from_the_first_reading_sent_and_skipped() {
        let mut acks = ChallengeAcks::new(Duration::from_secs(60));
        acks.observe(Some(&tcpext(100, 7)), SECOND);
        assert_eq!(acks.score(SECOND), 0.0, "the first reading is the baseline");
        acks.observe(Some(&tcpext(130, 17)), 2 * SECOND);
        acks.observe(None, 3 * SECOND);
        assert_eq!(acks.score(3 * SECOND), 40.0);
        let without_skipped = TcpExt::parse("TcpExt: TCPChallengeACK\nTcpExt: 150\n");
        acks.observe(Some(&without_skipped), 4 * SECOND);
        assert_eq!(acks.score(4 * SECOND), 40.0 + 3.0, "150 after 147");
        assert_eq!(acks.score(70 * SECOND), 0.0);
    }
}
