//! Quality metrics: embedding trustworthiness and clustering agreement.
//!
//! # Trustworthiness (Venna & Kaski 2001)
//!
//! For each point `i` let `Uᵢᵏ` be the points that are among the `k` nearest
//! neighbours of `i` in the low-dimensional embedding but *not* in the
//! original space, and `r(i, j)` the rank of `j` among `i`'s neighbours in the
//! original space (nearest = 1). Then
//!
//! ```text
//! T(k) = 1 − 2 / (N k (2N − 3k − 1)) · Σᵢ Σ_{j ∈ Uᵢᵏ} (r(i, j) − k)
//! ```
//!
//! `T = 1` when every embedded neighbourhood consists of true neighbours;
//! intrusions of far-away points are penalised by how far they really are.
//! Ties in distance are broken by point index. The computation is exact:
//! `O(N²·D)` time (parallel over points) and `O(N)` memory per thread, so it
//! is meant for evaluation subsets (up to ~20k points), not millions.
//!
//! # Adjusted Rand index (Hubert & Arabie 1985)
//!
//! Pair-counting agreement between two labelings corrected for chance:
//! `ARI = (Σᵢⱼ C(nᵢⱼ,2) − E) / (½[Σᵢ C(aᵢ,2) + Σⱼ C(bⱼ,2)] − E)` with
//! `E = Σᵢ C(aᵢ,2) Σⱼ C(bⱼ,2) / C(n,2)`; 1 for identical partitions up to a
//! renaming of the labels, ≈ 0 for independent ones.
//!
//! ```
//! use cryoforge_analysis::adjusted_rand_index;
//! let ari = adjusted_rand_index(&[0, 0, 1, 1, 2], &[5, 5, 3, 3, 9]).unwrap();
//! assert_eq!(ari, 1.0);
//! ```

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::matrix::{sq_dist, MatrixView, Real};

/// Trustworthiness `T(k)` of the embedding `x_low` of `x_high` (same rows).
///
/// Errors: empty inputs, row-count mismatch, non-finite values, `k = 0` or
/// `k ≥ N/2` (the normalisation requires `2N − 3k − 1 > 0`).
pub fn trustworthiness<A: Real, B: Real>(
    x_high: MatrixView<'_, A>,
    x_low: MatrixView<'_, B>,
    k: usize,
) -> Result<f64> {
    x_high.validate("trustworthiness x_high")?;
    x_low.validate("trustworthiness x_low")?;
    let n = x_high.n_rows();
    if x_low.n_rows() != n {
        return Err(AnalysisError::DimensionMismatch {
            what: "trustworthiness: rows of x_low vs x_high",
            expected: n,
            got: x_low.n_rows(),
        });
    }
    if k == 0 || 2 * k >= n {
        return Err(AnalysisError::KTooLarge { what: "trustworthiness", k, n, constraint: "1 ≤ k < n/2" });
    }
    let penalty: u64 = (0..n)
        .into_par_iter()
        .map(|i| {
            let dh: Vec<f64> = (0..n).map(|j| sq_dist(x_high.row(i), x_high.row(j))).collect();
            let dl: Vec<f64> = (0..n).map(|j| sq_dist(x_low.row(i), x_low.row(j))).collect();
            let high = k_smallest(&dh, i, k);
            let low = k_smallest(&dl, i, k);
            let mut p = 0u64;
            for &j in low.iter().filter(|j| !high.contains(j)) {
                let key = (dh[j], j);
                let closer = (0..n).filter(|&l| l != i && (dh[l], l) < key).count();
                // rank r = closer + 1 > k because j is outside the k-NN.
                p += (closer + 1 - k) as u64;
            }
            p
        })
        .sum();
    let (nf, kf) = (n as f64, k as f64);
    Ok(1.0 - 2.0 / (nf * kf * (2.0 * nf - 3.0 * kf - 1.0)) * penalty as f64)
}

/// Indices of the `k` smallest `d[j]` (ties by index), excluding `skip`.
fn k_smallest(d: &[f64], skip: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..d.len()).filter(|&j| j != skip).collect();
    let cmp = |a: &usize, b: &usize| d[*a].total_cmp(&d[*b]).then(a.cmp(b));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx
}

/// Adjusted Rand index between two labelings of the same points.
///
/// Errors: empty input or different lengths. Returns 1 when both labelings
/// put all points in a single cluster (or all in singletons).
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> Result<f64> {
    if a.is_empty() {
        return Err(AnalysisError::Empty { what: "labels" });
    }
    if a.len() != b.len() {
        return Err(AnalysisError::DimensionMismatch {
            what: "adjusted_rand_index: label lengths",
            expected: a.len(),
            got: b.len(),
        });
    }
    let mut table: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut ra: BTreeMap<usize, u64> = BTreeMap::new();
    let mut rb: BTreeMap<usize, u64> = BTreeMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1;
        *ra.entry(x).or_default() += 1;
        *rb.entry(y).or_default() += 1;
    }
    let c2 = |m: u64| (m as f64) * (m as f64 - 1.0) / 2.0;
    let index: f64 = table.values().map(|&m| c2(m)).sum();
    let sa: f64 = ra.values().map(|&m| c2(m)).sum();
    let sb: f64 = rb.values().map(|&m| c2(m)).sum();
    let expected = sa * sb / c2(a.len() as u64).max(f64::MIN_POSITIVE);
    let max = 0.5 * (sa + sb);
    if (max - expected).abs() < 1e-12 {
        return Ok(1.0);
    }
    Ok((index - expected) / (max - expected))
}

/// Area under the ROC curve of `scores` for telling `positive` points from the others
/// (the Mann–Whitney U statistic / (n₊·n₋), ties counted ½): 1 when every positive scores
/// above every negative, 0.5 for chance.
///
/// Errors: different lengths, a non-finite score (with its index), or no positive or no
/// negative point.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Result<f64> {
    if scores.len() != positive.len() {
        return Err(AnalysisError::DimensionMismatch {
            what: "roc_auc: scores and labels",
            expected: scores.len(),
            got: positive.len(),
        });
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(crate::error::invalid("roc_auc scores", format!("score {i} is {}", scores[i])));
    }
    let np = positive.iter().filter(|&&p| p).count();
    let nn = positive.len() - np;
    if np == 0 || nn == 0 {
        return Err(crate::error::invalid("roc_auc labels", "needs both positive and negative points"));
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks over ties; U = Σ ranks of positives − n₊(n₊+1)/2.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum += mid;
            }
        }
        i = j + 1;
    }
    let u = rank_sum - (np as f64) * (np as f64 + 1.0) / 2.0;
    Ok(u / (np as f64 * nn as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_auc_known_values() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]).unwrap(), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]).unwrap(), 0.0);
        // One inversion of four pairs; ties count one half.
        assert_eq!(roc_auc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]).unwrap(), 0.75);
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]).unwrap(), 0.5);
        assert!(roc_auc(&[0.5, 0.5], &[true, true]).is_err());
        assert!(roc_auc(&[f64::NAN, 0.5], &[false, true]).is_err());
    }

    #[test]
    fn ari_cases() {
        assert_eq!(adjusted_rand_index(&[0, 0, 1, 1], &[1, 1, 0, 0]).unwrap(), 1.0);
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap();
        assert!(v < 0.0, "{v}");
        assert!(adjusted_rand_index(&[0], &[0, 1]).is_err());
        assert!(adjusted_rand_index(&[], &[]).is_err());
    }

    #[test]
    fn trustworthiness_identity_and_scramble() {
        let n = 60;
        let high: Vec<f64> = (0..n).flat_map(|i| [i as f64, (i * i % 7) as f64 * 0.01]).collect();
        let x = MatrixView::new(&high, n, 2).unwrap();
        assert_eq!(trustworthiness(x, x, 5).unwrap(), 1.0);
        // A 1-D projection that keeps the order is still perfectly trustworthy.
        let low: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let y = MatrixView::new(&low, n, 1).unwrap();
        assert!(trustworthiness(x, y, 5).unwrap() > 0.99);
        // Reversing halves breaks neighbourhoods at the seam only.
        let shuffled: Vec<f64> = (0..n).map(|i| ((i * 37) % n) as f64).collect();
        let z = MatrixView::new(&shuffled, n, 1).unwrap();
        assert!(trustworthiness(x, z, 5).unwrap() < 0.8);
        assert!(matches!(trustworthiness(x, x, 30), Err(AnalysisError::KTooLarge { .. })));
    }
}
