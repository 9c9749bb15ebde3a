//! Galleries of embeddings and exact nearest-neighbour search over them, in plain Rust
//! (no tensors): what `siamese index` writes and `siamese search` reads, as
//! TensorFlow Similarity's `index()` / `lookup()` do.
//!
//! A gallery is a safetensors file: `embeddings` (f32, `[n, dim]`) and `labels` (u32,
//! `[n]`), with the class names, the items' file paths (when they came from files), the
//! fingerprint of the model that embedded them and its threshold in the metadata. A
//! query embedded by another model is meaningless against it, so the fingerprint is
//! checked by the caller ([`Gallery::check_model`]).
//!
//! Search is exact: every row's Euclidean distance to the query, in blocks of rows
//! spread over threads, each block keeping its `k` best; ties are broken by row index,
//! so the answer does not depend on the thread count.
//!
//! ```
//! use siamese_search::Gallery;
//!
//! let gallery = Gallery::new(
//!     2,
//!     vec![0.0, 0.0, 1.0, 0.0, 5.0, 5.0],
//!     vec![0, 0, 1],
//!     vec!["zero".into(), "one".into()],
//!     vec![],
//!     "model-sha256".into(),
//! )?;
//! let hits = gallery.search(&[0.9, 0.1], 2)?;
//! assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [1, 0]);
//!
//! // A file round trip keeps everything.
//! let bytes = gallery.to_bytes()?;
//! let back = Gallery::from_bytes(&bytes, std::path::Path::new("g.safetensors"))?;
//! assert_eq!(back, gallery);
//! assert!(back.check_model("another-model").is_err());
//! # Ok::<(), siamese_search::SearchError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

/// Format name in the metadata, so another safetensors file is refused by name.
pub const FORMAT: &str = "siamese-gallery";
/// Version of the layout.
pub const FORMAT_VERSION: &str = "1";
/// Most values (`n * dim`) a gallery may hold: 4 GiB of f32.
pub const MAX_VALUES: usize = 1 << 30;
/// Widest embedding.
pub const MAX_DIM: usize = 65_536;
/// Most neighbours one query may ask for.
pub const MAX_K: usize = 10_000;

/// Metadata keys.
pub mod keys {
    /// [`super::FORMAT`].
    pub const FORMAT: &str = "format";
    /// [`super::FORMAT_VERSION`].
    pub const VERSION: &str = "format_version";
    /// The embedding model's fingerprint.
    pub const MODEL: &str = "model_fingerprint";
    /// Class names, a JSON array.
    pub const CLASSES: &str = "class_names";
    /// The items' file paths, a JSON array (absent when they have none).
    pub const PATHS: &str = "paths";
}

/// Why a gallery could not be made, read or searched.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The file is not a valid gallery.
    #[error("{path}: not a valid gallery: {detail}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The parts do not make a gallery, or a query does not fit it.
    #[error("{0}")]
    Invalid(String),
    /// The gallery was embedded by another model.
    #[error(
        "the gallery was embedded by another model (fingerprint {gallery}, this model \
         {model}): index the images again with this model"
    )]
    OtherModel {
        /// The gallery's model.
        gallery: String,
        /// The model given.
        model: String,
    },
}

/// Exact nearest rows of plain embeddings, as [`Gallery::search`] finds them (without
/// its checks).
pub use siamese_neighbours::nearest;
/// A query's neighbour: its row in the gallery and its Euclidean distance.
pub use siamese_neighbours::Neighbour as Hit;

/// Embeddings with their labels, class names, paths and model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gallery {
    dim: usize,
    embeddings: Vec<f32>,
    labels: Vec<u32>,
    class_names: Vec<String>,
    paths: Vec<String>,
    model_fingerprint: String,
}

impl Gallery {
    /// A gallery of `labels.len()` rows of `dim` values; `paths` is empty or one per
    /// row; every label must name a class. Non-finite values are refused.
    pub fn new(
        dim: usize,
        embeddings: Vec<f32>,
        labels: Vec<u32>,
        class_names: Vec<String>,
        paths: Vec<String>,
        model_fingerprint: String,
    ) -> Result<Self, SearchError> {
        let fail = |m: String| Err(SearchError::Invalid(m));
        if dim == 0 || dim > MAX_DIM {
            return fail(format!(
                "the embedding dimension must be 1-{MAX_DIM}, found {dim}"
            ));
        }
        let n = labels.len();
        if n == 0 {
            // Searching nothing answered nothing with exit 0: an empty gallery is refused
            // where it is built and where it is read.
            return fail("a gallery holds at least one item, this one holds none".into());
        }
        if n.checked_mul(dim) != Some(embeddings.len()) {
            return fail(format!(
                "{} values are not {n} embeddings (one per label) of {dim}",
                embeddings.len()
            ));
        }
        if embeddings.len() > MAX_VALUES {
            return fail(format!(
                "{} values, more than a gallery may hold ({MAX_VALUES})",
                embeddings.len()
            ));
        }
        if !paths.is_empty() && paths.len() != n {
            return fail(format!("{} paths for {n} embeddings", paths.len()));
        }
        if let Some(i) = embeddings.iter().position(|v| !v.is_finite()) {
            return fail(format!(
                "embedding {} holds a non-finite value ({})",
                i / dim,
                embeddings[i]
            ));
        }
        if let Some(&l) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
            return fail(format!(
                "label {l} names no class ({} class names)",
                class_names.len()
            ));
        }
        Ok(Self {
            dim,
            embeddings,
            labels,
            class_names,
            paths,
            model_fingerprint,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it holds no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`'s label.
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    /// The name of class `label`.
    pub fn class_name(&self, label: u32) -> &str {
        &self.class_names[label as usize]
    }

    /// Row `i`'s file path, when the rows came from files.
    pub fn path(&self, i: usize) -> Option<&str> {
        self.paths.get(i).map(String::as_str)
    }

    /// The fingerprint of the model that embedded the rows.
    pub fn model_fingerprint(&self) -> &str {
        &self.model_fingerprint
    }

    /// Refuses a model other than the gallery's.
    pub fn check_model(&self, fingerprint: &str) -> Result<(), SearchError> {
        if fingerprint != self.model_fingerprint {
            return Err(SearchError::OtherModel {
                gallery: self.model_fingerprint.clone(),
                model: fingerprint.to_string(),
            });
        }
        Ok(())
    }

    /// The `k` rows nearest to `query` (at most all of them), nearest first; equal
    /// distances in row order.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, SearchError> {
        if query.len() != self.dim {
            return Err(SearchError::Invalid(format!(
                "the query has {} values, the gallery's embeddings {}",
                query.len(),
                self.dim
            )));
        }
        if !(1..=MAX_K).contains(&k) {
            return Err(SearchError::Invalid(format!(
                "k must be 1-{MAX_K}, found {k}"
            )));
        }
        if query.iter().any(|v| !v.is_finite()) {
            return Err(SearchError::Invalid(
                "the query embedding holds a non-finite value".into(),
            ));
        }
        Ok(nearest(&self.embeddings, self.dim, query, k))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SearchError> {
        let n = self.len();
        let embeddings: Vec<u8> = self
            .embeddings
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let labels: Vec<u8> = self.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = |dtype, shape, data| {
            TensorView::new(dtype, shape, data).map_err(|e| SearchError::Invalid(e.to_string()))
        };
        let tensors = BTreeMap::from([
            (
                "embeddings",
                view(Dtype::F32, vec![n, self.dim], &embeddings)?,
            ),
            ("labels", view(Dtype::U32, vec![n], &labels)?),
        ]);
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialise");
        let mut meta = HashMap::from([
            (keys::FORMAT.to_string(), FORMAT.to_string()),
            (keys::VERSION.to_string(), FORMAT_VERSION.to_string()),
            (keys::MODEL.to_string(), self.model_fingerprint.clone()),
            (keys::CLASSES.to_string(), json(&self.class_names)),
        ]);
        if !self.paths.is_empty() {
            meta.insert(keys::PATHS.to_string(), json(&self.paths));
        }
        safetensors::serialize(tensors, Some(meta)).map_err(|e| SearchError::Invalid(e.to_string()))
    }

    /// Reads a gallery from a file's bytes (`path` names it in errors). Everything is
    /// checked: the format name and version, the dtypes and shapes, matching counts,
    /// finite values, labels that name classes.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, SearchError> {
        let bad = |detail: String| SearchError::BadFile {
            path: path.to_path_buf(),
            detail,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("no {key:?} entry in the metadata")))
        };
        if get(keys::FORMAT)? != FORMAT {
            return Err(bad(format!("the metadata's format is not {FORMAT:?}")));
        }
        let version = get(keys::VERSION)?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version:?}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, SearchError> {
            match meta.get(key) {
                None => Ok(Vec::new()),
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| bad(format!("{key:?} is not a JSON array of strings ({e})"))),
            }
        };
        let class_names = strings(keys::CLASSES)?;
        let paths = strings(keys::PATHS)?;
        let names = file.names();
        if names.len() != 2 {
            return Err(bad(format!(
                "expected the tensors embeddings and labels, found {names:?}"
            )));
        }
        let tensor = |name: &str, dtype: Dtype, rank: usize| {
            let t = file
                .tensor(name)
                .map_err(|_| bad(format!("no {name:?} tensor")))?;
            if t.dtype() != dtype || t.shape().len() != rank {
                return Err(bad(format!(
                    "{name:?} must be {dtype:?} of rank {rank}, found {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t)
        };
        let e = tensor("embeddings", Dtype::F32, 2)?;
        let l = tensor("labels", Dtype::U32, 1)?;
        let (n, dim) = (e.shape()[0], e.shape()[1]);
        if l.shape()[0] != n {
            return Err(bad(format!("{} labels for {n} embeddings", l.shape()[0])));
        }
        let f32s = e
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let u32s = l
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let model = get(keys::MODEL)?.clone();
        Self::new(dim, f32s, u32s, class_names, paths, model).map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gallery() -> Gallery {
        Gallery::new(
            2,
            vec![0.0, 0.0, 1.0, 0.0, 3.0, 4.0],
            vec![0, 1, 1],
            vec!["<b>a</b>".into(), "b".into()],
            vec!["x/1.png".into(), "y/2.png".into(), "y/3.png".into()],
            "abc".into(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_keeps_everything() {
        let g = gallery();
        let back = Gallery::from_bytes(&g.to_bytes().unwrap(), Path::new("g")).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.path(2), Some("y/3.png"));
        assert_eq!(back.class_name(back.label(0)), "<b>a</b>");
        let hits = back.search(&[3.0, 4.0], 5).unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!((hits[0].index, hits[0].distance), (2, 0.0));
        assert_eq!((hits[1].index, hits[1].distance), (1, 20f32.sqrt()));
        assert_eq!((hits[2].index, hits[2].distance), (0, 5.0));
    }

    #[test]
    fn bad_parts_and_queries_are_clear_errors() {
        let err = |r: Result<Gallery, SearchError>| r.unwrap_err().to_string();
        let names = || vec!["a".to_string()];
        // Issue #28: an empty gallery answered every query with nothing, exit 0.
        assert!(err(Gallery::new(2, vec![], vec![], names(), vec![], "m".into())).contains("none"));
        assert!(err(Gallery::new(
            2,
            vec![0.0; 3],
            vec![0, 0],
            names(),
            vec![],
            "m".into()
        ))
        .contains("3 values are not 2 embeddings"));
        assert!(err(Gallery::new(
            1,
            vec![f32::NAN],
            vec![0],
            names(),
            vec![],
            "m".into()
        ))
        .contains("non-finite"));
        assert!(err(Gallery::new(
            1,
            vec![0.0],
            vec![3],
            names(),
            vec![],
            "m".into()
        ))
        .contains("label 3 names no class"));
        assert!(err(Gallery::new(
            1,
            vec![0.0],
            vec![0],
            names(),
            vec!["a".into(), "b".into()],
            "m".into()
        ))
        .contains("2 paths for 1 embeddings"));
        assert!(
            err(Gallery::new(0, vec![], vec![], names(), vec![], "m".into())).contains("dimension")
        );
        let g = gallery();
        assert!(g
            .search(&[1.0], 1)
            .unwrap_err()
            .to_string()
            .contains("the query has 1 values"));
        assert!(g
            .search(&[1.0, f32::INFINITY], 1)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
        assert!(g
            .search(&[1.0, 0.0], 0)
            .unwrap_err()
            .to_string()
            .contains("k must be"));
        assert!(g.check_model("abc").is_ok());
        assert!(g
            .check_model("xyz")
            .unwrap_err()
            .to_string()
            .contains("another model"));
    }

    /// Forged files: truncated, another safetensors file, wrong dtype, mismatched
    /// counts, NaN, a label out of range, a newer version: each refused, naming the file.
    #[test]
    fn forged_files_are_refused_with_the_file_named() {
        let path = Path::new("forged.safetensors");
        let good = gallery().to_bytes().unwrap();
        let refuse = |bytes: &[u8], needle: &str| {
            let e = Gallery::from_bytes(bytes, path).unwrap_err().to_string();
            assert!(
                e.contains("forged.safetensors") && e.contains(needle),
                "{e}"
            );
        };
        refuse(&good[..good.len() - 3], "not a safetensors file");
        refuse(b"hello", "not a safetensors file");
        let write = |e: TensorView, l: TensorView, meta: Vec<(&str, &str)>| {
            let meta: HashMap<String, String> = meta
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            safetensors::serialize(
                BTreeMap::from([("embeddings", e), ("labels", l)]),
                Some(meta),
            )
            .unwrap()
        };
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let u = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let meta = vec![
            ("format", FORMAT),
            ("format_version", "1"),
            ("model_fingerprint", "m"),
            ("class_names", r#"["a","b"]"#),
        ];
        // A file of `embeddings` (dtype, [2, 1]) and `labels`, with `meta`.
        let forged = |dtype: Dtype, e: &[u8], l: &[u32], meta: Vec<(&str, &str)>| {
            let l = u(l);
            write(
                TensorView::new(dtype, vec![2, 1], e).unwrap(),
                TensorView::new(Dtype::U32, vec![l.len() / 4], &l).unwrap(),
                meta,
            )
        };
        let e2 = f(&[0.0, 1.0]);
        let ok = forged(Dtype::F32, &e2, &[0, 1], meta.clone());
        assert_eq!(Gallery::from_bytes(&ok, path).unwrap().len(), 2);
        refuse(
            &forged(Dtype::F32, &e2, &[0], meta.clone()),
            "1 labels for 2 embeddings",
        );
        refuse(
            &forged(Dtype::I32, &e2, &[0, 1], meta.clone()),
            "must be F32",
        );
        refuse(
            &forged(Dtype::F32, &f(&[0.0, f32::NAN]), &[0, 1], meta.clone()),
            "non-finite",
        );
        refuse(
            &forged(Dtype::F32, &e2, &[0, 9], meta.clone()),
            "label 9 names no class",
        );
        let mut newer = meta.clone();
        newer[1] = ("format_version", "2");
        refuse(
            &forged(Dtype::F32, &e2, &[0, 1], newer),
            "format version \"2\"",
        );
        let mut other = meta.clone();
        other[0] = ("format", "pytorch");
        refuse(&forged(Dtype::F32, &e2, &[0, 1], other), "format is not");
    }
}
