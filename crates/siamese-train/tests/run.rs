//! End-to-end runs on a small synthetic data set: the model learns, the run folder
//! holds what it should, a stopped-and-resumed run matches an uninterrupted one exactly,
//! and divergence stops the run without losing the last good checkpoint.

use std::path::Path;

use siamese_data::{evaluation_pairs, AugmentConfig, Dataset, Draw, HeldOutClasses, ImageSet};
use siamese_model::TowerConfig;
use siamese_train::eval::{PROTOCOL_PAIRS, TEST_PAIRS_SEED, VALIDATION_PAIRS_SEED};
use siamese_train::{
    accuracy_at, load_run_config, pair_metrics, run, EvalReport, KnnGallery, LossConfig,
    OptimConfig, Pairing, RunOptions, SamplerConfig, Schedule, SelfSupervised, Silent, TrainConfig,
    TrainError, ViewLoss,
};

mod common;
use common::{dataset, CLASSES, SIDE};

fn config() -> TrainConfig {
    TrainConfig {
        preset: "test".into(),
        data: "synthetic".into(),
        image_folder: None,
        holdout_classes: None,
        omniglot: None,
        model: TowerConfig {
            input_height: SIDE,
            input_width: SIDE,
            conv_channels: vec![4],
            conv_strides: vec![2],
            fc_widths: vec![16],
            embedding_dim: 2,
            ..Default::default()
        },
        loss: LossConfig::Chopra { q: 5.0 },
        sampler: SamplerConfig::Balanced {
            positive_fraction: 0.5,
        },
        pairing: Pairing::Sampled,
        augment: None,
        self_supervised: None,
        optim: OptimConfig {
            lr: 3e-3,
            schedule: Schedule::Cosine {
                final_fraction: 0.1,
            },
            adam: Default::default(),
            sgd: None,
        },
        steps: 60,
        batch_size: 32,
        seed: 5,
        eval_every: 30,
        validation_pairs: 400,
        checkpoint_every: 10,
        log_every: 5,
    }
}

fn model_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(dir.join("last.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Trains `config` on the synthetic data into `dir` and checks that the model learned.
fn train_and_check_it_learns(config: &TrainConfig, dir: &Path) -> EvalReport {
    let summary = run(config, &dataset(), dir, &RunOptions::default(), &mut Silent).unwrap();
    let report = summary.report.unwrap();
    assert!(report.test_roc_auc > 0.95, "{report:?}");
    assert!(report.knn5_accuracy > 0.9, "{report:?}");
    report
}

#[test]
fn learns_and_writes_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let report = train_and_check_it_learns(&config(), dir.path());
    for file in [
        "config.json",
        "model.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "metrics.json",
        "test_embeddings.safetensors",
        "explorer.html",
        "tensors.tsv",
        "metadata.tsv",
        "sprite.png",
        "projector_config.pbtxt",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    // The projector's rows are the saved test embeddings, and the page carries the
    // model's threshold.
    let rows = std::fs::read_to_string(dir.path().join("tensors.tsv")).unwrap();
    assert_eq!(rows.lines().count(), dataset().test.len());
    let page = std::fs::read_to_string(dir.path().join("explorer.html")).unwrap();
    assert!(page.contains(&format!("\"threshold\":{}", report.threshold)));
    assert_eq!(load_run_config(dir.path()).unwrap(), config());
    let ckpt = siamese_model::checkpoint::read(
        &dir.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let threshold: f64 = ckpt.metadata["threshold"].parse().unwrap();
    assert_eq!(threshold, report.threshold);
    assert_eq!(losses(dir.path()).len(), 12);
    // The TensorBoard file holds the version record, 12 step records and 2 evaluations,
    // every one with valid CRCs.
    let events: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(events.len(), 1);
    let records = siamese_train::tensorboard::read_records(&events[0]).unwrap();
    assert_eq!(records.len(), 1 + 12 + 2);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.windows(18).any(|w| w == b"validation/roc_auc"))
            .count(),
        2
    );
    // Refuses to overwrite a run.
    let err = run(
        &config(),
        &dataset(),
        dir.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
    // Not a config error: the config is fine, the folder is taken.
    assert!(
        err.to_string()
            .starts_with(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn learns_from_every_pair_in_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let all_in_batch = TrainConfig {
        pairing: Pairing::AllInBatch,
        ..config()
    };
    train_and_check_it_learns(&all_in_batch, dir.path());
    let saved = load_run_config(dir.path()).unwrap();
    assert_eq!(saved.pairing, Pairing::AllInBatch);
    // The loss differs from the sampled-pairs run's: the setting is not ignored.
    let sampled = tempfile::tempdir().unwrap();
    run(
        &config(),
        &dataset(),
        sampled.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    assert_ne!(losses(dir.path()), losses(sampled.path()));
}

/// Batch-hard and multi-similarity mining train a model too, are saved in config.json,
/// and change what the loss sees (their losses differ from all-in-batch's).
#[test]
fn learns_from_mined_pairs() {
    let all = tempfile::tempdir().unwrap();
    let all_in_batch = TrainConfig {
        pairing: Pairing::AllInBatch,
        ..config()
    };
    run(
        &all_in_batch,
        &dataset(),
        all.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let per_class = SamplerConfig::PerClass {
        images_per_class: 4,
    };
    for (pairing, sampler) in [
        (Pairing::BatchHard, config().sampler),
        (Pairing::MultiSimilarity { epsilon: 0.1 }, config().sampler),
        (Pairing::BatchHard, per_class),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mined = TrainConfig {
            pairing,
            sampler,
            ..config()
        };
        train_and_check_it_learns(&mined, dir.path());
        let written = load_run_config(dir.path()).unwrap();
        assert_eq!((written.pairing, written.sampler), (pairing, sampler));
        assert_ne!(losses(dir.path()), losses(all.path()), "{pairing:?}");
    }
    let bad = TrainConfig {
        pairing: Pairing::MultiSimilarity { epsilon: f64::NAN },
        ..config()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("slack"), "{err}");
}

#[test]
fn configs_written_before_pairing_existed_still_load() {
    let mut json: serde_json::Value = serde_json::to_value(config()).unwrap();
    json.as_object_mut().unwrap().remove("pairing");
    let config: TrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(config.pairing, Pairing::Sampled);
}

#[test]
fn stopped_and_resumed_run_matches_an_uninterrupted_one() {
    stop_resume_and_compare(&config());
}

/// Augmentation and the self-supervised views draw from their own generator: it is
/// saved and restored too.
#[test]
fn stopped_and_resumed_run_with_augmented_views_matches_an_uninterrupted_one() {
    let c = TrainConfig {
        pairing: Pairing::AllInBatch,
        augment: Some(AugmentConfig::default()),
        self_supervised: Some(SelfSupervised {
            weight: 0.5,
            loss: ViewLoss::NtXent { temperature: 0.5 },
        }),
        batch_size: 8,
        ..config()
    };
    stop_resume_and_compare(&c);
}

/// P x K batches draw from the sampler's own generator, saved and restored.
#[test]
fn stopped_and_resumed_run_with_per_class_batches_matches_an_uninterrupted_one() {
    stop_resume_and_compare(&TrainConfig {
        pairing: Pairing::BatchHard,
        sampler: SamplerConfig::PerClass {
            images_per_class: 4,
        },
        ..config()
    });
}

/// A `last.safetensors` written by builds before the state protocol (one
/// `train_state` JSON object in the metadata) still resumes, bit for bit.
#[test]
fn a_checkpoint_in_the_first_layout_resumes() {
    let c = TrainConfig {
        augment: Some(AugmentConfig::default()),
        ..config()
    };
    stop_rewrite_resume_and_compare(&c, rewrite_in_first_layout);
}

/// Rewrites `dir/last.safetensors` as the first layout had it: the same tensors, and
/// the progress and generators in one `train_state` object.
fn rewrite_in_first_layout(dir: &Path) {
    use serde_json::{json, Value};
    use siamese_model::StateDict;
    let path = dir.join("last.safetensors");
    let new = StateDict::load(&path, &candle_core::Device::Cpu).unwrap();
    let parsed = |key: &str| -> Value { serde_json::from_str(new.text(key).unwrap()).unwrap() };
    let run = parsed("run");
    let train_state = json!({
        "step": run["step"],
        "last_loss": run["last_loss"],
        "sampler": {"kind": parsed("sampler.kind"), "rng": parsed("sampler.rng")},
        "dropout": parsed("model.dropout"),
        "adam_step": parsed("adam.step"),
        "best_validation_eer": run["best_validation_eer"],
        "augment": parsed("augment.rng"),
    });
    let mut old = StateDict::new();
    for (k, t) in new.tensors() {
        old.insert_tensor(k, t.clone());
    }
    old.insert_text("train_state", train_state.to_string());
    old.insert_text("train_config", new.text("train_config").unwrap());
    old.save(&path).unwrap();
    let back = StateDict::load(&path, &candle_core::Device::Cpu).unwrap();
    assert!(
        !back.contains("run") && !back.contains("sampler"),
        "rewritten"
    );
}

fn stop_resume_and_compare(config: &TrainConfig) {
    stop_rewrite_resume_and_compare(config, |_| {});
}

fn stop_rewrite_resume_and_compare(config: &TrainConfig, before_resume: impl Fn(&Path)) {
    let config = || config.clone();
    let data = dataset();
    let no_eval = RunOptions {
        final_eval: false,
        ..Default::default()
    };
    let whole = tempfile::tempdir().unwrap();
    let a = run(&config(), &data, whole.path(), &no_eval, &mut Silent).unwrap();

    let broken = tempfile::tempdir().unwrap();
    // Stops after step 27: the last checkpoint is at step 20, records up to 25 are logged.
    let stop = RunOptions {
        stop_after: Some(27),
        ..no_eval.clone()
    };
    run(&config(), &data, broken.path(), &stop, &mut Silent).unwrap();
    before_resume(broken.path());
    let resume = RunOptions {
        resume: true,
        ..no_eval
    };
    let b = run(
        &load_run_config(broken.path()).unwrap(),
        &data,
        broken.path(),
        &resume,
        &mut Silent,
    )
    .unwrap();

    assert_eq!(a.last_loss, b.last_loss);
    assert_eq!(losses(whole.path()), losses(broken.path()));
    assert_eq!(
        model_tensors(whole.path()),
        model_tensors(broken.path()),
        "weights, batch-norm statistics and Adam moments agree bit for bit"
    );
}

fn hold_out(classes: &str) -> (TrainConfig, Dataset) {
    let held_out: HeldOutClasses = classes.parse().unwrap();
    let config = TrainConfig {
        holdout_classes: Some(held_out.clone()),
        ..config()
    };
    (config, dataset().hold_out(&held_out).unwrap())
}

#[test]
fn held_out_classes_never_reach_a_training_batch() {
    let (config, data) = hold_out("1,3");
    let mut sampler = config
        .sampler
        .build(data.train.labels(), data.train.num_classes(), 9)
        .unwrap();
    let mut seen = [0usize; CLASSES];
    for _ in 0..2_000 {
        let Draw::Pairs(batch) = sampler.draw(config.batch_size) else {
            panic!("a pair sampler draws pairs");
        };
        for &i in batch.left.iter().chain(&batch.right) {
            seen[data.train.labels()[i] as usize] += 1;
        }
    }
    assert_eq!((seen[1], seen[3]), (0, 0), "{seen:?}");
    assert!(seen[0] > 0 && seen[2] > 0);
    // A run given data that still holds a held-out class refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &config,
        &dataset(),
        dir.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("holds out classes 1,3") && err.contains("hold_out"),
        "{err}"
    );
}

#[test]
fn held_out_run_reports_unseen_classes_retrieval_and_baselines() {
    let (config, data) = hold_out("1,3");
    let dir = tempfile::tempdir().unwrap();
    let summary = run(
        &config,
        &data,
        dir.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let report = summary.report.unwrap();
    assert_eq!(report.unseen_test_classes, vec![1, 3]);
    assert_eq!(report.knn_gallery, KnnGallery::TestLeaveOneOut);
    // Two unseen classes make one class pair, whose pairs are all the test pairs: its
    // figures are the whole report's, the model's and the pixels'.
    assert_eq!(report.class_pairs.len(), 1);
    let pair = &report.class_pairs[0];
    assert_eq!(pair.classes, [1, 3]);
    assert_eq!(pair.roc_auc, report.test_roc_auc);
    assert_eq!(
        pair.pixel_roc_auc,
        report.pixel_baseline.unwrap().test_roc_auc
    );
    assert_eq!(
        pair.pairs[0] + pair.pairs[1],
        siamese_train::eval::PROTOCOL_PAIRS
    );
    // The retrieval figures are the library's, over the saved test embeddings.
    let saved = candle_core::safetensors::load(
        dir.path().join("test_embeddings.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let embeddings: Vec<f32> = saved["embeddings"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let r = siamese_metrics::retrieval_leave_one_out(&embeddings, data.test.labels(), 2);
    assert_eq!(
        (report.precision_at_1, report.r_precision, report.map_at_r),
        (r.precision_at_1, r.r_precision, r.map_at_r)
    );
    // The checkpoint says which classes were held out, so eval can rebuild the protocol.
    let ckpt = siamese_model::checkpoint::read(
        &dir.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(ckpt.metadata["holdout_classes"], "[1,3]");
    assert_eq!(load_run_config(dir.path()).unwrap(), config);
}

/// With `embed_from: fc1` everything after training (threshold, metrics, saved
/// embeddings) uses the hidden layer's unit-length output: the saved test embeddings
/// are 16-wide unit rows, and the report's retrieval and verification figures are those
/// of these rows.
#[test]
fn a_run_embedding_from_a_hidden_layer_reports_on_that_layer() {
    let (mut config, data) = hold_out("1,3");
    config.model.embed_from = siamese_model::TowerLayer::Hidden(0);
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &config,
        &data,
        dir.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap()
    .report
    .unwrap();
    let saved = candle_core::safetensors::load(
        dir.path().join("test_embeddings.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(saved["embeddings"].dims(), &[data.test.len(), 16]);
    let rows: Vec<Vec<f32>> = saved["embeddings"].to_vec2().unwrap();
    for row in &rows {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let flat: Vec<f32> = rows.concat();
    let r = siamese_metrics::retrieval_leave_one_out(&flat, data.test.labels(), 16);
    assert_eq!(report.precision_at_1, r.precision_at_1);
    let pairs = siamese_data::evaluation_pairs(
        data.test.labels(),
        data.test.num_classes(),
        siamese_train::eval::PROTOCOL_PAIRS,
        siamese_train::eval::TEST_PAIRS_SEED,
    )
    .unwrap();
    let d = siamese_metrics::pair_distances(&flat, 16, &pairs.left, &pairs.right);
    let m = siamese_metrics::pair_metrics(&d, &pairs.same);
    assert_eq!(report.test_roc_auc, m.roc_auc);
}

/// The pixel baseline, recomputed here from the definition: the protocol's pairs,
/// Euclidean distance of pixels / 255, threshold from validation, then the test pairs.
#[test]
fn pixel_baseline_equals_a_direct_computation() {
    let data = dataset();
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &config(),
        &data,
        dir.path(),
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap()
    .report
    .unwrap();
    let distances = |set: &ImageSet, seed| {
        let pairs =
            evaluation_pairs(set.labels(), set.num_classes(), PROTOCOL_PAIRS, seed).unwrap();
        let d: Vec<f32> = pairs
            .left
            .iter()
            .zip(&pairs.right)
            .map(|(&a, &b)| {
                let sum: f64 = set
                    .image(a)
                    .iter()
                    .zip(set.image(b))
                    .map(|(&x, &y)| (f64::from(x) / 255.0 - f64::from(y) / 255.0).powi(2))
                    .sum();
                sum.sqrt() as f32
            })
            .collect();
        (d, pairs.same)
    };
    let (vd, vs) = distances(&data.validation, VALIDATION_PAIRS_SEED);
    let (td, ts) = distances(&data.test, TEST_PAIRS_SEED);
    let validation = pair_metrics(&vd, &vs);
    let test = pair_metrics(&td, &ts);
    let pixel = report.pixel_baseline.unwrap();
    assert!(
        (pixel.test_roc_auc - test.roc_auc).abs() < 1e-3,
        "{pixel:?} {test:?}"
    );
    assert!((pixel.test_eer - test.eer).abs() < 1e-2);
    assert!((pixel.validation.roc_auc - validation.roc_auc).abs() < 1e-3);
    let accuracy = accuracy_at(&td, &ts, validation.best_threshold);
    assert!(
        (pixel.test_accuracy - accuracy).abs() < 1e-2,
        "{pixel:?} {accuracy}"
    );
    // The synthetic classes are bright squares: pixels alone tell them apart well, and
    // the PCA baseline (2-D here) is there beside it.
    assert!(pixel.test_roc_auc > 0.9, "{pixel:?}");
    assert!(report.pca_baseline.is_some());
}

/// Every safetensors file in `dir` loads: finite values, a valid threshold.
fn saved_files_are_sound(dir: &Path) {
    let model = dir.join("model.safetensors");
    if model.exists() {
        siamese_model::checkpoint::read(&model, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("a broken model was saved: {e}"));
    }
    if dir.join("last.safetensors").exists() {
        for (name, values) in model_tensors(dir) {
            assert!(
                values.iter().all(|x| x.is_finite()),
                "{name} in last.safetensors"
            );
        }
    }
}

/// Issue #14, faults 2 and 3: at a huge learning rate the weights go NaN while a
/// saturating loss can stay finite. The run must stop at that step, naming it and what
/// went wrong, and leave only sound files (a checkpoint after every step). Each of the
/// three watches is hit: the validation distances, the loss, and the weights
/// themselves (all-negative pairs: the loss stays bounded while an update overflows).
#[test]
fn divergence_is_caught_in_the_weights_and_nothing_broken_is_saved() {
    let data = dataset();
    for (lr, eval_every, positive_fraction, found) in [
        (1e6, 1, 0.5, "the validation distances are not finite"),
        (1e30, 0, 0.5, "the loss is NaN"),
        (
            1e38,
            0,
            0.0,
            "fc1.bias holds NaN or infinity after the update (loss 9.57",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.checkpoint_every = 1;
        c.eval_every = eval_every;
        c.sampler = SamplerConfig::Balanced { positive_fraction };
        c.optim.lr = lr;
        let options = RunOptions {
            final_eval: false,
            ..Default::default()
        };
        let err = run(&c, &data, dir.path(), &options, &mut Silent).unwrap_err();
        let TrainError::Diverged { step, ref kept, .. } = err else {
            panic!("lr {lr}: expected divergence, got {err}")
        };
        let message = err.to_string();
        assert!(
            message.contains(&format!("diverged at step {step}: {found}")),
            "{message}"
        );
        match step {
            1 => assert!(kept.contains("no checkpoint"), "{message}"),
            _ => assert!(kept.contains(&format!("step {}", step - 1)), "{message}"),
        }
        saved_files_are_sound(dir.path());
    }
}

/// Issue #14, fault 4: two runs on one folder. The second is refused before it writes
/// anything; once the first lets go, the folder is usable again (a killed process's
/// lock goes with it, as this dropped one does).
#[test]
fn a_run_folder_has_one_owner() {
    let data = dataset();
    let dir = tempfile::tempdir().unwrap();
    let lock = std::fs::File::create(dir.path().join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let mut c = config();
    c.steps = 10;
    let options = RunOptions {
        final_eval: false,
        ..Default::default()
    };
    let err = run(&c, &data, dir.path(), &options, &mut Silent).unwrap_err();
    assert!(
        err.to_string().starts_with("another process is training"),
        "{err}"
    );
    assert!(!dir.path().join("config.json").exists(), "nothing written");
    drop(lock);
    run(&c, &data, dir.path(), &options, &mut Silent).unwrap();
}

/// Issue #14, faults 6 and 8: killed after the first model but before the first
/// resume checkpoint. A fresh start is refused (it would lose the run) and points at
/// `--resume`, which starts over from step 0: the old records are not appended to,
/// orphaned temporary files go, and the result equals an uninterrupted run's.
#[test]
fn a_run_killed_before_its_first_checkpoint_resumes_from_step_0() {
    let data = dataset();
    let mut c = config();
    c.checkpoint_every = 50;
    let no_eval = RunOptions {
        final_eval: false,
        ..Default::default()
    };
    let whole = tempfile::tempdir().unwrap();
    run(&c, &data, whole.path(), &no_eval, &mut Silent).unwrap();

    let killed = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        stop_after: Some(35),
        ..no_eval.clone()
    };
    run(&c, &data, killed.path(), &stop, &mut Silent).unwrap();
    assert!(killed.path().join("model.safetensors").exists());
    assert!(!killed.path().join("last.safetensors").exists());
    let orphan = killed.path().join(".last.safetensors.4242.tmp");
    std::fs::write(&orphan, b"half a checkpoint").unwrap();

    let err = run(&c, &data, killed.path(), &no_eval, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("resume it"), "{err}");
    let resume = RunOptions {
        resume: true,
        ..no_eval
    };
    run(&c, &data, killed.path(), &resume, &mut Silent).unwrap();
    assert!(!orphan.exists(), "orphaned temporary files are removed");
    assert_eq!(
        losses(whole.path()),
        losses(killed.path()),
        "each step logged once"
    );
    assert_eq!(model_tensors(whole.path()), model_tensors(killed.path()));
}

/// Issue #14: `--resume` used to ignore other settings silently. Now a change of any
/// setting is refused, naming it; more steps are taken, and recorded in config.json.
#[test]
fn resume_refuses_other_settings_and_takes_more_steps() {
    let data = dataset();
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        final_eval: false,
        ..Default::default()
    };
    run(&config(), &data, dir.path(), &options, &mut Silent).unwrap();
    let resume = RunOptions {
        resume: true,
        ..options
    };
    let mut c = config();
    c.optim.lr = 1e-2;
    c.batch_size = 16;
    let err = run(&c, &data, dir.path(), &resume, &mut Silent).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("batch_size") && message.contains("optim.lr"),
        "{message}"
    );
    let mut c = config();
    c.steps = 40;
    let err = run(&c, &data, dir.path(), &resume, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("past the 40 steps"), "{err}");
    c.steps = 70;
    let summary = run(&c, &data, dir.path(), &resume, &mut Silent).unwrap();
    assert_eq!(summary.steps, 70);
    assert_eq!(load_run_config(dir.path()).unwrap().steps, 70);
    assert_eq!(losses(dir.path()).last().unwrap().0, 70);
}

/// Issue #14, fault 10: two identical runs write byte-identical checkpoints.
#[test]
fn identical_runs_write_identical_checkpoints() {
    let data = dataset();
    let mut c = config();
    c.steps = 30;
    let options = RunOptions {
        final_eval: false,
        ..Default::default()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&c, &data, a.path(), &options, &mut Silent).unwrap();
    run(&c, &data, b.path(), &options, &mut Silent).unwrap();
    for file in ["model.safetensors", "last.safetensors"] {
        assert_eq!(
            std::fs::read(a.path().join(file)).unwrap(),
            std::fs::read(b.path().join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Issue #14, fault 9: sizes that would need terabytes are one error, before any
/// allocation.
#[test]
fn oversized_runs_are_refused_by_validation() {
    let mut c = config();
    c.batch_size = 10_000_000;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("batch size 10000000"), "{err}");
    let mut c = config();
    c.model.embedding_dim = 1_000_000_000;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("embedding_dim"), "{err}");
}
