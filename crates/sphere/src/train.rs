//! The cryoSPHERE training loop and the run directory it writes (run-directory contract of
//! the project notes): RUN/run.toml, RUN/metrics.csv + metrics.jsonl, RUN/checkpoints/,
//! RUN/weights.safetensors, RUN/reference.pdb and RUN/model.json (what analysis needs to
//! rebuild the model: parts layout, amplitudes, image normalisation, band).
//!
//! Per step, for a batch of B particles with poses A_b, shifts t_b and CTFs:
//!
//! ```text
//! z = μ + σ·ε                                         (encoder on images/f_std)
//! w ~ q(segmentation)                                 (one draw per image)
//! x_b = deform(x⁰, w_b, decoder(z_b))                 (model.rs)
//! L = −corr(render(x_b, A_b, t_b, CTF_b), image_b)     (unmasked, Fourier space)
//!   + β_z(t)·KL(z)/D² + β_s(t)·(KL_m + KL_s)/D² + β_π(t)·KL_π/D²
//!   + λ_cont·continuity + λ_clash·clash + l2·‖W‖²
//! ```
//!
//! β_z, β_s ramp linearly from 0 to their maxima over `kl_ramp_fraction` of the steps;
//! β_π follows the cyclical schedule (5 cycles, ratio 0.5). The L2 term is Adam's
//! (non-decoupled) weight decay 2·l2 on the network group. Networks and segmentation are
//! two parameter groups with their own learning rates.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use cryoforge_io::pdb::AnchorResidue;
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::data::{DataLoader, LoaderConfig};
use cryoforge_nn::loss::{FourierCorrelationLoss, PairList, Schedule};
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use cryoforge_nn::{Band, Renderer};
use rand::Rng;
use rand::SeedableRng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::config::{ClashMode, SphereConfig};
use crate::model::SphereModel;
use crate::parts::Layout;
use crate::{Result, SphereError};

/// Everything analysis needs besides the weights and the settings (RUN/model.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    pub box_px: usize,
    pub apix: f64,
    /// Std of the particle images used to normalise the encoder input.
    pub image_std: f64,
    /// Band radius of the renderer (frequency-index units).
    pub band_radius: usize,
    pub chains: Vec<String>,
    pub resids: Vec<i32>,
    pub resnames: Vec<String>,
    pub amplitudes: Vec<f64>,
    pub part_of: Vec<Option<usize>>,
    pub pos: Vec<f32>,
    pub part_len: Vec<usize>,
    pub n_segm: Vec<usize>,
}

impl ModelMeta {
    pub fn layout(&self) -> Layout {
        let mut seg_start = Vec::new();
        let mut acc = 0;
        for &n in &self.n_segm {
            seg_start.push(acc);
            acc += n;
        }
        Layout {
            part_of: self.part_of.clone(),
            pos: self.pos.clone(),
            part_len: self.part_len.clone(),
            seg_start,
            n_segm: self.n_segm.clone(),
        }
    }

    pub fn read(run: &Path) -> Result<ModelMeta> {
        let p = run.join("model.json");
        let t =
            std::fs::read_to_string(&p).map_err(|e| SphereError::file(&p, format!("cannot read: {e}")))?;
        serde_json::from_str(&t).map_err(|e| SphereError::file(&p, e.to_string()))
    }
}

/// Band radius for σ and an optional low-pass: the Gaussian envelope's cut
/// (exp(−2π²σ²k²) ≥ 1e-7) or the low-pass, at most D/2 − 1 (then the unmasked Fourier
/// correlation is exact).
pub fn band_radius(d: usize, apix: f64, sigma_a: f64, lowpass_a: Option<f64>) -> usize {
    let env = ((1e7f64).ln() / (2.0 * std::f64::consts::PI.powi(2) * sigma_a * sigma_a)).sqrt();
    let mut k = (env * d as f64 * apix).floor() as usize;
    if let Some(r) = lowpass_a {
        k = k.min((d as f64 * apix / r).floor() as usize);
    }
    k.clamp(1, d / 2 - 1)
}

/// Normalisation std of the encoder input: population std over evenly spaced particles
/// (a `fraction` of them, at least 100 or all).
pub fn estimate_image_std(stack: &ParticleStack, fraction: f64, invert: bool) -> Result<f64> {
    let n = stack.len();
    let d = stack.box_px()?;
    let m = ((n as f64 * fraction).ceil() as usize).max(100).min(n).max(1);
    let mut buf = vec![0f32; d * d];
    let (mut s, mut s2, mut cnt) = (0f64, 0f64, 0f64);
    for j in 0..m {
        let i = j * n / m;
        stack.read_image(i, &mut buf)?;
        for &v in &buf {
            let v = if invert { -v as f64 } else { v as f64 };
            s += v;
            s2 += v * v;
            cnt += 1.0;
        }
    }
    let mean = s / cnt;
    let sd = (s2 / cnt - mean * mean).max(0.0).sqrt();
    if !(sd.is_finite() && sd > 0.0) {
        return Err(SphereError::file(&stack.path, "the particle images are constant (std 0)"));
    }
    Ok(sd)
}

/// What the caller provides.
pub struct TrainInputs {
    pub stack: Arc<ParticleStack>,
    /// Reference residues (positions in Å, origin at the box centre).
    pub residues: Vec<AnchorResidue>,
    pub layout: Layout,
    pub out: PathBuf,
    /// Continue from the latest checkpoint in RUN/checkpoints.
    pub resume: bool,
    /// Where the model and batches live (`cryoforge_nn::parse_device`).
    pub device: Device,
    /// The command line (for run.toml).
    pub command: String,
    /// Further `[data]` entries of run.toml that reload the same particles (poses, ctf,
    /// datadir, ind, first, hetrefine; as given on the command line).
    pub data_extra: Vec<(String, String)>,
}

/// Progress report (called after every step).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f64,
}

/// Summary of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run: String,
    pub steps: u64,
    pub epochs: u64,
    pub n_particles: usize,
    pub n_segments: usize,
    pub images_per_s: f64,
    pub elapsed_s: f64,
    pub final_loss: f64,
    pub skipped_steps: u64,
    pub resumed_from_step: Option<u64>,
}

const METRIC_COLS: [&str; 10] = [
    "recon",
    "kl_latent",
    "kl_seg_mean",
    "kl_seg_std",
    "kl_seg_prop",
    "continuity",
    "clash",
    "beta_latent",
    "beta_seg",
    "beta_prop",
];

fn latest_checkpoint(dir: &Path) -> Option<(u64, PathBuf)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(num) = name.strip_prefix("step_") else { continue };
        let Ok(s) = num.parse::<u64>() else { continue };
        if e.path().join("state.json").exists() && best.as_ref().is_none_or(|b| s > b.0) {
            best = Some((s, e.path()));
        }
    }
    best
}

fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    cryoforge_io::atomic::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Write RUN/run.toml (run-directory contract).
pub fn write_run_toml(
    out: &Path,
    cfg: &SphereConfig,
    command: &str,
    stack: &ParticleStack,
    data_extra: &[(String, String)],
) -> Result<()> {
    let mut run = toml::map::Map::new();
    run.insert("command".into(), command.into());
    run.insert("method".into(), "cryosphere".into());
    run.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    run.insert("started".into(), toml::Value::String(format!("unix:{started}")));
    run.insert("seed".into(), toml::Value::Integer(cfg.seed as i64));
    let settings = toml::Value::try_from(cfg).map_err(|e| SphereError::msg(format!("settings: {e}")))?;
    let mut data = toml::map::Map::new();
    data.insert("particles".into(), stack.path.display().to_string().into());
    data.insert("n_particles".into(), toml::Value::Integer(stack.len() as i64));
    data.insert("box".into(), toml::Value::Integer(stack.box_px()? as i64));
    data.insert("apix".into(), toml::Value::Float(stack.apix_a()?));
    for (k, v) in data_extra {
        data.insert(k.clone(), v.clone().into());
    }
    let mut root = toml::map::Map::new();
    root.insert("run".into(), toml::Value::Table(run));
    root.insert("settings".into(), settings);
    root.insert("data".into(), toml::Value::Table(data));
    let text = toml::to_string(&toml::Value::Table(root)).map_err(|e| SphereError::msg(e.to_string()))?;
    write_text_atomic(&out.join("run.toml"), &text)
}

/// Read the `[settings]` of RUN/run.toml.
pub fn read_run_settings(run: &Path) -> Result<SphereConfig> {
    SphereConfig::from_toml_file(&run.join("run.toml"))
}

/// Pair lists of the structural losses.
struct Structural {
    cont: Option<(PairList, Tensor)>,
    clash: Option<PairList>,
}

fn structural(cfg: &SphereConfig, res: &[AnchorResidue], dev: &Device) -> Result<Structural> {
    let pos: Vec<[f64; 3]> = res.iter().map(|r| r.pos).collect();
    let mut ids: Vec<&str> = Vec::new();
    let chain: Vec<u32> = res
        .iter()
        .map(|r| match ids.iter().position(|c| *c == r.chain) {
            Some(i) => i as u32,
            None => {
                ids.push(&r.chain);
                (ids.len() - 1) as u32
            }
        })
        .collect();
    let cont = if cfg.continuity > 0.0 {
        let (p, d) = cryoforge_nn::structure::consecutive_pairs(&pos, &chain);
        let n = d.len();
        Some((PairList::new(&p, dev)?, Tensor::from_vec(d, n, dev)?))
    } else {
        None
    };
    let clash = if cfg.clash > 0.0 {
        let pairs = match cfg.clash_mode {
            ClashMode::Light => cryoforge_nn::structure::clash_pairs(&pos, &chain, 4.0, 10.0),
            ClashMode::Full => {
                let mut v = Vec::new();
                for i in 0..pos.len() {
                    for j in i + 1..pos.len() {
                        if !(j == i + 1 && chain[i] == chain[j]) {
                            v.push((i as u32, j as u32));
                        }
                    }
                }
                v
            }
        };
        Some(PairList::new(&pairs, dev)?)
    } else {
        None
    };
    Ok(Structural { cont, clash })
}

/// Train (or resume) a run; `on_step` is called after every optimiser step.
pub fn train(
    cfg: &SphereConfig,
    inp: TrainInputs,
    on_step: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let dev = inp.device.clone();
    let stack = inp.stack.clone();
    let n = stack.len();
    if n == 0 {
        return Err(SphereError::file(&stack.path, "no particles"));
    }
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    if stack.poses.is_none() {
        return Err(SphereError::file(&stack.path, "particles have no poses (give --poses)"));
    }
    let out = inp.out.clone();
    // Data parallel over MPI ranks (nn::parallel): each rank trains on its shard of every
    // global batch; rank 0 writes the run.
    let dp = cryoforge_nn::parallel::DataParallel::world();
    let root = dp.is_root();
    if root {
        std::fs::create_dir_all(out.join("checkpoints"))
            .map_err(|e| SphereError::file(&out, format!("cannot create: {e}")))?;
    }
    let image_std = estimate_image_std(&stack, cfg.fstd_fraction, cfg.invert)?;
    let radius = band_radius(d, apix, cfg.sigma_a, cfg.lowpass_a);
    let ren = Renderer::new(d, apix, Band::Radius(radius), &dev)?;
    let loss_fn = FourierCorrelationLoss::new(d, 1e-8);
    let x0: Vec<[f64; 3]> = inp.residues.iter().map(|r| r.pos).collect();
    let amps: Vec<f64> = inp.residues.iter().map(|r| r.amplitude).collect();
    let model = SphereModel::new(cfg, d, &x0, &amps, inp.layout.clone(), &dev)?;
    let st = structural(cfg, &inp.residues, &dev)?;
    let meta = ModelMeta {
        box_px: d,
        apix,
        image_std,
        band_radius: radius,
        chains: inp.residues.iter().map(|r| r.chain.clone()).collect(),
        resids: inp.residues.iter().map(|r| r.seq).collect(),
        resnames: inp.residues.iter().map(|r| r.name.clone()).collect(),
        amplitudes: amps.clone(),
        part_of: inp.layout.part_of.clone(),
        pos: inp.layout.pos.clone(),
        part_len: inp.layout.part_len.clone(),
        n_segm: inp.layout.n_segm.clone(),
    };
    if root {
        let meta_json = serde_json::to_string_pretty(&meta).map_err(|e| SphereError::msg(e.to_string()))?;
        write_text_atomic(&out.join("model.json"), &meta_json)?;
        cryoforge_io::pdb::write_ca_models(
            out.join("reference.pdb"),
            &inp.residues,
            std::slice::from_ref(&x0),
            None,
        )?;
        write_run_toml(&out, cfg, &inp.command, &stack, &inp.data_extra)?;
    }

    let mut opt = Adam::new(
        vec![
            ParamGroup::new("networks", model.net_vars(), cfg.lr).with_weight_decay(2.0 * cfg.l2),
            ParamGroup::new("segmentation", model.seg.vars.named(), cfg.lr_segmentation),
        ],
        AdamConfig::adam(),
    )?;
    let cache = if cfg.cache_mib > 0 { Some(cfg.cache_mib << 20) } else { None };
    let loader = DataLoader::new(
        stack.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            shuffle: true,
            drop_last: false,
            prefetch: 2,
            cache_limit_bytes: cache,
            shard: (dp.rank(), dp.size()),
        },
    )?;
    let per_epoch = loader.n_batches() as u64;
    let epochs = cfg.resolved_epochs(n);
    let total = cfg.steps.unwrap_or(epochs * per_epoch);
    let mut rng = TrainRng::seed_from_u64(cfg.seed);
    let mut step = 0u64;
    let mut resumed = None;
    let all_vars = model.all_vars();
    let mut metrics_csv = format!("step,epoch,images,elapsed_s,loss,{}\n", METRIC_COLS.join(","));
    let mut metrics_jsonl = String::new();
    let mut elapsed0 = 0f64;
    if inp.resume {
        if let Some((s, dir)) = latest_checkpoint(&out.join("checkpoints")) {
            let r = checkpoint::load(&dir, &all_vars, Some(&mut opt))?;
            step = r.step;
            rng = r.rng;
            resumed = Some(s);
            // Keep the metrics rows up to the checkpoint.
            if let Ok(t) = std::fs::read_to_string(out.join("metrics.csv")) {
                metrics_csv = String::new();
                for (i, line) in t.lines().enumerate() {
                    let keep = i == 0
                        || line
                            .split(',')
                            .next()
                            .and_then(|v| v.parse::<u64>().ok())
                            .is_some_and(|v| v <= step);
                    if keep {
                        metrics_csv.push_str(line);
                        metrics_csv.push('\n');
                    }
                    if i > 0 && keep {
                        elapsed0 = line.split(',').nth(3).and_then(|v| v.parse().ok()).unwrap_or(elapsed0);
                    }
                }
            }
            if let Ok(t) = std::fs::read_to_string(out.join("metrics.jsonl")) {
                for line in t.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    if v.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s <= step) {
                        metrics_jsonl.push_str(line);
                        metrics_jsonl.push('\n');
                    }
                }
            }
        }
    }
    let d2 = if cfg.kl_per_pixel { (d * d) as f64 } else { 1.0 };
    let ramp = ((total as f64) * cfg.kl_ramp_fraction).round() as u64;
    let beta_z = Schedule::Linear { start: 0.0, end: cfg.kl_latent, steps: ramp };
    let beta_s = Schedule::Linear { start: 0.0, end: cfg.kl_segmentation, steps: ramp };
    let beta_p = Schedule::Cyclical {
        max: cfg.kl_proportions,
        total,
        cycles: cfg.kl_cycles,
        ratio: cfg.kl_cycle_ratio,
    };
    let t0 = Instant::now();
    let step0 = step;
    let mut acc = [0f64; 1 + METRIC_COLS.len()];
    let mut acc_n = 0f64;
    let mut last_loss = f64::NAN;
    let inv_std = 1.0 / image_std;
    let k = model.seg.n_segments();
    'outer: while step < total {
        let epoch = step / per_epoch;
        let skip = (step % per_epoch) as usize;
        for batch in loader.epoch(epoch).skip(skip) {
            let mut batch = batch?;
            let b = batch.len();
            let mut imgs = std::mem::take(&mut batch.images);
            if cfg.invert {
                imgs.iter_mut().for_each(|v| *v = -*v);
            }
            let data = ren.band_data(&imgs)?;
            let x = (Tensor::from_vec(imgs, (b, d * d), &dev)? * inv_std)?;
            let (rots, shifts) =
                batch.pose_tensors(&dev)?.ok_or_else(|| SphereError::msg("particles without poses"))?;
            let transfer = match &batch.ctf {
                Some(c) => ren.ctf_transfer(c)?,
                None => ren.identity_transfer(b)?,
            };
            let (mu, sd) = model.encode(&x)?;
            // Draws for the whole global batch from the shared rng, this shard's rows: the
            // draws one process makes, and the same rng state on every rank.
            let (gb, s0) = (batch.global_len, batch.shard_start);
            let eps: Vec<f32> = (0..gb * cfg.zdim).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
            let eps = Tensor::from_vec(eps, (gb, cfg.zdim), &dev)?.narrow(0, s0, b)?;
            let z = (mu.clone() + (eps * &sd)?)?;
            let motions = model.decode(&z)?;
            let mut ws = model.seg.sample_blocks(gb, &mut rng)?;
            if gb != b {
                ws = ws.iter().map(|w| w.narrow(0, s0, b)).collect::<candle_core::Result<_>>()?;
            }
            let coords = model.deform_blocks(&ws, &motions)?;
            let spec = ren.spectrum(&coords, &model.amps, &model.sigma, &rots, &shifts)?;
            let recon = loss_fn.loss(&ren.apply_transfer(&spec, &transfer)?, &data)?;
            let zeros = Tensor::zeros((), DType::F32, &dev)?;
            let klz = cryoforge_nn::loss::gaussian_kl_std(&mu, &sd, &zeros, &zeros.ones_like()?)?
                .sum(1)?
                .mean_all()?;
            let (klm, kls, klp) = model.seg.kl()?;
            let (bz, bs, bp) = (beta_z.value(step), beta_s.value(step), beta_p.value(step));
            // Each term is this shard's contribution to the global batch loss: batch means and
            // the batch-free segmentation KLs scaled by the shard's share (Σ shares = 1).
            let share = batch.share();
            let sh = |t: Tensor| -> candle_core::Result<Tensor> {
                if share == 1.0 {
                    Ok(t)
                } else {
                    t.affine(share, 0.0)
                }
            };
            let (recon, klz, klm, kls, klp) = (sh(recon)?, sh(klz)?, sh(klm)?, sh(kls)?, sh(klp)?);
            let mut loss =
                (&recon + (&klz * (bz / d2))? + ((&klm + &kls)? * (bs / d2))? + (&klp * (bp / d2))?)?;
            let cont = match &st.cont {
                Some((p, d0)) => sh(cryoforge_nn::loss::continuity_loss(&coords, p, d0)?)?,
                None => zeros.clone(),
            };
            let clash = match &st.clash {
                Some(p) => cryoforge_nn::loss::clash_loss_dp(&coords, p, cfg.clash_cutoff_a, &dp)?,
                None => zeros.clone(),
            };
            if st.cont.is_some() {
                loss = (loss + (&cont * cfg.continuity)?)?;
            }
            if st.clash.is_some() {
                loss = (loss + (&clash * cfg.clash)?)?;
            }
            let (global_loss, _) = dp.backward_step(&mut opt, &loss, &all_vars)?;
            step += 1;
            let mut vals = [
                global_loss,
                scalar(&recon)?,
                scalar(&klz)?,
                scalar(&klm)?,
                scalar(&kls)?,
                scalar(&klp)?,
                scalar(&cont)?,
                scalar(&clash)?,
                bz,
                bs,
                bp,
            ];
            if dp.is_distributed() {
                dp.all_reduce_f64(&mut vals[1..8]);
            }
            last_loss = vals[0];
            for (a, v) in acc.iter_mut().zip(vals) {
                *a += v;
            }
            acc_n += 1.0;
            on_step(&Progress { step, total_steps: total, epoch, loss: last_loss });
            if step.is_multiple_of(cfg.log_every) || step == total {
                let el = elapsed0 + t0.elapsed().as_secs_f64();
                let images = step * cfg.batch_size as u64;
                let mean: Vec<f64> = acc.iter().map(|a| a / acc_n).collect();
                metrics_csv.push_str(&format!("{step},{epoch},{images},{el:.3}"));
                let mut obj = serde_json::Map::new();
                obj.insert("step".into(), step.into());
                obj.insert("epoch".into(), epoch.into());
                obj.insert("images".into(), images.into());
                obj.insert("elapsed_s".into(), el.into());
                obj.insert("loss".into(), json_f(mean[0]));
                metrics_csv.push_str(&format!(",{:.6e}", mean[0]));
                for (c, v) in METRIC_COLS.iter().zip(&mean[1..]) {
                    metrics_csv.push_str(&format!(",{v:.6e}"));
                    obj.insert((*c).into(), json_f(*v));
                }
                metrics_csv.push('\n');
                metrics_jsonl.push_str(&serde_json::Value::Object(obj).to_string());
                metrics_jsonl.push('\n');
                if root {
                    write_text_atomic(&out.join("metrics.csv"), &metrics_csv)?;
                    write_text_atomic(&out.join("metrics.jsonl"), &metrics_jsonl)?;
                }
                acc = [0f64; 1 + METRIC_COLS.len()];
                acc_n = 0.0;
            }
            let end_of_epoch = step.is_multiple_of(per_epoch);
            if root
                && ((end_of_epoch && (step / per_epoch).is_multiple_of(cfg.checkpoint_every))
                    || step == total)
            {
                checkpoint::save(
                    &out.join("checkpoints").join(format!("step_{step:08}")),
                    &all_vars,
                    Some(&opt),
                    step,
                    &rng,
                )?;
            }
            if step >= total {
                break 'outer;
            }
        }
    }
    if root {
        let weights: std::collections::HashMap<String, Tensor> =
            all_vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let tmp = out.join("weights.safetensors.tmp");
        candle_core::safetensors::save(&weights, &tmp)?;
        std::fs::rename(&tmp, out.join("weights.safetensors"))
            .map_err(|e| SphereError::file(&out, format!("cannot finish weights.safetensors: {e}")))?;
    }
    let el = t0.elapsed().as_secs_f64();
    let done = step - step0;
    let summary = TrainSummary {
        run: out.display().to_string(),
        steps: step,
        epochs: step.div_ceil(per_epoch),
        n_particles: n,
        n_segments: k,
        images_per_s: if el > 0.0 { (done * cfg.batch_size as u64) as f64 / el } else { 0.0 },
        elapsed_s: elapsed0 + el,
        final_loss: last_loss,
        skipped_steps: opt.skipped(),
        resumed_from_step: resumed,
    };
    if root {
        let js = serde_json::to_string_pretty(&summary).map_err(|e| SphereError::msg(e.to_string()))?;
        write_text_atomic(&out.join("train_summary.json"), &(js + "\n"))?;
    }
    let _ = std::io::stderr().flush();
    Ok(summary)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn json_f(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
}

/// Rebuild a trained model from a run directory (settings, model.json, weights).
pub fn load_model(run: &Path) -> Result<(SphereModel, ModelMeta, SphereConfig)> {
    let cfg = read_run_settings(run)?;
    let meta = ModelMeta::read(run)?;
    let dev = Device::Cpu;
    let reference = cryoforge_io::pdb::read_structure(run.join("reference.pdb"))?;
    let model0 =
        reference.models.first().ok_or_else(|| SphereError::file(&run.join("reference.pdb"), "no model"))?;
    let res = cryoforge_io::pdb::anchor_atoms(model0)
        .map_err(|e| SphereError::file(&run.join("reference.pdb"), e.to_string()))?;
    if res.len() != meta.amplitudes.len() {
        return Err(SphereError::file(
            &run.join("reference.pdb"),
            format!("{} residues, model.json has {}", res.len(), meta.amplitudes.len()),
        ));
    }
    let x0: Vec<[f64; 3]> = res.iter().map(|r| r.pos).collect();
    let model = SphereModel::new(&cfg, meta.box_px, &x0, &meta.amplitudes, meta.layout(), &dev)?;
    let wp = run.join("weights.safetensors");
    let w = candle_core::safetensors::load(&wp, &dev).map_err(|e| SphereError::file(&wp, e.to_string()))?;
    for (name, var) in model.all_vars() {
        let t = w.get(&name).ok_or_else(|| SphereError::file(&wp, format!("lacks parameter {name}")))?;
        if t.dims() != var.dims() {
            return Err(SphereError::file(
                &wp,
                format!("parameter {name}: shape {:?}, model {:?}", t.dims(), var.dims()),
            ));
        }
        var.set(t)?;
    }
    Ok((model, meta, cfg))
}
