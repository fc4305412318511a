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
    /// A pseudo-random generator of the kind weak stacks ship (`Prng`, preset parameters).
    Prng(PrngPreset),
}

/// The pseudo-random generators the responder offers by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrngPreset {
    /// Marsaglia's xorshift128 (11, 8, 19).
    Xorshift128,
    /// A 32-bit Galois LFSR (x^32 + x^22 + x^2 + x + 1), 8 steps per ISN.
    Lfsr32,
    /// The Numerical Recipes LCG, the ISN its whole state.
    Lcg,
    /// MSVC's 15-bit `rand()` as `(rand() << 16) | rand()`.
    MsvcRand,
    /// `java.util.Random.nextInt()`.
    JavaRandom,
    /// glibc `random()`: additive lagged Fibonacci (3, 31), output shifted right by one.
    GlibcRandom,
    /// picoTCP's `pico_rand()`: Numerical Recipes LCG step XOR the inverted millisecond tick.
    PicoTcp,
}

impl PrngPreset {
    pub fn prng(self) -> Prng {
        match self {
            PrngPreset::Xorshift128 => Prng::Xorshift128 {
                shifts: (11, 8, 19),
            },
            PrngPreset::Lfsr32 => Prng::GaloisLfsr {
                width: 32,
                taps: 0x8020_0003,
                steps: 8,
            },
            PrngPreset::Lcg => Prng::Lcg {
                multiplier: 1_664_525,
                increment: 1_013_904_223,
                bits: 32,
            },
            PrngPreset::MsvcRand => Prng::ClibRand {
                lcg: ClibLcg::Msvc,
                composition: RandComposition::HighFirst16,
            },
            PrngPreset::JavaRandom => Prng::JavaNextInt,
            PrngPreset::GlibcRandom => Prng::GlibcRandom,
            PrngPreset::PicoTcp => Prng::StepWithClock {
                multiplier: 1_664_525,
                increment: 1_013_904_223,
                ticks_per_second: 1000,
                mix: ClockMix::XorComplement,
            },
        }
    }
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
    pub const ALL: [GeneratorKind; 14] = [
        GeneratorKind::Constant,
        GeneratorKind::Step64k,
        GeneratorKind::Clock250k,
        GeneratorKind::SmallRandom,
        GeneratorKind::Uniform,
        GeneratorKind::Pool,
        GeneratorKind::Rfc6528,
        GeneratorKind::Prng(PrngPreset::Xorshift128),
        GeneratorKind::Prng(PrngPreset::Lfsr32),
        GeneratorKind::Prng(PrngPreset::Lcg),
        GeneratorKind::Prng(PrngPreset::MsvcRand),
        GeneratorKind::Prng(PrngPreset::JavaRandom),
        GeneratorKind::Prng(PrngPreset::GlibcRandom),
        GeneratorKind::Prng(PrngPreset::PicoTcp),
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
            GeneratorKind::Prng(preset) => match preset {
                PrngPreset::Xorshift128 => "xorshift128",
                PrngPreset::Lfsr32 => "lfsr32",
                PrngPreset::Lcg => "lcg",
                PrngPreset::MsvcRand => "msvc-rand",
                PrngPreset::JavaRandom => "java-random",
                PrngPreset::GlibcRandom => "glibc-random",
                PrngPreset::PicoTcp => "picotcp",
            },
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
            GeneratorKind::Prng(preset) => preset.prng().build(rng.random()),
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

/// Pseudo-random ISN generators of the kinds weak stacks ship (Forescout's NUMBER:JACK found
/// LCGs, LCGs mixed with timers and plain `rand()` in embedded TCP/IP stacks), with their
/// parameters. Each is written from its definition (C library sources, the Java and C++
/// specifications, Marsaglia's papers), independently of the scorer's predictors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prng {
    /// Marsaglia's xorshift on a 32-bit state with shifts (left, right, left); ISN = state.
    Xorshift32 { shifts: (u32, u32, u32) },
    /// xorshift on a 64-bit state (left, right, left); ISN = its low or high half.
    Xorshift64 { shifts: (u32, u32, u32), high: bool },
    /// Marsaglia's xorshift128 with shifts (a, b, c): t = x ^ (x << a), w' = w ^ (w >> c) ^ t ^
    /// (t >> b); (11, 8, 19) is his; ISN = the new word.
    Xorshift128 { shifts: (u32, u32, u32) },
    /// A Galois LFSR of `width` ≤ 64 bits with feedback `taps`, stepped `steps` times per
    /// ISN; ISN = the state's low 32 bits.
    GaloisLfsr { width: u32, taps: u64, steps: u32 },
    /// MT19937 (`std::mt19937`), seeded with `init_genrand`.
    Mt19937,
    /// x' = a·x + c mod 2^bits (bits 31 or 32); ISN = x.
    Lcg {
        multiplier: u32,
        increment: u32,
        bits: u32,
    },
    /// Lehmer / MINSTD: x' = a·x mod 2^31 − 1; ISN = x.
    Lehmer { multiplier: u32 },
    /// x_i = x_{i−long} + x_{i−short} (or x_{i−long} − x_{i−short}) mod 2^32, ISN = x_i >> shift.
    LaggedFibonacci {
        short: usize,
        long: usize,
        subtract: bool,
        shift: u32,
    },
    /// glibc `random()` (TYPE_3), seeded as `srandom` does.
    GlibcRandom,
    /// An ISN made of calls of a C library's 15-bit `rand()`.
    ClibRand {
        lcg: ClibLcg,
        composition: RandComposition,
    },
    /// glibc `rand_r()`: 31 bits from three LCG steps.
    RandR,
    /// An ISN of the top 16 bits of two steps of a 32-bit LCG, `(r() << 16) | r()`.
    High16 { multiplier: u32, increment: u32 },
    /// `java.util.Random.nextInt()`.
    JavaNextInt,
    /// seed = (a·seed + c) mixed with a clock of `ticks_per_second`; ISN = seed (picoTCP).
    StepWithClock {
        multiplier: u32,
        increment: u32,
        ticks_per_second: u64,
        mix: ClockMix,
    },
}

/// The C libraries whose `rand()` returns bits 30..16 of a 32-bit LCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClibLcg {
    /// The ANSI C example (1103515245, 12345).
    Ansi,
    /// MSVC (214013, 2531011).
    Msvc,
    /// Borland C/C++ (22695477, 1).
    Borland,
}

impl ClibLcg {
    fn constants(self) -> (u32, u32) {
        match self {
            ClibLcg::Ansi => (1_103_515_245, 12_345),
            ClibLcg::Msvc => (214_013, 2_531_011),
            ClibLcg::Borland => (22_695_477, 1),
        }
    }
}

/// How 15-bit `rand()` calls make a 32-bit ISN, the first call first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RandComposition {
    /// `(rand() << 16) | rand()`.
    HighFirst16,
    /// `(rand() << 15) | rand()`.
    HighFirst15,
    /// `lo = rand(); hi = rand(); (hi << 16) | lo`.
    LowFirst16,
    /// `(rand() << 30) ^ (rand() << 15) ^ rand()`.
    Three,
}

/// How a generator step and a clock are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockMix {
    /// step ^ ~tick (picoTCP).
    XorComplement,
    /// step ^ tick.
    Xor,
    /// step + tick.
    Add,
}

impl Prng {
    /// A generator of this kind whose state comes from `seed`.
    pub fn build(self, seed: u64) -> Box<dyn IsnGenerator + Send> {
        let mut rng = StdRng::seed_from_u64(seed);
        match self {
            Prng::Mt19937 => Box::new(Mt19937::new(rng.random())),
            Prng::GlibcRandom => Box::new(GlibcRandom::new(rng.random())),
            Prng::Lehmer { .. } => Box::new(PrngState {
                prng: self,
                words: vec![rng.random_range(1..LEHMER_MODULUS)],
            }),
            Prng::LaggedFibonacci { long, .. } => Box::new(PrngState {
                prng: self,
                words: (0..long).map(|_| rng.random::<u32>() as u64).collect(),
            }),
            _ => Box::new(PrngState {
                prng: self,
                // Never all zero: xorshift and LFSR states must not be.
                words: (0..4).map(|_| rng.random::<u64>() | 1).collect(),
            }),
        }
    }
}

const LEHMER_MODULUS: u64 = (1 << 31) - 1;

/// Any `Prng` but the two with their own seeding, stepped on a few words of state.
struct PrngState {
    prng: Prng,
    words: Vec<u64>,
}

impl IsnGenerator for PrngState {
    fn next_isn(&mut self, _: &FourTuple, now_ns: u64) -> u32 {
        let w = &mut self.words;
        match self.prng {
            Prng::Xorshift32 { shifts: (a, b, c) } => {
                let mut x = w[0] as u32;
                x ^= x << a;
                x ^= x >> b;
                x ^= x << c;
                w[0] = u64::from(x);
                x
            }
            Prng::Xorshift64 {
                shifts: (a, b, c),
                high,
            } => {
                let mut x = w[0];
                x ^= x << a;
                x ^= x >> b;
                x ^= x << c;
                w[0] = x;
                if high { (x >> 32) as u32 } else { x as u32 }
            }
            Prng::Xorshift128 { shifts: (a, b, c) } => {
                let [x, y, z, v] = [w[0], w[1], w[2], w[3]].map(|word| word as u32);
                let t = x ^ (x << a);
                let next = v ^ (v >> c) ^ t ^ (t >> b);
                w.copy_from_slice(&[y, z, v, next].map(u64::from));
                next
            }
            Prng::GaloisLfsr { width, taps, steps } => {
                let mask = if width == 64 {
                    u64::MAX
                } else {
                    (1 << width) - 1
                };
                let mut s = w[0] & mask;
                for _ in 0..steps {
                    let out = s & 1;
                    s >>= 1;
                    if out == 1 {
                        s ^= taps;
                    }
                }
                w[0] = s;
                s as u32
            }
            Prng::Lcg {
                multiplier,
                increment,
                bits,
            } => {
                let mask = if bits >= 32 {
                    u32::MAX
                } else {
                    (1 << bits) - 1
                };
                let x = (w[0] as u32)
                    .wrapping_mul(multiplier)
                    .wrapping_add(increment)
                    & mask;
                w[0] = u64::from(x);
                x
            }
            Prng::Lehmer { multiplier } => {
                let x = w[0] * u64::from(multiplier) % LEHMER_MODULUS;
                w[0] = x;
                x as u32
            }
            Prng::LaggedFibonacci {
                short,
                long,
                subtract,
                shift,
            } => {
                // words[0] is x_{i−long}, words[long − short] is x_{i−short}.
                let (far, near) = (w[0] as u32, w[long - short] as u32);
                let x = if subtract {
                    far.wrapping_sub(near)
                } else {
                    far.wrapping_add(near)
                };
                w.remove(0);
                w.push(u64::from(x));
                x >> shift
            }
            Prng::ClibRand { lcg, composition } => {
                let (a, c) = lcg.constants();
                let mut rand = || {
                    let x = (w[0] as u32).wrapping_mul(a).wrapping_add(c);
                    w[0] = u64::from(x);
                    (x >> 16) & 0x7fff
                };
                match composition {
                    RandComposition::HighFirst16 => (rand() << 16) | rand(),
                    RandComposition::HighFirst15 => (rand() << 15) | rand(),
                    RandComposition::LowFirst16 => {
                        let low = rand();
                        (rand() << 16) | low
                    }
                    RandComposition::Three => (rand() << 30) ^ (rand() << 15) ^ rand(),
                }
            }
            Prng::RandR => {
                let mut next = w[0] as u32;
                let mut step = |modulo: u32| {
                    next = next.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (next / 65_536) % modulo
                };
                let mut result = step(2048);
                result = (result << 10) ^ step(1024);
                result = (result << 10) ^ step(1024);
                w[0] = u64::from(next);
                result
            }
            Prng::High16 {
                multiplier,
                increment,
            } => {
                let mut r = || {
                    let x = (w[0] as u32)
                        .wrapping_mul(multiplier)
                        .wrapping_add(increment);
                    w[0] = u64::from(x);
                    x >> 16
                };
                (r() << 16) | r()
            }
            Prng::JavaNextInt => {
                const MULTIPLIER: u64 = 0x5_DEEC_E66D;
                const MASK: u64 = (1 << 48) - 1;
                // `new Random(seed)` scrambles the seed once.
                if w[1] != 0 {
                    w[0] = (w[0] ^ MULTIPLIER) & MASK;
                    w[1] = 0;
                }
                w[0] = (w[0].wrapping_mul(MULTIPLIER).wrapping_add(11)) & MASK;
                (w[0] >> 16) as u32
            }
            Prng::StepWithClock {
                multiplier,
                increment,
                ticks_per_second,
                mix,
            } => {
                let tick =
                    (u128::from(now_ns) * u128::from(ticks_per_second) / 1_000_000_000) as u32;
                let step = (w[0] as u32)
                    .wrapping_mul(multiplier)
                    .wrapping_add(increment);
                let x = match mix {
                    ClockMix::XorComplement => step ^ !tick,
                    ClockMix::Xor => step ^ tick,
                    ClockMix::Add => step.wrapping_add(tick),
                };
                w[0] = u64::from(x);
                x
            }
            Prng::Mt19937 | Prng::GlibcRandom => unreachable!("seeded by their own types"),
        }
    }
}

/// MT19937 as in Matsumoto and Nishimura's reference `mt19937ar.c`.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next(&mut self) -> u32 {
        if self.index == 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut x = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    x ^= 0x9908_b0df;
                }
                self.state[i] = x;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

impl IsnGenerator for Mt19937 {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        self.next()
    }
}

/// glibc's `random()` with its default TYPE_3 state (31 words, separation 3), as `srandom_r`
/// seeds it and `random_r` steps it.
struct GlibcRandom {
    state: [u32; 31],
    front: usize,
    rear: usize,
}

impl GlibcRandom {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 31];
        let mut word = i64::from(if seed == 0 { 1 } else { seed } as i32);
        state[0] = word as u32;
        for slot in state.iter_mut().skip(1) {
            // 16807 · word mod 2^31 − 1 without overflow (Schrage), as glibc writes it.
            let (hi, lo) = (word / 127_773, word % 127_773);
            word = 16_807 * lo - 2_836 * hi;
            if word < 0 {
                word += 2_147_483_647;
            }
            *slot = word as u32;
        }
        let mut generator = Self {
            state,
            front: 3,
            rear: 0,
        };
        for _ in 0..310 {
            generator.next();
        }
        generator
    }

    fn next(&mut self) -> u32 {
        let value = self.state[self.front].wrapping_add(self.state[self.rear]);
        self.state[self.front] = value;
        self.front = (self.front + 1) % 31;
        self.rear = (self.rear + 1) % 31;
        value >> 1
    }
}

impl IsnGenerator for GlibcRandom {
    fn next_isn(&mut self, _: &FourTuple, _: u64) -> u32 {
        self.next()
    }
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

    #[test]
    fn prng_generators_match_their_reference_outputs() {
        // mt19937ar.c: init_genrand(5489) gives 3499211612 first.
        assert_eq!(Mt19937::new(5489).next(), 3_499_211_612);
        // glibc: srandom(1) then random() gives 1804289383, 846930886, 1681692777.
        let mut random = GlibcRandom::new(1);
        assert_eq!(
            [random.next(), random.next(), random.next()],
            [1_804_289_383, 846_930_886, 1_681_692_777]
        );
        // java.util.Random(42).nextInt() is -1170105035.
        let mut java = PrngState {
            prng: Prng::JavaNextInt,
            words: vec![42, 1],
        };
        assert_eq!(java.next_isn(&tuple(1), 0) as i32, -1_170_105_035);
        // MSVC: srand(1); rand() gives 41, 18467, 6334.
        let mut msvc = PrngState {
            prng: Prng::ClibRand {
                lcg: ClibLcg::Msvc,
                composition: RandComposition::HighFirst16,
            },
            words: vec![1],
        };
        assert_eq!(msvc.next_isn(&tuple(1), 0), (41 << 16) | 18_467);
        // MINSTD 16807 from 1: 16807, 282475249.
        let mut lehmer = PrngState {
            prng: Prng::Lehmer { multiplier: 16_807 },
            words: vec![1],
        };
        assert_eq!(
            [lehmer.next_isn(&tuple(1), 0), lehmer.next_isn(&tuple(1), 0)],
            [16_807, 282_475_249]
        );
    }

    #[test]
    fn picotcp_mixes_the_inverted_millisecond_tick() {
        let mut generator = PrngPreset::PicoTcp.prng().build(3);
        let first = generator.next_isn(&tuple(1), 5_000_000);
        let second = generator.next_isn(&tuple(2), 7_000_000);
        assert_eq!(
            second,
            first.wrapping_mul(1_664_525).wrapping_add(1_013_904_223) ^ !7u32
        );
    }
}
