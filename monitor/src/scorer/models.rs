//! Residual models: each predicts the next ISN from the ones before it (prequentially, so
//! every residual is held out from the fit that produced it).
//!
//! Under the null hypothesis (ISNs i.i.d. uniform on 2^32, independent of the timestamps) the
//! residual `isn_i − prediction_i` is uniform and independent of every earlier residual, whatever
//! the predictor does with the past. That makes the tests on residuals exact.

use super::stats::{median_f64, median_i64};

/// How many previous differences each model fits on.
const FIT_HISTORY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Next ISN = previous ISN.
    Constant,
    /// Next ISN = previous ISN + a fixed step per connection.
    FixedStep,
    /// Next ISN = previous ISN + rate × Δt (a clock).
    Rate,
    /// Next ISN = previous ISN + step + rate × Δt (BSD-style counters).
    StepPlusRate,
}

impl Model {
    pub const ALL: [Model; 4] = [
        Model::Constant,
        Model::FixedStep,
        Model::Rate,
        Model::StepPlusRate,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Model::Constant => "constant ISN",
            Model::FixedStep => "fixed step per connection",
            Model::Rate => "clock (rate × Δt)",
            Model::StepPlusRate => "step per connection plus clock",
        }
    }
}

/// One differenced sample: forward ISN difference and elapsed time in seconds.
#[derive(Clone, Copy)]
struct Step {
    diff: u32,
    dt_s: f64,
}

/// The prequential residuals of `model` over `isns` observed at `times_ns`.
pub fn residuals(model: Model, isns: &[u32], times_ns: &[u64]) -> Vec<i32> {
    let steps: Vec<Step> = isns
        .windows(2)
        .zip(times_ns.windows(2))
        .map(|(isn, t)| Step {
            diff: isn[1].wrapping_sub(isn[0]),
            dt_s: t[1].saturating_sub(t[0]) as f64 * 1e-9,
        })
        .collect();
    let min_history = match model {
        Model::Constant => 0,
        Model::FixedStep | Model::Rate => 1,
        Model::StepPlusRate => 2,
    };
    let mut out = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        if i < min_history {
            continue;
        }
        let history = &steps[i.saturating_sub(FIT_HISTORY)..i];
        if let Some(predicted) = predict_step(model, history, step.dt_s) {
            out.push(step.diff.wrapping_sub(predicted) as i32);
        }
    }
    out
}

/// The predicted ISN difference for a step of `dt_s` seconds after `history`.
fn predict_step(model: Model, history: &[Step], dt_s: f64) -> Option<u32> {
    match model {
        Model::Constant => Some(0),
        Model::FixedStep => {
            let mut buffer = [0; FIT_HISTORY];
            let diffs = fill(&mut buffer, history.iter().map(|s| i64::from(s.diff)));
            Some(median_i64(diffs) as u32)
        }
        Model::Rate => {
            let mut buffer = [0.0; FIT_HISTORY];
            let rates = fill(
                &mut buffer,
                history
                    .iter()
                    .filter(|s| s.dt_s > 0.0)
                    .map(|s| f64::from(s.diff) / s.dt_s),
            );
            if rates.is_empty() {
                return None;
            }
            Some(wrap_f64(median_f64(rates) * dt_s))
        }
        Model::StepPlusRate => {
            let (step, rate) = fit_step_plus_rate(history)?;
            Some(wrap_f64(step + rate * dt_s))
        }
    }
}

/// Theil–Sen fit of diff = step + rate·Δt (robust to the odd outlier).
fn fit_step_plus_rate(history: &[Step]) -> Option<(f64, f64)> {
    let mut buffer = [0.0; FIT_HISTORY * (FIT_HISTORY - 1) / 2];
    let pairs = history
        .iter()
        .enumerate()
        .flat_map(|(j, a)| history[j + 1..].iter().map(move |b| (a, b)));
    let slopes = fill(
        &mut buffer,
        pairs.filter_map(|(a, b)| {
            let dt = b.dt_s - a.dt_s;
            (dt.abs() > 1e-9).then(|| (f64::from(b.diff) - f64::from(a.diff)) / dt)
        }),
    );
    if slopes.is_empty() {
        return None;
    }
    let rate = median_f64(slopes);
    let mut buffer = [0.0; FIT_HISTORY];
    let intercepts = fill(
        &mut buffer,
        history.iter().map(|s| f64::from(s.diff) - rate * s.dt_s),
    );
    Some((median_f64(intercepts), rate))
}

/// The first values put in `buffer` (the fits take at most `FIT_HISTORY` steps, so a
/// fixed buffer holds them and no report allocates per step).
fn fill<T: Copy, const N: usize>(buffer: &mut [T; N], values: impl Iterator<Item = T>) -> &mut [T] {
    let mut len = 0;
    for (slot, value) in buffer.iter_mut().zip(values) {
        *slot = value;
        len += 1;
    }
    &mut buffer[..len]
}

/// A real-valued ISN difference reduced mod 2^32.
fn wrap_f64(x: f64) -> u32 {
    const MODULUS: f64 = 4_294_967_296.0;
    if !x.is_finite() {
        return 0;
    }
    x.round().rem_euclid(MODULUS) as u64 as u32
}

/// log2 of the width of the central 90% of the residuals: the bits an attacker still has to guess.
pub fn guess_bits(residuals: &[i32]) -> Option<f64> {
    if residuals.len() < 2 {
        return None;
    }
    let mut sorted: Vec<i64> = residuals.iter().map(|&e| i64::from(e)).collect();
    sorted.sort_unstable();
    let last = sorted.len() - 1;
    let low = sorted[(0.05 * last as f64).floor() as usize];
    let high = sorted[(0.95 * last as f64).ceil() as usize];
    Some(((high - low + 1) as f64).log2())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_step_has_zero_residuals() {
        let isns: Vec<u32> = (0..10u32)
            .map(|i| 1234u32.wrapping_add(i * 64_000))
            .collect();
        let times: Vec<u64> = (0..10).map(|i| i * 7_000_000_000 + i * i * 13).collect();
        let r = residuals(Model::FixedStep, &isns, &times);
        assert_eq!(r.len(), 8);
        assert!(r.iter().all(|&e| e == 0));
        assert_eq!(guess_bits(&r), Some(0.0));
    }

    #[test]
    fn clock_is_fitted_by_rate_model() {
        let times: Vec<u64> = [0u64, 3, 4, 11, 19, 20, 33]
            .iter()
            .map(|s| s * 1_000_000_000 + 17)
            .collect();
        let isns: Vec<u32> = times.iter().map(|t| (t / 4000) as u32).collect();
        let r = residuals(Model::Rate, &isns, &times);
        assert!(r.iter().all(|e| e.abs() <= 1), "{r:?}");
    }

    #[test]
    fn step_plus_rate_is_fitted() {
        let mut t = 0u64;
        let mut isn = 99u32;
        let mut isns = vec![isn];
        let mut times = vec![t];
        for gap_ms in [10u64, 400, 30, 1200, 50, 700, 5, 90] {
            t += gap_ms * 1_000_000;
            isn = isn.wrapping_add(64_000).wrapping_add((gap_ms * 128) as u32);
            isns.push(isn);
            times.push(t);
        }
        let r = residuals(Model::StepPlusRate, &isns, &times);
        assert!(!r.is_empty() && r.iter().all(|e| e.abs() <= 1), "{r:?}");
    }
}
