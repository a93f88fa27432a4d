//! Settings of a cryoSPHERE run, with the reference implementation's defaults
//! (METHODS.md §2). Serialised as the `[settings]` table of RUN/run.toml and read from
//! `--config FILE` (any subset of the fields; unknown fields are an error).

use serde::{Deserialize, Serialize};

use crate::{Result, SphereError};

/// Where segment k's rotation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationCentre {
    /// (0, 0, 0) Å, the box centre, as the reference implementation does.
    Origin,
    /// The membership-weighted centroid of the segment's reference positions (default:
    /// decouples rotation from translation; see BENCHMARKS.md "cryoSPHERE").
    Centroid,
}

/// How the decoder's 3 rotation outputs v of a segment become a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationParam {
    /// Unit-real-part quaternion (1, v), normalised: angle 2·atan|v|, axis v/|v| (reference).
    Quaternion,
    /// Rotation vector: angle |v|, axis v/|v|.
    AxisAngle,
}

/// Which residue pairs the clash loss looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClashMode {
    /// Every non-consecutive pair (O(R²) per image; small proteins).
    Full,
    /// Pairs whose reference distance is 4–10 Å (large complexes).
    Light,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SphereConfig {
    /// Latent dimension.
    pub zdim: usize,
    /// Segments per part (per chain by default).
    pub n_segm: usize,
    /// Membership softmax temperature τ (reference 0.05).
    pub tau: f64,
    pub batch_size: usize,
    /// Epochs (None: scaled with the dataset, see [`SphereConfig::resolved_epochs`]).
    pub epochs: Option<u64>,
    /// Optimiser steps instead of epochs (overrides `epochs`).
    pub steps: Option<u64>,
    /// Learning rate of the encoder and decoder (Adam).
    pub lr: f64,
    /// Learning rate of the segmentation parameters.
    pub lr_segmentation: f64,
    /// L2 penalty λ·‖W‖² on the network weights.
    pub l2: f64,
    pub encoder_hidden: Vec<usize>,
    pub decoder_hidden: Vec<usize>,
    /// LeakyReLU negative slope.
    pub leaky_slope: f64,
    /// Gaussian width of a residue (Å).
    pub sigma_a: f64,
    /// Low-pass both prediction and data to this resolution (Å); None: the full band.
    pub lowpass_a: Option<f64>,
    pub rotation_centre: RotationCentre,
    pub rotation: RotationParam,
    /// Prior std of the segment means (residues).
    pub prior_mean_std: f64,
    /// Prior mean of the segment stds (None: part length / segments).
    pub prior_std_mean: Option<f64>,
    pub prior_std_std: f64,
    pub prior_prop_mean: f64,
    pub prior_prop_std: f64,
    /// Maximum weight of KL(z) (after the linear ramp), before division by D².
    pub kl_latent: f64,
    /// Maximum weight of the KL of the segment means and stds.
    pub kl_segmentation: f64,
    /// Maximum weight of the KL of the proportions (cyclical schedule).
    pub kl_proportions: f64,
    /// Ramp length of the linear KL schedules as a fraction of the training steps.
    pub kl_ramp_fraction: f64,
    pub kl_cycles: u64,
    pub kl_cycle_ratio: f64,
    /// Divide the KL terms by D² (reference).
    pub kl_per_pixel: bool,
    /// Continuity loss weight (0 = off; reference optional value 0.1).
    pub continuity: f64,
    /// Clash loss weight (0 = off; reference optional value 0.1).
    pub clash: f64,
    pub clash_mode: ClashMode,
    pub clash_cutoff_a: f64,
    /// Fraction of the particles used to estimate the image normalisation std.
    pub fstd_fraction: f64,
    /// Particles are protein-dark (flip the sign).
    pub invert: bool,
    pub seed: u64,
    /// Metrics row every this many steps.
    pub log_every: u64,
    /// Checkpoint every this many epochs.
    pub checkpoint_every: u64,
    /// Cache the images in memory when they take at most this many MiB.
    pub cache_mib: usize,
}

impl Default for SphereConfig {
    fn default() -> Self {
        SphereConfig {
            zdim: 8,
            n_segm: 20,
            tau: 0.05,
            batch_size: 128,
            epochs: None,
            steps: None,
            lr: 3e-5,
            lr_segmentation: 3e-4,
            l2: 1e-6,
            encoder_hidden: vec![512, 256, 64, 64],
            decoder_hidden: vec![512, 512],
            leaky_slope: 0.01,
            sigma_a: 2.0,
            lowpass_a: None,
            rotation_centre: RotationCentre::Centroid,
            rotation: RotationParam::Quaternion,
            prior_mean_std: 10.0,
            prior_std_mean: None,
            prior_std_std: 10.0,
            prior_prop_mean: 0.0,
            prior_prop_std: 1.0,
            kl_latent: 1.0,
            kl_segmentation: 1.0,
            kl_proportions: 1.0,
            kl_ramp_fraction: 0.5,
            kl_cycles: 5,
            kl_cycle_ratio: 0.5,
            kl_per_pixel: true,
            continuity: 0.0,
            clash: 0.0,
            clash_mode: ClashMode::Full,
            clash_cutoff_a: 4.0,
            fstd_fraction: 0.01,
            invert: false,
            seed: 0,
            log_every: 10,
            checkpoint_every: 1,
            cache_mib: 4096,
        }
    }
}

/// Default budget of particle presentations when neither epochs nor steps are given.
pub const DEFAULT_IMAGE_BUDGET: u64 = 600_000;
/// The reference's number of epochs (upper bound of the automatic default).
pub const REFERENCE_EPOCHS: u64 = 300;

impl SphereConfig {
    /// Read a TOML file holding any subset of the fields (at top level or under `[settings]`).
    pub fn from_toml_file(path: &std::path::Path) -> Result<SphereConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SphereError::file(path, format!("cannot read: {e}")))?;
        let v: toml::Value = toml::from_str(&text).map_err(|e| SphereError::file(path, e.to_string()))?;
        let v = match v.get("settings") {
            Some(s) => s.clone(),
            None => v,
        };
        let c: SphereConfig =
            v.try_into().map_err(|e: toml::de::Error| SphereError::file(path, e.to_string()))?;
        c.validate().map_err(|e| SphereError::file(path, e.to_string()))?;
        Ok(c)
    }

    /// Check ranges; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, why: &str| Err(SphereError::msg(format!("setting {f}: {why}")));
        if self.zdim == 0 {
            return bad("zdim", "must be at least 1");
        }
        if self.n_segm == 0 {
            return bad("n_segm", "must be at least 1");
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return bad("tau", "must be positive");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.epochs == Some(0) || self.steps == Some(0) {
            return bad("epochs/steps", "must be at least 1");
        }
        for (f, v) in [("lr", self.lr), ("lr_segmentation", self.lr_segmentation), ("sigma_a", self.sigma_a)]
        {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, "must be positive");
            }
        }
        for (f, v) in [
            ("prior_mean_std", self.prior_mean_std),
            ("prior_std_std", self.prior_std_std),
            ("prior_prop_std", self.prior_prop_std),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, "must be positive");
            }
        }
        if self.encoder_hidden.is_empty() || self.decoder_hidden.is_empty() {
            return bad("encoder_hidden/decoder_hidden", "need at least one layer");
        }
        if !(0.0 < self.fstd_fraction && self.fstd_fraction <= 1.0) {
            return bad("fstd_fraction", "must be in (0, 1]");
        }
        if self.log_every == 0 || self.checkpoint_every == 0 {
            return bad("log_every/checkpoint_every", "must be at least 1");
        }
        Ok(())
    }

    /// Epochs actually run for `n` particles: `epochs`, else from `steps`, else
    /// ⌈[`DEFAULT_IMAGE_BUDGET`]/n⌉ capped at the reference's 300.
    pub fn resolved_epochs(&self, n: usize) -> u64 {
        let per_epoch = n.div_ceil(self.batch_size).max(1) as u64;
        if let Some(s) = self.steps {
            return s.div_ceil(per_epoch);
        }
        self.epochs
            .unwrap_or_else(|| DEFAULT_IMAGE_BUDGET.div_ceil(n.max(1) as u64).clamp(1, REFERENCE_EPOCHS))
    }
}
