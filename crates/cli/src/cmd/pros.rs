//! `cryoforge pros`: cryoPROS training and auxiliary-particle generation.

use crate::common::{ensure_dir, load_run_stack, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{Context, Result};
use cryoforge_pros::condition::{Conditioner, ProjectorKind};
use cryoforge_pros::generate::{generate, GenerateOptions};
use cryoforge_pros::train::{
    check_stack, load_run, prepare, read_run_toml, read_volume, train, write_run_toml,
};
use cryoforge_pros::ProsConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// cryoPROS (paper 000): a conditional hierarchical VAE generates auxiliary particles at
/// uniform poses to co-refine with preferred-orientation data.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Train(Box<TrainArgs>),
    Generate(GenerateArgs),
    Run(Box<RunArgs>),
    Recondismic(Box<RecondismicArgs>),
    NoiseTest(Box<NoiseTestArgs>),
}

/// The "Einstein from noise" check of a trained run: pure-noise particles (the raw
/// particles' standard deviation and CTFs, random poses) are co-refined with auxiliary
/// particles from the run's generator, starting from the run's reference low-passed to
/// --ini-high-a; the noise particles alone are reconstructed. Passes when that map does
/// not follow the reference beyond the initial band (no high-resolution phantom).
///
/// Writes DIR/noise.mrcs, noise.star, aux/, corefine/, noise_only.mrc, noise_test.json.
///
/// Examples:
///   cryoforge pros noise-test run/ --out noise/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct NoiseTestArgs {
    /// A `pros train` run folder.
    pub run: PathBuf,
    #[arg(long, short)]
    pub out: PathBuf,
    /// Auxiliary particles (default: as many as the run's particles).
    #[arg(long)]
    pub n_aux: Option<usize>,
    #[arg(long, default_value_t = 30.0)]
    pub ini_high_a: f64,
    #[arg(long, default_value_t = 2)]
    pub healpix_order: u32,
    #[arg(long, default_value_t = 12)]
    pub max_iter: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    #[arg(long)]
    pub json: bool,
}

/// ReconDisMic: a starting reference for a membrane protein in a micelle or nanodisc.
/// The volume is M·homolog + (1 − M)·micelle, M the homolog's mask (--mask, e.g. from
/// `cryoforge mask`, or the homolog low-passed to --lowpass-a and thresholded at
/// --threshold of its maximum); the micelle starts as a centred cube and is fitted by Adam
/// to the particles through the forward model (real-space projection, shift, −CTF).
///
/// Writes DIR/composite.mrc (the reference for `pros run`), micelle.mrc, mask.mrc,
/// metrics.csv and summary.json.
///
/// Examples:
///   cryoforge pros recondismic p.star --volume homolog.mrc --out dismic/
///   cryoforge pros recondismic p.star --volume homolog.mrc --mask m.mrc --out dismic/ --steps 3000
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RecondismicArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// The homolog's map (MRC, the particles' box and pixel size).
    #[arg(long)]
    pub volume: PathBuf,
    /// Mask of the protein (MRC, values in [0, 1]); default: thresholded homolog.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    #[arg(long, short)]
    pub out: PathBuf,
    /// Low-pass of the homolog before thresholding, Å.
    #[arg(long, default_value_t = 10.0)]
    pub lowpass_a: f64,
    /// Mask threshold, fraction of the low-passed homolog's maximum.
    #[arg(long, default_value_t = 0.1)]
    pub threshold: f64,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Adam learning rate, in units of the homolog's standard deviation inside the mask.
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// Edge of the initial cube, fraction of the box.
    #[arg(long, default_value_t = 0.5)]
    pub cube_edge: f64,
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The whole cryoPROS method: per iteration, train the HVAE on the raw particles (their
/// current poses, the current reference low-passed to --lowpass-a), generate as many
/// auxiliary particles at uniform poses, co-refine raw + auxiliary (global search from
/// the reference low-passed to --ini-high-a), keep the raw particles with their new poses
/// and reconstruct them alone: that map is the next iteration's reference.
///
/// Writes OUT/iter_NN/{train, aux, corefine, raw}/ and summary.json per iteration (raw-only
/// resolution; with --truth, the raw particles' pose errors before and after), and
/// OUT/summary.json.
///
/// Examples:
///   cryoforge pros run po/particles.star --volume consensus.mrc --out pros/ --preset cpu
///   cryoforge pros run po/particles.star --volume consensus.mrc --out pros/ --iterations 2 --truth po/particles.star
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Starting reference (MRC, the particles' box and pixel size).
    #[arg(long)]
    pub volume: PathBuf,
    #[arg(long, short)]
    pub out: PathBuf,
    /// cryoPROS iterations (the paper ran 2).
    #[arg(long, default_value_t = 2)]
    pub iterations: usize,
    /// HVAE settings: paper (default) or cpu.
    #[arg(long, value_name = "paper|cpu")]
    pub preset: Option<String>,
    /// HVAE training steps per iteration (default: the preset's).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Low-pass of the reference for the HVAE's conditioning, Å (10).
    #[arg(long, default_value_t = 10.0)]
    pub lowpass_a: f64,
    /// Auxiliary particles per iteration (default: as many as raw particles).
    #[arg(long)]
    pub n_aux: Option<usize>,
    /// Initial low-pass of the co-refinement, Å (30).
    #[arg(long, default_value_t = 30.0)]
    pub ini_high_a: f64,
    /// HEALPix order of the co-refinement's global search (2 ≈ 15°).
    #[arg(long, default_value_t = 2)]
    pub healpix_order: u32,
    /// Most co-refinement iterations.
    #[arg(long, default_value_t = 12)]
    pub max_iter: usize,
    /// Conditioning projector: real (default) or fourier.
    #[arg(long, value_name = "real|fourier")]
    pub projector: Option<String>,
    /// After the last iteration, locally refine a pose-balanced subset of the raw particles
    /// from the last map (viewing-direction bins capped at this occupancy percentile, e.g.
    /// 80; the paper's optional step).
    #[arg(long, value_name = "PERCENTILE")]
    pub balanced_local: Option<f64>,
    /// True poses (STAR/.cs/poses .pkl) of a simulation, to report pose errors.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Protein-dark particles.
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    #[arg(long)]
    pub json: bool,
}

/// Train the cryoPROS HVAE on posed particles and a reference volume.
///
/// The network learns p(particle | pose, CTF, projection of the reference low-passed to
/// --lowpass-a): 15 stochastic layers of residual dense blocks at four resolutions (the
/// paper's [2, 2, 4, 4], 64 channels, 16-channel latents, about 35 M parameters at 256 px),
/// MSE + β·KL with β rising linearly to 1e-4 over 10,000 steps, Adam 1e-4, batch 8,
/// gradient clip 200 and steps with a gradient norm ≥ 180 skipped, particles × 0.1.
/// --preset cpu is a smaller network (32 channels, 4-channel latents, [0, 0, 2, 2]: 7
/// layers) trained 3,000·(64/D)² steps at 5e-4: under an hour on 2 cores at any box. A posterior collapse (KL ≈ 0) is
/// detected and reported.
///
/// Writes RUN/run.toml, RUN/reference.mrc (the volume as given), metrics.csv/.jsonl,
/// checkpoints/, weights.safetensors and train.json.
///
/// Examples:
///   cryoforge pros train sim/particles.star --volume ref.mrc --out run/ --preset cpu
///   cryoforge pros train p.star --volume ref.mrc --out run/ --steps 20000 --device cuda
///   cryoforge pros train p.star --volume ref.mrc --out run/ --resume --steps 30000
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Reference volume (MRC, the particles' box and pixel size).
    #[arg(long)]
    pub volume: PathBuf,
    /// Output run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// paper (the default, the reference code's configuration) or cpu.
    #[arg(long, value_name = "paper|cpu")]
    pub preset: Option<String>,
    /// Feature channels (paper 64).
    #[arg(long)]
    pub nf: Option<usize>,
    /// Growth channels of the dense blocks (paper 32).
    #[arg(long)]
    pub growth: Option<usize>,
    /// Latent channels per stochastic layer (paper 16).
    #[arg(long)]
    pub z_dim: Option<usize>,
    /// Blocks per resolution level, finest first (paper 2,2,4,4).
    #[arg(long, value_name = "LIST")]
    pub nls: Option<String>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final β of the KL term (1e-4).
    #[arg(long)]
    pub kl_max: Option<f64>,
    /// Steps of the linear β ramp (10,000).
    #[arg(long)]
    pub kl_warmup_steps: Option<u64>,
    /// Low-pass of the reference before projection, Å (10).
    #[arg(long)]
    pub lowpass_a: Option<f64>,
    /// Conditioning projector: real (the reference's real-space line integral, default) or
    /// fourier (the central slice).
    #[arg(long, value_name = "real|fourier")]
    pub projector: Option<String>,
    /// Protein-dark particles: the conditioning projections are negated.
    #[arg(long)]
    pub invert: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue the run in --out from its newest checkpoint (only --steps may change).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// Print the outcome JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Generate auxiliary particles from a trained run: Haar-uniform poses, each with the
/// CTF and shift of a raw particle, sampled from the conditional prior.
///
/// Writes DIR/auxiliary.mrcs, DIR/auxiliary.star (RELION 3.1, particles marked
/// rlnCryoprosAuxiliary 1) and DIR/generate.json (histogram KL and SNR in dB of generated
/// vs raw particles, correlation with the reference's projection at the particle's own
/// pose vs another pose).
///
/// Examples:
///   cryoforge pros generate run/ --out aux/
///   cryoforge pros generate run/ --out aux/ --n 20000 --seed 2
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct GenerateArgs {
    /// The training run folder.
    pub run: PathBuf,
    #[arg(long, short)]
    pub out: PathBuf,
    /// Number of particles (default: as many as the raw set).
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prior temperature (1, as the paper).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => run_train(*t, ctx),
        Sub::Generate(g) => run_generate(g, ctx),
        Sub::Run(r) => run_pipeline(*r, ctx),
        Sub::Recondismic(r) => run_recondismic(*r, ctx),
        Sub::NoiseTest(r) => run_noise_test(*r, ctx),
    }
}

fn command_line() -> String {
    std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" ")
}

fn parse_list(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| t.trim().parse::<usize>().with_context(|| format!("{what} {s:?}: {t:?} is not a count")))
        .collect()
}

fn run_train(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    let stack = a.particles.load(ctx)?;
    let (d, apix) = check_stack(&stack)?;
    ensure_dir(&a.out)?;
    let reference_mrc = a.out.join("reference.mrc");
    let (cfg, projector) = if a.resume {
        let (mut cfg, data) = read_run_toml(&a.out).context("--resume")?;
        if let Some(s) = a.steps {
            cfg.steps = s;
        }
        let proj = match data.get("projector").and_then(|v| v.as_str()) {
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
            None => ProjectorKind::RealSpace,
        };
        (cfg, proj)
    } else {
        let mut cfg = match a.preset.as_deref() {
            Some("cpu") => ProsConfig::cpu_for_box(d),
            p => ProsConfig::preset(p.unwrap_or("paper"))?,
        };
        macro_rules! set {
            ($f:expr, $v:expr) => {
                if let Some(v) = $v {
                    $f = v;
                }
            };
        }
        set!(cfg.arch.nf, a.nf);
        set!(cfg.arch.growth, a.growth);
        set!(cfg.arch.z_dim, a.z_dim);
        if let Some(s) = &a.nls {
            cfg.arch.nls = parse_list(s, "--nls")?;
        }
        set!(cfg.steps, a.steps);
        set!(cfg.batch_size, a.batch_size);
        set!(cfg.lr, a.lr);
        set!(cfg.kl_max, a.kl_max);
        set!(cfg.kl_warmup_steps, a.kl_warmup_steps);
        set!(cfg.lowpass_a, a.lowpass_a);
        set!(cfg.seed, a.seed);
        set!(cfg.log_every, a.log_every);
        set!(cfg.checkpoint_every, a.checkpoint_every);
        cfg.invert |= a.invert;
        cfg.check(Some(d))?;
        let proj: ProjectorKind = match &a.projector {
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
            None => ProjectorKind::RealSpace,
        };
        let vol = read_volume(&a.volume, d)?;
        cryoforge_io::mrc::write_volume(&reference_mrc, &vol, [d, d, d], apix as f32, [0.0; 3])?;
        (cfg, proj)
    };
    let vol = read_volume(&reference_mrc, d)?;
    let mut cond = Conditioner::new(vol, d, apix, cfg.lowpass_a, projector, cfg.invert)?;
    let mut cfg = cfg;
    prepare(&stack, &cond, &mut cfg)?;
    if !a.resume {
        let mut data: Vec<(&str, toml::Value)> = vec![
            ("particles", a.particles.particles.display().to_string().into()),
            ("n_particles", (stack.len() as i64).into()),
            ("box", (d as i64).into()),
            ("apix", apix.into()),
            ("volume", a.volume.display().to_string().into()),
            ("projector", if projector == ProjectorKind::Fourier { "fourier" } else { "real-space" }.into()),
        ];
        let entries = a.particles.run_data_entries();
        data.extend(entries.iter().map(|(k, v)| (k.as_str(), toml::Value::from(v.as_str()))));
        write_run_toml(&a.out, &command_line(), &cfg, &data)?;
    }
    let model_params =
        cryoforge_pros::Hvae::new(&cfg.arch, d, cfg.seed, &candle_core::Device::Cpu)?.n_params();
    ctx.say(format!(
        "cryoPROS: {} particles of {d} px at {apix} Å/px; HVAE {} stochastic layers, {:.2} M parameters; {} steps of {}",
        stack.len(),
        cfg.arch.n_layers(),
        model_params as f64 / 1e6,
        cfg.steps,
        cfg.batch_size
    ));
    let bar = ctx.progress(cfg.steps, "train");
    let mut cb = |p: &cryoforge_pros::train::Progress| {
        bar.set_position(p.step);
        let r = &p.running;
        bar.set_message(format!(
            "{:.1} img/s loss {:.5} mse {:.5} kl {:.4} β {:.1e}",
            p.images as f64 / p.elapsed_s.max(1e-9),
            r.loss,
            r.mse,
            r.kl,
            r.beta
        ));
    };
    let out = train(Arc::new(stack), &mut cond, &cfg, &a.out, a.resume, &device, &mut cb)?;
    bar.finish_and_clear();
    if let Some(m) = &out.collapse {
        eprintln!("warning: {m}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    ctx.say(format!(
        "{} steps ({} skipped) in {:.1} s ({:.1} images/s); final MSE {:.5}, KL {:.3} nats per image",
        out.steps,
        out.skipped_steps,
        out.elapsed_s,
        out.images_per_s,
        out.final_losses.mse,
        out.kl_per_image_nats
    ));
    ctx.done(format!("results in {}", a.out.display()));
    Ok(())
}

fn run_generate(a: GenerateArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    let run = load_run(&a.run, &device)?;
    let stack = load_run_stack(&a.run, &run.data)?;
    let (d, apix) = check_stack(&stack)?;
    let vol = read_volume(&a.run.join("reference.mrc"), d)?;
    let mut cond = Conditioner::new(vol, d, apix, run.cfg.lowpass_a, run.projector, run.cfg.invert)?;
    cond.set_scale(run.cfg.proj_scale.context("run.toml: [settings] proj_scale missing")?);
    let n = a.n.unwrap_or(stack.len());
    let bar = ctx.progress(n as u64, "generate");
    let opts =
        GenerateOptions { n: Some(n), seed: a.seed, temperature: a.temperature, batch_size: a.batch_size };
    let g = generate(&run.model, &run.cfg, &cond, &stack, &a.out, &opts, &device, &mut |i, _| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    let v = serde_json::to_value(&g)?;
    write_json_atomic(&a.out.join("generate.json"), &v)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    ctx.say(format!(
        "{} auxiliary particles in {:.1} s; histogram KL {:.4} (raw vs raw {:.4}), SNR {:.2} dB (raw {:.2} dB), \
         correlation with the projection at the own pose {:.3} vs another pose {:.3}",
        g.n,
        g.seconds,
        g.histogram_kl,
        g.histogram_kl_raw_vs_raw,
        g.snr_db_generated,
        g.snr_db_raw,
        g.corr_own_pose,
        g.corr_other_pose
    ));
    ctx.done(format!("{} and {}", g.star.display(), g.stack.display()));
    Ok(())
}

fn run_pipeline(a: RunArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    let stack = a.particles.load(ctx)?;
    let (d, _) = check_stack(&stack)?;
    let volume = read_volume(&a.volume, d)?;
    let truth = a.truth.as_ref().map(|p| crate::cmd::refine::read_truth(p, stack.len(), d)).transpose()?;
    let mut train_cfg = match a.preset.as_deref() {
        Some("cpu") => ProsConfig::cpu_for_box(d),
        p => ProsConfig::preset(p.unwrap_or("paper"))?,
    };
    if let Some(s) = a.steps {
        train_cfg.steps = s;
        train_cfg.kl_warmup_steps = train_cfg.kl_warmup_steps.min(s / 2).max(1);
    }
    train_cfg.lowpass_a = a.lowpass_a;
    train_cfg.invert = a.invert;
    train_cfg.seed = a.seed;
    train_cfg.check(Some(d))?;
    let refine = cryoforge_refine::RefineConfig {
        ini_high_a: a.ini_high_a,
        healpix_order: a.healpix_order,
        max_iter: a.max_iter,
        invert: a.invert,
        seed: a.seed,
        ..Default::default()
    };
    refine.validate()?;
    let cfg = cryoforge_pros::pipeline::PipelineConfig {
        iterations: a.iterations,
        train: train_cfg,
        projector: match &a.projector {
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
            None => ProjectorKind::RealSpace,
        },
        refine,
        n_aux: a.n_aux,
        recon: Default::default(),
        balanced_local_percentile: a.balanced_local,
    };
    ensure_dir(&a.out)?;
    let s =
        cryoforge_pros::pipeline::run(&stack, volume, &cfg, &a.out, truth.as_deref(), &device, &mut |m| {
            ctx.say(m)
        })?;
    // Orientation diagnostics of every iteration's co-refinement and raw-only maps, then
    // one report.
    for it in &s.iterations {
        let raw = it.folder.join("raw");
        let co = it.folder.join("corefine");
        orient_folder(
            &raw,
            "raw_only_half1_unfil.mrc",
            "raw_only_half2_unfil.mrc",
            &co.join("mask.mrc"),
            "particles.star",
            d,
        )?;
        orient_folder(&co, "half_a.mrc", "half_b.mrc", &co.join("mask.mrc"), "particles.star", d)?;
    }
    let report = a.out.join("report.html");
    crate::cmd::report::write(&a.out, &report)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    }
    if let Some(b) = &s.balanced_local {
        ctx.say(format!(
            "balanced local refinement of {} particles: {:.2} Å (masked, 0.143) in {}",
            b.kept,
            b.resolution_0143_a,
            b.folder.display()
        ));
    }
    let last = s.iterations.last().context("no iteration ran")?;
    ctx.done(format!(
        "{} iterations; raw-only map {:.2} Å in {} (report: {})",
        s.iterations.len(),
        last.raw_resolution_0143_a,
        last.folder.join("raw/raw_only.mrc").display(),
        report.display()
    ));
    Ok(())
}

fn run_recondismic(a: RecondismicArgs, ctx: &Ctx) -> Result<()> {
    let stack = a.particles.load(ctx)?;
    let (d, _) = check_stack(&stack)?;
    let homolog = read_volume(&a.volume, d)?;
    let mask = a.mask.as_ref().map(|p| read_volume(p, d)).transpose()?;
    let cfg = cryoforge_pros::recondismic::DisMicConfig {
        lowpass_a: a.lowpass_a,
        threshold_frac: a.threshold,
        cube_edge_frac: a.cube_edge,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        invert: a.invert,
        seed: a.seed,
        ..Default::default()
    };
    let bar = ctx.progress(a.steps as u64, "micelle");
    let o = cryoforge_pros::recondismic::run(&stack, &homolog, mask, &cfg, &a.out, &mut |i, _, l| {
        bar.set_position(i as u64);
        bar.set_message(format!("loss {l:.4e}"));
    })?;
    bar.finish_and_clear();
    ctx.done(format!(
        "micelle fitted in {:.1} s (loss {:.4e} → {:.4e}, mask {:.1} % of the box); reference in {}",
        o.seconds,
        o.loss_start,
        o.loss_end,
        100.0 * o.mask_fraction,
        a.out.join("composite.mrc").display()
    ));
    Ok(())
}

fn run_noise_test(a: NoiseTestArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    let run = load_run(&a.run, &device)?;
    let stack = load_run_stack(&a.run, &run.data)?;
    let (d, apix) = check_stack(&stack)?;
    let reference = read_volume(&a.run.join("reference.mrc"), d)?;
    let mut cond =
        Conditioner::new(reference.clone(), d, apix, run.cfg.lowpass_a, run.projector, run.cfg.invert)?;
    cond.set_scale(run.cfg.proj_scale.context("run.toml: [settings] proj_scale missing")?);
    let refine = cryoforge_refine::RefineConfig {
        ini_high_a: a.ini_high_a,
        healpix_order: a.healpix_order,
        max_iter: a.max_iter,
        invert: run.cfg.invert,
        seed: a.seed,
        ..Default::default()
    };
    refine.validate()?;
    let o = cryoforge_pros::pipeline::einstein_from_noise(
        &stack,
        &reference,
        &run.model,
        &run.cfg,
        &cond,
        &refine,
        a.n_aux,
        &a.out,
        &device,
        &mut |m| ctx.say(m),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    }
    ctx.done(format!(
        "noise test {}: the noise-only map follows the reference to {:.1} Å (FSC 0.5; initial band {:.0} Å), half maps {:.1} Å",
        if o.passed { "passed" } else { "FAILED" },
        o.noise_vs_reference_05_a,
        o.ini_high_a,
        o.noise_half_map_resolution_a
    ));
    Ok(())
}

/// Orientation diagnostics (`cryoforge orient`) of the half maps and particles in `dir`,
/// written to DIR/orient.
fn orient_folder(
    dir: &std::path::Path,
    h1: &str,
    h2: &str,
    mask: &std::path::Path,
    star: &str,
    d: usize,
) -> Result<()> {
    let read = |p: &std::path::Path| read_volume(p, d);
    let (a, b) = (read(&dir.join(h1))?, read(&dir.join(h2))?);
    let m = if mask.is_file() { Some(read(mask)?) } else { None };
    let st = cryoforge_io::stack::ParticleStack::load(&dir.join(star), &Default::default())?;
    let apix = st.apix_a()?;
    let poses = st.poses.as_ref().context("orientation diagnostics: particles without poses")?;
    let dirs: Vec<[f64; 3]> =
        poses.iter().map(|p| cryoforge_refine::orient::viewing_direction(&p.rot)).collect();
    let sym: cryoforge_core::symmetry::Symmetry =
        "C1".parse().map_err(|e| anyhow::anyhow!("symmetry: {e}"))?;
    let rep = cryoforge_refine::orient::orient(
        &a,
        &b,
        d,
        apix,
        m.as_deref(),
        Some((&dirs, &sym)),
        &cryoforge_refine::orient::OrientConfig::default(),
    );
    let mut meta = serde_json::Map::new();
    meta.insert("half1".into(), format!("../{h1}").into());
    meta.insert("half2".into(), format!("../{h2}").into());
    meta.insert("particles".into(), format!("../{star}").into());
    meta.insert("sym".into(), "C1".into());
    meta.insert("command".into(), "(part of cryoforge pros run)".into());
    crate::cmd::orient::write_outputs(&dir.join("orient"), &rep, Some(&dirs), meta)?;
    Ok(())
}
