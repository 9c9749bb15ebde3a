//! Errors of this crate: shape, dtype and label problems say what was expected and
//! what was found.

use candle_core::{DType, Tensor};

/// What can go wrong computing a distance or a loss.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// A tensor has the wrong shape.
    #[error("{what}: expected shape {expected}, found {found}")]
    Shape {
        /// Which input.
        what: String,
        /// The shape required.
        expected: String,
        /// The shape given.
        found: String,
    },
    /// A tensor has the wrong dtype.
    #[error("{what}: expected dtype {expected:?}, found {found:?}")]
    DType {
        /// Which input.
        what: String,
        /// The dtype required.
        expected: DType,
        /// The dtype given.
        found: DType,
    },
    /// Pair labels must be exactly 0.0 (different) or 1.0 (same).
    #[error("pair labels must be 0 (different class) or 1 (same class), found {found}")]
    Labels {
        /// An offending value.
        found: f64,
    },
    /// A loss parameter is out of its domain.
    #[error("{name} must be {expected}, found {found}")]
    Parameter {
        /// The parameter.
        name: &'static str,
        /// Its domain.
        expected: &'static str,
        /// The value given.
        found: f64,
    },
    /// An error inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub(crate) fn check_float(what: &str, t: &Tensor) -> Result<(), LossError> {
    if crate::distance::is_float(t.dtype()) {
        Ok(())
    } else {
        Err(LossError::DType {
            what: what.into(),
            expected: DType::F32,
            found: t.dtype(),
        })
    }
}

pub(crate) fn check_same_shape(what: &str, t: &Tensor, like: &Tensor) -> Result<(), LossError> {
    if t.dims() == like.dims() {
        Ok(())
    } else {
        Err(LossError::Shape {
            what: what.into(),
            expected: format!("{:?}", like.dims()),
            found: format!("{:?}", t.dims()),
        })
    }
}
