//! `cryoforge solver`: CryoSolver training and analysis (paper 001).

use crate::common::{Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_ief::infer::InferOptions;
use cryoforge_ief::preprocess::Resample;
use cryoforge_wizard::solver::analyze::{analyze, AnalyzeOptions};
use cryoforge_wizard::solver::{random_features, train, FeatureInfo, Initial, Progress, SolverConfig};
use std::path::PathBuf;

/// CryoSolver (paper 001): heterogeneous reconstruction with the frozen Cryo-IEF encoder as
/// the latent of a DRGN-AI volume decoder.
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

/// Train CryoSolver: each particle's latent is its frozen Cryo-IEF feature (standardised);
/// a volume decoder (Gaussian Fourier encoding of the 3D frequency + latent → 256 units →
/// three residual ReLU layers of 256 → V̂(k), the paper's DRGN-AI setting) is trained by
/// Adam on the particles' spectra (−CTF × the decoder's slice at the particle's pose).
///
/// Poses: a global coarse-to-fine search against --reference, the file's own poses
/// (--input-poses), or cryoforge's ab initio (one class) without either; then searched again against the decoder's volumes at epochs
/// --pose-search-every, 2×, … below --pose-search-until × --epochs (each particle against
/// the volume of the nearest of --search-volumes latent anchors); the later epochs train
/// the decoder on fixed poses.
///
/// Latents: --weights (the Cryo-IEF encoder, features computed here), --features (a .npy
/// [N, C] from `ief features`), or --random-features (the paper's control: N(0, 1)
/// vectors that carry no information about the particles).
///
/// Writes RUN/config.json, RUN/decoder/ (weights), RUN/z.npy, RUN/particles.star (the last
/// poses), RUN/train.jsonl and RUN/summary.json; then run `solver analyze RUN`.
///
/// Examples:
///   cryoforge solver train particles.star --weights ief/weights.safetensors --out solver/
///   cryoforge solver train particles.star --features feats.npy --reference consensus.mrc --out solver/
///   cryoforge solver train particles.star --random-features --reference consensus.mrc --out control/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Output run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Cryo-IEF encoder (safetensors) whose CLS features are the latents.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["features", "random_features"])]
    pub weights: Option<PathBuf>,
    /// Attention heads of --weights (default from the width).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Precomputed features (.npy [N, C] in particle order) instead of --weights.
    #[arg(long, value_name = "NPY", conflicts_with_all = ["weights", "random_features"])]
    pub features: Option<PathBuf>,
    /// The paper's control: random N(0, 1) latents (width --random-dim).
    #[arg(long, conflicts_with = "weights")]
    pub random_features: bool,
    /// Width of --random-features.
    #[arg(long, default_value_t = 256)]
    pub random_dim: usize,
    /// Initial model for the first pose search (D³ map at the particles' pixel size);
    /// without it, ab initio (one class) gives the first poses.
    #[arg(long, value_name = "MAP", conflicts_with = "input_poses")]
    pub reference: Option<PathBuf>,
    /// Start from the particles' own poses (a consensus refinement's) instead of a search.
    #[arg(long)]
    pub input_poses: bool,
    /// Epochs of decoder training.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Particles per mini-batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Units per decoder layer (the paper: 256).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Residual layers (the paper: 3).
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Pose searches against the decoder at epochs every, 2×every, …
    #[arg(long, default_value_t = 4)]
    pub pose_search_every: usize,
    /// … below this fraction of --epochs (0: only the first search).
    #[arg(long, default_value_t = 0.5)]
    pub pose_search_until: f64,
    /// Latent anchors (decoder volumes) of a pose search.
    #[arg(long, default_value_t = 8)]
    pub search_volumes: usize,
    /// Resolution of a pose search's last level in Å (default max(3 px, 8 Å)).
    #[arg(long, value_name = "A")]
    pub search_res_a: Option<f64>,
    /// HEALPix order of the global grid (2: 7.5°).
    #[arg(long, default_value_t = 2)]
    pub healpix_order: u32,
    /// Shift search range in Å.
    #[arg(long, default_value_t = 10.0)]
    pub offset_range_a: f64,
    /// Training band as a fraction of Nyquist.
    #[arg(long, default_value_t = 1.0)]
    pub max_freq: f64,
    /// Protein-dark particles (flip the sign for the decoder and the searches; the
    /// encoder's own --invert is not implied).
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// Analyse a CryoSolver run: PCA and UMAP of the latents, k-means with the decoder's
/// volume at the particle nearest each centre, volumes along the first PCs, and one STAR
/// file per cluster (the particles at the run's poses) to re-refine.
///
/// Writes DIR (default RUN/analysis): latents.npy, pca.npy, pca_explained.csv, umap.npy,
/// kmeans/{labels.txt, centers_ind.txt, sizes.txt, vol_XXX.mrc}, pcN/{z_values.txt,
/// vol_XXX.mrc}, particles/cluster_XXX.star, summary.json.
///
/// Examples:
///   cryoforge solver analyze solver/
///   cryoforge solver analyze solver/ --k 4 --pcs 0 --out solver/k4
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AnalyzeArgs {
    pub run: PathBuf,
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// k-means clusters.
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,
    /// Principal components to traverse.
    #[arg(long, default_value_t = 2)]
    pub pcs: usize,
    /// Volumes per traversal.
    #[arg(long, default_value_t = 5)]
    pub points: usize,
    /// Skip the UMAP.
    #[arg(long)]
    pub no_umap: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

struct Say<'a>(&'a Ctx);
impl Progress for Say<'_> {
    fn say(&self, msg: &str) {
        self.0.say(msg);
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => train_cmd(*t, ctx),
        Sub::Analyze(x) => analyze_cmd(x, ctx),
    }
}

fn train_cmd(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    let (feats, info) = if let Some(p) = &a.features {
        let f = cryoforge_io::npy::read_npy(p)?;
        if f.shape.len() != 2 || f.rows() != n {
            bail!(
                "{}: features of shape {:?}, expected [{n}, C] (one row per particle)",
                p.display(),
                f.shape
            );
        }
        let dim = f.row_len();
        (f.data, FeatureInfo { source: "file".into(), path: Some(p.display().to_string()), dim })
    } else if a.random_features {
        if a.random_dim == 0 {
            bail!("--random-dim 0: at least 1");
        }
        (
            random_features(n, a.random_dim, a.seed),
            FeatureInfo { source: "random".into(), path: None, dim: a.random_dim },
        )
    } else {
        let w = a.weights.as_ref().context("give --weights, --features or --random-features")?;
        let opts = InferOptions { batch_size: 32, resample: Resample::Spline, invert: a.invert };
        let (f, dim) = crate::cmd::ief::compute_features(&stack, w, a.heads, &opts, &a.device.open()?, ctx)?;
        (f, FeatureInfo { source: "cryo-ief".into(), path: Some(w.display().to_string()), dim })
    };
    let initial = match &a.reference {
        Some(p) => {
            let m = cryoforge_io::mrc::MrcFile::open(p)?;
            let d = stack.box_px()?;
            let v = m.read_volume()?;
            if v.len() != d * d * d {
                bail!("{}: {} voxels; the particles' box of {d} px needs {d}³", p.display(), v.len());
            }
            Initial::Reference(v)
        }
        None if a.input_poses => Initial::Input,
        None => Initial::Abinit,
    };
    let cfg = SolverConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        hidden: a.hidden,
        layers: a.layers,
        pose_search_every: a.pose_search_every,
        pose_search_until: a.pose_search_until,
        search_volumes: a.search_volumes,
        search_res_a: a.search_res_a,
        healpix_order: a.healpix_order,
        offset_range_a: a.offset_range_a,
        max_freq: a.max_freq,
        invert: a.invert,
        seed: a.seed,
    };
    let t0 = std::time::Instant::now();
    let rc = train(&stack, &feats, info, initial, &cfg, &a.out, &Say(ctx))?;
    ctx.done(format!(
        "solver: {} particles, latent width {} ({}), {} epochs in {:.0} s → {}",
        rc.n_particles,
        rc.decoder.zdim,
        rc.features.source,
        cfg.epochs,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    ));
    Ok(())
}

fn analyze_cmd(a: AnalyzeArgs, ctx: &Ctx) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.run.join("analysis"));
    let opts = AnalyzeOptions {
        out: out.clone(),
        k: a.k,
        pcs: a.pcs,
        points: a.points,
        umap: !a.no_umap,
        seed: a.seed,
    };
    let r = analyze(&a.run, &opts, &|m| ctx.say(m))?;
    let mut sizes = vec![0usize; a.k];
    r.labels.iter().for_each(|&l| sizes[l] += 1);
    ctx.done(format!(
        "solver analyze: {} particles, k-means sizes {:?} → {}",
        r.labels.len(),
        sizes,
        out.display()
    ));
    Ok(())
}
