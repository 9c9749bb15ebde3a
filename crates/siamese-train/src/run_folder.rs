//! The run folder and its files: their names, the lock that keeps a second process
//! out, opening a folder for a new or resumed run, the metrics log, the resume
//! checkpoint's layout (`last.safetensors`, with the upgrade from its first layout) and
//! the test embeddings file. What a training run writes and reads back lives here;
//! [`mod@crate::run`] decides when.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use siamese_data::Rng;
use siamese_model::checkpoint;
use siamese_model::DropoutState;
use siamese_state::{StateDict, Stateful};

use crate::config::TrainConfig;
use crate::error::TrainError;

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

/// A run folder opened for training: locked, checked against the config, with its
/// metrics log.
pub(crate) struct RunFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its `metrics.jsonl`.
    pub log: MetricsLog,
    /// The saved number of steps, when a resumed run asks for another.
    pub new_length: Option<u64>,
    _lock: RunLock,
}

impl RunFolder {
    /// Opens `dir` for `config`: a new run needs a folder that holds none (and gets the
    /// config written and any stale log removed); a resumed one needs the folder's own
    /// config, with at most `steps` changed. Temporary files of a killed writer go.
    pub fn open(dir: &Path, config: &TrainConfig, resume: bool) -> Result<Self, TrainError> {
        let config_path = dir.join(files::CONFIG);
        if resume && !config_path.is_file() {
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
        let lock = RunLock::acquire(dir)?;
        if !resume {
            if let Some(found) = [files::CONFIG, files::LAST, files::MODEL]
                .into_iter()
                .find(|f| dir.join(f).exists())
            {
                return Err(TrainError::RunFolder(format!(
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
        let mut new_length = None;
        if resume {
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
                new_length = Some(saved.steps);
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
        Ok(Self {
            dir: dir.to_path_buf(),
            log,
            new_length,
            _lock: lock,
        })
    }

    /// A file of the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where a run stands, beside its components' states in `last.safetensors` (metadata
/// entry `run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunProgress {
    /// Steps done.
    pub step: u64,
    /// The last step's loss.
    pub last_loss: f64,
    /// The best validation EER so far.
    pub best_validation_eer: Option<f64>,
}

/// Reads a run folder's `config.json`.
pub fn load_run_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    let path = dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    Ok(siamese_data::write_atomic(path, text.as_bytes())?)
}

pub(crate) struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub(crate) fn append<T: Serialize>(&self, kind: &str, record: &T) -> Result<(), TrainError> {
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
    pub(crate) fn truncate_after(&self, step: u64) -> Result<(), TrainError> {
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

/// Writes embeddings (`values`, `labels.len()` rows of `dim`) as a safetensors file
/// with tensors `embeddings [n, dim]` (f32) and `labels [n]` (u32), atomically.
pub fn save_embeddings(
    path: &Path,
    values: &[f32],
    dim: usize,
    labels: &[u32],
) -> Result<(), TrainError> {
    save_embeddings_and_images(path, values, dim, labels, None)
}

/// [`save_embeddings`], with the images as the model saw them when `images` is given
/// (`(pixels, height, width)`: an `images` tensor `[n, height, width]` of u8, which the
/// model read scaled to [0, 1]): what another framework running the same model needs
/// to check it gives the same embeddings.
pub fn save_embeddings_and_images(
    path: &Path,
    values: &[f32],
    dim: usize,
    labels: &[u32],
    images: Option<(&[u8], usize, usize)>,
) -> Result<(), TrainError> {
    let n = labels.len();
    let mut tensors = vec![
        (
            "embeddings".to_string(),
            Tensor::from_vec(values.to_vec(), (n, dim), &Device::Cpu)?,
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels.to_vec(), n, &Device::Cpu)?,
        ),
    ];
    if let Some((pixels, h, w)) = images {
        if pixels.len() != n * h * w {
            return Err(TrainError::Input(format!(
                "{}: {} pixels are not {n} images of {h}x{w}",
                path.display(),
                pixels.len()
            )));
        }
        tensors.push((
            "images".to_string(),
            Tensor::from_vec(pixels.to_vec(), (n, h, w), &Device::Cpu)?,
        ));
    }
    // Refuses NaN or infinite embeddings: such a file would answer nonsense later.
    Ok(checkpoint::write_safetensors(
        path,
        tensors,
        &BTreeMap::new(),
    )?)
}

/// Saves the trainer's state ([`Stateful`]), the run's progress and its config as
/// `last.safetensors`. Non-finite values are refused and the previous file stays.
pub(crate) fn write_last<T: Stateful>(
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
pub(crate) struct LastCheckpoint {
    /// The components' states.
    pub components: StateDict,
    /// The run's progress.
    pub progress: RunProgress,
}

/// Refuses a resume whose config (`config.json`, with the command line's new length)
/// differs from the one the checkpoint was written with in anything but the number of
/// steps: `config.json` was edited by hand, and training on with the edit would mix two
/// runs in one folder. A checkpoint of an older layout, without its config, is taken
/// as it is.
fn check_config_unedited(state: &StateDict, config: &TrainConfig) -> Result<(), String> {
    if !state.contains(last_keys::CONFIG) {
        return Ok(());
    }
    let saved: TrainConfig = state.json(last_keys::CONFIG).map_err(|e| e.to_string())?;
    let changed: Vec<String> = changed_fields(&saved, config)
        .into_iter()
        .filter(|f| f != "steps")
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "it was written with other settings than {}'s ({}): the folder was edited \
         after the run started; put back the run's config.json (the checkpoint holds it \
         as `{}`) or start a new run",
        files::CONFIG,
        changed.join(", "),
        last_keys::CONFIG
    ))
}

/// Reads `last.safetensors` at `path` for a resume of a run with `config`.
pub(crate) fn read_last(
    path: &Path,
    device: &Device,
    config: &TrainConfig,
) -> Result<LastCheckpoint, TrainError> {
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
    check_config_unedited(&components, config).map_err(bad)?;
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
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::RunFolder(format!(
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
