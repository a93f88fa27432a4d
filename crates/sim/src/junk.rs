//! Junk particles for `simulate --junk`: the picks a real dataset holds besides good
//! particles, so that 2D classification, the ranker and CryoWizard can be tested on them.
//!
//! - `noise`: an empty pick: noise only, at the dataset's noise level.
//! - `offcentre`: the particle displaced by 25–40 % of the box from the centre (a pick on
//!   the particle's edge or on a neighbour).
//! - `aggregate`: 3–5 copies at independent random poses, clustered: copy j ≥ 1 sits at
//!   the spacing (default 1.5 × the particle’s radius) from a random earlier copy, in a
//!   random in-plane direction; the clump's centroid is the pick's centre.
//! - `ice`: a smooth contamination blob field (three to six broad Gaussians of σ = 8–20 %
//!   of the box, random signs) three times the signal's standard deviation, and no
//!   particle.
//!
//! A junk particle's pose in the STAR/truth is the pose it was drawn with (meaningless for
//! noise and ice). Draws come from the particle's own random stream, so output does not
//! depend on the thread count.

use crate::sampling::particle_rng;
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::Rot3;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Random-stream purpose of the junk draws.
pub const RNG_JUNK: u64 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JunkKind {
    Noise,
    Offcentre,
    Aggregate,
    Ice,
    /// A particle on a carbon edge: a blurred step of 3× the signal's standard deviation
    /// across the box, at most a quarter box from the centre.
    Carbon,
    /// A particle imaged at a defocus 2–4× the one its metadata states (a failed CTF fit).
    #[serde(rename = "wrong-defocus")]
    WrongDefocus,
}

impl JunkKind {
    /// The default kinds of `--junk`.
    pub const ALL: [JunkKind; 4] = [JunkKind::Noise, JunkKind::Offcentre, JunkKind::Aggregate, JunkKind::Ice];
    /// Every kind (`--junk-kinds all`).
    pub const EVERY: [JunkKind; 6] = [
        JunkKind::Noise,
        JunkKind::Offcentre,
        JunkKind::Aggregate,
        JunkKind::Ice,
        JunkKind::Carbon,
        JunkKind::WrongDefocus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JunkKind::Noise => "noise",
            JunkKind::Offcentre => "offcentre",
            JunkKind::Aggregate => "aggregate",
            JunkKind::Ice => "ice",
            JunkKind::Carbon => "carbon",
            JunkKind::WrongDefocus => "wrong-defocus",
        }
    }

    pub fn parse(s: &str) -> Option<JunkKind> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        JunkKind::EVERY.into_iter().find(|k| k.name() == s)
    }

    /// The defocus factor of a wrong-defocus particle (2–4).
    pub fn defocus_factor(seed: u64, i: usize) -> f64 {
        let mut r = particle_rng(seed, i as u64, RNG_JUNK + 400);
        2.0 + 2.0 * r.gen::<f64>()
    }
}

/// How much junk, of which kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JunkSettings {
    /// Fraction of the particles that are junk, in [0, 1).
    pub fraction: f64,
    /// Kinds drawn with equal probability.
    pub kinds: Vec<JunkKind>,
    /// Distance between neighbouring copies of an aggregate (Å); `None`: 30 % of the box.
    pub spacing_a: Option<f64>,
}

impl Default for JunkSettings {
    fn default() -> Self {
        JunkSettings { fraction: 0.0, kinds: JunkKind::ALL.to_vec(), spacing_a: None }
    }
}

impl JunkSettings {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.fraction) {
            return Err(format!("--junk {}: a fraction in [0, 1)", self.fraction));
        }
        if self.fraction > 0.0 && self.kinds.is_empty() {
            return Err(
                "--junk-kinds: give at least one of noise, offcentre, aggregate, ice, carbon, wrong-defocus"
                    .into(),
            );
        }
        if let Some(s) = self.spacing_a {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("junk aggregate spacing {s} Å: must be > 0"));
            }
        }
        Ok(())
    }

    /// The kind of junk particle `i` is, if any.
    pub fn draw(&self, seed: u64, i: usize) -> Option<JunkKind> {
        if self.fraction <= 0.0 || self.kinds.is_empty() {
            return None;
        }
        let mut r = particle_rng(seed, i as u64, RNG_JUNK);
        if r.gen::<f64>() < self.fraction {
            Some(self.kinds[r.gen_range(0..self.kinds.len())])
        } else {
            None
        }
    }
}

/// The displacement (px) of an off-centre pick: 25–40 % of the box in a random direction.
pub fn offcentre_shift_px(seed: u64, i: usize, box_px: usize) -> [f64; 2] {
    let mut r = particle_rng(seed, i as u64, RNG_JUNK + 100);
    let rad = (0.25 + 0.15 * r.gen::<f64>()) * box_px as f64;
    let a = r.gen::<f64>() * std::f64::consts::TAU;
    [rad * a.cos(), rad * a.sin()]
}

/// The copies of an aggregate beyond the first: (Haar-uniform rotation, in-plane offset in
/// px of the copy), 2–4 of them, and the offset of the first copy: the clump is centred on
/// the pick, as a picker centres a blob, so no copy need sit at the box centre.
pub fn aggregate_copies(seed: u64, i: usize, spacing_px: f64) -> (Vec<(Rot3, [f64; 2])>, [f64; 2]) {
    let mut r = particle_rng(seed, i as u64, RNG_JUNK + 200);
    let extra = r.gen_range(2..=4);
    let mut centres: Vec<[f64; 2]> = vec![[0.0, 0.0]];
    let mut out = Vec::with_capacity(extra);
    for _ in 0..extra {
        let from = centres[r.gen_range(0..centres.len())];
        let a = r.gen::<f64>() * std::f64::consts::TAU;
        let c = [from[0] + spacing_px * a.cos(), from[1] + spacing_px * a.sin()];
        centres.push(c);
        out.push((uniform_rotation(r.gen(), r.gen(), r.gen()), c));
    }
    let m = centres.len() as f64;
    let g = [centres.iter().map(|c| c[0]).sum::<f64>() / m, centres.iter().map(|c| c[1]).sum::<f64>() / m];
    for o in out.iter_mut() {
        o.1 = [o.1[0] - g[0], o.1[1] - g[1]];
    }
    (out, [-g[0], -g[1]])
}

/// Add a smooth ice/contamination field of standard deviation ≈ `amplitude` to `img`.
pub fn add_ice(seed: u64, i: usize, d: usize, amplitude: f32, img: &mut [f32]) {
    let mut r = particle_rng(seed, i as u64, RNG_JUNK + 300);
    let blobs = r.gen_range(3..=6);
    let mut field = vec![0f32; d * d];
    for _ in 0..blobs {
        let cx = r.gen::<f64>() * d as f64;
        let cy = r.gen::<f64>() * d as f64;
        let s = (0.08 + 0.12 * r.gen::<f64>()) * d as f64;
        let sign = if r.gen::<bool>() { 1.0 } else { -1.0 };
        let inv = 1.0 / (2.0 * s * s);
        for y in 0..d {
            for x in 0..d {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                field[y * d + x] += (sign * (-(dx * dx + dy * dy) * inv).exp()) as f32;
            }
        }
    }
    let m = field.iter().map(|&v| v as f64).sum::<f64>() / field.len() as f64;
    let var = field.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / field.len() as f64;
    let k = if var > 0.0 { amplitude as f64 / var.sqrt() } else { 0.0 };
    for (o, f) in img.iter_mut().zip(&field) {
        *o += ((*f as f64 - m) * k) as f32;
    }
}

/// Add a carbon edge of standard deviation ≈ `amplitude` to `img`: a step (smoothed over
/// 2 % of the box) along a random line within a quarter box of the centre.
pub fn add_carbon_edge(seed: u64, i: usize, d: usize, amplitude: f32, img: &mut [f32]) {
    let mut r = particle_rng(seed, i as u64, RNG_JUNK + 500);
    let a = r.gen::<f64>() * std::f64::consts::TAU;
    let off = (r.gen::<f64>() - 0.5) * 0.5 * d as f64;
    let w = (0.02 * d as f64).max(0.5);
    let (nx, ny) = (a.cos(), a.sin());
    let c = d as f64 / 2.0;
    let field: Vec<f64> = (0..d * d)
        .map(|k| {
            let (x, y) = ((k % d) as f64 - c, (k / d) as f64 - c);
            0.5 * (1.0 + ((x * nx + y * ny - off) / w).tanh())
        })
        .collect();
    let m = field.iter().sum::<f64>() / field.len() as f64;
    let var = field.iter().map(|v| (v - m).powi(2)).sum::<f64>() / field.len() as f64;
    let k = if var > 0.0 { amplitude as f64 / var.sqrt() } else { 0.0 };
    for (o, f) in img.iter_mut().zip(&field) {
        *o += ((f - m) * k) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_fraction_and_kinds() {
        let s = JunkSettings { fraction: 0.3, ..Default::default() };
        let kinds: Vec<_> = (0..20000).filter_map(|i| s.draw(7, i)).collect();
        let f = kinds.len() as f64 / 20000.0;
        assert!((f - 0.3).abs() < 0.015, "fraction {f}");
        for k in JunkKind::ALL {
            let c = kinds.iter().filter(|&&x| x == k).count() as f64 / kinds.len() as f64;
            assert!((c - 0.25).abs() < 0.03, "{k:?} {c}");
        }
        assert_eq!(s.draw(7, 11), s.draw(7, 11));
        assert!(JunkSettings::default().draw(7, 3).is_none());
        assert!(JunkSettings { fraction: 1.0, ..Default::default() }.check().is_err());
    }

    #[test]
    fn geometry() {
        for i in 0..100 {
            let s = offcentre_shift_px(1, i, 64);
            let r = s[0].hypot(s[1]);
            assert!((16.0..=25.7).contains(&r), "{r}");
            let (c, first) = aggregate_copies(1, i, 10.0);
            assert!((2..=4).contains(&c.len()));
            let mut g = first;
            for (q, o) in &c {
                assert!(q.check().is_ok());
                assert!(o[0].hypot(o[1]) <= 30.0 + 1e-9);
                g = [g[0] + o[0], g[1] + o[1]];
            }
            // The clump is centred on the pick.
            assert!(g[0].abs() < 1e-9 && g[1].abs() < 1e-9);
        }
        let mut img = vec![0f32; 32 * 32];
        add_ice(1, 0, 32, 2.0, &mut img);
        let v = img.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / img.len() as f64;
        assert!((v.sqrt() - 2.0).abs() < 1e-3, "{v}");
        for i in 0..20 {
            let mut img = vec![0f32; 32 * 32];
            add_carbon_edge(1, i, 32, 2.0, &mut img);
            let v = img.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / img.len() as f64;
            assert!((v.sqrt() - 2.0).abs() < 1e-3, "{v}");
            // A step: the two sides differ by far more than the smoothing.
            let (lo, hi) = img.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            assert!(hi - lo > 3.0, "{lo} {hi}");
            let f = JunkKind::defocus_factor(1, i);
            assert!((2.0..=4.0).contains(&f));
        }
        assert_eq!(JunkKind::parse("wrong_defocus"), Some(JunkKind::WrongDefocus));
        assert_eq!(JunkKind::parse("Carbon"), Some(JunkKind::Carbon));
    }
}
