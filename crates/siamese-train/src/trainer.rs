//! The training step, generic over the three seams: a [`PairSampler`] draws pairs, an
//! [`Embedder`] (inside the shared-weight [`SiameseModel`]) embeds both sides in one
//! pass, and a [`PairLoss`] scores them. Swapping any of them is a type (or config)
//! change, not a fork.

use candle_core::Var;
use siamese_data::{Batcher, ImageSet, PairSampler};
use siamese_loss::{Distance, Euclidean, PairLoss, Reduction};
use siamese_model::{Embedder, SiameseModel};

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
    /// How per-pair losses become one number.
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
            reduction: Reduction::Mean,
            optimizer: Adam::new(params, adam)?,
            batcher,
        })
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
        let distance = self.distance.paired(&left, &right)?;
        let terms = self.loss.terms(&distance, &batch.same)?;
        let loss = self.reduction.reduce(&terms, &batch.same)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::Diverged { step, loss: value });
        }
        let grads = loss.backward()?;
        self.optimizer.step(&grads, lr)?;
        Ok(value)
    }
}
