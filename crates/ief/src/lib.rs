//! Cryo-IEF and CryoRanker (paper 001; METHODS.md §4): a ViT encoder of particle images
//! with the MoCo-v3 block (a BatchNorm over all tokens in place of the LayerNorm before each
//! MLP), the published CryoRanker heads, the released models' preprocessing, and streaming
//! feature extraction and scoring over particle stacks.
//!
//! Layers: [`preprocess`] (Fourier crop / spline upsampling to the model's input, min–max to
//! 8 bits, normalisation), [`vit`] (the encoder, built from a `VarBuilder` so the same code
//! loads released weights and trains new ones), [`weights`] (safetensors import with the
//! published tensor names, with or without the `base_encoder.` prefix; the architecture is
//! read from the shapes), [`head`] (CryoRanker v1.5 and v1 heads), [`infer`] (batched,
//! memory O(batch) passes over a stack: L2-normalised CLS features and scores).

pub mod attention;
pub mod augment;
pub mod head;
pub mod infer;
pub mod knn;
pub mod moco;
pub mod preprocess;
pub mod rank;
pub mod views;
pub mod vit;
pub mod weights;

pub use head::{RankerHead, RankerHeadKind};
pub use preprocess::{Preprocess, Resample};
pub use vit::{Vit, VitConfig};
pub use weights::{load_model, LoadedModel};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum IefError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] cryoforge_nn::NnError),
    #[error(transparent)]
    Io(#[from] cryoforge_io::IoError),
    #[error("{0}")]
    Msg(String),
}

impl IefError {
    pub fn msg(m: impl Into<String>) -> IefError {
        IefError::Msg(m.into())
    }
}

pub type Result<T> = std::result::Result<T, IefError>;
