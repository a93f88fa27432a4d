//! Reference-free initial models (`cryoforge abinit`): stochastic gradient descent over
//! mini-batches from a random start, as cryoSPARC's ab initio reconstruction, with K
//! classes.
//!
//! **Why SGD (cryoSPARC) and not VDAM (RELION 4).** Both minimise the same negative
//! log-likelihood over mini-batches; SGD with a diagonal (CTF²-weight) preconditioner has
//! a closed-form step that is exactly a blend of the current map with the mini-batch's
//! Wiener reconstruction, so it reuses `recon::reconstruct_assigned` unchanged, needs no
//! per-voxel moment buffers, and its one hyper-parameter (the step η) has a clear meaning.
//!
//! **One iteration.** A random mini-batch of `batch` particles (seeded); its poses by the
//! refine engine's coarse-to-fine search (global: projection bank × shifts as a matrix
//! product at level 0, then finer tangent-space cells; [`crate::expect::expectation`])
//! against each class's current map at the iteration's band; class posteriors from the
//! best log-likelihoods and the class priors; per class, the Wiener reconstruction of the
//! batch weighted by pose and class posteriors (`R_k`), and the step
//! `V_k ← (1 − η)·V_k + η·R_k`, then the low-pass to the iteration's resolution, the soft
//! spherical mask and re-centring on the centre of mass. η decays as `1/(1 + t/τ)`
//! (floored); the resolution goes from `res_start_a` (35 Å) to `res_end_a` (12 Å) linearly
//! in 1/Å over the first 70 % of iterations; the angular grid is HEALPix order 1 (15°) above
//! 20 Å and order 2 (7.5°) below; the class priors are a running mean of the batches'
//! posteriors.
//!
//! **Start.** Each class starts from the reconstruction of a different random batch at
//! random (Haar-uniform) poses, low-passed to `res_start_a`: a blob with random
//! low-resolution structure. With `starts > 1` every start runs the whole schedule and the
//! one with the highest mean log-likelihood on a common evaluation batch is kept.
//!
//! **End.** One global search of every particle against every class at the final band;
//! each particle goes to its most probable class; each class is reconstructed from its
//! particles with gold-standard halves (its FSC says how far the initial model goes).

use crate::band::{k_of_resolution, Band};
use crate::config::{RefineConfig, RefineError};
use crate::driver::Setup;
use crate::expect::{expectation, Expect, Level0};
use crate::maps::power_spectrum;
use crate::score::{Bank, Scoring};
use crate::search::{shift_grid, SearchPlan, SearchResult};
use crate::so3::{asymmetric_unit, grid_step_rad, healpix_directions, n_psi};
use cryoforge_core::fft::{Fft3, C32};
use cryoforge_core::filter::{lowpass_volume, spherical_mask, Edge};
use cryoforge_core::symmetry::Symmetry;
use cryoforge_io::stack::{ParticleStack, Pose};
use cryoforge_recon::{reconstruct_assigned, Assignment, HalfSplit, ReconConfig, Reconstruction};
use cryoforge_sim::project::Projector;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicUsize;

/// Settings of [`abinit`] (defaults as cryoSPARC's ab initio where it has them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbinitConfig {
    pub classes: usize,
    pub starts: usize,
    pub seed: u64,
    /// Resolution of the first and of the last iterations (Å).
    pub res_start_a: f64,
    pub res_end_a: f64,
    /// SGD iterations (mini-batches).
    pub iterations: usize,
    /// Particles per mini-batch (per class: the batch is shared).
    pub batch: usize,
    /// Initial step and its decay constant (iterations) and floor.
    pub eta0: f64,
    pub eta_tau: f64,
    pub eta_min: f64,
    /// Particle diameter (Å) for the mask; default 0.75 × the box.
    pub particle_diameter_a: Option<f64>,
    /// Shift search range (Å), around the box centre.
    pub offset_range_a: f64,
    pub symmetry: String,
    pub invert: bool,
    /// Particles of the common evaluation batch that ranks starts.
    pub eval_batch: usize,
}

impl Default for AbinitConfig {
    fn default() -> Self {
        AbinitConfig {
            classes: 1,
            starts: 1,
            seed: 0,
            res_start_a: 35.0,
            res_end_a: 12.0,
            iterations: 80,
            batch: 300,
            eta0: 1.0,
            eta_tau: 8.0,
            eta_min: 0.05,
            particle_diameter_a: None,
            offset_range_a: 10.0,
            symmetry: "C1".into(),
            invert: false,
            eval_batch: 600,
        }
    }
}

impl AbinitConfig {
    pub fn validate(&self) -> Result<(), RefineError> {
        let bad = |m: String| Err(RefineError::Config(m));
        if self.classes == 0 || self.classes > 50 {
            return bad(format!("--classes {}: between 1 and 50", self.classes));
        }
        if self.starts == 0 {
            return bad("--starts 0: at least one start".into());
        }
        if !(self.res_start_a > 0.0 && self.res_end_a > 0.0 && self.res_end_a <= self.res_start_a) {
            return bad(format!(
                "--res-start-a {} / --res-end-a {}: positive, the end finer than the start",
                self.res_start_a, self.res_end_a
            ));
        }
        if self.iterations == 0 || self.batch < 10 {
            return bad(format!("--iterations {} / --batch {}: ≥ 1 and ≥ 10", self.iterations, self.batch));
        }
        if !(self.eta0 > 0.0 && self.eta0 <= 1.0 && self.eta_min > 0.0 && self.eta_min <= self.eta0) {
            return bad(format!("step η₀ {} / floor {}: 0 < floor ≤ η₀ ≤ 1", self.eta0, self.eta_min));
        }
        self.symmetry.parse::<Symmetry>().map(|_| ()).map_err(|e| RefineError::Config(format!("--sym: {e}")))
    }

    /// Resolution (Å) of iteration t (0-based).
    pub fn resolution_at(&self, t: usize) -> f64 {
        let ramp = (0.7 * self.iterations as f64).max(1.0);
        let f = (t as f64 / ramp).min(1.0);
        let (a, b) = (1.0 / self.res_start_a, 1.0 / self.res_end_a);
        1.0 / (a + f * (b - a))
    }

    pub fn eta_at(&self, t: usize) -> f64 {
        (self.eta0 / (1.0 + t as f64 / self.eta_tau)).max(self.eta_min)
    }
}

/// Metrics of one SGD iteration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbinitIteration {
    pub start: usize,
    pub iter: usize,
    pub resolution_a: f64,
    pub eta: f64,
    pub healpix_order: u32,
    pub class_fractions: Vec<f64>,
    /// Mean best log-likelihood of the batch (class-marginal maximum).
    pub mean_score: f64,
    pub seconds: f64,
}

/// What [`abinit`] returns.
pub struct AbinitOutcome {
    pub maps: Vec<Vec<f32>>,
    /// Final gold-standard reconstructions per class (None for an empty class).
    pub recons: Vec<Option<Reconstruction>>,
    pub class_of: Vec<usize>,
    pub class_prob: Vec<f64>,
    pub poses: Vec<Pose>,
    pub iterations: Vec<AbinitIteration>,
    pub chosen_start: usize,
    pub start_scores: Vec<f64>,
    pub diameter_a: f64,
    pub halves: Vec<u8>,
}

/// Progress callbacks.
pub trait AbinitObserver: Sync {
    fn iteration(&self, _it: &AbinitIteration) {}
    fn stage(&self, _what: &str) {}
}

pub struct Quiet;
impl AbinitObserver for Quiet {}

/// Class maps and class priors at the end of a start.
struct StartResult {
    maps: Vec<Vec<f32>>,
    prior: Vec<f64>,
}

struct Ctx<'a> {
    setup: Setup<'a>,
    sigma2: Vec<f64>,
    recon_cfg: ReconConfig,
}

/// Run ab initio reconstruction on `stack` (CTF required, poses ignored).
pub fn abinit(
    stack: &ParticleStack,
    cfg: &AbinitConfig,
    obs: &dyn AbinitObserver,
) -> Result<AbinitOutcome, RefineError> {
    cfg.validate()?;
    let need = cfg.batch.max(2 * cfg.classes);
    if stack.len() < need {
        return Err(RefineError::Input(format!(
            "{}: {} particles, fewer than one mini-batch ({need}); lower --batch",
            stack.path.display(),
            stack.len()
        )));
    }
    let rcfg = engine_config(cfg);
    let ctx = context(stack, cfg, &rcfg)?;
    let halves = ctx.setup.halves.clone();
    let all: Vec<usize> = (0..stack.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xab17);
    let mut eval: Vec<usize> = all.clone();
    eval.shuffle(&mut rng);
    eval.truncate(cfg.eval_batch.min(stack.len()));
    eval.sort_unstable();

    let mut best: Option<(f64, usize, StartResult)> = None;
    let mut iterations = Vec::new();
    let mut start_scores = Vec::new();
    for s in 0..cfg.starts {
        obs.stage(&format!("start {}/{}", s + 1, cfg.starts));
        let (sr, its) = run_start(&ctx, cfg, s, obs)?;
        let (maps, prior) = (sr.maps, sr.prior);
        iterations.extend(its);
        let score = if cfg.starts > 1 {
            let res = cfg.res_end_a;
            let results = search_all(&ctx, &maps, &eval, res, 2, Scoring::Likelihood)?;
            let (_, _, mean) = posteriors(&results, &prior);
            mean
        } else {
            0.0
        };
        start_scores.push(score);
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, s, StartResult { maps, prior }));
        }
    }
    let Some((_, chosen_start, StartResult { maps, prior })) = best else {
        return Err(RefineError::Config("--starts 0: at least one start".into()));
    };

    // Final assignment of every particle and gold-standard class maps.
    obs.stage("final assignment of every particle");
    let results = search_all(&ctx, &maps, &all, cfg.res_end_a, 2, Scoring::Likelihood)?;
    let (class_of, class_prob, _) = posteriors(&results, &prior);
    let poses: Vec<Pose> = (0..stack.len()).map(|i| results[class_of[i]][i].best).collect();
    let mut recons = Vec::with_capacity(cfg.classes);
    let mut out_maps = Vec::with_capacity(cfg.classes);
    for k in 0..cfg.classes {
        let members: Vec<usize> = (0..stack.len()).filter(|&i| class_of[i] == k).collect();
        let n_a = members.iter().filter(|&&i| halves[i] == 0).count();
        if n_a == 0 || n_a == members.len() {
            recons.push(None);
            out_maps.push(maps[k].clone());
            continue;
        }
        obs.stage(&format!("reconstructing class {} ({} particles)", k + 1, members.len()));
        let mut sub = stack.clone();
        sub.select(&members)?;
        let hits: Vec<Vec<(Pose, f32)>> = members.iter().map(|&i| results[k][i].hits.clone()).collect();
        let hv: Vec<u8> = members.iter().map(|&i| halves[i]).collect();
        let rec = reconstruct_assigned(&sub, &ctx.recon_cfg, &hv, Assignment::Weighted(&hits), &|_| {})?;
        out_maps.push(rec.map.clone());
        recons.push(Some(rec));
    }
    Ok(AbinitOutcome {
        maps: out_maps,
        recons,
        class_of,
        class_prob,
        poses,
        iterations,
        chosen_start,
        start_scores,
        diameter_a: ctx.setup.diameter_a,
        halves,
    })
}

/// The refine engine's settings for the searches of ab initio (and [`search_maps`]).
fn engine_config(cfg: &AbinitConfig) -> RefineConfig {
    RefineConfig {
        symmetry: cfg.symmetry.clone(),
        invert: cfg.invert,
        healpix_order: 2,
        ..Default::default()
    }
}

/// Checks the stack and builds what every search of a run shares: mask, symmetry,
/// random halves and the noise spectrum.
fn context<'a>(
    stack: &'a ParticleStack,
    cfg: &AbinitConfig,
    rcfg: &'a RefineConfig,
) -> Result<Ctx<'a>, RefineError> {
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if d % 2 == 1 || d < 16 {
        return Err(RefineError::Input(format!(
            "{}: box of {d} px: ab initio needs an even box ≥ 16",
            stack.path.display()
        )));
    }
    if stack.ctf_premultiplied {
        return Err(RefineError::Input(format!(
            "{}: rlnCtfDataAreCtfPremultiplied = 1: ab initio needs particles that are not CTF-premultiplied",
            stack.path.display()
        )));
    }
    let ctf = stack.require_ctf()?;
    let sym: Symmetry =
        cfg.symmetry.parse().map_err(|e: String| RefineError::Config(format!("--sym: {e}")))?;
    let ops = sym.operators();
    let box_a = d as f64 * apix;
    let diameter_a = cfg.particle_diameter_a.unwrap_or(0.75 * box_a).clamp(0.2 * box_a, 0.95 * box_a);
    let h = (d / 2) as f64;
    let r = (diameter_a / (2.0 * apix)).min(h - 3.0);
    let mask = spherical_mask(d, r, 5f64.min(h - 1.0 - r).max(1.0));
    let halves = cryoforge_recon::half_assignment(stack, HalfSplit::Random { seed: cfg.seed })?;
    let setup = Setup {
        cfg: rcfg,
        stack,
        ctf,
        d,
        apix,
        diameter_a,
        mask,
        ops,
        dirs: Vec::new(),
        halves,
        members: [Vec::new(), Vec::new()],
        offset_range_px: cfg.offset_range_a / apix,
        truth: None,
    };
    let all: Vec<usize> = (0..stack.len()).collect();
    let sigma2 = power_spectrum(stack, &all, 2000)?;
    let recon_cfg = ReconConfig { symmetry: cfg.symmetry.clone(), invert: cfg.invert, ..Default::default() };
    Ok(Ctx { setup, sigma2, recon_cfg })
}

/// Settings of [`search_maps`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapSearchConfig {
    /// Band of the last level (Å).
    pub res_a: f64,
    /// HEALPix order of the global grid (1: 15°, 2: 7.5°).
    pub healpix_order: u32,
    /// Shift search range (Å) around the box centre.
    pub offset_range_a: f64,
    /// Particle diameter (Å) for the reference mask; default 0.75 × the box.
    pub particle_diameter_a: Option<f64>,
    pub symmetry: String,
    pub invert: bool,
    pub seed: u64,
}

impl Default for MapSearchConfig {
    fn default() -> Self {
        MapSearchConfig {
            res_a: 12.0,
            healpix_order: 2,
            offset_range_a: 10.0,
            particle_diameter_a: None,
            symmetry: "C1".into(),
            invert: false,
            seed: 0,
        }
    }
}

/// Global coarse-to-fine pose search of every particle of `stack` against the map it is
/// assigned to (`assign[i]` indexes `maps`, D³ at the particles' pixel size): the search
/// of ab initio's final assignment (projection bank × shifts, then finer cells with
/// posterior pruning) with one map per group of particles. CryoSolver's hierarchical pose
/// search calls it with the volumes its decoder gives at a few latent anchors.
pub fn search_maps(
    stack: &ParticleStack,
    maps: &[Vec<f32>],
    assign: &[usize],
    cfg: &MapSearchConfig,
) -> Result<Vec<SearchResult>, RefineError> {
    if assign.len() != stack.len() {
        return Err(RefineError::Input(format!(
            "{}: {} particles but {} map assignments",
            stack.path.display(),
            stack.len(),
            assign.len()
        )));
    }
    if let Some((i, &g)) = assign.iter().enumerate().find(|(_, &g)| g >= maps.len()) {
        return Err(RefineError::Input(format!("particle {i}: map {g} of {}", maps.len())));
    }
    if !(cfg.res_a.is_finite() && cfg.res_a > 0.0) || cfg.healpix_order > 4 {
        return Err(RefineError::Config(format!(
            "pose search at {} Å, HEALPix order {}: positive resolution and order ≤ 4",
            cfg.res_a, cfg.healpix_order
        )));
    }
    let acfg = AbinitConfig {
        seed: cfg.seed,
        particle_diameter_a: cfg.particle_diameter_a,
        offset_range_a: cfg.offset_range_a,
        symmetry: cfg.symmetry.clone(),
        invert: cfg.invert,
        ..Default::default()
    };
    let rcfg = engine_config(&acfg);
    let ctx = context(stack, &acfg, &rcfg)?;
    let n3 = ctx.setup.d.pow(3);
    if let Some(g) = maps.iter().position(|m| m.len() != n3) {
        return Err(RefineError::Input(format!(
            "map {g}: {} voxels, the particles' box needs {n3}",
            maps[g].len()
        )));
    }
    let mut out: Vec<Option<SearchResult>> = vec![None; stack.len()];
    for (g, m) in maps.iter().enumerate() {
        let ids: Vec<usize> = (0..stack.len()).filter(|&i| assign[i] == g).collect();
        if ids.is_empty() {
            continue;
        }
        let res = search_all(
            &ctx,
            std::slice::from_ref(m),
            &ids,
            cfg.res_a,
            cfg.healpix_order,
            Scoring::Likelihood,
        )?;
        let mut res = res.into_iter().next().unwrap_or_default();
        for &i in &ids {
            out[i] = Some(std::mem::replace(&mut res[i], placeholder()));
        }
    }
    Ok(out.into_iter().map(|r| r.unwrap_or_else(placeholder)).collect())
}

fn placeholder() -> SearchResult {
    SearchResult {
        best: Pose { rot: cryoforge_core::Rot3::IDENTITY, shift_px: [0.0, 0.0] },
        score: f64::NEG_INFINITY,
        max_prob: 0.0,
        n_significant: 0,
        ang_spread_deg: 0.0,
        shift_spread_px: 0.0,
        hits: Vec::new(),
        scale: 0.0,
    }
}

/// One start: random initial maps, then the SGD schedule. Returns the maps and priors.
fn run_start(
    ctx: &Ctx<'_>,
    cfg: &AbinitConfig,
    start: usize,
    obs: &dyn AbinitObserver,
) -> Result<(StartResult, Vec<AbinitIteration>), RefineError> {
    let s = ctx.setup.stack;
    let (d, apix) = (ctx.setup.d, ctx.setup.apix);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(start as u64 + 1));
    let idx: Vec<usize> = (0..s.len()).collect();
    let k = cfg.classes;
    // Random starts: reconstructions of random batches at random poses.
    let mut maps = Vec::with_capacity(k);
    for _ in 0..k {
        let batch: Vec<usize> = idx.choose_multiple(&mut rng, cfg.batch).copied().collect();
        let poses: Vec<Vec<(Pose, f32)>> = batch
            .iter()
            .map(|_| {
                let r = cryoforge_core::rotation::uniform_rotation(rng.gen(), rng.gen(), rng.gen());
                vec![(Pose { rot: r, shift_px: [0.0, 0.0] }, 1.0)]
            })
            .collect();
        let mut m = batch_map(ctx, &batch, &poses)?;
        finish_map(&mut m, d, apix, cfg.res_start_a, &ctx.setup.mask);
        maps.push(m);
    }
    let mut prior = vec![1.0 / k as f64; k];
    let mut its = Vec::with_capacity(cfg.iterations);
    for t in 0..cfg.iterations {
        let t0 = std::time::Instant::now();
        let res = cfg.resolution_at(t);
        let order = if res > 20.0 { 1 } else { 2 };
        let mut batch: Vec<usize> = idx.choose_multiple(&mut rng, cfg.batch).copied().collect();
        batch.sort_unstable();
        // A free reference scale while the maps' grey scale is still the random start's;
        // then the likelihood on the data's scale, which alone penalises density a particle
        // lacks (a scale-free fit shrinks a bigger class's projection onto a smaller particle).
        let scoring = if t < cfg.iterations / 5 { Scoring::ScaleFree } else { Scoring::Likelihood };
        let results = search_all(ctx, &maps, &batch, res, order, scoring)?;
        let (_, post, mean) = posteriors_batch(&results, &prior, &batch);
        let eta = cfg.eta_at(t);
        let mut frac = vec![0f64; k];
        for c in 0..k {
            let w: Vec<f64> = (0..batch.len()).map(|j| post[j * k + c]).collect();
            frac[c] = w.iter().sum::<f64>() / batch.len() as f64;
            // Members with a non-negligible posterior for this class.
            let sel: Vec<usize> = (0..batch.len()).filter(|&j| w[j] > 1e-3).collect();
            if sel.len() < 10 {
                continue;
            }
            let ids: Vec<usize> = sel.iter().map(|&j| batch[j]).collect();
            let hits: Vec<Vec<(Pose, f32)>> = sel
                .iter()
                .map(|&j| results[c][batch[j]].hits.iter().map(|&(p, q)| (p, q * w[j] as f32)).collect())
                .collect();
            let r = batch_map(ctx, &ids, &hits)?;
            for (v, x) in maps[c].iter_mut().zip(&r) {
                *v = ((1.0 - eta) * *v as f64 + eta * *x as f64) as f32;
            }
            finish_map(&mut maps[c], d, apix, res, &ctx.setup.mask);
        }
        for c in 0..k {
            prior[c] = (0.9 * prior[c] + 0.1 * frac[c]).max(1e-3);
        }
        let z: f64 = prior.iter().sum();
        prior.iter_mut().for_each(|p| *p /= z);
        let it = AbinitIteration {
            start,
            iter: t + 1,
            resolution_a: res,
            eta,
            healpix_order: order,
            class_fractions: frac,
            mean_score: mean,
            seconds: t0.elapsed().as_secs_f64(),
        };
        obs.iteration(&it);
        its.push(it);
    }
    Ok((StartResult { maps, prior }, its))
}

/// The Wiener reconstruction (`Reconstruction::map`) of particles `ids` with weighted poses.
fn batch_map(ctx: &Ctx<'_>, ids: &[usize], hits: &[Vec<(Pose, f32)>]) -> Result<Vec<f32>, RefineError> {
    let mut sub = ctx.setup.stack.clone();
    sub.select(ids)?;
    let halves: Vec<u8> = (0..ids.len()).map(|j| (j % 2) as u8).collect();
    let rec = reconstruct_assigned(&sub, &ctx.recon_cfg, &halves, Assignment::Weighted(hits), &|_| {})?;
    Ok(rec.map)
}

/// Low-pass to `res_a`, soft mask, and re-centre on the centre of (positive) mass.
fn finish_map(m: &mut [f32], d: usize, apix: f64, res_a: f64, mask: &[f32]) {
    let shell = 1.0 / (d as f64 * apix);
    lowpass_volume(m, d, apix, res_a, Edge::Cosine { width_per_a: 2.0 * shell });
    for (v, w) in m.iter_mut().zip(mask) {
        *v *= w;
    }
    let h = (d / 2) as f64;
    let (mut c, mut tot) = ([0f64; 3], 0f64);
    for (i, &v) in m.iter().enumerate() {
        if v > 0.0 {
            let p = [(i % d) as f64 - h, ((i / d) % d) as f64 - h, (i / (d * d)) as f64 - h];
            for a in 0..3 {
                c[a] += v as f64 * p[a];
            }
            tot += v as f64;
        }
    }
    if tot <= 0.0 {
        return;
    }
    let t = c.map(|x| x / tot);
    if t.iter().all(|x| x.abs() < 0.25) {
        return;
    }
    // Shift by −t (exact, in Fourier space).
    let f = Fft3::new(d);
    let mut spec = f.forward_real(m);
    for z in 0..d {
        for y in 0..d {
            for x in 0..d {
                let k = [x as f64 - h, y as f64 - h, z as f64 - h];
                let ph = std::f64::consts::TAU * (k[0] * t[0] + k[1] * t[1] + k[2] * t[2]) / d as f64;
                spec[(z * d + y) * d + x] *= C32::new(ph.cos() as f32, ph.sin() as f32);
            }
        }
    }
    let back = f.inverse_complex(&spec);
    for (v, b) in m.iter_mut().zip(back) {
        *v = b.re;
    }
}

/// Global search of `ids` against every class map at resolution `res_a` and HEALPix
/// `order`: `out[class][particle]` (entries outside `ids` are placeholders).
fn search_all(
    ctx: &Ctx<'_>,
    maps: &[Vec<f32>],
    ids: &[usize],
    res_a: f64,
    order: u32,
    scoring: Scoring,
) -> Result<Vec<Vec<SearchResult>>, RefineError> {
    let su = &ctx.setup;
    let d = su.d;
    let k_band = k_of_resolution(d, su.apix, res_a).clamp(2.0, (d / 2) as f64);
    let band = Band::new(d, k_band);
    let all = healpix_directions(order);
    let dirs: Vec<[f64; 3]> = asymmetric_unit(&all, &su.ops).into_iter().map(|i| all[i]).collect();
    let h0 = grid_step_rad(order);
    let h_fine = (h0 / 4.0).max(su.fine_step(k_band));
    let levels = su.levels(&band, k_band, h0, h_fine, (8, su.cfg.keep_coarse));
    let s0 = (d as f64 / (4.0 * levels[0].k)).clamp(0.5, (su.offset_range_px / 2.0).max(0.5));
    let plan = SearchPlan {
        scoring,
        h0_rad: h0,
        s0_px: s0,
        levels,
        mass: su.cfg.mass,
        prior_sigma_rad: None,
        max_hits: su.cfg.max_hits,
    };
    let offsets = shift_grid(su.offset_range_px, s0);
    let centres = vec![[0.0, 0.0]; ids.len()];
    let placeholder = placeholder();
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let masked: Vec<f32> = m.iter().zip(&su.mask).map(|(v, w)| v * w).collect();
        let proj = Projector::new(&masked, d, su.apix, su.cfg.pad)?;
        let bank = Bank::build(&proj, &band, plan.levels[0].n, &dirs, n_psi(order))?;
        let e = Expect {
            stack: su.stack,
            ctf: su.ctf,
            proj: &proj,
            band: &band,
            plan: &plan,
            sigma2: &ctx.sigma2,
            sign: if su.cfg.invert { -1.0 } else { 1.0 },
            batch: su.cfg.batch,
        };
        let l0 = Level0::Global { bank: &bank, offsets: &offsets, centres: &centres };
        let done = AtomicUsize::new(0);
        let (res, _) = expectation(&e, ids, &l0, &done, &|_| {})?;
        let mut v = vec![placeholder.clone(); su.stack.len()];
        for (&i, r) in ids.iter().zip(res) {
            v[i] = r;
        }
        out.push(v);
    }
    Ok(out)
}

/// Class posteriors of a batch: flat `[j·K + c]`, and the mean class-marginal score.
fn posteriors_batch(
    results: &[Vec<SearchResult>],
    prior: &[f64],
    ids: &[usize],
) -> (Vec<usize>, Vec<f64>, f64) {
    let k = prior.len();
    let mut post = vec![0f64; ids.len() * k];
    let mut best = vec![0usize; ids.len()];
    let mut mean = 0f64;
    for (j, &i) in ids.iter().enumerate() {
        let l: Vec<f64> = (0..k).map(|c| results[c][i].score + prior[c].ln()).collect();
        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = l.iter().map(|v| (v - mx).exp()).sum();
        for c in 0..k {
            post[j * k + c] = (l[c] - mx).exp() / z;
        }
        best[j] = (0..k).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0);
        mean += mx + z.ln();
    }
    (best, post, mean / ids.len().max(1) as f64)
}

/// Most probable class of every particle, its posterior, and the mean marginal score.
fn posteriors(results: &[Vec<SearchResult>], prior: &[f64]) -> (Vec<usize>, Vec<f64>, f64) {
    let n = results[0].len();
    let ids: Vec<usize> = (0..n).filter(|&i| results[0][i].score.is_finite()).collect();
    let (best, post, mean) = posteriors_batch(results, prior, &ids);
    let k = prior.len();
    let mut class_of = vec![0usize; n];
    let mut prob = vec![0f64; n];
    for (j, &i) in ids.iter().enumerate() {
        class_of[i] = best[j];
        prob[i] = post[j * k + best[j]];
    }
    (class_of, prob, mean)
}
