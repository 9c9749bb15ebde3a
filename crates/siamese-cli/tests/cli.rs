//! The `siamese` binary as a user meets it: help, verification of image files, plots,
//! and one clear line with a non-zero exit for every kind of bad input. The child never
//! reaches the network (HF_HUB_OFFLINE, a private cache folder, no SIAMESE_DATA_DIR).

use std::path::Path;

mod common;
use common::{assert_user_error, siamese, small_model, stderr, stdout, write_gray_png};

/// A `w x h` grey PNG whose pixel (x, y) is `value(x, y)`.
fn write_png(path: &Path, w: u32, h: u32, value: impl Fn(u32, u32) -> u8) {
    let pixels: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| value(x, y))
        .collect();
    write_gray_png(path, w, h, &pixels);
}

#[test]
fn help_lists_the_commands_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    let o = siamese(&["--help"], dir.path());
    assert!(o.status.success());
    let out = stdout(&o);
    for word in [
        "train",
        "eval",
        "embed",
        "verify",
        "plot",
        "data",
        "Examples:",
    ] {
        assert!(out.contains(word), "{word} missing from --help:\n{out}");
    }
}

#[test]
fn verify_compares_two_images_with_the_checkpoint_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path(), 1e9);
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    write_png(&a, 28, 28, |x, y| ((x * y) % 256) as u8);
    write_png(&b, 28, 28, |x, _| (x * 9) as u8);
    let m = model.to_str().unwrap();
    let o = siamese(
        &[
            "verify",
            "--model",
            m,
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("same: distance "), "{}", stdout(&o));
    // Two different images are apart: "different" at threshold 0.
    let o = siamese(
        &[
            "verify",
            "--model",
            m,
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--threshold=0",
        ],
        dir.path(),
    );
    assert!(
        stdout(&o).starts_with("different: distance "),
        "{}",
        stdout(&o)
    );
    // Thresholds that would make every verdict the same are refused (issue #14).
    for bad in ["-1", "nan", "inf"] {
        let o = siamese(
            &[
                "verify",
                "--model",
                m,
                a.to_str().unwrap(),
                a.to_str().unwrap(),
                &format!("--threshold={bad}"),
            ],
            dir.path(),
        );
        assert!(!o.status.success(), "{bad}");
        assert!(
            stderr(&o).contains("is not a distance threshold"),
            "{bad}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn verify_rejects_bad_images_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path(), 1.0);
    let m = model.to_str().unwrap();
    let (good, small, text) = (
        dir.path().join("good.png"),
        dir.path().join("small.png"),
        dir.path().join("notes.txt"),
    );
    write_png(&good, 28, 28, |_, _| 0);
    write_png(&small, 20, 28, |_, _| 0);
    std::fs::write(&text, "hello").unwrap();
    let o = siamese(
        &[
            "verify",
            "--model",
            m,
            good.to_str().unwrap(),
            small.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_user_error(
        &o,
        "the image is 28x20 pixels (height x width), the model expects 28x28",
    );
    let o = siamese(
        &[
            "verify",
            "--model",
            m,
            good.to_str().unwrap(),
            text.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_user_error(&o, "not an image this tool reads");
    let o = siamese(
        &[
            "verify",
            "--model",
            "nope.safetensors",
            good.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_user_error(&o, "nope.safetensors");
    std::fs::write(dir.path().join("junk.safetensors"), "junk").unwrap();
    let junk = dir.path().join("junk.safetensors");
    let o = siamese(
        &[
            "verify",
            "--model",
            junk.to_str().unwrap(),
            good.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_user_error(&o, "not a valid safetensors file");
}

#[test]
fn pgm_images_are_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path(), 1e9);
    let pgm = dir.path().join("a.pgm");
    let mut bytes = b"P5\n# a comment\n28 28\n255\n".to_vec();
    bytes.extend((0..784).map(|i| (i % 256) as u8));
    std::fs::write(&pgm, bytes).unwrap();
    let o = siamese(
        &[
            "verify",
            "--model",
            model.to_str().unwrap(),
            pgm.to_str().unwrap(),
            pgm.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("distance 0.0000"), "{}", stdout(&o));
}

#[test]
fn plot_draws_saved_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb.safetensors");
    let tensors = std::collections::HashMap::from([
        (
            "embeddings".to_string(),
            candle_core::Tensor::new(&[[0f32, 0.], [1., 1.], [2., 0.]], &candle_core::Device::Cpu)
                .unwrap(),
        ),
        (
            "labels".to_string(),
            candle_core::Tensor::new(&[0u8, 1, 2], &candle_core::Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &emb).unwrap();
    let out = dir.path().join("plot.png");
    let o = siamese(
        &[
            "plot",
            "--embeddings",
            emb.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn user_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    assert_user_error(
        &siamese(&["train", "--preset", "fastest"], dir.path()),
        "unknown preset \"fastest\"",
    );
    assert_user_error(
        &siamese(&["train", "--data", "cifar"], dir.path()),
        "unknown data set \"cifar\"",
    );
    assert_user_error(
        &siamese(&["train", "--q", "5", "--loss", "margin"], dir.path()),
        "--q applies to --loss chopra",
    );
    assert_user_error(
        &siamese(&["train", "--lr=-1"], dir.path()),
        "learning rate must be positive",
    );
    // Per-class batches: positives only, so only with pairs among the batch's images.
    for (args, needle) in [
        (
            &["--pairs", "per-class", "--pairing", "sampled"][..],
            "per-class batches hold positive pairs only",
        ),
        (
            &["--pairs", "per-class", "--images-per-class", "5"][..],
            "images per class must be even",
        ),
        (
            &["--images-per-class", "8"][..],
            "--images-per-class applies to --pairs per-class",
        ),
        (
            &["--pairs", "per-class", "--positive-fraction", "0.5"][..],
            "--positive-fraction applies to --pairs balanced",
        ),
    ] {
        assert_user_error(&siamese(&[&["train"], args].concat(), dir.path()), needle);
    }
    // Held-out classes: refused before any data is loaded.
    for (classes, needle) in [
        ("5", "1 held out"),
        ("3-12", "class 10, which mnist does not have"),
        ("0-8", "leaving 1 to train on"),
        ("9-5", "the range 9-5 is empty"),
        ("x", "expected class numbers"),
    ] {
        assert_user_error(
            &siamese(&["train", "--holdout-classes", classes], dir.path()),
            needle,
        );
    }
    // Offline with no copy: the message says which files to put where.
    assert_user_error(
        &siamese(&["data", "info", "--data", "mnist"], dir.path()),
        "train-images-idx3-ubyte.gz",
    );
    assert_user_error(
        &siamese(
            &["train", "--resume", dir.path().to_str().unwrap()],
            dir.path(),
        ),
        "config.json",
    );
    let o = siamese(
        &["embed", "--model", "m.safetensors", "--out", "x.txt"],
        dir.path(),
    );
    assert_user_error(&o, "m.safetensors");
}
