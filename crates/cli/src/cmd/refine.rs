//! `cryoforge refine`: gold-standard 3D auto-refinement.

use crate::common::{Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_core::fsc::FscCurve;
use cryoforge_io::mrc::MrcFile;
use cryoforge_io::stack::{file_kind, FileKind, LoadOptions, ParticleStack, Pose};
use cryoforge_refine::{AssignmentMode, HalvesFrom, IterationStats, Observer, RefineConfig, RefineInput};
use cryoforge_report::{line_plot_png, LinePlot, Series};
use std::path::{Path, PathBuf};

/// Gold-standard 3D auto-refinement: find every particle's orientation and shift against a
/// reference, on two independent half sets, with frequency marching.
///
/// The first iterations search all orientations (HEALPix × in-plane grid, coarse-to-fine
/// with pruning; level 0 is a matrix product against a bank of projections), starting from
/// the reference low-passed to --ini-high-a; then local searches around each particle's
/// pose with finer steps as the resolution grows. Each half set is refined against its own
/// reconstruction; the band follows the FSC 0.5 of the half maps plus a margin; the last
/// iteration searches to Nyquist. Scores are CTF-weighted, noise-whitened log-likelihoods
/// (per-shell noise spectrum from the data); by default each particle is inserted at its
/// significant poses weighted by their posterior (--assignment best inserts the best only).
///
/// Writes OUT/particles.star (RELION 3.1: input columns kept, refined angles and origins,
/// rlnRandomSubset, rlnLogLikeliContribution, rlnMaxValueProbDistribution,
/// rlnNrOfSignificantSamples), poses.pkl (cryoDRGN), map.mrc, half_a.mrc, half_b.mrc,
/// mask.mrc, fsc.csv/fsc.png, angdist.png, scores.csv, iterations.jsonl, summary.json,
/// report.html, and OUT/iter_NNN/ per iteration. Particles are expected protein-bright.
///
/// Examples:
///   cryoforge refine particles.star --reference initial.mrc --out refine/
///   cryoforge refine J12_particles.cs --datadir /data/P3 --reference map.mrc --sym C4 --out r/
///   cryoforge refine refined.star --reference map.mrc --local --sigma-ang-deg 3 --out local/
///   cryoforge refine particles.star --reference initial.mrc --resume refine/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Reference map (MRC, the particles' box and pixel size).
    #[arg(long, value_name = "MRC")]
    pub reference: PathBuf,
    /// Output folder.
    #[arg(long, short, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the refinement in DIR from its last finished iteration.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Initial low-pass of the reference (Å).
    #[arg(long, default_value_t = 30.0, value_name = "A")]
    pub ini_high_a: f64,
    /// HEALPix order of the global grid (2: 4,608 rotations about 15° apart; each order halves the step).
    #[arg(long, default_value_t = 2, conflicts_with = "angular_step_deg")]
    pub healpix_order: u32,
    /// Global grid step in degrees instead of --healpix-order (the nearest order is used).
    #[arg(long, value_name = "DEG")]
    pub angular_step_deg: Option<f64>,
    /// Offset search range (Å; default 5 px).
    #[arg(long, value_name = "A")]
    pub offset_range_a: Option<f64>,
    /// Offset step of the coarse search (Å; default from the band).
    #[arg(long, value_name = "A")]
    pub offset_step_a: Option<f64>,
    /// Particle diameter for the soft spherical mask (Å; default from the reference's extent).
    #[arg(long, value_name = "A")]
    pub particle_diameter_a: Option<f64>,
    /// Solvent mask (MRC, same box) instead of the spherical mask.
    #[arg(long, value_name = "MRC")]
    pub solvent_mask: Option<PathBuf>,
    /// Point-group symmetry: C1, Cn, Dn, T, O or I.
    #[arg(long, default_value = "C1")]
    pub sym: String,
    /// Average the two half references below this resolution (Å).
    #[arg(long, default_value_t = 40.0, value_name = "A")]
    pub low_resol_join_halves_a: f64,
    /// Most iterations (the last one is the final iteration to Nyquist).
    #[arg(long, default_value_t = 12)]
    pub max_iter: usize,
    /// Start from the input poses and search locally only.
    #[arg(long)]
    pub local: bool,
    /// Local searches: prior σ on the angle to the previous pose (degrees; search ±3σ).
    #[arg(long, value_name = "DEG")]
    pub sigma_ang_deg: Option<f64>,
    /// Half sets: auto (rlnRandomSubset if present, else random), random or star.
    #[arg(long, default_value = "auto", value_parser = ["auto", "random", "star"])]
    pub half_split: String,
    /// Reconstruction from the posterior: marginal (significant poses, weighted) or best.
    #[arg(long, default_value = "marginal", value_parser = ["marginal", "best"])]
    pub assignment: String,
    /// Particles are protein-dark (flip their sign).
    #[arg(long)]
    pub invert: bool,
    /// Seed of the random half split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// True poses (STAR, .cs or cryoDRGN .pkl in the same particle order) to report pose
    /// errors per iteration, for simulations.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let out = match (&a.out, &a.resume) {
        (Some(o), Some(r)) if o != r => {
            bail!("--out {} and --resume {} name different folders", o.display(), r.display())
        }
        (_, Some(r)) => r.clone(),
        (Some(o), None) => o.clone(),
        (None, None) => bail!("--out is required"),
    };
    let cfg = config(&a)?;
    let s = a.input.load(ctx)?;
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    let reference = read_map(&a.reference, "reference", d, apix)?;
    let mask = a.solvent_mask.as_ref().map(|p| read_map(p, "solvent mask", d, apix)).transpose()?;
    let truth = a.truth.as_ref().map(|p| read_truth(p, s.len(), d)).transpose()?;
    let input = RefineInput {
        stack: &s,
        reference: &reference,
        solvent_mask: mask.as_deref(),
        truth: truth.as_deref(),
    };
    let obs = CliObserver { bar: ctx.progress(s.len() as u64, "refining"), ctx, out: out.clone() };
    let t0 = std::time::Instant::now();
    // Collective across MPI ranks (each searches its block); rank 0 writes the results.
    let o = cryoforge_refine::refine(&input, &cfg, &out, a.resume.is_some(), &obs)?;
    obs.bar.finish_and_clear();
    if !cryoforge_core::dist::world().is_root() {
        return Ok(());
    }
    write_fsc_png(&out.join("fsc.png"), &o.recon.fsc, &o.fsc_masked)?;
    write_angdist_png(&out.join("angdist.png"), &o.poses)?;
    // Orientation diagnostics of the final half maps and poses (OUT/orient).
    let sym: cryoforge_core::symmetry::Symmetry =
        cfg.symmetry.parse().map_err(|e| anyhow::anyhow!("--sym {:?}: {e}", cfg.symmetry))?;
    let dirs: Vec<[f64; 3]> =
        o.poses.iter().map(|p| cryoforge_refine::orient::viewing_direction(&p.rot)).collect();
    let ocfg = cryoforge_refine::orient::OrientConfig::default();
    let rep = cryoforge_refine::orient::orient(
        &o.recon.half_a,
        &o.recon.half_b,
        d,
        apix,
        Some(&o.mask),
        Some((&dirs, &sym)),
        &ocfg,
    );
    let mut meta = serde_json::Map::new();
    meta.insert("half1".into(), "../half_a.mrc".into());
    meta.insert("half2".into(), "../half_b.mrc".into());
    meta.insert("mask".into(), "../mask.mrc".into());
    meta.insert("particles".into(), "../particles.star".into());
    meta.insert("sym".into(), cfg.symmetry.clone().into());
    meta.insert("command".into(), "(part of cryoforge refine)".into());
    crate::cmd::orient::write_outputs(&out.join("orient"), &rep, Some(&dirs), meta)?;
    let report = out.join("report.html");
    crate::cmd::report::write(&out, &report)?;
    let summary_path = out.join("summary.json");
    if a.json {
        let text = std::fs::read_to_string(&summary_path)
            .with_context(|| format!("reading {}", summary_path.display()))?;
        println!("{text}");
    }
    ctx.done(format!(
        "refined {} particles in {:.1} s ({} iterations): {:.2} Å (FSC 0.143, masked); results in {} (report: {})",
        s.len(),
        t0.elapsed().as_secs_f64(),
        o.iterations.len(),
        o.fsc_masked.resolution_at(0.143),
        out.display(),
        report.display()
    ));
    Ok(())
}

fn config(a: &Args) -> Result<RefineConfig> {
    let cfg = RefineConfig {
        ini_high_a: a.ini_high_a,
        healpix_order: a
            .angular_step_deg
            .map(cryoforge_refine::so3::order_for_step_deg)
            .unwrap_or(a.healpix_order),
        offset_range_a: a.offset_range_a,
        offset_step_a: a.offset_step_a,
        particle_diameter_a: a.particle_diameter_a,
        symmetry: a.sym.clone(),
        low_resol_join_halves_a: a.low_resol_join_halves_a,
        max_iter: a.max_iter,
        halves: match a.half_split.as_str() {
            "random" => HalvesFrom::Random,
            "star" => HalvesFrom::Star,
            _ => HalvesFrom::Auto,
        },
        seed: a.seed,
        local: a.local,
        sigma_ang_deg: a.sigma_ang_deg,
        assignment: if a.assignment == "best" { AssignmentMode::Best } else { AssignmentMode::Marginal },
        invert: a.invert,
        ..Default::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A map of the particles' box and pixel size, or an error that says how to resample.
fn read_map(p: &Path, what: &str, d: usize, apix: f64) -> Result<Vec<f32>> {
    let f = MrcFile::open(p)?;
    if (f.nx(), f.ny(), f.nz()) != (d, d, d) {
        bail!(
            "{}: the {what} is {}×{}×{} voxels but the particles are {d} px: resample the map to {d}³ at {apix} Å/px \
             (e.g. relion_image_handler --i {} --angpix {:.4} --rescale_angpix {apix} --new_box {d}) or the particles \
             to the map's box with `cryoforge downsample`",
            p.display(),
            f.nx(),
            f.ny(),
            f.nz(),
            p.display(),
            f.voxel_size()[0]
        );
    }
    let vs = f.voxel_size()[0] as f64;
    if vs > 0.0 && (vs - apix).abs() > 0.01 * apix {
        bail!(
            "{}: the {what}'s voxel size is {vs:.4} Å but the particles' pixel size is {apix:.4} Å: resample one of them \
             (or pass --apix if the particles' metadata is wrong)",
            p.display()
        );
    }
    Ok(f.read_volume()?)
}

pub(crate) fn read_truth(p: &Path, n: usize, d: usize) -> Result<Vec<Pose>> {
    let poses = if file_kind(p) == FileKind::Pkl {
        let pp = cryoforge_io::pkl::read_poses_pkl(p)?;
        let t = pp.trans.unwrap_or_else(|| vec![[0.0, 0.0]; pp.rots.len()]);
        pp.rots
            .iter()
            .zip(&t)
            .map(|(r, t)| Pose {
                rot: cryoforge_core::Rot3(*r),
                shift_px: [t[0] * d as f64, t[1] * d as f64],
            })
            .collect()
    } else {
        let s = ParticleStack::load(p, &LoadOptions { box_px: Some(d), ..Default::default() })?;
        s.poses.with_context(|| format!("{}: --truth has no poses", p.display()))?
    };
    if poses.len() != n {
        bail!("{}: --truth has {} poses for {n} particles", p.display(), poses.len());
    }
    Ok(poses)
}

struct CliObserver<'a> {
    bar: indicatif::ProgressBar,
    ctx: &'a Ctx,
    out: PathBuf,
}

impl Observer for CliObserver<'_> {
    fn iteration_started(&self, iter: usize, particles: usize, what: &str) {
        self.bar.reset();
        self.bar.set_length(particles as u64);
        self.bar.set_message(format!("iteration {iter} ({what})"));
    }

    fn particles_done(&self, n: usize) {
        self.bar.set_position(n as u64);
    }

    fn iteration_finished(&self, st: &IterationStats, fsc: &FscCurve, masked: &FscCurve) {
        let truth = match (st.truth_median_angle_deg, st.truth_median_shift_px) {
            (Some(a), Some(s)) => format!(", vs truth {a:.2}° / {s:.2} px"),
            _ => String::new(),
        };
        self.bar.suspend(|| {
            self.ctx.say(format!(
                "iteration {:>2} {:<6} band {:5.1} Å, step {:4.2}°: {:5.2} Å (FSC 0.143), {:5.2} Å (0.5), pose change {}{truth}, {:.1} s",
                st.iter,
                format!("{:?}", st.mode).to_lowercase(),
                st.band_a,
                st.fine_step_deg,
                st.resolution_0143_a,
                st.resolution_05_a,
                st.median_angle_change_deg.map(|c| format!("{c:.2}°")).unwrap_or_else(|| "–".into()),
                st.search_seconds + st.reconstruct_seconds
            ))
        });
        if !cryoforge_core::dist::world().is_root() {
            return;
        }
        let png = self.out.join(format!("iter_{:03}", st.iter)).join("fsc.png");
        if let Err(e) = write_fsc_png(&png, fsc, masked) {
            tracing::warn!("{}: {e:#}", png.display());
        }
    }
}

fn write_fsc_png(path: &Path, un: &FscCurve, masked: &FscCurve) -> Result<()> {
    let mut p = LinePlot::new("Half-map FSC", "spatial frequency (1/Å)", "FSC");
    let pts = |c: &FscCurve| (1..c.fsc.len()).map(|k| (c.freq(k), c.fsc[k])).collect::<Vec<_>>();
    p.series.push(Series { name: "unmasked".into(), points: pts(un) });
    p.series.push(Series { name: "masked".into(), points: pts(masked) });
    p.hlines.push((0.143, "0.143".into()));
    p.hlines.push((0.5, "0.5".into()));
    p.y_range = Some((-0.1, 1.05));
    cryoforge_io::atomic::write_bytes_atomic(path, &line_plot_png(&p)?)?;
    Ok(())
}

/// Viewing directions as a density over (azimuth, elevation) = (rlnAngleRot, 90° − tilt).
fn write_angdist_png(path: &Path, poses: &[Pose]) -> Result<()> {
    let pts: Vec<(f64, f64)> = poses
        .iter()
        .map(|p| {
            let e = cryoforge_core::EulerRelion::from_rot(&p.rot);
            (e.rot_deg, 90.0 - e.tilt_deg)
        })
        .collect();
    let png = cryoforge_report::charts::density_png(
        "Viewing directions",
        "azimuth = rlnAngleRot (°)",
        "elevation = 90° − rlnAngleTilt (°)",
        &pts,
        72,
    )?;
    cryoforge_io::atomic::write_bytes_atomic(path, &png)?;
    Ok(())
}

impl Args {
    /// The arguments of `cryoforge refine PARTICLES --reference MAP --out OUT` with its
    /// defaults (for `abinit --then-refine`).
    pub fn for_abinit(
        particles: PathBuf,
        reference: PathBuf,
        out: PathBuf,
        sym: &str,
        invert: bool,
        seed: u64,
    ) -> Result<Args> {
        use clap::{Args as _, FromArgMatches as _};
        let mut argv: Vec<std::ffi::OsString> = vec!["refine".into(), particles.into(), "--reference".into()];
        argv.extend([reference.into(), "--out".into(), out.into(), "--sym".into(), sym.into()]);
        argv.extend(["--seed".into(), seed.to_string().into()]);
        if invert {
            argv.push("--invert".into());
        }
        let m = Args::augment_args(clap::Command::new("refine"))
            .try_get_matches_from(argv)
            .context("building the refine arguments of --then-refine")?;
        Args::from_arg_matches(&m).context("building the refine arguments of --then-refine")
    }
}
