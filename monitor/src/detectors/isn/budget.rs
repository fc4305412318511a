//! The scorer's CPU budget. Scoring a full window takes tens of milliseconds, so with many
//! busy services it could starve the ring-buffer reader on the daemon's one thread: it gets at
//! most [`SCORING_SHARE`] of one CPU, in slices between reads, stalest service first, each
//! service at most every [`super::services::RESCORE_AFTER`] (longer for a service whose
//! scoring takes long). What waits is `seqwatch_scoring_backlog`.

use std::time::{Duration, Instant};

use super::{metrics::IsnMetrics, services::ServiceTable};

/// The share of one CPU that scoring may take.
const SCORING_SHARE: f64 = 0.25;
/// Scoring stops for this poll once a slice has run this long (one service may take longer).
const SCORING_SLICE: Duration = Duration::from_millis(5);

/// Meters the scorer's CPU time: `SCORING_SHARE` of the wall time, accrued up to one
/// second's worth, spent in slices of about `SCORING_SLICE`.
pub struct ScoringBudget {
    /// Seconds of scoring available; negative after a service that took longer.
    available: f64,
    accrued_at: Instant,
}

impl ScoringBudget {
    pub fn new(now: Instant) -> Self {
        ScoringBudget {
            available: SCORING_SHARE,
            accrued_at: now,
        }
    }

    fn accrue(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.accrued_at).as_secs_f64();
        self.available = (self.available + elapsed * SCORING_SHARE).min(SCORING_SHARE);
        self.accrued_at = now;
    }

    /// Scores the stalest waiting services while budget and this slice last.
    pub fn run(&mut self, services: &mut ServiceTable, metrics: &IsnMetrics) {
        let started = Instant::now();
        self.accrue(started);
        while self.available > 0.0 && started.elapsed() < SCORING_SLICE {
            let before = Instant::now();
            if services.score_stalest(metrics, before).is_none() {
                break;
            }
            let spent = before.elapsed().as_secs_f64();
            self.available -= spent;
            metrics.scoring_seconds.inc_by(spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use seqwatch_common::synack::FAMILY_IPV4;

    use super::*;
    use crate::{
        detectors::isn::{
            sample::{Sample, tests::record},
            services::tests::table,
        },
        export::metrics::Registry,
    };

    #[test]
    fn the_scoring_budget_accrues_a_share_of_wall_time_up_to_a_cap() {
        let start = Instant::now();
        let mut budget = ScoringBudget::new(start);
        budget.available = -0.5;
        budget.accrue(start + Duration::from_secs(1));
        assert!((budget.available + 0.5 - SCORING_SHARE).abs() < 1e-9);
        budget.accrue(start + Duration::from_secs(100));
        assert_eq!(budget.available, SCORING_SHARE);
    }

    #[test]
    fn an_overdrawn_budget_leaves_services_waiting() {
        let metrics = IsnMetrics::new(&Registry::default()).unwrap();
        let mut services = table(4, &[]);
        let record = record(FAMILY_IPV4, 443, &[]);
        services.ingest(&Sample::from_record(&record), false);
        let mut budget = ScoringBudget::new(Instant::now());
        budget.available = -1.0;
        budget.run(&mut services, &metrics);
        assert_eq!(services.backlog(), 1);
        budget.available = SCORING_SHARE;
        budget.run(&mut services, &metrics);
        assert_eq!(services.backlog(), 0);
        assert!(metrics.scoring_seconds.get() > 0.0);
    }
}
