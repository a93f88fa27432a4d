//! cryoforge-io: the file formats of the RELION / cryoSPARC / cryoDRGN / ChimeraX
//! ecosystem, read and written faithfully, with errors that name the file and the
//! line, field or index.
//!
//! - [`mrc`]: MRC2014 maps and image stacks (memory-mapped, lazy).
//! - [`star`]: RELION STAR files (3.0 single block, 3.1+/5 optics + particles).
//! - [`cs`]: cryoSPARC `.cs` numpy structured arrays.
//! - [`npy`]: plain numeric NumPy `.npy` arrays (run-directory latents, images).
//! - [`pkl`]: cryoDRGN pose and CTF pickles (numpy arrays in pickles).
//! - [`pdb`]: PDB and mmCIF atomic models.

pub mod atomic;
pub mod cs;
pub mod error;
pub mod export;
pub mod mrc;
pub mod npy;
pub mod pdb;
pub mod pkl;
pub mod stack;
pub mod star;

pub use error::{IoError, Loc, Result};

pub use cryoforge_core::testdata::{test_data_dir, test_data_file};
