//! Atomic file output: write to a temporary file beside the target, then rename,
//! so a failed or interrupted write never leaves a half-written output.

use crate::error::{IoError, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Write `path` atomically: `f` receives a buffered writer on a temporary file in
/// the same folder; on success the file is flushed, synced and renamed over `path`.
/// On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| IoError::os(path, "cannot create a temporary file beside the output", e))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut w = BufWriter::with_capacity(1 << 20, file);
    f(&mut w)?;
    w.flush().map_err(|e| IoError::os(path, "write failed", e))?;
    let file = w.into_inner().map_err(|e| IoError::os(path, "write failed", e.into_error()))?;
    file.sync_all().map_err(|e| IoError::os(path, "sync failed", e))?;
    tmp_path
        .persist(path)
        .map_err(|e| IoError::os(path, "cannot rename the temporary file onto the output", e.error))?;
    Ok(())
}

/// Write a whole byte buffer atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|e| IoError::os(path, "write failed", e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        let r = write_atomic(&p, |w| {
            w.write_all(b"partial").unwrap();
            Err(IoError::file(&p, "boom"))
        });
        assert!(r.is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "temporary file left behind");
    }

    #[test]
    fn successful_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        write_bytes_atomic(&p, b"one").unwrap();
        write_bytes_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }
}
