//! What every layer may use: clocks, timers, bounded counting, token buckets, a lock that
//! survives a panicked holder, bounded file reads. Nothing here knows Seqwatch's detectors.

pub mod clock;
pub mod files;
pub mod sketch;
pub mod ticks;
pub mod token_bucket;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`; a holder that panicked left the data as it was, which every user here can
/// carry on from (counters, tables, reports), so the poison is ignored.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
