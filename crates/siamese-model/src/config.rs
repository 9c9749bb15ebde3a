//! The tower's configuration (serde, saved in every checkpoint) and what follows from
//! it: layer shapes, padding, the flatten size, and the names and shapes of all
//! parameters.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// How convolutions pad their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// TensorFlow's `SAME`, as the reference program: output size `ceil(in / stride)`;
    /// when the total padding is odd the extra row and column go at the bottom and
    /// right (for 3x3 stride-2 convolutions of even inputs, 0 before and 1 after).
    #[default]
    TfSame,
    /// `kernel / 2` on every side, as `torch.nn.Conv2d(..., padding=k // 2)`.
    Symmetric,
}

/// A point of the tower whose output can be read ([`crate::ConvTower::forward_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TowerLayer {
    /// The output of hidden fully connected layer `i` (0-based: `fc{i+1}`), after its
    /// ReLU, dropout and batch norm: SimCLR's representation before the projection head.
    Hidden(usize),
    /// The last layer (normalised when the config says so).
    #[default]
    Head,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TowerLayer {
    fn is_head(&self) -> bool {
        *self == TowerLayer::Head
    }
}

/// The conv tower: convolutions with ReLU, then fully connected layers with ReLU,
/// dropout and batch norm, then a linear embedding. The defaults are the reference
/// program's architecture exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TowerConfig {
    /// Input channels (1 for grayscale).
    pub input_channels: usize,
    /// Input height in pixels.
    pub input_height: usize,
    /// Input width in pixels.
    pub input_width: usize,
    /// Output channels of each convolution.
    pub conv_channels: Vec<usize>,
    /// Stride of each convolution (same length as `conv_channels`).
    pub conv_strides: Vec<usize>,
    /// Square kernel size of every convolution.
    pub kernel_size: usize,
    /// Padding rule of every convolution.
    pub padding: Padding,
    /// Batch norm after each convolution, over its channels (Snell et al.'s blocks:
    /// conv, batch norm, ReLU, max-pool). Off in the reference program.
    #[serde(skip_serializing_if = "is_false")]
    pub conv_batch_norm: bool,
    /// Max-pooling window (and stride) after each convolution's ReLU, rounding the
    /// output size down as `torch.nn.MaxPool2d` does; 1 pools nothing (the reference
    /// program, which downsamples by strided convolutions instead).
    #[serde(skip_serializing_if = "is_one")]
    pub conv_pool: usize,
    /// Widths of the hidden fully connected layers.
    pub fc_widths: Vec<usize>,
    /// Embedding dimension (2 in the reference program, so it can be plotted directly).
    pub embedding_dim: usize,
    /// Dropout probability after each hidden fully connected layer (the reference
    /// program's keep probability 0.6 is a drop probability of 0.4).
    pub dropout: f64,
    /// Batch norm after each hidden fully connected layer.
    pub batch_norm: bool,
    /// Weight of the current batch in the running statistics (TensorFlow's
    /// `momentum = 0.99` is 0.01 here, PyTorch's convention).
    pub batch_norm_momentum: f64,
    /// Added to the variance in batch norm (TensorFlow's default 1e-3).
    pub batch_norm_eps: f64,
    /// Standard deviation of the truncated-normal initial weights.
    pub init_std: f64,
    /// Scale every embedding to unit length (then Euclidean distance is a function of
    /// cosine similarity, at most 2): the network cannot spread classes apart by
    /// growing norms, only by direction.
    pub normalize: bool,
    /// Where the embedding is read ([`crate::Embedder::embed`]): the last layer (the
    /// default), or a hidden layer, scaled to unit length; the layers after it are then
    /// a projection head that only the training loss sees. Features before the head
    /// keep more than the training classes need, which is what unseen classes need.
    #[serde(skip_serializing_if = "TowerLayer::is_head")]
    pub embed_from: TowerLayer,
    /// Test-time shift averaging: [`crate::Embedder::embed`] averages the embeddings of
    /// the image moved by every offset of up to this many pixels in each direction
    /// (`(2r + 1)^2` copies, edges repeated), then scales the mean back to unit length
    /// when embeddings are unit length. A drawing or a face is the same thing a pixel
    /// or two to the side, and the network's answer to the one shift it happens to see
    /// is noisy: the mean is steadier (on Omniglot's unseen alphabets, the README).
    /// Training is unchanged; 0, the default, embeds the image as it is.
    #[serde(skip_serializing_if = "is_zero")]
    pub shift_average: usize,
}

impl Default for TowerConfig {
    fn default() -> Self {
        Self {
            input_channels: 1,
            input_height: 28,
            input_width: 28,
            conv_channels: vec![32, 64, 128],
            conv_strides: vec![1, 2, 2],
            kernel_size: 3,
            padding: Padding::TfSame,
            conv_batch_norm: false,
            conv_pool: 1,
            fc_widths: vec![1024, 512],
            embedding_dim: 2,
            dropout: 0.4,
            batch_norm: true,
            batch_norm_momentum: 0.01,
            batch_norm_eps: 1e-3,
            init_std: 0.05,
            normalize: false,
            embed_from: TowerLayer::Head,
            shift_average: 0,
        }
    }
}

impl TowerConfig {
    /// Snell et al.'s four-block encoder for prototypical networks: four blocks of a
    /// 3x3 convolution with 64 filters (padding 1, stride 1), batch norm, ReLU and a
    /// 2x2 max-pool, then a linear layer to `embedding_dim` (at 28x28 the blocks leave
    /// 64 x 1 x 1). Snell's encoder ends at the last block (64-D); the linear layer here
    /// lets the embedding have any dimension.
    pub fn four_block(input_height: usize, input_width: usize, embedding_dim: usize) -> Self {
        Self {
            input_height,
            input_width,
            conv_channels: vec![64; 4],
            conv_strides: vec![1; 4],
            padding: Padding::Symmetric,
            conv_batch_norm: true,
            conv_pool: 2,
            fc_widths: vec![],
            embedding_dim,
            dropout: 0.0,
            batch_norm_momentum: 0.1,
            batch_norm_eps: 1e-5,
            ..Self::default()
        }
    }
}

impl TowerConfig {
    /// Four 64-channel 3x3 convolutions with ReLU, strided 1, 2, 2, 2 where Snell's
    /// encoder max-pools, straight to a linear embedding: no batch norm, no pooling.
    pub fn strided_four(input_height: usize, input_width: usize, embedding_dim: usize) -> Self {
        Self {
            input_height,
            input_width,
            conv_channels: vec![64; 4],
            conv_strides: vec![1, 2, 2, 2],
            fc_widths: vec![],
            embedding_dim,
            dropout: 0.0,
            ..Self::default()
        }
    }
}

/// Padding of one convolution: `(before, after)` rows (and columns).
pub type PadAmount = (usize, usize);

/// Bounds on what a config may ask for, checked by [`TowerConfig::validate`] before
/// anything is allocated. A checkpoint's config comes from a file: a forged one
/// (25004x25004 inputs, a billion-wide embedding) gets a one-line error instead of a
/// multi-gigabyte allocation and an abort. Each bound is far above any network this
/// tool trains on a CPU.
pub mod limits {
    /// Largest input height or width, in pixels.
    pub const MAX_INPUT_SIDE: usize = 4096;
    /// Most channels of the input or of one convolution.
    pub const MAX_CHANNELS: usize = 8192;
    /// Widest fully connected layer or embedding.
    pub const MAX_WIDTH: usize = 65_536;
    /// Largest convolution kernel side.
    pub const MAX_KERNEL: usize = 31;
    /// Most convolutions, and most fully connected layers.
    pub const MAX_LAYERS: usize = 64;
    /// Most parameters and batch-norm statistics in all: 1 GiB of f32.
    pub const MAX_PARAMETERS: u128 = 1 << 28;
    /// Most activations of one image through the network: 256 MiB of f32.
    pub const MAX_ACTIVATIONS_PER_IMAGE: u128 = 1 << 26;
    /// Largest test-time shift ([`super::TowerConfig::shift_average`]): 81 copies of
    /// each image, 81 times the cost of embedding it.
    pub const MAX_SHIFT_AVERAGE: usize = 4;
}

fn over<T>(what: &str, value: u128, max: u128) -> Result<T, ModelError> {
    Err(ModelError::Config(format!(
        "{what} is {value}, more than this tool allows ({max})"
    )))
}

impl TowerConfig {
    /// Width of the output of `layer`.
    pub fn layer_width(&self, layer: TowerLayer) -> Result<usize, ModelError> {
        match layer {
            TowerLayer::Head => Ok(self.embedding_dim),
            TowerLayer::Hidden(i) => self.fc_widths.get(i).copied().ok_or_else(|| {
                ModelError::Config(format!(
                    "embed_from names hidden layer {i} (fc{}), but the tower has {} hidden \
                     layers",
                    i + 1,
                    self.fc_widths.len()
                ))
            }),
        }
    }

    /// Whether each convolution is a block (batch norm and/or max-pool between it and
    /// the next layer) rather than a convolution with its ReLU.
    pub fn conv_blocks(&self) -> bool {
        self.conv_batch_norm || self.conv_pool > 1
    }

    /// Whether [`crate::Embedder::embed`] gives unit-length embeddings: a hidden layer's,
    /// or a normalised head's.
    pub fn unit_length_embeddings(&self) -> bool {
        self.normalize || self.embed_from != TowerLayer::Head
    }

    /// The offsets `(dy, dx)` whose embeddings [`Self::shift_average`] averages, row by
    /// row from `(-r, -r)`; only `(0, 0)` when it is 0.
    pub fn shift_offsets(&self) -> Vec<(isize, isize)> {
        let r = self.shift_average as isize;
        (-r..=r)
            .flat_map(|dy| (-r..=r).map(move |dx| (dy, dx)))
            .collect()
    }

    /// The dimension of the embeddings the tower gives ([`Self::embed_from`]'s width).
    pub fn output_dim(&self) -> usize {
        self.layer_width(self.embed_from)
            .unwrap_or(self.embedding_dim)
    }

    /// Checks that the numbers make a network.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |msg: String| Err(ModelError::Config(msg));
        if self.conv_channels.len() != self.conv_strides.len() {
            return fail(format!(
                "{} conv channel counts but {} strides",
                self.conv_channels.len(),
                self.conv_strides.len()
            ));
        }
        let positive = [
            ("input_channels", self.input_channels),
            ("input_height", self.input_height),
            ("input_width", self.input_width),
            ("kernel_size", self.kernel_size),
            ("embedding_dim", self.embedding_dim),
            ("conv_pool", self.conv_pool),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be positive"));
        }
        if self.conv_channels.contains(&0)
            || self.conv_strides.contains(&0)
            || self.fc_widths.contains(&0)
        {
            return fail("layer widths and strides must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        if !(0.0..=1.0).contains(&self.batch_norm_momentum) {
            return fail(format!(
                "batch_norm_momentum must be in [0, 1], found {}",
                self.batch_norm_momentum
            ));
        }
        // Above 1 the statistics no longer normalise anything (1e308 makes every
        // activation 0): such a file is broken, not a choice.
        if !(self.batch_norm_eps > 0.0 && self.batch_norm_eps <= 1.0) {
            return fail(format!(
                "batch_norm_eps must be in (0, 1], found {}",
                self.batch_norm_eps
            ));
        }
        if !(self.init_std > 0.0 && self.init_std <= 10.0) {
            return fail(format!(
                "init_std must be in (0, 10], found {}",
                self.init_std
            ));
        }
        self.check_sizes()?;
        let mut h = self.input_height;
        let mut w = self.input_width;
        for (i, &s) in self.conv_strides.iter().enumerate() {
            if self.padding == Padding::Symmetric
                && (h + 2 * (self.kernel_size / 2) < self.kernel_size
                    || w + 2 * (self.kernel_size / 2) < self.kernel_size)
            {
                return fail(format!(
                    "conv{} input {h}x{w} is smaller than its kernel",
                    i + 1
                ));
            }
            (h, w) = (self.out_size(h, s), self.out_size(w, s));
            if h < self.conv_pool || w < self.conv_pool {
                return fail(format!(
                    "conv{} output {h}x{w} is smaller than its {p}x{p} max-pool",
                    i + 1,
                    p = self.conv_pool
                ));
            }
            (h, w) = self.pooled((h, w));
        }
        self.layer_width(self.embed_from)?;
        self.check_shift_average()?;
        self.check_counts()
    }

    /// [`Self::shift_average`] within [`limits::MAX_SHIFT_AVERAGE`] and smaller than half
    /// the image (a shift by the whole image would show only its repeated edge).
    fn check_shift_average(&self) -> Result<(), ModelError> {
        let r = self.shift_average;
        if r > limits::MAX_SHIFT_AVERAGE {
            return over(
                "shift_average",
                r as u128,
                limits::MAX_SHIFT_AVERAGE as u128,
            );
        }
        let side = self.input_height.min(self.input_width);
        if 2 * r >= side {
            return Err(ModelError::Config(format!(
                "shift_average {r} moves a {}x{} image by half its size or more",
                self.input_height, self.input_width
            )));
        }
        Ok(())
    }

    /// The [`limits`] on each size, checked first so that no arithmetic on them
    /// overflows.
    fn check_sizes(&self) -> Result<(), ModelError> {
        use limits::*;
        let sides = [
            ("input_height", self.input_height, MAX_INPUT_SIDE),
            ("input_width", self.input_width, MAX_INPUT_SIDE),
            ("input_channels", self.input_channels, MAX_CHANNELS),
            ("kernel_size", self.kernel_size, MAX_KERNEL),
            ("conv_pool", self.conv_pool, MAX_INPUT_SIDE),
            ("embedding_dim", self.embedding_dim, MAX_WIDTH),
            (
                "the number of convolutions",
                self.conv_channels.len(),
                MAX_LAYERS,
            ),
            (
                "the number of fully connected layers",
                self.fc_widths.len(),
                MAX_LAYERS,
            ),
        ];
        for (what, value, max) in sides {
            if value > max {
                return over(what, value as u128, max as u128);
            }
        }
        for (i, (&c, &s)) in self
            .conv_channels
            .iter()
            .zip(&self.conv_strides)
            .enumerate()
        {
            if c > MAX_CHANNELS {
                return over(
                    &format!("conv{} channels", i + 1),
                    c as u128,
                    MAX_CHANNELS as u128,
                );
            }
            if s > MAX_INPUT_SIDE {
                return over(
                    &format!("conv{} stride", i + 1),
                    s as u128,
                    MAX_INPUT_SIDE as u128,
                );
            }
        }
        if let Some((j, &f)) = self
            .fc_widths
            .iter()
            .enumerate()
            .find(|(_, &f)| f > MAX_WIDTH)
        {
            return over(&format!("fc{} width", j + 1), f as u128, MAX_WIDTH as u128);
        }
        Ok(())
    }

    /// The [`limits`] on the parameter count and the activations of one image.
    fn check_counts(&self) -> Result<(), ModelError> {
        use limits::*;
        let parameters: u128 = self
            .parameter_shapes()
            .iter()
            .map(|(_, shape)| shape.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        if parameters > MAX_PARAMETERS {
            return over("the parameter count", parameters, MAX_PARAMETERS);
        }
        let activations = self.activation_count();
        if activations > MAX_ACTIVATIONS_PER_IMAGE {
            return over(
                "the activation count of one image",
                activations,
                MAX_ACTIVATIONS_PER_IMAGE,
            );
        }
        Ok(())
    }

    /// Activations of one image through the network, input included (after
    /// [`validate`](Self::validate) they fit the [`limits`]).
    pub fn activations_per_image(&self) -> usize {
        usize::try_from(self.activation_count()).unwrap_or(usize::MAX)
    }

    fn activation_count(&self) -> u128 {
        let input = (self.input_channels * self.input_height * self.input_width) as u128;
        // A pooled block keeps its convolution's output and the pooled one.
        let pooled = if self.conv_pool > 1 { 2 } else { 1 };
        let convs: u128 = self
            .conv_geometry()
            .iter()
            .zip(&self.conv_channels)
            .map(|(g, &c)| pooled * c as u128 * g.2 .0 as u128 * g.2 .1 as u128)
            .sum();
        let fcs: u128 = self.fc_widths.iter().map(|&f| f as u128).sum();
        input + convs + fcs + self.embedding_dim as u128
    }

    fn out_size(&self, input: usize, stride: usize) -> usize {
        match self.padding {
            Padding::TfSame => input.div_ceil(stride),
            Padding::Symmetric => {
                let p = self.kernel_size / 2;
                (input + 2 * p - self.kernel_size) / stride + 1
            }
        }
    }

    /// The size of a convolution's output `(height, width)` after its max-pool
    /// ([`Self::conv_pool`]): the next layer's input.
    pub fn pooled(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let p = self.conv_pool.max(1);
        (h / p, w / p)
    }

    /// Padding of each convolution, `(before, after)`, and its output `(height, width)`
    /// (before its max-pool).
    pub fn conv_geometry(&self) -> Vec<(PadAmount, PadAmount, (usize, usize))> {
        let (mut h, mut w) = (self.input_height, self.input_width);
        let mut out = Vec::with_capacity(self.conv_strides.len());
        for &s in &self.conv_strides {
            let pad = |input: usize| -> PadAmount {
                match self.padding {
                    Padding::TfSame => {
                        let out = input.div_ceil(s);
                        let total = ((out - 1) * s + self.kernel_size).saturating_sub(input);
                        (total / 2, total - total / 2)
                    }
                    Padding::Symmetric => (self.kernel_size / 2, self.kernel_size / 2),
                }
            };
            let (ph, pw) = (pad(h), pad(w));
            let conv_out = (self.out_size(h, s), self.out_size(w, s));
            out.push((ph, pw, conv_out));
            (h, w) = self.pooled(conv_out);
        }
        out
    }

    /// Every convolution's whole shape (channels, sizes, stride, padding), in order: what
    /// the tower builds its layers from.
    pub fn conv_layers(&self) -> Vec<crate::kernels::ConvGeometry> {
        let mut c_in = self.input_channels;
        let (mut h_in, mut w_in) = (self.input_height, self.input_width);
        let mut out = Vec::with_capacity(self.conv_channels.len());
        for ((&c_out, &stride), (ph, pw, (h_out, w_out))) in self
            .conv_channels
            .iter()
            .zip(&self.conv_strides)
            .zip(self.conv_geometry())
        {
            out.push(crate::kernels::ConvGeometry {
                c_in,
                h_in,
                w_in,
                c_out,
                kernel: self.kernel_size,
                stride,
                pad_top: ph.0,
                pad_left: pw.0,
                h_out,
                w_out,
            });
            (c_in, (h_in, w_in)) = (c_out, self.pooled((h_out, w_out)));
        }
        out
    }

    /// Length of the flattened conv output, the input width of `fc1`.
    pub fn flatten_size(&self) -> usize {
        let (h, w) = self
            .conv_geometry()
            .last()
            .map(|g| self.pooled(g.2))
            .unwrap_or((self.input_height, self.input_width));
        let c = self
            .conv_channels
            .last()
            .copied()
            .unwrap_or(self.input_channels);
        c * h * w
    }

    /// Every parameter's name and shape, in a fixed order, PyTorch-style:
    /// `conv{i}.weight [out, in, k, k]`, `conv{i}.bias`, with [`Self::conv_batch_norm`]
    /// `conv{i}.bn.{weight, bias, running_mean, running_var}`, `fc{j}.weight [out, in]`,
    /// `fc{j}.bias`, `bn{j}.{weight, bias, running_mean, running_var}`; the embedding
    /// layer is the last `fc`.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut shapes = Vec::new();
        let mut c_in = self.input_channels;
        let k = self.kernel_size;
        for (i, &c) in self.conv_channels.iter().enumerate() {
            shapes.push((format!("conv{}.weight", i + 1), vec![c, c_in, k, k]));
            shapes.push((format!("conv{}.bias", i + 1), vec![c]));
            if self.conv_batch_norm {
                for stat in ["weight", "bias", "running_mean", "running_var"] {
                    shapes.push((format!("conv{}.bn.{stat}", i + 1), vec![c]));
                }
            }
            c_in = c;
        }
        let mut f_in = self.flatten_size();
        for (j, &f) in self.fc_widths.iter().enumerate() {
            shapes.push((format!("fc{}.weight", j + 1), vec![f, f_in]));
            shapes.push((format!("fc{}.bias", j + 1), vec![f]));
            if self.batch_norm {
                for stat in ["weight", "bias", "running_mean", "running_var"] {
                    shapes.push((format!("bn{}.{stat}", j + 1), vec![f]));
                }
            }
            f_in = f;
        }
        let head = self.fc_widths.len() + 1;
        shapes.push((format!("fc{head}.weight"), vec![self.embedding_dim, f_in]));
        shapes.push((format!("fc{head}.bias"), vec![self.embedding_dim]));
        shapes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_geometry() {
        let c = TowerConfig::default();
        c.validate().unwrap();
        let g = c.conv_geometry();
        assert_eq!(g[0], ((1, 1), (1, 1), (28, 28)));
        // TensorFlow SAME, stride 2 on 28: nothing before, one row after.
        assert_eq!(g[1], ((0, 1), (0, 1), (14, 14)));
        assert_eq!(g[2], ((0, 1), (0, 1), (7, 7)));
        assert_eq!(c.flatten_size(), 6272);
        let shapes = c.parameter_shapes();
        assert_eq!(shapes[0], ("conv1.weight".into(), vec![32, 1, 3, 3]));
        assert!(shapes.contains(&("fc1.weight".into(), vec![1024, 6272])));
        assert!(shapes.contains(&("bn2.running_var".into(), vec![512])));
        assert_eq!(shapes.last().unwrap(), &("fc3.bias".into(), vec![2]));
        let total: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // 6,981,762 parameters and batch-norm statistics.
        assert_eq!(
            total,
            320 + 18_496 + 73_856 + 6_423_552 + 4 * 1024 + 524_800 + 4 * 512 + 1026
        );
    }

    #[test]
    fn four_block_geometry() {
        // 28 -> 14 -> 7 -> 3 -> 1 (pooling rounds down), as Snell's encoder on Omniglot.
        let c = TowerConfig::four_block(28, 28, 64);
        c.validate().unwrap();
        let g = c.conv_geometry();
        let sizes: Vec<_> = g.iter().map(|g| g.2).collect();
        assert_eq!(sizes, [(28, 28), (14, 14), (7, 7), (3, 3)]);
        assert!(g.iter().all(|g| g.0 == (1, 1) && g.1 == (1, 1)));
        assert_eq!(c.flatten_size(), 64);
        let layers = c.conv_layers();
        assert_eq!((layers[3].h_in, layers[3].w_in, layers[3].c_in), (3, 3, 64));
        let shapes = c.parameter_shapes();
        assert!(shapes.contains(&("conv4.bn.running_var".into(), vec![64])));
        assert_eq!(shapes.last().unwrap(), &("fc1.bias".into(), vec![64]));
        // Faces: 56x46 -> 28x23 -> 14x11 -> 7x5 -> 3x2.
        let faces = TowerConfig::four_block(56, 46, 64);
        assert_eq!(faces.flatten_size(), 64 * 3 * 2);
        // Too small for four pools: refused in one line.
        let err = TowerConfig::four_block(12, 12, 64).validate().unwrap_err();
        assert!(err.to_string().contains("conv4 output 1x1"), "{err}");
        // Off by default, and absent from the reference config's JSON (old checkpoints'
        // configs, and their fingerprints, are unchanged).
        let json = serde_json::to_string(&TowerConfig::default()).unwrap();
        assert!(!json.contains("conv_pool") && !json.contains("conv_batch_norm"));
        let bad = TowerConfig { conv_pool: 0, ..c };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn flatten_follows_the_input_size() {
        for (h, w, flat) in [(56, 46, 128 * 14 * 12), (112, 92, 128 * 28 * 23)] {
            let c = TowerConfig {
                input_height: h,
                input_width: w,
                ..Default::default()
            };
            c.validate().unwrap();
            assert_eq!(c.flatten_size(), flat, "{h}x{w}");
        }
        let sym = TowerConfig {
            padding: Padding::Symmetric,
            ..Default::default()
        };
        assert_eq!(sym.flatten_size(), 6272);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad = [
            TowerConfig {
                conv_strides: vec![1, 2],
                ..Default::default()
            },
            TowerConfig {
                dropout: 1.0,
                ..Default::default()
            },
            TowerConfig {
                embedding_dim: 0,
                ..Default::default()
            },
            TowerConfig {
                fc_widths: vec![0],
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let json = r#"{"embedding_dim": 3, "bogus": 1}"#;
        assert!(
            serde_json::from_str::<TowerConfig>(json).is_err(),
            "unknown fields are errors"
        );
        let json = r#"{"embedding_dim": 3}"#;
        let c: TowerConfig = serde_json::from_str(json).unwrap();
        assert_eq!((c.embedding_dim, c.fc_widths.len()), (3, 2));
    }
}
