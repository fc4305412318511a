//! Exact null-distribution tail probabilities used by the scorer's tests.

use statrs::distribution::{ChiSquared, ContinuousCDF, DiscreteCDF, Poisson};
use statrs::function::beta::beta_reg;

/// P(X ≥ k) for X ~ Binomial(n, p).
pub fn binomial_at_least(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // Regularized incomplete beta identity: P(X ≥ k) = I_p(k, n − k + 1).
    beta_reg(k as f64, (n - k + 1) as f64, p).clamp(0.0, 1.0)
}

/// Two-sided p-value of k successes in n fair coin flips (doubled smaller tail).
pub fn fair_coin_two_sided(k: u64, n: u64) -> f64 {
    let upper = binomial_at_least(k, n, 0.5);
    let lower = binomial_at_least(n - k, n, 0.5);
    (2.0 * upper.min(lower)).min(1.0)
}

/// P(X ≥ k) for X ~ Poisson(lambda).
pub fn poisson_at_least(k: u64, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Poisson::new(lambda) {
        // `sf(x)` is P(X > x).
        Ok(poisson) => poisson.sf(k - 1).clamp(0.0, 1.0),
        Err(_) => 0.0,
    }
}

/// Upper tail of the chi-square distribution.
pub fn chi_square_upper(statistic: f64, degrees_of_freedom: f64) -> f64 {
    ChiSquared::new(degrees_of_freedom)
        .map(|dist| dist.sf(statistic).clamp(0.0, 1.0))
        .unwrap_or(1.0)
}

/// Bonferroni: the smallest of `count` p-values, scaled so the family stays at its level.
pub fn bonferroni(min_p: f64, count: usize) -> f64 {
    (min_p * count as f64).min(1.0)
}

/// Circular distance between two ISNs, nmap's MOD_DIFF: min(a − b, b − a) mod 2^32.
pub fn mod_diff(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b).min(b.wrapping_sub(a))
}

/// Median of a small sample of signed values (reorders it).
pub fn median_i64(values: &mut [i64]) -> i64 {
    let mid = values.len() / 2;
    *values.select_nth_unstable(mid).1
}

/// Median of a small sample of floats (reorders it); NaNs sort last.
pub fn median_f64(values: &mut [f64]) -> f64 {
    let mid = values.len() / 2;
    *values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_direct_sum() {
        // P(X ≥ 3), X ~ Bin(5, 0.2) = 0.05792.
        assert!((binomial_at_least(3, 5, 0.2) - 0.05792).abs() < 1e-9);
        assert!((binomial_at_least(10, 10, 0.5) - 2f64.powi(-10)).abs() < 1e-15);
        assert_eq!(binomial_at_least(0, 10, 0.5), 1.0);
    }

    #[test]
    fn poisson_tail_for_small_rate() {
        let lambda: f64 = 1e-4;
        let expected = 1.0 - (-lambda).exp() * (1.0 + lambda);
        let got = poisson_at_least(2, lambda);
        assert!(
            (got - expected).abs() / expected < 1e-6,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn chi_square_tail_at_median_is_about_half() {
        let p = chi_square_upper(254.33, 255.0);
        assert!((p - 0.5).abs() < 0.01, "{p}");
    }

    #[test]
    fn mod_diff_is_circular() {
        assert_eq!(mod_diff(5, u32::MAX), 6);
        assert_eq!(mod_diff(0, 1 << 31), 1 << 31);
    }
}
