//! Omniglot (Lake, Salakhutdinov & Tenenbaum, *Science* 2015): handwritten characters
//! of 50 alphabets, 20 drawings each, where Siamese networks are judged on classes they
//! never saw.
//!
//! Read from the two `.npz` files of the usual conversion ([`crate::npz`]):
//! `images_background.npz` (964 characters of 30 alphabets) and
//! `images_evaluation.npz` (659 characters of 20 other alphabets), each holding
//! `images` (bool, `[characters, 20, 105, 105]`, true = paper) and `labels` (integers,
//! `[characters, 20]`, the character of each drawing).
//!
//! The splits:
//! - **train**: the background characters but [`OmniglotOptions::validation_classes`]
//!   of them, chosen by the seed; with `rotate_classes`, each of them turned by 90, 180
//!   and 270 degrees as three more classes (the usual augmentation of the few-shot
//!   literature);
//! - **validation**: those held-out background characters (threshold and model
//!   selection see no training class, and no evaluation alphabet);
//! - **test**: the evaluation characters, never trained on.
//!
//! Labels: background character `c` is `c`, evaluation character `e` is `964 + e`, the
//! rotations of background character `c` are `1623 + 3c + (0, 1, 2)` (with the counts
//! of the files read: the loader takes any number of characters, so tests can write
//! small files). Pixels are ink
//! bright on a dark ground, like MNIST, and reduced from 105 x 105 to the image size by
//! area averaging (28 x 28 by default, as in the few-shot literature).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, DatasetSpec, ImageSet};
use crate::error::DataError;
use crate::npz::{read_npz, Array, Dtype};
use crate::rng::Rng;

/// The name users type.
pub const NAME: &str = "omniglot";
/// The background set (training characters).
pub const BACKGROUND_FILE: &str = "images_background.npz";
/// The evaluation set (characters never trained on).
pub const EVALUATION_FILE: &str = "images_evaluation.npz";
/// Side of the drawings as published.
pub const NATIVE_SIDE: usize = 105;
/// Drawings of each character.
pub const DRAWINGS: usize = 20;
/// Characters of the background set.
pub const BACKGROUND_CHARACTERS: usize = 964;
/// Characters of the evaluation set.
pub const EVALUATION_CHARACTERS: usize = 659;

/// How Omniglot is sized and split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OmniglotOptions {
    /// `[height, width]` of the images given to the model.
    pub image_size: [usize; 2],
    /// Background characters kept out of training for validation.
    pub validation_classes: usize,
    /// Each training character also turned by 90, 180 and 270 degrees, as new classes.
    pub rotate_classes: bool,
    /// Seed of the choice of validation characters.
    pub seed: u64,
}

impl Default for OmniglotOptions {
    fn default() -> Self {
        Self {
            image_size: [28, 28],
            validation_classes: 100,
            rotate_classes: false,
            seed: 0,
        }
    }
}

/// One set's drawings, ink bright, at the native size: `[characters][drawing]` pixels.
struct NativeSet {
    characters: usize,
    pixels: Vec<u8>,
}

impl NativeSet {
    fn drawing(&self, character: usize, drawing: usize) -> &[u8] {
        let n = NATIVE_SIDE * NATIVE_SIDE;
        let at = (character * DRAWINGS + drawing) * n;
        &self.pixels[at..at + n]
    }
}

/// Reads and checks one of the two files: `[characters, 20, 105, 105]` booleans, at
/// least two characters.
fn read_set(path: &Path) -> Result<NativeSet, DataError> {
    let mut arrays = read_npz(path)?;
    let bad = |what: &str, expected: String, found: String| DataError::Unexpected {
        what: format!("{}: {what}", path.display()),
        expected,
        found,
    };
    let images = arrays.remove("images").ok_or_else(|| {
        bad(
            "arrays",
            "`images` and `labels`".into(),
            "no `images`".into(),
        )
    })?;
    let labels = arrays.remove("labels").ok_or_else(|| {
        bad(
            "arrays",
            "`images` and `labels`".into(),
            "no `labels`".into(),
        )
    })?;
    let characters = images.shape.first().copied().unwrap_or(0);
    let shape = [characters, DRAWINGS, NATIVE_SIDE, NATIVE_SIDE];
    if images.dtype != Dtype::Bool || images.shape != shape || characters < 2 {
        return Err(bad(
            "images",
            format!("bool [characters >= 2, {DRAWINGS}, {NATIVE_SIDE}, {NATIVE_SIDE}]"),
            format!("{:?} {:?}", images.dtype, images.shape),
        ));
    }
    check_labels(&labels, characters).map_err(|found| {
        bad(
            "labels",
            format!("integers [{characters}, {DRAWINGS}], one character per row, each row another"),
            found,
        )
    })?;
    // True (any non-zero byte, as NumPy reads a bool) is paper: ink becomes bright.
    let pixels = images
        .data
        .iter()
        .map(|&paper| if paper == 0 { 255 } else { 0 })
        .collect();
    Ok(NativeSet { characters, pixels })
}

/// The labels give one character per row and no character twice.
fn check_labels(labels: &Array, characters: usize) -> Result<(), String> {
    if labels.shape != [characters, DRAWINGS] {
        return Err(format!("shape {:?}", labels.shape));
    }
    let values = labels
        .to_i64()
        .ok_or_else(|| format!("{:?} values", labels.dtype))?;
    let mut firsts = Vec::with_capacity(characters);
    for (row, drawings) in values.chunks_exact(DRAWINGS).enumerate() {
        if drawings.iter().any(|&l| l != drawings[0]) {
            return Err(format!("row {row} mixes characters"));
        }
        firsts.push(drawings[0]);
    }
    firsts.sort_unstable();
    if firsts.windows(2).any(|w| w[0] == w[1]) {
        return Err("one character in two rows".into());
    }
    Ok(())
}

/// Reduces a `from`-sized image to `to` by averaging the source area under each target
/// pixel (exact fractional coverage), so thin strokes fade rather than vanish.
pub fn area_resize(pixels: &[u8], from: (usize, usize), to: (usize, usize)) -> Vec<u8> {
    if from == to {
        return pixels.to_vec();
    }
    // Coverage weights of source rows (or columns) for each target row (or column).
    let weights = |n_from: usize, n_to: usize| -> Vec<Vec<(usize, f64)>> {
        let scale = n_from as f64 / n_to as f64;
        (0..n_to)
            .map(|t| {
                let (lo, hi) = (t as f64 * scale, (t + 1) as f64 * scale);
                (lo.floor() as usize..(hi.ceil() as usize).min(n_from))
                    .map(|s| {
                        let cover = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
                        (s, cover / scale)
                    })
                    .collect()
            })
            .collect()
    };
    let (rows, cols) = (weights(from.0, to.0), weights(from.1, to.1));
    let mut out = Vec::with_capacity(to.0 * to.1);
    for row in &rows {
        for col in &cols {
            let mut sum = 0.0;
            for &(y, wy) in row {
                for &(x, wx) in col {
                    sum += wy * wx * f64::from(pixels[y * from.1 + x]);
                }
            }
            out.push(sum.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// A square image turned by `quarter` quarter turns clockwise.
pub fn rotate_square(pixels: &[u8], side: usize, quarter: usize) -> Vec<u8> {
    let mut out = pixels.to_vec();
    for _ in 0..quarter % 4 {
        let src = out.clone();
        for y in 0..side {
            for x in 0..side {
                out[y * side + x] = src[(side - 1 - x) * side + y];
            }
        }
    }
    out
}

/// Loads Omniglot from `folder` (holding the two files).
pub fn load_omniglot(folder: &Path, options: &OmniglotOptions) -> Result<Dataset, DataError> {
    let [h, w] = options.image_size;
    if !(1..=NATIVE_SIDE).contains(&h) || !(1..=NATIVE_SIDE).contains(&w) {
        return Err(DataError::Description(format!(
            "omniglot: image size {h}x{w}: each side must be 1 to {NATIVE_SIDE} (the drawings' own)"
        )));
    }
    if options.rotate_classes && h != w {
        return Err(DataError::Description(format!(
            "omniglot: rotations need square images, not {h}x{w}"
        )));
    }
    let file = |name: &str| -> Result<PathBuf, DataError> {
        let path = folder.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(DataError::NotAvailable {
                dataset: NAME.into(),
                reason: format!("{} is missing", path.display()),
                help: format!(
                    "put {BACKGROUND_FILE} and {EVALUATION_FILE} (the npz conversion of \
                     brendenlake/omniglot's images_background.zip and images_evaluation.zip) \
                     in {}, or set SIAMESE_DATA_DIR to a folder holding omniglot/ with them",
                    folder.display()
                ),
            })
        }
    };
    let background = read_set(&file(BACKGROUND_FILE)?)?;
    let evaluation = read_set(&file(EVALUATION_FILE)?)?;
    let (nb, ne) = (background.characters, evaluation.characters);
    if options.validation_classes < 2 || options.validation_classes + 2 > nb {
        return Err(DataError::Description(format!(
            "omniglot: {} validation characters: between 2 and {} of the {nb} background ones",
            options.validation_classes,
            nb - 2
        )));
    }

    let mut order: Vec<usize> = (0..background.characters).collect();
    Rng::new(options.seed).shuffle(&mut order);
    let mut is_validation = vec![false; background.characters];
    order[..options.validation_classes]
        .iter()
        .for_each(|&c| is_validation[c] = true);

    let small = |set: &NativeSet, c: usize, d: usize| {
        area_resize(set.drawing(c, d), (NATIVE_SIDE, NATIVE_SIDE), (h, w))
    };
    let rotated = nb + ne;
    let num_classes = rotated + if options.rotate_classes { 3 * nb } else { 0 };
    let (mut train, mut validation, mut test) =
        (Parts::default(), Parts::default(), Parts::default());
    for (c, &held_out) in is_validation.iter().enumerate() {
        for d in 0..DRAWINGS {
            let image = small(&background, c, d);
            if held_out {
                validation.push(&image, c as u32);
                continue;
            }
            if options.rotate_classes {
                for quarter in 1..4 {
                    let label = rotated + 3 * c + quarter - 1;
                    train.push(&rotate_square(&image, h, quarter), label as u32);
                }
            }
            train.push(&image, c as u32);
        }
    }
    for e in 0..evaluation.characters {
        for d in 0..DRAWINGS {
            test.push(&small(&evaluation, e, d), (nb + e) as u32);
        }
    }
    let mut class_names: Vec<String> = (0..nb)
        .map(|c| format!("background/{:03}", c + 1))
        .chain((0..ne).map(|e| format!("evaluation/{:03}", e + 1)))
        .collect();
    if options.rotate_classes {
        for c in 0..nb {
            for degrees in [90, 180, 270] {
                class_names.push(format!("background/{:03}@{degrees}", c + 1));
            }
        }
    }
    let set = |p: Parts| ImageSet::new(h, w, num_classes, p.pixels, p.labels, folder);
    Ok(Dataset {
        spec: DatasetSpec::image_folder(NAME, h, w, class_names),
        train: set(train)?,
        validation: set(validation)?,
        test: set(test)?,
    })
}

/// Pixels and labels of one split as they are gathered.
#[derive(Default)]
struct Parts {
    pixels: Vec<u8>,
    labels: Vec<u32>,
}

impl Parts {
    fn push(&mut self, image: &[u8], label: u32) {
        self.pixels.extend_from_slice(image);
        self.labels.push(label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_averages_the_covered_area() {
        // 4x4 to 2x2: each target pixel is the mean of a 2x2 block.
        let src: Vec<u8> = vec![
            0, 0, 255, 255, 0, 0, 255, 255, 100, 100, 0, 0, 100, 100, 0, 0,
        ];
        assert_eq!(area_resize(&src, (4, 4), (2, 2)), [0, 255, 100, 0]);
        // 3 to 2 columns: target 0 covers source 0 fully and half of 1.
        let row = [90u8, 0, 30];
        assert_eq!(area_resize(&row, (1, 3), (1, 2)), [60, 20]);
        // A full image keeps its mean (up to rounding).
        let img: Vec<u8> = (0..105 * 105).map(|i| (i * 7 % 256) as u8).collect();
        let small = area_resize(&img, (105, 105), (28, 28));
        let mean = |v: &[u8]| v.iter().map(|&p| f64::from(p)).sum::<f64>() / v.len() as f64;
        assert!((mean(&img) - mean(&small)).abs() < 0.5);
    }

    #[test]
    fn rotations_are_quarter_turns_that_come_back() {
        let img: Vec<u8> = (0..9).collect();
        // Clockwise: the left column, read upwards, becomes the top row.
        assert_eq!(rotate_square(&img, 3, 1), [6, 3, 0, 7, 4, 1, 8, 5, 2]);
        assert_eq!(rotate_square(&img, 3, 2), [8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(rotate_square(&rotate_square(&img, 3, 3), 3, 1), img);
    }

    #[test]
    fn labels_must_name_one_character_per_row() {
        let labels = |v: Vec<i64>| Array {
            dtype: Dtype::I64,
            shape: vec![v.len() / DRAWINGS, DRAWINGS],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let good: Vec<i64> = (0..3).flat_map(|c| [c; DRAWINGS]).collect();
        assert!(check_labels(&labels(good.clone()), 3).is_ok());
        let mut mixed = good.clone();
        mixed[25] = 0;
        assert!(check_labels(&labels(mixed), 3)
            .unwrap_err()
            .contains("row 1 mixes"));
        let twice: Vec<i64> = [0, 0, 1].iter().flat_map(|&c| [c; DRAWINGS]).collect();
        assert!(check_labels(&labels(twice), 3)
            .unwrap_err()
            .contains("two rows"));
        assert!(check_labels(&labels(good), 4)
            .unwrap_err()
            .contains("shape"));
    }
}

/// Lake's 20-way one-shot runs (`one-shot-runs/runNN/`): the standard benchmark. Reading
/// them needs the `image-folder` feature (they are PNG files).
pub mod runs {
    #[cfg(feature = "image-folder")]
    use std::collections::BTreeMap;
    #[cfg(feature = "image-folder")]
    use std::path::{Path, PathBuf};

    #[cfg(feature = "image-folder")]
    use super::{area_resize, NATIVE_SIDE};
    #[cfg(feature = "image-folder")]
    use crate::error::DataError;
    #[cfg(feature = "image-folder")]
    use crate::folder::decode_gray;

    /// The file naming each run's answers.
    pub const LABELS_FILE: &str = "class_labels.txt";

    /// One run: support images (one per character, in file-name order), query images
    /// (in file-name order) and the support image that answers each query. Images are
    /// ink bright, at the native 105 x 105 and at the model's size.
    #[derive(Debug, Clone)]
    pub struct OneShotRun {
        /// The run's folder name (`run01`).
        pub name: String,
        /// Support images at 105 x 105.
        pub support_native: Vec<Vec<u8>>,
        /// Query images at 105 x 105.
        pub query_native: Vec<Vec<u8>>,
        /// Support images at the requested size.
        pub support: Vec<Vec<u8>>,
        /// Query images at the requested size.
        pub query: Vec<Vec<u8>>,
        /// For each query, the index of its character's support image.
        pub answers: Vec<usize>,
    }

    #[cfg(feature = "image-folder")]
    /// Reads one Omniglot drawing saved as an image file (105 x 105, dark ink on white
    /// paper, as in Lake's runs and the original PNG release) the way the npz drawings
    /// are prepared: ink becomes the bright value, then the area average to `size`.
    /// Returns the 105 x 105 ink image and the resized one; another size is an error
    /// naming the file.
    pub fn read_drawing(path: &Path, size: [usize; 2]) -> Result<(Vec<u8>, Vec<u8>), DataError> {
        let (h, w, pixels) = decode_gray(path)?;
        if (h, w) != (NATIVE_SIDE, NATIVE_SIDE) {
            return Err(DataError::ImageFile {
                path: path.to_path_buf(),
                detail: format!(
                    "{h}x{w} pixels, expected an Omniglot drawing of {NATIVE_SIDE}x{NATIVE_SIDE}"
                ),
            });
        }
        // Dark ink on white paper: ink becomes the bright value.
        let native: Vec<u8> = pixels
            .iter()
            .map(|&p| if p < 128 { 255 } else { 0 })
            .collect();
        let small = area_resize(&native, (NATIVE_SIDE, NATIVE_SIDE), (size[0], size[1]));
        Ok((native, small))
    }

    #[cfg(feature = "image-folder")]
    /// Reads every `runNN` folder of `root` (sorted), resizing to `size`. A folder
    /// with a missing, unreadable or misnamed image, a labels file naming an image
    /// that is not there, a query listed twice, or no runs at all is an error naming
    /// the file.
    pub fn load_runs(root: &Path, size: [usize; 2]) -> Result<Vec<OneShotRun>, DataError> {
        let folder_error = |path: &Path, detail: String| DataError::Folder {
            path: path.to_path_buf(),
            detail,
        };
        let entries = std::fs::read_dir(root).map_err(|error| DataError::Io {
            path: root.to_path_buf(),
            error,
        })?;
        let mut run_dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("run"))
            })
            .collect();
        run_dirs.sort();
        if run_dirs.is_empty() {
            return Err(folder_error(
                root,
                "holds no runNN folders (expected Lake's one-shot runs)".into(),
            ));
        }
        run_dirs
            .iter()
            .map(|dir| load_run(root, dir, size))
            .collect()
    }

    #[cfg(feature = "image-folder")]
    fn load_run(root: &Path, dir: &Path, size: [usize; 2]) -> Result<OneShotRun, DataError> {
        let labels_path = dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&labels_path).map_err(|error| DataError::Io {
            path: labels_path.clone(),
            error,
        })?;
        let bad = |detail: String| DataError::Folder {
            path: labels_path.clone(),
            detail,
        };
        // Query file -> support file, as the labels file names them (relative to the
        // folder holding the runs).
        let mut answer_of: BTreeMap<String, String> = BTreeMap::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut fields = line.split_whitespace();
            let (Some(query), Some(support), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(format!(
                    "line {}: expected `query.png support.png`, found {line:?}",
                    n + 1
                )));
            };
            if answer_of.insert(query.into(), support.into()).is_some() {
                return Err(bad(format!("line {}: {query} is listed twice", n + 1)));
            }
        }
        if answer_of.len() < 2 {
            return Err(bad(format!(
                "names {} queries; a run needs at least two",
                answer_of.len()
            )));
        }
        let mut supports: Vec<&String> = answer_of.values().collect();
        supports.sort();
        supports.dedup();
        let read = |name: &str| -> Result<(Vec<u8>, Vec<u8>), DataError> {
            let path = root.join(name);
            if !path.is_file() {
                return Err(bad(format!("names {name}, which is not there")));
            }
            read_drawing(&path, size)
        };
        let (mut support_native, mut support) = (Vec::new(), Vec::new());
        for name in &supports {
            let (native, small) = read(name)?;
            support_native.push(native);
            support.push(small);
        }
        let (mut query_native, mut query, mut answers) = (Vec::new(), Vec::new(), Vec::new());
        for (name, answer) in &answer_of {
            let (native, small) = read(name)?;
            query_native.push(native);
            query.push(small);
            answers.push(supports.iter().position(|s| *s == answer).expect("listed"));
        }
        Ok(OneShotRun {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            support_native,
            query_native,
            support,
            query,
            answers,
        })
    }
}
