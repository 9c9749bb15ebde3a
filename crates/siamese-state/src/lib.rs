//! One state protocol for everything a run saves and resumes.
//!
//! A component that carries state between steps (the tower's parameters and dropout
//! generator, the optimiser's moments, a pair sampler's generator, the augmenter)
//! implements [`Stateful`]: it gives its state as a [`StateDict`] (named tensors plus
//! named metadata strings) and takes one back. A run nests the components' dicts under
//! prefixes (`model.`, `adam.`, `sampler.`) and saves the whole as one safetensors file,
//! so a custom sampler or embedder resumes exactly like the built-in ones: it only has
//! to implement this trait.
//!
//! Files are written by [`write_safetensors`], the one safetensors writer of the
//! workspace: it refuses NaN and infinity before anything is written (the previous file
//! stays), lists the metadata in key order (equal states give equal bytes) and replaces
//! the file atomically.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use siamese_state::{StateDict, StateError, Stateful};
//!
//! /// A running mean: a tensor and a count.
//! struct RunningMean {
//!     mean: Tensor,
//!     seen: u64,
//! }
//!
//! impl Stateful for RunningMean {
//!     fn state_dict(&self) -> Result<StateDict, StateError> {
//!         let mut state = StateDict::new();
//!         state.insert_tensor("mean", self.mean.clone());
//!         state.insert_json("seen", &self.seen);
//!         Ok(state)
//!     }
//!
//!     fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
//!         self.mean = state.tensor_like("mean", &self.mean)?.clone();
//!         self.seen = state.json("seen")?;
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("last.safetensors");
//! let a = RunningMean { mean: Tensor::new(&[1.5f32, -2.0], &Device::Cpu)?, seen: 7 };
//! let mut run = StateDict::new();
//! run.nest("stats", a.state_dict()?);
//! run.save(&path)?;
//!
//! let mut b = RunningMean { mean: Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?, seen: 0 };
//! b.load_state_dict(&StateDict::load(&path, &Device::Cpu)?.child("stats"))?;
//! assert_eq!((b.mean.to_vec1::<f32>()?, b.seen), (vec![1.5, -2.0], 7));
//!
//! // A state with NaN is refused, and the previous file stays.
//! let broken = RunningMean { mean: Tensor::new(&[f32::NAN, 0.0], &Device::Cpu)?, seen: 8 };
//! let mut run = StateDict::new();
//! run.nest("stats", broken.state_dict()?);
//! assert!(matches!(run.save(&path), Err(StateError::NonFinite { .. })));
//! assert_eq!(StateDict::load(&path, &Device::Cpu)?.child("stats").json::<u64>("seen")?, 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What can go wrong saving, loading or restoring a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An entry the component needs is absent.
    #[error("the state lacks {key:?}")]
    Missing {
        /// The entry's full key.
        key: String,
    },
    /// An entry is present but unusable (wrong shape, dtype, kind or text).
    #[error("state entry {key:?}: {detail}")]
    Invalid {
        /// The entry's full key.
        key: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// A tensor holds NaN or infinity: refused on save and on load.
    #[error("tensor {name:?} holds NaN or infinity")]
    NonFinite {
        /// The tensor's full key.
        name: String,
    },
    /// A file holds a tensor with NaN or infinity: refused on load.
    #[error("{}: tensor {name:?} holds NaN or infinity", path.display())]
    NonFiniteInFile {
        /// The file.
        path: PathBuf,
        /// The tensor's full key.
        name: String,
    },
    /// The file could not be read or written.
    // The cause is in the message and deliberately not `source()`, so anyhow's `{:#}`
    // does not print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is not a (complete) safetensors file.
    #[error("{}: not a valid safetensors file: {detail}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A component whose state can be saved and restored: the protocol every resumable
/// part of a run implements.
pub trait Stateful {
    /// The current state: tensors and metadata under keys the component chooses.
    fn state_dict(&self) -> Result<StateDict, StateError>;
    /// Continues from a state [`Stateful::state_dict`] gave (possibly read back from a
    /// file); refuses, naming the entry, a state that lacks something or does not fit.
    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError>;
}

impl<T: Stateful + ?Sized> Stateful for Box<T> {
    fn state_dict(&self) -> Result<StateDict, StateError> {
        (**self).state_dict()
    }

    fn load_state_dict(&mut self, state: &StateDict) -> Result<(), StateError> {
        (**self).load_state_dict(state)
    }
}

/// Named tensors and named metadata strings: one component's state, or a whole run's
/// with each component's nested under a prefix.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    /// Where this dict sits in the one it was taken from (`"model."`), so errors name
    /// an entry by its full key, as it is in the file.
    prefix: String,
}

impl StateDict {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a tensor.
    pub fn insert_tensor(&mut self, key: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(key.into(), tensor);
    }

    /// Adds (or replaces) a metadata entry holding `value` as JSON.
    pub fn insert_json<T: Serialize + ?Sized>(&mut self, key: impl Into<String>, value: &T) {
        let text = serde_json::to_string(value).expect("state values serialise to JSON");
        self.metadata.insert(key.into(), text);
    }

    /// Adds (or replaces) a metadata entry as it is.
    pub fn insert_text(&mut self, key: impl Into<String>, text: impl Into<String>) {
        self.metadata.insert(key.into(), text.into());
    }

    /// The tensor under `key`.
    pub fn tensor(&self, key: &str) -> Result<&Tensor, StateError> {
        self.tensors.get(key).ok_or_else(|| self.missing(key))
    }

    /// The tensor under `key`, which must have the shape and dtype of `like` (the value
    /// it is about to replace).
    pub fn tensor_like(&self, key: &str, like: &Tensor) -> Result<&Tensor, StateError> {
        let t = self.tensor(key)?;
        if t.dims() != like.dims() || t.dtype() != like.dtype() {
            return Err(self.invalid(
                key,
                format!(
                    "shape {:?} {:?}, expected {:?} {:?}",
                    t.dims(),
                    t.dtype(),
                    like.dims(),
                    like.dtype()
                ),
            ));
        }
        Ok(t)
    }

    /// The metadata entry under `key` parsed from JSON.
    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<T, StateError> {
        let text = self.text(key)?;
        serde_json::from_str(text).map_err(|e| self.invalid(key, e.to_string()))
    }

    /// The metadata entry under `key` as it is.
    pub fn text(&self, key: &str) -> Result<&str, StateError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.missing(key))
    }

    /// Whether a tensor or metadata entry is under `key`, or any under `key.`.
    pub fn contains(&self, key: &str) -> bool {
        let nested = format!("{key}.");
        self.tensors
            .keys()
            .chain(self.metadata.keys())
            .any(|k| k == key || k.starts_with(&nested))
    }

    /// Puts every entry of `child` under `prefix.`.
    pub fn nest(&mut self, prefix: &str, child: StateDict) {
        for (k, t) in child.tensors {
            self.tensors.insert(format!("{prefix}.{k}"), t);
        }
        for (k, v) in child.metadata {
            self.metadata.insert(format!("{prefix}.{k}"), v);
        }
    }

    /// The entries under `prefix.`, with the prefix taken off (tensors are shared, not
    /// copied).
    pub fn child(&self, prefix: &str) -> StateDict {
        let p = format!("{prefix}.");
        let strip = |k: &String| k.strip_prefix(&p).map(str::to_string);
        StateDict {
            tensors: self
                .tensors
                .iter()
                .filter_map(|(k, t)| Some((strip(k)?, t.clone())))
                .collect(),
            metadata: self
                .metadata
                .iter()
                .filter_map(|(k, v)| Some((strip(k)?, v.clone())))
                .collect(),
            prefix: format!("{}{p}", self.prefix),
        }
    }

    /// Every tensor, by key in order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// Every metadata entry, by key in order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// An error for an entry that does not fit, named by its full key.
    pub fn invalid(&self, key: &str, detail: impl Into<String>) -> StateError {
        StateError::Invalid {
            key: format!("{}{key}", self.prefix),
            detail: detail.into(),
        }
    }

    fn missing(&self, key: &str) -> StateError {
        StateError::Missing {
            key: format!("{}{key}", self.prefix),
        }
    }

    /// Writes the state to `path` through [`write_safetensors`]: refused with NaN or
    /// infinity in any tensor (the previous file stays), deterministic, atomic.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        write_safetensors(path, tensors, &self.metadata)
    }

    /// Reads a state [`StateDict::save`] wrote, onto `device`. A file that is not
    /// safetensors, or holds NaN or infinity, is refused with the file named.
    pub fn load(path: &Path, device: &Device) -> Result<Self, StateError> {
        let bytes = std::fs::read(path).map_err(|error| StateError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let not_safetensors = |detail: String| StateError::NotSafetensors {
            path: path.to_path_buf(),
            detail,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| not_safetensors(e.to_string()))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let tensors: BTreeMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device)
                .map_err(|e| not_safetensors(e.to_string()))?
                .into_iter()
                .collect();
        if let Some(name) = first_non_finite(tensors.iter().map(|(k, t)| (k.as_str(), t)))? {
            return Err(StateError::NonFiniteInFile {
                path: path.to_path_buf(),
                name,
            });
        }
        Ok(Self {
            tensors,
            metadata,
            prefix: String::new(),
        })
    }
}

/// Writes `tensors` and `metadata` as a safetensors file: the one writer of every
/// safetensors file this project makes (checkpoints, resume states, embeddings).
///
/// - Refuses, before writing anything, a tensor holding NaN or infinity (named in the
///   error), so the previous file stays: a diverged run never overwrites good weights.
/// - Deterministic: the header lists the metadata in key order (the safetensors crate
///   writes it in hash-map order), so two equal states give byte-identical files.
/// - Atomic: a temporary file beside the target, flushed, then renamed over it
///   ([`siamese_fs::write_atomic`]).
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), StateError> {
    if let Some(name) = first_non_finite(tensors.iter().map(|(n, t)| (n.as_str(), t)))? {
        return Err(StateError::NonFinite { name });
    }
    let serialising = |detail: String| StateError::NotSafetensors {
        path: path.to_path_buf(),
        detail: format!("serialising: {detail}"),
    };
    let bytes = safetensors::serialize(tensors, None).map_err(|e| serialising(e.to_string()))?;
    let bytes = with_sorted_metadata(&bytes, metadata).map_err(serialising)?;
    siamese_fs::write_atomic(path, &bytes).map_err(|error| StateError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The name of the first tensor (in the order given) holding NaN or infinity, if any.
///
/// Run after every training step over all weights, so it is one pass per tensor with
/// no tensor-sized allocation and one scalar read in all: a tensor's sum is finite
/// whenever all its values are (NaN and infinities propagate), so only a non-finite
/// sum needs a second look, exact this time (`0 * x` summed is 0 for finite values
/// and NaN otherwise), which tells a NaN from a finite sum that overflowed.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<String>, candle_core::Error> {
    let tensors: Vec<(&str, &Tensor)> = tensors.into_iter().collect();
    if tensors.is_empty() {
        return Ok(None);
    }
    let sums = tensors
        .iter()
        .map(|(_, t)| t.to_dtype(DType::F32)?.sum_all())
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    for ((name, t), sum) in tensors.iter().zip(sums) {
        if sum.is_finite() {
            continue;
        }
        let zero_if_finite = t
            .affine(0.0, 0.0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if zero_if_finite != 0.0 {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// Rewrites the header of a serialised safetensors file (written without metadata)
/// with `metadata` and every entry in key order.
fn with_sorted_metadata(
    bytes: &[u8],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("no header length")?;
    let header = bytes.get(8..8 + n).ok_or("header past the end")?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| e.to_string())?;
    entries.remove("__metadata__");
    if !metadata.is_empty() {
        let sorted: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        entries.insert("__metadata__".into(), serde_json::Value::Object(sorted));
    }
    let mut header = serde_json::to_vec(&entries).map_err(|e| e.to_string())?;
    // The data must start at a multiple of 8 bytes; safetensors pads with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn nesting_round_trips_and_errors_name_the_full_key() {
        let mut inner = StateDict::new();
        inner.insert_tensor("w", t(&[1.0, 2.0]));
        inner.insert_json("step", &3u64);
        let mut outer = StateDict::new();
        outer.nest("adam", inner);
        assert_eq!(
            outer.tensors().map(|(k, _)| k).collect::<Vec<_>>(),
            ["adam.w"]
        );
        assert!(outer.contains("adam") && outer.contains("adam.step") && !outer.contains("ada"));
        let back = outer.child("adam");
        assert_eq!(back.json::<u64>("step").unwrap(), 3);
        assert_eq!(
            back.tensor("w").unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0]
        );
        let missing = back.tensor("v").unwrap_err().to_string();
        assert_eq!(missing, "the state lacks \"adam.v\"");
        let shape = back
            .tensor_like("w", &t(&[0.0; 3]))
            .unwrap_err()
            .to_string();
        assert!(
            shape.contains("\"adam.w\"") && shape.contains("[2]") && shape.contains("[3]"),
            "{shape}"
        );
        let text = back.json::<String>("step").unwrap_err().to_string();
        assert!(text.starts_with("state entry \"adam.step\""), "{text}");
    }

    #[test]
    fn equal_states_give_equal_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, order: &[&str]| {
            let mut s = StateDict::new();
            for k in order {
                s.insert_text(*k, format!("value of {k}"));
            }
            s.insert_tensor("x", t(&[1.0]));
            let path = dir.path().join(name);
            s.save(&path).unwrap();
            std::fs::read(path).unwrap()
        };
        let a = write("a", &["one", "two", "three", "four"]);
        let b = write("b", &["four", "three", "two", "one"]);
        assert_eq!(a, b);
    }

    #[test]
    fn non_finite_tensors_are_refused_on_save_and_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let mut good = StateDict::new();
        good.insert_tensor("a", t(&[1.0]));
        good.save(&path).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut s = StateDict::new();
            s.insert_tensor("a", t(&[1.0]));
            s.insert_tensor("b", t(&[0.0, bad]));
            let err = s.save(&path).unwrap_err();
            assert!(
                matches!(&err, StateError::NonFinite { name } if name == "b"),
                "{err}"
            );
        }
        // The file written before is intact.
        let back = StateDict::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.tensor("a").unwrap().to_vec1::<f32>().unwrap(), [1.0]);
        assert!(!back.contains("b"));

        // A file holding NaN (written by another tool) is refused on load, named.
        let forged = dir.path().join("forged.safetensors");
        let bytes = safetensors::serialize([("w".to_string(), t(&[f32::NAN]))], None).unwrap();
        std::fs::write(&forged, bytes).unwrap();
        let err = StateDict::load(&forged, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forged.safetensors")
                && err.contains("\"w\" holds NaN")
                && !err.contains("not a valid"),
            "{err}"
        );
    }

    #[test]
    fn a_sum_that_overflows_is_not_mistaken_for_nan() {
        let big = t(&[f32::MAX, f32::MAX]);
        assert_eq!(first_non_finite([("big", &big)]).unwrap(), None);
    }

    #[test]
    fn files_that_are_not_safetensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"not a tensor file").unwrap();
        let err = StateDict::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("junk.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
        let err = StateDict::load(&dir.path().join("absent"), &Device::Cpu).unwrap_err();
        assert!(matches!(err, StateError::Io { .. }));
    }
}
