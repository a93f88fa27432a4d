//! cryoforge-sphere: cryoSPHERE (papers 002/004, METHODS.md §2).
//!
//! A VAE whose decoder outputs one rigid motion (rotation + translation) per segment of
//! the reference chain; the segmentation itself is a Gaussian mixture over the residue
//! index with variational posteriors on its means, widths and proportions, learned jointly
//! with its own learning rate. Large domains move as bodies, which is what makes the
//! method robust to noise.
//!
//! - [`model`]: encoder, decoder, segmentation, the deformation (sequential segment
//!   rotations about a chosen centre, then the weighted translation).
//! - [`parts`]: which residues form which part and how many segments each part has
//!   (`--parts FILE`; default one part per chain).
//! - [`config`]: every method setting, with the reference defaults (TOML-serialisable).
//! - [`train`]: the training loop (run-directory contract: run.toml, metrics, checkpoints).
//! - [`analyze`]: the segmentation and per-segment motions of a trained run, and the
//!   shared analysis ([`cryoforge_hetero::analyze_run`]) with the posterior-mean
//!   deformation as decoder.
//! - [`toy`]: the rigid-domain toy benchmark of paper Appendix B.1 built from AdK.

pub mod analyze;
pub mod config;
pub mod model;
pub mod parts;
pub mod toy;
pub mod train;

pub use config::SphereConfig;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SphereError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] cryoforge_nn::NnError),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error(transparent)]
    Hetero(#[from] cryoforge_hetero::HeteroError),
    #[error("{file}: {what}")]
    File { file: String, what: String },
    #[error("{0}")]
    Msg(String),
}

impl SphereError {
    pub fn msg(m: impl Into<String>) -> SphereError {
        SphereError::Msg(m.into())
    }
    pub fn file(path: &std::path::Path, what: impl Into<String>) -> SphereError {
        SphereError::File { file: path.display().to_string(), what: what.into() }
    }
}

pub type Result<T> = std::result::Result<T, SphereError>;
