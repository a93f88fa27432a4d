//! Error type shared by every analysis routine.
//!
//! Every public function validates its input and reports *what* is wrong
//! (which argument, which row, which limit) instead of panicking.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, AnalysisError>;

/// Everything that can go wrong in the latent-space analysis.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalysisError {
    /// An input has no rows (or no elements).
    #[error("empty input: {what} has no rows")]
    Empty {
        /// Which argument is empty.
        what: &'static str,
    },
    /// A matrix has zero columns.
    #[error("{what} has zero columns")]
    ZeroColumns {
        /// Which argument.
        what: &'static str,
    },
    /// A flat buffer does not hold `rows × cols` values.
    #[error("{what}: buffer length {len} is not rows × cols = {rows} × {cols}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// Length of the buffer.
        len: usize,
        /// Requested number of rows.
        rows: usize,
        /// Requested number of columns.
        cols: usize,
    },
    /// A NaN or infinity was found.
    #[error("{what}: non-finite value (NaN or ±inf) at row {row}, column {col}")]
    NonFinite {
        /// Which argument.
        what: &'static str,
        /// Row (particle) index of the first offending value.
        row: usize,
        /// Column of the first offending value.
        col: usize,
    },
    /// Two inputs disagree on a dimension.
    #[error("{what}: expected dimension {expected}, got {got}")]
    DimensionMismatch {
        /// What is being compared.
        what: &'static str,
        /// Dimension required.
        expected: usize,
        /// Dimension supplied.
        got: usize,
    },
    /// Not enough rows for the requested operation.
    #[error("{what}: needs at least {needed} rows, got {got}")]
    TooFewRows {
        /// What needs the rows.
        what: &'static str,
        /// Minimum number of rows.
        needed: usize,
        /// Number of rows supplied.
        got: usize,
    },
    /// A neighbour or cluster count exceeds what the data can provide.
    #[error("{what}: k = {k} is too large for n = {n} points (need {constraint})")]
    KTooLarge {
        /// Which parameter.
        what: &'static str,
        /// The requested count.
        k: usize,
        /// The number of points.
        n: usize,
        /// The constraint that was violated, e.g. `k ≤ n`.
        constraint: &'static str,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// The exact (brute-force, O(N²)) k-NN was requested above its cap.
    #[error(
        "exact k-NN is O(N²): n = {n} exceeds the cap of {cap} points; \
         use KnnMethod::NnDescent or KnnMethod::Auto, or raise exact_knn_max"
    )]
    ExactKnnTooLarge {
        /// Number of points.
        n: usize,
        /// The configured cap.
        cap: usize,
    },
    /// An input has (numerically) zero variance where variance is required.
    #[error("{what} is constant (zero variance)")]
    ZeroVariance {
        /// Which input.
        what: &'static str,
    },
    /// The symmetric eigensolver did not converge.
    #[error("symmetric eigendecomposition did not converge")]
    EigenNoConvergence,
}

/// Shorthand for building an [`AnalysisError::InvalidParameter`].
pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> AnalysisError {
    AnalysisError::InvalidParameter { name, reason: reason.into() }
}
