//! Row-major matrices of particles × features.
//!
//! Latent spaces are stored one particle per row: an `N × D` matrix is a flat
//! buffer of `N · D` values where row `i` occupies `data[i·D .. (i+1)·D]`.
//! [`MatrixView`] borrows such a buffer of `f32` or `f64` (any [`Real`]);
//! [`Matrix`] owns an `f64` buffer and is what the analysis routines return.
//!
//! Reductions over rows are done in fixed-size row chunks (4096 rows):
//! each chunk is reduced in parallel, then the per-chunk partials are summed
//! sequentially in chunk order. The floating-point result is therefore
//! bit-identical whatever the size of the rayon thread pool.
//!
//! ```
//! use cryoforge_analysis::{Matrix, MatrixView};
//! let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let v = MatrixView::new(&data, 3, 2).unwrap();
//! assert_eq!(v.row(1), &[3.0, 4.0]);
//! let m = Matrix::from_view(v);
//! assert_eq!(m.row(2), &[5.0, 6.0]);
//! ```

use rayon::prelude::*;

use crate::error::{AnalysisError, Result};

/// Rows per chunk in deterministic parallel reductions.
pub(crate) const CHUNK_ROWS: usize = 4096;

/// Floating-point element types accepted as input (`f32`, `f64`).
pub trait Real: Copy + Send + Sync + PartialOrd + std::fmt::Debug + 'static {
    /// Widen to `f64`.
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// Borrowed row-major `rows × cols` matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T: Real> MatrixView<'a, T> {
    /// Wraps `data` as a `rows × cols` row-major matrix.
    ///
    /// Fails when `cols == 0` or `data.len() != rows · cols`. Zero rows are
    /// allowed here; each routine reports an empty input itself.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        if cols == 0 {
            return Err(AnalysisError::ZeroColumns { what: "matrix" });
        }
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(AnalysisError::ShapeMismatch { what: "matrix", len: data.len(), rows, cols });
        }
        Ok(Self { data, rows, cols })
    }

    /// Number of rows (particles).
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features / latent dimensions).
    pub fn n_cols(&self) -> usize {
        self.cols
    }

    /// The flat row-major buffer.
    pub fn as_slice(&self) -> &'a [T] {
        self.data
    }

    /// Row `i`. Panics if `i >= n_rows()` (like slice indexing).
    #[inline]
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Errors with [`AnalysisError::Empty`] when there are no rows, and with
    /// [`AnalysisError::NonFinite`] naming the first row/column holding a NaN
    /// or infinity.
    pub fn validate(&self, what: &'static str) -> Result<()> {
        if self.rows == 0 {
            return Err(AnalysisError::Empty { what });
        }
        let cols = self.cols;
        let bad = self
            .data
            .par_chunks(cols)
            .enumerate()
            .find_first(|(_, r)| r.iter().any(|v| !v.to_f64().is_finite()));
        match bad {
            Some((row, r)) => {
                let col = r.iter().position(|v| !v.to_f64().is_finite()).unwrap_or(0);
                Err(AnalysisError::NonFinite { what, row, col })
            }
            None => Ok(()),
        }
    }

    /// Parallel iterator over `(first_row, chunk)` blocks of [`CHUNK_ROWS`]
    /// rows, in row order.
    pub(crate) fn par_row_chunks(&self) -> impl IndexedParallelIterator<Item = (usize, &'a [T])> + 'a {
        let step = CHUNK_ROWS * self.cols;
        self.data.par_chunks(step).enumerate().map(move |(c, chunk)| (c * CHUNK_ROWS, chunk))
    }
}

/// Owned row-major `rows × cols` matrix of `f64`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Matrix {
    data: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// Takes ownership of a row-major buffer; same checks as [`MatrixView::new`].
    pub fn new(data: Vec<f64>, rows: usize, cols: usize) -> Result<Self> {
        MatrixView::new(&data, rows, cols)?;
        Ok(Self { data, rows, cols })
    }

    /// Zero-filled matrix (internal; `cols > 0` is the caller's duty).
    pub(crate) fn zeros(rows: usize, cols: usize) -> Self {
        Self { data: vec![0.0; rows * cols], rows, cols }
    }

    /// Copies (and widens) a view.
    pub fn from_view<T: Real>(v: MatrixView<'_, T>) -> Self {
        Self {
            data: v.as_slice().par_iter().map(|x| x.to_f64()).collect(),
            rows: v.n_rows(),
            cols: v.n_cols(),
        }
    }

    /// Borrows as a view.
    pub fn view(&self) -> MatrixView<'_, f64> {
        MatrixView { data: &self.data, rows: self.rows, cols: self.cols }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.cols
    }

    /// Row `i`. Panics if out of range (like slice indexing).
    #[inline]
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Mutable row `i`.
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Column `j` copied out.
    pub fn column(&self, j: usize) -> Vec<f64> {
        self.data.chunks(self.cols).map(|r| r[j]).collect()
    }

    /// The flat row-major buffer.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// Mutable flat buffer.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Consumes the matrix, returning the flat buffer.
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }
}

/// Squared Euclidean distance between two rows of possibly different types.
///
/// Four independent accumulators break the floating-point dependency chain
/// (the compiler may not reassociate a single running sum), which lets the
/// loop use SIMD lanes; the summation order is fixed, so results are
/// deterministic.
#[inline]
pub(crate) fn sq_dist<A: Real, B: Real>(a: &[A], b: &[B]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for l in 0..4 {
            let d = x[l].to_f64() - y[l].to_f64();
            acc[l] += d * d;
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        let d = x.to_f64() - y.to_f64();
        tail += d * d;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Checks that a query vector is finite and has the right length.
pub(crate) fn check_vector(what: &'static str, v: &[f64], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(AnalysisError::DimensionMismatch { what, expected: dim, got: v.len() });
    }
    if let Some(col) = v.iter().position(|x| !x.is_finite()) {
        return Err(AnalysisError::NonFinite { what, row: 0, col });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_errors() {
        let d = [1.0f64; 6];
        assert!(matches!(MatrixView::new(&d, 4, 2), Err(AnalysisError::ShapeMismatch { len: 6, .. })));
        assert!(matches!(MatrixView::new(&d, 6, 0), Err(AnalysisError::ZeroColumns { .. })));
        let v = MatrixView::new(&d[..0], 0, 3).unwrap();
        assert_eq!(v.validate("x"), Err(AnalysisError::Empty { what: "x" }));
    }

    #[test]
    fn nan_reported_at_first_row() {
        let mut d = vec![0.0f32; 3 * 10_000];
        d[3 * 7000 + 2] = f32::NAN;
        d[3 * 9000] = f32::INFINITY;
        let v = MatrixView::new(&d, 10_000, 3).unwrap();
        assert_eq!(
            v.validate("latents"),
            Err(AnalysisError::NonFinite { what: "latents", row: 7000, col: 2 })
        );
    }
}
