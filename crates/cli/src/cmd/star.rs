//! `cryoforge star`: cryoSTAR training and analysis.

use crate::common::{ensure_dir, load_run_stack, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_star::train::{encode_stack, load_run, prepare, read_run_toml, train, write_run_toml};
use cryoforge_star::Reference;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// cryoSTAR (paper 003): per-particle deformation of a reference Cα model by an MLP VAE
/// with continuity, clash and adaptive elastic-network losses.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Train(Box<TrainArgs>),
    Analyze(AnalyzeArgs),
    Volume(Box<VolumeArgs>),
}

/// Train cryoSTAR on particles with known poses and CTF.
///
/// Writes RUN/run.toml (command, resolved settings, data), RUN/reference.pdb (the anchors
/// used, box frame: (0, 0, 0) Å at the box centre), RUN/metrics.csv and metrics.jsonl,
/// RUN/checkpoints/ and RUN/weights.safetensors, RUN/train_summary.json (with a fit check:
/// does the model explain the images better than the unmoved reference, does the latent
/// carry information; a warning when not). Defaults are the reference implementation's
/// (METHODS.md §1) except the optimisation: AdamW 1e-3 on a cosine to 1e-5 and keep ratio
/// 0.8, so that a run of the dataset-scaled length (≈400,000 images, 5–200 epochs, unless
/// --epochs or --steps is given) converges; --preset reference restores 1e-4 constant and
/// 0.99.
///
/// Examples:
///   cryoforge star train sim/particles.star --reference ref.pdb --out run/
///   cryoforge star train p.mrcs --poses poses.pkl --ctf ctf.pkl --reference ref.pdb --lowpass-a 6 --out run/
///   cryoforge star train p.star --reference ref.pdb --consensus consensus.mrc --no-elastic --out cont/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Reference model (PDB/mmCIF, first model) in the particles' box frame.
    #[arg(long)]
    pub reference: PathBuf,
    /// Output run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Starting settings: default, or reference (the reference implementation's AdamW 1e-4
    /// constant and keep ratio 0.99; pair it with --steps 96000 for its length). --config
    /// and the options below go over it.
    #[arg(long, value_name = "default|reference")]
    pub preset: Option<String>,
    /// TOML file with any of the settings (keys as in RUN/run.toml [settings]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Consensus map (D³, box frame): the low-pass is where FSC(reference Gaussian density, map) = 0.5.
    #[arg(long, value_name = "MAP")]
    pub consensus: Option<PathBuf>,
    /// Low-pass of images and predictions in Å (default: from --consensus, else 10).
    #[arg(long, value_name = "A")]
    pub lowpass_a: Option<f64>,
    /// Epochs (default scales with the dataset).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimisation steps (overrides --epochs; the reference uses 96,000).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Batch size (64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (1e-3; the reference's 1e-4 with --preset reference).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule: cosine (the default: anneals from --lr to --lr ×
    /// --lr-final-ratio over the run) or constant (the reference's).
    #[arg(long, value_name = "constant|cosine")]
    pub lr_schedule: Option<String>,
    /// Final learning rate of the cosine schedule as a fraction of --lr (0.01).
    #[arg(long)]
    pub lr_final_ratio: Option<f64>,
    /// Latent dimension (8).
    #[arg(long)]
    pub zdim: Option<usize>,
    /// Fraction of elastic edges kept per batch by adaptive relaxation (0.8; 0.99 with
    /// --preset reference).
    #[arg(long)]
    pub keep_ratio: Option<f64>,
    /// Elastic-network cutoff in Å (12).
    #[arg(long)]
    pub elastic_cutoff: Option<f64>,
    /// The paper's CONT baseline: continuity only (no elastic network, no clash term).
    #[arg(long)]
    pub no_elastic: bool,
    /// Loss weights, e.g. "continuity=1,clash=1,elastic=1,kl=1,recon=1".
    #[arg(long, value_name = "LIST")]
    pub loss_weights: Option<String>,
    /// Protein-dark particles (flip their sign).
    #[arg(long)]
    pub invert: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Metrics every N steps (50).
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Checkpoint every N steps (1000).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue the run in --out from its newest checkpoint (settings from its run.toml;
    /// only --epochs/--steps may change).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Analyse a cryoSTAR run: latents, PCA, UMAP, k-means structures, PC traversals,
/// Gaussian-density volumes, clash counts; optional per-particle coordinates, per-cluster
/// STAR files, structures at user latents and truth metrics for simulated data.
///
/// Writes RUN/analysis/ (or --out): latents.npy/.csv, pca.npy, pca_explained.csv, umap.npy,
/// kmeans/, pc1/ pc2/ pc3/, clash.csv, summary.json, truth.json (with a simulate truth.csv).
///
/// Examples:
///   cryoforge star analyze run/
///   cryoforge star analyze run/ --coords-out coords.npy --particles-out clusters/
///   cryoforge star analyze run/ --z my_z.txt
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AnalyzeArgs {
    /// The training run folder.
    pub run: PathBuf,
    #[command(flatten)]
    pub opts: crate::common::HeteroArgs,
}

/// Phase II of cryoSTAR: an implicit heterogeneous volume conditioned on the frozen
/// latents, trained on central slices × (−CTF) against the re-centred particles (Fourier
/// MSE in the band disk), which removes the reference model's bias.
///
/// Latents: RUN/analysis/latents.npy when present (from `star analyze`), else the encoder
/// means of RUN's model. Writes into RUN/volume (or --out): weights.safetensors,
/// metrics.csv, checkpoints/, summary.json, and real-space MRC volumes (protein-positive,
/// box frame) at the k-means centres (kmeans/vol_XXX.mrc, from RUN/analysis/kmeans/
/// centers.txt), along the PC traversals (pcN/vol_XXX.mrc, from pcN/z_values.txt) and at
/// the latents of --z (z/vol_XXX.mrc). The resolved settings go to RUN/run.toml [volume].
///
/// Examples:
///   cryoforge star volume run/
///   cryoforge star volume run/ --epochs 5 --band-a 4 --z my_z.txt
///   cryoforge star volume run/ --resume
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VolumeArgs {
    /// The training run folder.
    pub run: PathBuf,
    /// Output folder (default RUN/volume).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// TOML file with any of the volume settings (keys as in RUN/run.toml [volume.settings]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Per-particle latents (.npy or text, particle order; default RUN/analysis/latents.npy,
    /// else encoded from the particles).
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// Also write volumes at these latents (.npy or text, one vector per line).
    #[arg(long, value_name = "FILE")]
    pub z: Option<PathBuf>,
    /// MLP width (1024).
    #[arg(long)]
    pub width: Option<usize>,
    /// Residual layers (3).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Random Fourier features (128).
    #[arg(long)]
    pub n_features: Option<usize>,
    /// Feature position spread as a fraction of the box (0.1).
    #[arg(long)]
    pub ff_sigma: Option<f64>,
    /// Epochs (10; the reference trains 5–20).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Particles per step (16).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Train on at most N particles, a random subset drawn with --seed (default: all).
    /// Volumes are still evaluated at any latent; for CPU runs on large data sets.
    #[arg(long, value_name = "N")]
    pub max_particles: Option<usize>,
    /// AdamW learning rate (1e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Band radius in Fourier pixels (default D/2 − 1).
    #[arg(long, value_name = "PX")]
    pub band_px: Option<f64>,
    /// Band as a resolution in Å (overrides --band-px).
    #[arg(long, value_name = "A")]
    pub band_a: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the newest epoch checkpoint in the output folder (same settings).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Whether the subcommand runs across MPI ranks (training does, data parallel).
pub fn distributed_ok(a: &Args) -> bool {
    matches!(a.cmd, Sub::Train(_))
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => run_train(*t, ctx),
        Sub::Analyze(t) => run_analyze(t, ctx),
        Sub::Volume(t) => run_volume(*t, ctx),
    }
}

fn command_line() -> String {
    std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" ")
}

fn run_train(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    // Before any work: an unusable --device is an immediate, clear error.
    let device = a.device.open()?;
    let stack = a.particles.load(ctx)?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    // Across MPI ranks every rank trains (data parallel) and rank 0 writes the run.
    let root = cryoforge_core::dist::world().is_root();
    if root {
        ensure_dir(&a.out)?;
    }
    let (cfg, reference) = if a.resume {
        let (mut cfg, _) = read_run_toml(&a.out).context("--resume")?;
        // Only the training length may change on resume (e.g. to train longer).
        if a.epochs.is_some() {
            cfg.epochs = a.epochs;
            cfg.steps = None;
        }
        if a.steps.is_some() {
            cfg.steps = a.steps;
        }
        let reference = Reference::read(
            &a.out.join("reference.pdb"),
            cfg.elastic_cutoff_a,
            cfg.clash_pair_min_a,
            cfg.clash_pair_max_a,
        )?;
        (cfg, reference)
    } else {
        let preset = match &a.preset {
            Some(p) => cryoforge_star::Preset::parse(p).map_err(|e| anyhow::anyhow!("--preset: {e}"))?,
            None => cryoforge_star::Preset::Default,
        };
        let mut cfg = match &a.config {
            Some(p) => preset.config_with_toml(p)?,
            None => preset.config(),
        };
        macro_rules! set {
            ($f:ident, $v:expr) => {
                if let Some(v) = $v {
                    cfg.$f = v;
                }
            };
        }
        set!(batch_size, a.batch_size);
        set!(lr, a.lr);
        if let Some(v) = &a.lr_schedule {
            cfg.lr_schedule =
                cryoforge_star::LrSchedule::parse(v).map_err(|e| anyhow::anyhow!("--lr-schedule: {e}"))?;
        }
        set!(lr_final_ratio, a.lr_final_ratio);
        set!(zdim, a.zdim);
        set!(keep_ratio, a.keep_ratio);
        set!(elastic_cutoff_a, a.elastic_cutoff);
        set!(seed, a.seed);
        set!(log_every, a.log_every);
        set!(checkpoint_every, a.checkpoint_every);
        if a.lowpass_a.is_some() {
            cfg.lowpass_a = a.lowpass_a;
        }
        if a.epochs.is_some() {
            cfg.epochs = a.epochs;
        }
        if a.steps.is_some() {
            cfg.steps = a.steps;
        }
        cfg.no_elastic |= a.no_elastic;
        cfg.invert |= a.invert;
        if let Some(w) = &a.loss_weights {
            cfg.loss_weights = cfg.loss_weights.parse_over(w)?;
        }
        let reference =
            Reference::read(&a.reference, cfg.elastic_cutoff_a, cfg.clash_pair_min_a, cfg.clash_pair_max_a)?;
        prepare(&stack, &reference, &mut cfg, a.consensus.as_deref())?;
        if root {
            cryoforge_io::pdb::write_ca_models(
                a.out.join("reference.pdb"),
                &reference.residues,
                std::slice::from_ref(&reference.coords),
                None,
            )?;
        }
        let mut extra: Vec<(&str, String)> = vec![("reference", a.reference.display().to_string())];
        let p = &a.particles;
        let opt = |k: &'static str, v: &Option<PathBuf>| v.as_ref().map(|v| (k, v.display().to_string()));
        extra.extend(opt("poses", &p.poses));
        extra.extend(opt("ctf", &p.ctf));
        extra.extend(opt("datadir", &p.datadir));
        extra.extend(opt("ind", &p.ind));
        if let Some(f) = p.first {
            extra.push(("first", f.to_string()));
        }
        if p.hetrefine {
            extra.push(("hetrefine", "true".into()));
        }
        if root {
            write_run_toml(&a.out, &command_line(), &cfg, &p.particles, stack.len(), d, apix, &extra)?;
        }
        (cfg, reference)
    };
    let total = cfg.total_steps(stack.len());
    ctx.say(format!(
        "cryoSTAR: {} particles of {d} px at {apix} Å/px, {} residues, {} elastic edges, low-pass {:.2} Å, {total} steps of {}",
        stack.len(),
        reference.len(),
        reference.elastic.len(),
        cfg.lowpass_a.unwrap_or(10.0),
        cfg.batch_size
    ));
    let bar = ctx.progress(total, "train");
    let mut cb = |p: &cryoforge_star::train::Progress| {
        bar.set_position(p.step);
        if p.step.is_multiple_of(10) {
            let r = &p.running;
            bar.set_message(format!(
                "ep {} {:.0} img/s loss {:.4} corr {:.4} cont {:.3} clash {:.3} EN {:.3}",
                p.epoch,
                p.images as f64 / p.elapsed_s.max(1e-9),
                r.loss,
                r.recon,
                r.continuity,
                r.clash,
                r.elastic
            ));
        }
    };
    let out = train(Arc::new(stack), &reference, &cfg, &a.out, a.resume, &device, &mut cb)?;
    bar.finish_and_clear();
    if !root {
        return Ok(());
    }
    let summary = serde_json::to_value(&out)?;
    write_json_atomic(&a.out.join("train_summary.json"), &summary)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.say(format!(
        "{} steps, {} images in {:.1} s ({:.0} images/s); final loss {:.4} (correlation {:.4})",
        out.steps, out.images, out.elapsed_s, out.images_per_s, out.final_losses.loss, out.final_losses.recon
    ));
    ctx.done(format!("results in {}", a.out.display()));
    Ok(())
}

fn run_analyze(a: AnalyzeArgs, ctx: &Ctx) -> Result<()> {
    let lr = load_run(&a.run)?;
    let stack = load_run_stack(&a.run, &lr.data)?;
    ctx.say(format!("encoding {} particles", stack.len()));
    let z = encode_stack(&lr.model, &lr.cfg, &stack)?;
    let mut o = a.opts.options("cryostar", &a.run, &stack)?;
    o.sigma_a = lr.cfg.sigma_a;
    o.extras.insert("lowpass_a".into(), lr.cfg.lowpass_a.unwrap_or(10.0).into());
    o.extras.insert("no_elastic".into(), lr.cfg.no_elastic.into());
    let model = &lr.model;
    let decode = |zz: &[f32]| model.decode_coords(zz).map_err(|e| e.to_string());
    let s =
        cryoforge_hetero::analyze_run(&z, lr.cfg.zdim, &decode, &lr.reference.residues, Some(&stack), &o)?;
    a.opts.finish(&a.run, &s, ctx)
}

/// Latent rows of a `pcN/z_values.txt` (`point pc_value particle_index particle_pc_value z…`).
fn read_z_values(path: &Path, zdim: usize) -> Result<Vec<f32>> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut v = Vec::new();
    for (ln, line) in t.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() != 4 + zdim {
            bail!(
                "{}: line {}: {} columns, expected {} (4 + zdim)",
                path.display(),
                ln + 1,
                toks.len(),
                4 + zdim
            );
        }
        for (c, tok) in toks[4..].iter().enumerate() {
            let x: f32 = tok.parse().ok().filter(|x: &f32| x.is_finite()).with_context(|| {
                format!("{}: line {}: z{} = {tok:?} is not a finite number", path.display(), ln + 1, c + 1)
            })?;
            v.push(x);
        }
    }
    Ok(v)
}

fn run_volume(a: VolumeArgs, ctx: &Ctx) -> Result<()> {
    let device = a.device.open()?;
    use cryoforge_star::volume::{eval_volume, train_volume, VolumeConfig};
    let lr = load_run(&a.run)?;
    let mut stack = load_run_stack(&a.run, &lr.data)?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    let zdim = lr.cfg.zdim;
    let out_dir = a.out.clone().unwrap_or_else(|| a.run.join("volume"));
    ensure_dir(&out_dir)?;
    let mut cfg = match &a.config {
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
            toml::from_str::<VolumeConfig>(&t).with_context(|| format!("{}", p.display()))?
        }
        None => VolumeConfig::default(),
    };
    macro_rules! set {
        ($f:ident, $v:expr) => {
            if let Some(v) = $v {
                cfg.$f = v;
            }
        };
    }
    set!(width, a.width);
    set!(layers, a.layers);
    set!(n_features, a.n_features);
    set!(ff_sigma, a.ff_sigma);
    set!(epochs, a.epochs);
    set!(batch_size, a.batch_size);
    set!(lr, a.lr);
    set!(seed, a.seed);
    if a.band_px.is_some() {
        cfg.band_px = a.band_px;
    }
    if a.band_a.is_some() {
        cfg.band_a = a.band_a;
    }
    cfg.invert = lr.cfg.invert;
    if a.resume {
        // Resume with the settings the run was started with (the epochs may grow).
        let p = out_dir.join("settings.toml");
        if p.is_file() {
            let t = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
            let old: VolumeConfig = toml::from_str(&t).with_context(|| format!("{}", p.display()))?;
            cfg = VolumeConfig { epochs: a.epochs.unwrap_or(old.epochs), ..old };
        }
    }
    cfg.check()?;

    // Latents, frozen.
    let default_lat = a.run.join("analysis").join("latents.npy");
    let lat_path = a.latents.clone().or_else(|| default_lat.is_file().then_some(default_lat));
    let z = match &lat_path {
        Some(p) => {
            let (z, rows) = cryoforge_hetero::read_latents(p, zdim)?;
            if rows != stack.len() {
                bail!("{}: {rows} latents for {} particles", p.display(), stack.len());
            }
            ctx.say(format!("latents from {}", p.display()));
            z
        }
        None => {
            ctx.say(format!("encoding {} particles", stack.len()));
            encode_stack(&lr.model, &lr.cfg, &stack)?
        }
    };

    let (stack, z) = match a.max_particles {
        Some(0) => bail!("--max-particles must be at least 1"),
        Some(m) if m < stack.len() => {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut idx: Vec<usize> = (0..stack.len()).collect();
            idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_5B5E));
            idx.truncate(m);
            idx.sort_unstable();
            let zs: Vec<f32> =
                idx.iter().flat_map(|&i| z[i * zdim..(i + 1) * zdim].iter().copied()).collect();
            stack.select(&idx)?;
            ctx.say(format!("training on {m} particles drawn at random (seed {})", cfg.seed));
            (stack, zs)
        }
        _ => (stack, z),
    };

    // Latents to evaluate, read (and checked) before training.
    let mut sets: Vec<(String, Vec<f32>)> = Vec::new();
    let an = a.run.join("analysis");
    let kc = an.join("kmeans").join("centers.txt");
    if kc.is_file() {
        sets.push(("kmeans".into(), cryoforge_hetero::read_latents(&kc, zdim)?.0));
    }
    for pc in 1..=3 {
        let p = an.join(format!("pc{pc}")).join("z_values.txt");
        if p.is_file() {
            sets.push((format!("pc{pc}"), read_z_values(&p, zdim)?));
        }
    }
    if let Some(p) = &a.z {
        sets.push(("z".into(), cryoforge_hetero::read_latents(p, zdim)?.0));
    }
    // Settings: out_dir/settings.toml and RUN/run.toml [volume].
    let settings_toml = toml::to_string(&cfg)?;
    cryoforge_io::atomic::write_bytes_atomic(&out_dir.join("settings.toml"), settings_toml.as_bytes())?;
    let rt = a.run.join("run.toml");
    let mut doc: toml::Value =
        toml::from_str(&std::fs::read_to_string(&rt)?).with_context(|| rt.display().to_string())?;
    let mut vt = toml::map::Map::new();
    vt.insert("command".into(), command_line().into());
    vt.insert("out".into(), out_dir.display().to_string().into());
    vt.insert(
        "latents".into(),
        lat_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "encoded".into()).into(),
    );
    vt.insert("settings".into(), toml::Value::try_from(&cfg)?);
    vt.insert("n_particles".into(), (stack.len() as i64).into());
    if let Some(t) = doc.as_table_mut() {
        t.insert("volume".into(), toml::Value::Table(vt));
    }
    cryoforge_io::atomic::write_bytes_atomic(&rt, toml::to_string(&doc)?.as_bytes())?;

    let band = cfg.band_radius(d, apix);
    let steps = stack.len().div_ceil(cfg.batch_size) as u64 * cfg.epochs as u64;
    ctx.say(format!(
        "Phase II volume: {} particles of {d} px, zdim {zdim}, band {band:.1} px ({:.2} Å), width {} × {} residual layers, {} epochs ({steps} steps of {})",
        stack.len(),
        d as f64 * apix / band,
        cfg.width,
        cfg.layers,
        cfg.epochs,
        cfg.batch_size
    ));
    let bar = ctx.progress(steps, "volume");
    let mut cb = |p: &cryoforge_star::volume::VolumeProgress| {
        bar.set_position(p.step);
        if p.step.is_multiple_of(10) {
            bar.set_message(format!("ep {} loss {:.4e}", p.epoch, p.loss));
        }
    };
    let (model, out) = train_volume(&stack, &z, zdim, &cfg, &out_dir, a.resume, &device, &mut cb)?;
    bar.finish_and_clear();

    if sets.is_empty() {
        ctx.say("no latents to evaluate (run `cryoforge star analyze` first, or give --z): writing the mean latent");
        let n = stack.len().max(1) as f32;
        let mean: Vec<f32> =
            (0..zdim).map(|j| z.iter().skip(j).step_by(zdim.max(1)).sum::<f32>() / n).collect();
        sets.push(("mean".into(), mean));
    }
    let o = -((d / 2) as f64 * apix) as f32;
    let mut written = serde_json::Map::new();
    for (name, zs) in &sets {
        let dir = out_dir.join(name);
        ensure_dir(&dir)?;
        let rows: Vec<&[f32]> = if zdim == 0 { vec![&[][..]] } else { zs.chunks(zdim).collect() };
        for (k, zk) in rows.iter().enumerate() {
            let v = eval_volume(&model, zk, out.band_px)?;
            cryoforge_io::mrc::write_volume(
                dir.join(format!("vol_{k:03}.mrc")),
                &v,
                [d, d, d],
                apix as f32,
                [o; 3],
            )?;
        }
        written.insert(name.clone(), rows.len().into());
    }
    let mut summary = serde_json::to_value(&out)?;
    summary["volumes"] = serde_json::Value::Object(written);
    summary["settings"] = serde_json::to_value(&cfg)?;
    write_json_atomic(&out_dir.join("summary.json"), &summary)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.say(format!(
        "{} steps in {:.1} s ({:.1} particles/s); final loss {:.4e}",
        out.steps, out.elapsed_s, out.particles_per_s, out.final_loss
    ));
    ctx.done(format!("results in {}", out_dir.display()));
    Ok(())
}
