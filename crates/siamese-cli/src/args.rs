//! Command-line arguments (clap derive). Nothing here does work: `commands` converts
//! these into library configs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use siamese_data::HeldOutClasses;

/// Learn, evaluate and use a similarity metric with a Siamese network.
#[derive(Debug, Parser)]
#[command(name = "siamese", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  siamese train                                  # the default recipe on MNIST, into runs/<time>
  siamese train --preset reference --out runs/ref
  siamese train --holdout-classes 5-9 --out runs/open  # test on digits never trained on
  siamese train --data fashion-mnist --steps 2000 --pairs balanced --lr 0.001
  siamese train --resume runs/ref                # continue a stopped run
  siamese eval --model runs/ref/model.safetensors --json
  siamese embed --model runs/ref/model.safetensors --split test --out test.csv
  siamese verify --model runs/ref/model.safetensors a.png b.png
  siamese train --data att_faces --image-size 56x46 --test-classes 5 --out runs/faces
  siamese verify --model runs/faces/model.safetensors s1/1.pgm s1/2.pgm
  siamese explore --model runs/ref/model.safetensors --out explorer.html
  siamese index --model runs/ref/model.safetensors --split test --out gallery.safetensors
  siamese search --gallery gallery.safetensors --model runs/ref/model.safetensors -k 5 q.png
  siamese plot --embeddings runs/ref/test_embeddings.safetensors --out plot.png
  siamese data info --data mnist
  siamese train --data omniglot --rotate-classes --out runs/omniglot
  siamese lake-runs --model runs/omniglot/model.safetensors
  siamese export --model runs/ref/model.safetensors --out tower.onnx";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model; writes a run folder (config, checkpoints, metrics, plot).
    Train(Box<TrainArgs>),
    /// Evaluate a model with the fixed protocol (validation threshold, test pairs, kNN-5).
    Eval(EvalArgs),
    /// Write the embeddings of a split to a .csv or .safetensors file.
    Embed(EmbedArgs),
    /// Say whether two images show the same class, with their distance.
    Verify(VerifyArgs),
    /// Draw a scatter plot of saved embeddings.
    Plot(PlotArgs),
    /// Fetch a data set or describe where it comes from.
    Data(DataArgs),
    /// Write the explorer page (one HTML file) of a model's embeddings of a split, or of
    /// an embeddings file.
    Explore(ExploreArgs),
    /// Embed a split into a gallery file, to search with `siamese search`.
    Index(IndexArgs),
    /// Find the gallery items nearest to query images.
    Search(SearchArgs),
    /// Score Lake's 20-way one-shot Omniglot runs: his modified Hausdorff baseline, raw
    /// pixels, and a model when given.
    LakeRuns(LakeRunsArgs),
    /// Write a model's tower as an ONNX file (with its threshold and provenance), to run
    /// it with onnxruntime or any ONNX runtime.
    Export(ExportArgs),
}

/// `siamese lake-runs`.
#[derive(Debug, Args)]
pub struct LakeRunsArgs {
    /// The runs folder (`run01` ... `run20`); default: `one-shot-runs` beside Omniglot's
    /// files in SIAMESE_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// A checkpoint to score too (its image size is used for the pixel baseline).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `siamese explore`.
#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// The checkpoint whose embeddings of `--split` to show (with the images, class
    /// names and the checkpoint's threshold).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "embeddings",
        conflicts_with = "embeddings"
    )]
    pub model: Option<PathBuf>,
    /// Or: embeddings written by `siamese embed` or a run (.safetensors; no images).
    #[arg(long, value_name = "FILE")]
    pub embeddings: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Which split to show, with `--model`.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `siamese index`: the same inputs as `siamese embed`, its `--out` a gallery file
/// (.safetensors).
pub type IndexArgs = EmbedArgs;

/// `siamese search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// A gallery written by `siamese index`.
    #[arg(long, value_name = "FILE")]
    pub gallery: PathBuf,
    /// The checkpoint that embedded the gallery (another is refused).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Query images (PNG, PGM or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    pub queries: Vec<PathBuf>,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Print JSON (one object per query) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the data come from.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// `mnist`, `fashion-mnist`, `omniglot`, a folder holding the four IDX files, or an
    /// image folder with one subfolder of PNG, PGM or JPEG images per class.
    #[arg(long, value_name = "NAME|DIR")]
    pub data: Option<String>,
    /// Image folders: resize every image to HxW (default: the first image's size,
    /// which all must then have). Omniglot: reduce its 105x105 drawings to HxW
    /// (default 28x28; the `omniglot` preset's 32x32).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub image_size: Option<[usize; 2]>,
    /// Image folders: hold out N whole classes for test (split by class, the default;
    /// default N: an eighth of the classes, at least 2).
    #[arg(long, value_name = "N", conflicts_with_all = ["test_images", "val_images"])]
    pub test_classes: Option<usize>,
    /// Image folders: hold out N whole classes for validation. Omniglot: N background
    /// characters kept out of training for validation (default 100; the `omniglot`
    /// preset's 20).
    #[arg(long, value_name = "N", conflicts_with_all = ["test_images", "val_images"])]
    pub val_classes: Option<usize>,
    /// Image folders: split by image instead, N images of every class for test.
    #[arg(long, value_name = "N")]
    pub test_images: Option<usize>,
    /// Image folders: N images of every class for validation (split by image).
    #[arg(long, value_name = "N")]
    pub val_images: Option<usize>,
    /// Omniglot: add each training character turned by 90, 180 and 270 degrees as
    /// three new classes (the usual Omniglot augmentation: 964 characters become 3,856).
    #[arg(long)]
    pub rotate_classes: bool,
    /// mnist and fashion-mnist: keep these classes out of training (`5-9`, `5,7,9`);
    /// validation and test then hold only them (the held-out-class protocol).
    #[arg(long, value_name = "CLASSES", value_parser = parse_held_out)]
    pub holdout_classes: Option<HeldOutClasses>,
}

fn parse_held_out(text: &str) -> Result<HeldOutClasses, String> {
    text.parse()
}

impl SourceArgs {
    /// Whether any image-folder option was given.
    pub fn has_folder_options(&self) -> bool {
        self.image_size.is_some()
            || self.test_classes.is_some()
            || self.val_classes.is_some()
            || self.test_images.is_some()
            || self.val_images.is_some()
    }
}

/// `HxW`, e.g. `112x92`.
fn parse_size(text: &str) -> Result<[usize; 2], String> {
    let (h, w) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{text:?}: expected HEIGHTxWIDTH, e.g. 112x92"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{text:?}: sizes must be positive whole numbers"))
    };
    Ok([parse(h)?, parse(w)?])
}

/// The optimiser, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerName {
    /// Adam (Kingma & Ba), TensorFlow's constants.
    Adam,
    /// SGD with momentum (`--momentum`): runs that differ only in rounding (one process
    /// against data-parallel ranks) stay together under it.
    Sgd,
}

/// The loss, by name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossName {
    /// Chopra et al. 2005 (`--q`).
    Chopra,
    /// Hadsell et al. 2006 margin contrastive (`--margin`).
    Margin,
}

/// A tower's layers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TowerName {
    /// The reference program's: three strided convolutions (32, 64, 128), fully
    /// connected layers of 1024 and 512 with dropout and batch norm, then the embedding.
    Reference,
    /// Four 64-channel 3x3 convolutions with ReLU, strided 1, 2, 2, 2, straight to the
    /// embedding.
    Strided,
    /// Snell et al.'s encoder: four blocks of a 64-channel 3x3 convolution, batch
    /// norm, ReLU and a 2x2 max-pool, then the embedding.
    FourBlock,
}

impl TowerName {
    /// `model` with this tower's layers, keeping its input, embedding size and reading.
    pub fn apply(self, model: &siamese_model::TowerConfig) -> siamese_model::TowerConfig {
        use siamese_model::TowerConfig;
        let (h, w, dim) = (model.input_height, model.input_width, model.embedding_dim);
        let layers = match self {
            TowerName::Reference => TowerConfig::default(),
            TowerName::Strided => TowerConfig::strided_four(h, w, dim),
            TowerName::FourBlock => TowerConfig::four_block(h, w, dim),
        };
        TowerConfig {
            input_channels: model.input_channels,
            input_height: h,
            input_width: w,
            embedding_dim: dim,
            normalize: model.normalize,
            ..layers
        }
    }
}

/// The pair sampler, by name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PairsName {
    /// Two independent draws, as the reference program.
    Random,
    /// A fixed share of same-class pairs (`--positive-fraction`).
    Balanced,
    /// P classes x K images per batch (`--images-per-class K`), for a `--pairing`
    /// among the batch's images.
    PerClass,
    /// N-way K-shot episodes scored by the prototypical loss (`--ways`, `--shots`,
    /// `--queries`); a step is one episode.
    Episodes,
}

/// Which pairs of a batch the loss sees, by name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PairingName {
    /// Only the sampled pairs (the reference program).
    Sampled,
    /// Every pair of the batch's images, each kind (same, different) averaged apart.
    AllInBatch,
    /// For each of the batch's images, its farthest same-class and nearest other-class
    /// image (batch-hard mining).
    BatchHard,
    /// The batch's pairs near the hardest pair of the other kind (multi-similarity
    /// mining, slack `--epsilon`).
    MultiSimilarity,
}

/// `siamese train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Starting recipe: `reference` (the TF1 program), `default`, `open-set` (for
    /// classes training never saw), `omniglot` (one-shot characters, episodic) or
    /// `faces` (people never seen, episodic; with `--data FOLDER`).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// A JSON `TrainConfig` to start from instead of a preset.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Optimisation steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Pairs per step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// The optimiser (default: the recipe's, Adam in every preset).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerName>,
    /// Momentum of `--optimizer sgd` (default 0.9).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Loss function.
    #[arg(long, value_enum)]
    pub loss: Option<LossName>,
    /// Upper bound Q of the Chopra loss.
    #[arg(long)]
    pub q: Option<f64>,
    /// Margin of the margin loss.
    #[arg(long)]
    pub margin: Option<f64>,
    /// Pair sampler.
    #[arg(long, value_enum)]
    pub pairs: Option<PairsName>,
    /// Share of same-class pairs with `--pairs balanced`.
    #[arg(long)]
    pub positive_fraction: Option<f64>,
    /// Images of each class in a batch with `--pairs per-class` (even; default 8).
    #[arg(long)]
    pub images_per_class: Option<usize>,
    /// Classes per episode with `--pairs episodes` (default: the preset's when it trains
    /// episodes, 120 for `omniglot` and 20 for `faces`; otherwise 60, as Snell et al.
    /// train).
    #[arg(long)]
    pub ways: Option<usize>,
    /// Support images per class with `--pairs episodes` (default: the preset's, or 1).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Query images per class with `--pairs episodes` (default: the preset's, or 5).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Which pairs of each batch the loss sees.
    #[arg(long, value_enum)]
    pub pairing: Option<PairingName>,
    /// Slack of `--pairing multi-similarity`, in distance units (default 0.1).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// The tower's layers (the input size follows the data; `--dim` and `--normalize`
    /// apply on top).
    #[arg(long, value_enum)]
    pub tower: Option<TowerName>,
    /// Embedding dimension.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Scale embeddings to unit length (distance then follows the cosine).
    #[arg(long)]
    pub normalize: bool,
    /// Read the embedding at this layer: `head` (the last, the default) or a hidden
    /// layer, `fc1`, `fc2`, ..., compared by cosine; the layers after it then form a
    /// projection head that only the training loss sees (better on unseen classes).
    #[arg(long, value_name = "LAYER", value_parser = parse_layer)]
    pub embed_from: Option<siamese_model::TowerLayer>,
    /// Embed by the mean over every shift of the image by up to R pixels each way
    /// (`(2R + 1)^2` views, as many times the cost): steadier on classes never seen.
    /// Saved with the model, so every command embeds this way; training is unchanged.
    #[arg(long, value_name = "R")]
    pub shift_average: Option<usize>,
    /// Distort training images at random (rotation 15 degrees, scale 0.9-1.1, shift
    /// 2 pixels).
    #[arg(long)]
    pub augment: bool,
    /// Mirror half the training images left to right, on top of the run's distortions
    /// (or alone): for faces, whose mirror image is the same person; not for
    /// characters.
    #[arg(long)]
    pub flip: bool,
    /// Add the self-supervised term with this weight: two augmented views of each
    /// image, the two views of one image as the only positives (needs --augment).
    #[arg(long, value_name = "WEIGHT")]
    pub self_supervised: Option<f64>,
    /// The self-supervised term's loss: NT-Xent at this temperature (default: the
    /// run's pair loss).
    #[arg(long, value_name = "TEMPERATURE", requires = "self_supervised")]
    pub nt_xent: Option<f64>,
    /// Dropout probability after each hidden layer.
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// Seed of everything random.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate on validation pairs every N steps.
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Save the resume checkpoint (last.safetensors) every N steps.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Run folder (default `runs/<preset>-<unix time>`).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (from step 0 if it was
    /// stopped before its first). Only `--steps` may change; other settings are the
    /// run's own.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Train N times, each on another split of an image folder's classes (seeds
    /// SEED ... SEED + N - 1, run folders OUT/split-1 ... OUT/split-N), then report the
    /// mean and spread of the test figures and on how many splits the model beats raw
    /// pixels (OUT/splits.json): one lucky split cannot carry the figure.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub splits: Option<u32>,
}

/// `siamese eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Read the embedding at another layer than the model's own (`head`, `fc1`, ...):
    /// which layer of a trained model transfers best to unseen classes.
    #[arg(long, value_name = "LAYER", value_parser = parse_layer)]
    pub embed_from: Option<siamese_model::TowerLayer>,
    /// Embed by the mean over every shift of up to R pixels each way instead of the
    /// model's own setting (0: the image as it is).
    #[arg(long, value_name = "R")]
    pub shift_average: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A split, by name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitName {
    /// Training split.
    Train,
    /// Validation split.
    Validation,
    /// Test split.
    Test,
}

/// `siamese embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The checkpoint.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Which split to embed.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// Output: `.csv` (label, then one column per dimension) or `.safetensors` (for
    /// `index`: the gallery file, .safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the images as the model saw them (`.safetensors` only: an `images`
    /// tensor of bytes, `[n, height, width]`, scaled to [0, 1] by the model): to check
    /// another runtime of the model (`siamese export`) against these embeddings.
    #[arg(long)]
    pub images: bool,
}

/// `siamese export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The ONNX file to write (`.onnx`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `siamese verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The checkpoint.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// First image (PNG, PGM or JPEG; converted and resized as in training).
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
    /// Distance at or below which the images are "same" (default: the checkpoint's);
    /// a distance threshold, so it scores plain distances.
    #[arg(long, value_parser = parse_threshold)]
    pub threshold: Option<f64>,
    /// How to score the pair: `normalised` judges the distance against each image's
    /// nearest training images (the checkpoint's cohort, stored where the test classes
    /// were unseen), `plain` by the distance alone; `auto` takes whichever told the
    /// validation pairs apart better.
    #[arg(long, value_enum, default_value_t = Scoring::Auto)]
    pub scoring: Scoring,
}

/// How `siamese verify` scores a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scoring {
    /// Normalised where the checkpoint's cohort had the lower validation EER.
    Auto,
    /// The distance against the checkpoint's distance threshold.
    Plain,
    /// The distance normalised against the checkpoint's cohort (AS-norm).
    Normalised,
}

/// `siamese plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Embeddings written by `siamese embed` or a training run (.safetensors).
    #[arg(long, value_name = "FILE")]
    pub embeddings: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `siamese data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// `fetch` (download if needed and verify) or `info` (where it is, what it holds).
    #[arg(value_enum)]
    pub action: DataAction,
    #[command(flatten)]
    pub source: SourceArgs,
    /// `info` as one JSON object (name, origin, image size, split sizes, per-class
    /// counts).
    #[arg(long)]
    pub json: bool,
}

/// What `siamese data` does.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DataAction {
    /// Find or download the data set and verify it.
    Fetch,
    /// Describe the data set and where it was found.
    Info,
}

/// A distance threshold: a finite number >= 0 (`nan` or `inf` would make every verdict
/// the same).
fn parse_threshold(text: &str) -> Result<f64, String> {
    siamese_model::checkpoint::threshold_value(text)
}

/// `head`, or `fcN` for hidden layer N (1-based, as the checkpoint's tensor names).
fn parse_layer(text: &str) -> Result<siamese_model::TowerLayer, String> {
    if text == "head" {
        return Ok(siamese_model::TowerLayer::Head);
    }
    text.strip_prefix("fc")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .map(|n| siamese_model::TowerLayer::Hidden(n - 1))
        .ok_or_else(|| {
            format!("expected `head` or a hidden layer `fc1`, `fc2`, ..., found {text:?}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use siamese_model::TowerLayer;

    #[test]
    fn a_tower_name_keeps_the_input_and_the_embedding() {
        let model = siamese_model::TowerConfig {
            input_height: 56,
            input_width: 46,
            embedding_dim: 32,
            normalize: true,
            embed_from: TowerLayer::Hidden(0),
            ..Default::default()
        };
        let blocks = TowerName::FourBlock.apply(&model);
        assert_eq!((blocks.input_height, blocks.input_width), (56, 46));
        assert_eq!((blocks.embedding_dim, blocks.normalize), (32, true));
        assert!(blocks.conv_batch_norm && blocks.conv_pool == 2);
        // The four-block tower has no hidden layer to read: the head is read.
        assert_eq!(blocks.embed_from, TowerLayer::Head);
        blocks.validate().unwrap();
        let strided = TowerName::Strided.apply(&blocks);
        assert!(!strided.conv_batch_norm && strided.conv_pool == 1);
        assert_eq!(strided.conv_strides, [1, 2, 2, 2]);
        let reference = TowerName::Reference.apply(&strided);
        assert_eq!(reference.fc_widths, [1024, 512]);
        assert_eq!(reference.input_height, 56);
    }

    #[test]
    fn layers_are_named_as_the_checkpoint_names_them() {
        assert_eq!(parse_layer("head"), Ok(TowerLayer::Head));
        assert_eq!(parse_layer("fc1"), Ok(TowerLayer::Hidden(0)));
        assert_eq!(parse_layer("fc2"), Ok(TowerLayer::Hidden(1)));
        for bad in ["fc0", "fc", "conv1", "fc-1", "1"] {
            assert!(parse_layer(bad).unwrap_err().contains("fc1"), "{bad}");
        }
    }
}
