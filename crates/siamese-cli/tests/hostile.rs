//! Issue #14's faults as a hostile user meets them through the binary: forged but
//! self-consistent checkpoints, NaN anywhere, oversized requests, odd paths. Each must
//! end in one clear line and a non-zero exit, never a panic, an abort, a hang or a
//! confident answer from broken numbers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use siamese_model::{checkpoint, ConvTower, TowerConfig};

mod common;
use common::{assert_one_line_error, siamese, small_config, small_model, stderr, write_gray_png};

/// A valid untrained model: its tensors and metadata.
fn parts(dir: &Path) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = small_model(dir, 1.5);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, header.metadata().clone().unwrap())
}

/// Writes a checkpoint byte by byte as a forger would, with no check of its values.
fn forge(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &HashMap<String, String>,
) -> PathBuf {
    let bytes = safetensors::serialize(
        tensors.iter().map(|(k, v)| (k.clone(), v.clone())),
        Some(meta.clone()),
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// A `side x side` grey PNG of a fixed pattern; returns its path as text.
fn png(path: &Path, side: u32) -> String {
    let pixels: Vec<u8> = (0..side * side).map(|i| (i * 7 % 251) as u8).collect();
    write_gray_png(path, side, side, &pixels);
    path.to_str().unwrap().to_string()
}

/// Fault 5: broken numbers in a checkpoint gave confident verdicts ("same: distance
/// 0.0000" for any pair, "different: distance NaN" for one image twice). Each is now
/// refused on load, naming the file and the tensor or entry.
#[test]
fn broken_checkpoints_give_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, meta) = parts(dir.path());
    let a = png(&dir.path().join("a.png"), 28);
    let cpu = &Device::Cpu;
    let with = |name: &str, value: f32| {
        let mut t = tensors.clone();
        let shape = t[name].shape().clone();
        let n = shape.elem_count();
        let v: Vec<f32> = t[name].flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = v
            .into_iter()
            .enumerate()
            .map(|(i, x)| if i == n / 2 { value } else { x })
            .collect();
        t.insert(name.into(), Tensor::from_vec(v, shape, cpu).unwrap());
        t
    };
    let verify = |model: &Path| {
        siamese(
            &["verify", "--model", model.to_str().unwrap(), &a, &a],
            dir.path(),
        )
    };
    for (name, value, needle) in [
        ("fc2.weight", f32::NAN, "NaN or infinity"),
        ("conv1.weight", f32::INFINITY, "NaN or infinity"),
        ("bn1.running_var", -1.0, "negative variance"),
    ] {
        let m = forge(&dir.path().join("m.safetensors"), &with(name, value), &meta);
        assert_one_line_error(&verify(&m), &["m.safetensors", name, needle]);
    }
    for threshold in ["NaN", "inf"] {
        let mut bad = meta.clone();
        bad.insert("threshold".into(), threshold.into());
        let m = forge(&dir.path().join("t.safetensors"), &tensors, &bad);
        assert_one_line_error(&verify(&m), &["t.safetensors", "threshold"]);
    }
    // A provenance entry that is not JSON is the checkpoint's fault, not a training
    // config's (the message said "invalid training config").
    let mut bad = meta.clone();
    bad.insert("preprocessing".into(), "{not json".into());
    let m = forge(&dir.path().join("p.safetensors"), &tensors, &bad);
    let o = verify(&m);
    assert_one_line_error(&o, &["p.safetensors", "preprocessing"]);
    assert!(!stderr(&o).contains("training config"), "{}", stderr(&o));
    let mut config = small_config();
    config.batch_norm_eps = 1e308;
    let mut bad = meta.clone();
    bad.insert(
        "model_config".into(),
        serde_json::to_string(&config).unwrap(),
    );
    let m = forge(&dir.path().join("e.safetensors"), &tensors, &bad);
    assert_one_line_error(&verify(&m), &["e.safetensors", "batch_norm_eps"]);
    // `embed` loads through the same checks.
    let o = siamese(
        &[
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--out",
            dir.path().join("e.csv").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["batch_norm_eps"]);
}

/// Fault 7: a self-consistent forged config asking for 25004x25004 inputs (strides
/// that bring the tensors back to their real shapes) made `verify` resize two small
/// images to that size and abort after a 5 GB allocation. It is refused on load.
#[test]
fn forged_input_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, meta) = parts(dir.path());
    let forged = TowerConfig {
        input_height: 25_004,
        input_width: 25_004,
        conv_strides: vec![1786],
        ..small_config()
    };
    assert_eq!(forged.flatten_size(), small_config().flatten_size());
    let mut bad = meta.clone();
    bad.insert(
        "model_config".into(),
        serde_json::to_string(&forged).unwrap(),
    );
    let m = forge(&dir.path().join("big.safetensors"), &tensors, &bad);
    let a = png(&dir.path().join("a.png"), 28);
    let o = siamese(
        &["verify", "--model", m.to_str().unwrap(), &a, &a],
        dir.path(),
    );
    assert_one_line_error(&o, &["big.safetensors", "input_height is 25004"]);
}

/// Fault 9: sizes that needed terabytes aborted with a backtrace.
#[test]
fn oversized_training_requests_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = siamese(&["train", "--dim", "1000000000"], dir.path());
    assert_one_line_error(&o, &["embedding_dim is 1000000000"]);
    let o = siamese(&["train", "--batch", "10000000"], dir.path());
    assert_one_line_error(&o, &["batch size 10000000"]);
}

/// Fault 11: operating-system errors were printed twice, a missing folder was called
/// an unknown data set, and SIAMESE_DATA_DIR naming a file was not said.
#[test]
fn small_faults_read_right() {
    let dir = tempfile::tempdir().unwrap();
    let o = siamese(
        &["eval", "--model", dir.path().to_str().unwrap()],
        dir.path(),
    );
    assert_one_line_error(&o, &["Is a directory"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("Is a directory").count(), 1, "{err}");

    let o = siamese(&["data", "info", "--data", "./no/such/folder"], dir.path());
    assert_one_line_error(&o, &["./no/such/folder: no such folder"]);

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let o = common::command()
        .args(["data", "info", "--data", "mnist"])
        .env("SIAMESE_CACHE_DIR", dir.path())
        .env("SIAMESE_DATA_DIR", &file)
        .output()
        .unwrap();
    assert_one_line_error(&o, &["SIAMESE_DATA_DIR names a file"]);

    // The checkpoint interval has a flag (it needed --config before).
    let help = siamese(&["train", "--help"], dir.path());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--checkpoint-every"));
}

/// A forged score-normalisation cohort gives no verdict: a record without its cohort
/// (or the reverse), a record no evaluation writes, a cohort whose rows all sit on one
/// point (no spread to scale by); and a model without one refuses `--scoring
/// normalised` rather than quietly scoring plain.
#[test]
fn forged_cohorts_give_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, meta) = parts(dir.path());
    let a = png(&dir.path().join("a.png"), 28);
    let b = png(&dir.path().join("b.png"), 28);
    let verify = |model: &Path, scoring: &str| {
        siamese(
            &[
                "verify",
                "--model",
                model.to_str().unwrap(),
                "--scoring",
                scoring,
                &a,
                &b,
            ],
            dir.path(),
        )
    };
    let dim = small_config().output_dim();
    let record = r#"{"top_k":2,"threshold":-1.0,"validation_eer":0.01,"plain_validation_eer":0.2}"#;
    let cohort = |rows: Vec<f32>| {
        let n = rows.len() / dim;
        Tensor::from_vec(rows, (n, dim), &Device::Cpu).unwrap()
    };
    let spread: Vec<f32> = (0..4 * dim).map(|i| (i % 7) as f32 * 0.3).collect();

    let mut with_record = meta.clone();
    with_record.insert("score_norm".into(), record.into());
    let m = forge(&dir.path().join("r.safetensors"), &tensors, &with_record);
    assert_one_line_error(
        &verify(&m, "auto"),
        &["r.safetensors", "without its cohort"],
    );

    let mut t = tensors.clone();
    t.insert(checkpoint::COHORT_TENSOR.into(), cohort(spread.clone()));
    let m = forge(&dir.path().join("c.safetensors"), &t, &meta);
    assert_one_line_error(
        &verify(&m, "plain"),
        &["c.safetensors", "cohort without its record"],
    );

    let mut zero_k = meta.clone();
    zero_k.insert(
        "score_norm".into(),
        record.replace("\"top_k\":2", "\"top_k\":0"),
    );
    let m = forge(&dir.path().join("k.safetensors"), &t, &zero_k);
    assert_one_line_error(
        &verify(&m, "auto"),
        &["k.safetensors", "score_norm", "top_k"],
    );

    let mut flat = tensors.clone();
    flat.insert(
        checkpoint::COHORT_TENSOR.into(),
        cohort(vec![0.25; 4 * dim]),
    );
    let m = forge(&dir.path().join("f.safetensors"), &flat, &with_record);
    assert_one_line_error(&verify(&m, "normalised"), &["no verdict", "no spread"]);

    // The same file with a spread cohort gives a verdict.
    let mut good = tensors.clone();
    good.insert(checkpoint::COHORT_TENSOR.into(), cohort(spread));
    let m = forge(&dir.path().join("g.safetensors"), &good, &with_record);
    let o = verify(&m, "auto");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("normalised score"));

    std::fs::create_dir_all(dir.path().join("plain")).unwrap();
    let plain = small_model(&dir.path().join("plain"), 1.5);
    assert_one_line_error(
        &verify(&plain, "normalised"),
        &["holds no score-normalisation cohort", "--scoring plain"],
    );
}

/// A model trained on every class cannot be evaluated as if some were unseen: the
/// protocol is the checkpoint's, and another one is refused before data is loaded.
#[test]
fn eval_refuses_a_protocol_the_model_was_not_trained_for() {
    let dir = tempfile::tempdir().unwrap();
    let (_, varmap) = ConvTower::init(&small_config(), &Device::Cpu, 0).unwrap();
    let path = dir.path().join("closed.safetensors");
    checkpoint::save(&path, &varmap, &small_config(), &BTreeMap::new()).unwrap();
    let o = siamese(
        &[
            "eval",
            "--model",
            path.to_str().unwrap(),
            "--holdout-classes",
            "5-9",
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["trained on every class"]);
    let held_out = dir.path().join("open.safetensors");
    let meta = BTreeMap::from([("holdout_classes".to_string(), "[5,6,7,8,9]".to_string())]);
    checkpoint::save(&held_out, &varmap, &small_config(), &meta).unwrap();
    let o = siamese(
        &[
            "eval",
            "--model",
            held_out.to_str().unwrap(),
            "--holdout-classes",
            "0-4",
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["held out", "another protocol"]);
}

/// Fault 11: plotting NaN embeddings said "invalid training config".
#[test]
fn plotting_nan_embeddings_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let values = vec![0.5f32, f32::NAN, 1.0, 2.0];
    let embeddings = Tensor::from_vec(values, (2, 2), &Device::Cpu).unwrap();
    let path = dir.path().join("e.safetensors");
    forge(
        &path,
        &HashMap::from([("embeddings".to_string(), embeddings)]),
        &HashMap::new(),
    );
    let out = dir.path().join("p.png");
    let o = siamese(
        &[
            "plot",
            "--embeddings",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["NaN or infinity"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("training config"), "{err}");
    assert!(!out.exists());
}

/// Images larger than the decoding limit are refused from their header: this PGM says
/// 20000x20000 (400 MB of pixels) and holds a few bytes.
#[test]
fn oversized_images_are_refused_from_their_header() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, meta) = parts(dir.path());
    let m = forge(&dir.path().join("m.safetensors"), &tensors, &meta);
    let big = dir.path().join("big.pgm");
    let mut bytes = b"P5\n20000 20000\n255\n".to_vec();
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&big, bytes).unwrap();
    let a = png(&dir.path().join("a.png"), 28);
    let o = siamese(
        &[
            "verify",
            "--model",
            m.to_str().unwrap(),
            big.to_str().unwrap(),
            &a,
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["big.pgm", "larger than this tool decodes"]);
}

/// `siamese train` for 2 steps on the image folder `data` (4 test and 4 validation
/// images a class) into `run`, with `cache` as its download cache.
fn train_two_steps(data: &Path, run: &Path, cache: &Path) -> std::process::Output {
    siamese(
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--test-images",
            "4",
            "--val-images",
            "4",
            "--steps",
            "2",
            "--batch",
            "8",
            "--out",
            run.to_str().unwrap(),
        ],
        cache,
    )
}

/// Issue #28, case 1: a checkpoint whose values are all finite but overflow in use (a
/// layer scaled by 1e37) passed every load check; then `eval` printed `ROC AUC NaN`
/// with exit 0, `index` wrote a gallery of infinite embeddings and `embed` a file of
/// NaN. Every command embeds through one check, and refuses in one line.
#[test]
fn finite_weights_that_overflow_give_no_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_bar_folder(&data);
    let run = dir.path().join("run");
    let trained = train_two_steps(&data, &run, dir.path());
    common::check(&trained);
    let model = run.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&model, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    // Two layers scaled by 1e37: every value stays finite, their product does not.
    for layer in ["conv1.weight", "conv2.weight"] {
        let scaled = (&tensors[layer] * 1e37).unwrap();
        tensors.insert(layer.into(), scaled);
    }
    let m = forge(&dir.path().join("huge.safetensors"), &tensors, &meta);
    let m = m.to_str().unwrap();
    let image = data.join("class0/00.pgm");
    let image = image.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let commands: [Vec<String>; 4] = [
        vec!["eval".into(), "--model".into(), m.into()],
        vec![
            "index".into(),
            "--model".into(),
            m.into(),
            "--out".into(),
            out("g.st"),
        ],
        vec![
            "embed".into(),
            "--model".into(),
            m.into(),
            "--out".into(),
            out("e.csv"),
        ],
        vec![
            "verify".into(),
            "--model".into(),
            m.into(),
            image.into(),
            image.into(),
        ],
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = siamese(&args, dir.path());
        assert_one_line_error(&o, &["huge.safetensors", "NaN or infinite"]);
    }
    assert!(!dir.path().join("g.st").exists() && !dir.path().join("e.csv").exists());
}

/// Issue #28, case 5: class names and paths reached the terminal raw: an escape
/// sequence in a class folder's name ran on the user's terminal, and a newline split a
/// `search` result over two lines. They are shown escaped, one result a line.
#[test]
fn class_names_reach_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_bar_folder(&data);
    let evil = "cl\nass\u{1b}[2J\u{202e}0";
    std::fs::rename(data.join("class0"), data.join(evil)).unwrap();
    let run = dir.path().join("run");
    let d = data.to_str().unwrap();
    let trained = train_two_steps(&data, &run, dir.path());
    let text = common::check(&trained);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
    let m = run.join("model.safetensors");
    let g = dir.path().join("g.safetensors");
    let (m, g) = (m.to_str().unwrap(), g.to_str().unwrap());
    common::check(&siamese(
        &[
            "index",
            "--model",
            m,
            "--data",
            d,
            "--test-images",
            "4",
            "--val-images",
            "4",
            "--out",
            g,
        ],
        dir.path(),
    ));
    let query = data.join(evil).join("00.pgm");
    let out = siamese(
        &[
            "search",
            "--gallery",
            g,
            "--model",
            m,
            "-k",
            "3",
            query.to_str().unwrap(),
        ],
        dir.path(),
    );
    let found = common::check(&out);
    assert!(
        !found.contains('\u{1b}') && !found.contains('\u{202e}'),
        "{found}"
    );
    assert!(found.contains("cl\\u{a}ass\\u{1b}[2J\\u{202e}0"), "{found}");
    // The query's line and one line per neighbour.
    assert_eq!(found.trim_end().lines().count(), 4, "{found}");
}

/// CRC-32 (PNG's chunk checksum), bit by bit: enough for a test's forged header.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Issue #28, case 5: a file whose header claims 16,000 x 16,000 pixels in a few hundred
/// bytes was decoded (627 MB) and answered. A header claiming more pixels than its file
/// can hold is refused before decoding, naming the file.
#[test]
fn a_header_claiming_more_pixels_than_its_file_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path(), 1.5);
    let a = png(&dir.path().join("a.png"), 28);
    // A valid 28x28 PNG whose IHDR (self-consistent: its CRC recomputed) says 16000x16000.
    let mut bytes = std::fs::read(&a).unwrap();
    let ihdr = 8 + 4; // signature, then the chunk length; the type starts here
    assert_eq!(&bytes[ihdr..ihdr + 4], b"IHDR");
    bytes[ihdr + 4..ihdr + 8].copy_from_slice(&16_000u32.to_be_bytes());
    bytes[ihdr + 8..ihdr + 12].copy_from_slice(&16_000u32.to_be_bytes());
    let crc = crc32(&bytes[ihdr..ihdr + 4 + 13]);
    bytes[ihdr + 17..ihdr + 21].copy_from_slice(&crc.to_be_bytes());
    let forged = dir.path().join("bomb.png");
    std::fs::write(&forged, &bytes).unwrap();
    let o = siamese(
        &[
            "verify",
            "--model",
            model.to_str().unwrap(),
            &a,
            forged.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_one_line_error(&o, &["bomb.png", "16000x16000", "bytes"]);
}

/// Issue #28, case 5: I/O errors printed their path twice ("loading the model m: m: Is a
/// directory"), from a context and a cause that both named it.
#[test]
fn an_unreadable_file_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("not-a-model");
    std::fs::create_dir(&folder).unwrap();
    let name = folder.to_str().unwrap();
    let o = siamese(&["eval", "--model", name], dir.path());
    assert_one_line_error(&o, &["Is a directory"]);
    assert_eq!(stderr(&o).matches(name).count(), 1, "{}", stderr(&o));
    let missing = dir.path().join("no-runs-here");
    let o = siamese(
        &["lake-runs", "--runs", missing.to_str().unwrap()],
        dir.path(),
    );
    assert_one_line_error(&o, &["no-runs-here"]);
    let said = stderr(&o).matches(missing.to_str().unwrap()).count();
    assert_eq!(said, 1, "{}", stderr(&o));
}
