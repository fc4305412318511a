//! Linear recurrences whose output is the whole state (or all of it but the lowest bit): LCGs
//! x' = a·x + c modulo 2^32, 2^31 or 2^31 − 1 with a and c unknown, and additive or
//! subtractive lagged Fibonacci generators x_i = x_{i−r} ± x_{i−s} mod 2^32.

use super::{
    Candidates, Family, FamilyResult, Predictor, Recovered, Tally, best, hit_result, run,
    run_through,
};

const PRIME31: u64 = (1 << 31) - 1;

/// The moduli an LCG is fitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ring {
    /// Modulo 2^bits, the ISN being the state (bits ≤ 32).
    Pow2(u32),
    /// Modulo 2^31 − 1 (Lehmer, MINSTD).
    Prime31,
}

const RINGS: [Ring; 3] = [Ring::Pow2(32), Ring::Pow2(31), Ring::Prime31];
/// The fitted constants' next and second-next value, and the last confirmed constants' too.
const LCG_CANDIDATES: usize = 4;

impl Ring {
    fn modulus(self) -> u64 {
        match self {
            Ring::Pow2(bits) => 1 << bits,
            Ring::Prime31 => PRIME31,
        }
    }

    /// The ISN as an element of the ring, if it can be one.
    fn element(self, isn: u32) -> Option<u64> {
        let x = u64::from(isn);
        (x < self.modulus()).then_some(x)
    }

    fn name(self) -> &'static str {
        match self {
            Ring::Pow2(32) => "2^32",
            Ring::Pow2(_) => "2^31",
            Ring::Prime31 => "2^31 − 1",
        }
    }

    /// (a, c) with x1 = a·x0 + c and x2 = a·x1 + c. Modulo 2^k, a is fixed modulo 2^(k−v)
    /// where 2^v divides x1 − x0 exactly; every choice gives the same later values (they differ
    /// by multiples of 2^(k−v)·(x_j − x_{j−1}), which 2^k divides), so the smallest is taken.
    fn fit(self, [x0, x1, x2]: [u64; 3]) -> Option<(u64, u64)> {
        let m = self.modulus();
        let d1 = (x1 + m - x0) % m;
        let d2 = (x2 + m - x1) % m;
        if d1 == 0 {
            // A constant sequence: x' = x.
            return (d2 == 0).then_some((1, 0));
        }
        let a = match self {
            Ring::Pow2(bits) => {
                let v = d1.trailing_zeros();
                if d2 & ((1 << v) - 1) != 0 {
                    return None;
                }
                let reduced = bits - v;
                let inverse = inverse_mod_pow2(d1 >> v) & mask(reduced);
                ((d2 >> v).wrapping_mul(inverse)) & mask(reduced)
            }
            Ring::Prime31 => d2 * pow_mod(d1, PRIME31 - 2, PRIME31) % PRIME31,
        };
        let c = (x1 + m - a * x0 % m) % m;
        Some((a, c))
    }

    fn step(self, (a, c): (u64, u64), x: u64) -> u64 {
        (a * x % self.modulus() + c) % self.modulus()
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// The inverse of an odd number modulo 2^64 (Newton's iteration doubles the correct bits).
pub(super) fn inverse_mod_pow2(odd: u64) -> u64 {
    let mut inverse = odd;
    for _ in 0..6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
    }
    inverse
}

pub(super) fn pow_mod(mut base: u64, mut exponent: u64, modulus: u64) -> u64 {
    let mut result = 1;
    base %= modulus;
    while exponent > 0 {
        if exponent & 1 == 1 {
            result = result * base % modulus;
        }
        base = base * base % modulus;
        exponent >>= 1;
    }
    result
}

/// An LCG with unknown constants, fitted on the last three ISNs. The constants whose
/// prediction came true are kept too: after a missed SYN-ACK spoils the fit for three steps,
/// they still name the ISN one or two steps ahead.
struct UnknownLcg {
    ring: Ring,
    confirmed: Option<(u64, u64)>,
    /// What the last prediction named, and from which constants.
    named: Vec<(u32, (u64, u64))>,
}

impl UnknownLcg {
    /// The constants of the latest prediction that came true: `confirmed` learns of a hit only
    /// at the next prediction, so a hit on the last ISN is looked up in what was named.
    fn constants_after(&self, last: Option<&u32>) -> Option<(u64, u64)> {
        self.named
            .iter()
            .find(|(isn, _)| Some(isn) == last)
            .map(|&(_, constants)| constants)
            .or(self.confirmed)
    }
}

impl Predictor for UnknownLcg {
    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        let n = past.len();
        if let Some(&(_, constants)) = self.named.iter().find(|(isn, _)| Some(isn) == past.last()) {
            self.confirmed = Some(constants);
        }
        self.named.clear();
        let Some(last) = past.last().and_then(|&isn| self.ring.element(isn)) else {
            return;
        };
        let fitted = (n >= 3)
            .then(|| {
                let x = [past[n - 3], past[n - 2], past[n - 1]].map(|isn| self.ring.element(isn));
                Some([x[0]?, x[1]?, x[2]?])
            })
            .flatten()
            .and_then(|x| self.ring.fit(x));
        let confirmed = self.confirmed.filter(|&c| Some(c) != fitted);
        let constants: Vec<(u64, u64)> = [fitted, confirmed].into_iter().flatten().collect();
        for steps in 1..=2 {
            for &c in &constants {
                let mut x = last;
                for _ in 0..steps {
                    x = self.ring.step(c, x);
                }
                out.push(x as u32);
                self.named.push((x as u32, c));
            }
        }
    }
}

pub fn search_lcg(isns: &[u32], guesses: u64) -> Option<FamilyResult> {
    let tallies = RINGS.iter().map(|&ring| {
        let mut lcg = UnknownLcg {
            ring,
            confirmed: None,
            named: Vec::with_capacity(LCG_CANDIDATES),
        };
        let tally = run(&mut lcg, isns, LCG_CANDIDATES);
        ((ring, lcg.constants_after(isns.last())), tally)
    });
    let ((ring, constants), tally) = best(tallies, isns.len(), LCG_CANDIDATES)?;
    let generator = match constants {
        Some((1, 0)) => "a constant ISN (an LCG with multiplier 1 and increment 0)".to_owned(),
        Some((1, c)) => format!(
            "a counter: x' = x + {c} mod {}, an LCG with multiplier 1",
            ring.name()
        ),
        Some((a, c)) => format!(
            "LCG x' = {a}·x + {c} mod {}, constants recovered from 3 ISNs",
            ring.name()
        ),
        // Only hits outside the window of any one fit: the family, not its constants.
        None => format!("an LCG mod {} (constants not recovered)", ring.name()),
    };
    let recovered = Recovered {
        multiplier: constants.map(|(a, _)| a),
        increment: constants.map(|(_, c)| c),
        modulus: Some(ring.modulus()),
        ..Recovered::new(Family::Lcg, generator)
    };
    Some(hit_result(
        recovered,
        &tally,
        isns.len(),
        LCG_CANDIDATES,
        RINGS.len(),
        guesses,
    ))
}

/// How the two lagged values combine; near is x_{i−s}, far is x_{i−r} (s < r).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    Add,
    FarMinusNear,
    NearMinusFar,
}

const COMBINES: [Combine; 3] = [Combine::Add, Combine::FarMinusNear, Combine::NearMinusFar];
/// Lags up to this are searched: every pair s < r ≤ 64.
const MAX_LAG: usize = 64;
/// Outputs x (shift 0) or x >> 1 (glibc `random()`).
const SHIFTS: [u32; 2] = [0, 1];
const LAG_PAIRS: usize = MAX_LAG * (MAX_LAG - 1) / 2;
const LAGGED_HYPOTHESES: usize = LAG_PAIRS * COMBINES.len() * SHIFTS.len();
/// With x >> 1 the dropped bits carry 0 or 1 into the result: two candidates.
const LAGGED_CANDIDATES: usize = 2;
/// Each hypothesis is first tried on the window's newest ISNs (the generator a live service
/// runs now; an older missed SYN-ACK does not matter): only one that names one of these is
/// run over the whole window.
const PROBE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LaggedFibonacci {
    short: usize,
    long: usize,
    combine: Combine,
    shift: u32,
}

impl LaggedFibonacci {
    #[cfg(test)]
    fn all() -> impl Iterator<Item = LaggedFibonacci> {
        SHIFTS.into_iter().flat_map(|shift| {
            (2..=MAX_LAG).flat_map(move |long| {
                (1..long).flat_map(move |short| {
                    COMBINES.into_iter().map(move |combine| LaggedFibonacci {
                        short,
                        long,
                        combine,
                        shift,
                    })
                })
            })
        })
    }

    fn describe(self) -> String {
        let (s, r) = (self.short, self.long);
        let formula = match self.combine {
            Combine::Add => format!("x_i = x_(i−{s}) + x_(i−{r})"),
            Combine::FarMinusNear => format!("x_i = x_(i−{r}) − x_(i−{s})"),
            Combine::NearMinusFar => format!("x_i = x_(i−{s}) − x_(i−{r})"),
        };
        let output = if self.shift == 0 { "x_i" } else { "x_i >> 1" };
        let known = if (s, r, self.combine, self.shift) == (3, 31, Combine::Add, 1) {
            ": glibc random()"
        } else {
            ""
        };
        format!("lagged Fibonacci {formula} mod 2^32, ISN = {output}{known}")
    }
}

impl LaggedFibonacci {
    /// The candidates for the ISN after `near` (s back) and `far` (r back), most likely first.
    fn candidates(self, near: u32, far: u32) -> Option<[u32; 2]> {
        let combined = match self.combine {
            Combine::Add => near.wrapping_add(far),
            Combine::FarMinusNear => far.wrapping_sub(near),
            Combine::NearMinusFar => near.wrapping_sub(far),
        };
        if self.shift == 0 {
            return Some([combined; 2]);
        }
        // 31-bit outputs: x = 2·o + b, so the shifted sum is o_near ± o_far plus a carry of 0 or
        // +1 (adding) or 0 or −1 (subtracting), the first the likelier (3 in 4).
        if (near | far) >> 31 != 0 {
            return None;
        }
        let base = combined & 0x7fff_ffff;
        let carried = match self.combine {
            Combine::Add => base.wrapping_add(1),
            _ => base.wrapping_sub(1),
        };
        Some([base, carried & 0x7fff_ffff])
    }

    /// Whether the candidates named `isns[i]`.
    fn hits(self, isns: &[u32], i: usize) -> bool {
        self.candidates(isns[i - self.short], isns[i - self.long])
            .is_some_and(|c| c.contains(&isns[i]))
    }
}

impl Predictor for LaggedFibonacci {
    fn warm_up(&self) -> usize {
        self.long
    }

    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        let n = past.len();
        if let Some(candidates) = self.candidates(past[n - self.short], past[n - self.long]) {
            for candidate in candidates {
                out.push(candidate);
            }
        }
    }
}

pub fn search_lagged_fibonacci(isns: &[u32], guesses: u64) -> Option<FamilyResult> {
    let n = isns.len();
    let mut named = Vec::new();
    for long in 2..=MAX_LAG.min(n.saturating_sub(1)) {
        let probe = n.saturating_sub(PROBE).max(long)..n;
        for short in 1..long {
            for shift in SHIFTS {
                for combine in COMBINES {
                    let hypothesis = LaggedFibonacci {
                        short,
                        long,
                        combine,
                        shift,
                    };
                    if probe.clone().any(|i| hypothesis.hits(isns, i)) {
                        named.push(hypothesis);
                    }
                }
            }
        }
    }
    let tallies = named.into_iter().map(|mut hypothesis| {
        let tally = run_through(&mut hypothesis, isns, LAGGED_CANDIDATES);
        (hypothesis, tally)
    });
    let (hypothesis, tally): (LaggedFibonacci, Tally) =
        best(tallies, isns.len(), LAGGED_CANDIDATES)?;
    let recovered = Recovered {
        lags: Some([hypothesis.short as u32, hypothesis.long as u32]),
        modulus: Some(1 << 32),
        ..Recovered::new(Family::LaggedFibonacci, hypothesis.describe())
    };
    Some(hit_result(
        recovered,
        &tally,
        isns.len(),
        LAGGED_CANDIDATES,
        LAGGED_HYPOTHESES,
        guesses,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lcg_is_fitted_from_three_values_in_each_ring() {
        let cases = [
            (Ring::Pow2(32), 1_664_525u64, 1_013_904_223u64),
            (Ring::Pow2(31), 1_103_515_245 & 0x7fff_ffff, 12_345),
            (Ring::Prime31, 48_271, 0),
            (Ring::Pow2(32), 0x4000_0001, 7),
        ];
        for (ring, a, c) in cases {
            let x0 = 123_456_789 % ring.modulus();
            let x1 = ring.step((a, c), x0);
            let x2 = ring.step((a, c), x1);
            let fitted = ring.fit([x0, x1, x2]).unwrap();
            let x3 = ring.step((a, c), x2);
            assert_eq!(ring.step(fitted, x2), x3, "{ring:?}");
            assert_eq!(ring.step(fitted, x3), ring.step((a, c), x3), "{ring:?}");
        }
    }

    #[test]
    fn inverses() {
        for odd in [1u64, 3, 0x5DEECE66D, u64::MAX] {
            assert_eq!(odd.wrapping_mul(inverse_mod_pow2(odd)), 1);
        }
        assert_eq!(16_807 * pow_mod(16_807, PRIME31 - 2, PRIME31) % PRIME31, 1);
    }

    #[test]
    fn every_lag_pair_is_searched_once() {
        assert_eq!(LaggedFibonacci::all().count(), LAGGED_HYPOTHESES);
        assert_eq!(LAGGED_HYPOTHESES, 12_096);
    }
}
