//! The cryoSPHERE model (METHODS.md §2).
//!
//! # Encoder and decoder
//! Encoder: D² → 512 → 256 → 64 → 64 (LeakyReLU) → (μ, σ) with σ = ELU(·) + 1 (a std);
//! z = μ + σ·ε. Decoder: z → 512 → 512 (LeakyReLU) → 6·K numbers: per segment a
//! translation t_k (Å) and three rotation numbers v_k. With the reference's unit-real-part
//! quaternion (1, v_k) the rotation angle is θ_k = 2·atan|v_k| and the axis a_k = v_k/|v_k|
//! ([`RotationParam::AxisAngle`]: θ_k = |v_k|). The decoder's last layer starts 100× smaller
//! than PyTorch's default so that training starts near the reference structure.
//!
//! # Segmentation
//! Segment k (of part p) has a mean m_k, a width s_k = ELU(s̃_k) + 1 and a proportion
//! logit π_k, each drawn per image from a Gaussian variational posterior
//! N(μ_q, exp(log σ_q)²) (log-parametrised: the stds stay positive). For residue i at
//! position x_i in its part the membership is
//!
//! ```text
//! w_ik = softmax_{k ∈ part(i)} ([−½(x_i − m_k)²/s_k² − log s_k + π_k] / τ)
//! ```
//!
//! (the normalised Gaussian density: the reference omits −log s_k; the log-softmax of π
//! over the part is a constant of the row and cancels). Residues outside every part have
//! w = 0 and do not move. Priors and initial posteriors (per part of L residues and K
//! segments, b = L/K): μ_m = b/2 + k·b, σ_m = 10; μ_s = b, σ_s = 10; μ_π = 0, σ_π = 1.
//!
//! # Deformation
//! For k = 1..K in turn every residue is rotated by the rotation vector w_ik·θ_k·a_k
//! (Rodrigues) about the centre c_k; then Σ_k w_ik·t_k is added:
//!
//! ```text
//! x ← c_k + cos φ·(x − c_k) + sin φ·a_k × (x − c_k) + (1 − cos φ)·a_k (a_k·(x − c_k)),  φ = w_ik θ_k
//! x ← x + Σ_k w_ik t_k
//! ```
//!
//! c_k is the box origin (the reference) or the membership-weighted centroid of the
//! segment's reference positions, c_k = Σ_i w_ik x⁰_i / Σ_i w_ik ([`RotationCentre`]).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::{RotationCentre, RotationParam, SphereConfig};
use crate::parts::Layout as PartLayout;
use crate::{Result, SphereError};

/// Custom op: element-wise atan with backward 1/(1 + x²) (candle has no atan). CPU,
/// f32 or f64.
pub struct Atan;

impl CustomOp1 for Atan {
    fn name(&self) -> &'static str {
        "cryoforge-atan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) =
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("atan: contiguous input".into()))?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].iter().map(|x| x.atan()).collect()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].iter().map(|x| x.atan()).collect()),
            _ => candle_core::bail!("atan: f32 or f64 expected"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.div(&(arg.sqr()? + 1.0)?)?))
    }
}

/// atan of a tensor (moved to the CPU and back on other devices).
pub fn atan(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(Atan)?)
    } else {
        let dev = x.device().clone();
        Ok(x.to_device(&Device::Cpu)?.contiguous()?.apply_op1(Atan)?.to_device(&dev)?)
    }
}

/// A LeakyReLU multi-layer perceptron; the last layer has no activation.
pub struct Mlp {
    layers: Vec<Linear>,
    slope: f64,
}

impl Mlp {
    /// Layers `sizes[0] → sizes[1] → … → sizes[n]` (PyTorch's default initialisation).
    pub fn new(sizes: &[usize], slope: f64, vb: VarBuilder) -> Result<Mlp> {
        let mut layers = Vec::new();
        for i in 0..sizes.len() - 1 {
            layers.push(candle_nn::linear(sizes[i], sizes[i + 1], vb.pp(format!("l{i}")))?);
        }
        Ok(Mlp { layers, slope })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < n {
                h = candle_nn::ops::leaky_relu(&h, self.slope)?;
            }
        }
        Ok(h)
    }
}

/// Per-segment rigid motions decoded for a batch.
#[derive(Debug, Clone)]
pub struct Motions {
    /// Unit rotation axes [B, K, 3].
    pub axis: Tensor,
    /// Rotation angles (rad, ≥ 0) [B, K].
    pub angle: Tensor,
    /// Translations (Å) [B, K, 3].
    pub trans: Tensor,
}

/// Split decoder outputs [B, 6K] = [t (3K) | v (3K)] into motions.
pub fn motions_from_output(out: &Tensor, k: usize, param: RotationParam) -> Result<Motions> {
    let (b, n) = out.dims2()?;
    if n != 6 * k {
        return Err(SphereError::msg(format!("decoder output has {n} values, expected 6·{k}")));
    }
    let trans = out.narrow(1, 0, 3 * k)?.reshape((b, k, 3))?;
    let v = out.narrow(1, 3 * k, 3 * k)?.reshape((b, k, 3))?;
    motions_from_v(&v, &trans, param)
}

/// Motions from rotation numbers v [B, K, 3] and translations [B, K, 3].
pub fn motions_from_v(v: &Tensor, trans: &Tensor, param: RotationParam) -> Result<Motions> {
    // The tiny offset keeps |v| differentiable at v = 0 (axis then arbitrary, angle 0).
    let n = (v.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt()?; // [B, K]
    let axis = v.broadcast_div(&n.unsqueeze(2)?)?;
    let angle = match param {
        RotationParam::Quaternion => (atan(&n)? * 2.0)?,
        RotationParam::AxisAngle => n,
    };
    Ok(Motions { axis, angle, trans: trans.clone() })
}

/// Cross-product matrices [B, 3, 3] of axes [B, 3]: `[a]× x = a × x`.
fn cross_matrix(a: &Tensor) -> Result<Tensor> {
    let b = a.dim(0)?;
    let c = |i: usize| a.narrow(1, i, 1);
    let (a1, a2, a3) = (c(0)?, c(1)?, c(2)?);
    let z = Tensor::zeros((b, 1), a.dtype(), a.device())?;
    let m = Tensor::cat(&[&z, &a3.neg()?, &a2, &a3, &z, &a1.neg()?, &a2.neg()?, &a1, &z], 1)?;
    Ok(m.reshape((b, 3, 3))?)
}

/// Rotation centres [B', K, 3] for `w` [B', R, K] and reference positions x0 [R, 3].
pub fn segment_centres(w: &Tensor, x0: &Tensor, centre: RotationCentre) -> Result<Option<Tensor>> {
    match centre {
        RotationCentre::Origin => Ok(None),
        RotationCentre::Centroid => {
            let (b, r, _k) = w.dims3()?;
            let wt = w.transpose(1, 2)?.contiguous()?; // [B, K, R]
            let num = wt.matmul(&x0.unsqueeze(0)?.broadcast_as((b, r, 3))?.contiguous()?)?; // [B, K, 3]
            let den = (wt.sum_keepdim(2)? + 1e-12)?; // [B, K, 1]; empty segments: centre 0
            Ok(Some(num.broadcast_div(&den)?))
        }
    }
}

/// The deformation of the module docs: x0 [R, 3], memberships w [B or 1, R, K], motions
/// for B images, centres [B or 1, K, 3] (None: the origin). Returns [B, R, 3].
pub fn deform(x0: &Tensor, w: &Tensor, m: &Motions, centres: Option<&Tensor>) -> Result<Tensor> {
    let (b, k) = m.angle.dims2()?;
    let (wb, r, wk) = w.dims3()?;
    if wk != k || (wb != b && wb != 1) {
        return Err(SphereError::msg(format!("memberships {:?} do not match motions [{b}, {k}]", w.dims())));
    }
    // Materialised: candle's ops on the stride-0 batch of a broadcast [1, R, K] gave
    // results up to 2e-3 Å off the contiguous ones (test
    // `block_wise_deformation_equals_the_full_membership_deformation`).
    let w = w.broadcast_as((b, r, k))?.contiguous()?;
    let mut x = x0.unsqueeze(0)?.broadcast_as((b, r, 3))?.contiguous()?;
    for s in 0..k {
        let phi = w.narrow(2, s, 1)?.broadcast_mul(&m.angle.narrow(1, s, 1)?.unsqueeze(1)?)?; // [B, R, 1]
        let a = m.axis.narrow(1, s, 1)?.squeeze(1)?.contiguous()?; // [B, 3]
        let kx = cross_matrix(&a)?.transpose(1, 2)?.contiguous()?; // [B, 3, 3] = [a]×ᵀ
        let aat = a.unsqueeze(2)?.matmul(&a.unsqueeze(1)?)?; // [B, 3, 3]
        let c = centres.map(|c| c.narrow(1, s, 1)).transpose()?; // [B|1, 1, 3]
        let xc = match &c {
            Some(c) => x.broadcast_sub(c)?,
            None => x.clone(),
        };
        let (cs, sn) = (phi.cos()?, phi.sin()?);
        let y = (xc.broadcast_mul(&cs)?
            + xc.matmul(&kx)?.broadcast_mul(&sn)?
            + xc.matmul(&aat)?.broadcast_mul(&cs.affine(-1.0, 1.0)?)?)?;
        x = match &c {
            Some(c) => y.broadcast_add(c)?,
            None => y,
        };
    }
    Ok((x + w.matmul(&m.trans)?)?)
}

/// Variational parameters of the segmentation (each \[K\]).
pub struct SegVars {
    pub mean_mu: Var,
    pub mean_logsd: Var,
    pub std_mu: Var,
    pub std_logsd: Var,
    pub prop_mu: Var,
    pub prop_logsd: Var,
}

impl SegVars {
    pub fn named(&self) -> Vec<(String, Var)> {
        vec![
            ("seg.mean_mu".into(), self.mean_mu.clone()),
            ("seg.mean_logsd".into(), self.mean_logsd.clone()),
            ("seg.std_mu".into(), self.std_mu.clone()),
            ("seg.std_logsd".into(), self.std_logsd.clone()),
            ("seg.prop_mu".into(), self.prop_mu.clone()),
            ("seg.prop_logsd".into(), self.prop_logsd.clone()),
        ]
    }
}

/// Prior means and stds of the segmentation, per segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegPrior {
    pub mean_mu: Vec<f64>,
    pub mean_sd: Vec<f64>,
    pub std_mu: Vec<f64>,
    pub std_sd: Vec<f64>,
    pub prop_mu: Vec<f64>,
    pub prop_sd: Vec<f64>,
}

impl SegPrior {
    /// METHODS.md §2: per part of L residues and n segments, b = L/n, μ_m = b/2 + k·b.
    pub fn reference(layout: &PartLayout, cfg: &SphereConfig) -> SegPrior {
        let mut p = SegPrior {
            mean_mu: vec![],
            mean_sd: vec![],
            std_mu: vec![],
            std_sd: vec![],
            prop_mu: vec![],
            prop_sd: vec![],
        };
        for (part, &n) in layout.n_segm.iter().enumerate() {
            let b = layout.part_len[part] as f64 / n as f64;
            for k in 0..n {
                p.mean_mu.push(b / 2.0 + k as f64 * b);
                p.mean_sd.push(cfg.prior_mean_std);
                p.std_mu.push(cfg.prior_std_mean.unwrap_or(b));
                p.std_sd.push(cfg.prior_std_std);
                p.prop_mu.push(cfg.prior_prop_mean);
                p.prop_sd.push(cfg.prior_prop_std);
            }
        }
        p
    }
}

/// The segmentation (see the module docs).
pub struct Segmentation {
    pub layout: PartLayout,
    pub tau: f64,
    pub vars: SegVars,
    pub prior: SegPrior,
    prior_t: [Tensor; 6],
    /// Residue positions in their part, [1, R, 1].
    pos: Tensor,
    /// 0 for the segments of the residue's part, −1e9 elsewhere, [1, R, K].
    mask_add: Tensor,
    /// 1 when the residue is in a part, [1, R, 1].
    covered: Tensor,
    /// The memberships are block-diagonal (a residue belongs only to its part's segments):
    /// per part, its residues and segments, for the block-wise evaluation used in training
    /// and decoding, O(B·Σ R_p·K_p) instead of O(B·R·K).
    blocks: Vec<PartBlock>,
    /// Residues outside every part (they do not move), u32 indices.
    unmoved: Option<Tensor>,
    /// Full residue order from cat(part residues…, unmoved residues); None when that
    /// concatenation already is the residue order.
    assemble: Option<Tensor>,
}

/// One part of the block-diagonal segmentation.
struct PartBlock {
    /// First segment and number of segments.
    seg0: usize,
    k: usize,
    /// Residue indices (u32 \[R_p\]) and their positions in the part, [1, R_p, 1].
    res: Tensor,
    pos: Tensor,
}

fn t1(v: &[f64], dev: &Device, dt: DType) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), v.len(), dev)?.to_dtype(dt)?)
}

impl Segmentation {
    /// Posteriors initialised at the prior.
    pub fn new(
        layout: PartLayout,
        prior: SegPrior,
        tau: f64,
        dev: &Device,
        dt: DType,
    ) -> Result<Segmentation> {
        let k = layout.n_segments();
        let r = layout.part_of.len();
        let var = |v: &[f64]| -> Result<Var> { Ok(Var::from_tensor(&t1(v, dev, dt)?)?) };
        let logs = |v: &[f64]| -> Vec<f64> { v.iter().map(|s| s.ln()).collect() };
        let vars = SegVars {
            mean_mu: var(&prior.mean_mu)?,
            mean_logsd: var(&logs(&prior.mean_sd))?,
            std_mu: var(&prior.std_mu)?,
            std_logsd: var(&logs(&prior.std_sd))?,
            prop_mu: var(&prior.prop_mu)?,
            prop_logsd: var(&logs(&prior.prop_sd))?,
        };
        let prior_t = [
            t1(&prior.mean_mu, dev, dt)?,
            t1(&prior.mean_sd, dev, dt)?,
            t1(&prior.std_mu, dev, dt)?,
            t1(&prior.std_sd, dev, dt)?,
            t1(&prior.prop_mu, dev, dt)?,
            t1(&prior.prop_sd, dev, dt)?,
        ];
        let seg_part = layout.segment_part();
        let mut mask = vec![0f64; r * k];
        let mut cov = vec![0f64; r];
        for i in 0..r {
            // Residues outside every part keep equal logits; `covered` zeroes their row.
            if let Some(p) = layout.part_of[i] {
                cov[i] = 1.0;
                for s in 0..k {
                    if seg_part[s] != p {
                        mask[i * k + s] = -1e9;
                    }
                }
            }
        }
        let pos: Vec<f64> = layout.pos.iter().map(|&p| p as f64).collect();
        let mut order: Vec<u32> = Vec::with_capacity(r);
        let mut blocks = Vec::with_capacity(layout.n_segm.len());
        for (p, (&seg0, &kp)) in layout.seg_start.iter().zip(&layout.n_segm).enumerate() {
            let res: Vec<u32> = (0..r).filter(|&i| layout.part_of[i] == Some(p)).map(|i| i as u32).collect();
            if res.is_empty() {
                continue;
            }
            let pp: Vec<f64> = res.iter().map(|&i| pos[i as usize]).collect();
            order.extend(&res);
            let rp = res.len();
            blocks.push(PartBlock {
                seg0,
                k: kp,
                res: Tensor::from_vec(res, rp, dev)?,
                pos: t1(&pp, dev, dt)?.reshape((1, rp, 1))?,
            });
        }
        let unmoved_idx: Vec<u32> =
            (0..r).filter(|&i| layout.part_of[i].is_none()).map(|i| i as u32).collect();
        order.extend(&unmoved_idx);
        let unmoved = if unmoved_idx.is_empty() {
            None
        } else {
            let n = unmoved_idx.len();
            Some(Tensor::from_vec(unmoved_idx, n, dev)?)
        };
        let assemble = if order.iter().enumerate().all(|(i, &o)| o as usize == i) {
            None
        } else {
            let mut inv = vec![0u32; r];
            for (j, &o) in order.iter().enumerate() {
                inv[o as usize] = j as u32;
            }
            Some(Tensor::from_vec(inv, r, dev)?)
        };
        Ok(Segmentation {
            blocks,
            unmoved,
            assemble,
            pos: t1(&pos, dev, dt)?.reshape((1, r, 1))?,
            mask_add: t1(&mask, dev, dt)?.reshape((1, r, k))?,
            covered: t1(&cov, dev, dt)?.reshape((1, r, 1))?,
            layout,
            tau,
            vars,
            prior,
            prior_t,
        })
    }

    pub fn n_segments(&self) -> usize {
        self.layout.n_segments()
    }

    /// Memberships [B, R, K] from segment means m, widths s (> 0) and logits π, each [B, K].
    pub fn membership(&self, m: &Tensor, s: &Tensor, pi: &Tensor) -> Result<Tensor> {
        let logit = self.logits(&self.pos, m, s, pi)?.broadcast_add(&self.mask_add)?;
        let w = cryoforge_nn::ops::softmax(&logit)?;
        Ok(w.broadcast_mul(&self.covered)?)
    }

    /// Membership logits [B, R', K'] of residues at part positions `pos` [1, R', 1] for
    /// segments with means m, widths s and logits π ([B, K']):
    /// `(−½((pos − m)/s)² − log s + π)/τ`.
    fn logits(&self, pos: &Tensor, m: &Tensor, s: &Tensor, pi: &Tensor) -> Result<Tensor> {
        let m = m.unsqueeze(1)?;
        let s = s.unsqueeze(1)?;
        let d = pos.broadcast_sub(&m)?.broadcast_div(&s)?;
        Ok(((d.sqr()? * -0.5)?.broadcast_sub(&s.log()?)?.broadcast_add(&pi.unsqueeze(1)?)? / self.tau)?)
    }

    /// Width s = ELU(s̃) + 1 (also the encoder's σ), evaluated as relu(s̃) + exp(min(s̃, 0)) and floored at 1e-4
    /// residues: in f32, `elu(s̃) + 1` rounds to exactly 0 for s̃ < −17 (a 2.7σ draw of the
    /// default width prior when a chain has 20 segments), and log 0 − ∞ made whole images'
    /// memberships NaN.
    pub(crate) fn width(raw: &Tensor) -> Result<Tensor> {
        let neg = raw.minimum(0.0)?.exp()?;
        Ok((raw.relu()? + neg)?.maximum(1e-4)?)
    }

    /// Memberships of one part's residues in its own segments, [B, R_p, K_p], from that
    /// part's m, s, π ([B, K_p]): equal to the part's block of [`Segmentation::membership`].
    fn membership_block(&self, blk: &PartBlock, m: &Tensor, s: &Tensor, pi: &Tensor) -> Result<Tensor> {
        Ok(cryoforge_nn::ops::softmax(&self.logits(&blk.pos, m, s, pi)?)?)
    }

    fn blocks_from(&self, m: &Tensor, s: &Tensor, pi: &Tensor) -> Result<Vec<Tensor>> {
        self.blocks
            .iter()
            .map(|blk| {
                let n = |t: &Tensor| t.narrow(1, blk.seg0, blk.k);
                self.membership_block(blk, &n(m)?, &n(s)?, &n(pi)?)
            })
            .collect()
    }

    /// The draws of [`Segmentation::sample`] (same random numbers), as per-part blocks
    /// [B, R_p, K_p] for [`SphereModel::deform_blocks`].
    pub fn sample_blocks<R: Rng>(&self, b: usize, rng: &mut R) -> Result<Vec<Tensor>> {
        let (m, s, pi) = self.draw(b, rng)?;
        self.blocks_from(&m, &s, &pi)
    }

    /// [`Segmentation::posterior_mean`] as per-part blocks [1, R_p, K_p].
    pub fn posterior_mean_blocks(&self) -> Result<Vec<Tensor>> {
        let (m, s, pi) = self.posterior_mean_params()?;
        self.blocks_from(&m, &s, &pi)
    }

    /// One draw of (m, s, π) per image from the posteriors, each [B, K].
    fn draw<R: Rng>(&self, b: usize, rng: &mut R) -> Result<(Tensor, Tensor, Tensor)> {
        let k = self.n_segments();
        let v = &self.vars;
        let draw = |mu: &Var, logsd: &Var, rng: &mut R| -> Result<Tensor> {
            let eps: Vec<f32> = (0..b * k).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
            let eps = Tensor::from_vec(eps, (b, k), mu.device())?.to_dtype(mu.dtype())?;
            Ok(eps
                .broadcast_mul(&logsd.as_tensor().exp()?.unsqueeze(0)?)?
                .broadcast_add(&mu.as_tensor().unsqueeze(0)?)?)
        };
        let m = draw(&v.mean_mu, &v.mean_logsd, rng)?;
        let s = Self::width(&draw(&v.std_mu, &v.std_logsd, rng)?)?;
        let pi = draw(&v.prop_mu, &v.prop_logsd, rng)?;
        Ok((m, s, pi))
    }

    /// (m, s, π) at the posterior means, each [1, K].
    fn posterior_mean_params(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let v = &self.vars;
        let m = v.mean_mu.as_tensor().unsqueeze(0)?;
        let s = Self::width(&v.std_mu.as_tensor().unsqueeze(0)?)?;
        let pi = v.prop_mu.as_tensor().unsqueeze(0)?;
        Ok((m, s, pi))
    }

    /// One draw of the segmentation per image from the posteriors: [B, R, K].
    pub fn sample<R: Rng>(&self, b: usize, rng: &mut R) -> Result<Tensor> {
        let (m, s, pi) = self.draw(b, rng)?;
        self.membership(&m, &s, &pi)
    }

    /// The segmentation at the posterior means (reproducible; used by analysis): [1, R, K].
    pub fn posterior_mean(&self) -> Result<Tensor> {
        let (m, s, pi) = self.posterior_mean_params()?;
        self.membership(&m, &s, &pi)
    }

    /// KL of the posteriors of the means, widths and proportions to their priors, each
    /// summed over segments (scalars).
    pub fn kl(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let v = &self.vars;
        let p = &self.prior_t;
        let kl = |mu: &Var, logsd: &Var, pm: &Tensor, ps: &Tensor| -> Result<Tensor> {
            Ok(cryoforge_nn::loss::gaussian_kl_std(mu.as_tensor(), &logsd.as_tensor().exp()?, pm, ps)?
                .sum_all()?)
        };
        Ok((
            kl(&v.mean_mu, &v.mean_logsd, &p[0], &p[1])?,
            kl(&v.std_mu, &v.std_logsd, &p[2], &p[3])?,
            kl(&v.prop_mu, &v.prop_logsd, &p[4], &p[5])?,
        ))
    }
}

/// The whole model: networks, segmentation and the reference structure.
pub struct SphereModel {
    pub cfg: SphereConfig,
    /// Box size (px).
    pub d: usize,
    pub varmap: VarMap,
    encoder: Mlp,
    decoder: Mlp,
    pub seg: Segmentation,
    /// Reference Cα positions [R, 3] (Å, origin at the box centre).
    pub x0: Tensor,
    /// Amplitudes \[R\].
    pub amps: Tensor,
    /// Gaussian width σ (Å), \[1\].
    pub sigma: Tensor,
}

impl SphereModel {
    /// Fresh weights (seeded through candle's CPU RNG) for a D×D box and reference residues.
    pub fn new(
        cfg: &SphereConfig,
        d: usize,
        x0: &[[f64; 3]],
        amps: &[f64],
        layout: PartLayout,
        dev: &Device,
    ) -> Result<SphereModel> {
        cfg.validate()?;
        if x0.len() != amps.len() || x0.len() != layout.part_of.len() {
            return Err(SphereError::msg("reference positions, amplitudes and parts differ in length"));
        }
        let dt = DType::F32;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dt, dev);
        let mut enc_sizes = vec![d * d];
        enc_sizes.extend(&cfg.encoder_hidden);
        enc_sizes.push(2 * cfg.zdim);
        let encoder = Mlp::new(&enc_sizes, cfg.leaky_slope, vb.pp("enc"))?;
        let k = layout.n_segments();
        let mut dec_sizes = vec![cfg.zdim];
        dec_sizes.extend(&cfg.decoder_hidden);
        dec_sizes.push(6 * k);
        let decoder = Mlp::new(&dec_sizes, cfg.leaky_slope, vb.pp("dec"))?;
        // Seeded PyTorch-default initialisation (U(±1/√fan_in) for weights and biases;
        // candle's CPU RNG cannot be seeded), the decoder's last layer 100× smaller so that
        // training starts near the reference.
        {
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_5eed);
            let data = varmap.data().lock().map_err(|_| SphereError::msg("VarMap lock poisoned"))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            let last = format!("dec.l{}.", dec_sizes.len() - 2);
            for name in names {
                let v = &data[name];
                let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or(name);
                let wname = format!("{layer}.weight");
                let fan_in = data.get(&wname).map(|w| w.dims()[1]).unwrap_or(1);
                let mut bound = 1.0 / (fan_in as f64).sqrt();
                if name.starts_with(&last) {
                    bound *= 0.01;
                }
                let vals: Vec<f32> =
                    (0..v.elem_count()).map(|_| rng.gen_range(-bound..bound) as f32).collect();
                v.set(&Tensor::from_vec(vals, v.shape(), dev)?)?;
            }
        }
        let prior = SegPrior::reference(&layout, cfg);
        let seg = Segmentation::new(layout, prior, cfg.tau, dev, dt)?;
        let xs: Vec<f32> = x0.iter().flat_map(|p| p.map(|v| v as f32)).collect();
        let am: Vec<f32> = amps.iter().map(|&a| a as f32).collect();
        Ok(SphereModel {
            cfg: cfg.clone(),
            d,
            varmap,
            encoder,
            decoder,
            seg,
            x0: Tensor::from_vec(xs, (x0.len(), 3), dev)?,
            amps: Tensor::from_vec(am, amps.len(), dev)?,
            sigma: Tensor::new(&[cfg.sigma_a as f32], dev)?,
        })
    }

    /// Network parameters, sorted by name.
    pub fn net_vars(&self) -> Vec<(String, Var)> {
        cryoforge_nn::optim::sorted_vars(&self.varmap)
    }

    /// Every parameter (networks then segmentation), as checkpoints store them.
    pub fn all_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.net_vars();
        v.extend(self.seg.vars.named());
        v
    }

    /// Encoder: normalised images [B, D²] → (μ, σ), each [B, zdim].
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.encoder.forward(x)?;
        let z = self.cfg.zdim;
        let mu = h.narrow(1, 0, z)?;
        let sd = Segmentation::width(&h.narrow(1, z, z)?)?;
        Ok((mu, sd))
    }

    /// Decoder: z [B, zdim] → per-segment motions.
    pub fn decode(&self, z: &Tensor) -> Result<Motions> {
        let out = self.decoder.forward(z)?;
        motions_from_output(&out, self.seg.n_segments(), self.cfg.rotation)
    }

    /// Deformed coordinates [B, R, 3] for memberships `w` and motions.
    pub fn deform(&self, w: &Tensor, m: &Motions) -> Result<Tensor> {
        let c = segment_centres(w, &self.x0, self.cfg.rotation_centre)?;
        deform(&self.x0, w, m, c.as_ref())
    }

    /// [`SphereModel::deform`] from per-part membership blocks
    /// ([`Segmentation::sample_blocks`], [`Segmentation::posterior_mean_blocks`]): each part's
    /// residues move with its own segments only, so the cost is O(B·Σ R_p·K_p²) rather than
    /// O(B·R·K²) — what makes many-chain complexes (hundreds of segments) trainable.
    pub fn deform_blocks(&self, ws: &[Tensor], m: &Motions) -> Result<Tensor> {
        let seg = &self.seg;
        if ws.len() != seg.blocks.len() {
            return Err(SphereError::msg(format!(
                "{} membership blocks for {} parts",
                ws.len(),
                seg.blocks.len()
            )));
        }
        let b = m.angle.dim(0)?;
        let mut pieces = Vec::with_capacity(ws.len() + 1);
        for (blk, w) in seg.blocks.iter().zip(ws) {
            let x0 = self.x0.index_select(&blk.res, 0)?;
            let n = |t: &Tensor| t.narrow(1, blk.seg0, blk.k);
            let mp = Motions { axis: n(&m.axis)?, angle: n(&m.angle)?, trans: n(&m.trans)? };
            let c = segment_centres(w, &x0, self.cfg.rotation_centre)?;
            pieces.push(deform(&x0, w, &mp, c.as_ref())?);
        }
        if let Some(u) = &seg.unmoved {
            let x0 = self.x0.index_select(u, 0)?;
            let ru = x0.dim(0)?;
            pieces.push(x0.unsqueeze(0)?.broadcast_as((b, ru, 3))?.contiguous()?);
        }
        let x = match pieces.as_slice() {
            [only] => only.clone(),
            _ => Tensor::cat(&pieces, 1)?,
        };
        Ok(match &seg.assemble {
            Some(perm) => x.index_select(perm, 1)?,
            None => x,
        })
    }
}
