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

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use siamese_data::{Augmenter, Batcher, Dataset, StepSampler};
use siamese_model::checkpoint;
use siamese_model::{ConvTower, OneView};
use siamese_state::Stateful;

use crate::config::{SamplerConfig, StepLoss, TrainConfig};
use crate::error::TrainError;
use crate::eval::{
    embed_set, evaluate, pair_metrics_of, EvalReport, Evaluation, VALIDATION_PAIRS_SEED,
};
use crate::explore::Exploration;
use crate::labelled::LabelledEmbeddings;
use crate::metrics::PairMetrics;
use crate::projector::Projection;
use crate::provenance::{Provenance, ScoreNormRecord};
use crate::run_folder::{
    files, read_last, save_embeddings, write_json, write_last, RunFolder, RunProgress,
};
use crate::tensorboard::EventWriter;
use crate::trainer::Trainer;

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
    /// Lake's one-shot runs, scored in the final evaluation (Omniglot).
    pub one_shot_runs: Option<Vec<siamese_data::omniglot::runs::OneShotRun>>,
    /// The ranks of a data-parallel run (`mpiexec -n N siamese train`), when there are
    /// others: rank 0 runs the folder, the others only train (see [`run`]).
    pub data_parallel: Option<DataParallel>,
}

/// The ranks a data-parallel run trains with.
#[derive(Clone)]
pub struct DataParallel(pub siamese_collective::SharedCollective);

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.world_size())
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            resume: false,
            stop_after: None,
            final_eval: true,
            device: Device::Cpu,
            test_paths: Vec::new(),
            one_shot_runs: None,
            data_parallel: None,
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
    /// Training pairs per second since the previous record (an episode counts its
    /// images by twos).
    pub pairs_per_s: f64,
    /// Steps (episodes, with the episode sampler) per second since the previous record.
    #[serde(default)]
    pub steps_per_s: f64,
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

/// Trains `config` on `data` in the folder `dir`: open the folder, build the run,
/// resume it, then train, log, validate and checkpoint step by step, and evaluate.
pub fn run(
    config: &TrainConfig,
    data: &Dataset,
    dir: &Path,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<RunSummary, TrainError> {
    config.validate()?;
    check_data(config, data)?;
    if let Some(DataParallel(ranks)) = &options.data_parallel {
        let text = serde_json::to_vec(config).map_err(|e| TrainError::Config(e.to_string()))?;
        crate::distributed::check_same_config(&text, ranks.as_ref())?;
        if ranks.rank() != 0 {
            return follow(config, data, dir, options, ranks);
        }
    }
    let folder = RunFolder::open(dir, config, options.resume)?;
    if let Some(saved) = folder.new_length {
        reporter.note(&format!(
            "steps: {saved} -> {} (the learning-rate schedule follows the new length)",
            config.steps
        ));
    }
    let mut run = Run::build(config, data, options, folder)?;
    run.resume(reporter)?;
    if let Some(DataParallel(ranks)) = &options.data_parallel {
        crate::distributed::broadcast_parameters(
            &run.trainer.tower.named_tensors(),
            ranks.as_ref(),
        )?;
    }
    while run.progress.step < config.steps {
        let lr = run.train_step()?;
        let done = run.progress.step;
        if done % config.log_every == 0 || done == config.steps {
            run.log_step(lr, reporter)?;
        }
        if (config.eval_every > 0 && done % config.eval_every == 0) || done == config.steps {
            run.validate(reporter)?;
        }
        if options.stop_after == Some(done) {
            return Ok(run.summary(None));
        }
        if done % config.checkpoint_every == 0 || done == config.steps {
            run.checkpoint()?;
        }
        if done % config.log_every == 0 {
            run.restart_clock();
        }
    }
    let report = if options.final_eval {
        reporter.note("evaluating the best model on the test protocol");
        Some(final_evaluation(&run.folder.dir, data, options)?)
    } else {
        None
    };
    Ok(run.summary(report))
}

/// The run's trainer at step 0: the tower, sampler, loss, optimiser and augmenter the
/// config describes, seeded from its seed; with the tower's variables and the batcher.
fn new_trainer(
    config: &TrainConfig,
    data: &Dataset,
    device: &Device,
) -> Result<(RunTrainer, VarMap, Batcher), TrainError> {
    let (tower, varmap) = ConvTower::init(&config.model, device, config.seed)?;
    let params =
        ConvTower::trained_parameters(&varmap, &config.model, config.loss_sees_only_differences());
    let sampler = config.sampler.build(
        data.train.labels(),
        data.train.num_classes(),
        config.seed.wrapping_add(2),
    )?;
    let batcher = Batcher::new(device.clone());
    let mut trainer = Trainer::new(
        sampler,
        tower,
        config.batch_loss()?,
        params,
        config.optim.method(),
        batcher.clone(),
    )?;
    trainer.layout = config.layout();
    trainer.loss_sees_only_differences = config.loss_sees_only_differences();
    if let Some(augment) = config.augment {
        trainer.augmenter = Some(Augmenter::new(augment, config.seed.wrapping_add(3))?);
    }
    Ok((trainer, varmap, batcher))
}

/// A rank other than 0 of a data-parallel run: the same trainer, resumed from the same
/// `last.safetensors` (read, never written: the folder is rank 0's, on a file system
/// every rank sees), checked equal to rank 0's, then the same steps. It writes nothing,
/// validates nothing and evaluates nothing; its divergence checks are rank 0's, on the
/// same numbers, so every rank stops at the same step.
fn follow(
    config: &TrainConfig,
    data: &Dataset,
    dir: &Path,
    options: &RunOptions,
    ranks: &siamese_collective::SharedCollective,
) -> Result<RunSummary, TrainError> {
    let (mut trainer, _varmap, _) = new_trainer(config, data, &options.device)?;
    let mut step = 0;
    let last = dir.join(files::LAST);
    if options.resume && last.exists() {
        let state = read_last(&last, &options.device, config)?;
        trainer
            .load_state_dict(&state.components)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", last.display())))?;
        step = state.progress.step;
    }
    crate::distributed::broadcast_parameters(&trainer.tower.named_tensors(), ranks.as_ref())?;
    let mut watched = trainer.tower.named_tensors();
    watched.sort_by(|a, b| a.0.cmp(&b.0));
    let mut last_loss = f64::NAN;
    while step < config.steps {
        let lr = config.optim.lr_at(step, config.steps);
        last_loss =
            trainer.step_data_parallel(&data.train, config.batch_size, lr, step + 1, ranks)?;
        let named = watched.iter().map(|(n, t)| (n.as_str(), t));
        if let Some(name) = checkpoint::first_non_finite(named)? {
            return Err(TrainError::Diverged {
                step: step + 1,
                what: format!("{name} holds NaN or infinity after the update"),
                kept: "rank 0 keeps the run's checkpoints".into(),
            });
        }
        step += 1;
        if options.stop_after == Some(step) {
            break;
        }
    }
    Ok(RunSummary {
        steps: step,
        last_loss,
        report: None,
    })
}

/// The data fits the model, and the training split holds no class the config holds out.
fn check_data(config: &TrainConfig, data: &Dataset) -> Result<(), TrainError> {
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
    Ok(())
}

/// The trainer a run builds from its config.
type RunTrainer = Trainer<Box<dyn StepSampler>, ConvTower, StepLoss>;

/// A run in progress: its folder, its trainer and where it stands. Each method is one
/// named step of [`run`].
struct Run<'a> {
    config: &'a TrainConfig,
    data: &'a Dataset,
    options: &'a RunOptions,
    folder: RunFolder,
    trainer: RunTrainer,
    varmap: VarMap,
    batcher: Batcher,
    /// Every weight and batch-norm statistic, watched for divergence after each step:
    /// a saturating loss can stay finite while the weights are already NaN.
    watched: Vec<(String, Tensor)>,
    events: Option<EventWriter>,
    progress: RunProgress,
    /// The step of the last checkpoint written or resumed from.
    checkpointed: Option<u64>,
    clock: Instant,
    pairs_since: usize,
    /// Steps since then.
    steps_since: usize,
}

impl<'a> Run<'a> {
    /// The tower, sampler, loss, optimiser and augmenter the config describes, seeded
    /// from its seed, at step 0.
    fn build(
        config: &'a TrainConfig,
        data: &'a Dataset,
        options: &'a RunOptions,
        folder: RunFolder,
    ) -> Result<Self, TrainError> {
        let (trainer, varmap, batcher) = new_trainer(config, data, &options.device)?;
        let mut watched = trainer.tower.named_tensors();
        watched.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            config,
            data,
            options,
            folder,
            trainer,
            varmap,
            batcher,
            watched,
            events: None,
            progress: RunProgress {
                step: 0,
                last_loss: f64::NAN,
                best_validation_eer: None,
            },
            checkpointed: None,
            clock: Instant::now(),
            pairs_since: 0,
            steps_since: 0,
        })
    }

    /// Continues from `last.safetensors` when resuming (from step 0 when the run was
    /// stopped before its first checkpoint: everything is reproducible from the
    /// config), dropping records logged after it; opens the TensorBoard events file.
    fn resume(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let last_path = self.folder.file(files::LAST);
        let dir = self.folder.dir.display().to_string();
        // The first step this process logs, when it continues a run that logged
        // steps already: the events files drop what the interrupted run logged from it.
        let mut continues_from = None;
        if self.options.resume && !last_path.exists() {
            self.folder.log.truncate_after(0)?;
            continues_from = Some(1);
            reporter.note(&format!(
                "{dir} has no checkpoint yet ({} is absent): starting it from step 0",
                files::LAST
            ));
        } else if self.options.resume {
            let state = read_last(&last_path, &self.options.device, self.config)?;
            self.trainer
                .load_state_dict(&state.components)
                .map_err(|e| TrainError::Resume(format!("{}: {e}", last_path.display())))?;
            if state.progress.step > self.config.steps {
                return Err(TrainError::Resume(format!(
                    "{} is at step {}, past the {} steps asked for",
                    last_path.display(),
                    state.progress.step,
                    self.config.steps
                )));
            }
            self.progress = state.progress;
            let start = self.progress.step;
            self.checkpointed = Some(start);
            self.folder.log.truncate_after(start)?;
            reporter.note(&format!("resumed {dir} at step {start}"));
            continues_from = Some(start + 1);
        }
        if self.folder.new_length.is_some() {
            // Only once the checkpoint is known to be within the new length.
            write_json(&self.folder.file(files::CONFIG), self.config)?;
        }
        self.events = Some(EventWriter::create(&self.folder.dir, continues_from)?);
        self.restart_clock();
        Ok(())
    }

    /// One training step at the schedule's learning rate, which it returns; the
    /// weights are checked finite after the update.
    fn train_step(&mut self) -> Result<f64, TrainError> {
        let (config, step) = (self.config, self.progress.step);
        let lr = config.optim.lr_at(step, config.steps);
        let stepped = match &self.options.data_parallel {
            Some(DataParallel(ranks)) => self.trainer.step_data_parallel(
                &self.data.train,
                config.batch_size,
                lr,
                step + 1,
                ranks,
            ),
            None => self
                .trainer
                .step(&self.data.train, config.batch_size, lr, step + 1),
        };
        self.progress.last_loss = match stepped {
            Err(TrainError::Diverged { step, what, .. }) => {
                return Err(self.diverged(step, what));
            }
            other => other?,
        };
        let watched = self.watched.iter().map(|(n, t)| (n.as_str(), t));
        if let Some(name) = checkpoint::first_non_finite(watched)? {
            let what = format!(
                "{name} holds NaN or infinity after the update (loss {})",
                self.progress.last_loss
            );
            return Err(self.diverged(step + 1, what));
        }
        // Pairs a step trains on: the sampled pairs, or an episode's images by twos.
        self.pairs_since += match config.sampler {
            SamplerConfig::Episodes { .. } => (config.images_per_step() / 2) as usize,
            _ => config.batch_size,
        };
        self.steps_since += 1;
        self.progress.step = step + 1;
        Ok(lr)
    }

    /// A divergence at `step`, saying which checkpoint is kept.
    fn diverged(&self, step: u64, what: String) -> TrainError {
        let kept = match self.checkpointed {
            Some(at) => format!("{} of step {at} is kept", files::LAST),
            None => "no checkpoint had been written yet".to_string(),
        };
        TrainError::Diverged { step, what, kept }
    }

    /// Logs the step (metrics log, TensorBoard, reporter).
    fn log_step(&mut self, lr: f64, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let done = self.progress.step;
        let seconds = self.clock.elapsed().as_secs_f64().max(1e-9);
        let record = StepRecord {
            step: done,
            loss: self.progress.last_loss,
            lr,
            pairs_per_s: self.pairs_since as f64 / seconds,
            steps_per_s: self.steps_since as f64 / seconds,
        };
        self.folder.log.append("train", &record)?;
        self.events().scalars(
            done,
            &[
                ("train/loss", record.loss),
                ("train/lr", lr),
                ("train/pairs_per_s", record.pairs_per_s),
                ("train/steps_per_s", record.steps_per_s),
            ],
        )?;
        reporter.step(&record, self.config.steps);
        Ok(())
    }

    /// Scores the validation pairs, logs them, and saves the model when its EER is the
    /// best so far (with the threshold in its metadata).
    ///
    /// The images are embedded as they are, without the test-time shifts a config may
    /// average ([`siamese_model::TowerConfig::shift_average`]): choosing the best step
    /// needs only a ranking, and 25 views of every validation image at each check would
    /// cost minutes of a run. The final evaluation embeds as every command does, and
    /// replaces the saved threshold with the one its embeddings give.
    fn validate(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let (config, done) = (self.config, self.progress.step);
        let validation = &self.data.validation;
        let tower = OneView(&self.trainer.tower);
        let embeddings = embed_set(&tower, validation, &self.batcher)?;
        let (validation, _, _) = pair_metrics_of(
            validation,
            &embeddings,
            config.model.output_dim(),
            config.validation_pairs,
            VALIDATION_PAIRS_SEED,
        )?;
        let record = EvalRecord {
            step: done,
            validation,
        };
        self.folder.log.append("eval", &record)?;
        self.events().scalars(
            done,
            &[
                ("validation/roc_auc", validation.roc_auc),
                ("validation/eer", validation.eer),
                ("validation/accuracy", validation.best_accuracy),
            ],
        )?;
        reporter.eval(&record);
        if !(validation.eer.is_finite() && validation.best_threshold.is_finite()) {
            let what = "the validation distances are not finite numbers".to_string();
            return Err(self.diverged(done, what));
        }
        if self
            .progress
            .best_validation_eer
            .is_none_or(|best| validation.eer < best)
        {
            self.progress.best_validation_eer = Some(validation.eer);
            let provenance = Provenance {
                threshold: Some(validation.best_threshold),
                step: Some(done),
                ..Provenance::of_run(config)
            };
            checkpoint::save(
                &self.folder.file(files::MODEL),
                &self.varmap,
                &config.model,
                &provenance.to_metadata(),
            )?;
        }
        Ok(())
    }

    /// Writes `last.safetensors`: the trainer's state, the progress and the config.
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        let path = self.folder.file(files::LAST);
        write_last(&path, &self.trainer, &self.progress, self.config)?;
        self.checkpointed = Some(self.progress.step);
        Ok(())
    }

    /// Starts the pairs-per-second count afresh.
    fn restart_clock(&mut self) {
        self.clock = Instant::now();
        self.pairs_since = 0;
        self.steps_since = 0;
    }

    fn events(&mut self) -> &mut EventWriter {
        self.events
            .as_mut()
            .expect("Run::resume opens the events file before the first step")
    }

    fn summary(&self, report: Option<EvalReport>) -> RunSummary {
        RunSummary {
            steps: self.progress.step,
            last_loss: self.progress.last_loss,
            report,
        }
    }
}

/// Evaluates the run's best model with the protocol, writes `metrics.json` and the
/// test embeddings, and stores the protocol's threshold in the model's metadata.
pub fn final_evaluation(
    dir: &Path,
    data: &Dataset,
    options: &RunOptions,
) -> Result<EvalReport, TrainError> {
    let (device, test_paths) = (&options.device, &options.test_paths);
    let model_path = dir.join(files::MODEL);
    let (tower, varmap, ckpt) = checkpoint::load_tower(&model_path, device, 0)?;
    let Evaluation {
        report,
        test_embeddings,
        cohort,
    } = evaluate(
        &tower,
        data,
        &Batcher::new(device.clone()),
        options.one_shot_runs.as_deref(),
    )?;
    write_json(&dir.join(files::METRICS), &report)?;
    // `siamese verify` scores pairs as the report did: the plain threshold, and the
    // cohort with its threshold where the unseen classes were also scored normalised.
    let mut meta = ckpt.metadata.clone();
    let normalised = cohort.as_ref().zip(report.score_normalised.as_ref());
    let score_norm = normalised.and_then(|(c, n)| {
        let record = ScoreNormRecord {
            top_k: c.top_k,
            threshold: n.model.threshold,
            validation_eer: n.model.validation.eer,
            plain_validation_eer: report.validation.eer,
        };
        // Broken figures (NaN from a collapsed model) store no normalisation at all:
        // the record must be one the checkpoint reader accepts.
        record.check().is_ok().then_some(record)
    });
    Provenance {
        threshold: Some(report.threshold),
        score_norm,
        ..Provenance::from_checkpoint(&ckpt)?
    }
    .write_into(&mut meta);
    if score_norm.is_none() {
        // A record left from an earlier evaluation of this file would outlive its cohort.
        meta.remove(checkpoint::keys::SCORE_NORM);
    }
    let cohort_tensor = match (&cohort, score_norm) {
        (Some(c), Some(_)) => Some(Tensor::from_slice(&c.embeddings, (c.len(), c.dim), device)?),
        _ => None,
    };
    checkpoint::save_with_cohort(
        &model_path,
        &varmap,
        &ckpt.config,
        &meta,
        cohort_tensor.as_ref(),
    )?;
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
