//! Image-folder data sets: a folder with one subfolder per class (an identity, a
//! writer...) of PNG, PGM/PNM or JPEG images, as the AT&T faces come (`s1/1.pgm`...).
//!
//! Every image is read as 8-bit grayscale (colour converted with the BT.709 weights)
//! and brought to one size: the `image_size` asked for (resized with a bilinear
//! filter), or else the size of the first image, which all the others must then have.
//! The [`Preprocessing`] that did this is what a model trained on the set keeps, so
//! that an image checked later goes through the same steps ([`read_image`]).
//!
//! The split is by class, as in Chopra et al. (identities in the test split never seen
//! in training), or by image within every class; either is a deterministic function of
//! the seed. Labels are the classes' positions in name order, the same in every split.
//!
//! What is refused, with the file or folder named: fewer than two classes, a class
//! folder without images, a file with an image extension that does not decode, mixed
//! sizes without `image_size`, a split that leaves a part with too few classes or
//! images. Files without an image extension (`README`, `Thumbs.db`) are skipped and
//! listed in [`FolderData::skipped`], for the caller to warn about; hidden entries
//! (names starting with `.`) are ignored without a word.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
#[cfg(feature = "image-folder")]
use crate::dataset::{DatasetSpec, ImageSet, MAX_CLASSES};
#[cfg(feature = "image-folder")]
use crate::error::DataError;
#[cfg(feature = "image-folder")]
use crate::rng::Rng;

/// File extensions read as images (compared in lower case).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "pgm", "pnm", "ppm", "pbm", "jpg", "jpeg"];

/// How an image file becomes the model's input: decoded, converted to 8-bit grayscale,
/// resized to `height x width` (or required to be that size when `resize` is false),
/// and, in the batcher, scaled from [0, 255] to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Rows of the model's input.
    pub height: usize,
    /// Columns of the model's input.
    pub width: usize,
    /// Whether an image of another size is resized (bilinear) rather than refused.
    pub resize: bool,
}

/// How an image folder is split into train, validation and test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum FolderSplit {
    /// Whole classes are held out: `test` classes for test, `validation` for
    /// validation, the rest for training (unset: an eighth of the classes each, at
    /// least two).
    Classes {
        /// Classes in the test split.
        test: Option<usize>,
        /// Classes in the validation split.
        validation: Option<usize>,
    },
    /// Within every class, `test` images go to test and `validation` to validation,
    /// the rest to training (unset: a fifth of the smallest class each, at least one).
    Images {
        /// Images per class in the test split.
        test: Option<usize>,
        /// Images per class in the validation split.
        validation: Option<usize>,
    },
}

impl Default for FolderSplit {
    fn default() -> Self {
        Self::Classes {
            test: None,
            validation: None,
        }
    }
}

/// Everything that turns an image folder into a [`Dataset`]; kept in a run's config so
/// evaluation rebuilds the same splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FolderOptions {
    /// `[height, width]` to resize every image to; unset: the first image's size.
    pub image_size: Option<[usize; 2]>,
    /// The split.
    pub split: FolderSplit,
    /// Seed of the split.
    pub seed: u64,
}

/// A loaded image folder.
#[derive(Debug, Clone)]
pub struct FolderData {
    /// The splits; `spec` carries the name, the size and the class names.
    pub dataset: Dataset,
    /// The options with every default resolved (sizes and counts filled in).
    pub options: FolderOptions,
    /// What a model trained on it must do to an image file.
    pub preprocessing: Preprocessing,
    /// Files that were not read, having no image extension.
    pub skipped: Vec<PathBuf>,
    /// The file of every image of train, validation and test, in the splits' order.
    pub paths: [Vec<PathBuf>; 3],
}

/// Whether `dir` looks like an image folder: it has a subfolder holding a file with
/// an image extension.
pub fn is_image_folder(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.path().is_dir()
            && std::fs::read_dir(e.path())
                .map(|files| files.flatten().any(|f| has_image_extension(&f.path())))
                .unwrap_or(false)
    })
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(feature = "image-folder")]
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

#[cfg(feature = "image-folder")]
fn folder_error(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::Folder {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

#[cfg(feature = "image-folder")]
/// Sorted entries of `dir`, hidden ones left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        error: source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !is_hidden(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(feature = "image-folder")]
/// The largest image side this tool decodes, in pixels: a larger file (a decompression
/// bomb, or a photograph far beyond any model's input) is refused from its header,
/// before its pixels are allocated.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

#[cfg(feature = "image-folder")]
/// Most pixels an image file may claim per byte of the file. No format this tool reads
/// packs more: deflate (PNG) stops near 1,032 bytes out per byte in, and a JPEG spends
/// a few bits at least on each 8x8 block. A header claiming more (16,000 x 16,000
/// pixels in a 656-byte JPEG was decoded to 627 MB of garbage) is a forgery or a
/// truncated file, refused before its pixels are allocated.
pub const MAX_PIXELS_PER_BYTE: u64 = 4096;

#[cfg(feature = "image-folder")]
/// Decodes one image file to 8-bit grayscale: `(height, width, pixels)`.
pub(crate) fn decode_gray(path: &Path) -> Result<(usize, usize, Vec<u8>), DataError> {
    let bad = |detail: String| DataError::ImageFile {
        path: path.to_path_buf(),
        detail,
    };
    let mut reader = image::io::Reader::open(path)
        .map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            error: e,
        })?
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if reader.format().is_none() {
        return Err(bad(
            "not an image this tool reads (expected PNG, PGM/PNM or JPEG)".into(),
        ));
    }
    let bytes = std::fs::metadata(path)
        .map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            error: e,
        })?
        .len();
    if let Ok((w, h)) = image::image_dimensions(path) {
        let pixels = u64::from(w) * u64::from(h);
        // Sides past the limit get the limit's own message, below.
        let within = w <= MAX_IMAGE_SIDE && h <= MAX_IMAGE_SIDE;
        if within && pixels > bytes.saturating_mul(MAX_PIXELS_PER_BYTE) {
            return Err(bad(format!(
                "its header claims {w}x{h} pixels in a file of {bytes} bytes, more than any \
                 image holds (at most {MAX_PIXELS_PER_BYTE} pixels a byte): forged or \
                 truncated"
            )));
        }
    }
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(u64::from(MAX_IMAGE_SIDE).pow(2) * 4);
    reader.limits(limits);
    let jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => bad(format!(
            "larger than this tool decodes ({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels): {e}"
        )),
        e => bad(format!("not a readable image: {e}")),
    })?;
    if jpeg {
        // The decoder pads, skips and ignores what libjpeg calls corrupt data; a file
        // of garbage scan data decoded to noise (see `jpeg_scan`).
        let bytes = std::fs::read(path).map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            error: e,
        })?;
        crate::jpeg_scan::check(&bytes)
            .map_err(|detail| bad(format!("not a readable image: corrupt JPEG data: {detail}")))?;
    }
    let gray = decoded.to_luma8();
    let (w, h) = gray.dimensions();
    Ok((h as usize, w as usize, gray.into_raw()))
}

#[cfg(feature = "image-folder")]
fn resize(pixels: Vec<u8>, from: (usize, usize), to: (usize, usize)) -> Vec<u8> {
    if from == to {
        return pixels;
    }
    let image = image::GrayImage::from_raw(from.1 as u32, from.0 as u32, pixels)
        .expect("decoded size matches its pixels");
    image::imageops::resize(
        &image,
        to.1 as u32,
        to.0 as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}

#[cfg(feature = "image-folder")]
/// Reads one image file as a model trained with `preprocessing` expects it:
/// `height * width` grayscale bytes (the batcher scales them to [0, 1]).
pub fn read_image(path: &Path, preprocessing: &Preprocessing) -> Result<Vec<u8>, DataError> {
    let (h, w, pixels) = decode_gray(path)?;
    let target = (preprocessing.height, preprocessing.width);
    if (h, w) != target && !preprocessing.resize {
        return Err(DataError::ImageFile {
            path: path.to_path_buf(),
            detail: format!(
                "the image is {h}x{w} pixels (height x width), the model expects {}x{}",
                target.0, target.1
            ),
        });
    }
    Ok(resize(pixels, (h, w), target))
}

#[cfg(feature = "image-folder")]
/// Loads the image folder `dir` (one subfolder per class) and splits it.
pub fn load_image_folder(dir: &Path, options: &FolderOptions) -> Result<FolderData, DataError> {
    let (class_dirs, mut skipped) = class_folders(dir)?;
    let decoded = decode_classes(dir, &class_dirs, options.image_size, &mut skipped)?;
    let DecodedClasses {
        classes,
        paths: class_paths,
        size: (rows, cols),
    } = decoded;
    let class_names: Vec<String> = class_dirs
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();

    let (split, parts) = split(dir, &classes, options.split, options.seed)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let spec = DatasetSpec::image_folder(&name, rows, cols, class_names);
    let n = spec.num_classes();
    let paths = parts.clone().map(|members| {
        members
            .into_iter()
            .map(|(class, image)| class_paths[class][image].clone())
            .collect()
    });
    let [train, validation, test] = parts.map(|members| {
        let mut pixels = Vec::with_capacity(members.len() * rows * cols);
        let mut labels = Vec::with_capacity(members.len());
        for (class, image) in members {
            pixels.extend_from_slice(&classes[class][image]);
            labels.push(class as u32);
        }
        ImageSet::new(rows, cols, n, pixels, labels, dir)
    });
    Ok(FolderData {
        dataset: Dataset {
            spec,
            train: train?,
            validation: validation?,
            test: test?,
        },
        options: FolderOptions {
            image_size: Some([rows, cols]),
            split,
            seed: options.seed,
        },
        preprocessing: Preprocessing {
            height: rows,
            width: cols,
            resize: true,
        },
        skipped,
        paths,
    })
}

#[cfg(feature = "image-folder")]
/// The class subfolders of `dir`, in name order, and the other entries (skipped).
fn class_folders(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    if !dir.is_dir() {
        return Err(folder_error(dir, "not a folder"));
    }
    let mut skipped = Vec::new();
    let mut class_dirs = Vec::new();
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            class_dirs.push(path);
        } else {
            skipped.push(path);
        }
    }
    if class_dirs.len() < 2 {
        return Err(folder_error(
            dir,
            format!(
                "an image folder needs one subfolder per class, at least two; found {}",
                class_dirs.len()
            ),
        ));
    }
    if class_dirs.len() > MAX_CLASSES {
        return Err(folder_error(
            dir,
            format!(
                "{} class folders: at most {MAX_CLASSES} classes are supported",
                class_dirs.len()
            ),
        ));
    }
    Ok((class_dirs, skipped))
}

#[cfg(feature = "image-folder")]
/// Every class's images, decoded to gray and brought to one size, with their files.
struct DecodedClasses {
    /// `classes[c][i]`: image `i` of class `c`, `rows * cols` bytes.
    classes: Vec<Vec<Vec<u8>>>,
    /// The file of each image, in the same order.
    paths: Vec<Vec<PathBuf>>,
    /// `(rows, cols)` of every image.
    size: (usize, usize),
}

#[cfg(feature = "image-folder")]
/// Decodes everything, class by class, in name order: to `image_size` when given, else
/// every image must have the first one's size. Files that are not images go to
/// `skipped`.
fn decode_classes(
    dir: &Path,
    class_dirs: &[PathBuf],
    image_size: Option<[usize; 2]>,
    skipped: &mut Vec<PathBuf>,
) -> Result<DecodedClasses, DataError> {
    let mut size = image_size.map(|[h, w]| (h, w));
    if size.is_some_and(|(h, w)| h == 0 || w == 0) {
        return Err(folder_error(dir, "the image size must be at least 1x1"));
    }
    let resize_all = size.is_some();
    let mut classes: Vec<Vec<Vec<u8>>> = Vec::with_capacity(class_dirs.len());
    let mut class_paths: Vec<Vec<PathBuf>> = Vec::with_capacity(class_dirs.len());
    for class_dir in class_dirs {
        let mut images = Vec::new();
        let mut paths = Vec::new();
        for path in sorted_entries(class_dir)? {
            if path.is_dir() || !has_image_extension(&path) {
                skipped.push(path);
                continue;
            }
            let (h, w, pixels) = decode_gray(&path)?;
            let target = *size.get_or_insert((h, w));
            if (h, w) != target && !resize_all {
                return Err(DataError::ImageFile {
                    path,
                    detail: format!(
                        "the image is {h}x{w} pixels (height x width) but the first image is \
                         {}x{}; give an image size to resize them all",
                        target.0, target.1
                    ),
                });
            }
            images.push(resize(pixels, (h, w), target));
            paths.push(path);
        }
        if images.is_empty() {
            return Err(folder_error(
                class_dir,
                format!(
                    "the class folder holds no images (expected files ending in {})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        classes.push(images);
        class_paths.push(paths);
    }
    Ok(DecodedClasses {
        classes,
        paths: class_paths,
        size: size.expect("at least one image was read"),
    })
}

#[cfg(feature = "image-folder")]
/// `(class, image)` members of train, validation and test, and the split resolved.
type Parts = [Vec<(usize, usize)>; 3];

#[cfg(feature = "image-folder")]
fn split(
    dir: &Path,
    classes: &[Vec<Vec<u8>>],
    split: FolderSplit,
    seed: u64,
) -> Result<(FolderSplit, Parts), DataError> {
    let mut rng = Rng::new(seed);
    let mut parts: Parts = Default::default();
    match split {
        FolderSplit::Classes { test, validation } => {
            let n = classes.len();
            let auto = (n / 8).max(2);
            let (test, validation) = (test.unwrap_or(auto), validation.unwrap_or(auto));
            // Pairs of different classes need two classes in every part.
            if test < 2 || validation < 2 || test + validation + 2 > n {
                return Err(folder_error(
                    dir,
                    format!(
                        "a split by class needs at least two classes in each of train, \
                         validation and test: {n} classes cannot give {test} to test and \
                         {validation} to validation (split by image instead)"
                    ),
                ));
            }
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            for (rank, &class) in order.iter().enumerate() {
                let part = if rank < test {
                    2
                } else if rank < test + validation {
                    1
                } else {
                    0
                };
                parts[part].extend((0..classes[class].len()).map(|i| (class, i)));
            }
            for part in &mut parts {
                part.sort_unstable();
            }
            Ok((
                FolderSplit::Classes {
                    test: Some(test),
                    validation: Some(validation),
                },
                parts,
            ))
        }
        FolderSplit::Images { test, validation } => {
            let smallest = classes.iter().map(Vec::len).min().unwrap_or(0);
            let auto = (smallest / 5).max(1);
            let (test, validation) = (test.unwrap_or(auto), validation.unwrap_or(auto));
            if let Some((class, images)) = classes
                .iter()
                .enumerate()
                .find(|(_, images)| images.len() < test + validation + 2)
            {
                return Err(folder_error(
                    dir,
                    format!(
                        "class {class} has {} images: a split by image with {test} for test \
                         and {validation} for validation needs at least {} per class",
                        images.len(),
                        test + validation + 2
                    ),
                ));
            }
            if test == 0 || validation == 0 {
                return Err(folder_error(
                    dir,
                    "a split by image needs at least one image per class in test and validation",
                ));
            }
            for (class, images) in classes.iter().enumerate() {
                let mut order: Vec<usize> = (0..images.len()).collect();
                rng.shuffle(&mut order);
                for (rank, &image) in order.iter().enumerate() {
                    let part = if rank < test {
                        2
                    } else if rank < test + validation {
                        1
                    } else {
                        0
                    };
                    parts[part].push((class, image));
                }
            }
            for part in &mut parts {
                part.sort_unstable();
            }
            Ok((
                FolderSplit::Images {
                    test: Some(test),
                    validation: Some(validation),
                },
                parts,
            ))
        }
    }
}
