//! Training loop, run-directory I/O and latent extraction.
//!
//! Run directory (see the repository's run-directory contract): run.toml (written by the
//! caller through [`write_run_toml`]), metrics.csv / metrics.jsonl (one row every
//! `log_every` steps: `step,epoch,images,elapsed_s,loss,recon,kl,continuity,clash,elastic,
//! beta,edges_kept`), checkpoints/step_XXXXXXXX (nn::checkpoint; the newest two kept),
//! weights.safetensors (final), reference.pdb.

use crate::config::StarConfig;
use crate::model::StarModel;
use crate::reference::Reference;
use crate::{Result, StarError};
use candle_core::{DType, Device, Tensor};
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::data::{DataLoader, LoaderConfig};
use cryoforge_nn::loss::{
    circular_mask, clash_loss_dp, continuity_loss, edge_keep_mask_dp, elastic_loss, kl_free_bits_dp,
    CorrelationLoss, PairList, Schedule,
};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use cryoforge_nn::parallel::DataParallel;
use cryoforge_nn::{Band, Renderer};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Running losses reported to the caller (progress bar) and written to metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Losses {
    pub loss: f64,
    pub recon: f64,
    pub kl: f64,
    pub continuity: f64,
    pub clash: f64,
    pub elastic: f64,
    pub beta: f64,
    pub edges_kept: f64,
}

impl Losses {
    fn add(&mut self, o: &Losses) {
        self.loss += o.loss;
        self.recon += o.recon;
        self.kl += o.kl;
        self.continuity += o.continuity;
        self.clash += o.clash;
        self.elastic += o.elastic;
        self.beta += o.beta;
        self.edges_kept += o.edges_kept;
    }
    fn scaled(&self, s: f64) -> Losses {
        Losses {
            loss: self.loss * s,
            recon: self.recon * s,
            kl: self.kl * s,
            continuity: self.continuity * s,
            clash: self.clash * s,
            elastic: self.elastic * s,
            beta: self.beta * s,
            edges_kept: self.edges_kept * s,
        }
    }
}

/// Progress of training, passed to the callback after every step.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub images: u64,
    pub elapsed_s: f64,
    /// Mean over the last `log_every` steps.
    pub running: Losses,
}

/// RMSD-free signs that a run is failing, measured on the same held batches (the first
/// [`FIT_CHECK_BATCHES`] of epoch 0) before training and at the end (and at a quarter of the
/// steps, to warn early).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FitCheck {
    pub step: u64,
    pub images: usize,
    /// Correlation loss (−mean correlation, lower is better) of the unmoved reference and of
    /// the model's structures at z = μ on the same images.
    pub recon_reference: f64,
    pub recon_model: f64,
    /// Largest over latent dimensions of var(μ) over the images ÷ mean posterior variance:
    /// near 0 when the encoder ignores the images (a collapsed latent).
    pub latent_signal: f64,
    pub warnings: Vec<String>,
}

/// Batches of the fit check (of `batch_size` each, at most the epoch).
pub const FIT_CHECK_BATCHES: usize = 16;

/// `latent_signal` below this is a collapsed latent.
const COLLAPSED_LATENT: f64 = 0.01;

impl FitCheck {
    fn judge(&mut self) {
        self.warnings.clear();
        if self.recon_model >= self.recon_reference {
            self.warnings.push(format!(
                "at step {}: the deformed structures fit the images no better than the unmoved reference \
                 (correlation loss {:.6} vs {:.6}); the run is failing: train longer, raise --lr, or check \
                 the poses, CTF and --invert",
                self.step, self.recon_model, self.recon_reference
            ));
        }
        if self.latent_signal < COLLAPSED_LATENT {
            self.warnings.push(format!(
                "at step {}: the latent has collapsed (var(μ) / posterior variance {:.2e} < {COLLAPSED_LATENT}): \
                 the encoder ignores the images",
                self.step, self.latent_signal
            ));
        }
    }
}

/// Correlation losses of the reference (when `with_reference`) and of the model at z = μ,
/// and the latent signal, on `batches`.
#[allow(clippy::too_many_arguments)]
fn fit_check(
    model: &StarModel,
    ren: &Renderer,
    corr: &CorrelationLoss,
    mask: &[f32],
    cfg: &StarConfig,
    batches: &[cryoforge_nn::data::Batch],
    amps: &Tensor,
    sigma: &Tensor,
    reference_loss: Option<f64>,
    step: u64,
    device: &Device,
) -> Result<FitCheck> {
    let (mut sum_ref, mut sum_model, mut n) = (0.0, 0.0, 0usize);
    let mut mus: Vec<f32> = Vec::new();
    let mut post_var = vec![0.0f64; cfg.zdim];
    for batch in batches.iter() {
        let b = batch.len();
        let mut images = batch.images.clone();
        let (data, enc_in) = batch_inputs(ren, mask, cfg, &mut images, batch.d, device)?;
        let (rots, shifts) =
            batch.pose_tensors(device)?.ok_or_else(|| StarError::msg("batch without poses"))?;
        let transfer = match &batch.ctf {
            Some(c) => ren.ctf_transfer(c)?,
            None => ren.identity_transfer(b)?,
        };
        let (mu, logvar) = model.encode(&enc_in)?;
        let pred = ren.render(&model.structures(&mu)?, amps, sigma, &rots, &shifts, &transfer)?;
        sum_model += corr.loss(&pred, &data)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * b as f64;
        if reference_loss.is_none() {
            let pred = ren.render(&model.reference_batch(b)?, amps, sigma, &rots, &shifts, &transfer)?;
            sum_ref += corr.loss(&pred, &data)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * b as f64;
        }
        mus.extend(mu.flatten_all()?.to_vec1::<f32>()?);
        let v: Vec<f32> = logvar.exp()?.flatten_all()?.to_vec1()?;
        for (i, x) in v.iter().enumerate() {
            post_var[i % cfg.zdim] += *x as f64;
        }
        n += b;
    }
    // Sums over the held batches of every rank (data-parallel runs shard them).
    let z = cfg.zdim;
    let mut sums = vec![0f64; 3 + 3 * z];
    (sums[0], sums[1], sums[2]) = (sum_ref, sum_model, n as f64);
    for (i, &v) in mus.iter().enumerate() {
        sums[3 + i % z] += v as f64;
        sums[3 + z + i % z] += (v as f64) * (v as f64);
    }
    sums[3 + 2 * z..].copy_from_slice(&post_var);
    DataParallel::world().all_reduce_f64(&mut sums);
    let (sum_ref, sum_model, n) = (sums[0], sums[1], sums[2] as usize);
    let nf = n.max(1) as f64;
    let mut latent_signal = 0.0f64;
    for k in 0..z {
        let m = sums[3 + k] / nf;
        let var = (sums[3 + z + k] / nf - m * m).max(0.0);
        latent_signal = latent_signal.max(var / (sums[3 + 2 * z + k] / nf).max(1e-12));
    }
    let mut f = FitCheck {
        step,
        images: n,
        recon_reference: reference_loss.unwrap_or(sum_ref / nf),
        recon_model: sum_model / nf,
        latent_signal,
        warnings: Vec::new(),
    };
    f.judge();
    Ok(f)
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOutcome {
    pub steps: u64,
    pub images: u64,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    pub ref_init_steps: u64,
    pub ref_init_loss: f64,
    pub final_losses: Losses,
    pub lowpass_a: f64,
    /// The fit check at the end of the run (its warnings were also logged).
    pub fit_check: FitCheck,
}

/// Device of the preparation and analysis helpers (statistics, encoding for analysis):
/// they run once per run, on the CPU; training runs on the device given to [`train`].
fn dev() -> Device {
    Device::Cpu
}

fn resolved_lowpass(cfg: &StarConfig) -> f64 {
    cfg.lowpass_a.unwrap_or(10.0)
}

/// Low-pass (Å) where FSC(Gaussian density of the reference, consensus map) = 0.5
/// (paper Appendix A). The map must be D³ at the particles' pixel size, in the box frame.
pub fn lowpass_from_consensus(
    reference: &Reference,
    sigma_a: f64,
    d: usize,
    apix_a: f64,
    map: &Path,
) -> Result<f64> {
    let f = cryoforge_io::mrc::MrcFile::open(map)?;
    if (f.nx(), f.ny(), f.nz()) != (d, d, d) {
        return Err(StarError::msg(format!(
            "{}: consensus map is {}×{}×{}, the particles are {d} px",
            map.display(),
            f.nx(),
            f.ny(),
            f.nz()
        )));
    }
    let cons = f.read_volume()?;
    let amps: Vec<f64> = reference.amps.iter().map(|&a| a as f64).collect();
    let g = cryoforge_sim::GaussianModel::new(reference.coords.clone(), amps, sigma_a)
        .map_err(|e| StarError::msg(format!("reference: {e}")))?;
    let gv = g.render_volume(d, apix_a).map_err(|e| StarError::msg(format!("reference density: {e}")))?;
    let fsc = cryoforge_core::fsc::fsc_volumes(&gv, &cons, d, apix_a);
    Ok(fsc.resolution_at(0.5).max(2.0 * apix_a))
}

/// Resolves the data-dependent settings before training: the low-pass (from `consensus`
/// when `lowpass_a` is unset) and the encoder input scale (1/std of the first ≤ 512
/// low-passed, masked images).
pub fn prepare(
    stack: &ParticleStack,
    reference: &Reference,
    cfg: &mut StarConfig,
    consensus: Option<&Path>,
) -> Result<()> {
    cfg.check()?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if cfg.lowpass_a.is_none() {
        cfg.lowpass_a = Some(match consensus {
            Some(m) => lowpass_from_consensus(reference, cfg.sigma_a, d, apix, m)?,
            None => 10.0,
        });
    }
    if cfg.input_scale.is_none() {
        let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: resolved_lowpass(cfg) }, &dev())?;
        let mask = circular_mask(d, cfg.mask_ratio);
        let n = stack.len().min(512);
        let mut img = vec![0f32; d * d];
        let (mut s, mut s2, mut cnt) = (0f64, 0f64, 0f64);
        for i in 0..n {
            stack.read_image(i, &mut img)?;
            let lp = ren.lowpass_images(&img)?;
            for (v, m) in lp.iter().zip(&mask) {
                if *m > 0.0 {
                    s += *v as f64;
                    s2 += (*v as f64).powi(2);
                    cnt += 1.0;
                }
            }
        }
        let var = (s2 / cnt.max(1.0) - (s / cnt.max(1.0)).powi(2)).max(0.0);
        cfg.input_scale = Some(if var > 0.0 { 1.0 / var.sqrt() } else { 1.0 });
    }
    Ok(())
}

/// Writes RUN/run.toml: `[run]` (command, method, version, started, seed), `[settings]`
/// (every resolved setting), `[data]` (particles, n_particles, box, apix, reference).
pub fn write_run_toml(
    run: &Path,
    command: &str,
    cfg: &StarConfig,
    particles: &Path,
    n: usize,
    d: usize,
    apix: f64,
    extra_data: &[(&str, String)],
) -> Result<()> {
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut root = toml::map::Map::new();
    let mut r = toml::map::Map::new();
    r.insert("command".into(), toml::Value::String(command.into()));
    r.insert("method".into(), toml::Value::String("cryostar".into()));
    r.insert("version".into(), toml::Value::String(env!("CARGO_PKG_VERSION").into()));
    r.insert("started".into(), toml::Value::String(format!("unix:{started}")));
    r.insert("seed".into(), toml::Value::Integer(cfg.seed as i64));
    root.insert("run".into(), toml::Value::Table(r));
    let s = toml::Value::try_from(cfg).map_err(|e| StarError::msg(format!("settings: {e}")))?;
    root.insert("settings".into(), s);
    let mut dt = toml::map::Map::new();
    dt.insert("particles".into(), toml::Value::String(particles.display().to_string()));
    dt.insert("n_particles".into(), toml::Value::Integer(n as i64));
    dt.insert("box".into(), toml::Value::Integer(d as i64));
    dt.insert("apix".into(), toml::Value::Float(apix));
    for (k, v) in extra_data {
        dt.insert((*k).into(), toml::Value::String(v.clone()));
    }
    root.insert("data".into(), toml::Value::Table(dt));
    let text = toml::to_string(&toml::Value::Table(root)).map_err(|e| StarError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&run.join("run.toml"), text.as_bytes())?;
    Ok(())
}

/// RUN/run.toml read back: the settings and the `[data]` table.
pub fn read_run_toml(run: &Path) -> Result<(StarConfig, toml::map::Map<String, toml::Value>)> {
    let p = run.join("run.toml");
    let t = std::fs::read_to_string(&p)
        .map_err(|e| StarError::msg(format!("{}: cannot read: {e}", p.display())))?;
    let v: toml::Value = toml::from_str(&t).map_err(|e| StarError::msg(format!("{}: {e}", p.display())))?;
    let settings = v
        .get("settings")
        .cloned()
        .ok_or_else(|| StarError::msg(format!("{}: no [settings]", p.display())))?;
    let cfg: StarConfig =
        settings.try_into().map_err(|e| StarError::msg(format!("{}: [settings]: {e}", p.display())))?;
    let data = v
        .get("data")
        .and_then(|d| d.as_table())
        .cloned()
        .ok_or_else(|| StarError::msg(format!("{}: no [data]", p.display())))?;
    Ok((cfg, data))
}

/// Images of a batch → (data [B, D, D] low-passed, encoder input [B, D²]).
fn batch_inputs(
    ren: &Renderer,
    mask: &[f32],
    cfg: &StarConfig,
    images: &mut [f32],
    d: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    if cfg.invert {
        images.iter_mut().for_each(|v| *v = -*v);
    }
    let lp = ren.lowpass_images(images)?;
    let b = lp.len() / (d * d);
    let scale = cfg.input_scale.unwrap_or(1.0) as f32;
    let enc: Vec<f32> =
        lp.chunks_exact(d * d).flat_map(|im| im.iter().zip(mask).map(move |(v, m)| v * m * scale)).collect();
    Ok((Tensor::from_vec(lp, (b, d, d), dev)?, Tensor::from_vec(enc, (b, d * d), dev)?))
}

fn newest_checkpoint(run: &Path) -> Option<PathBuf> {
    checkpoint::newest(run)
}

fn save_checkpoint(run: &Path, model: &StarModel, opt: &Adam, step: u64, rng: &TrainRng) -> Result<()> {
    Ok(checkpoint::save_rotating(run, 2, &model.vars(), Some(opt), step, rng)?)
}

fn normal_tensor(rng: &mut TrainRng, shape: (usize, usize), dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// Reference-init warm-up: fit the decoder to zero displacement for z ~ N(0, I).
/// Returns (steps, final mean loss).
pub fn reference_init(
    model: &StarModel,
    cfg: &StarConfig,
    max_steps: u64,
    rng: &mut TrainRng,
) -> Result<(u64, f64)> {
    let mut opt =
        Adam::new(vec![ParamGroup::new("decoder", model.decoder_vars(), 1e-3)], AdamConfig::adam())?;
    let mut last: Vec<f64> = Vec::new();
    let mut mean = f64::INFINITY;
    for s in 0..max_steps {
        let z = normal_tensor(rng, (cfg.batch_size, cfg.zdim), model.device())?;
        let loss = model.decode(&z)?.sqr()?.mean_all()?;
        last.push(loss.to_scalar::<f32>()? as f64);
        if last.len() > 20 {
            last.remove(0);
        }
        mean = last.iter().sum::<f64>() / last.len() as f64;
        if last.len() == 20 && mean < cfg.ref_init_tol {
            return Ok((s, mean));
        }
        opt.backward_step(&loss)?;
    }
    Ok((max_steps, mean))
}

/// Trains into `run` (created; reference.pdb, metrics, checkpoints, weights.safetensors).
/// `cfg` must have been through [`prepare`]. With `resume`, continues from the newest
/// checkpoint in RUN/checkpoints. `on_progress` is called after every step. `device`:
/// where the model and each batch live (`cryoforge_nn::parse_device`; the renderer uses its
/// fused CPU kernels on the CPU and candle ops elsewhere).
pub fn train(
    stack: Arc<ParticleStack>,
    reference: &Reference,
    cfg: &StarConfig,
    run: &Path,
    resume: bool,
    device: &Device,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome> {
    cfg.check()?;
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    let n = stack.len();
    if n == 0 {
        return Err(StarError::msg("no particles"));
    }
    let poses = stack.poses.as_ref().ok_or_else(|| {
        StarError::msg(format!("{}: particles have no poses (give --poses)", stack.path.display()))
    })?;
    if poses.len() != n {
        return Err(StarError::msg("poses and particles differ in number"));
    }
    // Data parallel over MPI ranks (crate nn::parallel): each rank trains on its shard of every
    // global batch; rank 0 writes metrics, checkpoints and weights.
    let dp = DataParallel::world();
    let root = dp.is_root();
    if root {
        std::fs::create_dir_all(run)
            .map_err(|e| StarError::msg(format!("{}: cannot create: {e}", run.display())))?;
    }
    let lowpass = resolved_lowpass(cfg);
    let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: lowpass }, device)?;
    let corr = CorrelationLoss::new(d, cfg.mask_ratio, 1e-8, device)?;
    let mask = circular_mask(d, cfg.mask_ratio);
    let n_in = corr.n_in();
    let model = StarModel::new(cfg, d, &reference.flat_f32(), device)?;
    model.reseed(cfg.seed)?;
    let amps = Tensor::from_slice(&reference.amps, reference.len(), device)?;
    let sigma = Tensor::new(&[cfg.sigma_a as f32], device)?;
    let cont_pairs = PairList::new(&reference.consecutive, device)?;
    let cont_d0 = Tensor::from_slice(&reference.consecutive_d0, reference.consecutive_d0.len(), device)?;
    let clash_pairs = PairList::new(&reference.clash, device)?;
    let en_pairs = PairList::new(&reference.elastic, device)?;
    let en_d0 = Tensor::from_slice(&reference.elastic_d0, reference.elastic_d0.len(), device)?;
    let w = cfg.loss_weights;
    let (w_clash, w_en) = if cfg.no_elastic { (0.0, 0.0) } else { (w.clash, w.elastic) };
    let beta = Schedule::Linear { start: 0.0, end: cfg.kl_max, steps: cfg.kl_warmup_steps };

    let mut opt = Adam::new(
        vec![ParamGroup::new("model", model.vars(), cfg.lr).with_weight_decay(cfg.weight_decay)],
        AdamConfig::adamw(),
    )?;
    let mut rng = TrainRng::seed_from_u64(cfg.seed ^ 0x5354_4152);
    let loader = DataLoader::new(
        stack.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            shuffle: true,
            drop_last: n > cfg.batch_size,
            prefetch: 2,
            cache_limit_bytes: Some(4 << 30),
            shard: (dp.rank(), dp.size()),
        },
    )?;
    let nb = loader.n_batches().max(1) as u64;
    let held: Vec<cryoforge_nn::data::Batch> =
        loader.epoch(0).take(FIT_CHECK_BATCHES).collect::<std::result::Result<_, _>>()?;
    let total = cfg.total_steps(n);
    let lr = cfg.lr_at(total);
    let mut step = 0u64;
    let (mut ref_steps, mut ref_loss) = (0, 0.0);
    let ck = if resume { newest_checkpoint(run) } else { None };
    if resume && ck.is_none() {
        return Err(StarError::msg(format!(
            "--resume: no checkpoint in {}",
            run.join("checkpoints").display()
        )));
    }
    if let Some(ck) = &ck {
        let r = checkpoint::load(ck, &model.vars(), Some(&mut opt))?;
        step = r.step;
        rng = r.rng;
    } else {
        let max = (cfg.ref_init_epochs * nb as f64).ceil() as u64;
        // The same z on every rank (the same rng): every rank takes the same steps.
        (ref_steps, ref_loss) = reference_init(&model, cfg, max, &mut rng)?;
        if root {
            let _ = std::fs::remove_file(run.join("metrics.csv"));
            let _ = std::fs::remove_file(run.join("metrics.jsonl"));
        }
    }
    let header = "step,epoch,images,elapsed_s,loss,recon,kl,continuity,clash,elastic,beta,edges_kept\n";
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join(name))
            .map_err(|e| StarError::msg(format!("{}: {e}", run.join(name).display())))
    };
    let mut files = if root {
        let mut csv = open("metrics.csv")?;
        if csv.metadata().map(|m| m.len() == 0).unwrap_or(true) {
            csv.write_all(header.as_bytes()).map_err(|e| StarError::msg(e.to_string()))?;
        }
        Some((csv, open("metrics.jsonl")?))
    } else {
        None
    };
    let vars = model.vars();

    // The reference's loss on the held batches, before any training (on resume too: it
    // depends only on the data).
    let check0 = fit_check(&model, &ren, &corr, &mask, cfg, &held, &amps, &sigma, None, step, device)?;
    let ref_recon = check0.recon_reference;
    let early = (total / 4).max(1);
    let t0 = Instant::now();
    let mut images = step * cfg.batch_size as u64;
    let mut acc = Losses::default();
    let mut acc_n = 0u64;
    let mut last = Losses::default();
    let start_step = step;
    'outer: while step < total {
        let epoch = step / nb;
        let skip = (step % nb) as usize;
        for batch in loader.epoch(epoch).skip(skip) {
            if step >= total {
                break 'outer;
            }
            let mut batch = batch?;
            let b = batch.len();
            let (data, enc_in) = batch_inputs(&ren, &mask, cfg, &mut batch.images, d, device)?;
            let (rots, shifts) =
                batch.pose_tensors(device)?.ok_or_else(|| StarError::msg("batch without poses"))?;
            let transfer = match &batch.ctf {
                Some(c) => ren.ctf_transfer(c)?,
                None => ren.identity_transfer(b)?,
            };
            let (mu, logvar) = model.encode(&enc_in)?;
            // ε for the global batch from the shared rng, this shard's rows: the same draws
            // as one process would make, and the same rng state on every rank.
            let eps = normal_tensor(&mut rng, (batch.global_len, cfg.zdim), device)?.narrow(
                0,
                batch.shard_start,
                b,
            )?;
            let z = (&mu + (logvar.affine(0.5, 0.0)?.exp()? * eps)?)?;
            // Every term is this shard's contribution to the global batch loss (share = b/B).
            let share = batch.share();
            let coords = model.structures(&z)?;
            let pred = ren.render(&coords, &amps, &sigma, &rots, &shifts, &transfer)?;
            let recon = corr.loss(&pred, &data)?.affine(share, 0.0)?;
            let kl = kl_free_bits_dp(&mu, &logvar, cfg.free_bits, share, &dp)?;
            let bval = beta.value(step) * w.kl;
            let cont = continuity_loss(&coords, &cont_pairs, &cont_d0)?.affine(share, 0.0)?;
            let mut total_loss = ((recon.affine(w.recon, 0.0)? + kl.affine(bval / n_in, 0.0)?)?
                + cont.affine(w.continuity, 0.0)?)?;
            let mut l = Losses { beta: bval, ..Default::default() };
            if w_clash > 0.0 {
                let c = clash_loss_dp(&coords, &clash_pairs, cfg.clash_cutoff_a, &dp)?;
                l.clash = c.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                total_loss = (total_loss + c.affine(w_clash, 0.0)?)?;
            }
            if w_en > 0.0 && !en_pairs.is_empty() {
                let dists = en_pairs.distances(&coords)?;
                let keep = edge_keep_mask_dp(&dists, cfg.keep_ratio, &dp)?;
                l.edges_kept = keep.sum_all()?.to_scalar::<f32>()? as f64 / en_pairs.len() as f64;
                let e = elastic_loss(&coords, &en_pairs, &en_d0, Some(&keep))?.affine(share, 0.0)?;
                l.elastic = e.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                total_loss = (total_loss + e.affine(w_en, 0.0)?)?;
            }
            opt.set_lr(0, lr.value(step));
            (l.loss, _) = dp.backward_step(&mut opt, &total_loss, &vars)?;
            l.recon = recon.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            l.kl = kl.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            l.continuity = cont.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if dp.is_distributed() {
                let mut v = [l.recon, l.kl, l.continuity, l.clash, l.elastic];
                dp.all_reduce_f64(&mut v);
                [l.recon, l.kl, l.continuity, l.clash, l.elastic] = v;
            }
            acc.add(&l);
            acc_n += 1;
            step += 1;
            images += batch.global_len as u64;
            let elapsed = t0.elapsed().as_secs_f64();
            if step.is_multiple_of(cfg.log_every.max(1)) || step == total {
                last = acc.scaled(1.0 / acc_n.max(1) as f64);
                acc = Losses::default();
                acc_n = 0;
                let row = format!(
                    "{step},{},{images},{elapsed:.3},{},{},{},{},{},{},{},{}\n",
                    step / nb,
                    last.loss,
                    last.recon,
                    last.kl,
                    last.continuity,
                    last.clash,
                    last.elastic,
                    last.beta,
                    last.edges_kept
                );
                if let Some((csv, jsonl)) = files.as_mut() {
                    csv.write_all(row.as_bytes()).map_err(|e| StarError::msg(e.to_string()))?;
                    let mut j = serde_json::to_value(&last).map_err(|e| StarError::msg(e.to_string()))?;
                    j["step"] = step.into();
                    j["epoch"] = (step / nb).into();
                    j["images"] = images.into();
                    j["elapsed_s"] = elapsed.into();
                    writeln!(jsonl, "{j}").map_err(|e| StarError::msg(e.to_string()))?;
                }
            }
            if root && step.is_multiple_of(cfg.checkpoint_every.max(1)) {
                save_checkpoint(run, &model, &opt, step, &rng)?;
            }
            if step == early && step < total {
                let c = fit_check(
                    &model,
                    &ren,
                    &corr,
                    &mask,
                    cfg,
                    &held,
                    &amps,
                    &sigma,
                    Some(ref_recon),
                    step,
                    device,
                )?;
                for w in c.warnings.iter().filter(|_| root) {
                    tracing::warn!("{w}");
                }
            }
            on_progress(&Progress {
                step,
                total_steps: total,
                epoch: step / nb,
                images,
                elapsed_s: elapsed,
                running: if acc_n > 0 { acc.scaled(1.0 / acc_n as f64) } else { last.clone() },
            });
        }
    }
    if root {
        save_checkpoint(run, &model, &opt, step, &rng)?;
    }
    let check =
        fit_check(&model, &ren, &corr, &mask, cfg, &held, &amps, &sigma, Some(ref_recon), step, device)?;
    for w in check.warnings.iter().filter(|_| root) {
        tracing::warn!("{w}");
    }
    if root {
        let weights: std::collections::HashMap<String, Tensor> =
            model.vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        let wp = run.join("weights.safetensors");
        let tmp = run.join("weights.safetensors.tmp");
        candle_core::safetensors::save(&weights, &tmp)?;
        std::fs::rename(&tmp, &wp).map_err(|e| StarError::msg(format!("{}: {e}", wp.display())))?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let done = (step - start_step) * cfg.batch_size as u64;
    Ok(TrainOutcome {
        steps: step,
        images,
        elapsed_s: elapsed,
        images_per_s: done as f64 / elapsed.max(1e-9),
        ref_init_steps: ref_steps,
        ref_init_loss: ref_loss,
        final_losses: last,
        lowpass_a: lowpass,
        fit_check: check,
    })
}

/// A trained run loaded back: settings, reference and model with the final weights.
pub struct LoadedRun {
    pub cfg: StarConfig,
    pub data: toml::map::Map<String, toml::Value>,
    pub reference: Reference,
    pub model: StarModel,
}

/// Loads RUN (run.toml, reference.pdb, weights.safetensors — or the newest checkpoint when
/// training was interrupted).
pub fn load_run(run: &Path) -> Result<LoadedRun> {
    let (cfg, data) = read_run_toml(run)?;
    let d =
        data.get("box").and_then(|v| v.as_integer()).ok_or_else(|| {
            StarError::msg(format!("{}: [data] box missing", run.join("run.toml").display()))
        })? as usize;
    let reference = Reference::read(
        &run.join("reference.pdb"),
        cfg.elastic_cutoff_a,
        cfg.clash_pair_min_a,
        cfg.clash_pair_max_a,
    )?;
    let model = StarModel::new(&cfg, d, &reference.flat_f32(), &dev())?;
    let wp = run.join("weights.safetensors");
    let vars = model.vars();
    if wp.is_file() {
        let w = candle_core::safetensors::load(&wp, &dev())?;
        for (name, v) in &vars {
            let t = w
                .get(name)
                .ok_or_else(|| StarError::msg(format!("{}: lacks parameter {name}", wp.display())))?;
            if t.dims() != v.dims() {
                return Err(StarError::msg(format!(
                    "{}: parameter {name} has shape {:?}",
                    wp.display(),
                    t.dims()
                )));
            }
            v.set(t)?;
        }
    } else if let Some(ck) = newest_checkpoint(run) {
        checkpoint::load(&ck, &vars, None)?;
    } else {
        return Err(StarError::msg(format!("{}: no weights.safetensors and no checkpoint", run.display())));
    }
    Ok(LoadedRun { cfg, data, reference, model })
}

/// Encoder means μ for every particle of `stack`, in particle order, [N·zdim].
pub fn encode_stack(model: &StarModel, cfg: &StarConfig, stack: &ParticleStack) -> Result<Vec<f32>> {
    let d = stack.box_px()?;
    if d != model.d {
        return Err(StarError::msg(format!("particles are {d} px, the model was trained on {} px", model.d)));
    }
    let apix = stack.apix_a()?;
    let ren = Renderer::new(d, apix, Band::Resolution { resolution_a: resolved_lowpass(cfg) }, &dev())?;
    let mask = circular_mask(d, cfg.mask_ratio);
    let n = stack.len();
    let mut out = Vec::with_capacity(n * cfg.zdim);
    let bs = 256;
    let mut imgs = vec![0f32; bs * d * d];
    let mut i = 0;
    while i < n {
        let b = bs.min(n - i);
        for k in 0..b {
            stack.read_image(i + k, &mut imgs[k * d * d..(k + 1) * d * d])?;
        }
        let (_, enc) = batch_inputs(&ren, &mask, cfg, &mut imgs[..b * d * d], d, &dev())?;
        let (mu, _) = model.encode(&enc)?;
        out.extend(mu.flatten_all()?.to_vec1::<f32>()?);
        i += b;
    }
    Ok(out)
}

#[cfg(test)]
mod fit_check_tests {
    use super::FitCheck;

    #[test]
    fn warnings_name_the_failure() {
        let mut f = FitCheck {
            step: 10,
            images: 64,
            recon_reference: -0.5,
            recon_model: -0.6,
            latent_signal: 3.0,
            ..Default::default()
        };
        f.judge();
        assert!(f.warnings.is_empty());
        f.recon_model = -0.5;
        f.judge();
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("no better than the unmoved reference"), "{}", f.warnings[0]);
        f.latent_signal = 1e-4;
        f.judge();
        assert_eq!(f.warnings.len(), 2);
        assert!(f.warnings[1].contains("collapsed"));
    }
}
