//! Traversal and correlation helpers familiar from cryoDRGN `analyze`.
//!
//! * [`nearest_index`] / [`nearest_indices`] snap arbitrary latent points to
//!   the nearest *real* particle (Euclidean; ties → lowest particle index),
//!   in one streaming parallel pass over the particles.
//! * [`pc_traversal`] walks along one principal component: `n_points` values
//!   evenly spaced between the `lo_pct` and `hi_pct` percentiles (default 5
//!   and 95) of the particles' coordinates on that PC; each value `v` is the
//!   latent point `μ + v·v_pc` on the PC axis, snapped to the nearest real
//!   particle, whose latent vector is what a volume decoder should be given.
//! * [`cluster_centres_snapped`] snaps k-means centres the same way.
//! * [`pearson`] and [`spearman`] (Pearson of average ranks, so ties get the
//!   mean of the ranks they span) correlate e.g. a PC with a simulated
//!   conformational coordinate.
//!
//! Percentiles use linear interpolation between order statistics (rank
//! `q/100 · (N − 1)`), matching NumPy's default.
//!
//! ```
//! use cryoforge_analysis::{pearson, spearman};
//! let a = [1.0, 2.0, 3.0, 4.0];
//! let b = [1.0, 4.0, 9.0, 16.0];
//! assert!((spearman(&a, &b).unwrap() - 1.0).abs() < 1e-12);
//! assert!(pearson(&a, &b).unwrap() < 1.0);
//! ```

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, AnalysisError, Result};
use crate::kmeans::KMeans;
use crate::matrix::{check_vector, sq_dist, MatrixView, Real};
use crate::pca::Pca;

/// Default lower percentile of [`pc_traversal`].
pub const DEFAULT_LO_PCT: f64 = 5.0;
/// Default upper percentile of [`pc_traversal`].
pub const DEFAULT_HI_PCT: f64 = 95.0;

/// One stop of a PC traversal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraversalPoint {
    /// Requested coordinate along the PC.
    pub value: f64,
    /// Index of the nearest real particle to `μ + value · v_pc`.
    pub particle_index: usize,
    /// That particle's latent vector.
    pub latent: Vec<f64>,
    /// That particle's own coordinate along the PC.
    pub particle_value: f64,
}

/// Index of the row of `points` nearest to `query`.
///
/// Errors: empty/non-finite points, or a query of the wrong length or with
/// non-finite values.
pub fn nearest_index<T: Real>(points: MatrixView<'_, T>, query: &[f64]) -> Result<usize> {
    let q = MatrixView::new(query, 1, query.len().max(1)).map_err(|_| AnalysisError::DimensionMismatch {
        what: "nearest_index query",
        expected: points.n_cols(),
        got: query.len(),
    })?;
    Ok(nearest_indices(points, q)?[0])
}

/// For each row of `queries`, the index of the nearest row of `points`,
/// found in one parallel pass over `points` (`O(N·Q·D)` time, `O(Q)` memory
/// per block).
pub fn nearest_indices<T: Real>(
    points: MatrixView<'_, T>,
    queries: MatrixView<'_, f64>,
) -> Result<Vec<usize>> {
    points.validate("points")?;
    queries.validate("queries")?;
    if queries.n_cols() != points.n_cols() {
        return Err(AnalysisError::DimensionMismatch {
            what: "query dimension",
            expected: points.n_cols(),
            got: queries.n_cols(),
        });
    }
    let (d, nq) = (points.n_cols(), queries.n_rows());
    let partials: Vec<Vec<(f64, usize)>> = points
        .par_row_chunks()
        .map(|(start, block)| {
            let mut best = vec![(f64::INFINITY, usize::MAX); nq];
            for (r, row) in block.chunks(d).enumerate() {
                for (q, b) in best.iter_mut().enumerate() {
                    let dist = sq_dist(row, queries.row(q));
                    if dist < b.0 {
                        *b = (dist, start + r);
                    }
                }
            }
            best
        })
        .collect();
    let mut best = vec![(f64::INFINITY, usize::MAX); nq];
    for p in partials {
        for (b, c) in best.iter_mut().zip(p) {
            // Blocks come in row order: only a strictly closer row replaces.
            if c.0 < b.0 {
                *b = c;
            }
        }
    }
    Ok(best.into_iter().map(|b| b.1).collect())
}

/// Percentile `q ∈ [0, 100]` of `values` with linear interpolation.
///
/// Errors: empty input, non-finite values, `q` outside `[0, 100]`.
pub fn percentile(values: &[f64], q: f64) -> Result<f64> {
    Ok(percentiles(values.to_vec(), &[q])?[0])
}

fn percentiles(mut v: Vec<f64>, qs: &[f64]) -> Result<Vec<f64>> {
    if v.is_empty() {
        return Err(AnalysisError::Empty { what: "percentile input" });
    }
    if let Some(row) = v.iter().position(|x| !x.is_finite()) {
        return Err(AnalysisError::NonFinite { what: "percentile input", row, col: 0 });
    }
    let n = v.len();
    let mut out = Vec::with_capacity(qs.len());
    for &q in qs {
        if !(0.0..=100.0).contains(&q) {
            return Err(invalid("percentile", format!("must be in [0, 100], got {q}")));
        }
        let pos = q / 100.0 * (n - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(n - 1);
        let (_, &mut a, rest) = v.select_nth_unstable_by(lo, f64::total_cmp);
        // The (lo+1)-th order statistic is the minimum of the upper part.
        let b = if hi == lo { a } else { rest.iter().copied().fold(f64::INFINITY, f64::min) };
        out.push(a + (pos - lo as f64) * (b - a));
    }
    Ok(out)
}

/// Traversal along principal component `pc` (0-based) of `pca`, fitted on
/// (or compatible with) `latents`. See the module docs.
///
/// `n_points = 1` gives the midpoint of the two percentiles. Errors: empty or
/// non-finite latents, dimension mismatch with the PCA, `pc ≥` number of
/// components, `n_points = 0`, or percentiles outside `0 ≤ lo ≤ hi ≤ 100`.
pub fn pc_traversal<T: Real>(
    latents: MatrixView<'_, T>,
    pca: &Pca,
    pc: usize,
    n_points: usize,
    lo_pct: f64,
    hi_pct: f64,
) -> Result<Vec<TraversalPoint>> {
    latents.validate("latents")?;
    if latents.n_cols() != pca.n_features() {
        return Err(AnalysisError::DimensionMismatch {
            what: "latent dimension vs PCA",
            expected: pca.n_features(),
            got: latents.n_cols(),
        });
    }
    if pc >= pca.n_components() {
        return Err(invalid("pc", format!("must be < {} components, got {pc}", pca.n_components())));
    }
    if n_points == 0 {
        return Err(invalid("n_points", "must be at least 1"));
    }
    if !(0.0 <= lo_pct && lo_pct <= hi_pct && hi_pct <= 100.0) {
        return Err(invalid("lo_pct/hi_pct", format!("need 0 ≤ lo ≤ hi ≤ 100, got {lo_pct}, {hi_pct}")));
    }
    let (mean, axis) = (pca.mean(), pca.component(pc));
    let coord =
        |row: &[T]| -> f64 { row.iter().zip(mean).zip(axis).map(|((x, m), v)| (x.to_f64() - m) * v).sum() };
    let coords: Vec<f64> = latents.as_slice().par_chunks(latents.n_cols()).map(coord).collect();
    let p = percentiles(coords, &[lo_pct, hi_pct])?;
    let values: Vec<f64> = if n_points == 1 {
        vec![0.5 * (p[0] + p[1])]
    } else {
        (0..n_points).map(|m| p[0] + (p[1] - p[0]) * m as f64 / (n_points - 1) as f64).collect()
    };
    let mut queries = Vec::with_capacity(n_points * mean.len());
    for &v in &values {
        let mut c = vec![0.0; pc + 1];
        c[pc] = v;
        queries.extend(pca.inverse_transform_row(&c)?);
    }
    let q = MatrixView::new(&queries, n_points, mean.len())?;
    let idx = nearest_indices(latents, q)?;
    Ok(values
        .into_iter()
        .zip(idx)
        .map(|(value, i)| TraversalPoint {
            value,
            particle_index: i,
            latent: latents.row(i).iter().map(|v| v.to_f64()).collect(),
            particle_value: coord(latents.row(i)),
        })
        .collect())
}

/// Index of the real particle nearest to each k-means centre.
pub fn cluster_centres_snapped<T: Real>(latents: MatrixView<'_, T>, km: &KMeans) -> Result<Vec<usize>> {
    nearest_indices(latents, km.centres.view())
}

fn check_pair<A: Real, B: Real>(a: &[A], b: &[B]) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != b.len() {
        return Err(AnalysisError::DimensionMismatch {
            what: "correlation: lengths of a and b",
            expected: a.len(),
            got: b.len(),
        });
    }
    if a.len() < 2 {
        return Err(AnalysisError::TooFewRows { what: "correlation", needed: 2, got: a.len() });
    }
    let a: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    let b: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
    check_vector("correlation input a", &a, a.len())?;
    check_vector("correlation input b", &b, b.len())?;
    Ok((a, b))
}

fn pearson_f64(a: &[f64], b: &[f64]) -> Result<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 {
        return Err(AnalysisError::ZeroVariance { what: "correlation input a" });
    }
    if sbb == 0.0 {
        return Err(AnalysisError::ZeroVariance { what: "correlation input b" });
    }
    Ok((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Pearson correlation coefficient.
///
/// Errors: different lengths, fewer than 2 values, non-finite values
/// (reported as `row 0, col i`), or a constant input.
pub fn pearson<A: Real, B: Real>(a: &[A], b: &[B]) -> Result<f64> {
    let (a, b) = check_pair(a, b)?;
    pearson_f64(&a, &b)
}

/// Average ranks (1-based; tied values share the mean of their ranks).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.par_sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut s = 0;
    while s < order.len() {
        let mut e = s + 1;
        while e < order.len() && v[order[e]] == v[order[s]] {
            e += 1;
        }
        let avg = 0.5 * ((s + 1) + e) as f64;
        order[s..e].iter().for_each(|&i| r[i] = avg);
        s = e;
    }
    r
}

/// Spearman rank correlation (Pearson correlation of average ranks).
///
/// Same errors as [`pearson`].
pub fn spearman<A: Real, B: Real>(a: &[A], b: &[B]) -> Result<f64> {
    let (a, b) = check_pair(a, b)?;
    pearson_f64(&ranks(&a), &ranks(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::{kmeans, KMeansOptions};
    use crate::testutil::{blobs, normal};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn nearest_snaps_to_real_points() {
        let pts = [0.0f32, 0.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0];
        let x = MatrixView::new(&pts, 4, 2).unwrap();
        assert_eq!(nearest_index(x, &[0.9, 1.2]).unwrap(), 1); // tie 1 vs 3 → lowest
        assert_eq!(nearest_index(x, &[4.0, 6.0]).unwrap(), 2);
        assert!(matches!(nearest_index(x, &[1.0]), Err(AnalysisError::DimensionMismatch { .. })));
        assert!(nearest_index(x, &[f64::NAN, 0.0]).is_err());
        // Across block boundaries the first of equal rows wins.
        let big = vec![1.0f64; 3 * 10_000];
        let y = MatrixView::new(&big, 10_000, 3).unwrap();
        assert_eq!(nearest_index(y, &[0.0, 0.0, 0.0]).unwrap(), 0);
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        let v: Vec<f64> = (1..=10).map(|i| i as f64).collect();
        assert!((percentile(&v, 5.0).unwrap() - 1.45).abs() < 1e-12);
        assert!((percentile(&v, 95.0).unwrap() - 9.55).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0).unwrap(), 10.0);
        assert_eq!(percentile(&v, 0.0).unwrap(), 1.0);
        assert!(percentile(&v, 101.0).is_err());
        assert!(percentile(&[], 50.0).is_err());
    }

    #[test]
    fn pc_traversal_walks_the_main_axis() {
        // Latents spread along (1, 1, 0)/√2 with small noise.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 5000;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            let t = 4.0 * normal(&mut rng);
            data.extend([t + 0.1 * normal(&mut rng), t + 0.1 * normal(&mut rng), 0.1 * normal(&mut rng)]);
        }
        let x = MatrixView::new(&data, n, 3).unwrap();
        let pca = Pca::fit(x, None).unwrap();
        let trav = pc_traversal(x, &pca, 0, 10, DEFAULT_LO_PCT, DEFAULT_HI_PCT).unwrap();
        assert_eq!(trav.len(), 10);
        let coords: Vec<f64> = (0..n).map(|i| pca.transform_row(x.row(i)).unwrap()[0]).collect();
        let lo = percentile(&coords, 5.0).unwrap();
        let hi = percentile(&coords, 95.0).unwrap();
        assert!((trav[0].value - lo).abs() < 1e-9 && (trav[9].value - hi).abs() < 1e-9);
        // 5/95 % of a N(0, 4²·2) coordinate ≈ ±1.645·4√2.
        assert!((hi - 1.645 * 4.0 * 2f64.sqrt()).abs() < 0.4, "hi = {hi}");
        for w in trav.windows(2) {
            assert!(w[1].value > w[0].value);
            assert!(w[1].particle_value > w[0].particle_value);
        }
        for t in &trav {
            assert_eq!(t.latent, x.row(t.particle_index).to_vec());
            assert!((t.particle_value - t.value).abs() < 0.3);
            let target = pca.inverse_transform_row(&[t.value]).unwrap();
            assert_eq!(t.particle_index, nearest_index(x, &target).unwrap());
        }
        assert!(pc_traversal(x, &pca, 3, 10, 5.0, 95.0).is_err());
        assert!(pc_traversal(x, &pca, 0, 0, 5.0, 95.0).is_err());
        assert!(pc_traversal(x, &pca, 0, 5, 95.0, 5.0).is_err());
        assert_eq!(pc_traversal(x, &pca, 1, 1, 5.0, 95.0).unwrap().len(), 1);
    }

    #[test]
    fn centres_snap_to_cluster_members() {
        let (data, truth) = blobs(4, 100, 5, 10.0, 1.0, 8);
        let x = MatrixView::new(&data, 400, 5).unwrap();
        let km = kmeans(x, &KMeansOptions::new(4)).unwrap();
        let snapped = cluster_centres_snapped(x, &km).unwrap();
        assert_eq!(snapped.len(), 4);
        for (c, &i) in snapped.iter().enumerate() {
            assert_eq!(km.labels[i], c);
            let best = (0..400).map(|j| sq_dist(x.row(j), km.centres.row(c))).fold(f64::INFINITY, f64::min);
            assert_eq!(sq_dist(x.row(i), km.centres.row(c)), best);
        }
        let mut seen: Vec<usize> = snapped.iter().map(|&i| truth[i]).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }

    #[test]
    fn correlations() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [2.0f32, 4.0, 6.0, 8.0, 10.0];
        assert!((pearson(&a, &b).unwrap() - 1.0).abs() < 1e-12);
        let c = [5.0, 4.0, 3.0, 2.0, 1.0];
        assert!((pearson(&a, &c).unwrap() + 1.0).abs() < 1e-12);
        // Hand-computed: x = [1,2,3,4], y = [1,3,2,4] → r = 0.8.
        assert!((pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.8).abs() < 1e-12);
        // Ties: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4].
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        // Pearson of [1,2.5,2.5,4] and [1,2,3,4] = 4.5 / sqrt(4.5 · 5).
        assert!((s - 4.5 / (4.5f64 * 5.0).sqrt()).abs() < 1e-12, "{s}");
        // Monotone but non-linear: Spearman 1, Pearson < 1.
        let e: Vec<f64> = a.iter().map(|v: &f64| v.exp()).collect();
        assert!((spearman(&a, &e).unwrap() - 1.0).abs() < 1e-12);
        assert!(pearson(&a, &e).unwrap() < 0.95);
        assert!(matches!(pearson(&a, &b[..4]), Err(AnalysisError::DimensionMismatch { .. })));
        assert!(matches!(pearson(&a, &[1.0; 5]), Err(AnalysisError::ZeroVariance { .. })));
        assert!(matches!(
            spearman(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(AnalysisError::NonFinite { col: 1, .. })
        ));
        assert!(pearson(&[1.0], &[1.0]).is_err());
    }
}
