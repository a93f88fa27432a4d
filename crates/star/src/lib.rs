//! cryoforge-star: cryoSTAR (paper 003, METHODS.md §1).
//!
//! Per particle, an MLP VAE encodes the low-passed, masked image into a Gaussian latent
//! (8 dimensions), and an MLP decoder maps the latent to a displacement of every residue
//! of a reference Cα model (C1′/P anchors for nucleic acids). The deformed model is
//! rendered as Cα Gaussians (σ = 2 Å, amplitude = sum of the residue's atomic numbers) at
//! the particle's pose, shift and CTF by the band-limited differentiable renderer of
//! `cryoforge_nn`, and compared with the particle, low-passed to the same band, by the
//! masked correlation of METHODS.md §0. The loss is
//!
//! ```text
//! L = L_corr + w_cont·L_cont + w_clash·L_clash + w_EN·L_EN + β(step)·KL_fb / N_mask
//! ```
//!
//! - continuity: MSE of consecutive same-segment anchor distances against the reference;
//! - clash: pairs whose reference distance lies in 4–10 Å (inter-chain included), minus
//!   chain neighbours, penalised by (4 − d)² when closer than 4 Å, mean over violations;
//! - elastic network: same-segment pairs within 12 Å (no inter-chain edges), minus chain
//!   neighbours, (d − d₀)², with adaptive relaxation: per batch, edges whose predicted
//!   length variance over the batch is above the `keep_ratio` quantile are dropped;
//! - KL with free bits (3 nats per dimension), β rising linearly to 0.5 over 10,000 steps,
//!   divided by the number of mask pixels.
//!
//! Before training, the decoder is fitted to output zero displacement for latents drawn
//! from the prior (reference-init warm-up; stops when the mean of the last 20 losses is
//! below 1e-3). `no_elastic` gives the paper's CONT baseline (continuity only).
//!
//! [`train::train`] runs training into a run directory; [`train::load_run`] loads it back
//! for analysis ([`train::encode_stack`], [`model::StarModel::decode_coords`]).
//!
//! Phase II ([`volume`]): with the latents frozen, an implicit volume (random Fourier
//! features of the 3D frequency and z → residual GELU MLP → one Hartley value) is trained on
//! central slices × (−CTF) against the re-centred particles, and evaluated at chosen latents
//! into real-space maps free of the reference model's bias.

pub mod config;
pub mod model;
pub mod reference;
pub mod train;
pub mod volume;

pub use config::{LossWeights, LrSchedule, Preset, StarConfig};
pub use model::StarModel;
pub use reference::Reference;

/// Errors of cryoSTAR training and analysis.
#[derive(Debug, thiserror::Error)]
pub enum StarError {
    #[error(transparent)]
    Nn(#[from] cryoforge_nn::NnError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error(transparent)]
    Hetero(#[from] cryoforge_hetero::HeteroError),
    #[error("{0}")]
    Msg(String),
}

impl StarError {
    pub fn msg(m: impl Into<String>) -> StarError {
        StarError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, StarError>;
