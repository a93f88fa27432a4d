//! `.npy` helpers of the analysis, on top of `cryoforge_io::npy` (the one reader/writer).

use crate::{HeteroError, Result};
use std::path::Path;

/// Writes a float32 `.npy` atomically (`cryoforge_io::npy::write_npy_f32`).
pub fn write_npy_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    cryoforge_io::npy::write_npy_f32(path, shape, data)?;
    Ok(())
}

/// Reads a 1-D or 2-D numeric `.npy`: (values as f32, rows, cols).
pub fn read_npy_2d(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let (v, dims) = read_npy(path)?;
    match dims.as_slice() {
        [n] => Ok((v, *n, 1)),
        [n, d] => Ok((v, *n, *d)),
        _ => Err(HeteroError::msg(format!(
            "{}: field shape: need 1 or 2 dimensions, got {dims:?}",
            path.display()
        ))),
    }
}

/// Reads a numeric C-order `.npy` of any shape (`cryoforge_io::npy::read_npy`): (values as
/// f32, shape).
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let a = cryoforge_io::npy::read_npy(path)?;
    Ok((a.data, a.shape))
}

/// Reads latents from `.npy` or a whitespace/comma-separated text file (one row per line,
/// `#` comments). Checks the row length against `zdim`.
pub fn read_latents(path: &Path, zdim: usize) -> Result<(Vec<f32>, usize)> {
    let is_npy = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let (v, rows, cols) = if is_npy {
        read_npy_2d(path)?
    } else {
        let t = std::fs::read_to_string(path)
            .map_err(|e| HeteroError::msg(format!("{}: cannot read: {e}", path.display())))?;
        let mut v = Vec::new();
        let mut rows = 0;
        for (ln, line) in t.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let vals: Vec<&str> =
                line.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).collect();
            if vals.len() != zdim {
                return Err(HeteroError::msg(format!(
                    "{}: line {}: {} values, the model's latent dimension is {zdim}",
                    path.display(),
                    ln + 1,
                    vals.len()
                )));
            }
            for (k, s) in vals.iter().enumerate() {
                v.push(s.parse::<f32>().map_err(|_| {
                    HeteroError::msg(format!(
                        "{}: line {}, value {}: {s:?} is not a number",
                        path.display(),
                        ln + 1,
                        k + 1
                    ))
                })?);
            }
            rows += 1;
        }
        (v, rows, zdim)
    };
    if cols != zdim {
        return Err(HeteroError::msg(format!(
            "{}: latent vectors of length {cols}, the model's latent dimension is {zdim}",
            path.display()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(HeteroError::msg(format!("{}: row {}: value is not finite", path.display(), i / zdim)));
    }
    Ok((v, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_npy_f32(&p, &data, &[4, 3]).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!((b.len() - data.len() * 4) % 64, 0);
        let (v, r, c) = read_npy_2d(&p).unwrap();
        assert_eq!((r, c), (4, 3));
        assert_eq!(v, data);
        assert!(read_latents(&p, 2).is_err());
        let t = dir.path().join("z.txt");
        std::fs::write(&t, "1 2 3\n# c\n4,5,6\n").unwrap();
        assert_eq!(read_latents(&t, 3).unwrap(), (vec![1., 2., 3., 4., 5., 6.], 2));
        std::fs::write(&t, "1 2\n").unwrap();
        assert!(read_latents(&t, 3).unwrap_err().to_string().contains("line 1"));
    }
}
