//! Shared helpers for the integration tests: seeded randomness, smooth blob volumes
//! with analytic spectra, and comparison metrics.
#![allow(dead_code)]

use cryoforge_core::fft::C32;
use cryoforge_core::fsc::frc_images;
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::Rot3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn random_rotation(rng: &mut ChaCha8Rng) -> Rot3 {
    uniform_rotation(rng.gen(), rng.gen(), rng.gen())
}

/// Isotropic Gaussian `w·exp(−|r − c|²/2s²)` in voxel units (c: offset from the centre).
#[derive(Debug, Clone, Copy)]
pub struct Blob {
    pub c: [f64; 3],
    pub s: f64,
    pub w: f64,
}

/// `count` blobs with centres within `radius` voxels of the centre and widths in
/// `[s_min, s_max]` voxels.
pub fn random_blobs(rng: &mut ChaCha8Rng, count: usize, radius: f64, s_min: f64, s_max: f64) -> Vec<Blob> {
    (0..count)
        .map(|_| loop {
            let c = [
                rng.gen_range(-radius..radius),
                rng.gen_range(-radius..radius),
                rng.gen_range(-radius..radius),
            ];
            if c.iter().map(|v| v * v).sum::<f64>() <= radius * radius {
                break Blob { c, s: rng.gen_range(s_min..=s_max), w: rng.gen_range(0.5..1.5) };
            }
        })
        .collect()
}

/// The blobs point-sampled on an n³ grid (`[z][y][x]`, origin at index n/2).
pub fn blob_volume(blobs: &[Blob], n: usize) -> Vec<f32> {
    let h = (n / 2) as f64;
    let mut v = vec![0f32; n * n * n];
    for (i, o) in v.iter_mut().enumerate() {
        let r = [(i % n) as f64 - h, ((i / n) % n) as f64 - h, (i / (n * n)) as f64 - h];
        *o = blobs
            .iter()
            .map(|b| {
                let d2: f64 = (0..3).map(|a| (r[a] - b.c[a]).powi(2)).sum();
                b.w * (-d2 / (2.0 * b.s * b.s)).exp()
            })
            .sum::<f64>() as f32;
    }
    v
}

/// Analytic DFT of [`blob_volume`] at frequency m (cycles per box, any real value):
/// `Σ w (2πs²)^{3/2} exp(−2π²s²|m|²/n²) exp(−2πi m·c/n)` (aliasing neglected, s ≥ 1.5).
pub fn blob_spectrum(blobs: &[Blob], n: usize, m: [f64; 3]) -> (f64, f64) {
    let nf = n as f64;
    let m2: f64 = m.iter().map(|v| v * v).sum::<f64>() / (nf * nf);
    let (mut re, mut im) = (0.0, 0.0);
    for b in blobs {
        let amp = b.w * (2.0 * PI * b.s * b.s).powf(1.5) * (-2.0 * PI * PI * b.s * b.s * m2).exp();
        let ph = -2.0 * PI * (m[0] * b.c[0] + m[1] * b.c[1] + m[2] * b.c[2]) / nf;
        re += amp * ph.cos();
        im += amp * ph.sin();
    }
    (re, im)
}

/// Smallest FRC over shells 1..=⌊frac·D/2⌋ and the shell where it occurs.
pub fn min_frc(a: &[f32], b: &[f32], d: usize, frac: f64) -> (f64, usize) {
    let c = frc_images(a, b, d, 1.0);
    let kmax = (frac * (d / 2) as f64).floor() as usize;
    (1..=kmax).map(|k| (c.fsc[k], k)).fold((f64::INFINITY, 0), |m, v| if v.0 < m.0 { v } else { m })
}

/// ‖a − b‖₂/‖b‖₂ over the entries selected by `keep`.
pub fn rel_l2(a: &[C32], b: &[(f64, f64)], keep: impl Fn(usize) -> bool) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if keep(i) {
            num += (x.re as f64 - y.0).powi(2) + (x.im as f64 - y.1).powi(2);
            den += y.0 * y.0 + y.1 * y.1;
        }
    }
    (num / den).sqrt()
}

/// (column, row) of the largest pixel.
pub fn argmax(img: &[f32], d: usize) -> (usize, usize) {
    let i = img.iter().enumerate().fold(0, |m, (i, v)| if *v > img[m] { i } else { m });
    (i % d, i / d)
}

/// Signed centred frequency (kx, ky) of flat index i in a D×D centred layout.
pub fn freq(i: usize, d: usize) -> (isize, isize) {
    let h = (d / 2) as isize;
    ((i % d) as isize - h, (i / d) as isize - h)
}
