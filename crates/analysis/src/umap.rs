//! UMAP: Uniform Manifold Approximation and Projection (McInnes, Healy &
//! Melville 2018, arXiv:1802.03426), implemented from the paper.
//!
//! # Algorithm
//!
//! 1. **k-NN graph** of the rows (`k = n_neighbors`, the point itself not
//!    counted): exact brute force for `N ≤ exact_knn_max` (default 20 000;
//!    `O(N²)` time, `O(N·k)` memory), NN-descent above (see [`crate::knn`]).
//! 2. **Fuzzy simplicial set.** For each point `i`, `ρᵢ` is the distance to
//!    its nearest neighbour (local connectivity 1) and `σᵢ` is found by binary
//!    search so that `Σⱼ exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ) = log₂ k` (floored at
//!    10⁻³ × the mean neighbour distance so duplicates cannot drive it to
//!    0). Directed memberships `wᵢⱼ = exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ)` are
//!    symmetrised by the fuzzy union `w = a + b − a·b`.
//! 3. **Initialisation** (documented choice): PCA of the input to
//!    `n_components` dimensions (instead of the paper's spectral embedding;
//!    PCA is cheap for millions of rows and deterministic), rescaled so the
//!    largest coordinate is 10, plus 10⁻⁴ seeded noise, then each axis is
//!    min–max scaled to `[0, 10]`. [`UmapInit::Random`] draws uniformly (and
//!    is the fallback when PCA is impossible, e.g. constant input).
//! 4. **Layout by SGD** on the fuzzy cross-entropy with the low-dimensional
//!    similarity `φ(y, y') = 1 / (1 + a‖y − y'‖^{2b})`; `(a, b)` are fitted by
//!    least squares ([`fit_ab`]) to the target curve `1` for `d < min_dist`
//!    and `exp(−(d − min_dist)/spread)` beyond. Each edge is sampled with
//!    probability proportional to its weight (edge `e` is sampled at epoch `t`
//!    iff `⌊t/εₑ⌋ > ⌊(t−1)/εₑ⌋` with `εₑ = w_max/wₑ`; edges with
//!    `w < w_max/n_epochs` are dropped). A sample pulls the two ends together
//!    with gradient `−2ab d^{2(b−1)} / (1 + a d^{2b}) · (yᵢ − yⱼ)`, then
//!    `negative_sample_rate` (5) uniformly drawn points push `yᵢ` away with
//!    `2γb / ((0.001 + d²)(1 + a d^{2b})) · (yᵢ − yₖ)`. Gradients are clipped
//!    to ±4 per coordinate, and the learning rate decays linearly from
//!    `learning_rate` to 0 over `n_epochs` (default 500 for `N ≤ 10 000`,
//!    otherwise 200). Coordinates are `f32` during the optimisation.
//!
//! # Reproducibility and cost
//!
//! Every stage is deterministic for a given seed: the k-NN, memberships and
//! PCA use fixed-order reductions, and the output is bit-identical whatever
//! the rayon thread count. Two optimisers ([`SgdMode`]):
//!
//! * **Sequential** (default for `N ≤ 20 000`): the paper's SGD, edges in
//!   order, both ends moved in place, one ChaCha8 stream for the negatives.
//!   `O(n_epochs · edges · (1 + neg_rate))` on one core.
//! * **Parallel** (default above): Jacobi-style — within an epoch each point
//!   moves only itself, reading every other point from the snapshot taken at
//!   the start of the epoch, with negatives from a counter-based stream keyed
//!   by `(seed, epoch, point)`. The tail pull of the sequential scheme is
//!   supplied by the reverse edge (the graph is symmetric), so the attractive
//!   step is doubled. Scales with the thread count and stays deterministic.
//!
//! ```
//! use cryoforge_analysis::{umap, MatrixView, UmapOptions};
//! // Two tight groups on a line.
//! let pts: Vec<f64> = (0..40).map(|i| if i < 20 { i as f64 * 0.01 } else { 5.0 + i as f64 * 0.01 }).collect();
//! let x = MatrixView::new(&pts, 40, 1).unwrap();
//! let opts = UmapOptions { n_neighbors: 5, n_epochs: Some(50), ..Default::default() };
//! let u = umap(x, &opts).unwrap();
//! assert_eq!(u.embedding.n_rows(), 40);
//! assert_eq!(u.embedding.n_cols(), 2);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, AnalysisError, Result};
use crate::knn::{exact_knn, nn_descent, Knn, NnDescentOptions};
use crate::layout::{optimise_parallel, optimise_sequential, Graph, SgdParams};
use crate::matrix::{Matrix, MatrixView, Real};
use crate::pca::Pca;

/// How the k-NN graph is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KnnMethod {
    /// Exact for `N ≤ exact_knn_max`, NN-descent above.
    Auto,
    /// Brute force (errors above `exact_knn_max`).
    Exact,
    /// NN-descent (approximate).
    NnDescent,
}

/// Layout optimiser; both are bit-reproducible for a given seed (see the
/// module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SgdMode {
    /// Sequential for `N ≤ 20 000`, parallel above.
    Auto,
    /// The paper's sequential SGD (both edge ends move in place).
    Sequential,
    /// Deterministic parallel (Jacobi-style) SGD.
    Parallel,
}

/// Above this many points [`SgdMode::Auto`] uses the parallel optimiser.
const PARALLEL_SGD_MIN_N: usize = 20_000;

/// Initial layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UmapInit {
    /// Leading principal components of the input (default).
    Pca,
    /// Uniform in `[0, 10]^n_components`.
    Random,
}

/// Parameters of [`umap`]; defaults follow the paper / common usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UmapOptions {
    /// Neighbours per point `k` (excluding the point itself). Default 15.
    pub n_neighbors: usize,
    /// Embedding dimension. Default 2.
    pub n_components: usize,
    /// Minimum distance between embedded points. Default 0.1.
    pub min_dist: f64,
    /// Scale of the embedded clusters. Default 1.0.
    pub spread: f64,
    /// SGD epochs; `None` → 500 for `N ≤ 10 000`, else 200.
    pub n_epochs: Option<usize>,
    /// Initial SGD learning rate (decays linearly to 0). Default 1.0.
    pub learning_rate: f64,
    /// Negative samples per positive sample. Default 5.
    pub negative_sample_rate: usize,
    /// Weight `γ` of the repulsive term. Default 1.0.
    pub repulsion_strength: f64,
    /// Initial layout. Default [`UmapInit::Pca`].
    pub init: UmapInit,
    /// k-NN construction. Default [`KnnMethod::Auto`].
    pub knn: KnnMethod,
    /// Largest `N` for the exact `O(N²)` k-NN. Default 20 000.
    pub exact_knn_max: usize,
    /// Layout optimiser. Default [`SgdMode::Auto`].
    pub sgd: SgdMode,
    /// Seed of every random choice. Default 0.
    pub seed: u64,
}

impl Default for UmapOptions {
    fn default() -> Self {
        Self {
            n_neighbors: 15,
            n_components: 2,
            min_dist: 0.1,
            spread: 1.0,
            n_epochs: None,
            learning_rate: 1.0,
            negative_sample_rate: 5,
            repulsion_strength: 1.0,
            init: UmapInit::Pca,
            knn: KnnMethod::Auto,
            exact_knn_max: 20_000,
            sgd: SgdMode::Auto,
            seed: 0,
        }
    }
}

/// A fitted UMAP embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Umap {
    /// `N × n_components` embedding.
    pub embedding: Matrix,
    /// Fitted curve parameter `a`.
    pub a: f64,
    /// Fitted curve parameter `b`.
    pub b: f64,
    /// Epochs run.
    pub n_epochs: usize,
    /// k-NN method actually used (`Auto` resolved).
    pub knn_method: KnnMethod,
    /// SGD mode actually used (`Auto` resolved).
    pub sgd: SgdMode,
    /// Directed edges of the symmetrised fuzzy graph used by the SGD.
    pub n_edges: usize,
}

/// Computes the UMAP embedding of the rows of `x`. See the module docs.
///
/// Errors: empty/non-finite input, `n_neighbors < 2` or `≥ N`,
/// `n_components = 0`, invalid `min_dist`/`spread`/`learning_rate`/
/// `repulsion_strength`, `n_epochs = Some(0)`, or the exact k-NN requested
/// for `N > exact_knn_max`.
pub fn umap<T: Real>(x: MatrixView<'_, T>, opts: &UmapOptions) -> Result<Umap> {
    x.validate("UMAP input")?;
    check_options(x.n_rows(), opts)?;
    let n = x.n_rows();
    let (a, b) = fit_ab(opts.spread, opts.min_dist)?;
    let (knn, knn_method) = build_knn(x, opts)?;
    let memberships = fuzzy_memberships(&knn);
    let n_epochs = opts.n_epochs.unwrap_or(if n <= 10_000 { 500 } else { 200 });
    let graph = symmetrise(&knn, &memberships, n_epochs);
    let init = initialise(x, opts)?;
    let mut y: Vec<f32> = init.as_slice().iter().map(|&v| v as f32).collect();
    let params = SgdParams {
        a: a as f32,
        b: b as f32,
        gamma: opts.repulsion_strength as f32,
        lr: opts.learning_rate,
        neg_rate: opts.negative_sample_rate,
        n_epochs,
        seed: opts.seed,
    };
    let sgd = match opts.sgd {
        SgdMode::Auto if n <= PARALLEL_SGD_MIN_N => SgdMode::Sequential,
        SgdMode::Auto => SgdMode::Parallel,
        m => m,
    };
    if sgd == SgdMode::Sequential {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(1);
        optimise_sequential(&mut y, opts.n_components, &graph, &params, &mut rng);
    } else {
        optimise_parallel(&mut y, opts.n_components, &graph, &params);
    }
    let embedding = Matrix::new(y.iter().map(|&v| f64::from(v)).collect(), n, opts.n_components)?;
    Ok(Umap { embedding, a, b, n_epochs, knn_method, sgd, n_edges: graph.tails.len() })
}

fn check_options(n: usize, o: &UmapOptions) -> Result<()> {
    if o.n_neighbors < 2 || o.n_neighbors >= n {
        return Err(AnalysisError::KTooLarge {
            what: "UMAP n_neighbors",
            k: o.n_neighbors,
            n,
            constraint: "2 ≤ n_neighbors ≤ n − 1",
        });
    }
    if o.n_components == 0 {
        return Err(invalid("n_components", "must be at least 1"));
    }
    if !(o.learning_rate > 0.0 && o.learning_rate.is_finite()) {
        return Err(invalid("learning_rate", "must be finite and > 0"));
    }
    if !(o.repulsion_strength >= 0.0 && o.repulsion_strength.is_finite()) {
        return Err(invalid("repulsion_strength", "must be finite and ≥ 0"));
    }
    if n > u32::MAX as usize {
        return Err(invalid("input", format!("UMAP supports at most {} points, got {n}", u32::MAX)));
    }
    if o.n_epochs == Some(0) {
        return Err(invalid("n_epochs", "must be at least 1"));
    }
    Ok(())
}

fn build_knn<T: Real>(x: MatrixView<'_, T>, o: &UmapOptions) -> Result<(Knn, KnnMethod)> {
    let n = x.n_rows();
    let method = match o.knn {
        KnnMethod::Auto if n <= o.exact_knn_max => KnnMethod::Exact,
        KnnMethod::Auto => KnnMethod::NnDescent,
        m => m,
    };
    let knn = match method {
        KnnMethod::Exact if n > o.exact_knn_max => {
            return Err(AnalysisError::ExactKnnTooLarge { n, cap: o.exact_knn_max })
        }
        KnnMethod::Exact => exact_knn(x, o.n_neighbors)?,
        _ => {
            let nd = NnDescentOptions { seed: o.seed, ..Default::default() };
            nn_descent(x, o.n_neighbors, &nd)?
        }
    };
    Ok((knn, method))
}

/// Fits `(a, b)` of `1/(1 + a d^{2b})` to the UMAP target curve by
/// Levenberg–Marquardt least squares on 300 points of `[0, 3·spread]`.
///
/// For the defaults (`spread = 1`, `min_dist = 0.1`) this gives
/// `a ≈ 1.577, b ≈ 0.895`. Errors unless `spread > 0` and
/// `0 ≤ min_dist ≤ spread` (both finite).
pub fn fit_ab(spread: f64, min_dist: f64) -> Result<(f64, f64)> {
    if !(spread > 0.0 && spread.is_finite()) {
        return Err(invalid("spread", format!("must be finite and > 0, got {spread}")));
    }
    if !(min_dist >= 0.0 && min_dist <= spread) {
        return Err(invalid(
            "min_dist",
            format!("must satisfy 0 ≤ min_dist ≤ spread = {spread}, got {min_dist}"),
        ));
    }
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let ys: Vec<f64> =
        xs.iter().map(|&x| if x < min_dist { 1.0 } else { (-(x - min_dist) / spread).exp() }).collect();
    let sse = |a: f64, b: f64| -> f64 {
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| {
                let r = 1.0 / (1.0 + a * x.powf(2.0 * b)) - y;
                r * r
            })
            .sum()
    };
    let (mut a, mut b, mut lambda) = (1.0, 1.0, 1e-3);
    let mut err = sse(a, b);
    for _ in 0..500 {
        // Normal equations J^T J δ = −J^T r for the two parameters.
        let (mut jaa, mut jab, mut jbb, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            let p = if x > 0.0 { x.powf(2.0 * b) } else { 0.0 };
            let den = 1.0 + a * p;
            let r = 1.0 / den - y;
            let da = -p / (den * den);
            let db = if x > 0.0 { -a * p * 2.0 * x.ln() / (den * den) } else { 0.0 };
            jaa += da * da;
            jab += da * db;
            jbb += db * db;
            ga += da * r;
            gb += db * r;
        }
        let (maa, mbb) = (jaa * (1.0 + lambda), jbb * (1.0 + lambda));
        let det = maa * mbb - jab * jab;
        if det.abs() < 1e-300 {
            break;
        }
        let step_a = -(mbb * ga - jab * gb) / det;
        let step_b = -(maa * gb - jab * ga) / det;
        let (na, nb) = (a + step_a, b + step_b);
        let new_err = if na > 0.0 && nb > 0.0 { sse(na, nb) } else { f64::INFINITY };
        if new_err < err {
            let done = (err - new_err) <= 1e-15 * err.max(1e-300);
            (a, b, err, lambda) = (na, nb, new_err, lambda * 0.1);
            if done {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e12 {
                break;
            }
        }
    }
    Ok((a, b))
}

/// Smooth-kNN memberships `wᵢⱼ` (row-major like the k-NN lists).
fn fuzzy_memberships(knn: &Knn) -> Vec<f64> {
    let k = knn.k();
    let target = (k as f64).log2();
    let n = knn.n_points();
    let global_mean = (0..n).map(|i| knn.distances(i).iter().sum::<f64>()).sum::<f64>() / (n * k) as f64;
    let mut w = vec![0.0; n * k];
    w.par_chunks_mut(k).enumerate().for_each(|(i, wi)| {
        let d = knn.distances(i);
        let rho = d.iter().copied().find(|&v| v > 0.0).unwrap_or(0.0);
        let sigma = find_sigma(d, rho, target);
        let mean_i = d.iter().sum::<f64>() / k as f64;
        let floor = 1e-3 * if rho > 0.0 { mean_i } else { global_mean };
        let sigma = sigma.max(floor).max(f64::MIN_POSITIVE);
        for (wij, &dij) in wi.iter_mut().zip(d) {
            *wij = (-(dij - rho).max(0.0) / sigma).exp();
        }
    });
    w
}

/// Binary search for `σ` with `Σⱼ exp(−max(0, dⱼ − ρ)/σ) = target`.
fn find_sigma(d: &[f64], rho: f64, target: f64) -> f64 {
    let (mut lo, mut hi, mut mid) = (0.0, f64::INFINITY, 1.0);
    for _ in 0..64 {
        let psum: f64 = d.iter().map(|&dj| (-(dj - rho).max(0.0) / mid).exp()).sum();
        if (psum - target).abs() < 1e-5 {
            break;
        }
        if psum > target {
            hi = mid;
            mid = 0.5 * (lo + hi);
        } else {
            lo = mid;
            mid = if hi.is_finite() { 0.5 * (lo + hi) } else { 2.0 * mid };
        }
    }
    mid
}

/// Fuzzy union `a + b − ab` of the directed memberships, as a CSR graph
/// sorted by (head, tail) holding both directions of every edge; drops edges
/// that would never be sampled in `n_epochs` (`w < w_max / n_epochs`).
///
/// Memory is `O(N·k)`: the transpose is built by counting, then each row
/// merges its forward list with its reverse list (both sorted by index).
fn symmetrise(knn: &Knn, w: &[f64], n_epochs: usize) -> Graph {
    let (n, k) = (knn.n_points(), knn.k());
    let mut rptr = vec![0usize; n + 1];
    for i in 0..n {
        knn.indices(i).iter().for_each(|&j| rptr[j + 1] += 1);
    }
    for j in 0..n {
        rptr[j + 1] += rptr[j];
    }
    let mut cursor = rptr.clone();
    let mut rev = vec![(0u32, 0.0f64); n * k];
    for i in 0..n {
        for (&j, &wij) in knn.indices(i).iter().zip(&w[i * k..(i + 1) * k]) {
            rev[cursor[j]] = (i as u32, wij);
            cursor[j] += 1;
        }
    }
    let rows: Vec<Vec<(u32, f64)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut fwd: Vec<(u32, f64)> =
                knn.indices(i).iter().map(|&j| j as u32).zip(w[i * k..(i + 1) * k].iter().copied()).collect();
            fwd.sort_unstable_by_key(|e| e.0);
            merge_union(&fwd, &rev[rptr[i]..rptr[i + 1]])
        })
        .collect();
    let w_max = rows.iter().flatten().map(|e| e.1).fold(0.0, f64::max);
    let cut = w_max / n_epochs as f64;
    let mut g = Graph { indptr: Vec::with_capacity(n + 1), tails: Vec::new(), weights: Vec::new() };
    g.indptr.push(0);
    for row in rows {
        for (j, v) in row.into_iter().filter(|e| e.1 >= cut && e.1 > 0.0) {
            g.tails.push(j);
            g.weights.push(v as f32);
        }
        g.indptr.push(g.tails.len());
    }
    g
}

/// Merges two index-sorted membership lists with the fuzzy union.
fn merge_union(a: &[(u32, f64)], b: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut p, mut q) = (0, 0);
    while p < a.len() || q < b.len() {
        let take_a = q == b.len() || (p < a.len() && a[p].0 < b[q].0);
        let take_b = p == a.len() || (q < b.len() && b[q].0 < a[p].0);
        if take_a {
            out.push(a[p]);
            p += 1;
        } else if take_b {
            out.push(b[q]);
            q += 1;
        } else {
            let (x, y) = (a[p].1, b[q].1);
            out.push((a[p].0, x + y - x * y));
            p += 1;
            q += 1;
        }
    }
    out
}

/// Initial layout (PCA or random), scaled per axis to `[0, 10]`.
fn initialise<T: Real>(x: MatrixView<'_, T>, o: &UmapOptions) -> Result<Matrix> {
    let (n, dim) = (x.n_rows(), o.n_components);
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    rng.set_stream(0);
    let mut y = Matrix::zeros(n, dim);
    let n_pc = dim.min(x.n_cols());
    let pca_coords = match o.init {
        UmapInit::Pca => Pca::fit(x, Some(n_pc)).and_then(|p| p.transform(x)).ok(),
        UmapInit::Random => None,
    };
    if let Some(pc) = pca_coords {
        let max_abs = pc.as_slice().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = if max_abs > 0.0 { 10.0 / max_abs } else { 1.0 };
        for i in 0..n {
            for c in 0..dim {
                let base = if c < n_pc { pc.row(i)[c] * scale } else { 0.0 };
                let noise = if c < n_pc { 1e-4 } else { 10.0 };
                y.row_mut(i)[c] = base + noise * (2.0 * rng.gen::<f64>() - 1.0);
            }
        }
    } else {
        y.as_mut_slice().iter_mut().for_each(|v| *v = 10.0 * rng.gen::<f64>());
    }
    for c in 0..dim {
        let (lo, hi) = (0..n).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), i| {
            (lo.min(y.row(i)[c]), hi.max(y.row(i)[c]))
        });
        let span = if hi > lo { hi - lo } else { 1.0 };
        (0..n).for_each(|i| y.row_mut(i)[c] = 10.0 * (y.row(i)[c] - lo) / span);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::{kmeans, KMeansOptions};
    use crate::metrics::{adjusted_rand_index, trustworthiness};
    use crate::testutil::blobs;

    #[test]
    fn ab_fit_matches_reference_values() {
        let (a, b) = fit_ab(1.0, 0.1).unwrap();
        eprintln!("fit_ab(spread 1, min_dist 0.1): a = {a:.5}, b = {b:.5}");
        assert!((a - 1.577).abs() < 0.01 && (b - 0.895).abs() < 0.005, "a={a} b={b}");
        let (a, b) = fit_ab(1.0, 0.5).unwrap();
        assert!(a > 0.0 && b > 0.0 && a < 1.577, "a={a} b={b}");
        assert!(fit_ab(1.0, 2.0).is_err());
        assert!(fit_ab(0.0, 0.0).is_err());
    }

    #[test]
    fn sigma_search_hits_target() {
        let d = [0.5, 0.7, 0.9, 1.4, 2.0, 2.2, 3.0, 3.1];
        let s = find_sigma(&d, 0.5, 3.0);
        let psum: f64 = d.iter().map(|&x| (-(x - 0.5f64).max(0.0) / s).exp()).sum();
        assert!((psum - 3.0).abs() < 1e-4, "{psum}");
    }

    #[test]
    fn graph_is_symmetric_fuzzy_union() {
        let (data, _) = blobs(2, 30, 3, 5.0, 1.0, 4);
        let x = MatrixView::new(&data, 60, 3).unwrap();
        let knn = exact_knn(x, 5).unwrap();
        let w = fuzzy_memberships(&knn);
        for i in 0..60 {
            // Nearest neighbour has membership 1; the row sums to log2(k).
            assert!((w[i * 5] - 1.0).abs() < 1e-12);
            let s: f64 = w[i * 5..i * 5 + 5].iter().sum();
            assert!((s - 5f64.log2()).abs() < 1e-3, "row {i}: {s}");
        }
        let g = symmetrise(&knn, &w, 1_000_000);
        let lookup = |i: usize, j: usize| {
            (g.indptr[i]..g.indptr[i + 1]).find(|&e| g.tails[e] as usize == j).map(|e| g.weights[e])
        };
        for i in 0..60 {
            let tails = &g.tails[g.indptr[i]..g.indptr[i + 1]];
            assert!(tails.windows(2).all(|t| t[0] < t[1]), "row {i} not sorted");
            for e in g.indptr[i]..g.indptr[i + 1] {
                assert_eq!(lookup(g.tails[e] as usize, i), Some(g.weights[e]));
            }
            // Every directed k-NN edge is present.
            for &j in knn.indices(i) {
                assert!(lookup(i, j).is_some());
            }
        }
        let dir =
            |i: usize, j: usize| knn.indices(i).iter().position(|&t| t == j).map_or(0.0, |p| w[i * 5 + p]);
        let (i, j) = (0, knn.indices(0)[0]);
        let (p, q) = (dir(i, j), dir(j, i));
        assert!((f64::from(lookup(i, j).unwrap()) - (p + q - p * q)).abs() < 1e-7);
    }

    #[test]
    fn blobs_preserved_and_reproducible() {
        let (data, truth) = blobs(5, 200, 8, 10.0, 1.0, 21);
        let x = MatrixView::new(&data, 1000, 8).unwrap();
        let opts = UmapOptions { seed: 7, ..Default::default() };
        let run = |t, o: &UmapOptions| {
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| umap(x, o).unwrap())
        };
        let u1 = run(1, &opts);
        let u2 = run(3, &opts);
        assert_eq!(u1, u2, "same seed must give bit-identical output");
        assert_eq!(u1.knn_method, KnnMethod::Exact);
        assert_eq!(u1.n_epochs, 500);
        let y = u1.embedding.view();
        let t = trustworthiness(x, y, 10).unwrap();
        assert!(t >= 0.9, "trustworthiness {t}");
        let km = kmeans(y, &KMeansOptions::new(5)).unwrap();
        let ari = adjusted_rand_index(&km.labels, &truth).unwrap();
        assert_eq!(ari, 1.0, "clusters not separated in the embedding");
        let other = umap(x, &UmapOptions { seed: 8, ..opts.clone() }).unwrap();
        assert_ne!(other.embedding, u1.embedding);
        eprintln!("UMAP blobs (sequential): trustworthiness(10) = {t:.4}, edges = {}", u1.n_edges);
    }

    #[test]
    fn parallel_sgd_preserves_blobs_and_is_thread_independent() {
        let (data, truth) = blobs(5, 200, 8, 10.0, 1.0, 21);
        let x = MatrixView::new(&data, 1000, 8).unwrap();
        let opts = UmapOptions { seed: 3, sgd: SgdMode::Parallel, ..Default::default() };
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| umap(x, &opts).unwrap())
        };
        let u1 = run(1);
        assert_eq!(u1, run(4), "parallel SGD must not depend on the thread count");
        assert_eq!(u1.sgd, SgdMode::Parallel);
        let y = u1.embedding.view();
        let t = trustworthiness(x, y, 10).unwrap();
        assert!(t >= 0.9, "trustworthiness {t}");
        let km = kmeans(y, &KMeansOptions::new(5)).unwrap();
        assert_eq!(adjusted_rand_index(&km.labels, &truth).unwrap(), 1.0);
        eprintln!("UMAP blobs (parallel): trustworthiness(10) = {t:.4}");
    }

    #[test]
    fn duplicates_and_f32_input_stay_finite() {
        // 60 points, 20 of them identical copies of the origin.
        let mut data = vec![0.0f32; 20 * 4];
        data.extend((0..40 * 4).map(|v| ((v * 37 % 23) as f32) * 0.3));
        let x = MatrixView::new(&data, 60, 4).unwrap();
        let o = UmapOptions { n_neighbors: 59, n_epochs: Some(30), ..Default::default() };
        let u = umap(x, &o).unwrap();
        assert!(u.embedding.as_slice().iter().all(|v| v.is_finite()));
        let o =
            UmapOptions { n_neighbors: 5, n_epochs: Some(30), init: UmapInit::Random, ..Default::default() };
        let u = umap(x, &o).unwrap();
        assert!(u.embedding.as_slice().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn errors_and_limits() {
        let (data, _) = blobs(2, 20, 3, 5.0, 1.0, 4);
        let x = MatrixView::new(&data, 40, 3).unwrap();
        let o = UmapOptions { n_neighbors: 40, ..Default::default() };
        assert!(matches!(umap(x, &o), Err(AnalysisError::KTooLarge { .. })));
        let o =
            UmapOptions { knn: KnnMethod::Exact, exact_knn_max: 10, n_neighbors: 5, ..Default::default() };
        assert_eq!(umap(x, &o).unwrap_err(), AnalysisError::ExactKnnTooLarge { n: 40, cap: 10 });
        // Auto above the cap uses NN-descent.
        let o = UmapOptions {
            exact_knn_max: 10,
            n_neighbors: 5,
            n_epochs: Some(20),
            n_components: 3,
            ..Default::default()
        };
        let u = umap(x, &o).unwrap();
        assert_eq!(u.knn_method, KnnMethod::NnDescent);
        assert_eq!(u.embedding.n_cols(), 3);
        assert!(u.embedding.as_slice().iter().all(|v| v.is_finite()));
        let mut bad = data.clone();
        bad[3 * 17 + 1] = f64::NAN;
        let xb = MatrixView::new(&bad, 40, 3).unwrap();
        assert!(matches!(
            umap(xb, &UmapOptions::default()),
            Err(AnalysisError::NonFinite { row: 17, col: 1, .. })
        ));
    }
}
