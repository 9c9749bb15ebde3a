//! Data for Siamese metric learning: the IDX codec, MNIST and Fashion-MNIST with the
//! reference program's splits, their sources (a local folder, `SIAMESE_DATA_DIR`, the
//! cache, the Hugging Face Hub), image folders of your own (one subfolder per class,
//! [`folder`]), pair samplers, and the batcher that makes tensors.
//!
//! Everything but [`batcher`] is tensor-free: samplers produce indices and labels.
//!
//! ```
//! use siamese_data::{Batcher, BalancedPairs, ImageSet, Layout, PairSampler};
//! use candle_core::Device;
//!
//! // Six 2x2 images of three classes (a real set comes from `siamese_data::load`).
//! let pixels: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
//! let labels = vec![0, 0, 1, 1, 2, 2];
//! let set = ImageSet::new(2, 2, 3, pixels, labels, "example".as_ref())?;
//!
//! // Half of every batch are same-class pairs; the seed fixes the whole sequence.
//! let mut sampler = BalancedPairs::new(set.labels(), set.num_classes(), 0.5, 42)?;
//! let pairs = sampler.sample(4);
//! assert_eq!(pairs.positives(), 2);
//!
//! // One tensor of the pairs' first images, then their second images, and each
//! // image's class: what a training step's loss needs.
//! let batch = Batcher::new(Device::Cpu).labelled(&set, &pairs, Layout::Pairs, None)?;
//! assert_eq!(batch.images.dims(), &[8, 1, 2, 2]);
//! let same = (0..4).filter(|&i| batch.labels[i] == batch.labels[i + 4]).count();
//! assert_eq!(same, 2);
//! # Ok::<(), siamese_data::DataError>(())
//! ```
//!
//! Loading MNIST looks in `SIAMESE_DATA_DIR/mnist/`, then the cache, then downloads:
//!
//! ```no_run
//! use siamese_data::{load, DatasetSpec, LoadOptions};
//! let (mnist, origin) = load(&DatasetSpec::mnist(), &LoadOptions::from_env())?;
//! println!("{} train images from {origin}", mnist.train.len());
//! # Ok::<(), siamese_data::DataError>(())
//! ```
//!
//! Labels: `same = 1` means the two images are of the same class, as in the reference
//! program (Chopra et al. 2005 write `Y = 0` for genuine pairs).

pub mod augment;
pub mod batcher;
pub mod data_source;
pub mod dataset;
pub mod episode;
pub mod error;
pub mod folder;
mod fsutil;
pub mod holdout;
#[cfg(feature = "hub")]
pub mod hub;
pub mod idx;
#[cfg(feature = "image-folder")]
mod jpeg_scan;
pub mod npz;
pub mod omniglot;
pub mod rng;
pub mod sampler;
pub mod source;

pub use augment::{AugmentConfig, Augmenter};
pub use batcher::{unit_pixel, Batcher, LabelledBatch, Layout};
pub use data_source::{find_omniglot, DataDescription, DataSource, LoadedData};
pub use dataset::{
    Dataset, DatasetSpec, ImageSet, Part, PartSpec, Split, KNOWN_DATASETS, MAX_CLASSES,
};
pub use episode::{Draw, Episode, EpisodeSampler, StepSampler};
pub use error::DataError;
pub use folder::{is_image_folder, FolderData, FolderOptions, FolderSplit, Preprocessing};
#[cfg(feature = "image-folder")]
pub use folder::{load_image_folder, read_image};
pub use fsutil::write_atomic;
pub use holdout::HeldOutClasses;
pub use omniglot::{load_omniglot, OmniglotOptions};
pub use rng::Rng;
pub use sampler::{
    evaluation_pairs, BalancedPairs, PairBatch, PairSampler, PerClassPairs, RandomPairs,
};
/// The state protocol samplers and the augmenter implement, re-exported so a custom
/// sampler needs no other dependency.
pub use siamese_state::{StateDict, StateError, Stateful};
pub use source::{load, load_folder, LoadOptions, Origin};
