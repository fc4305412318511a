//! nmap's TCP sequence indexes (SP, GCD, ISR, Difficulty), reproduced from `makeTSeqFP` in
//! nmap's `osscan2.cc` for side-by-side comparison. They are not used for the verdict.

use super::stats::mod_diff;

/// nmap sends six SEQ probes and computes the indexes only with at least four responses.
pub const NMAP_SAMPLES: usize = 6;
const NMAP_MIN_RESPONSES: usize = 4;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NmapIndex {
    pub sp: u32,
    pub gcd: u32,
    pub isr: u32,
    pub difficulty: String,
}

/// nmap's indexes over `(isn, ts_ns)` samples in arrival order (nmap uses the last six).
pub fn nmap_index(samples: &[(u32, u64)]) -> Option<NmapIndex> {
    let last = &samples[samples.len().saturating_sub(NMAP_SAMPLES)..];
    if last.len() < NMAP_MIN_RESPONSES {
        return None;
    }
    let diffs: Vec<u32> = last.windows(2).map(|w| mod_diff(w[1].0, w[0].0)).collect();
    let rates: Vec<f64> = last
        .windows(2)
        .zip(&diffs)
        .map(|(w, &diff)| {
            // nmap measures whole microseconds between probes and bumps 0 to 1.
            let usec = (w[1].1.saturating_sub(w[0].1) / 1000).max(1);
            diff as f64 * 1_000_000.0 / usec as f64
        })
        .collect();
    let avg_rate = rates.iter().sum::<f64>() / rates.len() as f64;
    let gcd = diffs.iter().fold(0, |acc, &d| gcd_u32(acc, d));
    if gcd == 0 {
        // Constant ISN: nmap reports SP = ISR = 0.
        return Some(NmapIndex {
            sp: 0,
            gcd,
            isr: 0,
            difficulty: difficulty_label(0).to_owned(),
        });
    }
    // C's `(unsigned int)` of a negative double is undefined; rates below 1/s give 0 here.
    let isr = (avg_rate.log2() * 8.0 + 0.5).max(0.0) as u32;
    let divisor = if gcd > 9 { gcd as f64 } else { 1.0 };
    let variance = rates
        .iter()
        .map(|rate| (rate / divisor - avg_rate / divisor).powi(2))
        .sum::<f64>()
        / (last.len() - 2) as f64;
    let stddev = variance.sqrt();
    let sp = if stddev <= 1.0 {
        0
    } else {
        (stddev.log2() * 8.0 + 0.5) as u32
    };
    Some(NmapIndex {
        sp,
        gcd,
        isr,
        difficulty: difficulty_label(sp).to_owned(),
    })
}

/// nmap's `seqidx2difficultystr`.
pub fn difficulty_label(index: u32) -> &'static str {
    match index {
        0..3 => "Trivial joke",
        3..6 => "Easy",
        6..11 => "Medium",
        11..12 => "Formidable",
        12..16 => "Worthy challenge",
        _ => "Good luck!",
    }
}

pub fn gcd_u32(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn fixed_step_counter_gives_gcd_64000() {
        let samples: Vec<(u32, u64)> = (0..6)
            .map(|i| (i * 64_000, u64::from(i) * 100 * MS))
            .collect();
        let index = nmap_index(&samples).unwrap();
        assert_eq!(index.gcd, 64_000);
        // Rate = 640 000/s exactly at 100 ms spacing: ISR = round(8·log2(640000)) = 154.
        assert_eq!(index.isr, (640_000f64.log2() * 8.0 + 0.5) as u32);
        assert_eq!(index.sp, 0);
        assert_eq!(index.difficulty, "Trivial joke");
    }

    #[test]
    fn constant_isn_is_gcd_zero() {
        let samples: Vec<(u32, u64)> = (0..6).map(|i| (77, i * 100 * MS)).collect();
        let index = nmap_index(&samples).unwrap();
        assert_eq!((index.sp, index.gcd, index.isr), (0, 0, 0));
    }

    #[test]
    fn sp_follows_hand_computed_stddev() {
        // Diffs 1000, 3000, 1000, 3000 at 1 s spacing: rates 1000, 3000, 1000, 3000; avg 2000;
        // GCD 1000 > 9 so the rates are divided by it: deviations ±1, variance 4/3, sd 1.155
        // → SP = (int)(8·log2(1.155) + 0.5) = 2.
        let isns = [0u32, 1000, 4000, 5000, 8000];
        let samples: Vec<(u32, u64)> = isns
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u64 * 1000 * MS))
            .collect();
        let index = nmap_index(&samples).unwrap();
        assert_eq!(index.gcd, 1000);
        assert_eq!(index.sp, 2);
        // Diffs 1, 5, 1, 5 (GCD 1): deviations ±2, variance 16/3, sd 2.309 → SP =
        // (int)(8·1.2074+0.5) = 10.
        let isns = [0u32, 1, 6, 7, 12];
        let samples: Vec<(u32, u64)> = isns
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u64 * 1000 * MS))
            .collect();
        let index = nmap_index(&samples).unwrap();
        assert_eq!(index.sp, 10);
        assert_eq!(index.difficulty, "Medium");
    }

    #[test]
    fn too_few_responses() {
        assert!(nmap_index(&[(1, 0), (2, 1), (3, 2)]).is_none());
    }

    #[test]
    fn labels_match_nmap_thresholds() {
        let labels: Vec<_> = [0, 2, 3, 5, 6, 10, 11, 12, 15, 16, 260]
            .map(difficulty_label)
            .into();
        assert_eq!(
            labels,
            [
                "Trivial joke",
                "Trivial joke",
                "Easy",
                "Easy",
                "Medium",
                "Medium",
                "Formidable",
                "Worthy challenge",
                "Worthy challenge",
                "Good luck!",
                "Good luck!"
            ]
        );
    }
}
