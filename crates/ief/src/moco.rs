//! Cryo-IEF pre-training: MoCo v3 (Chen, Xie & He 2021) on particle images (METHODS.md §4).
//!
//! ```text
//! q_v = predictor(projector(ViT(view_v)))        base encoder, trained (AdamW)
//! k_v = projector_m(ViT_m(view_v))               momentum encoder, no gradient
//! L   = ctr(q₁, k₂) + ctr(q₂, k₁),   ctr(q, k) = 2τ · CE(q̂ k̂ᵀ / τ, diag)   (q̂, k̂ unit rows)
//! θ_m ← m θ_m + (1 − m) θ  after every step,  m = 1 − ½(1 + cos(π t/T))(1 − m₀)
//! lr  = linear warm-up, then half-cosine to 0
//! ```
//!
//! The projector is MoCo v3's 3-layer MLP (Linear without bias → BN → ReLU, twice, then
//! Linear → BN without affine), the predictor its 2-layer MLP (Linear → BN → ReLU → Linear).
//! Tensor names are MoCo v3's: `base_encoder.*` (the ViT, `base_encoder.head.{0,1,3,4,6,7}.*`
//! the projector), `momentum_encoder.*`, `predictor.{0,1,3}.*`, so the saved
//! `weights.safetensors` loads into `ief features` / `ranker train --init` directly (the
//! loader strips `base_encoder.` and ignores the rest), as the released Cryo-IEF files do.
//!
//! Presets: `paper` (ViT-B/14 at 224 px, projector 4096 → 256, predictor 4096, batch 2048,
//! lr 1e-5·batch/256, 5 warm-up epochs, τ 0.5, m₀ 0.99; MoCo v3's weight decay 0.1 and ViT
//! schedule length 300 epochs, as the paper gives neither) for GPUs, and `cpu` (the 64-px
//! ViT of [`VitConfig::cpu`], projector 1024 → 128, batch 64, lr 2e-4, 15 epochs — a batch
//! of 64 with the paper's rule would give 2.5e-6, far too small to learn within hours).

use crate::augment::AugmentConfig;
use crate::preprocess::Resample;
use crate::views::{batch_at, ViewBatcher};
use crate::vit::{l2_normalize, Mode, TokenBatchNorm, Vit, VitConfig};
use crate::{IefError, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::optim::{sorted_vars, Adam, AdamConfig, ParamGroup};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Everything a pre-training run is made of (saved as RUN/config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub preset: String,
    pub vit: VitConfig,
    pub proj_hidden: usize,
    pub proj_out: usize,
    pub pred_hidden: usize,
    pub temperature: f64,
    /// m₀ of the momentum schedule.
    pub momentum: f64,
    pub batch_size: usize,
    /// Length in epochs (used when `steps` is None).
    pub epochs: f64,
    pub steps: Option<u64>,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub augment: AugmentConfig,
    pub resample: Resample,
    pub invert: bool,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl PretrainConfig {
    /// The paper's (and MoCo v3's) setting; see the module docs.
    pub fn paper() -> PretrainConfig {
        let batch = 2048;
        PretrainConfig {
            preset: "paper".into(),
            vit: VitConfig::base(),
            proj_hidden: 4096,
            proj_out: 256,
            pred_hidden: 4096,
            temperature: 0.5,
            momentum: 0.99,
            batch_size: batch,
            epochs: 300.0,
            steps: None,
            lr: 1e-5 * batch as f64 / 256.0,
            weight_decay: 0.1,
            warmup_epochs: 5.0,
            augment: AugmentConfig::moco(),
            resample: Resample::Spline,
            invert: false,
            seed: 0,
            log_every: 10,
            checkpoint_every: 500,
        }
    }

    /// The CPU preset; see the module docs.
    pub fn cpu() -> PretrainConfig {
        PretrainConfig {
            preset: "cpu".into(),
            vit: VitConfig::cpu(),
            proj_hidden: 1024,
            proj_out: 128,
            pred_hidden: 1024,
            batch_size: 64,
            epochs: 15.0,
            lr: 2e-4,
            weight_decay: 0.05,
            warmup_epochs: 1.0,
            checkpoint_every: 200,
            ..PretrainConfig::paper()
        }
    }

    pub fn preset(name: &str) -> Result<PretrainConfig> {
        match name.to_ascii_lowercase().as_str() {
            "paper" | "base" | "gpu" => Ok(PretrainConfig::paper()),
            "cpu" => Ok(PretrainConfig::cpu()),
            o => Err(IefError::msg(format!("pre-training preset {o:?}: expected paper or cpu"))),
        }
    }

    /// Batches per epoch over `n` particles (the incomplete last batch is dropped).
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        (n / self.batch_size.min(n).max(1)).max(1) as u64
    }

    pub fn total_steps(&self, n: usize) -> u64 {
        self.steps.unwrap_or_else(|| (self.epochs * self.steps_per_epoch(n) as f64).ceil().max(1.0) as u64)
    }

    pub fn check(&self, n: usize) -> Result<()> {
        self.vit.check()?;
        self.augment.check()?;
        let bad = |m: String| Err(IefError::msg(format!("pre-training: {m}")));
        if n < 2 {
            return bad(format!("{n} particle(s): contrastive learning needs at least 2"));
        }
        if self.batch_size < 2 {
            return bad(format!(
                "batch size {}: needs at least 2 (the other particles are the negatives)",
                self.batch_size
            ));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return bad(format!("temperature {} must be > 0", self.temperature));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} must be in [0, 1)", self.momentum));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate {} must be > 0", self.lr));
        }
        if self.proj_hidden == 0 || self.proj_out == 0 || self.pred_hidden == 0 {
            return bad("projector and predictor widths must be ≥ 1".into());
        }
        if self.steps == Some(0) || (self.steps.is_none() && (self.epochs.is_nan() || self.epochs <= 0.0)) {
            return bad("the run needs at least one step".into());
        }
        Ok(())
    }

    /// Whether `other` trains the same way (the run length and logging may differ: a
    /// resumed run may be extended).
    pub fn same_training(&self, other: &PretrainConfig) -> bool {
        let norm = |c: &PretrainConfig| PretrainConfig {
            steps: None,
            epochs: 0.0,
            log_every: 0,
            checkpoint_every: 0,
            ..c.clone()
        };
        norm(self) == norm(other)
    }

    /// Learning rate at `step` of `total` (warm-up over `warmup` steps, then half-cosine).
    pub fn lr_at(&self, step: u64, total: u64, warmup: u64) -> f64 {
        if step < warmup {
            self.lr * (step + 1) as f64 / warmup as f64
        } else {
            let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
            self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }

    /// Momentum at `step` of `total`.
    pub fn momentum_at(&self, step: u64, total: u64) -> f64 {
        let t = step as f64 / total.max(1) as f64;
        1.0 - 0.5 * (1.0 + (std::f64::consts::PI * t).cos()) * (1.0 - self.momentum)
    }
}

/// One layer: the Linear, its BatchNorm (with its Sequential index) and whether a ReLU follows.
type MlpLayer = (Linear, Option<(usize, TokenBatchNorm)>, bool);

/// MoCo v3's MLP: Linear (no bias) → BN → ReLU for all but the last layer; the last
/// Linear is followed by a BN without affine when `last_bn`. Sequential indices as PyTorch
/// numbers them (ReLUs count).
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<MlpLayer>,
}

impl Mlp {
    pub fn new(
        n_layers: usize,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        last_bn: bool,
        vb: VarBuilder,
        buffers: VarBuilder,
    ) -> Result<Mlp> {
        let mut layers = Vec::new();
        let mut k = 0;
        for l in 0..n_layers {
            let i = if l == 0 { d_in } else { hidden };
            let o = if l + 1 == n_layers { d_out } else { hidden };
            let lin = candle_nn::linear_no_bias(i, o, vb.pp(k.to_string()))?;
            k += 1;
            let last = l + 1 == n_layers;
            let bn = if !last || last_bn {
                let bn = TokenBatchNorm::with_affine(
                    o,
                    1e-5,
                    !last,
                    vb.pp(k.to_string()),
                    buffers.pp(k.to_string()),
                )?;
                k += 1;
                Some((k - 1, bn))
            } else {
                None
            };
            if !last {
                k += 1;
            }
            layers.push((lin, bn, !last));
        }
        Ok(Mlp { layers })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = x.clone();
        for (lin, bn, relu) in &self.layers {
            h = lin.forward(&h)?;
            if let Some((_, bn)) = bn {
                h = bn.forward_rows(&h, mode)?;
            }
            if *relu {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Running statistics by name (`{prefix}{k}.running_mean` …).
    pub fn buffers(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut v = Vec::new();
        for (_, bn, _) in &self.layers {
            if let Some((k, bn)) = bn {
                let (m, var) = bn.buffers()?;
                v.push((format!("{prefix}{k}.running_mean"), m));
                v.push((format!("{prefix}{k}.running_var"), var));
            }
        }
        Ok(v)
    }

    pub fn load_buffers(&self, t: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for (_, bn, _) in &self.layers {
            if let Some((k, bn)) = bn {
                let get = |s: &str| {
                    let n = format!("{prefix}{k}.{s}");
                    t.get(&n).cloned().ok_or_else(|| IefError::msg(format!("buffer {n} missing")))
                };
                bn.set_buffers(get("running_mean")?, get("running_var")?)?;
            }
        }
        Ok(())
    }
}

/// The contrastive loss of MoCo v3, 2τ·CE(q̂ k̂ᵀ/τ, diag), and the fraction of rows whose
/// largest logit is the diagonal one (top-1 accuracy of the pretext task).
pub fn contrastive_loss(q: &Tensor, k: &Tensor, tau: f64) -> Result<(Tensor, f64)> {
    let (b, _) = q.dims2()?;
    let q = l2_normalize(q)?;
    let k = l2_normalize(k)?;
    let logits = (q.matmul(&k.t()?)? / tau)?;
    let eye = Tensor::eye(b, DType::F32, q.device())?;
    let ls = cryoforge_nn::ops::log_softmax(&logits)?;
    let loss = ((ls * &eye)?.sum_all()? * (-2.0 * tau / b as f64))?;
    let l: Vec<Vec<f32>> = logits.detach().to_vec2()?;
    let hits = l
        .iter()
        .enumerate()
        .filter(|(i, r)| r.iter().enumerate().all(|(j, &v)| j == *i || v < r[*i]))
        .count();
    Ok((loss, hits as f64 / b as f64))
}

/// Base encoder + projector + predictor and the momentum copies.
pub struct Moco {
    pub cfg: PretrainConfig,
    pub base: Vit,
    proj: Mlp,
    pred: Mlp,
    mbase: Vit,
    mproj: Mlp,
    train_vars: Vec<(String, Var)>,
    /// (momentum variable, base variable) pairs.
    pairs: Vec<(Var, Var)>,
    all_vars: Vec<(String, Var)>,
}

impl Moco {
    /// Builds the model with seeded initial weights (the momentum encoder a copy).
    pub fn new(cfg: &PretrainConfig, device: &Device) -> Result<Moco> {
        cfg.vit.check()?;
        let c = cfg.vit.embed_dim;
        let vm = VarMap::new();
        let mvm = VarMap::new();
        let bufs = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let mvb = VarBuilder::from_varmap(&mvm, DType::F32, device);
        let bb = VarBuilder::from_varmap(&bufs, DType::F32, device);
        let base = Vit::new(&cfg.vit, vb.pp("base_encoder"), bb.pp("base_encoder"))?;
        let proj = Mlp::new(
            3,
            c,
            cfg.proj_hidden,
            cfg.proj_out,
            true,
            vb.pp("base_encoder.head"),
            bb.pp("base_encoder.head"),
        )?;
        let pred = Mlp::new(
            2,
            cfg.proj_out,
            cfg.pred_hidden,
            cfg.proj_out,
            false,
            vb.pp("predictor"),
            bb.pp("predictor"),
        )?;
        let mbase = Vit::new(&cfg.vit, mvb.pp("momentum_encoder"), bb.pp("momentum_encoder"))?;
        let mproj = Mlp::new(
            3,
            c,
            cfg.proj_hidden,
            cfg.proj_out,
            true,
            mvb.pp("momentum_encoder.head"),
            bb.pp("momentum_encoder.head"),
        )?;
        let train_vars = sorted_vars(&vm);
        init_vars(&train_vars, cfg.seed)?;
        let mom = sorted_vars(&mvm);
        let by_name: HashMap<String, Var> = train_vars.iter().cloned().collect();
        let mut pairs = Vec::new();
        for (n, v) in &mom {
            let bn = format!("base_encoder.{}", n.trim_start_matches("momentum_encoder."));
            let b =
                by_name.get(&bn).ok_or_else(|| IefError::msg(format!("internal: no base twin of {n}")))?;
            v.set(b.as_tensor())?;
            pairs.push((v.clone(), b.clone()));
        }
        let mut all_vars = train_vars.clone();
        all_vars.extend(mom);
        Ok(Moco { cfg: cfg.clone(), base, proj, pred, mbase, mproj, train_vars, pairs, all_vars })
    }

    /// The trained parameters (base encoder, projector, predictor), sorted by name.
    pub fn train_vars(&self) -> &[(String, Var)] {
        &self.train_vars
    }

    /// All parameters, the momentum encoder's included.
    pub fn all_vars(&self) -> &[(String, Var)] {
        &self.all_vars
    }

    /// The loss of one batch of two views [B, S, S] each, and the pretext top-1 accuracy.
    pub fn loss(&self, x1: &Tensor, x2: &Tensor) -> Result<(Tensor, f64)> {
        let tau = self.cfg.temperature;
        // The momentum encoder's forward passes (no gradient) run beside the base
        // encoder's: much of a step is single-threaded element-wise work.
        let base = || -> Result<(Tensor, Tensor)> {
            let q = |x: &Tensor| -> Result<Tensor> {
                self.pred.forward(
                    &self.proj.forward(&self.base.forward_cls(x, Mode::Train)?, Mode::Train)?,
                    Mode::Train,
                )
            };
            Ok((q(x1)?, q(x2)?))
        };
        let momentum = || -> Result<(Tensor, Tensor)> {
            let k = |x: &Tensor| -> Result<Tensor> {
                Ok(self.mproj.forward(&self.mbase.forward_cls(x, Mode::Train)?, Mode::Train)?.detach())
            };
            Ok((k(x1)?, k(x2)?))
        };
        let (q, k) = rayon::join(base, momentum);
        let ((q1, q2), (k1, k2)) = (q?, k?);
        let (l1, a1) = contrastive_loss(&q1, &k2, tau)?;
        let (l2, a2) = contrastive_loss(&q2, &k1, tau)?;
        Ok(((l1 + l2)?, 0.5 * (a1 + a2)))
    }

    /// θ_m ← m θ_m + (1 − m) θ.
    pub fn momentum_update(&self, m: f64) -> Result<()> {
        for (mv, bv) in &self.pairs {
            let t = ((mv.as_tensor() * m)? + (bv.as_tensor().detach() * (1.0 - m))?)?;
            mv.set(&t)?;
        }
        Ok(())
    }

    /// BatchNorm running statistics of every module, by their file names.
    pub fn buffers(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (n, t) in self.base.buffers()? {
            out.insert(format!("base_encoder.{n}"), t);
        }
        for (n, t) in self.mbase.buffers()? {
            out.insert(format!("momentum_encoder.{n}"), t);
        }
        out.extend(self.proj.buffers("base_encoder.head.")?);
        out.extend(self.mproj.buffers("momentum_encoder.head.")?);
        out.extend(self.pred.buffers("predictor.")?);
        Ok(out)
    }

    pub fn load_buffers(&self, t: &HashMap<String, Tensor>) -> Result<()> {
        let strip = |p: &str| -> HashMap<String, Tensor> {
            t.iter().filter_map(|(k, v)| k.strip_prefix(p).map(|s| (s.to_string(), v.clone()))).collect()
        };
        self.base.load_buffers(&strip("base_encoder."))?;
        self.mbase.load_buffers(&strip("momentum_encoder."))?;
        self.proj.load_buffers(t, "base_encoder.head.")?;
        self.mproj.load_buffers(t, "momentum_encoder.head.")?;
        self.pred.load_buffers(t, "predictor.")?;
        Ok(())
    }

    /// All parameters and buffers, by MoCo v3's names.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.buffers()?;
        for (n, v) in &self.all_vars {
            out.insert(n.clone(), v.as_tensor().detach());
        }
        Ok(out)
    }
}

/// Writes tensors to `path` through a temporary file and a rename.
pub fn save_tensors_atomic(t: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(t, &tmp)
        .map_err(|e| IefError::msg(format!("{}: cannot write: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| IefError::msg(format!("{}: cannot finish: {e}", path.display())))
}

/// RUN/config.json: the settings and the particles a run was started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainRun {
    pub config: PretrainConfig,
    pub particles: String,
    pub n_particles: usize,
}

/// Reads RUN/config.json.
pub fn read_run_config(run: &Path) -> Result<PretrainRun> {
    let p = run.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, format!("not a pre-training run: {e}")))?;
    serde_json::from_str(&text).map_err(|e| io_err(&p, e))
}

/// One line of progress.
#[derive(Debug, Clone)]
pub struct PretrainProgress {
    pub step: u64,
    pub total: u64,
    pub epoch: u64,
    pub loss: f64,
    pub top1: f64,
    pub lr: f64,
    pub images_per_s: f64,
}

/// What a run did (also RUN/train.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainOutcome {
    pub steps: u64,
    pub particles: usize,
    pub parameters: usize,
    pub elapsed_s: f64,
    pub particles_per_s: f64,
    pub final_loss: f64,
    /// Mean pretext top-1 accuracy over the last logged window.
    pub final_top1: f64,
    pub weights: String,
}

pub(crate) fn io_err(p: &Path, e: impl std::fmt::Display) -> IefError {
    IefError::msg(format!("{}: {e}", p.display()))
}

/// Pre-trains (or, with `resume`, continues from the newest checkpoint of) RUN.
pub fn pretrain(
    stack: Arc<ParticleStack>,
    particles_label: &str,
    cfg: &PretrainConfig,
    run: &Path,
    resume: bool,
    device: &Device,
    on_progress: &mut dyn FnMut(&PretrainProgress),
) -> Result<PretrainOutcome> {
    let n = stack.len();
    cfg.check(n)?;
    std::fs::create_dir_all(run).map_err(|e| io_err(run, format!("cannot create: {e}")))?;
    let batch = cfg.batch_size.min(n);
    let total = cfg.total_steps(n);
    let warmup = ((cfg.warmup_epochs * cfg.steps_per_epoch(n) as f64).round() as u64).min(total / 2);
    let model = Moco::new(cfg, device)?;
    let mut ocfg = AdamConfig::adamw();
    ocfg.max_grad_norm = None;
    let mut opt = Adam::new(
        vec![
            ParamGroup::new("model", model.train_vars().to_vec(), cfg.lr).with_weight_decay(cfg.weight_decay)
        ],
        ocfg,
    )?;
    let mut rng = TrainRng::seed_from_u64(cfg.seed ^ 0x40c0);
    let cfg_path = run.join("config.json");
    let mut step = 0u64;
    if resume {
        let saved = read_run_config(run)?;
        if !saved.config.same_training(cfg) || saved.n_particles != n {
            return Err(IefError::msg(format!(
                "{}: --resume with other settings or particles than the run was started with ({} particles then, {n} now); start a new run or resume unchanged",
                cfg_path.display(),
                saved.n_particles
            )));
        }
        let (r, b) = load_checkpoint_with_buffers(run, model.all_vars(), &mut opt, device)?;
        model.load_buffers(&b)?;
        step = r.step;
        rng = r.rng;
    } else {
        let info =
            PretrainRun { config: cfg.clone(), particles: particles_label.to_string(), n_particles: n };
        let json = serde_json::to_string_pretty(&info).map_err(|e| IefError::msg(e.to_string()))?;
        cryoforge_io::atomic::write_bytes_atomic(&cfg_path, json.as_bytes())?;
        let _ = std::fs::remove_file(run.join("metrics.csv"));
    }
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("metrics.csv"))
        .map_err(|e| io_err(&run.join("metrics.csv"), e))?;
    if csv.metadata().map(|m| m.len() == 0).unwrap_or(true) {
        csv.write_all(b"step,epoch,images,elapsed_s,loss,top1,lr,momentum,grad_norm\n")
            .map_err(|e| io_err(&run.join("metrics.csv"), e))?;
    }
    let views = ViewBatcher::new(stack.clone(), cfg.vit.img_size, cfg.resample, cfg.invert)?;
    let pool: Vec<usize> = (0..n).collect();
    let s = cfg.vit.img_size;
    let t0 = std::time::Instant::now();
    let start = step;
    let (mut win_loss, mut win_acc, mut win_n) = (0.0, 0.0, 0usize);
    let (mut last_loss, mut last_acc) = (f64::NAN, f64::NAN);
    while step < total {
        let lr = cfg.lr_at(step, total, warmup);
        opt.set_lr(0, lr);
        let (idx, epoch) = batch_at(&pool, batch, cfg.seed, step);
        let v = views.views(&idx, 2, &cfg.augment, cfg.seed, step)?;
        let b = idx.len();
        let x1 = Tensor::from_slice(&v[0], (b, s, s), device)?;
        let x2 = Tensor::from_slice(&v[1], (b, s, s), device)?;
        let (loss, acc) = model.loss(&x1, &x2)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(IefError::msg(format!(
                "step {step}: the loss is {lv} (diverged; try a smaller --lr); the last checkpoint is in {}",
                run.join("checkpoints").display()
            )));
        }
        let out = opt.backward_step(&loss)?;
        let gn = match out {
            cryoforge_nn::optim::StepOutcome::Applied { grad_norm } => grad_norm,
            cryoforge_nn::optim::StepOutcome::Skipped { grad_norm, .. } => grad_norm,
        };
        let m = cfg.momentum_at(step, total);
        model.momentum_update(m)?;
        step += 1;
        win_loss += lv;
        win_acc += acc;
        win_n += 1;
        let el = t0.elapsed().as_secs_f64();
        writeln!(
            csv,
            "{step},{epoch},{},{el:.3},{lv:.6},{acc:.4},{lr:.6e},{m:.6},{gn:.4}",
            step * batch as u64
        )
        .map_err(|e| io_err(&run.join("metrics.csv"), e))?;
        if step.is_multiple_of(cfg.log_every.max(1)) || step == total {
            last_loss = win_loss / win_n as f64;
            last_acc = win_acc / win_n as f64;
            (win_loss, win_acc, win_n) = (0.0, 0.0, 0);
            on_progress(&PretrainProgress {
                step,
                total,
                epoch,
                loss: last_loss,
                top1: last_acc,
                lr,
                images_per_s: ((step - start) * batch as u64) as f64 / el.max(1e-9),
            });
        }
        if step.is_multiple_of(cfg.checkpoint_every.max(1)) || step == total {
            save_checkpoint(&model, &opt, run, step, &rng)?;
        }
    }
    let weights = run.join("weights.safetensors");
    save_tensors_atomic(&model.tensors()?, &weights)?;
    let el = t0.elapsed().as_secs_f64();
    let outcome = PretrainOutcome {
        steps: step,
        particles: n,
        parameters: model.train_vars().iter().map(|(_, v)| v.elem_count()).sum(),
        elapsed_s: el,
        particles_per_s: ((step - start) * batch as u64) as f64 / el.max(1e-9),
        final_loss: last_loss,
        final_top1: last_acc,
        weights: weights.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&outcome).map_err(|e| IefError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&run.join("train.json"), json.as_bytes())?;
    Ok(outcome)
}

fn save_checkpoint(model: &Moco, opt: &Adam, run: &Path, step: u64, rng: &TrainRng) -> Result<()> {
    save_checkpoint_with_buffers(&model.buffers()?, model.all_vars(), opt, run, step, rng)
}

/// A rotating checkpoint (see `cryoforge_nn::checkpoint`) with the BatchNorm running
/// statistics beside it in `buffers.safetensors` (written before `state.json`, which marks
/// the checkpoint complete).
pub(crate) fn save_checkpoint_with_buffers(
    buffers: &HashMap<String, Tensor>,
    vars: &[(String, Var)],
    opt: &Adam,
    run: &Path,
    step: u64,
    rng: &TrainRng,
) -> Result<()> {
    let dir = run.join("checkpoints").join(format!("step_{step:08}"));
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    candle_core::safetensors::save(buffers, dir.join("buffers.safetensors"))
        .map_err(|e| io_err(&dir.join("buffers.safetensors"), e))?;
    checkpoint::save_rotating(run, 2, vars, Some(opt), step, rng)?;
    Ok(())
}

/// Loads the newest checkpoint of `run` into `vars` and `opt`; returns the resume point
/// and the saved BatchNorm statistics.
pub(crate) fn load_checkpoint_with_buffers(
    run: &Path,
    vars: &[(String, Var)],
    opt: &mut Adam,
    device: &Device,
) -> Result<(checkpoint::Resume, HashMap<String, Tensor>)> {
    let ck = checkpoint::newest(run).ok_or_else(|| {
        IefError::msg(format!("--resume: no checkpoint in {}", run.join("checkpoints").display()))
    })?;
    let r = checkpoint::load(&ck, vars, Some(opt))?;
    let bp = ck.join("buffers.safetensors");
    let b = candle_core::safetensors::load(&bp, device).map_err(|e| io_err(&bp, e))?;
    Ok((r, b))
}

/// Seeded initial values (candle's initialisers draw from an unseeded generator on the
/// CPU), by name, MoCo v3's rules: in the ViT, Linear weights Xavier-uniform (qkv as three
/// separate C×C matrices), the patch embedding Xavier-uniform over its flattened kernel,
/// biases 0, norms 1/0, `cls_token` N(0, 10⁻⁶); outside it (`head.*`, `predictor.*`)
/// PyTorch's Linear default U(±1/√fan_in), BatchNorm/LayerNorm 1/0, biases 0. Variable `i`
/// of the sorted list draws from ChaCha8 stream `i` of `seed`.
pub fn init_vars(vars: &[(String, Var)], seed: u64) -> Result<()> {
    use rand::Rng;
    for (i, (name, var)) in vars.iter().enumerate() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x1417_0000);
        r.set_stream(i as u64);
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let outside = name.contains("head.") || name.starts_with("predictor.");
        let is_norm = |s: &str| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() >= 2 && (parts[parts.len() - 2].contains("norm") || outside && dims.len() == 1)
        };
        let uniform = |r: &mut rand_chacha::ChaCha8Rng, bound: f64| -> Vec<f32> {
            (0..n).map(|_| r.gen_range(-bound..=bound) as f32).collect()
        };
        let v: Vec<f32> = if name.ends_with("cls_token") {
            (0..n)
                .map(|_| {
                    let z: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut r);
                    (1e-6 * z) as f32
                })
                .collect()
        } else if name.ends_with(".weight") && dims.len() >= 2 {
            let fan_out = dims[0];
            let fan_in: usize = dims[1..].iter().product();
            let bound = if outside {
                1.0 / (fan_in as f64).sqrt()
            } else if name.ends_with("qkv.weight") {
                (6.0 / (fan_out / 3 + fan_in) as f64).sqrt()
            } else {
                (6.0 / (fan_out + fan_in) as f64).sqrt()
            };
            uniform(&mut r, bound)
        } else if name.ends_with(".weight") && is_norm(name) {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        var.set(&Tensor::from_vec(v, dims, var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrastive_loss_known_values() {
        let dev = Device::Cpu;
        // q = k = I₂, τ = ½: logits [[2, 0], [0, 2]], CE = ln(1 + e⁻²), loss = 2τ·CE.
        let q = Tensor::eye(2, DType::F32, &dev).unwrap();
        let (l, acc) = contrastive_loss(&q, &q, 0.5).unwrap();
        let want = (1.0 + (-2f64).exp()).ln();
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        assert_eq!(acc, 1.0);
        // Rows are normalised first; swapped keys make every positive the wrong one.
        let k = Tensor::new(&[[0f32, 3.0], [5.0, 0.0]], &dev).unwrap();
        let (l, acc) = contrastive_loss(&q, &k, 0.5).unwrap();
        let want = (1.0 + 2f64.exp()).ln();
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5, "{l}");
        assert_eq!(acc, 0.0);
    }

    #[test]
    fn schedules() {
        let c = PretrainConfig::cpu();
        assert!((c.lr_at(0, 100, 10) - c.lr * 0.1).abs() < 1e-12);
        assert!((c.lr_at(10, 100, 10) - c.lr).abs() < 1e-12);
        assert!(c.lr_at(99, 100, 10) < 1e-3 * c.lr);
        assert!((c.momentum_at(0, 100) - 0.99).abs() < 1e-12);
        assert!((c.momentum_at(100, 100) - 1.0).abs() < 1e-12);
        assert_eq!(PretrainConfig::paper().lr, 8e-5);
    }

    #[test]
    fn mlp_names_follow_pytorch_sequential_indices() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let bm = VarMap::new();
        let _ = Mlp::new(
            3,
            8,
            16,
            4,
            true,
            VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("head"),
            VarBuilder::from_varmap(&bm, DType::F32, &dev).pp("head"),
        )
        .unwrap();
        let names: Vec<String> = sorted_vars(&vm).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "head.0.weight",
                "head.1.bias",
                "head.1.weight",
                "head.3.weight",
                "head.4.bias",
                "head.4.weight",
                "head.6.weight"
            ]
        );
        let bufs: Vec<String> = sorted_vars(&bm).into_iter().map(|(n, _)| n).collect();
        assert!(bufs.contains(&"head.7.running_mean".to_string()));
    }
}
