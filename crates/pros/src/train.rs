//! Training of the cryoPROS HVAE and the run directory.
//!
//! RUN/run.toml (`[run]`, `[settings]` = [`ProsConfig`], `[data]`: particles, n_particles,
//! box, apix, volume, projector), RUN/reference.mrc (the reference as given), metrics.csv
//! and metrics.jsonl (`step,epoch,images,elapsed_s,loss,mse,kl,beta,grad_norm,skipped`, one
//! row every `log_every` steps, means over them), checkpoints/step_XXXXXXXX (the newest
//! two), weights.safetensors, train.json (the outcome, with the collapse diagnosis).

use crate::condition::{Conditioner, ProjectorKind};
use crate::config::ProsConfig;
use crate::model::{mse, normal, pose_vectors, scalar_f64, Hvae};
use crate::{ProsError, Result};
use candle_core::{Device, Tensor};
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::data::{DataLoader, LoaderConfig};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup, StepOutcome};
use rand::SeedableRng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// KL per image (nats, summed over layers and latent elements) below which the posterior
/// has collapsed onto the prior: the latents carry nothing of the image (the reference's
/// known failure shows KL ≈ 1e-9 per pixel).
pub const COLLAPSED_KL_NATS: f64 = 1e-2;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Losses {
    pub loss: f64,
    pub mse: f64,
    /// KL per pixel (Σ layers KL / (B·D²)), the quantity β multiplies.
    pub kl: f64,
    pub beta: f64,
    pub grad_norm: f64,
    /// Steps skipped in the window (non-finite loss or gradient norm ≥ the skip norm).
    pub skipped: f64,
}

impl Losses {
    fn add(&mut self, o: &Losses) {
        self.loss += o.loss;
        self.mse += o.mse;
        self.kl += o.kl;
        self.beta += o.beta;
        self.grad_norm += o.grad_norm;
        self.skipped += o.skipped;
    }
    fn mean(&self, n: u64) -> Losses {
        let s = 1.0 / n.max(1) as f64;
        Losses {
            loss: self.loss * s,
            mse: self.mse * s,
            kl: self.kl * s,
            beta: self.beta * s,
            grad_norm: self.grad_norm * s,
            skipped: self.skipped,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub images: u64,
    pub elapsed_s: f64,
    pub running: Losses,
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOutcome {
    pub steps: u64,
    pub images: u64,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    pub skipped_steps: u64,
    pub n_params: usize,
    pub final_losses: Losses,
    /// KL per image (nats) of each stochastic layer at the end, finest first.
    pub kl_per_layer_nats: Vec<f64>,
    pub kl_per_image_nats: f64,
    /// Set when the posterior collapsed (the message says so).
    pub collapse: Option<String>,
}

/// The reference volume (D³ at the particles' pixel size) from an MRC file.
pub fn read_volume(path: &Path, d: usize) -> Result<Vec<f32>> {
    let f = cryoforge_io::mrc::MrcFile::open(path)?;
    if (f.nx(), f.ny(), f.nz()) != (d, d, d) {
        return Err(ProsError::msg(format!(
            "{}: the volume is {}×{}×{} but the particles are {d}×{d}: give a reference in the particles' box",
            path.display(),
            f.nx(),
            f.ny(),
            f.nz()
        )));
    }
    Ok(f.read_volume()?)
}

/// Checks the particle set: poses present, box and pixel size known.
pub fn check_stack(stack: &ParticleStack) -> Result<(usize, f64)> {
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if stack.is_empty() {
        return Err(ProsError::msg(format!("{}: no particles", stack.path.display())));
    }
    match &stack.poses {
        Some(p) if p.len() == stack.len() => {}
        _ => {
            return Err(ProsError::msg(format!(
                "{}: the particles have no poses (cryoPROS trains on posed particles: give a STAR/.cs with \
                 angles, or --poses)",
                stack.path.display()
            )))
        }
    }
    Ok((d, apix))
}

/// Resolves `cfg.proj_scale` from the data when unset: image_scale × std(particles) /
/// std(conditioning projections), over the first ≤ 256 particles.
pub fn prepare(stack: &ParticleStack, cond: &Conditioner, cfg: &mut ProsConfig) -> Result<()> {
    if cfg.proj_scale.is_some() {
        return Ok(());
    }
    let d = cond.box_px();
    let n = stack.len().min(256);
    let poses = stack.poses.as_ref().ok_or_else(|| ProsError::msg("particles without poses"))?;
    let ctfs = stack.ctf.as_deref().map(|c| &c[..n]);
    let proj = cond.batch(&poses[..n], ctfs)?;
    let mut img = vec![0f32; d * d];
    let (mut s, mut s2) = (0f64, 0f64);
    for i in 0..n {
        stack.read_image(i, &mut img)?;
        for &v in &img {
            s += v as f64;
            s2 += (v as f64) * (v as f64);
        }
    }
    let m = (n * d * d) as f64;
    let std_img = (s2 / m - (s / m).powi(2)).max(0.0).sqrt();
    let pm = proj.iter().map(|&v| v as f64).sum::<f64>() / proj.len() as f64;
    let std_proj = (proj.iter().map(|&v| (v as f64 - pm).powi(2)).sum::<f64>() / proj.len() as f64).sqrt();
    if !(std_proj > 0.0 && std_img > 0.0) {
        return Err(ProsError::msg(
            "the reference's projections (or the particles) are constant: check the volume and the particles",
        ));
    }
    cfg.proj_scale = Some(cfg.image_scale * std_img / std_proj);
    Ok(())
}

/// Writes RUN/run.toml.
pub fn write_run_toml(
    run: &Path,
    command: &str,
    cfg: &ProsConfig,
    data: &[(&str, toml::Value)],
) -> Result<()> {
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut root = toml::map::Map::new();
    let mut r = toml::map::Map::new();
    r.insert("command".into(), command.into());
    r.insert("method".into(), "cryopros".into());
    r.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    r.insert("started".into(), format!("unix:{started}").into());
    r.insert("seed".into(), toml::Value::Integer(cfg.seed as i64));
    root.insert("run".into(), toml::Value::Table(r));
    root.insert(
        "settings".into(),
        toml::Value::try_from(cfg).map_err(|e| ProsError::msg(format!("settings: {e}")))?,
    );
    let mut dt = toml::map::Map::new();
    for (k, v) in data {
        dt.insert((*k).into(), v.clone());
    }
    root.insert("data".into(), toml::Value::Table(dt));
    let text = toml::to_string(&toml::Value::Table(root)).map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&run.join("run.toml"), text.as_bytes())?;
    Ok(())
}

/// RUN/run.toml read back: settings and `[data]`.
pub fn read_run_toml(run: &Path) -> Result<(ProsConfig, toml::map::Map<String, toml::Value>)> {
    let p = run.join("run.toml");
    let t = std::fs::read_to_string(&p)
        .map_err(|e| ProsError::msg(format!("{}: cannot read: {e}", p.display())))?;
    let v: toml::Value = toml::from_str(&t).map_err(|e| ProsError::msg(format!("{}: {e}", p.display())))?;
    let cfg: ProsConfig = v
        .get("settings")
        .cloned()
        .ok_or_else(|| ProsError::msg(format!("{}: no [settings]", p.display())))?
        .try_into()
        .map_err(|e| ProsError::msg(format!("{}: [settings]: {e}", p.display())))?;
    let data = v
        .get("data")
        .and_then(|d| d.as_table())
        .cloned()
        .ok_or_else(|| ProsError::msg(format!("{}: no [data]", p.display())))?;
    Ok((cfg, data))
}

pub fn newest_checkpoint(run: &Path) -> Option<PathBuf> {
    checkpoint::newest(run)
}

fn save_checkpoint(run: &Path, model: &Hvae, opt: &Adam, step: u64, rng: &TrainRng) -> Result<()> {
    Ok(checkpoint::save_rotating(run, 2, model.vars(), Some(opt), step, rng)?)
}

/// Saves the model's weights to RUN/weights.safetensors atomically.
pub fn save_weights(model: &Hvae, path: &Path) -> Result<()> {
    let w: std::collections::HashMap<String, Tensor> =
        model.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&w, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ProsError::msg(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// Loads weights saved by [`save_weights`] into `model`, naming a missing or misshapen tensor.
pub fn load_weights(model: &Hvae, path: &Path) -> Result<()> {
    let w = candle_core::safetensors::load(path, model.device())?;
    for (name, v) in model.vars() {
        let t = w
            .get(name)
            .ok_or_else(|| ProsError::msg(format!("{}: lacks parameter {name}", path.display())))?;
        if t.dims() != v.dims() {
            return Err(ProsError::msg(format!(
                "{}: parameter {name} has shape {:?}, the model needs {:?}",
                path.display(),
                t.dims(),
                v.dims()
            )));
        }
        v.set(t)?;
    }
    Ok(())
}

/// Images of a batch as the network sees them: × image_scale, [B, 1, D, D].
pub fn batch_images(images: &[f32], d: usize, scale: f64, device: &Device) -> Result<Tensor> {
    let b = images.len() / (d * d);
    let v: Vec<f32> = images.iter().map(|&x| x * scale as f32).collect();
    Ok(Tensor::from_vec(v, (b, 1, d, d), device)?)
}

/// Trains into `run` (created). `cfg` must have been through [`prepare`]; `cond` makes the
/// conditioning images (its scale is set here from `cfg`). With `resume`, continues from
/// the newest checkpoint bit-identically.
pub fn train(
    stack: Arc<ParticleStack>,
    cond: &mut Conditioner,
    cfg: &ProsConfig,
    run: &Path,
    resume: bool,
    device: &Device,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome> {
    let (d, _) = check_stack(&stack)?;
    cfg.check(Some(d))?;
    if cond.box_px() != d {
        return Err(ProsError::msg(format!("the reference is {} px, the particles {d} px", cond.box_px())));
    }
    cond.set_scale(cfg.proj_scale.ok_or_else(|| ProsError::msg("internal: prepare() not called"))?);
    std::fs::create_dir_all(run)
        .map_err(|e| ProsError::msg(format!("{}: cannot create: {e}", run.display())))?;
    let n = stack.len();
    let model = Hvae::new(&cfg.arch, d, cfg.seed, device)?;
    let mut opt_cfg = AdamConfig::adam();
    opt_cfg.max_grad_norm = Some(cfg.max_grad_norm);
    opt_cfg.skip_grad_norm_above = Some(cfg.skip_grad_norm);
    let mut opt = Adam::new(vec![ParamGroup::new("model", model.vars().to_vec(), cfg.lr)], opt_cfg)?;
    let mut rng = TrainRng::seed_from_u64(cfg.seed ^ 0x5052_4f53);
    let loader = DataLoader::new(
        stack.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            shuffle: true,
            drop_last: n > cfg.batch_size,
            prefetch: 2,
            cache_limit_bytes: Some(4 << 30),
            shard: (0, 1),
        },
    )?;
    let nb = loader.n_batches().max(1) as u64;
    let mut step = 0u64;
    if resume {
        let ck = newest_checkpoint(run).ok_or_else(|| {
            ProsError::msg(format!("--resume: no checkpoint in {}", run.join("checkpoints").display()))
        })?;
        let r = checkpoint::load(&ck, model.vars(), Some(&mut opt))?;
        step = r.step;
        rng = r.rng;
    } else {
        let _ = std::fs::remove_file(run.join("metrics.csv"));
        let _ = std::fs::remove_file(run.join("metrics.jsonl"));
    }
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join(name))
            .map_err(|e| ProsError::msg(format!("{}: {e}", run.join(name).display())))
    };
    let mut csv = open("metrics.csv")?;
    if csv.metadata().map(|m| m.len() == 0).unwrap_or(true) {
        csv.write_all(b"step,epoch,images,elapsed_s,loss,mse,kl,beta,grad_norm,skipped\n")
            .map_err(|e| ProsError::msg(e.to_string()))?;
    }
    let mut jsonl = open("metrics.jsonl")?;
    let total = cfg.steps;
    let norm = (d * d) as f64;
    let t0 = Instant::now();
    let start = step;
    let mut images = step * cfg.batch_size as u64;
    let (mut acc, mut acc_n, mut last) = (Losses::default(), 0u64, Losses::default());
    let mut kl_layers = vec![0f64; model.layers().len()];
    let mut kl_layers_n = 0u64;
    'outer: while step < total {
        let epoch = step / nb;
        for batch in loader.epoch(epoch).skip((step % nb) as usize) {
            if step >= total {
                break 'outer;
            }
            let batch = batch?;
            let b = batch.len();
            let poses = batch.poses.as_ref().ok_or_else(|| ProsError::msg("batch without poses"))?;
            let x = batch_images(&batch.images, d, cfg.image_scale, device)?;
            let v = Tensor::from_vec(cond.batch(poses, batch.ctf.as_deref())?, (b, 1, d, d), device)?;
            let c = model.condition(&v, &pose_vectors(poses, d, device)?)?;
            let mut noise = |_l: usize, shape: &[usize]| normal(&mut rng, shape, device);
            let f = model.forward_train(&x, &c, &mut noise)?;
            let kl_sum = f.kl.as_ref().ok_or_else(|| ProsError::msg("internal: no KL"))?.sum_all()?;
            let kl = kl_sum.affine(1.0 / (b as f64 * norm), 0.0)?;
            let rec = mse(&f.output, &x)?;
            let beta = cfg.beta(step);
            let loss = (&rec + kl.affine(beta, 0.0)?)?;
            let mut l = Losses { beta, ..Default::default() };
            match opt.backward_step(&loss)? {
                StepOutcome::Applied { grad_norm } => l.grad_norm = grad_norm,
                StepOutcome::Skipped { grad_norm, .. } => {
                    l.grad_norm = if grad_norm.is_finite() { grad_norm } else { 0.0 };
                    l.skipped = 1.0;
                }
            }
            l.mse = scalar_f64(&rec)?;
            l.kl = scalar_f64(&kl)?;
            l.loss = l.mse + beta * l.kl;
            if step + 1 + cfg.log_every.max(1) > total {
                for (a, t) in kl_layers.iter_mut().zip(&f.kl_layers) {
                    *a += scalar_f64(t)? / b as f64;
                }
                kl_layers_n += 1;
            }
            acc.add(&l);
            acc_n += 1;
            step += 1;
            images += b as u64;
            let elapsed = t0.elapsed().as_secs_f64();
            if step.is_multiple_of(cfg.log_every.max(1)) || step == total {
                last = acc.mean(acc_n);
                (acc, acc_n) = (Losses::default(), 0);
                let row = format!(
                    "{step},{},{images},{elapsed:.3},{},{},{},{},{},{}\n",
                    step / nb,
                    last.loss,
                    last.mse,
                    last.kl,
                    last.beta,
                    last.grad_norm,
                    last.skipped
                );
                csv.write_all(row.as_bytes()).map_err(|e| ProsError::msg(e.to_string()))?;
                let mut j = serde_json::to_value(&last).map_err(|e| ProsError::msg(e.to_string()))?;
                j["step"] = step.into();
                j["epoch"] = (step / nb).into();
                j["images"] = images.into();
                j["elapsed_s"] = elapsed.into();
                writeln!(jsonl, "{j}").map_err(|e| ProsError::msg(e.to_string()))?;
            }
            if step.is_multiple_of(cfg.checkpoint_every.max(1)) {
                save_checkpoint(run, &model, &opt, step, &rng)?;
            }
            on_progress(&Progress {
                step,
                total_steps: total,
                images,
                elapsed_s: elapsed,
                running: if acc_n > 0 { acc.mean(acc_n) } else { last.clone() },
            });
        }
    }
    save_checkpoint(run, &model, &opt, step, &rng)?;
    save_weights(&model, &run.join("weights.safetensors"))?;
    let kl_per_layer: Vec<f64> = kl_layers.iter().map(|v| v / kl_layers_n.max(1) as f64).collect();
    let kl_img: f64 = kl_per_layer.iter().sum();
    let collapse = (kl_layers_n > 0 && kl_img < COLLAPSED_KL_NATS).then(|| {
        format!(
            "posterior collapse: the KL between posterior and prior is {kl_img:.3e} nats per image (< \
             {COLLAPSED_KL_NATS}); the latents ignore the particles and generated particles will not follow \
             them. Train longer before the β ramp ends (--kl-warmup-steps), lower --kl-max, or check the poses \
             and CTFs"
        )
    });
    if let Some(m) = &collapse {
        tracing::warn!("{m}");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let out = TrainOutcome {
        steps: step,
        images,
        elapsed_s: elapsed,
        images_per_s: ((step - start) * cfg.batch_size as u64) as f64 / elapsed.max(1e-9),
        skipped_steps: opt.skipped(),
        n_params: model.n_params(),
        final_losses: last,
        kl_per_layer_nats: kl_per_layer,
        kl_per_image_nats: kl_img,
        collapse,
    };
    let j = serde_json::to_vec_pretty(&out).map_err(|e| ProsError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&run.join("train.json"), &j)?;
    Ok(out)
}

/// A trained run loaded back.
pub struct LoadedRun {
    pub cfg: ProsConfig,
    pub data: toml::map::Map<String, toml::Value>,
    pub model: Hvae,
    pub projector: ProjectorKind,
}

/// Loads RUN (run.toml and weights.safetensors, or the newest checkpoint of an interrupted run).
pub fn load_run(run: &Path, device: &Device) -> Result<LoadedRun> {
    let (cfg, data) = read_run_toml(run)?;
    let get_int = |k: &str| {
        data.get(k)
            .and_then(|v| v.as_integer())
            .ok_or_else(|| ProsError::msg(format!("{}: [data] {k} missing", run.join("run.toml").display())))
    };
    let d = get_int("box")? as usize;
    let projector = match data.get("projector").and_then(|v| v.as_str()) {
        Some(s) => s.parse().map_err(ProsError::Msg)?,
        None => ProjectorKind::RealSpace,
    };
    let model = Hvae::new(&cfg.arch, d, cfg.seed, device)?;
    let wp = run.join("weights.safetensors");
    if wp.is_file() {
        load_weights(&model, &wp)?;
    } else if let Some(ck) = newest_checkpoint(run) {
        checkpoint::load(&ck, model.vars(), None)?;
    } else {
        return Err(ProsError::msg(format!("{}: no weights.safetensors and no checkpoint", run.display())));
    }
    Ok(LoadedRun { cfg, data, model, projector })
}
