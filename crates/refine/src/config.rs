//! Settings of a 3D auto-refinement ([`RefineConfig`]) and its error type.
//!
//! Defaults follow RELION 3.1's auto-refine where the two programs share a notion
//! (HEALPix order 2 with one level of oversampling, 5 px offset range, halves joined
//! below 40 Å, 99.9 % of the posterior kept) and cryoPROS where it names one (initial
//! low-pass 30 Å). Every value is recorded in DIR/run.json.

use serde::{Deserialize, Serialize};

/// How the reconstruction uses each particle's posterior.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentMode {
    /// Insert at the significant poses weighted by their posterior (RELION's expectation).
    Marginal,
    /// Insert at the best pose only (cisTEM, cryoDRGN).
    Best,
}

/// Where the half sets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HalvesFrom {
    /// `rlnRandomSubset` when the input has it, otherwise random.
    Auto,
    Random,
    Star,
}

/// Settings of [`crate::refine`]; see the CLI's `--help` for each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefineConfig {
    /// Initial low-pass of the reference (Å) and the first iteration's band.
    pub ini_high_a: f64,
    /// HEALPix order of the global grid (2 ≈ 15°).
    pub healpix_order: u32,
    /// Offset search range and level-0 step (Å); `None` = 5 px / automatic.
    pub offset_range_a: Option<f64>,
    pub offset_step_a: Option<f64>,
    /// Particle diameter (Å) for the soft spherical mask; `None` = from the reference.
    pub particle_diameter_a: Option<f64>,
    /// Soft edge of the spherical mask (px).
    pub mask_edge_px: f64,
    pub symmetry: String,
    /// Below this resolution (Å) the two half references are averaged.
    pub low_resol_join_halves_a: f64,
    pub max_iter: usize,
    /// Global iterations: at least `min_global_iters`, at most `max_global_iters`.
    pub min_global_iters: usize,
    pub max_global_iters: usize,
    pub halves: HalvesFrom,
    pub seed: u64,
    /// Start from the input poses and search locally only.
    pub local: bool,
    /// Local searches: Gaussian prior σ on the angle to the previous pose (degrees);
    /// `None` = automatic (one level-0 cell).
    pub sigma_ang_deg: Option<f64>,
    pub assignment: AssignmentMode,
    /// Particles are protein-dark.
    pub invert: bool,
    /// Fourier padding of projector and reconstruction.
    pub pad: f64,
    /// Shells added beyond the FSC 0.5 shell for the next band; `None` = D/10 in [4, 10].
    pub band_margin_shells: Option<f64>,
    /// Posterior mass kept at every level.
    pub mass: f64,
    /// Most candidates kept after the global level 0, and after finer levels.
    pub keep_coarse: usize,
    pub keep_fine: usize,
    /// The fine angular step is this fraction of the step the band supports.
    pub oversampling: f64,
    /// Particles per batch (one matrix product of the global level 0).
    pub batch: usize,
    /// Particles used for the initial noise spectrum.
    pub noise_particles: usize,
    /// Most significant poses inserted per particle (marginal assignment).
    pub max_hits: usize,
}

impl Default for RefineConfig {
    fn default() -> Self {
        RefineConfig {
            ini_high_a: 30.0,
            healpix_order: 2,
            offset_range_a: None,
            offset_step_a: None,
            particle_diameter_a: None,
            mask_edge_px: 5.0,
            symmetry: "C1".into(),
            low_resol_join_halves_a: 40.0,
            max_iter: 12,
            min_global_iters: 2,
            max_global_iters: 4,
            halves: HalvesFrom::Auto,
            seed: 0,
            local: false,
            sigma_ang_deg: None,
            assignment: AssignmentMode::Marginal,
            invert: false,
            pad: 2.0,
            band_margin_shells: None,
            mass: 0.999,
            keep_coarse: 32,
            keep_fine: 8,
            oversampling: 0.5,
            batch: 16,
            noise_particles: 2000,
            max_hits: 8,
        }
    }
}

impl RefineConfig {
    /// Reject values no refinement can run with, naming the option.
    pub fn validate(&self) -> Result<(), RefineError> {
        let bad = |what: &str, why: String| Err(RefineError::Config(format!("{what}: {why}")));
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(self.ini_high_a) {
            return bad("--ini-high-a", format!("{} must be a positive resolution in Å", self.ini_high_a));
        }
        if self.healpix_order > 7 {
            return bad(
                "--healpix-order",
                format!("{} is above 7 (0.47°): use local searches", self.healpix_order),
            );
        }
        for (name, v) in [("--offset-range-a", self.offset_range_a), ("--offset-step-a", self.offset_step_a)]
        {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return bad(name, format!("{v} must be ≥ 0 Å"));
                }
            }
        }
        if let Some(v) = self.particle_diameter_a {
            if !pos(v) {
                return bad("--particle-diameter-a", format!("{v} must be positive"));
            }
        }
        if let Some(v) = self.sigma_ang_deg {
            if !pos(v) {
                return bad("--sigma-ang-deg", format!("{v} must be positive"));
            }
        }
        if !(self.pad >= 1.0 && self.pad <= 4.0) {
            return bad("--pad", format!("{} must lie in [1, 4]", self.pad));
        }
        if !(self.mass > 0.0 && self.mass <= 1.0) {
            return bad("mass", format!("{} must lie in (0, 1]", self.mass));
        }
        if self.max_iter < 2 {
            return bad(
                "--max-iter",
                format!("{} must be at least 2 (one search, one final)", self.max_iter),
            );
        }
        if !(self.oversampling > 0.0 && self.oversampling <= 1.0) {
            return bad("--oversampling", format!("{} must lie in (0, 1]", self.oversampling));
        }
        if self.keep_coarse == 0 || self.keep_fine == 0 || self.batch == 0 || self.max_hits == 0 {
            return bad("keep/batch/hits", "must be at least 1".into());
        }
        if self.min_global_iters > self.max_global_iters {
            return bad("--min-global-iters", "must not exceed --max-global-iters".into());
        }
        self.symmetry
            .parse::<cryoforge_core::symmetry::Symmetry>()
            .map_err(|e| RefineError::Config(format!("--sym: {e}")))?;
        Ok(())
    }
}

/// Errors of a refinement; each names the file, field or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum RefineError {
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error(transparent)]
    Recon(#[from] cryoforge_recon::ReconError),
    #[error("projector: {0}")]
    Sim(#[from] cryoforge_sim::SimError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
}
