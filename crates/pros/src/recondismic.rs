//! ReconDisMic (paper 000, METHODS.md §3): a starting reference for membrane proteins in
//! micelles or nanodiscs. The volume is V = M·V_homolog + (1 − M)·V_micelle with M a mask
//! of the homolog (given, or the low-passed homolog thresholded); V_micelle starts as a
//! centred cube and is fitted by Adam to the particles through the forward model,
//! minimising Σᵢ ‖a·Cᵢ Pᵢ V − xᵢ‖² over mini-batches (Pᵢ the real-space projection at the
//! particle's pose, Cᵢ its shift and −CTF, `invert` negates; a the least-squares grey
//! scale of the batch, in closed form). The gradient is the exact adjoint: trilinear
//! splatting along the projection rays and the conjugate Fourier filter.
//!
//! The micelle is optimised in units of the homolog's standard deviation inside the mask,
//! so the learning rate does not depend on the map's grey scale (the reference code's
//! Adam 1e-4 acts on the raw voxel values of its maps).

use crate::{ProsError, Result};
use cryoforge_core::ctf::ctf_grid_centered;
use cryoforge_core::fft::{recentre_phasor_2d, Fft2, C32};
use cryoforge_core::filter::{lowpass_volume, Edge};
use cryoforge_core::Rot3;
use cryoforge_io::stack::ParticleStack;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DisMicConfig {
    /// Low-pass (Å) of the homolog before thresholding it into the mask.
    pub lowpass_a: f64,
    /// Mask threshold as a fraction of the low-passed homolog's maximum (when no mask is given).
    pub threshold_frac: f64,
    /// Edge of the initial cube as a fraction of the box, and its value as a fraction of the
    /// homolog's mean inside the mask.
    pub cube_edge_frac: f64,
    pub cube_value_frac: f64,
    pub steps: usize,
    pub batch_size: usize,
    /// Adam learning rate on the micelle in units of the homolog's standard deviation.
    pub lr: f64,
    pub invert: bool,
    pub seed: u64,
}

impl Default for DisMicConfig {
    fn default() -> Self {
        DisMicConfig {
            lowpass_a: 10.0,
            threshold_frac: 0.1,
            cube_edge_frac: 0.5,
            cube_value_frac: 0.3,
            steps: 1500,
            batch_size: 8,
            lr: 1e-2,
            invert: false,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DisMicOutcome {
    pub steps: usize,
    /// Mean squared residual per pixel over the first and last 10 % of the steps.
    pub loss_start: f64,
    pub loss_end: f64,
    pub mask_fraction: f64,
    pub seconds: f64,
}

/// Trilinear sample of `v` (n³, x fastest) at voxel coordinates p; zero outside.
#[inline]
fn corners(n: usize, p: [f64; 3]) -> Option<([usize; 3], [f64; 3])> {
    let f = [p[0].floor(), p[1].floor(), p[2].floor()];
    if f.iter().any(|&c| c < 0.0 || c + 1.0 >= n as f64) {
        return None;
    }
    Some(([f[0] as usize, f[1] as usize, f[2] as usize], [p[0] - f[0], p[1] - f[1], p[2] - f[2]]))
}

/// The rays of a pose: for image pixel (i, j) and depth k, the volume point Aᵀ·(j − h, i − h, k − h) + h.
fn ray_point(a: &[[f64; 3]; 3], h: f64, i: usize, j: usize, k: usize) -> [f64; 3] {
    let (px, py, pz) = (j as f64 - h, i as f64 - h, k as f64 - h);
    [
        a[0][0] * px + a[1][0] * py + a[2][0] * pz + h,
        a[0][1] * px + a[1][1] * py + a[2][1] * pz + h,
        a[0][2] * px + a[1][2] * py + a[2][2] * pz + h,
    ]
}

/// Real-space projection (sum along z of the rotated volume, trilinear).
pub fn project(v: &[f32], n: usize, rot: &Rot3, out: &mut [f32]) {
    let h = (n / 2) as f64;
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0f64;
            for k in 0..n {
                if let Some((c, t)) = corners(n, ray_point(&rot.0, h, i, j, k)) {
                    for dz in 0..2 {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                let w = (if dx == 1 { t[0] } else { 1.0 - t[0] })
                                    * (if dy == 1 { t[1] } else { 1.0 - t[1] })
                                    * (if dz == 1 { t[2] } else { 1.0 - t[2] });
                                acc += w * v[((c[2] + dz) * n + c[1] + dy) * n + c[0] + dx] as f64;
                            }
                        }
                    }
                }
            }
            out[i * n + j] = acc as f32;
        }
    }
}

/// The adjoint of [`project`]: adds the image spread back along its rays into `v`.
pub fn backproject(img: &[f32], n: usize, rot: &Rot3, v: &mut [f32]) {
    let h = (n / 2) as f64;
    for i in 0..n {
        for j in 0..n {
            let g = img[i * n + j] as f64;
            if g == 0.0 {
                continue;
            }
            for k in 0..n {
                if let Some((c, t)) = corners(n, ray_point(&rot.0, h, i, j, k)) {
                    for dz in 0..2 {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                let w = (if dx == 1 { t[0] } else { 1.0 - t[0] })
                                    * (if dy == 1 { t[1] } else { 1.0 - t[1] })
                                    * (if dz == 1 { t[2] } else { 1.0 - t[2] });
                                v[((c[2] + dz) * n + c[1] + dy) * n + c[0] + dx] += (w * g) as f32;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Applies the Fourier filter `h` (centred, D×D) to a real image in place, or its
/// adjoint (conj h) when `adjoint`.
fn filter(img: &mut [f32], fft: &Fft2, h: &[C32], adjoint: bool) {
    let d = fft.size();
    let mut w = fft.work();
    let mut spec = vec![C32::default(); d * d];
    fft.forward_real(&mut w, img, &mut spec);
    for (s, f) in spec.iter_mut().zip(h) {
        *s *= if adjoint { f.conj() } else { *f };
    }
    fft.inverse_real(&mut w, &spec, img);
}

/// The mask of the homolog: the map low-passed to `lowpass_a` and thresholded at
/// `threshold_frac` of its maximum, with a 2-voxel soft edge (a 3×3×3 mean, twice).
pub fn homolog_mask(vol: &[f32], n: usize, apix_a: f64, lowpass_a: f64, threshold_frac: f64) -> Vec<f32> {
    let mut lp = vol.to_vec();
    lowpass_volume(&mut lp, n, apix_a, lowpass_a, Edge::Cosine { width_per_a: 1.0 / (n as f64 * apix_a) });
    let max = lp.iter().copied().fold(f32::MIN, f32::max);
    let thr = max * threshold_frac as f32;
    let mut m: Vec<f32> = lp.iter().map(|&v| if v >= thr { 1.0 } else { 0.0 }).collect();
    for _ in 0..2 {
        let prev = m.clone();
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let (mut s, mut c) = (0f32, 0f32);
                    for dz in -1i32..=1 {
                        for dy in -1i32..=1 {
                            for dx in -1i32..=1 {
                                let (xx, yy, zz) = (x as i32 + dx, y as i32 + dy, z as i32 + dz);
                                if (0..n as i32).contains(&xx)
                                    && (0..n as i32).contains(&yy)
                                    && (0..n as i32).contains(&zz)
                                {
                                    s += prev[((zz as usize) * n + yy as usize) * n + xx as usize];
                                    c += 1.0;
                                }
                            }
                        }
                    }
                    m[(z * n + y) * n + x] = (s / c).max(prev[(z * n + y) * n + x]);
                }
            }
        }
    }
    m
}

/// Fits the micelle; writes DIR/mask.mrc, micelle.mrc ((1 − M)·V_micelle), composite.mrc
/// (the volume V), metrics.csv (`step,loss,scale`) and summary.json.
pub fn run(
    stack: &ParticleStack,
    homolog: &[f32],
    mask: Option<Vec<f32>>,
    cfg: &DisMicConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<DisMicOutcome> {
    let t0 = std::time::Instant::now();
    let (d, apix) = crate::train::check_stack(stack)?;
    let n3 = d * d * d;
    if homolog.len() != n3 {
        return Err(ProsError::msg(format!(
            "the homolog volume has {} voxels, the particles need {d}³",
            homolog.len()
        )));
    }
    let mask = match mask {
        Some(m) if m.len() != n3 => {
            return Err(ProsError::msg(format!("the mask has {} voxels, the particles need {d}³", m.len())))
        }
        Some(m) => m.into_iter().map(|v| v.clamp(0.0, 1.0)).collect(),
        None => homolog_mask(homolog, d, apix, cfg.lowpass_a, cfg.threshold_frac),
    };
    if cfg.steps == 0 || cfg.batch_size == 0 || cfg.lr.is_nan() || cfg.lr <= 0.0 {
        return Err(ProsError::msg("ReconDisMic: --steps, --batch-size and --lr must be positive"));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| ProsError::msg(format!("{}: cannot create: {e}", out.display())))?;
    let msum: f64 = mask.iter().map(|&v| v as f64).sum();
    if msum < 1.0 {
        return Err(ProsError::msg("the homolog's mask is empty: lower --threshold or give --mask"));
    }
    let mean_in = homolog.iter().zip(&mask).map(|(&v, &m)| v as f64 * m as f64).sum::<f64>() / msum;
    let var_in =
        homolog.iter().zip(&mask).map(|(&v, &m)| (v as f64 - mean_in).powi(2) * m as f64).sum::<f64>() / msum;
    let unit = var_in.sqrt().max(1e-12) as f32;
    // The micelle u (in units of `unit`) starts as a centred cube.
    let edge = cfg.cube_edge_frac * d as f64 / 2.0;
    let c = (d / 2) as f64;
    let cube_val = (cfg.cube_value_frac * mean_in / unit as f64) as f32;
    let mut u = vec![0f32; n3];
    for z in 0..d {
        for y in 0..d {
            for x in 0..d {
                if [x, y, z].iter().all(|&q| (q as f64 - c).abs() <= edge) {
                    u[(z * d + y) * d + x] = cube_val;
                }
            }
        }
    }
    let poses = stack.poses.as_ref().ok_or_else(|| ProsError::msg("particles without poses"))?;
    let ctfs = stack.ctf.as_ref();
    let fft = Fft2::new(d);
    let sign = if cfg.invert { -1.0f32 } else { 1.0 };
    let (mut m1, mut m2) = (vec![0f32; n3], vec![0f32; n3]);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x444d);
    let mut order: Vec<usize> = (0..stack.len()).collect();
    order.shuffle(&mut rng);
    let mut at = 0usize;
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut csv = String::from("step,loss,scale\n");
    let dd = d * d;
    for step in 0..cfg.steps {
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(stack.len()) {
            if at == order.len() {
                order.shuffle(&mut rng);
                at = 0;
            }
            batch.push(order[at]);
            at += 1;
        }
        let vol: Vec<f32> = (0..n3).map(|i| mask[i] * homolog[i] + (1.0 - mask[i]) * u[i] * unit).collect();
        // Forward: projections through the filter, and the particles.
        let per: Vec<(Vec<f32>, Vec<f32>, Vec<C32>)> = batch
            .par_iter()
            .map(|&i| -> Result<_> {
                let p = &poses[i];
                let mut grid = vec![1f32; dd];
                if let Some(c) = ctfs {
                    ctf_grid_centered(&c[i], d, apix, &mut grid);
                    grid.iter_mut().for_each(|g| *g = -*g * sign);
                } else {
                    grid.iter_mut().for_each(|g| *g = sign);
                }
                let h = d as f64 / 2.0;
                let filt: Vec<C32> = (0..dd)
                    .map(|k| {
                        let (r, cc) = (k / d, k % d);
                        recentre_phasor_2d([cc as f64 - h, r as f64 - h], p.shift_px, d).conj() * grid[k]
                    })
                    .collect();
                let mut proj = vec![0f32; dd];
                project(&vol, d, &p.rot, &mut proj);
                filter(&mut proj, &fft, &filt, false);
                let mut x = vec![0f32; dd];
                stack.read_image(i, &mut x)?;
                Ok((proj, x, filt))
            })
            .collect::<Result<_>>()?;
        let (mut sxy, mut syy) = (0f64, 0f64);
        for (p, x, _) in &per {
            for (a, b) in p.iter().zip(x) {
                sxy += *a as f64 * *b as f64;
                syy += (*a as f64).powi(2);
            }
        }
        let a = if syy > 0.0 { sxy / syy } else { 1.0 };
        let norm = (per.len() * dd) as f64;
        let mut loss = 0f64;
        // Gradient of the loss with respect to the volume: Σ 2a·Aᵀ(a·A V − x) / (B·D²).
        let grads: Vec<(Vec<f32>, f64)> = per
            .par_iter()
            .zip(batch.par_iter())
            .map(|((p, x, filt), &i)| {
                let mut r: Vec<f32> = p.iter().zip(x).map(|(pv, xv)| (a as f32) * pv - xv).collect();
                let l: f64 = r.iter().map(|v| (*v as f64).powi(2)).sum();
                filter(&mut r, &fft, filt, true);
                let s = (2.0 * a / norm) as f32;
                r.iter_mut().for_each(|v| *v *= s);
                let mut g = vec![0f32; n3];
                backproject(&r, d, &poses[i].rot, &mut g);
                (g, l)
            })
            .collect();
        let mut g = vec![0f32; n3];
        for (gi, l) in &grads {
            loss += l;
            g.iter_mut().zip(gi).for_each(|(a, b)| *a += b);
        }
        loss /= norm;
        // Chain rule to u: ∂V/∂u = (1 − M)·unit; Adam.
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for i in 0..n3 {
            let gu = (g[i] * (1.0 - mask[i]) * unit) as f64;
            m1[i] = (b1 * m1[i] as f64 + (1.0 - b1) * gu) as f32;
            m2[i] = (b2 * m2[i] as f64 + (1.0 - b2) * gu * gu) as f32;
            let mh = m1[i] as f64 / c1;
            let vh = m2[i] as f64 / c2;
            u[i] -= (cfg.lr * mh / (vh.sqrt() + eps)) as f32;
        }
        losses.push(loss);
        csv.push_str(&format!("{},{loss},{a}\n", step + 1));
        progress(step + 1, cfg.steps, loss);
    }
    let k = (cfg.steps / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let micelle: Vec<f32> = (0..n3).map(|i| (1.0 - mask[i]) * u[i] * unit).collect();
    let composite: Vec<f32> = (0..n3).map(|i| mask[i] * homolog[i] + micelle[i]).collect();
    let w = |name: &str, v: &[f32]| {
        cryoforge_io::mrc::write_volume(out.join(name), v, [d, d, d], apix as f32, [0.0; 3])
    };
    w("mask.mrc", &mask)?;
    w("micelle.mrc", &micelle)?;
    w("composite.mrc", &composite)?;
    cryoforge_io::atomic::write_bytes_atomic(&out.join("metrics.csv"), csv.as_bytes())?;
    let o = DisMicOutcome {
        steps: cfg.steps,
        loss_start: mean(&losses[..k]),
        loss_end: mean(&losses[losses.len() - k..]),
        mask_fraction: msum / n3 as f64,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let j = serde_json::to_vec_pretty(&serde_json::json!({"settings": cfg, "outcome": &o}))
        .map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&out.join("summary.json"), &j)?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::rotation::EulerRelion;
    use rand::Rng;

    #[test]
    fn backprojection_is_the_adjoint_of_projection() {
        let n = 12;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let v: Vec<f32> = (0..n * n * n).map(|_| r.gen_range(-1.0..1.0)).collect();
        let y: Vec<f32> = (0..n * n).map(|_| r.gen_range(-1.0..1.0)).collect();
        let rot = EulerRelion::new(20.0, 70.0, -35.0).to_rot();
        let mut pv = vec![0f32; n * n];
        project(&v, n, &rot, &mut pv);
        let mut pty = vec![0f32; n * n * n];
        backproject(&y, n, &rot, &mut pty);
        let a: f64 = pv.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        let b: f64 = v.iter().zip(&pty).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "<Pv, y> = {a}, <v, Pᵀy> = {b}");
        // The Fourier filter's adjoint.
        let d = 8;
        let fft = Fft2::new(d);
        let h: Vec<C32> =
            (0..d * d).map(|_| C32::new(r.gen_range(-1.0..1.0), r.gen_range(-1.0..1.0))).collect();
        // A real-to-real filter needs Hermitian symmetry; symmetrise h.
        let mut hs = h.clone();
        for i in 0..d {
            for j in 0..d {
                let (mi, mj) = ((d - i) % d, (d - j) % d);
                hs[i * d + j] = (h[i * d + j] + h[mi * d + mj].conj()) * 0.5;
            }
        }
        let x: Vec<f32> = (0..d * d).map(|_| r.gen_range(-1.0..1.0)).collect();
        let z: Vec<f32> = (0..d * d).map(|_| r.gen_range(-1.0..1.0)).collect();
        let (mut fx, mut fz) = (x.clone(), z.clone());
        filter(&mut fx, &fft, &hs, false);
        filter(&mut fz, &fft, &hs, true);
        let a: f64 = fx.iter().zip(&z).map(|(a, b)| *a as f64 * *b as f64).sum();
        let b: f64 = x.iter().zip(&fz).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}
