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

/// The shared test-data folder (`CRYOFORGE_TEST_DATA`, else `../shared/data`
/// beside the workspace root), or `None` when it is absent. Tests that need it
/// print a notice and return early when this is `None`.
pub fn test_data_dir() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("CRYOFORGE_TEST_DATA") {
        let p = std::path::PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("../shared/data");
    p.is_dir().then(|| p.canonicalize().unwrap_or(p))
}

/// `test_data_dir()/rel` when the shared data is present; otherwise prints a
/// skip notice naming `test` and returns `None`.
pub fn test_data_file(test: &str, rel: &str) -> Option<std::path::PathBuf> {
    match test_data_dir() {
        Some(d) if d.join(rel).exists() => Some(d.join(rel)),
        _ => {
            eprintln!("SKIP {test}: shared test data {rel} not found (set CRYOFORGE_TEST_DATA)");
            None
        }
    }
}
