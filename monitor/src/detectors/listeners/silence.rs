//! A silent host: TCP segments keep arriving in this network namespace while none leave it,
//! for `--unresponsive-after` seconds. The machine has stopped answering everyone (a route
//! blackholed, an egress path jammed, a resource exhausted), which no single listener's queue
//! shows. Judged from the namespace's own TCP counters (`Tcp: InSegs OutSegs` of
//! /proc/net/snmp), so it works whichever directions the classifiers watch; RSTs count as
//! answers, as they are.

use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;

use crate::export::metrics::Registry;

const SNMP: &str = "/proc/net/snmp";
/// Segments that must arrive unanswered before the host is called silent: a SYN and its
/// first retransmissions, not one stray packet.
const MIN_UNANSWERED: u64 = 3;

#[derive(Clone)]
pub struct SilenceMetrics {
    silent: IntGauge,
    episodes: IntCounter,
}

impl SilenceMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(SilenceMetrics {
            silent: registry.gauge(
                "seqwatch_host_silent",
                "1 while TCP segments arrive in this network namespace and none leave it \
                     (for --unresponsive-after seconds or longer).",
            )?,
            episodes: registry.counter(
                "seqwatch_host_silent_total",
                "Times this network namespace stopped answering TCP altogether.",
            )?,
        })
    }
}

/// The `host_silent` / `host_answering` lines of the event log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SilenceEvent {
    pub kind: &'static str,
    /// Segments received since the last one sent.
    pub segments_unanswered: u64,
    pub silent_seconds: f64,
}

impl SilenceEvent {
    pub const SILENT: &'static str = "host_silent";
    pub const ANSWERING: &'static str = "host_answering";
}

/// Follows the namespace's TCP counters from one poll to the next.
#[derive(Default)]
pub struct SilenceWatch {
    last: Option<Counters>,
    /// Since when nothing has left, and how much arrived meanwhile.
    unanswered_since: Option<(Instant, u64)>,
    silent: bool,
}

/// `Tcp: InSegs` and `OutSegs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counters {
    pub segments_in: u64,
    pub segments_out: u64,
}

impl SilenceWatch {
    /// Reads the counters and returns the event of a change, if any.
    pub fn poll(
        &mut self,
        metrics: &SilenceMetrics,
        now: Instant,
        after: Duration,
    ) -> Option<SilenceEvent> {
        let counters = read_counters()?;
        let event = self.observe(counters, now, after);
        metrics.silent.set(i64::from(self.silent));
        if event
            .as_ref()
            .is_some_and(|e| e.kind == SilenceEvent::SILENT)
        {
            metrics.episodes.inc();
        }
        event
    }

    fn observe(
        &mut self,
        now_counters: Counters,
        now: Instant,
        after: Duration,
    ) -> Option<SilenceEvent> {
        let last = self.last.replace(now_counters)?;
        let arrived = now_counters.segments_in.saturating_sub(last.segments_in);
        let sent = now_counters.segments_out.saturating_sub(last.segments_out);
        if sent > 0 {
            let was_silent = std::mem::take(&mut self.silent);
            let (since, unanswered) = self.unanswered_since.take()?;
            return was_silent.then(|| SilenceEvent {
                kind: SilenceEvent::ANSWERING,
                segments_unanswered: unanswered,
                silent_seconds: now.duration_since(since).as_secs_f64(),
            });
        }
        // Nothing left; an idle poll (nothing arrived either) neither starts nor ends it.
        if arrived == 0 && self.unanswered_since.is_none() {
            return None;
        }
        let (since, unanswered) = self.unanswered_since.get_or_insert((now, 0));
        *unanswered += arrived;
        let waited = now.duration_since(*since);
        if self.silent || waited < after || *unanswered < MIN_UNANSWERED {
            return None;
        }
        self.silent = true;
        Some(SilenceEvent {
            kind: SilenceEvent::SILENT,
            segments_unanswered: *unanswered,
            silent_seconds: waited.as_secs_f64(),
        })
    }
}

fn read_counters() -> Option<Counters> {
    parse_snmp(&std::fs::read_to_string(SNMP).ok()?)
}

/// The `Tcp:` header and value lines of /proc/net/snmp.
fn parse_snmp(text: &str) -> Option<Counters> {
    let mut tcp = text.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let field = |wanted: &str| {
        let index = names.split_whitespace().position(|name| name == wanted)?;
        values.split_whitespace().nth(index)?.parse().ok()
    };
    Some(Counters {
        segments_in: field("InSegs")?,
        segments_out: field("OutSegs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(2);

    fn counters(segments_in: u64, segments_out: u64) -> Counters {
        Counters {
            segments_in,
            segments_out,
        }
    }

    #[test]
    fn parses_the_tcp_lines() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm InSegs OutSegs RetransSegs\nTcp: 1 120 80 3\n";
        assert_eq!(parse_snmp(text), Some(counters(120, 80)));
        assert_eq!(parse_snmp("Ip: 1\nIp: 2\n"), None);
    }

    #[test]
    fn silent_after_the_limit_with_segments_unanswered_then_answering() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = SilenceWatch::default();
        assert_eq!(watch.observe(counters(10, 10), at(0), AFTER), None);
        assert_eq!(watch.observe(counters(12, 10), at(1), AFTER), None);
        assert_eq!(watch.observe(counters(12, 10), at(2), AFTER), None, "idle");
        let silent = watch.observe(counters(13, 10), at(3), AFTER).unwrap();
        assert_eq!(
            (silent.kind, silent.segments_unanswered),
            (SilenceEvent::SILENT, 3)
        );
        assert_eq!(watch.observe(counters(20, 10), at(4), AFTER), None, "once");
        let answering = watch.observe(counters(21, 11), at(5), AFTER).unwrap();
        assert_eq!(
            (answering.kind, answering.segments_unanswered),
            (SilenceEvent::ANSWERING, 10)
        );
        assert_eq!(answering.silent_seconds, 4.0);
    }

    #[test]
    fn a_host_that_answers_or_hears_nothing_is_not_silent() {
        let start = Instant::now();
        let mut watch = SilenceWatch::default();
        for second in 0..10 {
            let now = start + Duration::from_secs(second);
            assert_eq!(
                watch.observe(counters(second * 5, second), now, AFTER),
                None
            );
        }
        let mut idle = SilenceWatch::default();
        for second in 0..10 {
            let now = start + Duration::from_secs(second);
            assert_eq!(idle.observe(counters(7, 7), now, AFTER), None);
        }
    }

    #[test]
    fn one_stray_segment_is_not_silence() {
        let start = Instant::now();
        let mut watch = SilenceWatch::default();
        watch.observe(counters(0, 0), start, AFTER);
        for second in 1..10 {
            let now = start + Duration::from_secs(second);
            assert_eq!(watch.observe(counters(2, 0), now, AFTER), None);
        }
    }

    #[test]
    fn reads_this_namespaces_counters() {
        assert!(read_counters().is_some(), "Tcp: InSegs/OutSegs in {SNMP}");
    }
}
