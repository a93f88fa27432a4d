//! cryoforge-recon: homogeneous reconstruction from known poses — CTF-weighted
//! Fourier-space insertion with a trilinear kernel into a padded grid, Wiener division
//! with Tikhonov or FSC-derived regularisation, gridding correction, half maps, FSC,
//! point-group symmetry.
//!
//! It builds on `cryoforge-sim`'s padded half spectrum (the same lattice and kernel the
//! projector samples), so projection and back-projection are exact adjoints.

pub mod grid;
pub mod reconstruct;

pub use grid::{padded_size, Accumulator};
pub use reconstruct::{
    reconstruct, CtfCorrection, HalfSplit, ReconConfig, ReconError, Reconstruction, Regularisation, Window,
};
