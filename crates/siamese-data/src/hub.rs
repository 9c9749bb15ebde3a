//! Download from the Hugging Face Hub: the parquet conversion of a data set (rows of
//! `image {bytes: PNG, path}` and `label`), decoded and verified, then written once as
//! standard IDX files into the cache so later runs read them like any local copy.
//!
//! The endpoint is configurable (`HF_ENDPOINT`, [`LoadOptions::hub_endpoint`]), which is
//! how the tests serve parquet files from a local HTTP server.

use std::path::Path;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use crate::dataset::{verify_part, Dataset, DatasetSpec, ImageSet, Part};
use crate::error::DataError;
use crate::idx::{self, IdxImages};
use crate::source::LoadOptions;

/// The Hub's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Downloads both parts of `spec`, verifies them, writes them as gzip IDX files into
/// `folder` and returns the splits. Nothing is written to `folder` unless both parts
/// pass every check.
pub fn fetch_to_cache(
    spec: &DatasetSpec,
    options: &LoadOptions,
    cache: &Path,
    folder: &Path,
) -> Result<Dataset, DataError> {
    let endpoint = options
        .hub_endpoint
        .clone()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let download_err = |file: &str, detail: String| DataError::Download {
        endpoint: endpoint.clone(),
        repo: spec.hub.repo.clone(),
        file: file.to_string(),
        detail,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache.join("hub"))
        .with_endpoint(endpoint.clone())
        .with_progress(options.progress)
        .with_retries(options.retries)
        .build()
        .map_err(|e| download_err("-", error_chain(&e)))?;
    let repo = api.repo(Repo::with_revision(
        spec.hub.repo.clone(),
        RepoType::Dataset,
        spec.hub.revision.clone(),
    ));
    let mut parts = Vec::with_capacity(2);
    for part in [Part::Train, Part::Test] {
        let part_spec = spec.part(part);
        let path = repo.get(&part_spec.hub_file).map_err(|e| match &e {
            ApiError::RequestError(inner) if matches!(**inner, ureq::Error::Transport(_)) => {
                DataError::HubUnreachable {
                    endpoint: endpoint.clone(),
                    detail: error_chain(&e),
                }
            }
            _ => download_err(&part_spec.hub_file, error_chain(&e)),
        })?;
        let (images, labels) = decode_parquet(&path, spec.rows, spec.cols)?;
        let images_bytes = idx::encode_images(&images);
        let labels_bytes = idx::encode_labels(&labels);
        let set = verify_part(spec, part, images, labels, &path, &path)?;
        parts.push((part_spec, set, images_bytes, labels_bytes));
    }
    for (part_spec, _, images_bytes, labels_bytes) in &parts {
        idx::write_file(&folder.join(&part_spec.images_file), images_bytes, true)?;
        idx::write_file(&folder.join(&part_spec.labels_file), labels_bytes, true)?;
    }
    let mut sets = parts.into_iter().map(|(_, set, _, _)| set);
    let (train, test): (ImageSet, ImageSet) = (sets.next().unwrap(), sets.next().unwrap());
    Ok(Dataset::from_parts(spec.clone(), train, test))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Wrappers often repeat their source's text in their own message.
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Decodes a parquet file of `image {bytes}` / `label` rows into IDX-shaped data.
/// Every image must be an 8-bit grayscale PNG of `rows x cols`.
pub fn decode_parquet(
    path: &Path,
    rows: usize,
    cols: usize,
) -> Result<(IdxImages, Vec<u8>), DataError> {
    let parquet_err = |detail: String| DataError::Parquet {
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| parquet_err(format!("not a readable parquet file: {e}")))?;
    let declared = reader.metadata().file_metadata().num_rows();
    // The footer's row count is only a hint for the allocation, bounded so a corrupt
    // footer cannot ask for more than a reasonable data set.
    let capacity = usize::try_from(declared).unwrap_or(0).min(1 << 20);
    let mut pixels = Vec::with_capacity(capacity * rows * cols);
    let mut labels = Vec::with_capacity(capacity);
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| parquet_err(format!("cannot iterate rows: {e}")))?;
    for (index, row) in iter.enumerate() {
        let row = row.map_err(|e| parquet_err(format!("row {index}: {e}")))?;
        let (png_bytes, label) = image_and_label(&row)
            .ok_or_else(|| parquet_err(format!("row {index}: expected columns `image` (struct with `bytes`) and `label` (integer), found {row}")))?;
        let label = u8::try_from(label).map_err(|_| DataError::Image {
            path: path.to_path_buf(),
            row: index,
            detail: format!("label {label} does not fit a class index"),
        })?;
        decode_png_into(png_bytes, rows, cols, &mut pixels).map_err(|detail| DataError::Image {
            path: path.to_path_buf(),
            row: index,
            detail,
        })?;
        labels.push(label);
    }
    let images = IdxImages {
        count: labels.len(),
        rows,
        cols,
        pixels,
    };
    Ok((images, labels))
}

fn image_and_label(row: &Row) -> Option<(&[u8], i64)> {
    let mut image = None;
    let mut label = None;
    for (name, field) in row.get_column_iter() {
        match (name.as_str(), field) {
            ("image", Field::Group(group)) => {
                image = group
                    .get_column_iter()
                    .find_map(|(n, f)| match (n.as_str(), f) {
                        ("bytes", Field::Bytes(b)) => Some(b.data()),
                        _ => None,
                    });
            }
            ("label", Field::Long(v)) => label = Some(*v),
            ("label", Field::Int(v)) => label = Some(i64::from(*v)),
            ("label", Field::Short(v)) => label = Some(i64::from(*v)),
            ("label", Field::Byte(v)) => label = Some(i64::from(*v)),
            ("label", Field::UByte(v)) => label = Some(i64::from(*v)),
            _ => {}
        }
    }
    Some((image?, label?))
}

/// Appends the pixels of one 8-bit grayscale PNG of the given size to `out`.
fn decode_png_into(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a valid PNG: {e}"))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    if (h, w) != (rows, cols) {
        return Err(format!("expected a {rows}x{cols} image, found {h}x{w}"));
    }
    if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "expected 8-bit grayscale, found {:?} {:?}",
            info.bit_depth, info.color_type
        ));
    }
    let start = out.len();
    out.resize(start + rows * cols, 0);
    reader
        .next_frame(&mut out[start..])
        .map_err(|e| format!("corrupt PNG data: {e}"))?;
    Ok(())
}
