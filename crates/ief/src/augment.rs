//! Particle-image augmentations for contrastive pre-training (MoCo v3's two views) and
//! ranker fine-tuning.
//!
//! The authors never published their values (METHODS.md §4); these follow MoCo v3's
//! recipe with the changes particle images need: crops stay large (a particle fills the
//! box; MoCo's 8 % crops would show only noise), in-plane rotation by any angle and flips
//! (particle views are equivalent under both), no colour but brightness/contrast jitter on
//! the 8-bit values, blur and solarisation as MoCo, plus additive noise (the other nuisance
//! of cryo-EM images). One view, in order:
//!
//! ```text
//! 1. affine warp of the resampled S×S image (bilinear, outside filled with the mean):
//!    crop of area fraction a ∈ [crop_min, 1], aspect r ∈ [3/4, 4/3] (log-uniform), centre
//!    anywhere the crop fits; rotation θ ∈ [0, 2π) (p_rotate), flips x (0.5), y (0.5)
//! 2. Gaussian blur σ ∈ [0.1, blur_sigma_max] px            (p_blur)
//! 3. additive white noise of σ_n = u·std(image), u ∈ [0, noise_max]   (p_noise)
//! 4. min–max to 8 bits with floor, /255                     (the released preprocessing)
//! 5. brightness/contrast: v ← (v − ½)·c + ½ + b, c ∈ 1 ± contrast, b ∈ ±brightness (p_jitter)
//! 6. solarisation v ← 1 − v where v > ½                      (p_solarize)
//! 7. normalise with the released mean and std
//! ```
//!
//! Each view is drawn from its own ChaCha8 stream keyed by (seed, step, particle, view), so
//! a batch is the same whatever the thread count and a resumed run continues bit for bit.

use crate::preprocess::{MEAN, STD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Strengths and probabilities; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    pub crop_min: f64,
    pub p_rotate: f64,
    pub p_flip: f64,
    pub p_blur: f64,
    pub blur_sigma_max: f64,
    pub p_noise: f64,
    pub noise_max: f64,
    pub p_jitter: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub p_solarize: f64,
}

impl AugmentConfig {
    /// Pre-training (two strong views).
    pub fn moco() -> AugmentConfig {
        AugmentConfig {
            crop_min: 0.7,
            p_rotate: 1.0,
            p_flip: 0.5,
            p_blur: 0.3,
            blur_sigma_max: 1.0,
            p_noise: 0.3,
            noise_max: 0.3,
            p_jitter: 0.5,
            brightness: 0.1,
            contrast: 0.2,
            p_solarize: 0.0,
        }
    }

    /// Ranker fine-tuning: only what keeps a particle's quality (rotation, flips, a mild
    /// crop); no noise, blur or solarisation, which would turn good particles into junk.
    pub fn ranker() -> AugmentConfig {
        AugmentConfig {
            crop_min: 0.85,
            p_rotate: 1.0,
            p_flip: 0.5,
            p_blur: 0.0,
            blur_sigma_max: 0.0,
            p_noise: 0.0,
            noise_max: 0.0,
            p_jitter: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            p_solarize: 0.0,
        }
    }

    /// No augmentation: the released preprocessing only.
    pub fn none() -> AugmentConfig {
        AugmentConfig { crop_min: 1.0, p_rotate: 0.0, p_flip: 0.0, ..AugmentConfig::ranker() }
    }

    /// `moco`, `ranker` or `none`.
    pub fn preset(name: &str) -> crate::Result<AugmentConfig> {
        match name.to_ascii_lowercase().as_str() {
            "moco" | "strong" => Ok(AugmentConfig::moco()),
            "ranker" | "mild" | "geometric" => Ok(AugmentConfig::ranker()),
            "none" | "off" => Ok(AugmentConfig::none()),
            o => Err(crate::IefError::msg(format!("augmentation {o:?}: expected moco, ranker or none"))),
        }
    }

    pub fn check(&self) -> crate::Result<()> {
        let p = [
            ("p_rotate", self.p_rotate),
            ("p_flip", self.p_flip),
            ("p_blur", self.p_blur),
            ("p_noise", self.p_noise),
            ("p_jitter", self.p_jitter),
            ("p_solarize", self.p_solarize),
        ];
        for (n, v) in p {
            if !(0.0..=1.0).contains(&v) {
                return Err(crate::IefError::msg(format!(
                    "augmentation {n} = {v}: a probability is in [0, 1]"
                )));
            }
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            return Err(crate::IefError::msg(format!(
                "augmentation crop_min = {}: the crop's area fraction is in (0, 1]",
                self.crop_min
            )));
        }
        for (n, v) in [
            ("blur_sigma_max", self.blur_sigma_max),
            ("noise_max", self.noise_max),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(crate::IefError::msg(format!("augmentation {n} = {v}: must be ≥ 0")));
            }
        }
        Ok(())
    }
}

/// The generator of one view.
pub fn view_rng(seed: u64, step: u64, particle: u64, view: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a06e_47a1_0000);
    r.set_stream(particle.wrapping_mul(4).wrapping_add(view));
    r.set_word_pos(step as u128 * 1024);
    r
}

/// Work buffers of one thread.
#[derive(Debug, Clone, Default)]
pub struct Augmenter {
    buf: Vec<f32>,
    tmp: Vec<f32>,
}

impl Augmenter {
    pub fn new() -> Augmenter {
        Augmenter::default()
    }

    /// One augmented, normalised view of the resampled S×S image `img` into `out`.
    pub fn view(
        &mut self,
        img: &[f32],
        s: usize,
        cfg: &AugmentConfig,
        rng: &mut ChaCha8Rng,
        out: &mut [f32],
    ) {
        debug_assert_eq!(img.len(), s * s);
        self.buf.resize(s * s, 0.0);
        self.tmp.resize(s * s, 0.0);
        let (mut sum, mut cnt) = (0f64, 0usize);
        for &v in img {
            if v.is_finite() {
                sum += v as f64;
                cnt += 1;
            }
        }
        let mean = if cnt > 0 { (sum / cnt as f64) as f32 } else { 0.0 };
        // 1. Affine warp: output pixel (u, v) about the centre → input position.
        let area: f64 = rng.gen_range(cfg.crop_min..=1.0);
        let log_r: f64 = rng.gen_range((0.75f64).ln()..=(4.0f64 / 3.0).ln());
        // A full-area crop is the whole image, whatever the drawn aspect.
        let r = if area >= 1.0 { 1.0 } else { log_r.exp() };
        let (w, h) = (((area * r).sqrt()).min(1.0), ((area / r).sqrt()).min(1.0));
        let half = s as f64 / 2.0;
        let cx = half + rng.gen_range(-1.0..=1.0) * (1.0 - w) * half;
        let cy = half + rng.gen_range(-1.0..=1.0) * (1.0 - h) * half;
        let theta = if rng.gen_bool(cfg.p_rotate) { rng.gen_range(0.0..std::f64::consts::TAU) } else { 0.0 };
        let fx = if rng.gen_bool(cfg.p_flip) { -1.0 } else { 1.0 };
        let fy = if rng.gen_bool(cfg.p_flip) { -1.0 } else { 1.0 };
        let (c, sn) = (theta.cos(), theta.sin());
        let identity = w == 1.0 && h == 1.0 && theta == 0.0 && fx > 0.0 && fy > 0.0;
        if identity {
            self.buf.copy_from_slice(img);
        } else {
            for iy in 0..s {
                let y = (iy as f64 + 0.5 - half) * h * fy;
                for ix in 0..s {
                    let x = (ix as f64 + 0.5 - half) * w * fx;
                    let px = c * x - sn * y + cx - 0.5;
                    let py = sn * x + c * y + cy - 0.5;
                    self.buf[iy * s + ix] = bilinear(img, s, px, py, mean);
                }
            }
        }
        // 2. Blur.
        if rng.gen_bool(cfg.p_blur) && cfg.blur_sigma_max > 0.1 {
            let sigma = rng.gen_range(0.1..=cfg.blur_sigma_max);
            gaussian_blur(&mut self.buf, &mut self.tmp, s, sigma);
        }
        // 3. Noise.
        if rng.gen_bool(cfg.p_noise) && cfg.noise_max > 0.0 {
            let m = self.buf.iter().map(|&v| v as f64).sum::<f64>() / (s * s) as f64;
            let var = self.buf.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (s * s) as f64;
            let sd = rng.gen_range(0.0..=cfg.noise_max) * var.sqrt();
            for v in &mut self.buf {
                let n: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng);
                *v += (sd * n) as f32;
            }
        }
        // 4.–7. Quantise, jitter, solarise, normalise.
        let jitter = rng.gen_bool(cfg.p_jitter);
        let (cc, bb) = if jitter {
            (1.0 + rng.gen_range(-1.0..=1.0) * cfg.contrast, rng.gen_range(-1.0..=1.0) * cfg.brightness)
        } else {
            (1.0, 0.0)
        };
        let solarize = rng.gen_bool(cfg.p_solarize);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in &self.buf {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let range = (hi - lo) as f64;
        for (o, &v) in out.iter_mut().zip(&self.buf) {
            let u = if range > 0.0 && v.is_finite() {
                (255.0 * ((v - lo) as f64 / range)).floor().clamp(0.0, 255.0)
            } else {
                0.0
            };
            let mut q = u / 255.0;
            if jitter {
                q = ((q - 0.5) * cc + 0.5 + bb).clamp(0.0, 1.0);
            }
            if solarize && q > 0.5 {
                q = 1.0 - q;
            }
            *o = ((q - MEAN) / STD) as f32;
        }
    }
}

fn bilinear(img: &[f32], s: usize, x: f64, y: f64, fill: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (tx, ty) = ((x - x0) as f32, (y - y0) as f32);
    let (x0, y0) = (x0 as isize, y0 as isize);
    let at = |ix: isize, iy: isize| -> f32 {
        if ix < 0 || iy < 0 || ix >= s as isize || iy >= s as isize {
            fill
        } else {
            let v = img[iy as usize * s + ix as usize];
            if v.is_finite() {
                v
            } else {
                fill
            }
        }
    };
    let a = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
    let b = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
    a * (1.0 - ty) + b * ty
}

/// Separable Gaussian blur of an S×S image in place (mirror boundary, radius ⌈3σ⌉).
pub fn gaussian_blur(img: &mut [f32], tmp: &mut [f32], s: usize, sigma: f64) {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let norm: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / norm).collect();
    let m = |i: isize| -> usize {
        let n = s as isize;
        let mut i = i;
        if n == 1 {
            return 0;
        }
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    for y in 0..s {
        for x in 0..s {
            let mut acc = 0f32;
            for (j, kv) in k.iter().enumerate() {
                acc += kv * img[y * s + m(x as isize + j as isize - r)];
            }
            tmp[y * s + x] = acc;
        }
    }
    for y in 0..s {
        for x in 0..s {
            let mut acc = 0f32;
            for (j, kv) in k.iter().enumerate() {
                acc += kv * tmp[m(y as isize + j as isize - r) * s + x];
            }
            img[y * s + x] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(s: usize) -> Vec<f32> {
        (0..s * s).map(|i| ((i % s) as f32 * 0.3 + (i / s) as f32 * 0.1).sin()).collect()
    }

    #[test]
    fn none_is_the_released_preprocessing() {
        let s = 16;
        let img = ramp(s);
        let mut a = vec![0f32; s * s];
        let mut b = vec![0f32; s * s];
        Augmenter::new().view(&img, s, &AugmentConfig::none(), &mut view_rng(1, 0, 0, 0), &mut a);
        crate::preprocess::quantize_normalize(&img, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn views_are_deterministic_and_differ() {
        let s = 24;
        let img = ramp(s);
        let cfg = AugmentConfig::moco();
        let mut aug = Augmenter::new();
        let mut v = |step, p, k| {
            let mut o = vec![0f32; s * s];
            aug.view(&img, s, &cfg, &mut view_rng(7, step, p, k), &mut o);
            o
        };
        let a = v(3, 5, 0);
        assert_eq!(a, v(3, 5, 0));
        assert_ne!(a, v(3, 5, 1));
        assert_ne!(a, v(4, 5, 0));
        assert!(a.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn a_half_turn_rotates_the_image() {
        // Rotation by π (forced through θ with flips both on): flips in x and y equal a
        // half-turn, so the warp of a full-area crop maps pixel (i, j) to (S−1−i, S−1−j).
        let s = 8;
        let img = ramp(s);
        let (w, h, fx, fy) = (1.0f64, 1.0f64, -1.0f64, -1.0f64);
        let half = s as f64 / 2.0;
        for iy in 0..s {
            for ix in 0..s {
                let x = (ix as f64 + 0.5 - half) * w * fx;
                let y = (iy as f64 + 0.5 - half) * h * fy;
                let v = bilinear(&img, s, x + half - 0.5, y + half - 0.5, 0.0);
                assert!((v - img[(s - 1 - iy) * s + (s - 1 - ix)]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn blur_keeps_the_mean_of_a_constant_and_smooths_a_spike() {
        let s = 9;
        let mut img = vec![2f32; s * s];
        let mut tmp = vec![0f32; s * s];
        gaussian_blur(&mut img, &mut tmp, s, 1.0);
        assert!(img.iter().all(|v| (v - 2.0).abs() < 1e-5));
        let mut img = vec![0f32; s * s];
        img[4 * s + 4] = 1.0;
        gaussian_blur(&mut img, &mut tmp, s, 1.0);
        let total: f32 = img.iter().sum();
        assert!((total - 1.0).abs() < 1e-4 && img[4 * s + 4] < 0.2 && img[4 * s + 5] > 0.05);
    }
}
