//! cryoforge-pros: cryoPROS (paper 000, METHODS.md §3).
//!
//! A conditional hierarchical VAE ([`model::Hvae`]) learns p(x | pose, CTF, reference) from
//! the raw particles, their poses and CTFs and the projection of a low-passed reference
//! ([`condition`]); trained by [`train::train`], it then generates auxiliary particles at
//! Haar-uniform poses with the raw particles' CTFs and shifts ([`generate`]). Co-refining
//! raw and auxiliary particles (crate `refine`) and reconstructing the raw ones alone with
//! their new poses is one cryoPROS iteration ([`pipeline`]). [`metrics`] holds the paper's
//! histogram KL and background SNR; [`recondismic`] the micelle/nanodisc starting
//! reference for membrane proteins.

pub mod condition;
pub mod config;
pub mod generate;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod recondismic;
pub mod train;

pub use config::{ArchConfig, ProsConfig};
pub use model::Hvae;

/// Errors of cryoPROS.
#[derive(Debug, thiserror::Error)]
pub enum ProsError {
    #[error(transparent)]
    Nn(#[from] cryoforge_nn::NnError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error(transparent)]
    Sim(#[from] cryoforge_sim::SimError),
    #[error("{0}")]
    Msg(String),
}

impl ProsError {
    pub fn msg(m: impl Into<String>) -> ProsError {
        ProsError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, ProsError>;
