//! Multi-head self-attention for inference on the CPU in one pass: softmax(q kᵀ/√d_h) v for
//! every (image, head) pair in parallel, read straight from the qkv projection [B·N, 3C]
//! (columns q | k | v, heads contiguous within each) and written straight into the
//! head-concatenated layout [B·N, C] the output projection takes, with the gemm kernels
//! candle itself uses called on strided views. This replaces candle's path (three strided
//! copies, two batched matrix products over 8–100 small matrices, a separate softmax and a
//! transposing copy), which ran largely on one thread. Training keeps candle's
//! differentiable ops.

use crate::{IefError, Result};
use candle_core::{DType, Tensor};
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

/// Attention output [B·N, C] from `qkv` [B·N, 3C] (f32, CPU), `heads` heads, `b` images of
/// `n` tokens, scores scaled by `scale`.
pub fn attention_eval(qkv: &Tensor, b: usize, n: usize, heads: usize, scale: f64) -> Result<Tensor> {
    let (rows, c3) = qkv.dims2()?;
    if rows != b * n || c3 % 3 != 0 || (c3 / 3) % heads != 0 || qkv.dtype() != DType::F32 {
        return Err(IefError::msg(format!(
            "attention: qkv is {rows}×{c3} ({:?}), expected {}×3C f32 with C divisible by {heads}",
            qkv.dtype(),
            b * n
        )));
    }
    let c = c3 / 3;
    let dh = c / heads;
    let src: Vec<f32> = qkv.contiguous()?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * n * c];
    let op = OutPtr(out.as_mut_ptr());
    let scale = scale as f32;
    (0..b * heads).into_par_iter().for_each_init(
        || vec![0f32; n * n],
        |s, task| {
            let (img, h) = (task / heads, task % heads);
            let base = img * n * c3;
            let q = src[base + h * dh..].as_ptr();
            let k = src[base + c + h * dh..].as_ptr();
            let v = src[base + 2 * c + h * dh..].as_ptr();
            // SAFETY: the views stay inside `src` (row stride 3C, n rows, d_h columns from
            // the head's offset) and `s` (n × n); gemm reads and writes only those elements.
            unsafe {
                // S = scale · Q Kᵀ: Q [n × d_h] (row stride 3C), Kᵀ [d_h × n] (column stride 3C).
                gemm::gemm(
                    n,
                    n,
                    dh,
                    s.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q,
                    1,
                    c3 as isize,
                    k,
                    c3 as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            s.chunks_exact_mut(n).for_each(cryoforge_nn::ops::softmax_in_place);
            // SAFETY: O [n × d_h] at rows img·n.., columns h·d_h.. of `out` (row stride C):
            // this task's elements only (see OutPtr); V [n × d_h] inside `src`.
            unsafe {
                let o = op.at(img * n * c + h * dh);
                gemm::gemm(
                    n,
                    dh,
                    n,
                    o,
                    1,
                    c as isize,
                    false,
                    s.as_ptr(),
                    1,
                    n as isize,
                    v,
                    1,
                    c3 as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    Ok(Tensor::from_vec(out, (b * n, c), qkv.device())?)
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
}
