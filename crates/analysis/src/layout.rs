//! UMAP layout optimisation: stochastic gradient descent on the fuzzy
//! cross-entropy, sequential or deterministic-parallel.
//!
//! Both modes share a *stateless* sampling schedule: edge `e` with
//! `epochs_per_sample εₑ = w_max / wₑ ≥ 1` is sampled at epoch `t`
//! (1-based) iff `⌊t/εₑ⌋ > ⌊(t−1)/εₑ⌋`, i.e. `n_epochs · wₑ / w_max` times in
//! total, and every sample is followed by `negative_sample_rate` repulsive
//! samples of uniformly drawn points. The learning rate is
//! `α(t) = lr · (1 − (t−1)/n_epochs)`. Coordinates are `f32`.
//!
//! * **Sequential** (the paper's algorithm): edges are visited in CSR order
//!   and both ends move in place; one ChaCha8 stream draws the negatives.
//! * **Parallel** (deterministic, Jacobi style): within an epoch every point
//!   moves only itself, reading all other points from a snapshot taken at the
//!   start of the epoch. Points are processed in parallel; the negatives of
//!   point `i` at epoch `t` come from a SplitMix64 stream keyed by
//!   `(seed, t, i)`. Because the graph stores both directions of every edge,
//!   the pull that the sequential mode applies to the tail is applied by the
//!   reverse edge instead, so the attractive step is doubled to keep the
//!   attraction/repulsion balance. The result is bit-identical for any rayon
//!   thread count.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Symmetric fuzzy graph in CSR form: the edges of head `i` are
/// `indptr[i]..indptr[i+1]`, sorted by tail; both directions are stored.
pub(crate) struct Graph {
    pub indptr: Vec<usize>,
    pub tails: Vec<u32>,
    pub weights: Vec<f32>,
}

/// SGD parameters.
pub(crate) struct SgdParams {
    pub a: f32,
    pub b: f32,
    pub gamma: f32,
    pub lr: f64,
    pub neg_rate: usize,
    pub n_epochs: usize,
    pub seed: u64,
}

#[inline]
fn clip(v: f32) -> f32 {
    v.clamp(-4.0, 4.0)
}

/// Whether an edge with relative weight `r = w / w_max ∈ (0, 1]` (i.e.
/// `1/r` epochs per sample) is sampled at epoch `t ≥ 1`.
#[inline]
fn sampled(r: f64, t: usize) -> bool {
    (t as f64 * r).floor() > ((t - 1) as f64 * r).floor()
}

/// Relative weights `w / w_max` of the edges.
fn relative_weights(g: &Graph) -> Vec<f64> {
    let w_max = g.weights.iter().copied().fold(0.0f32, f32::max);
    g.weights.iter().map(|&w| f64::from(w) / f64::from(w_max)).collect()
}

/// Attractive coefficient `−2ab d^{2(b−1)} / (1 + a d^{2b})` (0 at d = 0).
#[inline]
fn attract(p: &SgdParams, d2: f32) -> f32 {
    if d2 <= 0.0 {
        return 0.0;
    }
    let pb = d2.powf(p.b);
    -2.0 * p.a * p.b * (pb / d2) / (1.0 + p.a * pb)
}

/// Repulsive coefficient `2γb / ((0.001 + d²)(1 + a d^{2b}))` (0 at d = 0).
#[inline]
fn repel(p: &SgdParams, d2: f32) -> f32 {
    if d2 <= 0.0 {
        return 0.0;
    }
    2.0 * p.gamma * p.b / ((0.001 + d2) * (1.0 + p.a * d2.powf(p.b)))
}

#[inline]
fn diff_sq(a: &[f32], b: &[f32], diff: &mut [f32]) -> f32 {
    let mut s = 0.0;
    for ((d, x), y) in diff.iter_mut().zip(a).zip(b) {
        *d = x - y;
        s += *d * *d;
    }
    s
}

fn alpha(p: &SgdParams, t: usize) -> f32 {
    (p.lr * (1.0 - (t - 1) as f64 / p.n_epochs as f64)) as f32
}

/// The paper's sequential SGD; `y` is row-major `n × dim`.
pub(crate) fn optimise_sequential(y: &mut [f32], dim: usize, g: &Graph, p: &SgdParams, rng: &mut ChaCha8Rng) {
    let n = y.len() / dim;
    let rel = relative_weights(g);
    let mut diff = vec![0.0f32; dim];
    for t in 1..=p.n_epochs {
        let al = alpha(p, t);
        for i in 0..n {
            for e in g.indptr[i]..g.indptr[i + 1] {
                if !sampled(rel[e], t) {
                    continue;
                }
                let j = g.tails[e] as usize;
                let (yi, yj) = (&y[i * dim..(i + 1) * dim], &y[j * dim..(j + 1) * dim]);
                let coef = attract(p, diff_sq(yi, yj, &mut diff));
                for c in 0..dim {
                    let step = clip(coef * diff[c]) * al;
                    y[i * dim + c] += step;
                    y[j * dim + c] -= step;
                }
                for _ in 0..p.neg_rate {
                    let k = rng.gen_range(0..n);
                    if k == i {
                        continue;
                    }
                    let (yi, yk) = (&y[i * dim..(i + 1) * dim], &y[k * dim..(k + 1) * dim]);
                    let coef = repel(p, diff_sq(yi, yk, &mut diff));
                    for c in 0..dim {
                        y[i * dim + c] += clip(coef * diff[c]) * al;
                    }
                }
            }
        }
    }
}

/// SplitMix64: tiny counter-based generator for per-(epoch, point) streams.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, t: usize, i: usize) -> Self {
        let mut s = Self(seed ^ (t as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        s.0 ^= (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        s.next();
        s
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; bias < n / 2⁶⁴).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Deterministic parallel (Jacobi-style) SGD; see the module docs.
pub(crate) fn optimise_parallel(y: &mut [f32], dim: usize, g: &Graph, p: &SgdParams) {
    let n = y.len() / dim;
    let rel = relative_weights(g);
    let indptr = &g.indptr;
    let mut snapshot = y.to_vec();
    for t in 1..=p.n_epochs {
        let al = alpha(p, t);
        snapshot.copy_from_slice(y);
        let snap = &snapshot;
        let scratch = || vec![0.0f32; dim];
        y.par_chunks_mut(dim).enumerate().for_each_init(scratch, |diff, (i, yi)| {
            let mut rng = SplitMix::new(p.seed, t, i);
            for e in indptr[i]..indptr[i + 1] {
                if !sampled(rel[e], t) {
                    continue;
                }
                let j = g.tails[e] as usize;
                let coef = attract(p, diff_sq(yi, &snap[j * dim..(j + 1) * dim], diff));
                for c in 0..dim {
                    yi[c] += 2.0 * clip(coef * diff[c]) * al;
                }
                for _ in 0..p.neg_rate {
                    let k = rng.below(n);
                    if k == i {
                        continue;
                    }
                    let coef = repel(p, diff_sq(yi, &snap[k * dim..(k + 1) * dim], diff));
                    for c in 0..dim {
                        yi[c] += clip(coef * diff[c]) * al;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_samples_proportionally_to_weight() {
        for eps in [1.0f64, 1.5, 2.0, 3.7, 10.0] {
            let count = (1..=500).filter(|&t| sampled(1.0 / eps, t)).count();
            assert_eq!(count, (500.0 / eps).floor() as usize, "eps {eps}");
        }
    }

    #[test]
    fn splitmix_below_is_in_range_and_spread() {
        let mut r = SplitMix::new(1, 2, 3);
        let mut hist = [0usize; 7];
        for _ in 0..70_000 {
            hist[r.below(7)] += 1;
        }
        assert!(hist.iter().all(|&h| (9_000..11_000).contains(&h)), "{hist:?}");
    }
}
