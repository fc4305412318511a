//! A known generator step combined with a clock, picoTCP-style: `seed = (seed·a + c) ^ ~tick`,
//! or `seed·a + c + tick`. For each catalogue step f and each way of combining, the residual
//! r_i = x_i ⊕ f(x_{i−1}) (or its complement, or x_i − f(x_{i−1}), or f(x_{i−1}) − x_i) is
//! given to the clock (rate × Δt) and small-step models of `models.rs`. Under H0 x_i is uniform
//! and independent of x_{<i}, so r_i is uniform and independent of r_{<i}: the residual
//! series is i.i.d. uniform, and the models' prequential residuals over it are too.

use super::super::findings::{RADIUS_BITS, attack_feasibility, closest_radius};
use super::super::models::{self, Model};
use super::{Family, FamilyResult, Recovered};

/// A generator step applied to the previous ISN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Lcg {
        name: &'static str,
        multiplier: u32,
        increment: u32,
    },
    Xorshift32,
}

impl Step {
    fn apply(self, x: u32) -> u32 {
        match self {
            Step::Lcg {
                multiplier,
                increment,
                ..
            } => x.wrapping_mul(multiplier).wrapping_add(increment),
            Step::Xorshift32 => {
                let x = x ^ (x << 13);
                let x = x ^ (x >> 17);
                x ^ (x << 5)
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Step::Lcg {
                name,
                multiplier,
                increment,
            } => format!("the {name} LCG step ({multiplier}·x + {increment})"),
            Step::Xorshift32 => "Marsaglia's xorshift32 (13, 17, 5) step".to_owned(),
        }
    }
}

const fn lcg(name: &'static str, multiplier: u32, increment: u32) -> Step {
    Step::Lcg {
        name,
        multiplier,
        increment,
    }
}

const STEPS: [Step; 7] = [
    lcg("Numerical Recipes", 1_664_525, 1_013_904_223),
    lcg("ANSI C", 1_103_515_245, 12_345),
    lcg("MSVC", 214_013, 2_531_011),
    lcg("Borland", 22_695_477, 1),
    lcg("Marsaglia 69069", 69_069, 1),
    lcg("Delphi", 134_775_813, 1),
    Step::Xorshift32,
];

/// How the step and the clock are combined into the ISN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// x = f ⊕ clock.
    Xor,
    /// x = f ⊕ ¬clock (picoTCP).
    XorComplement,
    /// x = f + clock.
    Add,
    /// x = f − clock.
    Subtract,
}

/// A clock read as it runs (up) comes first: it wins ties with the same clock read backwards.
const MIXES: [Mix; 4] = [Mix::XorComplement, Mix::Xor, Mix::Add, Mix::Subtract];

impl Mix {
    /// The clock's value, if the ISN is `stepped` mixed with it this way.
    fn residual(self, isn: u32, stepped: u32) -> u32 {
        match self {
            Mix::Xor => isn ^ stepped,
            Mix::XorComplement => !(isn ^ stepped),
            Mix::Add => isn.wrapping_sub(stepped),
            Mix::Subtract => stepped.wrapping_sub(isn),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mix::Xor => "XOR",
            Mix::XorComplement => "XOR the complement of",
            Mix::Add => "plus",
            Mix::Subtract => "minus",
        }
    }
}

/// The clock model and the small-step model (a counter, a slow clock).
const MODELS: [Model; 2] = [Model::Rate, Model::Constant];
/// `closest_radius` takes the smallest p-value over its radii.
const HYPOTHESES: usize = STEPS.len() * MIXES.len() * MODELS.len() * RADIUS_BITS.len();
/// The clock model (a median per step) runs only on a series whose first this many residuals
/// already look like a clock.
const SCREEN: usize = 32;
/// The clock model fits the best series this well for its rate to be reported.
const CLOCK_NAMED_BELOW: f64 = 1e-6;

struct Best {
    p_value: f64,
    step: Step,
    mix: Mix,
    model: Model,
    series: Vec<u32>,
    residuals: Vec<i32>,
    radius_bits: u32,
    hits: usize,
}

pub fn search(isns: &[u32], times_ns: &[u64], guesses: u64) -> Option<FamilyResult> {
    if isns.len() < 3 {
        return None;
    }
    // r_i goes with x_i's time.
    let times = &times_ns[1..];
    let mut best: Option<Best> = None;
    let mut series = Vec::with_capacity(isns.len() - 1);
    for step in STEPS {
        for mix in MIXES {
            series.clear();
            series.extend(
                isns.windows(2)
                    .map(|w| mix.residual(w[1], step.apply(w[0]))),
            );
            // A residual that never moves is the bare step: an LCG the `Lcg` family names.
            if series.windows(2).all(|w| w[0] == w[1]) {
                continue;
            }
            for model in MODELS {
                let Some(residuals) = model_residuals(model, mix, &series, times) else {
                    continue;
                };
                if !may_be_close(&residuals) {
                    continue;
                }
                let Some(closeness) = closest_radius(&residuals) else {
                    continue;
                };
                if best.as_ref().is_none_or(|b| closeness.p_value < b.p_value) {
                    best = Some(Best {
                        p_value: closeness.p_value,
                        step,
                        mix,
                        model,
                        series: series.clone(),
                        residuals,
                        radius_bits: closeness.radius_bits,
                        hits: closeness.hits,
                    });
                }
            }
        }
    }
    best.map(|best| result(best, times, guesses))
}

/// The model's prequential residuals over the series, unless a cheap look rules it out. A
/// hypothesis left out is one not rejected, which keeps every p-value valid.
fn model_residuals(model: Model, mix: Mix, series: &[u32], times: &[u64]) -> Option<Vec<i32>> {
    match model {
        // |D| is the same for a clock read forwards or backwards (¬x and −x): one of each
        // pair is enough.
        Model::Constant => matches!(mix, Mix::XorComplement | Mix::Add)
            .then(|| models::residuals(model, series, times)),
        _ => looks_like_a_clock(series, times).then(|| models::residuals(model, series, times)),
    }
}

/// Residuals within ±2^this of the previous step scaled to the current gap, for the screen.
const SCREEN_RADIUS_BITS: u32 = 24;

/// Extrapolating each residual from the two before it (rate of the last gap × this gap) lands
/// within ±2^24 for most of the first `SCREEN` residuals: what a clock does, and a uniform
/// series does 1 time in 128.
fn looks_like_a_clock(series: &[u32], times: &[u64]) -> bool {
    let screen = series.len().min(SCREEN);
    if screen < 3 {
        return false;
    }
    let close = (2..screen)
        .filter(|&i| {
            // Capture timestamps may go backwards (file order): such a gap predicts nothing.
            let before = times[i - 1].saturating_sub(times[i - 2]);
            let last = times[i].saturating_sub(times[i - 1]);
            if before == 0 {
                return false;
            }
            let step = f64::from(series[i - 1].wrapping_sub(series[i - 2]) as i32);
            let predicted =
                series[i - 1].wrapping_add((step * last as f64 / before as f64) as i64 as u32);
            (series[i].wrapping_sub(predicted) as i32).unsigned_abs() < 1 << SCREEN_RADIUS_BITS
        })
        .count();
    2 * close >= screen - 2
}

/// Whether any radius could give a small enough p-value: the Chernoff bound
/// P(Bin(m, p) ≥ h) ≤ exp(−m·KL(h/m ‖ p)) is within a polynomial factor of the tail, so a
/// bound above `MAY_BE_CLOSE_BOUND` leaves the exact tail far above any level a family of
/// hundreds of hypotheses needs.
fn may_be_close(residuals: &[i32]) -> bool {
    const MAY_BE_CLOSE_BOUND: f64 = 1e-3;
    let m = residuals.len() as f64;
    if m == 0.0 {
        return false;
    }
    RADIUS_BITS.iter().any(|&radius_bits| {
        let hits = residuals
            .iter()
            .filter(|e| e.unsigned_abs() < 1 << radius_bits)
            .count() as f64;
        let p = (2.0 * f64::from(1u32 << radius_bits) - 1.0) / 4_294_967_296.0;
        let q = hits / m;
        if q <= p {
            return false;
        }
        let kl = q * (q / p).ln()
            + if q < 1.0 {
                (1.0 - q) * ((1.0 - q) / (1.0 - p)).ln()
            } else {
                0.0
            };
        (-m * kl).exp() < MAY_BE_CLOSE_BOUND
    })
}

fn result(best: Best, times: &[u64], guesses: u64) -> FamilyResult {
    // The small-step model may fit a slow clock better; its rate is named when the clock
    // model fits the same series too.
    let clock_fits = best.model == Model::Rate
        || closest_radius(&models::residuals(Model::Rate, &best.series, times))
            .is_some_and(|c| c.p_value < CLOCK_NAMED_BELOW);
    let clock_hz = clock_fits
        .then(|| clock_rate(&best.series, times))
        .flatten();
    let clock = match clock_hz {
        Some(hz) if hz < 0.0 => format!("a clock counting down at {:.0}/s", -hz),
        Some(hz) => format!("a clock at {hz:.0}/s"),
        None => "a value that moves in small steps (a counter or a slow clock)".to_owned(),
    };
    let known = match (best.step, best.mix) {
        (
            Step::Lcg {
                increment: 1_013_904_223,
                ..
            },
            Mix::XorComplement,
        ) => ": picoTCP's pico_rand",
        _ => "",
    };
    let generator = format!(
        "each ISN is {} of the previous one {} {clock}{known}",
        best.step.describe(),
        best.mix.describe()
    );
    let (multiplier, increment) = match best.step {
        Step::Lcg {
            multiplier,
            increment,
            ..
        } => (Some(u64::from(multiplier)), Some(u64::from(increment))),
        Step::Xorshift32 => (None, None),
    };
    let exact = best.residuals.iter().filter(|&&e| e == 0).count();
    let recovered = Recovered {
        multiplier,
        increment,
        modulus: multiplier.map(|_| 1 << 32),
        clock_hz,
        predictions: best.residuals.len() as u32,
        predicted_exactly: exact as u32,
        predicted_within: best.hits as u32,
        candidate_bits: f64::from(best.radius_bits),
        ..Recovered::new(Family::StepWithClock, generator)
    };
    // The spread an attacker faces: the tighter of the two models over the whole series.
    let per_model: Vec<(Model, Vec<i32>)> = MODELS
        .iter()
        .map(|&model| (model, models::residuals(model, &best.series, times)))
        .collect();
    FamilyResult {
        p_value: (best.p_value * HYPOTHESES as f64).min(1.0),
        guess_bits: per_model
            .iter()
            .filter_map(|(_, residuals)| models::guess_bits(residuals))
            .min_by(f64::total_cmp),
        feasibility: attack_feasibility(&per_model, guesses),
        recovered,
    }
}

/// The residual clock's mean rate over the window, per second (each step read as a signed
/// 32-bit difference, so a clock counting down comes out negative); None below one tick a
/// second or over no time.
fn clock_rate(series: &[u32], times: &[u64]) -> Option<f64> {
    let (first, last) = (times.first()?, times.last()?);
    let elapsed_s = last.checked_sub(*first)? as f64 * 1e-9;
    let advance: f64 = series
        .windows(2)
        .map(|r| f64::from(r[1].wrapping_sub(r[0]) as i32))
        .sum();
    let rate = advance / elapsed_s;
    (rate.is_finite() && rate.abs() >= 1.0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pico_rand_leaves_its_millisecond_tick() {
        let mut seed = 0x1234_5678u32;
        let (mut isns, mut times) = (Vec::new(), Vec::new());
        for i in 0..40u64 {
            let t_ns = 5_000_000_000 + i * 137_000_000 + i * i * 1_000_000;
            let tick = (t_ns / 1_000_000) as u32;
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223) ^ !tick;
            isns.push(seed);
            times.push(t_ns);
        }
        let result = search(&isns, &times, 5000).unwrap();
        assert!(result.p_value < 1e-30, "{}", result.p_value);
        assert_eq!(result.recovered.multiplier, Some(1_664_525));
        let hz = result.recovered.clock_hz.unwrap();
        assert!((hz - 1000.0).abs() < 5.0, "{hz}");
        assert!(
            result.recovered.generator.contains("picoTCP"),
            "{}",
            result.recovered.generator
        );
        assert!(result.guess_bits.unwrap() <= 1.0);
        assert_eq!(result.feasibility, Some(1.0));
    }
}
