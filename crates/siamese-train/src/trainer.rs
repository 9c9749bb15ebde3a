//! The training step, generic over the three seams: a [`PairSampler`] draws pairs, an
//! [`Embedder`] (inside the shared-weight [`SiameseModel`]) embeds both sides in one
//! pass, and a [`PairLoss`] scores them. Swapping any of them is a type (or config)
//! change, not a fork.

use candle_core::{Tensor, Var};
use siamese_data::{Augmenter, Batcher, ImageSet, PairBatch, PairSampler};
use siamese_loss::{nt_xent, Distance, Euclidean, PairLoss, Reduction};
use siamese_model::{Embedder, SiameseModel};

use crate::config::{Pairing, SelfSupervised, ViewLoss};
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
    /// Distorts every training image, when set.
    pub augmenter: Option<Augmenter>,
    /// The self-supervised term (two views of each image, the two views of one image
    /// the only positives), when set. Needs an augmenter.
    pub self_supervised: Option<SelfSupervised>,
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
            augmenter: None,
            self_supervised: None,
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
        let loss = if let Some(ssl) = self.self_supervised {
            self.views_loss(set, &pairs, ssl)?
        } else {
            let batch = self.batcher.pairs(set, &pairs, self.augmenter.as_mut())?;
            let (left, right) = self.model.forward_pair(&batch.left, &batch.right, true)?;
            match self.pairing {
                Pairing::Sampled => {
                    let distance = self.distance.paired(&left, &right)?;
                    let terms = self.loss.terms(&distance, &batch.same)?;
                    self.reduction.reduce(&terms, &batch.same)?
                }
                Pairing::AllInBatch => {
                    // The batch's 2B images, in the order of the embeddings below.
                    let labels: Vec<u8> = pairs
                        .left
                        .iter()
                        .chain(&pairs.right)
                        .map(|&i| set.labels()[i])
                        .collect();
                    self.all_pairs_loss(&Tensor::cat(&[&left, &right], 0)?, &labels)?
                }
            }
        };
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                what: format!("the loss is {value}"),
                kept: String::new(),
            });
        }
        let grads = loss.backward()?;
        self.optimizer.step(&grads, lr)?;
        Ok(value)
    }

    /// The loss over every pair of `embeddings` (rows), same-class when their `labels`
    /// agree, with the trainer's reduction.
    fn all_pairs_loss<T: PartialEq>(
        &self,
        embeddings: &Tensor,
        labels: &[T],
    ) -> Result<Tensor, TrainError> {
        let (first, second, same) = all_pairs(labels);
        let device = embeddings.device();
        let a = embeddings.index_select(&Tensor::new(first, device)?, 0)?;
        let b = embeddings.index_select(&Tensor::new(second, device)?, 0)?;
        let same = Tensor::new(same, device)?.to_dtype(embeddings.dtype())?;
        let distance = self.distance.paired(&a, &b)?;
        let terms = self.loss.terms(&distance, &same)?;
        Ok(self.reduction.reduce(&terms, &same)?)
    }

    /// Two augmented views of each of the batch's `2B` images, embedded in one pass:
    /// the labelled loss over every pair of the `4B` views (same class = same), plus
    /// the weighted self-supervised loss, for which only the two views of one image
    /// belong together (instance discrimination, SimCLR's positives). The second term
    /// keeps images of one class apart from each other, so the embedding does not
    /// collapse onto the training classes: what unseen classes need.
    fn views_loss(
        &mut self,
        set: &ImageSet,
        pairs: &PairBatch,
        ssl: SelfSupervised,
    ) -> Result<Tensor, TrainError> {
        let augmenter = self
            .augmenter
            .as_mut()
            .ok_or_else(|| TrainError::Config("self-supervised views need augmentation".into()))?;
        let images: Vec<usize> = pairs.left.iter().chain(&pairs.right).copied().collect();
        let first = self.batcher.images_augmented(set, &images, augmenter)?;
        let second = self.batcher.images_augmented(set, &images, augmenter)?;
        let embeddings = self
            .model
            .tower
            .forward_t(&Tensor::cat(&[&first, &second], 0)?, true)?;
        let n = images.len();
        let labels: Vec<u8> = images
            .iter()
            .chain(&images)
            .map(|&i| set.labels()[i])
            .collect();
        let labelled = self.all_pairs_loss(&embeddings, &labels)?;
        let instance = match ssl.loss {
            ViewLoss::PairLoss => {
                let instances: Vec<usize> = (0..2 * n).map(|i| i % n).collect();
                self.all_pairs_loss(&embeddings, &instances)?
            }
            ViewLoss::NtXent { temperature } => nt_xent(&embeddings, temperature)?,
        };
        Ok((labelled + (instance * ssl.weight)?)?)
    }
}

/// Every pair `(i, j)`, `i < j`, of images with these labels: the two index lists and
/// whether each pair is same-class (1.0) or not (0.0).
pub fn all_pairs<T: PartialEq>(labels: &[T]) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
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
        assert_eq!(all_pairs::<u8>(&[]).0.len(), 0);
    }
}
