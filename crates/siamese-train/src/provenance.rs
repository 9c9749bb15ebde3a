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
    /// How to score a pair against the checkpoint's cohort of training embeddings.
    pub score_norm: Option<ScoreNormRecord>,
}

/// Cohort score normalisation as `siamese verify` applies it
/// ([`siamese_metrics::score_norm`]): against the checkpoint's
/// [`siamese_model::checkpoint::COHORT_TENSOR`], with the threshold and the figures
/// the validation pairs gave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreNormRecord {
    /// Nearest cohort rows each image's statistics are taken over (>= 1).
    pub top_k: usize,
    /// The threshold on the normalised score, chosen on the validation pairs (finite;
    /// negative values are normal: scores are in units of cohort spreads).
    pub threshold: f64,
    /// The validation pairs' EER with normalised scores.
    pub validation_eer: f64,
    /// Their EER with plain distances (the checkpoint's `threshold`).
    pub plain_validation_eer: f64,
}

impl ScoreNormRecord {
    /// Whether normalised scores told the validation pairs apart better than plain
    /// distances: what `siamese verify` applies by default.
    pub fn preferred(&self) -> bool {
        crate::eval::normalised_preferred(self.validation_eer, self.plain_validation_eer)
    }

    /// Refuses values no evaluation writes.
    pub(crate) fn check(&self) -> Result<(), String> {
        let rate = |r: f64| (0.0..=1.0).contains(&r);
        if self.top_k == 0 {
            Err("top_k is 0: the statistics need at least one cohort row".into())
        } else if !self.threshold.is_finite() {
            Err(format!(
                "threshold {} is not a finite number",
                self.threshold
            ))
        } else if !rate(self.validation_eer) || !rate(self.plain_validation_eer) {
            Err(format!(
                "validation EERs {} and {} are not both rates in [0, 1]",
                self.validation_eer, self.plain_validation_eer
            ))
        } else {
            Ok(())
        }
    }
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
            score_norm: None,
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
            score_norm: json::<ScoreNormRecord>(meta, keys::SCORE_NORM)
                .and_then(|r| r.map(|r| r.check().map(|()| r)).transpose())
                .map_err(|e| bad(keys::SCORE_NORM, e))?,
        })
    }

    /// Writes the record into `metadata`: the fields that are set replace their
    /// entries, other entries (another tool's) are kept.
    pub fn write_into(&self, metadata: &mut BTreeMap<String, String>) {
        fn json<T: Serialize>(value: &T) -> String {
            serde_json::to_string(value).expect("provenance fields serialise")
        }
        let entries: [(&str, Option<String>); 8] = [
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
            (keys::SCORE_NORM, self.score_norm.as_ref().map(json)),
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
            cohort: None,
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
            score_norm: Some(ScoreNormRecord {
                top_k: 300,
                threshold: -1.25,
                validation_eer: 0.05,
                plain_validation_eer: 0.07,
            }),
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
            (
                "score_norm",
                r#"{"top_k":0,"threshold":1,"validation_eer":0.1,"plain_validation_eer":0.1}"#,
            ),
            (
                "score_norm",
                r#"{"top_k":5,"threshold":1,"validation_eer":-0.1,"plain_validation_eer":0.1}"#,
            ),
            ("score_norm", r#"{"top_k":5}"#),
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
