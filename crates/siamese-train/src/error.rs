//! Errors of training and evaluation.

use std::path::PathBuf;

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is unusable.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The inputs handed to a function (embeddings, labels, images, a checkpoint's
    /// metadata) are inconsistent; the message names them.
    #[error("{0}")]
    Input(String),
    /// The run folder cannot be used: it holds another run, or another process is
    /// training in it.
    #[error("{0}")]
    RunFolder(String),
    /// The loss, a weight or a statistic became NaN or infinite; nothing of that step
    /// was saved, and the last good checkpoint is kept.
    #[error("training diverged at step {step}: {what}; {kept}; try a lower learning rate")]
    Diverged {
        /// The step that produced the non-finite value.
        step: u64,
        /// What was found not finite.
        what: String,
        /// Which checkpoint is kept.
        kept: String,
    },
    /// A plot could not be drawn.
    #[error("{0}")]
    Plot(String),
    /// A run folder cannot be resumed.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A file could not be read or written.
    // The cause is in the message and deliberately not the error's `source()`: anyhow's
    // `{:#}` prints both, and users saw "Is a directory (os error 21): Is a directory
    // (os error 21)".
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
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

/// State errors read as the model crate's (a non-finite tensor, a file that cannot be
/// written), which callers and messages already know.
impl From<siamese_state::StateError> for TrainError {
    fn from(e: siamese_state::StateError) -> Self {
        Self::Model(siamese_model::ModelError::from(e))
    }
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
        move |source| TrainError::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}
