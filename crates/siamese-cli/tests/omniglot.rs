//! `--data omniglot` end to end on small files the test writes (two npz files and a
//! runs folder in a private SIAMESE_DATA_DIR): training on the background characters,
//! a report with one-shot episodes and Lake's runs beside raw pixels, `siamese eval`
//! agreeing with it, `siamese lake-runs`, and the refusals.

mod common;

use std::path::Path;

use common::{assert_one_line_error, check, command, write_gray_png};
use siamese_data::npz::{encode_npz, Array, Dtype};

const SIDE: usize = 105;

/// Character `c`: a bar at row `6c % 100` and a column at `(11c) % 100`; drawing `d`
/// shifts both by `d % 3`, so drawings of a character are alike and characters differ.
fn ink(c: usize, d: usize, y: usize, x: usize) -> bool {
    let (r, k) = ((6 * c) % 100 + d % 3, (11 * c) % 100 + d % 3);
    (y / 3 == r / 3 && x < 70) || (x / 3 == k / 3 && y > 30)
}

fn write_set(path: &Path, characters: usize, offset: usize) {
    let mut images = Vec::with_capacity(characters * 20 * SIDE * SIDE);
    for c in 0..characters {
        for d in 0..20 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    images.push(u8::from(!ink(c + offset, d, y, x)));
                }
            }
        }
    }
    let labels: Vec<u8> = (0..characters as i64)
        .flat_map(|c| [c; 20])
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let arrays = [
        (
            "images",
            Array {
                dtype: Dtype::Bool,
                shape: vec![characters, 20, SIDE, SIDE],
                data: images,
            },
        ),
        (
            "labels",
            Array {
                dtype: Dtype::I64,
                shape: vec![characters, 20],
                data: labels,
            },
        ),
    ];
    let refs: Vec<(&str, &Array)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    std::fs::write(path, encode_npz(&refs)).unwrap();
}

/// A runs folder of two runs over evaluation characters 0-4 (offset as in the npz).
fn write_runs(root: &Path, offset: usize) {
    for run in ["run01", "run02"] {
        let dir = root.join(run);
        std::fs::create_dir_all(dir.join("training")).unwrap();
        std::fs::create_dir_all(dir.join("test")).unwrap();
        let mut labels = String::new();
        for c in 0..5 {
            let page = |d: usize| -> Vec<u8> {
                (0..SIDE * SIDE)
                    .map(|i| {
                        if ink(c + offset, d, i / SIDE, i % SIDE) {
                            0
                        } else {
                            255
                        }
                    })
                    .collect()
            };
            let (s, q) = (
                format!("training/class0{c}.png"),
                format!("test/item0{c}.png"),
            );
            write_gray_png(&dir.join(&s), SIDE as u32, SIDE as u32, &page(0));
            write_gray_png(&dir.join(&q), SIDE as u32, SIDE as u32, &page(7));
            labels.push_str(&format!("{run}/{q} {run}/{s}\n"));
        }
        std::fs::write(dir.join("class_labels.txt"), labels).unwrap();
    }
}

#[test]
fn omniglot_trains_and_reports_one_shot_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let omniglot = data.join("omniglot");
    std::fs::create_dir_all(&omniglot).unwrap();
    write_set(&omniglot.join("images_background.npz"), 10, 0);
    write_set(&omniglot.join("images_evaluation.npz"), 6, 40);
    write_runs(&omniglot.join("one-shot-runs"), 40);
    let run = tmp.path().join("run");
    let sealed = |args: &[&str]| {
        command()
            .args(args)
            .env("SIAMESE_DATA_DIR", &data)
            .env("SIAMESE_CACHE_DIR", tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = sealed(&[
        "train",
        "--data",
        "omniglot",
        "--val-classes",
        "3",
        "--rotate-classes",
        "--steps",
        "30",
        "--batch",
        "16",
        "--shift-average",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    let text = check(&out);
    assert!(text.contains("one-shot:   5-way 1-shot"), "{text}");
    assert!(text.contains("Lake's runs: 20-way one-shot"), "{text}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let one_shot = metrics["one_shot"].as_array().unwrap();
    // Six test characters allow 5-way episodes, not 20-way ones.
    let settings: Vec<(u64, u64)> = one_shot
        .iter()
        .map(|o| (o["ways"].as_u64().unwrap(), o["shots"].as_u64().unwrap()))
        .collect();
    assert_eq!(settings, [(5, 1), (5, 5)]);
    for o in one_shot {
        for key in ["accuracy", "pixel_accuracy", "normalised_accuracy"] {
            let v = o[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
    }
    assert_eq!(metrics["lake_runs"]["runs"], 2);
    // Unseen characters are also scored against a cohort of training drawings.
    let normalised = metrics["lake_runs"]["normalised_accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&normalised), "{normalised}");
    // The config records Omniglot's resolved options; the tower takes 28x28.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["omniglot"]["validation_classes"], 3);
    assert_eq!(config["omniglot"]["rotate_classes"], true);
    assert_eq!(config["model"]["input_height"], 28);
    // Test-time shifts travel with the model, so every command below embeds with them.
    assert_eq!(config["model"]["shift_average"], 1);

    // `siamese eval` rebuilds the same data from the checkpoint and agrees.
    let model = run.join("model.safetensors");
    let m = model.to_str().unwrap();
    let eval: serde_json::Value =
        serde_json::from_str(&check(&sealed(&["eval", "--model", m, "--json"]))).unwrap();
    assert_eq!(eval, metrics);
    // Evaluated as one view instead, the figures move.
    let one_view: serde_json::Value = serde_json::from_str(&check(&sealed(&[
        "eval",
        "--model",
        m,
        "--shift-average",
        "0",
        "--json",
    ])))
    .unwrap();
    assert_ne!(one_view["validation"], metrics["validation"]);
    let refused = sealed(&["eval", "--model", m, "--shift-average", "9"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("shift_average is 9") && err.lines().count() <= 2,
        "{err}"
    );

    // `siamese lake-runs`: the baseline and the model, run by run.
    let runs: serde_json::Value =
        serde_json::from_str(&check(&sealed(&["lake-runs", "--model", m, "--json"]))).unwrap();
    assert_eq!(runs["runs"], 2);
    // The same figures as training's, without the cohort (it needs the training set).
    let mut trained = metrics["lake_runs"].clone();
    trained
        .as_object_mut()
        .unwrap()
        .remove("normalised_accuracy");
    assert_eq!(runs["model"], trained);
    let mhd = runs["modified_hausdorff"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mhd));

    // `siamese verify` and `siamese search` take Omniglot drawings as image files (105 x
    // 105, dark ink, as Lake's runs hold them), prepared as the npz drawings are: a
    // query that is drawing 7 of evaluation character 0 finds that very drawing in a
    // gallery of the evaluation set at distance 0, under its character's name.
    let gallery = tmp.path().join("gallery.safetensors");
    let g = gallery.to_str().unwrap();
    check(&sealed(&[
        "index", "--model", m, "--data", "omniglot", "--out", g,
    ]));
    let run01 = omniglot.join("one-shot-runs/run01");
    let query = run01.join("test/item00.png");
    let q = query.to_str().unwrap();
    let found: serde_json::Value = serde_json::from_str(&check(&sealed(&[
        "search",
        "--gallery",
        g,
        "--model",
        m,
        "-k",
        "3",
        "--json",
        q,
    ])))
    .unwrap();
    let first = &found[0]["neighbours"][0];
    assert_eq!(first["class"], "evaluation/001", "{found}");
    assert!(first["distance"].as_f64().unwrap() < 1e-4, "{found}");
    let support = run01.join("training/class00.png");
    let verdict = check(&sealed(&[
        "verify",
        "--model",
        m,
        q,
        support.to_str().unwrap(),
    ]));
    assert!(verdict.contains("distance"), "{verdict}");
    // A file that is not a 105 x 105 drawing is refused, naming it.
    let small = tmp.path().join("small.png");
    write_gray_png(&small, 28, 28, &[255; 28 * 28]);
    let refused = sealed(&["verify", "--model", m, q, small.to_str().unwrap()]);
    assert_one_line_error(&refused, &["small.png", "105x105"]);

    // Episodic training (prototypical loss) on Snell's four-block tower runs through the
    // same step, resumes, and evaluates from its checkpoint alone.
    let episodic = tmp.path().join("episodic");
    let e = episodic.to_str().unwrap();
    let train = |steps: &str, resume: bool| {
        let mut args = vec!["train", "--steps", steps];
        if resume {
            args.extend(["--resume", e]);
        } else {
            args.extend([
                "--data",
                "omniglot",
                "--val-classes",
                "3",
                "--pairs",
                "episodes",
                "--ways",
                "5",
                "--shots",
                "2",
                "--queries",
                "3",
                "--tower",
                "four-block",
                "--out",
                e,
            ]);
        }
        sealed(&args)
    };
    check(&train("6", false));
    check(&train("12", true));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(episodic.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["sampler"]["kind"], "episodes");
    assert_eq!(config["sampler"]["ways"], 5);
    assert_eq!(config["model"]["conv_pool"], 2);
    assert_eq!(config["model"]["conv_batch_norm"], true);
    let steps = std::fs::read_to_string(episodic.join("metrics.jsonl")).unwrap();
    assert!(steps.contains("\"step\":12"), "{steps}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(episodic.join("metrics.json")).unwrap())
            .unwrap();
    let model = episodic.join("model.safetensors");
    let eval = check(&sealed(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&eval).unwrap(),
        metrics
    );
    let refused = sealed(&[
        "train",
        "--data",
        "omniglot",
        "--val-classes",
        "3",
        "--pairs",
        "episodes",
        "--ways",
        "40",
        "--out",
        tmp.path().join("refused").to_str().unwrap(),
    ]);
    // Found once the data are loaded (after the lines describing them): a clear error,
    // no panic, nothing trained.
    let err = common::stderr(&refused);
    assert!(
        !refused.status.success() && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        err.contains("40-way episodes of 1 support + 5 query images need 40 classes"),
        "{err}"
    );
    let refused = sealed(&["train", "--data", "omniglot", "--ways", "5"]);
    assert_one_line_error(
        &refused,
        &["--ways, --shots and --queries apply to --pairs episodes"],
    );

    // Options that do not apply are refused, not ignored.
    let refused = sealed(&["train", "--data", "omniglot", "--test-classes", "3"]);
    assert_one_line_error(&refused, &["omniglot tests on its evaluation alphabets"]);
    let refused = sealed(&["train", "--data", "omniglot", "--holdout-classes", "1,2"]);
    assert_one_line_error(&refused, &["omniglot has its own unseen-class split"]);
    let refused = sealed(&["train", "--data", "mnist", "--rotate-classes"]);
    assert_one_line_error(&refused, &["--rotate-classes applies to omniglot"]);
    // No copy: the error names the folder and the files.
    std::fs::remove_file(omniglot.join("images_background.npz")).unwrap();
    let missing = sealed(&["train", "--data", "omniglot", "--steps", "1"]);
    assert_one_line_error(&missing, &["images_background.npz", "SIAMESE_DATA_DIR"]);
}
