//! The decisions of the pipeline, free of I/O: subset sizes, the orientation gate, the
//! particle-number search and the choice of the winner (METHODS.md §5).
//!
//! The paper's numbers (subsets of 50,000 and 100,000, search clamp [30,000, 3,000,000],
//! 4 Å) are for datasets of hundreds of thousands to millions of particles at about
//! 1 Å/px. [`WizardConfig::scaled`] keeps them where the dataset is that large and scales
//! them down otherwise, so that a 20,000-particle set at 3 Å/px runs the same pipeline.

use serde::{Deserialize, Serialize};

/// The pipeline's parameters (CryoWizard's parameter file; METHODS.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WizardConfig {
    /// Initial-model subset sizes (the top P by score).
    pub subsets: Vec<usize>,
    /// The gate: minimum cFAR.
    pub cfar_min: f64,
    /// The gate: worst acceptable resolution (Å, FSC 0.143 of the half maps, masked).
    pub resolution_max_a: f64,
    /// Preferred-orientation branch: k of k-means on the features.
    pub cluster_k: usize,
    /// k-means++ restarts.
    pub cluster_restarts: usize,
    /// The branch clusters the top `cluster_factor × P` particles.
    pub cluster_factor: usize,
    /// Clusters smaller than this are not refined.
    pub cluster_min_particles: usize,
    /// The particle-number search starts at the rank where the score drops below this…
    pub score_high: f64,
    /// …and ends where it drops below this.
    pub score_low: f64,
    /// Clamp of the search range.
    pub search_min: usize,
    pub search_max: usize,
    /// The search range spans at least this fraction of its upper end (cryoforge's
    /// addition: confident scores put few particles between 0.8 and 0.3, and eight sizes
    /// within a few dozen particles compare nothing).
    #[serde(default = "default_span")]
    pub search_min_span: f64,
    /// Evenly spaced sizes of the first search round.
    pub search_first: usize,
    /// Sizes around the best of the first round.
    pub search_second: usize,
    /// Seed of every random step (k-means, refinement halves, ab initio).
    pub seed: u64,
}

fn default_span() -> f64 {
    0.25
}

impl Default for WizardConfig {
    fn default() -> Self {
        WizardConfig {
            subsets: vec![50_000, 100_000],
            cfar_min: 0.15,
            resolution_max_a: 4.0,
            cluster_k: 8,
            cluster_restarts: 10,
            cluster_factor: 8,
            cluster_min_particles: 100,
            score_high: 0.8,
            score_low: 0.3,
            search_min: 30_000,
            search_max: 3_000_000,
            search_min_span: default_span(),
            search_first: 8,
            search_second: 4,
            seed: 0,
        }
    }
}

/// The configuration applied to one dataset of `n` particles at `apix` Å/px.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaled {
    pub particles: usize,
    pub subsets: Vec<usize>,
    pub resolution_max_a: f64,
    pub search_min: usize,
    pub search_max: usize,
    /// How each number was derived (for the report).
    pub notes: Vec<String>,
}

/// Smallest subset the pipeline refines (below it a half map holds too few particles for
/// a meaningful FSC at 64 px).
pub const MIN_SUBSET: usize = 200;

impl WizardConfig {
    /// Check the parameters; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.subsets.is_empty() || self.subsets.contains(&0) {
            return Err("--subsets: give one or more positive sizes".into());
        }
        if !(self.cfar_min >= 0.0 && self.cfar_min <= 1.0) {
            return Err(format!("--cfar-min {}: must lie in [0, 1]", self.cfar_min));
        }
        if self.resolution_max_a.is_nan() || self.resolution_max_a <= 0.0 {
            return Err(format!("--resolution-max-a {}: must be positive", self.resolution_max_a));
        }
        if self.cluster_k < 2 {
            return Err(format!("--cluster-k {}: must be at least 2", self.cluster_k));
        }
        if self.cluster_restarts == 0 || self.cluster_factor == 0 {
            return Err("--cluster-restarts and --cluster-factor must be at least 1".into());
        }
        if !(self.score_low >= 0.0 && self.score_high <= 1.0 && self.score_low < self.score_high) {
            return Err(format!(
                "--score-high {} / --score-low {}: need 0 ≤ low < high ≤ 1",
                self.score_high, self.score_low
            ));
        }
        if self.search_min == 0 || self.search_min > self.search_max {
            return Err(format!(
                "--search-min {} / --search-max {}: need 1 ≤ min ≤ max",
                self.search_min, self.search_max
            ));
        }
        if !(0.0..1.0).contains(&self.search_min_span) {
            return Err(format!("--search-min-span {}: must lie in [0, 1)", self.search_min_span));
        }
        if self.search_first < 2 {
            return Err(format!("--search-first {}: need at least 2 sizes", self.search_first));
        }
        Ok(())
    }

    /// The parameters for `n` particles at `apix` Å/px.
    ///
    /// - Subsets: as given when `n ≥ 2 × the largest`; otherwise scaled in proportion so
    ///   that the largest is n/2 (the paper's "or N/2 if fewer", keeping both sizes), none
    ///   below [`MIN_SUBSET`] (or n), duplicates dropped.
    /// - Resolution gate: max(the given value, 4 pixels): the paper's 4 Å is four pixels
    ///   at its ≈ 1 Å/px data; Nyquist is two pixels.
    /// - Search clamp: the lower bound is min(search_min, n/10) (the paper's 30,000 is
    ///   about 3 % of its datasets and ≥ 10 % of a 20,000-particle set would be lost), the
    ///   upper bound min(search_max, n).
    pub fn scaled(&self, n: usize, apix: f64) -> Scaled {
        let mut notes = Vec::new();
        let largest = self.subsets.iter().copied().max().unwrap_or(1).max(1);
        let floor = MIN_SUBSET.min(n);
        let mut subsets: Vec<usize> = if n >= 2 * largest {
            self.subsets.clone()
        } else {
            notes.push(format!(
                "subsets {:?} scaled by {n}/(2 × {largest}) (the dataset holds fewer than twice the largest)",
                self.subsets
            ));
            self.subsets
                .iter()
                .map(|&s| ((s as f64 * n as f64 / (2.0 * largest as f64)).round() as usize).max(floor))
                .collect()
        };
        subsets.iter_mut().for_each(|s| *s = (*s).min(n));
        subsets.sort_unstable();
        subsets.dedup();
        let four_px = 4.0 * apix;
        let resolution_max_a = if four_px > self.resolution_max_a {
            notes.push(format!(
                "resolution gate {:.2} Å = 4 pixels at {apix:.3} Å/px (the given {:.2} Å is finer than the data can reach)",
                four_px, self.resolution_max_a
            ));
            four_px
        } else {
            self.resolution_max_a
        };
        let lo = self.search_min.min((n / 10).max(floor));
        if lo < self.search_min {
            notes.push(format!(
                "search lower bound {lo} = n/10 (the given {} is more than a tenth of the data)",
                self.search_min
            ));
        }
        let hi = self.search_max.min(n).max(lo);
        Scaled { particles: n, subsets, resolution_max_a, search_min: lo, search_max: hi, notes }
    }
}

/// One refinement's numbers as the gate sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// What it is ("initial 10000", "cluster 3 of initial 10000", "search 6000").
    pub label: String,
    pub particles: usize,
    /// FSC 0.143 of the masked half maps (Å).
    pub resolution_a: f64,
    pub cfar: f64,
    /// The refinement's folder, relative to the wizard's.
    pub dir: String,
}

/// The orientation gate: cFAR ≥ the minimum and resolution ≤ the maximum.
pub fn passes_gate(c: &Candidate, cfar_min: f64, resolution_max_a: f64) -> bool {
    c.cfar.is_finite()
        && c.resolution_a.is_finite()
        && c.cfar >= cfar_min
        && c.resolution_a <= resolution_max_a
}

/// The best (finest resolution) candidate that satisfies `ok`, else the finest overall;
/// the flag says whether `ok` held. Ties go to the earlier candidate.
pub fn pick(cands: &[Candidate], ok: impl Fn(&Candidate) -> bool) -> Option<(usize, bool)> {
    let finest = |idx: &mut dyn Iterator<Item = usize>| {
        idx.fold(None::<usize>, |best, i| match best {
            Some(b) if res_key(&cands[i]) >= res_key(&cands[b]) => Some(b),
            _ => Some(i),
        })
    };
    if let Some(i) = finest(&mut (0..cands.len()).filter(|&i| ok(&cands[i]))) {
        return Some((i, true));
    }
    finest(&mut (0..cands.len())).map(|i| (i, false))
}

fn res_key(c: &Candidate) -> f64 {
    if c.resolution_a.is_finite() {
        c.resolution_a
    } else {
        f64::INFINITY
    }
}

/// Ranks (1-based counts) where the descending-sorted scores drop below `high` and `low`:
/// the number of particles scoring ≥ each threshold.
pub fn threshold_counts(scores: &[f64], high: f64, low: f64) -> (usize, usize) {
    let ge = |t: f64| scores.iter().filter(|&&s| s >= t).count();
    (ge(high), ge(low))
}

/// The range of the particle-number search: from the count scoring ≥ `score_high` to the
/// count scoring ≥ `score_low`, both clamped to [search_min, search_max]. When the two meet
/// (scores all on one side), the range opens downwards to half the upper end; when it spans
/// less than `search_min_span` of its upper end, downwards to that span (never below the
/// lower clamp), so that the search still compares sizes.
pub fn search_range(scores: &[f64], cfg: &WizardConfig, sc: &Scaled) -> (usize, usize) {
    let (a, b) = threshold_counts(scores, cfg.score_high, cfg.score_low);
    let clamp = |x: usize| x.clamp(sc.search_min, sc.search_max);
    let (lo, hi) = (clamp(a), clamp(b));
    if hi <= lo {
        return (clamp(hi / 2).min(hi), hi);
    }
    let widest_lo = clamp(hi - (cfg.search_min_span * hi as f64).round() as usize);
    (lo.min(widest_lo), hi)
}

/// `count` evenly spaced sizes from `lo` to `hi` inclusive (duplicates dropped).
pub fn first_round(lo: usize, hi: usize, count: usize) -> Vec<usize> {
    let count = count.max(2);
    let mut v: Vec<usize> = (0..count)
        .map(|i| lo + (((hi - lo) as f64) * i as f64 / (count - 1) as f64).round() as usize)
        .collect();
    v.dedup();
    v
}

/// `count` sizes around `best` at fractions of the first round's spacing
/// (±⅓, ±⅔ of a step for 4), clamped to [lo, hi], leaving out sizes already tried.
pub fn second_round(
    best: usize,
    lo: usize,
    hi: usize,
    first_count: usize,
    count: usize,
    tried: &[usize],
) -> Vec<usize> {
    if count == 0 || hi <= lo {
        return Vec::new();
    }
    let step = (hi - lo) as f64 / (first_count.max(2) - 1) as f64;
    let half = count.div_ceil(2);
    let mut v = Vec::new();
    for j in 1..=half {
        let off = step * j as f64 / (half + 1) as f64;
        for sign in [-1.0, 1.0] {
            if v.len() == count {
                break;
            }
            let s = (best as f64 + sign * off).round().clamp(lo as f64, hi as f64) as usize;
            if !tried.contains(&s) && !v.contains(&s) {
                v.push(s);
            }
        }
    }
    v.sort_unstable();
    v
}

/// Indices of the `count` best-scored particles, best first (ties: lower index first).
pub fn top_indices(scores: &[f64], count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&i, &j| {
        let (a, b) = (scores[i], scores[j]);
        let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
        key(b).total_cmp(&key(a)).then(i.cmp(&j))
    });
    idx.truncate(count.min(scores.len()));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(label: &str, res: f64, cfar: f64) -> Candidate {
        Candidate { label: label.into(), particles: 1, resolution_a: res, cfar, dir: String::new() }
    }

    #[test]
    fn large_datasets_keep_the_papers_numbers() {
        let c = WizardConfig::default();
        let s = c.scaled(1_000_000, 1.0);
        assert_eq!(s.subsets, vec![50_000, 100_000]);
        assert_eq!((s.search_min, s.search_max), (30_000, 1_000_000));
        assert_eq!(s.resolution_max_a, 4.0);
        assert!(s.notes.is_empty());
    }

    #[test]
    fn small_datasets_scale_subsets_gate_and_clamp() {
        let c = WizardConfig::default();
        let s = c.scaled(20_000, 3.2);
        assert_eq!(s.subsets, vec![5_000, 10_000]);
        assert_eq!((s.search_min, s.search_max), (2_000, 20_000));
        assert!((s.resolution_max_a - 12.8).abs() < 1e-9);
        assert_eq!(s.notes.len(), 3);
        // Tiny sets: never below MIN_SUBSET (or n), never above n.
        let s = c.scaled(300, 1.0);
        assert_eq!(s.subsets, vec![200]);
        assert!(s.search_min <= s.search_max && s.search_max == 300);
    }

    #[test]
    fn gate_and_pick() {
        let cs =
            vec![cand("a", 6.0, 0.1), cand("b", 7.0, 0.3), cand("c", 6.5, 0.2), cand("d", f64::NAN, 0.9)];
        assert!(!passes_gate(&cs[0], 0.15, 8.0));
        assert!(passes_gate(&cs[1], 0.15, 8.0));
        assert!(!passes_gate(&cs[3], 0.15, 8.0));
        assert_eq!(pick(&cs, |c| passes_gate(c, 0.15, 8.0)), Some((2, true)));
        // Nothing passes: the finest overall, flagged.
        assert_eq!(pick(&cs, |c| passes_gate(c, 0.95, 8.0)), Some((0, false)));
        assert_eq!(pick(&[], |_| true), None);
    }

    #[test]
    fn search_sizes() {
        let c = WizardConfig::default();
        let sc = c.scaled(20_000, 1.0);
        // 11,000 particles ≥ 0.8, 16,000 ≥ 0.3.
        let scores: Vec<f64> = (0..20_000)
            .map(|i| {
                if i < 11_000 {
                    0.9
                } else if i < 16_000 {
                    0.5
                } else {
                    0.1
                }
            })
            .collect();
        let (lo, hi) = search_range(&scores, &c, &sc);
        assert_eq!((lo, hi), (11_000, 16_000));
        let f = first_round(lo, hi, 8);
        assert_eq!(f.len(), 8);
        assert_eq!((f[0], f[7]), (11_000, 16_000));
        // Confident scores (15,500 ≥ 0.8, 16,000 ≥ 0.3): widened to 25 % of the upper end.
        let sharp: Vec<f64> = (0..20_000)
            .map(|i| {
                if i < 15_500 {
                    0.9
                } else if i < 16_000 {
                    0.5
                } else {
                    0.1
                }
            })
            .collect();
        assert_eq!(search_range(&sharp, &c, &sc), (12_000, 16_000));
        let s = second_round(f[3], lo, hi, 8, 4, &f);
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|x| *x > f[2] && *x < f[4] && !f.contains(x)), "{s:?} around {}", f[3]);
        // At the edge the sizes are clamped and deduplicated.
        let s = second_round(lo, lo, hi, 8, 4, &f);
        assert!(s.iter().all(|&x| x > lo && x < f[1]), "{s:?}");
        // All scores high: the range still opens downwards.
        let all = vec![0.99; 20_000];
        let (lo, hi) = search_range(&all, &c, &sc);
        assert_eq!((lo, hi), (10_000, 20_000));
        // Scores all low: clamped to the lower bound, opened to itself.
        let none = vec![0.01; 20_000];
        let (lo, hi) = search_range(&none, &c, &sc);
        assert_eq!((lo, hi), (2_000, 2_000));
        assert_eq!(first_round(lo, hi, 8), vec![2_000]);
    }

    #[test]
    fn top_indices_sorts_descending_and_stably() {
        let s = [0.2, 0.9, f64::NAN, 0.9, 0.5];
        assert_eq!(top_indices(&s, 3), vec![1, 3, 4]);
        assert_eq!(top_indices(&s, 10), vec![1, 3, 4, 0, 2]);
    }

    #[test]
    fn validation_names_the_option() {
        let c = WizardConfig { score_low: 0.9, ..Default::default() };
        assert!(c.validate().unwrap_err().contains("--score-high"));
        let c = WizardConfig { subsets: vec![], ..Default::default() };
        assert!(c.validate().unwrap_err().contains("--subsets"));
    }
}
