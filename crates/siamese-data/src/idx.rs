//! The IDX file format of MNIST-style data sets: reading (plain or gzip, detected by
//! content) with strict validation, and writing (for fixtures and the download cache).
//!
//! Only the two kinds these data sets use are supported: u8 image files (magic 2051,
//! three dimensions `[count, rows, cols]`) and u8 label files (magic 2049, one
//! dimension `[count]`). The header is trusted for nothing: the payload is read through
//! a `take` of exactly the declared size plus one byte, so a header that claims billions
//! of images fails on the missing bytes instead of allocating for them.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::DataError;

/// Magic number of an IDX file of u8 images with three dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels with one dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A stack of u8 grayscale images, row-major, `count * rows * cols` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Pixels, image after image, each row-major.
    pub pixels: Vec<u8>,
}

/// Decodes an IDX image file (plain or gzip) from `path`.
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    let bytes = read_file(path)?;
    decode_images(&bytes, path)
}

/// Decodes an IDX label file (plain or gzip) from `path`.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_file(path)?;
    decode_labels(&bytes, path)
}

/// Decodes IDX image bytes (plain or gzip); `origin` names the source in errors.
pub fn decode_images(bytes: &[u8], origin: &Path) -> Result<IdxImages, DataError> {
    let (dims, pixels) = decode(bytes, origin, IMAGES_MAGIC, 3)?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
}

/// Decodes IDX label bytes (plain or gzip); `origin` names the source in errors.
pub fn decode_labels(bytes: &[u8], origin: &Path) -> Result<Vec<u8>, DataError> {
    let (_, labels) = decode(bytes, origin, LABELS_MAGIC, 1)?;
    Ok(labels)
}

/// Encodes images as uncompressed IDX bytes.
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    debug_assert_eq!(
        images.pixels.len(),
        images.count * images.rows * images.cols
    );
    encode(
        IMAGES_MAGIC,
        &[images.count, images.rows, images.cols],
        &images.pixels,
    )
}

/// Encodes labels as uncompressed IDX bytes.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    encode(LABELS_MAGIC, &[labels.len()], labels)
}

/// Writes `bytes` (usually from [`encode_images`] / [`encode_labels`]) to `path`,
/// gzip-compressed when `gzip` is set, atomically: a temporary file beside it is
/// renamed over the target, so a crash never leaves a half-written file behind.
pub fn write_file(path: &Path, bytes: &[u8], gzip: bool) -> Result<(), DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).map_err(io_err)?;
        let compressed = encoder.finish().map_err(io_err)?;
        crate::fsutil::write_atomic(path, &compressed)
    } else {
        crate::fsutil::write_atomic(path, bytes)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    })
}

fn encode(magic: u32, dims: &[usize], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + payload.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        let d = u32::try_from(d).expect("IDX dimensions are u32 by definition");
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Whether `bytes` start like a gzip stream.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

fn decode(
    bytes: &[u8],
    origin: &Path,
    expected_magic: u32,
    expected_ndims: usize,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    if is_gzip(bytes) {
        decode_stream(
            BufReader::new(MultiGzDecoder::new(bytes)),
            origin,
            expected_magic,
            expected_ndims,
        )
    } else {
        decode_stream(bytes, origin, expected_magic, expected_ndims)
    }
}

fn decode_stream<R: Read>(
    mut reader: R,
    origin: &Path,
    expected_magic: u32,
    expected_ndims: usize,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |expected: String, found: String| DataError::BadIdx {
        path: origin.to_path_buf(),
        expected,
        found,
    };
    let mut magic = [0u8; 4];
    read_header(&mut reader, &mut magic, origin)?;
    let magic = u32::from_be_bytes(magic);
    if magic != expected_magic {
        return Err(bad(
            format!(
                "magic number {expected_magic} ({})",
                describe_magic(expected_magic)
            ),
            format!("{magic} ({})", describe_magic(magic)),
        ));
    }
    let mut dims = Vec::with_capacity(expected_ndims);
    for _ in 0..expected_ndims {
        let mut dim = [0u8; 4];
        read_header(&mut reader, &mut dim, origin)?;
        dims.push(u32::from_be_bytes(dim) as usize);
    }
    let payload_len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(
                "dimensions whose product fits in memory".into(),
                format!("{dims:?}"),
            )
        })?;
    // Read at most one byte past the declared payload: enough to tell "too long" from
    // "exact", and the vector grows with the bytes actually present, never with the
    // header's claim.
    let mut payload = Vec::new();
    let limit = (payload_len as u64).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut payload)
        .map_err(|source| DataError::Corrupt {
            path: origin.to_path_buf(),
            detail: format!("could not decompress: {source}"),
        })?;
    if payload.len() != payload_len {
        let found = if payload.len() > payload_len {
            format!("more than {payload_len} bytes (trailing data)")
        } else {
            format!("{} bytes (truncated)", payload.len())
        };
        return Err(bad(
            format!("{payload_len} payload bytes for dimensions {dims:?}"),
            found,
        ));
    }
    Ok((dims, payload))
}

fn read_header<R: Read>(reader: &mut R, buf: &mut [u8], origin: &Path) -> Result<(), DataError> {
    reader.read_exact(buf).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::BadIdx {
                path: origin.to_path_buf(),
                expected: "a complete IDX header".into(),
                found: "end of file".into(),
            }
        } else {
            DataError::Corrupt {
                path: origin.to_path_buf(),
                detail: format!("could not decompress the header: {source}"),
            }
        }
    })
}

fn describe_magic(magic: u32) -> &'static str {
    match magic {
        IMAGES_MAGIC => "u8 images, 3 dimensions",
        LABELS_MAGIC => "u8 labels, 1 dimension",
        _ => "not an MNIST-style IDX file",
    }
}

/// The path used in errors for data that came from memory rather than a file.
pub fn memory_origin(name: &str) -> PathBuf {
    PathBuf::from(format!("<memory:{name}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IdxImages {
        IdxImages {
            count: 3,
            rows: 2,
            cols: 4,
            pixels: (0..24).collect(),
        }
    }

    #[test]
    fn images_round_trip_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for gzip in [false, true] {
            let path = dir.path().join(format!("img-{gzip}"));
            write_file(&path, &encode_images(&sample()), gzip).unwrap();
            let raw = std::fs::read(&path).unwrap();
            assert_eq!(is_gzip(&raw), gzip);
            assert_eq!(read_images(&path).unwrap(), sample());
        }
    }

    #[test]
    fn labels_round_trip() {
        let bytes = encode_labels(&[1, 2, 3, 9]);
        assert_eq!(
            decode_labels(&bytes, Path::new("l")).unwrap(),
            vec![1, 2, 3, 9]
        );
    }

    #[test]
    fn wrong_magic_names_both_kinds() {
        let err = decode_images(&encode_labels(&[1, 2]), Path::new("x.idx")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.idx"), "{msg}");
        assert!(msg.contains("2051"), "{msg}");
        assert!(msg.contains("2049"), "{msg}");
    }

    #[test]
    fn truncated_and_trailing_payloads_fail() {
        let full = encode_images(&sample());
        let err = decode_images(&full[..full.len() - 1], Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut long = full.clone();
        long.push(0);
        let err = decode_images(&long, Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = decode_images(&full[..6], Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
    }

    #[test]
    fn huge_header_fails_without_allocating() {
        // 4 billion images of 28x28: the payload would be ~3 TB.
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [4_000_000_000u32, 28, 28] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0; 100]);
        let err = decode_images(&bytes, Path::new("huge")).unwrap_err();
        assert!(err.to_string().contains("100 bytes (truncated)"), "{err}");
    }

    #[test]
    fn missing_file_names_it() {
        let err = read_labels(Path::new("/nonexistent/labels.gz")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/labels.gz"), "{err}");
    }
}
