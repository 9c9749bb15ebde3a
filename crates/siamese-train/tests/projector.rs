//! The projector files as TensorBoard itself reads them: its projector plugin is asked
//! for the runs, the embedding's info, the tensor, the metadata and the sprite, as the
//! browser asks `tensorboard --logdir` (`tests/tensorboard_projector.py`). Needs a
//! Python with tensorboard: `SIAMESE_TENSORBOARD_PYTHON`, else `python3`; without one
//! the test says it was skipped (CI installs it, see `.ci/run`).

use std::process::Command;

use siamese_train::projector::{write_projector, Projection};
use siamese_train::LabelledEmbeddings;

#[test]
fn tensorboard_reads_the_projector_files() {
    let python =
        std::env::var("SIAMESE_TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has_tensorboard = Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tensorboard {
        eprintln!("SKIPPED: no tensorboard in {python} (set SIAMESE_TENSORBOARD_PYTHON)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (n, dim, side) = (30usize, 3usize, 6usize);
    let embeddings: Vec<f32> = (0..n * dim).map(|i| i as f32 / 7.0 - 2.0).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    let names = vec![
        "zero".to_string(),
        "<b>one</b>".to_string(),
        "two\tthree".to_string(),
    ];
    let pixels: Vec<u8> = (0..n * side * side).map(|i| (i % 251) as u8).collect();
    write_projector(
        dir.path(),
        &Projection {
            name: "test embeddings",
            set: LabelledEmbeddings {
                embeddings: &embeddings,
                dim,
                labels: &labels,
                class_names: &names,
                paths: &[],
                images: Some((&pixels, side, side)),
            },
        },
    )
    .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tensorboard_projector.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["tensor_name"], "test embeddings", "{seen}");
    assert_eq!(seen["shape"], serde_json::json!([n, dim]), "{seen}");
    assert_eq!(seen["tensor_status"], 200);
    // TensorBoard sends the tensor as raw f32.
    assert_eq!(seen["tensor_bytes"], n * dim * 4);
    assert_eq!(seen["metadata_status"], 200);
    assert_eq!(
        seen["metadata_lines"],
        n + 1,
        "a header, then one line per row"
    );
    assert_eq!(seen["sprite_status"], 200);
    assert_eq!(seen["sprite_png"], true);
    assert_eq!(seen["sprite_dim"], serde_json::json!([side, side]));
}
