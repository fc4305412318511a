//! Bounded-memory counting over a sliding window: a ring of time buckets, and the
//! Space-Saving heavy-hitter summary (Metwally, Agrawal, El Abbadi, "Efficient Computation of
//! Frequent and Top-k Elements in Data Streams", ICDT 2005) that the top-sources ranking keeps
//! in each bucket. Pure logic: times are monotonic nanoseconds given by the caller.

use std::{collections::HashMap, hash::Hash, time::Duration};

/// A sliding window as a ring of `count` buckets of `window / count` each. A value added now
/// stays in the window for between `window - width` and `window`: the current bucket is
/// partly filled, the oldest one about to be recycled.
#[derive(Clone, Debug)]
pub struct Buckets<T> {
    width_ns: u64,
    /// (epoch, value) per slot, the slot of epoch `e` being `e % count`; epoch = time / width.
    slots: Vec<(u64, T)>,
    empty: T,
}

impl<T: Clone> Buckets<T> {
    pub fn new(window: Duration, count: usize, empty: T) -> Self {
        let count = count.max(1);
        let width_ns = (window.as_nanos() / count as u128).max(1) as u64;
        Buckets {
            width_ns,
            slots: vec![(0, empty.clone()); count],
            empty,
        }
    }

    fn epoch(&self, now_ns: u64) -> u64 {
        now_ns / self.width_ns
    }

    /// The bucket of `now_ns`, emptied first if it last held an older epoch. Times must not go
    /// backwards by more than a bucket (the callers use the monotonic clock at processing).
    pub fn current(&mut self, now_ns: u64) -> &mut T {
        let epoch = self.epoch(now_ns);
        let index = (epoch % self.slots.len() as u64) as usize;
        let slot = &mut self.slots[index];
        if slot.0 != epoch {
            *slot = (epoch, self.empty.clone());
        }
        &mut slot.1
    }

    /// The buckets still inside the window at `now_ns`.
    pub fn live(&self, now_ns: u64) -> impl Iterator<Item = &T> {
        let now = self.epoch(now_ns);
        let count = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(epoch, _)| *epoch <= now && now - epoch < count)
            .map(|(_, value)| value)
    }
}

/// One monitored key of a [`SpaceSaving`] summary: `count` is at least the key's true count
/// since it was monitored, and at most `error` more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter<K> {
    pub key: K,
    pub count: u64,
    pub error: u64,
}

impl<K> Counter<K> {
    /// Events of the key that are certain.
    pub fn guaranteed(&self) -> u64 {
        self.count - self.error
    }
}

/// Space-Saving with a fixed number of counters. With `capacity` m over a stream of N items,
/// every monitored count overestimates its key's true count by at most the smallest count
/// ([`SpaceSaving::floor`], at most N/m), an unmonitored key occurred at most `floor` times,
/// and every key that occurred more than N/m times is monitored. A key monitored from its first
/// occurrence has `error` 0: its count is exact. Memory: m counters whatever the stream.
#[derive(Clone, Debug)]
pub struct SpaceSaving<K> {
    capacity: usize,
    counters: Vec<Counter<K>>,
    index: HashMap<K, usize>,
    total: u64,
}

impl<K: Clone + Eq + Hash> SpaceSaving<K> {
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: Vec::new(),
            index: HashMap::new(),
            total: 0,
        }
    }

    /// Counts one occurrence of `key`; when every counter is taken, the smallest is given to it.
    pub fn add(&mut self, key: K) {
        self.total += 1;
        if let Some(&slot) = self.index.get(&key) {
            self.counters[slot].count += 1;
            return;
        }
        if self.counters.len() < self.capacity {
            self.index.insert(key.clone(), self.counters.len());
            self.counters.push(Counter {
                key,
                count: 1,
                error: 0,
            });
            return;
        }
        let (slot, smallest) = self.smallest();
        self.index.remove(&self.counters[slot].key);
        self.index.insert(key.clone(), slot);
        self.counters[slot] = Counter {
            key,
            count: smallest + 1,
            error: smallest,
        };
    }

    /// The slot and count of the smallest counter (the summary is full).
    fn smallest(&self) -> (usize, u64) {
        self.counters
            .iter()
            .enumerate()
            .map(|(slot, counter)| (slot, counter.count))
            .min_by_key(|&(_, count)| count)
            .unwrap_or((0, 0))
    }

    /// The most an unmonitored key can have occurred: 0 until every counter is taken.
    pub fn floor(&self) -> u64 {
        if self.counters.len() < self.capacity {
            0
        } else {
            self.smallest().1
        }
    }

    pub fn get(&self, key: &K) -> Option<&Counter<K>> {
        self.index.get(key).map(|&slot| &self.counters[slot])
    }

    pub fn counters(&self) -> &[Counter<K>] {
        &self.counters
    }

    /// Every item counted (exact).
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_counts_until_it_leaves_the_window() {
        let mut buckets = Buckets::new(Duration::from_secs(10), 5, 0u64);
        *buckets.current(0) += 1;
        *buckets.current(SECOND) += 2; // same 2-second bucket
        *buckets.current(3 * SECOND) += 4;
        let sum = |b: &Buckets<u64>, now| b.live(now).sum::<u64>();
        assert_eq!(sum(&buckets, 3 * SECOND), 7);
        // At 10 s the bucket of 0-2 s is out (its epoch 0 is 5 buckets old), 2-4 s is not.
        assert_eq!(sum(&buckets, 10 * SECOND - 1), 7);
        assert_eq!(sum(&buckets, 10 * SECOND), 4);
        assert_eq!(sum(&buckets, 12 * SECOND), 0);
        // A recycled slot starts empty.
        *buckets.current(10 * SECOND) += 1;
        assert_eq!(sum(&buckets, 10 * SECOND), 5);
    }

    #[test]
    fn space_saving_is_exact_below_capacity() {
        let mut summary = SpaceSaving::new(4);
        for key in [1, 2, 2, 3, 3, 3] {
            summary.add(key);
        }
        assert_eq!(summary.floor(), 0);
        assert_eq!(summary.get(&3).unwrap().count, 3);
        assert_eq!(summary.get(&3).unwrap().error, 0);
        assert_eq!(summary.get(&9), None);
        assert_eq!(summary.total(), 6);
    }

    #[test]
    fn a_newcomer_takes_the_smallest_counter_and_its_count_as_error() {
        let mut summary = SpaceSaving::new(2);
        for key in [1, 1, 1, 2, 2, 3] {
            summary.add(key);
        }
        // 2 (count 2) was the smallest: 3 inherits it.
        assert_eq!(summary.get(&2), None);
        let newcomer = summary.get(&3).unwrap();
        assert_eq!((newcomer.count, newcomer.error), (3, 2));
        assert_eq!(newcomer.guaranteed(), 1);
        assert_eq!(summary.get(&1).unwrap().count, 3);
        assert_eq!(summary.floor(), 3);
    }

    /// The guarantees under a flood of distinct keys with one heavy hitter inside it: memory
    /// stays at the capacity, the heavy hitter (monitored from its first item) is exact, and every
    /// estimate is within N/m of the truth.
    #[test]
    fn a_heavy_hitter_survives_a_flood_of_distinct_keys_exactly() {
        const CAPACITY: usize = 64;
        let mut summary = SpaceSaving::new(CAPACITY);
        let mut truth: HashMap<u32, u64> = HashMap::new();
        let heavy = u32::MAX;
        for i in 0..20_000u32 {
            let key = if i % 20 == 0 { heavy } else { i };
            summary.add(key);
            *truth.entry(key).or_default() += 1;
        }
        assert_eq!(summary.counters().len(), CAPACITY);
        let bound = summary.total() / CAPACITY as u64;
        assert!(summary.floor() <= bound);
        let hitter = summary.get(&heavy).expect("the heavy hitter is monitored");
        assert_eq!((hitter.count, hitter.error), (truth[&heavy], 0));
        for counter in summary.counters() {
            let true_count = truth[&counter.key];
            assert!(counter.guaranteed() <= true_count && true_count <= counter.count);
            assert!(counter.error <= bound);
        }
    }
}
