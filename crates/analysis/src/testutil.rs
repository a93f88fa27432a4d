//! Shared synthetic data for the unit tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Standard normal by Box–Muller.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(1e-300);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `n_blobs` isotropic Gaussian blobs (σ = `sd`) of `per_blob` points in
/// `dim` dimensions, centres at `sep` along distinct axes (cycled with signs).
/// Returns the row-major data and the true labels (blob-major order).
pub(crate) fn blobs(
    n_blobs: usize,
    per_blob: usize,
    dim: usize,
    sep: f64,
    sd: f64,
    seed: u64,
) -> (Vec<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n_blobs * per_blob * dim);
    let mut labels = Vec::with_capacity(n_blobs * per_blob);
    for b in 0..n_blobs {
        let mut centre = vec![0.0; dim];
        let sign = if (b / dim).is_multiple_of(2) { 1.0 } else { -1.0 };
        centre[b % dim] = sign * sep;
        for _ in 0..per_blob {
            for c in &centre {
                data.push(c + sd * normal(&mut rng));
            }
            labels.push(b);
        }
    }
    (data, labels)
}
