//! cryoforge-core: units, rotations, CTF, FFT layout, filters, masks and FSC —
//! the conventions every other crate goes through (see CONVENTIONS.md).

pub mod alloc;
pub mod ctf;
pub mod dist;
pub mod fft;
pub mod filter;
pub mod fsc;
pub mod rotation;
pub mod symmetry;
pub mod testdata;

pub use ctf::CtfParams;
pub use rotation::{CsRotVec, EulerRelion, Quat, Rot3};
