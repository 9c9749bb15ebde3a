//! `siamese export` checked by the real consumer (issue #27): for each preset's tower at
//! two image sizes, onnxruntime runs the exported file on 500 images of `siamese embed
//! --images`, 7 at a time (a batch size the export never fixed), and its embeddings match
//! within 1e-5; onnx's checker (`full_check`) accepts the file; the threshold and the
//! provenance are in its metadata (`tests/onnx_check.py`). Needs a Python with onnx and
//! onnxruntime: `SIAMESE_ONNX_PYTHON` (CI installs them, see `.ci/run`), else `python3`;
//! without them the test says it was skipped, unless `SIAMESE_ONNX_PYTHON` named one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use siamese_model::{checkpoint, ConvTower, TowerConfig};

mod common;
use common::{assert_one_line_error, check, siamese};

/// The Python to run the check with, or `None` (skipped) when none has onnxruntime.
fn python() -> Option<String> {
    let named = std::env::var("SIAMESE_ONNX_PYTHON").ok();
    let python = named.clone().unwrap_or_else(|| "python3".to_string());
    let ready = Command::new(&python)
        .args(["-c", "import numpy, onnx, onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    match (ready, named) {
        (true, _) => Some(python),
        (false, Some(_)) => panic!("SIAMESE_ONNX_PYTHON={python} has no onnx and onnxruntime"),
        (false, None) => {
            eprintln!("SKIPPED: no onnx and onnxruntime in {python} (set SIAMESE_ONNX_PYTHON)");
            None
        }
    }
}

/// An image folder of 20 classes of 40 PGM images, 16x16: enough for 500 training-split
/// images whatever the split holds out.
fn write_folder(dir: &Path) {
    let mut rng = siamese_data::Rng::new(27);
    for c in 0..20 {
        let class = dir.join(format!("c{c:02}"));
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..40 {
            let mut bytes = b"P5\n16 16\n255\n".to_vec();
            bytes.extend((0..256).map(|p| {
                let stroke = (p / 16 + p % 16 * c) % 20 < 4;
                (if stroke { 180 } else { 10 } + rng.below(60)) as u8
            }));
            std::fs::write(class.join(format!("{i:02}.pgm")), bytes).unwrap();
        }
    }
}

/// A checkpoint of `config` (batch-norm statistics moved off their initial values, so a
/// wrong batch norm in the graph shows) that resizes images to its input size.
fn model(dir: &Path, name: &str, config: &TowerConfig) -> std::path::PathBuf {
    let (_, varmap) = ConvTower::init(config, &Device::Cpu, 5).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let shape = var.as_tensor().shape().clone();
        let n = shape.elem_count();
        let (scale, offset) = match name {
            n if n.ends_with("running_var") => (0.4, 1.0),
            n if n.ends_with("running_mean") => (0.3, 0.0),
            _ => continue,
        };
        let values: Vec<f32> = (0..n)
            .map(|j| offset + scale * (j as f32 * 0.61).sin())
            .collect();
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    let path = dir.join(format!("{name}.safetensors"));
    let preprocessing = serde_json::json!({
        "height": config.input_height, "width": config.input_width, "resize": true,
    });
    // A run of unseen classes also stores a score-normalisation cohort and its record:
    // neither is exported (the threshold of normalised scores means nothing without it).
    let record = r#"{"top_k":2,"threshold":-1.0,"validation_eer":0.1,"plain_validation_eer":0.2}"#;
    let meta = BTreeMap::from([
        ("threshold".to_string(), "0.5".to_string()),
        ("preprocessing".to_string(), preprocessing.to_string()),
        ("score_norm".to_string(), record.to_string()),
    ]);
    let cohort = Tensor::ones(
        (3, config.output_dim()),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    checkpoint::save_with_cohort(&path, &varmap, config, &meta, Some(&cohort)).unwrap();
    path
}

#[test]
fn onnxruntime_gives_the_embeddings_of_siamese_embed() {
    let Some(python) = python() else { return };
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let folder = dir.join("images");
    write_folder(&folder);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_check.py");
    for (preset, sizes) in [
        ("default", [(28, 28), (32, 24)]),
        ("open-set", [(28, 28), (20, 20)]),
        ("omniglot", [(28, 28), (40, 40)]),
        ("faces", [(56, 46), (28, 28)]),
    ] {
        for (h, w) in sizes {
            let mut config = siamese_train::TrainConfig::preset(preset).unwrap().model;
            (config.input_height, config.input_width) = (h, w);
            let name = format!("{preset}-{h}x{w}");
            let checkpoint = model(dir, &name, &config);
            let onnx = dir.join(format!("{name}.onnx"));
            let embeddings = dir.join(format!("{name}.safetensors-embeddings.safetensors"));
            let [ckpt, onnx_arg, emb] =
                [&checkpoint, &onnx, &embeddings].map(|p| p.to_str().unwrap().to_string());
            check(&export(&checkpoint, &onnx, dir));
            check(&siamese(
                &[
                    "embed",
                    "--model",
                    &ckpt,
                    "--data",
                    folder.to_str().unwrap(),
                    "--image-size",
                    &format!("{h}x{w}"),
                    "--split",
                    "train",
                    "--images",
                    "--out",
                    &emb,
                ],
                dir,
            ));
            let out = Command::new(&python)
                .arg(&script)
                .args([&onnx_arg, &emb, "500", "7"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            eprintln!("{name}: max difference {}", report["max_abs_diff"]);
            assert_eq!(report["images"], 500, "{name}");
            let dim = config.output_dim();
            assert_eq!(
                report["output_shape"],
                serde_json::json!([500, dim]),
                "{name}"
            );
            let diff = report["max_abs_diff"].as_f64().unwrap();
            assert!(diff <= 1e-5, "{name}: max difference {diff}");
            assert_eq!(report["metadata"]["threshold"], "0.5", "{name}");
            assert!(report["metadata"]["fingerprint"].is_string(), "{name}");
            assert!(report["metadata"].get("score_norm").is_none(), "{name}");
            assert_eq!(report["input"], "images");
            assert_eq!(report["output"], "embeddings");
        }
    }
}

/// `siamese export --model model --out out`, run in `dir`.
fn export(model: &Path, out: &Path, dir: &Path) -> std::process::Output {
    let [model, out] = [model, out].map(|p| p.to_str().unwrap());
    siamese(&["export", "--model", model, "--out", out], dir)
}

/// A broken checkpoint gets the loader's error; an output the tool cannot write, one
/// line; nothing is written in either case.
#[test]
fn broken_models_and_unwritable_outputs_are_refused_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let good = model(dir, "good", &TowerConfig::default());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("t.onnx");
    assert_one_line_error(&export(&truncated, &out, dir), &["truncated.safetensors"]);
    assert!(!out.exists());
    // A parent that is a file, not a folder; and an output that is not .onnx.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (target, needle) in [
        (file.join("t.onnx"), "a-file"),
        (dir.join("t.txt"), "must end in .onnx"),
    ] {
        assert_one_line_error(&export(&good, &target, dir), &[needle]);
    }
    // A folder without write permission (not for root, whom permissions do not stop).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::write(locked.join("probe"), b"x").is_err() {
            let o = export(&good, &locked.join("t.onnx"), dir);
            assert_one_line_error(&o, &["locked", "ermission denied"]);
        } else {
            eprintln!("permission case skipped: this user writes anywhere");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
