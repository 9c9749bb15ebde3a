//! The held-out-class protocol: a metric is worth learning because it works on classes
//! absent from training (Chopra et al. verify faces of people the network never saw).
//!
//! [`HeldOutClasses`] names the classes (`5-9`, `5,7,9`, `0-2,8`) and
//! [`Dataset::hold_out`] rebuilds the splits so that:
//!
//! - **train** keeps only the other classes' images of the train split;
//! - **validation** is the held-out classes' images of the validation split (the end of
//!   the official train file): it shares no class with training, so the threshold and
//!   the model selection see no training class; it shares classes, not images, with test;
//! - **test** is the held-out classes' images of the official test file.
//!
//! Labels stay the data set's own (a held-out 7 is still label 7), so class names and
//! plots keep working.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSet, MAX_CLASSES};
use crate::error::DataError;

/// A set of class labels held out of training, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u32>", into = "Vec<u32>")]
pub struct HeldOutClasses(Vec<u32>);

impl HeldOutClasses {
    /// The classes, ascending.
    pub fn classes(&self) -> &[u32] {
        &self.0
    }

    /// Whether `label` is held out.
    pub fn contains(&self, label: u32) -> bool {
        self.0.binary_search(&label).is_ok()
    }

    /// Checks the set against a data set of `num_classes` classes: every class exists,
    /// at least two are held out (test pairs need impostors) and at least two remain
    /// for training (training pairs need negatives).
    pub fn check(&self, num_classes: usize, dataset: &str) -> Result<(), DataError> {
        let bad = |found: String| DataError::Unexpected {
            what: format!("held-out classes of {dataset}"),
            expected: format!(
                "at least two classes held out and two left for training, each in 0..{num_classes}"
            ),
            found,
        };
        if let Some(&c) = self.0.iter().find(|&&c| c as usize >= num_classes) {
            return Err(bad(format!("class {c}, which {dataset} does not have")));
        }
        if self.0.len() < 2 {
            return Err(bad(format!(
                "{} held out: test pairs need two classes to tell apart",
                self.0.len()
            )));
        }
        if num_classes - self.0.len() < 2 {
            return Err(bad(format!(
                "{} of {num_classes} held out, leaving {} to train on",
                self.0.len(),
                num_classes - self.0.len()
            )));
        }
        Ok(())
    }
}

impl TryFrom<Vec<u32>> for HeldOutClasses {
    type Error = String;

    fn try_from(mut classes: Vec<u32>) -> Result<Self, String> {
        if let Some(c) = classes.iter().find(|&&c| c as usize >= MAX_CLASSES) {
            return Err(format!(
                "class {c} is past the largest possible ({MAX_CLASSES})"
            ));
        }
        classes.sort_unstable();
        classes.dedup();
        if classes.is_empty() {
            return Err("no class held out".into());
        }
        Ok(Self(classes))
    }
}

impl From<HeldOutClasses> for Vec<u32> {
    fn from(h: HeldOutClasses) -> Vec<u32> {
        h.0
    }
}

impl FromStr for HeldOutClasses {
    type Err = String;

    /// Parses `5-9`, `5,7,9` or a mix (`0-2,8`).
    fn from_str(text: &str) -> Result<Self, String> {
        let class = |s: &str| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|&c| (c as usize) < MAX_CLASSES)
                .ok_or_else(|| {
                    format!("{text:?}: expected class numbers like 5-9 or 5,7,9, found {s:?}")
                })
        };
        let mut classes = Vec::new();
        for item in text.split(',') {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (class(a)?, class(b)?);
                    if a > b {
                        return Err(format!("{text:?}: the range {a}-{b} is empty"));
                    }
                    classes.extend(a..=b);
                }
                None => classes.push(class(item)?),
            }
        }
        Self::try_from(classes).map_err(|e| format!("{text:?}: {e}"))
    }
}

impl fmt::Display for HeldOutClasses {
    /// Ranges where the classes run on: `5-9`, `1,3,5-7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            parts.push(if j > i + 1 {
                format!("{}-{}", self.0[i], self.0[j])
            } else if j == i + 1 {
                format!("{},{}", self.0[i], self.0[j])
            } else {
                self.0[i].to_string()
            });
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

impl ImageSet {
    /// The images whose label `keep` accepts, in their order (labels unchanged).
    pub fn filter_classes(&self, keep: impl Fn(u32) -> bool) -> ImageSet {
        let n = self.image_len();
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (i, &l) in self.labels().iter().enumerate() {
            if keep(l) {
                pixels.extend_from_slice(self.image(i));
                labels.push(l);
            }
        }
        debug_assert_eq!(pixels.len(), labels.len() * n);
        self.with_content(pixels, labels)
    }
}

impl Dataset {
    /// The held-out-class protocol (module docs): training keeps the other classes,
    /// validation and test only the held-out ones.
    pub fn hold_out(self, held_out: &HeldOutClasses) -> Result<Dataset, DataError> {
        held_out.check(self.spec.num_classes(), &self.spec.name)?;
        let data = Dataset {
            train: self.train.filter_classes(|l| !held_out.contains(l)),
            validation: self.validation.filter_classes(|l| held_out.contains(l)),
            test: self.test.filter_classes(|l| held_out.contains(l)),
            spec: self.spec,
        };
        for (split, set) in [("validation", &data.validation), ("test", &data.test)] {
            let present = set.class_counts().iter().filter(|&&n| n >= 2).count();
            if present < 2 {
                return Err(DataError::Unexpected {
                    what: format!("{} {split} split, classes {held_out}", data.spec.name),
                    expected: "at least two held-out classes with two images or more".into(),
                    found: format!("{present}"),
                });
            }
        }
        Ok(data)
    }

    /// The classes of the test split that training never saw.
    pub fn unseen_test_classes(&self) -> Vec<u32> {
        let seen = self.train.class_counts();
        let test = self.test.class_counts();
        (0..test.len())
            .filter(|&c| test[c] > 0 && seen.get(c).is_none_or(|&n| n == 0))
            .map(|c| c as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_ranges_lists_and_mixes() {
        let h: HeldOutClasses = "5-9".parse().unwrap();
        assert_eq!(h.classes(), &[5, 6, 7, 8, 9]);
        let h: HeldOutClasses = "9, 5,7,7".parse().unwrap();
        assert_eq!(h.classes(), &[5, 7, 9]);
        assert_eq!(h.to_string(), "5,7,9");
        let h: HeldOutClasses = "0-2,8".parse().unwrap();
        assert_eq!(h.to_string(), "0-2,8");
        assert_eq!("3,4".parse::<HeldOutClasses>().unwrap().to_string(), "3,4");
        for bad in ["", "x", "9-5", "5-", "1,,2", "99999999", "0-99999999"] {
            assert!(bad.parse::<HeldOutClasses>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn check_refuses_unknown_classes_one_class_and_everything() {
        let check = |s: &str| s.parse::<HeldOutClasses>().unwrap().check(10, "mnist");
        assert!(check("5-9").is_ok());
        let e = check("5,12").unwrap_err().to_string();
        assert!(e.contains("class 12") && e.contains("mnist"), "{e}");
        let e = check("5").unwrap_err().to_string();
        assert!(e.contains("1 held out"), "{e}");
        let e = check("0-8").unwrap_err().to_string();
        assert!(e.contains("leaving 1"), "{e}");
        assert!(check("0-9").is_err());
    }

    #[test]
    fn round_trips_through_json_and_refuses_an_empty_list() {
        let h: HeldOutClasses = "1,3".parse().unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, "[1,3]");
        assert_eq!(serde_json::from_str::<HeldOutClasses>(&json).unwrap(), h);
        assert!(serde_json::from_str::<HeldOutClasses>("[]").is_err());
    }

    fn set(labels: Vec<u32>) -> ImageSet {
        let pixels = labels.iter().map(|&l| (l * 10) as u8).collect();
        ImageSet::new(1, 1, 4, pixels, labels, Path::new("t")).unwrap()
    }

    #[test]
    fn splits_see_only_their_classes_and_images_keep_their_labels() {
        let data = Dataset {
            spec: crate::DatasetSpec::image_folder("t", 1, 1, vec!["a".into(); 4]),
            train: set(vec![0, 1, 2, 3, 0, 1, 2, 3]),
            validation: set(vec![3, 2, 1, 0, 3, 2]),
            test: set(vec![0, 1, 2, 3, 2, 3, 0]),
        };
        let h: HeldOutClasses = "2,3".parse().unwrap();
        let d = data.hold_out(&h).unwrap();
        assert_eq!(d.train.labels(), &[0, 1, 0, 1]);
        assert_eq!(d.validation.labels(), &[3, 2, 3, 2]);
        assert_eq!(d.test.labels(), &[2, 3, 2, 3]);
        // Each pixel still belongs to its label.
        for s in [&d.train, &d.validation, &d.test] {
            for i in 0..s.len() {
                assert_eq!(s.image(i), &[(s.labels()[i] * 10) as u8]);
            }
        }
        assert_eq!(d.unseen_test_classes(), vec![2, 3]);
    }
}
