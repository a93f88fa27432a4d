//! CryoSolver's volume decoder (DRGN-AI's hypervolume decoder with the latent given):
//! `V̂(k; z)`, the Fourier transform of the volume at 3D frequency `k` for latent `z`.
//!
//! `k` (cycles per box, the [`cryoforge_sim::project::Projector`] convention: the slice of
//! a particle at pose A holds `V̂(Aᵀ(kₓ, k_y, 0))`) is first folded into the half-space
//! `k_z > 0` (or `k_z = 0, k_y > 0`, or `k_z = k_y = 0, kₓ ≥ 0`) with sign `s = ±1`, encoded
//! by Gaussian random Fourier features `[sin 2π(sk/D)·B, cos 2π(sk/D)·B]` (B: 3 × Q with
//! N(0, (σ·D/2)²) entries, σ = 0.5, Q = 3·D/2, as cryoDRGN's `gaussian` encoding), and
//! concatenated with `z`; an input layer of `hidden` units (ReLU), `layers` residual layers
//! `h ← h + ReLU(W h + b)` and a linear output give (a, b), and `V̂(k) = a + i·s·b`, so that
//! `V̂(−k) = V̂(k)*` holds exactly (a real volume). The paper's setting: three residual
//! layers of 256 units.
//!
//! The input layer is split as `W_pe·pe(k) + W_z·z`: the latent half is one small product
//! per particle, broadcast over its frequencies.

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_core::fft::{Fft3, C32};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Shape of a decoder (stored in the run's config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Box (px) the frequencies are measured in.
    pub box_px: usize,
    /// Latent dimension (the feature width).
    pub zdim: usize,
    pub hidden: usize,
    /// Residual layers after the input layer.
    pub layers: usize,
    /// Number of random Fourier frequencies Q (the encoding has 2Q entries).
    pub pe_freqs: usize,
    /// σ of the frequencies, in units of D/2.
    pub pe_sigma: f64,
    pub seed: u64,
}

impl DecoderConfig {
    /// The paper's decoder for box `d` and latent width `zdim`.
    pub fn new(d: usize, zdim: usize) -> DecoderConfig {
        DecoderConfig { box_px: d, zdim, hidden: 256, layers: 3, pe_freqs: 3 * d / 2, pe_sigma: 0.5, seed: 0 }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.box_px < 8 || self.box_px % 2 == 1 {
            return Err(format!("decoder box {}: even and ≥ 8", self.box_px));
        }
        if self.zdim == 0 || self.hidden == 0 || self.pe_freqs == 0 {
            return Err(format!(
                "decoder: latent {}, hidden {}, frequencies {}: all ≥ 1",
                self.zdim, self.hidden, self.pe_freqs
            ));
        }
        if !(self.pe_sigma > 0.0 && self.pe_sigma.is_finite()) {
            return Err(format!("decoder: σ of the encoding {}: positive", self.pe_sigma));
        }
        Ok(())
    }
}

/// The decoder's parameters (candle variables) and its fixed encoding frequencies.
pub struct Decoder {
    pub cfg: DecoderConfig,
    /// 3 × Q, row-major, in cycles per unit of k/D.
    freqs: Vec<f32>,
    w_pe: Var,
    w_z: Var,
    b_in: Var,
    res: Vec<(Var, Var)>,
    w_out: Var,
    b_out: Var,
}

/// Folds `k` into the decoder's half-space: (s·k, s).
#[inline]
pub fn fold(k: [f32; 3]) -> ([f32; 3], f32) {
    let pos = k[2] > 0.0 || (k[2] == 0.0 && (k[1] > 0.0 || (k[1] == 0.0 && k[0] >= 0.0)));
    if pos {
        (k, 1.0)
    } else {
        ([-k[0], -k[1], -k[2]], -1.0)
    }
}

impl Decoder {
    /// A decoder with PyTorch-style initial weights (uniform ±1/√fan_in).
    pub fn new(cfg: DecoderConfig, dev: &Device) -> Result<Decoder, String> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5017e5);
        let q = cfg.pe_freqs;
        let sd = cfg.pe_sigma * cfg.box_px as f64 / 2.0;
        let normal = Normal::new(0.0, sd).map_err(|e| e.to_string())?;
        let freqs: Vec<f32> = (0..3 * q).map(|_| normal.sample(&mut rng) as f32).collect();
        let e = |x: candle_core::Error| x.to_string();
        let mut uni = |rows: usize, cols: usize, fan_in: usize| -> Result<Var, String> {
            let a = 1.0 / (fan_in as f32).sqrt();
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-a..a)).collect();
            Var::from_vec(v, (rows, cols), dev).map_err(e)
        };
        let (h, fan) = (cfg.hidden, 2 * q + cfg.zdim);
        let w_pe = uni(2 * q, h, fan)?;
        let w_z = uni(cfg.zdim, h, fan)?;
        let b_in = uni(1, h, fan)?;
        let mut res = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            res.push((uni(h, h, h)?, uni(1, h, h)?));
        }
        let w_out = uni(h, 2, h)?;
        let b_out = uni(1, 2, h)?;
        Ok(Decoder { cfg, freqs, w_pe, w_z, b_in, res, w_out, b_out })
    }

    /// Named parameters (optimiser, checkpoints). The frequencies are a parameter that
    /// is never trained (the optimiser leaves out `pe.freqs`).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![
            ("input.w_pe".to_string(), self.w_pe.clone()),
            ("input.w_z".to_string(), self.w_z.clone()),
            ("input.b".to_string(), self.b_in.clone()),
        ];
        for (i, (w, b)) in self.res.iter().enumerate() {
            v.push((format!("res{i}.w"), w.clone()));
            v.push((format!("res{i}.b"), b.clone()));
        }
        v.push(("output.w".to_string(), self.w_out.clone()));
        v.push(("output.b".to_string(), self.b_out.clone()));
        v
    }

    /// Encoding frequencies, 3 × Q row-major.
    pub fn freqs(&self) -> &[f32] {
        &self.freqs
    }

    /// Replaces the frequencies (from a checkpoint).
    pub fn set_freqs(&mut self, f: Vec<f32>) -> Result<(), String> {
        if f.len() != 3 * self.cfg.pe_freqs {
            return Err(format!(
                "encoding frequencies: {} values, the decoder needs {}",
                f.len(),
                3 * self.cfg.pe_freqs
            ));
        }
        self.freqs = f;
        Ok(())
    }

    /// Appends the encoding of the folded frequency `k` (cycles per box) to `out` (2Q).
    #[inline]
    pub fn encode(&self, k: [f32; 3], out: &mut [f32]) {
        let q = self.cfg.pe_freqs;
        let inv = std::f32::consts::TAU / self.cfg.box_px as f32;
        let (fx, rest) = self.freqs.split_at(q);
        let (fy, fz) = rest.split_at(q);
        let (s, c) = out.split_at_mut(q);
        for j in 0..q {
            let ph = (k[0] * fx[j] + k[1] * fy[j] + k[2] * fz[j]) * inv;
            let (sn, cs) = ph.sin_cos();
            s[j] = sn;
            c[j] = cs;
        }
    }

    /// Forward pass: `pe` [B·P, 2Q] (encodings of folded frequencies), `z` [B, zdim];
    /// returns [B·P, 2] = (a, b) before the fold sign.
    pub fn forward(&self, pe: &Tensor, z: &Tensor, per: usize) -> candle_core::Result<Tensor> {
        let b = z.dim(0)?;
        let h = self.cfg.hidden;
        let zt = z.matmul(self.w_z.as_tensor())?.broadcast_add(self.b_in.as_tensor())?; // [B, H]
        let x = pe.matmul(self.w_pe.as_tensor())?.reshape((b, per, h))?;
        let mut x = x.broadcast_add(&zt.unsqueeze(1)?)?.relu()?.reshape((b * per, h))?;
        for (w, bb) in &self.res {
            let y = x.matmul(w.as_tensor())?.broadcast_add(bb.as_tensor())?.relu()?;
            x = (x + y)?;
        }
        x.matmul(self.w_out.as_tensor())?.broadcast_add(self.b_out.as_tensor())
    }

    /// `V̂` at frequencies `k` (cycles per box) for one latent, without gradients, in
    /// chunks of `chunk` frequencies.
    pub fn eval_points(&self, z: &[f32], k: &[[f32; 3]], chunk: usize) -> Result<Vec<C32>, String> {
        let e = |x: candle_core::Error| x.to_string();
        let dev = self.w_pe.device().clone();
        if z.len() != self.cfg.zdim {
            return Err(format!("latent of {} values, the decoder takes {}", z.len(), self.cfg.zdim));
        }
        let zt = Tensor::from_slice(z, (1, z.len()), &dev).map_err(e)?;
        let q2 = 2 * self.cfg.pe_freqs;
        let mut out = Vec::with_capacity(k.len());
        let mut pe = vec![0f32; chunk.max(1) * q2];
        let mut sg = Vec::with_capacity(chunk.max(1));
        for ks in k.chunks(chunk.max(1)) {
            sg.clear();
            for (kk, o) in ks.iter().zip(pe.chunks_exact_mut(q2)) {
                let (f, s) = fold(*kk);
                self.encode(f, o);
                sg.push(s);
            }
            let t = Tensor::from_slice(&pe[..ks.len() * q2], (ks.len(), q2), &dev).map_err(e)?;
            let y = self.forward(&t, &zt, ks.len()).map_err(e)?;
            let y: Vec<f32> =
                y.flatten_all().and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec1()).map_err(e)?;
            for (ab, s) in y.chunks_exact(2).zip(&sg) {
                out.push(C32::new(ab[0], s * ab[1]));
            }
        }
        Ok(out)
    }

    /// The real-space volume (D³, `[z][y][x]`) of latent `z`: `V̂` on the centred grid
    /// within the sphere |k| ≤ `k_max` (cycles per box; the band it was trained on, zero
    /// outside, where the decoder never saw data), inverse 3D transform.
    pub fn volume(&self, z: &[f32], k_max: f64) -> Result<Vec<f32>, String> {
        let d = self.cfg.box_px;
        let h = (d / 2) as isize;
        let r2 = k_max.min(h as f64).powi(2) as f32;
        // Half-space points; their mates are conjugates.
        let mut pts = Vec::new();
        let mut at = Vec::new();
        for zz in 0..d {
            for y in 0..d {
                for x in 0..d {
                    let k = [(x as isize - h) as f32, (y as isize - h) as f32, (zz as isize - h) as f32];
                    if k[0] * k[0] + k[1] * k[1] + k[2] * k[2] > r2 {
                        continue;
                    }
                    if fold(k).1 > 0.0 {
                        pts.push(k);
                        at.push((zz * d + y) * d + x);
                    }
                }
            }
        }
        let vals = self.eval_points(z, &pts, 8192)?;
        let mut spec = vec![C32::default(); d * d * d];
        let mirror = |i: usize| -> Option<usize> {
            let (x, y, zz) = (i % d, (i / d) % d, i / (d * d));
            let m = |c: usize| if c == 0 { None } else { Some(d - c) };
            Some((m(zz)? * d + m(y)?) * d + m(x)?)
        };
        for (&i, v) in at.iter().zip(&vals) {
            spec[i] = *v;
            if let Some(j) = mirror(i) {
                if j != i {
                    spec[j] = v.conj();
                }
            }
        }
        let back = Fft3::new(d).inverse_complex(&spec);
        Ok(back.into_iter().map(|c| c.re).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::Rot3;
    use cryoforge_sim::project::Projector;

    #[test]
    fn fold_pairs_friedel_mates() {
        for k in [[1.0, 2.0, -3.0], [0.0, -1.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 2.0]] {
            let (a, sa) = fold(k);
            let (b, sb) = fold([-k[0], -k[1], -k[2]]);
            if k != [0.0, 0.0, 0.0] {
                assert_eq!(a, b, "{k:?}");
                assert_eq!(sa, -sb, "{k:?}");
            }
        }
    }

    /// Pins the decoder's frequency convention to the projector's (CONVENTIONS rule on
    /// the 3D Fourier layout): the centred 3D FFT of a volume — the grid [`Decoder::volume`]
    /// fills and inverts — equals the projector's slice at the same frequencies.
    #[test]
    fn centred_grid_spectrum_matches_the_projector() {
        let d = 16;
        let h = (d / 2) as f64;
        // A smooth real blob off centre.
        let mut vol = vec![0f32; d * d * d];
        for z in 0..d {
            for y in 0..d {
                for x in 0..d {
                    let r2 = (x as f64 - h - 1.5).powi(2)
                        + (y as f64 - h + 2.0).powi(2)
                        + (z as f64 - h).powi(2) * 0.5;
                    vol[(z * d + y) * d + x] = (-r2 / 6.0).exp() as f32;
                }
            }
        }
        let spec = Fft3::new(d).forward_real(&vol);
        let proj = Projector::new(&vol, d, 2.0, 2.0).unwrap();
        let pts: Vec<[f32; 2]> = vec![[1.0, 0.0], [0.0, 2.0], [2.0, -1.0], [3.0, 1.0]];
        let mut out = vec![C32::default(); pts.len()];
        proj.project_points(&Rot3::IDENTITY, &pts, &mut out).unwrap();
        for (p, o) in pts.iter().zip(&out) {
            let (x, y) = ((p[0] as f64 + h) as usize, (p[1] as f64 + h) as usize);
            let g = spec[(d / 2 * d + y) * d + x];
            // Same phase; amplitudes within the projector's gridding correction (which
            // over-corrects a little exactly on grid points).
            assert!((g - o).norm() < 0.1 * g.norm(), "k {p:?}: grid {g} projector {o}");
            assert!((g.arg() - o.arg()).abs() < 0.06, "k {p:?}: grid {g} projector {o}");
        }
    }

    #[test]
    fn volume_is_real_and_forward_is_differentiable() {
        let dev = Device::Cpu;
        let mut cfg = DecoderConfig::new(12, 4);
        cfg.hidden = 16;
        let dec = Decoder::new(cfg, &dev).unwrap();
        let z = [0.1f32, -0.3, 0.7, 0.0];
        let v = dec.volume(&z, 6.0).unwrap();
        assert_eq!(v.len(), 12 * 12 * 12);
        // The inverse of a Hermitian spectrum has no imaginary part: check through the
        // forward transform of the real result at one frequency.
        let pts = [[1.0f32, 2.0, 3.0]];
        let direct = dec.eval_points(&z, &pts, 16).unwrap()[0];
        let spec = Fft3::new(12).forward_real(&v);
        let g = spec[((6 + 3) * 12 + 6 + 2) * 12 + 6 + 1];
        assert!((g - direct).norm() < 1e-3 * direct.norm().max(1e-3), "{g} vs {direct}");
        let pe = Tensor::zeros((3, 2 * dec.cfg.pe_freqs), DType::F32, &dev).unwrap();
        let zt = Tensor::from_slice(&z, (1, 4), &dev).unwrap();
        let y = dec.forward(&pe, &zt, 3).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(dec.w_z.as_tensor()).is_some());
    }
}
