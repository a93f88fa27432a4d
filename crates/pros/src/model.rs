//! The conditional hierarchical VAE of cryoPROS (paper 000, METHODS.md §3).
//!
//! Levels ℓ = 0 … L−1 at D, D/2, …, D/2^(L−1) px; level ℓ holds `nls[ℓ]` stochastic
//! layers, plus one right after the down-sampling for ℓ > 0 (the paper's 2 + 3 + 5 + 5).
//!
//! - Encoder (bottom-up): conv 1→nf, then per level (down-sampling first for ℓ > 0) one
//!   residual dense block f per layer; the output of each is that layer's feature aˡ.
//! - Conditioning, computed once per batch: the CTF-modulated, shifted projection v of the
//!   reference by conv 1→nf and the same down-samplings (Pℓ), the pose (quaternion x, y, z, w
//!   and shift / box) by an MLP 6 → 256 → 512 → S² (S the coarsest size) reshaped to 1×S×S,
//!   conv 1→nf and up-samplings (Eℓ). Each layer embeds them with its own blocks:
//!   hˡ = RDB(Pℓ), eˡ = RDB(Eℓ).
//! - Decoder (top-down) from a learned nf×S×S input bᴸ. Per layer: posterior
//!   q = N(μ_q, σ_q) from conv3×3(cat[bˡ, aˡ, hˡ, eˡ]) and prior p = N(μ_p, σ_p) from
//!   conv3×3(cat[bˡ, hˡ, eˡ]), each of μ and log σ by [RDB, zero-initialised 1×1 conv → z];
//!   z ~ q (training) or p (generation); bˡ⁻¹ = RDB(conv3×3(cat[bˡ, z])). Between levels:
//!   pixel-shuffle 2 and conv nf/4 → nf. Output: conv nf→nf, ReLU, conv nf→1.
//! - Residual dense block: five 3×3 convs with growth g (nf→g, nf+g→g, …, nf+4g→nf),
//!   LeakyReLU 0.2 after the first four, output x + 0.2·x₅, Kaiming-normal init × 0.1 and
//!   zero biases. Down-sampling: pixel-unshuffle 2, conv 4·nf→nf.
//!
//! Loss (per batch): MSE(output, image) + β·Σ_layers KL(q‖p) / (B·D²).

use crate::config::ArchConfig;
use crate::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, StandardNormal, Uniform};

/// How a parameter is initialised.
#[derive(Clone, Copy)]
enum Init {
    Zeros,
    /// Kaiming normal (fan-in, gain √2) × scale: the residual dense blocks.
    KaimingNormal(f64),
    /// PyTorch's default for conv and linear layers: U(−1/√fan_in, 1/√fan_in).
    TorchDefault,
}

/// Creates the parameters in a fixed order from one seeded RNG (identical weights for
/// identical seeds, on every device).
struct Builder<'a> {
    vars: Vec<(String, Var)>,
    rng: rand_chacha::ChaCha8Rng,
    device: &'a Device,
}

impl Builder<'_> {
    fn tensor(&mut self, name: String, shape: &[usize], fan_in: usize, init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::KaimingNormal(scale) => {
                let std = (2.0 / fan_in.max(1) as f64).sqrt() * scale;
                let dist = Normal::new(0.0, std).map_err(|e| crate::ProsError::msg(e.to_string()))?;
                (0..n).map(|_| dist.sample(&mut self.rng) as f32).collect()
            }
            Init::TorchDefault => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                let u = Uniform::new_inclusive(-b, b);
                (0..n).map(|_| u.sample(&mut self.rng) as f32).collect()
            }
        };
        let v = Var::from_tensor(&Tensor::from_vec(vals, shape, self.device)?)?;
        let t = v.as_tensor().clone();
        self.vars.push((name, v));
        Ok(t)
    }

    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, init: Init) -> Result<Conv> {
        let fan_in = cin * k * k;
        let w = self.tensor(format!("{name}.weight"), &[cout, cin, k, k], fan_in, init)?;
        let bias_init = match init {
            Init::TorchDefault => Init::TorchDefault,
            _ => Init::Zeros,
        };
        let b = self.tensor(format!("{name}.bias"), &[cout], fan_in, bias_init)?;
        Ok(Conv { w, b: b.reshape((1, cout, 1, 1))? })
    }

    fn linear(&mut self, name: &str, fin: usize, fout: usize) -> Result<Linear> {
        let w = self.tensor(format!("{name}.weight"), &[fout, fin], fin, Init::TorchDefault)?;
        let b = self.tensor(format!("{name}.bias"), &[fout], fin, Init::TorchDefault)?;
        Ok(Linear { w, b })
    }

    fn rdb(&mut self, name: &str, nf: usize, g: usize) -> Result<Rdb> {
        let mut convs = Vec::with_capacity(5);
        for i in 0..5 {
            let cout = if i == 4 { nf } else { g };
            convs.push(self.conv(
                &format!("{name}.conv{}", i + 1),
                nf + i * g,
                cout,
                3,
                Init::KaimingNormal(0.1),
            )?);
        }
        Rdb::new(convs)
    }
}

/// 2-D convolution with bias, stride 1, "same" padding (`cryoforge_nn::conv`).
pub struct Conv {
    w: Tensor,
    b: Tensor,
}

impl Conv {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(cryoforge_nn::conv::conv2d_same(x, &self.w, None)?.broadcast_add(&self.b)?)
    }
}

pub struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
    }
}

/// Residual dense block (ESRGAN's, as the reference uses it), fused on the CPU
/// (`cryoforge_nn::conv::residual_dense_block`).
pub struct Rdb {
    convs: Vec<Conv>,
    weights: Vec<Tensor>,
    biases: Vec<Tensor>,
}

impl Rdb {
    fn new(convs: Vec<Conv>) -> Result<Rdb> {
        let weights = convs.iter().map(|c| c.w.clone()).collect();
        let biases = convs.iter().map(|c| c.b.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Rdb { convs, weights, biases })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(cryoforge_nn::conv::residual_dense_block(x, &self.weights, &self.biases, 0.2, 0.2)?)
    }

    /// The same block composed of separate convolutions, concatenations and activations
    /// (the reference for the fused kernel).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mut feats = vec![x.clone()];
        for c in &self.convs[..4] {
            let inp = if feats.len() == 1 { x.clone() } else { Tensor::cat(&feats, 1)? };
            feats.push(candle_nn::ops::leaky_relu(&c.forward(&inp)?, 0.2)?);
        }
        let x5 = self.convs[4].forward(&Tensor::cat(&feats, 1)?)?;
        Ok((x + x5.affine(0.2, 0.0)?)?)
    }
}

/// out[c, h·2+i, w·2+j] = in[c·4 + i·2 + j, h, w] (PyTorch's `pixel_shuffle(·, 2)`).
pub fn pixel_shuffle2(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    Ok(x.reshape((b, c, 2, 2, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((b, c, h * 2, w * 2))?)
}

/// The inverse of [`pixel_shuffle2`] (PyTorch's `pixel_unshuffle(·, 2)`).
pub fn pixel_unshuffle2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h2, w2) = x.dims4()?;
    let (h, w) = (h2 / 2, w2 / 2);
    Ok(x.reshape((b, c, h, 2, w, 2))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * 4, h, w))?)
}

/// Pixel-unshuffle 2, conv 4·nf → nf.
pub struct Down(Conv);
impl Down {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&pixel_unshuffle2(x)?)
    }
}

/// Pixel-shuffle 2, conv nf/4 → nf.
pub struct Up(Conv);
impl Up {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&pixel_shuffle2(x)?)
    }
}

/// [RDB, 1×1 conv → z] for each of μ and log σ.
pub struct GaussHead {
    merge: Conv,
    mu: (Rdb, Conv),
    log_sigma: (Rdb, Conv),
}

impl GaussHead {
    fn new(bld: &mut Builder, name: &str, n_in: usize, a: &ArchConfig) -> Result<GaussHead> {
        let merge = bld.conv(&format!("{name}.merge"), n_in * a.nf, a.nf, 3, Init::TorchDefault)?;
        let mu = (
            bld.rdb(&format!("{name}.mu.rdb"), a.nf, a.growth)?,
            bld.conv(&format!("{name}.mu.out"), a.nf, a.z_dim, 1, Init::Zeros)?,
        );
        let ls = (
            bld.rdb(&format!("{name}.log_sigma.rdb"), a.nf, a.growth)?,
            bld.conv(&format!("{name}.log_sigma.out"), a.nf, a.z_dim, 1, Init::Zeros)?,
        );
        Ok(GaussHead { merge, mu, log_sigma: ls })
    }

    /// (μ, log σ) from the concatenated inputs.
    fn forward(&self, inputs: &[&Tensor]) -> Result<(Tensor, Tensor)> {
        let x = self.merge.forward(&Tensor::cat(inputs, 1)?)?;
        let mu = self.mu.1.forward(&self.mu.0.forward(&x)?)?;
        let ls = self.log_sigma.1.forward(&self.log_sigma.0.forward(&x)?)?;
        Ok((mu, ls))
    }
}

/// One stochastic layer.
pub struct Layer {
    pub level: usize,
    enc: Rdb,
    emb_proj: Rdb,
    emb_pose: Rdb,
    posterior: GaussHead,
    prior: GaussHead,
    dec_merge: Conv,
    dec: Rdb,
}

/// The conditioning of a batch: per level, the projection and pose features.
pub struct Condition {
    proj: Vec<Tensor>,
    pose: Vec<Tensor>,
}

/// Output of a forward pass.
pub struct Forward {
    /// [B, 1, D, D]
    pub output: Tensor,
    /// Σ over layers of the KL summed over latent elements, per image [B] (zero when
    /// sampling from the prior).
    pub kl: Option<Tensor>,
    /// KL per layer (summed over the batch and latent elements), for diagnostics.
    pub kl_layers: Vec<Tensor>,
}

/// See the module docs.
pub struct Hvae {
    pub arch: ArchConfig,
    pub d: usize,
    vars: Vec<(String, Var)>,
    enc_in: Conv,
    enc_down: Vec<Down>,
    proj_in: Conv,
    proj_down: Vec<Down>,
    pose_mlp: Vec<Linear>,
    pose_in: Conv,
    pose_up: Vec<Up>,
    layers: Vec<Layer>,
    dec_up: Vec<Up>,
    top: Tensor,
    out1: Conv,
    out2: Conv,
    device: Device,
}

impl Hvae {
    /// A new model for D×D images with weights drawn from `seed`.
    pub fn new(arch: &ArchConfig, d: usize, seed: u64, device: &Device) -> Result<Hvae> {
        arch.check(Some(d))?;
        let mut b = Builder { vars: Vec::new(), rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), device };
        let (nf, g, levels) = (arch.nf, arch.growth, arch.levels());
        let s = d >> (levels - 1);
        let enc_in = b.conv("encoder.input", 1, nf, 3, Init::TorchDefault)?;
        let mut enc_down = Vec::new();
        let mut proj_down = Vec::new();
        let mut pose_up = Vec::new();
        let mut dec_up = Vec::new();
        for l in 1..levels {
            enc_down.push(Down(b.conv(&format!("encoder.down{l}"), 4 * nf, nf, 3, Init::TorchDefault)?));
        }
        let proj_in = b.conv("cond.proj.input", 1, nf, 3, Init::TorchDefault)?;
        for l in 1..levels {
            proj_down.push(Down(b.conv(&format!("cond.proj.down{l}"), 4 * nf, nf, 3, Init::TorchDefault)?));
        }
        let mut pose_mlp = Vec::new();
        let mut fin = 6;
        for (i, &h) in arch.pose_hidden.iter().chain(std::iter::once(&(s * s))).enumerate() {
            pose_mlp.push(b.linear(&format!("cond.pose.mlp{i}"), fin, h)?);
            fin = h;
        }
        let pose_in = b.conv("cond.pose.input", 1, nf, 3, Init::TorchDefault)?;
        // pose_up[k] takes level k+1 to level k.
        for l in 0..levels - 1 {
            pose_up.push(Up(b.conv(&format!("cond.pose.up{l}"), nf / 4, nf, 3, Init::TorchDefault)?));
        }
        let mut layers = Vec::new();
        let mut idx = 0;
        for l in 0..levels {
            for _ in 0..arch.layers_in_level(l) {
                let n = format!("layer{idx:02}");
                layers.push(Layer {
                    level: l,
                    enc: b.rdb(&format!("{n}.encoder"), nf, g)?,
                    emb_proj: b.rdb(&format!("{n}.embed_proj"), nf, g)?,
                    emb_pose: b.rdb(&format!("{n}.embed_pose"), nf, g)?,
                    posterior: GaussHead::new(&mut b, &format!("{n}.posterior"), 4, arch)?,
                    prior: GaussHead::new(&mut b, &format!("{n}.prior"), 3, arch)?,
                    dec_merge: b.conv(
                        &format!("{n}.decoder.merge"),
                        nf + arch.z_dim,
                        nf,
                        3,
                        Init::TorchDefault,
                    )?,
                    dec: b.rdb(&format!("{n}.decoder"), nf, g)?,
                });
                idx += 1;
            }
        }
        for l in 0..levels - 1 {
            dec_up.push(Up(b.conv(&format!("decoder.up{l}"), nf / 4, nf, 3, Init::TorchDefault)?));
        }
        let top = b.tensor("decoder.top".into(), &[1, nf, s, s], 1, Init::Zeros)?;
        let out1 = b.conv("decoder.out1", nf, nf, 3, Init::TorchDefault)?;
        let out2 = b.conv("decoder.out2", nf, 1, 3, Init::TorchDefault)?;
        let mut vars = b.vars;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Hvae {
            arch: arch.clone(),
            d,
            vars,
            enc_in,
            enc_down,
            proj_in,
            proj_down,
            pose_mlp,
            pose_in,
            pose_up,
            layers,
            dec_up,
            top,
            out1,
            out2,
            device: device.clone(),
        })
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn n_params(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Parameters of each named block (prefix before the first '.', or the layer and its
    /// part), for the block-by-block count of the tests and the report.
    pub fn params_by_block(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for (n, v) in &self.vars {
            let parts: Vec<&str> = n.split('.').collect();
            let key = if parts[0].starts_with("layer") || parts[0] == "cond" {
                format!("{}.{}", parts[0], parts[1])
            } else {
                parts[0].to_string()
            };
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => *c += v.elem_count(),
                None => out.push((key, v.elem_count())),
            }
        }
        out
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Conditioning features from the projections [B, 1, D, D] and the pose vectors [B, 6].
    pub fn condition(&self, proj: &Tensor, pose: &Tensor) -> Result<Condition> {
        let levels = self.arch.levels();
        let mut cur = self.proj_in.forward(proj)?;
        let mut p = Vec::with_capacity(levels);
        for dn in &self.proj_down {
            let next = dn.forward(&cur)?;
            p.push(std::mem::replace(&mut cur, next));
        }
        p.push(cur);
        let b = pose.dim(0)?;
        let s = self.d >> (levels - 1);
        let mut h = pose.clone();
        let last = self.pose_mlp.len() - 1;
        for (i, lin) in self.pose_mlp.iter().enumerate() {
            h = lin.forward(&h)?;
            if i < last {
                h = candle_nn::ops::leaky_relu(&h, 0.2)?;
            }
        }
        let mut cur = self.pose_in.forward(&h.reshape((b, 1, s, s))?)?;
        let mut e = Vec::with_capacity(levels);
        for l in (0..levels - 1).rev() {
            let next = self.pose_up[l].forward(&cur)?;
            e.push(std::mem::replace(&mut cur, next));
        }
        e.push(cur);
        e.reverse();
        Ok(Condition { proj: p, pose: e })
    }

    /// Encoder features aˡ of images [B, 1, D, D], one per layer.
    pub fn encode(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut a = self.enc_in.forward(x)?;
        let mut feats = Vec::with_capacity(self.layers.len());
        let mut level = 0;
        for layer in &self.layers {
            while level < layer.level {
                a = self.enc_down[level].forward(&a)?;
                level += 1;
            }
            a = layer.enc.forward(&a)?;
            feats.push(a.clone());
        }
        Ok(feats)
    }

    /// Top-down pass. With `enc` (training), z ~ posterior and the KL is returned; without
    /// (generation), z ~ prior with temperature `temperature`. `noise(layer, shape)` gives
    /// the standard normal draws.
    pub fn decode(
        &self,
        cond: &Condition,
        enc: Option<&[Tensor]>,
        temperature: f64,
        noise: &mut dyn FnMut(usize, &[usize]) -> Result<Tensor>,
    ) -> Result<Forward> {
        let bsz = cond.proj[0].dim(0)?;
        let levels = self.arch.levels();
        let mut b = self
            .top
            .broadcast_as((bsz, self.arch.nf, self.d >> (levels - 1), self.d >> (levels - 1)))?
            .contiguous()?;
        let mut level = levels - 1;
        let mut kl_sum: Option<Tensor> = None;
        let mut kl_layers = Vec::new();
        for (li, layer) in self.layers.iter().enumerate().rev() {
            while level > layer.level {
                b = self.dec_up[level - 1].forward(&b)?;
                level -= 1;
            }
            let h = layer.emb_proj.forward(&cond.proj[level])?;
            let e = layer.emb_pose.forward(&cond.pose[level])?;
            let (mu_p, ls_p) = layer.prior.forward(&[&b, &h, &e])?;
            let eps = noise(li, mu_p.dims())?;
            let z = match enc {
                Some(a) => {
                    let (mu_q, ls_q) = layer.posterior.forward(&[&b, &a[li], &h, &e])?;
                    let z = (&mu_q + (ls_q.exp()? * &eps)?)?;
                    let kl = gaussian_kl(&mu_q, &ls_q, &mu_p, &ls_p)?; // [B, z, H, W]
                    let per_image = kl.flatten_from(1)?.sum(1)?;
                    kl_layers.push(per_image.sum_all()?);
                    kl_sum = Some(match kl_sum {
                        Some(s) => (s + per_image)?,
                        None => per_image,
                    });
                    z
                }
                None => (&mu_p + (ls_p.exp()? * eps.affine(temperature, 0.0)?)?)?,
            };
            b = layer.dec.forward(&layer.dec_merge.forward(&Tensor::cat(&[&b, &z], 1)?)?)?;
        }
        while level > 0 {
            b = self.dec_up[level - 1].forward(&b)?;
            level -= 1;
        }
        let output = self.out2.forward(&self.out1.forward(&b)?.relu()?)?;
        kl_layers.reverse();
        Ok(Forward { output, kl: kl_sum, kl_layers })
    }

    /// Training forward pass: reconstruction of `x` and KL.
    pub fn forward_train(
        &self,
        x: &Tensor,
        cond: &Condition,
        noise: &mut dyn FnMut(usize, &[usize]) -> Result<Tensor>,
    ) -> Result<Forward> {
        let a = self.encode(x)?;
        self.decode(cond, Some(&a), 1.0, noise)
    }

    /// Generation from the conditional prior.
    pub fn generate(
        &self,
        cond: &Condition,
        temperature: f64,
        noise: &mut dyn FnMut(usize, &[usize]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        Ok(self.decode(cond, None, temperature, noise)?.output)
    }
}

/// Elementwise KL(N(μq, σq²) ‖ N(μp, σp²)) from log σ:
/// log σp − log σq + (σq² + (μq − μp)²) / (2σp²) − ½.
pub fn gaussian_kl(mu_q: &Tensor, ls_q: &Tensor, mu_p: &Tensor, ls_p: &Tensor) -> Result<Tensor> {
    let var_ratio = (ls_q - ls_p)?.affine(2.0, 0.0)?.exp()?;
    let dm = ((mu_q - mu_p)? * (ls_p.affine(-1.0, 0.0)?.exp()?))?;
    Ok(((ls_p - ls_q)? + ((var_ratio + dm.sqr()?)?.affine(0.5, -0.5)?))?)
}

/// Standard normal draws of `shape` from `rng`.
pub fn normal(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Pose vectors [quaternion x, y, z, w, shift_x / D, shift_y / D] of a batch.
pub fn pose_vectors(poses: &[cryoforge_io::stack::Pose], d: usize, device: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(poses.len() * 6);
    for p in poses {
        let q = cryoforge_core::rotation::Quat::from_rot(&p.rot).0; // (w, x, y, z)
        v.extend(
            [q[1], q[2], q[3], q[0], p.shift_px[0] / d as f64, p.shift_px[1] / d as f64].map(|x| x as f32),
        );
    }
    Ok(Tensor::from_vec(v, (poses.len(), 6), device)?)
}

/// Mean squared error over all elements.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a - b)?.sqr()?.mean_all()?)
}

/// A scalar tensor's value as f64.
pub fn scalar_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_configuration_parameter_count() {
        let m = Hvae::new(&ArchConfig::paper(), 256, 0, &Device::Cpu).unwrap();
        let n = m.n_params();
        for (k, c) in m.params_by_block() {
            if !k.starts_with("layer") || k.starts_with("layer00") {
                eprintln!("{k}: {c}");
            }
        }
        eprintln!("total {n}");
        assert_eq!(m.layers().len(), 15);
    }
}
