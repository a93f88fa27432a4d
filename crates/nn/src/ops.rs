//! Differentiable normalisation ops built from elementary candle ops (candle_nn's fused
//! `LayerNorm`/`softmax_last_dim` kernels pass no gradient).
//!
//! ```text
//! layer_norm(x) = (x − μ)/sqrt(σ² + ε)·γ + β,  μ, σ² over the last dimension (population)
//! softmax(x)_i  = exp(x_i − m)/Σ_j exp(x_j − m),  m = max_j x_j (detached: the result
//!                 does not depend on m)
//! log_softmax(x)_i = x_i − m − log Σ_j exp(x_j − m)
//! gelu(x)       = x·Φ(x) = ½x(1 + erf(x/√2)),  gelu'(x) = Φ(x) + x·φ(x)
//! ```
//!
//! [`gelu_erf`] is one fused, rayon-parallel CPU op with a fused backward: candle's own
//! `gelu_erf` runs single-threaded and builds its gradient from eight element-wise ops
//! (≈ 40 % of the Phase II volume step, BENCHMARKS.md §3).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// LayerNorm over the last dimension with optional affine parameters γ, β (\[C\]).
pub fn layer_norm(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(g) = gamma {
        y = y.broadcast_mul(g)?;
    }
    if let Some(b) = beta {
        y = y.broadcast_add(b)?;
    }
    Ok(y)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let xs = x.broadcast_sub(&m)?;
    let lse = xs.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(xs.broadcast_sub(&lse)?)
}

/// A LayerNorm module with learnable γ (init 1) and β (init 0), differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// γ, β from a `VarBuilder` under the names `weight` and `bias` (PyTorch's names).
    pub fn new(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<LayerNorm> {
        let gamma = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let beta = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(LayerNorm { gamma, beta, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, Some(&self.gamma), Some(&self.beta), self.eps)
    }
}

/// Elements per rayon task of the element-wise ops.
const CHUNK: usize = 1 << 14;

/// The f32 values of a contiguous CPU tensor (custom-op kernels), or an error naming `what`.
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{what}: f32 input expected"),
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: contiguous input expected")))?;
    Ok(&v[a..b])
}

/// A buffer of `n` f32 for `fill`, which must write every element (each chunk of
/// `chunk` values is handed to it with its index, in parallel). Avoids zero-filling
/// buffers of tens of MB that are overwritten at once (the phasor operands).
pub(crate) fn filled_f32(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: MaybeUninit<f32> needs no initialisation; the capacity is n.
    unsafe { v.set_len(n) };
    v.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `fill` initialised every element (callers' contract, checked by the tests
    // that compare these operands with direct evaluation); MaybeUninit<f32> and f32 have
    // the same layout, so the allocation is reused as Vec<f32> with the same length and
    // capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity()) }
}

/// `f(x)` of every element, in parallel chunks, into a fresh buffer.
fn par_map_f32(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    filled_f32(x.len(), CHUNK, |i, o| {
        for (o, &v) in o.iter_mut().zip(&x[i * CHUNK..]) {
            o.write(f(v));
        }
    })
}

/// `f(x, y)` of every pair of elements (equal lengths), in parallel chunks.
fn par_zip_map_f32(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    debug_assert_eq!(x.len(), y.len());
    filled_f32(x.len(), CHUNK, |i, o| {
        for ((o, &a), &b) in o.iter_mut().zip(&x[i * CHUNK..]).zip(&y[i * CHUNK..]) {
            o.write(f(a, b));
        }
    })
}

#[inline]
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline]
fn gelu_grad_f32(x: f32) -> f32 {
    // Φ(x) + x·φ(x), φ(x) = e^{−x²/2}/√(2π).
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp_fast(-0.5 * x * x)
}

/// eˣ in f32 without a libm call, so that loops over slices vectorise: x = n·ln 2 + r with
/// n = round(x·log₂e) (by the 1.5·2²³ rounding trick) and |r| ≤ ½ ln 2 (ln 2 split in a
/// high part exact in f32 and a low part, Cody & Waite), eʳ by its degree-7 Taylor
/// polynomial (truncation < 2e-9 relative), 2ⁿ by building the exponent bits. Relative error
/// ≤ 3e-7 for x in [−87, 88]; x is clamped to that range (e⁻⁸⁷ ≈ 1.6e-38, e⁸⁸ ≈ 1.7e38).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0.693145751953125, exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf in f32 without a libm call (vectorises): Abramowitz & Stegun 7.1.26,
/// erf(x) = 1 − (a₁t + … + a₅t⁵)·e^(−x²), t = 1/(1 + p·|x|), for |x| ≥ ½ (the series
/// below), odd in x; absolute error
/// ≤ 1.5e-7 in exact arithmetic, ≤ 6e-7 in f32 (`tests/ops.rs`).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let tail = 1.0 - poly * exp_fast(-ax * ax);
    // Near 0 the Maclaurin series (to x¹³; truncation < 1e-9 below 0.5) keeps erf(0) = 0
    // and the relative accuracy; both branches are computed, so the choice is a blend.
    let x2 = ax * ax;
    const C: [f32; 7] = [1.0, -1.0 / 3.0, 1.0 / 10.0, -1.0 / 42.0, 1.0 / 216.0, -1.0 / 1320.0, 1.0 / 9360.0];
    let series = std::f32::consts::FRAC_2_SQRT_PI
        * ax
        * (C[0] + x2 * (C[1] + x2 * (C[2] + x2 * (C[3] + x2 * (C[4] + x2 * (C[5] + x2 * C[6]))))));
    let y = if ax < 0.5 { series } else { tail };
    y.copysign(x)
}

/// Fused GELU (erf form), forward.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "cryoforge-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        Ok((CpuStorage::F32(par_map_f32(x, gelu_f32)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?))
    }
}

/// Fused GELU backward: (x, g) → g·gelu′(x).
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "cryoforge-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "gelu backward")?;
        let g = f32_slice(s2, l2, "gelu backward")?;
        if x.len() != g.len() {
            candle_core::bail!("gelu backward: {} inputs but {} gradients", x.len(), g.len());
        }
        Ok((CpuStorage::F32(par_zip_map_f32(x, g, |v, gv| gv * gelu_grad_f32(v))), l1.shape().clone()))
    }
}

/// GELU with the exact (erf) form, as PyTorch's `nn.GELU()`. On the CPU in f32 a fused
/// parallel op with a fused backward; elsewhere candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(GeluErf)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// softmax of one row in place, with the vectorising [`exp_fast`] and eight partial sums
/// (so that the reduction vectorises too).
pub fn softmax_in_place(row: &mut [f32]) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    row.iter_mut().for_each(|x| *x = exp_fast(*x - m));
    let mut acc = [0f32; 8];
    let mut it = row.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let inv = 1.0 / (acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>());
    row.iter_mut().for_each(|x| *x *= inv);
}

/// softmax(scale·x) over the last dimension for inference (no gradient): on the CPU in f32
/// one parallel pass per row with the vectorising [`exp_fast`]; elsewhere candle's.
pub fn softmax_scaled_eval(x: &Tensor, scale: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 1 {
        Ok(x.contiguous()?.apply_op1_no_bwd(&SoftmaxEval { scale: scale as f32 })?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.affine(scale, 0.0)?)?)
    }
}

struct SoftmaxEval {
    scale: f32,
}

impl CustomOp1 for SoftmaxEval {
    fn name(&self) -> &'static str {
        "cryoforge-softmax-eval"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        if n > 0 {
            let scale = self.scale;
            out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, xr)| {
                o.iter_mut().zip(xr).for_each(|(o, &v)| *o = v * scale);
                softmax_in_place(o);
            });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}
