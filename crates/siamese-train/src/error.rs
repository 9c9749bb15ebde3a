//! Errors of training and evaluation.

use std::path::PathBuf;

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is unusable.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("training diverged at step {step}: the loss is {loss} (the last good checkpoint, if any, is kept; try a lower learning rate)")]
    Diverged {
        /// The step whose loss was not finite.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// A run folder cannot be resumed.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] siamese_data::DataError),
    /// From the loss crate.
    #[error(transparent)]
    Loss(#[from] siamese_loss::LossError),
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] siamese_model::ModelError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
        move |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
