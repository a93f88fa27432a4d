//! Fourier shell correlation between volumes and ring correlation between images.
//!
//! Shell `k` holds the centred Fourier voxels whose radius `|q|` (in voxels of
//! the n³ grid) rounds to `k`, for `k = 0..=n/2`. Shell `n/2` is Nyquist; corner
//! voxels beyond it are ignored. Shell k has spatial frequency `k/(n·apix)` 1/Å.
//!
//! `FSC(k) = Re Σ F₁F₂* / sqrt(Σ|F₁|² · Σ|F₂|²)`. The resolution at a threshold
//! is read where the curve first falls below it, linearly interpolated between
//! the shells around the crossing; a curve that never falls below it gives
//! Nyquist (2·apix). Pinned by `tests::fsc_of_map_with_itself_is_one` and
//! `tests::fsc_of_noisy_copies_follows_theory`.

use crate::fft::{Fft2, Fft3, C32};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One FSC curve with its sampling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FscCurve {
    /// Box size n.
    pub n: usize,
    pub apix_a: f64,
    /// Correlation per shell, `k = 0..=n/2`.
    pub fsc: Vec<f64>,
}

impl FscCurve {
    /// Spatial frequency of shell `k` in 1/Å.
    pub fn freq(&self, k: usize) -> f64 {
        k as f64 / (self.n as f64 * self.apix_a)
    }

    /// Resolution (Å) where the curve first drops below `threshold`.
    pub fn resolution_at(&self, threshold: f64) -> f64 {
        // Shell 0 (DC) is excluded: it is always ~1 and says nothing about resolution.
        for k in 1..self.fsc.len() {
            if self.fsc[k] < threshold {
                let (f0, f1) = (self.fsc[k - 1], self.fsc[k]);
                let t = if k == 1 || (f0 - f1).abs() < 1e-12 { 0.0 } else { (f0 - threshold) / (f0 - f1) };
                let freq = self.freq(k - 1) + t * (self.freq(k) - self.freq(k - 1));
                return if freq > 0.0 { 1.0 / freq } else { f64::INFINITY };
            }
        }
        2.0 * self.apix_a
    }
}

/// Shell index of a centred voxel, or None beyond Nyquist.
#[inline]
fn shell(r2: f64, nyq: usize) -> Option<usize> {
    let k = r2.sqrt().round() as usize;
    (k <= nyq).then_some(k)
}

/// Shell (rule 13) of the centred voxel (z, y, x) of an n³ grid: round(|q|), or None
/// beyond Nyquist (the corners).
#[inline]
pub fn shell_index(z: usize, y: usize, x: usize, n: usize) -> Option<usize> {
    let h = (n / 2) as f64;
    let (dz, dy, dx) = (z as f64 - h, y as f64 - h, x as f64 - h);
    shell(dx * dx + dy * dy + dz * dz, n / 2)
}

/// Multiply every voxel of shell k of a centred n³ spectrum by `gain[k]`. Voxels of the
/// shells `gain.len()..` and the corners beyond Nyquist are set to 0 (FSC weighting as
/// RELION's `applyFscWeighting`).
pub fn apply_shell_gain(spec: &mut [C32], n: usize, gain: &[f64]) {
    assert_eq!(spec.len(), n * n * n, "apply_shell_gain: wrong size");
    spec.par_chunks_mut(n * n).enumerate().for_each(|(z, slab)| {
        for (i, v) in slab.iter_mut().enumerate() {
            let g = shell_index(z, i / n, i % n, n).and_then(|k| gain.get(k)).copied().unwrap_or(0.0);
            *v *= g as f32;
        }
    });
}

/// Mean amplitude |F| of each shell k = 0..=n/2 of a centred n³ spectrum (0 for an empty
/// shell): the radial profile of a Guinier plot (RELION's `makeGuinierPlot`).
pub fn shell_mean_amplitude(spec: &[C32], n: usize) -> Vec<f64> {
    assert_eq!(spec.len(), n * n * n, "shell_mean_amplitude: wrong size");
    let nyq = n / 2;
    let acc = spec
        .par_chunks(n * n)
        .enumerate()
        .map(|(z, slab)| {
            let mut s = vec![(0f64, 0usize); nyq + 1];
            for (i, v) in slab.iter().enumerate() {
                if let Some(k) = shell_index(z, i / n, i % n, n) {
                    s[k].0 += v.norm() as f64;
                    s[k].1 += 1;
                }
            }
            s
        })
        // Per-slab partials summed in slab order: the same bits whatever the thread count or
        // work stealing (rayon's reduce tree is not fixed), so runs are reproducible.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![(0f64, 0usize); nyq + 1], |mut u, v| {
            for (a, b) in u.iter_mut().zip(v) {
                a.0 += b.0;
                a.1 += b.1;
            }
            u
        });
    acc.iter().map(|&(s, c)| if c > 0 { s / c as f64 } else { 0.0 }).collect()
}

/// FSC between two centred n³ spectra.
pub fn fsc_spectra(a: &[C32], b: &[C32], n: usize, apix_a: f64) -> FscCurve {
    let nyq = n / 2;
    let h = (n / 2) as f64;
    let acc = (0..n)
        .into_par_iter()
        .map(|z| {
            let mut s = vec![[0f64; 3]; nyq + 1];
            let dz = z as f64 - h;
            for y in 0..n {
                let dy = y as f64 - h;
                for x in 0..n {
                    let dx = x as f64 - h;
                    if let Some(k) = shell(dx * dx + dy * dy + dz * dz, nyq) {
                        let i = (z * n + y) * n + x;
                        let (p, q) = (a[i], b[i]);
                        s[k][0] += (p.re * q.re + p.im * q.im) as f64;
                        s[k][1] += p.norm_sqr() as f64;
                        s[k][2] += q.norm_sqr() as f64;
                    }
                }
            }
            s
        })
        // Per-slab partials summed in slab order: the same bits whatever the thread count or
        // work stealing (rayon's reduce tree is not fixed), so runs are reproducible.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![[0f64; 3]; nyq + 1], |mut u, v| {
            for (x, y) in u.iter_mut().zip(v) {
                for j in 0..3 {
                    x[j] += y[j];
                }
            }
            u
        });
    let fsc = acc
        .iter()
        .map(|s| if s[1] > 0.0 && s[2] > 0.0 { s[0] / (s[1] * s[2]).sqrt() } else { 0.0 })
        .collect();
    FscCurve { n, apix_a, fsc }
}

/// FSC between two real n³ volumes.
pub fn fsc_volumes(a: &[f32], b: &[f32], n: usize, apix_a: f64) -> FscCurve {
    let f = Fft3::new(n);
    fsc_spectra(&f.forward_real(a), &f.forward_real(b), n, apix_a)
}

/// FRC between two real D×D images.
pub fn frc_images(a: &[f32], b: &[f32], d: usize, apix_a: f64) -> FscCurve {
    let f = Fft2::new(d);
    let mut w = f.work();
    let (mut fa, mut fb) = (vec![C32::default(); d * d], vec![C32::default(); d * d]);
    f.forward_real(&mut w, a, &mut fa);
    f.forward_real(&mut w, b, &mut fb);
    let nyq = d / 2;
    let h = (d / 2) as f64;
    let mut s = vec![[0f64; 3]; nyq + 1];
    for y in 0..d {
        for x in 0..d {
            let (dy, dx) = (y as f64 - h, x as f64 - h);
            if let Some(k) = shell(dx * dx + dy * dy, nyq) {
                let (p, q) = (fa[y * d + x], fb[y * d + x]);
                s[k][0] += (p.re * q.re + p.im * q.im) as f64;
                s[k][1] += p.norm_sqr() as f64;
                s[k][2] += q.norm_sqr() as f64;
            }
        }
    }
    let fsc =
        s.iter().map(|s| if s[1] > 0.0 && s[2] > 0.0 { s[0] / (s[1] * s[2]).sqrt() } else { 0.0 }).collect();
    FscCurve { n: d, apix_a, fsc }
}

/// Expected FSC between a half-map average and the truth given the half-map FSC:
/// `sqrt(2·FSC/(1 + FSC))` (Rosenthal & Henderson 2003).
pub fn fsc_truth_from_half(fsc_half: f64) -> f64 {
    if fsc_half <= 0.0 {
        0.0
    } else {
        (2.0 * fsc_half / (1.0 + fsc_half)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn smooth_volume(n: usize) -> Vec<f32> {
        let h = (n / 2) as f32;
        (0..n * n * n)
            .map(|i| {
                let (z, y, x) = ((i / (n * n)) as f32 - h, ((i / n) % n) as f32 - h, (i % n) as f32 - h);
                (-(x * x + y * y + z * z) / 18.0).exp()
                    + 0.5 * (-((x - 3.0).powi(2) + y * y + z * z) / 4.0).exp()
            })
            .collect()
    }

    #[test]
    fn fsc_of_map_with_itself_is_one() {
        let n = 16;
        let v = smooth_volume(n);
        let c = fsc_volumes(&v, &v, n, 1.5);
        assert_eq!(c.fsc.len(), n / 2 + 1);
        assert!(c.fsc.iter().all(|f| (f - 1.0).abs() < 1e-9));
        assert!((c.resolution_at(0.143) - 3.0).abs() < 1e-12); // Nyquist = 2·apix
    }

    /// Two copies of a white-noise "signal" plus independent white noise of equal
    /// variance: the expected FSC is SNR/(1+SNR) = 0.5 at every shell.
    #[test]
    fn fsc_of_noisy_copies_follows_theory() {
        let n = 24;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let normal = |rng: &mut ChaCha8Rng| -> f32 {
            let (u1, u2): (f32, f32) = (rng.gen::<f32>().max(1e-12), rng.gen());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        };
        let s: Vec<f32> = (0..n * n * n).map(|_| normal(&mut rng)).collect();
        let a: Vec<f32> = s.iter().map(|v| v + normal(&mut rng)).collect();
        let b: Vec<f32> = s.iter().map(|v| v + normal(&mut rng)).collect();
        let c = fsc_volumes(&a, &b, n, 1.0);
        for k in 3..=n / 2 {
            // Shell k has ~4πk² voxels: σ(FSC) ≈ (1 − ρ²)/sqrt(N) for ρ = 0.5.
            let nvox = 4.0 * std::f64::consts::PI * (k * k) as f64;
            let tol = 4.0 * 0.75 / nvox.sqrt();
            assert!((c.fsc[k] - 0.5).abs() < tol, "shell {k}: {}", c.fsc[k]);
        }
    }

    /// A flat spectrum (a centred delta) has mean amplitude 1 in every shell; a shell gain
    /// scales exactly its shell and zeroes the shells it does not list and the corners.
    #[test]
    fn shell_gain_and_mean_amplitude() {
        let n = 12;
        let mut spec = vec![C32::new(1.0, 0.0); n * n * n];
        assert!(shell_mean_amplitude(&spec, n).iter().all(|a| (a - 1.0).abs() < 1e-12));
        let gain: Vec<f64> = (0..4).map(|k| 0.5 * k as f64).collect();
        apply_shell_gain(&mut spec, n, &gain);
        let amp = shell_mean_amplitude(&spec, n);
        for (k, a) in amp.iter().enumerate() {
            let want = if k < 4 { 0.5 * k as f64 } else { 0.0 };
            assert!((a - want).abs() < 1e-12, "shell {k}: {a}");
        }
        assert_eq!(spec[0], C32::default()); // corner beyond Nyquist
        assert_eq!(shell_index(n / 2, n / 2, n / 2 + 3, n), Some(3));
    }

    #[test]
    fn resolution_interpolates_the_crossing() {
        let c = FscCurve { n: 10, apix_a: 1.0, fsc: vec![1.0, 0.9, 0.7, 0.3, 0.1, 0.0] };
        // Crosses 0.5 halfway between shell 2 (0.2/Å) and 3 (0.3/Å): 0.25/Å → 4 Å.
        assert!((c.resolution_at(0.5) - 4.0).abs() < 1e-12);
        assert!((fsc_truth_from_half(0.143) - (0.286f64 / 1.143).sqrt()).abs() < 1e-12);
    }
}
