//! Multi-head self-attention for inference on the CPU in one pass: softmax(q kᵀ/√d_h) v for
//! every (image, head) pair in parallel, read straight from the qkv projection [B·N, 3C]
//! (columns q | k | v, heads contiguous within each) and written straight into the
//! head-concatenated layout [B·N, C] the output projection takes, with the gemm kernels
//! candle itself uses called on strided views. This replaces candle's path (three strided
//! copies, two batched matrix products over 8–100 small matrices, a separate softmax and a
//! transposing copy), which ran largely on one thread. Training keeps candle's
//! differentiable ops.

use crate::{IefError, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every (image, head) task writes only its own rows × head columns of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// (A method, so that closures capture the whole Send + Sync wrapper.)
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Checks the qkv layout; returns C.
fn check_qkv(rows: usize, c3: usize, b: usize, n: usize, heads: usize) -> std::result::Result<usize, String> {
    if rows != b * n || !c3.is_multiple_of(3) || heads == 0 || !(c3 / 3).is_multiple_of(heads) {
        return Err(format!(
            "attention: qkv is {rows}×{c3}, expected {}×3C with C divisible by {heads}",
            b * n
        ));
    }
    Ok(c3 / 3)
}

/// Row-major gemm on raw views: dst (m×n, row stride `drs`) = α·dst + β·lhs·rhs with
/// (column stride, row stride) pairs for lhs (m×k) and rhs (k×n).
///
/// # Safety
/// Every view must lie inside its allocation, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    drs: usize,
    lhs: *const f32,
    (lcs, lrs): (usize, usize),
    rhs: *const f32,
    (rcs, rrs): (usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        drs as isize,
        false,
        lhs,
        lcs as isize,
        lrs as isize,
        rhs,
        rcs as isize,
        rrs as isize,
        0.0f32,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// The attention of `src` (qkv, row-major [B·N, 3C]) into `out` [B·N, C].
fn forward_into(src: &[f32], out: &mut [f32], b: usize, n: usize, heads: usize, c: usize, scale: f32) {
    let c3 = 3 * c;
    let dh = c / heads;
    let op = OutPtr(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each_init(
        || vec![0f32; n * n],
        |s, task| {
            let (img, h) = (task / heads, task % heads);
            let base = img * n * c3;
            let q = src[base + h * dh..].as_ptr();
            let k = src[base + c + h * dh..].as_ptr();
            let v = src[base + 2 * c + h * dh..].as_ptr();
            // SAFETY: the views stay inside `src` (row stride 3C, n rows, d_h columns from
            // the head's offset) and `s` (n × n); O is this task's rows × head columns of
            // `out` only (see OutPtr).
            unsafe {
                // S = scale · Q Kᵀ: Q [n × d_h] (row stride 3C), Kᵀ [d_h × n] (column stride 3C).
                mm(n, n, dh, s.as_mut_ptr(), n, q, (1, c3), k, (c3, 1), scale);
                s.chunks_exact_mut(n).for_each(cryoforge_nn::ops::softmax_in_place);
                mm(n, dh, n, op.at(img * n * c + h * dh), c, s.as_ptr(), (1, n), v, (1, c3), 1.0);
            }
        },
    );
}

/// Gradient of the attention with respect to qkv, from the output's gradient `g` [B·N, C]:
/// per (image, head), with P recomputed,
/// dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = s·dS K, dK = s·dSᵀ Q.
fn backward_into(
    src: &[f32],
    g: &[f32],
    dqkv: &mut [f32],
    b: usize,
    n: usize,
    heads: usize,
    c: usize,
    scale: f32,
) {
    let c3 = 3 * c;
    let dh = c / heads;
    let op = OutPtr(dqkv.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each_init(
        || (vec![0f32; n * n], vec![0f32; n * n]),
        |(p, dp), task| {
            let (img, h) = (task / heads, task % heads);
            let base = img * n * c3;
            let q = src[base + h * dh..].as_ptr();
            let k = src[base + c + h * dh..].as_ptr();
            let v = src[base + 2 * c + h * dh..].as_ptr();
            let go = g[img * n * c + h * dh..].as_ptr();
            // SAFETY: as in `forward_into`; this task writes only its head's q, k and v
            // columns of its image's rows of `dqkv`.
            unsafe {
                mm(n, n, dh, p.as_mut_ptr(), n, q, (1, c3), k, (c3, 1), scale);
                p.chunks_exact_mut(n).for_each(cryoforge_nn::ops::softmax_in_place);
                // dV = Pᵀ dO.
                mm(n, dh, n, op.at(base + 2 * c + h * dh), c3, p.as_ptr(), (n, 1), go, (1, c), 1.0);
                // dP = dO Vᵀ.
                mm(n, n, dh, dp.as_mut_ptr(), n, go, (1, c), v, (c3, 1), 1.0);
            }
            for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
                let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                dr.iter_mut().zip(pr).for_each(|(d, &pv)| *d = pv * (*d - dot));
            }
            unsafe {
                // dQ = s·dS K, dK = s·dSᵀ Q.
                mm(n, dh, n, op.at(base + h * dh), c3, dp.as_ptr(), (1, n), k, (1, c3), scale);
                mm(n, dh, n, op.at(base + c + h * dh), c3, dp.as_ptr(), (n, 1), q, (1, c3), scale);
            }
        },
    );
}

/// Attention output [B·N, C] from `qkv` [B·N, 3C] (f32, CPU), `heads` heads, `b` images of
/// `n` tokens, scores scaled by `scale`.
pub fn attention_eval(qkv: &Tensor, b: usize, n: usize, heads: usize, scale: f64) -> Result<Tensor> {
    let (rows, c3) = qkv.dims2()?;
    if qkv.dtype() != DType::F32 {
        return Err(IefError::msg(format!("attention: qkv is {:?}, expected f32", qkv.dtype())));
    }
    let c = check_qkv(rows, c3, b, n, heads).map_err(IefError::Msg)?;
    let src: Vec<f32> = qkv.contiguous()?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * n * c];
    forward_into(&src, &mut out, b, n, heads, c, scale as f32);
    Ok(Tensor::from_vec(out, (b * n, c), qkv.device())?)
}

/// The same attention as a differentiable op (fused forward and backward, parallel over
/// image × head; the attention matrices are recomputed in the backward pass instead of
/// stored), for training on the CPU.
pub fn attention_train(qkv: &Tensor, b: usize, n: usize, heads: usize, scale: f64) -> Result<Tensor> {
    let (rows, c3) = qkv.dims2()?;
    check_qkv(rows, c3, b, n, heads).map_err(IefError::Msg)?;
    Ok(qkv.contiguous()?.apply_op1(AttnOp { b, n, heads, scale: scale as f32 })?)
}

#[derive(Clone, Copy)]
struct AttnOp {
    b: usize,
    n: usize,
    heads: usize,
    scale: f32,
}

impl CustomOp1 for AttnOp {
    fn name(&self) -> &'static str {
        "cryoforge-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, c3) = l.shape().dims2()?;
        let c = check_qkv(rows, c3, self.b, self.n, self.heads).map_err(candle_core::Error::Msg)?;
        let src = cryoforge_nn::ops::f32_slice(s, l, "attention")?;
        let mut out = vec![0f32; rows * c];
        forward_into(src, &mut out, self.b, self.n, self.heads, c, self.scale);
        Ok((CpuStorage::F32(out), Shape::from((rows, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &AttnGrad(*self))?))
    }
}

struct AttnGrad(AttnOp);

impl CustomOp2 for AttnGrad {
    fn name(&self) -> &'static str {
        "cryoforge-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let o = self.0;
        let (rows, c3) = l1.shape().dims2()?;
        let c = check_qkv(rows, c3, o.b, o.n, o.heads).map_err(candle_core::Error::Msg)?;
        if l2.shape().dims() != [rows, c] {
            candle_core::bail!("attention backward: gradient {:?}, expected [{rows}, {c}]", l2.shape());
        }
        let mut d = vec![0f32; rows * c3];
        backward_into(
            cryoforge_nn::ops::f32_slice(s1, l1, "attention backward")?,
            cryoforge_nn::ops::f32_slice(s2, l2, "attention backward")?,
            &mut d,
            o.b,
            o.n,
            o.heads,
            c,
            o.scale,
        );
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// softmax(q kᵀ·scale) v by candle's ops, per head, concatenated.
    fn reference(qkv: &Tensor, b: usize, n: usize, heads: usize, scale: f64) -> Tensor {
        let c = qkv.dims2().unwrap().1 / 3;
        let dh = c / heads;
        let t = qkv.reshape((b, n, 3, heads, dh)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
        let (q, k, v) = (t.get(0).unwrap(), t.get(1).unwrap(), t.get(2).unwrap());
        let s =
            (q.contiguous().unwrap().matmul(&k.contiguous().unwrap().t().unwrap()).unwrap() * scale).unwrap();
        let p = cryoforge_nn::ops::softmax(&s).unwrap();
        p.matmul(&v.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((b * n, c)).unwrap()
    }

    #[test]
    fn fused_attention_matches_candle_ops() {
        for (b, n, heads, dh) in [(2usize, 17usize, 3usize, 8usize), (1, 5, 1, 4), (3, 50, 4, 16)] {
            let c = heads * dh;
            let qkv = Tensor::randn(0f32, 1.5, (b * n, 3 * c), &Device::Cpu).unwrap();
            let scale = 1.0 / (dh as f64).sqrt();
            let want = reference(&qkv, b, n, heads, scale);
            let got = attention_eval(&qkv, b, n, heads, scale).unwrap();
            assert_eq!(got.dims(), &[b * n, c]);
            let d: f32 = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(d < 1e-5, "b={b} n={n} heads={heads}: max |Δ| {d}");
        }
        let bad = Tensor::zeros((10, 9), DType::F32, &Device::Cpu).unwrap();
        assert!(attention_eval(&bad, 2, 5, 2, 1.0).is_err());
    }

    #[test]
    fn fused_attention_gradient_matches_candle_ops() {
        for (b, n, heads, dh) in [(2usize, 9usize, 3usize, 4usize), (1, 17, 2, 8)] {
            let c = heads * dh;
            let qkv = candle_core::Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (b * n, 3 * c), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let w = Tensor::randn(0f32, 1.0, (b * n, c), &Device::Cpu).unwrap();
            let scale = 1.0 / (dh as f64).sqrt();
            let f = |y: Tensor| (y * &w).unwrap().sum_all().unwrap();
            let want_y = reference(qkv.as_tensor(), b, n, heads, scale);
            let got_y = attention_train(qkv.as_tensor(), b, n, heads, scale).unwrap();
            let dy: f32 = (&want_y - &got_y).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(dy < 1e-5, "forward {dy}");
            let gw = f(want_y).backward().unwrap();
            let gg = f(got_y).backward().unwrap();
            let (a, z) = (gw.get(&qkv).unwrap(), gg.get(&qkv).unwrap());
            let d: f32 = (a - z).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let m: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(d < 1e-4 * m.max(1.0), "b={b} n={n} heads={heads}: gradient max |Δ| {d} (scale {m})");
        }
    }
}
