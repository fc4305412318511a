//! The daemon's periodic timers, all on one grid: a timer of period P ticks at the multiples of
//! P since the first timer was made, so that the ring-buffer polls and the once-a-second
//! refreshes of every task fall due together and cost the process one wakeup, not one each (a
//! wakeup costs tens of microseconds of CPU here, a large part of the daemon's idle use).

use std::{sync::OnceLock, time::Duration};

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Like `tokio::time::interval`: the first tick is at once, then every `period` on the grid.
/// A tick missed (the task was busy) is skipped rather than made up in a burst, which keeps
/// the grid.
pub fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(origin(), period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

/// The grid's origin: when the first timer was made.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timers made at different times tick on the same grid, the first tick at once.
    #[tokio::test]
    async fn timers_made_apart_tick_on_one_grid() {
        let mut timers = Vec::new();
        for period_ms in [10, 30] {
            let mut timer = interval(Duration::from_millis(period_ms));
            let made = Instant::now();
            assert!(timer.tick().await <= made, "the first tick is at once");
            timers.push((period_ms, timer));
            tokio::time::sleep(Duration::from_millis(13)).await;
        }
        for (period_ms, timer) in &mut timers {
            for _ in 0..3 {
                let since_origin = timer.tick().await - origin();
                assert_eq!(
                    since_origin.as_nanos() % (u128::from(*period_ms) * 1_000_000),
                    0
                );
            }
        }
    }
}
