//! `mpiexec -n 2 siamese train` (issue #26): the two ranks train as one process would,
//! rank 0 alone writes the run folder, and ranks started with different arguments both
//! refuse. Only with the feature `mpi` (CI runs it: `cargo xtask ci`).
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output};

mod common;

/// 12 classes of 16 PGM images of 12x12: bars at class-dependent rows and columns.
fn write_folder(dir: &Path) {
    let mut rng = siamese_data::Rng::new(26);
    for c in 0..12 {
        let class = dir.join(format!("c{c:02}"));
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..16 {
            let mut bytes = b"P5\n12 12\n255\n".to_vec();
            bytes.extend((0..144).map(|p| {
                let on = p / 12 == c || p % 12 == (c * 5) % 12;
                (if on { 190 } else { 20 } + rng.below(40)) as u8
            }));
            std::fs::write(class.join(format!("{i:02}.pgm")), bytes).unwrap();
        }
    }
}

fn mpiexec(args: &[&str]) -> Output {
    Command::new("mpiexec")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SIAMESE_DATA_DIR")
        .output()
        .expect("mpiexec (Debian: apt-get install mpich libmpich-dev)")
}

/// The f32 tensors of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Folder entries, with the TensorBoard file's time-stamped name reduced to its kind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|n| {
            if n.starts_with("events.out.tfevents") {
                "events".into()
            } else {
                n
            }
        })
        .collect();
    names.sort();
    names
}

/// `siamese train` with `args` (then `--data data --out <dir>`) alone into `root/one`
/// and under `mpiexec -n 2` into `root/two`, both succeeding; rank 0's stderr of the
/// second.
fn train_alone_and_on_two_ranks(root: &Path, data: &Path, args: &[&str]) -> String {
    let settings = |out: &Path| -> Vec<String> {
        let paths = [
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        std::iter::once("train")
            .chain(args.iter().copied())
            .chain(paths)
            .map(str::to_string)
            .collect()
    };
    let o = common::command()
        .args(settings(&root.join("one")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let bin = env!("CARGO_BIN_EXE_siamese");
    let mut two = vec!["-n".to_string(), "2".to_string(), bin.to_string()];
    two.extend(settings(&root.join("two")));
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    let o = mpiexec(&two);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    err
}

#[test]
fn two_ranks_train_as_one_process_and_only_rank_0_writes() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_folder(&data);
    let err =
        train_alone_and_on_two_ranks(root.path(), &data, &["--steps", "6", "--eval-every", "3"]);
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    assert_eq!(
        err.matches("data-parallel: 2 ranks").count(),
        1,
        "rank 0 alone reports: {err}"
    );
    let reports = err.lines().filter(|l| l.starts_with("model: ")).count();
    assert_eq!(reports, 1, "rank 0 alone evaluates: {err}");
    assert_eq!(entries(&one), entries(&two));
    // The default recipe (dropout and batch norm over the global batch): the same model
    // within the 1e-5 (2.3e-6 measured after 6 steps; 3e-5 before the
    // parameters with a zero true gradient were left out of training).
    let relative = relative_difference(
        &two.join("model.safetensors"),
        &one.join("model.safetensors"),
    );
    eprintln!("2 ranks against 1 process after 6 steps: relative difference {relative:e}");
    assert!(relative <= 1e-5, "relative difference {relative}");
}

/// The relative difference between the f32 tensors of two checkpoints, end to end.
fn relative_difference(got: &Path, want: &Path) -> f64 {
    let (a, b) = (tensors(want), tensors(got));
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm) = (0f64, 0f64);
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            diff += f64::from(x - y).powi(2);
            norm += f64::from(*x).powi(2);
        }
    }
    (diff / norm).sqrt()
}

/// The faces recipe in small (episodes, the strided tower, distortions, Adam) for 20
/// steps, `mpiexec -n 2` against one process, within the 1e-5 (7.6e-8
/// measured). On these bars no channel happened to move every embedding alike, so the
/// run measured the same with the trainer's per-step leave-out switched off; the
/// thread-rank test (`siamese-train/tests/data_parallel.rs`) is the one that meets it.
#[test]
fn two_ranks_train_the_episode_recipe_as_one_process() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_folder(&data);
    let args = [
        "--pairs",
        "episodes",
        "--ways",
        "4",
        "--shots",
        "1",
        "--queries",
        "2",
        "--tower",
        "strided",
        "--augment",
        "--steps",
        "20",
        "--eval-every",
        "20",
        "--image-size",
        "16x16",
    ];
    train_alone_and_on_two_ranks(root.path(), &data, &args);
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    let relative = relative_difference(
        &two.join("model.safetensors"),
        &one.join("model.safetensors"),
    );
    eprintln!(
        "episodes, 2 ranks against 1 process after 20 steps: relative difference {relative:e}"
    );
    assert!(relative <= 1e-5, "relative difference {relative}");
}

#[test]
fn ranks_started_with_different_arguments_both_refuse() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_folder(&data);
    let bin = env!("CARGO_BIN_EXE_siamese");
    let out = root.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let rank = |seed: &'static str| -> Vec<&str> {
        vec![
            "-n", "1", bin, "train", "--data", d, "--steps", "2", "--seed", seed, "--out", o,
        ]
    };
    let mut args = rank("1");
    args.push(":");
    args.extend(rank("2"));
    let output = mpiexec(&args);
    let err = common::stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("the ranks disagree"), "{err}");
    // Whichever rank mpiexec lets print names the field rank 1 differs in, with both
    // values (mpiexec may stop rank 1 as soon as rank 0 exits).
    assert!(err.contains("seed = 1 / 2"), "{err}");
    assert!(!out.join("last.safetensors").exists());
}
