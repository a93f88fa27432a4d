//! The error type of the simulator crate.

/// Bad input to a simulator routine. Variants carry what is needed to find the
/// offending item (atom or residue index, element symbol, box size).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// Invalid simulation input (message says what and where).
    #[error("{0}")]
    Input(String),
    #[error("unknown element symbol {symbol:?} (no Peng 1996 scattering factors for it)")]
    UnknownElement { symbol: String },
    #[error("no Peng 1996 scattering factors for atomic number {z} (supported: 1-36)")]
    UnsupportedAtomicNumber { z: u32 },
    #[error("atom {index}: {field} is not finite ({value})")]
    NonFiniteAtom { index: usize, field: &'static str, value: f64 },
    #[error("atom {index}: B-factor {b_factor_a2} Å² must exceed {min_a2} Å² (it would make a Gaussian width non-positive)")]
    InvalidBFactor { index: usize, b_factor_a2: f64, min_a2: f64 },
    #[error("residue {index}: {field} is not finite ({value})")]
    NonFiniteResidue { index: usize, field: &'static str, value: f64 },
    #[error("box size must be positive (got 0)")]
    ZeroBox,
    #[error("box size {n} must be even for {what}")]
    OddBox { n: usize, what: &'static str },
    #[error("pixel size {apix_a} Å/px must be positive and finite")]
    InvalidPixelSize { apix_a: f64 },
    #[error("pad factor {pad} must lie between 1 and 8")]
    InvalidPad { pad: f64 },
    #[error("Gaussian width σ = {sigma_a} Å must be positive and finite")]
    InvalidSigma { sigma_a: f64 },
    #[error("{what}: expected {expected} elements, got {got}")]
    SizeMismatch { what: &'static str, expected: usize, got: usize },
    #[error("{what} is not finite")]
    NonFinite { what: &'static str },
}

/// Error unless `apix_a` is a positive finite pixel size.
pub(crate) fn check_apix(apix_a: f64) -> Result<(), SimError> {
    if apix_a.is_finite() && apix_a > 0.0 {
        Ok(())
    } else {
        Err(SimError::InvalidPixelSize { apix_a })
    }
}

/// Error unless `got == expected`.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), SimError> {
    if got == expected {
        Ok(())
    } else {
        Err(SimError::SizeMismatch { what, expected, got })
    }
}
