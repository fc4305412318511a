//! Generators linear over GF(2): xorshift, Galois and Fibonacci LFSRs however many steps per
//! output, Mersenne Twister. With an n-bit state s' = A·s and 32-bit outputs y = C·s, the rows
//! [y_{i−1}, …, y_{i−k}, 1] lie in a space of dimension at most n + 1, and once 32k ≥ n each y_i
//! is a fixed affine function of its row. The generic search eliminates those rows online (bit
//! packed, Gaussian elimination over GF(2)): a row already in the span of the earlier ones names
//! y_i exactly; one outside it is added. A generator with an n-bit state is predicted from about
//! its (n + k + 1)-th output on, with no knowledge of A or C: fewer samples cannot do for an
//! unknown generator (its description alone has about 33n bits). Known generators (a catalogue
//! of xorshifts, MT19937) are predicted from their first k outputs.

use std::sync::OnceLock;

use super::{Candidates, Family, FamilyResult, Predictor, Recovered, Tally, best, hit_result, run};

/// Outputs each generic search relates an ISN to: states up to 32, 64, 128 and 256 bits.
const HISTORIES: [usize; 4] = [1, 2, 4, 8];
/// A linear prediction is one value.
const CANDIDATES: usize = 1;
/// Outputs of a known generator its relation is learned from (enough for its rank to settle).
const TRAINING_OUTPUTS: usize = 400;

/// An echelon basis of rows of W words, each with the ISN it predicted (XORed like the row).
#[derive(Clone)]
struct Basis<const W: usize> {
    rows: Vec<[u64; W]>,
    targets: Vec<u32>,
    /// Each row's pivot: (word, bit mask); earlier rows' pivots are clear in later rows.
    pivots: Vec<(usize, u64)>,
}

impl<const W: usize> Basis<W> {
    fn new() -> Self {
        Self {
            rows: Vec::new(),
            targets: Vec::new(),
            pivots: Vec::new(),
        }
    }

    fn rank(&self) -> usize {
        self.rows.len()
    }

    /// Clears the basis's pivots from `row`; returns the XOR of the targets of the rows used.
    fn reduce(&self, row: &mut [u64; W]) -> u32 {
        let mut target = 0;
        for ((basis_row, &basis_target), &(word, mask)) in
            self.rows.iter().zip(&self.targets).zip(&self.pivots)
        {
            if row[word] & mask != 0 {
                for (bits, basis_bits) in row.iter_mut().zip(basis_row) {
                    *bits ^= basis_bits;
                }
                target ^= basis_target;
            }
        }
        target
    }

    /// Adds a reduced row (its lowest set bit becomes its pivot); a zero row adds nothing.
    fn insert(&mut self, row: [u64; W], target: u32) {
        if let Some(word) = row.iter().position(|&bits| bits != 0) {
            let mask = row[word] & row[word].wrapping_neg();
            self.rows.push(row);
            self.targets.push(target);
            self.pivots.push((word, mask));
        }
    }
}

/// [y_{i−1}, …, y_{i−k}, 1], bit packed: output j back in bits 32(j−1)…, the constant at 32k.
fn history_row<const W: usize>(past: &[u32], history: usize) -> [u64; W] {
    let mut row = [0u64; W];
    for (back, &y) in past.iter().rev().take(history).enumerate() {
        let bit = 32 * back;
        row[bit / 64] |= u64::from(y) << (bit % 64);
    }
    let bit = 32 * history;
    row[bit / 64] |= 1 << (bit % 64);
    row
}

/// The generic search with k = `history` outputs per row (32k + 1 ≤ 64W bits).
struct LinearRelation<const W: usize> {
    history: usize,
    basis: Basis<W>,
    /// The last row, outside the span: added once its ISN is known.
    pending: Option<([u64; W], u32)>,
}

impl<const W: usize> LinearRelation<W> {
    fn new(history: usize) -> Self {
        debug_assert!(32 * history < 64 * W);
        Self {
            history,
            basis: Basis::new(),
            pending: None,
        }
    }
}

impl<const W: usize> Predictor for LinearRelation<W> {
    fn warm_up(&self) -> usize {
        self.history
    }

    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        if let (Some((row, used)), Some(&last)) = (self.pending.take(), past.last()) {
            self.basis.insert(row, last ^ used);
        }
        if past.len() < self.history {
            return;
        }
        let mut row = history_row::<W>(past, self.history);
        let used = self.basis.reduce(&mut row);
        if row.iter().all(|&bits| bits == 0) {
            out.push(used);
        } else {
            self.pending = Some((row, used));
        }
    }
}

/// A known generator's relation, learned once from its own outputs.
struct KnownRelation<'a, const W: usize> {
    history: usize,
    basis: &'a Basis<W>,
    /// Rows inside and outside the generator's span so far: the generator's own rows are
    /// all inside (but for one spoiled by a missed SYN-ACK).
    inside: u32,
    outside: u32,
}

impl<'a, const W: usize> KnownRelation<'a, W> {
    fn new(history: usize, basis: &'a Basis<W>) -> Self {
        Self {
            history,
            basis,
            inside: 0,
            outside: 0,
        }
    }
}

/// A known generator whose rows fell outside its span this often (and more often than
/// inside) is not the one producing the ISNs.
const OUTSIDE_SPAN_LIMIT: u32 = 4;

impl<const W: usize> Predictor for KnownRelation<'_, W> {
    fn warm_up(&self) -> usize {
        self.history
    }

    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        if self.outside >= OUTSIDE_SPAN_LIMIT && self.outside > self.inside {
            return;
        }
        let mut row = history_row::<W>(past, self.history);
        let used = self.basis.reduce(&mut row);
        if row.iter().all(|&bits| bits == 0) {
            self.inside += 1;
            out.push(used);
        } else {
            self.outside += 1;
        }
    }
}

/// The relation of `outputs`' generator, learned by the generic search.
fn learn<const W: usize>(history: usize, outputs: &[u32]) -> Basis<W> {
    let mut relation = LinearRelation::<W>::new(history);
    run_all(&mut relation, outputs);
    relation.basis
}

/// Feeds every prefix (no refutation: training data is the generator itself).
fn run_all(predictor: &mut impl Predictor, outputs: &[u32]) {
    let mut candidates = Candidates::new(CANDIDATES);
    for i in 0..=outputs.len() {
        candidates.clear();
        predictor.predict(&outputs[..i], &mut candidates);
    }
}

/// Known generators, their state size and how many outputs a row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Xorshift32,
    Xorshift64Low,
    Xorshift64High,
    Xorshift128,
}

const KNOWN: [Known; 4] = [
    Known::Xorshift32,
    Known::Xorshift64Low,
    Known::Xorshift64High,
    Known::Xorshift128,
];

impl Known {
    fn name(self) -> &'static str {
        match self {
            Known::Xorshift32 => "Marsaglia's xorshift32 (13, 17, 5)",
            Known::Xorshift64Low => "xorshift64 (13, 7, 17), low 32 bits",
            Known::Xorshift64High => "xorshift64 (13, 7, 17), high 32 bits",
            Known::Xorshift128 => "Marsaglia's xorshift128 (11, 8, 19)",
        }
    }

    fn state_bits(self) -> u32 {
        match self {
            Known::Xorshift32 => 32,
            Known::Xorshift64Low | Known::Xorshift64High => 64,
            Known::Xorshift128 => 128,
        }
    }

    /// `TRAINING_OUTPUTS` outputs from a fixed non-zero state.
    fn outputs(self) -> Vec<u32> {
        let mut state = [0x9e37_79b9u32, 0x7f4a_7c15, 0xf39c_c060, 0x5ced_c834];
        let mut wide = 0x9e37_79b9_7f4a_7c15u64;
        (0..TRAINING_OUTPUTS)
            .map(|_| match self {
                Known::Xorshift32 => {
                    let x = &mut state[0];
                    *x ^= *x << 13;
                    *x ^= *x >> 17;
                    *x ^= *x << 5;
                    *x
                }
                Known::Xorshift64Low | Known::Xorshift64High => {
                    wide ^= wide << 13;
                    wide ^= wide >> 7;
                    wide ^= wide << 17;
                    if self == Known::Xorshift64Low {
                        wide as u32
                    } else {
                        (wide >> 32) as u32
                    }
                }
                Known::Xorshift128 => {
                    let t = state[0] ^ (state[0] << 11);
                    state = [
                        state[1],
                        state[2],
                        state[3],
                        state[3] ^ (state[3] >> 19) ^ t ^ (t >> 8),
                    ];
                    state[3]
                }
            })
            .collect()
    }

    /// Outputs per row: enough for them to determine the state. The low half of xorshift64
    /// sees the high state bits only through the 7-bit right shift, 7 bits per step, so it
    /// takes 6 outputs; its high half takes 4.
    fn history(self) -> usize {
        match self {
            Known::Xorshift32 => 1,
            Known::Xorshift64High | Known::Xorshift128 => 4,
            Known::Xorshift64Low => 8,
        }
    }

    fn tally(self, isns: &[u32]) -> Tally {
        static XORSHIFT32: OnceLock<Basis<1>> = OnceLock::new();
        static XORSHIFT64_HIGH: OnceLock<Basis<3>> = OnceLock::new();
        static XORSHIFT128: OnceLock<Basis<3>> = OnceLock::new();
        static XORSHIFT64_LOW: OnceLock<Basis<5>> = OnceLock::new();
        let history = self.history();
        let learned = || self.outputs();
        match self {
            Known::Xorshift32 => {
                let basis = XORSHIFT32.get_or_init(|| learn(history, &learned()));
                run(&mut KnownRelation::new(history, basis), isns, CANDIDATES)
            }
            Known::Xorshift64High | Known::Xorshift128 => {
                let cell = if self == Known::Xorshift128 {
                    &XORSHIFT128
                } else {
                    &XORSHIFT64_HIGH
                };
                let basis = cell.get_or_init(|| learn(history, &learned()));
                run(&mut KnownRelation::new(history, basis), isns, CANDIDATES)
            }
            Known::Xorshift64Low => {
                let basis = XORSHIFT64_LOW.get_or_init(|| learn(history, &learned()));
                run(&mut KnownRelation::new(history, basis), isns, CANDIDATES)
            }
        }
    }
}

const MT_STATE_WORDS: usize = 624;
const MT_SHIFT: usize = 397;

/// MT19937 (C++ `std::mt19937`, Python's `random`): untempering an output gives a state word,
/// and x_i = x_{i−227} ⊕ twist(x_{i−624}, x_{i−623}); predicted from its 625th output on.
struct MersenneTwister;

impl Predictor for MersenneTwister {
    fn warm_up(&self) -> usize {
        MT_STATE_WORDS
    }

    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        let n = past.len();
        if n < MT_STATE_WORDS {
            return;
        }
        let word = |back: usize| untemper(past[n - back]);
        let upper_lower =
            (word(MT_STATE_WORDS) & 0x8000_0000) | (word(MT_STATE_WORDS - 1) & 0x7fff_ffff);
        let mut next = word(MT_STATE_WORDS - MT_SHIFT) ^ (upper_lower >> 1);
        if upper_lower & 1 == 1 {
            next ^= 0x9908_b0df;
        }
        out.push(temper(next));
    }
}

fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
}

fn untemper(y: u32) -> u32 {
    let y = undo_right_shift(y, 18);
    let y = undo_left_shift(y, 15, 0xefc6_0000);
    let y = undo_left_shift(y, 7, 0x9d2c_5680);
    undo_right_shift(y, 11)
}

/// Inverts y ^= y >> shift (each round fixes `shift` more bits).
fn undo_right_shift(y: u32, shift: u32) -> u32 {
    let mut x = y;
    for _ in 0..32 / shift {
        x = y ^ (x >> shift);
    }
    x
}

/// Inverts y ^= (y << shift) & mask.
fn undo_left_shift(y: u32, shift: u32, mask: u32) -> u32 {
    let mut x = y;
    for _ in 0..32 / shift {
        x = y ^ ((x << shift) & mask);
    }
    x
}

#[derive(Clone, Copy, Debug)]
enum Hypothesis {
    /// The generic search with k outputs per row; the rank its basis reached.
    Generic {
        rank: usize,
    },
    Known(Known),
    MersenneTwister,
}

/// The generic searches, the known xorshifts and MT19937.
const HYPOTHESES: usize = HISTORIES.len() + KNOWN.len() + 1;

fn generic<const W: usize>(isns: &[u32], history: usize) -> (Hypothesis, Tally) {
    let mut relation = LinearRelation::<W>::new(history);
    let tally = run(&mut relation, isns, CANDIDATES);
    let rank = relation.basis.rank();
    (Hypothesis::Generic { rank }, tally)
}

pub fn search(isns: &[u32], guesses: u64) -> Option<FamilyResult> {
    let generic = HISTORIES.iter().map(|&history| match history {
        1 => generic::<1>(isns, 1),
        2 => generic::<2>(isns, 2),
        4 => generic::<3>(isns, 4),
        _ => generic::<5>(isns, 8),
    });
    let known = KNOWN
        .iter()
        .map(|&known| (Hypothesis::Known(known), known.tally(isns)));
    let twister = std::iter::once_with(|| {
        (
            Hypothesis::MersenneTwister,
            run(&mut MersenneTwister, isns, CANDIDATES),
        )
    });
    let (hypothesis, tally) = best(generic.chain(known).chain(twister), isns.len(), CANDIDATES)?;
    let recovered = match hypothesis {
        Hypothesis::Generic { rank } => {
            // The constant column takes one dimension.
            let state_bits = rank.saturating_sub(1) as u32;
            Recovered {
                linear_complexity: Some(state_bits),
                ..Recovered::new(
                    Family::Gf2Linear,
                    if state_bits == 0 {
                        "a constant ISN (linear over GF(2) with no state)".to_owned()
                    } else {
                        format!("linear over GF(2), state ≤ {state_bits} bits: an xorshift or LFSR")
                    },
                )
            }
        }
        Hypothesis::Known(known) => Recovered {
            linear_complexity: Some(known.state_bits()),
            ..Recovered::new(
                Family::Gf2Linear,
                format!("{}, linear over GF(2)", known.name()),
            )
        },
        Hypothesis::MersenneTwister => Recovered {
            linear_complexity: Some(19_937),
            ..Recovered::new(
                Family::Gf2Linear,
                "MT19937: 624 outputs untempered give its whole state".to_owned(),
            )
        },
    };
    Some(hit_result(
        recovered,
        &tally,
        isns.len(),
        CANDIDATES,
        HYPOTHESES,
        guesses,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untemper_inverts_temper() {
        for y in [0u32, 1, 0xdead_beef, u32::MAX, 0x8000_0000, 0x1234_5678] {
            assert_eq!(untemper(temper(y)), y);
            assert_eq!(temper(untemper(y)), y);
        }
    }

    #[test]
    fn a_known_xorshift_is_named_from_its_first_outputs() {
        let outputs = Known::Xorshift128.outputs();
        let tally = Known::Xorshift128.tally(&outputs[100..140]);
        // Every output after the first four.
        assert_eq!((tally.predictions, tally.by_rank[0]), (36, 36));
    }

    #[test]
    fn the_generic_search_learns_a_64_bit_state_within_its_dimension() {
        // The high half is determined by 4 outputs, the low half by 6 (see `Known::history`).
        for (known, (hypothesis, tally), history) in [
            (
                Known::Xorshift64High,
                generic::<3>(&Known::Xorshift64High.outputs()[..150], 4),
                4,
            ),
            (
                Known::Xorshift64Low,
                generic::<5>(&Known::Xorshift64Low.outputs()[..150], 8),
                8,
            ),
        ] {
            // Rows span at most 64 + 1 dimensions; each row past those names its ISN.
            let Hypothesis::Generic { rank } = hypothesis else {
                unreachable!()
            };
            assert!(rank <= 65, "{known:?}: {rank}");
            assert_eq!(tally.predictions, tally.by_rank[0], "{known:?}");
            assert_eq!(
                tally.predictions as usize,
                150 - history - rank,
                "{known:?}"
            );
        }
    }
}
