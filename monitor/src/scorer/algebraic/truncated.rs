//! ISNs made of the high bits of consecutive calls of a known LCG: `(rand() << 16) | rand()`
//! with a C library's 15-bit `rand()`, glibc's `rand_r`, `java.util.Random.nextInt()`. Each
//! call shows some high bits of the LCG's state and hides the low ones; two consecutive calls
//! leave about one state consistent with both. The hidden bits are not brute-forced per ISN:
//! with the first call showing state bits from `low` up, the state is s = base + h with
//! h < 2^low, the next state is a·base + c + a·h, and a table of a·h (mod the bits that matter)
//! sorted once per LCG turns "which h give the second call's bits" into a range lookup.
//!
//! Unknown constants with truncated outputs would need lattice reduction (Stern 1987; Frieze
//! et al. 1988); that is not attempted: an LCG outside this catalogue whose ISNs are not its
//! whole state is found only by the bit-level predictors, through its low bits' short periods.

use std::sync::OnceLock;

use super::modular::{inverse_mod_pow2, pow_mod};
use super::{
    Candidates, Family, FamilyResult, Predictor, Recovered, best, hit_result, run, run_through,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Modulus {
    Pow2(u32),
    Prime(u64),
}

impl Modulus {
    fn value(self) -> u64 {
        match self {
            Modulus::Pow2(bits) => 1 << bits,
            Modulus::Prime(p) => p,
        }
    }
}

#[derive(Debug)]
struct Lcg {
    name: &'static str,
    multiplier: u64,
    increment: u64,
    modulus: Modulus,
}

/// One call's contribution: state bits [low, low + bits) placed at ISN bit `shift` (bits that
/// would land above bit 31 are lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    low: u32,
    bits: u32,
    shift: u32,
}

const fn part(low: u32, bits: u32, shift: u32) -> Part {
    Part { low, bits, shift }
}

impl Part {
    fn top(self) -> u32 {
        self.low + self.bits
    }

    fn fully_visible(self) -> bool {
        self.shift + self.bits <= 32
    }

    /// Where this part lies in the ISN.
    fn field(self) -> u32 {
        ((((1u64 << self.bits) - 1) << self.shift) & 0xffff_ffff) as u32
    }

    /// This call's bits in the ISN, from the state after the call.
    fn place(self, state: u64) -> u32 {
        ((((state >> self.low) & ((1 << self.bits) - 1)) << self.shift) & 0xffff_ffff) as u32
    }

    /// The call's output as shown in a fully visible field of `isn`.
    fn output(self, isn: u32) -> u64 {
        u64::from(isn >> self.shift) & ((1 << self.bits) - 1)
    }
}

/// How the calls of one ISN are combined (fields never overlap, so `|`, `^` and `+` agree);
/// calls in the order the code makes them.
#[derive(Debug)]
struct Composition {
    name: &'static str,
    parts: &'static [Part],
}

const ANSI: Lcg = Lcg {
    name: "ANSI C / glibc TYPE_0 rand()",
    multiplier: 1_103_515_245,
    increment: 12_345,
    modulus: Modulus::Pow2(32),
};
const MSVC: Lcg = Lcg {
    name: "MSVC rand()",
    multiplier: 214_013,
    increment: 2_531_011,
    modulus: Modulus::Pow2(32),
};
const BORLAND: Lcg = Lcg {
    name: "Borland C/C++ rand()",
    multiplier: 22_695_477,
    increment: 1,
    modulus: Modulus::Pow2(32),
};
const NUMERICAL_RECIPES: Lcg = Lcg {
    name: "Numerical Recipes ranqd1",
    multiplier: 1_664_525,
    increment: 1_013_904_223,
    modulus: Modulus::Pow2(32),
};
const MARSAGLIA: Lcg = Lcg {
    name: "Marsaglia's 69069",
    multiplier: 69_069,
    increment: 1,
    modulus: Modulus::Pow2(32),
};
const DELPHI: Lcg = Lcg {
    name: "Delphi / Turbo Pascal Random",
    multiplier: 134_775_813,
    increment: 1,
    modulus: Modulus::Pow2(32),
};
const JAVA: Lcg = Lcg {
    name: "java.util.Random",
    multiplier: 0x5_DEEC_E66D,
    increment: 11,
    modulus: Modulus::Pow2(48),
};
const MINSTD: Lcg = Lcg {
    name: "MINSTD (minstd_rand0)",
    multiplier: 16_807,
    increment: 0,
    modulus: Modulus::Prime((1 << 31) - 1),
};
const MINSTD_48271: Lcg = Lcg {
    name: "MINSTD (minstd_rand)",
    multiplier: 48_271,
    increment: 0,
    modulus: Modulus::Prime((1 << 31) - 1),
};

/// 15-bit outputs, state bits 30..16.
const RAND15: [Composition; 5] = [
    Composition {
        name: "(rand() << 16) | rand()",
        parts: &[part(16, 15, 16), part(16, 15, 0)],
    },
    Composition {
        name: "rand() | (rand() << 16), the low half drawn first",
        parts: &[part(16, 15, 0), part(16, 15, 16)],
    },
    Composition {
        name: "(rand() << 15) | rand()",
        parts: &[part(16, 15, 15), part(16, 15, 0)],
    },
    Composition {
        name: "rand() | (rand() << 15), the low half drawn first",
        parts: &[part(16, 15, 0), part(16, 15, 15)],
    },
    Composition {
        name: "(rand() << 30) ^ (rand() << 15) ^ rand()",
        parts: &[part(16, 15, 30), part(16, 15, 15), part(16, 15, 0)],
    },
];
/// glibc's `rand_r`: three steps of 11, 10 and 10 bits.
const RAND_R: Composition = Composition {
    name: "rand_r(), 11 + 10 + 10 bits of three steps",
    parts: &[part(16, 11, 20), part(16, 10, 10), part(16, 10, 0)],
};
/// 16-bit outputs, state bits 31..16.
const HIGH16: [Composition; 2] = [
    Composition {
        name: "(r() << 16) | r() of the state's top 16 bits",
        parts: &[part(16, 16, 16), part(16, 16, 0)],
    },
    Composition {
        name: "r() | (r() << 16) of the state's top 16 bits, the low half drawn first",
        parts: &[part(16, 16, 0), part(16, 16, 16)],
    },
];
/// MINSTD's 31-bit outputs, bits 30..15.
const MINSTD16: [Composition; 2] = [
    Composition {
        name: "(r() << 16) | r() of the top 16 of 31 bits",
        parts: &[part(15, 16, 16), part(15, 16, 0)],
    },
    Composition {
        name: "r() | (r() << 16) of the top 16 of 31 bits, the low half drawn first",
        parts: &[part(15, 16, 0), part(15, 16, 16)],
    },
];
const NEXT_INT: Composition = Composition {
    name: "nextInt(), state bits 47..16",
    parts: &[part(16, 32, 0)],
};

/// (LCG, composition): every hypothesis the search tries.
fn catalogue() -> impl Iterator<Item = (&'static Lcg, &'static Composition)> {
    let rand15 = [&ANSI, &MSVC, &BORLAND]
        .into_iter()
        .flat_map(|lcg| RAND15.iter().map(move |c| (lcg, c)));
    let high16 = [&NUMERICAL_RECIPES, &MARSAGLIA, &DELPHI]
        .into_iter()
        .flat_map(|lcg| HIGH16.iter().map(move |c| (lcg, c)));
    let minstd = [&MINSTD, &MINSTD_48271]
        .into_iter()
        .flat_map(|lcg| MINSTD16.iter().map(move |c| (lcg, c)));
    rand15
        .chain(high16)
        .chain(minstd)
        .chain([(&ANSI, &RAND_R), (&JAVA, &NEXT_INT)])
}

const CATALOGUE_SIZE: usize = 3 * 5 + 3 * 2 + 2 * 2 + 2;
/// States consistent with the last ISN(s) that are followed; with more, no prediction.
const MAX_STATES: usize = 4;
/// Each state names the next ISN, and the one after it (a SYN-ACK missed in between).
const CANDIDATES: usize = 2 * MAX_STATES;
/// Predictions over the window's newest ISNs an entry must hit one of to be run over all.
const PROBE: usize = 4;

/// The sorted a·h (mod the modulus the second call's bits need) for every hidden h.
struct Table {
    /// Products are below this.
    modulus: u64,
    sorted: Vec<u64>,
    /// h = product · this (mod `modulus`).
    inverse: u64,
}

impl Table {
    fn build(lcg: &Lcg, hidden_bits: u32, check: Part) -> Table {
        let modulus = match lcg.modulus {
            Modulus::Pow2(_) => 1 << check.top(),
            Modulus::Prime(p) => p,
        };
        let mut sorted: Vec<u64> = (0..1u64 << hidden_bits)
            .map(|h| mul_mod(lcg.multiplier, h, modulus))
            .collect();
        sorted.sort_unstable();
        let inverse = match lcg.modulus {
            Modulus::Pow2(_) => inverse_mod_pow2(lcg.multiplier) & (modulus - 1),
            Modulus::Prime(p) => pow_mod(lcg.multiplier, p - 2, p),
        };
        Table {
            modulus,
            sorted,
            inverse,
        }
    }

    /// Every h whose product lies in [from, from + width) modulo the table's modulus.
    fn hidden_in(&self, from: u64, width: u64, mut found: impl FnMut(u64)) {
        let mut scan = |lo: u64, hi: u64| {
            let start = self.sorted.partition_point(|&p| p < lo);
            for &product in self.sorted[start..].iter().take_while(|&&p| p < hi) {
                found(mul_mod(product, self.inverse, self.modulus));
            }
        };
        let end = from + width;
        if end <= self.modulus {
            scan(from, end);
        } else {
            scan(from, self.modulus);
            scan(0, end - self.modulus);
        }
    }
}

/// a·b modulo a power of two (any size) or a prime below 2^32.
fn mul_mod(a: u64, b: u64, modulus: u64) -> u64 {
    if modulus.is_power_of_two() {
        a.wrapping_mul(b) & (modulus - 1)
    } else {
        (a % modulus) * (b % modulus) % modulus
    }
}

fn add_mod(a: u64, b: u64, modulus: u64) -> u64 {
    if modulus.is_power_of_two() {
        a.wrapping_add(b) & (modulus - 1)
    } else {
        (a + b) % modulus
    }
}

/// One catalogue entry, ready to predict.
struct Truncated {
    lcg: &'static Lcg,
    composition: &'static Composition,
    /// The two consecutive calls the state is recovered from (indexes into the calls of one
    /// ISN, or 0 and 0 across two ISNs when an ISN is one call).
    first: usize,
    table: &'static Table,
    /// States are followed modulo this (the bits every call can see).
    working: u64,
    /// The multiplier's inverse modulo `working`, to step back.
    inverse: u64,
    /// The states recovered for the current prediction (kept to reuse its allocation).
    states: Vec<u64>,
}

impl Truncated {
    fn new(lcg: &'static Lcg, composition: &'static Composition, table: &'static Table) -> Self {
        let first = pair_start(composition);
        let top = composition.parts.iter().map(|p| p.top()).max().unwrap_or(0);
        let (working, inverse) = match lcg.modulus {
            Modulus::Pow2(bits) => {
                let working: u64 = 1 << top.min(bits);
                (working, inverse_mod_pow2(lcg.multiplier) & (working - 1))
            }
            Modulus::Prime(p) => (p, pow_mod(lcg.multiplier, p - 2, p)),
        };
        Self {
            lcg,
            composition,
            first,
            table,
            working,
            inverse,
            states: Vec::with_capacity(MAX_STATES),
        }
    }

    fn step(&self, state: u64) -> u64 {
        add_mod(
            mul_mod(self.lcg.multiplier, state, self.working),
            self.lcg.increment,
            self.working,
        )
    }

    fn step_back(&self, state: u64) -> u64 {
        let back = add_mod(
            state,
            self.working - self.lcg.increment % self.working,
            self.working,
        );
        mul_mod(back, self.inverse, self.working)
    }

    /// Whether a state after an ISN's last call also made `earlier`, the ISN before it (or
    /// the one before that, a SYN-ACK missed in between).
    fn explains(&self, after: u64, earlier: u32) -> bool {
        let mut state = after;
        // Back over the last ISN's calls and the earlier one's, then one more ISN's.
        for steps_back in [2 * self.calls(), self.calls()] {
            for _ in 0..steps_back {
                state = self.step_back(state);
            }
            if self.compose(state).0 == earlier {
                return true;
            }
        }
        false
    }

    fn calls(&self) -> usize {
        self.composition.parts.len()
    }

    /// The ISN made by the calls after `state`, and the state after them.
    fn compose(&self, mut state: u64) -> (u32, u64) {
        let mut isn = 0;
        for part in self.composition.parts {
            state = self.step(state);
            isn |= part.place(state);
        }
        (isn, state)
    }

    /// States (after the last call of `past`'s last ISN) consistent with its last ISN(s);
    /// None if there are too many to follow.
    fn recover(&self, past: &[u32], states: &mut Vec<u64>) -> Option<()> {
        let parts = self.composition.parts;
        let single = parts.len() == 1;
        let n = past.len();
        let (isn_a, isn_b) = match (single, n) {
            (true, 2..) => (past[n - 2], past[n - 1]),
            (false, 1..) => (past[n - 1], past[n - 1]),
            _ => return None,
        };
        let (a, b) = if single {
            (parts[0], parts[0])
        } else {
            (parts[self.first], parts[self.first + 1])
        };
        let base = a.output(isn_a) << a.low;
        let start = add_mod(
            mul_mod(self.lcg.multiplier, base, self.table.modulus),
            self.lcg.increment,
            self.table.modulus,
        );
        let target = b.output(isn_b) << b.low;
        let width = 1 << b.low;
        let from = add_mod(target, self.table.modulus - start, self.table.modulus);
        let mut overflow = false;
        self.table.hidden_in(from, width, |h| {
            let state = base + h;
            if overflow || state >= self.working {
                return;
            }
            if let Some(after) = self.verify(state, isn_a, isn_b) {
                if states.len() == MAX_STATES {
                    overflow = true;
                } else if !states.contains(&after) {
                    states.push(after);
                }
            }
        });
        if !single && n >= 2 {
            // The states the ISN before also agrees with first: the likeliest candidates.
            states.sort_by_key(|&state| !self.explains(state, past[n - 2]));
        }
        (!overflow).then_some(())
    }

    /// Checks a candidate state (after call `first`) against every call of the ISN(s) it was
    /// recovered from; returns the state after the last call.
    fn verify(&self, state: u64, isn_a: u32, isn_b: u32) -> Option<u64> {
        let parts = self.composition.parts;
        if parts.len() == 1 {
            let next = self.step(state);
            return (parts[0].place(next) == isn_b & parts[0].field()).then_some(next);
        }
        let mut earlier = state;
        for part in parts[..self.first].iter().rev() {
            earlier = self.step_back(earlier);
            if part.place(earlier) != isn_a & part.field() {
                return None;
            }
        }
        let mut later = state;
        for part in &parts[self.first + 1..] {
            later = self.step(later);
            if part.place(later) != isn_a & part.field() {
                return None;
            }
        }
        Some(later)
    }
}

/// The first two consecutive calls whose fields are wholly in the ISN.
fn pair_start(composition: &Composition) -> usize {
    let parts = composition.parts;
    (0..parts.len().saturating_sub(1))
        .find(|&i| parts[i].fully_visible() && parts[i + 1].fully_visible())
        .unwrap_or(0)
}

impl Predictor for Truncated {
    fn warm_up(&self) -> usize {
        if self.calls() == 1 { 2 } else { 1 }
    }

    fn predict(&mut self, past: &[u32], out: &mut Candidates) {
        let mut states = std::mem::take(&mut self.states);
        states.clear();
        if self.recover(past, &mut states).is_some() {
            for &state in &states {
                out.push(self.compose(state).0);
            }
            for &state in &states {
                let (_, skipped) = self.compose(state);
                out.push(self.compose(skipped).0);
            }
        }
        self.states = states;
    }
}

/// Tables per (LCG, hidden bits, second call), built on first use (about 6 MB in all; tests/service_memory.rs bounds it).
fn table(lcg: &'static Lcg, composition: &Composition) -> &'static Table {
    static TABLES: OnceLock<Vec<(usize, u32, Part, Table)>> = OnceLock::new();
    let key = |lcg: &Lcg, composition: &Composition| {
        let parts = composition.parts;
        let first = pair_start(composition);
        let (a, b) = if parts.len() == 1 {
            (parts[0], parts[0])
        } else {
            (parts[first], parts[first + 1])
        };
        (lcg as *const Lcg as usize, a.low, part(b.low, b.bits, 0))
    };
    let tables = TABLES.get_or_init(|| {
        let mut tables: Vec<(usize, u32, Part, Table)> = Vec::new();
        for (lcg, composition) in catalogue() {
            let (id, hidden, check) = key(lcg, composition);
            if !tables
                .iter()
                .any(|(i, h, c, _)| (*i, *h, *c) == (id, hidden, check))
            {
                tables.push((id, hidden, check, Table::build(lcg, hidden, check)));
            }
        }
        tables
    });
    let wanted = key(lcg, composition);
    tables
        .iter()
        .find(|(i, h, c, _)| (*i, *h, *c) == wanted)
        .map(|(_, _, _, table)| table)
        .expect("every catalogue entry's table is built")
}

pub fn search(isns: &[u32], guesses: u64) -> Option<FamilyResult> {
    let tallies = catalogue().filter_map(|(lcg, composition)| {
        let mut predictor = Truncated::new(lcg, composition, table(lcg, composition));
        // The newest ISNs first: a live service's current generator, and the cheap refusal
        // of every entry but the right one.
        let probe_from = isns.len().saturating_sub(PROBE + predictor.warm_up());
        let probe = run(&mut predictor, &isns[probe_from..], CANDIDATES);
        (probe.hits() > 0).then(|| {
            let tally = run_through(&mut predictor, isns, CANDIDATES);
            ((lcg, composition), tally)
        })
    });
    let ((lcg, composition), tally) = best(tallies, isns.len(), CANDIDATES)?;
    let recovered = Recovered {
        multiplier: Some(lcg.multiplier),
        increment: Some(lcg.increment),
        modulus: Some(lcg.modulus.value()),
        ..Recovered::new(
            Family::TruncatedLcg,
            format!(
                "{} ({}·x + {} mod {}): {}",
                lcg.name,
                lcg.multiplier,
                lcg.increment,
                match lcg.modulus {
                    Modulus::Pow2(bits) => format!("2^{bits}"),
                    Modulus::Prime(_) => "2^31 − 1".to_owned(),
                },
                composition.name
            ),
        )
    };
    Some(hit_result(
        recovered,
        &tally,
        isns.len(),
        CANDIDATES,
        CATALOGUE_SIZE,
        guesses,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_its_documented_size_and_every_entry_recovers_from_a_visible_pair() {
        assert_eq!(catalogue().count(), CATALOGUE_SIZE);
        for (lcg, composition) in catalogue() {
            let parts = composition.parts;
            let first = pair_start(composition);
            let pair = if parts.len() == 1 {
                [parts[0], parts[0]]
            } else {
                [parts[first], parts[first + 1]]
            };
            assert!(pair.iter().all(|p| p.fully_visible()), "{composition:?}");
            // The first call of the pair shows the highest state bit any call uses.
            let top = parts.iter().map(|p| p.top()).max().unwrap();
            assert_eq!(pair[0].top(), top, "{} {composition:?}", lcg.name);
        }
    }

    /// The catalogue's own generators, run from a few states, are named from their second
    /// (one call per ISN: third) ISN on, first among the candidates from the third.
    #[test]
    fn each_entry_predicts_its_own_generator() {
        for (lcg, composition) in catalogue() {
            let entry = Truncated::new(lcg, composition, table(lcg, composition));
            for seed in [1u64, 0x1234_5678, 0x7fff_fffe] {
                let mut state = seed % entry.working;
                let isns: Vec<u32> = (0..12)
                    .map(|_| {
                        let (isn, next) = entry.compose(state);
                        state = next;
                        isn
                    })
                    .collect();
                let mut predictor = Truncated::new(lcg, composition, table(lcg, composition));
                let tally = run(&mut predictor, &isns, CANDIDATES);
                let warm_up = if composition.parts.len() == 1 { 2 } else { 1 };
                let context = format!("{} {} seed {seed}: {tally:?}", lcg.name, composition.name);
                assert_eq!(tally.predictions, 12 - warm_up, "{context}");
                assert_eq!(tally.hits(), tally.predictions, "{context}");
                // Only the first prediction has no earlier ISN to rank the states by.
                assert!(tally.by_rank[0] + 1 >= tally.predictions, "{context}");
            }
        }
    }
}
