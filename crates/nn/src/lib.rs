//! cryoforge-nn: the differentiable structure-to-image renderer and the training
//! foundation of cryoforge's deep-learning methods (cryoSTAR, cryoSPHERE), on candle.
//!
//! - [`render`]: band-limited Fourier-space Cα Gaussian renderer (custom phasor op,
//!   matmul DFTs, no FFT in the autodiff graph) and a real-space validation path.
//! - [`loss`]: masked correlation (METHODS.md §0), MSE, Gaussian KL with free bits, β
//!   schedules, pair-list structural losses (continuity, clash, elastic network).
//! - [`structure`]: pair lists from a reference structure by cell lists (never N×N).
//! - [`ops`]: differentiable LayerNorm, softmax and log-softmax.
//! - [`optim`]: fused in-place Adam/AdamW with parameter groups, clipping, NaN skipping.
//! - [`checkpoint`]: safetensors weights + optimiser state + step + RNG state.
//! - [`data`]: shuffled, prefetched batches over a `ParticleStack`.

pub mod checkpoint;
pub mod data;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod render;
pub mod structure;

pub use render::{Band, BandData, Renderer};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error("{0}")]
    Msg(String),
}

impl NnError {
    pub fn msg(m: impl Into<String>) -> NnError {
        NnError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, NnError>;
