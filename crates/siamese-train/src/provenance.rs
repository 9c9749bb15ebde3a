//! Where a trained model came from and how to use it: the one record of a checkpoint's
//! provenance, written by the run and read by every command that uses a model.
//!
//! In the file it is a set of metadata entries ([`siamese_model::checkpoint::keys`]),
//! one per field, plain or JSON, so that other tools read `metadata["threshold"]`
//! directly. This module is the only code that writes or parses them.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use siamese_data::{FolderOptions, HeldOutClasses, OmniglotOptions, Preprocessing};
use siamese_model::checkpoint::{self, keys, Checkpoint};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// A model's provenance. Every field is optional: checkpoints from other tools, or
/// written before a field existed, lack some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The data set's name or folder.
    pub data: Option<String>,
    /// What to do to an image file before the model sees it.
    pub preprocessing: Option<Preprocessing>,
    /// An image folder's split and size.
    pub image_folder: Option<FolderOptions>,
    /// The classes held out of training (the unseen-class protocol).
    pub holdout_classes: Option<HeldOutClasses>,
    /// Omniglot's size and split.
    pub omniglot: Option<OmniglotOptions>,
    /// The verification threshold on the embedding distance (finite, >= 0).
    pub threshold: Option<f64>,
    /// The training step the weights are from.
    pub step: Option<u64>,
}

impl Provenance {
    /// The provenance of a model trained with `config` (no threshold or step yet):
    /// images are resized for image folders and must have the input size for the IDX
    /// sets.
    pub fn of_run(config: &TrainConfig) -> Self {
        Self {
            data: Some(config.data.clone()),
            preprocessing: Some(Preprocessing {
                height: config.model.input_height,
                width: config.model.input_width,
                resize: config.image_folder.is_some(),
            }),
            image_folder: config.image_folder,
            holdout_classes: config.holdout_classes.clone(),
            omniglot: config.omniglot,
            threshold: None,
            step: None,
        }
    }

    /// Reads the record from a checkpoint's metadata; an entry that is present but
    /// unusable is an error naming it.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self, TrainError> {
        let meta = &ckpt.metadata;
        let bad = |key: &str, detail: String| {
            TrainError::Input(format!(
                "the checkpoint's {key} metadata is not valid: {detail}"
            ))
        };
        fn json<T: DeserializeOwned>(
            meta: &BTreeMap<String, String>,
            key: &str,
        ) -> Result<Option<T>, String> {
            meta.get(key)
                .map(|text| serde_json::from_str(text).map_err(|e| e.to_string()))
                .transpose()
        }
        Ok(Self {
            data: meta.get(keys::DATA).cloned(),
            preprocessing: json(meta, keys::PREPROCESSING)
                .map_err(|e| bad(keys::PREPROCESSING, e))?,
            image_folder: json(meta, keys::IMAGE_FOLDER).map_err(|e| bad(keys::IMAGE_FOLDER, e))?,
            holdout_classes: json(meta, keys::HOLDOUT_CLASSES)
                .map_err(|e| bad(keys::HOLDOUT_CLASSES, e))?,
            omniglot: json(meta, keys::OMNIGLOT).map_err(|e| bad(keys::OMNIGLOT, e))?,
            threshold: meta
                .get(keys::THRESHOLD)
                .map(|t| checkpoint::threshold_value(t))
                .transpose()
                .map_err(|e| bad(keys::THRESHOLD, e))?,
            step: meta
                .get(keys::STEP)
                .map(|s| s.parse::<u64>().map_err(|e| e.to_string()))
                .transpose()
                .map_err(|e| bad(keys::STEP, e))?,
        })
    }

    /// Writes the record into `metadata`: the fields that are set replace their
    /// entries, other entries (another tool's) are kept.
    pub fn write_into(&self, metadata: &mut BTreeMap<String, String>) {
        fn json<T: Serialize>(value: &T) -> String {
            serde_json::to_string(value).expect("provenance fields serialise")
        }
        let entries: [(&str, Option<String>); 7] = [
            (keys::DATA, self.data.clone()),
            (keys::PREPROCESSING, self.preprocessing.as_ref().map(json)),
            (keys::IMAGE_FOLDER, self.image_folder.as_ref().map(json)),
            (
                keys::HOLDOUT_CLASSES,
                self.holdout_classes.as_ref().map(json),
            ),
            (keys::OMNIGLOT, self.omniglot.as_ref().map(json)),
            (keys::THRESHOLD, self.threshold.map(|t| t.to_string())),
            (keys::STEP, self.step.map(|s| s.to_string())),
        ];
        for (key, value) in entries {
            if let Some(value) = value {
                metadata.insert(key.to_string(), value);
            }
        }
    }

    /// The record as metadata entries.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut metadata = BTreeMap::new();
        self.write_into(&mut metadata);
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siamese_model::TowerConfig;

    fn checkpoint_with(metadata: BTreeMap<String, String>) -> Checkpoint {
        Checkpoint {
            config: TowerConfig::default(),
            tensors: Default::default(),
            metadata,
        }
    }

    #[test]
    fn the_record_round_trips_through_metadata_and_keeps_other_entries() {
        let config = TrainConfig {
            holdout_classes: Some("5-9".parse().unwrap()),
            ..TrainConfig::default_preset()
        };
        let written = Provenance {
            threshold: Some(0.75),
            step: Some(1200),
            ..Provenance::of_run(&config)
        };
        let mut meta = BTreeMap::from([("other_tool".to_string(), "kept".to_string())]);
        written.write_into(&mut meta);
        assert_eq!(meta["threshold"], "0.75");
        assert_eq!(meta["other_tool"], "kept");
        let read = Provenance::from_checkpoint(&checkpoint_with(meta)).unwrap();
        assert_eq!(read, written);
        assert_eq!(
            Provenance::from_checkpoint(&checkpoint_with(BTreeMap::new())).unwrap(),
            Provenance::default()
        );
    }

    #[test]
    fn unusable_entries_are_named() {
        for (key, value) in [
            ("threshold", "-1"),
            ("threshold", "NaN"),
            ("step", "soon"),
            ("holdout_classes", "[5"),
            ("preprocessing", "{}"),
        ] {
            let meta = BTreeMap::from([(key.to_string(), value.to_string())]);
            let err = Provenance::from_checkpoint(&checkpoint_with(meta))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("checkpoint's {key} metadata")),
                "{err}"
            );
        }
    }
}
