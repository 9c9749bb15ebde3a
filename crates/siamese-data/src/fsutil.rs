//! Small file-system helpers shared by the codec and the download cache.

use std::path::Path;

use crate::error::DataError;

/// Writes `bytes` to `path` atomically through [`siamese_fs::write_atomic`]: readers
/// see the old file or the new one, never a half-written one; missing parent folders
/// are created. The error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    siamese_fs::write_atomic(path, bytes).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })
}
