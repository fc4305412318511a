//! The sources with the most handshake anomalies of each kind over a sliding window, in bounded
//! memory whatever the number of (spoofed) sources: per kind, a ring of [`BUCKETS`] time
//! buckets, each a Space-Saving summary of `16 × K` counters. The ranking is exported as
//! `seqwatch_anomaly_top_source_events{kind,rank}` (ranks only: addresses never become
//! labels) and, with the addresses, by `GET /api/v1/anomalies/top-sources`.
//!
//! A source is the remote IPv4 address, or the /64 of a remote IPv6 address: ports are not
//! part of it (a blind guesser or a scanner uses a new source port per attempt), and one IPv6
//! host usually holds a whole /64 (SLAAC, RFC 4291 §2.5.1; privacy addresses rotate within it,
//! RFC 8981), so ranking single IPv6 addresses would let one attacker spread itself thin.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::IntGaugeVec;
use seqwatch_common::handshake::AnomalyKind;
use serde::{Serialize, Serializer};

use crate::{
    export::metrics::Registry,
    util::sketch::{Buckets, SpaceSaving},
};

/// Time buckets per window: an event counts for between 9/10 of the window and all of it.
pub const BUCKETS: usize = 10;
/// Space-Saving counters per kind and bucket, per ranked source.
pub const COUNTERS_PER_RANK: usize = 16;
pub const DEFAULT_K: usize = 10;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// An anomaly's source as ranked: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix(IpAddr);

impl SourcePrefix {
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => SourcePrefix(address),
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !(u128::from(u64::MAX));
                SourcePrefix(IpAddr::V6(Ipv6Addr::from(network)))
            }
        }
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(formatter, "{v4}"),
            IpAddr::V6(v6) => write!(formatter, "{v6}/64"),
        }
    }
}

impl Serialize for SourcePrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One ranked source of one kind over the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RankedSource {
    pub rank: usize,
    pub source: SourcePrefix,
    /// Events certainly from this source in the window (exact when it equals `max_events`).
    pub events: u64,
    /// The most events it can have had: `events` plus the summaries' uncertainty.
    pub max_events: u64,
}

/// The ranking of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KindTopSources {
    pub kind: &'static str,
    /// Every event of the kind in the window, from any source (exact).
    pub events: u64,
    pub sources: Vec<RankedSource>,
}

/// What `GET /api/v1/anomalies/top-sources` returns.
#[derive(Clone, Debug, Serialize)]
pub struct TopSourcesReport {
    pub window_seconds: u64,
    pub k: usize,
    /// Kinds with events in the window, in the order of `AnomalyKind`.
    pub kinds: Vec<KindTopSources>,
}

type Window = Buckets<SpaceSaving<SourcePrefix>>;

/// The per-kind windows; the daemon shares one between the anomaly reader and the HTTP API.
pub struct TopSources {
    k: usize,
    window: Duration,
    kinds: BTreeMap<AnomalyKind, Window>,
}

pub type SharedTopSources = Arc<Mutex<TopSources>>;

impl TopSources {
    pub fn new(k: usize, window: Duration) -> Self {
        TopSources {
            k: k.max(1),
            window,
            kinds: BTreeMap::new(),
        }
    }

    pub fn shared(k: usize, window: Duration) -> SharedTopSources {
        Arc::new(Mutex::new(TopSources::new(k, window)))
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn record(&mut self, kind: AnomalyKind, source: IpAddr, now_ns: u64) {
        let capacity = self.k * COUNTERS_PER_RANK;
        let window = self.window;
        self.kinds
            .entry(kind)
            .or_insert_with(|| Buckets::new(window, BUCKETS, SpaceSaving::new(capacity)))
            .current(now_ns)
            .add(SourcePrefix::of(source));
    }

    /// The top K sources of `kind` at `now_ns`, most certain events first. Per source,
    /// summed over the live buckets: `events` counts a bucket's guaranteed events where the
    /// bucket monitors the source; `max_events` adds each bucket's error, and where a bucket
    /// does not monitor it, that bucket's floor. Every source with more than N/m events in the
    /// window (N events of the kind, m counters per bucket) is a candidate, and
    /// `max_events - events` is at most N/m.
    pub fn ranking(&self, kind: AnomalyKind, now_ns: u64) -> Vec<RankedSource> {
        let Some(window) = self.kinds.get(&kind) else {
            return Vec::new();
        };
        let live: Vec<&SpaceSaving<SourcePrefix>> = window.live(now_ns).collect();
        let candidates: HashSet<SourcePrefix> = live
            .iter()
            .flat_map(|summary| summary.counters().iter().map(|counter| counter.key))
            .collect();
        let mut ranked: Vec<RankedSource> = candidates
            .into_iter()
            .map(|source| {
                let (mut events, mut max_events) = (0, 0);
                for summary in &live {
                    match summary.get(&source) {
                        Some(counter) => {
                            events += counter.guaranteed();
                            max_events += counter.count;
                        }
                        None => max_events += summary.floor(),
                    }
                }
                RankedSource {
                    rank: 0,
                    source,
                    events,
                    max_events,
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            (b.events, b.max_events, a.source).cmp(&(a.events, a.max_events, b.source))
        });
        ranked.truncate(self.k);
        for (rank, source) in (1..).zip(ranked.iter_mut()) {
            source.rank = rank;
        }
        ranked
    }

    fn events(&self, kind: AnomalyKind, now_ns: u64) -> u64 {
        self.kinds.get(&kind).map_or(0, |window| {
            window.live(now_ns).map(SpaceSaving::total).sum()
        })
    }

    pub fn report(&self, now_ns: u64) -> TopSourcesReport {
        let kinds = self
            .kinds
            .keys()
            .map(|&kind| KindTopSources {
                kind: kind.as_str(),
                events: self.events(kind, now_ns),
                sources: self.ranking(kind, now_ns),
            })
            .filter(|kind| kind.events > 0)
            .collect();
        TopSourcesReport {
            window_seconds: self.window.as_secs(),
            k: self.k,
            kinds,
        }
    }
}

/// `seqwatch_anomaly_top_source_events{kind,rank}`: at most K series per kind.
#[derive(Clone)]
pub struct TopSourceMetrics {
    events: IntGaugeVec,
}

impl TopSourceMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        Ok(TopSourceMetrics {
            events: registry.gauges(
                "seqwatch_anomaly_top_source_events",
                "Events of the anomaly kind from the source ranked `rank` (1 = most) over \
                         the anomaly window; the addresses are in /api/v1/anomalies/top-sources.",
                &["kind", "rank"],
            )?,
        })
    }

    /// Sets the ranks each kind has now and removes the ones it no longer has; returns every
    /// ranked (kind, source) with its rank, for the event log.
    pub fn publish(
        &self,
        top: &TopSources,
        now_ns: u64,
    ) -> HashMap<(AnomalyKind, SourcePrefix), usize> {
        let mut ranks = HashMap::new();
        for &kind in AnomalyKind::ALL {
            let ranking = top.ranking(kind, now_ns);
            for rank in 1..=top.k() {
                let labels = [kind.as_str(), &rank.to_string()];
                match ranking.get(rank - 1) {
                    Some(source) => {
                        self.events
                            .with_label_values(&labels)
                            .set(source.events as i64);
                        ranks.insert((kind, source.source), rank);
                    }
                    None => {
                        let _ = self.events.remove_label_values(&labels);
                    }
                }
            }
        }
        ranks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_sources_are_addresses_and_ipv6_sources_are_64s() {
        assert_eq!(SourcePrefix::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
        let a = SourcePrefix::of(ip("2001:db8:1:2:aaaa::1"));
        let b = SourcePrefix::of(ip("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, SourcePrefix::of(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn sources_are_ranked_by_events_per_kind_with_exact_counts() {
        let mut top = TopSources::new(2, Duration::from_secs(60));
        let kind = AnomalyKind::NullFlags;
        for (source, count) in [("10.0.0.1", 3), ("10.0.0.2", 5), ("10.0.0.3", 1)] {
            for _ in 0..count {
                top.record(kind, ip(source), SECOND);
            }
        }
        top.record(AnomalyKind::SynFin, ip("10.0.0.3"), SECOND);
        let ranking = top.ranking(kind, 2 * SECOND);
        let view: Vec<_> = ranking
            .iter()
            .map(|s| (s.rank, s.source.to_string(), s.events, s.max_events))
            .collect();
        assert_eq!(
            view,
            [(1, "10.0.0.2".into(), 5, 5), (2, "10.0.0.1".into(), 3, 3)]
        );
        let report = top.report(2 * SECOND);
        assert_eq!(report.kinds.len(), 2);
        assert_eq!(report.kinds[1].kind, "null_flags");
        assert_eq!(report.kinds[1].events, 9);
    }

    #[test]
    fn events_leave_the_ranking_with_the_window() {
        let mut top = TopSources::new(10, Duration::from_secs(10));
        let kind = AnomalyKind::RstOutOfWindow;
        top.record(kind, ip("10.0.0.1"), 0);
        top.record(kind, ip("10.0.0.1"), 5 * SECOND);
        let events = |top: &TopSources, now| top.ranking(kind, now).first().map(|s| s.events);
        assert_eq!(events(&top, 9 * SECOND), Some(2));
        assert_eq!(events(&top, 10 * SECOND), Some(1));
        assert_eq!(events(&top, 15 * SECOND), None);
        assert!(top.report(15 * SECOND).kinds.is_empty());
    }

    /// 5 000 spoofed sources and one heavy hitter that started first: memory stays at the
    /// counters, the ranking at K, and the heavy hitter is rank 1 with its exact count.
    #[test]
    fn a_flood_of_distinct_sources_stays_bounded_and_keeps_the_heavy_hitter() {
        const K: usize = 10;
        let mut top = TopSources::new(K, Duration::from_secs(300));
        let kind = AnomalyKind::HandshakeAckWrongAck;
        let heavy = ip("192.0.2.1");
        let mut heavy_events = 0;
        for i in 0..5_000u32 {
            if i % 50 == 0 {
                top.record(kind, heavy, SECOND);
                heavy_events += 1;
            }
            let spoofed = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            top.record(kind, spoofed, SECOND);
        }
        let live: usize = top.kinds[&kind]
            .live(SECOND)
            .map(|summary| summary.counters().len())
            .sum();
        assert_eq!(live, K * COUNTERS_PER_RANK);
        let ranking = top.ranking(kind, SECOND);
        assert_eq!(ranking.len(), K);
        assert_eq!(ranking[0].source, SourcePrefix::of(heavy));
        assert_eq!(
            (ranking[0].events, ranking[0].max_events),
            (heavy_events, heavy_events)
        );
        let bound = 5_100 / (K * COUNTERS_PER_RANK) as u64;
        assert!(ranking.iter().all(|s| s.max_events - s.events <= bound));
    }
}
