//! k-nearest-neighbour graphs: exact brute force and NN-descent.
//!
//! Both return, for every row, its `k` nearest *other* rows in Euclidean
//! distance, sorted by increasing distance (ties broken by index).
//!
//! * [`exact_knn`] — parallel brute force: `O(N²·D)` time, `O(N·k)` memory
//!   (no distance matrix is stored). Practical up to a few ×10⁴ points; the
//!   UMAP driver caps it at [`crate::UmapOptions::exact_knn_max`] (default
//!   20 000) and switches to NN-descent above.
//! * [`nn_descent`] — NN-descent (Dong, Moses & Li 2011, "Efficient k-nearest
//!   neighbor graph construction for generic similarity measures"). Starts
//!   from random neighbour lists and repeatedly applies "a neighbour of a
//!   neighbour is likely a neighbour": each point's new (not yet joined) and
//!   old neighbours, forward and reverse, are sampled (`ρ·k` of each) and every
//!   new–new and new–old pair among them is tried as mutual neighbours. It
//!   stops when fewer than `δ·N·k` list entries change in an iteration.
//!   Cost is roughly `O(N·k²·D)` per iteration, memory `O(N·k)`.
//!
//! ## Determinism of the parallel NN-descent
//!
//! Randomness comes from a ChaCha8 stream per (iteration, point). The local
//! joins are evaluated in parallel over blocks of points *against read-only
//! neighbour lists*; the resulting candidate updates are then applied
//! sequentially in point order before the next block. The output is therefore
//! bit-identical for a given seed whatever the number of rayon threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, AnalysisError, Result};
use crate::matrix::{sq_dist, MatrixView, Real};

/// A k-NN graph: `k` neighbours per row, sorted by distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    k: usize,
    indices: Vec<usize>,
    distances: Vec<f64>,
}

impl Knn {
    /// Neighbours per point.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of points.
    pub fn n_points(&self) -> usize {
        self.indices.len() / self.k
    }

    /// Indices of the neighbours of point `i`, nearest first.
    pub fn indices(&self, i: usize) -> &[usize] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// Euclidean distances to the neighbours of point `i`.
    pub fn distances(&self, i: usize) -> &[f64] {
        &self.distances[i * self.k..(i + 1) * self.k]
    }

    /// Fraction of `reference`'s neighbour entries also found here (recall).
    pub fn recall(&self, reference: &Knn) -> Result<f64> {
        if reference.k != self.k || reference.n_points() != self.n_points() {
            return Err(AnalysisError::DimensionMismatch {
                what: "knn recall: reference graph size",
                expected: self.indices.len(),
                got: reference.indices.len(),
            });
        }
        let hits: usize = (0..self.n_points())
            .into_par_iter()
            .map(|i| {
                let mine = self.indices(i);
                reference.indices(i).iter().filter(|j| mine.contains(j)).count()
            })
            .sum();
        Ok(hits as f64 / self.indices.len() as f64)
    }
}

fn check_k<T: Real>(x: MatrixView<'_, T>, k: usize) -> Result<()> {
    x.validate("k-NN input")?;
    let n = x.n_rows();
    if k == 0 || k >= n {
        return Err(AnalysisError::KTooLarge {
            what: "k-NN neighbours", k, n, constraint: "1 ≤ k ≤ n − 1"
        });
    }
    Ok(())
}

/// Exact k-NN by parallel brute force (`O(N²·D)` time, `O(N·k)` memory).
///
/// Errors: empty/non-finite input, `k = 0` or `k ≥ N`.
pub fn exact_knn<T: Real>(x: MatrixView<'_, T>, k: usize) -> Result<Knn> {
    check_k(x, k)?;
    let n = x.n_rows();
    let mut indices = vec![0usize; n * k];
    let mut distances = vec![0.0f64; n * k];
    indices.par_chunks_mut(k).zip(distances.par_chunks_mut(k)).enumerate().for_each(|(i, (idx, dis))| {
        let xi = x.row(i);
        let mut best: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
        for j in (0..n).filter(|&j| j != i) {
            let d = sq_dist(xi, x.row(j));
            // j increases, so an equal distance never displaces an entry.
            if best.len() == k && d >= best[k - 1].0 {
                continue;
            }
            let pos = best.partition_point(|e| e.0 <= d);
            best.insert(pos, (d, j));
            best.truncate(k);
        }
        for (m, (d, j)) in best.into_iter().enumerate() {
            idx[m] = j;
            dis[m] = d.sqrt();
        }
    });
    Ok(Knn { k, indices, distances })
}

/// Parameters of [`nn_descent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NnDescentOptions {
    /// Maximum iterations; `None` → `max(10, ⌈log₂ N⌉)`.
    pub max_iter: Option<usize>,
    /// Sample rate `ρ`: at most `⌈ρ·k⌉` new and reverse candidates per point.
    pub sample_rate: f64,
    /// Early termination when fewer than `δ·N·k` updates happen.
    pub delta: f64,
    /// Seed of the ChaCha8 streams.
    pub seed: u64,
}

impl Default for NnDescentOptions {
    fn default() -> Self {
        Self { max_iter: None, sample_rate: 1.0, delta: 0.001, seed: 0 }
    }
}

/// One neighbour-list entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    d: f64,
    j: usize,
    new: bool,
}

/// Points processed per local-join block (bounds the candidate buffer).
const JOIN_BLOCK: usize = 2048;

fn point_rng(seed: u64, iter: u64, i: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ iter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(i as u64);
    rng
}

/// Approximate k-NN by NN-descent. See the module docs.
///
/// Errors: empty/non-finite input, `k = 0` or `k ≥ N`, a non-positive
/// sample rate or a negative/non-finite `delta`.
pub fn nn_descent<T: Real>(x: MatrixView<'_, T>, k: usize, opts: &NnDescentOptions) -> Result<Knn> {
    check_k(x, k)?;
    if !(opts.sample_rate > 0.0 && opts.sample_rate.is_finite()) {
        return Err(invalid("sample_rate", "must be finite and > 0"));
    }
    if !(opts.delta >= 0.0 && opts.delta.is_finite()) {
        return Err(invalid("delta", "must be finite and ≥ 0"));
    }
    let n = x.n_rows();
    let max_iter = opts.max_iter.unwrap_or_else(|| 10.max((n as f64).log2().ceil() as usize));
    let m = ((opts.sample_rate * k as f64).ceil() as usize).max(1);
    let mut heaps = random_init(x, k, opts.seed);
    for it in 1..=max_iter as u64 {
        let (new_c, old_c) = candidates(&mut heaps, n, k, m, opts.seed, it);
        let mut updates = 0usize;
        for start in (0..n).step_by(JOIN_BLOCK) {
            let end = (start + JOIN_BLOCK).min(n);
            let props = local_join(x, &heaps, k, &new_c[start..end], &old_c[start..end]);
            for (a, b, d) in props {
                updates += usize::from(push(&mut heaps[a * k..(a + 1) * k], b, d));
                updates += usize::from(push(&mut heaps[b * k..(b + 1) * k], a, d));
            }
        }
        if (updates as f64) <= opts.delta * (n * k) as f64 {
            break;
        }
    }
    Ok(Knn {
        k,
        indices: heaps.iter().map(|e| e.j).collect(),
        distances: heaps.iter().map(|e| e.d.sqrt()).collect(),
    })
}

/// Random distinct neighbours for every point, sorted by distance.
fn random_init<T: Real>(x: MatrixView<'_, T>, k: usize, seed: u64) -> Vec<Entry> {
    let n = x.n_rows();
    let mut heaps = vec![Entry { d: 0.0, j: 0, new: true }; n * k];
    heaps.par_chunks_mut(k).enumerate().for_each(|(i, h)| {
        let mut rng = point_rng(seed, 0, i);
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let j = rng.gen_range(0..n);
            if j != i && !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        let mut e: Vec<Entry> =
            chosen.into_iter().map(|j| Entry { d: sq_dist(x.row(i), x.row(j)), j, new: true }).collect();
        e.sort_by(|a, b| a.d.total_cmp(&b.d).then(a.j.cmp(&b.j)));
        h.copy_from_slice(&e);
    });
    heaps
}

/// Inserts `(j, d)` into a sorted list of fixed length if it improves it.
fn push(h: &mut [Entry], j: usize, d: f64) -> bool {
    let k = h.len();
    let worst = h[k - 1];
    if d > worst.d || (d == worst.d && j >= worst.j) || h.iter().any(|e| e.j == j) {
        return false;
    }
    let pos = h.partition_point(|e| e.d < d || (e.d == d && e.j < j));
    h.copy_within(pos..k - 1, pos + 1);
    h[pos] = Entry { d, j, new: true };
    true
}

/// Random subset of at most `m` items (partial Fisher–Yates), order kept.
fn sample(mut v: Vec<usize>, m: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    if v.len() > m {
        for t in 0..m {
            let s = rng.gen_range(t..v.len());
            v.swap(t, s);
        }
        v.truncate(m);
    }
    v
}

/// Builds the new/old candidate lists (forward sample ∪ reverse sample) and
/// marks the sampled forward entries as old.
fn candidates(
    heaps: &mut [Entry],
    n: usize,
    k: usize,
    m: usize,
    seed: u64,
    it: u64,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let fwd: Vec<(Vec<usize>, Vec<usize>)> = heaps
        .par_chunks_mut(k)
        .enumerate()
        .map(|(i, h)| {
            let mut rng = point_rng(seed, 2 * it, i);
            let new_pos: Vec<usize> = (0..k).filter(|&p| h[p].new).collect();
            let picked = sample(new_pos, m, &mut rng);
            let new: Vec<usize> = picked.iter().map(|&p| h[p].j).collect();
            picked.iter().for_each(|&p| h[p].new = false);
            let old = h.iter().filter(|e| !e.new && !new.contains(&e.j)).map(|e| e.j).collect();
            (new, old)
        })
        .collect();
    let rev_new = reverse(&fwd, n, |f| &f.0);
    let rev_old = reverse(&fwd, n, |f| &f.1);
    fwd.into_par_iter()
        .zip(rev_new.into_par_iter().zip(rev_old))
        .enumerate()
        .map(|(i, ((mut new, mut old), (rn, ro)))| {
            let mut rng = point_rng(seed, 2 * it + 1, i);
            for j in sample(rn, m, &mut rng) {
                if !new.contains(&j) {
                    new.push(j);
                }
            }
            for j in sample(ro, m, &mut rng) {
                if !old.contains(&j) && !new.contains(&j) {
                    old.push(j);
                }
            }
            (new, old)
        })
        .unzip()
}

/// Reverse adjacency lists (`rev[j]` = all `i` with `j ∈ list(i)`, in `i` order).
fn reverse<F>(fwd: &[(Vec<usize>, Vec<usize>)], n: usize, pick: F) -> Vec<Vec<usize>>
where
    F: Fn(&(Vec<usize>, Vec<usize>)) -> &Vec<usize>,
{
    let mut rev: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, f) in fwd.iter().enumerate() {
        for &j in pick(f) {
            rev[j].push(i);
        }
    }
    rev
}

/// Candidate pairs from one block's local joins, filtered against the
/// current (read-only) lists; returned in deterministic order.
fn local_join<T: Real>(
    x: MatrixView<'_, T>,
    heaps: &[Entry],
    k: usize,
    new_c: &[Vec<usize>],
    old_c: &[Vec<usize>],
) -> Vec<(usize, usize, f64)> {
    let worst = |a: usize| heaps[a * k + k - 1].d;
    new_c
        .par_iter()
        .zip(old_c)
        .flat_map_iter(|(new, old)| {
            let mut out = Vec::new();
            for (p, &a) in new.iter().enumerate() {
                let others = new[p + 1..].iter().chain(old.iter());
                for &b in others {
                    if a == b {
                        continue;
                    }
                    let d = sq_dist(x.row(a), x.row(b));
                    if d <= worst(a) || d <= worst(b) {
                        out.push((a, b, d));
                    }
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::blobs;

    fn brute(x: MatrixView<'_, f64>, i: usize, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..x.n_rows()).filter(|&j| j != i).collect();
        idx.sort_by(|&a, &b| {
            sq_dist(x.row(i), x.row(a)).total_cmp(&sq_dist(x.row(i), x.row(b))).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx
    }

    #[test]
    fn exact_matches_sorting() {
        let (data, _) = blobs(3, 100, 4, 3.0, 1.0, 1);
        let x = MatrixView::new(&data, 300, 4).unwrap();
        let knn = exact_knn(x, 7).unwrap();
        for i in [0, 17, 150, 299] {
            assert_eq!(knn.indices(i), brute(x, i, 7).as_slice());
            let d = knn.distances(i);
            assert!(d.windows(2).all(|w| w[0] <= w[1]));
            assert!((d[0] - sq_dist(x.row(i), x.row(knn.indices(i)[0])).sqrt()).abs() < 1e-12);
        }
        assert!(matches!(exact_knn(x, 300), Err(AnalysisError::KTooLarge { .. })));
    }

    #[test]
    fn nn_descent_recall_and_determinism() {
        let (data, _) = blobs(10, 400, 8, 4.0, 1.0, 2);
        let n = 4000;
        let x = MatrixView::new(&data, n, 8).unwrap();
        let exact = exact_knn(x, 15).unwrap();
        let opts = NnDescentOptions { seed: 5, ..Default::default() };
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| nn_descent(x, 15, &opts).unwrap())
        };
        let a = run(1);
        let b = run(3);
        assert_eq!(a, b);
        let recall = a.recall(&exact).unwrap();
        assert!(recall > 0.95, "NN-descent recall {recall}");
        eprintln!("NN-descent recall@15 on 4000 points: {recall:.4}");
        for i in 0..n {
            let idx = a.indices(i);
            assert!(!idx.contains(&i));
            assert!(a.distances(i).windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn nn_descent_tiny_input() {
        let data = [0.0f32, 1.0, 3.0, 6.0];
        let x = MatrixView::new(&data, 4, 1).unwrap();
        let knn = nn_descent(x, 3, &NnDescentOptions::default()).unwrap();
        assert_eq!(knn.indices(0), &[1, 2, 3]);
        assert_eq!(knn.indices(2), &[1, 0, 3]);
    }
}
