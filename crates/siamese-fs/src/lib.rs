//! Durable file writes, in one place for every siamese crate.
//!
//! A run folder, a cache or a gallery must never hold half a file: a reader (or a
//! resumed run after `kill -9`) sees the previous content or the new one. Every crate
//! writes through [`write_atomic`]; the crates above map its [`std::io::Error`] into
//! their own error type with the path attached.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("runs/a/config.json");
//! siamese_fs::write_atomic(&path, b"{}")?;
//! siamese_fs::write_atomic(&path, b"{\"steps\": 2}")?;
//! assert_eq!(std::fs::read(&path)?, b"{\"steps\": 2}");
//! // Nothing but the target is left behind.
//! let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())?.collect();
//! assert_eq!(names.len(), 1);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file beside it (see
/// [`temp_path_for`]), flushed to disk, renamed over `path`, then the folder itself
/// flushed so the rename survives a power cut. Missing parent folders are created.
/// On failure the temporary file is removed and the previous file stays as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path_for(path);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|_| file.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    // Best effort: some file systems refuse to sync a directory; the data is already
    // in place and the rename done, so a failure here loses nothing.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// The temporary file [`write_atomic`] writes before the rename: `.<name>.<pid>.tmp`
/// in the same folder (a rename is atomic only within one file system), named with the
/// process id so two processes writing the same target never share one.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    parent_dir(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether a file name is one of [`write_atomic`]'s temporary files. A process killed
/// mid-write leaves one behind; whoever owns the folder (a run holding its lock) may
/// remove them.
pub fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.')
        && name.ends_with(".tmp")
        && name
            .trim_end_matches(".tmp")
            .rsplit_once('.')
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// The folder a path lives in: `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_previous_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_atomic(&path, b"first").unwrap();
        // A directory where the temporary file should go makes the write fail.
        std::fs::create_dir(temp_path_for(&path)).unwrap();
        assert!(write_atomic(&path, b"second").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        std::fs::remove_dir(temp_path_for(&path)).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the target remains");
    }

    #[test]
    fn temporary_files_are_recognised_and_nothing_else_is() {
        let tmp = temp_path_for(Path::new("runs/a/last.safetensors"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_file_name(name), "{name}");
        assert_eq!(tmp.parent().unwrap(), Path::new("runs/a"));
        assert!(is_temp_file_name(".last.safetensors.4242.tmp"));
        for other in [
            "last.safetensors",
            ".hidden.tmp",
            ".last.safetensors..tmp",
            ".last.safetensors.12a.tmp",
            "notes.tmp",
            ".tmp",
        ] {
            assert!(!is_temp_file_name(other), "{other}");
        }
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_folder() {
        assert_eq!(parent_dir(Path::new("x.json")), Path::new("."));
        assert_eq!(
            temp_path_for(Path::new("x.json")),
            Path::new(".").join(format!(".x.json.{}.tmp", std::process::id()))
        );
    }
}
