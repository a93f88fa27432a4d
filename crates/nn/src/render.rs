//! Differentiable Cα Gaussian renderer: band-limited Fourier-space splatting.
//!
//! # Forward model
//! A structure is R residues at x_r (Å, model frame, origin at the box centre) with peak
//! amplitudes a_r and a common width σ (Å). For a particle with rotation A (RELION matrix,
//! CONVENTIONS.md rule 1) and shift t (px, rule 5) the residue lands at
//! c_r = (A·x_r)ₓᵧ and the image is `img(p) = Σ_r a_r·exp(−|p + t·apix − c_r|²/2σ²)`.
//! Its centred D×D DFT (frequency index k ↔ k/(D·apix) Å⁻¹) is, up to aliasing,
//!
//! ```text
//! F(k) = Σ_r a_r·(2πσ²/apix²)·g(k_x)·g(k_y)·exp(−2πi k·(c_r − t·apix)),  g(k) = exp(−2π²σ²k²)
//!      = (E_yᵀ·diag(a)·E_x)[k_y, k_x]
//! E_x[r, k] = g(k)·exp(−2πi k u_r),   u_r = c_{r,x} − t_x·apix
//! E_y[r, k] = N·g(k)·exp(−2πi k v_r), v_r = c_{r,y} − t_y·apix,   N = 2πσ²/apix²
//! ```
//!
//! exactly the model of `cryoforge_sim::gaussian_image::GaussianImager`. Only frequencies
//! with |k_x|, |k_y| ≤ k_max (index units) are computed — K = 2·k_max+1 of them per axis
//! (clipped to the grid's −D/2..D/2−1) — and the spectrum is zeroed outside the disk
//! k_x² + k_y² ≤ k_max². k_max is either the envelope cut of the simulator
//! (g(k) ≥ [`DAMP_EPS`]; [`Band::Envelope`]) or a low-pass radius ([`Band::Radius`],
//! [`Band::Resolution`]). A complex product is done with real tensors in one matmul:
//!
//! ```text
//! [F_re | F_im] (K_h × 2K) = [E_y,reᵀ | E_y,imᵀ] (K_h × 2R) · [[E_x,re, E_x,im], [−E_x,im, E_x,re]] (2R × 2K)
//! ```
//!
//! Only the K_h = k_max + 1 rows k_y ≤ 0 are computed: the image is real, so row −k_y is the
//! complex conjugate of row k_y (Friedel), and in the inverse DFT below Re of a row pair is
//! twice Re of one row — rows k_y < 0 get weight 2 ([`Renderer::row_weights`]), except
//! k_y = 0 and k_y = −D/2 (no partner on the grid), weight 1. This halves every cost.
//!
//! The CTF enters as a per-particle real "transfer" T(k) multiplied onto the spectrum
//! ([`Renderer::ctf_transfer`] gives T = −CTF·disk, the forward model image =
//! F⁻¹[−CTF·F] of CONVENTIONS.md rule 6). The predicted image is then the inverse
//! centred DFT written as two matmuls with fixed DFT matrices
//! `W[p, k] = exp(+2πi k (p − D/2)/D)/D`:
//!
//! ```text
//! img = Re(W_y·G·W_xᵀ),  G = T ⊙ F:   [Q_re | Q_im] = [G_re | G_im]·[[W_x,reᵀ, W_x,imᵀ], [−W_x,imᵀ, W_x,reᵀ]]
//!                                     img = [w·W_y,re | −w·W_y,im]·[Q_re ; Q_im]   (w: Friedel row weights)
//! ```
//!
//! so no FFT is inside the autodiff graph: everything is matmuls and element-wise ops,
//! and candle differentiates it w.r.t. coordinates, amplitudes, σ, rotations and shifts.
//!
//! Two implementations of the spectrum, tested against each other and against finite
//! differences (`tests/render.rs`):
//! - CPU, f32 ([`Renderer::spectrum_fused`], the default there): custom ops build the two
//!   matmul operands directly — [`PhasorBlockX`]: u → [[C, S], [−S, C]] and
//!   [`PhasorBlockY`]: (v, a) → [a·Cᵀ | a·Sᵀ] with C + iS = exp(−2πi k u) evaluated in f64
//!   by the rotation recurrence (one sin/cos per residue, not per frequency) — and the
//!   envelope enters after the matmul as the K_h×K outer product N·g(k_y)·g(k_x). Their
//!   backward passes are analytic: with Ḡ_C, Ḡ_S the gradients reaching C and S,
//!   `∂L/∂u = Σ_k 2πk·(Ḡ_C·S − Ḡ_S·C)` and, for the amplitude-weighted y operand,
//!   `∂L/∂a = Σ_k (Ḡ_C·C + Ḡ_S·S)`, `∂L/∂v = a·Σ_k 2πk·(Ḡ_C·S − Ḡ_S·C)`.
//! - any device or dtype ([`Renderer::spectrum_composed`]): candle ops only (phasors by
//!   [`PhasorOp`] on the CPU in f32, by `cos`/`sin` elsewhere, e.g. with `--features cuda`).
//!
//! Data images are low-passed to exactly the same band once, outside the graph, by
//! [`Renderer::lowpass_images`] (cryoSTAR low-passes prediction and data alike).
//! Measured on one core (`RAYON_NUM_THREADS=1`, `bench_render_forward_backward`, test
//! profile, 214 residues, D = 128, 1 Å/px, batch 16, forward + masked correlation loss +
//! backward, on a shared 2-core machine under load 4–7, so ranges over runs):
//! 110–200 images/s for the full envelope band (K = 115), 350–730 at 4 Å (K = 65),
//! 900–1480 at 10 Å (K = 25); with the unmasked Fourier-space loss
//! ([`crate::loss::FourierCorrelationLoss`], no image synthesis) 190–410, 520–940 and
//! 1850–4360 images/s.
//!
//! [`Renderer::render_real_space`] is the separable real-space sum
//! `img[y, x] = Σ_r a_r·exp(−(y_p − v_r)²/2σ²)·exp(−(x_p − u_r)²/2σ²)` (no CTF), for
//! validation: with [`Band::Envelope`] and the identity transfer both paths agree to
//! ~1e-6 of the peak at 1 Å/px (`tests/render.rs`).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cryoforge_core::CtfParams;
use rayon::prelude::*;

use crate::ops::{f32_slice, filled_f32};
use crate::{NnError, Result};

/// Frequencies where the Gaussian envelope exp(−2π²σ²|k|²) is below this are dropped
/// (the same rule and value as `cryoforge_sim::gaussian_image::DAMP_EPS`).
pub const DAMP_EPS: f64 = 1e-7;

/// Which frequencies the renderer computes (radius k_max in frequency-index units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Band {
    /// The simulator's rule: where exp(−2π²σ²k²) ≥ [`DAMP_EPS`] for this σ (Å), capped at D/2.
    /// Reproduces `GaussianImager` images.
    Envelope { sigma_a: f64 },
    /// A radius in frequency-index units (capped at D/2).
    Radius(usize),
    /// A low-pass to this resolution (Å): k_max = ⌊D·apix/resolution⌋ (cryoSTAR's bandwidth).
    Resolution { resolution_a: f64 },
}

/// Band part of data spectra and their real-space std ([`Renderer::band_data`]).
#[derive(Debug, Clone)]
pub struct BandData {
    /// [B, K_h, 2K] = [Re | Im] of the centred DFT on the renderer's band.
    pub spec: Tensor,
    /// Population std over all D² pixels, \[B\].
    pub std: Tensor,
    /// Friedel weights of the half-band rows ([`Renderer::row_weights`]).
    pub row_w: Tensor,
}

/// Band-limited differentiable renderer for D×D images at a fixed pixel size.
pub struct Renderer {
    d: usize,
    apix: f64,
    kmax: usize,
    /// First frequency index of the band (−k_max); the band is k0..k0+K.
    k0: i64,
    nk: usize,
    /// Rows of the half band, k_y = −k_max..0: K_h = k_max + 1.
    nky: usize,
    device: Device,
    dtype: DType,
    /// k (Å⁻¹) per band frequency, \[K\] f32 (CPU copy kept for the phasor op).
    k_a: Vec<f64>,
    /// k² (Å⁻²), \[K\].
    k2: Tensor,
    /// k² of the half-band rows, \[K_h\].
    k2y: Tensor,
    /// 2πk of the half-band rows, \[K_h\].
    twopi_ky: Tensor,
    /// Friedel weights of the half-band rows: 2, except 1 for k_y = 0 and k_y = −D/2.
    row_w: Tensor,
    /// 2πk (Å⁻¹), \[K\], for the phasor backward.
    twopi_k: Tensor,
    /// Disk mask on the half band, [K_h, K].
    disk: Tensor,
    disk_host: Vec<f32>,
    /// [[W_x,reᵀ, W_x,imᵀ], [−W_x,imᵀ, W_x,reᵀ]]: [2K, 2D].
    synth_x: Tensor,
    /// [w·W_y,re | −w·W_y,im] over the half-band rows: [D, 2K_h].
    synth_y: Tensor,
    /// Pixel positions (j − D/2)·apix, \[D\].
    pix: Tensor,
    /// FFT plans for the data (planned once, not per batch).
    fft: cryoforge_core::fft::Fft2,
    rfft: cryoforge_core::fft::Rfft2,
}

impl Renderer {
    /// A renderer for D×D images (D even) at `apix_a` Å/px computing the frequencies of `band`.
    pub fn new(d: usize, apix_a: f64, band: Band, device: &Device) -> Result<Renderer> {
        Renderer::with_dtype(d, apix_a, band, device, DType::F32)
    }

    /// As [`Renderer::new`] with tensors of `dtype` (F32 or F64; F64 for gradient checks —
    /// the f64 path evaluates the phasors with candle's cos/sin instead of [`PhasorOp`]).
    pub fn with_dtype(d: usize, apix_a: f64, band: Band, device: &Device, dtype: DType) -> Result<Renderer> {
        if d == 0 || d % 2 == 1 {
            return Err(NnError::msg(format!("renderer box size must be even and positive, got {d}")));
        }
        if !(apix_a.is_finite() && apix_a > 0.0) {
            return Err(NnError::msg(format!("pixel size must be positive, got {apix_a}")));
        }
        let h = d / 2;
        let kmax = match band {
            Band::Envelope { sigma_a } => {
                if !(sigma_a.is_finite() && sigma_a > 0.0) {
                    return Err(NnError::msg(format!("σ must be positive, got {sigma_a}")));
                }
                let k =
                    (DAMP_EPS.recip().ln() / (2.0 * std::f64::consts::PI.powi(2) * sigma_a * sigma_a)).sqrt();
                let idx = (k * d as f64 * apix_a).floor();
                if idx.is_finite() {
                    (idx as usize).min(h)
                } else {
                    h
                }
            }
            Band::Radius(r) => r.min(h),
            Band::Resolution { resolution_a } => {
                if !(resolution_a.is_finite() && resolution_a > 0.0) {
                    return Err(NnError::msg(format!("resolution must be positive, got {resolution_a}")));
                }
                ((d as f64 * apix_a / resolution_a).floor() as usize).min(h)
            }
        };
        let k0 = -(kmax as i64);
        let k_hi = (kmax as i64).min(h as i64 - 1);
        let nk = (k_hi - k0 + 1) as usize;
        let dk = 1.0 / (d as f64 * apix_a);
        let k_idx: Vec<i64> = (k0..=k_hi).collect();
        let k_a: Vec<f64> = k_idx.iter().map(|&k| k as f64 * dk).collect();
        let k2: Vec<f32> = k_a.iter().map(|k| (k * k) as f32).collect();
        let twopi_k: Vec<f32> = k_a.iter().map(|k| (2.0 * std::f64::consts::PI * k) as f32).collect();
        let km2 = (kmax * kmax) as i64;
        let nky = kmax + 1;
        let row_w: Vec<f32> =
            k_idx[..nky].iter().map(|&k| if k == 0 || k == -(h as i64) { 1.0 } else { 2.0 }).collect();
        let mut disk_host = vec![0f32; nky * nk];
        for (iy, ky) in k_idx[..nky].iter().enumerate() {
            for (ix, kx) in k_idx.iter().enumerate() {
                if ky * ky + kx * kx <= km2 {
                    disk_host[iy * nk + ix] = 1.0;
                }
            }
        }
        // Inverse DFT matrices, W[p, k] = exp(2πi k (p − h)/D)/D, in f64 then f32.
        let w = |p: usize, k: i64| {
            let ph = 2.0 * std::f64::consts::PI * (k as f64) * (p as f64 - h as f64) / d as f64;
            (ph.cos() / d as f64, ph.sin() / d as f64)
        };
        let mut sx = vec![0f32; 2 * nk * 2 * d];
        for (ik, &k) in k_idx.iter().enumerate() {
            for p in 0..d {
                let (re, im) = w(p, k);
                let (re, im) = (re as f32, im as f32);
                sx[ik * 2 * d + p] = re; // row k (G_re), col block re
                sx[ik * 2 * d + d + p] = im; // row k (G_re), col block im
                sx[(nk + ik) * 2 * d + p] = -im; // row k (G_im), col block re
                sx[(nk + ik) * 2 * d + d + p] = re;
            }
        }
        // Rows k_y > 0 are the complex conjugates of rows −k_y: Re of their sum is twice
        // Re of one, so only the half band is synthesised, with the Friedel weights.
        let mut sy = vec![0f32; d * 2 * nky];
        for p in 0..d {
            for (ik, &k) in k_idx[..nky].iter().enumerate() {
                let (re, im) = w(p, k);
                let wt = row_w[ik] as f64;
                sy[p * 2 * nky + ik] = (wt * re) as f32;
                sy[p * 2 * nky + nky + ik] = -(wt * im) as f32;
            }
        }
        let k2y: Vec<f32> = k2[..nky].to_vec();
        let twopi_ky: Vec<f32> = twopi_k[..nky].to_vec();
        let pix: Vec<f32> = (0..d).map(|j| ((j as f64 - h as f64) * apix_a) as f32).collect();
        Ok(Renderer {
            d,
            apix: apix_a,
            kmax,
            k0,
            nk,
            nky,
            device: device.clone(),
            dtype,
            k2: Tensor::from_vec(k2, nk, device)?.to_dtype(dtype)?,
            twopi_k: Tensor::from_vec(twopi_k, nk, device)?.to_dtype(dtype)?,
            k2y: Tensor::from_vec(k2y, nky, device)?.to_dtype(dtype)?,
            twopi_ky: Tensor::from_vec(twopi_ky, nky, device)?.to_dtype(dtype)?,
            row_w: Tensor::from_vec(row_w, nky, device)?.to_dtype(dtype)?,
            disk: Tensor::from_vec(disk_host.clone(), (nky, nk), device)?.to_dtype(dtype)?,
            disk_host,
            k_a,
            synth_x: Tensor::from_vec(sx, (2 * nk, 2 * d), device)?.to_dtype(dtype)?,
            synth_y: Tensor::from_vec(sy, (d, 2 * nky), device)?.to_dtype(dtype)?,
            pix: Tensor::from_vec(pix, d, device)?.to_dtype(dtype)?,
            fft: cryoforge_core::fft::Fft2::new(d),
            rfft: cryoforge_core::fft::Rfft2::new(d),
        })
    }

    pub fn box_size(&self) -> usize {
        self.d
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn apix_a(&self) -> f64 {
        self.apix
    }

    /// Band radius k_max (frequency-index units).
    pub fn kmax(&self) -> usize {
        self.kmax
    }

    /// Number K of band frequencies per axis (k_x = −k_max..k_max, clipped to the grid).
    pub fn band_len(&self) -> usize {
        self.nk
    }

    /// Number K_h = k_max + 1 of half-band rows (k_y = −k_max..0): spectra and transfers
    /// are K_h × K (rows k_y ≤ 0; the others follow from Friedel symmetry).
    pub fn band_rows(&self) -> usize {
        self.nky
    }

    /// Friedel weights of the half-band rows, \[K_h\] (2, or 1 for k_y = 0 and k_y = −D/2).
    pub fn row_weights(&self) -> &Tensor {
        &self.row_w
    }

    /// Centred frequency index of band position i (i in 0..K).
    pub fn band_index(&self, i: usize) -> i64 {
        self.k0 + i as i64
    }

    /// The K×K disk mask (1 inside k_x² + k_y² ≤ k_max²).
    pub fn disk(&self) -> &Tensor {
        &self.disk
    }

    /// Low-pass D×D images (row-major, any count) to exactly this renderer's band — the
    /// frequencies (k_y, k_x) of the K×K band inside the disk — by a centred FFT outside any
    /// autodiff graph (cryoSTAR low-passes the data to the same bandwidth as the
    /// prediction). Run once per data batch.
    pub fn lowpass_images(&self, images: &[f32]) -> Result<Vec<f32>> {
        let d = self.d;
        if !images.len().is_multiple_of(d * d) {
            return Err(NnError::msg(format!(
                "{} values are not a whole number of {d}×{d} images",
                images.len()
            )));
        }
        let h = (d / 2) as i64;
        let (lo, hi) = (self.k0, self.k0 + self.nk as i64 - 1);
        let km2 = (self.kmax * self.kmax) as i64;
        let keep = |k: i64| k >= lo && k <= hi;
        let fft = &self.fft;
        let mut out = vec![0f32; images.len()];
        images.par_chunks_exact(d * d).zip(out.par_chunks_exact_mut(d * d)).for_each_init(
            || (fft.work(), vec![cryoforge_core::fft::C32::default(); d * d]),
            |(work, spec), (img, o)| {
                fft.forward_real(work, img, spec);
                for (i, row) in spec.chunks_exact_mut(d).enumerate() {
                    let ky = i as i64 - h;
                    for (j, v) in row.iter_mut().enumerate() {
                        let kx = j as i64 - h;
                        if !(keep(ky) && keep(kx) && ky * ky + kx * kx <= km2) {
                            *v = cryoforge_core::fft::C32::default();
                        }
                    }
                }
                fft.inverse_real(work, spec, o);
            },
        );
        Ok(out)
    }

    /// Data for [`crate::loss::FourierCorrelationLoss`]: the band part [B, K_h, 2K] of the
    /// centred spectra of D×D `images` (FFT outside the graph, once per batch) and the
    /// population std of each image over all D² pixels, \[B\].
    pub fn band_data(&self, images: &[f32]) -> Result<BandData> {
        let d = self.d;
        if !images.len().is_multiple_of(d * d) {
            return Err(NnError::msg(format!(
                "{} values are not a whole number of {d}×{d} images",
                images.len()
            )));
        }
        let b = images.len() / (d * d);
        let nk = self.nk;
        // Only the band is needed: row transforms, then column FFTs for kₓ = 0..=kx_max;
        // kₓ < 0 from Friedel symmetry, F(k_y, −kₓ) = conj F(−k_y, kₓ).
        let fft = &self.rfft;
        let nky = self.nky;
        let k0 = self.k0;
        let kx_max = k0.unsigned_abs().max((k0 + nk as i64 - 1).unsigned_abs()) as usize;
        let nc = (kx_max + 1).min(d / 2 + 1);
        let mut out = vec![0f32; b * nky * 2 * nk];
        let mut std = vec![0f32; b];
        images
            .par_chunks_exact(d * d)
            .zip(out.par_chunks_exact_mut(nky * 2 * nk))
            .zip(std.par_iter_mut())
            .for_each_init(
                || (fft.work(), vec![cryoforge_core::fft::C32::default(); d * nc]),
                |(work, spec), ((img, o), sd)| {
                    fft.forward_low(work, img, kx_max, spec);
                    // Stored row of a signed k_y (k_y ≡ k_y mod D).
                    let row_of = |ky: i64| ky.rem_euclid(d as i64) as usize;
                    for iy in 0..nky {
                        let ky = k0 + iy as i64;
                        for ix in 0..nk {
                            let kx = k0 + ix as i64;
                            let v = if kx >= 0 {
                                spec[row_of(ky) * nc + kx as usize]
                            } else {
                                spec[row_of(-ky) * nc + (-kx) as usize].conj()
                            };
                            o[iy * 2 * nk + ix] = v.re;
                            o[iy * 2 * nk + nk + ix] = v.im;
                        }
                    }
                    let n = (d * d) as f64;
                    let mean = img.iter().map(|&x| x as f64).sum::<f64>() / n;
                    let var = img.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
                    *sd = var.sqrt() as f32;
                },
            );
        Ok(BandData {
            spec: Tensor::from_vec(out, (b, nky, 2 * nk), &self.device)?.to_dtype(self.dtype)?,
            row_w: self.row_w.clone(),
            std: Tensor::from_vec(std, b, &self.device)?.to_dtype(self.dtype)?,
        })
    }

    /// Transfer tensor [B, K_h, K] = −CTF·disk for each particle (cryoforge's forward model
    /// image = F⁻¹[−CTF·F], CONVENTIONS.md rule 6). Computed on the host, no gradient.
    pub fn ctf_transfer(&self, ctfs: &[CtfParams]) -> Result<Tensor> {
        let (nk, nky) = (self.nk, self.nky);
        let mut out = vec![0f32; ctfs.len() * nky * nk];
        for (b, p) in ctfs.iter().enumerate() {
            p.check().map_err(NnError::msg)?;
            let e = p.evaluator();
            for iy in 0..nky {
                for ix in 0..nk {
                    let m = self.disk_host[iy * nk + ix];
                    if m != 0.0 {
                        out[(b * nky + iy) * nk + ix] = -(e.eval(self.k_a[ix], self.k_a[iy]) as f32) * m;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (ctfs.len(), nky, nk), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Transfer tensor [B, K_h, K] = disk: the projection itself, no CTF.
    pub fn identity_transfer(&self, batch: usize) -> Result<Tensor> {
        Ok(self.disk.unsqueeze(0)?.broadcast_as((batch, self.nky, self.nk))?.contiguous()?)
    }

    /// Residue centres in the image plane minus the shift: (u, v), each [B, R] (Å).
    fn centres(&self, coords: &Tensor, rots: &Tensor, shifts_px: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, _r, three) = coords.dims3()?;
        if three != 3 {
            return Err(NnError::msg(format!("coordinates must be [B, R, 3], got {:?}", coords.dims())));
        }
        if rots.dims() != [b, 3, 3] {
            return Err(NnError::msg(format!("rotations must be [{b}, 3, 3], got {:?}", rots.dims())));
        }
        if shifts_px.dims() != [b, 2] {
            return Err(NnError::msg(format!("shifts must be [{b}, 2], got {:?}", shifts_px.dims())));
        }
        // c = x·Aᵀ for row vectors: only the first two rows of A are needed.
        let a2 = rots.narrow(1, 0, 2)?; // [B, 2, 3]
        let c = coords.matmul(&a2.transpose(1, 2)?)?; // [B, R, 2]
        let t = (shifts_px * self.apix)?; // [B, 2]
        let u = c.narrow(2, 0, 1)?.squeeze(2)?.broadcast_sub(&t.narrow(1, 0, 1)?)?;
        let v = c.narrow(2, 1, 1)?.squeeze(2)?.broadcast_sub(&t.narrow(1, 1, 1)?)?;
        Ok((u, v))
    }

    /// [cos(−2πk·u) | sin(−2πk·u)] for every element of `u` ([B, R]) → [B, R, 2K].
    fn phasors(&self, u: &Tensor, half_rows: bool) -> Result<Tensor> {
        let (b, r) = u.dims2()?;
        let (k_a, twopi_k) =
            if half_rows { (&self.k_a[..self.nky], &self.twopi_ky) } else { (&self.k_a[..], &self.twopi_k) };
        let flat = u.flatten_all()?.contiguous()?;
        let out = if self.device.is_cpu() && u.dtype() == DType::F32 {
            flat.apply_op1(PhasorOp { k_a: k_a.to_vec(), twopi_k: twopi_k.clone() })?
        } else {
            let ph = flat.unsqueeze(1)?.broadcast_mul(&twopi_k.unsqueeze(0)?)?.neg()?;
            Tensor::cat(&[&ph.cos()?, &ph.sin()?], 1)?
        };
        Ok(out.reshape((b, r, 2 * k_a.len()))?)
    }

    /// Band-limited spectrum [B, K_h, 2K] = [F_re | F_im] (rows k_y, columns k_x, both over
    /// the band) of the structures `coords` [B, R, 3] (Å) with amplitudes `amps` (\[R\] or
    /// [B, R]), width `sigma` (a one-element tensor, Å), rotations `rots` [B, 3, 3] and
    /// shifts `shifts_px` [B, 2]. Not yet masked to the disk (the transfer does that).
    pub fn spectrum(
        &self,
        coords: &Tensor,
        amps: &Tensor,
        sigma: &Tensor,
        rots: &Tensor,
        shifts_px: &Tensor,
    ) -> Result<Tensor> {
        if self.device.is_cpu() && self.dtype == DType::F32 && coords.dtype() == DType::F32 {
            self.spectrum_fused(coords, amps, sigma, rots, shifts_px)
        } else {
            self.spectrum_composed(coords, amps, sigma, rots, shifts_px)
        }
    }

    fn amps_br(&self, amps: &Tensor, b: usize, r: usize) -> Result<Tensor> {
        let amp = match amps.rank() {
            1 => amps.unsqueeze(0)?.broadcast_as((b, r))?,
            2 => amps.clone(),
            _ => {
                return Err(NnError::msg(format!("amplitudes must be [R] or [B, R], got {:?}", amps.dims())))
            }
        };
        if amp.dims() != [b, r] {
            return Err(NnError::msg(format!("amplitudes {:?} do not match [{b}, {r}]", amps.dims())));
        }
        Ok(amp)
    }

    /// CPU/f32 path: the phasor blocks of both matmul operands come from fused custom ops
    /// ([`PhasorBlockX`], [`PhasorBlockY`]); the Gaussian envelope and N are applied after
    /// the matmul as the K_h×K outer product N·g(k_y)·g(k_x).
    pub fn spectrum_fused(
        &self,
        coords: &Tensor,
        amps: &Tensor,
        sigma: &Tensor,
        rots: &Tensor,
        shifts_px: &Tensor,
    ) -> Result<Tensor> {
        let (b, r, _) = coords.dims3()?;
        let nk = self.nk;
        let (u, v) = self.centres(coords, rots, shifts_px)?;
        let amp = self.amps_br(amps, b, r)?.contiguous()?;
        let rhs = u.contiguous()?.apply_op1(PhasorBlockX { k_a: self.k_a.clone() })?; // [B, 2R, 2K]
        let lhs = v.contiguous()?.apply_op2(&amp, PhasorBlockY { k_a: self.k_a[..self.nky].to_vec() })?; // [B, K, 2R]
        let p = lhs.matmul(&rhs)?; // [B, K_h, 2K]
        let sig2 = sigma.flatten_all()?.reshape(())?.sqr()?;
        let c = -2.0 * std::f64::consts::PI.powi(2);
        let g = (&self.k2 * c)?.broadcast_mul(&sig2)?.exp()?; // [K]
        let gy = (&self.k2y * c)?.broadcast_mul(&sig2)?.exp()?; // [K_h]
        let norm = (&sig2 * (2.0 * std::f64::consts::PI / (self.apix * self.apix)))?;
        let e = gy.unsqueeze(1)?.broadcast_mul(&g.unsqueeze(0)?)?.broadcast_mul(&norm)?; // [K_h, K]
        let e2 = Tensor::cat(&[&e, &e], 1)?; // [K_h, 2K]
        debug_assert_eq!(e2.dims(), [self.nky, 2 * nk]);
        Ok(p.broadcast_mul(&e2)?)
    }

    /// Generic path (any device, f32 or f64): candle ops only (phasors by [`PhasorOp`] on
    /// the CPU in f32, by `cos`/`sin` elsewhere).
    pub fn spectrum_composed(
        &self,
        coords: &Tensor,
        amps: &Tensor,
        sigma: &Tensor,
        rots: &Tensor,
        shifts_px: &Tensor,
    ) -> Result<Tensor> {
        let (b, r, _) = coords.dims3()?;
        let nk = self.nk;
        let (u, v) = self.centres(coords, rots, shifts_px)?;
        let nky = self.nky;
        let px = self.phasors(&u, false)?;
        let py = self.phasors(&v, true)?;
        let sig2 = sigma.flatten_all()?.reshape(())?.sqr()?;
        let c = -2.0 * std::f64::consts::PI.powi(2);
        let env = (&self.k2 * c)?.broadcast_mul(&sig2)?.exp()?; // [K]
        let env2 = Tensor::cat(&[&env, &env], 0)?; // [2K]
        let envy = (&self.k2y * c)?.broadcast_mul(&sig2)?.exp()?; // [K_h]
        let envy2 = Tensor::cat(&[&envy, &envy], 0)?; // [2K_h]
        let norm = (&sig2 * (2.0 * std::f64::consts::PI / (self.apix * self.apix)))?;
        let amp = match amps.rank() {
            1 => amps.unsqueeze(0)?.broadcast_as((b, r))?,
            2 => amps.clone(),
            _ => {
                return Err(NnError::msg(format!("amplitudes must be [R] or [B, R], got {:?}", amps.dims())))
            }
        };
        if amp.dims() != [b, r] {
            return Err(NnError::msg(format!("amplitudes {:?} do not match [{b}, {r}]", amps.dims())));
        }
        let ex = px.broadcast_mul(&env2)?; // [B, R, 2K]
        let ey = py.broadcast_mul(&envy2)?.broadcast_mul(&amp.unsqueeze(2)?)?.broadcast_mul(&norm)?;
        let (exr, exi) = (ex.narrow(2, 0, nk)?, ex.narrow(2, nk, nk)?);
        let (eyr, eyi) = (ey.narrow(2, 0, nky)?, ey.narrow(2, nky, nky)?);
        let lhs = Tensor::cat(&[&eyr, &eyi], 1)?.transpose(1, 2)?.contiguous()?; // [B, K_h, 2R]
        let bottom = Tensor::cat(&[&exi.neg()?, &exr], 2)?; // [B, R, 2K]
        let rhs = Tensor::cat(&[&ex, &bottom], 1)?.contiguous()?; // [B, 2R, 2K]
        Ok(lhs.matmul(&rhs)?)
    }

    /// Multiply a spectrum [B, K_h, 2K] by a real transfer [B, K_h, K] (e.g. −CTF·disk).
    pub fn apply_transfer(&self, spec: &Tensor, transfer: &Tensor) -> Result<Tensor> {
        let t2 = Tensor::cat(&[transfer, transfer], 2)?;
        Ok(spec.mul(&t2)?)
    }

    /// Real images [B, D, D] = Re(inverse centred DFT) of a band spectrum [B, K_h, 2K].
    pub fn synthesize(&self, spec: &Tensor) -> Result<Tensor> {
        let (b, nky, two_nk) = spec.dims3()?;
        let nk = self.nk;
        if nky != self.nky || two_nk != 2 * nk {
            return Err(NnError::msg(format!(
                "spectrum must be [B, {}, {}], got {:?}",
                self.nky,
                2 * nk,
                spec.dims()
            )));
        }
        let d = self.d;
        let q = spec.reshape((b * nky, 2 * nk))?.matmul(&self.synth_x)?.reshape((b, nky, 2 * d))?;
        let qs = Tensor::cat(&[&q.narrow(2, 0, d)?, &q.narrow(2, d, d)?], 1)?.contiguous()?; // [B, 2K_h, D]
        let l = self.synth_y.unsqueeze(0)?.broadcast_as((b, d, 2 * nky))?.contiguous()?;
        Ok(l.matmul(&qs)?)
    }

    /// Predicted images [B, D, D]: spectrum × transfer, inverse DFT (see module docs).
    pub fn render(
        &self,
        coords: &Tensor,
        amps: &Tensor,
        sigma: &Tensor,
        rots: &Tensor,
        shifts_px: &Tensor,
        transfer: &Tensor,
    ) -> Result<Tensor> {
        let spec = self.spectrum(coords, amps, sigma, rots, shifts_px)?;
        self.synthesize(&self.apply_transfer(&spec, transfer)?)
    }

    /// Real-space path: `img[y, x] = Σ_r a_r·exp(−(y_p − v_r)²/2σ²)·exp(−(x_p − u_r)²/2σ²)`,
    /// point-sampled at `(j − D/2)·apix`, no CTF, no band limit. [B, D, D].
    pub fn render_real_space(
        &self,
        coords: &Tensor,
        amps: &Tensor,
        sigma: &Tensor,
        rots: &Tensor,
        shifts_px: &Tensor,
    ) -> Result<Tensor> {
        let (b, r, _) = coords.dims3()?;
        let (u, v) = self.centres(coords, rots, shifts_px)?;
        let inv = (sigma.flatten_all()?.reshape(())?.sqr()? * 2.0)?.recip()?;
        let pix = self.pix.unsqueeze(0)?.unsqueeze(0)?; // [1, 1, D]
        let g = |c: &Tensor| -> Result<Tensor> {
            Ok(pix.broadcast_sub(&c.unsqueeze(2)?)?.sqr()?.broadcast_mul(&inv)?.neg()?.exp()?)
        };
        let gx = g(&u)?; // [B, R, D]
        let amp = match amps.rank() {
            1 => amps.unsqueeze(0)?.broadcast_as((b, r))?,
            _ => amps.clone(),
        };
        let gy = g(&v)?.broadcast_mul(&amp.unsqueeze(2)?)?;
        Ok(gy.transpose(1, 2)?.contiguous()?.matmul(&gx)?)
    }
}

/// Custom op: u \[N\] (f32, Å) → [N, 2K] = [cos(−2πk_j u) | sin(−2πk_j u)] for the band
/// frequencies k_j (uniformly spaced), evaluated in f64 by the rotation recurrence.
pub struct PhasorOp {
    k_a: Vec<f64>,
    twopi_k: Tensor,
}

impl CustomOp1 for PhasorOp {
    fn name(&self) -> &'static str {
        "cryoforge-phasor"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let u = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("phasor op: f32 input expected"),
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("phasor op: contiguous input expected".into()))?;
        let u = &u[start..end];
        let nk = self.k_a.len();
        let mut out = vec![0f32; u.len() * 2 * nk];
        let (mut c, mut s) = (vec![0f64; nk], vec![0f64; nk]);
        for (row, &un) in out.chunks_exact_mut((2 * nk).max(1)).zip(u) {
            phasor_row(&self.k_a, un as f64, &mut c, &mut s);
            let (re, im) = row.split_at_mut(nk);
            for j in 0..nk {
                re[j] = c[j] as f32;
                im[j] = s[j] as f32;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((u.len(), 2 * nk))))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let nk = self.k_a.len();
        let (c, s) = (res.narrow(1, 0, nk)?, res.narrow(1, nk, nk)?);
        let (gc, gs) = (grad_res.narrow(1, 0, nk)?, grad_res.narrow(1, nk, nk)?);
        // ∂C/∂u = 2πk·S, ∂S/∂u = −2πk·C.
        let g = ((gc * &s)? - (gs * &c)?)?.broadcast_mul(&self.twopi_k.unsqueeze(0)?)?.sum(1)?;
        Ok(Some(g))
    }
}

/// Phasors of frequencies `k_a` (uniform steps) at `u`, in f64 by recurrence:
/// `c[j] + i·s[j] = exp(−2πi k_j u)`.
///
/// The band is a run of integer multiples of dk that contains k = 0 (every band of the
/// renderer does), so one sin/cos per call suffices: exp(−2πi·dk·u) is raised to the
/// positive powers upwards from k = 0 and its conjugate to the negative ones downwards
/// (≤ 64 products each way; the f64 error stays ~1e-12 for |2πku| ≈ 360, far below f32).
fn phasor_row(k_a: &[f64], u: f64, c: &mut [f64], s: &mut [f64]) {
    let nk = k_a.len();
    if nk == 0 {
        return;
    }
    let dk = if nk > 1 { k_a[1] - k_a[0] } else { 0.0 };
    let j0 = if dk != 0.0 { (-k_a[0] / dk).round() } else { -1.0 };
    if !(j0 >= 0.0 && (j0 as usize) < nk && k_a[j0 as usize].abs() <= 1e-9 * dk.abs()) {
        // General band (k = 0 not in it): start from the first frequency.
        let step_ph = -2.0 * std::f64::consts::PI * dk * u;
        let step = (step_ph.cos(), step_ph.sin());
        let start_ph = -2.0 * std::f64::consts::PI * k_a[0] * u;
        let mut p = (start_ph.cos(), start_ph.sin());
        for j in 0..nk {
            c[j] = p.0;
            s[j] = p.1;
            p = (p.0 * step.0 - p.1 * step.1, p.0 * step.1 + p.1 * step.0);
        }
        return;
    }
    let j0 = j0 as usize;
    let (st, ct) = (-2.0 * std::f64::consts::PI * dk * u).sin_cos();
    c[j0] = 1.0;
    s[j0] = 0.0;
    let mut p = (1.0f64, 0.0f64);
    for j in j0 + 1..nk {
        p = (p.0 * ct - p.1 * st, p.0 * st + p.1 * ct);
        c[j] = p.0;
        s[j] = p.1;
    }
    let mut p = (1.0f64, 0.0f64);
    for j in (0..j0).rev() {
        p = (p.0 * ct + p.1 * st, p.1 * ct - p.0 * st);
        c[j] = p.0;
        s[j] = p.1;
    }
}

fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Runs `f` on the f32 values of `t` in row-major order: borrowed in place for a
/// contiguous CPU tensor (no copy of the [B, 2R, 2K] gradients), else from a host copy.
fn with_host_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<T>) -> candle_core::Result<T> {
    {
        let (st, l) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*st, l.contiguous_offsets())
        {
            return f(&v[a..b]);
        }
    }
    f(&host_f32(t)?)
}

/// Custom op: u [B, R] → the right matmul operand [B, 2R, 2K] =
/// `[[C, S], [−S, C]]` with `C + iS = exp(−2πi k u)` (k the band frequencies, Å⁻¹).
pub struct PhasorBlockX {
    k_a: Vec<f64>,
}

impl CustomOp1 for PhasorBlockX {
    fn name(&self) -> &'static str {
        "cryoforge-phasor-block-x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let u = f32_slice(storage, layout, "phasor block x")?;
        let (b, r) = layout.shape().dims2()?;
        let nk = self.k_a.len();
        let w = 2 * nk;
        let out = filled_f32(b * 2 * r * w, 2 * r * w, |bb, o| {
            let (mut c, mut s) = (vec![0f64; nk], vec![0f64; nk]);
            for rr in 0..r {
                phasor_row(&self.k_a, u[bb * r + rr] as f64, &mut c, &mut s);
                let top = rr * w;
                let bot = (r + rr) * w;
                for j in 0..nk {
                    let (cj, sj) = (c[j] as f32, s[j] as f32);
                    o[top + j].write(cj);
                    o[top + nk + j].write(sj);
                    o[bot + j].write(-sj);
                    o[bot + nk + j].write(cj);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, 2 * r, w))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, r) = arg.dims2()?;
        let nk = self.k_a.len();
        let w = 2 * nk;
        let mut gu = vec![0f32; b * r];
        with_host_f32(grad_res, |g| {
            with_host_f32(res, |o| {
                gu.par_chunks_mut(r.max(1)).enumerate().for_each(|(bb, gub)| {
                    for rr in 0..r {
                        let top = (bb * 2 * r + rr) * w;
                        let bot = (bb * 2 * r + r + rr) * w;
                        let mut acc = 0f64;
                        for j in 0..nk {
                            let (cj, sj) = (o[top + j] as f64, o[top + nk + j] as f64);
                            let gc = g[top + j] as f64 + g[bot + nk + j] as f64;
                            let gs = g[top + nk + j] as f64 - g[bot + j] as f64;
                            // ∂C/∂u = 2πk·S, ∂S/∂u = −2πk·C
                            acc += 2.0 * std::f64::consts::PI * self.k_a[j] * (gc * sj - gs * cj);
                        }
                        gub[rr] = acc as f32;
                    }
                });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(gu, (b, r), arg.device())?))
    }
}

/// Custom op: (v [B, R], a [B, R]) → the left matmul operand [B, K, 2R] with
/// `out[b, j, r] = a·C_r(k_j)`, `out[b, j, R + r] = a·S_r(k_j)`, `C + iS = exp(−2πi k v)`.
pub struct PhasorBlockY {
    k_a: Vec<f64>,
}

impl candle_core::CustomOp2 for PhasorBlockY {
    fn name(&self) -> &'static str {
        "cryoforge-phasor-block-y"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let v = f32_slice(s1, l1, "phasor block y")?;
        let a = f32_slice(s2, l2, "phasor block y amplitudes")?;
        let (b, r) = l1.shape().dims2()?;
        if l2.shape().dims() != [b, r] {
            candle_core::bail!("phasor block y: amplitudes {:?} vs centres {:?}", l2.shape(), l1.shape());
        }
        let nk = self.k_a.len();
        let out = filled_f32(b * nk * 2 * r, nk * 2 * r, |bb, o| {
            let (mut c, mut s) = (vec![0f64; nk], vec![0f64; nk]);
            for rr in 0..r {
                let amp = a[bb * r + rr] as f64;
                phasor_row(&self.k_a, v[bb * r + rr] as f64, &mut c, &mut s);
                for j in 0..nk {
                    let row = j * 2 * r;
                    o[row + rr].write((amp * c[j]) as f32);
                    o[row + r + rr].write((amp * s[j]) as f32);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, nk, 2 * r))))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, r) = arg1.dims2()?;
        let nk = self.k_a.len();
        let v = host_f32(arg1)?;
        let a = host_f32(arg2)?;
        let (mut gv, mut ga) = (vec![0f32; b * r], vec![0f32; b * r]);
        with_host_f32(grad_res, |g| {
            gv.par_chunks_mut(r.max(1)).zip(ga.par_chunks_mut(r.max(1))).enumerate().for_each_init(
                || (vec![0f64; nk], vec![0f64; nk]),
                |(c, s), (bb, (gvb, gab))| {
                    for rr in 0..r {
                        phasor_row(&self.k_a, v[bb * r + rr] as f64, c, s);
                        let (mut acc_a, mut acc_v) = (0f64, 0f64);
                        for j in 0..nk {
                            let row = (bb * nk + j) * 2 * r;
                            let (gc, gs) = (g[row + rr] as f64, g[row + r + rr] as f64);
                            acc_a += gc * c[j] + gs * s[j];
                            acc_v += 2.0 * std::f64::consts::PI * self.k_a[j] * (gc * s[j] - gs * c[j]);
                        }
                        gab[rr] = acc_a as f32;
                        gvb[rr] = (acc_v * a[bb * r + rr] as f64) as f32;
                    }
                },
            );
            Ok(())
        })?;
        Ok((
            Some(Tensor::from_vec(gv, (b, r), arg1.device())?),
            Some(Tensor::from_vec(ga, (b, r), arg2.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::phasor_row;

    #[test]
    fn band_data_equals_the_full_centred_spectrum_on_the_band() {
        use super::{Band, Renderer};
        let d = 16;
        let img: Vec<f32> = (0..2 * d * d).map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0).collect();
        let fft = cryoforge_core::fft::Fft2::new(d);
        let mut w = fft.work();
        for band in [Band::Radius(d / 2), Band::Radius(3)] {
            let ren = Renderer::new(d, 1.0, band, &candle_core::Device::Cpu).unwrap();
            let bd = ren.band_data(&img).unwrap();
            let got: Vec<f32> = bd.spec.flatten_all().unwrap().to_vec1().unwrap();
            let (nk, nky) = (ren.nk, ren.nky);
            for (b, im) in img.chunks_exact(d * d).enumerate() {
                let mut full = vec![cryoforge_core::fft::C32::default(); d * d];
                fft.forward_real(&mut w, im, &mut full);
                for iy in 0..nky {
                    for ix in 0..nk {
                        let (ky, kx) = (ren.k0 + iy as i64, ren.k0 + ix as i64);
                        let want = full[(ky + d as i64 / 2) as usize * d + (kx + d as i64 / 2) as usize];
                        let o = (b * nky + iy) * 2 * nk;
                        let (re, im_) = (got[o + ix], got[o + nk + ix]);
                        assert!(
                            (re - want.re).abs() < 1e-4 && (im_ - want.im).abs() < 1e-4,
                            "image {b} k ({ky}, {kx}): {re} {im_} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn phasor_rows_match_direct_evaluation_for_every_band_shape() {
        let dk = 1.0 / (128.0 * 1.5);
        let bands: [Vec<f64>; 3] = [
            (-12..=12).map(|k| k as f64 * dk).collect(), // symmetric low-pass band
            (-64..64).map(|k| k as f64 * dk).collect(),  // full grid: −D/2..D/2−1
            (3..20).map(|k| k as f64 * dk).collect(),    // no k = 0: the general path
        ];
        for k_a in &bands {
            let (mut c, mut s) = (vec![0.0; k_a.len()], vec![0.0; k_a.len()]);
            for u in [-173.2, -3.7, 0.0, 0.4, 58.9, 201.3] {
                phasor_row(k_a, u, &mut c, &mut s);
                for (j, &k) in k_a.iter().enumerate() {
                    let ph = -2.0 * std::f64::consts::PI * k * u;
                    assert!(
                        (c[j] - ph.cos()).abs() < 1e-10 && (s[j] - ph.sin()).abs() < 1e-10,
                        "k {k} u {u}: {} {} vs {} {}",
                        c[j],
                        s[j],
                        ph.cos(),
                        ph.sin()
                    );
                }
            }
        }
    }
}
