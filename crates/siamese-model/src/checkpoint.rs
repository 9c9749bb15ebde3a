//! Self-describing safetensors checkpoints.
//!
//! Tensors carry PyTorch-style names and layouts (see the crate docs for the mapping to
//! `torch.nn`), and the file's metadata holds `format = "siamese-tower"`,
//! `format_version = "1"` and `model_config` (the [`TowerConfig`] as JSON), plus any
//! extra entries the caller adds (the trainer stores the verification threshold). So
//! loading needs only the file.
//!
//! A checkpoint may also hold the score-normalisation cohort ([`COHORT_TENSOR`]): the
//! embeddings of training images that `siamese verify` judges a distance against. It is
//! no parameter: the tower, its fingerprint and ONNX export ignore it, and PyTorch
//! users drop it before `load_state_dict`.
//!
//! Saving is atomic: the bytes go to a temporary file beside the target, which is
//! flushed and then renamed over it. A crash mid-save leaves the previous checkpoint
//! intact, and weights holding NaN or infinity are refused before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use safetensors::SafeTensors;

use crate::config::TowerConfig;
use crate::error::ModelError;
use crate::tower::ConvTower;

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "siamese-tower";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata keys this module owns; extra entries may not use them.
pub const RESERVED_KEYS: [&str; 3] = ["format", "format_version", "model_config"];

/// The optional tensor holding the score-normalisation cohort: `[rows, embedding
/// dimension]` f32 embeddings of training images, finite.
pub const COHORT_TENSOR: &str = "score_norm.cohort";

/// The metadata entries a trained model carries besides the [`RESERVED_KEYS`]: written
/// by the trainer (siamese-train), read by the commands that use a model (siamese-cli),
/// named once here so that both sides agree.
pub mod keys {
    /// The validation distance threshold (a finite number >= 0; checked on load).
    pub const THRESHOLD: &str = "threshold";
    /// The step the model was saved at.
    pub const STEP: &str = "step";
    /// The data set's name or folder.
    pub const DATA: &str = "data";
    /// What to do to an image file (JSON `Preprocessing`).
    pub const PREPROCESSING: &str = "preprocessing";
    /// An image folder's split and size (JSON `FolderOptions`).
    pub const IMAGE_FOLDER: &str = "image_folder";
    /// The held-out classes (JSON list).
    pub const HOLDOUT_CLASSES: &str = "holdout_classes";
    /// Omniglot's image size and split (JSON `OmniglotOptions`).
    pub const OMNIGLOT: &str = "omniglot";
    /// How to score a pair against the cohort tensor (JSON `ScoreNormRecord`).
    pub const SCORE_NORM: &str = "score_norm";
}

/// A checkpoint read and validated.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The tower's configuration.
    pub config: TowerConfig,
    /// Every parameter, by name.
    pub tensors: HashMap<String, Tensor>,
    /// Extra metadata entries (everything but [`RESERVED_KEYS`]).
    pub metadata: BTreeMap<String, String>,
    /// The score-normalisation cohort ([`COHORT_TENSOR`]), when the file holds one.
    pub cohort: Option<Tensor>,
}

/// Saves the tower parameters held in `varmap` with `config` and `extra` metadata.
pub fn save(
    path: &Path,
    varmap: &VarMap,
    config: &TowerConfig,
    extra: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    save_with_cohort(path, varmap, config, extra, None)
}

/// [`save`], with a score-normalisation `cohort` (`[rows, output_dim]`) beside the
/// parameters.
pub fn save_with_cohort(
    path: &Path,
    varmap: &VarMap,
    config: &TowerConfig,
    extra: &BTreeMap<String, String>,
    cohort: Option<&Tensor>,
) -> Result<(), ModelError> {
    if let Some(text) = extra.get(keys::THRESHOLD) {
        threshold_value(text)
            .map_err(|detail| ModelError::Config(format!("threshold: {detail}")))?;
    }
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut tensors = Vec::new();
    for (name, _) in config.parameter_shapes() {
        let var = data.get(&name).ok_or_else(|| {
            ModelError::Config(format!("the model has no parameter {name:?} to save"))
        })?;
        tensors.push((name, var.as_tensor().clone()));
    }
    drop(data);
    if let Some(cohort) = cohort {
        let dims = cohort.dims();
        if dims.len() != 2 || dims[0] == 0 || dims[1] != config.output_dim() {
            return Err(ModelError::Config(format!(
                "a score-normalisation cohort is [rows >= 1, {}], not {dims:?}",
                config.output_dim()
            )));
        }
        tensors.push((COHORT_TENSOR.to_string(), cohort.to_dtype(DType::F32)?));
    }
    let mut metadata: BTreeMap<String, String> = extra
        .iter()
        .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("format_version".into(), FORMAT_VERSION.to_string());
    metadata.insert(
        "model_config".into(),
        serde_json::to_string(config).expect("configs serialise"),
    );
    write_safetensors(path, tensors, &metadata)
}

/// Writes `tensors` and `metadata` through [`siamese_state::write_safetensors`], the
/// one safetensors writer of the workspace: NaN or infinity refused (the previous file
/// stays), metadata in key order, atomic replace.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    Ok(siamese_state::write_safetensors(path, tensors, metadata)?)
}

/// The name of the first tensor (in the order given) holding NaN or infinity, if any
/// ([`siamese_state::first_non_finite`]).
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<String>, ModelError> {
    Ok(siamese_state::first_non_finite(tensors)?)
}

impl Checkpoint {
    /// SHA-256 (hex) of what the model computes: its config and every tensor (names in
    /// order, shapes, f32 values), not the metadata, so saving the threshold into the
    /// file keeps it. Galleries record it to refuse queries embedded by another model.
    pub fn fingerprint(&self) -> Result<String, ModelError> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(
            serde_json::to_vec(&self.config).map_err(|e| ModelError::Config(e.to_string()))?,
        );
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &self.tensors[name];
            hash.update((name.len() as u64).to_le_bytes());
            hash.update(name.as_bytes());
            for &d in t.dims() {
                hash.update((d as u64).to_le_bytes());
            }
            let values = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            hash.update(&bytes);
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Reads and validates a checkpoint: the file, its metadata, and every tensor's
/// presence, name, shape and dtype against the config it carries.
pub fn read(path: &Path, device: &Device) -> Result<Checkpoint, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::NotSafetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let meta_err = |detail: String| ModelError::Metadata {
        path: path.to_path_buf(),
        detail,
    };
    let meta = header.metadata().clone().ok_or_else(|| {
        meta_err("no metadata: this is not a siamese checkpoint (expected format, format_version and model_config entries)".into())
    })?;
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(meta_err(format!(
                "metadata format is {other:?}, expected {FORMAT:?}"
            )))
        }
    }
    let version = meta
        .get("format_version")
        .ok_or_else(|| meta_err("metadata has no format_version".into()))?;
    if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(meta_err(format!(
            "unsupported format_version {version:?}: this build reads version {FORMAT_VERSION}"
        )));
    }
    let config_json = meta
        .get("model_config")
        .ok_or_else(|| meta_err("metadata has no model_config".into()))?;
    let config: TowerConfig = serde_json::from_str(config_json)
        .map_err(|e| meta_err(format!("model_config is not a valid tower config: {e}")))?;
    config
        .validate()
        .map_err(|e| meta_err(format!("model_config: {e}")))?;

    let expected = config.parameter_shapes();
    let known: HashMap<&str, &Vec<usize>> = expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    if let Some(name) = names
        .iter()
        .find(|n| !known.contains_key(n.as_str()) && n.as_str() != COHORT_TENSOR)
    {
        return Err(ModelError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.clone(),
        });
    }
    let mut tensors = HashMap::new();
    for (name, shape) in &expected {
        let view = st.tensor(name).map_err(|_| ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            expected: shape.clone(),
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(ModelError::TensorDType {
                path: path.to_path_buf(),
                name: name.clone(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape.as_slice() {
            return Err(ModelError::TensorShape {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, shape, device)?;
        tensors.insert(name.clone(), t);
    }
    check_values(path, &expected, &tensors)?;
    let cohort = read_cohort(path, &st, config.output_dim(), device)?;
    let metadata: BTreeMap<String, String> = meta
        .into_iter()
        .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
        .collect();
    if let Some(text) = metadata.get(keys::THRESHOLD) {
        threshold_value(text).map_err(|detail| meta_err(format!("threshold: {detail}")))?;
    }
    Ok(Checkpoint {
        config,
        tensors,
        metadata,
        cohort,
    })
}

/// The [`COHORT_TENSOR`] of a file, if it holds one: f32, `[rows >= 1, dim]`, finite.
fn read_cohort(
    path: &Path,
    st: &SafeTensors,
    dim: usize,
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    let Ok(view) = st.tensor(COHORT_TENSOR) else {
        return Ok(None);
    };
    let name = COHORT_TENSOR.to_string();
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(ModelError::TensorDType {
            path: path.to_path_buf(),
            name,
            found: format!("{:?}", view.dtype()),
        });
    }
    let shape = view.shape();
    if shape.len() != 2 || shape[0] == 0 || shape[1] != dim {
        return Err(ModelError::TensorShape {
            path: path.to_path_buf(),
            name,
            expected: vec![shape.first().copied().unwrap_or(1).max(1), dim],
            found: shape.to_vec(),
        });
    }
    let t = Tensor::from_raw_buffer(view.data(), DType::F32, shape, device)?;
    if first_non_finite([(COHORT_TENSOR, &t)])?.is_some() {
        return Err(ModelError::BadValues {
            path: path.to_path_buf(),
            name,
            detail: "holds NaN or infinity".into(),
        });
    }
    Ok(Some(t))
}

/// Values no trained model holds, refused on load with the tensor named: NaN or
/// infinity anywhere, a negative batch-norm running variance (its square root is NaN).
fn check_values(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    tensors: &HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    let bad = |name: &str, detail: &str| ModelError::BadValues {
        path: path.to_path_buf(),
        name: name.to_string(),
        detail: detail.to_string(),
    };
    let in_order = expected.iter().map(|(n, _)| (n.as_str(), &tensors[n]));
    if let Some(name) = first_non_finite(in_order)? {
        return Err(bad(&name, "holds NaN or infinity"));
    }
    for (name, _) in expected.iter().filter(|(n, _)| n.ends_with(".running_var")) {
        let min = tensors[name].flatten_all()?.min(0)?.to_scalar::<f32>()?;
        if min < 0.0 {
            return Err(bad(name, &format!("holds a negative variance ({min})")));
        }
    }
    Ok(())
}

/// Parses a distance threshold as checkpoints store it (and users pass it): a finite,
/// non-negative number, or an error saying what it is instead.
pub fn threshold_value(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!(
            "{t} is not a distance threshold (a finite number >= 0)"
        )),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

/// Loads a tower from a checkpoint; its parameters live in the returned `VarMap`
/// (so training can continue from them). Dropout is seeded with `dropout_seed`.
pub fn load_tower(
    path: &Path,
    device: &Device,
    dropout_seed: u64,
) -> Result<(ConvTower, VarMap, Checkpoint), ModelError> {
    let checkpoint = read(path, device)?;
    // The variables are made from the file's tensors before the tower is built, so the
    // builder finds each one in place: no random initialisation is drawn and then
    // overwritten (`read` has checked that the file holds exactly the config's tensors).
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in &checkpoint.tensors {
            vars.insert(name.clone(), Var::from_tensor(value)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let mut tower = ConvTower::new(&checkpoint.config, vb, dropout_seed)?;
    tower.set_origin(path);
    if varmap.all_vars().len() != checkpoint.tensors.len() {
        return Err(ModelError::Config(format!(
            "{}: the tower needs {} parameters, the file gave {}",
            path.display(),
            varmap.all_vars().len(),
            checkpoint.tensors.len()
        )));
    }
    tower.set_dropout_state(crate::DropoutState {
        seed: dropout_seed,
        word_pos: 0,
    });
    Ok((tower, varmap, checkpoint))
}
