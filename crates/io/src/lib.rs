//! cryoforge-io: the file formats of the RELION / cryoSPARC / cryoDRGN / ChimeraX
//! ecosystem, read and written faithfully, with errors that name the file and the
//! line, field or index.
//!
//! - [`mrc`]: MRC2014 maps and image stacks (memory-mapped, lazy).
//! - [`star`]: RELION STAR files (3.0 single block, 3.1+/5 optics + particles).
//! - [`cs`]: cryoSPARC `.cs` numpy structured arrays.
//! - [`pkl`]: cryoDRGN pose and CTF pickles (numpy arrays in pickles).
//! - [`pdb`]: PDB and mmCIF atomic models.

pub mod atomic;
pub mod cs;
pub mod error;
pub mod mrc;
pub mod pdb;
pub mod pkl;
pub mod star;

pub use error::{IoError, Loc, Result};
