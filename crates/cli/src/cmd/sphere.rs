//! `cryoforge sphere`: cryoSPHERE (papers 002/004) — train, analyze, and the rigid-domain
//! toy of the paper's Appendix B.1.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cryoforge_sphere::config::{ClashMode, RotationCentre, RotationParam};
use cryoforge_sphere::parts::{read_parts, Layout};
use cryoforge_sphere::SphereConfig;

use crate::common::{load_run_stack, read_run_data, write_json_atomic, Ctx, ParticleArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Train(Box<TrainArgs>),
    Analyze(AnalyzeArgs),
    Toy(ToyArgs),
}

/// Train cryoSPHERE on particles with poses and CTFs against a reference model.
///
/// Example:
///   cryoforge sphere train particles.star --reference model.pdb --out run/ --n-segm 4
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Reference atomic model (PDB/mmCIF), (0, 0, 0) Å at the box centre.
    #[arg(long)]
    pub reference: PathBuf,
    /// Run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Method settings (TOML; any field of the [settings] table of run.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Parts file: `CHAIN FIRST-LAST [SEGMENTS]` per line (default: one part per chain).
    #[arg(long)]
    pub parts: Option<PathBuf>,
    /// Continue from the latest checkpoint of --out.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Segments per part (reference 20).
    #[arg(long)]
    pub n_segm: Option<usize>,
    #[arg(long)]
    pub zdim: Option<usize>,
    /// Membership temperature τ (reference 0.05).
    #[arg(long)]
    pub tau: Option<f64>,
    #[arg(long, short = 'b')]
    pub batch_size: Option<usize>,
    /// Epochs (default: scaled with the dataset, at most the reference's 300).
    #[arg(long, short = 'n')]
    pub epochs: Option<u64>,
    /// Optimiser steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Learning rate of the encoder/decoder (reference 3e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning rate of the segmentation (reference 3e-4).
    #[arg(long)]
    pub lr_segmentation: Option<f64>,
    /// Rotation centre: origin (default, the reference) or the segment's centroid.
    #[arg(long, value_parser = ["centroid", "origin"])]
    pub rotation_centre: Option<String>,
    /// Rotation parametrisation: quaternion (reference) or axis-angle.
    #[arg(long, value_parser = ["quaternion", "axis-angle"])]
    pub rotation: Option<String>,
    /// Low-pass prediction and data to this resolution (Å).
    #[arg(long)]
    pub lowpass: Option<f64>,
    /// Continuity loss weight (reference optional value 0.1).
    #[arg(long)]
    pub continuity: Option<f64>,
    /// Clash loss weight (reference optional value 0.1).
    #[arg(long)]
    pub clash: Option<f64>,
    /// Clash pairs: full (all pairs) or light (reference pairs 4–10 Å).
    #[arg(long, value_parser = ["full", "light"])]
    pub clash_mode: Option<String>,
    /// Particles are protein-dark.
    #[arg(long)]
    pub invert: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Metrics row every N steps.
    #[arg(long)]
    pub log_every: Option<u64>,
}

/// Analyse a cryoSPHERE run: latents, PCA, UMAP, k-means structures, PC traversals,
/// Gaussian-density volumes, clash counts; optional per-particle coordinates, per-cluster
/// STAR files, structures at user latents and truth metrics for simulated data; plus the
/// segmentation and the per-segment motions. Structures are decoded with the
/// posterior-mean segmentation and the encoder means.
///
/// Writes RUN/analysis/ (or --out): latents.npy/.csv, pca.npy, pca_explained.csv, umap.npy,
/// kmeans/, pc1/ pc2/ pc3/, clash.csv, summary.json (with the segmentation counts),
/// truth.json (with a simulate truth.csv), segmentation.csv, segmentation.pdb (segment in
/// the B-factor column), segment_counts.csv, segment_motions.csv.
///
/// Examples:
///   cryoforge sphere analyze run/
///   cryoforge sphere analyze run/ --coords-out coords.npy --particles-out clusters/
///   cryoforge sphere analyze run/ --z my_z.txt
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AnalyzeArgs {
    /// Run folder of `sphere train`.
    pub run: PathBuf,
    #[command(flatten)]
    pub opts: crate::common::HeteroArgs,
}

/// Build the rigid-domain toy of cryoSPHERE Appendix B.1 from AdK (see BENCHMARKS.md).
#[derive(clap::Args, Debug)]
pub struct ToyArgs {
    /// Input structure (adk_closed.pdb).
    pub pdb: PathBuf,
    #[arg(long, short)]
    pub out: PathBuf,
    /// First and last residue of the moving body.
    #[arg(long, default_value = "122-159")]
    pub body: String,
    /// Multiply the paper's angle distribution by this (1 = the paper's).
    #[arg(long, default_value_t = 0.5)]
    pub scale: f64,
    /// Angle grid step (degrees).
    #[arg(long, default_value_t = 1.0)]
    pub step_deg: f64,
}

/// Whether the subcommand runs across MPI ranks (training does, data parallel).
pub fn distributed_ok(a: &Args) -> bool {
    matches!(a.cmd, Sub::Train(_))
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => train(*t, ctx),
        Sub::Analyze(t) => analyze(t, ctx),
        Sub::Toy(t) => toy(t, ctx),
    }
}

fn resolve_config(a: &TrainArgs) -> Result<SphereConfig> {
    let mut c = match &a.config {
        Some(p) => SphereConfig::from_toml_file(p)?,
        None => SphereConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(n_segm, zdim, tau, batch_size, lr, lr_segmentation, continuity, clash, seed, log_every);
    if a.epochs.is_some() {
        c.epochs = a.epochs;
        c.steps = None;
    }
    if a.steps.is_some() {
        c.steps = a.steps;
    }
    if a.lowpass.is_some() {
        c.lowpass_a = a.lowpass;
    }
    if let Some(s) = &a.rotation_centre {
        c.rotation_centre = if s == "origin" { RotationCentre::Origin } else { RotationCentre::Centroid };
    }
    if let Some(s) = &a.rotation {
        c.rotation = if s == "axis-angle" { RotationParam::AxisAngle } else { RotationParam::Quaternion };
    }
    if let Some(s) = &a.clash_mode {
        c.clash_mode = if s == "light" { ClashMode::Light } else { ClashMode::Full };
    }
    if a.invert {
        c.invert = true;
    }
    c.validate()?;
    Ok(c)
}

fn train(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    let cfg = if a.resume && a.out.join("run.toml").exists() && a.config.is_none() {
        // Resume with the settings the run was started with, plus any options given now.
        let mut base = cryoforge_sphere::train::read_run_settings(&a.out)?;
        if let Some(e) = a.epochs {
            base.epochs = Some(e);
            base.steps = None;
        }
        if a.steps.is_some() {
            base.steps = a.steps;
        }
        base
    } else {
        resolve_config(&a)?
    };
    let stack = a.particles.load(ctx)?;
    let s = cryoforge_io::pdb::read_structure(&a.reference)
        .with_context(|| format!("reading the reference {}", a.reference.display()))?;
    let model = s.models.first().ok_or_else(|| anyhow::anyhow!("{}: no model", a.reference.display()))?;
    let res = cryoforge_io::pdb::anchor_atoms(model)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.reference.display()))?;
    if res.is_empty() {
        bail!("{}: no residue with a Cα/C1′/P atom", a.reference.display());
    }
    let chains: Vec<String> = res.iter().map(|r| r.chain.clone()).collect();
    let seqs: Vec<i32> = res.iter().map(|r| r.seq).collect();
    let layout = match &a.parts {
        Some(p) => Layout::from_specs(&chains, &seqs, &read_parts(p)?, cfg.n_segm)?,
        None => Layout::per_chain(&chains, cfg.n_segm)?,
    };
    let n = stack.len();
    let epochs = cfg.resolved_epochs(n);
    let per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total = cfg.steps.unwrap_or(epochs * per_epoch);
    ctx.say(format!(
        "cryoSPHERE: {} residues, {} segments, {n} particles, {total} steps ({epochs} epochs of {per_epoch})",
        res.len(),
        layout.n_segments()
    ));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let bar = ctx.progress(total, "sphere train");
    let inputs = cryoforge_sphere::train::TrainInputs {
        stack: Arc::new(stack),
        residues: res,
        layout,
        out: a.out.clone(),
        resume: a.resume,
        device,
        command,
        data_extra: a.particles.run_data_entries(),
    };
    let summary = cryoforge_sphere::train::train(&cfg, inputs, &mut |p| {
        bar.set_position(p.step);
        if p.step % 10 == 0 {
            bar.set_message(format!("sphere train (epoch {}, loss {:.4})", p.epoch, p.loss));
        }
    })?;
    bar.finish_and_clear();
    if !cryoforge_core::dist::world().is_root() {
        return Ok(()); // another MPI rank: rank 0 writes the run
    }
    let js = serde_json::to_value(&summary)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&js)?);
    }
    write_json_atomic(&a.out.join("train_summary.json"), &js)?;
    ctx.done(format!(
        "trained {} steps ({:.0} particles/s); run in {}",
        summary.steps,
        summary.images_per_s,
        a.out.display()
    ));
    Ok(())
}

fn analyze(a: AnalyzeArgs, ctx: &Ctx) -> Result<()> {
    let stack = load_run_stack(&a.run, &read_run_data(&a.run)?)?;
    let o = a.opts.options("cryosphere", &a.run, &stack)?;
    ctx.say(format!("encoding {} particles", stack.len()));
    let bar = ctx.progress(stack.len() as u64, "sphere analyze (encode)");
    let s = cryoforge_sphere::analyze::analyze(&a.run, &stack, &o, &mut |done, _| {
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    a.opts.finish(&a.run, &s, ctx)
}

fn toy(a: ToyArgs, ctx: &Ctx) -> Result<()> {
    let (f, l) =
        a.body.split_once('-').ok_or_else(|| anyhow::anyhow!("--body {:?}: expected FIRST-LAST", a.body))?;
    let spec = cryoforge_sphere::toy::ToySpec {
        chain: None,
        first: f.trim().parse().with_context(|| format!("--body {:?}: bad FIRST", a.body))?,
        last: l.trim().parse().with_context(|| format!("--body {:?}: bad LAST", a.body))?,
        scale: a.scale,
        step_deg: a.step_deg,
    };
    let info = cryoforge_sphere::toy::build(&a.pdb, &a.out, &spec)?;
    ctx.say(format!(
        "{} models, angles {:.1}°..{:.1}°, axis ({:.3}, {:.3}, {:.3}), {} of {} residues move",
        info.n_models,
        info.angles_rad[0].to_degrees(),
        info.angles_rad[info.n_models - 1].to_degrees(),
        info.axis[0],
        info.axis[1],
        info.axis[2],
        info.n_moving,
        info.n_residues
    ));
    ctx.done(format!(
        "toy in {} (simulate with --models models.pdb --model-weights model_weights.txt --no-center)",
        a.out.display()
    ));
    Ok(())
}
