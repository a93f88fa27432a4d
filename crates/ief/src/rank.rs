//! CryoRanker fine-tuning (paper 001, METHODS.md §4): the encoder plus a ranking head
//! trained on particle-quality labels y ∈ [0, 1] with
//!
//! ```text
//! L = CE(confident) + w_rank · mean_{(i,j): y_i > y_j} max(0, Δ − (s_i − s_j)),   Δ = 0.2
//! ```
//!
//! where "confident" are the particles with y > 0.7 (target 1) or y ≤ 0.3 (target 0), CE is
//! the binary cross-entropy of the sigmoid score (v1.5 head: LayerNorm → Linear(C→1), the
//! released CryoRanker's) or the 2-way softmax cross-entropy (v1 head, the paper's
//! description), and the margin ranking term runs over all ordered pairs of a batch.
//!
//! The encoder starts from a pre-trained Cryo-IEF file (`init`, any of the names the loader
//! takes; its learning rate is scaled by `encoder_lr_scale`, 0.1 by default) or from
//! scratch (a preset, MoCo v3's initialisation). A seeded fraction of the particles is held
//! out; the validation ROC AUC (good = y > 0.5) is computed with the released preprocessing
//! after every epoch. RUN/weights.safetensors carries the released CryoRanker names
//! (backbone at the root, `head.*`), so `ranker score --weights` reads it.

use crate::augment::AugmentConfig;
use crate::head::{RankerHead, RankerHeadKind};
use crate::moco::{
    init_vars, io_err, load_checkpoint_with_buffers, save_checkpoint_with_buffers, save_tensors_atomic,
};
use crate::preprocess::Resample;
use crate::views::{batch_at, split, ViewBatcher};
use crate::vit::{Mode, Vit, VitConfig};
use crate::{IefError, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::TrainRng;
use cryoforge_nn::optim::{sorted_vars, Adam, AdamConfig, ParamGroup};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Settings of a fine-tuning run (RUN/config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerTrainConfig {
    pub vit: VitConfig,
    pub head: RankerHeadKind,
    /// Pre-trained encoder weights to start from (None: from scratch).
    pub init: Option<String>,
    pub batch_size: usize,
    pub epochs: f64,
    pub steps: Option<u64>,
    pub lr: f64,
    pub encoder_lr_scale: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub margin: f64,
    pub confident_high: f64,
    pub confident_low: f64,
    pub rank_weight: f64,
    pub val_fraction: f64,
    pub augment: AugmentConfig,
    pub resample: Resample,
    pub invert: bool,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl RankerTrainConfig {
    /// Defaults for an encoder `vit`; `pretrained`: whether it starts from weights.
    pub fn new(vit: VitConfig, pretrained: bool) -> RankerTrainConfig {
        RankerTrainConfig {
            vit,
            head: RankerHeadKind::V15,
            init: None,
            batch_size: 64,
            epochs: 10.0,
            steps: None,
            lr: 3e-4,
            encoder_lr_scale: if pretrained { 0.1 } else { 1.0 },
            weight_decay: 0.05,
            warmup_epochs: 0.5,
            margin: 0.2,
            confident_high: 0.7,
            confident_low: 0.3,
            rank_weight: 1.0,
            val_fraction: 0.1,
            augment: AugmentConfig::ranker(),
            resample: Resample::Spline,
            invert: false,
            seed: 0,
            log_every: 10,
            checkpoint_every: 200,
        }
    }

    pub fn steps_per_epoch(&self, n_train: usize) -> u64 {
        (n_train / self.batch_size.min(n_train).max(1)).max(1) as u64
    }

    pub fn total_steps(&self, n_train: usize) -> u64 {
        self.steps
            .unwrap_or_else(|| (self.epochs * self.steps_per_epoch(n_train) as f64).ceil().max(1.0) as u64)
    }

    pub fn check(&self) -> Result<()> {
        self.vit.check()?;
        self.augment.check()?;
        let bad = |m: String| Err(IefError::msg(format!("ranker training: {m}")));
        if self.batch_size < 2 {
            return bad(format!("batch size {} (the ranking loss needs pairs)", self.batch_size));
        }
        if !self.lr.is_finite()
            || self.lr <= 0.0
            || self.encoder_lr_scale.is_nan()
            || self.encoder_lr_scale < 0.0
        {
            return bad(format!("learning rate {} × {}", self.lr, self.encoder_lr_scale));
        }
        if !(0.0..=1.0).contains(&self.confident_low)
            || !(0.0..=1.0).contains(&self.confident_high)
            || self.confident_low >= self.confident_high
        {
            return bad(format!(
                "confident thresholds low {} / high {}: need 0 ≤ low < high ≤ 1",
                self.confident_low, self.confident_high
            ));
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return bad(format!("validation fraction {} must be in [0, 0.9)", self.val_fraction));
        }
        if self.steps == Some(0) || (self.steps.is_none() && (self.epochs.is_nan() || self.epochs <= 0.0)) {
            return bad("the run needs at least one step".into());
        }
        Ok(())
    }

    fn same_training(&self, o: &RankerTrainConfig) -> bool {
        let n = |c: &RankerTrainConfig| RankerTrainConfig {
            steps: None,
            epochs: 0.0,
            log_every: 0,
            checkpoint_every: 0,
            ..c.clone()
        };
        n(self) == n(o)
    }
}

/// The ranker's loss on a batch: (total, cross-entropy part, ranking part), from logits
/// ([B, 1] for v1.5, [B, 2] for v1) and labels. Each part is 0 when the batch has no
/// confident particle / no ordered pair.
pub fn ranker_loss(
    logits: &Tensor,
    labels: &[f32],
    kind: RankerHeadKind,
    cfg: &RankerTrainConfig,
) -> Result<(Tensor, f64, f64)> {
    let b = labels.len();
    let dev = logits.device();
    let (score, ce_terms) = match kind {
        RankerHeadKind::V15 => {
            let l = logits.squeeze(D::Minus1)?;
            // BCE with logits: softplus(l) − t·l, softplus(l) = max(l, 0) + ln(1 + e^{−|l|}).
            let softplus = (l.relu()? + (l.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            let t: Vec<f32> =
                labels.iter().map(|&y| if y as f64 > cfg.confident_high { 1.0 } else { 0.0 }).collect();
            let t = Tensor::from_vec(t, b, dev)?;
            (candle_nn::ops::sigmoid(&l)?, (softplus - (&l * t)?)?)
        }
        RankerHeadKind::V1 => {
            let lp = cryoforge_nn::ops::log_softmax(logits)?;
            let onehot: Vec<f32> = labels
                .iter()
                .flat_map(|&y| if y as f64 > cfg.confident_high { [0.0, 1.0] } else { [1.0, 0.0] })
                .collect();
            let oh = Tensor::from_vec(onehot, (b, 2), dev)?;
            ((lp.narrow(1, 1, 1)?.squeeze(1)?).exp()?, (lp * oh)?.sum(1)?.neg()?)
        }
    };
    let conf: Vec<f32> = labels
        .iter()
        .map(|&y| {
            let y = y as f64;
            if y > cfg.confident_high || y <= cfg.confident_low {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let n_conf: f32 = conf.iter().sum();
    let ce = if n_conf > 0.0 {
        (ce_terms * Tensor::from_vec(conf, b, dev)?)?.sum_all()?.affine(1.0 / n_conf as f64, 0.0)?
    } else {
        Tensor::zeros((), DType::F32, dev)?
    };
    // Margin ranking over ordered pairs y_i > y_j.
    let mut mask = vec![0f32; b * b];
    for i in 0..b {
        for j in 0..b {
            if labels[i] > labels[j] {
                mask[i * b + j] = 1.0;
            }
        }
    }
    let n_pairs: f32 = mask.iter().sum();
    let rank = if n_pairs > 0.0 {
        let diff = score.unsqueeze(1)?.broadcast_sub(&score.unsqueeze(0)?)?;
        let hinge = (diff.neg()? + cfg.margin)?.relu()?;
        (hinge * Tensor::from_vec(mask, (b, b), dev)?)?.sum_all()?.affine(1.0 / n_pairs as f64, 0.0)?
    } else {
        Tensor::zeros((), DType::F32, dev)?
    };
    let total = (&ce + (&rank * cfg.rank_weight)?)?;
    Ok((total, ce.to_scalar::<f32>()? as f64, rank.to_scalar::<f32>()? as f64))
}

/// Encoder and head over one VarMap with the released names.
pub struct Ranker {
    pub vit: Vit,
    pub head: RankerHead,
    vars: Vec<(String, Var)>,
}

impl Ranker {
    /// A model with MoCo v3's initialisation, then (when `init` is given) the encoder's
    /// tensors and BatchNorm statistics of that file.
    pub fn new(
        cfg: &RankerTrainConfig,
        init: Option<&HashMap<String, Tensor>>,
        device: &Device,
    ) -> Result<Ranker> {
        let vm = VarMap::new();
        let bm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let bb = VarBuilder::from_varmap(&bm, DType::F32, device);
        let vit = Vit::new(&cfg.vit, vb.clone(), bb)?;
        let c = cfg.vit.embed_dim;
        let head = match cfg.head {
            RankerHeadKind::V15 => RankerHead::v15(c, vb.pp("head"))?,
            RankerHeadKind::V1 => RankerHead::v1(c, vb.pp("head").pp("mlp_classifier").pp("0"))?,
        };
        let vars = sorted_vars(&vm);
        init_vars(&vars, cfg.seed)?;
        if let Some(t) = init {
            for (n, v) in vars.iter().filter(|(n, _)| !n.starts_with("head.")) {
                let x =
                    t.get(n).ok_or_else(|| IefError::msg(format!("initial weights: tensor {n} missing")))?;
                if x.dims() != v.dims() {
                    return Err(IefError::msg(format!(
                        "initial weights: tensor {n} has shape {:?}, the encoder needs {:?}",
                        x.dims(),
                        v.dims()
                    )));
                }
                v.set(&x.to_dtype(DType::F32)?.to_device(device)?)?;
            }
            if cfg.vit.bn_in_block {
                vit.load_buffers(t)?;
            }
        }
        Ok(Ranker { vit, head, vars })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn logits(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let cls = self.vit.forward_cls(x, mode)?;
        self.head.logits(&cls, mode == Mode::Train)
    }

    pub fn scores(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(self.head.score(&self.vit.forward_cls(x, Mode::Eval)?)?.to_vec1()?)
    }

    pub fn buffers(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.vit.buffers()?.into_iter().collect())
    }

    /// Parameters and buffers by the released names.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.buffers()?;
        for (n, v) in &self.vars {
            out.insert(n.clone(), v.as_tensor().detach());
        }
        Ok(out)
    }
}

/// One line of progress.
#[derive(Debug, Clone)]
pub struct RankerProgress {
    pub step: u64,
    pub total: u64,
    pub epoch: u64,
    pub loss: f64,
    pub ce: f64,
    pub rank: f64,
    pub images_per_s: f64,
    /// Validation ROC AUC after the epoch that just ended.
    pub val_auc: Option<f64>,
}

/// RUN/config.json of a ranker run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankerRun {
    pub config: RankerTrainConfig,
    pub particles: String,
    pub n_particles: usize,
}

/// RUN/train.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankerOutcome {
    pub steps: u64,
    pub n_train: usize,
    pub n_val: usize,
    pub n_confident: usize,
    pub elapsed_s: f64,
    pub particles_per_s: f64,
    /// (epoch, validation ROC AUC) after each epoch (empty without validation particles of
    /// both kinds).
    pub val_auc: Vec<(u64, f64)>,
    pub final_loss: f64,
    pub weights: String,
}

/// Scores of particles `idx` with the released preprocessing (batches of `batch`).
pub fn score_indices(
    model: &Ranker,
    views: &ViewBatcher,
    idx: &[usize],
    batch: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let s = views.size();
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(batch.max(1)) {
        let v = views.views(chunk, 1, &AugmentConfig::none(), 0, 0)?;
        let x = Tensor::from_slice(&v[0], (chunk.len(), s, s), device)?;
        out.extend(model.scores(&x)?);
    }
    Ok(out)
}

/// Fine-tunes a ranker on `labels` (one per particle of `stack`, in [0, 1]).
#[allow(clippy::too_many_arguments)]
pub fn train_ranker(
    stack: Arc<ParticleStack>,
    particles_label: &str,
    labels: &[f32],
    init: Option<&HashMap<String, Tensor>>,
    cfg: &RankerTrainConfig,
    run: &Path,
    resume: bool,
    device: &Device,
    on_progress: &mut dyn FnMut(&RankerProgress),
) -> Result<RankerOutcome> {
    cfg.check()?;
    let n = stack.len();
    if labels.len() != n {
        return Err(IefError::msg(format!("{} labels for {n} particles", labels.len())));
    }
    if let Some(i) = labels.iter().position(|y| !(0.0..=1.0).contains(y)) {
        return Err(IefError::msg(format!("label of particle {i} is {}: labels are in [0, 1]", labels[i])));
    }
    let (train, val) = split(n, cfg.val_fraction, cfg.seed);
    if train.len() < 2 {
        return Err(IefError::msg(format!("{} training particles: need at least 2", train.len())));
    }
    let n_conf = train
        .iter()
        .filter(|&&i| labels[i] as f64 > cfg.confident_high || labels[i] as f64 <= cfg.confident_low)
        .count();
    if n_conf == 0 {
        return Err(IefError::msg(format!(
            "no confident label among the training particles (none > {} or ≤ {})",
            cfg.confident_high, cfg.confident_low
        )));
    }
    std::fs::create_dir_all(run).map_err(|e| io_err(run, format!("cannot create: {e}")))?;
    let model = Ranker::new(cfg, init, device)?;
    let (enc, head): (Vec<_>, Vec<_>) =
        model.vars().iter().cloned().partition(|(n, _)| !n.starts_with("head."));
    let mut opt = Adam::new(
        vec![
            ParamGroup::new("encoder", enc, cfg.lr * cfg.encoder_lr_scale)
                .with_weight_decay(cfg.weight_decay),
            ParamGroup::new("head", head, cfg.lr).with_weight_decay(cfg.weight_decay),
        ],
        AdamConfig::adamw(),
    )?;
    let mut rng = TrainRng::seed_from_u64(cfg.seed ^ 0x7a4c);
    let cfg_path = run.join("config.json");
    let total = cfg.total_steps(train.len());
    let per_epoch = cfg.steps_per_epoch(train.len());
    let warmup = ((cfg.warmup_epochs * per_epoch as f64).round() as u64).min(total / 2);
    let mut step = 0u64;
    if resume {
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| io_err(&cfg_path, format!("--resume: {e}")))?;
        let saved: RankerRun = serde_json::from_str(&text).map_err(|e| io_err(&cfg_path, e))?;
        if !saved.config.same_training(cfg) || saved.n_particles != n {
            return Err(IefError::msg(format!(
                "{}: --resume with other settings or particles than the run was started with",
                cfg_path.display()
            )));
        }
        let (r, b) = load_checkpoint_with_buffers(run, model.vars(), &mut opt, device)?;
        model.vit.load_buffers(&b)?;
        step = r.step;
        rng = r.rng;
    } else {
        let info = RankerRun { config: cfg.clone(), particles: particles_label.to_string(), n_particles: n };
        let json = serde_json::to_string_pretty(&info).map_err(|e| IefError::msg(e.to_string()))?;
        cryoforge_io::atomic::write_bytes_atomic(&cfg_path, json.as_bytes())?;
        let _ = std::fs::remove_file(run.join("metrics.csv"));
        let _ = std::fs::remove_file(run.join("validation.csv"));
    }
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join(name))
            .map_err(|e| io_err(&run.join(name), e))
    };
    let mut csv = open("metrics.csv")?;
    if csv.metadata().map(|m| m.len() == 0).unwrap_or(true) {
        csv.write_all(b"step,epoch,images,elapsed_s,loss,ce,rank,lr\n")
            .map_err(|e| io_err(&run.join("metrics.csv"), e))?;
    }
    let mut vcsv = open("validation.csv")?;
    if vcsv.metadata().map(|m| m.len() == 0).unwrap_or(true) {
        vcsv.write_all(b"epoch,step,val_auc\n").map_err(|e| io_err(&run.join("validation.csv"), e))?;
    }
    let views = ViewBatcher::new(stack.clone(), cfg.vit.img_size, cfg.resample, cfg.invert)?;
    let val_pos: Vec<bool> = val.iter().map(|&i| labels[i] > 0.5).collect();
    let can_validate = val_pos.iter().any(|&p| p) && val_pos.iter().any(|&p| !p);
    let s = cfg.vit.img_size;
    let batch = cfg.batch_size.min(train.len());
    let t0 = std::time::Instant::now();
    let start = step;
    let mut aucs = Vec::new();
    let (mut wl, mut wc, mut wr, mut wn) = (0.0, 0.0, 0.0, 0usize);
    let mut last = f64::NAN;
    while step < total {
        let f = if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else {
            0.5 * (1.0
                + (std::f64::consts::PI * (step - warmup) as f64 / (total - warmup).max(1) as f64).cos())
        };
        opt.set_lr(0, cfg.lr * cfg.encoder_lr_scale * f);
        opt.set_lr(1, cfg.lr * f);
        let (idx, epoch) = batch_at(&train, batch, cfg.seed, step);
        let v = views.views(&idx, 1, &cfg.augment, cfg.seed, step)?;
        let x = Tensor::from_slice(&v[0], (idx.len(), s, s), device)?;
        let y: Vec<f32> = idx.iter().map(|&i| labels[i]).collect();
        let (loss, ce, rk) = ranker_loss(&model.logits(&x, Mode::Train)?, &y, cfg.head, cfg)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(IefError::msg(format!(
                "step {step}: the loss is {lv} (diverged; try a smaller --lr)"
            )));
        }
        opt.backward_step(&loss)?;
        step += 1;
        (wl, wc, wr, wn) = (wl + lv, wc + ce, wr + rk, wn + 1);
        let el = t0.elapsed().as_secs_f64();
        writeln!(
            csv,
            "{step},{epoch},{},{el:.3},{lv:.6},{ce:.6},{rk:.6},{:.6e}",
            step * batch as u64,
            cfg.lr * f
        )
        .map_err(|e| io_err(&run.join("metrics.csv"), e))?;
        let epoch_end = step.is_multiple_of(per_epoch) || step == total;
        let mut val_auc = None;
        if epoch_end && can_validate {
            let sc = score_indices(&model, &views, &val, batch, device)?;
            let sc: Vec<f64> = sc.iter().map(|&v| v as f64).collect();
            let auc = cryoforge_analysis::roc_auc(&sc, &val_pos).map_err(|e| IefError::msg(e.to_string()))?;
            writeln!(vcsv, "{},{step},{auc:.6}", (step - 1) / per_epoch)
                .map_err(|e| io_err(&run.join("validation.csv"), e))?;
            aucs.push(((step - 1) / per_epoch, auc));
            val_auc = Some(auc);
        }
        if step.is_multiple_of(cfg.log_every.max(1)) || step == total || val_auc.is_some() {
            last = wl / wn.max(1) as f64;
            on_progress(&RankerProgress {
                step,
                total,
                epoch,
                loss: last,
                ce: wc / wn.max(1) as f64,
                rank: wr / wn.max(1) as f64,
                images_per_s: ((step - start) * batch as u64) as f64 / el.max(1e-9),
                val_auc,
            });
            (wl, wc, wr, wn) = (0.0, 0.0, 0.0, 0);
        }
        if step.is_multiple_of(cfg.checkpoint_every.max(1)) || step == total {
            save_checkpoint_with_buffers(&model.buffers()?, model.vars(), &opt, run, step, &rng)?;
        }
    }
    let weights = run.join("weights.safetensors");
    save_tensors_atomic(&model.tensors()?, &weights)?;
    let el = t0.elapsed().as_secs_f64();
    let out = RankerOutcome {
        steps: step,
        n_train: train.len(),
        n_val: val.len(),
        n_confident: n_conf,
        elapsed_s: el,
        particles_per_s: ((step - start) * batch as u64) as f64 / el.max(1e-9),
        val_auc: aucs,
        final_loss: last,
        weights: weights.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| IefError::msg(e.to_string()))?;
    cryoforge_io::atomic::write_bytes_atomic(&run.join("train.json"), json.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranker_loss_known_values() {
        let dev = Device::Cpu;
        let cfg = RankerTrainConfig::new(VitConfig::cpu(), false);
        // v1.5, logits 0 and ln 3 (scores ½ and ¾), labels 1 and 0 (both confident):
        // BCE = (ln 2 + ln 4)/2; one ordered pair (0 over 1): max(0, 0.2 − (½ − ¾)) = 0.45.
        let l = Tensor::new(&[[0f32], [3f32.ln()]], &dev).unwrap();
        let (t, ce, rk) = ranker_loss(&l, &[1.0, 0.0], RankerHeadKind::V15, &cfg).unwrap();
        assert!((ce - (2f64.ln() + 4f64.ln()) / 2.0).abs() < 1e-5, "{ce}");
        assert!((rk - 0.45).abs() < 1e-6, "{rk}");
        assert!((t.to_scalar::<f32>().unwrap() as f64 - (ce + rk)).abs() < 1e-5);
        // An unconfident label (0.5) adds no CE term but still ranks.
        let (_, ce2, rk2) = ranker_loss(&l, &[1.0, 0.5], RankerHeadKind::V15, &cfg).unwrap();
        assert!((ce2 - 2f64.ln()).abs() < 1e-5 && (rk2 - 0.45).abs() < 1e-6);
        // v1: logits (0, 0) and (0, ln 3): p₁ = ½ and ¾; labels 0, 1 → CE = (ln 2 + ln(4/3))/2,
        // pair (1 over 0): max(0, 0.2 − (¾ − ½)) = 0.
        let l = Tensor::new(&[[0f32, 0.0], [0.0, 3f32.ln()]], &dev).unwrap();
        let (_, ce, rk) = ranker_loss(&l, &[0.0, 1.0], RankerHeadKind::V1, &cfg).unwrap();
        assert!((ce - (2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0).abs() < 1e-5, "{ce}");
        assert!(rk.abs() < 1e-7);
    }
}
