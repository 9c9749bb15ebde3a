//! The conv tower (one side of the Siamese network) and the [`Embedder`] trait that the
//! trainer sees.
//!
//! Training and inference differ by a flag, not by a copy (candle-nn's `ModuleT`): in
//! training, dropout is on and batch norm normalises with the batch's statistics and
//! updates its running statistics; in inference, dropout is off and batch norm uses the
//! running statistics, so an image's embedding does not depend on its batch.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use siamese_state::{StateDict, StateError, Stateful};

use crate::config::{TowerConfig, TowerLayer};
use crate::error::ModelError;
use crate::kernels::{
    batch_statistics, conv_stack_inference, fused_path, Conv2dRelu, DropoutBatchNorm, LinearAct,
    MaxPoolRelu,
};
use crate::uniform_shift::ShiftActivity;

/// Images per slice when a large batch is embedded in inference mode.
const INFERENCE_SLICE: usize = 1024;

/// Maps an image batch to embeddings.
pub trait Embedder {
    /// `[B, C, H, W]` images to the `[B, D]` outputs the training loss sees; `train`
    /// switches dropout and batch norm to their training behaviour.
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor, ModelError>;
    /// The embeddings of `images` in inference mode, as evaluation, kNN, `verify` and
    /// `embed` use them: by default the training output, or an earlier layer's when the
    /// last layers are a projection head used only in training.
    fn embed(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_t(images, false)
    }
    /// [`Embedder::embed`] of the images as they are, without the test-time views a
    /// config may average ([`TowerConfig::shift_average`]): what training's periodic
    /// validation scores, a fraction of the cost. By default `embed`.
    fn embed_one_view(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        self.embed(images)
    }
    /// The dimension of [`Embedder::embed`]'s rows.
    fn embedding_dim(&self) -> usize;
    /// How the shift parameters whose effect on the embeddings depends on the batch
    /// reached the outputs of the last training forward (this process's rows), so that
    /// a trainer can leave out the entries that moved every embedding by one common
    /// vector ([`crate::uniform_shift`]); unlike [`ConvTower::shift_parameters`], which
    /// always do. By default none.
    fn shift_activity(&self) -> Vec<ShiftActivity> {
        Vec::new()
    }
    /// [`Embedder::forward_t`] of this rank's rows `shard` of a global batch spread over
    /// ranks, as the global batch would give them: an embedder whose training draws
    /// batch statistics or random masks must take them over the global batch. The
    /// default, for embedders that treat each image alone, is `forward_t`.
    fn forward_t_shard(
        &self,
        images: &Tensor,
        train: bool,
        shard: &crate::data_parallel::Shard,
    ) -> Result<Tensor, ModelError> {
        let _ = shard;
        self.forward_t(images, train)
    }
}

/// An embedder whose [`Embedder::embed`] is the inner one's
/// [`Embedder::embed_one_view`]: the images as they are, without test-time views.
pub struct OneView<'a, E>(pub &'a E);

impl<E: Embedder> Embedder for OneView<'_, E> {
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.0.forward_t(images, train)
    }
    fn embed(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        self.0.embed_one_view(images)
    }
    fn embedding_dim(&self) -> usize {
        self.0.embedding_dim()
    }
}

/// Where the dropout generator stands, for checkpoints: a resumed run continues the
/// same masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutState {
    /// The seed the generator was made from.
    pub seed: u64,
    /// How many 32-bit words it has produced.
    pub word_pos: u64,
}

struct ConvLayer {
    conv: Conv2d,
    /// The same convolution for the fused kernel; its geometry also pads the input of
    /// the plain path ([`crate::kernels::ConvGeometry::pad_tensor`]), whose `conv` pads
    /// nothing.
    fused: Conv2dRelu,
    /// Batch norm over the convolution's channels, before its ReLU
    /// ([`TowerConfig::conv_batch_norm`]).
    bn: Option<BatchNorm>,
}

impl ConvLayer {
    /// The bias, which the fused kernels need (every convolution of the tower has one).
    fn bias(&self) -> Result<&Tensor, ModelError> {
        self.conv
            .bias()
            .ok_or_else(|| ModelError::Config("convolutions have biases".to_string()))
    }
}

struct HiddenLayer {
    fc: Linear,
    bn: Option<BatchNorm>,
}

/// The tower of DESIGN.md: convolutions with ReLU, fully connected layers with ReLU,
/// dropout and batch norm, and a linear embedding.
pub struct ConvTower {
    config: TowerConfig,
    convs: Vec<ConvLayer>,
    hidden: Vec<HiddenLayer>,
    head: Linear,
    dropout: Mutex<(u64, ChaCha8Rng)>,
    /// Whether the layers run as the fused kernels of [`crate::kernels`] (CPU f32) or
    /// as plain candle ops (any device).
    fused: bool,
    /// After a training forward of a tower whose last convolution feeds the head
    /// directly, how that convolution's shift reached its outputs
    /// ([`Embedder::shift_activity`]).
    last_shift: Mutex<Option<ShiftActivity>>,
    /// The checkpoint the tower was loaded from, named when it fails in use.
    origin: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConvTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvTower")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConvTower {
    /// Builds the tower from `vb` (a `VarMap` for training, loaded tensors for
    /// inference); parameter names are those of [`TowerConfig::parameter_shapes`].
    /// `dropout_seed` fixes the dropout masks.
    pub fn new(
        config: &TowerConfig,
        vb: VarBuilder,
        dropout_seed: u64,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let mut convs = Vec::new();
        let layers = config.conv_layers();
        let last = layers.len().saturating_sub(1);
        let blocks = config.conv_blocks();
        let bn_config = BatchNormConfig {
            eps: config.batch_norm_eps,
            momentum: config.batch_norm_momentum,
            ..Default::default()
        };
        for (i, geometry) in layers.into_iter().enumerate() {
            let cfg = Conv2dConfig {
                padding: 0,
                stride: geometry.stride,
                ..Default::default()
            };
            let vb_conv = vb.pp(format!("conv{}", i + 1));
            let conv = candle_nn::conv2d(
                geometry.c_in,
                geometry.c_out,
                geometry.kernel,
                cfg,
                vb_conv.clone(),
            )?;
            let bn = if config.conv_batch_norm {
                Some(candle_nn::batch_norm(
                    geometry.c_out,
                    bn_config,
                    vb_conv.pp("bn"),
                )?)
            } else {
                None
            };
            convs.push(ConvLayer {
                conv,
                fused: Conv2dRelu {
                    geometry,
                    // The first layer's input is the images: no gradient needed.
                    input_grad: i > 0,
                    // Blocks pool channels last, and reorder after the last one.
                    channels_first_output: i == last && !blocks,
                    // In a block the ReLU comes after batch norm, with the pool.
                    relu: !blocks,
                },
                bn,
            });
        }
        let mut hidden = Vec::new();
        let mut f_in = config.flatten_size();
        for (j, &f) in config.fc_widths.iter().enumerate() {
            let fc = candle_nn::linear(f_in, f, vb.pp(format!("fc{}", j + 1)))?;
            let bn = if config.batch_norm {
                Some(candle_nn::batch_norm(
                    f,
                    bn_config,
                    vb.pp(format!("bn{}", j + 1)),
                )?)
            } else {
                None
            };
            hidden.push(HiddenLayer { fc, bn });
            f_in = f;
        }
        let head = candle_nn::linear(
            f_in,
            config.embedding_dim,
            vb.pp(format!("fc{}", config.fc_widths.len() + 1)),
        )?;
        Ok(Self {
            config: config.clone(),
            convs,
            hidden,
            head,
            dropout: Mutex::new((dropout_seed, ChaCha8Rng::seed_from_u64(dropout_seed))),
            fused: fused_path(vb.device(), vb.dtype()),
            last_shift: Mutex::new(None),
            origin: None,
        })
    }

    /// Records the checkpoint the tower came from ([`crate::checkpoint::load_tower`]
    /// does), so that an error in use names it.
    pub fn set_origin(&mut self, path: &std::path::Path) {
        self.origin = Some(path.to_path_buf());
    }

    /// A freshly initialised tower for training: its parameters live in the returned
    /// `VarMap`, initialised as the reference program (truncated normal weights,
    /// zero biases) from `seed`, which also seeds dropout.
    pub fn init(
        config: &TowerConfig,
        device: &Device,
        seed: u64,
    ) -> Result<(Self, VarMap), ModelError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let tower = Self::new(config, vb, seed.wrapping_add(1))?;
        crate::init::reference_init(&varmap, config, seed)?;
        Ok((tower, varmap))
    }

    /// The variables of `varmap` an optimiser trains, by name in name order: every
    /// parameter but batch norm's running statistics (which the forward pass updates)
    /// and the bias of a convolution that batch norm follows. Batch norm subtracts that
    /// bias again, so its true gradient is zero and the computed one is rounding noise,
    /// which Adam (dividing each gradient by its own size) would turn into steps of the
    /// full learning rate: harmless to the function, but the ranks of a data-parallel
    /// run, whose noise differs, would drift apart. Those biases keep their initial zero.
    pub fn trainable_parameters(varmap: &VarMap) -> Vec<(String, Var)> {
        let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let before_batch_norm = |name: &str| {
            name.strip_suffix(".bias")
                .is_some_and(|conv| vars.contains_key(&format!("{conv}.bn.weight")))
        };
        let mut params: Vec<(String, Var)> = vars
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .filter(|(n, _)| !before_batch_norm(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// The parameters that move every embedding by one common vector: the head's bias
    /// and, when the last hidden layer ends in batch norm, that batch norm's shift. A
    /// loss that sees only differences of embeddings (Euclidean distances, unnormalised)
    /// gives them a zero gradient, so a trainer leaves them out for the reason
    /// [`Self::trainable_parameters`] leaves out a bias before batch norm.
    pub fn shift_parameters(config: &TowerConfig) -> Vec<String> {
        let hidden = config.fc_widths.len();
        let mut names = vec![format!("fc{}.bias", hidden + 1)];
        if config.batch_norm && hidden > 0 {
            names.push(format!("bn{hidden}.bias"));
        }
        names
    }

    /// What an optimiser trains under `config`: [`Self::trainable_parameters`], less
    /// [`Self::shift_parameters`] when the loss sees only differences of embeddings.
    pub fn trained_parameters(
        varmap: &VarMap,
        config: &TowerConfig,
        loss_sees_only_differences: bool,
    ) -> Vec<(String, Var)> {
        let mut params = Self::trainable_parameters(varmap);
        if loss_sees_only_differences {
            let shifts = Self::shift_parameters(config);
            params.retain(|(name, _)| !shifts.contains(name));
        }
        params
    }

    /// The configuration.
    pub fn config(&self) -> &TowerConfig {
        &self.config
    }

    /// Whether the fused CPU kernels run the layers (the default on CPU f32).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Runs the layers as plain candle ops (`false`) or as the fused kernels (`true`,
    /// honoured only on CPU f32). The two compute the same function; the plain path is
    /// the reference the kernels are tested against.
    pub fn set_fused(&mut self, fused: bool) {
        let p = self.convs.first().map(|c| c.conv.weight());
        self.fused = fused && p.is_none_or(|w| fused_path(w.device(), w.dtype()));
    }

    /// The dropout generator's position.
    pub fn dropout_state(&self) -> DropoutState {
        let guard = self.dropout.lock().unwrap_or_else(|e| e.into_inner());
        DropoutState {
            seed: guard.0,
            word_pos: guard.1.get_word_pos() as u64,
        }
    }

    /// Continues the dropout masks from a saved position.
    pub fn set_dropout_state(&self, state: DropoutState) {
        let mut guard = self.dropout.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
        rng.set_word_pos(u128::from(state.word_pos));
        *guard = (state.seed, rng);
    }

    /// Inverted dropout with masks from the tower's own seeded generator (candle's CPU
    /// generator cannot be seeded, and runs must be reproducible).
    fn dropout(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mask = self.dropout_mask(x.elem_count());
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    /// [`Self::dropout`] of `x`, or, for one rank's rows of a global batch, those rows
    /// of the global batch's masks (the generator advances by the whole batch on every
    /// rank, as in one process).
    fn dropout_rows(
        &self,
        x: &Tensor,
        shard: Option<&crate::data_parallel::Shard>,
    ) -> Result<Tensor, ModelError> {
        let Some(s) = shard else {
            return self.dropout(x);
        };
        let features = x.elem_count() / x.dim(0)?.max(1);
        let all = self.dropout_mask(s.total * features);
        let mine = all[s.rows.0 * features..s.rows.1 * features].to_vec();
        let mask = Tensor::from_vec(mine, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    /// Training-mode batch norm of one rank's rows `x` (`[rows, features]`, or
    /// `[images, channels, height, width]` after a convolution) with the statistics of
    /// the global batch: per-channel sums all-reduced over the ranks, in the backward
    /// pass too. The running statistics move by candle-nn's rule, the same on every rank.
    fn batch_norm_global(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        shard: &crate::data_parallel::Shard,
    ) -> Result<Tensor, ModelError> {
        use crate::data_parallel::all_reduce_sum;
        let c = &self.config;
        let Some((gamma, beta)) = bn.weight_and_bias() else {
            return Err(ModelError::Config(
                "batch norm has a scale and shift".into(),
            ));
        };
        let images = x.dim(0)?;
        let xt = x.transpose(0, 1)?;
        let transposed_dims = xt.dims().to_vec();
        let xt = xt.flatten_from(1)?.contiguous()?;
        let channels = xt.dim(0)?;
        let per_image = xt.dim(1)? / images.max(1);
        let count = (shard.total * per_image) as f64;
        let mean = (all_reduce_sum(&xt.sum(1)?, shard.collective)? / count)?;
        let centred = xt.broadcast_sub(&mean.reshape((channels, 1))?)?;
        let var = (all_reduce_sum(&centred.sqr()?.sum(1)?, shard.collective)? / count)?;
        let momentum = c.batch_norm_momentum;
        let unbiased = momentum * count / (count - 1.0);
        for (running, stat, weight) in [
            (bn.running_mean(), &mean, momentum),
            (bn.running_var(), &var, unbiased),
        ] {
            let updated = ((running * (1.0 - momentum))? + (stat.detach() * weight)?)?;
            Var::from_tensor(running)?.set(&updated)?;
        }
        let y = centred
            .broadcast_div(&(var + c.batch_norm_eps)?.sqrt()?.reshape((channels, 1))?)?
            .broadcast_mul(&gamma.reshape((channels, 1))?)?
            .broadcast_add(&beta.reshape((channels, 1))?)?;
        Ok(y.reshape(transposed_dims)?.transpose(0, 1)?)
    }

    /// The next `n` dropout multipliers: 0 with probability `dropout`, else
    /// `1 / (1 - dropout)`.
    fn dropout_mask(&self, n: usize) -> Vec<f32> {
        let p = self.config.dropout;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut guard = self.dropout.lock().unwrap_or_else(|e| e.into_inner());
        let rng = &mut guard.1;
        (0..n)
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
            .collect()
    }

    /// A hidden layer's dropout (when configured) and training-mode batch norm as the
    /// fused kernel [`DropoutBatchNorm`]: the same function as [`Self::dropout`] then
    /// candle-nn's `forward_t(x, true)`, the same masks drawn from the same generator,
    /// and the running statistics updated by candle-nn's rule
    /// (`running * (1 - momentum) + batch * momentum`, the variance unbiased).
    fn dropout_batch_norm(&self, x: &Tensor, bn: &BatchNorm) -> Result<Tensor, ModelError> {
        let (batch, features) = x.dims2()?;
        let mask = (self.config.dropout > 0.0).then(|| self.dropout_mask(batch * features));
        self.batch_norm_train(x, bn, mask)
    }

    /// Training-mode batch norm of `x` `[rows, features]` after the dropout multipliers
    /// `mask` (a hidden layer's), or of a convolution's channels-last output seen as
    /// `[images * pixels, channels]` (spatial batch norm, no mask), as the fused kernel
    /// [`DropoutBatchNorm`]; the running statistics are updated by candle-nn's rule.
    fn batch_norm_train(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        mask: Option<Vec<f32>>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let Some((gamma, beta)) = bn.weight_and_bias() else {
            return Err(ModelError::Config(
                "batch norm has a scale and shift".into(),
            ));
        };
        let (batch, features) = x.dims2()?;
        let x = x.contiguous()?;
        let (mean, var) = batch_statistics(&x, mask.as_deref())?;
        let device = x.device();
        let momentum = c.batch_norm_momentum;
        let unbiased = momentum * batch as f64 / (batch as f64 - 1.0);
        let batch_mean = Tensor::from_slice(&mean, features, device)?;
        let batch_var = Tensor::from_slice(&var, features, device)?;
        for (running, stat, weight) in [
            (bn.running_mean(), &batch_mean, momentum),
            (bn.running_var(), &batch_var, unbiased),
        ] {
            let updated = ((running * (1.0 - momentum))? + (stat * weight)?)?;
            Var::from_tensor(running)?.set(&updated)?;
        }
        let op = DropoutBatchNorm {
            mask: mask.map(Arc::new),
            mean: Arc::new(mean),
            var: Arc::new(var),
            eps: c.batch_norm_eps,
        };
        Ok(x.apply_op3(gamma, beta, op)?)
    }
}

impl ConvTower {
    /// Every tensor of the tower (parameters and batch-norm running statistics) under
    /// its checkpoint name ([`TowerConfig::parameter_shapes`]), sharing storage with
    /// the layers.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |name: String, t: &Tensor| out.push((name, t.clone()));
        for (i, layer) in self.convs.iter().enumerate() {
            push(format!("conv{}.weight", i + 1), layer.conv.weight());
            if let Some(b) = layer.conv.bias() {
                push(format!("conv{}.bias", i + 1), b);
            }
            if let Some(bn) = &layer.bn {
                if let Some((w, b)) = bn.weight_and_bias() {
                    push(format!("conv{}.bn.weight", i + 1), w);
                    push(format!("conv{}.bn.bias", i + 1), b);
                }
                push(format!("conv{}.bn.running_mean", i + 1), bn.running_mean());
                push(format!("conv{}.bn.running_var", i + 1), bn.running_var());
            }
        }
        let fcs = self.hidden.iter().map(|h| &h.fc).chain([&self.head]);
        for (j, fc) in fcs.enumerate() {
            push(format!("fc{}.weight", j + 1), fc.weight());
            if let Some(b) = fc.bias() {
                push(format!("fc{}.bias", j + 1), b);
            }
        }
        for (j, layer) in self.hidden.iter().enumerate() {
            if let Some(bn) = &layer.bn {
                if let Some((w, b)) = bn.weight_and_bias() {
                    push(format!("bn{}.weight", j + 1), w);
                    push(format!("bn{}.bias", j + 1), b);
                }
                push(format!("bn{}.running_mean", j + 1), bn.running_mean());
                push(format!("bn{}.running_var", j + 1), bn.running_var());
            }
        }
        out
    }

    /// Width of the output of `layer`.
    pub fn layer_width(&self, layer: TowerLayer) -> Result<usize, ModelError> {
        self.config.layer_width(layer)
    }

    /// Reads the embedding at `layer` from now on ([`TowerConfig::embed_from`]), to
    /// measure what another layer of a trained model gives.
    pub fn set_embed_from(&mut self, layer: TowerLayer) -> Result<(), ModelError> {
        self.layer_width(layer)?;
        self.config.embed_from = layer;
        Ok(())
    }

    /// The output of `layer` for `images`; `forward_t` is `forward_to(.., Head)`.
    ///
    /// On the fused CPU path, inference (`train == false`) runs outside candle's
    /// autograd graph: the convolutions take each chunk of images through all layers
    /// while it is in cache ([`crate::kernels::conv_stack_inference`]), so no gradient
    /// flows back from an inference output (training mode and the plain path keep the
    /// graph).
    pub fn forward_to(
        &self,
        images: &Tensor,
        train: bool,
        layer: TowerLayer,
    ) -> Result<Tensor, ModelError> {
        self.forward_shard(images, train, layer, None)
    }

    /// [`Self::forward_to`] of one rank's rows of a global batch (`shard`, in training
    /// with more than one rank): batch norm takes its statistics over the global batch
    /// (summed over the ranks, and their gradient too: [`crate::data_parallel::all_reduce_sum`])
    /// and dropout uses this rank's rows of the global batch's masks, so the ranks
    /// together compute what one process would. Everything else is per image, run by
    /// the fused kernels as in one process; the batch norms run as plain candle ops.
    fn forward_shard(
        &self,
        images: &Tensor,
        train: bool,
        layer: TowerLayer,
        shard: Option<&crate::data_parallel::Shard>,
    ) -> Result<Tensor, ModelError> {
        let shard = shard.filter(|s| train && s.collective.world_size() > 1);
        self.layer_width(layer)?;
        self.check_images(images)?;
        let batch = images.dim(0)?;
        if !train && batch > INFERENCE_SLICE {
            // Inference is per image (batch norm uses its running statistics), so a large
            // batch goes through in slices with the same result: peak memory stays
            // bounded (conv1's output alone is 100 KB per image). Smaller slices were
            // measured no faster (the GEMMs lose more than the cache gains).
            let mut parts = Vec::with_capacity(batch.div_ceil(INFERENCE_SLICE));
            for start in (0..batch).step_by(INFERENCE_SLICE) {
                let len = INFERENCE_SLICE.min(batch - start);
                parts.push(self.forward_to(&images.narrow(0, start, len)?, false, layer)?);
            }
            return Ok(Tensor::cat(&parts, 0)?);
        }
        if let Some(s) = shard {
            if batch != s.rows.1 - s.rows.0 {
                return Err(ModelError::Config(format!(
                    "data-parallel step: {batch} images for rows {:?} of {}",
                    s.range(),
                    s.total
                )));
            }
        }
        let fused = self.fused && fused_path(images.device(), images.dtype());
        // Snell's blocks with batch norm over the global batch run as plain candle ops:
        // the fused kernels take their statistics from the rows they are given.
        let fused = fused && !(shard.is_some() && self.config.conv_batch_norm);
        let x = self.convolutions(images, train, fused, shard)?;
        if train && layer == TowerLayer::Head {
            self.record_last_shift(&x)?;
        }
        self.fully_connected(x.flatten_from(1)?, train, fused, layer, shard)
    }

    /// An error unless `images` is `[batch, channels, height, width]` of the config's
    /// sizes.
    fn check_images(&self, images: &Tensor) -> Result<(), ModelError> {
        let c = &self.config;
        let expected = [c.input_channels, c.input_height, c.input_width];
        if images.rank() != 4 || images.dims()[1..] != expected {
            return Err(ModelError::Input {
                what: "images",
                expected: format!("[batch, {}, {}, {}]", expected[0], expected[1], expected[2]),
                found: images.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Records, for [`Embedder::shift_activity`], how the last convolution's shift
    /// (batch norm's, or the convolution's bias without batch norm) reached its output
    /// `x` (`[images, channels, height, width]`, after its ReLU and pool), when that
    /// output goes straight to the linear head: a max-pool keeps a constant, so where
    /// the ReLU passed the shift adds one constant to the output cell, which the head
    /// turns into one vector. With normalised embeddings the head's output is divided
    /// by its length, and a common vector is no longer common: nothing then.
    fn record_last_shift(&self, x: &Tensor) -> Result<(), ModelError> {
        let n = self.convs.len();
        let activity = if self.hidden.is_empty() && n > 0 && !self.config.normalize {
            let name = if self.convs[n - 1].bn.is_some() {
                format!("conv{n}.bn.bias")
            } else {
                format!("conv{n}.bias")
            };
            Some(ShiftActivity::of_outputs(name, x)?)
        } else {
            None
        };
        *self.last_shift.lock().unwrap_or_else(|e| e.into_inner()) = activity;
        Ok(())
    }

    /// The convolutions (with their batch norm and pooling) of `images`, channels first.
    fn convolutions(
        &self,
        images: &Tensor,
        train: bool,
        fused: bool,
        shard: Option<&crate::data_parallel::Shard>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let mut x = if fused && !self.convs.is_empty() {
            // The fused convolutions run channels last ([`Conv2dRelu`]); the last one
            // writes channels first, the order `fc1`'s weight columns have in the
            // reference and in checkpoints (Snell's blocks are reordered after the last
            // pool instead).
            images.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            images.clone()
        };
        if fused && !train && !c.conv_blocks() {
            // Inference: a chunk of images through every convolution while it is in
            // cache (no graph to keep for a backward pass), the same products as the
            // per-layer ops below.
            let layers = self
                .convs
                .iter()
                .map(|l| Ok((l.fused, l.conv.weight(), l.bias()?)))
                .collect::<Result<Vec<_>, ModelError>>()?;
            if !layers.is_empty() {
                x = conv_stack_inference(&layers, &x)?;
            }
        } else {
            for layer in &self.convs {
                x = self.conv_block(layer, &x, train, fused, shard)?;
            }
        }
        if fused && c.conv_blocks() && !self.convs.is_empty() {
            // Channels first for the flatten, the order of `fc1`'s weight columns.
            x = x.permute((0, 3, 1, 2))?;
        }
        Ok(x)
    }

    /// One convolution with what follows it: its ReLU, or in a block
    /// ([`TowerConfig::conv_blocks`]) batch norm, ReLU and max-pool. Fused: channels last
    /// in and out; plain: channels first.
    fn conv_block(
        &self,
        layer: &ConvLayer,
        x: &Tensor,
        train: bool,
        fused: bool,
        shard: Option<&crate::data_parallel::Shard>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let blocks = c.conv_blocks();
        if !fused {
            let padded = layer.fused.geometry.pad_tensor(x)?;
            let mut y = layer.conv.forward(&padded)?;
            if let Some(bn) = &layer.bn {
                y = match shard {
                    Some(s) => self.batch_norm_global(&y, bn, s)?,
                    None => bn.forward_t(&y, train)?,
                };
            }
            y = relu(&y)?;
            let p = c.conv_pool;
            if blocks && p > 1 {
                y = max_pool(&y, p)?;
            }
            return Ok(y);
        }
        let mut y = x.apply_op3(layer.conv.weight(), layer.bias()?, layer.fused)?;
        if !blocks {
            return Ok(y);
        }
        if let Some(bn) = &layer.bn {
            let dims = y.dims4()?;
            let rows = y.reshape((dims.0 * dims.1 * dims.2, dims.3))?;
            let rows = if train {
                self.batch_norm_train(&rows, bn, None)?
            } else {
                batch_norm_eval(&rows, bn, c.batch_norm_eps)?
            };
            y = rows.reshape(dims)?;
        }
        Ok(y.apply_op1(MaxPoolRelu {
            window: c.conv_pool,
        })?)
    }
}

/// Max-pool of `x` `[B, C, H, W]` over `p x p` windows at stride `p`, rounding the
/// output size down, with the gradient going to each window's first largest value (in
/// row order), as PyTorch's `MaxPool2d` and the fused kernel. Not candle's `max_pool2d`:
/// its backward (candle 0.11) scales the gradient by 1 / p^2 and maps the rows of an
/// odd-sized input to the wrong windows; nor its `max` reduction, whose backward gives
/// the whole gradient to every tied value (ties are common: blank patches through batch
/// norm), which made Snell's blocks' gradients 7.6% apart between the two paths.
fn max_pool(x: &Tensor, p: usize) -> Result<Tensor, ModelError> {
    let (b, ch, h, w) = x.dims4()?;
    let (ho, wo) = (h / p, w / p);
    let windows = x
        .narrow(2, 0, ho * p)?
        .narrow(3, 0, wo * p)?
        .reshape((b, ch, ho, p, wo, p))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((b, ch, ho, wo, p * p))?;
    let first = windows.argmax_keepdim(4)?;
    let taps = Tensor::arange(0u32, (p * p) as u32, x.device())?.reshape((1, 1, 1, 1, p * p))?;
    let chosen = taps.broadcast_eq(&first)?.to_dtype(x.dtype())?;
    Ok((windows * chosen)?.sum(4)?)
}

/// ReLU whose gradient is 1 where the input is above 0 and 0 elsewhere, as PyTorch's and
/// the fused kernels'. candle's own `relu` passes the gradient at exactly 0 too, and
/// exact zeros are common (blank patches of an image through a zero bias): the two paths
/// then gave conv1's bias gradients 20% apart.
fn relu(x: &Tensor) -> Result<Tensor, ModelError> {
    let above = x.gt(0.0)?.to_dtype(x.dtype())?;
    Ok((x * above)?)
}

/// Inference-mode batch norm of `x` `[rows, features]` with the running statistics, as
/// one scale and shift per feature.
fn batch_norm_eval(x: &Tensor, bn: &BatchNorm, eps: f64) -> Result<Tensor, ModelError> {
    let Some((gamma, beta)) = bn.weight_and_bias() else {
        return Err(ModelError::Config(
            "batch norm has a scale and shift".into(),
        ));
    };
    let scale = (gamma / (bn.running_var() + eps)?.sqrt()?)?;
    let shift = (beta - (bn.running_mean() * &scale)?)?;
    Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
}

impl ConvTower {
    /// The hidden layers and the head after the convolutions' flattened output.
    fn fully_connected(
        &self,
        mut x: Tensor,
        train: bool,
        fused: bool,
        layer: TowerLayer,
        shard: Option<&crate::data_parallel::Shard>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        for (i, hidden) in self.hidden.iter().enumerate() {
            x = linear(&hidden.fc, &x, true, fused)?;
            match &hidden.bn {
                Some(bn) if fused && train && shard.is_none() => {
                    x = self.dropout_batch_norm(&x, bn)?
                }
                bn => {
                    if train && c.dropout > 0.0 {
                        x = self.dropout_rows(&x, shard)?;
                    }
                    if let Some(bn) = bn {
                        x = match shard {
                            Some(s) => self.batch_norm_global(&x, bn, s)?,
                            None => bn.forward_t(&x, train)?,
                        };
                    }
                }
            }
            if layer == TowerLayer::Hidden(i) {
                return Ok(x);
            }
        }
        let embeddings = linear(&self.head, &x, false, fused)?;
        if !c.normalize {
            return Ok(embeddings);
        }
        // The epsilon keeps the gradient finite for an all-zero embedding.
        unit_length(&embeddings)
    }

    /// The embeddings of `images` as they are, unchecked: the layer
    /// [`TowerConfig::embed_from`] names, scaled to unit length when it is hidden.
    fn one_view(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        let layer = self.config.embed_from;
        let x = self.forward_to(images, false, layer)?;
        if layer == TowerLayer::Head {
            return Ok(x);
        }
        // A hidden layer's output is compared by direction (cosine): its ReLU features
        // are all >= 0 and their norms carry little of the class (measured: ROC AUC on
        // unseen MNIST digits 0.87 by cosine against 0.76 by plain Euclidean distance).
        unit_length(&x)
    }

    /// [`Embedder::embed`] with [`TowerConfig::shift_average`] `r > 0`: the mean of the
    /// embeddings of every copy of the images moved by up to `r` pixels each way (the
    /// image's edge rows and columns repeated into the space a shift opens, which for
    /// ink on a blank page or a face on a plain wall is what a camera a pixel to the side
    /// would see), back to unit length when embeddings are. The copies of a slice of
    /// images go through the network together, at most [`INFERENCE_SLICE`] at a time.
    fn embed_shift_averaged(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let r = c.shift_average;
        let offsets = c.shift_offsets();
        self.check_images(images)?;
        let (batch, _, h, w) = images.dims4()?;
        let slice = (INFERENCE_SLICE / offsets.len()).max(1);
        let mut parts = Vec::with_capacity(batch.div_ceil(slice));
        for start in (0..batch).step_by(slice) {
            let len = slice.min(batch - start);
            let padded = images
                .narrow(0, start, len)?
                .pad_with_same(2, r, r)?
                .pad_with_same(3, r, r)?;
            let copies = offsets
                .iter()
                .map(|&(dy, dx)| {
                    let (top, left) = ((r as isize + dy) as usize, (r as isize + dx) as usize);
                    Ok(padded.narrow(2, top, h)?.narrow(3, left, w)?)
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            let views = self.one_view(&Tensor::cat(&copies, 0)?)?;
            let dim = views.dim(1)?;
            // Detached: a part that kept its graph would keep its slice's activations
            // (every view of 40 images through every layer) alive until the last slice
            // is done, 21 GB for 1,000 images at 28x28 with 25 views.
            let mean = views.reshape((offsets.len(), len, dim))?.mean(0)?;
            parts.push(mean.detach());
        }
        let mean = Tensor::cat(&parts, 0)?;
        if c.unit_length_embeddings() {
            unit_length(&mean)
        } else {
            Ok(mean)
        }
    }

    /// Sets [`TowerConfig::shift_average`] (validated as a config), to measure what
    /// test-time shifts give a trained model.
    pub fn set_shift_average(&mut self, radius: usize) -> Result<(), ModelError> {
        let config = TowerConfig {
            shift_average: radius,
            ..self.config.clone()
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }
}

impl Embedder for ConvTower {
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_to(images, train, TowerLayer::Head)
    }

    /// Every command's answers (distances, metrics, thresholds, galleries) come from
    /// here, so this is where a model whose weights are finite but overflow in use (a
    /// layer scaled by 1e37, a batch-norm variance of 0 with a tiny epsilon) is caught:
    /// embeddings holding NaN or infinity are an error, never an answer.
    fn embed(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        let x = if self.config.shift_average == 0 {
            self.one_view(images)?
        } else {
            self.embed_shift_averaged(images)?
        };
        check_finite(&x, self.origin.as_deref())?;
        Ok(x)
    }

    fn embed_one_view(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.one_view(images)?;
        check_finite(&x, self.origin.as_deref())?;
        Ok(x)
    }

    fn embedding_dim(&self) -> usize {
        self.config.output_dim()
    }

    fn shift_activity(&self) -> Vec<ShiftActivity> {
        let last = self.last_shift.lock().unwrap_or_else(|e| e.into_inner());
        last.iter().cloned().collect()
    }

    fn forward_t_shard(
        &self,
        images: &Tensor,
        train: bool,
        shard: &crate::data_parallel::Shard,
    ) -> Result<Tensor, ModelError> {
        self.forward_shard(images, train, TowerLayer::Head, Some(shard))
    }
}

/// The tower's state ([`siamese_state`]): every tensor of [`ConvTower::named_tensors`],
/// and the dropout generator's position under `dropout`.
impl Stateful for ConvTower {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        let mut state = StateDict::new();
        for (name, t) in self.named_tensors() {
            state.insert_tensor(name, t);
        }
        state.insert_json("dropout", &self.dropout_state());
        Ok(state)
    }

    /// Writes the saved values into the tower's variables in place, so an optimiser
    /// holding them sees the restored values. A tower built from constant tensors
    /// (not variables) has nothing to write into and refuses.
    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        let dropout: DropoutState = state.json("dropout")?;
        let tensors = self.named_tensors();
        // Everything is checked before anything is written: a refused state leaves
        // the tower as it was.
        for (name, current) in &tensors {
            state.tensor_like(name, current)?;
            if !current.is_variable() {
                return Err(state.invalid(
                    name,
                    "the tower's parameter is a constant: build the tower with \
                     ConvTower::init or checkpoint::load_tower to restore a state into it",
                ));
            }
        }
        for (name, current) in &tensors {
            Var::from_tensor(current)?.set(state.tensor(name)?)?;
        }
        self.set_dropout_state(dropout);
        Ok(())
    }
}

/// Each row of `x` `[rows, dim]` scaled to unit length (the epsilon keeps an all-zero
/// row finite).
fn unit_length(x: &Tensor) -> Result<Tensor, ModelError> {
    let norm = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// An error unless every value of the embeddings `x` is finite, naming the model's
/// checkpoint when there is one.
fn check_finite(x: &Tensor, origin: Option<&std::path::Path>) -> Result<(), ModelError> {
    let values = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let model = origin.map_or("the model".to_string(), |p| {
        format!("the model {}", p.display())
    });
    Err(ModelError::Overflow(format!(
        "{model}: its embeddings hold {bad} NaN or infinite values (of {}): its weights are \
         finite but overflow in use, so it has no answer to give",
        values.len()
    )))
}

/// A fully connected layer, then ReLU when `relu`: the fused kernel or plain candle.
fn linear(fc: &Linear, x: &Tensor, relu: bool, fused: bool) -> Result<Tensor, ModelError> {
    if fused {
        if let Some(bias) = fc.bias() {
            let op = LinearAct { relu };
            return Ok(x.contiguous()?.apply_op3(fc.weight(), bias, op)?);
        }
    }
    let y = fc.forward(x)?;
    Ok(if relu { self::relu(&y)? } else { y })
}

/// Copies `tensors` into the variables of `varmap` with the same names.
pub(crate) fn assign(varmap: &VarMap, name: &str, value: &Tensor) -> Result<(), ModelError> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let var: &Var = data
        .get(name)
        .ok_or_else(|| ModelError::Config(format!("the model has no parameter {name:?}")))?;
    var.set(value)?;
    Ok(())
}
