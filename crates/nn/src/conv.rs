//! Differentiable 2-D convolution with fused CPU kernels (stride 1, "same" zero padding,
//! odd square kernels, f32): the convolutions of cryoPROS's HVAE.
//!
//! Forward: per image, bands of output rows are unfolded (im2col, C_in·k² × pixels) and
//! multiplied by the weights [C_out, C_in·k²] with `gemm`. Backward: the input gradient is
//! Wᵀ·dY folded back (col2im, the adjoint of the unfold); the weight gradient is dY·colsᵀ
//! summed over images. Images run in parallel (rayon); with fewer images than threads the
//! matrix products are parallel instead. 1×1 kernels skip the unfold. candle's own
//! conv2d backward goes through a direct CPU conv-transpose several times slower than
//! this (measured in BENCHMARKS.md §11); other devices and dtypes use candle's conv2d.

use crate::ops::f32_slice;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Pixels per unfolded band (bounds the scratch to C_in·k²·BAND floats per thread).
const BAND: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Geo {
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
}

impl Geo {
    fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn pad(&self) -> usize {
        self.k / 2
    }
    /// Rows per band.
    fn band_rows(&self) -> usize {
        (BAND / self.w.max(1)).max(1)
    }
    fn par_images(&self) -> bool {
        self.b >= rayon::current_num_threads()
    }
    fn gemm_par(&self) -> gemm::Parallelism {
        if self.par_images() {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        }
    }
}

/// Unfolds output rows y0..y1 of one image `x` [C_in, H, W] into `cols` [C_in·k², np].
fn im2col(x: &[f32], g: &Geo, y0: usize, y1: usize, cols: &mut [f32]) {
    let (h, w, k, p) = (g.h as isize, g.w, g.k, g.pad() as isize);
    let np = (y1 - y0) * w;
    for ci in 0..g.cin {
        let xc = &x[ci * g.hw()..(ci + 1) * g.hw()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * np..][..np];
                let dx = kx as isize - p;
                let lo = (-dx).max(0) as usize;
                let hi = (w as isize - dx).min(w as isize).max(lo as isize) as usize;
                for y in y0..y1 {
                    let dst = &mut row[(y - y0) * w..][..w];
                    let sy = y as isize + ky as isize - p;
                    if sy < 0 || sy >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &xc[sy as usize * w..][..w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    dst[lo..hi]
                        .copy_from_slice(&src[(lo as isize + dx) as usize..(hi as isize + dx) as usize]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `cols` [C_in·k², np] into `dx` [C_in, H, W].
fn col2im(cols: &[f32], g: &Geo, y0: usize, y1: usize, dx_img: &mut [f32]) {
    let (h, w, k, p) = (g.h as isize, g.w, g.k, g.pad() as isize);
    let np = (y1 - y0) * w;
    for ci in 0..g.cin {
        let xc = &mut dx_img[ci * g.hw()..(ci + 1) * g.hw()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * np..][..np];
                let dx = kx as isize - p;
                let lo = (-dx).max(0) as usize;
                let hi = (w as isize - dx).min(w as isize).max(lo as isize) as usize;
                for y in y0..y1 {
                    let sy = y as isize + ky as isize - p;
                    if sy < 0 || sy >= h {
                        continue;
                    }
                    let src = &row[(y - y0) * w..][..w];
                    let dst = &mut xc[sy as usize * w..][..w];
                    let off = (lo as isize + dx) as usize;
                    for (d, s) in dst[off..off + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// dst[m×n] (row stride dst_rs) (+)= lhs[m×k] · rhs[k×n], strides given as (row, col).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The extents the strides reach must lie inside the slices (gemm reads raw pointers).
    debug_assert!(dst.len() > (m - 1) * dst_rs + (n - 1));
    debug_assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    assert!(
        dst.len() > (m - 1) * dst_rs + (n - 1)
            && (k == 0
                || (lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs
                    && rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs)),
        "conv sgemm: operand extents"
    );
    // SAFETY: every element gemm reads or writes lies inside the slices (checked above);
    // `dst` is borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

fn bands(g: &Geo) -> impl Iterator<Item = (usize, usize)> {
    let r = g.band_rows();
    let h = g.h;
    (0..h.div_ceil(r)).map(move |i| (i * r, ((i + 1) * r).min(h)))
}

fn forward_image(x: &[f32], wt: &[f32], g: &Geo, cols: &mut Vec<f32>, y: &mut [f32]) {
    let (hw, kk, w) = (g.hw(), g.kk(), g.w);
    for (y0, y1) in bands(g) {
        let np = (y1 - y0) * w;
        let out = &mut y[y0 * w..];
        if g.k == 1 {
            sgemm(g.cout, np, kk, out, hw, false, wt, kk, 1, &x[y0 * w..], hw, 1, g.gemm_par());
        } else {
            cols.resize(kk * np, 0.0);
            im2col(x, g, y0, y1, cols);
            sgemm(g.cout, np, kk, out, hw, false, wt, kk, 1, cols, np, 1, g.gemm_par());
        }
    }
}

/// dX of one image (added to `dx` when `accumulate`, else written).
fn input_grad_image(dy: &[f32], wt: &[f32], g: &Geo, cols: &mut Vec<f32>, dx: &mut [f32], accumulate: bool) {
    let (hw, kk, w) = (g.hw(), g.kk(), g.w);
    if !accumulate {
        dx[..g.cin * hw].fill(0.0);
    }
    for (y0, y1) in bands(g) {
        let np = (y1 - y0) * w;
        // Wᵀ: element (r, co) = W[co·kk + r].
        if g.k == 1 {
            sgemm(
                kk,
                np,
                g.cout,
                &mut dx[y0 * w..],
                hw,
                accumulate,
                wt,
                1,
                kk,
                &dy[y0 * w..],
                hw,
                1,
                g.gemm_par(),
            );
        } else {
            cols.resize(kk * np, 0.0);
            sgemm(kk, np, g.cout, cols, np, false, wt, 1, kk, &dy[y0 * w..], hw, 1, g.gemm_par());
            col2im(cols, g, y0, y1, dx);
        }
    }
}

fn weight_grad_image(x: &[f32], dy: &[f32], g: &Geo, cols: &mut Vec<f32>, dw: &mut [f32]) {
    let (hw, kk, w) = (g.hw(), g.kk(), g.w);
    for (y0, y1) in bands(g) {
        let np = (y1 - y0) * w;
        // dW[co, r] += Σ_p dY[co, p] · cols[r, p].
        if g.k == 1 {
            sgemm(g.cout, kk, np, dw, kk, true, &dy[y0 * w..], hw, 1, &x[y0 * w..], 1, hw, g.gemm_par());
        } else {
            cols.resize(kk * np, 0.0);
            im2col(x, g, y0, y1, cols);
            sgemm(g.cout, kk, np, dw, kk, true, &dy[y0 * w..], hw, 1, cols, 1, np, g.gemm_par());
        }
    }
}

fn geo_of(lx: &Layout, lw: &Layout) -> candle_core::Result<Geo> {
    let (b, cin, h, w) = lx.shape().dims4()?;
    let (cout, cin2, k, k2) = lw.shape().dims4()?;
    if cin != cin2 || k != k2 || k % 2 == 0 {
        candle_core::bail!(
            "conv2d: input {:?} and kernel {:?} do not match (odd square kernels)",
            lx.shape(),
            lw.shape()
        );
    }
    Ok(Geo { b, cin, cout, h, w, k })
}

struct Conv2dOp;

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "cryoforge-conv2d-same"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geo_of(l1, l2)?;
        let x = f32_slice(s1, l1, "conv2d input")?;
        let wt = f32_slice(s2, l2, "conv2d kernel")?;
        let (ci, co) = (g.cin * g.hw(), g.cout * g.hw());
        let mut y = vec![0f32; g.b * co];
        if g.par_images() {
            y.par_chunks_mut(co.max(1)).enumerate().for_each_init(Vec::new, |cols, (i, yi)| {
                forward_image(&x[i * ci..(i + 1) * ci], wt, &g, cols, yi)
            });
        } else {
            let mut cols = Vec::new();
            for (i, yi) in y.chunks_mut(co.max(1)).enumerate() {
                forward_image(&x[i * ci..(i + 1) * ci], wt, &g, &mut cols, yi);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.h, g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(wt, &InputGradOp { x_shape: x.shape().clone() })?;
        let dw = x.apply_op2_no_bwd(&grad, &WeightGradOp { w_shape: wt.shape().clone() })?;
        Ok((Some(dx), Some(dw)))
    }
}

struct InputGradOp {
    x_shape: Shape,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "cryoforge-conv2d-same-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geo_of(&Layout::contiguous(self.x_shape.clone()), l2)?;
        let dy = f32_slice(s1, l1, "conv2d output gradient")?;
        let wt = f32_slice(s2, l2, "conv2d kernel")?;
        let (ci, co) = (g.cin * g.hw(), g.cout * g.hw());
        let mut dx = vec![0f32; g.b * ci];
        if g.par_images() {
            dx.par_chunks_mut(ci.max(1)).enumerate().for_each_init(Vec::new, |cols, (i, d)| {
                input_grad_image(&dy[i * co..(i + 1) * co], wt, &g, cols, d, false)
            });
        } else {
            let mut cols = Vec::new();
            for (i, d) in dx.chunks_mut(ci.max(1)).enumerate() {
                input_grad_image(&dy[i * co..(i + 1) * co], wt, &g, &mut cols, d, false);
            }
        }
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

struct WeightGradOp {
    w_shape: Shape,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "cryoforge-conv2d-same-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geo_of(l1, &Layout::contiguous(self.w_shape.clone()))?;
        let x = f32_slice(s1, l1, "conv2d input")?;
        let dy = f32_slice(s2, l2, "conv2d output gradient")?;
        let (ci, co, nw) = (g.cin * g.hw(), g.cout * g.hw(), g.cout * g.kk());
        let dw = if g.par_images() {
            (0..g.b)
                .into_par_iter()
                .fold(
                    || (vec![0f32; nw], Vec::new()),
                    |(mut acc, mut cols), i| {
                        weight_grad_image(
                            &x[i * ci..(i + 1) * ci],
                            &dy[i * co..(i + 1) * co],
                            &g,
                            &mut cols,
                            &mut acc,
                        );
                        (acc, cols)
                    },
                )
                .map(|(a, _)| a)
                .reduce(
                    || vec![0f32; nw],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                        a
                    },
                )
        } else {
            let (mut acc, mut cols) = (vec![0f32; nw], Vec::new());
            for i in 0..g.b {
                weight_grad_image(
                    &x[i * ci..(i + 1) * ci],
                    &dy[i * co..(i + 1) * co],
                    &g,
                    &mut cols,
                    &mut acc,
                );
            }
            acc
        };
        Ok((CpuStorage::F32(dw), self.w_shape.clone()))
    }
}

/// `x` [B, C_in, H, W] convolved with `w` [C_out, C_in, k, k] (k odd), stride 1, zero
/// padding k/2, plus `bias` [C_out] when given: the same as candle's
/// `x.conv2d(w, k/2, 1, 1, 1)`, with a fast CPU backward.
pub fn conv2d_same(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> crate::Result<Tensor> {
    let (_, _, k, _) = w.dims4()?;
    let fused = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && k % 2 == 1;
    let y = if fused {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp)?
    } else {
        x.conv2d(w, k / 2, 1, 1, 1)?
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
}

/// Shape of a residual dense block: `nf` channels in and out, growth `g`.
#[derive(Clone, Copy, Debug)]
struct DenseGeo {
    b: usize,
    nf: usize,
    g: usize,
    h: usize,
    w: usize,
    slope: f32,
    res_scale: f32,
}

impl DenseGeo {
    fn channels(&self) -> usize {
        self.nf + 4 * self.g
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Conv i (0-based) reads channels 0..cin(i) of the dense buffer.
    fn cin(&self, i: usize) -> usize {
        self.nf + i * self.g
    }
    fn cout(&self, i: usize) -> usize {
        if i == 4 {
            self.nf
        } else {
            self.g
        }
    }
    fn conv(&self, i: usize) -> Geo {
        Geo { b: self.b, cin: self.cin(i), cout: self.cout(i), h: self.h, w: self.w, k: 3 }
    }
    /// Offsets of (weight, bias) of conv i in the packed parameters, and the total.
    fn offsets(&self) -> ([(usize, usize); 5], usize) {
        let mut o = [(0, 0); 5];
        let mut at = 0;
        for (i, oi) in o.iter_mut().enumerate() {
            let nw = self.cout(i) * self.cin(i) * 9;
            *oi = (at, at + nw);
            at += nw + self.cout(i);
        }
        (o, at)
    }
}

fn dense_forward_image(
    x: &[f32],
    p: &[f32],
    g: &DenseGeo,
    cols: &mut Vec<f32>,
    buf: &mut [f32],
    y: &mut [f32],
) {
    let hw = g.hw();
    let (off, _) = g.offsets();
    buf[..g.nf * hw].copy_from_slice(&x[..g.nf * hw]);
    for i in 0..4 {
        let (wo, bo) = off[i];
        let (inp, out) = buf.split_at_mut(g.cin(i) * hw);
        let cg = g.conv(i);
        forward_image(inp, &p[wo..bo], &cg, cols, out);
        for (c, oc) in out[..g.g * hw].chunks_exact_mut(hw).enumerate() {
            let bias = p[bo + c];
            for v in oc.iter_mut() {
                let t = *v + bias;
                *v = if t >= 0.0 { t } else { t * g.slope };
            }
        }
    }
    let (wo, bo) = off[4];
    forward_image(buf, &p[wo..bo], &g.conv(4), cols, y);
    for (c, (yc, xc)) in y.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).enumerate() {
        let bias = p[bo + c];
        for (v, xv) in yc.iter_mut().zip(xc) {
            *v = xv + g.res_scale * (*v + bias);
        }
    }
}

/// Gradients of one image: dx written, parameter gradients added to `dp`.
#[allow(clippy::too_many_arguments)]
fn dense_backward_image(
    buf: &[f32],
    dy: &[f32],
    p: &[f32],
    g: &DenseGeo,
    cols: &mut Vec<f32>,
    dbuf: &mut Vec<f32>,
    dp: &mut [f32],
    dx: &mut [f32],
) {
    let hw = g.hw();
    let (off, _) = g.offsets();
    dbuf.resize(g.channels() * hw, 0.0);
    // Conv 5: its output was scaled by res_scale.
    let dt: Vec<f32> = dy.iter().map(|v| v * g.res_scale).collect();
    let (wo, bo) = off[4];
    input_grad_image(&dt, &p[wo..bo], &g.conv(4), cols, dbuf, false);
    weight_grad_image(buf, &dt, &g.conv(4), cols, &mut dp[wo..bo]);
    for (c, dc) in dt.chunks_exact(hw).enumerate() {
        dp[bo + c] += dc.iter().sum::<f32>();
    }
    for i in (0..4).rev() {
        let (wo, bo) = off[i];
        let cin = g.cin(i);
        let (dinp, dout) = dbuf.split_at_mut(cin * hw);
        let dpre = &mut dout[..g.g * hw];
        // LeakyReLU: the stored activation has the sign of its input.
        for (d, a) in dpre.iter_mut().zip(&buf[cin * hw..(cin + g.g) * hw]) {
            if *a < 0.0 {
                *d *= g.slope;
            }
        }
        for (c, dc) in dpre.chunks_exact(hw).enumerate() {
            dp[bo + c] += dc.iter().sum::<f32>();
        }
        let cg = g.conv(i);
        weight_grad_image(buf, dpre, &cg, cols, &mut dp[wo..bo]);
        input_grad_image(dpre, &p[wo..bo], &cg, cols, dinp, true);
    }
    for (d, (a, b)) in dx.iter_mut().zip(dy.iter().zip(&dbuf[..g.nf * hw])) {
        *d = a + b;
    }
}

/// Fused residual dense block; see [`residual_dense_block`].
struct DenseBlockOp {
    nf: usize,
    g: usize,
    slope: f32,
    res_scale: f32,
    /// The dense buffers of the forward pass (B × (nf + 4g) × H × W), for the backward.
    saved: std::sync::Mutex<Option<Vec<f32>>>,
}

impl DenseBlockOp {
    fn geo(&self, lx: &Layout) -> candle_core::Result<DenseGeo> {
        let (b, c, h, w) = lx.shape().dims4()?;
        if c != self.nf {
            candle_core::bail!("dense block: input has {c} channels, the block {}", self.nf);
        }
        Ok(DenseGeo { b, nf: self.nf, g: self.g, h, w, slope: self.slope, res_scale: self.res_scale })
    }
}

impl CustomOp2 for DenseBlockOp {
    fn name(&self) -> &'static str {
        "cryoforge-residual-dense-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geo(l1)?;
        let x = f32_slice(s1, l1, "dense block input")?;
        let p = f32_slice(s2, l2, "dense block parameters")?;
        if p.len() != g.offsets().1 {
            candle_core::bail!("dense block: {} parameters, expected {}", p.len(), g.offsets().1);
        }
        let (hw, nc) = (g.hw(), g.channels());
        let mut y = vec![0f32; g.b * g.nf * hw];
        let mut buf = vec![0f32; g.b * nc * hw];
        let xi = |i: usize| &x[i * g.nf * hw..(i + 1) * g.nf * hw];
        if g.conv(0).par_images() {
            y.par_chunks_mut((g.nf * hw).max(1))
                .zip(buf.par_chunks_mut((nc * hw).max(1)))
                .enumerate()
                .for_each_init(Vec::new, |cols, (i, (yi, bi))| {
                    dense_forward_image(xi(i), p, &g, cols, bi, yi)
                });
        } else {
            let mut cols = Vec::new();
            for (i, (yi, bi)) in
                y.chunks_mut((g.nf * hw).max(1)).zip(buf.chunks_mut((nc * hw).max(1))).enumerate()
            {
                dense_forward_image(xi(i), p, &g, &mut cols, bi, yi);
            }
        }
        *self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(buf);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geo(x.layout())?;
        let buf =
            self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().ok_or_else(|| {
                candle_core::Error::Msg("dense block: backward run twice or without forward".into())
            })?;
        let grad = grad.contiguous()?;
        let p: Vec<f32> = params.flatten_all()?.to_vec1()?;
        let dy: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let (hw, nc, np) = (g.hw(), g.channels(), g.offsets().1);
        let mut dx = vec![0f32; g.b * g.nf * hw];
        let per = |i: usize| (&buf[i * nc * hw..(i + 1) * nc * hw], &dy[i * g.nf * hw..(i + 1) * g.nf * hw]);
        let dp = if g.conv(0).par_images() {
            dx.par_chunks_mut((g.nf * hw).max(1))
                .enumerate()
                .fold(
                    || (vec![0f32; np], Vec::new(), Vec::new()),
                    |(mut dp, mut cols, mut dbuf), (i, dxi)| {
                        let (bi, dyi) = per(i);
                        dense_backward_image(bi, dyi, &p, &g, &mut cols, &mut dbuf, &mut dp, dxi);
                        (dp, cols, dbuf)
                    },
                )
                .map(|(dp, _, _)| dp)
                .reduce(
                    || vec![0f32; np],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
                        a
                    },
                )
        } else {
            let (mut dp, mut cols, mut dbuf) = (vec![0f32; np], Vec::new(), Vec::new());
            for (i, dxi) in dx.chunks_mut((g.nf * hw).max(1)).enumerate() {
                let (bi, dyi) = per(i);
                dense_backward_image(bi, dyi, &p, &g, &mut cols, &mut dbuf, &mut dp, dxi);
            }
            dp
        };
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dp = Tensor::from_vec(dp, params.shape(), params.device())?;
        Ok((Some(dx), Some(dp)))
    }
}

/// ESRGAN's residual dense block, fused on the CPU: five 3×3 convolutions over the growing
/// concatenation [x, x₁, …, x₄] (nf → g, nf+g → g, …, nf+4g → nf), LeakyReLU(`slope`)
/// after the first four, output x + `res_scale`·x₅. `weights[i]` is
/// [cout, nf + i·g, 3, 3], `biases[i]` [cout]. No concatenation copies, one buffer per image;
/// the backward keeps the forward's buffer and runs the convolutions' gradients in
/// reverse. Other devices and dtypes compose candle ops to the same result.
pub fn residual_dense_block(
    x: &Tensor,
    weights: &[Tensor],
    biases: &[Tensor],
    slope: f64,
    res_scale: f64,
) -> crate::Result<Tensor> {
    if weights.len() != 5 || biases.len() != 5 {
        return Err(crate::NnError::msg("residual dense block: 5 weights and 5 biases expected"));
    }
    let nf = x.dim(1)?;
    let g = weights[0].dim(0)?;
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        let mut feats = vec![x.clone()];
        for i in 0..4 {
            let inp = Tensor::cat(&feats, 1)?;
            let y = conv2d_same(&inp, &weights[i], Some(&biases[i]))?;
            feats.push(candle_nn::ops::leaky_relu(&y, slope)?);
        }
        let x5 = conv2d_same(&Tensor::cat(&feats, 1)?, &weights[4], Some(&biases[4]))?;
        return Ok((x + x5.affine(res_scale, 0.0)?)?);
    }
    let mut parts = Vec::with_capacity(10);
    for (w, b) in weights.iter().zip(biases) {
        parts.push(w.flatten_all()?);
        parts.push(b.flatten_all()?);
    }
    let packed = Tensor::cat(&parts, 0)?;
    let op = DenseBlockOp {
        nf,
        g,
        slope: slope as f32,
        res_scale: res_scale as f32,
        saved: std::sync::Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op2(&packed, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, &Device::Cpu)
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// Forward and both gradients equal candle's conv2d, for 3×3, 1×1 and 5×5 kernels, with
    /// images in parallel (batch ≥ threads) and one image (parallel products), and bands
    /// smaller than the image (tall images).
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        for (b, cin, cout, h, w, k) in
            [(3, 5, 4, 7, 6, 3), (1, 6, 3, 5, 9, 1), (4, 2, 3, 6, 5, 5), (2, 3, 2, 700, 3, 3)]
        {
            let x = Var::from_tensor(&rand(&[b, cin, h, w], 1)).unwrap();
            let wt = Var::from_tensor(&rand(&[cout, cin, k, k], 2)).unwrap();
            let bias = Var::from_tensor(&rand(&[cout], 3)).unwrap();
            let gy = rand(&[b, cout, h, w], 4);
            let ours = conv2d_same(x.as_tensor(), wt.as_tensor(), Some(bias.as_tensor())).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(wt.as_tensor(), k / 2, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-4, "forward {:?}", (b, cin, cout, h, w, k));
            let g1 = (&ours * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt, &bias] {
                let (a, c) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                let scale: f32 = c.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(
                    max_diff(a, c) < 1e-4 * scale.max(1.0),
                    "gradient {:?} {:?}",
                    v.dims(),
                    (b, cin, cout, h, w, k)
                );
            }
        }
    }

    /// The fused block equals the composed candle version, forward and all gradients.
    #[test]
    fn dense_block_matches_composed_ops() {
        for (b, nf, g, h, w) in [(3, 8, 4, 6, 5), (1, 4, 2, 9, 7)] {
            let x = Var::from_tensor(&rand(&[b, nf, h, w], 11)).unwrap();
            let ws: Vec<Var> = (0..5)
                .map(|i| {
                    let cout = if i == 4 { nf } else { g };
                    Var::from_tensor(&rand(&[cout, nf + i * g, 3, 3], 20 + i as u64)).unwrap()
                })
                .collect();
            let bs: Vec<Var> = (0..5)
                .map(|i| Var::from_tensor(&rand(&[if i == 4 { nf } else { g }], 30 + i as u64)).unwrap())
                .collect();
            let wt: Vec<Tensor> = ws.iter().map(|v| v.as_tensor().clone()).collect();
            let bt: Vec<Tensor> = bs.iter().map(|v| v.as_tensor().clone()).collect();
            let ours = residual_dense_block(x.as_tensor(), &wt, &bt, 0.2, 0.2).unwrap();
            let mut feats = vec![x.as_tensor().clone()];
            for i in 0..4 {
                let y = Tensor::cat(&feats, 1)
                    .unwrap()
                    .conv2d(&wt[i], 1, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&bt[i].reshape((1, g, 1, 1)).unwrap())
                    .unwrap();
                feats.push(candle_nn::ops::leaky_relu(&y, 0.2).unwrap());
            }
            let x5 = Tensor::cat(&feats, 1)
                .unwrap()
                .conv2d(&wt[4], 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bt[4].reshape((1, nf, 1, 1)).unwrap())
                .unwrap();
            let theirs = (x.as_tensor() + x5.affine(0.2, 0.0).unwrap()).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-4);
            let gy = rand(&[b, nf, h, w], 40);
            let g1 = (&ours * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for v in std::iter::once(&x).chain(&ws).chain(&bs) {
                let (a, c) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                let scale: f32 = c.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(max_diff(a, c) < 1e-4 * scale.max(1.0), "gradient of {:?}", v.dims());
            }
        }
    }
}
