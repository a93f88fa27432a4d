//! Rigid alignment of two maps (`cryoforge align-maps`): the rotation, translation and,
//! optionally, the hand that maximise the correlation of a moving map with a fixed one, as
//! ChimeraX's "fit in map" does when docking an ab initio map onto a known one.
//!
//! **Transform.** T(p) = R·H·p + t, with H the identity or the mirror x → −x (the other
//! hand), R a rotation and t a translation (voxels), all about the box centre (voxel n/2).
//! The aligned map is `a(x) = moving(T⁻¹x)`.
//!
//! **Search.** By Parseval, the correlation of the fixed map f with a for every t at once is
//! the inverse DFT of `G(k) = F(k)·conj(M(H·Rᵀk))` (centred transforms, CONVENTIONS rule 7):
//! one FFT per rotation scores all translations. M is sampled at the rotated frequencies
//! from the moving map's gridding-corrected 2×-padded spectrum (trilinear; without the
//! correction, off-centre density biases the optimum by degrees). DC is left out, so the score is the
//! correlation of mean-free maps, normalised by the two maps' power in the band.
//! 1. Coarse: every rotation of the 15° HEALPix × in-plane grid ([`crate::so3`]) on a
//!    Fourier-cropped box of `coarse_box` voxels (translations every n/coarse_box voxels),
//!    for each hand asked for.
//! 2. Fine: the best `keep` rotations are refined by a pattern search in the tangent space
//!    (the centre and its 26 neighbours at ±s per axis, s halving from half the grid step,
//!    so the reachable offsets cover a grid cell) on a box that grows to the full one, until
//!    s is below `final_step_deg`/2; t is refined to a fraction of a voxel by a parabola
//!    through the correlation peak on each axis.
//!
//! Pinned by `tests::recovers_a_known_rotation_shift_and_hand`.

use crate::so3::{global_grid, grid_step_rad, perturb};
use cryoforge_core::fft::{Fft3, C32};
use cryoforge_core::Rot3;
use cryoforge_sim::Projector;
use rayon::prelude::*;
use serde::Serialize;

/// Settings of [`align_maps`].
#[derive(Debug, Clone)]
pub struct AlignOptions {
    /// Also try the mirror image of the moving map.
    pub try_hand: bool,
    /// Box of the coarse search (voxels, even; ≤ the map's box).
    pub coarse_box: usize,
    /// HEALPix order of the coarse rotation grid (2 ≈ 15°).
    pub order: u32,
    /// Rotations refined after the coarse search.
    pub keep: usize,
    /// Stop refining below this angular step (degrees).
    pub final_step_deg: f64,
    /// Largest (Fourier-cropped) box of the fine search; the final score and shift use
    /// the full box.
    pub max_box: usize,
}

impl Default for AlignOptions {
    fn default() -> Self {
        AlignOptions { try_hand: false, coarse_box: 24, order: 2, keep: 8, final_step_deg: 0.1, max_box: 96 }
    }
}

/// The best transform found.
#[derive(Debug, Clone, Serialize)]
pub struct Alignment {
    /// R of T(p) = R·H·p + t.
    pub rotation: Rot3,
    /// t in voxels (x, y, z).
    pub shift_vox: [f64; 3],
    /// H is the mirror x → −x.
    pub flipped: bool,
    /// Normalised correlation of the aligned maps (mean-free, full band).
    pub score: f64,
    /// Best score of the other hand (when tried).
    pub other_hand_score: Option<f64>,
}

/// Errors of [`align_maps`].
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    #[error("maps of {a}³ and {b}³ voxels: align-maps needs two maps of the same box (resample one first)")]
    Size { a: usize, b: usize },
    #[error("{0}")]
    Input(String),
}

/// One map's spectra: the centred full one (fixed) or the padded one (moving).
struct Maps {
    n: usize,
    /// Boxes `fft[..fine_levels]` serve the search; the last is the full box.
    fine_levels: usize,
    fixed: Vec<C32>,
    moving: Projector,
    fft: Vec<(usize, Fft3)>,
}

/// Find the transform of `moving` onto `fixed` (both n³, `[z][y][x]`, same voxel size).
pub fn align_maps(
    moving: &[f32],
    fixed: &[f32],
    n: usize,
    o: &AlignOptions,
) -> Result<Alignment, AlignError> {
    let len = n * n * n;
    if moving.len() != fixed.len() || moving.len() != len {
        let cube = |l: usize| (l as f64).cbrt().round() as usize;
        return Err(AlignError::Size { a: cube(moving.len()), b: cube(fixed.len()) });
    }
    if n < 8 || n % 2 == 1 {
        return Err(AlignError::Input(format!("box of {n} voxels: align-maps needs an even box ≥ 8")));
    }
    if moving.iter().chain(fixed).any(|v| !v.is_finite()) {
        return Err(AlignError::Input("a map holds NaN or infinite values".into()));
    }
    let fixed_spec = Fft3::new(n).forward_real(fixed);
    // Gridding-corrected, 2× padded: trilinear samples of it are accurate even for content
    // far from the box centre (whose spectrum's phase turns fast).
    let moving_spec = Projector::new(moving, n, 1.0, 2.0).map_err(|e| AlignError::Input(e.to_string()))?;
    let coarse = o.coarse_box.clamp(8, n) & !1;
    let cap = o.max_box.clamp(coarse, n) & !1;
    let mut boxes = vec![coarse];
    while *boxes.last().unwrap_or(&n) < cap {
        let next = (boxes[boxes.len() - 1] * 2).min(cap);
        boxes.push(next);
    }
    if cap < n {
        // The full box, used once for the final score and shift.
        boxes.push(n);
    }
    let fine_levels = if cap < n { boxes.len() - 1 } else { boxes.len() };
    let maps = Maps {
        n,
        fine_levels,
        fixed: fixed_spec,
        moving: moving_spec,
        fft: boxes.iter().map(|&b| (b, Fft3::new(b))).collect(),
    };
    let hands: &[bool] = if o.try_hand { &[false, true] } else { &[false] };
    let mut best: Vec<(bool, Alignment)> = Vec::new();
    for &flip in hands {
        best.push((flip, search_hand(&maps, flip, o)));
    }
    best.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    let other = best.get(1).map(|b| b.1.score);
    let mut a = best.swap_remove(0).1;
    a.other_hand_score = other;
    Ok(a)
}

fn search_hand(m: &Maps, flip: bool, o: &AlignOptions) -> Alignment {
    let grid = global_grid(o.order, &[Rot3::IDENTITY]);
    let mut coarse: Vec<(f64, Rot3, [f64; 3])> = grid
        .par_iter()
        .map(|r| {
            let (s, t) = score(m, 0, r, flip);
            (s, *r, t)
        })
        .collect();
    coarse.sort_by(|a, b| b.0.total_cmp(&a.0));
    coarse.truncate(o.keep.max(1));
    // Pattern search: the centre and its 26 neighbours at ±s on each tangent axis, s
    // halving from half the grid step. The offsets reachable sum to the grid step per axis,
    // so the search reaches the truth from anywhere in a coarse grid point's cell.
    let offsets = |s: f64| -> Vec<[f64; 3]> {
        let mut v = Vec::with_capacity(26);
        for i in -1i32..=1 {
            for j in -1i32..=1 {
                for k in -1i32..=1 {
                    if (i, j, k) != (0, 0, 0) {
                        v.push([i as f64 * s, j as f64 * s, k as f64 * s]);
                    }
                }
            }
        }
        v
    };
    let mut step = 0.5 * grid_step_rad(o.order);
    let mut level = 0;
    let keep_fine = (o.keep / 2).max(2);
    while step.to_degrees() > 0.5 * o.final_step_deg {
        level = (level + 1).min(m.fine_levels - 1);
        let offs = offsets(step);
        let mut next: Vec<(f64, Rot3, [f64; 3])> = coarse
            .par_iter()
            .flat_map_iter(|(_, r, _)| {
                std::iter::once(*r).chain(offs.iter().map(move |w| perturb(r, *w))).collect::<Vec<_>>()
            })
            .map(|r| {
                let (s, t) = score(m, level, &r, flip);
                (s, r, t)
            })
            .collect();
        next.sort_by(|a, b| b.0.total_cmp(&a.0));
        // Distinct survivors: two candidates closer than the step are one.
        let mut kept: Vec<(f64, Rot3, [f64; 3])> = Vec::with_capacity(keep_fine);
        for c in next {
            if kept.len() >= keep_fine {
                break;
            }
            if kept.iter().all(|k| k.1.angle_to_deg(&c.1) > 0.5 * step.to_degrees()) {
                kept.push(c);
            }
        }
        coarse = kept;
        step *= 0.5;
    }
    // The final scores on the full box.
    let last = m.fft.len() - 1;
    let (score_full, t) = score(m, last, &coarse[0].1, flip);
    Alignment {
        rotation: coarse[0].1,
        shift_vox: t,
        flipped: flip,
        score: score_full,
        other_hand_score: None,
    }
}

/// Normalised correlation and best translation (voxels of the full box) of rotation `r`
/// on box `m.fft[level]`.
fn score(m: &Maps, level: usize, r: &Rot3, flip: bool) -> (f64, [f64; 3]) {
    let (b, fft) = (&m.fft[level].0, &m.fft[level].1);
    let (b, n) = (*b, m.n);
    let (hb, hn) = ((b / 2) as isize, (n / 2) as isize);
    let mut g = vec![C32::default(); b * b * b];
    let (mut pf, mut pm) = (0f64, 0f64);
    // Frequencies inside the sphere of radius b/2 (isotropic band), DC left out.
    let kmax2 = ((hb - 1) * (hb - 1)) as f64;
    let a = &r.0;
    for z in 0..b {
        let kz = z as isize - hb;
        for y in 0..b {
            let ky = y as isize - hb;
            for x in 0..b {
                let kx = x as isize - hb;
                let k2 = (kx * kx + ky * ky + kz * kz) as f64;
                if k2 == 0.0 || k2 > kmax2 {
                    continue;
                }
                let f = m.fixed[(((kz + hn) as usize * n) + (ky + hn) as usize) * n + (kx + hn) as usize];
                // Rᵀk, then the mirror, in padded-grid units (2×).
                let k = [kx as f64, ky as f64, kz as f64];
                let mut q = [
                    a[0][0] * k[0] + a[1][0] * k[1] + a[2][0] * k[2],
                    a[0][1] * k[0] + a[1][1] * k[1] + a[2][1] * k[2],
                    a[0][2] * k[0] + a[1][2] * k[1] + a[2][2] * k[2],
                ];
                if flip {
                    q[0] = -q[0];
                }
                let mv = m.moving.padded_spectrum().sample([2.0 * q[0], 2.0 * q[1], 2.0 * q[2]]);
                g[(z * b + y) * b + x] = f * mv.conj();
                pf += f.norm_sqr() as f64;
                pm += mv.norm_sqr() as f64;
            }
        }
    }
    let c = fft.inverse_complex(&g);
    let (mut bi, mut bv) = (0usize, f32::NEG_INFINITY);
    for (i, v) in c.iter().enumerate() {
        if v.re > bv {
            bv = v.re;
            bi = i;
        }
    }
    let at = |x: usize, y: usize, z: usize| c[(z % b * b + y % b) * b + x % b].re as f64;
    let (x0, y0, z0) = (bi % b, (bi / b) % b, bi / (b * b));
    // Parabola through the peak and its neighbours on each axis (periodic).
    let para = |m1: f64, c0: f64, p1: f64| {
        let d = m1 - 2.0 * c0 + p1;
        if d < 0.0 {
            (0.5 * (m1 - p1) / d).clamp(-0.5, 0.5)
        } else {
            0.0
        }
    };
    let dx = para(at(x0 + b - 1, y0, z0), bv as f64, at(x0 + 1, y0, z0));
    let dy = para(at(x0, y0 + b - 1, z0), bv as f64, at(x0, y0 + 1, z0));
    let dz = para(at(x0, y0, z0 + b - 1), bv as f64, at(x0, y0, z0 + 1));
    let scale = n as f64 / b as f64;
    let tb = [x0 as f64 + dx - hb as f64, y0 as f64 + dy - hb as f64, z0 as f64 + dz - hb as f64];
    let t = [tb[0] * scale, tb[1] * scale, tb[2] * scale];
    // The correlation at the sub-voxel peak itself, summed exactly: the grid maximum alone
    // would favour rotations that happen to put the peak on a voxel, a bias of degrees.
    let ramp = |tc: f64| -> Vec<C32> {
        (0..b)
            .map(|i| {
                let ph = std::f64::consts::TAU * (i as isize - hb) as f64 * tc / b as f64;
                C32::new(ph.cos() as f32, ph.sin() as f32)
            })
            .collect()
    };
    let (rx, ry, rz) = (ramp(tb[0]), ramp(tb[1]), ramp(tb[2]));
    let mut exact = 0f64;
    for z in 0..b {
        for y in 0..b {
            let pzy = rz[z] * ry[y];
            let row = &g[(z * b + y) * b..(z * b + y + 1) * b];
            let mut acc = 0f64;
            for (x, v) in row.iter().enumerate() {
                acc += (*v * (pzy * rx[x])).re as f64;
            }
            exact += acc;
        }
    }
    let bv = (exact / (b * b * b) as f64).max(bv as f64);
    // Σ_x f·a = (1/N)·Σ_k F·conj(A) for unnormalised transforms; the inverse FFT already
    // divides by b³, and the norms are those of the band's coefficients.
    let norm = (pf * pm).sqrt() / (b * b * b) as f64;
    let s = if norm > 0.0 { bv / norm } else { 0.0 };
    (s, t)
}

/// The aligned map `a(x) = moving(T⁻¹x)` by trilinear interpolation (0 outside the box).
pub fn apply(moving: &[f32], n: usize, al: &Alignment) -> Vec<f32> {
    let h = (n / 2) as f64;
    let rt = al.rotation.transpose();
    let mut out = vec![0f32; n * n * n];
    out.par_chunks_mut(n * n).enumerate().for_each(|(z, slab)| {
        for y in 0..n {
            for x in 0..n {
                let p = [
                    x as f64 - h - al.shift_vox[0],
                    y as f64 - h - al.shift_vox[1],
                    z as f64 - h - al.shift_vox[2],
                ];
                let mut q = rt.apply(p);
                if al.flipped {
                    q[0] = -q[0];
                }
                slab[y * n + x] = trilinear(moving, n, [q[0] + h, q[1] + h, q[2] + h]);
            }
        }
    });
    out
}

fn trilinear(v: &[f32], n: usize, p: [f64; 3]) -> f32 {
    let f = p.map(|c| c.floor());
    if f.iter().any(|&c| c < 0.0 || c + 1.0 > (n - 1) as f64) {
        return 0.0;
    }
    let (x0, y0, z0) = (f[0] as usize, f[1] as usize, f[2] as usize);
    let (fx, fy, fz) = ((p[0] - f[0]) as f32, (p[1] - f[1]) as f32, (p[2] - f[2]) as f32);
    let at = |x: usize, y: usize, z: usize| v[(z * n + y) * n + x];
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let c00 = lerp(at(x0, y0, z0), at(x0 + 1, y0, z0), fx);
    let c10 = lerp(at(x0, y0 + 1, z0), at(x0 + 1, y0 + 1, z0), fx);
    let c01 = lerp(at(x0, y0, z0 + 1), at(x0 + 1, y0, z0 + 1), fx);
    let c11 = lerp(at(x0, y0 + 1, z0 + 1), at(x0 + 1, y0 + 1, z0 + 1), fx);
    lerp(lerp(c00, c10, fy), lerp(c01, c11, fy), fz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::EulerRelion;

    /// Gaussian blobs of an asymmetric arrangement at positions `p` (voxels from the centre).
    fn blobs(n: usize, p: &[[f64; 3]]) -> Vec<f32> {
        let h = (n / 2) as f64;
        let mut v = vec![0f32; n * n * n];
        for (i, o) in v.iter_mut().enumerate() {
            let x = [(i % n) as f64 - h, ((i / n) % n) as f64 - h, (i / (n * n)) as f64 - h];
            *o = p
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let r2 = (0..3).map(|a| (x[a] - c[a]).powi(2)).sum::<f64>();
                    (1.0 + 0.2 * j as f64) * (-r2 / 3.0).exp()
                })
                .sum::<f64>() as f32;
        }
        v
    }

    #[test]
    fn recovers_a_known_rotation_shift_and_hand() {
        let n = 40;
        let pts: Vec<[f64; 3]> = vec![
            [0.0, 0.0, 0.0],
            [6.0, 1.0, -2.0],
            [-3.0, 7.0, 1.0],
            [2.0, -4.0, 6.0],
            [-5.0, -3.0, -5.0],
            [1.0, 9.0, -6.0],
            [8.0, -6.0, 3.0],
        ];
        let fixed = blobs(n, &pts);
        for (rot, t, flip) in [
            (EulerRelion::new(170.0, 100.0, -60.0).to_rot(), [2.3, -1.6, 0.8], false),
            (Rot3::from_axis_angle([0.3, -0.8, 0.5], std::f64::consts::PI * 0.999), [-3.4, 0.4, 2.7], true),
        ] {
            // moving = T⁻¹(fixed): blobs at H·Rᵀ(p − t).
            let mv: Vec<[f64; 3]> = pts
                .iter()
                .map(|p| {
                    let mut q = rot.transpose().apply([p[0] - t[0], p[1] - t[1], p[2] - t[2]]);
                    if flip {
                        q[0] = -q[0];
                    }
                    q
                })
                .collect();
            let moving = blobs(n, &mv);
            let a = align_maps(&moving, &fixed, n, &AlignOptions { try_hand: true, ..Default::default() })
                .unwrap();
            assert_eq!(a.flipped, flip);
            let err = a.rotation.angle_to_deg(&rot);
            let terr = (0..3).map(|k| (a.shift_vox[k] - t[k]).powi(2)).sum::<f64>().sqrt();
            eprintln!("rotation error {err:.3}°, shift error {terr:.3} voxels, score {:.4}", a.score);
            assert!(err < 1.0 && terr < 0.5, "rotation error {err:.3}°, shift error {terr:.3} voxels");
            assert!(a.score > 0.95 && a.other_hand_score.unwrap() < a.score - 0.1, "{a:?}");
            // The aligned map matches the fixed one.
            let al = apply(&moving, n, &a);
            let cc = cryoforge_core::fsc::fsc_volumes(&al, &fixed, n, 1.0);
            assert!(cc.fsc[4] > 0.95, "aligned map FSC at shell 4: {}", cc.fsc[4]);
        }
        // A fine search on a box capped below the map's (large maps), coarse box 16.
        let rot = EulerRelion::new(-40.0, 65.0, 120.0).to_rot();
        let t = [1.3, 2.2, -0.7];
        let mv: Vec<[f64; 3]> =
            pts.iter().map(|p| rot.transpose().apply([p[0] - t[0], p[1] - t[1], p[2] - t[2]])).collect();
        let o = AlignOptions { coarse_box: 16, max_box: 24, ..Default::default() };
        let a = align_maps(&blobs(n, &mv), &fixed, n, &o).unwrap();
        let err = a.rotation.angle_to_deg(&rot);
        let terr = (0..3).map(|k| (a.shift_vox[k] - t[k]).powi(2)).sum::<f64>().sqrt();
        assert!(err < 1.0 && terr < 0.5 && !a.flipped, "capped box: {err:.3}°, {terr:.3} voxels");
        assert!(a.other_hand_score.is_none());
        assert!(matches!(
            align_maps(&fixed, &fixed[..8 * 8 * 8], n, &AlignOptions::default()),
            Err(AlignError::Size { .. })
        ));
    }
}
