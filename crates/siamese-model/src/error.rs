//! Errors of the model crate. Checkpoint errors name the file and, where one is
//! involved, the tensor, with what was expected and what was found.

use std::path::PathBuf;

/// What can go wrong building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model configuration is unusable.
    #[error("invalid model config: {0}")]
    Config(String),
    /// The model computed NaN or infinity from finite inputs and weights.
    #[error("{0}")]
    Overflow(String),
    /// An input tensor has the wrong shape.
    #[error("{what}: expected shape {expected}, found {found:?}")]
    Input {
        /// Which input.
        what: &'static str,
        /// The shape required.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },
    /// The file could not be read or written.
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
    /// The file is not a (complete) safetensors file.
    #[error("{}: not a valid safetensors file: {detail}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The checkpoint's metadata is missing or unusable.
    #[error("{}: {detail}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
    /// A tensor the model needs is absent.
    #[error("{}: missing tensor {name:?} (expected shape {expected:?})", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// The file holds a tensor the model does not have.
    #[error("{}: unexpected tensor {name:?}: the model config has no such parameter", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("{}: tensor {name:?} has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has the wrong dtype.
    #[error("{}: tensor {name:?} has dtype {found}, expected F32", path.display())]
    TensorDType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        found: String,
    },
    /// A parameter holds NaN or infinity; such weights are never written.
    #[error("tensor {name:?} holds non-finite values; refusing to save it")]
    NonFinite {
        /// The tensor name.
        name: String,
    },
    /// A checkpoint's tensor holds values no trained model has: NaN or infinity
    /// anywhere, a negative batch-norm variance.
    #[error("{}: tensor {name:?} {detail}: the checkpoint is broken (from a diverged run, or edited)", path.display())]
    BadValues {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What is wrong with its values.
        detail: String,
    },
    /// An error inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Saving or restoring a state ([`siamese_state`]) failed.
    #[error(transparent)]
    State(siamese_state::StateError),
}

impl From<siamese_state::StateError> for ModelError {
    fn from(e: siamese_state::StateError) -> Self {
        use siamese_state::StateError;
        match e {
            // Kept as the model's own variants, which callers already match on.
            StateError::NonFinite { name } => Self::NonFinite { name },
            StateError::Io { path, error } => Self::Io { path, error },
            StateError::NotSafetensors { path, detail } => Self::NotSafetensors { path, detail },
            StateError::NonFiniteInFile { path, name } => Self::BadValues {
                path,
                name,
                detail: "holds NaN or infinity".into(),
            },
            StateError::Tensor(e) => Self::Candle(e),
            other => Self::State(other),
        }
    }
}
