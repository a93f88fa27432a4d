//! The Cryo-IEF encoder: a ViT (patch embedding as a matrix product over non-overlapping
//! patches, CLS token, fixed 2-D sin-cos position embeddings, pre-norm blocks with qkv bias,
//! LayerNorm ε 1e-6, exact GELU) with MoCo v3's change: the norm before each block's MLP is
//! a BatchNorm over all B·N tokens (running statistics in evaluation).
//!
//! Tensor names are timm's / MoCo v3's, so released weights load by name (see
//! [`crate::weights`]): `cls_token` (1, 1, C), `pos_embed` (1, 1 + G², C),
//! `patch_embed.proj.{weight (C, 1, P, P), bias}`, per block `blocks.{i}.norm1.*`,
//! `attn.qkv.*`, `attn.proj.*`, `norm2.{weight, bias, running_mean, running_var}`,
//! `mlp.fc1.*`, `mlp.fc2.*`, and an optional final `norm.*`.
//!
//! ```text
//! tokens = [cls; patches·Wₚᵀ + bₚ] + pos
//! block:  x ← x + proj(softmax(q kᵀ/√d_h) v),  q, k, v = split(LN₁(x)·W_qkvᵀ + b)
//!         x ← x + fc2(GELU(fc1(BN(x))))        (LN₂ without the MoCo change)
//! feature = x[CLS] (then `norm` when the weights have one)
//! ```

use crate::{IefError, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder};
use std::sync::Mutex;

/// Architecture of the encoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    /// Input size S (pixels; the released models: 224).
    pub img_size: usize,
    /// Patch size P (14 for ViT-B/14); S must be a multiple.
    pub patch: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub qkv_bias: bool,
    pub ln_eps: f64,
    pub bn_eps: f64,
    /// MoCo v3's BatchNorm before each MLP (true for Cryo-IEF); false: LayerNorm (timm).
    pub bn_in_block: bool,
    /// A LayerNorm after the last block (`norm.*`; the released CryoRanker has none).
    pub final_norm: bool,
}

impl VitConfig {
    /// ViT-B/14 at 224 px: width 768, 12 blocks, 12 heads, MLP 3072 (the released models).
    pub fn base() -> VitConfig {
        VitConfig {
            img_size: 224,
            patch: 14,
            embed_dim: 768,
            depth: 12,
            heads: 12,
            mlp_hidden: 3072,
            qkv_bias: true,
            ln_eps: 1e-6,
            bn_eps: 1e-5,
            bn_in_block: true,
            final_norm: false,
        }
    }

    /// ViT-S/14 (MoCo v3's: width 384, 12 blocks, 12 heads).
    pub fn small() -> VitConfig {
        VitConfig { embed_dim: 384, heads: 12, mlp_hidden: 1536, ..VitConfig::base() }
    }

    /// A CPU preset: 112 px in 8-px patches (196 tokens), width 192, 6 blocks, 3 heads.
    pub fn tiny() -> VitConfig {
        VitConfig {
            img_size: 112,
            patch: 8,
            embed_dim: 192,
            depth: 6,
            heads: 3,
            mlp_hidden: 768,
            ..VitConfig::base()
        }
    }

    /// The CPU training preset: 64 px in 16-px patches (4 × 4 + 1 tokens), width 192,
    /// 6 blocks, 3 heads (the `tiny` encoder's body at the box most particle stacks are
    /// downsampled to for heterogeneity work; one MoCo step of two views costs ≈ 0.75 GFLOP
    /// per particle, ≈ 75 particles/s on 2 cores).
    pub fn cpu() -> VitConfig {
        VitConfig { img_size: 64, patch: 16, ..VitConfig::tiny() }
    }

    /// `base`, `small`, `tiny` or `cpu`.
    pub fn preset(name: &str) -> Result<VitConfig> {
        match name.to_ascii_lowercase().as_str() {
            "base" | "vit-b" | "vit_base" => Ok(VitConfig::base()),
            "small" | "vit-s" | "vit_small" => Ok(VitConfig::small()),
            "tiny" => Ok(VitConfig::tiny()),
            "cpu" => Ok(VitConfig::cpu()),
            o => Err(IefError::msg(format!("ViT preset {o:?}: expected base, small, tiny or cpu"))),
        }
    }

    /// Patches per side G = S/P.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch
    }

    /// Tokens 1 + G².
    pub fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(IefError::msg(format!("ViT configuration: {m}")));
        if self.patch == 0 || self.img_size == 0 || !self.img_size.is_multiple_of(self.patch) {
            return bad(format!(
                "image size {} is not a multiple of the patch size {}",
                self.img_size, self.patch
            ));
        }
        if self.heads == 0 || !self.embed_dim.is_multiple_of(self.heads) {
            return bad(format!("width {} is not a multiple of the {} heads", self.embed_dim, self.heads));
        }
        if self.depth == 0 || self.mlp_hidden == 0 {
            return bad("depth and MLP width must be ≥ 1".into());
        }
        if self.bn_in_block && !self.embed_dim.is_multiple_of(4) {
            return bad("the sin-cos position embedding needs a width divisible by 4".into());
        }
        Ok(())
    }

    /// Number of learnable parameters (buffers excluded; the position embedding is fixed
    /// and not counted).
    pub fn n_params(&self) -> usize {
        let (c, m, p) = (self.embed_dim, self.mlp_hidden, self.patch);
        let block = 2 * c
            + (3 * c * c + if self.qkv_bias { 3 * c } else { 0 })
            + (c * c + c)
            + 2 * c
            + (c * m + m)
            + (m * c + c);
        c + (c * p * p + c) + self.depth * block + if self.final_norm { 2 * c } else { 0 }
    }
}

/// Evaluation (running BatchNorm statistics, fused kernels) or training (batch statistics,
/// differentiable ops, running statistics updated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train,
}

/// MoCo v3's fixed 2-D sin-cos position embedding, (1, 1 + G², C) with a zero CLS row:
/// for token k = i·G + j the first C/4 channels are sin(i·ω), then cos(i·ω), sin(j·ω),
/// cos(j·ω), with ω_d = 10000^(−d/(C/4)) (i from torch.meshgrid(w, h)'s first output).
pub fn sincos_pos_embed(grid: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    let q = dim / 4;
    let mut v = vec![0f32; (1 + grid * grid) * dim];
    for k in 0..grid * grid {
        let (i, j) = ((k / grid) as f64, (k % grid) as f64);
        let row = &mut v[(1 + k) * dim..(2 + k) * dim];
        for d in 0..q {
            let w = 1.0 / 10000f64.powf(d as f64 / q as f64);
            row[d] = (i * w).sin() as f32;
            row[q + d] = (i * w).cos() as f32;
            row[2 * q + d] = (j * w).sin() as f32;
            row[3 * q + d] = (j * w).cos() as f32;
        }
    }
    Ok(Tensor::from_vec(v, (1, 1 + grid * grid, dim), dev)?)
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Eval => candle_nn::ops::layer_norm(x, w, b, eps as f32)?,
        Mode::Train => cryoforge_nn::norm::layer_norm_train(x, w, b, eps)?,
    })
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
        Ok(Norm {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.0))?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps, mode)
    }
}

/// BatchNorm1d over the channels of all tokens (B·N, C), PyTorch's semantics: biased
/// variance to normalise in training, running statistics (momentum 0.1, unbiased
/// variance) for evaluation.
#[derive(Debug)]
pub struct TokenBatchNorm {
    /// None for `affine = False` (MoCo v3's last projector layer).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Mutex<Tensor>,
    running_var: Mutex<Tensor>,
    eps: f64,
    momentum: f64,
}

impl TokenBatchNorm {
    fn new(c: usize, eps: f64, vb: VarBuilder, buffers: VarBuilder) -> Result<TokenBatchNorm> {
        TokenBatchNorm::with_affine(c, eps, true, vb, buffers)
    }

    /// A BatchNorm of `c` channels with (`affine`) or without a learnt scale and shift;
    /// parameters under `vb`, running statistics under `buffers`.
    pub fn with_affine(
        c: usize,
        eps: f64,
        affine: bool,
        vb: VarBuilder,
        buffers: VarBuilder,
    ) -> Result<TokenBatchNorm> {
        let (weight, bias) = if affine {
            (
                Some(vb.get_with_hints(c, "weight", Init::Const(1.0))?),
                Some(vb.get_with_hints(c, "bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        Ok(TokenBatchNorm {
            weight,
            bias,
            running_mean: Mutex::new(buffers.get_with_hints(c, "running_mean", Init::Const(0.0))?),
            running_var: Mutex::new(buffers.get_with_hints(c, "running_var", Init::Const(1.0))?),
            eps,
            momentum: 0.1,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let flat = x.reshape((b * n, c))?;
        let y = match mode {
            Mode::Eval => {
                let rm = lock(&self.running_mean)?.clone();
                let rv = lock(&self.running_var)?.clone();
                let inv = (rv + self.eps)?.sqrt()?.recip()?;
                let scale = match &self.weight {
                    Some(w) => (w * inv)?,
                    None => inv,
                };
                let shift = (rm * &scale)?.neg()?;
                let shift = match &self.bias {
                    Some(b) => (b + shift)?,
                    None => shift,
                };
                flat.broadcast_mul(&scale)?.broadcast_add(&shift)?
            }
            Mode::Train => {
                let m = (b * n) as f64;
                let ones;
                let zeros;
                let (w, bb) = match (&self.weight, &self.bias) {
                    (Some(w), Some(bb)) => (w, bb),
                    _ => {
                        ones = Tensor::ones(c, DType::F32, flat.device())?;
                        zeros = Tensor::zeros(c, DType::F32, flat.device())?;
                        (&ones, &zeros)
                    }
                };
                let (y, mean, var) = cryoforge_nn::norm::batch_norm_train(&flat, w, bb, self.eps)?;
                let mom = self.momentum;
                let unbiased = (var * (m / (m - 1.0).max(1.0)))?;
                let mut rm = lock(&self.running_mean)?;
                *rm = ((&*rm * (1.0 - mom))? + (mean * mom)?)?;
                let mut rv = lock(&self.running_var)?;
                *rv = ((&*rv * (1.0 - mom))? + (unbiased * mom)?)?;
                y
            }
        };
        Ok(y.reshape((b, n, c))?)
    }

    /// BatchNorm1d of rows [B, C] (the projector's and predictor's).
    pub fn forward_rows(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, c) = x.dims2()?;
        Ok(self.forward(&x.reshape((b, 1, c))?, mode)?.reshape((b, c))?)
    }

    /// Replaces the running statistics (checkpoint restore).
    pub fn set_buffers(&self, mean: Tensor, var: Tensor) -> Result<()> {
        *lock(&self.running_mean)? = mean;
        *lock(&self.running_var)? = var;
        Ok(())
    }

    /// (running_mean, running_var).
    pub fn buffers(&self) -> Result<(Tensor, Tensor)> {
        Ok((lock(&self.running_mean)?.clone(), lock(&self.running_var)?.clone()))
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| IefError::msg("BatchNorm statistics: a thread panicked while updating them"))
}

#[derive(Debug)]
enum BlockNorm2 {
    Batch(TokenBatchNorm),
    Layer(Norm),
}

#[derive(Debug)]
struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: BlockNorm2,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Ok(if bias { candle_nn::linear(i, o, vb)? } else { candle_nn::linear_no_bias(i, o, vb)? })
}

impl Block {
    fn new(cfg: &VitConfig, vb: VarBuilder, buffers: VarBuilder) -> Result<Block> {
        let c = cfg.embed_dim;
        let norm2 = if cfg.bn_in_block {
            BlockNorm2::Batch(TokenBatchNorm::new(c, cfg.bn_eps, vb.pp("norm2"), buffers.pp("norm2"))?)
        } else {
            BlockNorm2::Layer(Norm::new(c, cfg.ln_eps, vb.pp("norm2"))?)
        };
        Ok(Block {
            norm1: Norm::new(c, cfg.ln_eps, vb.pp("norm1"))?,
            qkv: linear(c, 3 * c, cfg.qkv_bias, vb.pp("attn").pp("qkv"))?,
            proj: linear(c, c, true, vb.pp("attn").pp("proj"))?,
            norm2,
            fc1: linear(c, cfg.mlp_hidden, true, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.mlp_hidden, c, true, vb.pp("mlp").pp("fc2"))?,
            heads: cfg.heads,
        })
    }

    fn attention(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let dh = c / self.heads;
        let qkv = self.qkv.forward(&x.reshape((b * n, c))?)?;
        if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
            let scale = 1.0 / (dh as f64).sqrt();
            let o = match mode {
                Mode::Eval => crate::attention::attention_eval(&qkv, b, n, self.heads, scale)?,
                Mode::Train => crate::attention::attention_train(&qkv, b, n, self.heads, scale)?,
            };
            return Ok(self.proj.forward(&o)?.reshape((b, n, c))?);
        }
        let qkv = qkv.reshape((b, n, 3, self.heads, dh))?.permute((2, 0, 3, 1, 4))?;
        let scale = 1.0 / (dh as f64).sqrt();
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = match mode {
            // Inference off the CPU: the 1/√d_h scale goes into the softmax.
            Mode::Eval => {
                cryoforge_nn::ops::softmax_scaled_eval(&qkv.get(0)?.contiguous()?.matmul(&k.t()?)?, scale)?
            }
            Mode::Train => {
                cryoforge_nn::ops::softmax(&(qkv.get(0)? * scale)?.contiguous()?.matmul(&k.t()?)?)?
            }
        };
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b * n, c))?;
        Ok(self.proj.forward(&o)?.reshape((b, n, c))?)
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = (x + self.attention(&self.norm1.forward(x, mode)?, mode)?)?;
        let h = match &self.norm2 {
            BlockNorm2::Batch(bn) => bn.forward(&x, mode)?,
            BlockNorm2::Layer(ln) => ln.forward(&x, mode)?,
        };
        let (b, n, c) = h.dims3()?;
        let h = cryoforge_nn::ops::gelu_erf(&self.fc1.forward(&h.reshape((b * n, c))?)?)?;
        let h = self.fc2.forward(&h)?.reshape((b, n, c))?;
        Ok((x + h)?)
    }
}

/// The encoder.
#[derive(Debug)]
pub struct Vit {
    pub cfg: VitConfig,
    cls_token: Tensor,
    pos_embed: Tensor,
    patch_w: Tensor,
    patch_b: Tensor,
    blocks: Vec<Block>,
    norm: Option<Norm>,
}

impl Vit {
    /// Builds the encoder from `vb` (parameters, by timm's names) and `buffers` (BatchNorm
    /// running statistics and the fixed position embedding; pass the same builder when
    /// loading weights, a separate `VarMap`'s when training so the optimiser never sees them).
    pub fn new(cfg: &VitConfig, vb: VarBuilder, buffers: VarBuilder) -> Result<Vit> {
        cfg.check()?;
        let (c, p) = (cfg.embed_dim, cfg.patch);
        let dev = vb.device().clone();
        let pos = if buffers.contains_tensor("pos_embed") {
            buffers.get((1, cfg.tokens(), c), "pos_embed")?
        } else {
            sincos_pos_embed(cfg.grid(), c, &dev)?
        };
        let patch_w = vb.pp("patch_embed").pp("proj").get_with_hints(
            (c, 1, p, p),
            "weight",
            Init::Randn { mean: 0.0, stdev: (1.0 / (p * p) as f64).sqrt() },
        )?;
        let patch_b = vb.pp("patch_embed").pp("proj").get_with_hints(c, "bias", Init::Const(0.0))?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(cfg, vb.pp("blocks").pp(i.to_string()), buffers.pp("blocks").pp(i.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = if cfg.final_norm { Some(Norm::new(c, cfg.ln_eps, vb.pp("norm"))?) } else { None };
        Ok(Vit {
            cfg: cfg.clone(),
            cls_token: vb.get_with_hints((1, 1, c), "cls_token", Init::Randn { mean: 0.0, stdev: 1e-6 })?,
            pos_embed: pos.to_dtype(DType::F32)?,
            patch_w: patch_w.reshape((c, p * p))?,
            patch_b,
            blocks,
            norm,
        })
    }

    pub fn device(&self) -> &Device {
        self.cls_token.device()
    }

    /// Non-overlapping P×P patches of images [B, S, S] → [B, G², P²] (patch index gy·G + gx,
    /// pixels row-major within a patch: the order of the convolution's output and weight).
    pub fn patchify(&self, images: &Tensor) -> Result<Tensor> {
        let (b, s, s2) = images.dims3()?;
        if s != self.cfg.img_size || s2 != s {
            return Err(IefError::msg(format!(
                "the encoder takes {0}×{0} images, got {s}×{s2}",
                self.cfg.img_size
            )));
        }
        let (g, p) = (self.cfg.grid(), self.cfg.patch);
        Ok(images.reshape((b, g, p, g, p))?.permute((0, 1, 3, 2, 4))?.reshape((b, g * g, p * p))?)
    }

    /// All tokens after the last block (and `norm`), [B, 1 + G², C].
    pub fn forward_tokens(&self, images: &Tensor, mode: Mode) -> Result<Tensor> {
        let b = images.dims()[0];
        let c = self.cfg.embed_dim;
        let patches = self.patchify(images)?;
        let n = patches.dims()[1];
        let emb = patches
            .reshape((b * n, patches.dims()[2]))?
            .matmul(&self.patch_w.t()?)?
            .broadcast_add(&self.patch_b)?;
        let emb = emb.reshape((b, n, c))?;
        let cls = self.cls_token.broadcast_as((b, 1, c))?;
        let mut x = Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.pos_embed)?;
        for blk in &self.blocks {
            x = blk.forward(&x, mode)?;
        }
        if let Some(nm) = &self.norm {
            x = nm.forward(&x, mode)?;
        }
        Ok(x)
    }

    /// The CLS token after the encoder, [B, C].
    pub fn forward_cls(&self, images: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.forward_tokens(images, mode)?.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)
    }

    /// BatchNorm running statistics by name (`blocks.{i}.norm2.running_mean` …), to save.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = vec![("pos_embed".to_string(), self.pos_embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            if let BlockNorm2::Batch(bn) = &b.norm2 {
                let (m, var) = bn.buffers()?;
                v.push((format!("blocks.{i}.norm2.running_mean"), m));
                v.push((format!("blocks.{i}.norm2.running_var"), var));
            }
        }
        Ok(v)
    }
}

impl Vit {
    /// Restores BatchNorm running statistics saved by [`Vit::buffers`] (names without a
    /// prefix; `pos_embed` is fixed and skipped). Errors name a missing or misshapen tensor.
    pub fn load_buffers(&self, t: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let c = self.cfg.embed_dim;
        for (i, b) in self.blocks.iter().enumerate() {
            if let BlockNorm2::Batch(bn) = &b.norm2 {
                let get = |s: &str| -> Result<Tensor> {
                    let name = format!("blocks.{i}.norm2.{s}");
                    let x = t.get(&name).ok_or_else(|| IefError::msg(format!("buffer {name} missing")))?;
                    if x.dims() != [c] {
                        return Err(IefError::msg(format!(
                            "buffer {name} has shape {:?}, expected [{c}]",
                            x.dims()
                        )));
                    }
                    Ok(x.to_dtype(DType::F32)?.to_device(self.device())?)
                };
                bn.set_buffers(get("running_mean")?, get("running_var")?)?;
            }
        }
        Ok(())
    }
}

/// L2-normalises rows of [B, C].
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&n)?)
}
