//! `cryoforge ranker`: CryoRanker particle-quality scores.

use crate::cmd::ief::ModelArgs;
use crate::common::{ensure_dir, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_ief::infer;
use cryoforge_io::export;
use cryoforge_io::stack::Source;
use std::fmt::Write as _;
use std::path::PathBuf;

/// CryoRanker (paper 001): particle-quality scores from a ViT with a ranking head.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Train(Box<TrainArgs>),
    Distill(Box<DistillArgs>),
    Score(Box<ScoreArgs>),
}

/// A fast ranker distilled from a slow one: the teacher (e.g. the released ViT-B/14
/// CryoRanker) scores the particles once, then a small encoder (default the cpu preset,
/// 64 px) is trained on those scores with the ranker loss (cross-entropy on the teacher's
/// confident scores, margin ranking on every ordered pair). At the end the student scores
/// every particle: RUN/distill.json gives the Spearman correlation with the teacher and both
/// models' scoring speed. RUN/weights.safetensors is a CryoRanker file for `ranker score`.
///
/// Examples:
///   cryoforge ranker distill particles.star --teacher cryoranker_v1.5.safetensors --out fast_ranker
///   cryoforge ranker distill particles.star --teacher big/weights.safetensors --vit tiny --epochs 20 --out fast
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DistillArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// The teacher ranker (safetensors with a ranker head).
    #[arg(long, value_name = "FILE")]
    pub teacher: PathBuf,
    /// Attention heads of the teacher (not stored in the file).
    #[arg(long)]
    pub teacher_heads: Option<usize>,
    /// Run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// The student's encoder: cpu (64 px, default), tiny (112 px), small or base.
    #[arg(long, default_value = "cpu")]
    pub vit: String,
    /// Start the student's encoder from these weights (e.g. a Cryo-IEF pre-training run).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Particles per forward pass when scoring.
    #[arg(long, default_value_t = 32)]
    pub score_batch: usize,
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

fn distill(a: DistillArgs, ctx: &Ctx) -> Result<()> {
    use cryoforge_ief::rank::{self, RankerTrainConfig};
    let device = a.device.open()?;
    let stack = std::sync::Arc::new(a.particles.load(ctx)?);
    let n = stack.len();
    if n < 2 {
        bail!("{}: {n} particle(s); distillation needs at least 2", a.particles.particles.display());
    }
    let opts = infer::InferOptions {
        batch_size: a.score_batch.max(1),
        resample: cryoforge_ief::Resample::Spline,
        invert: a.invert,
    };
    let teacher = cryoforge_ief::load_model(&a.teacher, a.teacher_heads, &device)?;
    if teacher.head.is_none() {
        bail!(
            "{}: no ranker head: the teacher must be a ranker (head.mlp_classifier.0.* or head.*)",
            a.teacher.display()
        );
    }
    ensure_dir(&a.out)?;
    let score_all = |m: &cryoforge_ief::LoadedModel, what: &str| -> Result<(Vec<f32>, f64)> {
        let bar = ctx.progress(n as u64, what);
        let t0 = std::time::Instant::now();
        let mut s = vec![0f32; n];
        infer::run(m, &stack, &opts, |b| {
            if let Some(x) = b.scores {
                s[b.start..b.start + b.len].copy_from_slice(x);
            }
            bar.inc(b.len as u64);
            Ok(())
        })?;
        bar.finish_and_clear();
        Ok((s, n as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
    };
    let (ts, t_speed) = score_all(&teacher, "teacher")?;
    drop(teacher);
    let mut csv = String::from("index,teacher_score\n");
    for (i, s) in ts.iter().enumerate() {
        let _ = writeln!(csv, "{i},{s:.6}");
    }
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("teacher_scores.csv"), csv.as_bytes())?;
    ctx.say(format!("teacher scored {n} particles at {t_speed:.1}/s"));
    let (init, vit) = match &a.init {
        Some(p) => {
            let (t, c, _) = cryoforge_ief::weights::read_backbone(p, None)?;
            (Some(t), c)
        }
        None => (None, cryoforge_ief::VitConfig::preset(&a.vit)?),
    };
    let mut cfg = RankerTrainConfig::new(vit, init.is_some());
    cfg.init = a.init.as_ref().map(|p| p.display().to_string());
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    cfg.steps = a.steps;
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(l) = a.lr {
        cfg.lr = l;
    }
    cfg.invert = a.invert;
    cfg.seed = a.seed;
    cfg.check()?;
    let bar = ctx.progress(1, "student");
    let mut cb = |p: &rank::RankerProgress| {
        bar.set_length(p.total);
        bar.set_position(p.step);
        bar.set_message(format!("{:.1} img/s loss {:.4}", p.images_per_s, p.loss));
    };
    let label = a.particles.particles.display().to_string();
    let out =
        rank::train_ranker(stack.clone(), &label, &ts, init.as_ref(), &cfg, &a.out, false, &device, &mut cb)?;
    bar.finish_and_clear();
    let student =
        cryoforge_ief::load_model(&a.out.join("weights.safetensors"), Some(cfg.vit.heads), &device)?;
    let (ss, s_speed) = score_all(&student, "student")?;
    let rho = cryoforge_analysis::traverse::spearman(&ss, &ts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let summary = serde_json::json!({
        "particles": n,
        "teacher": a.teacher.display().to_string(),
        "teacher_particles_per_s": t_speed,
        "student_particles_per_s": s_speed,
        "speedup": s_speed / t_speed.max(1e-9),
        "spearman_with_teacher": rho,
        "train": out,
    });
    write_json_atomic(&a.out.join("distill.json"), &summary)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.done(format!(
        "student ranker: Spearman {rho:.4} with the teacher over {n} particles; scores {s_speed:.1} particles/s (teacher {t_speed:.1}/s): wrote {}",
        out.weights
    ));
    Ok(())
}

/// Train a CryoRanker: the encoder plus a quality head fine-tuned with cross-entropy on
/// confident labels (> 0.7 → good, ≤ 0.3 → junk) and the paper's margin ranking loss
/// (Δ = 0.2) over ordered pairs (METHODS.md §4).
///
/// Labels: a column of a CSV with a header (e.g. simulate's truth.csv) or of a STAR's
/// particle table, one per particle: numbers in [0, 1] (1 = good), or with --good-values the
/// values that mean a good particle (everything else is junk), e.g. `--column junk
/// --good-values none` for truth.csv or `--column rlnClassNumber --good-values 1,4,7` for
/// the good 2D classes; --flip turns 1 = junk into 1 = good.
///
/// The encoder starts from --init (a Cryo-IEF pre-training run's weights.safetensors or
/// any released Cryo-IEF/CryoRanker file) or from scratch (--vit, default cpu). Writes
/// RUN/config.json, metrics.csv, validation.csv (ROC AUC of the held-out particles after
/// every epoch), checkpoints, train.json and RUN/weights.safetensors with the released
/// CryoRanker names, for `ranker score --weights`.
///
/// Examples:
///   cryoforge ranker train sim/particles.star --labels sim/truth.csv --column junk --good-values none --init ief_run/weights.safetensors --out ranker_run
///   cryoforge ranker train particles.star --labels particles.star --column rlnClassNumber --good-values 1,4,7 --out ranker_run
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    /// CSV or STAR file with the labels.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// The label column.
    #[arg(long, value_name = "NAME")]
    pub column: String,
    /// Values of the column that mean "good" (comma-separated); without it the column is
    /// numeric in [0, 1].
    #[arg(long, value_delimiter = ',', value_name = "V,...")]
    pub good_values: Option<Vec<String>>,
    /// Use 1 − label (for columns where 1 means junk).
    #[arg(long)]
    pub flip: bool,
    /// Run folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Pre-trained encoder (safetensors) to start from.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Attention heads of --init (not stored in the file).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Encoder from scratch: base, small, tiny or cpu (default cpu; ignored with --init).
    #[arg(long, default_value = "cpu")]
    pub vit: String,
    /// Head: v1.5 (LayerNorm → Linear → sigmoid, the released CryoRanker's) or v1 (2-way softmax).
    #[arg(long, default_value = "v1.5")]
    pub head: String,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate of the head (the encoder's is × --encoder-lr-scale).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Encoder learning rate relative to the head's (default 0.1 with --init, 1 without).
    #[arg(long)]
    pub encoder_lr_scale: Option<f64>,
    #[arg(long)]
    pub margin: Option<f64>,
    /// Weight of the margin ranking term.
    #[arg(long)]
    pub rank_weight: Option<f64>,
    /// Fraction of particles held out for the validation AUC.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    #[arg(long, default_value = "spline")]
    pub resample: String,
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Continue from the newest checkpoint (same settings).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::common::DeviceArg,
}

/// Labels in [0, 1] from a CSV/STAR column (see [`TrainArgs`]).
pub fn labels_from(
    path: &std::path::Path,
    column: &str,
    good: Option<&[String]>,
    flip: bool,
) -> Result<Vec<f32>> {
    let raw = crate::cmd::ief::read_labels(path, column)?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let y = match good {
            Some(g) => {
                if g.iter().any(|x| x.trim() == v.trim()) {
                    1.0
                } else {
                    0.0
                }
            }
            None => {
                let y: f32 = v.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: column {column}, particle {i}: {v:?} is not a number (give --good-values for categorical columns)",
                        path.display()
                    )
                })?;
                if !(0.0..=1.0).contains(&y) {
                    bail!("{}: column {column}, particle {i}: {y} is outside [0, 1]", path.display());
                }
                y
            }
        };
        out.push(if flip { 1.0 - y } else { y });
    }
    Ok(out)
}

fn train(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    use cryoforge_ief::rank::{self, RankerTrainConfig};
    let device = a.device.open()?;
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    let labels = labels_from(&a.labels, &a.column, a.good_values.as_deref(), a.flip)?;
    if labels.len() != n {
        bail!(
            "{} has {} labels in column {} but {} has {n} particles",
            a.labels.display(),
            labels.len(),
            a.column,
            a.particles.particles.display()
        );
    }
    let (init, vit) = match &a.init {
        Some(p) => {
            let (t, cfg, prefix) = cryoforge_ief::weights::read_backbone(p, a.heads)?;
            ctx.say(format!(
                "encoder from {}{}: ViT {}×{} px, patch {}, width {}, {} blocks",
                p.display(),
                if prefix.is_empty() { String::new() } else { format!(" (prefix {prefix})") },
                cfg.img_size,
                cfg.img_size,
                cfg.patch,
                cfg.embed_dim,
                cfg.depth
            ));
            (Some(t), cfg)
        }
        None => (None, cryoforge_ief::VitConfig::preset(&a.vit)?),
    };
    let cfg = if a.resume {
        let p = a.out.join("config.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("--resume: {}", p.display()))?;
        let mut c: rank::RankerRun = serde_json::from_str(&text).with_context(|| p.display().to_string())?;
        if a.steps.is_some() || a.epochs.is_some() {
            c.config.steps = a.steps;
            if let Some(e) = a.epochs {
                c.config.epochs = e;
            }
        }
        c.config
    } else {
        let mut c = RankerTrainConfig::new(vit, init.is_some());
        c.init = a.init.as_ref().map(|p| p.display().to_string());
        c.head = match a.head.to_ascii_lowercase().as_str() {
            "v1.5" | "v15" | "sigmoid" => cryoforge_ief::RankerHeadKind::V15,
            "v1" | "softmax" => cryoforge_ief::RankerHeadKind::V1,
            o => bail!("--head {o:?}: expected v1.5 or v1"),
        };
        macro_rules! set {
            ($f:expr, $v:expr) => {
                if let Some(v) = $v {
                    $f = v;
                }
            };
        }
        set!(c.epochs, a.epochs);
        c.steps = a.steps;
        set!(c.batch_size, a.batch_size);
        set!(c.lr, a.lr);
        set!(c.encoder_lr_scale, a.encoder_lr_scale);
        set!(c.margin, a.margin);
        set!(c.rank_weight, a.rank_weight);
        set!(c.val_fraction, a.val_fraction);
        set!(c.log_every, a.log_every);
        c.resample =
            cryoforge_ief::Resample::parse(&a.resample).map_err(|e| anyhow::anyhow!("--resample: {e}"))?;
        c.invert = a.invert;
        c.seed = a.seed;
        c
    };
    cfg.check()?;
    ensure_dir(&a.out)?;
    let good = labels.iter().filter(|&&y| y > 0.5).count();
    ctx.say(format!(
        "CryoRanker training: {n} particles ({good} good, {} junk by label), head {:?}, {} from {}",
        n - good,
        cfg.head,
        if init.is_some() { "fine-tuning" } else { "training" },
        if init.is_some() { "the given encoder" } else { "scratch" }
    ));
    let bar = ctx.progress(1, "ranker");
    let mut cb = |p: &rank::RankerProgress| {
        bar.set_length(p.total);
        bar.set_position(p.step);
        let auc = p.val_auc.map(|a| format!(" val AUC {a:.4}")).unwrap_or_default();
        bar.set_message(format!(
            "{:.1} img/s loss {:.4} (ce {:.4}, rank {:.4}){auc}",
            p.images_per_s, p.loss, p.ce, p.rank
        ));
        if bar.is_hidden() {
            tracing::info!(
                "step {}/{} epoch {} loss {:.4} ce {:.4} rank {:.4}{auc} {:.1} particles/s",
                p.step,
                p.total,
                p.epoch,
                p.loss,
                p.ce,
                p.rank,
                p.images_per_s
            );
        }
    };
    let label = a.particles.particles.display().to_string();
    let out = rank::train_ranker(
        std::sync::Arc::new(stack),
        &label,
        &labels,
        init.as_ref(),
        &cfg,
        &a.out,
        a.resume,
        &device,
        &mut cb,
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    let auc = out.val_auc.last().map(|(_, a)| format!(", validation ROC AUC {a:.4}")).unwrap_or_default();
    ctx.done(format!(
        "{} steps in {:.1} s ({:.1} particles/s){auc}: wrote {}",
        out.steps, out.elapsed_s, out.particles_per_s, out.weights
    ));
    Ok(())
}

/// Score every particle (0 = junk, 1 = good) with a CryoRanker model (the published v1.5
/// head: LayerNorm → Linear → sigmoid, or v1: 2-way softmax).
///
/// Writes DIR/scores.csv (index, image, score; particle order), DIR/particles_scored.star
/// (the input's columns + rlnCryoRankerScore), DIR/particles_sorted.star (best first),
/// DIR/top_N.star for each --top N (and top_N.cs when the input is a cryoSPARC .cs),
/// DIR/summary.json (counts, mean, histogram in 20 bins), DIR/examples.npy/.csv (the 8 best
/// and 8 worst particles) and DIR/report.html (score histogram, best and worst particles).
///
/// Examples:
///   cryoforge ranker score particles.star --weights cryoranker.safetensors --out ranked/
///   cryoforge ranker score J12_particles.cs --weights cryoranker.safetensors --out ranked/ --top 50000,100000
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Sizes of the best-scored subsets to write (default: half of the particles).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub top: Option<Vec<usize>>,
}

/// Whether the subcommand runs across MPI ranks (scoring does).
pub fn distributed_ok(a: &Args) -> bool {
    matches!(a.cmd, Sub::Score(_))
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Train(t) => train(*t, ctx),
        Sub::Distill(d) => distill(*d, ctx),
        Sub::Score(s) => score(*s, ctx),
    }
}

fn score(a: ScoreArgs, ctx: &Ctx) -> Result<()> {
    let opts = a.model.options()?;
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    if n == 0 {
        bail!("{}: no particles", a.particles.particles.display());
    }
    let top = a.top.clone().unwrap_or_else(|| vec![n.div_ceil(2)]);
    for &t in &top {
        if t == 0 || t > n {
            bail!("--top {t}: must be between 1 and the number of particles ({n})");
        }
    }
    let model = a.model.load(ctx)?;
    if model.head.is_none() {
        bail!(
            "{}: no ranker head (head.mlp_classifier.0.* or head.*): an encoder only gives features (cryoforge ief features)",
            a.model.weights.display()
        );
    }
    if !cryoforge_core::dist::world().is_root() {
        // Another MPI rank: score this rank's blocks; rank 0 gathers and writes them.
        infer::run(&model, &stack, &opts, |_| Ok(()))?;
        return Ok(());
    }
    ensure_dir(&a.out)?;
    let bar = ctx.progress(n as u64, "scoring");
    let t0 = std::time::Instant::now();
    let mut scores = vec![0f32; n];
    infer::run(&model, &stack, &opts, |b| {
        if let Some(s) = b.scores {
            scores[b.start..b.start + b.len].copy_from_slice(s);
        }
        bar.inc(b.len as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    let dt = t0.elapsed().as_secs_f64();

    let mut csv = String::from("index,image,score\n");
    for (i, s) in scores.iter().enumerate() {
        let name = export::image_name(&stack, i).unwrap_or_default();
        let _ = writeln!(csv, "{i},{name},{s:.6}");
    }
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("scores.csv"), csv.as_bytes())?;
    let col: Vec<String> = scores.iter().map(|s| format!("{s:.6}")).collect();
    export::write_star_with(&stack, &a.out.join("particles_scored.star"), &[("rlnCryoRankerScore", col)])?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    let mut sorted = stack.clone();
    sorted.select(&order)?;
    let col: Vec<String> = order.iter().map(|&i| format!("{:.6}", scores[i])).collect();
    export::write_star_with(&sorted, &a.out.join("particles_sorted.star"), &[("rlnCryoRankerScore", col)])?;
    let is_cs = matches!(stack.source, Source::Cs(_));
    for &t in &top {
        let mut sub = stack.clone();
        let mut keep = order[..t].to_vec();
        keep.sort_unstable();
        sub.select(&keep)?;
        let col: Vec<String> = keep.iter().map(|&i| format!("{:.6}", scores[i])).collect();
        export::write_star_with(&sub, &a.out.join(format!("top_{t}.star")), &[("rlnCryoRankerScore", col)])?;
        if is_cs {
            export::write_cs(&sub, &a.out.join(format!("top_{t}.cs")))?;
        }
    }
    // The best and worst particles as stored, for the report.
    let kb = n.min(8);
    let kw = (n - kb).min(8);
    let d = stack.box_px()?;
    let mut ex = vec![0f32; (kb + kw) * d * d];
    let mut ex_csv = String::from("kind,index,score\n");
    let picks: Vec<(&str, usize)> = order[..kb]
        .iter()
        .map(|&i| ("best", i))
        .chain(order[n - kw..].iter().rev().map(|&i| ("worst", i)))
        .collect();
    for (j, (kind, i)) in picks.iter().enumerate() {
        stack.read_image(*i, &mut ex[j * d * d..(j + 1) * d * d])?;
        let _ = writeln!(ex_csv, "{kind},{i},{:.4}", scores[*i]);
    }
    cryoforge_io::npy::write_npy_f32(a.out.join("examples.npy"), &[kb + kw, d, d], &ex)?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("examples.csv"), ex_csv.as_bytes())?;
    let mut hist = [0usize; 20];
    for &s in &scores {
        hist[((s.clamp(0.0, 1.0) * 20.0) as usize).min(19)] += 1;
    }
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
    write_json_atomic(
        &a.out.join("summary.json"),
        &serde_json::json!({
            "particles": n,
            "weights": a.model.weights.display().to_string(),
            "head": format!("{:?}", model.head.as_ref().map(|h| h.kind)),
            "mean_score": mean,
            "above_0.5": scores.iter().filter(|&&s| s > 0.5).count(),
            "histogram_20_bins": hist.to_vec(),
            "top": top,
            "seconds": dt,
            "particles_per_s": n as f64 / dt.max(1e-9),
        }),
    )?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        ctx.say(format!("warning: report.html not written: {e}"));
    }
    ctx.done(format!(
        "scored {n} particles in {dt:.1} s ({:.1}/s), mean score {mean:.3}: wrote {}",
        n as f64 / dt.max(1e-9),
        a.out.display()
    ));
    Ok(())
}
