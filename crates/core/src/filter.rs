//! Fourier filters, real-space masks and image normalisation.
//!
//! Filters are radial gains `g(s)` of the spatial frequency `s` (1/Å), applied to
//! centred spectra (see [`crate::fft`]). Masks are soft spheres/discs centred on
//! pixel `D/2`, with a raised-cosine edge.

use crate::fft::{Fft2, Fft3, C32};

/// Shape of a filter's edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edge {
    /// Gain 1 inside the cutoff, 0 outside.
    Hard,
    /// Raised cosine falling from 1 to 0 over `width` (1/Å) centred on the cutoff.
    Cosine { width_per_a: f64 },
    /// Butterworth of the given order: `1/sqrt(1 + (s/s_c)^(2n))`.
    Butterworth { order: u32 },
}

/// Low-pass gain at frequency `s` for a cutoff `sc` (1/Å).
pub fn lowpass_gain(s: f64, sc: f64, edge: Edge) -> f64 {
    match edge {
        Edge::Hard => {
            if s <= sc {
                1.0
            } else {
                0.0
            }
        }
        Edge::Cosine { width_per_a } => {
            let w = width_per_a.max(1e-12);
            let lo = sc - w / 2.0;
            if s <= lo {
                1.0
            } else if s >= sc + w / 2.0 {
                0.0
            } else {
                0.5 * (1.0 + (std::f64::consts::PI * (s - lo) / w).cos())
            }
        }
        Edge::Butterworth { order } => 1.0 / (1.0 + (s / sc).powi(2 * order as i32)).sqrt(),
    }
}

/// High-pass gain: `1 − lowpass`.
pub fn highpass_gain(s: f64, sc: f64, edge: Edge) -> f64 {
    1.0 - lowpass_gain(s, sc, edge)
}

/// Multiply a centred D×D spectrum by `gain(s)` with `s` in 1/Å.
pub fn apply_radial_2d(spec: &mut [C32], d: usize, apix_a: f64, gain: impl Fn(f64) -> f64) {
    let h = (d / 2) as f64;
    let inv = 1.0 / (d as f64 * apix_a);
    for (r, row) in spec.chunks_exact_mut(d).enumerate() {
        let ky = (r as f64 - h) * inv;
        for (c, v) in row.iter_mut().enumerate() {
            let kx = (c as f64 - h) * inv;
            *v *= gain((kx * kx + ky * ky).sqrt()) as f32;
        }
    }
}

/// Multiply a centred n³ spectrum by `gain(s)` with `s` in 1/Å.
pub fn apply_radial_3d(spec: &mut [C32], n: usize, apix_a: f64, gain: impl Fn(f64) -> f64 + Sync) {
    use rayon::prelude::*;
    let h = (n / 2) as f64;
    let inv = 1.0 / (n as f64 * apix_a);
    spec.par_chunks_mut(n * n).enumerate().for_each(|(z, slab)| {
        let kz = (z as f64 - h) * inv;
        for (y, row) in slab.chunks_exact_mut(n).enumerate() {
            let ky = (y as f64 - h) * inv;
            for (x, v) in row.iter_mut().enumerate() {
                let kx = (x as f64 - h) * inv;
                *v *= gain((kx * kx + ky * ky + kz * kz).sqrt()) as f32;
            }
        }
    });
}

/// Low-pass filter a real D×D image in place.
pub fn lowpass_image(img: &mut [f32], d: usize, apix_a: f64, cutoff_a: f64, edge: Edge) {
    let f = Fft2::new(d);
    let mut w = f.work();
    let mut spec = vec![C32::default(); d * d];
    f.forward_real(&mut w, img, &mut spec);
    apply_radial_2d(&mut spec, d, apix_a, |s| lowpass_gain(s, 1.0 / cutoff_a, edge));
    f.inverse_real(&mut w, &spec, img);
}

/// Low-pass filter a real n³ volume in place (cutoff as a resolution in Å).
pub fn lowpass_volume(vol: &mut [f32], n: usize, apix_a: f64, cutoff_a: f64, edge: Edge) {
    let f = Fft3::new(n);
    let mut spec = f.forward_real(vol);
    apply_radial_3d(&mut spec, n, apix_a, |s| lowpass_gain(s, 1.0 / cutoff_a, edge));
    let back = f.inverse_complex(&spec);
    for (v, b) in vol.iter_mut().zip(back) {
        *v = b.re;
    }
}

/// The B-factor gain `exp(−B·s²/4)` at frequency `s` (1/Å); negative B sharpens.
#[inline]
pub fn bfactor_gain(s: f64, bfactor_a2: f64) -> f64 {
    (-bfactor_a2 * s * s / 4.0).exp()
}

/// Apply a B-factor `exp(−B·s²/4)` to a real n³ volume (negative B sharpens).
pub fn bfactor_volume(vol: &mut [f32], n: usize, apix_a: f64, bfactor_a2: f64) {
    let f = Fft3::new(n);
    let mut spec = f.forward_real(vol);
    apply_radial_3d(&mut spec, n, apix_a, |s| bfactor_gain(s, bfactor_a2));
    let back = f.inverse_complex(&spec);
    for (v, b) in vol.iter_mut().zip(back) {
        *v = b.re;
    }
}

/// Soft mask value at distance `r` (pixels) from the centre: 1 inside `radius`,
/// raised cosine to 0 over `edge` pixels.
#[inline]
pub fn soft_edge(r: f64, radius: f64, edge: f64) -> f64 {
    if r <= radius {
        1.0
    } else if edge <= 0.0 || r >= radius + edge {
        0.0
    } else {
        0.5 * (1.0 + (std::f64::consts::PI * (r - radius) / edge).cos())
    }
}

/// Soft circular mask for a D×D image (centre at pixel D/2).
pub fn circular_mask(d: usize, radius_px: f64, edge_px: f64) -> Vec<f32> {
    let h = (d / 2) as f64;
    (0..d * d)
        .map(|i| {
            let (y, x) = ((i / d) as f64 - h, (i % d) as f64 - h);
            soft_edge((x * x + y * y).sqrt(), radius_px, edge_px) as f32
        })
        .collect()
}

/// Soft spherical mask for an n³ volume (centre at voxel n/2).
pub fn spherical_mask(n: usize, radius_px: f64, edge_px: f64) -> Vec<f32> {
    let h = (n / 2) as f64;
    let mut m = vec![0f32; n * n * n];
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let (dz, dy, dx) = (z as f64 - h, y as f64 - h, x as f64 - h);
                m[(z * n + y) * n + x] =
                    soft_edge((dx * dx + dy * dy + dz * dz).sqrt(), radius_px, edge_px) as f32;
            }
        }
    }
    m
}

/// Mean and standard deviation of the pixels at distance ≥ `inner_radius_px`
/// from the centre (the background ring of a particle image).
pub fn background_stats(img: &[f32], d: usize, inner_radius_px: f64) -> (f64, f64) {
    let h = (d / 2) as f64;
    let (mut s, mut s2, mut n) = (0.0, 0.0, 0usize);
    for (i, &v) in img.iter().enumerate() {
        let (y, x) = ((i / d) as f64 - h, (i % d) as f64 - h);
        if (x * x + y * y).sqrt() >= inner_radius_px {
            s += v as f64;
            s2 += (v as f64) * (v as f64);
            n += 1;
        }
    }
    if n == 0 {
        return (0.0, 1.0);
    }
    let m = s / n as f64;
    (m, (s2 / n as f64 - m * m).max(0.0).sqrt())
}

/// RELION-style normalisation: subtract the background mean and divide by the
/// background standard deviation (ring outside `inner_radius_px`).
pub fn normalize_background(img: &mut [f32], d: usize, inner_radius_px: f64) {
    let (m, s) = background_stats(img, d, inner_radius_px);
    let s = if s > 0.0 { s } else { 1.0 };
    for v in img.iter_mut() {
        *v = ((*v as f64 - m) / s) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gains_have_the_right_limits() {
        for e in [Edge::Hard, Edge::Cosine { width_per_a: 0.01 }, Edge::Butterworth { order: 8 }] {
            assert!((lowpass_gain(0.0, 0.1, e) - 1.0).abs() < 1e-9);
            assert!(lowpass_gain(0.5, 0.1, e) < 1e-3);
            assert!((lowpass_gain(0.03, 0.1, e) + highpass_gain(0.03, 0.1, e) - 1.0).abs() < 1e-12);
        }
        assert!((lowpass_gain(0.1, 0.1, Edge::Cosine { width_per_a: 0.02 }) - 0.5).abs() < 1e-9);
        assert!((lowpass_gain(0.1, 0.1, Edge::Butterworth { order: 3 }) - 0.5f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn lowpass_removes_high_frequency_and_keeps_low() {
        let d = 32;
        let apix = 1.0;
        // cos at 4 px period (0.25/Å) + cos at 16 px period (0.0625/Å).
        let mut img: Vec<f32> = (0..d * d)
            .map(|i| {
                let x = (i % d) as f32;
                (2.0 * std::f32::consts::PI * x / 4.0).cos() + (2.0 * std::f32::consts::PI * x / 16.0).cos()
            })
            .collect();
        lowpass_image(&mut img, d, apix, 8.0, Edge::Hard);
        for (i, v) in img.iter().enumerate() {
            let x = (i % d) as f32;
            let want = (2.0 * std::f32::consts::PI * x / 16.0).cos();
            assert!((v - want).abs() < 1e-4);
        }
    }

    #[test]
    fn masks_and_normalisation() {
        let m = circular_mask(16, 4.0, 2.0);
        assert_eq!(m[8 * 16 + 8], 1.0);
        assert_eq!(m[0], 0.0);
        let s = spherical_mask(8, 2.0, 0.0);
        assert_eq!(s.iter().filter(|v| **v > 0.0).count(), 33); // lattice points with r ≤ 2
        let mut img: Vec<f32> = (0..256).map(|i| 3.0 + (i % 7) as f32).collect();
        normalize_background(&mut img, 16, 6.0);
        let (m, sd) = background_stats(&img, 16, 6.0);
        assert!(m.abs() < 1e-6 && (sd - 1.0).abs() < 1e-6);
    }
}
