//! Settings of cryoPROS training and generation (METHODS.md §3), with presets.

use crate::{ProsError, Result};
use serde::{Deserialize, Serialize};

/// Sizes of the hierarchical VAE. Every size is a parameter; [`ArchConfig::paper`] is the
/// reference code's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchConfig {
    /// Feature channels of every block (paper 64).
    pub nf: usize,
    /// Growth channels of the residual dense blocks (paper 32).
    pub growth: usize,
    /// Latent channels per stochastic layer (paper 16).
    pub z_dim: usize,
    /// Residual blocks per resolution level, finest first (paper [2, 2, 4, 4]). Every level
    /// after the first also has one stochastic layer right after its down-sampling, so the
    /// paper's [2, 2, 4, 4] gives 2 + 3 + 5 + 5 = 15 stochastic layers at 256, 128, 64 and
    /// 32 px. A level with 0 blocks at the finest resolution has no latent there.
    pub nls: Vec<usize>,
    /// Hidden widths of the pose MLP (paper 256, 512); its output is the coarsest level's
    /// S×S (1024 = 32² at 256 px).
    pub pose_hidden: Vec<usize>,
}

impl ArchConfig {
    pub fn paper() -> ArchConfig {
        ArchConfig { nf: 64, growth: 32, z_dim: 16, nls: vec![2, 2, 4, 4], pose_hidden: vec![256, 512] }
    }

    /// The CPU preset: half the width, a quarter of the latent channels, latents only at
    /// D/2 (one layer), D/4 and D/8 (three layers each): 7 stochastic layers.
    pub fn cpu() -> ArchConfig {
        ArchConfig { nf: 32, growth: 16, z_dim: 4, nls: vec![0, 0, 2, 2], pose_hidden: vec![128, 256] }
    }

    pub fn levels(&self) -> usize {
        self.nls.len()
    }

    /// Stochastic layers of level `l`.
    pub fn layers_in_level(&self, l: usize) -> usize {
        self.nls[l] + usize::from(l > 0)
    }

    pub fn n_layers(&self) -> usize {
        (0..self.levels()).map(|l| self.layers_in_level(l)).sum()
    }

    /// Checks the sizes against an image box `d`.
    pub fn check(&self, d: Option<usize>) -> Result<()> {
        if self.nf == 0 || self.growth == 0 || self.z_dim == 0 {
            return Err(ProsError::msg("--nf, --growth and --z-dim must be positive"));
        }
        if !self.nf.is_multiple_of(4) {
            return Err(ProsError::msg(format!(
                "--nf {} must be a multiple of 4 (pixel shuffle of the up-sampling)",
                self.nf
            )));
        }
        if self.nls.is_empty() || self.nls.len() > 6 {
            return Err(ProsError::msg(format!("--nls {:?}: give 1 to 6 levels", self.nls)));
        }
        if self.n_layers() == 0 {
            return Err(ProsError::msg("--nls gives no stochastic layer"));
        }
        if self.pose_hidden.is_empty() || self.pose_hidden.contains(&0) {
            return Err(ProsError::msg("pose MLP widths must be positive"));
        }
        if let Some(d) = d {
            let f = 1usize << (self.levels() - 1);
            if !d.is_multiple_of(f) || d / f < 2 {
                return Err(ProsError::msg(format!(
                    "box {d} px: {} levels need a box divisible by {f} with at least 2 px at the coarsest level",
                    self.levels()
                )));
            }
        }
        Ok(())
    }
}

/// All settings of `pros train` (saved in RUN/run.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProsConfig {
    /// `paper` or `cpu`.
    pub preset: String,
    pub arch: ArchConfig,
    pub batch_size: usize,
    /// Training steps (paper 20,000).
    pub steps: u64,
    /// Adam learning rate (paper 1e-4).
    pub lr: f64,
    /// β of the KL term after the ramp (reference 1e-4) and the ramp's length in steps.
    pub kl_max: f64,
    pub kl_warmup_steps: u64,
    /// Gradient-norm clip and the norm from which a step is skipped (reference 200, 180).
    pub max_grad_norm: f64,
    pub skip_grad_norm: f64,
    /// Particles are multiplied by this on load (reference 0.1).
    pub image_scale: f64,
    /// The particles have the opposite contrast to `cryoforge simulate`'s (dark protein):
    /// the conditioning projection is negated.
    pub invert: bool,
    /// Low-pass (Å) of the reference volume before projection (paper 10 Å).
    pub lowpass_a: f64,
    /// Projections are multiplied by this (resolved from the data by `prepare`: the factor
    /// that gives the conditioning projections the standard deviation of the scaled
    /// particles' signal; `None` before).
    pub proj_scale: Option<f64>,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl ProsConfig {
    /// The reference code's configuration (METHODS.md §3): GPU-sized.
    pub fn paper() -> ProsConfig {
        ProsConfig {
            preset: "paper".into(),
            arch: ArchConfig::paper(),
            batch_size: 8,
            steps: 20_000,
            lr: 1e-4,
            kl_max: 1e-4,
            kl_warmup_steps: 10_000,
            max_grad_norm: 200.0,
            skip_grad_norm: 180.0,
            image_scale: 0.1,
            invert: false,
            lowpass_a: 10.0,
            proj_scale: None,
            seed: 0,
            log_every: 50,
            checkpoint_every: 1000,
        }
    }

    /// Two CPU cores in under an hour: the small network of [`ArchConfig::cpu`] (about
    /// 0.9 s per step of 8 at 64 px, 3.6 s at 128 px on 2 cores, BENCHMARKS.md §11), 3,000
    /// steps at 64 px (see [`ProsConfig::cpu_for_box`] for other boxes) with the β ramp over
    /// the first half, and a learning rate raised to what the shorter run needs.
    pub fn cpu() -> ProsConfig {
        ProsConfig {
            preset: "cpu".into(),
            arch: ArchConfig::cpu(),
            steps: 3000,
            lr: 5e-4,
            kl_warmup_steps: 1500,
            log_every: 25,
            checkpoint_every: 250,
            ..ProsConfig::paper()
        }
    }

    /// [`ProsConfig::cpu`] with its length scaled to the box: 3,000·(64/D)² steps (at least
    /// 500), the same hour of 2 cores at any box.
    pub fn cpu_for_box(d: usize) -> ProsConfig {
        let mut c = ProsConfig::cpu();
        let f = (64.0 / d.max(1) as f64).powi(2);
        c.steps = ((3000.0 * f).round() as u64).max(500);
        c.kl_warmup_steps = c.steps / 2;
        c
    }

    pub fn preset(name: &str) -> Result<ProsConfig> {
        match name {
            "paper" | "reference" => Ok(ProsConfig::paper()),
            "cpu" => Ok(ProsConfig::cpu()),
            _ => Err(ProsError::msg(format!("--preset {name:?}: unknown preset (expected paper or cpu)"))),
        }
    }

    pub fn check(&self, d: Option<usize>) -> Result<()> {
        self.arch.check(d)?;
        if self.batch_size == 0 {
            return Err(ProsError::msg("--batch-size must be positive"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ProsError::msg(format!("--lr {} must be positive", self.lr)));
        }
        if !(self.kl_max >= 0.0 && self.kl_max.is_finite()) {
            return Err(ProsError::msg(format!("--kl-max {} must be ≥ 0", self.kl_max)));
        }
        if !(self.image_scale > 0.0 && self.image_scale.is_finite()) {
            return Err(ProsError::msg(format!("--image-scale {} must be positive", self.image_scale)));
        }
        if !(self.lowpass_a > 0.0 && self.lowpass_a.is_finite()) {
            return Err(ProsError::msg(format!("--lowpass {} Å must be positive", self.lowpass_a)));
        }
        if !(self.max_grad_norm > 0.0 && self.skip_grad_norm > 0.0) {
            return Err(ProsError::msg("gradient clip and skip norms must be positive"));
        }
        Ok(())
    }

    /// β at `step`: linear from 0 to `kl_max` over `kl_warmup_steps`.
    pub fn beta(&self, step: u64) -> f64 {
        if self.kl_warmup_steps == 0 {
            return self.kl_max;
        }
        self.kl_max * (step as f64 / self.kl_warmup_steps as f64).min(1.0)
    }
}

impl Default for ProsConfig {
    fn default() -> Self {
        ProsConfig::paper()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_has_15_stochastic_layers() {
        let a = ArchConfig::paper();
        assert_eq!(a.n_layers(), 15);
        assert_eq!((0..4).map(|l| a.layers_in_level(l)).collect::<Vec<_>>(), vec![2, 3, 5, 5]);
        a.check(Some(256)).unwrap();
        assert!(a.check(Some(100)).is_err());
    }

    #[test]
    fn presets_and_beta() {
        assert!(ProsConfig::preset("nope").unwrap_err().to_string().contains("unknown preset"));
        let c = ProsConfig::paper();
        assert_eq!(c.beta(0), 0.0);
        assert!((c.beta(5000) - 5e-5).abs() < 1e-12);
        assert_eq!(c.beta(20_000), 1e-4);
        ProsConfig::cpu().check(Some(64)).unwrap();
    }
}
