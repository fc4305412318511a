//! Algebraic predictors: name the next ISN as an attacker who knows the generator's family
//! would, by recovering its parameters or its state from the ISNs before it (NUMBER:JACK).
//!
//! Every predictor is prequential: the candidates for ISN i are computed from `isns[..i]`, the
//! only thing it is handed. Under H0 ISN i is uniform and independent of those, so it is among
//! k distinct candidates with probability k/2^32 exactly, whatever the predictor did: the hits
//! of one hypothesis over a window are dominated by Binomial(n, k/2^32). A family's p-value is
//! that tail for its best hypothesis times the hypotheses it searched (Bonferroni); the math is
//! in docs/scorer.md.

mod combined;
mod gf2;
mod modular;
mod truncated;

use super::stats::binomial_at_least;

/// The generator families searched; each gets an equal share of the predictors' budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// State update and output linear over GF(2): xorshift, LFSRs, Mersenne Twister.
    Gf2Linear,
    /// x' = a·x + c with unknown a and c, the ISN being the whole state.
    Lcg,
    /// x_i = x_{i−r} ± x_{i−s} mod 2^32, the ISN being x or x >> 1.
    LaggedFibonacci,
    /// ISNs made of the high bits of consecutive steps of a C library's or runtime's LCG.
    TruncatedLcg,
    /// A known generator step combined (+, −, XOR) with a clock or a counter.
    StepWithClock,
}

pub const FAMILIES: [Family; 5] = [
    Family::Gf2Linear,
    Family::Lcg,
    Family::LaggedFibonacci,
    Family::TruncatedLcg,
    Family::StepWithClock,
];

/// No predictor names more candidates than this for one ISN.
pub const MAX_CANDIDATES: usize = 8;
/// A hypothesis whose first this many predictions all missed is dropped: any real generator of
/// its kind would have hit by then. Its p-value stays valid (see `Tally::p_value`).
const REFUTED_AFTER: u32 = 32;
const TWO_POW_32: f64 = 4_294_967_296.0;

/// What a search recognised, for people: the family and the constants it recovered (never an
/// internal state), and how the held-out ISNs fared.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Recovered {
    pub family: Family,
    /// The generator, e.g. `MSVC rand(): (rand() << 16) | rand()`.
    pub generator: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increment: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    /// Lagged Fibonacci: the short and the long lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lags: Option<[u32; 2]>,
    /// GF(2): the dimension of the space the generator's outputs span (its state size at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linear_complexity: Option<u32>,
    /// Step with a clock: the clock's rate, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_hz: Option<f64>,
    /// Predictions made, each from the ISNs before the one predicted.
    pub predictions: u32,
    /// ISNs that were the first candidate named.
    pub predicted_exactly: u32,
    /// ISNs that were among the candidates (for a clock: within the radius below).
    pub predicted_within: u32,
    /// log2 of the candidates named per ISN, at most (for a clock: the radius).
    pub candidate_bits: f64,
}

/// One family's best hypothesis in a window.
pub struct FamilyResult {
    pub recovered: Recovered,
    /// Already multiplied by the family's hypotheses searched.
    pub p_value: f64,
    /// From the ranks of the held-out ISNs among the candidates.
    pub guess_bits: Option<f64>,
    pub feasibility: Option<f64>,
}

/// Every family over the window: `isns` in arrival order, `times_ns` their timestamps.
pub fn search(isns: &[u32], times_ns: &[u64], guesses: u64) -> Vec<FamilyResult> {
    FAMILIES
        .iter()
        .filter_map(|family| match family {
            Family::Gf2Linear => gf2::search(isns, guesses),
            Family::Lcg => modular::search_lcg(isns, guesses),
            Family::LaggedFibonacci => modular::search_lagged_fibonacci(isns, guesses),
            Family::TruncatedLcg => truncated::search(isns, guesses),
            Family::StepWithClock => combined::search(isns, times_ns, guesses),
        })
        .collect()
}

/// The candidates a predictor names for one ISN, most likely first, each once.
pub struct Candidates {
    values: [u32; MAX_CANDIDATES],
    len: usize,
    capacity: usize,
}

impl Candidates {
    /// At most `capacity` (≤ `MAX_CANDIDATES`) candidates are kept: the k of the null.
    pub fn new(capacity: usize) -> Self {
        Self {
            values: [0; MAX_CANDIDATES],
            len: 0,
            capacity: capacity.min(MAX_CANDIDATES),
        }
    }

    pub fn push(&mut self, value: u32) {
        if self.len < self.capacity && !self.as_slice().contains(&value) {
            self.values[self.len] = value;
            self.len += 1;
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.values[..self.len]
    }
}

/// Names the ISN that follows `past`, from `past` alone.
pub trait Predictor {
    fn predict(&mut self, past: &[u32], out: &mut Candidates);

    /// ISNs it needs before its first prediction (those are not offered to it).
    fn warm_up(&self) -> usize {
        0
    }
}

/// How one hypothesis's predictions fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub predictions: u32,
    /// Predictions whose ISN was the candidate at that rank (0: the first).
    pub by_rank: [u32; MAX_CANDIDATES],
}

impl Tally {
    pub fn hits(&self) -> u32 {
        self.by_rank.iter().sum()
    }

    fn record(&mut self, candidates: &[u32], isn: u32) {
        self.predictions += 1;
        if let Some(rank) = candidates.iter().position(|&c| c == isn) {
            self.by_rank[rank] += 1;
        }
    }

    /// P(Binomial(n, k/2^32) ≥ hits): n is the window's size, a bound on the predictions that
    /// holds whatever decided which were made (or cut short by refutation).
    pub fn p_value(&self, window: usize, candidates: usize) -> f64 {
        binomial_at_least(
            u64::from(self.hits()),
            window as u64,
            candidates as f64 / TWO_POW_32,
        )
    }

    /// log2 of the guesses that cover 90% of the predicted ISNs, trying candidates in order
    /// (an ISN outside the candidates costs the whole 2^32).
    pub fn guess_bits(&self) -> Option<f64> {
        if self.predictions < 2 {
            return None;
        }
        let needed = (0.9 * f64::from(self.predictions)).ceil() as u32;
        let mut covered = 0;
        for (rank, &count) in self.by_rank.iter().enumerate() {
            covered += count;
            if covered >= needed {
                return Some(((rank + 1) as f64).log2());
            }
        }
        Some(32.0)
    }

    /// Share of the predicted ISNs an attacker with `guesses` tries names (candidates in order).
    pub fn feasibility(&self, guesses: u64) -> Option<f64> {
        if self.predictions == 0 {
            return None;
        }
        let tried = usize::try_from(guesses).unwrap_or(usize::MAX);
        let hits: u32 = self.by_rank.iter().take(tried).sum();
        Some(f64::from(hits) / f64::from(self.predictions))
    }
}

/// Runs `predictor` over the window, each ISN predicted from the ones before it; stops once
/// the hypothesis is refuted.
pub fn run(predictor: &mut impl Predictor, isns: &[u32], capacity: usize) -> Tally {
    tally_over(predictor, isns, capacity, REFUTED_AFTER)
}

/// `run` without the stop: for a hypothesis already seen to hit.
pub fn run_through(predictor: &mut impl Predictor, isns: &[u32], capacity: usize) -> Tally {
    tally_over(predictor, isns, capacity, u32::MAX)
}

fn tally_over(
    predictor: &mut impl Predictor,
    isns: &[u32],
    capacity: usize,
    refuted_after: u32,
) -> Tally {
    let mut tally = Tally::default();
    let mut candidates = Candidates::new(capacity);
    for i in predictor.warm_up()..isns.len() {
        candidates.clear();
        predictor.predict(&isns[..i], &mut candidates);
        if candidates.len == 0 {
            continue;
        }
        tally.record(candidates.as_slice(), isns[i]);
        if tally.predictions >= refuted_after && tally.hits() == 0 {
            break;
        }
    }
    tally
}

/// The hypothesis with the lowest p-value among `tallies`; among those tied (p-values this
/// small underflow to 0), the one right most often, then the first.
fn best<T>(
    tallies: impl Iterator<Item = (T, Tally)>,
    window: usize,
    k: usize,
) -> Option<(T, Tally)> {
    let hit_rate = |tally: &Tally| f64::from(tally.hits()) / f64::from(tally.predictions);
    tallies
        .filter(|(_, tally)| tally.hits() > 0)
        .map(|(hypothesis, tally)| (tally.p_value(window, k), hypothesis, tally))
        .min_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| hit_rate(&b.2).total_cmp(&hit_rate(&a.2)))
        })
        .map(|(_, hypothesis, tally)| (hypothesis, tally))
}

/// A family's result from its best hypothesis's tally.
fn hit_result(
    mut recovered: Recovered,
    tally: &Tally,
    window: usize,
    candidates: usize,
    hypotheses: usize,
    guesses: u64,
) -> FamilyResult {
    recovered.predictions = tally.predictions;
    recovered.predicted_exactly = tally.by_rank[0];
    recovered.predicted_within = tally.hits();
    recovered.candidate_bits = (candidates as f64).log2();
    FamilyResult {
        recovered,
        p_value: (tally.p_value(window, candidates) * hypotheses as f64).min(1.0),
        guess_bits: tally.guess_bits(),
        feasibility: tally.feasibility(guesses),
    }
}

impl Recovered {
    fn new(family: Family, generator: String) -> Self {
        Self {
            family,
            generator,
            multiplier: None,
            increment: None,
            modulus: None,
            lags: None,
            linear_complexity: None,
            clock_hz: None,
            predictions: 0,
            predicted_exactly: 0,
            predicted_within: 0,
            candidate_bits: 0.0,
        }
    }

    /// One line for the finding: what was predicted and how, e.g. "next ISN predicted exactly in
    /// 191 of 192 (linear over GF(2), state ≤ 32 bits: an xorshift or LFSR)".
    pub fn describe(&self) -> String {
        if self.family == Family::StepWithClock {
            return format!(
                "next ISN within ±2^{} in {} of {} ({})",
                self.candidate_bits, self.predicted_within, self.predictions, self.generator
            );
        }
        let mut line = format!(
            "next ISN predicted exactly in {} of {}",
            self.predicted_exactly, self.predictions
        );
        if self.predicted_within > self.predicted_exactly {
            line += &format!(
                ", among {} candidates in {}",
                2f64.powf(self.candidate_bits).round(),
                self.predicted_within
            );
        }
        line + &format!(" ({})", self.generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_reads_ranks_as_guesses() {
        let mut tally = Tally::default();
        for _ in 0..9 {
            tally.record(&[5, 6], 5);
        }
        tally.record(&[5, 6], 6);
        assert_eq!(tally.hits(), 10);
        // 9 of 10 at the first candidate: 90% need one guess.
        assert_eq!(tally.guess_bits(), Some(0.0));
        assert_eq!(tally.feasibility(1), Some(0.9));
        assert_eq!(tally.feasibility(5000), Some(1.0));
        tally.record(&[5, 6], 7);
        assert_eq!(tally.guess_bits(), Some(1.0));
        for _ in 0..5 {
            tally.record(&[5], 7);
        }
        assert_eq!(tally.guess_bits(), Some(32.0));
    }

    #[test]
    fn candidates_are_distinct_and_capped() {
        let mut candidates = Candidates::new(2);
        for value in [3, 3, 4, 5] {
            candidates.push(value);
        }
        assert_eq!(candidates.as_slice(), [3, 4]);
    }

    /// A predictor that sees the future would be caught here: `run` hands over the prefix only.
    #[test]
    fn run_hands_each_prediction_the_past_only() {
        struct Echo;
        impl Predictor for Echo {
            fn predict(&mut self, past: &[u32], out: &mut Candidates) {
                if let Some(&last) = past.last() {
                    out.push(last);
                }
            }
        }
        let isns = [1, 1, 2, 2, 2, 3];
        let tally = run(&mut Echo, &isns, 1);
        assert_eq!((tally.predictions, tally.hits()), (5, 3));
    }
}
