//! Labelled image sets in memory, the definitions of the known data sets (MNIST and
//! Fashion-MNIST: file names, counts, per-class counts, checksums, Hub location) and
//! the reference program's splits (train = first 55,000, validation = last 5,000 of the
//! official train set, test = the official 10,000).
//!
//! Pixels stay u8 in memory (70,000 images are about 55 MB); the conversion to f32 in
//! [0, 1] happens once per batch, in [`crate::batcher`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::idx::{self, IdxImages};

/// A set of u8 grayscale images with a class label each. Labels are `u32`: face and
/// character sets have thousands of classes (Omniglot with rotations 3,856, CASIA-WebFace
/// 10,575), up to [`MAX_CLASSES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    rows: usize,
    cols: usize,
    num_classes: usize,
    pixels: Vec<u8>,
    labels: Vec<u32>,
}

/// Most classes a data set may have (16 M): far beyond any face or character set, and
/// small enough that a per-class table (counts, indices) never allocates without bound.
pub const MAX_CLASSES: usize = 1 << 24;

impl ImageSet {
    /// Builds a set, checking that sizes agree and that every label is below
    /// `num_classes`. `origin` names the data in errors.
    pub fn new(
        rows: usize,
        cols: usize,
        num_classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u32>,
        origin: &Path,
    ) -> Result<Self, DataError> {
        if num_classes > MAX_CLASSES {
            return Err(DataError::Unexpected {
                what: origin.display().to_string(),
                expected: format!("at most {MAX_CLASSES} classes"),
                found: num_classes.to_string(),
            });
        }
        if rows * cols * labels.len() != pixels.len() {
            return Err(DataError::Unexpected {
                what: origin.display().to_string(),
                expected: format!(
                    "{} pixels ({} labels x {rows} x {cols})",
                    rows * cols * labels.len(),
                    labels.len()
                ),
                found: format!("{} pixels", pixels.len()),
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                path: origin.to_path_buf(),
                index,
                label,
                num_classes,
            });
        }
        Ok(Self {
            rows,
            cols,
            num_classes,
            pixels,
            labels,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image height.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Image width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Number of classes labels may take (labels are `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The pixels of image `index`, row-major. Panics when out of range, like slicing.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Splits into the first `at` images and the rest.
    pub fn split_at(mut self, at: usize) -> (ImageSet, ImageSet) {
        let at = at.min(self.len());
        let tail_pixels = self.pixels.split_off(at * self.image_len());
        let tail_labels = self.labels.split_off(at);
        let tail = self.with_content(tail_pixels, tail_labels);
        (self, tail)
    }

    /// A set of the same image size and classes holding these images (the caller keeps
    /// `pixels` at `labels.len()` images and the labels in range).
    pub(crate) fn with_content(&self, pixels: Vec<u8>, labels: Vec<u32>) -> ImageSet {
        ImageSet {
            rows: self.rows,
            cols: self.cols,
            num_classes: self.num_classes,
            pixels,
            labels,
        }
    }
}

/// What a part (the official train or test files) of a data set must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpec {
    /// Standard image file name, e.g. `train-images-idx3-ubyte.gz`.
    pub images_file: String,
    /// Standard label file name.
    pub labels_file: String,
    /// Number of images.
    pub count: usize,
    /// Images per class, when known.
    pub class_counts: Option<Vec<usize>>,
    /// SHA-256 of the uncompressed IDX image file, when known.
    pub images_sha256: Option<String>,
    /// SHA-256 of the uncompressed IDX label file, when known.
    pub labels_sha256: Option<String>,
    /// Parquet file of this part in the Hub repository.
    pub hub_file: String,
}

/// Where a data set lives on the Hugging Face Hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSpec {
    /// Dataset repository, e.g. `ylecun/mnist`.
    pub repo: String,
    /// Revision holding the parquet conversion.
    pub revision: String,
}

/// Everything needed to find, fetch, verify and split a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// The name users type (`mnist`, `fashion-mnist`).
    pub name: String,
    /// Folder name under `SIAMESE_DATA_DIR` and the cache.
    pub dir_name: String,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Class names, index = label.
    pub class_names: Vec<String>,
    /// The official training files.
    pub train: PartSpec,
    /// The official test files.
    pub test: PartSpec,
    /// How many images at the end of the official train set form the validation split.
    pub validation_size: usize,
    /// The Hub copy.
    pub hub: HubSpec,
}

/// The names of the data sets this crate knows.
pub const KNOWN_DATASETS: [&str; 2] = ["mnist", "fashion-mnist"];

fn digits() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

fn part(
    prefix: &str,
    count: usize,
    class_counts: Vec<usize>,
    sums: [&str; 2],
    hub_file: String,
) -> PartSpec {
    PartSpec {
        images_file: format!("{prefix}-images-idx3-ubyte.gz"),
        labels_file: format!("{prefix}-labels-idx1-ubyte.gz"),
        count,
        class_counts: Some(class_counts),
        images_sha256: Some(sums[0].to_string()),
        labels_sha256: Some(sums[1].to_string()),
        hub_file,
    }
}

impl DatasetSpec {
    /// The spec of an image-folder data set (see [`crate::folder`]): only the
    /// descriptive fields (name, size, class names) mean anything; it has no IDX
    /// files, checksums or Hub copy, and its splits are made by the folder loader.
    pub fn image_folder(name: &str, rows: usize, cols: usize, class_names: Vec<String>) -> Self {
        let none = PartSpec {
            images_file: String::new(),
            labels_file: String::new(),
            count: 0,
            class_counts: None,
            images_sha256: None,
            labels_sha256: None,
            hub_file: String::new(),
        };
        Self {
            name: name.into(),
            dir_name: name.into(),
            rows,
            cols,
            class_names,
            train: none.clone(),
            test: none,
            validation_size: 0,
            hub: HubSpec {
                repo: String::new(),
                revision: String::new(),
            },
        }
    }

    /// MNIST handwritten digits (LeCun et al.).
    pub fn mnist() -> Self {
        Self {
            name: "mnist".into(),
            dir_name: "mnist".into(),
            rows: 28,
            cols: 28,
            class_names: digits(),
            train: part(
                "train",
                60_000,
                vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                [
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                ],
                "mnist/train/0000.parquet".into(),
            ),
            test: part(
                "t10k",
                10_000,
                vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
                [
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                ],
                "mnist/test/0000.parquet".into(),
            ),
            validation_size: 5_000,
            hub: HubSpec {
                repo: "ylecun/mnist".into(),
                revision: "refs/convert/parquet".into(),
            },
        }
    }

    /// Fashion-MNIST clothing images (Xiao et al.), a drop-in replacement for MNIST.
    pub fn fashion_mnist() -> Self {
        Self {
            name: "fashion-mnist".into(),
            dir_name: "fashion-mnist".into(),
            rows: 28,
            cols: 28,
            class_names: [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]
            .map(String::from)
            .to_vec(),
            train: part(
                "train",
                60_000,
                vec![6000; 10],
                [
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                ],
                "fashion_mnist/train/0000.parquet".into(),
            ),
            test: part(
                "t10k",
                10_000,
                vec![1000; 10],
                [
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                ],
                "fashion_mnist/test/0000.parquet".into(),
            ),
            validation_size: 5_000,
            hub: HubSpec {
                repo: "zalando-datasets/fashion_mnist".into(),
                revision: "refs/convert/parquet".into(),
            },
        }
    }

    /// Looks a data set up by the name users type (`mnist`, `fashion-mnist`; `_` for `-`
    /// and any case accepted).
    pub fn by_name(name: &str) -> Result<Self, DataError> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "mnist" => Ok(Self::mnist()),
            "fashion-mnist" | "fashionmnist" => Ok(Self::fashion_mnist()),
            _ => Err(DataError::UnknownDataset {
                name: name.to_string(),
                known: KNOWN_DATASETS.join(", "),
            }),
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The four standard file names, in the order train images, train labels, test
    /// images, test labels.
    pub fn file_names(&self) -> [&str; 4] {
        [
            &self.train.images_file,
            &self.train.labels_file,
            &self.test.images_file,
            &self.test.labels_file,
        ]
    }
}

/// Which part of the official files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The official training files.
    Train,
    /// The official test files.
    Test,
}

impl DatasetSpec {
    /// The spec of one part.
    pub fn part(&self, part: Part) -> &PartSpec {
        match part {
            Part::Train => &self.train,
            Part::Test => &self.test,
        }
    }
}

/// The three splits of the reference program.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The data set's definition.
    pub spec: DatasetSpec,
    /// First `count - validation_size` images of the official train set.
    pub train: ImageSet,
    /// Last `validation_size` images of the official train set.
    pub validation: ImageSet,
    /// The official test set.
    pub test: ImageSet,
}

/// A split by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training split.
    Train,
    /// Validation split.
    Validation,
    /// Test split.
    Test,
}

impl Dataset {
    /// Splits the official parts as the reference program does.
    pub fn from_parts(spec: DatasetSpec, train_full: ImageSet, test: ImageSet) -> Self {
        let train_len = train_full.len().saturating_sub(spec.validation_size);
        let (train, validation) = train_full.split_at(train_len);
        Self {
            spec,
            train,
            validation,
            test,
        }
    }

    /// One split.
    pub fn split(&self, split: Split) -> &ImageSet {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// SHA-256 of the uncompressed IDX file that `images` would be written as, in hex.
pub fn images_sha256(images: &IdxImages) -> String {
    let mut hasher = Sha256::new();
    hasher.update(idx::IMAGES_MAGIC.to_be_bytes());
    for d in [images.count, images.rows, images.cols] {
        hasher.update((d as u32).to_be_bytes());
    }
    hasher.update(&images.pixels);
    hex(&hasher.finalize())
}

/// SHA-256 of the uncompressed IDX file that `labels` would be written as, in hex.
pub fn labels_sha256(labels: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(idx::LABELS_MAGIC.to_be_bytes());
    hasher.update((labels.len() as u32).to_be_bytes());
    hasher.update(labels);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks decoded files against a part's definition (sizes, label range, count,
/// per-class counts, checksums) and turns them into an [`ImageSet`]. The paths name the
/// files in errors.
pub fn verify_part(
    spec: &DatasetSpec,
    part: Part,
    images: IdxImages,
    labels: Vec<u8>,
    images_path: &Path,
    labels_path: &Path,
) -> Result<ImageSet, DataError> {
    let part_spec = spec.part(part);
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: images.count,
            labels: labels.len(),
        });
    }
    if (images.rows, images.cols) != (spec.rows, spec.cols) {
        return Err(DataError::Unexpected {
            what: images_path.display().to_string(),
            expected: format!("{}x{} images for {}", spec.rows, spec.cols, spec.name),
            found: format!("{}x{}", images.rows, images.cols),
        });
    }
    if images.count != part_spec.count {
        return Err(DataError::Unexpected {
            what: images_path.display().to_string(),
            expected: format!("{} images for {}", part_spec.count, spec.name),
            found: images.count.to_string(),
        });
    }
    if let Some(expected) = &part_spec.images_sha256 {
        let found = images_sha256(&images);
        if &found != expected {
            return Err(DataError::ChecksumMismatch {
                path: images_path.to_path_buf(),
                expected: expected.clone(),
                found,
            });
        }
    }
    if let Some(expected) = &part_spec.labels_sha256 {
        let found = labels_sha256(&labels);
        if &found != expected {
            return Err(DataError::ChecksumMismatch {
                path: labels_path.to_path_buf(),
                expected: expected.clone(),
                found,
            });
        }
    }
    let set = ImageSet::new(
        images.rows,
        images.cols,
        spec.num_classes(),
        images.pixels,
        labels.into_iter().map(u32::from).collect(),
        labels_path,
    )?;
    if let Some(expected) = &part_spec.class_counts {
        let found = set.class_counts();
        if &found != expected {
            return Err(DataError::Unexpected {
                what: format!("{}: images per class", labels_path.display()),
                expected: format!("{expected:?}"),
                found: format!("{found:?}"),
            });
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(labels: Vec<u32>) -> ImageSet {
        let pixels = (0..labels.len() * 4).map(|i| i as u8).collect();
        ImageSet::new(2, 2, 3, pixels, labels, Path::new("tiny")).unwrap()
    }

    #[test]
    fn split_at_keeps_images_with_their_labels() {
        let (a, b) = tiny(vec![0, 1, 2, 0, 1]).split_at(3);
        assert_eq!(a.labels(), &[0, 1, 2]);
        assert_eq!(b.labels(), &[0, 1]);
        assert_eq!(b.image(0), &[12, 13, 14, 15]);
        assert_eq!(a.class_counts(), vec![1, 1, 1]);
    }

    #[test]
    fn label_out_of_range_is_an_error() {
        let err = ImageSet::new(1, 1, 3, vec![0, 0], vec![0, 3], Path::new("lab.gz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lab.gz") && err.contains("label 3 at index 1"),
            "{err}"
        );
    }

    #[test]
    fn names_resolve() {
        assert_eq!(DatasetSpec::by_name("MNIST").unwrap().name, "mnist");
        assert_eq!(
            DatasetSpec::by_name("fashion_mnist").unwrap().name,
            "fashion-mnist"
        );
        let err = DatasetSpec::by_name("cifar").unwrap_err().to_string();
        assert!(
            err.contains("cifar") && err.contains("fashion-mnist"),
            "{err}"
        );
    }

    #[test]
    fn checksums_match_the_manifest_in_data() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest: Vec<DatasetSpec> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            manifest,
            vec![DatasetSpec::mnist(), DatasetSpec::fashion_mnist()]
        );
    }

    #[test]
    fn checksum_of_known_tiny_file() {
        // sha256 of the bytes 00 00 08 01 00 00 00 00 (an empty label file), from
        // `printf '\x00\x00\x08\x01\x00\x00\x00\x00' | sha256sum`.
        assert_eq!(
            labels_sha256(&[]),
            "d49cd2c2d09f5f0c8ca44512f4e25d3228558f0c6b7b333cff567d2959802796"
        );
    }
}
