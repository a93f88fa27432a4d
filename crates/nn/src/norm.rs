//! Differentiable LayerNorm and BatchNorm with fused CPU kernels (forward and explicit
//! backward, parallel, statistics in f64) for training.
//!
//! For x of shape [R, C] normalised over axis a (LayerNorm: over the C channels of each
//! row; BatchNorm: over the R rows of each channel), with n the length of that axis:
//!
//! ```text
//! μ = mean_a(x),  σ² = mean_a((x − μ)²) (biased),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r
//! y  = γ ⊙ x̂ + β                         (γ, β per channel)
//! dx̂ = dy ⊙ γ
//! dx = r · (dx̂ − mean_a(dx̂) − x̂ ⊙ mean_a(dx̂ ⊙ x̂))
//! dγ = Σ_rows dy ⊙ x̂,  dβ = Σ_rows dy
//! ```
//!
//! candle's own LayerNorm passes no gradient, and the composed versions
//! ([`crate::ops::layer_norm`]) run as a dozen single-threaded passes with strided column
//! reductions for BatchNorm; these are one parallel pass forward and two backward. Off the
//! CPU (or for other dtypes) the composed ops are used.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::f32_slice;
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    /// LayerNorm: each row over its channels.
    Rows,
    /// BatchNorm: each channel over the rows.
    Columns,
}

/// Per-channel batch statistics of the last BatchNorm forward (mean, biased variance).
type Stats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

#[derive(Clone)]
struct NormOp {
    axis: Axis,
    eps: f64,
    stats: Stats,
}

/// Mean and 1/√(σ²+ε) of each normalised group: per row (Rows) or per channel (Columns).
fn moments(x: &[f32], r: usize, c: usize, axis: Axis, eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match axis {
        Axis::Rows => {
            let (mut mu, mut rs, mut var) = (vec![0f32; r], vec![0f32; r], vec![0f32; r]);
            mu.par_iter_mut().zip(rs.par_iter_mut()).zip(var.par_iter_mut()).zip(x.par_chunks(c)).for_each(
                |(((m, s), v), row)| {
                    let mean = row.iter().map(|&a| a as f64).sum::<f64>() / c as f64;
                    let va = row.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                    *m = mean as f32;
                    *v = va as f32;
                    *s = (1.0 / (va + eps).sqrt()) as f32;
                },
            );
            (mu, rs, var)
        }
        Axis::Columns => {
            let chunk = r.div_ceil(rayon::current_num_threads().max(1) * 4).max(64);
            let sums = x
                .par_chunks(chunk * c)
                .map(|blk| {
                    let mut s = vec![0f64; 2 * c];
                    for row in blk.chunks_exact(c) {
                        for (j, &a) in row.iter().enumerate() {
                            s[j] += a as f64;
                            s[c + j] += (a as f64) * (a as f64);
                        }
                    }
                    s
                })
                .reduce(
                    || vec![0f64; 2 * c],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                        a
                    },
                );
            let mut mu = vec![0f32; c];
            let mut rs = vec![0f32; c];
            let mut var = vec![0f32; c];
            for j in 0..c {
                let m = sums[j] / r as f64;
                let v = (sums[c + j] / r as f64 - m * m).max(0.0);
                mu[j] = m as f32;
                var[j] = v as f32;
                rs[j] = (1.0 / (v + eps).sqrt()) as f32;
            }
            (mu, rs, var)
        }
    }
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize)> {
    let d = l.shape().dims();
    if d.is_empty() {
        candle_core::bail!("norm: scalar input");
    }
    let c = d[d.len() - 1];
    Ok((l.shape().elem_count() / c.max(1), c))
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "cryoforge-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "norm")?;
        let g = f32_slice(s2, l2, "norm γ")?;
        let b = f32_slice(s3, l3, "norm β")?;
        let (r, c) = dims(l1)?;
        if g.len() != c || b.len() != c {
            candle_core::bail!("norm: γ/β of {} / {} values for {c} channels", g.len(), b.len());
        }
        let (mu, rs, var) = moments(x, r, c, self.axis, self.eps);
        let mut y = vec![0f32; r * c];
        y.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(i, (yr, xr))| match self.axis {
            Axis::Rows => {
                for j in 0..c {
                    yr[j] = (xr[j] - mu[i]) * rs[i] * g[j] + b[j];
                }
            }
            Axis::Columns => {
                for j in 0..c {
                    yr[j] = (xr[j] - mu[j]) * rs[j] * g[j] + b[j];
                }
            }
        });
        if self.axis == Axis::Columns {
            if let Ok(mut s) = self.stats.lock() {
                *s = Some((mu, var));
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = g.elem_count();
        let n = x.elem_count();
        let all = x.apply_op3_no_bwd(g, &grad.contiguous()?, &NormGrad(self.clone()))?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = all.narrow(0, n, c)?.reshape(g.shape())?;
        let db = all.narrow(0, n + c, c)?.reshape(g.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// (x, γ, dy) → [dx (flat) | dγ | dβ].
struct NormGrad(NormOp);

impl CustomOp3 for NormGrad {
    fn name(&self) -> &'static str {
        "cryoforge-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "norm backward")?;
        let g = f32_slice(s2, l2, "norm backward γ")?;
        let dy = f32_slice(s3, l3, "norm backward gradient")?;
        let (r, c) = dims(l1)?;
        if dy.len() != x.len() || g.len() != c {
            candle_core::bail!("norm backward: {} gradients for {} inputs", dy.len(), x.len());
        }
        let axis = self.0.axis;
        let (mu, rs, _) = moments(x, r, c, axis, self.0.eps);
        let mut out = vec![0f32; r * c + 2 * c];
        let (dx, dgb) = out.split_at_mut(r * c);
        // Per-group means of dx̂ and dx̂·x̂ (groups = rows or channels), and dγ, dβ.
        let chunk = r.div_ceil(rayon::current_num_threads().max(1) * 4).max(16);
        let xhat = |i: usize, j: usize, v: f32| match axis {
            Axis::Rows => (v - mu[i]) * rs[i],
            Axis::Columns => (v - mu[j]) * rs[j],
        };
        let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..r.div_ceil(chunk))
            .into_par_iter()
            .map(|k| {
                let (lo, hi) = (k * chunk, ((k + 1) * chunk).min(r));
                let mut gsum = vec![0f64; 2 * c]; // dγ, dβ
                let mut col = if axis == Axis::Columns { vec![0f64; 2 * c] } else { Vec::new() };
                for i in lo..hi {
                    for j in 0..c {
                        let (xv, d) = (x[i * c + j], dy[i * c + j]);
                        let h = xhat(i, j, xv);
                        gsum[j] += (d * h) as f64;
                        gsum[c + j] += d as f64;
                        if axis == Axis::Columns {
                            let dh = d * g[j];
                            col[j] += dh as f64;
                            col[c + j] += (dh * h) as f64;
                        }
                    }
                }
                (gsum, col)
            })
            .collect();
        let mut gsum = vec![0f64; 2 * c];
        let mut col = vec![0f64; 2 * c];
        for (a, b) in &parts {
            gsum.iter_mut().zip(a).for_each(|(s, v)| *s += v);
            if axis == Axis::Columns {
                col.iter_mut().zip(b).for_each(|(s, v)| *s += v);
            }
        }
        for (o, v) in dgb.iter_mut().zip(&gsum) {
            *o = *v as f32;
        }
        dx.par_chunks_mut(c).enumerate().for_each(|(i, dr)| match axis {
            Axis::Rows => {
                let (mut s1, mut s2) = (0f64, 0f64);
                for j in 0..c {
                    let dh = dy[i * c + j] * g[j];
                    s1 += dh as f64;
                    s2 += (dh * xhat(i, j, x[i * c + j])) as f64;
                }
                let (m1, m2) = ((s1 / c as f64) as f32, (s2 / c as f64) as f32);
                for j in 0..c {
                    let dh = dy[i * c + j] * g[j];
                    dr[j] = rs[i] * (dh - m1 - xhat(i, j, x[i * c + j]) * m2);
                }
            }
            Axis::Columns => {
                for j in 0..c {
                    let dh = dy[i * c + j] * g[j];
                    let (m1, m2) = ((col[j] / r as f64) as f32, (col[c + j] / r as f64) as f32);
                    dr[j] = rs[j] * (dh - m1 - xhat(i, j, x[i * c + j]) * m2);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(r * c + 2 * c)))
    }
}

fn fused_ok(x: &Tensor, g: &Tensor, b: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && g.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// Differentiable LayerNorm over the last dimension with affine γ, β ([C]); fused on the
/// CPU in f32, [`crate::ops::layer_norm`] elsewhere.
pub fn layer_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused_ok(x, gamma, beta) {
        return crate::ops::layer_norm(x, Some(gamma), Some(beta), eps);
    }
    let op = NormOp { axis: Axis::Rows, eps, stats: Arc::new(Mutex::new(None)) };
    Ok(x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
}

/// Differentiable BatchNorm in training mode of rows x [R, C] (each channel normalised with
/// its batch mean and biased variance) with γ, β ([C]; pass ones and zeros, not variables,
/// for `affine = False`). Returns y and the batch (mean, biased variance) per channel, for
/// the running statistics.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (r, c) = x.dims2()?;
    if !fused_ok(x, gamma, beta) {
        let mean = x.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(0)?;
        let y = xc.broadcast_div(&(&var + eps)?.sqrt()?)?.broadcast_mul(gamma)?.broadcast_add(beta)?;
        return Ok((y, mean.detach().squeeze(0)?, var.detach().squeeze(0)?));
    }
    let stats: Stats = Arc::new(Mutex::new(None));
    let op = NormOp { axis: Axis::Columns, eps, stats: stats.clone() };
    let y = x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let (m, v) = stats
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .ok_or_else(|| crate::NnError::msg(format!("batch norm of {r}×{c}: statistics missing")))?;
    let dev = x.device();
    Ok((y, Tensor::from_vec(m, c, dev)?, Tensor::from_vec(v, c, dev)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn fused_norms_match_composed_ops_with_gradients() {
        let dev = Device::Cpu;
        for (r, c) in [(7usize, 5usize), (300, 24)] {
            let x =
                Var::from_tensor(&(Tensor::randn(0f32, 2.0, (r, c), &dev).unwrap() + 0.7).unwrap()).unwrap();
            let g = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 1.0, (r, c), &dev).unwrap();
            let f = |y: &Tensor| (y * &w).unwrap().sum_all().unwrap();
            // LayerNorm.
            let want = crate::ops::layer_norm(x.as_tensor(), Some(g.as_tensor()), Some(b.as_tensor()), 1e-6)
                .unwrap();
            let got = layer_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-6).unwrap();
            assert!(maxdiff(&want, &got) < 1e-5);
            let (gw, gg) = (f(&want).backward().unwrap(), f(&got).backward().unwrap());
            for v in [&x, &g, &b] {
                let d = maxdiff(gw.get(v).unwrap(), gg.get(v).unwrap());
                assert!(d < 2e-4, "layer norm {r}×{c}: gradient Δ {d}");
            }
            // BatchNorm over rows.
            let mean = x.as_tensor().mean_keepdim(0).unwrap();
            let xc = x.as_tensor().broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(0).unwrap();
            let want = xc
                .broadcast_div(&(&var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(g.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let (got, m, v) = batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
            assert!(maxdiff(&want, &got) < 1e-5);
            assert!(maxdiff(&mean.squeeze(0).unwrap(), &m) < 1e-5);
            assert!(maxdiff(&var.squeeze(0).unwrap(), &v) < 1e-4);
            let (gw, gg) = (f(&want).backward().unwrap(), f(&got).backward().unwrap());
            for v in [&x, &g, &b] {
                let d = maxdiff(gw.get(v).unwrap(), gg.get(v).unwrap());
                assert!(d < 2e-4, "batch norm {r}×{c}: gradient Δ {d}");
            }
        }
    }
}
