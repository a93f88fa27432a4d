//! Losses and weight schedules.
//!
//! # Image losses
//! Masked correlation (METHODS.md §0, cryoSTAR): with a circular mask m of radius
//! `0.9375·D/2` (pixels whose distance from the centre pixel D/2 is < r) and N_in pixels
//! inside it,
//!
//! ```text
//! L = −mean_b[ Σ_p m·pred·gt / ((std_m(gt) + ε)(std_m(pred) + ε)) ] / N_in
//! ```
//!
//! no mean subtraction in the numerator; std_m is the population standard deviation over
//! the N_in mask pixels. For a zero-mean image compared with itself L = −1. The standard
//! deviation is evaluated as sqrt(max(var, 0) + 1e-20) so that a constant (e.g. all-zero)
//! prediction gives a finite loss and a zero, not NaN, gradient (0/0 guard).
//! [`mse_loss`] is the (optionally masked) mean squared error.
//!
//! # KL
//! For q = N(μ, exp(logvar)) and the prior N(0, 1), per dimension
//! `KL = ½(μ² + exp(logvar) − 1 − logvar)`. With free bits λ (per dimension),
//! `KL_fb = Σ_d max(mean_b KL_{b,d}, λ)` — dimensions below λ nats get no gradient.
//!
//! # Structural losses over pair lists ([`crate::structure`] builds the lists)
//! With d_p = |x_i − x_j| for pair p = (i, j) of a [B, R, 3] batch:
//! - continuity: `mean_{b,p} (d_p − d⁰_p)²` over consecutive same-chain pairs;
//! - clash: `Σ_{b,p} relu(c − d_p)² / #{(b, p): d_p < c}` (c = 4 Å), 0 when none violate;
//! - elastic network: `Σ_{b,p} k_p (d_p − d⁰_p)² / (B·Σ_p k_p)` with an optional per-edge
//!   keep mask k (adaptive relaxation, [`edge_keep_mask`]); 0 when no edge is kept.
//!
//! Only the listed pairs are touched (index_select), never a dense R×R matrix.

use candle_core::{DType, Device, Tensor, D};

use crate::{NnError, Result};

/// cryoSTAR's mask radius as a fraction of the half box.
pub const MASK_RADIUS_RATIO: f64 = 0.9375;

/// D×D circular mask (1 inside): pixel (y, x) is inside when
/// (x − D/2)² + (y − D/2)² < (ratio·D/2)².
pub fn circular_mask(d: usize, ratio: f64) -> Vec<f32> {
    let h = (d / 2) as f64;
    let r2 = (ratio * d as f64 / 2.0).powi(2);
    let mut m = vec![0f32; d * d];
    for y in 0..d {
        for x in 0..d {
            let (dx, dy) = (x as f64 - h, y as f64 - h);
            if dx * dx + dy * dy < r2 {
                m[y * d + x] = 1.0;
            }
        }
    }
    m
}

/// The masked correlation loss of METHODS.md §0 (see module docs).
#[derive(Debug, Clone)]
pub struct CorrelationLoss {
    mask: Tensor,
    mask_host: std::sync::Arc<Vec<f32>>,
    n_in: f64,
    eps: f64,
}

impl CorrelationLoss {
    /// Mask radius `ratio·D/2` (cryoSTAR: [`MASK_RADIUS_RATIO`]), ε in the denominator.
    pub fn new(d: usize, ratio: f64, eps: f64, device: &Device) -> Result<CorrelationLoss> {
        let m = circular_mask(d, ratio);
        let n_in = m.iter().map(|&v| v as f64).sum::<f64>();
        if n_in == 0.0 {
            return Err(NnError::msg(format!("mask of radius {ratio}·D/2 holds no pixel")));
        }
        Ok(CorrelationLoss {
            mask: Tensor::from_vec(m.clone(), (d, d), device)?,
            mask_host: std::sync::Arc::new(m),
            n_in,
            eps,
        })
    }

    /// cryoSTAR's settings: radius 0.9375·D/2, ε = 1e-8.
    pub fn cryostar(d: usize, device: &Device) -> Result<CorrelationLoss> {
        CorrelationLoss::new(d, MASK_RADIUS_RATIO, 1e-8, device)
    }

    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// Pixels inside the mask.
    pub fn n_in(&self) -> f64 {
        self.n_in
    }

    /// Masked population std over the mask pixels of [B, D²] masked images → \[B\].
    fn masked_std(&self, xm: &Tensor) -> Result<Tensor> {
        let mean = (xm.sum(1)? / self.n_in)?;
        let ex2 = (xm.sqr()?.sum(1)? / self.n_in)?;
        let var = (ex2 - mean.sqr()?)?.relu()?;
        Ok((var + 1e-20)?.sqrt()?)
    }

    /// Per-image correlation terms `Σ m·pred·gt / ((std+ε)(std+ε)) / N_in` → \[B\].
    /// On the CPU in f32 a fused custom op ([`CorrelationOp`], one pass forward and one
    /// backward; no gradient w.r.t. the data); otherwise composed candle ops.
    pub fn per_image(&self, pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
        pred.dims3()?;
        if gt.dims() != pred.dims() {
            return Err(NnError::msg(format!(
                "prediction {:?} and data {:?} differ in shape",
                pred.dims(),
                gt.dims()
            )));
        }
        if pred.device().is_cpu() && pred.dtype() == DType::F32 && gt.dtype() == DType::F32 {
            let op = CorrelationOp { mask: self.mask_host.clone(), n_in: self.n_in, eps: self.eps };
            return Ok(pred.contiguous()?.apply_op2(&gt.contiguous()?.detach(), op)?);
        }
        self.per_image_composed(pred, gt)
    }

    /// [`Self::per_image`] by composed candle ops (any device and dtype; differentiable in both).
    pub fn per_image_composed(&self, pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
        let (b, _, _) = pred.dims3()?;
        let mask = self.mask.to_dtype(pred.dtype())?;
        let pm = pred.broadcast_mul(&mask)?.reshape((b, ()))?;
        let gm = gt.broadcast_mul(&mask)?.reshape((b, ()))?;
        let num = (&pm * &gm)?.sum(1)?;
        let den = ((self.masked_std(&gm)? + self.eps)? * (self.masked_std(&pm)? + self.eps)?)?;
        Ok(((num / den)? / self.n_in)?)
    }

    /// The loss (a scalar): minus the batch mean of [`Self::per_image`].
    pub fn loss(&self, pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
        Ok(self.per_image(pred, gt)?.mean_all()?.neg()?)
    }
}

/// Fused correlation terms: (pred [B, D, D], gt [B, D, D]) → \[B\], f32 on the CPU,
/// sums in f64. With S = Σ m·p·g, μ_p = Σ m·p/N, σ_p = sqrt(max(Σ m·p²/N − μ_p², 0) + δ):
/// `c = S/((σ_g + ε)(σ_p + ε))/N` and
/// `∂c/∂p_i = m_i·[g_i − S·(p_i − μ_p)/(N·σ_p·(σ_p + ε))·[var_p > 0]] / ((σ_g + ε)(σ_p + ε)·N)`.
pub struct CorrelationOp {
    mask: std::sync::Arc<Vec<f32>>,
    n_in: f64,
    eps: f64,
}

const STD_DELTA: f64 = 1e-20;

struct CorrStats {
    s: f64,
    mean_p: f64,
    var_p: f64,
    sd_p: f64,
    sd_g: f64,
}

impl CorrelationOp {
    fn stats(&self, p: &[f32], g: &[f32]) -> CorrStats {
        let (mut s, mut sp, mut sp2, mut sg, mut sg2) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for ((&pi, &gi), &mi) in p.iter().zip(g).zip(self.mask.iter()) {
            if mi != 0.0 {
                let (pi, gi, mi) = (pi as f64, gi as f64, mi as f64);
                s += mi * pi * gi;
                sp += mi * pi;
                sp2 += mi * pi * pi;
                sg += mi * gi;
                sg2 += mi * gi * gi;
            }
        }
        let n = self.n_in;
        let (mean_p, mean_g) = (sp / n, sg / n);
        let var_p = sp2 / n - mean_p * mean_p;
        let var_g = sg2 / n - mean_g * mean_g;
        CorrStats {
            s,
            mean_p,
            var_p,
            sd_p: (var_p.max(0.0) + STD_DELTA).sqrt(),
            sd_g: (var_g.max(0.0) + STD_DELTA).sqrt(),
        }
    }
}

impl candle_core::CustomOp2 for CorrelationOp {
    fn name(&self) -> &'static str {
        "cryoforge-correlation"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let get = |s: &'_ CpuStorage, l: &candle_core::Layout| -> candle_core::Result<Vec<f32>> {
            let v = match s {
                CpuStorage::F32(v) => v,
                _ => candle_core::bail!("correlation: f32 expected"),
            };
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("correlation: contiguous input expected".into()))?;
            Ok(v[a..b].to_vec())
        };
        let (p, g) = (get(s1, l1)?, get(s2, l2)?);
        let (b, _, _) = l1.shape().dims3()?;
        let n = self.mask.len();
        let out: Vec<f32> = (0..b)
            .map(|i| {
                let st = self.stats(&p[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
                (st.s / ((st.sd_g + self.eps) * (st.sd_p + self.eps)) / self.n_in) as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), candle_core::Shape::from(b)))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, d1, d2) = arg1.dims3()?;
        let p = arg1.flatten_all()?.to_vec1::<f32>()?;
        let g = arg2.flatten_all()?.to_vec1::<f32>()?;
        let go = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let n = self.mask.len();
        let mut gp = vec![0f32; b * n];
        for i in 0..b {
            let (pi, gi) = (&p[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
            let st = self.stats(pi, gi);
            let den = (st.sd_g + self.eps) * (st.sd_p + self.eps);
            let scale = go[i] as f64 / (den * self.n_in);
            let k = if st.var_p > 0.0 { st.s / (self.n_in * st.sd_p * (st.sd_p + self.eps)) } else { 0.0 };
            for (j, o) in gp[i * n..(i + 1) * n].iter_mut().enumerate() {
                let m = self.mask[j] as f64;
                if m != 0.0 {
                    *o = (scale * m * (gi[j] as f64 - k * (pi[j] as f64 - st.mean_p))) as f32;
                }
            }
        }
        Ok((Some(Tensor::from_vec(gp, (b, d1, d2), arg1.device())?), None))
    }
}

/// Unmasked correlation computed in Fourier space (Parseval) from the prediction's band
/// spectrum G = T⊙F ([B, K_h, 2K], `Renderer::apply_transfer(Renderer::spectrum(..))`) and the
/// data's band spectrum X ([`crate::render::BandData`], transformed once outside the graph):
///
/// ```text
/// Σ_p pred·gt = (1/D²)·Σ_k Re(G(k)·conj(X(k)))   (G is zero outside the band)
/// Σ_p pred    = G(0),   Σ_p pred² = (1/D²)·Σ_k |G(k)|²
/// L = −mean_b[Σ_p pred·gt / ((std(gt) + ε)(std(pred) + ε))] / D²
/// ```
///
/// with population std over all D² pixels: the correlation loss of METHODS.md §0 without
/// the circular mask (equal to [`CorrelationLoss`] with a mask covering the whole box),
/// at a cost of O(K²) per image instead of synthesising D² pixels. Exact when the band
/// does not reach D/2 (then the band spectrum is Hermitian and the image real).
#[derive(Debug, Clone, Copy)]
pub struct FourierCorrelationLoss {
    pub d: usize,
    pub eps: f64,
}

impl FourierCorrelationLoss {
    pub fn new(d: usize, eps: f64) -> FourierCorrelationLoss {
        FourierCorrelationLoss { d, eps }
    }

    /// Per-image terms \[B\] (see the type's docs).
    pub fn per_image(&self, pred_spec: &Tensor, data: &crate::render::BandData) -> Result<Tensor> {
        let (b, nky, two_nk) = pred_spec.dims3()?;
        if data.spec.dims() != pred_spec.dims() {
            return Err(NnError::msg(format!(
                "prediction spectrum {:?} and data spectrum {:?} differ",
                pred_spec.dims(),
                data.spec.dims()
            )));
        }
        let n = (self.d * self.d) as f64;
        // Half-band rows stand for themselves and their Friedel partners: weight each row.
        let w = data.row_w.unsqueeze(0)?.unsqueeze(2)?; // [1, K_h, 1]
        let flat_w = pred_spec.broadcast_mul(&w)?.reshape((b, ()))?;
        let flat = pred_spec.reshape((b, ()))?;
        let s_pg = ((&flat_w * data.spec.reshape((b, ()))?)?.sum(1)? / n)?;
        let s_pp = ((&flat_w * &flat)?.sum(1)? / n)?;
        // k_x = 0 sits at band column k_max = ⌊K/2⌋; k_y = 0 is the last half-band row.
        let dc = pred_spec.narrow(1, nky - 1, 1)?.narrow(2, two_nk / 4, 1)?.reshape(b)?;
        let mean = (dc / n)?;
        let var = ((s_pp / n)? - mean.sqr()?)?.relu()?;
        let sd_p = (var + 1e-20)?.sqrt()?;
        let den = ((&data.std + self.eps)? * (sd_p + self.eps)?)?;
        Ok(((s_pg / den)? / n)?)
    }

    /// The loss (a scalar).
    pub fn loss(&self, pred_spec: &Tensor, data: &crate::render::BandData) -> Result<Tensor> {
        Ok(self.per_image(pred_spec, data)?.mean_all()?.neg()?)
    }
}

/// Mean squared error over all elements, or over the pixels where a D×D `mask` is 1.
pub fn mse_loss(pred: &Tensor, gt: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let diff2 = (pred - gt)?.sqr()?;
    match mask {
        None => Ok(diff2.mean_all()?),
        Some(m) => {
            let n_in = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let b = pred.elem_count() / m.elem_count();
            if n_in == 0.0 {
                return Ok(Tensor::zeros((), pred.dtype(), pred.device())?);
            }
            Ok((diff2.broadcast_mul(m)?.sum_all()? / (n_in * b as f64))?)
        }
    }
}

/// Element-wise KL(N(μ, exp(logvar)) ‖ N(0, 1)) = ½(μ² + exp(logvar) − 1 − logvar), [B, L].
pub fn gaussian_kl(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    Ok((((mu.sqr()? + logvar.exp()?)? - 1.0)? - logvar)?.affine(0.5, 0.0)?)
}

/// Element-wise KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) with standard deviations (cryoSPHERE's
/// encoder outputs σ = ELU + 1; its segmentation posteriors have Gaussian priors):
/// `log(σ_p/σ_q) + (σ_q² + (μ_q − μ_p)²)/(2σ_p²) − ½`. Tensors broadcast.
pub fn gaussian_kl_std(mu_q: &Tensor, std_q: &Tensor, mu_p: &Tensor, std_p: &Tensor) -> Result<Tensor> {
    let var_p = std_p.sqr()?;
    let a = std_p.log()?.broadcast_sub(&std_q.log()?)?;
    let b = std_q.sqr()?.broadcast_add(&mu_q.broadcast_sub(mu_p)?.sqr()?)?.broadcast_div(&(var_p * 2.0)?)?;
    Ok((a.broadcast_add(&b)? - 0.5)?)
}

/// Batch mean of the KL summed over latent dimensions (a scalar).
pub fn kl_loss(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    Ok(gaussian_kl(mu, logvar)?.sum(D::Minus1)?.mean_all()?)
}

/// KL with free bits: `Σ_d max(mean_b KL_{b,d}, λ)`, λ = `free_bits` nats per dimension.
pub fn kl_free_bits(mu: &Tensor, logvar: &Tensor, free_bits: f64) -> Result<Tensor> {
    let per_dim = gaussian_kl(mu, logvar)?.mean(0)?; // [L]
    Ok(((per_dim - free_bits)?.relu()? + free_bits)?.sum_all()?)
}

/// A weight (β) schedule as a function of the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant(f64),
    /// From `start` to `end` linearly over `steps` steps, then `end`.
    Linear {
        start: f64,
        end: f64,
        steps: u64,
    },
    /// Cyclical annealing (Fu et al. 2019; cryoSPHERE): `total` steps split into `cycles`
    /// cycles; within a cycle at fraction τ ∈ [0, 1) the weight is `max·min(τ/ratio, 1)`.
    Cyclical {
        max: f64,
        total: u64,
        cycles: u64,
        ratio: f64,
    },
    /// Cosine annealing from `start` to `end` over `steps` steps, then `end`:
    /// `end + (start − end)·½(1 + cos(π·step/steps))`.
    Cosine {
        start: f64,
        end: f64,
        steps: u64,
    },
}

impl Schedule {
    pub fn value(&self, step: u64) -> f64 {
        match *self {
            Schedule::Constant(v) => v,
            Schedule::Linear { start, end, steps } => {
                if steps == 0 || step >= steps {
                    end
                } else {
                    start + (end - start) * step as f64 / steps as f64
                }
            }
            Schedule::Cyclical { max, total, cycles, ratio } => {
                let period = (total as f64 / cycles.max(1) as f64).max(1.0);
                let tau = (step as f64 % period) / period;
                if ratio <= 0.0 {
                    max
                } else {
                    max * (tau / ratio).min(1.0)
                }
            }
            Schedule::Cosine { start, end, steps } => {
                if steps == 0 || step >= steps {
                    end
                } else {
                    let t = step as f64 / steps as f64;
                    end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }
}

/// A list of residue pairs (i, j), as index tensors for `index_select`.
#[derive(Debug, Clone)]
pub struct PairList {
    pub i: Vec<u32>,
    pub j: Vec<u32>,
    ti: Tensor,
    tj: Tensor,
}

impl PairList {
    pub fn new(pairs: &[(u32, u32)], device: &Device) -> Result<PairList> {
        let i: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let j: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        Ok(PairList {
            ti: Tensor::from_vec(i.clone(), i.len(), device)?,
            tj: Tensor::from_vec(j.clone(), j.len(), device)?,
            i,
            j,
        })
    }

    pub fn len(&self) -> usize {
        self.i.len()
    }

    pub fn is_empty(&self) -> bool {
        self.i.is_empty()
    }

    /// Distances [B, P] between the pairs' residues in `coords` [B, R, 3].
    pub fn distances(&self, coords: &Tensor) -> Result<Tensor> {
        let (b, _, _) = coords.dims3()?;
        if self.is_empty() {
            return Ok(Tensor::zeros((b, 0), coords.dtype(), coords.device())?);
        }
        let xi = coords.index_select(&self.ti, 1)?;
        let xj = coords.index_select(&self.tj, 1)?;
        // The tiny offset keeps the gradient of √ finite for coincident residues.
        Ok(((xi - xj)?.sqr()?.sum(2)? + 1e-12)?.sqrt()?)
    }
}

/// Continuity: `mean_{b,p} (d_p − d⁰_p)²` over `pairs` (consecutive same-chain residues),
/// `d0` the reference distances \[P\]. 0 for an empty list.
pub fn continuity_loss(coords: &Tensor, pairs: &PairList, d0: &Tensor) -> Result<Tensor> {
    if pairs.is_empty() {
        return Ok(Tensor::zeros((), coords.dtype(), coords.device())?);
    }
    let d = pairs.distances(coords)?;
    Ok(d.broadcast_sub(&d0.unsqueeze(0)?)?.sqr()?.mean_all()?)
}

/// Clash: `Σ relu(cutoff − d)² / #violations` over `pairs` (reference pairs 4–10 Å minus
/// consecutive ones); exactly 0 (not NaN) when nothing violates.
pub fn clash_loss(coords: &Tensor, pairs: &PairList, cutoff_a: f64) -> Result<Tensor> {
    if pairs.is_empty() {
        return Ok(Tensor::zeros((), coords.dtype(), coords.device())?);
    }
    let d = pairs.distances(coords)?;
    let v = d.affine(-1.0, cutoff_a)?.relu()?;
    let count = v.gt(0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok((v.sqr()?.sum_all()? / count.max(1.0))?)
}

/// Elastic network: `Σ k_p (d_p − d⁰_p)² / (B·Σ k_p)` with an optional keep mask k \[P\]
/// (1 keep, 0 drop); 0 when no edge is kept.
pub fn elastic_loss(coords: &Tensor, pairs: &PairList, d0: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
    if pairs.is_empty() {
        return Ok(Tensor::zeros((), coords.dtype(), coords.device())?);
    }
    let (b, _, _) = coords.dims3()?;
    let d = pairs.distances(coords)?;
    let e = d.broadcast_sub(&d0.unsqueeze(0)?)?.sqr()?;
    let (e, n) = match keep {
        None => (e, pairs.len() as f64),
        Some(k) => {
            let n = k.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            (e.broadcast_mul(&k.unsqueeze(0)?)?, n)
        }
    };
    if n == 0.0 {
        return Ok(Tensor::zeros((), coords.dtype(), coords.device())?);
    }
    Ok((e.sum_all()? / (n * b as f64))?)
}

/// Adaptive relaxation (cryoSTAR): keep the edges whose distance variance over the batch
/// (`dists` [B, P], population variance) is at most the `keep_ratio` quantile of the
/// variances (nearest rank). Returns a \[P\] mask of 0/1 (f32), with no gradient.
pub fn edge_keep_mask(dists: &Tensor, keep_ratio: f64) -> Result<Tensor> {
    let (b, p) = dists.dims2()?;
    let d: Vec<Vec<f32>> = dists.detach().to_dtype(DType::F32)?.to_vec2()?;
    let mut var = vec![0f64; p];
    for (e, v) in var.iter_mut().enumerate() {
        let mean = d.iter().map(|row| row[e] as f64).sum::<f64>() / b as f64;
        *v = d.iter().map(|row| (row[e] as f64 - mean).powi(2)).sum::<f64>() / b as f64;
    }
    Ok(Tensor::from_vec(keep_from_variances(&var, keep_ratio), p, dists.device())?)
}

/// 1 for the edges whose variance is at most the `keep_ratio` quantile (nearest rank).
fn keep_from_variances(var: &[f64], keep_ratio: f64) -> Vec<f32> {
    let p = var.len();
    if p == 0 {
        return Vec::new();
    }
    let mut sorted = var.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n_keep = ((keep_ratio.clamp(0.0, 1.0) * p as f64).ceil() as usize).clamp(1, p);
    let thr = sorted[n_keep - 1];
    var.iter().map(|&v| if v <= thr { 1.0 } else { 0.0 }).collect()
}

// --- Data-parallel forms (crate::parallel) -------------------------------------------------
//
// Each returns this rank's contribution to the loss of the global batch: summed over ranks
// it is the single-process loss of the whole batch (and so is its gradient). With one rank
// they are the functions above.

/// [`kl_free_bits`] of the global batch, this shard's part: the floor of latent dimension j
/// is judged on the global batch mean of its KL (all-reduced); `share` = shard / global batch.
pub fn kl_free_bits_dp(
    mu: &Tensor,
    logvar: &Tensor,
    free_bits: f64,
    share: f64,
    dp: &crate::parallel::DataParallel,
) -> Result<Tensor> {
    if !dp.is_distributed() {
        return kl_free_bits(mu, logvar, free_bits);
    }
    let (b, l) = mu.dims2()?;
    let per_dim = gaussian_kl(mu, logvar)?.mean(0)?; // [L], local means
    let mut sums: Vec<f64> = per_dim.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    sums.iter_mut().for_each(|v| *v *= b as f64);
    sums.push(b as f64);
    dp.all_reduce_f64(&mut sums);
    let n = sums[l].max(1.0);
    let active: Vec<f32> = sums[..l].iter().map(|s| if s / n > free_bits { 1.0 } else { 0.0 }).collect();
    let floor = active.iter().filter(|&&a| a == 0.0).count() as f64 * free_bits;
    let active = Tensor::from_vec(active, l, mu.device())?.to_dtype(per_dim.dtype())?;
    Ok(((per_dim * active)?.sum_all()? + floor)?.affine(share, 0.0)?)
}

/// [`clash_loss`] of the global batch, this shard's part: its squared violations over the
/// number of violations in the whole batch (all-reduced).
pub fn clash_loss_dp(
    coords: &Tensor,
    pairs: &PairList,
    cutoff_a: f64,
    dp: &crate::parallel::DataParallel,
) -> Result<Tensor> {
    if !dp.is_distributed() {
        return clash_loss(coords, pairs, cutoff_a);
    }
    if pairs.is_empty() {
        return Ok(Tensor::zeros((), coords.dtype(), coords.device())?);
    }
    let d = pairs.distances(coords)?;
    let v = d.affine(-1.0, cutoff_a)?.relu()?;
    let mut count = [v.gt(0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?];
    dp.all_reduce_f64(&mut count);
    Ok((v.sqr()?.sum_all()? / count[0].max(1.0))?)
}

/// [`edge_keep_mask`] from the per-edge distance variance over the global batch (sums of d
/// and d² all-reduced).
pub fn edge_keep_mask_dp(
    dists: &Tensor,
    keep_ratio: f64,
    dp: &crate::parallel::DataParallel,
) -> Result<Tensor> {
    if !dp.is_distributed() {
        return edge_keep_mask(dists, keep_ratio);
    }
    let (b, p) = dists.dims2()?;
    let d: Vec<f32> = dists.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut sums = vec![0f64; 2 * p + 1];
    for row in d.chunks_exact(p.max(1)) {
        for (e, &x) in row.iter().enumerate() {
            sums[e] += x as f64;
            sums[p + e] += (x as f64) * (x as f64);
        }
    }
    sums[2 * p] = b as f64;
    dp.all_reduce_f64(&mut sums);
    let n = sums[2 * p].max(1.0);
    let var: Vec<f64> = (0..p).map(|e| (sums[p + e] / n - (sums[e] / n).powi(2)).max(0.0)).collect();
    Ok(Tensor::from_vec(keep_from_variances(&var, keep_ratio), p, dists.device())?)
}
