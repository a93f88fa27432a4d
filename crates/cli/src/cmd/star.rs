//! `cryoforge star`: cryoSTAR training and analysis.

use crate::common::{ensure_dir, load_run_stack, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{Context, Result};
use cryoforge_star::train::{encode_stack, load_run, prepare, read_run_toml, train, write_run_toml};
use cryoforge_star::{Reference, StarConfig};
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
}

/// Train cryoSTAR on particles with known poses and CTF.
///
/// Writes RUN/run.toml (command, resolved settings, data), RUN/reference.pdb (the anchors
/// used, box frame: (0, 0, 0) Å at the box centre), RUN/metrics.csv and metrics.jsonl,
/// RUN/checkpoints/ and RUN/weights.safetensors. Defaults are those of the reference
/// implementation (METHODS.md §1); training length scales with the dataset (≈400,000
/// images, 5–200 epochs) unless --epochs or --steps is given.
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
    /// Learning rate (1e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Latent dimension (8).
    #[arg(long)]
    pub zdim: Option<usize>,
    /// Fraction of elastic edges kept per batch by adaptive relaxation (0.99).
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
    /// Output folder (default RUN/analysis).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// k-means clusters.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub ksample: usize,
    /// Points per PC traversal.
    #[arg(long, default_value_t = 10)]
    pub n_points: usize,
    /// Write every particle's predicted anchors: float32 [N, R, 3] .npy (Å, box frame).
    #[arg(long, value_name = "FILE.npy")]
    pub coords_out: Option<PathBuf>,
    /// Write the particles of each k-means cluster as STAR files into DIR.
    #[arg(long, value_name = "DIR")]
    pub particles_out: Option<PathBuf>,
    /// Decode these latents (.npy or text, one vector per line) into structures and volumes.
    #[arg(long, value_name = "FILE")]
    pub z: Option<PathBuf>,
    /// Ground truth of a `cryoforge simulate` dataset (default: truth.csv next to the particles).
    #[arg(long, value_name = "CSV")]
    pub truth: Option<PathBuf>,
    /// Trajectory of the true frames in the box frame (default: model.pdb next to truth.csv).
    #[arg(long, value_name = "PDB")]
    pub truth_models: Option<PathBuf>,
    /// Skip UMAP.
    #[arg(long)]
    pub no_umap: bool,
    /// Skip the Gaussian-density volumes.
    #[arg(long)]
    pub no_volumes: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => run_train(*t, ctx),
        Sub::Analyze(t) => run_analyze(t, ctx),
    }
}

fn command_line() -> String {
    std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" ")
}

fn run_train(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let stack = a.particles.load(ctx)?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    ensure_dir(&a.out)?;
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
        let mut cfg = match &a.config {
            Some(p) => StarConfig::from_toml_file(p)?,
            None => StarConfig::default(),
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
        cryoforge_io::pdb::write_ca_models(
            a.out.join("reference.pdb"),
            &reference.residues,
            std::slice::from_ref(&reference.coords),
            None,
        )?;
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
        write_run_toml(&a.out, &command_line(), &cfg, &p.particles, stack.len(), d, apix, &extra)?;
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
    let out = train(Arc::new(stack), &reference, &cfg, &a.out, a.resume, &mut cb)?;
    bar.finish_and_clear();
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
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    ctx.say(format!("encoding {} particles", stack.len()));
    let z = encode_stack(&lr.model, &lr.cfg, &stack)?;
    let out_dir = a.out.clone().unwrap_or_else(|| a.run.join("analysis"));
    let mut o = cryoforge_hetero::AnalyzeOptions::new("cryostar", out_dir.clone(), d, apix);
    o.sigma_a = lr.cfg.sigma_a;
    o.kmeans_k = a.ksample;
    o.traversal_points = a.n_points;
    o.umap = !a.no_umap;
    o.volumes = !a.no_volumes;
    o.seed = a.seed;
    o.coords_out = a.coords_out.clone();
    o.particles_out = a.particles_out.clone();
    o.z_file = a.z.clone();
    o.truth_csv = a.truth.clone();
    o.truth_models = a.truth_models.clone();
    o.particles_dir = stack.path.parent().map(Path::to_path_buf);
    o.extras.insert("lowpass_a".into(), lr.cfg.lowpass_a.unwrap_or(10.0).into());
    o.extras.insert("no_elastic".into(), lr.cfg.no_elastic.into());
    let model = &lr.model;
    let decode = |zz: &[f32]| model.decode_coords(zz).map_err(|e| e.to_string());
    let s =
        cryoforge_hetero::analyze_run(&z, lr.cfg.zdim, &decode, &lr.reference.residues, Some(&stack), &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s.json)?);
    }
    if let Some(t) = &s.truth {
        ctx.say(format!(
            "truth: |Spearman(PC1, frame)| {:.3}, mean RMSD {:.2} Å (reference {:.2} Å), clash fraction {:.4}",
            t["pc1_frame_spearman"].as_f64().unwrap_or(f64::NAN).abs(),
            t["rmsd_mean_A"].as_f64().unwrap_or(f64::NAN),
            t["rmsd_ref_mean_A"].as_f64().unwrap_or(f64::NAN),
            s.clash_fraction
        ));
    }
    ctx.done(format!("results in {}", out_dir.display()));
    Ok(())
}
