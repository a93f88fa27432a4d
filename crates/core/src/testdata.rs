//! Where the tests find the shared data set (`../shared/data` beside the workspace, or
//! `CRYOFORGE_TEST_DATA`). Tests that need it print a notice and return early when it is
//! absent; CI always has it. One copy for every crate (`cryoforge_io` re-exports it).

use std::path::{Path, PathBuf};

/// The shared test-data folder (`CRYOFORGE_TEST_DATA`, else `../shared/data` beside the
/// workspace root), or `None` when it is absent.
pub fn test_data_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CRYOFORGE_TEST_DATA") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("../shared/data");
    p.is_dir().then(|| p.canonicalize().unwrap_or(p))
}

/// `test_data_dir()/rel` when the shared data is present; otherwise prints a skip notice
/// naming `test` and returns `None`.
pub fn test_data_file(test: &str, rel: &str) -> Option<PathBuf> {
    match test_data_dir() {
        Some(d) if d.join(rel).exists() => Some(d.join(rel)),
        _ => {
            eprintln!("SKIP {test}: shared test data {rel} not found (set CRYOFORGE_TEST_DATA)");
            None
        }
    }
}
