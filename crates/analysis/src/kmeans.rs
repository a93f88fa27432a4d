//! k-means clustering: k-means++ seeding, Lloyd iterations, restarts.
//!
//! # Maths
//!
//! k-means minimises the *inertia* `Σᵢ ‖xᵢ − c_{ℓ(i)}‖²` over centres `c₁…c_k`
//! and labels `ℓ`. Lloyd's algorithm alternates
//!
//! 1. **assignment**: `ℓ(i) = argminⱼ ‖xᵢ − cⱼ‖²` (parallel over rows), and
//! 2. **update**: `cⱼ = mean{xᵢ : ℓ(i) = j}`,
//!
//! each step never increasing the inertia. It stops when no label changes,
//! when the squared centre shift `Σⱼ ‖cⱼ' − cⱼ‖²` drops to
//! `tol · mean_d Var(x_{·d})` (scale-free tolerance, as in scikit-learn), or
//! after `max_iter` iterations; a final assignment step makes the returned
//! labels and inertia consistent with the returned centres.
//!
//! Seeding is **k-means++** (Arthur & Vassilvitskii 2007): the first centre
//! is a uniformly random point, each further centre is drawn with probability
//! proportional to `D(x)²`, the squared distance to the nearest centre chosen
//! so far. This gives an `O(log k)`-competitive start in expectation. The
//! whole procedure is repeated `n_init` times (default 10) with independent
//! ChaCha8 streams of the one seed, keeping the run with the lowest inertia.
//!
//! **Empty clusters** (possible after an update) are re-seeded with the point
//! farthest from its current centre, taken from a cluster with more than one
//! member. All reductions are done in fixed row blocks and summed in order,
//! so a given seed yields bit-identical results for any rayon thread count.
//!
//! ```
//! use cryoforge_analysis::{kmeans, KMeansOptions, MatrixView};
//! let pts = [0.0, 0.1, 0.2, 10.0, 10.1, 10.2];
//! let x = MatrixView::new(&pts, 6, 1).unwrap();
//! let km = kmeans(x, &KMeansOptions::new(2)).unwrap();
//! assert_eq!(km.labels[0], km.labels[2]);
//! assert_ne!(km.labels[0], km.labels[3]);
//! assert!((km.inertia - 4.0 * 0.01).abs() < 1e-12);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, AnalysisError, Result};
use crate::matrix::{sq_dist, Matrix, MatrixView, Real, CHUNK_ROWS};
use crate::pca::{centre_block, column_means};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Parameters of [`kmeans`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansOptions {
    /// Number of clusters (`1 ≤ k ≤ N`).
    pub k: usize,
    /// Number of k-means++ restarts; the lowest-inertia run is kept.
    pub n_init: usize,
    /// Maximum Lloyd iterations per restart.
    pub max_iter: usize,
    /// Relative tolerance on the squared centre shift (× mean feature variance).
    pub tol: f64,
    /// Seed of the ChaCha8 generator (restart `r` uses stream `r`).
    pub seed: u64,
}

impl KMeansOptions {
    /// Defaults: `n_init = 10`, `max_iter = 300`, `tol = 1e-4`, `seed = 0`.
    pub fn new(k: usize) -> Self {
        Self { k, n_init: 10, max_iter: 300, tol: 1e-4, seed: 0 }
    }
}

/// Result of [`kmeans`] (the best of the restarts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeans {
    /// `k × D` cluster centres.
    pub centres: Matrix,
    /// Cluster of each row, in `0..k`.
    pub labels: Vec<usize>,
    /// Sum of squared distances of the rows to their centres.
    pub inertia: f64,
    /// Lloyd iterations run by the kept restart.
    pub n_iter: usize,
    /// Whether the kept restart converged before `max_iter`.
    pub converged: bool,
    /// Inertia after each assignment step of the kept restart (the last entry
    /// equals `inertia`); non-increasing up to rounding.
    pub inertia_history: Vec<f64>,
}

impl KMeans {
    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.centres.n_rows()
    }

    /// Number of rows in each cluster.
    pub fn cluster_sizes(&self) -> Vec<usize> {
        let mut s = vec![0; self.k()];
        self.labels.iter().for_each(|&l| s[l] += 1);
        s
    }

    /// Assigns new rows to their nearest centre (ties → lowest cluster index).
    pub fn predict<T: Real>(&self, x: MatrixView<'_, T>) -> Result<Vec<usize>> {
        x.validate("k-means predict input")?;
        if x.n_cols() != self.centres.n_cols() {
            return Err(AnalysisError::DimensionMismatch {
                what: "k-means predict input columns",
                expected: self.centres.n_cols(),
                got: x.n_cols(),
            });
        }
        Ok(x.as_slice().par_chunks(x.n_cols()).map(|r| nearest_centre(r, &self.centres).0).collect())
    }
}

/// Clusters the rows of `x` into `opts.k` groups. See the module docs.
///
/// Errors: empty input, non-finite values (with the row), `k = 0`, `k > N`,
/// `n_init = 0`, `max_iter = 0`, negative or non-finite `tol`.
pub fn kmeans<T: Real>(x: MatrixView<'_, T>, opts: &KMeansOptions) -> Result<KMeans> {
    x.validate("k-means input")?;
    let n = x.n_rows();
    if opts.k == 0 {
        return Err(invalid("k", "must be at least 1"));
    }
    if opts.k > n {
        return Err(AnalysisError::KTooLarge {
            what: "k-means clusters", k: opts.k, n, constraint: "k ≤ n"
        });
    }
    if opts.n_init == 0 {
        return Err(invalid("n_init", "must be at least 1"));
    }
    if opts.max_iter == 0 {
        return Err(invalid("max_iter", "must be at least 1"));
    }
    if !(opts.tol >= 0.0 && opts.tol.is_finite()) {
        return Err(invalid("tol", format!("must be finite and ≥ 0, got {}", opts.tol)));
    }
    let mean = column_means(x);
    let tol_abs = opts.tol * mean_variance(x, &mean);
    let mut best: Option<KMeans> = None;
    for run in 0..opts.n_init {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(run as u64);
        let init = kmeans_plus_plus(x, opts.k, &mut rng);
        let res = lloyd(x, &mean, init, opts.max_iter, tol_abs);
        match &best {
            Some(b) if b.inertia <= res.inertia => {}
            _ => best = Some(res),
        }
    }
    Ok(best.expect("n_init ≥ 1"))
}

/// Mean over features of the (population) variance.
fn mean_variance<T: Real>(x: MatrixView<'_, T>, mean: &[f64]) -> f64 {
    let var = column_sq_dev(x, mean);
    var.iter().sum::<f64>() / (var.len() as f64 * x.n_rows() as f64)
}

/// `Σᵢ (x_{id} − μ_d)²` per column, blocked and deterministic.
fn column_sq_dev<T: Real>(x: MatrixView<'_, T>, mean: &[f64]) -> Vec<f64> {
    let d = x.n_cols();
    let parts: Vec<Vec<f64>> = x
        .par_row_chunks()
        .map(|(_, block)| {
            let mut s = vec![0.0; d];
            for r in block.chunks(d) {
                for ((acc, v), m) in s.iter_mut().zip(r).zip(mean) {
                    let t = v.to_f64() - m;
                    *acc += t * t;
                }
            }
            s
        })
        .collect();
    let mut out = vec![0.0; d];
    for p in &parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
    out
}

/// Nearest centre and squared distance (ties → lowest index).
#[inline]
fn nearest_centre<T: Real>(row: &[T], centres: &Matrix) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for c in 0..centres.n_rows() {
        let d = sq_dist(row, centres.row(c));
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// k-means++ seeding by D² sampling.
fn kmeans_plus_plus<T: Real>(x: MatrixView<'_, T>, k: usize, rng: &mut ChaCha8Rng) -> Matrix {
    let (n, d) = (x.n_rows(), x.n_cols());
    let mut centres = Matrix::zeros(k, d);
    let first = rng.gen_range(0..n);
    copy_row(centres.row_mut(0), x.row(first));
    let mut mind: Vec<f64> = (0..n).into_par_iter().map(|i| sq_dist(x.row(i), centres.row(0))).collect();
    for c in 1..k {
        let chunk_sums: Vec<f64> = mind.par_chunks(CHUNK_ROWS).map(|s| s.iter().sum()).collect();
        let total: f64 = chunk_sums.iter().sum();
        let pick = if total > 0.0 {
            sample_weighted(&mind, &chunk_sums, rng.gen::<f64>() * total)
        } else {
            rng.gen_range(0..n)
        };
        copy_row(centres.row_mut(c), x.row(pick));
        let centre = centres.row(c);
        mind.par_iter_mut().enumerate().for_each(|(i, m)| {
            let dn = sq_dist(x.row(i), centre);
            if dn < *m {
                *m = dn;
            }
        });
    }
    centres
}

/// Index `i` where the running sum of `w` first exceeds `u` (blocked walk
/// over the per-block sums, then inside one block).
fn sample_weighted(w: &[f64], chunk_sums: &[f64], mut u: f64) -> usize {
    let block = |c: usize| &w[c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(w.len())];
    let last_positive = |c: usize| c * CHUNK_ROWS + block(c).iter().rposition(|&v| v > 0.0).unwrap_or(0);
    let mut last = 0;
    for (c, &s) in chunk_sums.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        last = c;
        if u >= s {
            u -= s;
            continue;
        }
        for (j, &v) in block(c).iter().enumerate() {
            if v > 0.0 && u < v {
                return c * CHUNK_ROWS + j;
            }
            u -= v;
        }
        return last_positive(c);
    }
    // Rounding pushed u past the total: take the last positive weight.
    last_positive(last)
}

fn copy_row<T: Real>(dst: &mut [f64], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f64());
}

/// Output of one assignment step.
struct Assignment {
    sums: Vec<f64>,
    counts: Vec<usize>,
    inertia: f64,
    changed: usize,
}

/// Assignment step: updates `labels`/`dists`, returns per-cluster sums.
///
/// The nearest centre is found from `‖c'‖² − 2⟨x', c'⟩` with `x' = x − μ`,
/// `c' = c − μ` (`μ` = data mean, to limit cancellation), the inner products
/// of a block of rows with all centres being one faer matrix product. The
/// distance reported for the chosen centre is then computed directly.
fn assign<T: Real>(
    x: MatrixView<'_, T>,
    mean: &[f64],
    centres: &Matrix,
    labels: &mut [usize],
    dists: &mut [f64],
) -> Assignment {
    let (k, d) = (centres.n_rows(), x.n_cols());
    let shifted = centre_block(centres.as_slice(), mean);
    let norms: Vec<f64> = shifted.chunks(d).map(|c| c.iter().map(|v| v * v).sum()).collect();
    let cm = MatRef::from_row_major_slice(&shifted, k, d);
    let parts: Vec<Assignment> = x
        .par_row_chunks()
        .zip(labels.par_chunks_mut(CHUNK_ROWS))
        .zip(dists.par_chunks_mut(CHUNK_ROWS))
        .map(|(((_, block), lab), dis)| {
            let rows = block.len() / d;
            let xs = centre_block(block, mean);
            let mut g = Mat::<f64>::zeros(rows, k);
            let xm = MatRef::from_row_major_slice(&xs, rows, d);
            matmul(g.as_mut(), Accum::Replace, xm, cm.transpose(), 1.0, Par::Seq);
            let mut a = Assignment { sums: vec![0.0; k * d], counts: vec![0; k], inertia: 0.0, changed: 0 };
            for (r, row) in block.chunks(d).enumerate() {
                let mut c = 0;
                let mut best = f64::INFINITY;
                for j in 0..k {
                    let v = norms[j] - 2.0 * g[(r, j)];
                    if v < best {
                        (best, c) = (v, j);
                    }
                }
                let dist = sq_dist(row, centres.row(c));
                a.changed += usize::from(lab[r] != c);
                lab[r] = c;
                dis[r] = dist;
                a.inertia += dist;
                a.counts[c] += 1;
                let s = &mut a.sums[c * d..(c + 1) * d];
                s.iter_mut().zip(row).for_each(|(s, v)| *s += v.to_f64());
            }
            a
        })
        .collect();
    let mut total = Assignment { sums: vec![0.0; k * d], counts: vec![0; k], inertia: 0.0, changed: 0 };
    for p in parts {
        total.sums.iter_mut().zip(&p.sums).for_each(|(a, b)| *a += b);
        total.counts.iter_mut().zip(&p.counts).for_each(|(a, b)| *a += b);
        total.inertia += p.inertia;
        total.changed += p.changed;
    }
    total
}

/// Moves the farthest points (from clusters with > 1 member) into empty
/// clusters. Returns how many clusters were re-seeded.
fn reseed_empty<T: Real>(
    x: MatrixView<'_, T>,
    a: &mut Assignment,
    labels: &mut [usize],
    dists: &mut [f64],
) -> usize {
    let d = x.n_cols();
    let mut reseeded = 0;
    for e in 0..a.counts.len() {
        if a.counts[e] != 0 {
            continue;
        }
        let counts = &a.counts;
        let far = dists
            .par_iter()
            .enumerate()
            .filter(|(i, _)| counts[labels[*i]] > 1)
            .map(|(i, &dist)| (dist, i))
            .reduce_with(|p, q| if q.0 > p.0 || (q.0 == p.0 && q.1 < p.1) { q } else { p });
        let Some((dist, i)) = far else { continue };
        let old = labels[i];
        let row = x.row(i);
        for (j, v) in row.iter().enumerate() {
            a.sums[old * d + j] -= v.to_f64();
            a.sums[e * d + j] = v.to_f64();
        }
        a.counts[old] -= 1;
        a.counts[e] = 1;
        a.inertia -= dist;
        labels[i] = e;
        dists[i] = 0.0;
        reseeded += 1;
    }
    reseeded
}

/// Lloyd iterations from the given centres.
fn lloyd<T: Real>(
    x: MatrixView<'_, T>,
    mean: &[f64],
    mut centres: Matrix,
    max_iter: usize,
    tol_abs: f64,
) -> KMeans {
    let (n, d) = (x.n_rows(), x.n_cols());
    let mut labels = vec![usize::MAX; n];
    let mut dists = vec![0.0; n];
    let mut history = Vec::new();
    let (mut n_iter, mut converged) = (0, false);
    for it in 1..=max_iter {
        let mut a = assign(x, mean, &centres, &mut labels, &mut dists);
        history.push(a.inertia);
        let reseeded = reseed_empty(x, &mut a, &mut labels, &mut dists);
        let mut shift = 0.0;
        for c in 0..centres.n_rows() {
            if a.counts[c] == 0 {
                continue;
            }
            let inv = 1.0 / a.counts[c] as f64;
            for (j, dst) in centres.row_mut(c).iter_mut().enumerate() {
                let v = a.sums[c * d + j] * inv;
                shift += (v - *dst) * (v - *dst);
                *dst = v;
            }
        }
        n_iter = it;
        if (a.changed == 0 && reseeded == 0) || shift <= tol_abs {
            converged = true;
            break;
        }
    }
    let a = assign(x, mean, &centres, &mut labels, &mut dists);
    history.push(a.inertia);
    KMeans { centres, labels, inertia: a.inertia, n_iter, converged, inertia_history: history }
}

/// Per-feature standardisation `z = (x − μ) / σ` (population σ), the usual
/// preprocessing before k-means on features with different units. Constant
/// features get `σ = 1` so they map to 0 instead of NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation (1 for constant features).
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Estimates means and standard deviations of the columns of `x`.
    pub fn fit<T: Real>(x: MatrixView<'_, T>) -> Result<Self> {
        x.validate("standardizer input")?;
        let mean = column_means(x);
        let n = x.n_rows() as f64;
        let scale = column_sq_dev(x, &mean)
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 0.0 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, scale })
    }

    /// Returns `(x − μ) / σ`.
    pub fn transform<T: Real>(&self, x: MatrixView<'_, T>) -> Result<Matrix> {
        self.apply(x, |v, m, s| (v - m) / s)
    }

    /// Returns `z σ + μ`.
    pub fn inverse_transform<T: Real>(&self, z: MatrixView<'_, T>) -> Result<Matrix> {
        self.apply(z, |v, m, s| v * s + m)
    }

    fn apply<T: Real>(
        &self,
        x: MatrixView<'_, T>,
        f: impl Fn(f64, f64, f64) -> f64 + Sync,
    ) -> Result<Matrix> {
        x.validate("standardizer input")?;
        let d = self.mean.len();
        if x.n_cols() != d {
            return Err(AnalysisError::DimensionMismatch {
                what: "standardizer input columns",
                expected: d,
                got: x.n_cols(),
            });
        }
        let data = x
            .as_slice()
            .par_chunks(d)
            .flat_map_iter(|r| {
                r.iter()
                    .zip(self.mean.iter().zip(&self.scale))
                    .map(|(v, (m, s))| f(v.to_f64(), *m, *s))
                    .collect::<Vec<_>>()
            })
            .collect();
        Matrix::new(data, x.n_rows(), d)
    }
}

/// Standardises `x`, returning the scaled data and the fitted scaler.
pub fn standardize<T: Real>(x: MatrixView<'_, T>) -> Result<(Matrix, Standardizer)> {
    let s = Standardizer::fit(x)?;
    Ok((s.transform(x)?, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::adjusted_rand_index;
    use crate::testutil::blobs;

    #[test]
    fn recovers_separated_blobs() {
        let (data, truth) = blobs(5, 200, 6, 12.0, 1.0, 3);
        let x = MatrixView::new(&data, truth.len(), 6).unwrap();
        let km = kmeans(x, &KMeansOptions::new(5)).unwrap();
        assert_eq!(adjusted_rand_index(&km.labels, &truth).unwrap(), 1.0);
        assert_eq!(km.cluster_sizes(), vec![200; 5]);
        assert!(km.converged);
        // Inertia never increases along the Lloyd iterations.
        for w in km.inertia_history.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-12), "{:?}", km.inertia_history);
        }
        assert_eq!(*km.inertia_history.last().unwrap(), km.inertia);
        // Inertia is the sum of squared distances to the assigned centre,
        // and every label is the nearest centre.
        let mut inertia = 0.0;
        for i in 0..x.n_rows() {
            let (c, d) = nearest_centre(x.row(i), &km.centres);
            assert_eq!(c, km.labels[i]);
            inertia += d;
        }
        assert!((inertia - km.inertia).abs() < 1e-9 * inertia);
        assert_eq!(km.predict(x).unwrap(), km.labels);
    }

    #[test]
    fn seed_reproducible_across_thread_counts() {
        let (data, truth) = blobs(6, 1500, 8, 3.0, 1.0, 11);
        let x = MatrixView::new(&data, truth.len(), 8).unwrap();
        let mut opts = KMeansOptions::new(6);
        opts.seed = 42;
        opts.n_init = 3;
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| kmeans(x, &opts).unwrap())
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a, b);
        opts.seed = 43;
        let c = kmeans(x, &opts).unwrap();
        assert!(c.inertia.is_finite());
    }

    #[test]
    fn restarts_never_worse() {
        let (data, truth) = blobs(8, 100, 3, 4.0, 1.5, 5);
        let x = MatrixView::new(&data, truth.len(), 3).unwrap();
        let mut one = KMeansOptions::new(8);
        one.n_init = 1;
        let single = kmeans(x, &one).unwrap();
        let multi = kmeans(x, &KMeansOptions::new(8)).unwrap();
        assert!(multi.inertia <= single.inertia);
    }

    #[test]
    fn empty_cluster_is_reseeded_from_farthest_point() {
        let (data, truth) = blobs(3, 50, 2, 10.0, 0.5, 9);
        let x = MatrixView::new(&data, truth.len(), 2).unwrap();
        // Two centres on the data, one far away: it wins no point at first.
        let mut init = Matrix::zeros(3, 2);
        init.row_mut(0).copy_from_slice(&[10.0, 0.0]);
        init.row_mut(1).copy_from_slice(&[0.0, 10.0]);
        init.row_mut(2).copy_from_slice(&[1e6, 1e6]);
        let km = lloyd(x, &column_means(x), init, 100, 0.0);
        assert!(km.cluster_sizes().iter().all(|&s| s > 0), "{:?}", km.cluster_sizes());
        assert_eq!(adjusted_rand_index(&km.labels, &truth).unwrap(), 1.0);
    }

    #[test]
    fn duplicate_points_do_not_panic() {
        let data = [1.0f32, 1.0, 1.0, 1.0, 2.0, 2.0];
        let x = MatrixView::new(&data, 3, 2).unwrap();
        let km = kmeans(x, &KMeansOptions::new(3)).unwrap();
        assert_eq!(km.labels.len(), 3);
        assert!(km.inertia.abs() < 1e-12);
    }

    #[test]
    fn errors() {
        let data = [0.0f64, 1.0, 2.0, f64::NAN];
        let x = MatrixView::new(&data, 4, 1).unwrap();
        assert_eq!(
            kmeans(x, &KMeansOptions::new(2)).unwrap_err(),
            AnalysisError::NonFinite { what: "k-means input", row: 3, col: 0 }
        );
        let x = MatrixView::new(&data[..3], 3, 1).unwrap();
        assert!(matches!(
            kmeans(x, &KMeansOptions::new(4)),
            Err(AnalysisError::KTooLarge { k: 4, n: 3, .. })
        ));
        assert!(kmeans(x, &KMeansOptions::new(0)).is_err());
        let mut o = KMeansOptions::new(2);
        o.tol = f64::NAN;
        assert!(kmeans(x, &o).is_err());
    }

    #[test]
    fn standardizer_round_trip() {
        let data = [1.0f64, 5.0, 3.0, 5.0, 5.0, 5.0];
        let x = MatrixView::new(&data, 3, 2).unwrap();
        let (z, s) = standardize(x).unwrap();
        assert!((z.row(0)[0] + 1.224744871391589).abs() < 1e-12);
        assert_eq!(z.column(1), vec![0.0; 3]);
        let back = s.inverse_transform(z.view()).unwrap();
        for (a, b) in back.as_slice().iter().zip(&data) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
