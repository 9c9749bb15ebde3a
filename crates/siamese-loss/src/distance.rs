//! Distances between embeddings: paired (`[B, D] x [B, D] -> [B]`) and as a matrix
//! (`[N, D] x [M, D] -> [N, M]`, computed through one matrix product, never through an
//! `[N, M, D]` intermediate).
//!
//! **The Euclidean distance is smoothed at zero.** `sqrt` has an infinite derivative at
//! 0, so the reference program's `sqrt(sum((a - b)^2))` turns the weights into NaN as
//! soon as a pair of identical images (or identical embeddings) appears. Here
//! `E = sqrt(||a - b||^2 + eps)` with [`Euclidean::DEFAULT_EPS`] `= 1e-12`: the value
//! moves by at most `sqrt(eps) = 1e-6`, the gradient is exactly 0 at `a = b` and its norm
//! never exceeds 1.

use candle_core::{DType, Tensor, D};

use crate::error::{check_float, check_same_shape, LossError};

/// A distance between embeddings.
pub trait Distance {
    /// Distances between row `i` of `a` and row `i` of `b`: `[B, D] x [B, D] -> [B]`.
    fn paired(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError>;
    /// Distances between every row of `a` and every row of `b`: `[N, D] x [M, D] -> [N, M]`.
    fn matrix(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError>;
}

/// Euclidean distance, smoothed at zero (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Euclidean {
    /// Added under the square root; keeps the gradient finite at zero distance.
    pub eps: f64,
}

impl Euclidean {
    /// The default `eps`: changes the distance by at most 1e-6.
    pub const DEFAULT_EPS: f64 = 1e-12;
}

impl Default for Euclidean {
    fn default() -> Self {
        Self {
            eps: Self::DEFAULT_EPS,
        }
    }
}

/// Squared Euclidean distance `||a - b||^2`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SquaredEuclidean;

/// Cosine distance `1 - cos(a, b)`, in `[0, 2]`; norms are floored at `eps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cosine {
    /// Lower bound on the norms, so a zero vector gives distance 1, not NaN.
    pub eps: f64,
}

impl Default for Cosine {
    fn default() -> Self {
        Self { eps: 1e-8 }
    }
}

fn check_pair(a: &Tensor, b: &Tensor) -> Result<(), LossError> {
    check_float("embeddings", a)?;
    check_same_shape("second embeddings", b, a)?;
    if a.rank() != 2 {
        return Err(LossError::Shape {
            what: "embeddings".into(),
            expected: "[batch, dim]".into(),
            found: format!("{:?}", a.dims()),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(LossError::DType {
            what: "second embeddings".into(),
            expected: a.dtype(),
            found: b.dtype(),
        });
    }
    Ok(())
}

fn check_matrix(a: &Tensor, b: &Tensor) -> Result<(), LossError> {
    check_float("embeddings", a)?;
    check_float("embeddings", b)?;
    let (Ok((_, da)), Ok((_, db))) = (a.dims2(), b.dims2()) else {
        return Err(LossError::Shape {
            what: "matrix distance inputs".into(),
            expected: "[n, dim] and [m, dim]".into(),
            found: format!("{:?} and {:?}", a.dims(), b.dims()),
        });
    };
    if da != db || a.dtype() != b.dtype() {
        return Err(LossError::Shape {
            what: "matrix distance inputs".into(),
            expected: "the same embedding dimension and dtype".into(),
            found: format!(
                "{:?} {:?} and {:?} {:?}",
                a.dims(),
                a.dtype(),
                b.dims(),
                b.dtype()
            ),
        });
    }
    Ok(())
}

/// `||a_i - b_j||^2` for all `i, j` as `|a_i|^2 + |b_j|^2 - 2 a_i.b_j`, clamped at 0
/// (rounding can make it slightly negative).
fn squared_matrix(a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
    let a2 = a.sqr()?.sum_keepdim(1)?; // [N, 1]
    let b2 = b.sqr()?.sum_keepdim(1)?.t()?; // [1, M]
    let ab = a.matmul(&b.t()?)?; // [N, M]
    Ok(ab
        .affine(-2.0, 0.0)?
        .broadcast_add(&a2)?
        .broadcast_add(&b2)?
        .relu()?)
}

impl Distance for SquaredEuclidean {
    fn paired(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        check_pair(a, b)?;
        Ok((a - b)?.sqr()?.sum(D::Minus1)?)
    }

    fn matrix(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        check_matrix(a, b)?;
        squared_matrix(a, b)
    }
}

impl Distance for Euclidean {
    fn paired(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        Ok(SquaredEuclidean
            .paired(a, b)?
            .affine(1.0, self.eps)?
            .sqrt()?)
    }

    fn matrix(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        Ok(SquaredEuclidean
            .matrix(a, b)?
            .affine(1.0, self.eps)?
            .sqrt()?)
    }
}

impl Cosine {
    fn normalize(&self, x: &Tensor) -> Result<Tensor, LossError> {
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let floor = Tensor::full(self.eps, (), x.device())?.to_dtype(x.dtype())?;
        Ok(x.broadcast_div(&norm.broadcast_maximum(&floor)?)?)
    }
}

impl Distance for Cosine {
    fn paired(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        check_pair(a, b)?;
        let cos = (self.normalize(a)? * self.normalize(b)?)?.sum(D::Minus1)?;
        Ok(cos.affine(-1.0, 1.0)?)
    }

    fn matrix(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, LossError> {
        check_matrix(a, b)?;
        let cos = self.normalize(a)?.matmul(&self.normalize(b)?.t()?)?;
        Ok(cos.affine(-1.0, 1.0)?)
    }
}

/// Whether `dtype` is one this crate computes in.
pub(crate) fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}
