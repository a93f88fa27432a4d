//! Minimal NumPy `.npy` (format 1.0) for little-endian float32 C-order arrays.

use crate::{HeteroError, Result};
use std::path::Path;

/// The bytes of a float32 `.npy` file of `shape` holding `data` (C order).
pub fn npy_f32_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` atomically.
pub fn write_npy_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(HeteroError::msg(format!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            data.len()
        )));
    }
    cryoforge_io::atomic::write_bytes_atomic(path, &npy_f32_bytes(data, shape))?;
    Ok(())
}

/// Reads a 1-D or 2-D little-endian float32 or float64 `.npy`: (values as f32, rows, cols).
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

/// Reads a little-endian float32 or float64 C-order `.npy` of any shape: (values as f32, shape).
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let b =
        std::fs::read(path).map_err(|e| HeteroError::msg(format!("{}: cannot read: {e}", path.display())))?;
    let bad = |m: &str| HeteroError::msg(format!("{}: not a supported .npy: {m}", path.display()));
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hl, off) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        if b.len() < 12 {
            return Err(bad("truncated header"));
        }
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let h = std::str::from_utf8(b.get(off..off + hl).ok_or_else(|| bad("truncated header"))?)
        .map_err(|_| bad("header is not text"))?;
    let word = if h.contains("'<f4'") {
        4
    } else if h.contains("'<f8'") {
        8
    } else {
        return Err(bad("field descr: only '<f4' and '<f8' are supported"));
    };
    if h.contains("'fortran_order': True") {
        return Err(bad("field fortran_order: Fortran order is not supported"));
    }
    let s = h.split("'shape':").nth(1).ok_or_else(|| bad("no shape field"))?;
    let s = &s[s.find('(').ok_or_else(|| bad("field shape"))? + 1
        ..s.find(')').ok_or_else(|| bad("field shape"))?];
    let dims: Vec<usize> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| bad("field shape: not integers")))
        .collect::<Result<_>>()?;
    let total: usize = dims.iter().product();
    let data = &b[off + hl..];
    if data.len() < total * word {
        return Err(bad("fewer values than the shape says"));
    }
    let v: Vec<f32> = (0..total)
        .map(|i| {
            let p = &data[i * word..(i + 1) * word];
            if word == 4 {
                f32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                f64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]) as f32
            }
        })
        .collect();
    Ok((v, dims))
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
