//! The training step, generic over the three seams: a [`PairSampler`] draws pairs, an
//! [`Embedder`] (inside the shared-weight [`SiameseModel`]) embeds both sides in one
//! pass, and a [`PairLoss`] scores them. Swapping any of them is a type (or config)
//! change, not a fork.

use candle_core::{Tensor, Var};
use siamese_data::{Augmenter, Batcher, ImageSet, PairBatch, PairSampler};
use siamese_loss::{nt_xent, Distance, Euclidean, PairLoss, Reduction};
use siamese_model::{Embedder, SiameseModel};
use siamese_state::{StateDict, StateError, Stateful};

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
                _ => {
                    // The batch's 2B images, in the order of the embeddings below.
                    let labels: Vec<u32> = pairs
                        .left
                        .iter()
                        .chain(&pairs.right)
                        .map(|&i| u32::from(set.labels()[i]))
                        .collect();
                    self.mined_loss(&Tensor::cat(&[&left, &right], 0)?, &labels, self.pairing)?
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

    /// The loss over the pairs of `embeddings` (rows) that `pairing`'s miner picks,
    /// same-class when their `labels` agree, with the trainer's reduction. The miner
    /// sees the distances without their gradients.
    fn mined_loss(
        &self,
        embeddings: &Tensor,
        labels: &[u32],
        pairing: Pairing,
    ) -> Result<Tensor, TrainError> {
        let miner = pairing
            .miner()
            .ok_or_else(|| TrainError::Config("sampled pairing mines no pairs".into()))?;
        let distances = if miner.needs_distances() {
            let e = embeddings.detach();
            self.distance
                .matrix(&e, &e)?
                .flatten_all()?
                .to_vec1::<f32>()?
        } else {
            Vec::new()
        };
        let mined = miner.mine(&distances, labels);
        let device = embeddings.device();
        if mined.is_empty() {
            // No pair to learn from (one class in the batch): a zero that keeps the graph.
            return Ok((embeddings.sum_all()? * 0.0)?);
        }
        let a = embeddings.index_select(&Tensor::new(mined.first, device)?, 0)?;
        let b = embeddings.index_select(&Tensor::new(mined.second, device)?, 0)?;
        let same = Tensor::new(mined.same, device)?.to_dtype(embeddings.dtype())?;
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
        let labels: Vec<u32> = images
            .iter()
            .chain(&images)
            .map(|&i| u32::from(set.labels()[i]))
            .collect();
        let labelled = self.mined_loss(&embeddings, &labels, self.pairing)?;
        let instance = match ssl.loss {
            ViewLoss::PairLoss => {
                // Every pair of views: the instance term is not mined.
                let instances: Vec<u32> = (0..2 * n).map(|i| (i % n) as u32).collect();
                self.mined_loss(&embeddings, &instances, Pairing::AllInBatch)?
            }
            ViewLoss::NtXent { temperature } => nt_xent(&embeddings, temperature)?,
        };
        Ok((labelled + (instance * ssl.weight)?)?)
    }
}

/// A trainer's state, for checkpoints: the embedder's under `model.`, the optimiser's
/// under `adam.`, the sampler's under `sampler.` and, with augmentation, the
/// augmenter's under `augment.`. Any embedder and sampler that implement [`Stateful`]
/// resume this way, built-in or not.
impl<S: PairSampler, E: Embedder + Stateful, L> Stateful for Trainer<S, E, L> {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        state.nest("model", self.model.tower.state_dict()?);
        state.nest("adam", self.optimizer.state_dict()?);
        state.nest("sampler", self.sampler.state_dict()?);
        if let Some(augmenter) = &self.augmenter {
            state.nest("augment", augmenter.state_dict()?);
        }
        Ok(state)
    }

    /// Each part checks its whole state before writing any of it, but a part refused
    /// after another was restored leaves the trainer half restored: discard it then.
    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        if self.augmenter.is_some() != state.contains("augment") {
            return Err(state.invalid(
                "augment",
                "the state and the trainer disagree on augmentation",
            ));
        }
        self.sampler.load_state_dict(&state.child("sampler"))?;
        self.model.tower.load_state_dict(&state.child("model"))?;
        self.optimizer.load_state_dict(&state.child("adam"))?;
        if let Some(augmenter) = &mut self.augmenter {
            augmenter.load_state_dict(&state.child("augment"))?;
        }
        Ok(())
    }
}
