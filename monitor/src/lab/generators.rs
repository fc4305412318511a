//! ISN generators for the weak responder, from hopeless (constant) to sound (RFC 6528).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// A TCP connection as seen in the SYN-ACK: `saddr:sport` is the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FourTuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// Picks the initial sequence number of each new connection.
pub trait IsnGenerator {
    /// `now_ns` is CLOCK_MONOTONIC in nanoseconds.
    fn next_isn(&mut self, four_tuple: &FourTuple, now_ns: u64) -> u32;
}

/// The generators the responder offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeneratorKind {
    /// The same ISN for every connection.
    Constant,
    /// Each ISN is the previous one + 64000 (old BSD).
    Step64k,
    /// A counter ticking 250 000 times per second (RFC 793's 4 µs clock).
    Clock250k,
    /// Each ISN is the previous one + a random increment uniform in [1, 2^16].
    SmallRandom,
    /// Uniformly random 32-bit ISNs.
    Uniform,
    /// Uniform, except that a tenth of the ISNs are drawn from a fixed pool of 100 values.
    Pool,
    /// RFC 6528: a 64 ns clock plus a keyed hash of the four-tuple.
    Rfc6528,
}

/// Increment of [`GeneratorKind::Step64k`].
pub const STEP64K_INCREMENT: u32 = 64_000;
/// Ticks per second of [`GeneratorKind::Clock250k`].
pub const CLOCK250K_HZ: u64 = 250_000;
/// Largest increment of [`GeneratorKind::SmallRandom`].
pub const SMALL_RANDOM_MAX_INCREMENT: u32 = 1 << 16;
/// Size of the ISN pool of [`GeneratorKind::Pool`].
pub const POOL_SIZE: usize = 100;
/// Share of [`GeneratorKind::Pool`]'s ISNs that come from the pool.
pub const POOL_SHARE: f64 = 0.1;
/// Nanoseconds per tick of the clock of [`GeneratorKind::Rfc6528`].
pub const RFC6528_TICK_NS: u64 = 64;

impl GeneratorKind {
    pub const ALL: [GeneratorKind; 7] = [
        GeneratorKind::Constant,
        GeneratorKind::Step64k,
        GeneratorKind::Clock250k,
        GeneratorKind::SmallRandom,
        GeneratorKind::Uniform,
        GeneratorKind::Pool,
        GeneratorKind::Rfc6528,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GeneratorKind::Constant => "constant",
            GeneratorKind::Step64k => "step64k",
            GeneratorKind::Clock250k => "clock250k",
            GeneratorKind::SmallRandom => "small-random",
            GeneratorKind::Uniform => "uniform",
            GeneratorKind::Pool => "pool",
            GeneratorKind::Rfc6528 => "rfc6528",
        }
    }

    /// A generator of this kind; the same seed gives the same ISNs for the same inputs.
    pub fn build(self, seed: u64) -> Box<dyn IsnGenerator + Send> {
        let mut rng = StdRng::seed_from_u64(seed);
        match self {
            GeneratorKind::Constant => Box::new(Constant(rng.random())),
            GeneratorKind::Step64k => Box::new(Step64k { next: rng.random() }),
            GeneratorKind::Clock250k => Box::new(Clock250k {
                offset: rng.random(),
            }),
            GeneratorKind::SmallRandom => Box::new(SmallRandom {
                last: rng.random(),
                rng,
            }),
            GeneratorKind::Uniform => Box::new(Uniform(rng)),
            GeneratorKind::Pool => Box::new(Pool {
                pool: (0..POOL_SIZE).map(|_| rng.random()).collect(),
                rng,
            }),
            GeneratorKind::Rfc6528 => Box::new(Rfc6528 { key: rng.random() }),
        }
    }
}

impl fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GeneratorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown generator {s:?}; one of: {}", names.join(", "))
            })
    }
}

struct Constant(u32);

impl IsnGenerator for Constant {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        self.0
    }
}

struct Step64k {
    next: u32,
}

impl IsnGenerator for Step64k {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        let isn = self.next;
        self.next = isn.wrapping_add(STEP64K_INCREMENT);
        isn
    }
}

struct Clock250k {
    offset: u32,
}

impl IsnGenerator for Clock250k {
    fn next_isn(&mut self, _: &FourTuple, now_ns: u64) -> u32 {
        let ticks = u128::from(now_ns) * u128::from(CLOCK250K_HZ) / 1_000_000_000;
        self.offset.wrapping_add(ticks as u32)
    }
}

struct SmallRandom {
    last: u32,
    rng: StdRng,
}

impl IsnGenerator for SmallRandom {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        let increment = self.rng.random_range(1..=SMALL_RANDOM_MAX_INCREMENT);
        self.last = self.last.wrapping_add(increment);
        self.last
    }
}

struct Uniform(StdRng);

impl IsnGenerator for Uniform {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        self.0.random()
    }
}

struct Pool {
    pool: Vec<u32>,
    rng: StdRng,
}

impl IsnGenerator for Pool {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        if self.rng.random_bool(POOL_SHARE) {
            self.pool[self.rng.random_range(0..POOL_SIZE)]
        } else {
            self.rng.random()
        }
    }
}

struct Rfc6528 {
    key: [u64; 2],
}

impl IsnGenerator for Rfc6528 {
    fn next_isn(&mut self, four_tuple: &FourTuple, now_ns: u64) -> u32 {
        let clock = (now_ns / RFC6528_TICK_NS) as u32;
        clock.wrapping_add(keyed_hash(self.key, four_tuple) as u32)
    }
}

/// RFC 6528's F(): a keyed hash of the four-tuple. Each word is absorbed with the
/// SplitMix64 finaliser; unpredictable without the key, which is all the lab needs (it is
/// not meant to resist cryptanalysis).
fn keyed_hash(key: [u64; 2], four_tuple: &FourTuple) -> u64 {
    let ports = (u64::from(four_tuple.sport) << 16) | u64::from(four_tuple.dport);
    let mut state = key[0];
    for word in address_words(four_tuple.saddr)
        .into_iter()
        .chain(address_words(four_tuple.daddr))
        .chain([ports])
    {
        state = splitmix64_finalise(state ^ word);
    }
    splitmix64_finalise(state ^ key[1])
}

fn address_words(address: IpAddr) -> [u64; 2] {
    let bits = match address {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    [(bits >> 64) as u64, bits as u64]
}

fn splitmix64_finalise(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use super::*;

    fn tuple(client_port: u16) -> FourTuple {
        FourTuple {
            saddr: Ipv4Addr::new(10, 0, 0, 1).into(),
            sport: 80,
            daddr: Ipv4Addr::new(10, 0, 0, 2).into(),
            dport: client_port,
        }
    }

    /// ISNs for 1000 connections from successive client ports, one every `spacing_ns`.
    fn isns(kind: GeneratorKind, seed: u64, spacing_ns: u64) -> Vec<u32> {
        let mut generator = kind.build(seed);
        (0..1000u16)
            .map(|i| generator.next_isn(&tuple(40_000 + i), u64::from(i) * spacing_ns))
            .collect()
    }

    fn differences(isns: &[u32]) -> Vec<u32> {
        isns.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
    }

    #[test]
    fn names_round_trip() {
        for kind in GeneratorKind::ALL {
            assert_eq!(kind.to_string().parse::<GeneratorKind>(), Ok(kind));
        }
        assert_eq!("small-random".parse(), Ok(GeneratorKind::SmallRandom));
        assert!(
            "random"
                .parse::<GeneratorKind>()
                .unwrap_err()
                .contains("uniform")
        );
    }

    #[test]
    fn same_seed_same_isns_other_seed_other_isns() {
        for kind in GeneratorKind::ALL {
            assert_eq!(isns(kind, 7, 1000), isns(kind, 7, 1000), "{kind}");
            assert_ne!(isns(kind, 7, 1000), isns(kind, 8, 1000), "{kind}");
        }
    }

    #[test]
    fn constant_never_changes() {
        let isns = isns(GeneratorKind::Constant, 1, 1000);
        assert!(isns.iter().all(|&isn| isn == isns[0]));
    }

    #[test]
    fn step64k_adds_64000() {
        let diffs = differences(&isns(GeneratorKind::Step64k, 1, 1000));
        assert!(diffs.iter().all(|&d| d == STEP64K_INCREMENT));
    }

    #[test]
    fn clock250k_ticks_every_4_microseconds() {
        // 1 ms apart: 250 ticks.
        let diffs = differences(&isns(GeneratorKind::Clock250k, 1, 1_000_000));
        assert!(diffs.iter().all(|&d| d == 250), "{diffs:?}");
    }

    #[test]
    fn small_random_increments_stay_in_range_and_vary() {
        let diffs = differences(&isns(GeneratorKind::SmallRandom, 1, 1000));
        assert!(
            diffs
                .iter()
                .all(|&d| (1..=SMALL_RANDOM_MAX_INCREMENT).contains(&d))
        );
        let distinct: HashSet<u32> = diffs.iter().copied().collect();
        assert!(distinct.len() > 900);
    }

    #[test]
    fn uniform_covers_the_whole_range() {
        let isns = isns(GeneratorKind::Uniform, 1, 1000);
        let distinct: HashSet<u32> = isns.iter().copied().collect();
        assert_eq!(distinct.len(), isns.len());
        // Each of the 16 top-nibble buckets gets some of the 1000 draws (62 expected).
        let buckets: HashSet<u32> = isns.iter().map(|isn| isn >> 28).collect();
        assert_eq!(buckets.len(), 16);
    }

    #[test]
    fn pool_repeats_about_a_tenth_of_its_isns() {
        let isns = isns(GeneratorKind::Pool, 1, 1000);
        let distinct: HashSet<u32> = isns.iter().copied().collect();
        let repeats = isns.len() - distinct.len();
        // ~100 pool draws over 100 values: most of them repeat an earlier one.
        assert!((20..=100).contains(&repeats), "{repeats} repeats");
    }

    #[test]
    fn rfc6528_is_clock_plus_a_per_tuple_offset() {
        let mut generator = GeneratorKind::Rfc6528.build(1);
        let first = generator.next_isn(&tuple(40_000), 0);
        // The same tuple 64 µs later: exactly 1000 ticks further.
        assert_eq!(
            generator.next_isn(&tuple(40_000), 64_000),
            first.wrapping_add(1000)
        );
        // Other tuples at the same time: unrelated offsets.
        let others: HashSet<u32> = (1..=100)
            .map(|p| generator.next_isn(&tuple(40_000 + p), 0))
            .collect();
        assert_eq!(others.len(), 100);
        assert!(!others.contains(&first));
    }
}
