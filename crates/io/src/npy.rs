//! Plain (non-structured) NumPy `.npy` arrays: the latent, PCA, UMAP and example-image
//! files of a run directory (`latents.npy`, `pca.npy`, `umap.npy`, `examples.npy`).
//!
//! Reading shares the header parser of [`crate::cs`] (same Python-literal parser, same
//! error messages naming the file and the header field); any numeric dtype in either byte
//! order is read and converted to `f32`. Writing produces exactly what `np.save` writes
//! for a C-ordered little-endian `float32` array (version 1.0 header padded to 64 bytes).

use crate::atomic::write_bytes_atomic;
use crate::cs::{decode_f64, parse_py, parse_typestr, py_shape, read_preamble, Py, MAGIC};
use crate::error::{IoError, Result};
use std::path::Path;

/// An n-dimensional array of `f32`, row-major (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyArray {
    /// Number of rows (the first dimension; 1 for a 0-d array).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row (product of the other dimensions).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Row `i` as a slice (`None` past the end).
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let w = self.row_len();
        self.data.get(i * w..(i + 1) * w)
    }
}

/// Read a numeric `.npy` array as `f32`.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| IoError::os(path, "cannot read .npy file", e))?;
    parse_npy(&bytes, path)
}

/// Parse `.npy` bytes held in memory; `path` is used only in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let (_, text, start) = read_preamble(path, bytes)?;
    let hdr = |m: String| IoError::field(path, "npy header", m);
    let Py::Dict(items) = parse_py(&text).map_err(hdr)? else {
        return Err(hdr("header is not a dict".into()));
    };
    let get = |k: &str| items.iter().find(|(key, _)| *key == Py::Str(k.into())).map(|(_, v)| v);
    let (ty, order) = match get("descr") {
        Some(Py::Str(s)) => parse_typestr(s).map_err(|m| IoError::field(path, "descr", m))?,
        Some(Py::List(_)) => {
            return Err(IoError::field(
                path,
                "descr",
                "a structured array (use a .cs reader), not a plain array",
            ))
        }
        _ => return Err(hdr("no string 'descr' key".into())),
    };
    if !ty.is_numeric() {
        return Err(IoError::field(
            path,
            "descr",
            format!("dtype of {} bytes is not numeric (strings/void)", ty.size()),
        ));
    }
    match get("fortran_order") {
        Some(Py::Bool(false)) => {}
        Some(Py::Bool(true)) => {
            return Err(IoError::field(path, "fortran_order", "Fortran-ordered arrays are not supported"))
        }
        _ => return Err(hdr("no boolean 'fortran_order' key".into())),
    }
    let shape: Vec<usize> = match get("shape") {
        Some(Py::Tuple(t)) => t
            .iter()
            .map(|d| match d {
                Py::Int(n) => usize::try_from(*n)
                    .map_err(|_| IoError::field(path, "shape", format!("negative dimension {n}"))),
                _ => Err(IoError::field(path, "shape", "dimensions must be integers")),
            })
            .collect::<Result<_>>()?,
        _ => return Err(hdr("no tuple 'shape' key".into())),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| IoError::field(path, "shape", format!("{shape:?} is too large")))?;
    let size = ty.size();
    let need = count
        .checked_mul(size)
        .ok_or_else(|| IoError::field(path, "shape", format!("{shape:?} is too large")))?;
    let have = bytes.len() - start;
    if have < need {
        return Err(IoError::file(
            path,
            format!(
                "truncated: shape {shape:?} needs {need} bytes of data but only {have} follow the header"
            ),
        ));
    }
    let body = &bytes[start..start + need];
    let mut data = Vec::with_capacity(count);
    for (i, chunk) in body.chunks_exact(size).enumerate() {
        let v = decode_f64(ty, order, chunk)
            .ok_or_else(|| IoError::new(path, crate::Loc::Index(i), "cannot decode element"))?;
        data.push(v as f32);
    }
    Ok(NpyArray { shape, data })
}

/// The bytes `np.save` writes for a little-endian `float32` array of this shape.
pub fn npy_bytes_f32(shape: &[usize], data: &[f32]) -> std::result::Result<Vec<u8>, String> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(format!("shape {shape:?} holds {count} values but {} were given", data.len()));
    }
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}", py_shape(shape));
    let hlen = h.len() + 1;
    let pad = (64 - (10 + hlen) % 64) % 64;
    h.push_str(&" ".repeat(pad));
    h.push('\n');
    let mut out = Vec::with_capacity(10 + h.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Write a `float32` array as `.npy`, atomically.
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let bytes = npy_bytes_f32(shape, data).map_err(|m| IoError::file(path, m))?;
    write_bytes_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_2d() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npy_f32(&p, &[4, 3], &data).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 48) % 64, 0, "header padded to 64 bytes");
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, vec![4, 3]);
        assert_eq!(a.data, data);
        assert_eq!(a.row(1).unwrap(), &data[3..6]);
        assert_eq!(a.row_len(), 3);
    }

    #[test]
    fn reads_what_numpy_writes_f8_big_endian() {
        // np.array([[1.5, -2.0]], dtype='>f8') saved by numpy 1.26.
        let mut h = "{'descr': '>f8', 'fortran_order': False, 'shape': (1, 2), }".to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&1.5f64.to_be_bytes());
        b.extend_from_slice(&(-2.0f64).to_be_bytes());
        let a = parse_npy(&b, Path::new("x.npy")).unwrap();
        assert_eq!(a.shape, vec![1, 2]);
        assert_eq!(a.data, vec![1.5, -2.0]);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let ok = npy_bytes_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let e = parse_npy(&ok[..ok.len() - 3], Path::new("lat.npy")).unwrap_err().to_string();
        assert!(e.contains("lat.npy") && e.contains("truncated"), "{e}");
        let mut fortran = ok.clone();
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let e = parse_npy(&fortran, Path::new("f.npy")).unwrap_err().to_string();
        assert!(e.contains("f.npy") && e.contains("fortran_order"), "{e}");
        let e = parse_npy(b"not numpy at all", Path::new("z.npy")).unwrap_err().to_string();
        assert!(e.contains("z.npy") && e.contains("magic"), "{e}");
        assert!(npy_bytes_f32(&[3], &[1.0]).is_err());
    }
}
