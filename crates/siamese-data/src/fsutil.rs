//! Small file-system helpers shared by the codec and the download cache.

use std::io::Write;
use std::path::Path;

use crate::error::DataError;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written,
/// flushed to disk, then renamed over the target. Readers see the old file or the new
/// one, never a half-written one. Missing parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_err)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}
