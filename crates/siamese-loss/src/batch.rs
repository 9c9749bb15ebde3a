//! Losses over a whole batch: embeddings `[N, D]` with one label per row in, one
//! scalar out. This is the loss side of a training step, composed once from parts as
//! pytorch-metric-learning composes them: a [`Miner`] picks the pairs of the batch, a
//! [`Distance`] measures them, a [`PairLoss`] scores each one and a [`Reduction`] makes
//! one number ([`MinedLoss`]). The reference program's sampled pairs are one miner
//! among the others ([`crate::PairedHalves`]), so the trainer has a single path.
//!
//! Two more losses fit the same shape: [`NtXent`] (SimCLR's loss over two views of
//! each image) and [`WithViewTerm`], a labelled loss plus a weighted instance term
//! over two views of each image, the two views of one image its only positives.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use siamese_loss::{BatchLoss, BatchHard, Euclidean, Hadsell2006, MinedLoss, Reduction};
//!
//! // Four embeddings of two classes: 0 and 1 near each other, 2 and 3 far off.
//! let e = Tensor::new(&[[0f32, 0.], [0., 1.], [3., 0.], [3., 2.]], &Device::Cpu)?;
//! let loss = MinedLoss::new(BatchHard, Euclidean::default(), Hadsell2006 { margin: 1.0 }, Reduction::BalancedMean);
//! // Batch hard: each row's farthest same-class row and nearest other-class row. Every
//! // impostor is beyond the margin and costs 0; the positives cost E^2 / 2 (0.5, 0.5, 2, 2:
//! // mean 1.25), and the balanced mean weighs both kinds alike: (1.25 + 0) / 2.
//! let value = loss.forward(&e, &[7, 7, 9, 9])?.to_scalar::<f32>()?;
//! assert!((value - 0.625).abs() < 1e-6);
//! # Ok::<(), siamese_loss::LossError>(())
//! ```

use candle_core::Tensor;

use crate::distance::Distance;
use crate::error::LossError;
use crate::loss::{PairLoss, Reduction};
use crate::miner::{MinedPairs, Miner};
use crate::ntxent::nt_xent;

/// A loss over a batch of embeddings with one label per row (the row's class, or any
/// identity that decides which rows belong together).
pub trait BatchLoss {
    /// The loss of `embeddings [N, D]`, row `i` labelled `labels[i]`: a scalar tensor
    /// that keeps the graph back to the embeddings.
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError>;
}

impl<T: BatchLoss + ?Sized> BatchLoss for Box<T> {
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        (**self).forward(embeddings, labels)
    }
}

fn check_rows(embeddings: &Tensor, labels: &[u32]) -> Result<usize, LossError> {
    match embeddings.dims2() {
        Ok((n, _)) if n == labels.len() => Ok(n),
        _ => Err(LossError::Shape {
            what: "embeddings".into(),
            expected: format!("[{}, dim]: one row per label", labels.len()),
            found: format!("{:?}", embeddings.dims()),
        }),
    }
}

/// Miner, distance, pair loss and reduction, composed once: the miner picks pairs of
/// the batch's rows (looking at their distances without gradients when it needs them),
/// and the loss is the reduced per-pair terms of those pairs' distances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinedLoss<M, Dist, L> {
    /// Picks the pairs.
    pub miner: M,
    /// Measures them.
    pub distance: Dist,
    /// Scores each pair.
    pub loss: L,
    /// Makes the terms one number.
    pub reduction: Reduction,
}

impl<M, Dist, L> MinedLoss<M, Dist, L> {
    /// The loss of these parts.
    pub fn new(miner: M, distance: Dist, loss: L, reduction: Reduction) -> Self {
        Self {
            miner,
            distance,
            loss,
            reduction,
        }
    }
}

impl<M: Miner, Dist: Distance, L: PairLoss> MinedLoss<M, Dist, L> {
    /// The pairs the miner picks among `embeddings`' rows.
    pub fn mine(&self, embeddings: &Tensor, labels: &[u32]) -> Result<MinedPairs, LossError> {
        check_rows(embeddings, labels)?;
        let distances = if self.miner.needs_distances() {
            let e = embeddings.detach();
            self.distance
                .matrix(&e, &e)?
                .flatten_all()?
                .to_vec1::<f32>()?
        } else {
            Vec::new()
        };
        Ok(self.miner.mine(&distances, labels))
    }
}

impl<M: Miner, Dist: Distance, L: PairLoss> BatchLoss for MinedLoss<M, Dist, L> {
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        let mined = self.mine(embeddings, labels)?;
        if mined.is_empty() {
            // No pair to learn from (one class in the batch): a zero that keeps the
            // graph, so the step still runs and the optimiser sees zero gradients.
            return Ok((embeddings.sum_all()? * 0.0)?);
        }
        let device = embeddings.device();
        let first = embeddings.index_select(&Tensor::new(mined.first, device)?, 0)?;
        let second = embeddings.index_select(&Tensor::new(mined.second, device)?, 0)?;
        let same = Tensor::new(mined.same, device)?.to_dtype(embeddings.dtype())?;
        let distance = self.distance.paired(&first, &second)?;
        let terms = self.loss.terms(&distance, &same)?;
        self.reduction.reduce(&terms, &same)
    }
}

/// NT-Xent ([`nt_xent`]) over two views of each image: rows `i` and `i + N/2` are the
/// two views of one image, and the labels must say so (`labels[i] == labels[i + N/2]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NtXent {
    /// The softmax temperature (SimCLR uses 0.1-0.5).
    pub temperature: f64,
}

impl BatchLoss for NtXent {
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        let n = check_rows(embeddings, labels)?;
        let (first, second) = labels.split_at(n / 2);
        if n % 2 != 0 || first != second {
            return Err(LossError::Shape {
                what: "NT-Xent views".into(),
                expected: "two views of each image: rows i and i + N/2 labelled alike".into(),
                found: format!("{n} rows whose halves are labelled differently"),
            });
        }
        nt_xent(embeddings, self.temperature)
    }
}

/// The labels of two views of `n` images laid out as [`WithViewTerm`] expects: rows `i`
/// and `i + n` are image `i`, so each image is its own class.
pub fn view_labels(n: usize) -> Vec<u32> {
    // Row counts of one batch: bounded far below u32::MAX by the training config.
    (0..2 * n).map(|i| (i % n) as u32).collect()
}

/// A labelled loss plus `weight` times an instance term, over two views of each image
/// (rows `i` and `i + N/2`): the labelled loss sees the rows' classes, the instance term
/// sees only which rows are views of one image ([`view_labels`]). The second keeps
/// images of one class apart from each other, so the embedding does not collapse onto
/// the training classes: what classes never trained on need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WithViewTerm<A, B> {
    /// The loss over the rows' classes.
    pub labelled: A,
    /// The loss over view identities.
    pub instance: B,
    /// The instance term's weight (the labelled loss has weight 1).
    pub weight: f64,
}

impl<A: BatchLoss, B: BatchLoss> BatchLoss for WithViewTerm<A, B> {
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        let n = check_rows(embeddings, labels)?;
        if n % 2 != 0 {
            return Err(LossError::Shape {
                what: "views".into(),
                expected: "two views of each image: an even number of rows".into(),
                found: format!("{n} rows"),
            });
        }
        let labelled = self.labelled.forward(embeddings, labels)?;
        let instance = self.instance.forward(embeddings, &view_labels(n / 2))?;
        Ok((labelled + (instance * self.weight)?)?)
    }
}
