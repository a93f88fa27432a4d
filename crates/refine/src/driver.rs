//! The auto-refinement loop: global then local searches with frequency marching on
//! gold-standard half sets, until convergence, then one final iteration to Nyquist.
//!
//! Per iteration, for each half set independently: mask its reference (soft sphere of
//! the particle diameter, or the solvent mask), prepare the projector, search every
//! particle of that half ([`crate::expect`]); then reconstruct both halves from their
//! particles' significant poses (`recon`), measure the masked half-map FSC, average the
//! halves below `low_resol_join_halves_a`, and set the next band to the FSC 0.5 shell plus
//! a margin. The first iteration scores with a free reference scale
//! ([`Scoring::ScaleFree`]: the input map is not on the particles' grey scale); later ones
//! use the likelihood against the reconstructions, which are.
//!
//! **Modes.** Global searches (the whole asymmetric unit, level 0 a matrix product
//! against a bank of projections) run for at least `min_global_iters` iterations and
//! continue, up to `max_global_iters`, while the resolution gains at least one shell per
//! iteration; then local searches around each particle's pose. With `local`, every
//! iteration is local from the input poses.
//!
//! **Convergence.** After a local iteration that followed a local iteration: the FSC 0.5
//! shell gained less than half a shell, the band did not grow, and the median pose change
//! is below two fine angular steps. Then (or at `max_iter − 1`) one final iteration
//! searches locally at the full band (to Nyquist) and its reconstruction is the result.

use crate::band::{resolution_of_k, Band};
use crate::config::{AssignmentMode, HalvesFrom, RefineConfig, RefineError};
use crate::expect::{expectation, Expect, Level0};
use crate::maps::{extent_radius_a, join_halves_below, power_spectrum, shell_at};
use crate::score::{Bank, Scoring};
use crate::search::{rotation_cube, shift_grid, LevelPlan, SearchPlan, SearchResult};
use crate::so3::{angle_deg_sym, asymmetric_unit, grid_step_rad, healpix_directions, n_psi};
use cryoforge_core::filter::{lowpass_volume, spherical_mask, Edge};
use cryoforge_core::fsc::{fsc_volumes, FscCurve};
use cryoforge_core::symmetry::Symmetry;
use cryoforge_core::{CtfParams, Rot3};
use cryoforge_io::stack::{ParticleStack, Pose};
use cryoforge_recon::{reconstruct_assigned, Assignment, HalfSplit, ReconConfig, Reconstruction};
use cryoforge_sim::project::Projector;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicUsize;

/// Angular accuracy (degrees) assumed for the input poses of a `local` refinement
/// without `sigma_ang_deg`.
pub const LOCAL_ACCURACY_DEG: f64 = 1.8;

/// What a refinement is given.
pub struct RefineInput<'a> {
    pub stack: &'a ParticleStack,
    /// The reference map (D³, the particles' pixel size).
    pub reference: &'a [f32],
    /// Optional solvent mask (D³, values in [0, 1]) replacing the soft sphere.
    pub solvent_mask: Option<&'a [f32]>,
    /// True poses, to report pose errors per iteration (simulations).
    pub truth: Option<&'a [Pose]>,
}

/// Hooks for progress reporting (all optional).
pub trait Observer: Sync {
    fn iteration_started(&self, _iter: usize, _particles: usize, _what: &str) {}
    fn particles_done(&self, _n: usize) {}
    fn iteration_finished(&self, _stats: &IterationStats, _fsc: &FscCurve, _fsc_masked: &FscCurve) {}
}

/// No progress reporting.
pub struct Silent;
impl Observer for Silent {}

/// Search mode of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Global,
    Local,
    Final,
}

/// One line of iterations.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterationStats {
    pub iter: usize,
    pub mode: Mode,
    pub scoring: Scoring,
    /// Band of the search (cycles per box) and its resolution (Å).
    pub band_shells: f64,
    pub band_a: f64,
    /// Level-0 step and the final (fine) angular step (degrees) and shift step (px).
    pub coarse_step_deg: f64,
    pub fine_step_deg: f64,
    pub fine_shift_px: f64,
    pub levels: usize,
    /// Masked half-map FSC: resolution at 0.5 and 0.143 (Å) and the 0.5 shell.
    pub resolution_05_a: f64,
    pub resolution_0143_a: f64,
    pub shell_05: f64,
    /// Unmasked half-map FSC at 0.143 (Å).
    pub resolution_0143_unmasked_a: f64,
    /// Median change of the best pose since the previous iteration (degrees, px); none at
    /// the first.
    pub median_angle_change_deg: Option<f64>,
    pub median_shift_change_px: Option<f64>,
    /// Posterior statistics over particles.
    pub mean_max_prob: f64,
    pub mean_significant: f64,
    pub median_angular_spread_deg: f64,
    /// Median least-squares scale of the reference against the particles (≈ 1 when the
    /// reference is on the data's grey scale).
    #[serde(default)]
    pub median_reference_scale: f64,
    /// Against the true poses, when given.
    pub truth_median_angle_deg: Option<f64>,
    pub truth_median_shift_px: Option<f64>,
    pub truth_fraction_over_30deg: Option<f64>,
    pub particles: [usize; 2],
    pub search_seconds: f64,
    pub reconstruct_seconds: f64,
}

/// Per-particle statistics of the final iteration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticleStats {
    pub score: f64,
    pub max_prob: f64,
    pub n_significant: usize,
    pub ang_spread_deg: f64,
    pub shift_spread_px: f64,
}

/// The result of a refinement.
pub struct RefineOutcome {
    pub iterations: Vec<IterationStats>,
    pub poses: Vec<Pose>,
    /// 0 = half A, 1 = half B.
    pub halves: Vec<u8>,
    pub stats: Vec<ParticleStats>,
    pub recon: Reconstruction,
    pub fsc_masked: FscCurve,
    pub mask: Vec<f32>,
    pub diameter_a: f64,
}

/// What stays fixed over the iterations.
pub(crate) struct Setup<'a> {
    pub cfg: &'a RefineConfig,
    pub stack: &'a ParticleStack,
    pub ctf: &'a [CtfParams],
    pub d: usize,
    pub apix: f64,
    pub diameter_a: f64,
    pub mask: Vec<f32>,
    pub ops: Vec<Rot3>,
    pub dirs: Vec<[f64; 3]>,
    pub halves: Vec<u8>,
    pub members: [Vec<usize>; 2],
    pub offset_range_px: f64,
    pub truth: Option<&'a [Pose]>,
}

/// What changes over the iterations (state.json, for `--resume`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub iter: usize,
    pub band_k: f64,
    pub sigma2: Vec<f64>,
    pub shell_05: Vec<f64>,
    pub global_iters: usize,
    pub last_mode: Option<Mode>,
    pub converged: bool,
    /// Median posterior angular spread of the last iteration (degrees): the angular
    /// accuracy the data support, which the fine sampling must resolve.
    #[serde(default)]
    pub accuracy_deg: Option<f64>,
    #[serde(skip)]
    pub poses: Option<Vec<Pose>>,
    #[serde(skip)]
    pub refs: [Vec<f32>; 2],
}

impl Setup<'_> {
    /// Band (cycles per box) an angular step supports: a rotation by h moves the edge of
    /// a particle of diameter d_p by h·d_p/2, which must stay below the resolution.
    fn support_k(&self, h_rad: f64) -> f64 {
        2.0 * self.d as f64 * self.apix / (self.diameter_a * h_rad.max(1e-6))
    }

    /// The fine angular step (radians) for a band.
    pub(crate) fn fine_step(&self, k: f64) -> f64 {
        (self.cfg.oversampling * 2.0 * self.d as f64 * self.apix / (self.diameter_a * k))
            .max(0.1f64.to_radians())
    }

    /// The fine shift step (px) for a band: half a cell moves the phase at the band edge by
    /// at most π/8.
    fn fine_shift(&self, k: f64) -> f64 {
        (self.d as f64 / (8.0 * k)).clamp(0.05, 1.0)
    }

    pub(crate) fn levels(
        &self,
        band: &Band,
        k_band: f64,
        h0: f64,
        h_fine: f64,
        keep0: (usize, usize),
    ) -> Vec<LevelPlan> {
        let l = ((h0 / h_fine).log2().ceil().max(0.0) as usize).min(7);
        (0..=l)
            .map(|i| {
                let k = k_band.min(self.support_k(h0 / (1u32 << i) as f64)).max(1.0);
                let (keep_min, keep_max) = if i == 0 { keep0 } else { (2, self.cfg.keep_fine) };
                LevelPlan { k, n: band.prefix_len(k).max(1), keep_min, keep_max }
            })
            .collect()
    }
}

/// Run a refinement, writing its run directory `out` (see the crate docs).
pub fn refine(
    input: &RefineInput<'_>,
    cfg: &RefineConfig,
    out: &Path,
    resume: bool,
    obs: &dyn Observer,
) -> Result<RefineOutcome, RefineError> {
    cfg.validate()?;
    let setup = setup(input, cfg)?;
    // Across MPI ranks every rank runs the same iterations on its block of the particles
    // (crate::parallel); rank 0 writes.
    let root = cryoforge_core::dist::world().is_root();
    if root {
        crate::output::write_run(out, cfg, &setup)?;
    }
    let mut iterations = Vec::new();
    let mut state = match resume {
        true => crate::output::load_state(out, &setup, &mut iterations)?,
        false => initial_state(input, &setup)?,
    };
    loop {
        let mode = next_mode(&setup, &state);
        let it = run_iteration(&setup, &mut state, mode, obs)?;
        let (stats, results, recon, fsc_masked) = it;
        let last = mode == Mode::Final;
        if root {
            crate::output::write_iteration(out, &setup, &state, &results, &recon, &fsc_masked)?;
        }
        obs.iteration_finished(&stats, &recon.fsc, &fsc_masked);
        iterations.push(stats);
        if root {
            crate::output::write_iterations(out, &iterations)?;
        }
        if last {
            let poses = state.poses.clone().unwrap_or_default();
            let stats = results
                .iter()
                .map(|r| ParticleStats {
                    score: r.score,
                    max_prob: r.max_prob,
                    n_significant: r.n_significant,
                    ang_spread_deg: r.ang_spread_deg,
                    shift_spread_px: r.shift_spread_px,
                })
                .collect();
            let o = RefineOutcome {
                iterations,
                poses,
                halves: setup.halves.clone(),
                stats,
                recon,
                fsc_masked,
                mask: setup.mask.clone(),
                diameter_a: setup.diameter_a,
            };
            if root {
                crate::output::write_final(out, &setup, &o, &results)?;
            }
            return Ok(o);
        }
        update_references(&setup, &mut state, recon);
    }
}

fn setup<'a>(input: &RefineInput<'a>, cfg: &'a RefineConfig) -> Result<Setup<'a>, RefineError> {
    let s = input.stack;
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    if d % 2 == 1 || d < 16 {
        return Err(RefineError::Input(format!(
            "{}: box of {d} px: refinement needs an even box ≥ 16",
            s.path.display()
        )));
    }
    if input.reference.len() != d * d * d {
        return Err(RefineError::Input(format!(
            "reference has {} voxels, the particles' box {d}³",
            input.reference.len()
        )));
    }
    if s.ctf_premultiplied {
        return Err(RefineError::Input(format!(
            "{}: rlnCtfDataAreCtfPremultiplied = 1: refinement needs particles that are not CTF-premultiplied",
            s.path.display()
        )));
    }
    let ctf = s.require_ctf()?;
    if cfg.local && s.poses.is_none() {
        return Err(RefineError::Input(format!(
            "{}: --local needs poses in the input (a refined STAR/.cs or --poses)",
            s.path.display()
        )));
    }
    let sym: Symmetry =
        cfg.symmetry.parse().map_err(|e: String| RefineError::Config(format!("--sym: {e}")))?;
    let ops = sym.operators();
    let all = healpix_directions(cfg.healpix_order);
    let dirs: Vec<[f64; 3]> = asymmetric_unit(&all, &ops).into_iter().map(|i| all[i]).collect();
    let halves = halves(s, cfg)?;
    let members = [
        (0..s.len()).filter(|&i| halves[i] == 0).collect::<Vec<_>>(),
        (0..s.len()).filter(|&i| halves[i] == 1).collect::<Vec<_>>(),
    ];
    let box_a = d as f64 * apix;
    let diameter_a = match cfg.particle_diameter_a {
        Some(v) => v,
        None => {
            (2.0 * extent_radius_a(input.reference, d, apix) + 4.0 * apix).clamp(0.3 * box_a, 0.95 * box_a)
        }
    };
    let mask = match input.solvent_mask {
        Some(m) => m.to_vec(),
        // 1 inside the particle's radius, the soft edge outside it (RELION's
        // --particle_diameter mask), both kept inside the box.
        None => {
            let h = (d / 2) as f64;
            let r = (diameter_a / (2.0 * apix)).min(h - 3.0);
            spherical_mask(d, r, cfg.mask_edge_px.min(h - 1.0 - r).max(1.0))
        }
    };
    let offset_range_px = cfg.offset_range_a.map(|a| a / apix).unwrap_or(5.0);
    tracing::info!(
        "refine: {} particles ({} / {}), box {d} px at {apix} Å, diameter {diameter_a:.1} Å, {} directions × {} in-plane",
        s.len(),
        members[0].len(),
        members[1].len(),
        dirs.len(),
        n_psi(cfg.healpix_order)
    );
    Ok(Setup {
        cfg,
        stack: s,
        ctf,
        d,
        apix,
        diameter_a,
        mask,
        ops,
        dirs,
        halves,
        members,
        offset_range_px,
        truth: input.truth,
    })
}

fn halves(s: &ParticleStack, cfg: &RefineConfig) -> Result<Vec<u8>, RefineError> {
    let from_star = match cfg.halves {
        HalvesFrom::Star => true,
        HalvesFrom::Random => false,
        HalvesFrom::Auto => s.half_subset.is_some(),
    };
    let split = if from_star { HalfSplit::Star } else { HalfSplit::Random { seed: cfg.seed } };
    let h = cryoforge_recon::half_assignment(s, split)?;
    let n: [usize; 2] = [h.iter().filter(|&&v| v == 0).count(), h.iter().filter(|&&v| v == 1).count()];
    if n[0] == 0 || n[1] == 0 {
        let why = if from_star {
            "rlnRandomSubset puts every particle in one half set"
        } else {
            "too few particles"
        };
        return Err(RefineError::Input(format!(
            "{}: half sets of {} and {} particles: {why}; gold-standard refinement needs both halves",
            s.path.display(),
            n[0],
            n[1]
        )));
    }
    Ok(h)
}

fn initial_state(input: &RefineInput<'_>, setup: &Setup<'_>) -> Result<State, RefineError> {
    let (d, apix, cfg) = (setup.d, setup.apix, setup.cfg);
    // Low-pass with a raised-cosine edge two shells wide that reaches 0 at --ini-high-a:
    // nothing finer than it is shared by the two half sets' starting reference, so nothing
    // finer can be "found" in noise (Einstein from noise, `tests/refine.rs`).
    let mut r = input.reference.to_vec();
    let shell = 1.0 / (d as f64 * apix);
    let f0 = (1.0 / cfg.ini_high_a - shell).max(shell);
    lowpass_volume(&mut r, d, apix, 1.0 / f0, Edge::Cosine { width_per_a: 2.0 * shell });
    let all: Vec<usize> = (0..setup.stack.len()).collect();
    let sigma2 = power_spectrum(setup.stack, &all, cfg.noise_particles)?;
    let poses = if cfg.local {
        Some(setup.stack.poses.clone().ok_or_else(|| {
            RefineError::Input(format!(
                "{}: --local needs poses in the input (a refined STAR/.cs or --poses)",
                setup.stack.path.display()
            ))
        })?)
    } else {
        None
    };
    let k0 = crate::band::k_of_resolution(d, apix, cfg.ini_high_a).clamp(2.0, (d / 2) as f64);
    Ok(State {
        iter: 0,
        band_k: k0,
        sigma2,
        shell_05: Vec::new(),
        global_iters: 0,
        last_mode: None,
        converged: false,
        // Local refinement starts from poses of known quality: σ, or RELION's 1.8° default
        // of local searches after auto-refine.
        accuracy_deg: cfg.local.then(|| cfg.sigma_ang_deg.unwrap_or(LOCAL_ACCURACY_DEG)),
        poses,
        refs: [r.clone(), r],
    })
}

fn next_mode(setup: &Setup<'_>, state: &State) -> Mode {
    let cfg = setup.cfg;
    if state.converged || state.iter + 1 >= cfg.max_iter {
        return Mode::Final;
    }
    if cfg.local || state.poses.is_some() && state.last_mode == Some(Mode::Local) {
        return Mode::Local;
    }
    if state.global_iters < cfg.min_global_iters.max(1) || state.poses.is_none() {
        return Mode::Global;
    }
    let gain = match state.shell_05.as_slice() {
        [.., a, b] => b - a,
        _ => f64::INFINITY,
    };
    if state.global_iters < cfg.max_global_iters && gain >= 1.0 {
        Mode::Global
    } else {
        Mode::Local
    }
}

type IterationOutput = (IterationStats, Vec<SearchResult>, Reconstruction, FscCurve);

fn run_iteration(
    setup: &Setup<'_>,
    state: &mut State,
    mode: Mode,
    obs: &dyn Observer,
) -> Result<IterationOutput, RefineError> {
    let (d, cfg) = (setup.d, setup.cfg);
    state.iter += 1;
    let k_band = if mode == Mode::Final { (d / 2) as f64 } else { state.band_k };
    let band = Band::new(d, k_band);
    // The input map is on an arbitrary grey scale; reconstructions are on the data's.
    let scoring = if state.iter == 1 { Scoring::ScaleFree } else { Scoring::Likelihood };
    let (plan, geo) = plan(setup, &band, k_band, mode, scoring, state.accuracy_deg);
    obs.iteration_started(
        state.iter,
        setup.stack.len(),
        if mode == Mode::Global { "global" } else { "local" },
    );
    let t0 = std::time::Instant::now();
    let done = AtomicUsize::new(0);
    let mut results: Vec<Option<SearchResult>> = vec![None; setup.stack.len()];
    let mut resid = crate::maps::ShellAcc::new(d / 2 + 1);
    let sign = if cfg.invert { -1.0 } else { 1.0 };
    let comm = cryoforge_core::dist::world();
    let mut mine: Vec<(usize, SearchResult)> = Vec::new();
    for h in 0..2 {
        // This rank's contiguous block of the half set (all of it with one rank).
        let all_members = &setup.members[h];
        let members = &all_members[cryoforge_core::dist::my_block(all_members.len())];
        let masked: Vec<f32> = state.refs[h].iter().zip(&setup.mask).map(|(v, m)| v * m).collect();
        let proj = Projector::new(&masked, d, setup.apix, cfg.pad)?;
        let e = Expect {
            stack: setup.stack,
            ctf: setup.ctf,
            proj: &proj,
            band: &band,
            plan: &plan,
            sigma2: &state.sigma2,
            sign,
            batch: cfg.batch,
        };
        let (res, acc) = match mode {
            Mode::Global => {
                let bank =
                    Bank::build(&proj, &band, plan.levels[0].n, &setup.dirs, n_psi(cfg.healpix_order))?;
                let centres: Vec<[f64; 2]> = match &state.poses {
                    Some(p) => members.iter().map(|&i| p[i].shift_px).collect(),
                    None => vec![[0.0, 0.0]; members.len()],
                };
                let offsets = shift_grid(setup.offset_range_px, geo.s0_global);
                let l0 = Level0::Global { bank: &bank, offsets: &offsets, centres: &centres };
                expectation(&e, members, &l0, &done, &|n| obs.particles_done(n))?
            }
            Mode::Local | Mode::Final => {
                let poses = state
                    .poses
                    .as_ref()
                    .ok_or_else(|| RefineError::Input("local search without poses".into()))?;
                let prev: Vec<Pose> = members.iter().map(|&i| poses[i]).collect();
                let l0 = Level0::Local {
                    prev: &prev,
                    rot_offsets: &geo.rot_offsets,
                    shift_offsets: &geo.shift_offsets,
                };
                expectation(&e, members, &l0, &done, &|n| obs.particles_done(n))?
            }
        };
        mine.extend(members.iter().copied().zip(res));
        resid = resid.merged(&acc);
    }
    let (mine, resid) = crate::parallel::all_gather(comm, mine, resid)?;
    for (i, r) in mine {
        results[i] = Some(r);
    }
    let results: Vec<SearchResult> = results.into_iter().flatten().collect();
    let search_seconds = t0.elapsed().as_secs_f64();
    // Noise: residuals replace the estimate inside the band.
    state.sigma2 = resid.mean_or(&state.sigma2);
    let t1 = std::time::Instant::now();
    let (recon, fsc_masked) = reconstruct(setup, &results)?;
    let reconstruct_seconds = t1.elapsed().as_secs_f64();
    let stats =
        iteration_stats(setup, state, mode, scoring, &band, &geo, &plan, &results, &recon, &fsc_masked);
    let stats = IterationStats { search_seconds, reconstruct_seconds, ..stats };
    state.poses = Some(results.iter().map(|r| r.best).collect());
    if mode == Mode::Global {
        state.global_iters += 1;
    }
    advance(setup, state, mode, &stats);
    Ok((stats, results, recon, fsc_masked))
}

/// Geometry of an iteration's level 0.
pub(crate) struct Level0Geometry {
    pub h0: f64,
    pub h_fine: f64,
    pub s_fine: f64,
    pub s0_global: f64,
    pub rot_offsets: Vec<[f64; 3]>,
    pub shift_offsets: Vec<[f64; 2]>,
}

/// The search of an iteration. The fine angular step is the finer of what the band
/// supports (× `oversampling`) and the angular accuracy measured in the previous
/// iteration (RELION refines its sampling until it is finer than the accuracy).
fn plan(
    setup: &Setup<'_>,
    band: &Band,
    k_band: f64,
    mode: Mode,
    scoring: Scoring,
    accuracy_deg: Option<f64>,
) -> (SearchPlan, Level0Geometry) {
    let cfg = setup.cfg;
    let acc = accuracy_deg.filter(|a| a.is_finite() && *a > 0.0).map(f64::to_radians);
    let h_fine = match acc {
        Some(a) => setup.fine_step(k_band).min(a).max(0.1f64.to_radians()),
        None => setup.fine_step(k_band),
    };
    let s_fine = setup.fine_shift(k_band);
    match mode {
        Mode::Global => {
            let h0 = grid_step_rad(cfg.healpix_order);
            let levels = setup.levels(band, k_band, h0, h_fine, (8.min(cfg.keep_coarse), cfg.keep_coarse));
            let k0 = levels[0].k;
            let s0 = match cfg.offset_step_a {
                Some(a) if a > 0.0 => a / setup.apix,
                _ => (setup.d as f64 / (4.0 * k0)).clamp(0.25, (setup.offset_range_px / 2.0).max(0.25)),
            };
            let plan = SearchPlan {
                scoring,
                h0_rad: h0,
                s0_px: s0,
                levels,
                mass: cfg.mass,
                prior_sigma_rad: None,
                max_hits: cfg.max_hits,
            };
            (
                plan,
                Level0Geometry {
                    h0,
                    h_fine,
                    s_fine,
                    s0_global: s0,
                    rot_offsets: Vec::new(),
                    shift_offsets: Vec::new(),
                },
            )
        }
        Mode::Local | Mode::Final => {
            // Window ±3σ: σ given, or 1.5× the measured accuracy (at least two fine steps).
            let sigma = cfg
                .sigma_ang_deg
                .map(f64::to_radians)
                .unwrap_or_else(|| (1.5 * acc.unwrap_or(0.0)).max(2.0 * h_fine));
            let h0 = (2.0 * sigma).max(h_fine);
            let levels = setup.levels(band, k_band, h0, h_fine, (2, cfg.keep_fine));
            let s0 = 4.0 * s_fine;
            let shift_offsets: Vec<[f64; 2]> =
                (-2..=2).flat_map(|y| (-2..=2).map(move |x| [x as f64 * s0, y as f64 * s0])).collect();
            let plan = SearchPlan {
                scoring,
                h0_rad: h0,
                s0_px: s0,
                levels,
                mass: cfg.mass,
                prior_sigma_rad: Some(sigma),
                max_hits: cfg.max_hits,
            };
            let rot_offsets = rotation_cube(1, h0);
            (plan, Level0Geometry { h0, h_fine, s_fine, s0_global: s0, rot_offsets, shift_offsets })
        }
    }
}

fn reconstruct(
    setup: &Setup<'_>,
    results: &[SearchResult],
) -> Result<(Reconstruction, FscCurve), RefineError> {
    let cfg = setup.cfg;
    let rc = ReconConfig {
        pad: cfg.pad,
        symmetry: cfg.symmetry.clone(),
        invert: cfg.invert,
        ..Default::default()
    };
    let recon = match cfg.assignment {
        AssignmentMode::Best => {
            let poses: Vec<Pose> = results.iter().map(|r| r.best).collect();
            reconstruct_assigned(setup.stack, &rc, &setup.halves, Assignment::Single(&poses), &|_| {})?
        }
        AssignmentMode::Marginal => {
            let hits: Vec<Vec<(Pose, f32)>> = results.iter().map(|r| r.hits.clone()).collect();
            reconstruct_assigned(setup.stack, &rc, &setup.halves, Assignment::Weighted(&hits), &|_| {})?
        }
    };
    let m = |v: &[f32]| -> Vec<f32> { v.iter().zip(&setup.mask).map(|(a, b)| a * b).collect() };
    let fsc_masked = fsc_volumes(&m(&recon.half_a), &m(&recon.half_b), setup.d, setup.apix);
    Ok((recon, fsc_masked))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn iteration_stats(
    setup: &Setup<'_>,
    state: &State,
    mode: Mode,
    scoring: Scoring,
    band: &Band,
    geo: &Level0Geometry,
    plan: &SearchPlan,
    results: &[SearchResult],
    recon: &Reconstruction,
    fsc_masked: &FscCurve,
) -> IterationStats {
    let ops = &setup.ops;
    let (dchange, schange) = match &state.poses {
        Some(prev) => (
            Some(median(
                results.iter().zip(prev).map(|(r, p)| angle_deg_sym(&r.best.rot, &p.rot, ops)).collect(),
            )),
            Some(median(results.iter().zip(prev).map(|(r, p)| dist(r.best.shift_px, p.shift_px)).collect())),
        ),
        None => (None, None),
    };
    let truth = setup.truth.map(|t| {
        let ang: Vec<f64> =
            results.iter().zip(t).map(|(r, p)| angle_deg_sym(&r.best.rot, &p.rot, ops)).collect();
        let over = ang.iter().filter(|&&a| a > 30.0).count() as f64 / ang.len().max(1) as f64;
        (
            median(ang),
            median(results.iter().zip(t).map(|(r, p)| dist(r.best.shift_px, p.shift_px)).collect()),
            over,
        )
    });
    let n = results.len().max(1) as f64;
    IterationStats {
        iter: state.iter,
        mode,
        scoring,
        band_shells: band.k_max(),
        band_a: resolution_of_k(setup.d, setup.apix, band.k_max()),
        coarse_step_deg: geo.h0.to_degrees(),
        fine_step_deg: geo.h_fine.to_degrees(),
        fine_shift_px: geo.s_fine,
        levels: plan.levels.len(),
        resolution_05_a: fsc_masked.resolution_at(0.5),
        resolution_0143_a: fsc_masked.resolution_at(0.143),
        shell_05: shell_at(fsc_masked, 0.5),
        resolution_0143_unmasked_a: recon.fsc.resolution_at(0.143),
        median_angle_change_deg: dchange,
        median_shift_change_px: schange,
        mean_max_prob: results.iter().map(|r| r.max_prob).sum::<f64>() / n,
        mean_significant: results.iter().map(|r| r.n_significant as f64).sum::<f64>() / n,
        median_angular_spread_deg: median(results.iter().map(|r| r.ang_spread_deg).collect()),
        median_reference_scale: median(results.iter().map(|r| r.scale).collect()),
        truth_median_angle_deg: truth.map(|t| t.0),
        truth_median_shift_px: truth.map(|t| t.1),
        truth_fraction_over_30deg: truth.map(|t| t.2),
        particles: [setup.members[0].len(), setup.members[1].len()],
        search_seconds: 0.0,
        reconstruct_seconds: 0.0,
    }
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Frequency marching and the convergence rule (module docs).
fn advance(setup: &Setup<'_>, state: &mut State, mode: Mode, stats: &IterationStats) {
    let d = setup.d;
    let margin = setup.cfg.band_margin_shells.unwrap_or(((d as f64) / 10.0).round().clamp(4.0, 10.0));
    let k_next = (stats.shell_05 + margin).max(state.band_k).min((d / 2) as f64);
    let gain = state.shell_05.last().map(|p| stats.shell_05 - p).unwrap_or(f64::INFINITY);
    let stable = stats.median_angle_change_deg.is_some_and(|c| c < 2.0 * stats.fine_step_deg);
    if mode == Mode::Local
        && state.last_mode == Some(Mode::Local)
        && gain < 0.5
        && k_next <= state.band_k + 0.5
        && stable
    {
        state.converged = true;
    }
    state.band_k = k_next;
    state.accuracy_deg = Some(stats.median_angular_spread_deg);
    state.shell_05.push(stats.shell_05);
    state.last_mode = Some(mode);
}

/// The next references: each half's map, the two averaged below the join resolution.
fn update_references(setup: &Setup<'_>, state: &mut State, recon: Reconstruction) {
    let Reconstruction { half_a_filtered: mut half_a, half_b_filtered: mut half_b, .. } = recon;
    join_halves_below(&mut half_a, &mut half_b, setup.d, setup.apix, setup.cfg.low_resol_join_halves_a);
    state.refs = [half_a, half_b];
}
