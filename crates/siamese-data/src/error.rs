//! The one error type of this crate: every variant names the file (or data set) and
//! says what was expected and what was found, so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can go wrong while reading, fetching, sampling or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused a read or write.
    // The cause is in the message and deliberately not the error's `source()`: anyhow's
    // `{:#}` prints both, and users saw "Is a directory (os error 21): Is a directory
    // (os error 21)".
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is not a valid IDX file of the expected kind.
    #[error("{}: not a valid IDX file: expected {expected}, found {found}", path.display())]
    BadIdx {
        /// The file.
        path: PathBuf,
        /// What a valid file has at this point.
        expected: String,
        /// What this file has.
        found: String,
    },
    /// The file could not be decompressed or decoded at all.
    #[error("{}: corrupt data: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Image and label files disagree in length.
    #[error("{} holds {images} images but {} holds {labels} labels; they must match", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// The label file.
        labels_path: PathBuf,
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not a valid class index.
    #[error("{}: label {label} at index {index} is out of range: expected 0..{num_classes}", path.display())]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Position of the label.
        index: usize,
        /// The label found.
        label: u32,
        /// Number of classes of the data set.
        num_classes: usize,
    },
    /// A split or file does not have the size the data set defines.
    #[error("{what}: expected {expected}, found {found}")]
    Unexpected {
        /// Which data (file, split, data set) is meant.
        what: String,
        /// What the data set definition says.
        expected: String,
        /// What was read.
        found: String,
    },
    /// The decompressed content's SHA-256 differs from the known one.
    #[error("{}: SHA-256 of the uncompressed IDX data is {found}, expected {expected} (the file is damaged or not the official release)", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The checksum in the manifest.
        expected: String,
        /// The checksum computed.
        found: String,
    },
    /// No local copy was found and downloading was impossible or disabled.
    #[error("{dataset}: no local copy found and it could not be downloaded ({reason}); {help}")]
    NotAvailable {
        /// The data set.
        dataset: String,
        /// Why the download did not happen or failed.
        reason: String,
        /// The folders searched and the files a local copy needs, ready to print.
        help: String,
    },
    /// A Hub download failed.
    #[error("downloading {file} from {repo} ({endpoint}): {detail}")]
    Download {
        /// The Hub endpoint.
        endpoint: String,
        /// The data set repository.
        repo: String,
        /// The file in it.
        file: String,
        /// What went wrong.
        detail: String,
    },
    /// The Hub could not be reached at all (no network, DNS failure, refused connection).
    #[error("cannot reach the Hub at {endpoint}: {detail}")]
    HubUnreachable {
        /// The Hub endpoint.
        endpoint: String,
        /// The transport error.
        detail: String,
    },
    /// A parquet file from the Hub is not in the expected layout.
    #[error("{}: {detail}", path.display())]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// What was expected and found.
        detail: String,
    },
    /// An image inside a parquet row could not be decoded.
    #[error("{}: row {row}: {detail}", path.display())]
    Image {
        /// The parquet file.
        path: PathBuf,
        /// Row index in the file.
        row: usize,
        /// What was wrong with the image.
        detail: String,
    },
    /// An image file could not be read or decoded.
    #[error("{}: {detail}", path.display())]
    ImageFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
    /// An image folder is not usable as a data set (its layout, sizes or split).
    #[error("{}: {detail}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What was expected and found.
        detail: String,
    },
    /// A data set name nobody knows.
    #[error("unknown data set {name:?}: expected one of {known}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The names this crate knows.
        known: String,
    },
    /// A sampler cannot be built or restored from what it was given.
    #[error("pair sampler: {0}")]
    Sampler(String),
    /// A data description asks for two things that do not go together (held-out
    /// classes of an image folder, image-folder options for an IDX data set).
    #[error("{0}")]
    Description(String),
    /// A tensor could not be built.
    #[error("building tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}
