//! cryoforge-recon: homogeneous reconstruction from known poses — CTF-weighted
//! Fourier-space insertion with a trilinear kernel into a padded grid, Wiener division
//! with Tikhonov or FSC-derived regularisation, gridding correction, half maps, FSC,
//! point-group symmetry; masks from maps and post-processing of half maps (masked FSC
//! with phase-randomisation correction, B-factor sharpening), as RELION's.
//!
//! It builds on `cryoforge-sim`'s padded half spectrum (the same lattice and kernel the
//! projector samples), so projection and back-projection are exact adjoints.

pub mod grid;
pub mod mask;
pub mod postprocess;
pub mod reconstruct;

pub use grid::{padded_size, Accumulator};
pub use reconstruct::{
    half_assignment, reconstruct, reconstruct_assigned, Assignment, CtfCorrection, HalfSplit, ReconConfig,
    ReconError, Reconstruction, Regularisation, Window,
};
