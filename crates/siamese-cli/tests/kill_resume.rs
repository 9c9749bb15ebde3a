//! Issue #14: `kill -9` at random moments of a run, in a loop, each time resumed (or
//! started again when the kill came before the run had a config), must end with the
//! files of an uninterrupted run, bit for bit: the best model, the resume checkpoint,
//! the test embeddings and the report.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use siamese_data::Rng;

mod common;

use common::write_bar_folder as write_folder;

fn train(args: &[&str]) -> Child {
    common::command()
        .arg("train")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_at_random_moments_and_resumed_equals_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_folder(&data);
    let data = data.to_str().unwrap();
    let settings = [
        "--data",
        data,
        "--test-images",
        "4",
        "--val-images",
        "4",
        "--steps",
        "60",
        "--batch",
        "8",
        "--eval-every",
        "10",
        "--checkpoint-every",
        "3",
    ];
    let whole = root.path().join("whole");
    let whole_arg = whole.to_str().unwrap();
    let started = Instant::now();
    finish(train(&[&settings[..], &["--out", whole_arg]].concat()));
    let run_time = started.elapsed();

    let killed = root.path().join("killed");
    let killed_arg = killed.to_str().unwrap();
    let mut rng = Rng::new(2024);
    let (mut kills, mut kills_after_a_checkpoint) = (0, 0);
    loop {
        let mut child = if killed.join("config.json").exists() {
            train(&["--resume", killed_arg])
        } else {
            train(&[&settings[..], &["--out", killed_arg]].concat())
        };
        if kills >= 12 {
            finish(child);
            break;
        }
        // Up to a third of a whole run's time: each attempt gets some way further, so
        // the kills fall all along it, start-up and the final evaluation included.
        let delay = run_time.mul_f64(rng.unit_f64() / 3.0);
        std::thread::sleep(delay.max(Duration::from_millis(5)));
        if child.try_wait().unwrap().is_some() {
            finish(child);
            break;
        }
        let had_checkpoint = killed.join("last.safetensors").exists();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        kills_after_a_checkpoint += usize::from(had_checkpoint);
    }
    eprintln!("{kills} kills, {kills_after_a_checkpoint} of them after a checkpoint existed");
    assert!(kills >= 3, "only {kills} kills landed before the run ended");
    assert!(
        kills_after_a_checkpoint >= 1,
        "no kill landed after a checkpoint ({kills} kills)"
    );
    for file in [
        "model.safetensors",
        "last.safetensors",
        "test_embeddings.safetensors",
        "metrics.json",
    ] {
        assert!(
            std::fs::read(whole.join(file)).unwrap() == std::fs::read(killed.join(file)).unwrap(),
            "{file} differs after {kills} kills"
        );
    }
    // The TensorBoard curves too: each step's scalars once across the event files
    // (the steps logged past a checkpoint before a kill were in two files), with the
    // uninterrupted run's values (speeds aside, which depend on the clock).
    let curves = |dir: &std::path::Path| {
        let mut points = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().contains("tfevents") {
                points.extend(siamese_train::tensorboard::read_scalars(&path).unwrap());
            }
        }
        let mut points: Vec<(u64, String, Option<u32>)> = points
            .into_iter()
            .map(|(step, tag, v)| {
                let value = (!tag.ends_with("_per_s")).then_some(v.to_bits());
                (step, tag, value)
            })
            .collect();
        points.sort();
        points
    };
    let (whole_curves, killed_curves) = (curves(&whole), curves(&killed));
    assert!(!whole_curves.is_empty());
    assert!(
        whole_curves == killed_curves,
        "TensorBoard scalars differ after {kills} kills: {} points against {}",
        killed_curves.len(),
        whole_curves.len()
    );
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A finished 4-step run (checkpoints every 2 steps) on a fresh image folder under
/// `root`; returns its folder.
fn four_step_run(root: &std::path::Path) -> std::path::PathBuf {
    let data = root.join("data");
    write_folder(&data);
    let run = root.join("run");
    finish(train(&[
        "--data",
        data.to_str().unwrap(),
        "--test-images",
        "4",
        "--val-images",
        "4",
        "--steps",
        "4",
        "--batch",
        "8",
        "--checkpoint-every",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]));
    run
}

/// A failed command whose last line (after the lines saying what was loaded) is one
/// clear error holding each of `needles`; no panic.
fn assert_ends_in_error(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    let last_line = err.trim_end().lines().last().unwrap_or("");
    assert!(last_line.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(last_line.contains(needle), "expected {needle:?} in {err}");
    }
}

/// Issue #28, case 3: `config.json` edited by hand (the learning rate, the seed) and
/// `--resume` trained on with the edit, exit 0, although `last.safetensors` holds the
/// run's own config. The two are compared: a difference is refused, naming the fields;
/// a new `--steps` still resumes.
#[test]
fn an_edited_run_folder_does_not_resume() {
    let root = tempfile::tempdir().unwrap();
    let run = four_step_run(root.path());
    let run_text = run.to_str().unwrap();
    let config_path = run.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut edited: serde_json::Value = serde_json::from_str(&original).unwrap();
    edited["optim"]["lr"] = 0.5.into();
    edited["seed"] = 99.into();
    std::fs::write(&config_path, edited.to_string()).unwrap();
    let out = train(&["--resume", run_text, "--steps", "6"])
        .wait_with_output()
        .unwrap();
    assert_ends_in_error(
        &out,
        &["optim.lr", "seed", "last.safetensors", "config.json"],
    );
    // Put back, it resumes to the new length.
    std::fs::write(&config_path, original).unwrap();
    finish(train(&["--resume", run_text, "--steps", "6"]));
}

/// Issue #28, case 2: a `last.safetensors` whose sampler generator state is all zeros
/// (xoshiro's one invalid state) resumed and then spun at 100% CPU forever in the
/// sampler's rejection loop. It is refused in one line, within seconds.
#[test]
fn a_resume_state_with_an_all_zero_generator_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let run = four_step_run(root.path());
    let run_text = run.to_str().unwrap();
    // The forger's edit: the sampler's state in the checkpoint's metadata, zeroed.
    let last = run.join("last.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let rng = meta
        .get_mut("sampler.rng")
        .expect("the sampler's state is saved");
    *rng = r#"{"s":[0,0,0,0]}"#.to_string();
    let forged = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(&last, forged).unwrap();

    let mut child = train(&["--resume", run_text, "--steps", "8"]);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the resume with an all-zero generator state hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_ends_in_error(&out, &["all zeros", "last.safetensors", "sampler.rng"]);
}
