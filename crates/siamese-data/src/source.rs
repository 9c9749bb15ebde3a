//! Where a data set comes from, tried in order: an explicit folder, then
//! `$SIAMESE_DATA_DIR/<name>/`, then the user cache folder, then a download from the
//! Hugging Face Hub (converted once to IDX in the cache). A folder holds the four
//! standard IDX files, gzip or plain (detected by content).

use std::path::{Path, PathBuf};

use crate::dataset::{verify_part, Dataset, DatasetSpec, ImageSet, Part};
use crate::error::DataError;
#[cfg(feature = "hub")]
use crate::hub;
use crate::idx;

/// Environment variable naming a folder that holds `<name>/` data folders.
pub const DATA_DIR_ENV: &str = "SIAMESE_DATA_DIR";
/// Environment variable overriding the cache folder.
pub const CACHE_DIR_ENV: &str = "SIAMESE_CACHE_DIR";

/// How to look for a data set. [`LoadOptions::from_env`] is what the CLI uses; tests
/// build one explicitly so they never depend on the machine's environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A folder holding the four files. When set, it is the only place looked at.
    pub folder: Option<PathBuf>,
    /// A folder holding `<name>/` subfolders (`SIAMESE_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// The cache folder; downloads are converted to IDX in `<cache>/<name>/`.
    pub cache_dir: Option<PathBuf>,
    /// The Hub endpoint; `None` means `https://huggingface.co`.
    pub hub_endpoint: Option<String>,
    /// Never download (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show a download progress bar.
    pub progress: bool,
    /// Retries of an interrupted download.
    pub retries: usize,
}

impl LoadOptions {
    /// Options from the environment: `SIAMESE_DATA_DIR`, `SIAMESE_CACHE_DIR` (else
    /// `$XDG_CACHE_HOME/siamese`, else `~/.cache/siamese`), `HF_ENDPOINT`,
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_dir = var(CACHE_DIR_ENV)
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("siamese")))
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/siamese")));
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
            .unwrap_or(false);
        Self {
            folder: None,
            data_dir: var(DATA_DIR_ENV).map(PathBuf::from),
            cache_dir,
            hub_endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            offline,
            progress: true,
            retries: 3,
        }
    }

    /// The same options with an explicit folder.
    pub fn with_folder(mut self, folder: impl Into<PathBuf>) -> Self {
        self.folder = Some(folder.into());
        self
    }
}

/// Where the data were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The explicit folder.
    Folder(PathBuf),
    /// `$SIAMESE_DATA_DIR/<name>/`.
    DataDir(PathBuf),
    /// The cache, from an earlier download.
    Cache(PathBuf),
    /// Downloaded now, converted into this cache folder.
    Downloaded(PathBuf),
}

impl Origin {
    /// The folder holding the IDX files.
    pub fn folder(&self) -> &Path {
        match self {
            Origin::Folder(p) | Origin::DataDir(p) | Origin::Cache(p) | Origin::Downloaded(p) => p,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, path) = match self {
            Origin::Folder(p) => ("folder", p),
            Origin::DataDir(p) => ("SIAMESE_DATA_DIR", p),
            Origin::Cache(p) => ("cache", p),
            Origin::Downloaded(p) => ("downloaded from the Hub into", p),
        };
        write!(f, "{what} {}", path.display())
    }
}

/// Loads a data set with its splits, looking where `options` say.
pub fn load(spec: &DatasetSpec, options: &LoadOptions) -> Result<(Dataset, Origin), DataError> {
    if let Some(folder) = &options.folder {
        let data = load_folder(spec, folder)?;
        return Ok((data, Origin::Folder(folder.clone())));
    }
    let mut looked_in = Vec::new();
    if let Some(dir) = &options.data_dir {
        if dir.exists() && !dir.is_dir() {
            return Err(DataError::Io {
                path: dir.clone(),
                error: std::io::Error::other(format!(
                    "{DATA_DIR_ENV} names a file; it must be a folder holding {}/",
                    spec.dir_name
                )),
            });
        }
        let folder = dir.join(&spec.dir_name);
        if has_any_file(spec, &folder) {
            return Ok((load_folder(spec, &folder)?, Origin::DataDir(folder)));
        }
        looked_in.push(format!("{} ({DATA_DIR_ENV})", folder.display()));
    }
    let cache_folder = options.cache_dir.as_ref().map(|c| c.join(&spec.dir_name));
    if let Some(folder) = &cache_folder {
        if has_any_file(spec, folder) {
            return Ok((load_folder(spec, folder)?, Origin::Cache(folder.clone())));
        }
        looked_in.push(format!("{} (cache)", folder.display()));
    }
    let not_available = |reason: String, looked_in: &[String]| {
        // One line, so that it reads as one error wherever it is printed.
        let looked_in = if looked_in.is_empty() {
            "(no folder: neither SIAMESE_DATA_DIR nor a cache folder is set)".to_string()
        } else {
            looked_in.join(", ")
        };
        let suggestion = cache_folder
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| format!("$SIAMESE_DATA_DIR/{}", spec.dir_name));
        DataError::NotAvailable {
            dataset: spec.name.clone(),
            reason,
            help: format!(
                "looked in {looked_in}; to use it offline, put the four files {} in {suggestion}, \
                 or set SIAMESE_DATA_DIR to a folder holding {}/ with them",
                spec.file_names().join(", "),
                spec.dir_name
            ),
        }
    };
    let Some(cache) = &options.cache_dir else {
        return Err(not_available(
            "no cache folder to download into".into(),
            &looked_in,
        ));
    };
    if options.offline {
        return Err(not_available(
            "offline mode (HF_HUB_OFFLINE)".into(),
            &looked_in,
        ));
    }
    #[cfg(not(feature = "hub"))]
    return Err(not_available(
        format!(
            "siamese-data was built without its `hub` feature, so nothing is downloaded \
             into {}",
            cache.display()
        ),
        &looked_in,
    ));
    #[cfg(feature = "hub")]
    {
        let folder = cache.join(&spec.dir_name);
        match hub::fetch_to_cache(spec, options, cache, &folder) {
            Ok(data) => Ok((data, Origin::Downloaded(folder))),
            // An unreachable Hub is reported with the offline instructions; a failed or
            // corrupt download is reported as such, since providing files is not the fix.
            Err(DataError::HubUnreachable { endpoint, detail }) => Err(not_available(
                format!("cannot reach {endpoint}: {detail}"),
                &looked_in,
            )),
            Err(e) => Err(e),
        }
    }
}

fn has_any_file(spec: &DatasetSpec, folder: &Path) -> bool {
    spec.file_names()
        .iter()
        .any(|name| find_file(folder, name).is_some())
}

/// The file `name` in `folder`, also accepted without its `.gz` suffix.
fn find_file(folder: &Path, name: &str) -> Option<PathBuf> {
    let exact = folder.join(name);
    if exact.is_file() {
        return Some(exact);
    }
    let plain = folder.join(name.strip_suffix(".gz")?);
    plain.is_file().then_some(plain)
}

fn require_file(folder: &Path, name: &str) -> Result<PathBuf, DataError> {
    find_file(folder, name).ok_or_else(|| DataError::Io {
        path: folder.join(name),
        error: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "missing (also looked for {})",
                name.strip_suffix(".gz").unwrap_or(name)
            ),
        ),
    })
}

/// Loads and verifies the four IDX files of `spec` from `folder`.
pub fn load_folder(spec: &DatasetSpec, folder: &Path) -> Result<Dataset, DataError> {
    let train = load_part(spec, Part::Train, folder)?;
    let test = load_part(spec, Part::Test, folder)?;
    Ok(Dataset::from_parts(spec.clone(), train, test))
}

fn load_part(spec: &DatasetSpec, part: Part, folder: &Path) -> Result<ImageSet, DataError> {
    let part_spec = spec.part(part);
    let images_path = require_file(folder, &part_spec.images_file)?;
    let labels_path = require_file(folder, &part_spec.labels_file)?;
    let images = idx::read_images(&images_path)?;
    let labels = idx::read_labels(&labels_path)?;
    verify_part(spec, part, images, labels, &images_path, &labels_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::{encode_images, encode_labels, write_file, IdxImages};

    /// A 3-class data set of 4x4 images: 12 train (2 of them validation), 6 test.
    pub(crate) fn tiny_spec() -> DatasetSpec {
        let mut spec = DatasetSpec::mnist();
        spec.name = "tiny".into();
        spec.dir_name = "tiny".into();
        spec.rows = 4;
        spec.cols = 4;
        spec.class_names = vec!["a".into(), "b".into(), "c".into()];
        spec.validation_size = 2;
        for (part, count) in [(&mut spec.train, 12), (&mut spec.test, 6)] {
            part.count = count;
            part.class_counts = Some(vec![count / 3; 3]);
            part.images_sha256 = None;
            part.labels_sha256 = None;
        }
        spec
    }

    fn write_tiny(folder: &Path, spec: &DatasetSpec, gzip: bool) {
        for part in [&spec.train, &spec.test] {
            let labels: Vec<u8> = (0..part.count).map(|i| (i % 3) as u8).collect();
            let images = IdxImages {
                count: part.count,
                rows: 4,
                cols: 4,
                pixels: (0..part.count * 16).map(|i| (i % 251) as u8).collect(),
            };
            let name = |n: &str| {
                if gzip {
                    n.to_string()
                } else {
                    n.trim_end_matches(".gz").to_string()
                }
            };
            write_file(
                &folder.join(name(&part.images_file)),
                &encode_images(&images),
                gzip,
            )
            .unwrap();
            write_file(
                &folder.join(name(&part.labels_file)),
                &encode_labels(&labels),
                gzip,
            )
            .unwrap();
        }
    }

    #[test]
    fn explicit_folder_gzip_or_plain_gives_the_splits() {
        let spec = tiny_spec();
        for gzip in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            write_tiny(dir.path(), &spec, gzip);
            let options = LoadOptions::default().with_folder(dir.path());
            let (data, origin) = load(&spec, &options).unwrap();
            assert_eq!(origin, Origin::Folder(dir.path().to_path_buf()));
            assert_eq!(
                (data.train.len(), data.validation.len(), data.test.len()),
                (10, 2, 6)
            );
            // Validation is the *last* images of the official train set.
            assert_eq!(data.validation.labels(), &[10 % 3, 11 % 3]);
        }
    }

    #[test]
    fn data_dir_comes_before_cache() {
        let spec = tiny_spec();
        let data_dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        write_tiny(&data_dir.path().join("tiny"), &spec, true);
        write_tiny(&cache.path().join("tiny"), &spec, true);
        let options = LoadOptions {
            data_dir: Some(data_dir.path().into()),
            cache_dir: Some(cache.path().into()),
            offline: true,
            ..Default::default()
        };
        let (_, origin) = load(&spec, &options).unwrap();
        assert_eq!(origin, Origin::DataDir(data_dir.path().join("tiny")));
        let options = LoadOptions {
            data_dir: Some(cache.path().join("elsewhere")),
            ..options
        };
        let (_, origin) = load(&spec, &options).unwrap();
        assert_eq!(origin, Origin::Cache(cache.path().join("tiny")));
    }

    #[test]
    fn offline_without_copy_says_what_to_provide() {
        let spec = tiny_spec();
        let cache = tempfile::tempdir().unwrap();
        let options = LoadOptions {
            cache_dir: Some(cache.path().into()),
            offline: true,
            ..Default::default()
        };
        let msg = load(&spec, &options).unwrap_err().to_string();
        assert!(msg.contains("offline"), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
        assert!(
            msg.contains(&cache.path().join("tiny").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("SIAMESE_DATA_DIR"), "{msg}");
    }

    #[test]
    fn missing_file_in_a_folder_is_named() {
        let spec = tiny_spec();
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), &spec, true);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let msg = load_folder(&spec, dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("t10k-labels-idx1-ubyte.gz") && msg.contains("missing"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_counts_and_checksums_are_reported() {
        let mut spec = tiny_spec();
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), &spec, true);
        spec.train.class_counts = Some(vec![5, 4, 3]);
        let msg = load_folder(&spec, dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("images per class") && msg.contains("[4, 4, 4]"),
            "{msg}"
        );
        spec.train.class_counts = None;
        spec.train.labels_sha256 = Some("00".repeat(32));
        let msg = load_folder(&spec, dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("SHA-256") && msg.contains("train-labels"),
            "{msg}"
        );
        spec.train.labels_sha256 = None;
        spec.test.count = 7;
        let msg = load_folder(&spec, dir.path()).unwrap_err().to_string();
        assert!(msg.contains("expected 7 images"), "{msg}");
    }
}
