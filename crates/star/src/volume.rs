//! cryoSTAR Phase II: a heterogeneous implicit volume conditioned on frozen latents, which
//! removes the bias of the reference model (METHODS.md §1, "Phase II").
//!
//! The volume is a function of the 3D frequency k (cycles per pixel) and the latent z:
//!
//! ```text
//! γ(k) = [sin 2π Bᵀk, cos 2π Bᵀk]          B ∈ ℝ^{3×F}, Bᵢⱼ ~ N(0, (ff_sigma·D)²), fixed
//! h₀ = GELU(W₀ [γ(k), z] + b₀)             width W (1024)
//! hₗ = hₗ₋₁ + GELU(Wₗ hₗ₋₁ + bₗ)            l = 1..layers (3 residual layers)
//! H(k, z) = s · (w_out · h_L + b_out)      one Hartley value; s = RMS of the data
//! ```
//!
//! The Hartley transform of a real map is real: H = Re V̂ − Im V̂ with V̂ the centred,
//! unnormalised DFT of CONVENTIONS.md rule 7. B's columns act as real-space positions
//! (pixels): the features are the Hartley kernels cas(2π k·b) of points spread over the
//! particle, so the MLP starts close to a sum of such kernels.
//!
//! **Forward model** (CONVENTIONS.md rules 3, 5, 6). A particle with pose A, shift t (px)
//! and CTF c is `F⁻¹[−c · e^{+2πik·t/D} · V̂(Aᵀk)]`. Its data are re-centred by
//! `e^{−2πik·t/D}`, so their Hartley transform is `−c(k) · H_V(Aᵀ(kₓ, k_y, 0))`: the
//! prediction on the central slice times −CTF. The loss is the mean squared difference
//! over the pixels of the band disk |k| ≤ r (r ≤ D/2 − 1 Fourier pixels), in units of s.
//!
//! Training: AdamW (lr 1e-4, weight decay 0.01), batch 16 particles, a few epochs, the
//! latents frozen. [`eval_volume`] evaluates H on every voxel of the 3D band, builds V̂
//! from H(k) and H(−k) (`Re V̂ = (H(k)+H(−k))/2`, `Im V̂ = (H(−k)−H(k))/2`) and inverse
//! transforms it: a real map, protein-positive (particles are protein-bright).

use crate::{Result, StarError};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use cryoforge_core::ctf::CtfGrid;
use cryoforge_core::fft::{recentre_phasor_2d, Fft2, Fft3, C32};
use cryoforge_core::Rot3;
use cryoforge_io::stack::ParticleStack;
use cryoforge_nn::checkpoint::{self, TrainRng};
use cryoforge_nn::ops::gelu_erf;
use cryoforge_nn::optim::{Adam, AdamConfig, ParamGroup};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Settings of the Phase II volume (METHODS.md §1 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeConfig {
    /// MLP width (1024).
    pub width: usize,
    /// Residual layers (3).
    pub layers: usize,
    /// Random Fourier features (sin and cos of each: 2F inputs).
    pub n_features: usize,
    /// Standard deviation of the feature positions as a fraction of the box.
    pub ff_sigma: f64,
    /// Epochs over the particles (the reference trains 5–20).
    pub epochs: usize,
    /// Particles per step (16).
    pub batch_size: usize,
    /// AdamW learning rate (1e-4).
    pub lr: f64,
    /// AdamW decoupled weight decay (0.01, PyTorch's default).
    pub weight_decay: f64,
    /// Band radius in Fourier pixels (default D/2 − 1, the largest full circle).
    pub band_px: Option<f64>,
    /// Band as a resolution in Å (overrides band_px): r = D·apix / band_a.
    pub band_a: Option<f64>,
    pub seed: u64,
    /// Protein-dark particles (flip their sign).
    pub invert: bool,
    /// Metrics row every N steps.
    pub log_every: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            width: 1024,
            layers: 3,
            n_features: 128,
            ff_sigma: 0.1,
            epochs: 10,
            batch_size: 16,
            lr: 1e-4,
            weight_decay: 0.01,
            band_px: None,
            band_a: None,
            seed: 0,
            invert: false,
            log_every: 50,
        }
    }
}

impl VolumeConfig {
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(StarError::msg(format!("volume settings: {m}")));
        if self.width == 0 || self.n_features == 0 || self.batch_size == 0 || self.epochs == 0 {
            return bad("width, n_features, batch_size and epochs must be ≥ 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr = {} must be > 0", self.lr));
        }
        if !(self.ff_sigma.is_finite() && self.ff_sigma > 0.0) {
            return bad(format!("ff_sigma = {} must be > 0", self.ff_sigma));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay = {} must be ≥ 0", self.weight_decay));
        }
        if let Some(b) = self.band_px {
            if !(b.is_finite() && b >= 1.0) {
                return bad(format!("band_px = {b} must be ≥ 1"));
            }
        }
        if let Some(b) = self.band_a {
            if !(b.is_finite() && b > 0.0) {
                return bad(format!("band_a = {b} must be > 0"));
            }
        }
        Ok(())
    }

    /// The band radius in Fourier pixels for a D-pixel box at `apix` Å/px.
    pub fn band_radius(&self, d: usize, apix: f64) -> f64 {
        let max = (d / 2) as f64 - 1.0;
        let r = match (self.band_a, self.band_px) {
            (Some(a), _) => d as f64 * apix / a,
            (None, Some(p)) => p,
            (None, None) => max,
        };
        r.clamp(1.0, max)
    }
}

/// The implicit volume H(k, z).
pub struct VolumeModel {
    pub vm: VarMap,
    /// Feature positions, [3, F] row-major (fixed, drawn from the seed; no gradient).
    b: Vec<f32>,
    device: Device,
    inp: Linear,
    res: Vec<Linear>,
    out: Linear,
    pub zdim: usize,
    pub d: usize,
    /// Output scale s.
    pub scale: f32,
}

impl VolumeModel {
    pub fn new(
        cfg: &VolumeConfig,
        d: usize,
        zdim: usize,
        scale: f32,
        device: &Device,
    ) -> Result<VolumeModel> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let f = cfg.n_features;
        let inp = linear(2 * f + zdim, cfg.width, vb.pp("inp"))?;
        let res = (0..cfg.layers)
            .map(|i| linear(cfg.width, cfg.width, vb.pp(format!("res{i}"))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let out = linear(cfg.width, 1, vb.pp("out"))?;
        let mut rng = TrainRng::seed_from_u64(cfg.seed ^ 0x564f_4c55_4d45);
        let sd = cfg.ff_sigma * d as f64;
        let bv: Vec<f32> = (0..3 * f)
            .map(|_| {
                let g: f64 = StandardNormal.sample(&mut rng);
                (g * sd) as f32
            })
            .collect();
        let m = VolumeModel { vm, b: bv, device: device.clone(), inp, res, out, zdim, d, scale };
        // PyTorch Linear initialisation, uniform ±1/√fan_in, from the seed.
        for (name, v) in m.vars() {
            let dims = v.dims().to_vec();
            let fan_in = if name.starts_with("inp") { 2 * f + zdim } else { cfg.width };
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let n: usize = dims.iter().product();
            let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
            v.set(&Tensor::from_vec(vals, dims, device)?)?;
        }
        Ok(m)
    }

    /// Named parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        cryoforge_nn::optim::sorted_vars(&self.vm)
    }

    /// The MLP input of P points: rows `[sin 2π Bᵀk, cos 2π Bᵀk, z]` from frequencies `k`
    /// ([P·3], cycles per pixel) and latents `z` ([L·zdim], one per `per_latent` consecutive
    /// points, P = L·per_latent). Built on the host in parallel: neither B nor the data
    /// carry a gradient.
    fn inputs(&self, k: &[f32], z: Option<&[f32]>, per_latent: usize) -> Result<Tensor> {
        let f = self.b.len() / 3;
        let p = k.len() / 3;
        let zd = self.zdim;
        let z = match (zd, z) {
            (0, _) => &[][..],
            (_, Some(z)) if per_latent > 0 && z.len() * per_latent == p * zd => z,
            (_, Some(z)) => {
                return Err(StarError::msg(format!(
                "volume model: {} latent values of dimension {zd} for {p} points, {per_latent} per latent",
                z.len()
            )))
            }
            (_, None) => return Err(StarError::msg("volume model: latents missing")),
        };
        let w = 2 * f + zd;
        let mut x = vec![0f32; p * w];
        let b = &self.b;
        let two_pi = 2.0 * std::f32::consts::PI;
        x.par_chunks_mut(w.max(1)).enumerate().for_each(|(i, row)| {
            let kk = &k[3 * i..3 * i + 3];
            let (sc, zr) = row.split_at_mut(2 * f);
            let (sn, cs) = sc.split_at_mut(f);
            for j in 0..f {
                let ph = two_pi * (kk[0] * b[j] + kk[1] * b[f + j] + kk[2] * b[2 * f + j]);
                let (a, c) = ph.sin_cos();
                sn[j] = a;
                cs[j] = c;
            }
            if zd > 0 {
                let l = i / per_latent;
                zr.copy_from_slice(&z[l * zd..(l + 1) * zd]);
            }
        });
        Ok(Tensor::from_vec(x, (p, w), &self.device)?)
    }

    /// H/s at frequencies `k` ([P·3], cycles per pixel) → [P]. `z` holds one latent
    /// ([zdim] values) per `per_latent` consecutive points (`None` when zdim = 0).
    pub fn forward(&self, k: &[f32], z: Option<&[f32]>, per_latent: usize) -> Result<Tensor> {
        if !k.len().is_multiple_of(3) {
            return Err(StarError::msg(format!("volume model: {} frequency values, not [P, 3]", k.len())));
        }
        let x = self.inputs(k, z, per_latent)?;
        let mut h = gelu_erf(&self.inp.forward(&x)?)?;
        for l in &self.res {
            h = (&h + gelu_erf(&l.forward(&h)?)?)?;
        }
        Ok(self.out.forward(&h)?.squeeze(1)?)
    }
}

/// The band disk of a D×D centred grid: (pixel index, kₓ, k_y) with |k| ≤ r.
pub fn band_disk(d: usize, r: f64) -> Vec<(usize, f64, f64)> {
    let h = (d / 2) as isize;
    let mut v = Vec::new();
    for row in 0..d {
        for col in 0..d {
            let (kx, ky) = ((col as isize - h) as f64, (row as isize - h) as f64);
            if kx * kx + ky * ky <= r * r {
                v.push((row * d + col, kx, ky));
            }
        }
    }
    v
}

/// The Hartley transform of a particle on the band disk after re-centring by its shift
/// (`e^{−2πik·t/D}`): `Re F − Im F` of the centred DFT, one value per disk pixel.
pub fn particle_hartley(
    fft: &Fft2,
    work: &mut cryoforge_core::fft::Fft2Work,
    img: &[f32],
    shift_px: [f64; 2],
    disk: &[(usize, f64, f64)],
    spec: &mut [C32],
    out: &mut [f32],
) {
    let d = fft.size();
    fft.forward_real(work, img, spec);
    for (o, &(i, kx, ky)) in out.iter_mut().zip(disk) {
        let v = spec[i] * recentre_phasor_2d([kx, ky], shift_px, d);
        *o = v.re - v.im;
    }
}

/// The 3D frequencies (cycles per pixel) of a particle's disk pixels: Aᵀ(kₓ, k_y, 0)/D.
pub fn slice_coords(rot: &Rot3, d: usize, disk: &[(usize, f64, f64)], out: &mut Vec<f32>) {
    for &(_, kx, ky) in disk {
        let q = rot.apply_transpose([kx, ky, 0.0]);
        out.extend(q.iter().map(|v| (*v / d as f64) as f32));
    }
}

/// Progress of [`train_volume`].
#[derive(Debug, Clone)]
pub struct VolumeProgress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: usize,
    pub loss: f64,
    pub elapsed_s: f64,
}

/// What [`train_volume`] did.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeOutcome {
    pub steps: u64,
    pub epochs: usize,
    pub resumed_from_epoch: usize,
    pub elapsed_s: f64,
    pub particles_per_s: f64,
    pub band_px: f64,
    pub band_a: f64,
    pub scale: f64,
    /// Mean loss of the last epoch (units of s²).
    pub final_loss: f64,
}

/// Per-particle inputs of the data term.
struct Prepared {
    d: usize,
    disk: Vec<(usize, f64, f64)>,
    fft: Fft2,
    ctf: CtfGrid,
    invert: bool,
}

impl Prepared {
    /// (coords [M·3], −CTF [M], data Hartley [M]) of particle i.
    fn particle(
        &self,
        stack: &ParticleStack,
        i: usize,
        coords: &mut Vec<f32>,
        nctf: &mut Vec<f32>,
        data: &mut Vec<f32>,
    ) -> Result<()> {
        let d = self.d;
        let poses = stack.poses.as_ref().ok_or_else(|| StarError::msg("particles have no poses"))?;
        let ctfs = stack.require_ctf()?;
        let mut img = vec![0f32; d * d];
        stack.read_image(i, &mut img)?;
        if self.invert {
            img.iter_mut().for_each(|v| *v = -*v);
        }
        let mut w = self.fft.work();
        let mut spec = vec![C32::new(0.0, 0.0); d * d];
        let m = self.disk.len();
        let mut h = vec![0f32; m];
        particle_hartley(&self.fft, &mut w, &img, poses[i].shift_px, &self.disk, &mut spec, &mut h);
        data.extend_from_slice(&h);
        let mut c = vec![0f32; d * d];
        self.ctf.fill(&ctfs[i], &mut c);
        nctf.extend(self.disk.iter().map(|&(j, _, _)| -c[j]));
        slice_coords(&poses[i].rot, d, &self.disk, coords);
        Ok(())
    }
}

fn metrics_write(path: &Path, rows: &[String]) -> Result<()> {
    let mut s = String::from("step,epoch,images,elapsed_s,loss\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    cryoforge_io::atomic::write_bytes_atomic(path, s.as_bytes())?;
    Ok(())
}

/// Trains the Phase II volume on `stack` (poses and CTF required) with frozen latents `z`
/// [N·zdim] (zdim may be 0: a homogeneous volume). Writes `out_dir`/metrics.csv,
/// checkpoints/epoch_XXXX (one per epoch; an existing one is resumed when `resume`) and
/// weights.safetensors. Returns the model and the outcome.
pub fn train_volume(
    stack: &ParticleStack,
    z: &[f32],
    zdim: usize,
    cfg: &VolumeConfig,
    out_dir: &Path,
    resume: bool,
    device: &Device,
    progress: &mut dyn FnMut(&VolumeProgress),
) -> Result<(VolumeModel, VolumeOutcome)> {
    cfg.check()?;
    let n = stack.len();
    if n == 0 {
        return Err(StarError::msg("no particles"));
    }
    if z.len() != n * zdim {
        return Err(StarError::msg(format!(
            "{} latent values for {n} particles of dimension {zdim}",
            z.len()
        )));
    }
    if let Some(i) = z.iter().position(|v| !v.is_finite()) {
        return Err(StarError::msg(format!("latent of particle {} is not finite", i / zdim.max(1))));
    }
    let d = stack.box_px()?;
    let apix = stack.apix_a()?;
    stack
        .poses
        .as_ref()
        .ok_or_else(|| StarError::msg(format!("{}: particles have no poses", stack.path.display())))?;
    stack.require_ctf()?;
    let r = cfg.band_radius(d, apix);
    let prep = Prepared {
        d,
        disk: band_disk(d, r),
        fft: Fft2::new(d),
        ctf: CtfGrid::new(d, apix),
        invert: cfg.invert,
    };
    let m = prep.disk.len();
    let dev = device.clone();
    std::fs::create_dir_all(out_dir).map_err(|e| StarError::msg(format!("{}: {e}", out_dir.display())))?;

    // Output scale: RMS of the data Hartley values on the disk (first ≤ 256 particles).
    let (mut c0, mut n0, mut h0) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n.min(256) {
        prep.particle(stack, i, &mut c0, &mut n0, &mut h0)?;
    }
    let scale = ((h0.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h0.len().max(1) as f64).sqrt())
        .max(1e-12) as f32;

    let model = VolumeModel::new(cfg, d, zdim, scale, &dev)?;
    let mut opt = Adam::new(
        vec![ParamGroup::new("volume", model.vars(), cfg.lr).with_weight_decay(cfg.weight_decay)],
        AdamConfig::adamw(),
    )?;
    let ck_dir = out_dir.join("checkpoints");
    let mut start_epoch = 0usize;
    let mut step = 0u64;
    let mut rows: Vec<String> = Vec::new();
    if resume {
        if let Some((ep, p)) = newest_epoch_checkpoint(&ck_dir) {
            let r = checkpoint::load(&p, &model.vars(), Some(&mut opt))?;
            start_epoch = ep;
            step = r.step;
            if let Ok(t) = std::fs::read_to_string(out_dir.join("metrics.csv")) {
                rows = t
                    .lines()
                    .skip(1)
                    .filter(|l| {
                        l.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s <= step)
                    })
                    .map(str::to_string)
                    .collect();
            }
        }
    }
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total = steps_per_epoch * cfg.epochs as u64;
    let t0 = std::time::Instant::now();
    let mut last_epoch_loss = f64::NAN;
    let mut done_particles = 0usize;
    for epoch in start_epoch..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut TrainRng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)));
        let (mut sum, mut cnt) = (0.0, 0usize);
        for idx in order.chunks(cfg.batch_size) {
            // Particles of the batch prepared in parallel, concatenated in batch order.
            let parts = idx
                .par_iter()
                .map(|&i| {
                    let (mut c, mut nc, mut h) = (Vec::new(), Vec::new(), Vec::new());
                    prep.particle(stack, i, &mut c, &mut nc, &mut h).map(|()| (c, nc, h))
                })
                .collect::<Result<Vec<_>>>()?;
            let (mut c, mut nc, mut h) = (Vec::new(), Vec::new(), Vec::new());
            for (pc, pn, ph) in parts {
                c.extend(pc);
                nc.extend(pn);
                h.extend(ph);
            }
            let p = idx.len() * m;
            let inv = 1.0 / scale;
            h.iter_mut().for_each(|v| *v *= inv);
            let zt: Option<Vec<f32>> =
                (zdim > 0).then(|| idx.iter().flat_map(|&i| &z[i * zdim..(i + 1) * zdim]).copied().collect());
            let pred = model.forward(&c, zt.as_deref(), m)?;
            let nct = Tensor::from_vec(nc, p, &dev)?;
            let ht = Tensor::from_vec(h, p, &dev)?;
            let loss = (pred * nct)?.sub(&ht)?.sqr()?.mean_all()?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(StarError::msg(format!("volume training diverged at step {step} (loss {lv})")));
            }
            opt.backward_step(&loss)?;
            step += 1;
            done_particles += idx.len();
            sum += lv;
            cnt += 1;
            let el = t0.elapsed().as_secs_f64();
            if step.is_multiple_of(cfg.log_every.max(1)) {
                rows.push(format!("{step},{epoch},{},{el:.3},{lv:.6e}", step * cfg.batch_size as u64));
            }
            progress(&VolumeProgress { step, total_steps: total, epoch, loss: lv, elapsed_s: el });
        }
        last_epoch_loss = sum / cnt.max(1) as f64;
        let rng = TrainRng::seed_from_u64(cfg.seed);
        checkpoint::save(
            &ck_dir.join(format!("epoch_{:04}", epoch + 1)),
            &model.vars(),
            Some(&opt),
            step,
            &rng,
        )?;
        // Keep the newest checkpoint only.
        if epoch > 0 {
            let _ = std::fs::remove_dir_all(ck_dir.join(format!("epoch_{epoch:04}")));
        }
        metrics_write(&out_dir.join("metrics.csv"), &rows)?;
    }
    save_weights(&model, &out_dir.join("weights.safetensors"))?;
    let el = t0.elapsed().as_secs_f64();
    Ok((
        model,
        VolumeOutcome {
            steps: step,
            epochs: cfg.epochs,
            resumed_from_epoch: start_epoch,
            elapsed_s: el,
            particles_per_s: done_particles as f64 / el.max(1e-9),
            band_px: r,
            band_a: d as f64 * apix / r,
            scale: scale as f64,
            final_loss: last_epoch_loss,
        },
    ))
}

fn newest_epoch_checkpoint(dir: &Path) -> Option<(usize, std::path::PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .filter_map(|p| {
            let ep = p.file_name()?.to_str()?.strip_prefix("epoch_")?.parse::<usize>().ok()?;
            Some((ep, p))
        })
        .max_by_key(|(e, _)| *e)
}

/// Saves the parameters plus the output scale ("scale", a 1-element tensor).
pub fn save_weights(model: &VolumeModel, path: &Path) -> Result<()> {
    let mut w: std::collections::HashMap<String, Tensor> =
        model.vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
    w.insert("scale".into(), Tensor::from_vec(vec![model.scale], 1, &Device::Cpu)?);
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&w, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| StarError::msg(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// Loads a model saved by [`save_weights`] (settings `cfg` must be those it was trained with).
pub fn load_weights(cfg: &VolumeConfig, d: usize, zdim: usize, path: &Path) -> Result<VolumeModel> {
    let w = candle_core::safetensors::load(path, &Device::Cpu)?;
    let scale = w
        .get("scale")
        .ok_or_else(|| StarError::msg(format!("{}: lacks \"scale\"", path.display())))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .ok_or_else(|| StarError::msg(format!("{}: empty \"scale\"", path.display())))?;
    let model = VolumeModel::new(cfg, d, zdim, scale, &Device::Cpu)?;
    for (name, v) in model.vars() {
        let t = w
            .get(&name)
            .ok_or_else(|| StarError::msg(format!("{}: lacks parameter {name}", path.display())))?;
        if t.dims() != v.dims() {
            return Err(StarError::msg(format!(
                "{}: parameter {name} has shape {:?}, the settings give {:?}",
                path.display(),
                t.dims(),
                v.dims()
            )));
        }
        v.set(t)?;
    }
    Ok(model)
}

/// Real-space D³ map (`[z][y][x]`, protein-positive) of the volume at latent `z`, band
/// limited to radius `band_px` Fourier pixels.
pub fn eval_volume(model: &VolumeModel, z: &[f32], band_px: f64) -> Result<Vec<f32>> {
    if z.len() != model.zdim {
        return Err(StarError::msg(format!(
            "latent has {} values, the volume expects {}",
            z.len(),
            model.zdim
        )));
    }
    let d = model.d;
    let h = (d / 2) as isize;
    let r = band_px.min(h as f64 - 1.0);
    let mut idx = Vec::new();
    let mut coords = Vec::new();
    for iz in 0..d {
        for iy in 0..d {
            for ix in 0..d {
                let k = [(ix as isize - h) as f64, (iy as isize - h) as f64, (iz as isize - h) as f64];
                if k[0] * k[0] + k[1] * k[1] + k[2] * k[2] <= r * r {
                    idx.push((iz * d + iy) * d + ix);
                    coords.extend(k.iter().map(|v| (*v / d as f64) as f32));
                }
            }
        }
    }
    let mut hv = vec![0f32; d * d * d];
    let chunk = 16384;
    for (ci, part) in idx.chunks(chunk).enumerate() {
        let p = part.len();
        let k = &coords[ci * chunk * 3..ci * chunk * 3 + 3 * p];
        let v = model.forward(k, (model.zdim > 0).then_some(z), p)?.to_vec1::<f32>()?;
        for (&i, v) in part.iter().zip(v) {
            hv[i] = v * model.scale;
        }
    }
    Ok(hartley_to_real(&hv, d))
}

/// Real map from a centred 3D Hartley spectrum that is zero wherever −k is off the grid.
pub fn hartley_to_real(hv: &[f32], d: usize) -> Vec<f32> {
    let neg = |i: usize| if i == 0 { None } else { Some(d - i) };
    let mut spec = vec![C32::new(0.0, 0.0); d * d * d];
    for iz in 0..d {
        for iy in 0..d {
            for ix in 0..d {
                let i = (iz * d + iy) * d + ix;
                let hm = match (neg(iz), neg(iy), neg(ix)) {
                    (Some(a), Some(b), Some(c)) => hv[(a * d + b) * d + c],
                    _ => 0.0,
                };
                spec[i] = C32::new(0.5 * (hv[i] + hm), 0.5 * (hm - hv[i]));
            }
        }
    }
    Fft3::new(d).inverse_complex(&spec).iter().map(|c| c.re).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hartley_round_trip_recovers_band_limited_map() {
        // Forward: centred DFT → H = Re − Im; back through hartley_to_real.
        let d = 16;
        let mut vol = vec![0f32; d * d * d];
        let mut rng = TrainRng::seed_from_u64(3);
        vol.iter_mut().for_each(|v| *v = rng.gen_range(-1.0..1.0));
        let f = Fft3::new(d).forward_real(&vol);
        // Zero the k = −d/2 planes, whose mirrors are off the grid, on both sides.
        let mut f2 = f.clone();
        for iz in 0..d {
            for iy in 0..d {
                for ix in 0..d {
                    if iz == 0 || iy == 0 || ix == 0 {
                        f2[(iz * d + iy) * d + ix] = C32::new(0.0, 0.0);
                    }
                }
            }
        }
        let want: Vec<f32> = Fft3::new(d).inverse_complex(&f2).iter().map(|c| c.re).collect();
        let hv: Vec<f32> = f2.iter().map(|c| c.re - c.im).collect();
        let got = hartley_to_real(&hv, d);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "max error {err}");
    }
}
