//! Contrastive pair losses: per-pair terms from distances and labels, and the
//! reductions that turn them into one number.
//!
//! Labels: `same = 1` for a pair of the same class ("genuine"), `0` for different
//! classes ("impostor"), as in the reference program's code. **The papers write the
//! opposite**: Chopra et al. 2005 and Hadsell et al. 2006 use `Y = 0` for genuine pairs.

use candle_core::{DType, Tensor};

use crate::error::{check_float, LossError};

/// A loss over pairs, returning one term per pair (reduce with [`Reduction`]).
pub trait PairLoss {
    /// Per-pair terms `[B]` from distances `[B]` and labels `[B]` (1 = same class).
    fn terms(&self, distance: &Tensor, same: &Tensor) -> Result<Tensor, LossError>;
}

impl<T: PairLoss + ?Sized> PairLoss for Box<T> {
    fn terms(&self, distance: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
        (**self).terms(distance, same)
    }
}

/// Chopra, Hadsell & LeCun 2005, with `E` the distance and `q` its upper bound:
///
/// `L = same * (2/q) * E^2 + (1 - same) * 2q * exp(-2.77 E / q)`
///
/// The genuine term grows with `E`; the impostor term decays from `2q` at `E = 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chopra2005 {
    /// Upper bound of the energy (the reference program uses 5).
    pub q: f64,
}

impl Default for Chopra2005 {
    fn default() -> Self {
        Self { q: 5.0 }
    }
}

/// Hadsell, Chopra & LeCun 2006, the margin contrastive loss:
///
/// `L = same * E^2 / 2 + (1 - same) * max(0, margin - E)^2 / 2`
///
/// Impostor pairs farther apart than the margin cost exactly nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hadsell2006 {
    /// Distance beyond which different-class pairs are not penalised.
    pub margin: f64,
}

impl Default for Hadsell2006 {
    fn default() -> Self {
        Self { margin: 1.0 }
    }
}

/// Checks shapes, dtypes and label values; returns `1 - same`.
fn check_inputs(distance: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
    check_float("distances", distance)?;
    if distance.rank() != 1 {
        return Err(LossError::Shape {
            what: "distances".into(),
            expected: "[batch]".into(),
            found: format!("{:?}", distance.dims()),
        });
    }
    crate::error::check_same_shape("pair labels", same, distance)?;
    if same.dtype() != distance.dtype() {
        return Err(LossError::DType {
            what: "pair labels".into(),
            expected: distance.dtype(),
            found: same.dtype(),
        });
    }
    // same * (1 - same) is 0 exactly when every label is 0 or 1; one scalar read. A sum
    // rather than a max, so that a NaN label propagates and is caught.
    let different = same.affine(-1.0, 1.0)?;
    if same.elem_count() > 0 {
        let worst = (same * &different)?
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if worst != 0.0 {
            let values = same.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let found = values
                .into_iter()
                .find(|v| *v != 0.0 && *v != 1.0)
                .unwrap_or(f64::NAN);
            return Err(LossError::Labels { found });
        }
    }
    Ok(different)
}

/// `value` when it is positive and finite, else an error naming the parameter.
fn positive_finite(name: &'static str, value: f64) -> Result<f64, LossError> {
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(LossError::Parameter {
            name,
            expected: "positive and finite",
            found: value,
        })
    }
}

impl Chopra2005 {
    /// A loss with upper bound `q > 0`.
    pub fn new(q: f64) -> Result<Self, LossError> {
        Ok(Self {
            q: positive_finite("q", q)?,
        })
    }
}

impl PairLoss for Chopra2005 {
    fn terms(&self, distance: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
        let different = check_inputs(distance, same)?;
        let q = self.q;
        let genuine = distance.sqr()?.affine(2.0 / q, 0.0)?;
        let impostor = distance
            .affine(-2.77 / q, 0.0)?
            .exp()?
            .affine(2.0 * q, 0.0)?;
        Ok(((same * genuine)? + (different * impostor)?)?)
    }
}

impl Hadsell2006 {
    /// A loss with margin `margin > 0`.
    pub fn new(margin: f64) -> Result<Self, LossError> {
        Ok(Self {
            margin: positive_finite("margin", margin)?,
        })
    }
}

impl PairLoss for Hadsell2006 {
    fn terms(&self, distance: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
        let different = check_inputs(distance, same)?;
        let genuine = distance.sqr()?.affine(0.5, 0.0)?;
        let impostor = distance
            .affine(-1.0, self.margin)?
            .relu()?
            .sqr()?
            .affine(0.5, 0.0)?;
        Ok(((same * genuine)? + (different * impostor)?)?)
    }
}

/// How per-pair terms become one loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over all pairs (the reference program).
    #[default]
    Mean,
    /// The sum over all pairs.
    Sum,
    /// `(mean over same-class pairs + mean over different-class pairs) / 2`, so each
    /// kind weighs the same whatever its share of the batch; a kind absent from the
    /// batch is left out (the mean of the other).
    BalancedMean,
}

impl Reduction {
    /// Reduces `terms [B]` to a scalar; `same [B]` is needed by [`Reduction::BalancedMean`].
    pub fn reduce(&self, terms: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
        match self {
            Reduction::Mean => Ok(terms.mean_all()?),
            Reduction::Sum => Ok(terms.sum_all()?),
            Reduction::BalancedMean => {
                let (pos, neg) = split_means(terms, same)?;
                let n_pos = same.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let n = same.elem_count() as f64;
                Ok(match (n_pos > 0.0, n_pos < n) {
                    (true, true) => ((pos + neg)? * 0.5)?,
                    (true, false) => pos,
                    (false, _) => neg,
                })
            }
        }
    }
}

/// The mean term over same-class pairs and over different-class pairs (each 0 when the
/// batch has no pair of that kind). Useful for logging both sides of the loss.
pub fn split_means(terms: &Tensor, same: &Tensor) -> Result<(Tensor, Tensor), LossError> {
    let different = same.affine(-1.0, 1.0)?;
    let mean_where = |mask: &Tensor| -> Result<Tensor, LossError> {
        let count = mask.sum_all()?.affine(1.0, 0.0)?;
        let total = (terms * mask)?.sum_all()?;
        // max(count, 1) keeps an empty group at 0 instead of 0/0.
        let one = Tensor::ones((), count.dtype(), count.device())?;
        Ok(total.div(&count.maximum(&one)?)?)
    };
    Ok((mean_where(same)?, mean_where(&different)?))
}

/// A distance, a pair loss and a reduction together: embeddings in, one loss out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContrastiveLoss<Dist, L> {
    /// The distance between the two embeddings of a pair.
    pub distance: Dist,
    /// The per-pair loss.
    pub loss: L,
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl<Dist: crate::Distance, L: PairLoss> ContrastiveLoss<Dist, L> {
    /// The reduced loss of embeddings `a`, `b` (`[B, D]`) with labels `same` (`[B]`).
    pub fn forward(&self, a: &Tensor, b: &Tensor, same: &Tensor) -> Result<Tensor, LossError> {
        check_float("pair labels", same)?;
        let distance = self.distance.paired(a, b)?;
        let terms = self.loss.terms(&distance, same)?;
        self.reduction.reduce(&terms, same)
    }
}
