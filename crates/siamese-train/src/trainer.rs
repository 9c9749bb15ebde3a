//! The training step, generic over the three seams: a [`PairSampler`] draws pairs, an
//! [`Embedder`] (inside the shared-weight [`SiameseModel`]) embeds both sides in one
//! pass, and a [`PairLoss`] scores them. Swapping any of them is a type (or config)
//! change, not a fork.

use candle_core::{Tensor, Var};
use siamese_data::{Batcher, ImageSet, PairSampler};
use siamese_loss::{Distance, Euclidean, PairLoss, Reduction};
use siamese_model::{Embedder, SiameseModel};

use crate::config::Pairing;
use crate::error::TrainError;
use crate::optim::{Adam, AdamConfig};

/// Sampler, model, loss and optimiser of one run.
pub struct Trainer<S, E, L> {
    /// Draws the training pairs.
    pub sampler: S,
    /// The shared-weight pair model.
    pub model: SiameseModel<E>,
    /// Scores pairs from their distances.
    pub loss: L,
    /// The distance between a pair's embeddings.
    pub distance: Euclidean,
    /// Which pairs of a batch the loss sees.
    pub pairing: Pairing,
    /// How per-pair losses become one number ([`Self::set_pairing`] sets the one that
    /// goes with the pairing).
    pub reduction: Reduction,
    /// Updates the parameters.
    pub optimizer: Adam,
    batcher: Batcher,
}

impl<S: PairSampler, E: Embedder, L: PairLoss> Trainer<S, E, L> {
    /// A trainer updating `params` (name, variable) of `model`'s tower.
    pub fn new(
        sampler: S,
        model: SiameseModel<E>,
        loss: L,
        params: Vec<(String, Var)>,
        adam: AdamConfig,
        batcher: Batcher,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            sampler,
            model,
            loss,
            distance: Euclidean::default(),
            pairing: Pairing::Sampled,
            reduction: Reduction::Mean,
            optimizer: Adam::new(params, adam)?,
            batcher,
        })
    }

    /// Sets which pairs of a batch the loss sees, and the reduction that goes with it
    /// ([`Pairing::reduction`]).
    pub fn set_pairing(&mut self, pairing: Pairing) {
        self.pairing = pairing;
        self.reduction = pairing.reduction();
    }

    /// One step: draw `batch_size` pairs from `set`, forward in training mode, backward,
    /// update with learning rate `lr`. Returns the loss before the update. A non-finite
    /// loss is reported and the parameters are left untouched.
    pub fn step(
        &mut self,
        set: &ImageSet,
        batch_size: usize,
        lr: f64,
        step: u64,
    ) -> Result<f64, TrainError> {
        let pairs = self.sampler.sample(batch_size);
        let batch = self.batcher.pairs(set, &pairs)?;
        let (left, right) = self.model.forward_pair(&batch.left, &batch.right, true)?;
        let (distance, same) = match self.pairing {
            Pairing::Sampled => (self.distance.paired(&left, &right)?, batch.same),
            Pairing::AllInBatch => {
                // The batch's 2B images, in the order of the embeddings below.
                let labels: Vec<u8> = pairs
                    .left
                    .iter()
                    .chain(&pairs.right)
                    .map(|&i| set.labels()[i])
                    .collect();
                let (first, second, same) = all_pairs(&labels);
                let embeddings = Tensor::cat(&[&left, &right], 0)?;
                let device = embeddings.device();
                let a = embeddings.index_select(&Tensor::new(first, device)?, 0)?;
                let b = embeddings.index_select(&Tensor::new(second, device)?, 0)?;
                let same = Tensor::new(same, device)?.to_dtype(embeddings.dtype())?;
                (self.distance.paired(&a, &b)?, same)
            }
        };
        let terms = self.loss.terms(&distance, &same)?;
        let loss = self.reduction.reduce(&terms, &same)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::Diverged { step, loss: value });
        }
        let grads = loss.backward()?;
        self.optimizer.step(&grads, lr)?;
        Ok(value)
    }
}

/// Every pair `(i, j)`, `i < j`, of images with these labels: the two index lists and
/// whether each pair is same-class (1.0) or not (0.0).
pub fn all_pairs(labels: &[u8]) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let n = labels.len();
    let count = n * n.saturating_sub(1) / 2;
    let (mut first, mut second, mut same) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    for i in 0..n {
        for j in i + 1..n {
            first.push(i as u32);
            second.push(j as u32);
            same.push(f32::from(u8::from(labels[i] == labels[j])));
        }
    }
    (first, second, same)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pairs_lists_each_unordered_pair_once() {
        let (first, second, same) = all_pairs(&[3, 1, 3, 1]);
        assert_eq!(first, [0, 0, 0, 1, 1, 2]);
        assert_eq!(second, [1, 2, 3, 2, 3, 3]);
        assert_eq!(same, [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(all_pairs(&[7]).0.len(), 0);
        assert_eq!(all_pairs(&[]).0.len(), 0);
    }
}
