//! Random poses, shifts and CTFs for simulated particles.
//!
//! Every particle draws from its own ChaCha8 stream seeded by `(seed, index)`, so a
//! dataset is identical whatever the thread count or batch size.
//!
//! The viewing direction of a pose A (the projection axis in the model frame) is
//! `Aᵀ·ẑ`, the third row of A; its angle to the model's z axis is RELION's tilt.

use cryoforge_core::rotation::{uniform_rotation, EulerRelion, Rot3};
use cryoforge_core::CtfParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The random stream of particle `i` for one `purpose` (poses, noise, …) of a dataset
/// seed: a ChaCha8 key per (seed, purpose) and the particle index as the stream id.
pub fn particle_rng(seed: u64, i: u64, purpose: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.set_stream(i);
    r
}

/// How simulated viewing directions are distributed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoseDistribution {
    /// Fraction of particles drawn uniformly inside a cone about +z (0 = uniform).
    pub po_fraction: f64,
    /// Half-angle of that cone, degrees.
    pub po_cone_deg: f64,
    /// Keep only this fraction of particles whose tilt lies within `equator_band_deg` of 90°.
    pub side_view_retention: f64,
    pub equator_band_deg: f64,
    /// Reject every particle whose tilt lies within this many degrees of 90°.
    pub missing_cone_deg: f64,
}

impl Default for PoseDistribution {
    fn default() -> Self {
        PoseDistribution {
            po_fraction: 0.0,
            po_cone_deg: 30.0,
            side_view_retention: 1.0,
            equator_band_deg: 10.0,
            missing_cone_deg: 0.0,
        }
    }
}

impl PoseDistribution {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.po_fraction) {
            return Err(format!("--po-fraction {} must lie in [0, 1]", self.po_fraction));
        }
        if !(0.0..=180.0).contains(&self.po_cone_deg) {
            return Err(format!("--po-cone {} must lie in [0, 180] degrees", self.po_cone_deg));
        }
        if !(0.0..=1.0).contains(&self.side_view_retention) {
            return Err(format!("--side-view-retention {} must lie in [0, 1]", self.side_view_retention));
        }
        if !(0.0..90.0).contains(&self.missing_cone_deg) {
            return Err(format!("--missing-cone {} must lie in [0, 90) degrees", self.missing_cone_deg));
        }
        if !(0.0..=90.0).contains(&self.equator_band_deg) {
            return Err(format!("--equator-band {} must lie in [0, 90] degrees", self.equator_band_deg));
        }
        if self.side_view_retention == 0.0 && self.equator_band_deg >= 90.0 {
            return Err("--side-view-retention 0 with --equator-band 90 rejects every particle".into());
        }
        Ok(())
    }

    /// Draw one pose (rejection sampling for the side-view and missing-cone filters).
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Rot3 {
        for _ in 0..100_000 {
            let r = if self.po_fraction > 0.0 && rng.gen::<f64>() < self.po_fraction {
                // Uniform on the spherical cap tilt ≤ cone: cos(tilt) uniform in [cos c, 1].
                let c = self.po_cone_deg.to_radians().cos();
                let ct: f64 = 1.0 - rng.gen::<f64>() * (1.0 - c);
                let tilt = ct.clamp(-1.0, 1.0).acos().to_degrees();
                EulerRelion::new(rng.gen::<f64>() * 360.0 - 180.0, tilt, rng.gen::<f64>() * 360.0 - 180.0)
                    .to_rot()
            } else {
                uniform_rotation(rng.gen(), rng.gen(), rng.gen())
            };
            let tilt = r.0[2][2].clamp(-1.0, 1.0).acos().to_degrees();
            let off_equator = (tilt - 90.0).abs();
            if off_equator < self.missing_cone_deg {
                continue;
            }
            if off_equator < self.equator_band_deg
                && self.side_view_retention < 1.0
                && rng.gen::<f64>() >= self.side_view_retention
            {
                continue;
            }
            return r;
        }
        // Unreachable for validated settings (acceptance ≥ 1e-5); fall back to a top view.
        Rot3::IDENTITY
    }
}

/// Tilt (degrees) of a pose: the angle between its viewing direction and the model z axis.
pub fn tilt_deg(r: &Rot3) -> f64 {
    r.0[2][2].clamp(-1.0, 1.0).acos().to_degrees()
}

/// How simulated CTFs are distributed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtfDistribution {
    pub defocus_min_a: f64,
    pub defocus_max_a: f64,
    /// dfU − dfV drawn uniformly in [0, astig].
    pub astigmatism_a: f64,
    pub voltage_kv: f64,
    pub cs_mm: f64,
    pub amp_contrast: f64,
    pub bfactor_a2: f64,
}

impl Default for CtfDistribution {
    fn default() -> Self {
        CtfDistribution {
            defocus_min_a: 10000.0,
            defocus_max_a: 25000.0,
            astigmatism_a: 200.0,
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amp_contrast: 0.1,
            bfactor_a2: 0.0,
        }
    }
}

impl CtfDistribution {
    pub fn check(&self) -> Result<(), String> {
        if !(self.defocus_min_a.is_finite() && self.defocus_max_a >= self.defocus_min_a) {
            return Err(format!("--defocus-a {},{}: need MIN ≤ MAX", self.defocus_min_a, self.defocus_max_a));
        }
        if self.astigmatism_a < 0.0 {
            return Err("--astig-a must not be negative".into());
        }
        let p =
            CtfParams { voltage_kv: self.voltage_kv, amp_contrast: self.amp_contrast, ..Default::default() };
        p.check()
    }

    pub fn sample(&self, rng: &mut ChaCha8Rng) -> CtfParams {
        let u = self.defocus_min_a + rng.gen::<f64>() * (self.defocus_max_a - self.defocus_min_a);
        let a = rng.gen::<f64>() * self.astigmatism_a;
        CtfParams {
            defocus_u_a: u,
            defocus_v_a: u - a,
            defocus_angle_deg: rng.gen::<f64>() * 360.0 - 180.0,
            voltage_kv: self.voltage_kv,
            cs_mm: self.cs_mm,
            amp_contrast: self.amp_contrast,
            phase_shift_deg: 0.0,
            bfactor_a2: self.bfactor_a2,
            scale: 1.0,
        }
    }
}

/// In-plane shift (Å) uniform in the square [−T, T]².
pub fn sample_shift_a(rng: &mut ChaCha8Rng, max_a: f64) -> [f64; 2] {
    if max_a <= 0.0 {
        return [0.0, 0.0];
    }
    [(rng.gen::<f64>() * 2.0 - 1.0) * max_a, (rng.gen::<f64>() * 2.0 - 1.0) * max_a]
}

/// Index drawn from unnormalised weights.
pub fn sample_weighted(rng: &mut ChaCha8Rng, cumulative: &[f64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let u = rng.gen::<f64>() * total;
    cumulative.partition_point(|&c| c <= u).min(cumulative.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frac(n: usize, d: &PoseDistribution, pred: impl Fn(f64) -> bool) -> f64 {
        let mut k = 0;
        for i in 0..n {
            let mut r = particle_rng(9, i as u64, 0);
            if pred(tilt_deg(&d.sample(&mut r))) {
                k += 1;
            }
        }
        k as f64 / n as f64
    }

    fn within_binomial(p_hat: f64, p: f64, n: usize) -> bool {
        (p_hat - p).abs() <= 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-12
    }

    #[test]
    fn preferred_orientation_fraction() {
        let n = 20000;
        let d = PoseDistribution { po_fraction: 0.6, po_cone_deg: 36.0, ..Default::default() };
        let c = 36f64.to_radians().cos();
        let want = 0.6 + 0.4 * (1.0 - c) / 2.0;
        let got = frac(n, &d, |t| t <= 36.0);
        assert!(within_binomial(got, want, n), "{got} vs {want}");
    }

    #[test]
    fn uniform_tilt_follows_sine_law() {
        let n = 20000;
        let d = PoseDistribution::default();
        // P(tilt ≤ 60°) = (1 − cos 60°)/2 = 0.25.
        assert!(within_binomial(frac(n, &d, |t| t <= 60.0), 0.25, n));
    }

    #[test]
    fn missing_cone_empties_the_equator() {
        let n = 5000;
        let d = PoseDistribution { missing_cone_deg: 20.0, ..Default::default() };
        assert_eq!(frac(n, &d, |t| (t - 90.0).abs() < 20.0), 0.0);
    }

    #[test]
    fn side_view_retention_fraction() {
        let n = 20000;
        let d = PoseDistribution { side_view_retention: 0.25, equator_band_deg: 30.0, ..Default::default() };
        let p = 30f64.to_radians().sin(); // uniform P(|tilt − 90°| < 30°)
        let want = 0.25 * p / (0.25 * p + 1.0 - p);
        let got = frac(n, &d, |t| (t - 90.0).abs() < 30.0);
        assert!(within_binomial(got, want, n), "{got} vs {want}");
    }

    #[test]
    fn streams_are_independent_of_order() {
        let a: f64 = particle_rng(1, 5, 0).gen();
        let _ = particle_rng(1, 4, 0).gen::<f64>();
        let b: f64 = particle_rng(1, 5, 0).gen();
        assert_eq!(a, b);
        let c: f64 = particle_rng(1, 6, 0).gen();
        assert_ne!(a, c);
    }
}
