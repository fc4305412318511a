//! Predictor-based estimators in the style of NIST SP 800-90B §6.3.7–6.3.10 (Lag, MultiMMC,
//! LZ78Y), run over each ISN bit position and over the bytes of the fixed-step residuals.
//!
//! Each predictor guesses symbol i from symbols before i only. Under the null (uniform,
//! independent symbols over an alphabet of k) every guess is right with probability exactly
//! 1/k whatever the predictor does, so the number right in N guesses is Binomial(N, 1/k)
//! (a guess not made counts as wrong, which only makes the test conservative). That gives an
//! exact p-value instead of 90B's entropy bound.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::stats::binomial_at_least;
use super::window::Sample;

/// Below this many symbols no predictor can reach the per-test level, so none is run.
pub const MIN_SYMBOLS: usize = 32;
/// 90B parameters (upper limits: see `depth_for`).
const LAG_DEPTH: usize = 128;
const MMC_DEPTH: usize = 16;
const LZ78Y_DEPTH: usize = 16;
const LZ78Y_MAX_DICTIONARY: usize = 65_536;
/// SYN cookies may structure the low byte, so cookie samples skip bit streams 0..8.
const COOKIE_FREE_BITS: u32 = 8;

const BIT_STREAMS: usize = 32;
const RESIDUAL_BYTE_STREAMS: usize = 4;
const PREDICTORS: [Predictor; 3] = [Predictor::Lag, Predictor::MultiMmc, Predictor::Lz78y];
/// The Bonferroni family: every (stream, predictor) pair, tested or not.
pub const FAMILY_SIZE: usize = (BIT_STREAMS + RESIDUAL_BYTE_STREAMS) * PREDICTORS.len();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predictor {
    Lag,
    MultiMmc,
    Lz78y,
}

impl Predictor {
    fn name(self) -> &'static str {
        match self {
            Predictor::Lag => "Lag",
            Predictor::MultiMmc => "MultiMMC",
            Predictor::Lz78y => "LZ78Y",
        }
    }
}

/// The (stream, predictor) pair that did best against its null.
pub struct PredictorHit {
    pub stream: String,
    pub predictor: &'static str,
    pub correct: usize,
    pub predictions: usize,
    /// Unadjusted; the caller applies Bonferroni over `streams_tested`.
    pub p_value: f64,
    pub streams_tested: usize,
}

/// Symbols of one stream, each below `alphabet` (2 or 256).
struct Stream {
    label: String,
    alphabet: usize,
    symbols: Vec<u8>,
}

pub fn most_predictable(window: &[Sample], step_residuals: &[i32]) -> Option<PredictorHit> {
    let mut best: Option<PredictorHit> = None;
    STORE.with_borrow_mut(|store| {
        for stream in streams(window, step_residuals) {
            if stream.symbols.len() < MIN_SYMBOLS {
                continue;
            }
            for predictor in PREDICTORS {
                let correct = match predictor {
                    Predictor::Lag => lag(&stream.symbols),
                    Predictor::MultiMmc => multi_mmc(&stream, store),
                    Predictor::Lz78y => lz78y(&stream, store),
                };
                // The first symbol has nothing before it: predictions start at symbol 1.
                let predictions = stream.symbols.len() - 1;
                let p_value = binomial_at_least(
                    correct as u64,
                    predictions as u64,
                    1.0 / stream.alphabet as f64,
                );
                if best.as_ref().is_none_or(|b| p_value < b.p_value) {
                    best = Some(PredictorHit {
                        stream: stream.label.clone(),
                        predictor: predictor.name(),
                        correct,
                        predictions,
                        p_value,
                        streams_tested: FAMILY_SIZE,
                    });
                }
            }
        }
    });
    best
}

thread_local! {
    /// The 2 MiB of flat tables are allocated once per thread, not once per report.
    static STORE: std::cell::RefCell<ContextStore> = std::cell::RefCell::new(ContextStore::default());
}

fn streams(window: &[Sample], step_residuals: &[i32]) -> Vec<Stream> {
    let bits = (0..BIT_STREAMS as u32).map(|bit| Stream {
        label: format!("ISN bit {bit}"),
        alphabet: 2,
        symbols: window
            .iter()
            .filter(|s| bit >= COOKIE_FREE_BITS || !s.syncookie)
            .map(|s| (s.isn >> bit & 1) as u8)
            .collect(),
    });
    let bytes = (0..RESIDUAL_BYTE_STREAMS as u32).map(|byte| Stream {
        label: format!("byte {byte} of the fixed-step residuals"),
        alphabet: 256,
        symbols: step_residuals
            .iter()
            .map(|&e| (e as u32 >> (8 * byte)) as u8)
            .collect(),
    });
    bits.chain(bytes).collect()
}

/// 90B Lag predictor: predict the symbol `d` back, for the `d ≤ 128` that has been right most.
fn lag(symbols: &[u8]) -> usize {
    // A lag beyond half the stream is scored on fewer symbols than it predicts; 90B sizes D
    // for a million samples.
    let depth = LAG_DEPTH.min(symbols.len() / 2).max(1);
    // Newest first, so that the symbols 1..=d back from i are a forward run, which the
    // compiler vectorizes (the backward walk it did not).
    let newest_first: Vec<u8> = symbols.iter().rev().copied().collect();
    let mut scores = [0u32; LAG_DEPTH + 1];
    let mut winner = 1;
    let mut correct = 0;
    for (i, &current) in symbols.iter().enumerate().skip(1) {
        if symbols[i - winner] == current {
            correct += 1;
        }
        let lags = i.min(depth);
        let back = &newest_first[symbols.len() - i..];
        // Past the first 128 symbols every step scores all lags: a constant length the
        // compiler unrolls.
        winner = if lags == LAG_DEPTH {
            score_lags(&mut scores[1..=LAG_DEPTH], &back[..LAG_DEPTH], current)
        } else {
            score_lags(&mut scores[1..=lags], &back[..lags], current)
        };
    }
    correct
}

/// Counts which lags would have predicted `current` (`back[d - 1]` is the symbol `d` back),
/// and returns the lag right most so far, the longest of those tied (as 90B's `>=` scan picks).
#[inline(always)]
fn score_lags(scores: &mut [u32], back: &[u8], current: u8) -> usize {
    // Branch-free scoring: for random symbols a branch here mispredicts half the time.
    for (score, &earlier) in scores.iter_mut().zip(back) {
        *score += u32::from(earlier == current);
    }
    let top = scores.iter().copied().max().unwrap_or_default();
    1 + scores
        .iter()
        .rposition(|&score| score == top)
        .unwrap_or_default()
}

/// 90B MultiMMC predictor: Markov models of order 1..=16; use the order that has been right most.
fn multi_mmc(stream: &Stream, store: &mut ContextStore) -> usize {
    store.reset(stream.alphabet);
    let symbols = &stream.symbols;
    let mut scores = [0u32; MMC_DEPTH];
    let mut winner = 0;
    let mut correct = 0;
    for (i, &actual) in symbols.iter().enumerate().skip(1) {
        let (keys, count) = context_keys(symbols, i, stream.alphabet, depth_for(MMC_DEPTH, stream));
        let mut guesses = [None; MMC_DEPTH];
        for (guess, &key) in guesses.iter_mut().zip(&keys[..count]) {
            *guess = store.most_frequent(key).map(|(symbol, _)| symbol);
        }
        if guesses[winner] == Some(actual) {
            correct += 1;
        }
        for order in 0..count {
            if guesses[order] == Some(actual) {
                scores[order] += 1;
                if scores[order] >= scores[winner] {
                    winner = order;
                }
            }
            store.add(keys[order], actual);
        }
    }
    correct
}

/// 90B LZ78Y predictor: a dictionary of the strings of up to 16 symbols seen so far; predict
/// the most frequent follower of the previous strings, longer strings winning ties.
fn lz78y(stream: &Stream, store: &mut ContextStore) -> usize {
    store.reset(stream.alphabet);
    let symbols = &stream.symbols;
    let mut correct = 0;
    for (i, &actual) in symbols.iter().enumerate().skip(1) {
        let (keys, count) =
            context_keys(symbols, i, stream.alphabet, depth_for(LZ78Y_DEPTH, stream));
        let mut guess: Option<(u8, u32)> = None;
        for &key in keys[..count].iter().rev() {
            if let Some((symbol, seen)) = store.most_frequent(key)
                && guess.is_none_or(|(_, best)| seen > best)
            {
                guess = Some((symbol, seen));
            }
        }
        if guess.map(|(symbol, _)| symbol) == Some(actual) {
            correct += 1;
        }
        for &key in &keys[..count] {
            if store.contains(key) || store.len() < LZ78Y_MAX_DICTIONARY {
                store.add(key, actual);
            }
        }
    }
    correct
}

/// Context length actually used: a context of d symbols recurs about n/k^d times in n symbols,
/// so contexts longer than log_k(n) have almost never been seen before and cannot predict.
fn depth_for(limit: usize, stream: &Stream) -> usize {
    let per_symbol_bits = (stream.alphabet as f64).log2();
    let useful = ((stream.symbols.len() as f64).log2() / per_symbol_bits).ceil() as usize;
    limit.min(useful.max(1))
}

/// Longest context any predictor uses.
const MAX_DEPTH: usize = 16;

/// Keys of the contexts of lengths 1..=depth ending just before symbol i (fewer if i < depth).
/// Bit contexts are packed exactly (below 2^17); byte contexts are hashed, which still makes
/// each guess a function of the past only, so the null distribution stays exact.
fn context_keys(
    symbols: &[u8],
    i: usize,
    alphabet: usize,
    depth: usize,
) -> ([u64; MAX_DEPTH], usize) {
    let mut keys = [0u64; MAX_DEPTH];
    let count = depth.min(i);
    let mut packed = 0u64;
    for d in 1..=count {
        let symbol = u64::from(symbols[i - d]);
        packed = if alphabet == 2 {
            packed | symbol << (d - 1)
        } else {
            mix(packed ^ symbol ^ (d as u64) << 8)
        };
        keys[d - 1] = if alphabet == 2 {
            1 << d | packed
        } else {
            packed
        };
    }
    (keys, count)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hasher for keys that are already well mixed (or small distinct integers).
#[derive(Default)]
struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = mix(x);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<PremixedHasher>>;

/// Bit contexts of up to 16 bits are packed below this, so a flat table holds them all.
const FLAT_KEYS: usize = 1 << (MAX_DEPTH + 1);

/// Follower counts per context: the best follower and its count, and every (context, symbol).
/// Binary streams use flat tables (reset by the keys touched); byte streams use hash maps.
struct ContextStore {
    binary: bool,
    flat_best: Vec<(u8, u32)>,
    flat_counts: Vec<[u32; 2]>,
    touched: Vec<u32>,
    best: FastMap<u64, (u8, u32)>,
    counts: FastMap<(u64, u8), u32>,
}

impl Default for ContextStore {
    fn default() -> Self {
        Self {
            binary: true,
            flat_best: vec![(0, 0); FLAT_KEYS],
            flat_counts: vec![[0, 0]; FLAT_KEYS],
            touched: Vec::new(),
            best: FastMap::default(),
            counts: FastMap::default(),
        }
    }
}

impl ContextStore {
    fn reset(&mut self, alphabet: usize) {
        for &key in &self.touched {
            self.flat_best[key as usize] = (0, 0);
            self.flat_counts[key as usize] = [0, 0];
        }
        self.touched.clear();
        self.best.clear();
        self.counts.clear();
        self.binary = alphabet == 2;
    }

    fn len(&self) -> usize {
        if self.binary {
            self.touched.len()
        } else {
            self.best.len()
        }
    }

    fn contains(&self, key: u64) -> bool {
        self.most_frequent(key).is_some()
    }

    /// The most frequent follower of `key` and how often it followed.
    fn most_frequent(&self, key: u64) -> Option<(u8, u32)> {
        let best = if self.binary {
            self.flat_best[key as usize]
        } else {
            self.best.get(&key).copied()?
        };
        (best.1 > 0).then_some(best)
    }

    fn add(&mut self, key: u64, symbol: u8) {
        let (count, best) = if self.binary {
            let slot = &mut self.flat_counts[key as usize];
            if *slot == [0, 0] {
                self.touched.push(key as u32);
            }
            slot[usize::from(symbol)] += 1;
            (slot[usize::from(symbol)], &mut self.flat_best[key as usize])
        } else {
            let count = self.counts.entry((key, symbol)).or_insert(0);
            *count += 1;
            (*count, self.best.entry(key).or_insert((symbol, 0)))
        };
        if count > best.1 {
            *best = (symbol, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(alphabet: usize, symbols: Vec<u8>) -> Stream {
        Stream {
            label: String::new(),
            alphabet,
            symbols,
        }
    }

    #[test]
    fn period_three_is_learned_by_every_predictor() {
        let symbols: Vec<u8> = (0..200).map(|i| [7u8, 200, 31][i % 3]).collect();
        let s = stream(256, symbols.clone());
        let mut store = ContextStore::default();
        for correct in [
            lag(&symbols),
            multi_mmc(&s, &mut store),
            lz78y(&s, &mut store),
        ] {
            assert!(correct >= 190, "{correct}");
        }
    }

    /// 90B's Lag predictor as written: the backward walk and the `>=` scan for the winner.
    fn literal_lag(symbols: &[u8]) -> usize {
        let depth = LAG_DEPTH.min(symbols.len() / 2).max(1);
        let mut scores = [0u32; LAG_DEPTH + 1];
        let mut winner = 1;
        let mut correct = 0;
        for i in 1..symbols.len() {
            correct += usize::from(symbols[i - winner] == symbols[i]);
            let lags = i.min(depth);
            for d in 1..=lags {
                scores[d] += u32::from(symbols[i - d] == symbols[i]);
            }
            for d in 1..=lags {
                if scores[d] >= scores[winner] {
                    winner = d;
                }
            }
        }
        correct
    }

    #[test]
    fn the_vectorized_lag_predictor_is_90bs() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for len in [0, 1, 2, 3, 33, 255, 256, 257, 2048, 5000] {
            for alphabet in [2, 3, 256] {
                let random: Vec<u8> = (0..len)
                    .map(|_| (rng.random::<u32>() % alphabet) as u8)
                    .collect();
                assert_eq!(
                    lag(&random),
                    literal_lag(&random),
                    "{len} symbols below {alphabet}"
                );
            }
            let periodic: Vec<u8> = (0..len).map(|i| [1, 0, 0, 1, 1][i % 5]).collect();
            assert_eq!(
                lag(&periodic),
                literal_lag(&periodic),
                "period 5, {len} symbols"
            );
        }
    }

    #[test]
    fn random_bits_are_right_about_half_the_time() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let symbols: Vec<u8> = (0..4000).map(|_| rng.random::<bool>() as u8).collect();
        let s = stream(2, symbols.clone());
        let mut store = ContextStore::default();
        for correct in [
            lag(&symbols),
            multi_mmc(&s, &mut store),
            lz78y(&s, &mut store),
        ] {
            // 4 standard deviations of Bin(3999, 1/2) is about 126.
            assert!((correct as i64 - 2000).abs() < 130, "{correct}");
        }
    }
}
