//! `cryoforge ief`: Cryo-IEF particle features.

use crate::common::{ensure_parent, Ctx, ParticleArgs};
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
    Features(Box<FeaturesArgs>),
    Knn(KnnArgs),
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
        Sub::Features(f) => features(*f, ctx),
        Sub::Knn(k) => knn(k, ctx),
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
