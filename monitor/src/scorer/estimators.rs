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

/// Which stream a symbol sequence was taken from.
#[derive(Clone, Copy)]
enum StreamId {
    IsnBit(u32),
    ResidualByte(u32),
}

impl StreamId {
    fn label(self) -> String {
        match self {
            StreamId::IsnBit(bit) => format!("ISN bit {bit}"),
            StreamId::ResidualByte(byte) => format!("byte {byte} of the fixed-step residuals"),
        }
    }

    /// The symbols are below this (2 or 256).
    fn alphabet(self) -> usize {
        match self {
            StreamId::IsnBit(_) => 2,
            StreamId::ResidualByte(_) => 256,
        }
    }
}

/// The best (stream, predictor) pair so far, labelled only once it is returned.
struct Best {
    stream: StreamId,
    predictor: Predictor,
    correct: usize,
    predictions: usize,
    p_value: f64,
}

pub fn most_predictable(window: &[Sample], step_residuals: &[i32]) -> Option<PredictorHit> {
    let mut best: Option<Best> = None;
    let mut symbols = Vec::with_capacity(window.len().max(step_residuals.len()));
    STORE.with_borrow_mut(|store| {
        for stream in stream_ids() {
            fill_symbols(&mut symbols, stream, window, step_residuals);
            if symbols.len() < MIN_SYMBOLS {
                continue;
            }
            let contexts = context_predictors(&symbols, stream.alphabet(), store);
            for (predictor, correct) in [
                (Predictor::Lag, lag(&symbols, stream.alphabet())),
                (Predictor::MultiMmc, contexts.multi_mmc),
                (Predictor::Lz78y, contexts.lz78y),
            ] {
                // The first symbol has nothing before it: predictions start at symbol 1.
                let predictions = symbols.len() - 1;
                let p_value = binomial_at_least(
                    correct as u64,
                    predictions as u64,
                    1.0 / stream.alphabet() as f64,
                );
                if best.as_ref().is_none_or(|b| p_value < b.p_value) {
                    best = Some(Best {
                        stream,
                        predictor,
                        correct,
                        predictions,
                        p_value,
                    });
                }
            }
        }
    });
    best.map(|b| PredictorHit {
        stream: b.stream.label(),
        predictor: b.predictor.name(),
        correct: b.correct,
        predictions: b.predictions,
        p_value: b.p_value,
        streams_tested: FAMILY_SIZE,
    })
}

thread_local! {
    /// The flat tables are allocated once per thread, not once per report.
    static STORE: std::cell::RefCell<ContextStore> = std::cell::RefCell::new(ContextStore::default());
}

fn stream_ids() -> impl Iterator<Item = StreamId> {
    let bits = (0..BIT_STREAMS as u32).map(StreamId::IsnBit);
    let bytes = (0..RESIDUAL_BYTE_STREAMS as u32).map(StreamId::ResidualByte);
    bits.chain(bytes)
}

/// Replaces `symbols` with the symbols of `stream`.
fn fill_symbols(symbols: &mut Vec<u8>, stream: StreamId, window: &[Sample], residuals: &[i32]) {
    symbols.clear();
    match stream {
        StreamId::IsnBit(bit) => symbols.extend(
            window
                .iter()
                .filter(|s| bit >= COOKIE_FREE_BITS || !s.syncookie)
                .map(|s| (s.isn >> bit & 1) as u8),
        ),
        StreamId::ResidualByte(byte) => {
            symbols.extend(residuals.iter().map(|&e| (e as u32 >> (8 * byte)) as u8))
        }
    }
}

/// 90B Lag predictor: predict the symbol `d` back, for the `d ≤ 128` that has been right most
/// (the longest of those tied, as 90B's `>=` scan picks).
fn lag(symbols: &[u8], alphabet: usize) -> usize {
    if alphabet == 2 {
        return lag_binary(symbols);
    }
    // A score reaches at most the stream's length; packed with its lag it must fit the type.
    if symbols.len() < 1 << (u32::BITS - LAG_BITS) {
        lag_packed::<u32>(symbols)
    } else {
        lag_packed::<u64>(symbols)
    }
}

/// Lag on a binary stream, all lags at once: bit d − 1 of a word stands for lag d, and the
/// scores are counters sliced into bit planes (plane k holds bit k of every lag's score).
fn lag_binary(symbols: &[u8]) -> usize {
    const _: () = assert!(LAG_DEPTH == u128::BITS as usize);
    let depth = LAG_DEPTH.min(symbols.len() / 2).max(1);
    // Scores stay below the stream's length.
    let mut planes = vec![0u128; (usize::BITS - symbols.len().leading_zeros()) as usize];
    // Bit d − 1: the symbol d back.
    let mut back = 0u128;
    let mut scored = 0u128;
    // The top score and the lags that have it. A step raises a score by one at most, so the
    // top rises only through a lag already at the top.
    let mut top = 0;
    let mut at_top = 0u128;
    let mut winner = 1;
    let mut correct = 0;
    for (i, &current) in symbols.iter().enumerate().skip(1) {
        if symbols[i - winner] == current {
            correct += 1;
        }
        back = back << 1 | u128::from(symbols[i - 1]);
        let now_scored = u128::MAX >> (LAG_DEPTH - i.min(depth));
        if top == 0 {
            // Lags scored from now on start at 0.
            at_top |= now_scored & !scored;
        }
        scored = now_scored;
        let right = !(back ^ u128::from(current).wrapping_neg()) & scored;
        add_one(&mut planes, right);
        let raised = at_top & right;
        if raised != 0 {
            top += 1;
            at_top = raised;
        } else {
            at_top = lanes_equal_to(&planes, top) & scored;
        }
        winner = (u128::BITS - at_top.leading_zeros()) as usize;
    }
    correct
}

/// Adds one to the sliced counters of the lanes in `carry`.
fn add_one(planes: &mut [u128], mut carry: u128) {
    for plane in planes {
        let next = *plane & carry;
        *plane ^= carry;
        carry = next;
        if carry == 0 {
            break;
        }
    }
}

/// The lanes whose sliced counter equals `value`.
fn lanes_equal_to(planes: &[u128], value: u32) -> u128 {
    planes
        .iter()
        .enumerate()
        .fold(u128::MAX, |lanes, (k, &plane)| {
            // Plane k as is where bit k of `value` is 1, inverted where it is 0.
            let invert = u128::from(value >> k & 1 == 0).wrapping_neg();
            lanes & (plane ^ invert)
        })
}

/// Bits below a packed lag score that hold the lag (1..=128).
const LAG_BITS: u32 = 8;

fn lag_packed<T>(symbols: &[u8]) -> usize
where
    T: Copy + Ord + From<u32> + Into<u64> + std::ops::AddAssign,
{
    // A lag beyond half the stream is scored on fewer symbols than it predicts; 90B sizes D
    // for a million samples.
    let depth = LAG_DEPTH.min(symbols.len() / 2).max(1);
    // Newest first, so that the symbols 1..=d back from i are a forward run, which the
    // compiler vectorizes (the backward walk it did not).
    let newest_first: Vec<u8> = symbols.iter().rev().copied().collect();
    // Each lag's score is kept as score · 2^8 + lag: the largest is the lag right most, the
    // longest of those tied (as 90B's `>=` scan picks), found in the same pass as the scoring.
    let mut packed: [T; LAG_DEPTH] = std::array::from_fn(|d| T::from(d as u32 + 1));
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
            score_lags(&mut packed, &back[..LAG_DEPTH], current)
        } else {
            score_lags(&mut packed[..lags], &back[..lags], current)
        };
    }
    correct
}

/// Counts which lags would have predicted `current` (`back[d - 1]` is the symbol `d` back),
/// and returns the lag right most so far.
#[inline(always)]
fn score_lags<T>(packed: &mut [T], back: &[u8], current: u8) -> usize
where
    T: Copy + Ord + From<u32> + Into<u64> + std::ops::AddAssign,
{
    let mut top = T::from(0);
    // Branch-free scoring: for random symbols a branch here mispredicts half the time.
    for (score, &earlier) in packed.iter_mut().zip(back) {
        *score += T::from(u32::from(earlier == current) << LAG_BITS);
        top = top.max(*score);
    }
    (top.into() & ((1 << LAG_BITS) - 1)) as usize
}

/// How many of their guesses MultiMMC and LZ78Y got right on one stream.
struct ContextPredictions {
    multi_mmc: usize,
    lz78y: usize,
}

/// 90B MultiMMC (Markov models of order 1..=16; use the order right most so far) and LZ78Y (a
/// dictionary of the strings of up to 16 symbols seen so far; predict the most frequent
/// follower of the previous strings, longer strings winning ties). Both count the followers
/// of the same contexts, so one pass serves both until LZ78Y's dictionary is full; a stream
/// that fills it is run again for LZ78Y alone.
fn context_predictors(
    symbols: &[u8],
    alphabet: usize,
    store: &mut ContextStore,
) -> ContextPredictions {
    let shared = context_pass(symbols, alphabet, store, Admission::Every);
    let lz78y = if shared.dictionary_overflowed {
        context_pass(symbols, alphabet, store, Admission::Lz78yDictionary)
            .correct
            .lz78y
    } else {
        shared.correct.lz78y
    };
    ContextPredictions {
        multi_mmc: shared.correct.multi_mmc,
        lz78y,
    }
}

const _: () = assert!(
    MMC_DEPTH == LZ78Y_DEPTH,
    "the shared pass needs one context depth"
);

/// Which new contexts are counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// All of them (MultiMMC).
    Every,
    /// Only while LZ78Y's dictionary has room.
    Lz78yDictionary,
}

struct PassResult {
    correct: ContextPredictions,
    /// A new context came after the dictionary was full: LZ78Y would have left it out.
    dictionary_overflowed: bool,
}

/// A context's most frequent follower so far and how often it followed (0: never seen).
#[derive(Clone, Copy, Default)]
struct Guess {
    symbol: u8,
    seen: u32,
}

fn context_pass(
    symbols: &[u8],
    alphabet: usize,
    store: &mut ContextStore,
    admission: Admission,
) -> PassResult {
    let depth = depth_for(MMC_DEPTH, symbols.len(), alphabet);
    if alphabet == 2 {
        bit_context_pass(symbols, depth, &mut store.bits, admission)
    } else {
        byte_context_pass(symbols, depth, &mut store.bytes, admission)
    }
}

fn bit_context_pass(
    symbols: &[u8],
    depth: usize,
    store: &mut BitContexts,
    admission: Admission,
) -> PassResult {
    store.reset(depth);
    let mut tally = Tally::default();
    let mut overflowed = false;
    // The previous symbols, the newest in bit 0: the context of length d is its low d bits.
    let mut history = 0u64;
    for (i, &actual) in symbols.iter().enumerate().skip(1) {
        history = history << 1 | u64::from(symbols[i - 1]);
        for d in 1..=depth.min(i) {
            // Binary contexts are packed exactly, so each has its own slot and counting one
            // cannot change another's guess in the same step.
            let key = (1 << d | history & ((1 << d) - 1)) as usize;
            tally.observe(d - 1, store.guess(key), actual);
            overflowed |= store.add(key, actual, admission);
        }
        tally.end_step(actual);
    }
    tally.result(overflowed)
}

fn byte_context_pass(
    symbols: &[u8],
    depth: usize,
    store: &mut ByteContexts,
    admission: Admission,
) -> PassResult {
    store.reset();
    let mut tally = Tally::default();
    let mut overflowed = false;
    for (i, &actual) in symbols.iter().enumerate().skip(1) {
        let (keys, count) = byte_context_keys(symbols, i, depth);
        for (order, &key) in keys[..count].iter().enumerate() {
            tally.observe(order, store.guess(key), actual);
        }
        tally.end_step(actual);
        for &key in &keys[..count] {
            overflowed |= store.add(key, actual, admission);
        }
    }
    tally.result(overflowed)
}

/// Both predictors' running state over one stream, fed the guesses of the contexts of
/// lengths 1, 2, … before each symbol, then told the step is over.
#[derive(Default)]
struct Tally {
    mmc_scores: [u32; MMC_DEPTH],
    /// The order (0-based) MultiMMC predicts with, as the current step goes, and its score.
    mmc_winner: usize,
    mmc_winner_score: u32,
    /// The order MultiMMC predicted this step with.
    mmc_step_winner: usize,
    /// Bit `order` set: that order's guess was right this step.
    mmc_rights: u32,
    mmc_correct: usize,
    /// LZ78Y's guess this step so far: the most seen, the longest of those tied.
    lz78y_guess: Guess,
    lz78y_correct: usize,
}

impl Tally {
    fn observe(&mut self, order: usize, guess: Guess, actual: u8) {
        let right = guess.seen > 0 && guess.symbol == actual;
        self.mmc_rights |= u32::from(right) << order;
        let score = self.mmc_scores[order] + u32::from(right);
        self.mmc_scores[order] = score;
        if right && score >= self.mmc_winner_score {
            self.mmc_winner = order;
            self.mmc_winner_score = score;
        }
        if guess.seen > 0 && guess.seen >= self.lz78y_guess.seen {
            self.lz78y_guess = guess;
        }
    }

    fn result(&self, dictionary_overflowed: bool) -> PassResult {
        PassResult {
            correct: ContextPredictions {
                multi_mmc: self.mmc_correct,
                lz78y: self.lz78y_correct,
            },
            dictionary_overflowed,
        }
    }

    fn end_step(&mut self, actual: u8) {
        let lz78y = self.lz78y_guess;
        self.lz78y_correct += usize::from(lz78y.seen > 0 && lz78y.symbol == actual);
        self.lz78y_guess = Guess::default();
        self.mmc_correct += (self.mmc_rights >> self.mmc_step_winner & 1) as usize;
        self.mmc_rights = 0;
        self.mmc_step_winner = self.mmc_winner;
    }
}

/// Context length actually used: a context of d symbols recurs about n/k^d times in n symbols,
/// so contexts longer than log_k(n) have almost never been seen before and cannot predict.
fn depth_for(limit: usize, symbols: usize, alphabet: usize) -> usize {
    let per_symbol_bits = (alphabet as f64).log2();
    let useful = ((symbols as f64).log2() / per_symbol_bits).ceil() as usize;
    limit.min(useful.max(1))
}

/// Longest context any predictor uses.
const MAX_DEPTH: usize = 16;

/// Keys of the byte contexts of lengths 1..=depth ending just before symbol i (fewer if
/// i < depth), hashed, which still makes each guess a function of the past only, so the null
/// distribution stays exact.
fn byte_context_keys(symbols: &[u8], i: usize, depth: usize) -> ([u64; MAX_DEPTH], usize) {
    let mut keys = [0u64; MAX_DEPTH];
    let count = depth.min(i);
    let mut packed = 0u64;
    for d in 1..=count {
        packed = mix(packed ^ u64::from(symbols[i - d]) ^ (d as u64) << 8);
        keys[d - 1] = packed;
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

/// Follower counts per context, for binary and for byte streams.
#[derive(Default)]
struct ContextStore {
    bits: BitContexts,
    bytes: ByteContexts,
}

/// Binary contexts in a flat table.
struct BitContexts {
    /// Per context, how often 0 (low half) and 1 (high half) followed it: one word, so that
    /// counting and reading it again in the next step are the same size (the store forwards).
    counts: Vec<u64>,
    /// Per context, the symbol that first reached the higher count.
    best: Vec<u8>,
    /// Contexts seen at least once (LZ78Y's dictionary size).
    distinct: usize,
}

impl Default for BitContexts {
    fn default() -> Self {
        Self {
            counts: vec![0; FLAT_KEYS],
            best: vec![0; FLAT_KEYS],
            distinct: 0,
        }
    }
}

/// How often `symbol` followed, out of a context's packed counts.
fn count_of(counts: u64, symbol: u8) -> u32 {
    (counts >> (32 * u32::from(symbol))) as u32
}

impl BitContexts {
    /// Empties the table for contexts of up to `depth` bits, which are packed below 2^(depth+1).
    fn reset(&mut self, depth: usize) {
        self.counts[..2 << depth].fill(0);
        self.best[..2 << depth].fill(0);
        self.distinct = 0;
    }

    fn guess(&self, key: usize) -> Guess {
        let symbol = self.best[key];
        Guess {
            symbol,
            seen: count_of(self.counts[key], symbol),
        }
    }

    /// Counts `symbol` after `key`; true if a new context came after the dictionary was full.
    fn add(&mut self, key: usize, symbol: u8, admission: Admission) -> bool {
        let best = self.best[key];
        let seen = count_of(self.counts[key], best);
        let new = seen == 0;
        let overflow = new && self.distinct >= LZ78Y_MAX_DICTIONARY;
        if overflow && admission == Admission::Lz78yDictionary {
            return true;
        }
        self.distinct += usize::from(new);
        let counts = self.counts[key] + (1 << (32 * u32::from(symbol)));
        self.counts[key] = counts;
        self.best[key] = if count_of(counts, symbol) > seen {
            symbol
        } else {
            best
        };
        overflow
    }
}

/// Byte contexts (hashed keys): the best follower per context, and every (context, symbol).
#[derive(Default)]
struct ByteContexts {
    best: FastMap<u64, (u8, u32)>,
    counts: FastMap<(u64, u8), u32>,
}

impl ByteContexts {
    fn reset(&mut self) {
        self.best.clear();
        self.counts.clear();
    }

    fn guess(&self, key: u64) -> Guess {
        let (symbol, seen) = self.best.get(&key).copied().unwrap_or_default();
        Guess { symbol, seen }
    }

    /// Counts `symbol` after `key`; true if a new context came after the dictionary was full.
    fn add(&mut self, key: u64, symbol: u8, admission: Admission) -> bool {
        let overflow = self.best.len() >= LZ78Y_MAX_DICTIONARY && !self.best.contains_key(&key);
        if overflow && admission == Admission::Lz78yDictionary {
            return true;
        }
        let count = self.counts.entry((key, symbol)).or_insert(0);
        *count += 1;
        let best = self.best.entry(key).or_insert((symbol, 0));
        if *count > best.1 {
            *best = (symbol, *count);
        }
        overflow
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn context_counts(symbols: &[u8], alphabet: usize) -> (usize, usize) {
        let mut store = ContextStore::default();
        let counts = context_predictors(symbols, alphabet, &mut store);
        (counts.multi_mmc, counts.lz78y)
    }

    #[test]
    fn period_three_is_learned_by_every_predictor() {
        let symbols: Vec<u8> = (0..200).map(|i| [7u8, 200, 31][i % 3]).collect();
        let (multi_mmc, lz78y) = context_counts(&symbols, 256);
        for correct in [lag(&symbols, 256), multi_mmc, lz78y] {
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

    /// Follower counts of literal contexts (the symbols themselves), the best follower being
    /// the first to reach the highest count.
    #[derive(Default)]
    struct LiteralStore {
        best: HashMap<Vec<u8>, (u8, u32)>,
        counts: HashMap<(Vec<u8>, u8), u32>,
    }

    impl LiteralStore {
        fn add(&mut self, context: &[u8], symbol: u8) {
            let count = self.counts.entry((context.to_vec(), symbol)).or_insert(0);
            *count += 1;
            let best = self.best.entry(context.to_vec()).or_insert((symbol, 0));
            if *count > best.1 {
                *best = (symbol, *count);
            }
        }
    }

    /// The contexts of lengths 1..=depth (fewer early on) ending just before symbol i.
    fn literal_contexts(symbols: &[u8], i: usize, alphabet: usize) -> Vec<&[u8]> {
        let depth = depth_for(MMC_DEPTH, symbols.len(), alphabet);
        (1..=depth.min(i)).map(|d| &symbols[i - d..i]).collect()
    }

    /// 90B's MultiMMC as written, one predictor at a time.
    fn literal_multi_mmc(symbols: &[u8], alphabet: usize) -> usize {
        let mut store = LiteralStore::default();
        let (mut scores, mut winner, mut correct) = ([0u32; MMC_DEPTH], 0, 0);
        for (i, &actual) in symbols.iter().enumerate().skip(1) {
            let contexts = literal_contexts(symbols, i, alphabet);
            let guesses: Vec<Option<u8>> = contexts
                .iter()
                .map(|c| store.best.get(*c).map(|b| b.0))
                .collect();
            correct += usize::from(guesses[winner] == Some(actual));
            for (order, context) in contexts.iter().enumerate() {
                if guesses[order] == Some(actual) {
                    scores[order] += 1;
                    if scores[order] >= scores[winner] {
                        winner = order;
                    }
                }
                store.add(context, actual);
            }
        }
        correct
    }

    /// 90B's LZ78Y as written, with its dictionary limit.
    fn literal_lz78y(symbols: &[u8], alphabet: usize) -> usize {
        let mut store = LiteralStore::default();
        let mut correct = 0;
        for (i, &actual) in symbols.iter().enumerate().skip(1) {
            let contexts = literal_contexts(symbols, i, alphabet);
            let mut guess: Option<(u8, u32)> = None;
            for context in contexts.iter().rev() {
                if let Some(&(symbol, seen)) = store.best.get(*context)
                    && guess.is_none_or(|(_, best)| seen > best)
                {
                    guess = Some((symbol, seen));
                }
            }
            correct += usize::from(guess.map(|g| g.0) == Some(actual));
            for context in &contexts {
                if store.best.contains_key(*context) || store.best.len() < LZ78Y_MAX_DICTIONARY {
                    store.add(context, actual);
                }
            }
        }
        correct
    }

    fn random_symbols(rng: &mut rand::rngs::StdRng, len: usize, alphabet: u32) -> Vec<u8> {
        (0..len)
            .map(|_| (rng.random::<u32>() % alphabet) as u8)
            .collect()
    }

    #[test]
    fn the_vectorized_lag_predictor_is_90bs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for len in [0, 1, 2, 3, 33, 255, 256, 257, 2048, 5000] {
            for alphabet in [2, 3, 256] {
                let random = random_symbols(&mut rng, len, alphabet);
                assert_eq!(
                    lag(&random, alphabet as usize),
                    literal_lag(&random),
                    "{len} symbols below {alphabet}"
                );
                assert_eq!(lag_packed::<u64>(&random), literal_lag(&random));
            }
            let periodic: Vec<u8> = (0..len).map(|i| [1, 0, 0, 1, 1][i % 5]).collect();
            assert_eq!(
                lag(&periodic, 2),
                literal_lag(&periodic),
                "period 5, {len} symbols"
            );
            // Every lag right every time: the sliced counters carry into every plane.
            let constant = vec![1; len];
            assert_eq!(lag(&constant, 2), literal_lag(&constant), "{len} ones");
        }
    }

    /// The shared pass (rolling binary contexts, hashed byte contexts) gives what each
    /// predictor gives on its own, also once LZ78Y's dictionary is full.
    #[test]
    fn the_shared_context_pass_is_90bs_multi_mmc_and_lz78y() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut cases: Vec<(Vec<u8>, usize)> = Vec::new();
        for len in [2, 3, 33, 257, 2048] {
            for alphabet in [2, 256] {
                cases.push((random_symbols(&mut rng, len, alphabet as u32), alphabet));
                let biased: Vec<u8> = (0..len)
                    .map(|i| u8::from(rng.random::<u32>() % 4 == 0) * (i % alphabet) as u8)
                    .collect();
                cases.push((biased, alphabet));
            }
            cases.push(((0..len).map(|i| [1, 0, 0, 1, 1][i % 5]).collect(), 2));
        }
        // Enough distinct contexts to fill LZ78Y's dictionary.
        cases.push((random_symbols(&mut rng, 40_000, 2), 2));
        cases.push((random_symbols(&mut rng, 70_000, 256), 256));
        for (symbols, alphabet) in &cases {
            assert_eq!(
                context_counts(symbols, *alphabet),
                (
                    literal_multi_mmc(symbols, *alphabet),
                    literal_lz78y(symbols, *alphabet)
                ),
                "{} symbols below {alphabet}",
                symbols.len()
            );
        }
        let mut store = ContextStore::default();
        for (symbols, alphabet) in &cases[cases.len() - 2..] {
            let pass = context_pass(symbols, *alphabet, &mut store, Admission::Every);
            assert!(pass.dictionary_overflowed, "{alphabet}");
        }
    }

    #[test]
    fn random_bits_are_right_about_half_the_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let symbols: Vec<u8> = (0..4000).map(|_| rng.random::<bool>() as u8).collect();
        let (multi_mmc, lz78y) = context_counts(&symbols, 2);
        for correct in [lag(&symbols, 2), multi_mmc, lz78y] {
            // 4 standard deviations of Bin(3999, 1/2) is about 126.
            assert!((correct as i64 - 2000).abs() < 130, "{correct}");
        }
    }
}
