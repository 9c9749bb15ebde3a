//! Omniglot from npz files: small ones the test writes (splits, labels, rotations,
//! refusals), and the real set when `SIAMESE_DATA_DIR` holds it.

use std::path::Path;

use siamese_data::npz::{encode_npz, Array, Dtype};
use siamese_data::{load_omniglot, OmniglotOptions};

const SIDE: usize = 105;

/// `characters` characters of 20 drawings: character `c` inks a block at row `4c`, and
/// drawing `d` adds a dot at column `d`, so every image is told apart.
fn write_set(path: &Path, characters: usize, first_label: i64) {
    let mut images = Vec::with_capacity(characters * 20 * SIDE * SIDE);
    for c in 0..characters {
        for d in 0..20 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let ink = (y / 4 == c && x < 60) || (y == 100 && x == d * 5);
                    images.push(u8::from(!ink)); // true = paper
                }
            }
        }
    }
    let labels: Vec<u8> = (0..characters)
        .flat_map(|c| [first_label + c as i64; 20])
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let images = Array {
        dtype: Dtype::Bool,
        shape: vec![characters, 20, SIDE, SIDE],
        data: images,
    };
    let labels = Array {
        dtype: Dtype::I64,
        shape: vec![characters, 20],
        data: labels,
    };
    std::fs::write(
        path,
        encode_npz(&[("images", &images), ("labels", &labels)]),
    )
    .unwrap();
}

#[test]
fn small_files_give_the_splits_labels_and_rotations() {
    let dir = tempfile::tempdir().unwrap();
    write_set(&dir.path().join("images_background.npz"), 8, 0);
    write_set(&dir.path().join("images_evaluation.npz"), 5, 100);
    let options = OmniglotOptions {
        validation_classes: 3,
        ..OmniglotOptions::default()
    };
    let data = load_omniglot(dir.path(), &options).unwrap();
    assert_eq!((data.train.rows(), data.train.cols()), (28, 28));
    assert_eq!(
        (data.train.len(), data.validation.len(), data.test.len()),
        (5 * 20, 3 * 20, 5 * 20)
    );
    assert_eq!(data.spec.num_classes(), 13);
    // Test classes follow the background ones; no class in two splits.
    let classes = |s: &siamese_data::ImageSet| {
        s.labels()
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<u32>>()
    };
    assert_eq!(classes(&data.test), (8..13).collect());
    assert!(classes(&data.train).is_disjoint(&classes(&data.validation)));
    assert_eq!(data.spec.class_names[8], "evaluation/001");
    // Ink is bright: character 0's block (rows 0-3 at 105, the first row at 28).
    let first = data.test.image(0);
    assert!(first[0] > 200 && first[27] < 10, "{:?}", &first[..28]);

    let rotated = load_omniglot(
        dir.path(),
        &OmniglotOptions {
            rotate_classes: true,
            ..options
        },
    )
    .unwrap();
    assert_eq!(rotated.train.len(), 4 * 5 * 20);
    assert_eq!(rotated.spec.num_classes(), 13 + 3 * 8);
    // Validation and test are the same images and labels with or without rotations.
    for (a, b) in [
        (&rotated.validation, &data.validation),
        (&rotated.test, &data.test),
    ] {
        assert!(a.pixels() == b.pixels() && a.labels() == b.labels());
    }
    // Rotated classes are their own labels, named by the turn.
    let labels = classes(&rotated.train);
    assert_eq!(labels.len(), 4 * 5);
    assert!(labels.iter().all(|l| !(8..13).contains(l)));
    let some_rotation = *labels.iter().find(|&&l| l >= 13).unwrap() as usize;
    assert!(rotated.spec.class_names[some_rotation].contains('@'));
}

#[test]
fn missing_forged_and_mislabelled_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_omniglot(dir.path(), &OmniglotOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("images_background.npz is missing") && err.contains("SIAMESE_DATA_DIR"),
        "{err}"
    );
    write_set(&dir.path().join("images_background.npz"), 8, 0);
    // Evaluation images of the wrong side.
    let wrong = Array {
        dtype: Dtype::Bool,
        shape: vec![2, 20, 28, 28],
        data: vec![1; 2 * 20 * 28 * 28],
    };
    let labels = Array {
        dtype: Dtype::I64,
        shape: vec![2, 20],
        data: (0..40i64)
            .map(|i| i / 20)
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    let eval = dir.path().join("images_evaluation.npz");
    std::fs::write(
        &eval,
        encode_npz(&[("images", &wrong), ("labels", &labels)]),
    )
    .unwrap();
    let options = OmniglotOptions {
        validation_classes: 3,
        ..OmniglotOptions::default()
    };
    let err = load_omniglot(dir.path(), &options).unwrap_err().to_string();
    assert!(
        err.contains("images_evaluation.npz: images") && err.contains("[2, 20, 28, 28]"),
        "{err}"
    );
    // A truncated file.
    write_set(&eval, 3, 0);
    let bytes = std::fs::read(&eval).unwrap();
    std::fs::write(&eval, &bytes[..bytes.len() / 3]).unwrap();
    let err = load_omniglot(dir.path(), &options).unwrap_err().to_string();
    assert!(
        err.contains("images_evaluation.npz") && err.contains("not a valid .npz"),
        "{err}"
    );
    // Too many validation characters, and a non-square rotation.
    write_set(&eval, 3, 0);
    let too_many = OmniglotOptions {
        validation_classes: 7,
        ..options
    };
    let err = load_omniglot(dir.path(), &too_many)
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 2 and 6"), "{err}");
    let oblong = OmniglotOptions {
        image_size: [28, 20],
        rotate_classes: true,
        ..options
    };
    assert!(load_omniglot(dir.path(), &oblong)
        .unwrap_err()
        .to_string()
        .contains("square"));
}

/// The real files, when the shared data folder is there: 964 + 659 characters.
#[test]
fn the_real_set_when_present() {
    let Some(dir) = std::env::var_os("SIAMESE_DATA_DIR") else {
        eprintln!("SIAMESE_DATA_DIR is not set: skipping the real Omniglot check");
        return;
    };
    let folder = Path::new(&dir).join("omniglot");
    if !folder.join("images_background.npz").exists() {
        eprintln!("{} has no Omniglot: skipping", folder.display());
        return;
    }
    let data = load_omniglot(&folder, &OmniglotOptions::default()).unwrap();
    assert_eq!(
        (data.train.len(), data.validation.len(), data.test.len()),
        (864 * 20, 100 * 20, 659 * 20)
    );
    assert_eq!(data.spec.num_classes(), 964 + 659);
    // Ink is a minority of the pixels, and bright.
    let bright = data.test.pixels().iter().filter(|&&p| p > 127).count();
    let share = bright as f64 / data.test.pixels().len() as f64;
    assert!((0.02..0.3).contains(&share), "{share}");
}

#[cfg(feature = "image-folder")]
mod lake_runs {
    use std::path::Path;

    use image::{GrayImage, Luma};
    use siamese_data::omniglot::runs::load_runs;

    /// A 105x105 drawing: white paper, a black bar at row `4k`.
    fn drawing(path: &Path, k: u32) {
        let img = GrayImage::from_fn(105, 105, |_, y| Luma([if y / 4 == k { 0 } else { 255 }]));
        img.save(path).unwrap();
    }

    /// One run of three characters (queries in reverse order of the supports).
    fn write_run(root: &Path, name: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("training")).unwrap();
        std::fs::create_dir_all(dir.join("test")).unwrap();
        let mut labels = String::new();
        for k in 1..=3u32 {
            drawing(&dir.join(format!("training/class0{k}.png")), k);
            drawing(&dir.join(format!("test/item0{k}.png")), 4 - k);
            labels.push_str(&format!(
                "{name}/test/item0{k}.png {name}/training/class0{}.png\n",
                4 - k
            ));
        }
        std::fs::write(dir.join("class_labels.txt"), labels).unwrap();
    }

    #[test]
    fn runs_read_with_their_answers() {
        let root = tempfile::tempdir().unwrap();
        write_run(root.path(), "run01");
        write_run(root.path(), "run02");
        std::fs::write(root.path().join("README"), "not a run").unwrap();
        let runs = load_runs(root.path(), [28, 28]).unwrap();
        assert_eq!(runs.len(), 2);
        let run = &runs[0];
        assert_eq!(run.name, "run01");
        assert_eq!((run.support.len(), run.query.len()), (3, 3));
        // item01 shows character 3, whose support image is the third.
        assert_eq!(run.answers, [2, 1, 0]);
        // Ink is bright, at both sizes: character 1's bar is rows 4-7 of 105.
        assert_eq!(run.support_native[0][5 * 105], 255);
        assert_eq!(run.support_native[0][20 * 105], 0);
        assert!(run.support[0][28 + 3] > 100, "{:?}", &run.support[0][..60]);
        assert_eq!(run.query[0], run.support[2]);
    }

    #[test]
    fn broken_runs_are_refused_with_the_file_named() {
        let err = |root: &Path| load_runs(root, [28, 28]).unwrap_err().to_string();
        let root = tempfile::tempdir().unwrap();
        assert!(err(root.path()).contains("holds no runNN folders"));
        write_run(root.path(), "run01");
        let labels = root.path().join("run01/class_labels.txt");
        let good = std::fs::read_to_string(&labels).unwrap();

        std::fs::write(&labels, good.replace("class01.png", "class09.png")).unwrap();
        let e = err(root.path());
        assert!(
            e.contains("class_labels.txt") && e.contains("class09.png, which is not there"),
            "{e}"
        );

        let first = good.lines().next().unwrap();
        std::fs::write(&labels, format!("{good}{first}\n")).unwrap();
        assert!(err(root.path()).contains("is listed twice"));

        std::fs::write(&labels, "run01/test/item01.png\n").unwrap();
        assert!(err(root.path()).contains("line 1: expected `query.png support.png`"));

        std::fs::write(&labels, &good).unwrap();
        std::fs::remove_file(root.path().join("run01/test/item02.png")).unwrap();
        assert!(err(root.path()).contains("item02.png, which is not there"));

        drawing(&root.path().join("run01/test/item02.png"), 1);
        std::fs::write(
            root.path().join("run01/training/class01.png"),
            b"\x89PNG broken",
        )
        .unwrap();
        let e = err(root.path());
        assert!(
            e.contains("class01.png") && e.contains("not a readable image"),
            "{e}"
        );
    }
}
