//! The tests run over a window, the findings they produce, and the verdict.

use super::algebraic::{self, FamilyResult, Recovered};
use super::estimators::{self, PredictorHit};
use super::models::{self, Model};
use super::nmap::{self, gcd_u32};
use super::stats::{
    binomial_at_least, bonferroni, chi_square_upper, fair_coin_two_sided, median_f64, mod_diff,
    poisson_at_least,
};
use super::window::{ReusePair, Sample};
use super::{ScorerConfig, ServiceReport, Verdict};

/// Tests sharing the false-alarm budget (union bound): small step, GCD, residual models,
/// repeats, bit bias, top-byte chi-square, predictors, generator state recovery.
const TEST_COUNT: f64 = 8.0;
/// Radii (log2) at which residuals are counted as "close to the prediction".
pub(super) const RADIUS_BITS: [u32; 6] = [8, 12, 16, 20, 24, 28];
/// Bits 8..32: the low byte is left out because SYN cookies legitimately structure it.
const BIASED_BIT_RANGE: std::ops::Range<u32> = 8..32;
/// The χ² on the top byte needs ≥ 5 expected per cell.
const CHI_SQUARE_MIN_SAMPLES: usize = 1280;
/// RFC 9293's 4 µs clock is the slowest MUST-8-conforming rate.
const MIN_CONFORMING_CLOCK_HZ: f64 = 250_000.0;
const TWO_POW_32: f64 = 4_294_967_296.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    SmallStep,
    Gcd,
    ResidualModel,
    Repeats,
    BitBias,
    TopByteChiSquare,
    Predictor,
    /// A pseudo-random generator recognised: the next ISN follows from the earlier ones.
    Prng,
    SyncookiesActive,
    RetransmitsDropped,
    ClockRateMust8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Evidence, at the per-test level, that the generator is predictable.
    Weakness,
    /// A legitimate property checked and found conforming.
    Pass,
    /// Context for reading the result.
    Info,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_lost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// For `prng`: the family, the constants recovered and the predictions' record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator: Option<Recovered>,
}

impl Finding {
    fn weakness(kind: FindingKind, message: String, bits_lost: f64, p_value: f64) -> Self {
        Self {
            kind,
            severity: Severity::Weakness,
            message,
            bits_lost: Some(bits_lost),
            p_value: Some(p_value),
            value: None,
            generator: None,
        }
    }

    fn note(kind: FindingKind, severity: Severity, message: String, value: f64) -> Self {
        Self {
            kind,
            severity,
            message,
            bits_lost: None,
            p_value: None,
            value: Some(value),
            generator: None,
        }
    }
}

/// Everything `report` says about one window.
pub fn assess(
    config: &ScorerConfig,
    service: &str,
    samples: u64,
    retransmits: u64,
    window: &[Sample],
    reuses: &[ReusePair],
) -> ServiceReport {
    let alpha = config.false_alarm_budget / TEST_COUNT;
    // SYN-ACKs sent as cookies carry encoded options in their low bits (FreeBSD), so only the
    // top-24-bit tests see them.
    let scored: Vec<&Sample> = window.iter().filter(|s| !s.syncookie).collect();
    let isns: Vec<u32> = scored.iter().map(|s| s.isn).collect();
    let times: Vec<u64> = scored.iter().map(|s| s.ts_ns).collect();
    let all_isns: Vec<u32> = window.iter().map(|s| s.isn).collect();
    let residuals: Vec<(Model, Vec<i32>)> = Model::ALL
        .iter()
        .map(|&m| (m, models::residuals(m, &isns, &times)))
        .collect();

    let mut findings: Vec<Finding> = [
        small_step_test(&residuals[0].1, alpha),
        gcd_test(&isns, alpha),
        residual_model_test(&residuals[1..], alpha),
        repeat_test(&isns, alpha),
        bit_bias_test(&all_isns, alpha),
        top_byte_chi_square(&all_isns, alpha),
        predictor_test(window, &residuals[1].1, alpha),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Only a family that rejected H0 lends the report its numbers: a generator weak only
    // through the tests above keeps theirs.
    let recovered: Vec<FamilyResult> = algebraic::search(&isns, &times, config.guesses)
        .into_iter()
        .filter(|family| family_p_value(family) < alpha)
        .collect();
    findings.extend(recovered.iter().map(prng_finding));
    findings.extend(context_notes(window, retransmits));
    findings.extend(clock_rate_check(reuses));

    let weak = findings.iter().any(|f| f.severity == Severity::Weakness);
    let verdict = if weak {
        Verdict::Weak
    } else if window.len() < config.min_samples {
        Verdict::Insufficient
    } else {
        Verdict::Strong
    };
    let nmap_samples: Vec<(u32, u64)> = window.iter().map(|s| (s.isn, s.ts_ns)).collect();
    ServiceReport {
        service: service.to_owned(),
        samples,
        verdict,
        guess_bits: residuals
            .iter()
            .filter_map(|(_, r)| models::guess_bits(r))
            .chain(recovered.iter().filter_map(|family| family.guess_bits))
            .min_by(f64::total_cmp),
        attack_feasibility: attack_feasibility(&residuals, config.guesses)
            .into_iter()
            .chain(recovered.iter().filter_map(|family| family.feasibility))
            .max_by(f64::total_cmp),
        findings,
        nmap: nmap::nmap_index(&nmap_samples),
    }
}

/// Rounds down to one decimal, so "15.97 bits" reads "15.9", never overstating the loss.
fn one_decimal_down(x: f64) -> f64 {
    (x * 10.0).floor() / 10.0
}

/// Residuals inside ±2^r, at the radius where that is least likely under the null.
pub(super) struct Closeness {
    pub radius_bits: u32,
    pub hits: usize,
    pub total: usize,
    pub p_value: f64,
}

/// Under the null each residual is uniform on 2^32, so the count within ±2^r (2^(r+1) − 1
/// values) is Binomial(m, (2^(r+1) − 1)/2^32) exactly.
pub(super) fn closest_radius(residuals: &[i32]) -> Option<Closeness> {
    if residuals.is_empty() {
        return None;
    }
    RADIUS_BITS
        .iter()
        .map(|&radius_bits| {
            let radius = 1u32 << radius_bits;
            let hits = residuals
                .iter()
                .filter(|e| e.unsigned_abs() < radius)
                .count();
            let p_hit = (2.0 * f64::from(radius) - 1.0) / TWO_POW_32;
            Closeness {
                radius_bits,
                hits,
                total: residuals.len(),
                p_value: binomial_at_least(hits as u64, residuals.len() as u64, p_hit),
            }
        })
        .min_by(|a, b| a.p_value.total_cmp(&b.p_value))
}

fn small_step_test(diffs: &[i32], alpha: f64) -> Option<Finding> {
    let best = closest_radius(diffs)?;
    let p_value = bonferroni(best.p_value, RADIUS_BITS.len());
    if p_value >= alpha {
        return None;
    }
    let message = if diffs.iter().all(|&d| d == 0) {
        format!("the ISN never changes over {} SYN-ACKs", diffs.len() + 1)
    } else {
        format!(
            "{} of {} consecutive ISN steps are smaller than 2^{} (uniform ISNs: 1 in {:.0})",
            best.hits,
            best.total,
            best.radius_bits,
            TWO_POW_32 / (2.0 * 2f64.powi(best.radius_bits as i32)),
        )
    };
    Some(Finding::weakness(
        FindingKind::SmallStep,
        message,
        f64::from(31 - best.radius_bits),
        p_value,
    ))
}

/// P(all m circular differences divisible by some k ≥ g) ≤ Σ_{k≥g} (1/k + 2^-32)^m
/// ≤ 2^m (g^-m + g^(1−m)/(m−1)) under the null.
fn gcd_test(isns: &[u32], alpha: f64) -> Option<Finding> {
    let diffs: Vec<u32> = isns.windows(2).map(|w| mod_diff(w[1], w[0])).collect();
    let m = diffs.len() as i32;
    let gcd = diffs.iter().fold(0, |acc, &d| gcd_u32(acc, d));
    if m < 2 || gcd < 2 {
        return None;
    }
    let g = f64::from(gcd);
    let p_value = (2f64.powi(m) * (g.powi(-m) + g.powi(1 - m) / f64::from(m - 1))).min(1.0);
    if p_value >= alpha {
        return None;
    }
    let bits = g.log2();
    Some(Finding::weakness(
        FindingKind::Gcd,
        format!(
            "ISNs advance in multiples of {gcd}: {:.1} bits lost",
            one_decimal_down(bits)
        ),
        bits,
        p_value,
    ))
}

fn residual_model_test(per_model: &[(Model, Vec<i32>)], alpha: f64) -> Option<Finding> {
    let (model, best) = per_model
        .iter()
        .filter_map(|(model, r)| closest_radius(r).map(|c| (*model, c)))
        .min_by(|a, b| a.1.p_value.total_cmp(&b.1.p_value))?;
    let p_value = bonferroni(best.p_value, RADIUS_BITS.len() * per_model.len());
    if p_value >= alpha {
        return None;
    }
    Some(Finding::weakness(
        FindingKind::ResidualModel,
        format!(
            "ISNs follow a {}: {} of {} predictions land within ±2^{} of the real ISN",
            model.describe(),
            best.hits,
            best.total,
            best.radius_bits
        ),
        f64::from(31 - best.radius_bits),
        p_value,
    ))
}

/// Colliding pairs among n uniform 32-bit values are Poisson(n(n−1)/2 / 2^32) to within O(λ).
fn repeat_test(isns: &[u32], alpha: f64) -> Option<Finding> {
    let mut sorted = isns.to_vec();
    sorted.sort_unstable();
    let (mut pairs, mut repeated_values, mut max_multiplicity) = (0u64, 0usize, 1u64);
    for run in sorted.chunk_by(|a, b| a == b) {
        let count = run.len() as u64;
        if count > 1 {
            pairs += count * (count - 1) / 2;
            repeated_values += 1;
            max_multiplicity = max_multiplicity.max(count);
        }
    }
    if repeated_values < 2 && max_multiplicity < 3 {
        return None;
    }
    let n = isns.len() as f64;
    let expected_pairs = n * (n - 1.0) / 2.0 / TWO_POW_32;
    let p_value = poisson_at_least(pairs, expected_pairs);
    if p_value >= alpha {
        return None;
    }
    // With K distinct values seen twice or more, a guesser trying them covers the repeats.
    let bits_lost = 32.0 - (repeated_values as f64).log2().max(0.0) - (n / pairs as f64).log2();
    Some(Finding::weakness(
        FindingKind::Repeats,
        format!(
            "{repeated_values} ISN values repeat ({pairs} equal pairs among {} SYN-ACKs, \
             {expected_pairs:.1e} expected), most frequent seen {max_multiplicity} times",
            isns.len()
        ),
        bits_lost.clamp(0.0, 32.0),
        p_value,
    ))
}

fn bit_bias_test(isns: &[u32], alpha: f64) -> Option<Finding> {
    let n = isns.len() as u64;
    if n == 0 {
        return None;
    }
    let (bit, ones, p) = BIASED_BIT_RANGE
        .map(|bit| {
            let ones = isns.iter().filter(|&&x| x >> bit & 1 == 1).count() as u64;
            (bit, ones, fair_coin_two_sided(ones, n))
        })
        .min_by(|a, b| a.2.total_cmp(&b.2))?;
    let p_value = bonferroni(p, BIASED_BIT_RANGE.len());
    if p_value >= alpha {
        return None;
    }
    let frequency = ones as f64 / n as f64;
    Some(Finding::weakness(
        FindingKind::BitBias,
        format!(
            "ISN bit {bit} is 1 in {:.1}% of {n} SYN-ACKs",
            100.0 * frequency
        ),
        1.0 + frequency.max(1.0 - frequency).log2(),
        p_value,
    ))
}

fn top_byte_chi_square(isns: &[u32], alpha: f64) -> Option<Finding> {
    if isns.len() < CHI_SQUARE_MIN_SAMPLES {
        return None;
    }
    let mut counts = [0u32; 256];
    for &isn in isns {
        counts[(isn >> 24) as usize] += 1;
    }
    let expected = isns.len() as f64 / 256.0;
    let statistic: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    let p_value = chi_square_upper(statistic, 255.0);
    if p_value >= alpha {
        return None;
    }
    let top = f64::from(*counts.iter().max().unwrap_or(&0)) / isns.len() as f64;
    Some(Finding::weakness(
        FindingKind::TopByteChiSquare,
        format!(
            "the top ISN byte is not uniform: χ² = {statistic:.0} on 255 d.f. over {} SYN-ACKs",
            isns.len()
        ),
        (8.0 + top.log2()).max(0.0),
        p_value,
    ))
}

fn predictor_test(window: &[Sample], step_residuals: &[i32], alpha: f64) -> Option<Finding> {
    let PredictorHit {
        stream,
        predictor,
        correct,
        predictions,
        p_value,
        streams_tested,
    } = estimators::most_predictable(window, step_residuals)?;
    let p_value = bonferroni(p_value, streams_tested);
    if p_value >= alpha {
        return None;
    }
    let rate = correct as f64 / predictions as f64;
    Some(Finding::weakness(
        FindingKind::Predictor,
        format!(
            "{stream} is predictable: the {predictor} predictor was right {correct} times \
             in {predictions} ({:.0}%)",
            100.0 * rate
        ),
        -rate.log2(),
        p_value,
    ))
}

/// The generator-recovery test's p-value for one family: its share of the test's level is
/// 1/5 (each family is Bonferroni-corrected over its own hypotheses already).
fn family_p_value(family: &FamilyResult) -> f64 {
    (family.p_value * algebraic::FAMILIES.len() as f64).min(1.0)
}

fn prng_finding(family: &FamilyResult) -> Finding {
    let recovered = &family.recovered;
    Finding {
        kind: FindingKind::Prng,
        severity: Severity::Weakness,
        message: recovered.describe(),
        bits_lost: Some(32.0 - family.guess_bits.unwrap_or(32.0)),
        p_value: Some(family_p_value(family)),
        value: None,
        generator: Some(recovered.clone()),
    }
}

fn context_notes(window: &[Sample], retransmits: u64) -> Vec<Finding> {
    let mut notes = Vec::new();
    let cookies = window.iter().filter(|s| s.syncookie).count();
    if cookies > 0 {
        notes.push(Finding::note(
            FindingKind::SyncookiesActive,
            Severity::Info,
            format!(
                "{cookies} of {} SYN-ACKs were sent while the host was sending SYN cookies; \
                 they are scored on their top 24 bits only",
                window.len()
            ),
            cookies as f64,
        ));
    }
    if retransmits > 0 {
        notes.push(Finding::note(
            FindingKind::RetransmitsDropped,
            Severity::Info,
            format!("{retransmits} retransmitted SYN-ACKs (same 4-tuple and client ISN) ignored"),
            retransmits as f64,
        ));
    }
    notes
}

/// RFC 6528 stacks move the ISN of a reused 4-tuple by elapsed time × their clock.
fn clock_rate_check(reuses: &[ReusePair]) -> Option<Finding> {
    const MIN_ELAPSED_NS: u64 = 1_000_000;
    // Linux's 15.625 MHz clock wraps 2^32 every 274 s; 60 s keeps it (and 4× faster) unambiguous.
    const MAX_ELAPSED_NS: u64 = 60_000_000_000;
    let mut rates: Vec<f64> = reuses
        .iter()
        .filter(|p| (MIN_ELAPSED_NS..=MAX_ELAPSED_NS).contains(&p.elapsed_ns))
        .map(|p| f64::from(p.isn_advance) / (p.elapsed_ns as f64 * 1e-9))
        .collect();
    if rates.is_empty() {
        return None;
    }
    let pairs = rates.len();
    let rate = median_f64(&mut rates);
    let steady = rates
        .iter()
        .filter(|r| (*r / rate - 1.0).abs() <= 0.02)
        .count();
    if pairs >= 2 && steady * 4 >= pairs * 3 && rate >= MIN_CONFORMING_CLOCK_HZ {
        Some(Finding::note(
            FindingKind::ClockRateMust8,
            Severity::Pass,
            format!(
                "{pairs} reuses of the same 4-tuple: the ISN advanced with time at {:.3} M/s \
                 ({:.1} ns ticks), the clock-driven ISN of RFC 9293 MUST-8 / RFC 6528",
                rate / 1e6,
                1e9 / rate
            ),
            rate,
        ))
    } else {
        Some(Finding::note(
            FindingKind::ClockRateMust8,
            Severity::Info,
            format!(
                "{pairs} reuses of the same 4-tuple show no steady ISN clock ≥ 250 k/s \
                 (median {rate:.0}/s, {steady} of {pairs} within 2%)"
            ),
            rate,
        ))
    }
}

/// Chance that a blind attacker's `guesses` consecutive values, centred on the best model's
/// prediction, contain the real ISN: the model and its centre are chosen on the first half of
/// the residuals and the hit rate is measured on the second half.
pub(super) fn attack_feasibility(per_model: &[(Model, Vec<i32>)], guesses: u64) -> Option<f64> {
    let (_, training, held_out) = per_model
        .iter()
        .filter(|(_, r)| r.len() >= 4)
        .map(|(m, r)| {
            let (training, held_out) = r.split_at(r.len() / 2);
            (*m, training, held_out)
        })
        .min_by(|a, b| {
            let bits = |r: &[i32]| models::guess_bits(r).unwrap_or(f64::INFINITY);
            bits(a.1).total_cmp(&bits(b.1))
        })?;
    let mut centre: Vec<f64> = training.iter().map(|&e| f64::from(e)).collect();
    let centre = median_f64(&mut centre).round() as i64;
    let half_width = (guesses / 2) as i64;
    let lower = centre - half_width;
    let upper = lower + guesses as i64;
    let hits = held_out
        .iter()
        .filter(|&&e| (lower..upper).contains(&i64::from(e)))
        .count();
    Some(hits as f64 / held_out.len() as f64)
}
