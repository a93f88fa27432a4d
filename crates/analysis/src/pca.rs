//! Principal component analysis of latent embeddings.
//!
//! # Maths
//!
//! For an `N × D` data matrix `X` (one particle per row) with column mean
//! `μ = (1/N) Σᵢ xᵢ`, the sample covariance is
//!
//! ```text
//! C = (1/(N−1)) Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ          (D × D, symmetric PSD)
//! ```
//!
//! Its eigendecomposition `C = V Λ Vᵀ` gives the principal axes (columns of
//! `V`, stored here as rows of [`Pca::components`]) and the variance along each
//! axis (`Λ`, [`Pca::explained_variance`]). Components are sorted by
//! decreasing variance; `explained_variance_ratio[j] = λⱼ / tr(C)`.
//! [`Pca::transform`] maps `x ↦ Vₖᵀ (x − μ)`.
//!
//! # Implementation
//!
//! * Two passes over the rows (mean, then centred scatter matrix) for
//!   numerical stability. Each pass reduces fixed blocks of rows in parallel
//!   (rayon) and sums the per-block partials in block order, so the result is
//!   bit-identical for any thread count. The per-block scatter `CᵦᵀCᵦ` is a
//!   faer matrix product, so `N` in the millions with `D ≤ 64` is cheap:
//!   memory is `O(D²)` per block, never `O(N·D)` beyond the input itself.
//! * The `D × D` symmetric eigenproblem is solved by faer (sequential).
//! * **Sign convention**: eigenvectors are defined up to sign; each component
//!   is flipped so that its largest-magnitude loading (first one on ties) is
//!   positive. Results are therefore reproducible across runs and machines.
//!   Components with (numerically) equal variances span a subspace whose basis
//!   is not unique; only that subspace is meaningful.
//!
//! # Example
//!
//! ```
//! use cryoforge_analysis::{MatrixView, Pca};
//! // Points on the line y = 2x: all the variance lies along (1, 2)/√5.
//! let data: Vec<f64> = (0..10).flat_map(|i| [i as f64, 2.0 * i as f64]).collect();
//! let x = MatrixView::new(&data, 10, 2).unwrap();
//! let pca = Pca::fit(x, None).unwrap();
//! assert!((pca.explained_variance_ratio()[0] - 1.0).abs() < 1e-12);
//! let pc1 = pca.component(0);
//! assert!((pc1[1] - 2.0 / 5f64.sqrt()).abs() < 1e-12);
//! let coords = pca.transform(x).unwrap();
//! assert_eq!(coords.n_cols(), 2);
//! ```

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, AnalysisError, Result};
use crate::matrix::{check_vector, Matrix, MatrixView, Real, CHUNK_ROWS};

/// A fitted PCA model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    mean: Vec<f64>,
    /// `k × D`, row `j` = unit principal axis `j`.
    components: Matrix,
    explained_variance: Vec<f64>,
    explained_variance_ratio: Vec<f64>,
    total_variance: f64,
    n_samples: usize,
}

impl Pca {
    /// Fits PCA to the rows of `x`, keeping `n_components` components
    /// (default: all `D`).
    ///
    /// Errors: empty input, fewer than 2 rows, non-finite values (naming the
    /// row), `n_components` outside `1..=D`, constant data (zero total
    /// variance), or an eigensolver failure.
    pub fn fit<T: Real>(x: MatrixView<'_, T>, n_components: Option<usize>) -> Result<Self> {
        x.validate("PCA input")?;
        let (n, d) = (x.n_rows(), x.n_cols());
        if n < 2 {
            return Err(AnalysisError::TooFewRows { what: "PCA", needed: 2, got: n });
        }
        let k = n_components.unwrap_or(d);
        if k == 0 || k > d {
            return Err(invalid("n_components", format!("must be in 1..={d} (the data dimension), got {k}")));
        }
        let mean = column_means(x);
        let cov = covariance(x, &mean);
        let total_variance: f64 = (0..d).map(|i| cov[(i, i)]).sum();
        if total_variance <= 0.0 || !total_variance.is_finite() {
            return Err(AnalysisError::ZeroVariance { what: "PCA input" });
        }
        let (values, vectors) = symmetric_eigen(cov.as_ref())?;
        // faer returns ascending eigenvalues: walk them backwards.
        let mut components = Matrix::zeros(k, d);
        let mut explained_variance = Vec::with_capacity(k);
        for j in 0..k {
            let src = d - 1 - j;
            explained_variance.push(values[src].max(0.0));
            let row = components.row_mut(j);
            for i in 0..d {
                row[i] = vectors[(i, src)];
            }
            fix_sign(row);
        }
        let explained_variance_ratio = explained_variance.iter().map(|v| v / total_variance).collect();
        Ok(Self {
            mean,
            components,
            explained_variance,
            explained_variance_ratio,
            total_variance,
            n_samples: n,
        })
    }

    /// Number of components kept.
    pub fn n_components(&self) -> usize {
        self.components.n_rows()
    }

    /// Input dimension `D`.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Number of rows the model was fitted on.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// Column means `μ` (length `D`).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Principal axes as a `k × D` matrix (rows are orthonormal).
    pub fn components(&self) -> &Matrix {
        &self.components
    }

    /// Principal axis `j` (unit vector of length `D`). Panics if `j ≥ k`.
    pub fn component(&self, j: usize) -> &[f64] {
        self.components.row(j)
    }

    /// Variance along each kept component (eigenvalues of the sample
    /// covariance, `N − 1` normalisation), decreasing.
    pub fn explained_variance(&self) -> &[f64] {
        &self.explained_variance
    }

    /// `explained_variance / total variance` (sums to 1 when all `D`
    /// components are kept).
    pub fn explained_variance_ratio(&self) -> &[f64] {
        &self.explained_variance_ratio
    }

    /// Total variance `tr(C)` of the data.
    pub fn total_variance(&self) -> f64 {
        self.total_variance
    }

    /// Projects every row of `x` onto the components: an `N × k` matrix of PC
    /// coordinates. Parallel over row blocks.
    pub fn transform<T: Real>(&self, x: MatrixView<'_, T>) -> Result<Matrix> {
        x.validate("PCA transform input")?;
        self.check_dim(x.n_cols())?;
        let (d, k) = (self.n_features(), self.n_components());
        let mut out = Matrix::zeros(x.n_rows(), k);
        let comps = MatRef::from_row_major_slice(self.components.as_slice(), k, d);
        out.as_mut_slice().par_chunks_mut(CHUNK_ROWS * k).zip(x.par_row_chunks()).for_each(
            |(dst, (_, src))| {
                let rows = src.len() / d;
                let centred = self.centre_block(src);
                let c = MatRef::from_row_major_slice(&centred, rows, d);
                let dst = MatMut::from_row_major_slice_mut(dst, rows, k);
                matmul(dst, Accum::Replace, c, comps.transpose(), 1.0, Par::Seq);
            },
        );
        Ok(out)
    }

    /// PC coordinates of a single point.
    pub fn transform_row<T: Real>(&self, row: &[T]) -> Result<Vec<f64>> {
        let r: Vec<f64> = row.iter().map(|v| v.to_f64()).collect();
        check_vector("PCA transform_row", &r, self.n_features())?;
        Ok((0..self.n_components())
            .map(|j| {
                let c = self.component(j);
                r.iter().zip(&self.mean).zip(c).map(|((x, m), v)| (x - m) * v).sum()
            })
            .collect())
    }

    /// Maps PC coordinates (length ≤ `k`; missing trailing coordinates are 0)
    /// back to the input space: `μ + Σⱼ cⱼ vⱼ`.
    pub fn inverse_transform_row(&self, coords: &[f64]) -> Result<Vec<f64>> {
        if coords.len() > self.n_components() {
            return Err(AnalysisError::DimensionMismatch {
                what: "PCA inverse_transform_row coordinates",
                expected: self.n_components(),
                got: coords.len(),
            });
        }
        check_vector("PCA inverse_transform_row", coords, coords.len())?;
        let mut out = self.mean.clone();
        for (j, c) in coords.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(self.component(j)) {
                *o += c * v;
            }
        }
        Ok(out)
    }

    fn check_dim(&self, got: usize) -> Result<()> {
        if got != self.n_features() {
            return Err(AnalysisError::DimensionMismatch {
                what: "PCA input columns",
                expected: self.n_features(),
                got,
            });
        }
        Ok(())
    }

    fn centre_block<T: Real>(&self, src: &[T]) -> Vec<f64> {
        centre_block(src, &self.mean)
    }
}

/// Copies a block of rows to `f64`, subtracting the mean.
pub(crate) fn centre_block<T: Real>(src: &[T], mean: &[f64]) -> Vec<f64> {
    src.chunks(mean.len()).flat_map(|r| r.iter().zip(mean).map(|(x, m)| x.to_f64() - m)).collect()
}

/// Column means by a deterministic blocked reduction.
pub(crate) fn column_means<T: Real>(x: MatrixView<'_, T>) -> Vec<f64> {
    let d = x.n_cols();
    let partials: Vec<Vec<f64>> = x
        .par_row_chunks()
        .map(|(_, block)| {
            let mut s = vec![0.0; d];
            for r in block.chunks(d) {
                for (acc, v) in s.iter_mut().zip(r) {
                    *acc += v.to_f64();
                }
            }
            s
        })
        .collect();
    let mut mean = vec![0.0; d];
    for p in &partials {
        for (m, v) in mean.iter_mut().zip(p) {
            *m += v;
        }
    }
    let n = x.n_rows() as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

/// Sample covariance (`N − 1` normalisation) by a blocked faer `CᵀC`.
fn covariance<T: Real>(x: MatrixView<'_, T>, mean: &[f64]) -> Mat<f64> {
    let d = x.n_cols();
    let partials: Vec<Mat<f64>> = x
        .par_row_chunks()
        .map(|(_, block)| {
            let rows = block.len() / d;
            let centred = centre_block(block, mean);
            let c = MatRef::from_row_major_slice(&centred, rows, d);
            let mut g = Mat::<f64>::zeros(d, d);
            matmul(g.as_mut(), Accum::Replace, c.transpose(), c, 1.0, Par::Seq);
            g
        })
        .collect();
    let mut cov = Mat::<f64>::zeros(d, d);
    for p in &partials {
        cov += p;
    }
    let scale = 1.0 / (x.n_rows() as f64 - 1.0);
    // Symmetrise exactly (the product is symmetric only up to rounding).
    Mat::from_fn(d, d, |i, j| 0.5 * (cov[(i, j)] + cov[(j, i)]) * scale)
}

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix,
/// computed sequentially so the result does not depend on the thread pool.
pub(crate) fn symmetric_eigen(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let mut u = Mat::<f64>::zeros(n, n);
    let mut s = Diag::<f64>::zeros(n);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    ));
    self_adjoint_evd(a, s.as_mut(), Some(u.as_mut()), Par::Seq, MemStack::new(&mut buf), Default::default())
        .map_err(|_| AnalysisError::EigenNoConvergence)?;
    let values = (0..n).map(|i| s.column_vector()[i]).collect();
    Ok((values, u))
}

/// Flips `v` so that its largest-magnitude entry (first on ties) is positive.
fn fix_sign(v: &mut [f64]) {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i].abs() > v[best].abs() {
            best = i;
        }
    }
    if v[best] < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::normal;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Rotation of R⁴ made of two Givens rotations.
    fn axes() -> [[f64; 4]; 4] {
        let (c1, s1) = (0.6, 0.8);
        let (c2, s2) = (0.28, 0.96);
        [[c1, s1, 0.0, 0.0], [-s1, c1, 0.0, 0.0], [0.0, 0.0, c2, s2], [0.0, 0.0, -s2, c2]]
    }

    #[test]
    fn recovers_known_axes_and_variances() {
        let sd = [5.0, 3.0, 1.5, 0.5];
        let ax = axes();
        let n = 40_000;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut data = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let z: Vec<f64> = sd.iter().map(|s| s * normal(&mut rng)).collect();
            for c in 0..4 {
                let v: f64 = (0..4).map(|a| z[a] * ax[a][c]).sum();
                data.push((v + 10.0 * c as f64) as f32);
            }
        }
        let x = MatrixView::new(&data, n, 4).unwrap();
        let pca = Pca::fit(x, None).unwrap();
        for j in 0..4 {
            let want = sd[j] * sd[j];
            let got = pca.explained_variance()[j];
            assert!((got / want - 1.0).abs() < 0.03, "var {j}: {got} vs {want}");
            let dot: f64 = (0..4).map(|c| pca.component(j)[c] * ax[j][c]).sum();
            assert!(dot.abs() > 0.999, "axis {j}: |cos| = {}", dot.abs());
        }
        let ratio_sum: f64 = pca.explained_variance_ratio().iter().sum();
        assert!((ratio_sum - 1.0).abs() < 1e-12);
        for (m, want) in pca.mean().iter().zip([0.0, 10.0, 20.0, 30.0]) {
            assert!((m - want).abs() < 0.1);
        }
        // Orthonormal rows.
        for i in 0..4 {
            for j in 0..4 {
                let dot: f64 = (0..4).map(|c| pca.component(i)[c] * pca.component(j)[c]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "<v{i}, v{j}> = {dot}");
            }
        }
        // Sign convention: largest |loading| positive.
        for j in 0..4 {
            let c = pca.component(j);
            let m = c.iter().cloned().fold(0.0f64, |a, b| a.max(b.abs()));
            assert!(c.contains(&m));
        }
        // Transformed coordinates: zero mean, variances = eigenvalues, uncorrelated.
        let t = pca.transform(x).unwrap();
        let tp = Pca::fit(t.view(), None).unwrap();
        for j in 0..4 {
            let rel = tp.explained_variance()[j] / pca.explained_variance()[j] - 1.0;
            assert!(rel.abs() < 1e-4, "transformed variance {j}: {rel}");
            assert!(tp.mean()[j].abs() < 1e-3);
        }
        // transform_row agrees with the blocked transform.
        let r = pca.transform_row(x.row(123)).unwrap();
        for j in 0..4 {
            assert!((r[j] - t.row(123)[j]).abs() < 1e-9);
        }
        // inverse of the full transform reproduces the point.
        let back = pca.inverse_transform_row(&r).unwrap();
        for c in 0..4 {
            assert!((back[c] - x.row(123)[c] as f64).abs() < 1e-4);
        }
    }

    #[test]
    fn thread_count_does_not_change_result() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let data: Vec<f64> = (0..n * 8).map(|_| normal(&mut rng) * 3.0 + 1.0).collect();
        let x = MatrixView::new(&data, n, 8).unwrap();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| Pca::fit(x, Some(3)).unwrap())
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn bad_input_is_reported() {
        let d = [1.0f64, 2.0, 3.0, f64::NAN, 5.0, 6.0];
        let x = MatrixView::new(&d, 3, 2).unwrap();
        assert_eq!(Pca::fit(x, None), Err(AnalysisError::NonFinite { what: "PCA input", row: 1, col: 1 }));
        let one = MatrixView::new(&d[..2], 1, 2).unwrap();
        assert!(matches!(Pca::fit(one, None), Err(AnalysisError::TooFewRows { .. })));
        let ok = [1.0f64, 2.0, 3.0, 5.0];
        let x = MatrixView::new(&ok, 2, 2).unwrap();
        assert!(matches!(Pca::fit(x, Some(3)), Err(AnalysisError::InvalidParameter { .. })));
        let constant = [1.0f64; 8];
        let x = MatrixView::new(&constant, 4, 2).unwrap();
        assert!(matches!(Pca::fit(x, None), Err(AnalysisError::ZeroVariance { .. })));
        let pca = Pca::fit(MatrixView::new(&ok, 2, 2).unwrap(), None).unwrap();
        let wrong = [1.0f64, 2.0, 3.0];
        assert!(matches!(
            pca.transform(MatrixView::new(&wrong, 1, 3).unwrap()),
            Err(AnalysisError::DimensionMismatch { .. })
        ));
    }
}
