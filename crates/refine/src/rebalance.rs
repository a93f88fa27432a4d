//! Rebalancing of viewing directions (cryoSPARC's "Rebalance Orientations").
//!
//! Viewing directions are binned to the nearest of `n_bins` axes of a Fibonacci sphere; the
//! bins (empty ones included) are sorted by occupancy and the count at the `percentile`-th
//! percentile (nearest rank below, `sorted[⌊p/100·(bins−1)⌋]`) becomes the cap: every bin
//! above it loses particles until it holds the cap. Which particles leave a bin is random
//! (seeded) or, given a per-particle score, the lowest-scoring ones. The cap is at least 1
//! (sparse data with more bins than particles keeps one particle per bin). Idempotent: the capped
//! counts have the same percentile, so a second pass with the same settings keeps
//! everything (pinned by `tests::rebalancing_is_idempotent_and_caps_bins`).

use crate::orient::fibonacci_sphere;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceConfig {
    /// Number of viewing-direction bins (Fibonacci sphere).
    pub n_bins: usize,
    /// Bins above this percentile of occupancy are capped at it (0–100).
    pub percentile: f64,
    /// Seed of the random exclusion.
    pub seed: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig { n_bins: 500, percentile: 80.0, seed: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rebalanced {
    /// Kept particles (indices into the input, ascending).
    pub kept: Vec<usize>,
    /// Excluded particles (ascending).
    pub excluded: Vec<usize>,
    /// Cap on the occupancy of a bin.
    pub cap: usize,
    pub counts_before: Vec<usize>,
    pub counts_after: Vec<usize>,
    /// Bin of each particle.
    #[serde(skip)]
    pub bin_of: Vec<usize>,
}

/// Rebalance `directions` (unit viewing directions); with `score`, the lowest-scoring
/// particles of an over-populated bin leave first (ties and the random mode: seeded).
pub fn rebalance(directions: &[[f64; 3]], score: Option<&[f64]>, cfg: &RebalanceConfig) -> Rebalanced {
    assert!(cfg.n_bins >= 1, "rebalance: no bins");
    let axes = fibonacci_sphere(cfg.n_bins);
    let bin_of: Vec<usize> = directions
        .par_iter()
        .map(|d| {
            let mut best = (0usize, f64::MIN);
            for (j, a) in axes.iter().enumerate() {
                let c = a[0] * d[0] + a[1] * d[1] + a[2] * d[2];
                if c > best.1 {
                    best = (j, c);
                }
            }
            best.0
        })
        .collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); cfg.n_bins];
    for (i, &b) in bin_of.iter().enumerate() {
        members[b].push(i);
    }
    let counts_before: Vec<usize> = members.iter().map(|m| m.len()).collect();
    let mut sorted = counts_before.clone();
    sorted.sort_unstable();
    let p = cfg.percentile.clamp(0.0, 100.0) / 100.0;
    // At least 1: with more bins than particles the percentile falls on an empty bin, and
    // a cap of 0 would drop every particle.
    let cap = sorted[(p * (cfg.n_bins - 1) as f64).floor() as usize].max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut excluded = Vec::new();
    for m in members.iter_mut().filter(|m| m.len() > cap) {
        // Random order first, so equal scores leave in a seeded random order.
        m.shuffle(&mut rng);
        if let Some(s) = score {
            m.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        }
        excluded.extend(m.drain(cap..));
    }
    excluded.sort_unstable();
    let mut kept: Vec<usize> = members.into_iter().flatten().collect();
    kept.sort_unstable();
    let mut counts_after = vec![0usize; cfg.n_bins];
    for &i in &kept {
        counts_after[bin_of[i]] += 1;
    }
    Rebalanced { kept, excluded, cap, counts_before, counts_after, bin_of }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orient::viewing_direction;
    use rand::Rng;

    fn po_directions(n: usize, seed: u64) -> Vec<[f64; 3]> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        while out.len() < n {
            let d = viewing_direction(&cryoforge_core::rotation::uniform_rotation(
                rng.gen(),
                rng.gen(),
                rng.gen(),
            ));
            // Half the set within 25° of z, the rest uniform.
            if out.len() % 2 == 1 || d[2] > 25f64.to_radians().cos() {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn rebalancing_is_idempotent_and_caps_bins() {
        let d = po_directions(8000, 1);
        let cfg = RebalanceConfig { n_bins: 200, percentile: 80.0, seed: 3 };
        let r = rebalance(&d, None, &cfg);
        assert_eq!(r.kept.len() + r.excluded.len(), d.len());
        assert!(r.counts_after.iter().all(|&c| c <= r.cap));
        // Sparse: more bins than particles still keeps one per occupied bin.
        let few: Vec<[f64; 3]> =
            (0..20).map(|i| if i < 15 { [0.0, 0.0, 1.0] } else { [1.0, 0.0, 0.0] }).collect();
        let s = rebalance(&few, None, &RebalanceConfig { n_bins: 500, ..Default::default() });
        assert_eq!((s.cap, s.kept.len()), (1, 2));
        assert!(!r.excluded.is_empty());
        // Bins at or below the cap keep everyone.
        for b in 0..cfg.n_bins {
            assert_eq!(r.counts_after[b], r.counts_before[b].min(r.cap));
        }
        let kept: Vec<[f64; 3]> = r.kept.iter().map(|&i| d[i]).collect();
        let again = rebalance(&kept, None, &cfg);
        assert!(again.excluded.is_empty(), "second pass excluded {}", again.excluded.len());
        // The top views lose most: the kept set is less concentrated near z.
        let top = |v: &[[f64; 3]]| {
            v.iter().filter(|x| x[2] > 25f64.to_radians().cos()).count() as f64 / v.len() as f64
        };
        assert!(top(&kept) < top(&d) - 0.15, "{} vs {}", top(&kept), top(&d));
        // The same seed gives the same selection.
        assert_eq!(rebalance(&d, None, &cfg).kept, r.kept);
    }

    #[test]
    fn a_score_keeps_the_best_particles_of_a_bin() {
        let d = po_directions(4000, 2);
        let score: Vec<f64> = (0..d.len()).map(|i| (i % 97) as f64).collect();
        let cfg = RebalanceConfig { n_bins: 100, percentile: 50.0, seed: 0 };
        let r = rebalance(&d, Some(&score), &cfg);
        for b in 0..cfg.n_bins {
            let kept_min =
                r.kept.iter().filter(|&&i| r.bin_of[i] == b).map(|&i| score[i]).fold(f64::INFINITY, f64::min);
            let excl_max = r
                .excluded
                .iter()
                .filter(|&&i| r.bin_of[i] == b)
                .map(|&i| score[i])
                .fold(f64::NEG_INFINITY, f64::max);
            assert!(excl_max <= kept_min, "bin {b}: excluded {excl_max} > kept {kept_min}");
        }
    }
}
