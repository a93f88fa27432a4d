//! The whole cryoPROS method (paper 000, Fig. 2; METHODS.md §3), iterated:
//!
//! 1. train the HVAE on the raw particles with their current poses and the current
//!    reference (low-passed to `train.lowpass_a`, 10 Å);
//! 2. generate as many auxiliary particles as raw ones at Haar-uniform poses;
//! 3. co-refine raw + auxiliary particles with `refine` (global search from the reference
//!    low-passed to `refine.ini_high_a`, 30 Å);
//! 4. keep the raw particles with their new poses and reconstruct them alone (the
//!    co-refinement's half assignment); that map is the next iteration's reference.
//!
//! Folder OUT/iter_NN/ per iteration: train/ (a `pros train` run), aux/ (`pros generate`),
//! corefine/ (a `refine` run of raw + auxiliary, particles.star), raw/ (raw_only.mrc,
//! half maps, particles.star with the new poses, fsc.csv), summary.json. OUT/summary.json
//! lists every iteration.

use crate::condition::{Conditioner, ProjectorKind};
use crate::config::ProsConfig;
use crate::generate::{generate, GenerateOptions, Generated, AUX_COLUMN};
use crate::train::{prepare, train, write_run_toml, TrainOutcome};
use crate::{ProsError, Result};
use candle_core::Device;
use cryoforge_io::stack::{ImageRef, Origin, ParticleStack, Pose, Source};
use cryoforge_refine::RefineConfig;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Settings of [`run`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineConfig {
    pub iterations: usize,
    pub train: ProsConfig,
    pub projector: ProjectorKind,
    /// Co-refinement settings (default: `refine`'s, global search from 30 Å).
    pub refine: RefineConfig,
    /// Auxiliary particles per iteration (default: as many as raw particles).
    pub n_aux: Option<usize>,
    pub recon: cryoforge_recon::ReconConfig,
    /// After the last iteration, locally refine a pose-balanced subset of the raw particles
    /// (viewing-direction bins capped at this percentile of their occupancy; the paper's
    /// optional step) from the last raw-only map.
    pub balanced_local_percentile: Option<f64>,
}

/// The optional balanced-subset local refinement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BalancedLocal {
    pub folder: PathBuf,
    pub kept: usize,
    pub excluded: usize,
    pub resolution_0143_a: f64,
    pub truth: Option<TruthStats>,
}

/// Everything [`run`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineOutcome {
    pub iterations: Vec<IterationSummary>,
    pub balanced_local: Option<BalancedLocal>,
}

/// Pose accuracy of the raw particles against known true poses (simulations).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TruthStats {
    pub median_angle_deg: f64,
    pub fraction_over_30deg: f64,
}

/// One iteration's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IterationSummary {
    pub iteration: usize,
    pub folder: PathBuf,
    pub train: TrainOutcome,
    pub generated: Generated,
    /// Resolution (Å, FSC 0.143 of the unmasked half maps) of the co-refinement (raw +
    /// auxiliary) and of the raw-only reconstruction.
    pub corefine_resolution_a: f64,
    pub raw_resolution_0143_a: f64,
    pub raw_resolution_05_a: f64,
    /// Poses of the raw particles against the truth, before and after this iteration.
    pub truth_before: Option<TruthStats>,
    pub truth_after: Option<TruthStats>,
    pub seconds: f64,
}

/// Median angle and fraction of angles above 30° between `poses` and `truth`.
pub fn truth_stats(poses: &[Pose], truth: &[Pose]) -> TruthStats {
    let mut a: Vec<f64> =
        poses.iter().zip(truth).map(|(p, t)| cryoforge_refine::so3::angle_deg(&p.rot, &t.rot)).collect();
    let over = a.iter().filter(|&&x| x > 30.0).count() as f64 / a.len().max(1) as f64;
    a.sort_by(f64::total_cmp);
    TruthStats {
        median_angle_deg: a.get(a.len() / 2).copied().unwrap_or(f64::NAN),
        fraction_over_30deg: over,
    }
}

/// The raw particles followed by the auxiliary ones, as one set for `refine` (written as
/// `path`, image files by absolute path).
fn combined_stack(raw: &ParticleStack, aux: &ParticleStack, path: &Path) -> Result<ParticleStack> {
    let d = raw.box_px()?;
    let apix = raw.apix_a()?;
    let mut files = Vec::new();
    let abs = |s: &ParticleStack, f: &str| -> Result<String> {
        let p = s.resolve(f)?;
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        Ok(p.display().to_string())
    };
    for f in &raw.files {
        files.push(abs(raw, f)?);
    }
    let off = files.len() as u32;
    for f in &aux.files {
        files.push(abs(aux, f)?);
    }
    let mut images: Vec<ImageRef> = raw.images.clone();
    images.extend(aux.images.iter().map(|r| ImageRef { file: r.file + off, index: r.index }));
    let mut s = ParticleStack::from_parts(path, files, images, d, apix);
    s.source = Source::Stack;
    let (rp, ap) = match (&raw.poses, &aux.poses) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(ProsError::msg("internal: raw or auxiliary particles without poses")),
    };
    s.poses = Some(rp.iter().chain(ap).copied().collect());
    s.ctf = match (&raw.ctf, &aux.ctf) {
        (Some(a), Some(b)) => Some(a.iter().chain(b).copied().collect()),
        _ => None,
    };
    Ok(s)
}

/// Runs `cfg.iterations` cryoPROS iterations into `out`. `raw` must carry poses (from a
/// consensus refinement) and CTFs; `volume` is the starting reference (D³). `say` gets
/// one line per step.
pub fn run(
    raw: &ParticleStack,
    volume: Vec<f32>,
    cfg: &PipelineConfig,
    out: &Path,
    truth: Option<&[Pose]>,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<PipelineOutcome> {
    let (d, apix) = crate::train::check_stack(raw)?;
    if cfg.iterations == 0 {
        return Err(ProsError::msg("--iterations must be at least 1"));
    }
    if let Some(t) = truth {
        if t.len() != raw.len() {
            return Err(ProsError::msg(format!("--truth has {} poses for {} particles", t.len(), raw.len())));
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| ProsError::msg(format!("{}: cannot create: {e}", out.display())))?;
    let mut reference = volume;
    let mut current = raw.clone();
    let mut summaries = Vec::new();
    for it in 0..cfg.iterations {
        let t0 = std::time::Instant::now();
        let dir = out.join(format!("iter_{:02}", it + 1));
        std::fs::create_dir_all(&dir).map_err(|e| ProsError::msg(format!("{}: {e}", dir.display())))?;
        let before = truth.map(|t| truth_stats(current.poses.as_deref().unwrap_or(&[]), t));
        // 1. Train.
        let run_dir = dir.join("train");
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| ProsError::msg(format!("{}: {e}", run_dir.display())))?;
        cryoforge_io::mrc::write_volume(
            run_dir.join("reference.mrc"),
            &reference,
            [d, d, d],
            apix as f32,
            [0.0; 3],
        )?;
        let mut tcfg = cfg.train.clone();
        tcfg.seed = cfg.train.seed + it as u64;
        tcfg.proj_scale = None;
        let mut cond =
            Conditioner::new(reference.clone(), d, apix, tcfg.lowpass_a, cfg.projector, tcfg.invert)?;
        prepare(&current, &cond, &mut tcfg)?;
        let raw_star = run_dir.join("particles.star");
        cryoforge_io::export::write_star(&current, &raw_star)?;
        write_run_toml(
            &run_dir,
            "cryoforge pros run",
            &tcfg,
            &[
                ("particles", raw_star.display().to_string().into()),
                ("n_particles", (current.len() as i64).into()),
                ("box", (d as i64).into()),
                ("apix", apix.into()),
                (
                    "projector",
                    if cfg.projector == ProjectorKind::Fourier { "fourier" } else { "real-space" }.into(),
                ),
            ],
        )?;
        say(&format!("iteration {}: training the HVAE ({} steps)", it + 1, tcfg.steps));
        let trained =
            train(Arc::new(current.clone()), &mut cond, &tcfg, &run_dir, false, device, &mut |_| {})?;
        if let Some(m) = &trained.collapse {
            tracing::warn!("iteration {}: {m}", it + 1);
        }
        // 2. Generate.
        let loaded = crate::train::load_run(&run_dir, device)?;
        let n_aux = cfg.n_aux.unwrap_or(current.len());
        say(&format!("iteration {}: generating {n_aux} auxiliary particles", it + 1));
        let aux_dir = dir.join("aux");
        let generated = generate(
            &loaded.model,
            &tcfg,
            &cond,
            &current,
            &aux_dir,
            &GenerateOptions { n: Some(n_aux), seed: tcfg.seed, ..Default::default() },
            device,
            &mut |_, _| {},
        )?;
        if generated.corr_own_pose <= generated.corr_other_pose + 0.01 {
            let m = format!(
                "iteration {}: the auxiliary particles do not follow their poses (correlation with the projection \
                 at their own pose {:.3}, at another pose {:.3}): the co-refinement will be misled; train the HVAE \
                 longer (--steps)",
                it + 1,
                generated.corr_own_pose,
                generated.corr_other_pose
            );
            tracing::warn!("{m}");
            say(&format!("warning: {m}"));
        }
        let aux = ParticleStack::load(&generated.star, &Default::default())?;
        // 3. Co-refine raw + auxiliary.
        let co_dir = dir.join("corefine");
        let combined = combined_stack(&current, &aux, &co_dir.join("input.star"))?;
        say(&format!(
            "iteration {}: co-refining {} raw + {} auxiliary particles",
            it + 1,
            current.len(),
            aux.len()
        ));
        let input = cryoforge_refine::RefineInput {
            stack: &combined,
            reference: &reference,
            solvent_mask: None,
            truth: None,
        };
        let mut rcfg = cfg.refine.clone();
        rcfg.seed = cfg.refine.seed + it as u64;
        let o = cryoforge_refine::refine(&input, &rcfg, &co_dir, false, &cryoforge_refine::Silent)
            .map_err(|e| ProsError::msg(format!("co-refinement ({}): {e}", co_dir.display())))?;
        let mut aux_flag = vec!["0".to_string(); current.len()];
        aux_flag.extend(std::iter::repeat_n("1".to_string(), aux.len()));
        let mut refined = combined.clone();
        refined.poses = Some(o.poses.clone());
        cryoforge_io::export::write_star_with(
            &refined,
            &co_dir.join("particles.star"),
            &[(AUX_COLUMN, aux_flag)],
        )?;
        let corefine_res = o.recon.fsc.resolution_at(0.143);
        // 4. Raw only, with the new poses and the co-refinement's halves.
        let n = current.len();
        let new_poses: Vec<Pose> = o.poses[..n].to_vec();
        let halves: Vec<u8> = o.halves[..n].to_vec();
        current.poses = Some(new_poses.clone());
        // Written out in full from now on (not the input file's angles).
        current.poses_origin = Some(Origin::Computed);
        let raw_dir = dir.join("raw");
        std::fs::create_dir_all(&raw_dir)
            .map_err(|e| ProsError::msg(format!("{}: {e}", raw_dir.display())))?;
        let mut rc = cfg.recon.clone();
        rc.invert = cfg.refine.invert;
        let rec = cryoforge_recon::reconstruct_assigned(
            &current,
            &rc,
            &halves,
            cryoforge_recon::Assignment::Single(&new_poses),
            &|_| {},
        )
        .map_err(|e| ProsError::msg(format!("raw-only reconstruction ({}): {e}", raw_dir.display())))?;
        let w = |name: &str, v: &[f32]| {
            cryoforge_io::mrc::write_volume(raw_dir.join(name), v, [d, d, d], apix as f32, [0.0; 3])
        };
        w("raw_only.mrc", &rec.map)?;
        w("raw_only_half1_unfil.mrc", &rec.half_a)?;
        w("raw_only_half2_unfil.mrc", &rec.half_b)?;
        cryoforge_io::export::write_star(&current, &raw_dir.join("particles.star"))?;
        let mut fsc_csv = String::from("shell,frequency_per_A,resolution_A,fsc_unmasked\n");
        for (k, v) in rec.fsc.fsc.iter().enumerate() {
            let f = rec.fsc.freq(k);
            let r = if f > 0.0 { 1.0 / f } else { f64::INFINITY };
            fsc_csv.push_str(&format!("{k},{f},{r},{v}\n"));
        }
        cryoforge_io::atomic::write_bytes_atomic(&raw_dir.join("fsc.csv"), fsc_csv.as_bytes())?;
        let after = truth.map(|t| truth_stats(&new_poses, t));
        let s = IterationSummary {
            iteration: it + 1,
            folder: dir.clone(),
            train: trained,
            generated,
            corefine_resolution_a: corefine_res,
            raw_resolution_0143_a: rec.fsc.resolution_at(0.143),
            raw_resolution_05_a: rec.fsc.resolution_at(0.5),
            truth_before: before,
            truth_after: after,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let j = serde_json::to_vec_pretty(&s).map_err(|e| ProsError::msg(e.to_string()))?;
        cryoforge_io::atomic::write_bytes_atomic(&dir.join("summary.json"), &j)?;
        say(&format!(
            "iteration {}: raw-only map {:.2} Å (FSC 0.143){}",
            it + 1,
            s.raw_resolution_0143_a,
            match &s.truth_after {
                Some(t) => format!(
                    ", median pose error {:.2}°, {:.1} % over 30°",
                    t.median_angle_deg,
                    100.0 * t.fraction_over_30deg
                ),
                None => String::new(),
            }
        ));
        reference = rec.map;
        summaries.push(s);
    }
    let j = serde_json::to_vec_pretty(&summaries).map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&out.join("summary.json"), &j)?;
    let balanced_local = match cfg.balanced_local_percentile {
        None => None,
        Some(pc) => {
            let poses = current.poses.clone().unwrap_or_default();
            let dirs: Vec<[f64; 3]> =
                poses.iter().map(|p| cryoforge_refine::orient::viewing_direction(&p.rot)).collect();
            let rb = cryoforge_refine::rebalance::rebalance(
                &dirs,
                None,
                &cryoforge_refine::rebalance::RebalanceConfig {
                    // About 20 particles per bin (10 to 500 bins), so that the percentile
                    // bin of a small set is not empty.
                    n_bins: (current.len() / 20).clamp(10, 500),
                    percentile: pc,
                    seed: cfg.refine.seed,
                },
            );
            if rb.kept.len() < 20 {
                return Err(ProsError::msg(format!(
                    "balanced subset: only {} of {} particles kept (bins capped at {}); raise --balanced-local",
                    rb.kept.len(),
                    current.len(),
                    rb.cap
                )));
            }
            let mut subset = current.clone();
            subset.select(&rb.kept)?;
            let bdir = out.join("balanced_local");
            say(&format!(
                "balanced subset: {} of {} raw particles (bins capped at {}); local refinement",
                rb.kept.len(),
                current.len(),
                rb.cap
            ));
            let sub_truth: Option<Vec<Pose>> = truth.map(|t| rb.kept.iter().map(|&i| t[i]).collect());
            let mut rcfg = cfg.refine.clone();
            rcfg.local = true;
            let input = cryoforge_refine::RefineInput {
                stack: &subset,
                reference: &reference,
                solvent_mask: None,
                truth: sub_truth.as_deref(),
            };
            let o = cryoforge_refine::refine(&input, &rcfg, &bdir, false, &cryoforge_refine::Silent)
                .map_err(|e| {
                    ProsError::msg(format!("balanced local refinement ({}): {e}", bdir.display()))
                })?;
            let ts = sub_truth.as_ref().map(|t| truth_stats(&o.poses, t));
            Some(BalancedLocal {
                folder: bdir,
                kept: rb.kept.len(),
                excluded: rb.excluded.len(),
                resolution_0143_a: o.fsc_masked.resolution_at(0.143),
                truth: ts,
            })
        }
    };
    Ok(PipelineOutcome { iterations: summaries, balanced_local })
}

/// Result of [`einstein_from_noise`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NoiseTestOutcome {
    pub n_noise: usize,
    pub n_aux: usize,
    pub ini_high_a: f64,
    /// FSC 0.143 of the noise-only half maps (Å).
    pub noise_half_map_resolution_a: f64,
    /// Where FSC(noise-only map, reference) first drops below 0.5 (Å).
    pub noise_vs_reference_05_a: f64,
    /// No high-resolution phantom: the noise-only map does not follow the reference beyond
    /// the initial band (FSC 0.5 resolution against the reference ≥ 0.8 × ini_high_a).
    pub passed: bool,
}

/// The paper's "Einstein from noise" check: pure-noise particles (Gaussian, the raw
/// particles' standard deviation, their CTFs, random poses) co-refined with auxiliary
/// particles generated by `model` from the reference low-passed to `refine.ini_high_a`;
/// the noise particles alone are then reconstructed. A phantom of the reference at high
/// resolution would mean the auxiliary particles bias the refinement.
#[allow(clippy::too_many_arguments)]
pub fn einstein_from_noise(
    raw: &ParticleStack,
    reference: &[f32],
    model: &crate::Hvae,
    tcfg: &ProsConfig,
    cond: &Conditioner,
    refine: &RefineConfig,
    n_aux: Option<usize>,
    out: &Path,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<NoiseTestOutcome> {
    use rand::Rng;
    use rand_distr::{Distribution, Normal};
    let (d, apix) = crate::train::check_stack(raw)?;
    std::fs::create_dir_all(out)
        .map_err(|e| ProsError::msg(format!("{}: cannot create: {e}", out.display())))?;
    let n = raw.len();
    let dd = d * d;
    // The raw particles' standard deviation (first ≤ 256).
    let (mut s, mut s2) = (0f64, 0f64);
    let mut img = vec![0f32; dd];
    let m = n.min(256);
    for i in 0..m {
        raw.read_image(i, &mut img)?;
        for &v in &img {
            s += v as f64;
            s2 += (v as f64).powi(2);
        }
    }
    let cnt = (m * dd) as f64;
    let sd = (s2 / cnt - (s / cnt).powi(2)).max(1e-12).sqrt();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(refine.seed ^ 0x4e4f_4953);
    let normal = Normal::new(0.0, sd).map_err(|e| ProsError::msg(e.to_string()))?;
    let noise_path = out.join("noise.mrcs");
    let mut w = cryoforge_io::mrc::MrcStackWriter::create(&noise_path, d, d, apix as f32)?;
    for _ in 0..n {
        let v: Vec<f32> = (0..dd).map(|_| normal.sample(&mut rng) as f32).collect();
        w.push(&v)?;
    }
    w.finish()?;
    let mut noise = ParticleStack::from_parts(
        &out.join("noise.star"),
        vec!["noise.mrcs".into()],
        (0..n).map(|k| ImageRef { file: 0, index: k as u64 }).collect(),
        d,
        apix,
    );
    noise.source = Source::Stack;
    noise.poses = Some(
        (0..n)
            .map(|k| Pose {
                rot: cryoforge_core::rotation::uniform_rotation(rng.gen(), rng.gen(), rng.gen()),
                shift_px: raw.poses.as_ref().map_or([0.0, 0.0], |p| p[k].shift_px),
            })
            .collect(),
    );
    noise.ctf = raw.ctf.clone();
    cryoforge_io::export::write_star(&noise, &out.join("noise.star"))?;
    let n_aux = n_aux.unwrap_or(n);
    say(&format!("noise test: generating {n_aux} auxiliary particles"));
    let generated = generate(
        model,
        tcfg,
        cond,
        raw,
        &out.join("aux"),
        &GenerateOptions { n: Some(n_aux), seed: tcfg.seed ^ 0x77, ..Default::default() },
        device,
        &mut |_, _| {},
    )?;
    let aux = ParticleStack::load(&generated.star, &Default::default())?;
    let co_dir = out.join("corefine");
    let combined = combined_stack(&noise, &aux, &co_dir.join("input.star"))?;
    say(&format!("noise test: co-refining {n} noise + {n_aux} auxiliary particles"));
    let input =
        cryoforge_refine::RefineInput { stack: &combined, reference, solvent_mask: None, truth: None };
    let o = cryoforge_refine::refine(&input, refine, &co_dir, false, &cryoforge_refine::Silent)
        .map_err(|e| ProsError::msg(format!("noise co-refinement ({}): {e}", co_dir.display())))?;
    let poses: Vec<Pose> = o.poses[..n].to_vec();
    let rec = cryoforge_recon::reconstruct_assigned(
        &noise,
        &cryoforge_recon::ReconConfig { invert: refine.invert, ..Default::default() },
        &o.halves[..n],
        cryoforge_recon::Assignment::Single(&poses),
        &|_| {},
    )
    .map_err(|e| ProsError::msg(format!("noise-only reconstruction: {e}")))?;
    cryoforge_io::mrc::write_volume(out.join("noise_only.mrc"), &rec.map, [d, d, d], apix as f32, [0.0; 3])?;
    let vs_ref = cryoforge_core::fsc::fsc_volumes(&rec.map, reference, d, apix);
    let o = NoiseTestOutcome {
        n_noise: n,
        n_aux,
        ini_high_a: refine.ini_high_a,
        noise_half_map_resolution_a: rec.fsc.resolution_at(0.143),
        noise_vs_reference_05_a: vs_ref.resolution_at(0.5),
        passed: vs_ref.resolution_at(0.5) >= 0.8 * refine.ini_high_a,
    };
    let j = serde_json::to_vec_pretty(&o).map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&out.join("noise_test.json"), &j)?;
    Ok(o)
}
