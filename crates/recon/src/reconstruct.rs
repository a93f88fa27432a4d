//! Homogeneous reconstruction from known poses: CTF-weighted Fourier insertion of every
//! particle into two half-set accumulators, Wiener-style division with a Tikhonov or
//! FSC-derived (SSNR) regulariser, gridding correction, half-map FSC.
//!
//! The forward model is that of CONVENTIONS.md: a protein-bright particle is
//! `F⁻¹[−CTF · e^(+2πi k·t) · P̂]`, so the numerator takes `−CTF · e^(−2πi k·t) · X̂` and
//! the weight CTF² (Wiener), `−sign(CTF)` and 1 (phase flip), or X̂ and 1 (none).
//!
//! SSNR regularisation (the default, as RELION): the halves are first divided with a
//! small Tikhonov constant; their FSC gives the per-shell SSNR of a half map,
//! `SSNR½ = FSC/(1 − FSC)`, and a Wiener filter then uses `λ(k) = ⟨w⟩ₖ / SSNR(k)`
//! (`⟨w⟩ₖ` the mean weight in shell k; the full map's SSNR is twice a half's).
//!
//! The half maps returned (and written) are the lightly regularised ones, as RELION's
//! `_unfil` halves, and the half-map FSC is theirs: once a per-shell Wiener filter has
//! shrunk the high shells of weak-signal halves, the real-space window (or a mask) mixes
//! the strong low shells into them, and the FSC of filtered halves would report the
//! leaked low-resolution agreement as high-resolution signal (measured on pure-noise
//! particles: FSC 0.5 at 12 Å instead of ≈ 0 beyond the alignment band). The filtered
//! halves are kept for refinement references.

use crate::grid::Accumulator;
use cryoforge_core::fft::{recentre_phasor, Rfft2, Rfft2Work, C32};
use cryoforge_core::fsc::{fsc_volumes, FscCurve};
use cryoforge_core::symmetry::Symmetry;
use cryoforge_core::{ctf::CtfGrid, Rot3};
use cryoforge_io::stack::{ParticleStack, Pose};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How the CTF enters the reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtfCorrection {
    Wiener,
    PhaseFlip,
    None,
}

/// Regularisation of the division by the weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Regularisation {
    /// λ = c × the mean weight inside the Nyquist sphere.
    Tikhonov(f64),
    /// λ(k) from the FSC of the lightly regularised halves.
    Ssnr,
}

/// How particles are split into half sets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HalfSplit {
    /// Each particle to half A or B with probability ½, from a seeded generator.
    Random { seed: u64 },
    /// RELION `rlnRandomSubset` / cryoSPARC `alignments3D/split`.
    Star,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconConfig {
    pub pad: f64,
    pub ctf_correction: CtfCorrection,
    pub regularisation: Regularisation,
    pub half_split: HalfSplit,
    pub symmetry: String,
    /// Particles are protein-dark: flip their sign.
    pub invert: bool,
    /// Tikhonov constant of the first SSNR pass (relative to the mean weight).
    pub initial_tikhonov: f64,
    /// Upper bound on the memory of the insertion grids (one padded half-spectrum grid per
    /// worker lane, at least two lanes): more threads than fit share fewer lanes.
    pub max_grid_bytes: usize,
    /// Real-space window applied to the half maps and the map (and so to the FSC):
    /// `None` leaves the maps unwindowed.
    pub window: Option<Window>,
}

/// A soft spherical real-space window, as cryoSPARC applies to its reconstructions:
/// 1 inside `inner`, a raised cosine down to 0 at `outer`, both fractions of the half box
/// (cryoSPARC's defaults: 0.85 and 0.99). It removes the solvent noise of the box corners,
/// which carry no signal for a particle that fits the box; see BENCHMARKS.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub inner: f64,
    pub outer: f64,
}

impl Default for Window {
    fn default() -> Self {
        Window { inner: 0.85, outer: 0.99 }
    }
}

impl Window {
    /// Check 0 < inner ≤ outer ≤ √3 (beyond √3 of the half box nothing is left to window).
    pub fn validate(&self) -> Result<(), ReconError> {
        if !(self.inner > 0.0 && self.inner <= self.outer && self.outer <= 3f64.sqrt()) {
            return Err(ReconError::Input(format!(
                "window inner {} / outer {} must satisfy 0 < inner ≤ outer ≤ 1.732 (fractions of the half box)",
                self.inner, self.outer
            )));
        }
        Ok(())
    }

    /// The window as an n³ volume.
    pub fn volume(&self, n: usize) -> Vec<f32> {
        let h = n as f64 / 2.0;
        cryoforge_core::filter::spherical_mask(n, self.inner * h, (self.outer - self.inner) * h)
    }
}

impl Default for ReconConfig {
    fn default() -> Self {
        ReconConfig {
            pad: 2.0,
            ctf_correction: CtfCorrection::Wiener,
            regularisation: Regularisation::Ssnr,
            half_split: HalfSplit::Random { seed: 0 },
            symmetry: "C1".into(),
            invert: false,
            initial_tikhonov: 1e-2,
            window: Some(Window::default()),
            max_grid_bytes: 4 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error("{0}")]
    Input(String),
}

/// The maps and curves of a reconstruction.
pub struct Reconstruction {
    pub d: usize,
    pub apix_a: f64,
    /// The full map (SSNR or Tikhonov regularised).
    pub map: Vec<f32>,
    /// Lightly regularised half maps (RELION's `_unfil`; see the module docs).
    pub half_a: Vec<f32>,
    pub half_b: Vec<f32>,
    /// The half maps with the map's regulariser (SSNR Wiener filter): references.
    pub half_a_filtered: Vec<f32>,
    pub half_b_filtered: Vec<f32>,
    /// Unmasked FSC of `half_a` and `half_b`.
    pub fsc: FscCurve,
    pub n_half: [usize; 2],
}

/// Which half each particle goes to (0 = A, 1 = B).
pub fn half_assignment(s: &ParticleStack, split: HalfSplit) -> Result<Vec<u8>, ReconError> {
    match split {
        HalfSplit::Random { seed } => {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Ok((0..s.len()).map(|_| r.gen::<bool>() as u8).collect())
        }
        HalfSplit::Star => {
            let h = s.half_subset.as_ref().ok_or_else(|| {
                ReconError::Input(format!(
                    "{}: --half-split star needs rlnRandomSubset (RELION) or alignments3D/split (cryoSPARC)",
                    s.path.display()
                ))
            })?;
            h.iter()
                .enumerate()
                .map(|(i, &v)| match v {
                    1 => Ok(0),
                    2 => Ok(1),
                    _ => Err(ReconError::Input(format!(
                        "{}: index {}: half-set label {v} is not 1 or 2",
                        s.path.display(),
                        s.source_index[i]
                    ))),
                })
                .collect()
        }
    }
}

/// The poses each particle is inserted at: one per particle, or several with weights
/// (the posterior probabilities of a marginalised refinement; a particle's weights sum
/// to 1, and a weight multiplies both its values and its CTF² weights).
#[derive(Debug, Clone, Copy)]
pub enum Assignment<'a> {
    Single(&'a [Pose]),
    Weighted(&'a [Vec<(Pose, f32)>]),
}

impl Assignment<'_> {
    fn len(&self) -> usize {
        match self {
            Assignment::Single(p) => p.len(),
            Assignment::Weighted(w) => w.len(),
        }
    }

    fn for_each(&self, i: usize, mut f: impl FnMut(&Pose, f32)) {
        match self {
            Assignment::Single(p) => f(&p[i], 1.0),
            Assignment::Weighted(w) => w[i].iter().for_each(|(p, wt)| f(p, *wt)),
        }
    }
}

/// Reconstruct half maps and the full map. `progress(done)` is called as particles finish.
pub fn reconstruct(
    s: &ParticleStack,
    cfg: &ReconConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Reconstruction, ReconError> {
    let poses = s.poses.as_ref().ok_or_else(|| {
        ReconError::Input(format!(
            "{}: the particles have no poses (give --poses or a refined STAR/.cs)",
            s.path.display()
        ))
    })?;
    let halves = half_assignment(s, cfg.half_split)?;
    reconstruct_assigned(s, cfg, &halves, Assignment::Single(poses), progress)
}

/// Reconstruct from given half sets (`halves[i]` 0 = A, 1 = B) and poses; `cfg.half_split`
/// is not consulted. Used by refinement, whose poses are not the stack's.
pub fn reconstruct_assigned(
    s: &ParticleStack,
    cfg: &ReconConfig,
    halves: &[u8],
    poses: Assignment<'_>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Reconstruction, ReconError> {
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    if d < 4 {
        return Err(ReconError::Input(format!("box of {d} px is too small to reconstruct")));
    }
    if let Some(w) = &cfg.window {
        w.validate()?;
    }
    if s.images.is_empty() {
        return Err(ReconError::Input(format!("{}: lists no particle images", s.path.display())));
    }
    if halves.len() != s.len() || poses.len() != s.len() {
        return Err(ReconError::Input(format!(
            "{}: {} particles but {} half labels and {} poses",
            s.path.display(),
            s.len(),
            halves.len(),
            poses.len()
        )));
    }
    let ctf = match cfg.ctf_correction {
        CtfCorrection::None => None,
        _ => Some(s.require_ctf()?),
    };
    let sym: Symmetry = cfg.symmetry.parse().map_err(ReconError::Input)?;
    let ops = sym.operators();
    let n_half = [halves.iter().filter(|&&h| h == 0).count(), halves.iter().filter(|&&h| h == 1).count()];
    if n_half[0] == 0 || n_half[1] == 0 {
        return Err(ReconError::Input(format!(
            "a half set is empty ({} / {} particles)",
            n_half[0], n_half[1]
        )));
    }

    let t0 = std::time::Instant::now();
    if d % 2 == 1 {
        return Err(ReconError::Input(format!("box of {d} px: reconstruction needs an even box")));
    }
    // Each lane owns the accumulator of one half set and inserts a contiguous run of that
    // half's particles; lanes are split evenly between the halves (at least one each), and
    // capped so that the grids stay within `cfg.max_grid_bytes`.
    let grid_bytes = Accumulator::bytes(d, cfg.pad);
    let by_mem = (cfg.max_grid_bytes / grid_bytes.max(1)).max(2);
    let lanes = rayon::current_num_threads().max(2).min(by_mem);
    // Across MPI ranks each rank inserts its block of the particles and the grids are summed.
    let comm = cryoforge_core::dist::world();
    let mine = cryoforge_core::dist::my_block(s.len());
    let idx: [Vec<usize>; 2] = [
        mine.clone().filter(|&i| halves[i] == 0).collect(),
        mine.clone().filter(|&i| halves[i] == 1).collect(),
    ];
    let lanes_a = lanes / 2;
    let jobs: Vec<(usize, &[usize])> = [(0usize, lanes_a), (1, lanes - lanes_a)]
        .into_iter()
        .flat_map(|(h, k)| {
            let chunk = idx[h].len().div_ceil(k).max(1);
            idx[h].chunks(chunk).map(move |c| (h, c))
        })
        .collect();
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fft = Rfft2::new(d);
    let grid = CtfGrid::new_half(d, apix);
    let parts: Vec<Result<(usize, Accumulator), ReconError>> = jobs
        .into_par_iter()
        .map(|(h, members)| {
            let mut acc = Accumulator::new(d, cfg.pad);
            let mut lw = LaneWork::new(d, &fft);
            for &i in members {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = lw.load(s, i, ctf.map(|c| &c[i]), &grid, &fft) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                let mut bad = None;
                poses.for_each(i, |pose, weight| {
                    if !(weight.is_finite() && weight >= 0.0) {
                        bad = Some(weight);
                        return;
                    }
                    lw.weigh(ctf.is_some(), cfg, s.ctf_premultiplied, pose.shift_px, weight);
                    for g in &ops {
                        let rot = pose.rot.compose(g);
                        acc.insert(&rot.0, &lw.values, &lw.weights);
                    }
                });
                if let Some(wt) = bad {
                    stop.store(true, Ordering::Relaxed);
                    return Err(ReconError::Input(format!(
                        "{}: index {}: pose weight {wt} is not a finite non-negative number",
                        s.path.display(),
                        s.source_index[i]
                    )));
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(64) || n == s.len() {
                    progress(n);
                }
            }
            Ok((h, acc))
        })
        .collect();
    let mut halves_acc: [Option<Accumulator>; 2] = [None, None];
    for p in parts {
        let (h, a) = p?;
        match &mut halves_acc[h] {
            Some(acc) => acc.add(&a),
            slot => *slot = Some(a),
        }
    }
    // (A rank's block may hold no particle of a half; both halves are non-empty overall.)
    let [a0, a1] = halves_acc.map(|a| a.unwrap_or_else(|| Accumulator::new(d, cfg.pad)));
    let mut acc = [a0, a1];
    if comm.is_distributed() {
        for a in acc.iter_mut() {
            let cells: &mut [f32] = bytemuck::cast_slice_mut(&mut a.cells[..]);
            cryoforge_core::dist::all_reduce_sum_f32_chunked(comm, cells);
        }
    }
    acc[0].complete();
    acc[1].complete();
    tracing::info!("inserted {} particles in {:.2} s", s.len(), t0.elapsed().as_secs_f64());
    let t1 = std::time::Instant::now();
    let r = finish(acc, d, apix, cfg, n_half);
    tracing::info!("regularised division, FSC and maps in {:.2} s", t1.elapsed().as_secs_f64());
    r
}

/// Per-lane buffers: the image, its half-plane spectrum, the CTF, and the values and
/// weights to insert (all in the layout of [`Rfft2`]).
struct LaneWork {
    img: Vec<f32>,
    spec: Vec<C32>,
    ctf: Vec<f32>,
    values: Vec<C32>,
    weights: Vec<f32>,
    phase_x: Vec<C32>,
    phase_y: Vec<C32>,
    work: Rfft2Work,
}

impl LaneWork {
    fn new(d: usize, fft: &Rfft2) -> LaneWork {
        let half = d * (d / 2 + 1);
        LaneWork {
            img: vec![0f32; d * d],
            spec: vec![C32::default(); half],
            ctf: vec![0f32; half],
            values: vec![C32::default(); half],
            weights: vec![0f32; half],
            phase_x: vec![C32::default(); d / 2 + 1],
            phase_y: vec![C32::default(); d],
            work: fft.work(),
        }
    }

    /// Read particle i, transform it and fill its CTF.
    fn load(
        &mut self,
        s: &ParticleStack,
        i: usize,
        ctf: Option<&cryoforge_core::CtfParams>,
        grid: &CtfGrid,
        fft: &Rfft2,
    ) -> Result<(), ReconError> {
        s.read_image(i, &mut self.img)?;
        fft.forward(&mut self.work, &self.img, &mut self.spec);
        if let Some(c) = ctf {
            grid.fill(c, &mut self.ctf);
        }
        Ok(())
    }

    /// Values and weights of the loaded particle re-centred by `shift` and scaled by `weight`.
    fn weigh(&mut self, has_ctf: bool, cfg: &ReconConfig, premult: bool, shift: [f64; 2], weight: f32) {
        let d = self.phase_y.len();
        let nh = d / 2 + 1;
        // Re-centre: multiply by e^(−2πi k·t/D), separable in kₓ and k_y.
        for (c, p) in self.phase_x.iter_mut().enumerate() {
            *p = recentre_phasor(c as f64, shift[0], d);
        }
        for (r, p) in self.phase_y.iter_mut().enumerate() {
            let ky = if r < d / 2 { r as isize } else { r as isize - d as isize };
            *p = recentre_phasor(ky as f64, shift[1], d);
        }
        let sign = if cfg.invert { -weight } else { weight };
        let mode = if has_ctf { cfg.ctf_correction } else { CtfCorrection::None };
        for r in 0..d {
            let py = self.phase_y[r] * sign;
            for c in 0..nh {
                let k = r * nh + c;
                let x = self.spec[k] * (self.phase_x[c] * py);
                let t = self.ctf[k];
                let (v, w) = match mode {
                    CtfCorrection::Wiener if premult => (x, t * t),
                    CtfCorrection::Wiener => (x * (-t), t * t),
                    CtfCorrection::PhaseFlip if t == 0.0 => (C32::default(), 0.0),
                    CtfCorrection::PhaseFlip => (x * (-t.signum()), 1.0),
                    CtfCorrection::None => (x, 1.0),
                };
                self.values[k] = v;
                self.weights[k] = w * weight;
            }
        }
    }
}

fn tikhonov_lambda(acc: &Accumulator, c: f64) -> Vec<f64> {
    let w = acc.mean_weight_per_shell();
    let mean = w.iter().sum::<f64>() / w.len().max(1) as f64;
    vec![c * mean; w.len()]
}

/// λ(k) = ⟨w⟩ₖ / SSNR(k), with SSNR from an FSC (`factor` 1 for a half map, 2 for the full map).
fn ssnr_lambda(acc: &Accumulator, fsc: &FscCurve, factor: f64) -> Vec<f64> {
    let w = acc.mean_weight_per_shell();
    w.iter()
        .enumerate()
        .map(|(k, &wk)| {
            let f = fsc.fsc.get(k).copied().unwrap_or(0.0).clamp(1e-3, 0.999);
            let ssnr = factor * f / (1.0 - f);
            wk / ssnr
        })
        .collect()
}

fn finish(
    acc: [Accumulator; 2],
    d: usize,
    apix: f64,
    cfg: &ReconConfig,
    n_half: [usize; 2],
) -> Result<Reconstruction, ReconError> {
    let window = cfg.window.map(|w| w.volume(d));
    // Every map leaves here windowed (when a window is set), and every FSC is of windowed maps.
    let to_map = |acc: &Accumulator, lam: &[f64]| -> Vec<f32> {
        let mut m = acc.to_map(lam);
        if let Some(w) = &window {
            m.iter_mut().zip(w).for_each(|(v, w)| *v *= w);
        }
        m
    };
    // The lightly regularised halves (the Tikhonov constant of the chosen mode) and their
    // FSC; with SSNR regularisation, each half is then Wiener-filtered with λ from it.
    let c = match cfg.regularisation {
        Regularisation::Tikhonov(c) => c,
        Regularisation::Ssnr => cfg.initial_tikhonov,
    };
    let (ta, tb) = (tikhonov_lambda(&acc[0], c), tikhonov_lambda(&acc[1], c));
    let (half_a, half_b) = (to_map(&acc[0], &ta), to_map(&acc[1], &tb));
    let fsc = fsc_volumes(&half_a, &half_b, d, apix);
    let (half_a_filtered, half_b_filtered) = match cfg.regularisation {
        Regularisation::Tikhonov(_) => (half_a.clone(), half_b.clone()),
        Regularisation::Ssnr => (
            to_map(&acc[0], &ssnr_lambda(&acc[0], &fsc, 1.0)),
            to_map(&acc[1], &ssnr_lambda(&acc[1], &fsc, 1.0)),
        ),
    };
    let [mut a, b] = acc;
    a.add(&b);
    let lam_full = match cfg.regularisation {
        Regularisation::Tikhonov(c) => tikhonov_lambda(&a, c),
        Regularisation::Ssnr => ssnr_lambda(&a, &fsc, 2.0),
    };
    let map = to_map(&a, &lam_full);
    Ok(Reconstruction { d, apix_a: apix, map, half_a, half_b, half_a_filtered, half_b_filtered, fsc, n_half })
}

/// Rotation of a pose composed with a symmetry operator (exposed for tests).
pub fn symmetric_pose(a: &Rot3, g: &Rot3) -> Rot3 {
    a.compose(g)
}

#[cfg(test)]
mod window_tests {
    use super::Window;

    #[test]
    fn window_is_one_inside_zero_outside_and_validated() {
        let n = 32;
        let w = Window::default().volume(n);
        let at = |z: usize, y: usize, x: usize| w[(z * n + y) * n + x];
        assert_eq!(at(16, 16, 16), 1.0);
        // 0.85 · 16 = 13.6 px: still inside; the box corner and the face centre (16 px ≥ 0.99·16) are out.
        assert_eq!(at(16, 16, 16 + 13), 1.0);
        assert_eq!(at(0, 0, 0), 0.0);
        assert_eq!(at(16, 16, 0), 0.0);
        let edge = at(16, 16, 16 + 15);
        assert!(edge > 0.0 && edge < 1.0, "{edge}");
        assert!(Window { inner: 0.9, outer: 0.8 }.validate().is_err());
        assert!(Window { inner: 0.0, outer: 0.8 }.validate().is_err());
        assert!(Window { inner: 0.5, outer: 2.0 }.validate().is_err());
        assert!(Window::default().validate().is_ok());
    }
}
