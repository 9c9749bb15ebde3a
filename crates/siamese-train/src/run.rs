//! A training run in its folder (`runs/<name>/`):
//!
//! - `config.json`: the [`TrainConfig`], written before any work;
//! - `model.safetensors`: the model with the best validation EER so far (with the
//!   distance threshold in its metadata);
//! - `last.safetensors`: everything a resumed run needs, written atomically every
//!   `checkpoint_every` steps: the [`Trainer`]'s state through the one state protocol
//!   ([`Stateful`]: weights and batch-norm statistics and the dropout generator under
//!   `model.`, Adam's moments under `adam.`, the sampler's generator under `sampler.`,
//!   the augmenter's under `augment.`), the run's progress (`run`) and its config;
//! - `metrics.jsonl`: one JSON record per logged step and per evaluation;
//! - `events.out.tfevents.*`: the same scalars for TensorBoard (`tensorboard --logdir
//!   runs`), a new file per resumed session;
//! - at the end, `metrics.json` (the evaluation protocol's report) and
//!   `test_embeddings.safetensors` (`embeddings [n, dim]`, `labels [n]`).
//!
//! A run stopped at any moment (kill -9 included) and resumed ends with the same weights
//! and losses as an uninterrupted one: all randomness is in saved generators, and
//! records logged after the last checkpoint are dropped on resume and logged again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use siamese_data::{Augmenter, Batcher, Dataset, Rng};
use siamese_model::checkpoint;
use siamese_model::{ConvTower, DropoutState, SiameseModel};
use siamese_state::{StateDict, Stateful};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::eval::{embed_set, evaluate, pair_metrics_of, EvalReport, VALIDATION_PAIRS_SEED};
use crate::explore::Exploration;
use crate::labelled::LabelledEmbeddings;
use crate::metrics::PairMetrics;
use crate::projector::Projection;
use crate::provenance::Provenance;
use crate::tensorboard::EventWriter;
use crate::trainer::Trainer;

/// File names inside a run folder.
pub mod files {
    /// The run's configuration.
    pub const CONFIG: &str = "config.json";
    /// The best model.
    pub const MODEL: &str = "model.safetensors";
    /// The resume checkpoint.
    pub const LAST: &str = "last.safetensors";
    /// Logged records.
    pub const METRICS_LOG: &str = "metrics.jsonl";
    /// The final report.
    pub const METRICS: &str = "metrics.json";
    /// Test embeddings and labels.
    pub const TEST_EMBEDDINGS: &str = "test_embeddings.safetensors";
    /// The explorer page of the test embeddings ([`crate::explore`]).
    pub const EXPLORER: &str = "explorer.html";
    /// Scatter plot of the test embeddings.
    pub const PLOT: &str = "embedding.png";
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Continue the run in the folder from its last checkpoint.
    pub resume: bool,
    /// Stop abruptly after this many steps, writing nothing more (tests use it to stand
    /// in for a killed process).
    pub stop_after: Option<u64>,
    /// Run the full evaluation protocol at the end.
    pub final_eval: bool,
    /// Where tensors live.
    pub device: Device,
    /// The file of each test image, when they came from files (an image folder): the
    /// projector's metadata lists them. Empty otherwise.
    pub test_paths: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            resume: false,
            stop_after: None,
            final_eval: true,
            device: Device::Cpu,
            test_paths: Vec::new(),
        }
    }
}

/// One logged training step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps done.
    pub step: u64,
    /// The loss of the last step.
    pub loss: f64,
    /// Its learning rate.
    pub lr: f64,
    /// Training pairs per second since the previous record.
    pub pairs_per_s: f64,
}

/// One evaluation on validation pairs during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps done.
    pub step: u64,
    /// Metrics on the validation pairs.
    pub validation: PairMetrics,
}

/// Receives progress, for a terminal or a log.
pub trait Reporter {
    /// A step was logged; `total` is the run's number of steps.
    fn step(&mut self, record: &StepRecord, total: u64);
    /// An evaluation finished.
    fn eval(&mut self, record: &EvalRecord);
    /// Anything else worth saying.
    fn note(&mut self, message: &str);
}

/// A reporter that says nothing.
pub struct Silent;

impl Reporter for Silent {
    fn step(&mut self, _: &StepRecord, _: u64) {}
    fn eval(&mut self, _: &EvalRecord) {}
    fn note(&mut self, _: &str) {}
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps done.
    pub steps: u64,
    /// The last step's loss.
    pub last_loss: f64,
    /// The protocol's report, when the final evaluation ran.
    pub report: Option<EvalReport>,
}

/// Where a run stands, beside its components' states in `last.safetensors` (metadata
/// entry `run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunProgress {
    step: u64,
    last_loss: f64,
    best_validation_eer: Option<f64>,
}

/// Reads a run folder's `config.json`.
pub fn load_run_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    let path = dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    Ok(siamese_data::write_atomic(path, text.as_bytes())?)
}

struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    fn append<T: Serialize>(&self, kind: &str, record: &T) -> Result<(), TrainError> {
        let mut value = serde_json::to_value(record).expect("plain data serialises");
        value["kind"] = kind.into();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(TrainError::io(&self.path))?;
        writeln!(file, "{value}").map_err(TrainError::io(&self.path))
    }

    /// Drops records of steps after `step` (logged after the checkpoint resumed from).
    fn truncate_after(&self, step: u64) -> Result<(), TrainError> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        Ok(siamese_data::write_atomic(&self.path, kept.as_bytes())?)
    }
}

/// Trains `config` on `data` in the folder `dir`.
pub fn run(
    config: &TrainConfig,
    data: &Dataset,
    dir: &Path,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<RunSummary, TrainError> {
    config.validate()?;
    let (h, w) = (config.model.input_height, config.model.input_width);
    if (data.train.rows(), data.train.cols()) != (h, w) || config.model.input_channels != 1 {
        return Err(TrainError::Config(format!(
            "the model expects 1x{h}x{w} images, the data has 1x{}x{}",
            data.train.rows(),
            data.train.cols()
        )));
    }
    if let Some(held_out) = &config.holdout_classes {
        if let Some(&l) = data.train.labels().iter().find(|&&l| held_out.contains(l)) {
            return Err(TrainError::Config(format!(
                "the config holds out classes {held_out} but the training split has class \
                 {l}: load the data through Dataset::hold_out first"
            )));
        }
    }
    let last_path = dir.join(files::LAST);
    let config_path = dir.join(files::CONFIG);
    if options.resume && !config_path.is_file() {
        return Err(TrainError::Resume(format!(
            "{} has no {}: it holds no run",
            dir.display(),
            files::CONFIG
        )));
    }
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    // Held until the run returns; the OS releases it when the process dies (kill -9
    // included), so a killed run's folder is never locked for good. Taken before the
    // folder is looked at, so two processes never both find it free.
    let _lock = RunLock::acquire(dir)?;
    if !options.resume {
        if let Some(found) = [files::CONFIG, files::LAST, files::MODEL]
            .into_iter()
            .find(|f| dir.join(f).exists())
        {
            return Err(TrainError::Config(format!(
                "{} already holds a run (it has {found}): resume it (from its last \
                 checkpoint, or from step 0 when it has none) or choose another folder",
                dir.display()
            )));
        }
    }
    remove_orphan_temp_files(dir)?;
    let log = MetricsLog {
        path: dir.join(files::METRICS_LOG),
    };
    let mut new_length = false;
    if options.resume {
        let saved = load_run_config(dir)?;
        let changed = changed_fields(&saved, config);
        if changed.iter().any(|f| f != "steps") {
            return Err(TrainError::Resume(format!(
                "{} holds a run with other settings ({}): a resumed run continues as it \
                 was started; only the number of steps may change",
                dir.display(),
                changed.join(", ")
            )));
        }
        if !changed.is_empty() {
            reporter.note(&format!(
                "steps: {} -> {} (the learning-rate schedule follows the new length)",
                saved.steps, config.steps
            ));
            new_length = true;
        }
    } else {
        write_json(&config_path, config)?;
        // A log without a config is no run's: start it afresh, never append to it.
        std::fs::remove_file(&log.path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(TrainError::io(&log.path))?;
    }
    let mut events: Option<EventWriter> = None;

    let device = &options.device;
    let (tower, varmap) = ConvTower::init(&config.model, device, config.seed)?;
    let params = ConvTower::trainable_parameters(&varmap);
    let sampler = config.sampler.build(
        data.train.labels(),
        data.train.num_classes(),
        config.seed.wrapping_add(2),
    )?;
    let batcher = Batcher::new(device.clone());
    let mut trainer = Trainer::new(
        sampler,
        SiameseModel::new(tower),
        config.loss.build()?,
        params,
        config.optim.adam,
        batcher.clone(),
    )?;
    trainer.set_pairing(config.pairing);
    if let Some(augment) = config.augment {
        trainer.augmenter = Some(Augmenter::new(augment, config.seed.wrapping_add(3))?);
    }
    trainer.self_supervised = config.self_supervised;

    let mut start = 0;
    let mut last_loss = f64::NAN;
    let mut best_eer: Option<f64> = None;
    let mut checkpointed: Option<u64> = None;
    if options.resume && !last_path.exists() {
        // Killed before its first checkpoint: everything is reproducible from the
        // config, so the run starts over, and its old records go.
        log.truncate_after(0)?;
        reporter.note(&format!(
            "{} has no checkpoint yet ({} is absent): starting it from step 0",
            dir.display(),
            files::LAST
        ));
    } else if options.resume {
        let state = read_last(&last_path, device)?;
        trainer
            .load_state_dict(&state.components)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", last_path.display())))?;
        let state = state.progress;
        if state.step > config.steps {
            return Err(TrainError::Resume(format!(
                "{} is at step {}, past the {} steps asked for",
                last_path.display(),
                state.step,
                config.steps
            )));
        }
        start = state.step;
        last_loss = state.last_loss;
        best_eer = state.best_validation_eer;
        checkpointed = Some(start);
        log.truncate_after(start)?;
        reporter.note(&format!("resumed {} at step {start}", dir.display()));
        events = Some(EventWriter::create(dir, Some(start))?);
    }
    if new_length {
        // Only once the checkpoint is known to be within the new length.
        write_json(&config_path, config)?;
    }
    let mut events = match events {
        Some(e) => e,
        None => EventWriter::create(dir, None)?,
    };
    // Every weight and batch-norm statistic, watched for divergence after each step:
    // a saturating loss can stay finite while the weights are already NaN.
    let watched: Vec<(String, Tensor)> = {
        let mut all = trainer.model.tower.named_tensors();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let kept = |checkpointed: Option<u64>| match checkpointed {
        Some(step) => format!("{} of step {step} is kept", files::LAST),
        None => "no checkpoint had been written yet".to_string(),
    };

    let mut clock = Instant::now();
    let mut pairs_since = 0usize;
    for step in start..config.steps {
        let lr = config.optim.lr_at(step, config.steps);
        last_loss = match trainer.step(&data.train, config.batch_size, lr, step + 1) {
            Err(TrainError::Diverged { step, what, .. }) => {
                return Err(TrainError::Diverged {
                    step,
                    what,
                    kept: kept(checkpointed),
                })
            }
            other => other?,
        };
        if let Some(name) =
            checkpoint::first_non_finite(watched.iter().map(|(n, t)| (n.as_str(), t)))?
        {
            return Err(TrainError::Diverged {
                step: step + 1,
                what: format!("{name} holds NaN or infinity after the update (loss {last_loss})"),
                kept: kept(checkpointed),
            });
        }
        pairs_since += config.batch_size;
        let done = step + 1;
        if done % config.log_every == 0 || done == config.steps {
            let record = StepRecord {
                step: done,
                loss: last_loss,
                lr,
                pairs_per_s: pairs_since as f64 / clock.elapsed().as_secs_f64().max(1e-9),
            };
            log.append("train", &record)?;
            events.scalars(
                done,
                &[
                    ("train/loss", record.loss),
                    ("train/lr", lr),
                    ("train/pairs_per_s", record.pairs_per_s),
                ],
            )?;
            reporter.step(&record, config.steps);
        }
        if (config.eval_every > 0 && done % config.eval_every == 0) || done == config.steps {
            let tower = &trainer.model.tower;
            let embeddings = embed_set(tower, &data.validation, &batcher)?;
            let n = config.validation_pairs;
            let (validation, _, _) = pair_metrics_of(
                &data.validation,
                &embeddings,
                config.model.output_dim(),
                n,
                VALIDATION_PAIRS_SEED,
            )?;
            let record = EvalRecord {
                step: done,
                validation,
            };
            log.append("eval", &record)?;
            events.scalars(
                done,
                &[
                    ("validation/roc_auc", validation.roc_auc),
                    ("validation/eer", validation.eer),
                    ("validation/accuracy", validation.best_accuracy),
                ],
            )?;
            reporter.eval(&record);
            if !(validation.eer.is_finite() && validation.best_threshold.is_finite()) {
                return Err(TrainError::Diverged {
                    step: done,
                    what: "the validation distances are not finite numbers".into(),
                    kept: kept(checkpointed),
                });
            }
            if best_eer.is_none_or(|best| validation.eer < best) {
                best_eer = Some(validation.eer);
                let provenance = Provenance {
                    threshold: Some(validation.best_threshold),
                    step: Some(done),
                    ..Provenance::of_run(config)
                };
                checkpoint::save(
                    &dir.join(files::MODEL),
                    &varmap,
                    &config.model,
                    &provenance.to_metadata(),
                )?;
            }
        }
        if options.stop_after == Some(done) {
            return Ok(RunSummary {
                steps: done,
                last_loss,
                report: None,
            });
        }
        if done % config.checkpoint_every == 0 || done == config.steps {
            let progress = RunProgress {
                step: done,
                last_loss,
                best_validation_eer: best_eer,
            };
            write_last(&last_path, &trainer, &progress, config)?;
            checkpointed = Some(done);
        }
        if done % config.log_every == 0 {
            clock = Instant::now();
            pairs_since = 0;
        }
    }

    let report = if options.final_eval {
        reporter.note("evaluating the best model on the test protocol");
        Some(final_evaluation(dir, data, device, &options.test_paths)?)
    } else {
        None
    };
    Ok(RunSummary {
        steps: config.steps,
        last_loss,
        report,
    })
}

/// Evaluates the run's best model with the protocol, writes `metrics.json` and the
/// test embeddings, and stores the protocol's threshold in the model's metadata.
pub fn final_evaluation(
    dir: &Path,
    data: &Dataset,
    device: &Device,
    test_paths: &[String],
) -> Result<EvalReport, TrainError> {
    let model_path = dir.join(files::MODEL);
    let (tower, varmap, ckpt) = checkpoint::load_tower(&model_path, device, 0)?;
    let (report, test_embeddings) = evaluate(&tower, data, &Batcher::new(device.clone()))?;
    write_json(&dir.join(files::METRICS), &report)?;
    let mut meta = ckpt.metadata.clone();
    Provenance {
        threshold: Some(report.threshold),
        ..Provenance::from_checkpoint(&ckpt)?
    }
    .write_into(&mut meta);
    checkpoint::save(&model_path, &varmap, &ckpt.config, &meta)?;
    let dim = ckpt.config.output_dim();
    save_embeddings(
        &dir.join(files::TEST_EMBEDDINGS),
        &test_embeddings,
        dim,
        data.test.labels(),
    )?;
    let title = format!("{} test embeddings", data.spec.name);
    let set = LabelledEmbeddings {
        embeddings: &test_embeddings,
        dim,
        labels: data.test.labels(),
        class_names: &data.spec.class_names,
        paths: if test_paths.len() == data.test.len() {
            test_paths
        } else {
            &[]
        },
        images: Some((data.test.pixels(), data.test.rows(), data.test.cols())),
    };
    crate::projector::write_projector(dir, &Projection { name: &title, set })?;
    let page = crate::explore::explorer_html(&Exploration {
        title: &title,
        set,
        threshold: Some(report.threshold),
    })?;
    siamese_data::write_atomic(&dir.join(files::EXPLORER), page.as_bytes())?;
    crate::plot::plot_embeddings(
        &dir.join(files::PLOT),
        &test_embeddings,
        dim,
        data.test.labels(),
        &data.spec.class_names,
        &title,
    )?;
    Ok(report)
}

/// Writes embeddings (`values`, `labels.len()` rows of `dim`) as a safetensors file
/// with tensors `embeddings [n, dim]` (f32) and `labels [n]` (u8), atomically.
pub fn save_embeddings(
    path: &Path,
    values: &[f32],
    dim: usize,
    labels: &[u8],
) -> Result<(), TrainError> {
    let n = labels.len();
    let tensors = vec![
        (
            "embeddings".to_string(),
            Tensor::from_vec(values.to_vec(), (n, dim), &Device::Cpu)?,
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels.to_vec(), n, &Device::Cpu)?,
        ),
    ];
    // Refuses NaN or infinite embeddings: such a file would answer nonsense later.
    Ok(checkpoint::write_safetensors(
        path,
        tensors,
        &BTreeMap::new(),
    )?)
}

/// Saves the trainer's state ([`Stateful`]), the run's progress and its config as
/// `last.safetensors`. Non-finite values are refused and the previous file stays.
fn write_last<T: Stateful>(
    path: &Path,
    trainer: &T,
    progress: &RunProgress,
    config: &TrainConfig,
) -> Result<(), TrainError> {
    let mut state = trainer.state_dict()?;
    state.insert_json(last_keys::RUN, progress);
    state.insert_json(last_keys::CONFIG, config);
    Ok(state.save(path)?)
}

/// The metadata entries `last.safetensors` holds besides the components' states.
mod last_keys {
    /// The run's progress (JSON `RunProgress`).
    pub const RUN: &str = "run";
    /// The run's config (JSON `TrainConfig`), for people reading the file.
    pub const CONFIG: &str = "train_config";
    /// Where files written before the state protocol kept the progress and the
    /// generators' states (one JSON object); read by [`super::upgrade_first_layout`].
    pub const FIRST_LAYOUT: &str = "train_state";
}

/// `last.safetensors` read back: the components' states and the run's progress.
struct LastCheckpoint {
    components: StateDict,
    progress: RunProgress,
}

fn read_last(path: &Path, device: &Device) -> Result<LastCheckpoint, TrainError> {
    let bad = |detail: String| TrainError::Resume(format!("{}: {detail}", path.display()));
    // Refuses files that are not safetensors or hold NaN or infinity, naming them.
    let mut components = StateDict::load(path, device).map_err(|e| match e {
        siamese_state::StateError::Io { .. } => TrainError::from(e),
        e => TrainError::Resume(e.to_string()),
    })?;
    if !components.contains(last_keys::RUN) && components.contains(last_keys::FIRST_LAYOUT) {
        upgrade_first_layout(&mut components).map_err(|e| bad(e.to_string()))?;
    }
    let progress: RunProgress = components
        .json(last_keys::RUN)
        .map_err(|e| bad(e.to_string()))?;
    if progress.best_validation_eer.is_some_and(|e| !e.is_finite())
        || !progress.last_loss.is_finite()
    {
        return Err(bad(
            "the saved loss or validation EER is not a finite number".into(),
        ));
    }
    Ok(LastCheckpoint {
        components,
        progress,
    })
}

/// Rewrites the metadata of a `last.safetensors` written before the state protocol
/// (one `train_state` JSON object) into the protocol's entries, so a run interrupted
/// by an older build resumes. The tensors' names (`model.*`, `adam.*`) did not change.
fn upgrade_first_layout(state: &mut StateDict) -> Result<(), siamese_state::StateError> {
    #[derive(Deserialize)]
    struct FirstLayout {
        step: u64,
        last_loss: f64,
        sampler: FirstSampler,
        dropout: DropoutState,
        adam_step: u64,
        best_validation_eer: Option<f64>,
        #[serde(default)]
        augment: Option<Rng>,
    }
    #[derive(Deserialize)]
    struct FirstSampler {
        kind: String,
        rng: Rng,
    }
    let old: FirstLayout = state.json(last_keys::FIRST_LAYOUT)?;
    state.insert_json(
        last_keys::RUN,
        &RunProgress {
            step: old.step,
            last_loss: old.last_loss,
            best_validation_eer: old.best_validation_eer,
        },
    );
    state.insert_json("sampler.kind", &old.sampler.kind);
    state.insert_json("sampler.rng", &old.sampler.rng);
    state.insert_json("model.dropout", &old.dropout);
    state.insert_json("adam.step", &old.adam_step);
    if let Some(rng) = old.augment {
        state.insert_json("augment.rng", &rng);
    }
    Ok(())
}

/// The settings in which two configs differ, as dotted JSON paths (`optim.lr`).
pub fn changed_fields(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &path,
                        out,
                    );
                }
            }
            _ if a != b => out.push(at.to_string()),
            _ => {}
        }
    }
    let json = |c: &TrainConfig| serde_json::to_value(c).expect("plain data");
    let mut out = Vec::new();
    walk(&json(a), &json(b), "", &mut out);
    out
}

/// The run folder's lock: `.lock` in the folder, held (an advisory `flock`) for as long
/// as the value lives. The operating system drops it when the process ends however it
/// ends, so a lock file left by a killed run is simply taken over.
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    const FILE: &str = ".lock";

    fn acquire(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(Self::FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Config(format!(
                "another process is training in {} (it holds {}); wait for it or choose another folder",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path)(e)),
        }
    }
}

/// Removes the temporary files of atomic writes (`.<name>.<pid>.tmp`) that a killed
/// process left; called with the folder's lock held, so no live writer owns them.
fn remove_orphan_temp_files(dir: &Path) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(TrainError::io(dir))?;
    for entry in entries {
        let path = entry.map_err(TrainError::io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if siamese_fs::is_temp_file_name(name) && path.is_file() {
            std::fs::remove_file(&path).map_err(TrainError::io(&path))?;
        }
    }
    Ok(())
}
