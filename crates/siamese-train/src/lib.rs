//! Training and evaluation of Siamese networks: a trainer generic over the pair
//! sampler, the embedder and the pair loss; Adam with saved moments; the evaluation
//! protocol (ROC AUC, EER, accuracy at a validation threshold, kNN-5); and run folders
//! that resume exactly.
//!
//! ```no_run
//! use siamese_data::{load, DatasetSpec, LoadOptions};
//! use siamese_train::{run, RunOptions, Silent, TrainConfig};
//!
//! let (mnist, _) = load(&DatasetSpec::mnist(), &LoadOptions::from_env())?;
//! let config = TrainConfig::default_preset();
//! let summary = run(&config, &mnist, "runs/example".as_ref(), &RunOptions::default(), &mut Silent)?;
//! println!("{:?}", summary.report);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod explore;
pub mod labelled;
pub mod oneshot;
/// The evaluation metrics, from the `siamese-metrics` crate (usable without this one).
pub use siamese_metrics as metrics;
pub mod optim;
pub mod plot;
pub mod projector;
pub mod provenance;
pub mod run;
pub mod run_folder;
pub mod splits;
pub mod tensorboard;
pub mod trainer;

pub use config::{
    LossConfig, OptimConfig, Pairing, SamplerConfig, Schedule, SelfSupervised, StepLoss,
    TrainConfig, ViewLoss, PRESETS,
};
pub use error::TrainError;
pub use eval::{evaluate, EvalReport, KnnGallery, ScoreNormalised};
pub use labelled::LabelledEmbeddings;
pub use optim::{Adam, AdamConfig, Method, Optimizer, Sgd, SgdConfig};
pub use provenance::{Provenance, ScoreNormRecord};
pub use run::{
    final_evaluation, run, EvalRecord, Reporter, RunOptions, RunSummary, Silent, StepRecord,
};
pub use run_folder::load_run_config;
pub use siamese_metrics::{
    accuracy_at, knn_accuracy, knn_accuracy_leave_one_out, pair_metrics, PairMetrics,
    RetrievalMetrics, Verification,
};
pub use splits::{AutoSummary, NormalisedSummary, SplitsSummary, Spread};
pub use trainer::Trainer;

/// The README's Rust examples, compiled and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
