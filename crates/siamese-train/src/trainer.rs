//! The training step as a pipeline of parts, each behind its seam:
//!
//! sample ([`StepSampler`]: which images, as pairs or as an episode) -> batch
//! ([`Batcher`]: the images as one tensor, one label per image, pairs laid out as a
//! [`Layout`], an episode's support then query rows) -> embed ([`Embedder`]: one
//! pass of the shared-weight tower over the whole batch) -> loss ([`BatchLoss`]: miner,
//! distance, pair loss and reduction, composed once) -> backward -> leave out what moved
//! every embedding alike (for a loss of differences: [`Embedder::shift_activity`]) ->
//! optimiser ([`Optimizer`]: Adam or SGD).
//!
//! Each part sees only what the part before it handed on: nothing after the tower
//! reaches back to the sampler or the data set. Swapping any part is a type (or
//! config) change, not a fork.

use candle_core::{Tensor, Var};
use siamese_data::{Augmenter, Batcher, ImageSet, LabelledBatch, Layout, StepSampler};
use siamese_loss::BatchLoss;
use siamese_model::Embedder;
use siamese_state::{StateDict, StateError, Stateful};

use crate::distributed::everywhere;
use crate::error::TrainError;
use crate::optim::{Method, Optimizer};

/// Sampler, tower, loss and optimiser of one run.
pub struct Trainer<S, E, L> {
    /// Draws the training pairs or episodes.
    pub sampler: S,
    /// The tower, shared by every image of the batch.
    pub tower: E,
    /// The loss over the batch's labelled embeddings.
    pub loss: L,
    /// Updates the parameters.
    pub optimizer: Optimizer,
    /// Distorts every training image, when set.
    pub augmenter: Option<Augmenter>,
    /// How the batch's images are laid out ([`Layout::TwoViews`] for a loss with a
    /// self-supervised term; it needs the augmenter).
    pub layout: Layout,
    /// Whether the loss sees only differences of embeddings (unchanged when every
    /// embedding moves by one vector): each step then leaves out of the update the
    /// entries the tower reports as such a move ([`Embedder::shift_activity`]).
    /// Their true gradient is zero and the computed one rounding noise, which Adam
    /// would turn into full steps, different in one process and over several ranks.
    pub loss_sees_only_differences: bool,
    batcher: Batcher,
}

impl<S: StepSampler, E: Embedder, L: BatchLoss> Trainer<S, E, L> {
    /// A trainer updating `params` (name, variable) of `tower`, with pair batches laid
    /// out as [`Layout::Pairs`] and no augmentation.
    pub fn new(
        sampler: S,
        tower: E,
        loss: L,
        params: Vec<(String, Var)>,
        method: impl Into<Method>,
        batcher: Batcher,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            sampler,
            tower,
            loss,
            optimizer: Optimizer::new(params, method)?,
            augmenter: None,
            layout: Layout::Pairs,
            loss_sees_only_differences: false,
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
        let batch = self.batch(set, batch_size)?;
        let loss = self.loss_of(&batch)?;
        let value = finite_loss(&loss, step)?;
        let mut grads = loss.backward()?;
        self.leave_out_uniform_shifts(&mut grads, &siamese_collective::SingleProcess)?;
        self.optimizer.step(&grads, lr)?;
        Ok(value)
    }

    /// [`Self::step`] as one rank of a data-parallel group: every rank draws the same
    /// global batch (the same sampler and augmenter streams), embeds its own rows of it
    /// ([`siamese_collective::shard`]; batch norm over the global batch, its rows of the
    /// global dropout masks: [`Embedder::forward_t_shard`]), and computes the loss of the
    /// whole batch from every rank's embeddings ([`crate::distributed::all_gather_rows`]);
    /// the gradients, summed over the ranks ([`crate::distributed::all_reduce_gradients`]),
    /// are the one-process gradient of that batch, and every rank makes the same update.
    /// A world of one is [`Self::step`] itself.
    pub fn step_data_parallel(
        &mut self,
        set: &ImageSet,
        batch_size: usize,
        lr: f64,
        step: u64,
        collective: &siamese_collective::SharedCollective,
    ) -> Result<f64, TrainError> {
        if collective.world_size() == 1 {
            return self.step(set, batch_size, lr, step);
        }
        let (value, grads) = self.gradients_data_parallel(set, batch_size, step, collective)?;
        self.optimizer.step(&grads, lr)?;
        Ok(value)
    }

    /// The loss of the next global batch and its gradients summed over the ranks, as
    /// [`Self::step_data_parallel`] takes them, before the update: sample -> batch ->
    /// this rank's rows -> embed -> gather every rank's embeddings -> loss -> backward ->
    /// all-reduce.
    pub fn gradients_data_parallel(
        &mut self,
        set: &ImageSet,
        batch_size: usize,
        step: u64,
        collective: &siamese_collective::SharedCollective,
    ) -> Result<(f64, candle_core::backprop::GradStore), TrainError> {
        let batch = self.batch(set, batch_size)?;
        let n = batch.labels.len();
        let shard = siamese_model::data_parallel::Shard::of(collective, n);
        let local = batch
            .images
            .narrow(0, shard.rows.0, shard.rows.1 - shard.rows.0)?;
        let embeddings = self.tower.forward_t_shard(&local, true, &shard)?;
        let all = crate::distributed::all_gather_rows(&embeddings, n, collective.as_ref())?;
        let loss = self.loss.forward(&all, &batch.labels)?;
        let value = finite_loss(&loss, step)?;
        let mut grads = loss.backward()?;
        let params = self.optimizer.params();
        crate::distributed::all_reduce_gradients(params, &mut grads, collective.as_ref())?;
        self.leave_out_uniform_shifts(&mut grads, collective.as_ref())?;
        Ok((value, grads))
    }

    /// Zeroes the gradient entries that moved every embedding of the step's global
    /// batch by one common vector, when the loss sees only differences: the tower's
    /// [`Embedder::shift_activity`] over its rows, combined over the ranks of
    /// `collective` (a cell reached every image, or none, of the global batch when it
    /// did of every rank's rows).
    fn leave_out_uniform_shifts(
        &self,
        grads: &mut candle_core::backprop::GradStore,
        collective: &dyn siamese_collective::Collective,
    ) -> Result<(), TrainError> {
        if !self.loss_sees_only_differences {
            return Ok(());
        }
        for mut activity in self.tower.shift_activity() {
            activity.every_image = everywhere(&activity.every_image, collective)?;
            activity.no_image = everywhere(&activity.no_image, collective)?;
            let uniform = activity.uniform();
            let params = self.optimizer.params();
            let Some((_, var)) = params.iter().find(|(n, _)| *n == activity.name) else {
                continue;
            };
            let Some(grad) = grads.get(var) else {
                continue;
            };
            if grad.elem_count() != uniform.len() {
                return Err(TrainError::Config(format!(
                    "{}: the tower reported {} entries for a gradient of {}",
                    activity.name,
                    uniform.len(),
                    grad.elem_count()
                )));
            }
            let keep: Vec<f32> = uniform.iter().map(|&u| f32::from(u8::from(!u))).collect();
            let keep =
                Tensor::from_vec(keep, grad.shape(), grad.device())?.to_dtype(grad.dtype())?;
            let kept = (grad * keep)?;
            grads.insert(var.as_tensor(), kept);
        }
        Ok(())
    }

    /// Sample and batch: the next `batch_size` pairs' images (or the next episode's)
    /// with their labels.
    pub fn batch(
        &mut self,
        set: &ImageSet,
        batch_size: usize,
    ) -> Result<LabelledBatch, TrainError> {
        let draw = self.sampler.draw(batch_size);
        Ok(self
            .batcher
            .drawn(set, &draw, self.layout, self.augmenter.as_mut())?)
    }

    /// Embed and score: the loss of `batch` in training mode, with its graph.
    pub fn loss_of(&self, batch: &LabelledBatch) -> Result<Tensor, TrainError> {
        let embeddings = self.tower.forward_t(&batch.images, true)?;
        Ok(self.loss.forward(&embeddings, &batch.labels)?)
    }
}

/// The loss's value, or the divergence error at `step` when it is NaN or infinite
/// (nothing of the step is applied then).
fn finite_loss(loss: &Tensor, step: u64) -> Result<f64, TrainError> {
    let value = f64::from(loss.to_scalar::<f32>()?);
    if !value.is_finite() {
        return Err(TrainError::Diverged {
            step,
            what: format!("the loss is {value}"),
            kept: String::new(),
        });
    }
    Ok(value)
}

/// A trainer's state, for checkpoints: the embedder's under `model.`, the optimiser's
/// under `adam.` or `sgd.`, the sampler's under `sampler.` and, with augmentation, the
/// augmenter's under `augment.`. Any embedder and sampler that implement [`Stateful`]
/// resume this way, built-in or not.
impl<S: StepSampler, E: Embedder + Stateful, L> Stateful for Trainer<S, E, L> {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        state.nest("model", self.tower.state_dict()?);
        state.nest(self.optimizer.state_key(), self.optimizer.state_dict()?);
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
        self.tower.load_state_dict(&state.child("model"))?;
        self.optimizer
            .load_state_dict(&state.child(self.optimizer.state_key()))?;
        if let Some(augmenter) = &mut self.augmenter {
            augmenter.load_state_dict(&state.child("augment"))?;
        }
        Ok(())
    }
}
