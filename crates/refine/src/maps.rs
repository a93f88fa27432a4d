//! Map-side steps of a refinement: the noise spectrum, the reference mask and diameter,
//! joining the half maps at low resolution, and the band for the next iteration.

use crate::band::Band;
use crate::config::RefineError;
use cryoforge_core::fft::{Fft3, Rfft2, C32};
use cryoforge_core::fsc::FscCurve;
use cryoforge_io::stack::ParticleStack;
use rayon::prelude::*;

/// Per-shell sums of |X − M|² (or |X|²) and their counts.
#[derive(Debug, Clone, Default)]
pub struct ShellAcc {
    pub sum: Vec<f64>,
    pub count: Vec<f64>,
}

impl ShellAcc {
    pub fn new(shells: usize) -> ShellAcc {
        ShellAcc { sum: vec![0.0; shells], count: vec![0.0; shells] }
    }

    pub fn merged(mut self, o: &ShellAcc) -> ShellAcc {
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            *a += b;
        }
        for (a, b) in self.count.iter_mut().zip(&o.count) {
            *a += b;
        }
        self
    }

    /// Mean per shell, `fallback[k]` where a shell has no samples.
    pub fn mean_or(&self, fallback: &[f64]) -> Vec<f64> {
        self.sum
            .iter()
            .zip(&self.count)
            .zip(fallback)
            .map(|((s, c), f)| if *c > 0.0 && *s > 0.0 { s / c } else { *f })
            .collect()
    }
}

/// The initial noise spectrum: the mean power |X(k)|² per shell (0..=D/2) of up to
/// `max_particles` particles spread evenly over `idx`. At the SNRs of cryo-EM the signal's
/// share is small; it is replaced by the residuals of the best poses as shells enter the
/// band (RELION starts from the same estimate).
pub fn power_spectrum(
    s: &ParticleStack,
    idx: &[usize],
    max_particles: usize,
) -> Result<Vec<f64>, RefineError> {
    let d = s.box_px()?;
    let band = Band::new(d, (d / 2) as f64);
    let step = (idx.len() / max_particles.max(1)).max(1);
    let pick: Vec<usize> = idx.iter().step_by(step).take(max_particles.max(1)).copied().collect();
    let fft = Rfft2::new(d);
    let nc = band.kx_max() + 1;
    let acc = pick
        .par_chunks(64)
        .map(|chunk| -> Result<ShellAcc, RefineError> {
            let mut w = fft.work();
            let mut img = vec![0f32; d * d];
            let mut spec = vec![C32::default(); d * nc];
            let mut acc = ShellAcc::new(d / 2 + 1);
            for &i in chunk {
                s.read_image(i, &mut img)?;
                fft.forward_low(&mut w, &img, band.kx_max(), &mut spec);
                for e in band.entries() {
                    let v = spec[e.row as usize * nc + e.col as usize];
                    acc.sum[e.shell as usize] += v.norm_sqr() as f64;
                    acc.count[e.shell as usize] += 1.0;
                }
            }
            Ok(acc)
        })
        .collect::<Result<Vec<_>, RefineError>>()?
        .iter()
        // Merged in chunk order: reproducible bits (rayon's reduce tree is not fixed).
        .fold(ShellAcc::new(d / 2 + 1), |a, b| a.merged(b));
    // Shell 0 (DC only, never scored) takes shell 1's value.
    let mut p = acc.mean_or(&vec![0.0; d / 2 + 1]);
    if p.len() > 1 {
        p[0] = p[1];
    }
    if p.iter().skip(1).any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(RefineError::Input(format!(
            "{}: the particles' power spectrum has empty or non-finite shells (blank images?)",
            s.path.display()
        )));
    }
    Ok(p)
}

/// Radius (Å) of the reference's extent: the largest distance from the box centre of a
/// voxel above 5 % of the maximum density.
pub fn extent_radius_a(vol: &[f32], n: usize, apix_a: f64) -> f64 {
    let max = vol.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if max.is_nan() || max <= 0.0 {
        return 0.45 * n as f64 * apix_a;
    }
    let t = 0.05 * max;
    let h = (n / 2) as f64;
    let r2 = (0..n)
        .into_par_iter()
        .map(|z| {
            let mut m = 0f64;
            for y in 0..n {
                for x in 0..n {
                    if vol[(z * n + y) * n + x] > t {
                        let (dx, dy, dz) = (x as f64 - h, y as f64 - h, z as f64 - h);
                        m = m.max(dx * dx + dy * dy + dz * dz);
                    }
                }
            }
            m
        })
        .reduce(|| 0.0, f64::max);
    r2.sqrt() * apix_a
}

/// Average the two half maps' Fourier coefficients below `join_a` Å (both get the mean), so
/// that the halves cannot drift apart at resolutions where they carry no independent
/// information (RELION's `--low_resol_join_halves`).
pub fn join_halves_below(a: &mut [f32], b: &mut [f32], n: usize, apix_a: f64, join_a: f64) {
    let k_join = n as f64 * apix_a / join_a;
    if k_join < 1.0 {
        return;
    }
    let fft = Fft3::new(n);
    let mut fa = fft.forward_real(a);
    let mut fb = fft.forward_real(b);
    let h = (n / 2) as f64;
    let k2 = k_join * k_join;
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let r2 = (x as f64 - h).powi(2) + (y as f64 - h).powi(2) + (z as f64 - h).powi(2);
                if r2 <= k2 {
                    let i = (z * n + y) * n + x;
                    let m = (fa[i] + fb[i]) * 0.5;
                    fa[i] = m;
                    fb[i] = m;
                }
            }
        }
    }
    for (dst, spec) in [(a, fa), (b, fb)] {
        for (d, v) in dst.iter_mut().zip(fft.inverse_complex(&spec)) {
            *d = v.re;
        }
    }
}

/// The shell (fractional, linearly interpolated) where the FSC first falls below
/// `threshold`; the last shell when it never does.
pub fn shell_at(fsc: &FscCurve, threshold: f64) -> f64 {
    for k in 1..fsc.fsc.len() {
        if fsc.fsc[k] < threshold {
            let (f0, f1) = (fsc.fsc[k - 1], fsc.fsc[k]);
            let t = if k == 1 || (f0 - f1).abs() < 1e-12 { 0.0 } else { (f0 - threshold) / (f0 - f1) };
            return (k - 1) as f64 + t;
        }
    }
    (fsc.fsc.len() - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_halves_averages_only_low_frequencies() {
        let n = 16;
        let mut a: Vec<f32> = (0..n * n * n).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let mut b: Vec<f32> = (0..n * n * n).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let (a0, b0) = (a.clone(), b.clone());
        join_halves_below(&mut a, &mut b, n, 2.0, 8.0);
        let fft = Fft3::new(n);
        let (fa, fb, fa0) = (fft.forward_real(&a), fft.forward_real(&b), fft.forward_real(&a0));
        let h = (n / 2) as f64;
        let kj = n as f64 * 2.0 / 8.0;
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let r = ((x as f64 - h).powi(2) + (y as f64 - h).powi(2) + (z as f64 - h).powi(2)).sqrt();
                    let i = (z * n + y) * n + x;
                    if r <= kj {
                        assert!((fa[i] - fb[i]).norm() < 1e-3);
                    } else {
                        assert!((fa[i] - fa0[i]).norm() < 1e-3);
                    }
                }
            }
        }
        assert!(a.iter().zip(&b0).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    #[test]
    fn shell_at_interpolates_the_first_crossing() {
        let f = FscCurve { n: 16, apix_a: 1.0, fsc: vec![1.0, 0.9, 0.7, 0.3, 0.6, 0.1, 0.0, 0.0, 0.0] };
        assert!((shell_at(&f, 0.5) - 2.5).abs() < 1e-12);
        let g = FscCurve { n: 16, apix_a: 1.0, fsc: vec![1.0; 9] };
        assert_eq!(shell_at(&g, 0.5), 8.0);
    }
}
