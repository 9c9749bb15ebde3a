//! Distances and contrastive losses for Siamese metric learning, as plain candle
//! tensor functions: usable on their own, without the rest of the workspace.
//!
//! Following pytorch-metric-learning, a loss is made of parts: a [`Distance`] (paired
//! and matrix forms), a [`PairLoss`] returning one term per pair, and a [`Reduction`];
//! a [`Miner`] picks which pairs of a batch the loss sees, and [`MinedLoss`] composes
//! the four into one [`BatchLoss`]: labelled embeddings in, one loss out ([`batch`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use siamese_loss::{Chopra2005, ContrastiveLoss, Euclidean, PairLoss, Reduction, Distance};
//!
//! let dev = Device::Cpu;
//! let a = Tensor::new(&[[0f32, 0.], [1., 1.]], &dev)?;
//! let b = Tensor::new(&[[0f32, 0.], [4., 5.]], &dev)?;
//! let same = Tensor::new(&[1f32, 0.], &dev)?; // 1 = same class
//!
//! // Distances: the first pair is identical (E = 0, with a finite gradient), the second 5 apart.
//! let e = Euclidean::default().paired(&a, &b)?;
//! // Chopra 2005 with q = 5: genuine at E = 0 costs 0, impostor at E = 5 costs 10 exp(-2.77).
//! let terms = Chopra2005 { q: 5.0 }.terms(&e, &same)?.to_vec1::<f32>()?;
//! assert!(terms[0].abs() < 1e-6 && (terms[1] - 10.0 * (-2.77f32).exp()).abs() < 1e-5);
//!
//! // Or all at once: distance, loss and reduction.
//! let loss = ContrastiveLoss { distance: Euclidean::default(), loss: Chopra2005 { q: 5.0 }, reduction: Reduction::Mean };
//! let mean = loss.forward(&a, &b, &same)?.to_scalar::<f32>()?;
//! assert!((mean - terms[1] / 2.0).abs() < 1e-6);
//! # Ok::<(), siamese_loss::LossError>(())
//! ```
//!
//! Labels: `same = 1` means the pair is of the same class, as in the reference program.
//! The papers (Chopra 2005, Hadsell 2006) write `Y = 0` for genuine pairs.

pub mod batch;
pub mod distance;
pub mod error;
pub mod loss;
pub mod miner;
pub mod ntxent;
pub mod prototypical;

pub use batch::{view_labels, BatchLoss, MinedLoss, NtXent, WithViewTerm};
pub use distance::{Cosine, Distance, Euclidean, SquaredEuclidean};
pub use error::LossError;
pub use loss::{split_means, Chopra2005, ContrastiveLoss, Hadsell2006, PairLoss, Reduction};
pub use miner::{AllPairs, BatchHard, MinedPairs, Miner, MultiSimilarity, PairedHalves};
pub use ntxent::nt_xent;
pub use prototypical::Prototypical;
