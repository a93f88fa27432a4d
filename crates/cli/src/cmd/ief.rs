//! `cryoforge ief`: Cryo-IEF particle features.

use crate::common::{ensure_dir, ensure_parent, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_ief::infer::{self, InferOptions};
use cryoforge_ief::{load_model, Resample};
use std::io::Write;
use std::path::PathBuf;

/// Cryo-IEF (paper 001): a ViT foundation model of particle images.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Pretrain(Box<PretrainArgs>),
    Features(Box<FeaturesArgs>),
    Knn(KnnArgs),
    Cluster(Box<ClusterArgs>),
}

/// k-means++ clusters of particles in Cryo-IEF feature space (CryoWizard's step for
/// preferred-orientation data: k = 8 on standardised features, 10 restarts; METHODS.md §5),
/// one STAR (and .cs for a .cs input) per cluster, and a UMAP of the features in
/// report.html.
///
/// Features: a .npy from `ief features` (--features) or computed here (--weights).
/// Writes DIR/clusters.csv (index, cluster), DIR/cluster_NN.star (NN from 01, largest
/// first), DIR/umap.csv (x, y, cluster[, label] of up to --umap-max particles),
/// DIR/summary.json (sizes, inertia, purity and adjusted Rand index against --labels) and
/// DIR/report.html.
///
/// Examples:
///   cryoforge ief cluster particles.star --features features.npy --out clusters/
///   cryoforge ief cluster particles.star --weights ief_run/weights.safetensors --k 4 --labels sim/truth.csv --column model --out clusters/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Features (.npy [N, C] in particle order).
    #[arg(long, value_name = "NPY", conflicts_with = "weights")]
    pub features: Option<PathBuf>,
    /// Or: compute the features with this encoder.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long)]
    pub invert: bool,
    /// Number of clusters.
    #[arg(long, short, default_value_t = 8)]
    pub k: usize,
    /// k-means++ restarts (the lowest inertia is kept).
    #[arg(long, default_value_t = 10)]
    pub restarts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Labels to compare the clusters with (CSV or STAR) …
    #[arg(long, value_name = "FILE", requires = "column")]
    pub labels: Option<PathBuf>,
    /// … and their column.
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// At most this many particles (an even subsample) in the UMAP; 0: no UMAP.
    #[arg(long, default_value_t = 20000)]
    pub umap_max: usize,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// Pre-train a Cryo-IEF encoder on particle images with MoCo v3 (two augmented views, a
/// base and a momentum encoder, InfoNCE at temperature 0.5; METHODS.md §4).
///
/// Presets: `cpu` (default: a 64-px ViT in 16-px patches, width 192, 6 blocks, batch 64, lr 2e-4,
/// 15 epochs; particles of any box are resampled to 64 px as the released preprocessing
/// does) and `paper` (ViT-B/14 at 224 px, batch 2048, lr 1e-5·batch/256, 300 epochs; for a
/// GPU: --device cuda). Writes RUN/config.json, RUN/metrics.csv (loss, pretext top-1
/// accuracy, lr, momentum per step), rotating checkpoints, RUN/train.json and
/// RUN/weights.safetensors with MoCo v3's names (base_encoder.*, momentum_encoder.*,
/// predictor.*), which `ief features`, `ief cluster` and `ranker train --init` read.
///
/// Examples:
///   cryoforge ief pretrain particles.star --out ief_run
///   cryoforge ief pretrain particles.star --out ief_run --epochs 50 --batch-size 128
///   cryoforge ief pretrain particles.star --out ief_run --resume --steps 20000
///   cryoforge ief pretrain particles.star --out ief_run --preset paper --device cuda
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// Run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// cpu or paper.
    #[arg(long, default_value = "cpu")]
    pub preset: String,
    /// Encoder architecture instead of the preset's: base, small, tiny (112 px) or cpu (64 px).
    #[arg(long, value_name = "NAME")]
    pub vit: Option<String>,
    /// Model input size in pixels (a multiple of the patch size) instead of the preset's.
    #[arg(long, value_name = "PX")]
    pub img_size: Option<usize>,
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Run length in steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (after the warm-up).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Initial momentum m₀ of the momentum encoder (cosine schedule to 1).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Augmentations of the two views: moco (crop, rotation, flips, blur, noise,
    /// brightness/contrast, solarisation), ranker (crop, rotation, flips) or none.
    #[arg(long)]
    pub augment: Option<String>,
    /// Upsampling of small particles: spline (the released models') or fourier.
    #[arg(long, default_value = "spline")]
    pub resample: String,
    /// Flip the sign of the images first.
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue from the newest checkpoint of RUN (same settings; --steps/--epochs may
    /// extend the run).
    #[arg(long)]
    pub resume: bool,
    /// Print train.json on stdout at the end.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// k-NN accuracy of features against labels (the paper's test of the foundation model):
/// particles split at random into references and queries, each query labelled by its k
/// nearest references (cosine similarity).
///
/// Labels: a column of a CSV with a header (e.g. `simulate`'s truth.csv: model, junk) or of
/// a STAR's particle table (e.g. rlnClassNumber), one row per particle in feature order.
///
/// Examples:
///   cryoforge ief knn features.npy --labels sim/truth.csv --column model
///   cryoforge ief knn features.npy --labels particles.star --column rlnClassNumber --k 5 --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct KnnArgs {
    /// Features (.npy [N, C], any float type).
    pub features: PathBuf,
    /// CSV or STAR file with the labels.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// The label column.
    #[arg(long, value_name = "NAME")]
    pub column: String,
    #[arg(long, default_value_t = 1)]
    pub k: usize,
    /// Fraction of the particles used as queries.
    #[arg(long, default_value_t = 0.5)]
    pub query_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by the commands that run an encoder over a stack.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights (safetensors with the published Cryo-IEF / CryoRanker tensor names, with or
    /// without the `base_encoder.` prefix; the architecture is read from the shapes).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Attention heads (not stored in the weights; default 12 for widths 768 and 384,
    /// 3 for 192, width/64 otherwise).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Particles per forward pass (32).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Upsampling of particles smaller than the model's input: spline (the released
    /// models') or fourier (zero-padding). Larger particles are always Fourier-cropped.
    #[arg(long, default_value = "spline", value_name = "spline|fourier")]
    pub resample: String,
    /// Flip the sign of the images first (the released models take particles as RELION
    /// and cryoSPARC store them).
    #[arg(long)]
    pub invert: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

impl ModelArgs {
    pub fn options(&self) -> Result<InferOptions> {
        if self.batch_size == 0 {
            bail!("--batch-size must be ≥ 1");
        }
        Ok(InferOptions {
            batch_size: self.batch_size,
            resample: Resample::parse(&self.resample).map_err(|e| anyhow::anyhow!("--resample: {e}"))?,
            invert: self.invert,
        })
    }

    pub fn load(&self, ctx: &Ctx) -> Result<cryoforge_ief::LoadedModel> {
        let m = load_model(&self.weights, self.heads, &self.device.open()?)?;
        let c = &m.vit.cfg;
        ctx.say(format!(
            "model {}: ViT {}×{} px, patch {}, width {}, {} blocks, {} heads{}{}",
            self.weights.display(),
            c.img_size,
            c.img_size,
            c.patch,
            c.embed_dim,
            c.depth,
            c.heads,
            match &m.head {
                Some(h) => format!(", ranker head {:?}", h.kind),
                None => String::new(),
            },
            if m.unused.is_empty() { String::new() } else { format!(" ({} tensors unused)", m.unused.len()) }
        ));
        Ok(m)
    }
}

/// L2-normalised CLS features of every particle, as a float16 .npy [N, C] in particle
/// order (streamed: memory O(batch)).
///
/// Examples:
///   cryoforge ief features particles.star --weights cryo_ief.safetensors -o features.npy
///   cryoforge ief features J12_particles.cs --weights ranker.safetensors -o f.npy --batch-size 64
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output .npy (float16).
    #[arg(short, long, value_name = "NPY")]
    pub out: PathBuf,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Pretrain(p) => pretrain(*p, ctx),
        Sub::Features(f) => features(*f, ctx),
        Sub::Knn(k) => knn(k, ctx),
        Sub::Cluster(c) => cluster(*c, ctx),
    }
}

/// One label per row of a CSV (with a header) or a STAR's particle table.
pub fn read_labels(path: &std::path::Path, column: &str) -> Result<Vec<String>> {
    let is_star = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("star"));
    if is_star {
        let rp = cryoforge_io::star::RelionParticles::read(path)?;
        let t = rp.particles();
        let col = column.strip_prefix('_').unwrap_or(column);
        if !t.has_column(col) {
            bail!("{}: no column {col} in the particle table", path.display());
        }
        return Ok(t.column_str(col)?.into_iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let Some(ci) = header.iter().position(|h| *h == column) else {
        bail!("{}: line 1: no column {column:?} (columns: {})", path.display(), header.join(", "));
    };
    let mut out = Vec::new();
    for (i, l) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let v = f.get(ci).ok_or_else(|| {
            anyhow::anyhow!("{}: line {}: {} fields, no column {column:?}", path.display(), i + 2, f.len())
        })?;
        out.push(v.trim().to_string());
    }
    Ok(out)
}

/// Whether the subcommand runs across MPI ranks.
pub fn distributed_ok(a: &Args) -> bool {
    matches!(a.cmd, Sub::Features(_))
}

fn pretrain(a: PretrainArgs, ctx: &Ctx) -> Result<()> {
    use cryoforge_ief::moco::{self, PretrainConfig};
    let device = a.device.open()?;
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    let cfg = if a.resume {
        let mut c = moco::read_run_config(&a.out).context("--resume")?.config;
        if a.steps.is_some() || a.epochs.is_some() {
            c.steps = a.steps;
            if let Some(e) = a.epochs {
                c.epochs = e;
            }
        }
        if let Some(v) = a.log_every {
            c.log_every = v;
        }
        if let Some(v) = a.checkpoint_every {
            c.checkpoint_every = v;
        }
        c
    } else {
        let mut c = PretrainConfig::preset(&a.preset)?;
        if let Some(v) = &a.vit {
            c.vit = cryoforge_ief::VitConfig::preset(v)?;
        }
        macro_rules! set {
            ($f:expr, $v:expr) => {
                if let Some(v) = $v {
                    $f = v;
                }
            };
        }
        set!(c.vit.img_size, a.img_size);
        set!(c.epochs, a.epochs);
        c.steps = a.steps;
        set!(c.batch_size, a.batch_size);
        set!(c.lr, a.lr);
        set!(c.weight_decay, a.weight_decay);
        set!(c.warmup_epochs, a.warmup_epochs);
        set!(c.temperature, a.temperature);
        set!(c.momentum, a.momentum);
        set!(c.log_every, a.log_every);
        set!(c.checkpoint_every, a.checkpoint_every);
        if let Some(g) = &a.augment {
            c.augment = cryoforge_ief::augment::AugmentConfig::preset(g)?;
        }
        c.resample = Resample::parse(&a.resample).map_err(|e| anyhow::anyhow!("--resample: {e}"))?;
        c.invert = a.invert;
        c.seed = a.seed;
        c
    };
    cfg.check(n)?;
    ensure_dir(&a.out)?;
    let total = cfg.total_steps(n);
    ctx.say(format!(
        "MoCo v3 pre-training: {n} particles → {0}×{0} px, ViT width {1}, {2} blocks ({3:.2} M parameters); {total} steps of {4} ({5:.1} epochs)",
        cfg.vit.img_size,
        cfg.vit.embed_dim,
        cfg.vit.depth,
        cfg.vit.n_params() as f64 / 1e6,
        cfg.batch_size.min(n),
        total as f64 / cfg.steps_per_epoch(n) as f64
    ));
    let bar = ctx.progress(total, "pretrain");
    let mut cb = |p: &moco::PretrainProgress| {
        bar.set_position(p.step);
        bar.set_message(format!(
            "{:.1} img/s loss {:.4} top-1 {:.2} lr {:.1e}",
            p.images_per_s, p.loss, p.top1, p.lr
        ));
        if !bar.is_hidden() {
            return;
        }
        tracing::info!(
            "step {}/{} epoch {} loss {:.4} top-1 {:.3} lr {:.2e} {:.1} particles/s",
            p.step,
            p.total,
            p.epoch,
            p.loss,
            p.top1,
            p.lr,
            p.images_per_s
        );
    };
    let label = a.particles.particles.display().to_string();
    let out = moco::pretrain(std::sync::Arc::new(stack), &label, &cfg, &a.out, a.resume, &device, &mut cb)?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    ctx.done(format!(
        "{} steps in {:.1} s ({:.1} particles/s); final loss {:.4}, pretext top-1 {:.3}: wrote {}",
        out.steps, out.elapsed_s, out.particles_per_s, out.final_loss, out.final_top1, out.weights
    ));
    Ok(())
}

/// Features [N, C] (f32) of `stack` with the encoder `weights`, in memory.
pub fn compute_features(
    stack: &cryoforge_io::stack::ParticleStack,
    weights: &std::path::Path,
    heads: Option<usize>,
    opts: &InferOptions,
    device: &candle_core::Device,
    ctx: &Ctx,
) -> Result<(Vec<f32>, usize)> {
    let model = load_model(weights, heads, device)?;
    let c = model.vit.cfg.embed_dim;
    let mut f = vec![0f32; stack.len() * c];
    let bar = ctx.progress(stack.len() as u64, "features");
    infer::run(&model, stack, opts, |b| {
        f[b.start * c..(b.start + b.len) * c].copy_from_slice(b.features);
        bar.inc(b.len as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok((f, c))
}

fn cluster(a: ClusterArgs, ctx: &Ctx) -> Result<()> {
    use cryoforge_analysis::{kmeans, standardize, KMeansOptions, MatrixView};
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    let (feats, c) = match (&a.features, &a.weights) {
        (Some(p), _) => {
            let f = cryoforge_io::npy::read_npy(p)?;
            if f.shape.len() != 2 {
                bail!("{}: features of shape {:?}, expected [N, C]", p.display(), f.shape);
            }
            if f.shape[0] != n {
                bail!(
                    "{} has {} feature rows but {} has {n} particles",
                    p.display(),
                    f.shape[0],
                    a.particles.particles.display()
                );
            }
            (f.data, f.shape[1])
        }
        (None, Some(w)) => {
            if a.batch_size == 0 {
                bail!("--batch-size must be ≥ 1");
            }
            let opts =
                InferOptions { batch_size: a.batch_size, resample: Resample::Spline, invert: a.invert };
            compute_features(&stack, w, a.heads, &opts, &a.device.open()?, ctx)?
        }
        (None, None) => bail!("give --features F.npy (from `ief features`) or --weights W to compute them"),
    };
    if a.k == 0 || a.k > n {
        bail!("--k {}: must be between 1 and the number of particles ({n})", a.k);
    }
    if let Some(i) = feats.iter().position(|v| !v.is_finite()) {
        bail!("features: particle {}, dimension {}: value {} is not finite", i / c, i % c, feats[i]);
    }
    let labels = match (&a.labels, &a.column) {
        (Some(p), Some(col)) => {
            let l = read_labels(p, col)?;
            if l.len() != n {
                bail!("{} has {} labels but there are {n} particles", p.display(), l.len());
            }
            Some(l)
        }
        _ => None,
    };
    ensure_dir(&a.out)?;
    let t0 = std::time::Instant::now();
    let view = MatrixView::new(&feats, n, c)?;
    let (z, _) = standardize(view)?;
    let mut opts = KMeansOptions::new(a.k);
    opts.n_init = a.restarts.max(1);
    opts.seed = a.seed;
    let km = kmeans(z.view(), &opts)?;
    // Clusters renumbered largest first (ties: lower original index).
    let sizes = km.cluster_sizes();
    let mut order: Vec<usize> = (0..a.k).collect();
    order.sort_by(|&x, &y| sizes[y].cmp(&sizes[x]).then(x.cmp(&y)));
    let mut rank = vec![0usize; a.k];
    for (r, &k) in order.iter().enumerate() {
        rank[k] = r;
    }
    let assign: Vec<usize> = km.labels.iter().map(|&l| rank[l]).collect();
    let sizes: Vec<usize> = order.iter().map(|&k| sizes[k]).collect();
    let mut csv = String::from("index,cluster\n");
    for (i, k) in assign.iter().enumerate() {
        csv.push_str(&format!("{i},{}\n", k + 1));
    }
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("clusters.csv"), csv.as_bytes())?;
    let is_cs = matches!(stack.source, cryoforge_io::stack::Source::Cs(_));
    for k in 0..a.k {
        let keep: Vec<usize> = (0..n).filter(|&i| assign[i] == k).collect();
        if keep.is_empty() {
            continue;
        }
        let mut sub = stack.clone();
        sub.select(&keep)?;
        let col = vec![(k + 1).to_string(); keep.len()];
        cryoforge_io::export::write_star_with(
            &sub,
            &a.out.join(format!("cluster_{:02}.star", k + 1)),
            &[("rlnClassNumber", col)],
        )?;
        if is_cs {
            cryoforge_io::export::write_cs(&sub, &a.out.join(format!("cluster_{:02}.cs", k + 1)))?;
        }
    }
    // Agreement with labels: purity (each cluster's majority label) and ARI.
    let (mut purity, mut ari) = (None, None);
    if let Some(l) = &labels {
        let mut ids: Vec<&String> = l.iter().collect();
        ids.sort();
        ids.dedup();
        let lid: Vec<usize> = l.iter().map(|x| ids.binary_search(&x).unwrap_or(0)).collect();
        let mut table = vec![vec![0usize; ids.len()]; a.k];
        for (i, &k) in assign.iter().enumerate() {
            table[k][lid[i]] += 1;
        }
        let hit: usize = table.iter().map(|r| r.iter().copied().max().unwrap_or(0)).sum();
        purity = Some(hit as f64 / n as f64);
        ari = Some(cryoforge_analysis::adjusted_rand_index(&assign, &lid)?);
    }
    // UMAP of an even subsample.
    let mut umap_rows = 0;
    if a.umap_max > 0 && n >= 4 {
        let m = n.min(a.umap_max);
        let pick: Vec<usize> = (0..m).map(|j| j * n / m).collect();
        let mut sub = Vec::with_capacity(m * c);
        for &i in &pick {
            sub.extend_from_slice(z.row(i));
        }
        let u = cryoforge_analysis::umap(
            MatrixView::new(&sub, m, c)?,
            &cryoforge_analysis::UmapOptions {
                seed: a.seed,
                n_neighbors: 15.min(m - 1),
                ..Default::default()
            },
        )?;
        let mut s =
            String::from(if labels.is_some() { "index,x,y,cluster,label\n" } else { "index,x,y,cluster\n" });
        for (j, &i) in pick.iter().enumerate() {
            let e = u.embedding.row(j);
            s.push_str(&format!("{i},{:.5},{:.5},{}", e[0], e[1], assign[i] + 1));
            if let Some(l) = &labels {
                s.push_str(&format!(",{}", l[i].replace(',', ";")));
            }
            s.push('\n');
        }
        cryoforge_io::atomic::write_bytes_atomic(&a.out.join("umap.csv"), s.as_bytes())?;
        umap_rows = m;
    }
    let dt = t0.elapsed().as_secs_f64();
    crate::common::write_json_atomic(
        &a.out.join("summary.json"),
        &serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "particles": n,
            "feature_dims": c,
            "features": a.features.as_ref().map(|p| p.display().to_string()).or(a.weights.as_ref().map(|w| format!("computed with {}", w.display()))),
            "k": a.k,
            "restarts": opts.n_init,
            "seed": a.seed,
            "sizes": sizes,
            "inertia": km.inertia,
            "converged": km.converged,
            "purity": purity,
            "adjusted_rand_index": ari,
            "labels": a.labels.as_ref().map(|p| format!("{}:{}", p.display(), a.column.clone().unwrap_or_default())),
            "umap_particles": umap_rows,
            "seconds": dt,
        }),
    )?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        ctx.say(format!("warning: report.html not written: {e}"));
    }
    let pur = purity
        .map(|p| format!(", purity {:.1} %, ARI {:.3}", 100.0 * p, ari.unwrap_or(0.0)))
        .unwrap_or_default();
    ctx.done(format!(
        "{n} particles in {} clusters (sizes {}){pur} in {dt:.1} s: wrote {}",
        a.k,
        sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        a.out.display()
    ));
    Ok(())
}

fn knn(a: KnnArgs, ctx: &Ctx) -> Result<()> {
    let f = cryoforge_io::npy::read_npy(&a.features)?;
    if f.shape.len() != 2 {
        bail!("{}: features of shape {:?}, expected [N, C]", a.features.display(), f.shape);
    }
    let labels = read_labels(&a.labels, &a.column)?;
    if labels.len() != f.shape[0] {
        bail!(
            "{} has {} labels but {} has {} feature rows",
            a.labels.display(),
            labels.len(),
            a.features.display(),
            f.shape[0]
        );
    }
    let r = cryoforge_ief::knn::knn_accuracy(&f.data, f.shape[1], &labels, a.k, a.query_fraction, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    for (l, n, ok) in &r.per_label {
        ctx.say(format!("  {}: {ok}/{n} ({:.1} %)", l, 100.0 * *ok as f64 / (*n).max(1) as f64));
    }
    ctx.done(format!(
        "k-NN (k = {}) accuracy {:.2} % on {} queries against {} references ({} labels of {})",
        r.k,
        100.0 * r.accuracy,
        r.queries,
        r.references,
        r.per_label.len(),
        a.column
    ));
    Ok(())
}

/// The .npy header for a little-endian float16 array [n, c].
pub fn npy_f16_header(n: usize, c: usize) -> Vec<u8> {
    let mut h = format!("{{'descr': '<f2', 'fortran_order': False, 'shape': ({n}, {c}), }}");
    let pad = (64 - (10 + h.len() + 1) % 64) % 64;
    h.push_str(&" ".repeat(pad));
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

fn features(a: FeaturesArgs, ctx: &Ctx) -> Result<()> {
    let opts = a.model.options()?;
    let stack = a.particles.load(ctx)?;
    if stack.is_empty() {
        bail!("{}: no particles", a.particles.particles.display());
    }
    let model = a.model.load(ctx)?;
    let c = model.vit.cfg.embed_dim;
    if !cryoforge_core::dist::world().is_root() {
        // Another MPI rank: compute this rank's blocks; rank 0 gathers and writes them.
        infer::run(&model, &stack, &opts, |_| Ok(()))?;
        return Ok(());
    }
    ensure_parent(&a.out)?;
    let bar = ctx.progress(stack.len() as u64, "features");
    let t0 = std::time::Instant::now();
    let out = a.out.clone();
    let mut err: Option<anyhow::Error> = None;
    let r = cryoforge_io::atomic::write_atomic(&a.out, |w| {
        let io = |e: std::io::Error| cryoforge_io::IoError::os(&out, "write failed", e);
        w.write_all(&npy_f16_header(stack.len(), c)).map_err(io)?;
        let res = infer::run(&model, &stack, &opts, |b| {
            let mut buf = Vec::with_capacity(b.features.len() * 2);
            for &v in b.features {
                buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
            w.write_all(&buf)
                .map_err(|e| cryoforge_ief::IefError::msg(format!("{}: write failed: {e}", out.display())))?;
            bar.inc(b.len as u64);
            Ok(())
        });
        if let Err(e) = res {
            err = Some(e.into());
            return Err(cryoforge_io::IoError::file(&out, "not written: the feature pass failed"));
        }
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    r?;
    let dt = t0.elapsed().as_secs_f64();
    ctx.done(format!(
        "features of {} particles ({c} dims, float16) in {dt:.1} s ({:.1}/s): wrote {}",
        stack.len(),
        stack.len() as f64 / dt.max(1e-9),
        a.out.display()
    ));
    Ok(())
}
