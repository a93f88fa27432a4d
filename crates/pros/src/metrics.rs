//! The paper's measures of how much generated particles look like real ones (paper 000,
//! "Computation of KL divergence and SNR").
//!
//! - Histogram KL: each image's pixels clipped to [−4, 4] and binned into 1024 bins;
//!   KL(p_gen,i ‖ p_raw,i) averaged over pairs i (a small ε keeps empty raw bins finite).
//!   Images are standardised first (zero mean, unit variance per image) so that the
//!   clip window means the same for both.
//! - SNR (dB): the paper takes background patches from the micrographs; particle stacks
//!   carry none, so the background of an image is its corners outside the inscribed circle
//!   (pure noise for a particle inside the box). Per image, SNR = (v − v_b) / v_b with v
//!   the variance inside the circle of radius 0.8·D/2 and v_b the corners' variance;
//!   reported as 10·log10 of the mean over images.

/// Probability histogram of `img` (standardised), `bins` bins over [lo, hi] after clipping.
pub fn histogram(img: &[f32], bins: usize, lo: f64, hi: f64) -> Vec<f64> {
    let n = img.len().max(1) as f64;
    let m = img.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (img.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n).sqrt().max(1e-30);
    let mut h = vec![0f64; bins];
    let w = (hi - lo) / bins as f64;
    for &v in img {
        let x = ((v as f64 - m) / sd).clamp(lo, hi);
        let k = (((x - lo) / w) as usize).min(bins - 1);
        h[k] += 1.0;
    }
    h.iter_mut().for_each(|v| *v /= n);
    h
}

/// Mean over pairs of KL(hist(generated_i) ‖ hist(raw_i)); images of `dd` pixels each.
pub fn histogram_kl(generated: &[f32], raw: &[f32], dd: usize) -> f64 {
    const EPS: f64 = 1e-10;
    let n = (generated.len() / dd).min(raw.len() / dd);
    let mut s = 0.0;
    for i in 0..n {
        let g = histogram(&generated[i * dd..(i + 1) * dd], 1024, -4.0, 4.0);
        let r = histogram(&raw[i * dd..(i + 1) * dd], 1024, -4.0, 4.0);
        s += g.iter().zip(&r).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p / (q + EPS)).ln()).sum::<f64>();
    }
    s / n.max(1) as f64
}

/// SNR in dB of D×D images (see the module docs).
pub fn snr_db(images: &[f32], d: usize) -> f64 {
    let dd = d * d;
    let n = images.len() / dd;
    let c = (d as f64 - 1.0) / 2.0;
    let r_out = d as f64 / 2.0;
    let r_in = 0.8 * d as f64 / 2.0;
    let mut ratios = 0.0;
    let mut used = 0usize;
    for i in 0..n {
        let img = &images[i * dd..(i + 1) * dd];
        let (mut bs, mut bs2, mut bn) = (0f64, 0f64, 0f64);
        let (mut s, mut s2, mut sn) = (0f64, 0f64, 0f64);
        for (k, &v) in img.iter().enumerate() {
            let (y, x) = ((k / d) as f64 - c, (k % d) as f64 - c);
            let r = (x * x + y * y).sqrt();
            let v = v as f64;
            if r >= r_out {
                bs += v;
                bs2 += v * v;
                bn += 1.0;
            } else if r <= r_in {
                s += v;
                s2 += v * v;
                sn += 1.0;
            }
        }
        if bn < 2.0 || sn < 2.0 {
            continue;
        }
        let vb = bs2 / bn - (bs / bn).powi(2);
        let vi = s2 / sn - (s / sn).powi(2);
        if vb > 0.0 {
            ratios += (vi - vb) / vb;
            used += 1;
        }
    }
    if used == 0 {
        return f64::NAN;
    }
    10.0 * (ratios / used as f64).max(1e-12).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn identical_histograms_have_zero_kl_and_noise_lower_snr() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let d = 32;
        let noise: Vec<f32> = (0..4 * d * d).map(|_| StandardNormal.sample(&mut rng)).collect();
        assert!(histogram_kl(&noise, &noise, d * d).abs() < 1e-6);
        let other: Vec<f32> = (0..4 * d * d).map(|_| rand::Rng::gen_range(&mut rng, -1.0f32..1.0)).collect();
        assert!(histogram_kl(&other, &noise, d * d) > 0.1);
        // A central disc of signal raises the SNR above pure noise's.
        let mut sig = noise.clone();
        for i in 0..4 {
            for k in 0..d * d {
                let (y, x) = ((k / d) as f64 - 15.5, (k % d) as f64 - 15.5);
                if x * x + y * y < 64.0 {
                    sig[i * d * d + k] += 1.0;
                }
            }
        }
        let (a, b) = (snr_db(&sig, d), snr_db(&noise, d));
        assert!(a > b + 5.0, "signal {a} dB vs noise {b} dB");
    }
}
