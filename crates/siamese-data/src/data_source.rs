//! What a `--data` argument names, resolved once in the library: a known data set by
//! name, a folder holding a known data set's IDX files, or an image folder. Every
//! command (train, eval, embed, index, explore) loads through [`DataSource`], so they
//! agree on what a name means and say the same thing when it means nothing.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetSpec, KNOWN_DATASETS};
use crate::error::DataError;
use crate::folder::{is_image_folder, load_image_folder, FolderOptions};
use crate::source::{load, LoadOptions};

/// Where a data set comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// A known data set by name: found in `SIAMESE_DATA_DIR`, the cache, or downloaded.
    Known(Box<DatasetSpec>),
    /// A folder holding the IDX files of one of the known data sets (which one is told
    /// by the files' checksums).
    IdxFolder(PathBuf),
    /// A folder with one subfolder of images per class.
    ImageFolder(PathBuf),
}

/// A loaded data set and what the user should be told about it.
#[derive(Debug)]
pub struct LoadedData {
    /// The splits.
    pub dataset: Dataset,
    /// Where it was found, in words.
    pub origin: String,
    /// For an image folder, its options with every default resolved.
    pub folder: Option<FolderOptions>,
    /// For an image folder, the file of every image of train, validation and test.
    pub paths: Option<[Vec<PathBuf>; 3]>,
    /// For an image folder, the files that were not read (no image extension).
    pub skipped: Vec<PathBuf>,
}

impl DataSource {
    /// Resolves `text`: an image folder (a subfolder holding images), any other
    /// existing folder (IDX files), a known name, else an error that says which of
    /// these `text` failed to be: a missing folder when it looks like a path.
    pub fn resolve(text: &str) -> Result<Self, DataError> {
        let path = Path::new(text);
        if is_image_folder(path) {
            return Ok(Self::ImageFolder(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(Self::IdxFolder(path.to_path_buf()));
        }
        let looks_like_path =
            text.contains(std::path::MAIN_SEPARATOR) || text.contains('/') || text.starts_with('.');
        if looks_like_path {
            let what = if path.exists() {
                "not a folder"
            } else {
                "no such folder"
            };
            return Err(DataError::Folder {
                path: path.to_path_buf(),
                detail: format!(
                    "{what} (--data takes {} or a folder)",
                    KNOWN_DATASETS.join(", ")
                ),
            });
        }
        DatasetSpec::by_name(text).map(|spec| Self::Known(Box::new(spec)))
    }

    /// Loads it. `options` says where known data sets are looked for; `folder` applies
    /// to image folders only.
    pub fn load(
        &self,
        options: &LoadOptions,
        folder: &FolderOptions,
    ) -> Result<LoadedData, DataError> {
        let (dataset, origin) = match self {
            Self::ImageFolder(dir) => {
                let loaded = load_image_folder(dir, folder)?;
                return Ok(LoadedData {
                    dataset: loaded.dataset,
                    origin: format!("image folder {}", dir.display()),
                    folder: Some(loaded.options),
                    paths: Some(loaded.paths),
                    skipped: loaded.skipped,
                });
            }
            Self::Known(spec) => load(spec, options)?,
            Self::IdxFolder(dir) => {
                let mut failures = Vec::new();
                let mut found = None;
                for name in KNOWN_DATASETS {
                    let spec = DatasetSpec::by_name(name)?;
                    match load(&spec, &options.clone().with_folder(dir)) {
                        Ok(loaded) => {
                            found = Some(loaded);
                            break;
                        }
                        Err(e) => failures.push(format!("as {name}: {e}")),
                    }
                }
                found.ok_or_else(|| DataError::Folder {
                    path: dir.clone(),
                    detail: format!(
                        "holds no known data set and no class subfolders of images ({})",
                        failures.join("; ")
                    ),
                })?
            }
        };
        Ok(LoadedData {
            dataset,
            origin: origin.to_string(),
            folder: None,
            paths: None,
            skipped: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_folders_resolve_to_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            DataSource::resolve("mnist").unwrap(),
            DataSource::Known(Box::new(DatasetSpec::mnist()))
        );
        assert_eq!(
            DataSource::resolve("Fashion_MNIST").unwrap(),
            DataSource::Known(Box::new(DatasetSpec::fashion_mnist()))
        );
        let text = dir.path().to_str().unwrap();
        assert_eq!(
            DataSource::resolve(text).unwrap(),
            DataSource::IdxFolder(dir.path().to_path_buf())
        );
        let class = dir.path().join("cats");
        std::fs::create_dir(&class).unwrap();
        std::fs::write(class.join("a.png"), b"not read here").unwrap();
        assert_eq!(
            DataSource::resolve(text).unwrap(),
            DataSource::ImageFolder(dir.path().to_path_buf())
        );
        let missing = DataSource::resolve("./no/such/folder")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("./no/such/folder: no such folder"),
            "{missing}"
        );
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, b"").unwrap();
        let not_folder = DataSource::resolve(file.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            not_folder.contains("notes.txt: not a folder"),
            "{not_folder}"
        );
        let unknown = DataSource::resolve("cifar").unwrap_err().to_string();
        assert!(unknown.contains("unknown data set \"cifar\""), "{unknown}");
    }

    #[test]
    fn a_folder_without_a_known_data_set_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let source = DataSource::resolve(dir.path().to_str().unwrap()).unwrap();
        let err = source
            .load(&LoadOptions::default(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds no known data set and no class subfolders"),
            "{err}"
        );
        assert!(
            err.contains("as mnist:") && err.contains("as fashion-mnist:"),
            "{err}"
        );
    }
}
