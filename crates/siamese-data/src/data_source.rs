//! What a `--data` argument names, resolved once in the library: a known data set by
//! name, a folder holding a known data set's IDX files, or an image folder. Every
//! command (train, eval, embed, index, explore) loads through a [`DataDescription`]
//! (the name, an image folder's size and split, the classes held out of training),
//! so they agree on what a name means, split and hold out classes the same way, and
//! say the same thing when a description means nothing.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetSpec, KNOWN_DATASETS};
use crate::error::DataError;
#[cfg(feature = "image-folder")]
use crate::folder::load_image_folder;
use crate::folder::{is_image_folder, FolderOptions};
use crate::holdout::HeldOutClasses;
use crate::omniglot::{self, load_omniglot, OmniglotOptions};
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
    /// Omniglot, from its two npz files in `SIAMESE_DATA_DIR/omniglot` or the cache.
    Omniglot,
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
    /// For Omniglot, its options with every default resolved.
    pub omniglot: Option<OmniglotOptions>,
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
        if text.eq_ignore_ascii_case(omniglot::NAME) {
            return Ok(Self::Omniglot);
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
            #[cfg(not(feature = "image-folder"))]
            Self::ImageFolder(dir) => {
                let _ = folder;
                return Err(DataError::Folder {
                    path: dir.clone(),
                    detail: "an image folder, and siamese-data was built without its \
                             `image-folder` feature"
                        .into(),
                });
            }
            #[cfg(feature = "image-folder")]
            Self::ImageFolder(dir) => {
                let loaded = load_image_folder(dir, folder)?;
                return Ok(LoadedData {
                    dataset: loaded.dataset,
                    origin: format!("image folder {}", dir.display()),
                    folder: Some(loaded.options),
                    paths: Some(loaded.paths),
                    skipped: loaded.skipped,
                    omniglot: None,
                });
            }
            Self::Omniglot => return omniglot_data(options, OmniglotOptions::default()),
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
            omniglot: None,
        })
    }
}

/// Omniglot found where `options` say and loaded with `omniglot`.
fn omniglot_data(
    options: &LoadOptions,
    omniglot: OmniglotOptions,
) -> Result<LoadedData, DataError> {
    let folder = find_omniglot(options)?;
    Ok(LoadedData {
        dataset: load_omniglot(&folder, &omniglot)?,
        origin: format!("folder {}", folder.display()),
        folder: None,
        paths: None,
        skipped: Vec::new(),
        omniglot: Some(omniglot),
    })
}

/// The folder holding Omniglot's two files: `SIAMESE_DATA_DIR/omniglot`, else the
/// cache's `omniglot`. There is no download: without a copy, the error names the
/// folders looked in and the files to put there.
pub fn find_omniglot(options: &LoadOptions) -> Result<PathBuf, DataError> {
    let candidates: Vec<PathBuf> = [&options.folder, &options.data_dir, &options.cache_dir]
        .into_iter()
        .flatten()
        .map(|d| {
            if d.join(omniglot::BACKGROUND_FILE).exists() {
                d.clone()
            } else {
                d.join(omniglot::NAME)
            }
        })
        .collect();
    if let Some(found) = candidates
        .iter()
        .find(|d| d.join(omniglot::BACKGROUND_FILE).is_file())
    {
        return Ok(found.clone());
    }
    let looked_in: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(DataError::NotAvailable {
        dataset: omniglot::NAME.into(),
        reason: "no copy found (it is not downloaded: put the files in place)".into(),
        help: format!(
            "looked in {}; put {} and {} (the npz conversion of brendenlake/omniglot's \
             images_background.zip and images_evaluation.zip) in $SIAMESE_DATA_DIR/omniglot/",
            if looked_in.is_empty() {
                "no folder (neither SIAMESE_DATA_DIR nor a cache folder is set)".to_string()
            } else {
                looked_in.join(", ")
            },
            omniglot::BACKGROUND_FILE,
            omniglot::EVALUATION_FILE
        ),
    })
}

/// A data set as a run describes it: what `--data` named, how an image folder is sized
/// and split, and which classes training does not see. [`DataDescription::load`]
/// resolves the name, loads, splits and holds classes out in one place, for training
/// and for every command that evaluates a trained model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataDescription {
    /// `mnist`, `fashion-mnist`, a folder of IDX files, or an image folder.
    pub source: String,
    /// How an image folder is sized and split (unset: the defaults, with the seed given
    /// to [`DataDescription::load`]). An IDX data set with these set is refused, not
    /// silently loaded without them.
    pub image_folder: Option<FolderOptions>,
    /// Classes held out of training ([`crate::holdout`]): validation and test keep only
    /// these. IDX data sets only: an image folder holds out whole classes through its
    /// split.
    pub holdout_classes: Option<HeldOutClasses>,
    /// How Omniglot is sized and split (unset: the defaults, with the seed given to
    /// [`DataDescription::load`]). Any other data set with these set is refused.
    pub omniglot: Option<OmniglotOptions>,
}

impl DataDescription {
    /// The data set `source` names, with no options.
    pub fn named(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }

    /// What can be checked before minutes of loading: held-out classes exist in a
    /// known data set and leave two on each side, and are not asked of a data set that
    /// also has image-folder options.
    pub fn check(&self) -> Result<(), DataError> {
        if let Some(held_out) = &self.holdout_classes {
            if self.image_folder.is_some() {
                return Err(self.holdout_of_image_folder());
            }
            if let Ok(spec) = DatasetSpec::by_name(&self.source) {
                held_out.check(spec.num_classes(), &spec.name)?;
            }
        }
        Ok(())
    }

    fn holdout_of_image_folder(&self) -> DataError {
        DataError::Description(format!(
            "{}: held-out classes apply to mnist and fashion-mnist; an image folder holds \
             out whole classes with its split (test and validation classes)",
            self.source
        ))
    }

    /// Resolves, loads, splits and holds out: the data set the description means.
    /// `options` says where known data sets are looked for; `default_seed` seeds an
    /// image folder's split when the description has no options of its own. The
    /// result's `folder` holds the options actually used, every default resolved, for
    /// the run to record.
    pub fn load(&self, options: &LoadOptions, default_seed: u64) -> Result<LoadedData, DataError> {
        self.check()?;
        let source = DataSource::resolve(&self.source)?;
        let is_folder = matches!(source, DataSource::ImageFolder(_));
        if let DataSource::Omniglot = source {
            return self.load_omniglot(options, default_seed);
        }
        if self.omniglot.is_some() {
            return Err(DataError::Description(format!(
                "{}: Omniglot's options (rotated classes, validation characters) apply to \
                 omniglot only",
                self.source
            )));
        }
        if self.image_folder.is_some() && !is_folder {
            return Err(DataError::Description(format!(
                "{}: image size and test / validation splits apply to image folders; this \
                 is not one",
                self.source
            )));
        }
        if self.holdout_classes.is_some() && is_folder {
            return Err(self.holdout_of_image_folder());
        }
        let folder = self.image_folder.unwrap_or(FolderOptions {
            seed: default_seed,
            ..FolderOptions::default()
        });
        let mut loaded = source.load(options, &folder)?;
        if let Some(held_out) = &self.holdout_classes {
            loaded.dataset = loaded.dataset.hold_out(held_out)?;
        }
        Ok(loaded)
    }

    /// Omniglot: its own split (background characters to train on, evaluation ones
    /// to test), so neither held-out classes nor image-folder options apply.
    fn load_omniglot(
        &self,
        options: &LoadOptions,
        default_seed: u64,
    ) -> Result<LoadedData, DataError> {
        if self.holdout_classes.is_some() || self.image_folder.is_some() {
            return Err(DataError::Description(
                "omniglot has its own unseen-class split (it tests on the evaluation \
                 alphabets): held-out classes and image-folder splits do not apply"
                    .into(),
            ));
        }
        let omniglot = self.omniglot.unwrap_or(OmniglotOptions {
            seed: default_seed,
            ..OmniglotOptions::default()
        });
        omniglot_data(options, omniglot)
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

    #[test]
    fn a_description_refuses_what_does_not_go_together_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("cats");
        std::fs::create_dir(&class).unwrap();
        std::fs::write(class.join("a.png"), b"not read here").unwrap();
        let folder = dir.path().to_str().unwrap().to_string();
        let options = LoadOptions::default();
        let held_out: HeldOutClasses = "0,1".parse().unwrap();

        // Held-out classes of an image folder, with or without its options.
        let mut d = DataDescription::named(&folder);
        d.holdout_classes = Some(held_out.clone());
        let err = d.load(&options, 0).unwrap_err().to_string();
        assert!(err.contains("held-out classes apply to mnist"), "{err}");
        d.image_folder = Some(FolderOptions::default());
        let err = d.check().unwrap_err().to_string();
        assert!(
            err.contains("an image folder holds out whole classes"),
            "{err}"
        );

        // Image-folder options for a folder that is not an image folder.
        let idx = tempfile::tempdir().unwrap();
        let mut d = DataDescription::named(idx.path().to_str().unwrap());
        d.image_folder = Some(FolderOptions::default());
        let err = d.load(&options, 0).unwrap_err().to_string();
        assert!(
            err.contains("apply to image folders; this is not one"),
            "{err}"
        );

        // Classes a known data set does not have, refused by check() without loading.
        let mut d = DataDescription::named("mnist");
        d.holdout_classes = Some("3,12".parse().unwrap());
        let err = d.check().unwrap_err().to_string();
        assert!(err.contains("class 12, which mnist does not have"), "{err}");
    }
}
