//! The Hub download path, for real but without the internet: a small HTTP server on
//! 127.0.0.1 plays the Hub (the `resolve` endpoint with range requests, `ETag` and
//! `X-Repo-Commit` headers, as hf-hub expects), serving parquet files this test writes
//! in the Hub's layout (rows of `image {bytes: PNG, path}` and `label`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use siamese_data::dataset::{images_sha256, labels_sha256};
use siamese_data::idx::IdxImages;
use siamese_data::{load, DataError, DatasetSpec, LoadOptions, Origin};

const REVISION_IN_URL: &str = "refs%2Fconvert%2Fparquet";

/// How the fake Hub answers for one file.
#[derive(Clone)]
enum Route {
    /// Serves the bytes.
    Ok(Vec<u8>),
    /// Announces the full length but closes the connection after half of the body.
    Truncated(Vec<u8>),
}

/// Starts the fake Hub; returns its endpoint. Unknown paths get 404.
fn serve(routes: HashMap<String, Route>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let routes = Arc::clone(&routes);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut range_start = 0usize;
                let mut range_end = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = v.trim().split_once('-').unwrap();
                        range_start = a.parse().unwrap();
                        range_end = b.parse::<usize>().ok();
                    }
                }
                let Some(route) = routes.get(&path) else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                let (body, truncate) = match route {
                    Route::Ok(b) => (b, false),
                    Route::Truncated(b) => (b, true),
                };
                let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                let chunk = &body[range_start..=end];
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {range_start}-{end}/{}\r\nETag: \"{}\"\r\nX-Repo-Commit: {}\r\nConnection: close\r\n\r\n",
                    chunk.len(),
                    body.len(),
                    labels_sha256(body),
                    "0123456789abcdef0123456789abcdef01234567",
                );
                let _ = stream.write_all(head.as_bytes());
                // The one-byte metadata probe is answered in full; a truncated route
                // cuts the real download short.
                let send = if truncate && chunk.len() > 1 {
                    &chunk[..chunk.len() / 2]
                } else {
                    chunk
                };
                let _ = stream.write_all(send);
            });
        }
    });
    endpoint
}

fn png(pixels: &[u8], rows: u32, cols: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, cols, rows);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

/// A parquet file in the Hub's layout, snappy-compressed as the Hub's are.
fn parquet_file(pngs: &[Vec<u8>], labels: &[i64]) -> Vec<u8> {
    let schema = parse_message_type(
        "message schema {
            optional group image {
                optional binary bytes;
                optional binary path (STRING);
            }
            optional int64 label;
        }",
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut out, Arc::new(schema), Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let n = labels.len();
    // image.bytes: present at definition level 2 (group and leaf defined).
    let mut col = group.next_column().unwrap().unwrap();
    let bytes: Vec<ByteArray> = pngs.iter().map(|p| ByteArray::from(p.clone())).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&bytes, Some(&vec![2; n]), None)
        .unwrap();
    col.close().unwrap();
    // image.path: null (definition level 1), as in the Hub's files.
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&[], Some(&vec![1; n]), None)
        .unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(labels, Some(&vec![1; n]), None)
        .unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    out
}

/// One part of the fake data set: 4x4 images of 3 classes, `count` of them.
struct TinyPart {
    images: IdxImages,
    labels: Vec<u8>,
}

impl TinyPart {
    fn new(count: usize, salt: u8) -> Self {
        let labels: Vec<u8> = (0..count).map(|i| (i % 3) as u8).collect();
        let pixels = (0..count * 16)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect();
        Self {
            images: IdxImages {
                count,
                rows: 4,
                cols: 4,
                pixels,
            },
            labels,
        }
    }

    fn parquet(&self, corrupt_row: Option<usize>) -> Vec<u8> {
        let pngs: Vec<Vec<u8>> = (0..self.images.count)
            .map(|i| {
                let png = png(&self.images.pixels[i * 16..(i + 1) * 16], 4, 4);
                if corrupt_row == Some(i) {
                    png[..png.len() / 2].to_vec()
                } else {
                    png
                }
            })
            .collect();
        let labels: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        parquet_file(&pngs, &labels)
    }
}

fn tiny_spec(repo: &str, train: &TinyPart, test: &TinyPart) -> DatasetSpec {
    let mut spec = DatasetSpec::mnist();
    spec.name = "tiny".into();
    spec.dir_name = "tiny".into();
    spec.rows = 4;
    spec.cols = 4;
    spec.class_names = vec!["a".into(), "b".into(), "c".into()];
    spec.validation_size = 3;
    spec.hub.repo = repo.into();
    for (part, data, file) in [
        (&mut spec.train, train, "tiny/train/0000.parquet"),
        (&mut spec.test, test, "tiny/test/0000.parquet"),
    ] {
        part.count = data.images.count;
        part.class_counts = Some(vec![data.images.count / 3; 3]);
        part.images_sha256 = Some(images_sha256(&data.images));
        part.labels_sha256 = Some(labels_sha256(&data.labels));
        part.hub_file = file.into();
    }
    spec
}

fn url_path(spec: &DatasetSpec, file: &str) -> String {
    format!(
        "/datasets/{}/resolve/{REVISION_IN_URL}/{file}",
        spec.hub.repo
    )
}

/// Serves the two parts of `spec` with the given routes; returns the endpoint.
fn serve_parts(spec: &DatasetSpec, train: Route, test: Route) -> String {
    serve(HashMap::from([
        (url_path(spec, &spec.train.hub_file), train),
        (url_path(spec, &spec.test.hub_file), test),
    ]))
}

fn options(endpoint: &str, cache: &Path) -> LoadOptions {
    LoadOptions {
        cache_dir: Some(cache.to_path_buf()),
        hub_endpoint: Some(endpoint.to_string()),
        progress: false,
        retries: 0,
        ..Default::default()
    }
}

#[test]
fn downloads_decodes_verifies_and_caches() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let spec = tiny_spec("fake/tiny", &train, &test);
    let endpoint = serve_parts(
        &spec,
        Route::Ok(train.parquet(None)),
        Route::Ok(test.parquet(None)),
    );
    let cache = tempfile::tempdir().unwrap();
    let (data, origin) = load(&spec, &options(&endpoint, cache.path())).unwrap();
    let folder = cache.path().join("tiny");
    assert_eq!(origin, Origin::Downloaded(folder.clone()));
    assert_eq!(
        (data.train.len(), data.validation.len(), data.test.len()),
        (12, 3, 6)
    );
    assert_eq!(data.train.image(5), &train.images.pixels[5 * 16..6 * 16]);
    let want: Vec<u32> = train.labels[12..].iter().map(|&l| u32::from(l)).collect();
    assert_eq!(data.validation.labels(), &want[..]);
    assert_eq!(data.test.pixels(), &test.images.pixels[..]);

    // The conversion was cached as IDX: a second load, offline, reads it back.
    let offline = LoadOptions {
        offline: true,
        ..options("http://127.0.0.1:9", cache.path())
    };
    let (again, origin) = load(&spec, &offline).unwrap();
    assert_eq!(origin, Origin::Cache(folder.clone()));
    assert_eq!(again.train, data.train);
    assert_eq!(again.test, data.test);
    assert!(folder.join("train-images-idx3-ubyte.gz").is_file());
}

#[test]
fn missing_file_is_a_download_error_naming_it() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let spec = tiny_spec("fake/missing", &train, &test);
    let endpoint = serve(HashMap::new());
    let cache = tempfile::tempdir().unwrap();
    let err = load(&spec, &options(&endpoint, cache.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Download { .. }), "{msg}");
    assert!(
        msg.contains("tiny/train/0000.parquet") && msg.contains("404"),
        "{msg}"
    );
    assert!(!cache.path().join("tiny").exists());
}

#[test]
fn truncated_body_fails_cleanly() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let spec = tiny_spec("fake/truncated", &train, &test);
    let endpoint = serve_parts(
        &spec,
        Route::Truncated(train.parquet(None)),
        Route::Ok(test.parquet(None)),
    );
    let cache = tempfile::tempdir().unwrap();
    let msg = load(&spec, &options(&endpoint, cache.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0000.parquet"), "{msg}");
    assert!(
        !cache.path().join("tiny").exists(),
        "nothing may be cached from a bad download"
    );
}

#[test]
fn checksum_mismatch_is_reported_and_nothing_cached() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let mut spec = tiny_spec("fake/checksum", &train, &test);
    spec.test.images_sha256 = Some("ab".repeat(32));
    let endpoint = serve_parts(
        &spec,
        Route::Ok(train.parquet(None)),
        Route::Ok(test.parquet(None)),
    );
    let cache = tempfile::tempdir().unwrap();
    let err = load(&spec, &options(&endpoint, cache.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{msg}");
    assert!(
        msg.contains("test/0000.parquet") && msg.contains(&"ab".repeat(32)),
        "{msg}"
    );
    assert!(!cache.path().join("tiny").exists());
}

#[test]
fn corrupt_png_names_the_row() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let spec = tiny_spec("fake/png", &train, &test);
    let endpoint = serve_parts(
        &spec,
        Route::Ok(train.parquet(Some(7))),
        Route::Ok(test.parquet(None)),
    );
    let cache = tempfile::tempdir().unwrap();
    let err = load(&spec, &options(&endpoint, cache.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Image { row: 7, .. }), "{msg}");
    assert!(msg.contains("train/0000.parquet"), "{msg}");
}

#[test]
fn unreachable_hub_explains_how_to_work_offline() {
    let (train, test) = (TinyPart::new(15, 1), TinyPart::new(6, 2));
    let spec = tiny_spec("fake/offline", &train, &test);
    // Nothing listens on port 9 (discard) of loopback here: connection refused.
    let cache = tempfile::tempdir().unwrap();
    let err = load(&spec, &options("http://127.0.0.1:9", cache.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::NotAvailable { .. }), "{msg}");
    assert!(
        msg.contains("t10k-labels-idx1-ubyte.gz") && msg.contains("SIAMESE_DATA_DIR"),
        "{msg}"
    );
}
