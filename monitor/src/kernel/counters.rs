//! The kernel programs count in per-CPU arrays (BPF has no atomic add here); userspace sums
//! the CPUs on read, and mirrors chosen slots as Prometheus counters.

use std::sync::Arc;

use aya::{
    Pod,
    maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use prometheus::IntCounter;

/// A per-CPU counter array of the kernel programs, summed over the CPUs on read.
pub struct PerCpuCounters(PerCpuArray<MapData, u64>);

impl PerCpuCounters {
    /// The total of one slot over the CPUs (0 if unreadable).
    pub fn read(&self, index: u32) -> u64 {
        self.0
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

impl TryFrom<Map> for PerCpuCounters {
    type Error = MapError;

    fn try_from(map: Map) -> Result<Self, MapError> {
        PerCpuArray::try_from(map).map(PerCpuCounters)
    }
}

/// Prometheus counters that mirror slots of a per-CPU counter array; [`Mirrors::refresh`]
/// brings them up to the kernel's totals (which never go down).
pub struct Mirrors {
    counters: Arc<PerCpuCounters>,
    mirrors: Vec<(u32, IntCounter)>,
}

impl Mirrors {
    pub fn new(counters: Arc<PerCpuCounters>) -> Self {
        Mirrors {
            counters,
            mirrors: Vec::new(),
        }
    }

    /// Mirrors slot `index` in `counter`.
    pub fn add(&mut self, index: u32, counter: IntCounter) {
        self.mirrors.push((index, counter));
    }

    pub fn refresh(&self) {
        for (index, mirror) in &self.mirrors {
            advance(mirror, self.counters.read(*index));
        }
    }
}

/// Moves a mirror counter up to the kernel's total (which never goes down).
pub fn advance(mirror: &IntCounter, total: u64) {
    let delta = total.saturating_sub(mirror.get());
    if delta > 0 {
        mirror.inc_by(delta);
    }
}

/// Each key of a per-CPU hash map of counts, with its total over the CPUs (keys whose values
/// cannot be read are left out).
pub fn per_key_totals<K: Pod>(map: &PerCpuHashMap<MapData, K, u64>) -> Vec<(K, u64)> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
        .collect()
}
