//! Soft masks from maps, as `relion_mask_create` (RELION 3.1).
//!
//! The steps, each optional but the threshold:
//!
//! 1. low-pass the map (`lowpass_a`; raised-cosine edge two Fourier shells wide, as
//!    RELION's `lowPassFilterMap`),
//! 2. binarise: 1 where the value is ≥ the threshold, 0 elsewhere (`--ini_threshold`),
//! 3. extend the binary mask by `extend_px` pixels: a 0 voxel becomes 1 when a 1 voxel lies
//!    at a distance d < `extend_px`; a negative value shrinks it (a 1 voxel becomes 0 when a
//!    0 voxel lies at d < |`extend_px`|) (`--extend_inimask`),
//! 4. add a soft edge of `soft_edge_px` pixels: a 0 voxel at distance d < W from the nearest
//!    1 voxel gets ½ + ½·cos(π·d/W) (`--width_soft_edge`).
//!
//! Values lie in [0, 1]. RELION finds d by scanning a cube of ±r voxels around every voxel,
//! O(N³·r³); here d is the exact Euclidean distance transform of the binary mask
//! (Felzenszwalb & Huttenlocher 2012: lower envelopes of parabolas along x, then y, then z),
//! O(N³) whatever the widths, with the same strict inequalities, so the result is RELION's
//! voxel for voxel. Distances are measured within the box only, as RELION's scan is.
//!
//! [`Threshold::Auto`] picks the threshold by Otsu's method (1979) on a 1024-bin histogram
//! of the (low-passed) map: the level that maximises the between-class variance of the
//! voxels below and above it (the middle of the gap when empty bins separate them).
//! Solvent and particle form the two classes, so the level lands
//! between the solvent and the particle's density; the extension and soft edge then make
//! the mask loose. It is a starting point: check the mask in ChimeraX.
//!
//! ```
//! use cryoforge_recon::mask::{create_mask, MaskOptions, Threshold};
//! let n = 16;
//! let ball = cryoforge_core::filter::spherical_mask(n, 3.0, 0.0);
//! let opts = MaskOptions { threshold: Threshold::Value(0.5), extend_px: 2.0, soft_edge_px: 3.0, ..Default::default() };
//! let m = create_mask(&ball, n, 1.0, &opts).unwrap();
//! assert_eq!(m[(8 * n + 8) * n + 8], 1.0);
//! ```

use crate::ReconError;
use cryoforge_core::filter::{lowpass_volume, Edge};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Width of the low-pass filter's raised-cosine edge in Fourier shells (RELION's
/// `filter_edge_width` default).
pub const LOWPASS_EDGE_SHELLS: f64 = 2.0;

/// Bins of the histogram [`Threshold::Auto`] works on.
pub const OTSU_BINS: usize = 1024;

/// How the binarisation threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Threshold {
    /// A density value (in the map's units, after the optional low-pass).
    Value(f64),
    /// Otsu's threshold of the (low-passed) map (see the module documentation).
    Auto,
}

/// Options of [`create_mask`]; the defaults are RELION's (no low-pass, extension or soft
/// edge) with threshold 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskOptions {
    pub threshold: Threshold,
    /// Low-pass the map to this resolution (Å) before binarising.
    pub lowpass_a: Option<f64>,
    /// Extend (> 0) or shrink (< 0) the binary mask by this many pixels.
    pub extend_px: f64,
    /// Width of the raised-cosine soft edge in pixels (0: a binary mask).
    pub soft_edge_px: f64,
}

impl Default for MaskOptions {
    fn default() -> Self {
        MaskOptions { threshold: Threshold::Value(0.0), lowpass_a: None, extend_px: 0.0, soft_edge_px: 0.0 }
    }
}

/// A mask and what went into it.
#[derive(Debug, Clone)]
pub struct MaskResult {
    /// The mask, n³ values in [0, 1], `[z][y][x]`.
    pub mask: Vec<f32>,
    /// The threshold used (the chosen one for [`Threshold::Auto`]).
    pub threshold: f64,
    /// Voxels ≥ the threshold.
    pub binary_voxels: usize,
    /// Voxels equal to 1 after the extension or shrinking.
    pub extended_voxels: usize,
    /// Voxels strictly between 0 and 1 (the soft edge).
    pub edge_voxels: usize,
}

/// The mask of `vol` (n³, `[z][y][x]`, pixel size `apix_a` Å) by RELION's recipe (module
/// documentation).
pub fn create_mask(vol: &[f32], n: usize, apix_a: f64, opts: &MaskOptions) -> Result<Vec<f32>, ReconError> {
    Ok(create_mask_detailed(vol, n, apix_a, opts)?.mask)
}

/// [`create_mask`] with the threshold used and the voxel counts of each step.
pub fn create_mask_detailed(
    vol: &[f32],
    n: usize,
    apix_a: f64,
    opts: &MaskOptions,
) -> Result<MaskResult, ReconError> {
    validate(vol, n, apix_a, opts)?;
    let mut v = vol.to_vec();
    if let Some(lp) = opts.lowpass_a {
        let width = LOWPASS_EDGE_SHELLS / (n as f64 * apix_a);
        lowpass_volume(&mut v, n, apix_a, lp, Edge::Cosine { width_per_a: width });
    }
    let threshold = match opts.threshold {
        Threshold::Value(t) => t,
        Threshold::Auto => otsu_threshold(&v),
    };
    let mut bin: Vec<bool> = v.iter().map(|&x| x as f64 >= threshold).collect();
    let binary_voxels = bin.iter().filter(|&&b| b).count();
    if binary_voxels == 0 {
        let max = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        return Err(ReconError::Input(format!(
            "no voxel reaches the threshold {threshold} (the {}map's maximum is {max}): the mask would be empty",
            if opts.lowpass_a.is_some() { "low-passed " } else { "" }
        )));
    }
    if opts.extend_px != 0.0 {
        bin = extend_binary(&bin, n, opts.extend_px);
    }
    let extended_voxels = bin.iter().filter(|&&b| b).count();
    if extended_voxels == 0 {
        return Err(ReconError::Input(format!(
            "shrinking by {} px removes all {binary_voxels} voxels of the binary mask",
            -opts.extend_px
        )));
    }
    let mask = soften(&bin, n, opts.soft_edge_px);
    let edge_voxels = mask.iter().filter(|&&m| m > 0.0 && m < 1.0).count();
    Ok(MaskResult { mask, threshold, binary_voxels, extended_voxels, edge_voxels })
}

fn validate(vol: &[f32], n: usize, apix_a: f64, opts: &MaskOptions) -> Result<(), ReconError> {
    if n < 2 || vol.len() != n * n * n {
        return Err(ReconError::Input(format!(
            "the map has {} values, not the {n}³ of a cubic box",
            vol.len()
        )));
    }
    if let Some(i) = vol.iter().position(|v| !v.is_finite()) {
        return Err(ReconError::Input(format!("the map holds {} at voxel {i}", vol[i])));
    }
    if let Threshold::Value(t) = opts.threshold {
        if !t.is_finite() {
            return Err(ReconError::Input(format!("threshold {t} is not a number")));
        }
    }
    if let Some(lp) = opts.lowpass_a {
        if !(lp.is_finite() && lp > 0.0 && apix_a.is_finite() && apix_a > 0.0) {
            return Err(ReconError::Input(format!(
                "low-pass {lp} Å needs a resolution > 0 and a pixel size > 0 (got {apix_a} Å/px)"
            )));
        }
    }
    if !(opts.extend_px.is_finite() && opts.soft_edge_px.is_finite() && opts.soft_edge_px >= 0.0) {
        return Err(ReconError::Input(format!(
            "extension {} px and soft edge {} px must be finite, the edge ≥ 0",
            opts.extend_px, opts.soft_edge_px
        )));
    }
    Ok(())
}

/// Dilate (`px` > 0) or erode (`px` < 0) a binary mask: RELION's `autoMask` step B.
fn extend_binary(bin: &[bool], n: usize, px: f64) -> Vec<bool> {
    let r2 = (px * px) as f32;
    if px > 0.0 {
        let d2 = squared_distance_transform(bin, n);
        d2.iter().map(|&d| d < r2).collect()
    } else {
        let zeros: Vec<bool> = bin.iter().map(|&b| !b).collect();
        let d2 = squared_distance_transform(&zeros, n);
        bin.iter().zip(&d2).map(|(&b, &d)| b && d >= r2).collect()
    }
}

/// The raised-cosine edge of RELION's `autoMask` step C: 1 inside, ½ + ½·cos(π·d/W) for
/// 0 < d < W, 0 beyond (d: distance to the nearest 1 voxel).
fn soften(bin: &[bool], n: usize, width_px: f64) -> Vec<f32> {
    if width_px <= 0.0 {
        return bin.iter().map(|&b| b as u8 as f32).collect();
    }
    let d2 = squared_distance_transform(bin, n);
    let w2 = width_px * width_px;
    d2.par_iter()
        .map(|&d| {
            let d = d as f64;
            if d == 0.0 {
                1.0
            } else if d < w2 {
                (0.5 + 0.5 * (std::f64::consts::PI * d.sqrt() / width_px).cos()) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Exact squared Euclidean distance (in voxels², `[z][y][x]`) from every voxel of an n³
/// grid to the nearest voxel where `feature` is true (0 on features; +∞ everywhere when
/// there is none). Separable: the 1-D transform along x, then y, then z.
pub fn squared_distance_transform(feature: &[bool], n: usize) -> Vec<f32> {
    assert_eq!(feature.len(), n * n * n, "squared_distance_transform: wrong size");
    let nn = n * n;
    let mut g: Vec<f32> = feature.iter().map(|&f| if f { 0.0 } else { f32::INFINITY }).collect();
    let scratch = || Edt1d::new(n);
    g.par_chunks_mut(n).for_each_init(scratch, |s, line| s.run_in_place(line));
    g.par_chunks_mut(nn).for_each_init(scratch, |s, slab| {
        for x in 0..n {
            for y in 0..n {
                s.line[y] = slab[y * n + x];
            }
            s.run();
            for y in 0..n {
                slab[y * n + x] = s.out[y];
            }
        }
    });
    // z lines: gather per y (as core::fft::Fft3), then scatter.
    let cols: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map_init(scratch, |s, y| {
            let mut col = vec![0f32; nn];
            for x in 0..n {
                for z in 0..n {
                    s.line[z] = g[z * nn + y * n + x];
                }
                s.run();
                col[x * n..(x + 1) * n].copy_from_slice(&s.out);
            }
            col
        })
        .collect();
    g.par_chunks_mut(nn).enumerate().for_each(|(z, slab)| {
        for (y, col) in cols.iter().enumerate() {
            for x in 0..n {
                slab[y * n + x] = col[x * n + z];
            }
        }
    });
    g
}

/// Scratch of the 1-D distance transform: out(q) = min_p (q − p)² + f(p).
struct Edt1d {
    line: Vec<f32>,
    out: Vec<f32>,
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Edt1d {
    fn new(n: usize) -> Edt1d {
        Edt1d { line: vec![0.0; n], out: vec![0.0; n], v: vec![0; n], z: vec![0.0; n + 1] }
    }

    fn run_in_place(&mut self, line: &mut [f32]) {
        self.line.copy_from_slice(line);
        self.run();
        line.copy_from_slice(&self.out);
    }

    /// Lower envelope of the parabolas rooted at the finite samples of `line` (infinite
    /// samples never contribute; a line without any stays infinite). Values are integers
    /// below 2²⁴ for boxes up to 2000 px, so f32 holds them exactly.
    fn run(&mut self) {
        let (f, v, z) = (&self.line, &mut self.v, &mut self.z);
        let sq = |q: usize| (q * q) as f64;
        let mut k = 0usize;
        let mut started = false;
        for q in 0..f.len() {
            if !f[q].is_finite() {
                continue;
            }
            let fq = f[q] as f64 + sq(q);
            if !started {
                (v[0], z[0], z[1], started) = (q, f64::NEG_INFINITY, f64::INFINITY, true);
                continue;
            }
            let mut s;
            loop {
                let p = v[k];
                s = (fq - (f[p] as f64 + sq(p))) / (2.0 * (q - p) as f64);
                // z[0] = −∞, so this never pops the first parabola.
                if s <= z[k] {
                    k -= 1;
                } else {
                    break;
                }
            }
            k += 1;
            (v[k], z[k], z[k + 1]) = (q, s, f64::INFINITY);
        }
        if !started {
            self.out.fill(f32::INFINITY);
            return;
        }
        k = 0;
        for (q, o) in self.out.iter_mut().enumerate() {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let p = v[k];
            *o = ((q as f64 - p as f64).powi(2) + f[p] as f64) as f32;
        }
    }
}

/// Otsu's threshold of the values (1024-bin histogram between their minimum and maximum):
/// the lower edge of the upper class that maximises the between-class variance (the
/// middle of the gap when empty bins separate the classes).
pub fn otsu_threshold(vol: &[f32]) -> f64 {
    let (lo, hi) = vol.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        let v = v as f64;
        (a.min(v), b.max(v))
    });
    // A constant (or empty, lo = +∞) volume: nothing to split.
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return lo;
    }
    let w = (hi - lo) / OTSU_BINS as f64;
    let mut hist = vec![0f64; OTSU_BINS];
    for &v in vol {
        hist[(((v as f64 - lo) / w) as usize).min(OTSU_BINS - 1)] += 1.0;
    }
    let centre = |b: usize| lo + (b as f64 + 0.5) * w;
    let total: f64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(b, h)| h * centre(b)).sum();
    let (mut n0, mut s0, mut best) = (0.0, 0.0, -1.0);
    let (mut first, mut last) = (0usize, 0usize);
    for b in 0..OTSU_BINS - 1 {
        n0 += hist[b];
        s0 += hist[b] * centre(b);
        let n1 = total - n0;
        if n0 == 0.0 || n1 == 0.0 {
            continue;
        }
        let (m0, m1) = (s0 / n0, (sum_all - s0) / n1);
        let between = n0 * n1 * (m0 - m1).powi(2);
        if between > best {
            (best, first, last) = (between, b, b);
        } else if between == best && last + 1 == b {
            // Empty bins leave the split unchanged: a plateau of equal maxima.
            last = b;
        }
    }
    // The middle of the plateau (of the gap between the classes when it has empty bins).
    lo + ((first + last) as f64 / 2.0 + 1.0) * w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force squared distance to the nearest feature voxel.
    fn brute(feature: &[bool], n: usize) -> Vec<f32> {
        let idx = |i: usize| ((i / (n * n)) as i64, ((i / n) % n) as i64, (i % n) as i64);
        (0..n * n * n)
            .map(|i| {
                let (z, y, x) = idx(i);
                (0..n * n * n)
                    .filter(|&j| feature[j])
                    .map(|j| {
                        let (c, b, a) = idx(j);
                        ((z - c).pow(2) + (y - b).pow(2) + (x - a).pow(2)) as f32
                    })
                    .fold(f32::INFINITY, f32::min)
            })
            .collect()
    }

    #[test]
    fn distance_transform_is_exact() {
        let n = 9;
        let mut s = 5u64;
        let feature: Vec<bool> = (0..n * n * n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33).is_multiple_of(37)
            })
            .collect();
        assert!(feature.iter().any(|&f| f));
        assert_eq!(squared_distance_transform(&feature, n), brute(&feature, n));
        let none = vec![false; n * n * n];
        assert!(squared_distance_transform(&none, n).iter().all(|d| d.is_infinite()));
    }

    #[test]
    fn otsu_splits_two_levels() {
        let n = 16;
        let ball = cryoforge_core::filter::spherical_mask(n, 4.0, 0.0);
        let vol: Vec<f32> =
            ball.iter().enumerate().map(|(i, b)| 2.0 * b + 0.05 * ((i % 7) as f32 - 3.0)).collect();
        let t = otsu_threshold(&vol);
        assert!(t > 0.3 && t < 1.7, "threshold {t}");
        let m = create_mask(&vol, n, 1.0, &MaskOptions { threshold: Threshold::Auto, ..Default::default() })
            .unwrap();
        assert_eq!(m, ball);
    }
}
