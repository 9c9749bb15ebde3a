//! Checkpoints: bit-identical round trips (batch-norm running statistics included),
//! atomic saving that never overwrites a good file with bad weights, and one typed error
//! per way a file can be wrong.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use siamese_model::checkpoint::{load_tower, read, save, save_with_cohort, COHORT_TENSOR};
use siamese_model::{ConvTower, Embedder, ModelError, TowerConfig};

fn small() -> TowerConfig {
    TowerConfig {
        input_height: 8,
        input_width: 8,
        conv_channels: vec![4, 8],
        conv_strides: vec![1, 2],
        fc_widths: vec![16],
        embedding_dim: 2,
        ..Default::default()
    }
}

fn images(config: &TowerConfig) -> Tensor {
    let n = 5 * config.input_height * config.input_width;
    let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    Tensor::from_vec(
        v,
        (5, 1, config.input_height, config.input_width),
        &Device::Cpu,
    )
    .unwrap()
}

/// A trained-looking tower saved to `path` (running statistics moved off the identity).
fn saved(path: &Path) -> (ConvTower, candle_nn::VarMap) {
    let config = small();
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 11).unwrap();
    tower.forward_t(&images(&config), true).unwrap();
    let extra = BTreeMap::from([("threshold".to_string(), "0.75".to_string())]);
    save(path, &varmap, &config, &extra).unwrap();
    (tower, varmap)
}

/// Writes a safetensors file with the given tensors and metadata.
fn write_raw(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) {
    let bytes = safetensors::serialize(
        tensors.iter().map(|(k, v)| (k.clone(), v.clone())),
        metadata,
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn valid_parts(path: &Path) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let loaded = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (loaded, header.metadata().clone().unwrap())
}

#[test]
fn round_trip_is_bit_identical_and_keeps_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (tower, _) = saved(&path);
    let (loaded, varmap, ckpt) = load_tower(&path, &Device::Cpu, 0).unwrap();
    assert_eq!(ckpt.config, small());
    assert_eq!(
        ckpt.metadata.get("threshold").map(String::as_str),
        Some("0.75")
    );
    let x = images(&small());
    let before = tower
        .forward_t(&x, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let after = loaded
        .forward_t(&x, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(
        before, after,
        "inference must be bit-identical after a round trip"
    );
    let stats = varmap.data().lock().unwrap()["bn1.running_var"]
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        stats.iter().any(|&v| v != 1.0),
        "running statistics were saved and restored"
    );
    // Saving what was loaded gives the same tensors again.
    let again = dir.path().join("again.safetensors");
    save(&again, &varmap, &ckpt.config, &ckpt.metadata).unwrap();
    let (a, b) = (
        read(&path, &Device::Cpu).unwrap(),
        read(&again, &Device::Cpu).unwrap(),
    );
    for (name, t) in &a.tensors {
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.tensors[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}"
        );
    }
}

#[test]
fn nan_weights_never_overwrite_a_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (_, varmap) = saved(&path);
    let good = std::fs::read(&path).unwrap();
    {
        let data = varmap.data().lock().unwrap();
        data["fc1.bias"]
            .set(&Tensor::full(f32::NAN, 16, &Device::Cpu).unwrap())
            .unwrap();
    }
    let err = save(&path, &varmap, &small(), &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, ModelError::NonFinite { ref name } if name == "fc1.bias"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the previous checkpoint is intact"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file left behind: {leftovers:?}"
    );
}

#[test]
fn not_safetensors_and_truncated_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let err = read(&junk, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("junk.safetensors"));

    let path = dir.path().join("model.safetensors");
    saved(&path);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = read(&cut, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("cut.safetensors"));

    let missing = read(&dir.path().join("nope.safetensors"), &Device::Cpu).unwrap_err();
    assert!(matches!(missing, ModelError::Io { .. }), "{missing}");
}

#[test]
fn metadata_problems_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("model.safetensors");
    saved(&good);
    let (tensors, meta) = valid_parts(&good);
    let path = dir.path().join("bad.safetensors");

    write_raw(&path, &tensors, None);
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::Metadata { .. }) && err.to_string().contains("no metadata"),
        "{err}"
    );

    let mut m = meta.clone();
    m.insert("format_version".into(), "99".into());
    write_raw(&path, &tensors, Some(m));
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported format_version \"99\""),
        "{err}"
    );

    let mut m = meta.clone();
    m.remove("model_config");
    write_raw(&path, &tensors, Some(m));
    assert!(read(&path, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("no model_config"));

    let mut m = meta;
    m.insert("model_config".into(), "{\"dropout\": 2.0}".into());
    write_raw(&path, &tensors, Some(m));
    assert!(read(&path, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("dropout"));
}

#[test]
fn tensor_problems_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("model.safetensors");
    saved(&good);
    let (tensors, meta) = valid_parts(&good);
    let path = dir.path().join("bad.safetensors");

    let mut t = tensors.clone();
    t.remove("bn1.running_mean");
    write_raw(&path, &t, Some(meta.clone()));
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { ref name, .. } if name == "bn1.running_mean"),
        "{err}"
    );

    let mut t = tensors.clone();
    t.insert(
        "fc9.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    write_raw(&path, &t, Some(meta.clone()));
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::UnexpectedTensor { ref name, .. } if name == "fc9.weight"),
        "{err}"
    );

    let mut t = tensors.clone();
    t.insert(
        "conv2.weight".into(),
        Tensor::zeros((8, 4, 5, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    write_raw(&path, &t, Some(meta.clone()));
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"conv2.weight\" has shape [8, 4, 5, 5], expected [8, 4, 3, 3]"),
        "{err}"
    );

    let mut t = tensors;
    t.insert(
        "fc1.bias".into(),
        Tensor::zeros(16, DType::F64, &Device::Cpu).unwrap(),
    );
    write_raw(&path, &t, Some(meta));
    let err = read(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::TensorDType { ref name, .. } if name == "fc1.bias"),
        "{err}"
    );
}

/// The score-normalisation cohort rides beside the parameters: it round-trips, leaves
/// the tower and its fingerprint alone, and a forged one (wrong width, dtype, NaN) is
/// refused with its name.
#[test]
fn a_cohort_round_trips_and_forged_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("model.safetensors");
    let (_, varmap) = saved(&plain);
    let cpu = &Device::Cpu;
    let rows: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let cohort = Tensor::from_vec(rows.clone(), (3, 2), cpu).unwrap();
    let with = dir.path().join("with.safetensors");
    let meta = BTreeMap::new();
    save_with_cohort(&with, &varmap, &small(), &meta, Some(&cohort)).unwrap();
    let ckpt = read(&with, cpu).unwrap();
    let got = ckpt.cohort.as_ref().unwrap();
    assert_eq!(got.dims(), [3, 2]);
    assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), rows);
    assert!(!ckpt.tensors.contains_key(COHORT_TENSOR));
    let without = read(&plain, cpu).unwrap();
    assert!(without.cohort.is_none());
    assert_eq!(
        ckpt.fingerprint().unwrap(),
        without.fingerprint().unwrap(),
        "the cohort does not change what the model computes"
    );
    load_tower(&with, cpu, 0).unwrap();

    // Saving refuses a cohort of the wrong width before writing.
    let wide = Tensor::zeros((3, 5), DType::F32, cpu).unwrap();
    let refused = dir.path().join("refused.safetensors");
    assert!(save_with_cohort(&refused, &varmap, &small(), &meta, Some(&wide)).is_err());
    assert!(!refused.exists());

    let (tensors, meta) = valid_parts(&with);
    let path = dir.path().join("bad.safetensors");
    let forged = |cohort: Tensor| {
        let mut t = tensors.clone();
        t.insert(COHORT_TENSOR.into(), cohort);
        write_raw(&path, &t, Some(meta.clone()));
        read(&path, cpu).unwrap_err()
    };
    let err = forged(Tensor::zeros((4, 3), DType::F32, cpu).unwrap());
    assert!(
        matches!(err, ModelError::TensorShape { ref name, .. } if name == COHORT_TENSOR),
        "{err}"
    );
    let err = forged(Tensor::zeros(6, DType::F32, cpu).unwrap());
    assert!(matches!(err, ModelError::TensorShape { .. }), "{err}");
    let err = forged(Tensor::zeros((3, 2), DType::F64, cpu).unwrap());
    assert!(matches!(err, ModelError::TensorDType { .. }), "{err}");
    let mut nan = rows.clone();
    nan[3] = f32::NAN;
    let err = forged(Tensor::from_vec(nan, (3, 2), cpu).unwrap());
    assert!(
        matches!(err, ModelError::BadValues { ref name, .. } if name == COHORT_TENSOR)
            && err.to_string().contains("bad.safetensors"),
        "{err}"
    );
}

/// Issue #14, fault 5: values no trained model holds are refused on load, naming the
/// tensor or the metadata entry, instead of answering from broken numbers.
#[test]
fn broken_values_are_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("model.safetensors");
    saved(&good);
    let (tensors, meta) = valid_parts(&good);
    let path = dir.path().join("bad.safetensors");
    let cpu = &Device::Cpu;

    let with = |name: &str, value: f32| {
        let mut t = tensors.clone();
        let shape = t[name].shape().clone();
        let mut v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let middle = v.len() / 2;
        v[middle] = value;
        t.insert(name.into(), Tensor::from_vec(v, shape, cpu).unwrap());
        t
    };
    for (name, value, needle) in [
        ("fc2.weight", f32::NAN, "holds NaN or infinity"),
        ("conv1.weight", f32::INFINITY, "holds NaN or infinity"),
        (
            "bn1.running_mean",
            f32::NEG_INFINITY,
            "holds NaN or infinity",
        ),
        ("bn1.running_var", -1.0, "negative variance"),
    ] {
        write_raw(&path, &with(name, value), Some(meta.clone()));
        let err = read(&path, cpu).unwrap_err();
        assert!(
            matches!(err, ModelError::BadValues { name: ref n, .. } if n == name)
                && err.to_string().contains(needle)
                && err.to_string().contains("bad.safetensors"),
            "{name}: {err}"
        );
    }

    for threshold in ["NaN", "inf", "-1", "near"] {
        let mut m = meta.clone();
        m.insert("threshold".into(), threshold.into());
        write_raw(&path, &tensors, Some(m));
        let err = read(&path, cpu).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{threshold}: {err}");
    }

    let mut config = small();
    config.batch_norm_eps = 1e308;
    let mut m = meta.clone();
    m.insert(
        "model_config".into(),
        serde_json::to_string(&config).unwrap(),
    );
    write_raw(&path, &tensors, Some(m));
    let err = read(&path, cpu).unwrap_err();
    assert!(err.to_string().contains("batch_norm_eps"), "{err}");
}

/// Issue #14, fault 7: a forged, self-consistent config (25004x25004 inputs, strides
/// that bring them back to the stored tensors' 7x7) is refused before anything of its
/// size is allocated.
#[test]
fn configs_beyond_the_limits_are_refused_before_allocating() {
    let forged = TowerConfig {
        input_height: 25_004,
        input_width: 25_004,
        conv_strides: vec![3572, 1, 1],
        ..Default::default()
    };
    // The tensors would match: the flatten size is the default's.
    assert_eq!(forged.flatten_size(), TowerConfig::default().flatten_size());
    let err = forged.validate().unwrap_err().to_string();
    assert!(err.contains("input_height is 25004"), "{err}");

    let cases: [(TowerConfig, &str); 4] = [
        (
            TowerConfig {
                embedding_dim: 1_000_000_000,
                ..Default::default()
            },
            "embedding_dim",
        ),
        (
            TowerConfig {
                fc_widths: vec![65_536, 65_536],
                ..Default::default()
            },
            "parameter count",
        ),
        (
            TowerConfig {
                input_height: 4096,
                input_width: 4096,
                conv_strides: vec![1, 64, 64],
                ..Default::default()
            },
            "activation count",
        ),
        (
            TowerConfig {
                kernel_size: usize::MAX,
                ..Default::default()
            },
            "kernel_size",
        ),
    ];
    for (config, needle) in cases {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    TowerConfig::default().validate().unwrap();
}

/// Issue #14, fault 10: equal states give byte-identical files (the metadata is in
/// key order, not hash-map order), and NaN thresholds are never written.
#[test]
fn equal_states_give_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = small();
    let (_, varmap) = ConvTower::init(&config, &Device::Cpu, 3).unwrap();
    let extra: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .chain([("threshold".to_string(), "0.5".to_string())])
        .collect();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    save(&a, &varmap, &config, &extra).unwrap();
    save(&b, &varmap, &config, &extra).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    // Still a standard safetensors file, with the metadata and data intact.
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["key7"], "value 7");
    let ckpt = read(&a, &Device::Cpu).unwrap();
    assert_eq!(ckpt.metadata["threshold"], "0.5");

    for bad in ["NaN", "inf"] {
        let mut extra = extra.clone();
        extra.insert("threshold".into(), bad.into());
        let err = save(&a, &varmap, &config, &extra).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), bytes, "the file is unchanged");
}
