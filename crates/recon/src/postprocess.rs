//! Post-processing of two half maps, as `relion_postprocess` (RELION 3.1): masked FSC
//! with the phase-randomisation correction, resolution, automatic or given B-factor and
//! the sharpened map.
//!
//! 1. FSC of the half maps unmasked, and of the half maps × mask (`fsc_masked`).
//! 2. **Phase randomisation** (Chen et al. 2013, Ultramicroscopy 135:24). A mask correlates
//!    the half maps by itself: multiplying by it convolves their (shared) low-resolution
//!    signal into the high-resolution shells, more so the tighter the mask. Both halves get
//!    independent random phases beyond shell r — the first shell k ≥ 1 where the unmasked
//!    FSC is below `randomize_at_fsc` (0.8; RELION's `--randomize_at_fsc`) — keeping every
//!    amplitude and Friedel symmetry; they are masked and their FSC is `fsc_random_masked`.
//!    Beyond r any correlation that survives is made by the mask, and
//!    `FSC_true = (FSC_masked − FSC_random) / (1 − FSC_random)` (0 where FSC_random >
//!    FSC_masked). As RELION does since 2015, the first [`CORRECTION_OFFSET_SHELLS`] (2)
//!    shells from r keep FSC_masked ("small artefacts near the resolution of
//!    randomisation"), so `fsc_corrected` equals `fsc_masked` for k < r + 2.
//! 3. The resolution is where `fsc_corrected` first falls below 0.143, interpolated between
//!    shells (CONVENTIONS.md rule 13; RELION reports the last shell above it instead, at
//!    most one shell coarser).
//! 4. **Sharpening** of the average (half1 + half2)/2, in Fourier space: each shell k is
//!    weighted by sqrt(2·FSC/(1 + FSC)) of `fsc_corrected` (Rosenthal & Henderson 2003),
//!    up to the last shell before the curve first drops below 10⁻⁴ and 0 beyond (RELION's
//!    `applyFscWeighting`; the DC shell keeps weight 1 so the map's mean is kept, where
//!    RELION stops with an error on a negative DC correlation); the B-factor
//!    `exp(−B·s²/4)` is applied; the map is low-passed at the final resolution (or
//!    `lowpass_a`) with a raised-cosine edge [`PostprocessOptions::filter_edge_shells`]
//!    wide (RELION's `--filter_edge_width` 2). `map_masked` is that map × mask.
//! 5. **Automatic B-factor** (RELION's `--auto_bfac`): a straight line through the Guinier
//!    plot of the FSC-weighted map, ln(mean |F| of shell k) against s² = (k/(n·apix))²,
//!    over the shells with resolution in [highres, lowres] (`autob_lowres_a` 10 Å, highres
//!    the final resolution); B = 4·slope (negative: the map is sharpened).
//!
//! The phases come from ChaCha8 streams of the seed (one per z slab and half), so the
//! result is identical for any thread count.

use crate::ReconError;
use cryoforge_core::fft::{friedel_mirror_index, Fft3, C32};
use cryoforge_core::filter::{apply_radial_3d, bfactor_gain, lowpass_gain, Edge};
use cryoforge_core::fsc::{
    apply_shell_gain, fsc_spectra, fsc_truth_from_half, shell_mean_amplitude, FscCurve,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Shells from the randomisation shell on that keep the masked FSC (RELION 3.1
/// `postprocessing.cpp`: `if (i < randomize_at + 2) fsc_true = fsc_masked`).
pub const CORRECTION_OFFSET_SHELLS: usize = 2;
/// FSC below which the FSC weighting stops (RELION's `applyFscWeighting`).
pub const FSC_WEIGHT_FLOOR: f64 = 1e-4;
/// The gold-standard threshold of the final resolution.
pub const RESOLUTION_FSC: f64 = 0.143;
/// Fewest Guinier points an automatic B-factor is fitted to.
pub const MIN_FIT_SHELLS: usize = 3;
/// Tolerance on the mask's range [0, 1] (rounding in masks written by other programs).
pub const MASK_RANGE_TOL: f32 = 1e-4;

/// The B-factor applied to the sharpened map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BFactor {
    /// Fitted to the Guinier plot (RELION's `--auto_bfac`).
    Auto,
    /// Given, in Å² (negative sharpens; RELION's `--adhoc_bfac`).
    Fixed(f64),
}

/// Options of [`postprocess`]; the defaults are RELION's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostprocessOptions {
    pub bfactor: BFactor,
    /// Low-resolution end of the Guinier fit (Å; RELION's `--autob_lowres` 10).
    pub autob_lowres_a: f64,
    /// High-resolution end of the fit (Å); `None`: the final resolution.
    pub autob_highres_a: Option<f64>,
    /// Randomise phases beyond the shell where the unmasked FSC first drops below this.
    pub randomize_at_fsc: f64,
    /// Low-pass of the sharpened map (Å); `None`: the final resolution.
    pub lowpass_a: Option<f64>,
    /// Width of the low-pass edge in Fourier shells (0: a hard edge).
    pub filter_edge_shells: f64,
    /// Weight the shells by sqrt(2·FSC/(1 + FSC)) (RELION skips it with
    /// `--skip_fsc_weighting`).
    pub fsc_weighting: bool,
    /// Seed of the random phases.
    pub seed: u64,
}

impl Default for PostprocessOptions {
    fn default() -> Self {
        PostprocessOptions {
            bfactor: BFactor::Auto,
            autob_lowres_a: 10.0,
            autob_highres_a: None,
            randomize_at_fsc: 0.8,
            lowpass_a: None,
            filter_edge_shells: 2.0,
            fsc_weighting: true,
            seed: 0,
        }
    }
}

/// One shell of the Guinier plot: ln of the mean amplitude (NaN where it is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuinierPoint {
    pub shell: usize,
    /// s² = 1/resolution² (1/Å²).
    pub s2_per_a2: f64,
    /// The average of the half maps.
    pub ln_amp_input: f64,
    /// After the FSC weighting (what the B-factor is fitted to).
    pub ln_amp_weighted: f64,
    /// The final map (weighted, B-factor, low-pass).
    pub ln_amp_sharpened: f64,
    /// Used by the fit.
    pub in_fit: bool,
}

/// The straight line ln|F| = intercept + slope·s² through the Guinier plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuinierFit {
    /// Å².
    pub slope_a2: f64,
    pub intercept: f64,
    /// Pearson correlation of the fitted points.
    pub correlation: f64,
    pub points: usize,
    pub lowres_a: f64,
    pub highres_a: f64,
}

impl GuinierFit {
    /// The B-factor that flattens the fitted fall-off: 4·slope (Å²).
    pub fn bfactor_a2(&self) -> f64 {
        4.0 * self.slope_a2
    }
}

/// Everything [`postprocess`] computes.
#[derive(Debug, Clone)]
pub struct Postprocessed {
    pub n: usize,
    pub apix_a: f64,
    pub fsc_unmasked: FscCurve,
    pub fsc_masked: FscCurve,
    /// FSC of the masked phase-randomised halves; `None` when the unmasked FSC never drops
    /// below `randomize_at_fsc` (nothing to randomise; `fsc_corrected` = `fsc_masked`).
    pub fsc_random_masked: Option<FscCurve>,
    pub fsc_corrected: FscCurve,
    /// The first randomised shell r.
    pub randomize_shell: Option<usize>,
    /// Where `fsc_corrected` drops below 0.143 (Å).
    pub resolution_a: f64,
    /// The B-factor applied (Å²).
    pub bfactor_a2: f64,
    /// The Guinier fit (also computed with a fixed B-factor, when there are enough shells).
    pub fit: Option<GuinierFit>,
    /// Shells 1..=n/2.
    pub guinier: Vec<GuinierPoint>,
    /// The low-pass applied to the map (Å).
    pub lowpass_a: f64,
    /// The sharpened map, n³ `[z][y][x]`.
    pub map: Vec<f32>,
    /// `map` × mask.
    pub map_masked: Vec<f32>,
    /// Things the user should know (no randomisation possible, …).
    pub warnings: Vec<String>,
}

impl Postprocessed {
    /// Resolution of the first randomised shell (Å).
    pub fn randomize_resolution_a(&self) -> Option<f64> {
        self.randomize_shell.map(|r| 1.0 / self.fsc_unmasked.freq(r))
    }
}

/// Post-process half maps `half1`, `half2` with `mask` (all n³, `[z][y][x]`, values of
/// the mask in [0, 1]) at `apix_a` Å/px; see the module documentation.
pub fn postprocess(
    half1: &[f32],
    half2: &[f32],
    mask: &[f32],
    n: usize,
    apix_a: f64,
    opts: &PostprocessOptions,
) -> Result<Postprocessed, ReconError> {
    validate(half1, half2, mask, n, apix_a, opts)?;
    let fft = Fft3::new(n);
    let (f1, f2) = (fft.forward_real(half1), fft.forward_real(half2));
    let fsc_unmasked = fsc_spectra(&f1, &f2, n, apix_a);
    let masked = |v: &[f32]| fft.forward_real(&v.iter().zip(mask).map(|(a, m)| a * m).collect::<Vec<_>>());
    let fsc_masked = fsc_spectra(&masked(half1), &masked(half2), n, apix_a);
    let randomize_shell = randomisation_shell(&fsc_unmasked, opts.randomize_at_fsc);
    let mut warnings = Vec::new();
    let (fsc_random_masked, fsc_corrected) = match randomize_shell {
        Some(r) => {
            let a = randomised_masked_spectrum(&fft, &f1, mask, n, r, opts.seed, 0);
            let b = randomised_masked_spectrum(&fft, &f2, mask, n, r, opts.seed, 1);
            let random = fsc_spectra(&a, &b, n, apix_a);
            let corrected = corrected_fsc(&fsc_masked, &random, r);
            (Some(random), corrected)
        }
        None => {
            warnings.push(format!(
                "the unmasked FSC never drops below {}: no phase randomisation, the corrected FSC is the masked one",
                opts.randomize_at_fsc
            ));
            (None, fsc_masked.clone())
        }
    };
    let resolution_a = fsc_corrected.resolution_at(RESOLUTION_FSC);
    if !resolution_a.is_finite() {
        return Err(ReconError::Input(format!(
            "the corrected FSC is {:.3} (below {RESOLUTION_FSC}) already at shell 1: the half maps do not agree \
             (two halves of the same reconstruction? a mask that covers the particle?)",
            fsc_corrected.fsc.get(1).copied().unwrap_or(f64::NAN)
        )));
    }
    let mut avg: Vec<C32> = f1.iter().zip(&f2).map(|(a, b)| (a + b) * 0.5).collect();
    drop((f1, f2));
    let s = sharpen(&fft, &mut avg, &fsc_corrected, resolution_a, n, apix_a, opts)?;
    let map_masked = s.map.iter().zip(mask).map(|(v, m)| v * m).collect();
    Ok(Postprocessed {
        n,
        apix_a,
        fsc_unmasked,
        fsc_masked,
        fsc_random_masked,
        fsc_corrected,
        randomize_shell,
        resolution_a,
        bfactor_a2: s.bfactor_a2,
        fit: s.fit,
        guinier: s.guinier,
        lowpass_a: s.lowpass_a,
        map: s.map,
        map_masked,
        warnings,
    })
}

fn validate(
    half1: &[f32],
    half2: &[f32],
    mask: &[f32],
    n: usize,
    apix_a: f64,
    o: &PostprocessOptions,
) -> Result<(), ReconError> {
    let bad = |m: String| Err(ReconError::Input(m));
    if n < 8 {
        return bad(format!("a {n}³ box is too small to post-process (8 px at least)"));
    }
    for (what, v) in [("half map 1", half1), ("half map 2", half2), ("the mask", mask)] {
        if v.len() != n * n * n {
            return bad(format!("{what} has {} values, not the {n}³ of the box", v.len()));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return bad(format!("{what} holds {} at voxel {i}", v[i]));
        }
    }
    let (lo, hi) = mask.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &m| (a.min(m), b.max(m)));
    if lo < -MASK_RANGE_TOL || hi > 1.0 + MASK_RANGE_TOL {
        return bad(format!("the mask's values lie in [{lo}, {hi}]; a mask holds values in [0, 1]"));
    }
    if hi <= 0.0 {
        return bad("the mask is empty (all zero)".into());
    }
    if !(apix_a.is_finite() && apix_a > 0.0) {
        return bad(format!("pixel size {apix_a} Å must be > 0"));
    }
    let pos = |x: f64| x.is_finite() && x > 0.0;
    if !pos(o.autob_lowres_a)
        || o.autob_highres_a.is_some_and(|h| !pos(h))
        || o.lowpass_a.is_some_and(|l| !pos(l))
    {
        return bad("the fit limits and the low-pass must be resolutions > 0 Å".into());
    }
    if !(o.randomize_at_fsc > 0.0 && o.randomize_at_fsc < 1.0) {
        return bad(format!("randomize_at_fsc {} must lie in (0, 1)", o.randomize_at_fsc));
    }
    if !(o.filter_edge_shells.is_finite() && o.filter_edge_shells >= 0.0) {
        return bad(format!("filter edge {} shells must be ≥ 0", o.filter_edge_shells));
    }
    if let BFactor::Fixed(b) = o.bfactor {
        if !b.is_finite() {
            return bad(format!("B-factor {b} is not a number"));
        }
    }
    Ok(())
}

/// The first shell k ≥ 1 where the curve is below `threshold` (RELION's `randomize_at`).
pub fn randomisation_shell(unmasked: &FscCurve, threshold: f64) -> Option<usize> {
    (1..unmasked.fsc.len()).find(|&k| unmasked.fsc[k] < threshold)
}

/// Chen et al. (2013): `(FSC_masked − FSC_random)/(1 − FSC_random)` for the shells
/// k ≥ r + [`CORRECTION_OFFSET_SHELLS`] (0 where FSC_random exceeds FSC_masked),
/// FSC_masked below.
pub fn corrected_fsc(masked: &FscCurve, random: &FscCurve, r: usize) -> FscCurve {
    let fsc = (0..masked.fsc.len())
        .map(|k| {
            let (t, rn) = (masked.fsc[k], random.fsc[k]);
            if k < r + CORRECTION_OFFSET_SHELLS {
                t
            } else if rn > t || rn >= 1.0 - 1e-12 {
                0.0
            } else {
                (t - rn) / (1.0 - rn)
            }
        })
        .collect();
    FscCurve { fsc, ..masked.clone() }
}

/// The spectrum of `mask` × (the map of `spec` with random phases beyond shell `r`).
fn randomised_masked_spectrum(
    fft: &Fft3,
    spec: &[C32],
    mask: &[f32],
    n: usize,
    r: usize,
    seed: u64,
    half: u64,
) -> Vec<C32> {
    let mut s = spec.to_vec();
    randomize_phases_beyond(&mut s, n, r, seed, half);
    let real: Vec<f32> = fft.inverse_complex(&s).iter().zip(mask).map(|(c, m)| c.re * m).collect();
    fft.forward_real(&real)
}

/// Replace the phase of every voxel of a centred n³ spectrum with |q| ≥ `shell` by a
/// uniform random one, keeping its amplitude and Friedel symmetry F(−q) = conj F(q), so
/// the map stays real (RELION's `randomizePhasesBeyond`; self-conjugate voxels, on the
/// Nyquist planes of an even box, get a random sign). Phases are drawn from ChaCha8
/// streams of `seed`, one per (`stream`, z slab), so the result does not depend on the
/// thread count.
pub fn randomize_phases_beyond(spec: &mut [C32], n: usize, shell: usize, seed: u64, stream: u64) {
    assert_eq!(spec.len(), n * n * n, "randomize_phases_beyond: wrong size");
    let nn = n * n;
    let mut phase = vec![0f32; n * nn];
    phase.par_chunks_mut(nn).enumerate().for_each(|(z, slab)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream((stream << 32) | z as u64);
        slab.iter_mut().for_each(|p| *p = rng.gen::<f32>() * std::f32::consts::TAU);
    });
    let (h, r2min) = ((n / 2) as i64, (shell * shell) as i64);
    spec.par_chunks_mut(nn).enumerate().for_each(|(z, slab)| {
        let (dz, mz) = (z as i64 - h, friedel_mirror_index(z, n));
        for y in 0..n {
            let (dy, my) = (y as i64 - h, friedel_mirror_index(y, n));
            for x in 0..n {
                let dx = x as i64 - h;
                if dx * dx + dy * dy + dz * dz < r2min {
                    continue;
                }
                let (i, m) = (z * nn + y * n + x, mz * nn + my * n + friedel_mirror_index(x, n));
                let phi = match i.cmp(&m) {
                    std::cmp::Ordering::Less => phase[i],
                    std::cmp::Ordering::Greater => -phase[m],
                    std::cmp::Ordering::Equal => {
                        (phase[i] >= std::f32::consts::PI) as u8 as f32 * std::f32::consts::PI
                    }
                };
                let v = &mut slab[y * n + x];
                *v = C32::from_polar(v.norm(), phi);
            }
        }
    });
}

/// Per-shell weights sqrt(2·FSC/(1 + FSC)) up to the last shell before the curve first
/// drops below [`FSC_WEIGHT_FLOOR`] (shell 0 has weight 1), none beyond.
pub fn fsc_weights(fsc: &FscCurve) -> Vec<f64> {
    let mut w = vec![1.0];
    for &f in fsc.fsc.iter().skip(1) {
        if f < FSC_WEIGHT_FLOOR {
            break;
        }
        w.push(fsc_truth_from_half(f));
    }
    w
}

struct Sharpened {
    map: Vec<f32>,
    guinier: Vec<GuinierPoint>,
    fit: Option<GuinierFit>,
    bfactor_a2: f64,
    lowpass_a: f64,
}

/// Steps 4 and 5 of the module documentation on the spectrum of the average map.
fn sharpen(
    fft: &Fft3,
    spec: &mut [C32],
    fsc: &FscCurve,
    resolution_a: f64,
    n: usize,
    apix_a: f64,
    opts: &PostprocessOptions,
) -> Result<Sharpened, ReconError> {
    let amp_input = shell_mean_amplitude(spec, n);
    if opts.fsc_weighting {
        apply_shell_gain(spec, n, &fsc_weights(fsc));
    }
    let amp_weighted = shell_mean_amplitude(spec, n);
    let highres_a = opts.autob_highres_a.unwrap_or(resolution_a);
    let mut guinier = guinier_points(&amp_input, &amp_weighted, n, apix_a, opts.autob_lowres_a, highres_a);
    let fit = fit_guinier(&guinier, opts.autob_lowres_a, highres_a);
    let bfactor_a2 = match (opts.bfactor, &fit) {
        (BFactor::Fixed(b), _) => b,
        (BFactor::Auto, Some(f)) => f.bfactor_a2(),
        (BFactor::Auto, None) => {
            let m = guinier.iter().filter(|p| p.in_fit).count();
            return Err(ReconError::Input(format!(
                "automatic B-factor: {m} shells between {} Å and {highres_a:.2} Å (the resolution), {MIN_FIT_SHELLS} needed; \
                 give a fixed B-factor or a lower low-resolution limit of the fit",
                opts.autob_lowres_a
            )));
        }
    };
    if bfactor_a2 != 0.0 {
        apply_radial_3d(spec, n, apix_a, |s| bfactor_gain(s, bfactor_a2));
    }
    let lowpass_a = opts.lowpass_a.unwrap_or(resolution_a);
    let edge = if opts.filter_edge_shells > 0.0 {
        Edge::Cosine { width_per_a: opts.filter_edge_shells / (n as f64 * apix_a) }
    } else {
        Edge::Hard
    };
    apply_radial_3d(spec, n, apix_a, |s| lowpass_gain(s, 1.0 / lowpass_a, edge));
    let amp_sharpened = shell_mean_amplitude(spec, n);
    for p in guinier.iter_mut() {
        p.ln_amp_sharpened = ln_or_nan(amp_sharpened[p.shell]);
    }
    let map = fft.inverse_complex(spec).iter().map(|c| c.re).collect();
    Ok(Sharpened { map, guinier, fit, bfactor_a2, lowpass_a })
}

fn ln_or_nan(a: f64) -> f64 {
    if a > 0.0 {
        a.ln()
    } else {
        f64::NAN
    }
}

/// The Guinier plot of shells 1..=n/2 from their mean amplitudes before and after the
/// weighting; a shell is in the fit when its resolution lies in [highres, lowres] and its
/// weighted amplitude is > 0 (RELION's `makeGuinierPlot`).
pub fn guinier_points(
    amp_input: &[f64],
    amp_weighted: &[f64],
    n: usize,
    apix_a: f64,
    lowres_a: f64,
    highres_a: f64,
) -> Vec<GuinierPoint> {
    (1..=n / 2)
        .map(|k| {
            let res = n as f64 * apix_a / k as f64;
            GuinierPoint {
                shell: k,
                s2_per_a2: 1.0 / (res * res),
                ln_amp_input: ln_or_nan(amp_input[k]),
                ln_amp_weighted: ln_or_nan(amp_weighted[k]),
                ln_amp_sharpened: f64::NAN,
                in_fit: res <= lowres_a && res >= highres_a && amp_weighted[k] > 0.0,
            }
        })
        .collect()
}

/// Least-squares line through the weighted Guinier points marked `in_fit` (by
/// [`guinier_points`], whose limits `lowres_a`, `highres_a` are recorded in the fit);
/// `None` with fewer than [`MIN_FIT_SHELLS`].
pub fn fit_guinier(points: &[GuinierPoint], lowres_a: f64, highres_a: f64) -> Option<GuinierFit> {
    let p: Vec<(f64, f64)> =
        points.iter().filter(|p| p.in_fit).map(|p| (p.s2_per_a2, p.ln_amp_weighted)).collect();
    if p.len() < MIN_FIT_SHELLS {
        return None;
    }
    let m = p.len() as f64;
    let (mx, my) = (p.iter().map(|q| q.0).sum::<f64>() / m, p.iter().map(|q| q.1).sum::<f64>() / m);
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let syy: f64 = p.iter().map(|q| (q.1 - my).powi(2)).sum();
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope_a2 = sxy / sxx;
    let correlation = if syy > 0.0 { sxy / (sxx * syy).sqrt() } else { 1.0 };
    Some(GuinierFit {
        slope_a2,
        intercept: my - slope_a2 * mx,
        correlation,
        points: p.len(),
        lowres_a,
        highres_a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(v: &[f64]) -> FscCurve {
        FscCurve { n: 2 * (v.len() - 1), apix_a: 1.0, fsc: v.to_vec() }
    }

    #[test]
    fn chen_correction_follows_relion() {
        let masked = curve(&[1.0, 0.99, 0.9, 0.7, 0.5, 0.3, 0.2]);
        let random = curve(&[1.0, 0.99, 0.9, 0.6, 0.3, 0.4, 0.0]);
        let r = randomisation_shell(&curve(&[1.0, 0.95, 0.85, 0.7, 0.4, 0.1, 0.0]), 0.8);
        assert_eq!(r, Some(3));
        let c = corrected_fsc(&masked, &random, 3);
        // Shells 0..5 (< r + 2) keep the masked FSC; shell 5 has random > masked → 0.
        assert_eq!(&c.fsc[..5], &masked.fsc[..5]);
        assert_eq!(c.fsc[5], 0.0);
        assert_eq!(c.fsc[6], 0.2);
        let never = curve(&[1.0, 0.9, 0.85]);
        assert_eq!(randomisation_shell(&never, 0.8), None);
    }

    #[test]
    fn fsc_weights_stop_at_the_first_non_positive_shell() {
        let w = fsc_weights(&curve(&[-1.0, 0.9, 0.3, 0.0, 0.2]));
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], 1.0);
        assert!((w[1] - (1.8f64 / 1.9).sqrt()).abs() < 1e-12);
    }

    /// Phases beyond the shell change, amplitudes and Friedel symmetry do not (the map
    /// stays real); shells inside are untouched; the same seed gives the same phases.
    #[test]
    fn phase_randomisation_keeps_amplitudes_and_reality() {
        for n in [12usize, 13] {
            let mut s = 9u64;
            let vol: Vec<f32> = (0..n * n * n)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let fft = Fft3::new(n);
            let spec = fft.forward_real(&vol);
            let mut a = spec.clone();
            randomize_phases_beyond(&mut a, n, 3, 7, 0);
            let mut b = spec.clone();
            randomize_phases_beyond(&mut b, n, 3, 7, 0);
            assert_eq!(a, b);
            let h = (n / 2) as i64;
            let mut changed = 0;
            for (i, (x, y)) in spec.iter().zip(&a).enumerate() {
                let (dz, dy, dx) = ((i / (n * n)) as i64 - h, ((i / n) % n) as i64 - h, (i % n) as i64 - h);
                assert!((x.norm() - y.norm()).abs() < 1e-4 * (1.0 + x.norm()));
                if dx * dx + dy * dy + dz * dz < 9 {
                    assert_eq!(x, y);
                } else if (x - y).norm() > 1e-3 * x.norm() {
                    changed += 1;
                }
            }
            assert!(changed > n * n * n / 2, "n={n}: only {changed} voxels changed");
            let back = fft.inverse_complex(&a);
            let max_im = back.iter().map(|c| c.im.abs()).fold(0f32, f32::max);
            assert!(max_im < 1e-5, "n={n}: imaginary part {max_im}");
        }
    }

    /// ln A(s) = 3 − 25·s² has slope −25 Å², so the B-factor that flattens it is −100 Å².
    #[test]
    fn guinier_fit_recovers_an_exponential_fall_off() {
        let (n, apix) = (64usize, 1.0);
        let amp: Vec<f64> = (0..=n / 2).map(|k| (3.0 - 25.0 * (k as f64 / n as f64).powi(2)).exp()).collect();
        let pts = guinier_points(&amp, &amp, n, apix, 10.0, 3.0);
        assert_eq!(pts.iter().filter(|p| p.in_fit).count(), 21 - 7 + 1); // shells 7..=21
        let f = fit_guinier(&pts, 10.0, 3.0).unwrap();
        assert!((f.bfactor_a2() + 100.0).abs() < 1e-9 && (f.intercept - 3.0).abs() < 1e-9);
        assert!((f.correlation + 1.0).abs() < 1e-12);
        let few = guinier_points(&amp, &amp, n, apix, 10.0, 9.0);
        assert!(fit_guinier(&few, 10.0, 9.0).is_none());
    }
}
