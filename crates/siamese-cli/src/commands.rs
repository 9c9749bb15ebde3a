//! What each subcommand does: convert the arguments once into library types, call the
//! libraries, print the result.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use siamese_data::{
    find_omniglot, read_image, Batcher, DataDescription, DataSource, Dataset, FolderOptions,
    FolderSplit, HeldOutClasses, LoadOptions, OmniglotOptions, Preprocessing, MAX_CLASSES,
};
use siamese_model::checkpoint;
use siamese_model::Embedder;
use siamese_train::eval::{embed_set, evaluate};
use siamese_train::metrics::score_norm::{normalised_distance, Cohort};
use siamese_train::{
    load_run_config, run, KnnGallery, LossConfig, Pairing, Provenance, RunOptions, SamplerConfig,
    SplitsSummary, Spread, TrainConfig,
};

use siamese_data::omniglot::runs::{load_runs, OneShotRun};

use crate::args::{
    Cli, Command, DataAction, DataArgs, EmbedArgs, EvalArgs, LakeRunsArgs, LossName, PairingName,
    PairsName, PlotArgs, Scoring, SourceArgs, SplitName, TrainArgs, VerifyArgs,
};
use crate::report::Printer;

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(*a),
        Command::Eval(a) => eval(a),
        Command::Embed(a) => embed(a),
        Command::Verify(a) => verify(a),
        Command::Plot(a) => plot(a),
        Command::Data(a) => data(a),
        Command::Explore(a) => crate::gallery::explore(a),
        Command::Index(a) => crate::gallery::index(a),
        Command::Search(a) => crate::gallery::search(a),
        Command::LakeRuns(a) => lake_runs(a),
        Command::Export(a) => crate::export::export(a),
    }
}

/// Where the tensors live: the first GPU when built with the `cuda` feature (the
/// tower then runs plain candle layers there), else the CPU with the fused kernels.
pub(crate) fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Device::new_cuda(0).context("opening CUDA device 0 (built with the cuda feature)")
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// A data set as a command gets it.
struct Loaded {
    data: Dataset,
    /// Where it was found, for the user.
    origin: String,
    /// For an image folder, its options with every default resolved.
    folder: Option<FolderOptions>,
    /// For an image folder, the file of each image of train, validation and test.
    paths: Option<[Vec<PathBuf>; 3]>,
    /// For Omniglot, its options with every default resolved.
    omniglot: Option<OmniglotOptions>,
}

/// The image-folder options: `base` (a run's or a checkpoint's), else the defaults
/// with `seed`, overridden by whatever the command line says; none when there is no
/// base and the command line gives none (the data set need not be an image folder).
fn folder_options(
    source: &SourceArgs,
    base: Option<FolderOptions>,
    seed: u64,
) -> Option<FolderOptions> {
    if base.is_none() && !source.has_folder_options() {
        return None;
    }
    let mut options = base.unwrap_or(FolderOptions {
        seed,
        ..FolderOptions::default()
    });
    if let Some(size) = source.image_size {
        options.image_size = Some(size);
    }
    if source.test_images.is_some() || source.val_images.is_some() {
        options.split = FolderSplit::Images {
            test: source.test_images,
            validation: source.val_images,
        };
    } else if source.test_classes.is_some() || source.val_classes.is_some() {
        options.split = FolderSplit::Classes {
            test: source.test_classes,
            validation: source.val_classes,
        };
    }
    Some(options)
}

/// Omniglot's options: `base` (a run's or a checkpoint's), else the defaults with
/// `seed`, with what the command line says on top.
fn omniglot_options(
    source: &SourceArgs,
    base: Option<OmniglotOptions>,
    seed: u64,
) -> OmniglotOptions {
    let mut options = base.unwrap_or(OmniglotOptions {
        seed,
        ..OmniglotOptions::default()
    });
    if let Some(size) = source.image_size {
        options.image_size = size;
    }
    if let Some(n) = source.val_classes {
        options.validation_classes = n;
    }
    options.rotate_classes |= source.rotate_classes;
    options
}

/// What `name` describes with the command line's options on top of `base` (a run's or
/// a checkpoint's): an image folder's options, or Omniglot's; options that do not
/// apply to the data set are refused rather than ignored.
fn describe(
    source: &SourceArgs,
    name: &str,
    base: (Option<FolderOptions>, Option<OmniglotOptions>),
    holdout_classes: Option<HeldOutClasses>,
    seed: u64,
) -> Result<DataDescription> {
    let omniglot = matches!(DataSource::resolve(name), Ok(DataSource::Omniglot));
    if omniglot {
        if source.test_classes.is_some()
            || source.test_images.is_some()
            || source.val_images.is_some()
        {
            bail!(
                "--test-classes, --test-images and --val-images apply to image folders; \
                 omniglot tests on its evaluation alphabets"
            );
        }
    } else if source.rotate_classes {
        bail!("--rotate-classes applies to omniglot");
    }
    Ok(DataDescription {
        source: name.to_string(),
        image_folder: if omniglot {
            None
        } else {
            folder_options(source, base.0, seed)
        },
        holdout_classes,
        omniglot: omniglot.then(|| omniglot_options(source, base.1, seed)),
    })
}

/// Loads what a description names (siamese-data resolves the name, splits an image
/// folder and holds classes out), warning about skipped files; `seed` seeds an image
/// folder's split when the description has no options of its own.
fn load_data(description: &DataDescription, seed: u64) -> Result<Loaded> {
    let loaded = description
        .load(&LoadOptions::from_env(), seed)
        .with_context(|| format!("loading {}", description.source))?;
    for skipped in &loaded.skipped {
        eprintln!(
            "warning: skipped {} (not a PNG, PGM or JPEG file)",
            skipped.display()
        );
    }
    Ok(Loaded {
        data: loaded.dataset,
        origin: loaded.origin,
        folder: loaded.folder,
        paths: loaded.paths,
        omniglot: loaded.omniglot,
    })
}

/// The run's config: `base` (a resumed run's own) or the `--config` file or the preset,
/// with every setting the command line gives applied on top.
fn train_config(a: &TrainArgs, base: Option<TrainConfig>) -> Result<TrainConfig> {
    let mut c = base_config(a, base)?;
    apply_plain_settings(a, &mut c);
    c.loss = loss_config(a, c.loss)?;
    c.optim.sgd = optimizer_config(a, c.optim.sgd)?;
    c.sampler = sampler_config(a, c.sampler);
    c.pairing = pairing_config(a, c.pairing)?;
    if let Some(held_out) = &a.source.holdout_classes {
        // Checked against a known data set by validate(), before minutes of loading.
        c.holdout_classes = Some(held_out.clone());
    }
    if a.positive_fraction.is_some() && !matches!(c.sampler, SamplerConfig::Balanced { .. }) {
        bail!("--positive-fraction applies to --pairs balanced");
    }
    if a.images_per_class.is_some() && !matches!(c.sampler, SamplerConfig::PerClass { .. }) {
        bail!("--images-per-class applies to --pairs per-class");
    }
    let episodic = matches!(c.sampler, SamplerConfig::Episodes { .. });
    if episodic && a.pairing.is_none() {
        // An episode has no pairs to mine: the preset's pairing does not carry over.
        c.pairing = Pairing::Sampled;
    }
    if (a.ways.is_some() || a.shots.is_some() || a.queries.is_some()) && !episodic {
        bail!("--ways, --shots and --queries apply to --pairs episodes");
    }
    c.validate()?;
    Ok(c)
}

/// The config to start from: `base` (a resumed run's own), the `--config` file or the
/// preset.
fn base_config(a: &TrainArgs, base: Option<TrainConfig>) -> Result<TrainConfig> {
    Ok(match (base, &a.config) {
        (Some(base), _) => base,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid training config", path.display()))?
        }
        (None, None) => {
            if a.preset == "faces" && a.source.data.is_none() {
                bail!(
                    "--preset faces needs --data FOLDER: one subfolder of photos per person \
                     (AT&T faces, for one)"
                );
            }
            TrainConfig::preset(&a.preset)?
        }
    })
}

/// The settings the command line gives one for one (steps, batch, learning rate, seed,
/// model and augmentation options, evaluation and checkpoint intervals).
fn apply_plain_settings(a: &TrainArgs, c: &mut TrainConfig) {
    if let Some(d) = &a.source.data {
        c.data = d.clone();
    }
    if let Some(v) = a.steps {
        c.steps = v;
    }
    if let Some(v) = a.batch {
        c.batch_size = v;
    }
    if let Some(v) = a.lr {
        c.optim.lr = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    if let Some(tower) = a.tower {
        c.model = tower.apply(&c.model);
    }
    if let Some(v) = a.dim {
        c.model.embedding_dim = v;
    }
    if a.normalize {
        c.model.normalize = true;
    }
    if let Some(layer) = a.embed_from {
        c.model.embed_from = layer;
    }
    if let Some(r) = a.shift_average {
        c.model.shift_average = r;
    }
    if let Some(p) = a.dropout {
        c.model.dropout = p;
    }
    if a.augment {
        c.augment = Some(siamese_data::AugmentConfig::default());
    }
    if a.flip {
        let distortions = c.augment.unwrap_or(siamese_data::AugmentConfig {
            max_rotation_degrees: 0.0,
            scale: [1.0, 1.0],
            max_shift: 0.0,
            horizontal_flip: true,
        });
        c.augment = Some(siamese_data::AugmentConfig {
            horizontal_flip: true,
            ..distortions
        });
    }
    if let Some(weight) = a.self_supervised {
        c.self_supervised = Some(siamese_train::SelfSupervised {
            weight,
            loss: match a.nt_xent {
                Some(temperature) => siamese_train::ViewLoss::NtXent { temperature },
                None => siamese_train::ViewLoss::PairLoss,
            },
        });
    }
    if let Some(v) = a.eval_every {
        c.eval_every = v;
    }
    if let Some(v) = a.checkpoint_every {
        c.checkpoint_every = v;
    }
}

/// SGD's settings (`None`: Adam) with `--optimizer` and `--momentum` applied to the
/// recipe's `sgd`.
fn optimizer_config(
    a: &TrainArgs,
    sgd: Option<siamese_train::SgdConfig>,
) -> Result<Option<siamese_train::SgdConfig>> {
    use crate::args::OptimizerName;
    let sgd = match a.optimizer {
        Some(OptimizerName::Adam) => None,
        Some(OptimizerName::Sgd) => Some(sgd.unwrap_or_default()),
        None => sgd,
    };
    match (sgd, a.momentum) {
        (Some(_), Some(momentum)) => Ok(Some(siamese_train::SgdConfig { momentum })),
        (None, Some(_)) => bail!("--momentum applies to --optimizer sgd"),
        (sgd, None) => Ok(sgd),
    }
}

/// The loss with `--loss`, `--q` and `--margin` applied to `loss`.
fn loss_config(a: &TrainArgs, loss: LossConfig) -> Result<LossConfig> {
    Ok(match (a.loss, loss) {
        (Some(LossName::Chopra), _) | (None, LossConfig::Chopra { .. }) => {
            if a.margin.is_some() {
                bail!("--margin applies to --loss margin; the loss is chopra");
            }
            let q = match loss {
                LossConfig::Chopra { q } => q,
                LossConfig::Margin { .. } => 5.0,
            };
            LossConfig::Chopra {
                q: a.q.unwrap_or(q),
            }
        }
        (Some(LossName::Margin), _) | (None, LossConfig::Margin { .. }) => {
            if a.q.is_some() {
                bail!("--q applies to --loss chopra; the loss is margin");
            }
            let margin = match loss {
                LossConfig::Margin { margin } => margin,
                LossConfig::Chopra { .. } => 1.0,
            };
            LossConfig::Margin {
                margin: a.margin.unwrap_or(margin),
            }
        }
    })
}

/// The sampler with `--pairs`, `--positive-fraction` and `--images-per-class` applied.
fn sampler_config(a: &TrainArgs, sampler: SamplerConfig) -> SamplerConfig {
    match (a.pairs, sampler) {
        (Some(PairsName::Random), _) | (None, SamplerConfig::Random) => SamplerConfig::Random,
        (Some(PairsName::Balanced), SamplerConfig::Balanced { positive_fraction })
        | (None, SamplerConfig::Balanced { positive_fraction }) => SamplerConfig::Balanced {
            positive_fraction: a.positive_fraction.unwrap_or(positive_fraction),
        },
        (Some(PairsName::Balanced), _) => SamplerConfig::Balanced {
            positive_fraction: a.positive_fraction.unwrap_or(0.5),
        },
        (Some(PairsName::PerClass), SamplerConfig::PerClass { images_per_class })
        | (None, SamplerConfig::PerClass { images_per_class }) => SamplerConfig::PerClass {
            images_per_class: a.images_per_class.unwrap_or(images_per_class),
        },
        (Some(PairsName::PerClass), _) => SamplerConfig::PerClass {
            images_per_class: a.images_per_class.unwrap_or(8),
        },
        (
            Some(PairsName::Episodes),
            SamplerConfig::Episodes {
                ways,
                shots,
                queries,
            },
        )
        | (
            None,
            SamplerConfig::Episodes {
                ways,
                shots,
                queries,
            },
        ) => SamplerConfig::Episodes {
            ways: a.ways.unwrap_or(ways),
            shots: a.shots.unwrap_or(shots),
            queries: a.queries.unwrap_or(queries),
        },
        (Some(PairsName::Episodes), _) => SamplerConfig::Episodes {
            ways: a.ways.unwrap_or(60),
            shots: a.shots.unwrap_or(1),
            queries: a.queries.unwrap_or(5),
        },
    }
}

/// The pairing with `--pairing` and `--epsilon` applied.
fn pairing_config(a: &TrainArgs, mut pairing: Pairing) -> Result<Pairing> {
    if let Some(name) = a.pairing {
        pairing = match name {
            PairingName::Sampled => Pairing::Sampled,
            PairingName::AllInBatch => Pairing::AllInBatch,
            PairingName::BatchHard => Pairing::BatchHard,
            PairingName::MultiSimilarity => Pairing::MultiSimilarity {
                epsilon: a.epsilon.unwrap_or(0.1),
            },
        };
    }
    match (a.epsilon, pairing) {
        (Some(epsilon), Pairing::MultiSimilarity { .. }) => {
            pairing = Pairing::MultiSimilarity { epsilon }
        }
        (Some(_), _) => bail!("--epsilon applies to --pairing multi-similarity"),
        (None, _) => {}
    }
    Ok(pairing)
}

fn train(a: TrainArgs) -> Result<()> {
    match a.splits {
        Some(n) => train_splits(&a, n),
        None => train_run(&a, 0, None).map(|_| ()),
    }
}

/// `--splits N`: N runs on N seeded splits of an image folder's classes, then the
/// summary over them.
fn train_splits(a: &TrainArgs, n: u32) -> Result<()> {
    if n < 2 {
        bail!("--splits needs at least 2 splits, found {n}");
    }
    let root = a
        .out
        .clone()
        .context("--splits writes one run folder per split: give --out")?;
    let mut reports = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("split-{}", i + 1));
        eprintln!("split {} of {n}: {}", i + 1, dir.display());
        let report = train_run(a, u64::from(i), Some(dir))?
            .context("a split's run ended without its evaluation")?;
        reports.push(report);
    }
    let summary = SplitsSummary::of(&reports);
    let text = serde_json::to_string_pretty(&summary)?;
    siamese_data::write_atomic(&root.join("splits.json"), text.as_bytes())?;
    print_splits(&summary);
    eprintln!("summary: {}", root.join("splits.json").display());
    Ok(())
}

/// Prints a [`SplitsSummary`].
fn print_splits(summary: &SplitsSummary) {
    let pct = |s: &Spread| {
        format!(
            "{:.2}% +- {:.2} (min {:.2}%, max {:.2}%)",
            100.0 * s.mean,
            100.0 * s.std,
            100.0 * s.min,
            100.0 * s.max
        )
    };
    println!("over {} splits:", summary.splits);
    println!("  test EER      {}", pct(&summary.test_eer));
    println!("  raw pixels    {}", pct(&summary.pixel_test_eer));
    println!(
        "  test ROC AUC  {:.4} +- {:.4} (raw pixels {:.4})",
        summary.test_roc_auc.mean, summary.test_roc_auc.std, summary.pixel_test_roc_auc.mean
    );
    println!(
        "  EER below raw pixels on {} of {} splits",
        summary.eer_below_pixels, summary.splits
    );
    println!(
        "  test accuracy {} (at the validation threshold)",
        pct(&summary.test_accuracy)
    );
    if let Some(n) = &summary.score_normalised {
        println!("  score-normalised against training images:");
        println!("    test EER      {}", pct(&n.test_eer));
        println!("    raw pixels    {}", pct(&n.pixel_test_eer));
        println!(
            "    EER below normalised pixels on {} of {} splits, below plain pixels on {}",
            n.eer_below_pixels, summary.splits, n.eer_below_plain_pixels
        );
        println!("    test accuracy {}", pct(&n.test_accuracy));
        if let Some(auto) = &n.verify_auto {
            println!(
                "  siamese verify (--scoring auto: normalised on {} of {} splits): test accuracy {}, EER {}",
                auto.normalised_splits,
                summary.splits,
                pct(&auto.test_accuracy),
                pct(&auto.test_eer)
            );
        }
    }
}

/// One training run (`seed_offset` added to the config's seed, which also seeds an
/// image folder's split; `out` in place of `--out`); its report.
fn train_run(
    a: &TrainArgs,
    seed_offset: u64,
    out: Option<PathBuf>,
) -> Result<Option<siamese_train::EvalReport>> {
    let (config, dir, resume) = match &a.resume {
        // The library refuses any change but the number of steps, naming the settings.
        Some(dir) => (
            train_config(a, Some(load_run_config(dir)?))?,
            dir.clone(),
            true,
        ),
        None => {
            let mut config = train_config(a, None)?;
            // Each split is another seed: the model's, and the image folder's split
            // (a preset or config may fix the latter on its own).
            config.seed += seed_offset;
            if let Some(folder) = config.image_folder.as_mut() {
                folder.seed += seed_offset;
            }
            let dir = out.or_else(|| a.out.clone()).unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from(format!("runs/{}-{secs}", config.preset))
            });
            (config, dir, false)
        }
    };
    let data_parallel = data_parallel()?;
    let rank = data_parallel.as_ref().map_or(0, |d| d.0.rank());
    let mut config = config;
    let description = describe(
        &a.source,
        &config.data,
        (config.image_folder, config.omniglot),
        config.holdout_classes.clone(),
        config.seed,
    )?;
    let loaded = load_data(&description, config.seed)?;
    if !resume && (loaded.folder.is_some() || loaded.omniglot.is_some()) {
        // The tower takes the images' size; the run keeps the resolved options.
        config.image_folder = loaded.folder;
        config.omniglot = loaded.omniglot;
        config.model.input_height = loaded.data.spec.rows;
        config.model.input_width = loaded.data.spec.cols;
        config.validate()?;
    }
    let test_paths = loaded.paths.map(|[_, _, test]| test).unwrap_or_default();
    let data = loaded.data;
    let one_shot_runs = one_shot_runs_for(&config.data, [data.spec.rows, data.spec.cols])?;
    if rank == 0 {
        eprintln!(
            "data: {} from {}; run folder: {}",
            data.spec.name,
            loaded.origin,
            dir.display()
        );
        eprintln!("{}", describe_protocol(&data));
        if let Some(d) = &data_parallel {
            eprintln!(
                "data-parallel: {} ranks; each embeds its share of every step's images",
                d.0.world_size()
            );
        }
    }
    let options = RunOptions {
        resume,
        device: device()?,
        test_paths: test_paths.iter().map(|p| p.display().to_string()).collect(),
        one_shot_runs,
        data_parallel: data_parallel.clone(),
        ..RunOptions::default()
    };
    let mut printer = Printer::new();
    let summary = run(&config, &data, &dir, &options, &mut printer)
        .with_context(|| format!("training in {}", dir.display()));
    let summary = match (summary, &data_parallel) {
        (Ok(summary), _) => summary,
        (Err(e), None) => return Err(e),
        (Err(e), Some(d)) => {
            // Leave without finalising MPI: the launcher then ends the other ranks,
            // which would otherwise wait for this one in their next collective.
            eprintln!(
                "error: rank {} of {}: {}",
                d.0.rank(),
                d.0.world_size(),
                crate::text::error_line(&e)
            );
            std::process::exit(1);
        }
    };
    printer.finish();
    if let Some(report) = &summary.report {
        print_report(report, false, &data.spec.class_names);
        eprintln!("model: {}", dir.join("model.safetensors").display());
    }
    Ok(summary.report)
}

/// The ranks of `mpiexec -n N siamese train` (N > 1), from the launcher's environment.
/// A build without the feature `mpi` refuses to run as one of several ranks: each would
/// train alone and write the same folder.
fn data_parallel() -> Result<Option<siamese_train::run::DataParallel>> {
    #[cfg(feature = "mpi")]
    {
        use siamese_collective::Collective;
        if !siamese_collective::Mpi::launched() {
            return Ok(None);
        }
        let mpi = siamese_collective::Mpi::init().context("MPI was initialised twice")?;
        if mpi.world_size() == 1 {
            return Ok(None);
        }
        Ok(Some(siamese_train::run::DataParallel(std::sync::Arc::new(
            mpi,
        ))))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let ranks = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"]
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok());
        if let Some(n) = ranks.filter(|&n| n > 1) {
            bail!(
                "started by an MPI launcher as one of {n} ranks, but this siamese was built \
                 without MPI: build it with `cargo build --release -p siamese-cli --features \
                 mpi` (MPICH: apt-get install mpich libmpich-dev libclang-dev)"
            );
        }
        Ok(None)
    }
}

pub(crate) fn load_model(
    path: &Path,
) -> Result<(siamese_model::ConvTower, checkpoint::Checkpoint)> {
    let (tower, _, ckpt) = checkpoint::load_tower(path, &device()?, 0)
        .with_context(|| format!("loading the model {}", path.display()))?;
    // Its provenance is read by most commands; checked here, where the file is known.
    Provenance::from_checkpoint(&ckpt).with_context(|| path.display().to_string())?;
    Ok((tower, ckpt))
}

/// A JSON metadata entry of the checkpoint, when present.
/// The data set a command works on: `--data`, else the one the model was trained on,
/// with the image-folder split the checkpoint records (command-line options win).
fn data_for(source: &SourceArgs, ckpt: &checkpoint::Checkpoint) -> Result<Dataset> {
    Ok(data_and_paths_for(source, ckpt)?.0)
}

/// The data set a command means: `--data`, else the model's, else MNIST.
fn data_name(source: &SourceArgs, provenance: &Provenance) -> String {
    source
        .data
        .clone()
        .or_else(|| provenance.data.clone())
        .unwrap_or_else(|| "mnist".into())
}

/// The folder of Lake's one-shot runs: beside Omniglot's files.
fn default_runs_folder() -> Result<PathBuf> {
    Ok(find_omniglot(&LoadOptions::from_env())?.join("one-shot-runs"))
}

/// Lake's one-shot runs at `size`, for Omniglot when its runs folder is there; none for
/// other data sets.
fn one_shot_runs_for(name: &str, size: [usize; 2]) -> Result<Option<Vec<OneShotRun>>> {
    if !matches!(DataSource::resolve(name), Ok(DataSource::Omniglot)) {
        return Ok(None);
    }
    let folder = default_runs_folder()?;
    if !folder.is_dir() {
        eprintln!(
            "note: {} is not there: Lake's one-shot runs are not scored",
            folder.display()
        );
        return Ok(None);
    }
    let runs = load_runs(&folder, size)
        .with_context(|| format!("reading Lake's one-shot runs in {}", folder.display()))?;
    Ok(Some(runs))
}

/// `siamese lake-runs`: Lake's modified Hausdorff baseline, raw pixels and a model on his
/// 20-way one-shot runs, run by run.
fn lake_runs(a: LakeRunsArgs) -> Result<()> {
    let folder = match &a.runs {
        Some(f) => f.clone(),
        None => default_runs_folder()?,
    };
    let model = a.model.as_deref().map(load_model).transpose()?;
    let size = model.as_ref().map_or([28, 28], |(_, c)| {
        [c.config.input_height, c.config.input_width]
    });
    let runs = load_runs(&folder, size)
        .with_context(|| format!("reading Lake's one-shot runs in {}", folder.display()))?;
    let mhd = siamese_train::oneshot::modified_hausdorff_runs(&runs);
    let scored = match &model {
        Some((tower, _)) => Some(siamese_train::oneshot::lake_runs(
            tower,
            &runs,
            &Batcher::new(device()?),
            size,
            None,
        )?),
        None => None,
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    if a.json {
        let out = serde_json::json!({
            "runs": runs.len(),
            "modified_hausdorff": { "accuracy": mean(&mhd), "per_run": mhd },
            "model": scored,
        });
        println!("{out}");
        return Ok(());
    }
    for (i, run) in runs.iter().enumerate() {
        let model = scored
            .as_ref()
            .map(|s| format!(", model {:.1}%", 100.0 * s.per_run[i]))
            .unwrap_or_default();
        println!(
            "{}: modified Hausdorff {:.1}%{model}",
            run.name,
            100.0 * mhd[i]
        );
    }
    println!(
        "mean over {} runs: modified Hausdorff {:.2}% (Lake et al. report 61.2%)",
        runs.len(),
        100.0 * mean(&mhd)
    );
    if let Some(s) = scored {
        println!(
            "model {:.2}%, raw pixels at {}x{} {:.2}%",
            100.0 * s.accuracy,
            size[0],
            size[1],
            100.0 * s.pixel_accuracy
        );
    }
    Ok(())
}

/// [`data_for`], with the image files of each split for an image folder.
pub(crate) fn data_and_paths_for(
    source: &SourceArgs,
    ckpt: &checkpoint::Checkpoint,
) -> Result<(Dataset, Option<[Vec<PathBuf>; 3]>)> {
    let provenance = Provenance::from_checkpoint(ckpt)?;
    let name = data_name(source, &provenance);
    let saved = provenance.image_folder;
    // The protocol is the checkpoint's: classes the model trained on cannot be called
    // unseen, so a different --holdout-classes is refused, not applied.
    let held_out = provenance.holdout_classes;
    if let Some(asked) = &source.holdout_classes {
        if held_out.as_ref() != Some(asked) {
            match &held_out {
                Some(h) => bail!(
                    "the model was trained with classes {h} held out and is evaluated on \
                     those; --holdout-classes {asked} asks for another protocol (omit the flag)"
                ),
                None => bail!(
                    "the model was trained on every class; --holdout-classes {asked} would \
                     call classes it trained on unseen (train with --holdout-classes instead)"
                ),
            }
        }
    }
    let description = describe(source, &name, (saved, provenance.omniglot), held_out, 0)?;
    let loaded = load_data(&description, 0)?;
    let (h, w) = (ckpt.config.input_height, ckpt.config.input_width);
    let data = loaded.data;
    if (data.spec.rows, data.spec.cols) != (h, w) {
        bail!(
            "{name} has {}x{} images, the model expects {h}x{w} (height x width)",
            data.spec.rows,
            data.spec.cols
        );
    }
    Ok((data, loaded.paths))
}

/// One line saying which classes each split holds, by name, when training does not
/// see every test class.
fn describe_protocol(data: &Dataset) -> String {
    // A line stays readable with thousands of classes: the first few by name, then
    // how many more.
    const NAMED: usize = 8;
    let names = |set: &siamese_data::ImageSet| {
        let present: Vec<String> = set
            .class_counts()
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| {
                data.spec
                    .class_names
                    .get(c)
                    .map(|n| crate::text::terminal_safe(n))
                    .unwrap_or_else(|| c.to_string())
            })
            .collect();
        if present.len() <= NAMED {
            return present.join(", ");
        }
        format!(
            "{} classes ({}, ... and {} more)",
            present.len(),
            present[..NAMED].join(", "),
            present.len() - NAMED
        )
    };
    if data.unseen_test_classes().is_empty() {
        return format!(
            "protocol: closed set (test classes were trained on): {}",
            names(&data.test)
        );
    }
    format!(
        "protocol: unseen classes\n  train:      {} images of {}\n  validation: {} images of {}\n  test:       {} images of {}",
        data.train.len(),
        names(&data.train),
        data.validation.len(),
        names(&data.validation),
        data.test.len(),
        names(&data.test)
    )
}

/// Prints the report (class pairs by `class_names`), or its JSON.
fn print_report(r: &siamese_train::EvalReport, json: bool, class_names: &[String]) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("plain data"));
        return;
    }
    println!(
        "validation: ROC AUC {:.4}, EER {:.2}%, best accuracy {:.2}% at distance {:.4}",
        r.validation.roc_auc,
        100.0 * r.validation.eer,
        100.0 * r.validation.best_accuracy,
        r.threshold
    );
    println!(
        "test:       accuracy {:.2}% (validation threshold), ROC AUC {:.4}, EER {:.2}%",
        100.0 * r.test_accuracy,
        r.test_roc_auc,
        100.0 * r.test_eer
    );
    let gallery = match r.knn_gallery {
        KnnGallery::Train => "test against train embeddings",
        KnnGallery::TestLeaveOneOut => "test classes unseen in training: among test embeddings",
    };
    println!("kNN-5:      {:.2}% ({gallery})", 100.0 * r.knn5_accuracy);
    println!(
        "retrieval:  precision@1 {:.2}%, R-precision {:.2}%, MAP@R {:.2}% (test embeddings, each against the others)",
        100.0 * r.precision_at_1,
        100.0 * r.r_precision,
        100.0 * r.map_at_r
    );
    let baseline = |name: &str, b: &Option<siamese_train::Verification>| match b {
        Some(b) => println!(
            "{name} accuracy {:.2}%, ROC AUC {:.4}, EER {:.2}%{}",
            100.0 * b.test_accuracy,
            b.test_roc_auc,
            100.0 * b.test_eer,
            if b.test_roc_auc >= r.test_roc_auc {
                "   <- the model does not beat it"
            } else {
                ""
            }
        ),
        None => println!("{name} not computed (images too large, or fewer pixels than dimensions)"),
    };
    baseline("baseline:   raw pixels,", &r.pixel_baseline);
    baseline("baseline:   PCA,       ", &r.pca_baseline);
    if let Some(n) = &r.score_normalised {
        println!(
            "normalised: accuracy {:.2}%, ROC AUC {:.4}, EER {:.2}% (raw pixels {:.2}%): each distance against both images' {} nearest of {} training images",
            100.0 * n.model.test_accuracy,
            n.model.test_roc_auc,
            100.0 * n.model.test_eer,
            100.0 * n.pixels.test_eer,
            n.top_k,
            n.cohort
        );
        let verify = if r.prefers_normalised() == Some(true) {
            "normalises"
        } else {
            "keeps plain distances"
        };
        println!(
            "            validation EER {:.2}% normalised, {:.2}% plain: siamese verify {verify}",
            100.0 * n.model.validation.eer,
            100.0 * r.validation.eer
        );
    }
    let normalised = |accuracy: Option<f64>| {
        accuracy
            .map(|a| format!(", normalised {:.2}%", 100.0 * a))
            .unwrap_or_default()
    };
    for o in &r.one_shot {
        println!(
            "one-shot:   {}-way {}-shot {:.2}% +- {:.2} over {} episodes (raw pixels {:.2}% +- {:.2}{})",
            o.ways,
            o.shots,
            100.0 * o.accuracy,
            100.0 * o.ci95,
            o.episodes,
            100.0 * o.pixel_accuracy,
            100.0 * o.pixel_ci95,
            normalised(o.normalised_accuracy)
        );
    }
    if let Some(l) = &r.lake_runs {
        println!(
            "Lake's runs: 20-way one-shot {:.2}% over {} runs (raw pixels {:.2}%{}; Koch's Siamese net 92.0%, people 95.5%)",
            100.0 * l.accuracy,
            l.runs,
            100.0 * l.pixel_accuracy,
            normalised(l.normalised_accuracy)
        );
    }
    if !r.class_pairs.is_empty() {
        let beaten = r
            .class_pairs
            .iter()
            .filter(|p| p.roc_auc > p.pixel_roc_auc)
            .count();
        let list: Vec<String> = r
            .class_pairs
            .iter()
            .map(|p| {
                let name = |c: u32| {
                    class_names
                        .get(c as usize)
                        .map(|n| crate::text::terminal_safe(n))
                        .unwrap_or_else(|| c.to_string())
                };
                format!(
                    "{}-{} {:.3}/{:.3}",
                    name(p.classes[0]),
                    name(p.classes[1]),
                    p.roc_auc,
                    p.pixel_roc_auc
                )
            })
            .collect();
        println!(
            "class pairs (ROC AUC, model/pixels): beats pixels on {beaten} of {}: {}",
            r.class_pairs.len(),
            list.join(", ")
        );
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let (mut tower, ckpt) = load_model(&a.model)?;
    if let Some(layer) = a.embed_from {
        tower.set_embed_from(layer)?;
    }
    if let Some(r) = a.shift_average {
        tower.set_shift_average(r)?;
    }
    let data = data_for(&a.source, &ckpt)?;
    let name = data_name(&a.source, &Provenance::from_checkpoint(&ckpt)?);
    let runs = one_shot_runs_for(&name, [data.spec.rows, data.spec.cols])?;
    let report = evaluate(&tower, &data, &Batcher::new(device()?), runs.as_deref())?.report;
    print_report(&report, a.json, &data.spec.class_names);
    Ok(())
}

fn embed(a: EmbedArgs) -> Result<()> {
    let (tower, ckpt) = load_model(&a.model)?;
    let data = data_for(&a.source, &ckpt)?;
    let set = match a.split {
        SplitName::Train => &data.train,
        SplitName::Validation => &data.validation,
        SplitName::Test => &data.test,
    };
    let dim = tower.embedding_dim();
    let values = embed_set(&tower, set, &Batcher::new(device()?))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "the model {} gives a non-finite embedding (image {} of the {:?} split); nothing written",
            a.model.display(),
            i / dim.max(1),
            a.split
        );
    }
    if a.images {
        if a.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            bail!(
                "{}: --images needs a .safetensors output (a CSV holds embeddings only)",
                a.out.display()
            );
        }
        siamese_train::run_folder::save_embeddings_and_images(
            &a.out,
            &values,
            dim,
            set.labels(),
            Some((set.pixels(), set.rows(), set.cols())),
        )?;
    } else {
        write_embeddings(&a.out, &values, dim, set.labels())?;
    }
    eprintln!(
        "wrote {} embeddings of dimension {dim} to {}",
        set.len(),
        a.out.display()
    );
    Ok(())
}

fn write_embeddings(path: &Path, values: &[f32], dim: usize, labels: &[u32]) -> Result<()> {
    let bytes = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => {
            let mut text = String::from("label");
            (0..dim).for_each(|d| text.push_str(&format!(",e{d}")));
            text.push('\n');
            for (row, label) in values.chunks_exact(dim).zip(labels) {
                text.push_str(&label.to_string());
                row.iter().for_each(|v| text.push_str(&format!(",{v}")));
                text.push('\n');
            }
            text.into_bytes()
        }
        Some("safetensors") => {
            return Ok(siamese_train::run_folder::save_embeddings(
                path, values, dim, labels,
            )?);
        }
        _ => bail!(
            "{}: the output must end in .csv or .safetensors",
            path.display()
        ),
    };
    siamese_data::write_atomic(path, &bytes)?;
    Ok(())
}

fn verify(a: VerifyArgs) -> Result<()> {
    let (tower, ckpt) = load_model(&a.model)?;
    let provenance = Provenance::from_checkpoint(&ckpt)?;
    let cohort = match (provenance.score_norm, &ckpt.cohort) {
        (Some(record), Some(rows)) => Some((record, rows)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => bail!(
            "{}: the checkpoint holds a score-normalisation record without its cohort, or a cohort without its record: it is broken",
            a.model.display()
        ),
    };
    let normalise = match a.scoring {
        Scoring::Plain => false,
        Scoring::Auto => a.threshold.is_none() && cohort.is_some_and(|(r, _)| r.preferred()),
        Scoring::Normalised if a.threshold.is_some() => {
            bail!("--threshold is a distance threshold: it goes with --scoring plain")
        }
        Scoring::Normalised if cohort.is_none() => bail!(
            "{}: the checkpoint holds no score-normalisation cohort (a run stores one when its test classes were unseen in training); use --scoring plain",
            a.model.display()
        ),
        Scoring::Normalised => true,
    };
    let dim = tower.embedding_dim();
    let e = embed_files(&tower, &ckpt, &[a.a.clone(), a.b.clone()])?;
    // The distance the evaluation protocol uses, so the threshold means the same here.
    let distance = f64::from(siamese_train::metrics::pair_distances(&e, dim, &[0], &[1])[0]);
    let (verdict, detail) = match cohort.filter(|_| normalise) {
        Some((record, rows)) => {
            let cohort = Cohort {
                embeddings: rows.flatten_all()?.to_vec1::<f32>()?,
                dim,
                top_k: record.top_k,
            };
            let stats = cohort.stats(&e);
            let score = normalised_distance(distance, &stats[0], &stats[1]);
            if !score.is_finite() {
                bail!(
                    "no verdict: the normalised score of distance {distance} is not a finite number (an image's distances to the cohort of {} have no spread)",
                    a.model.display()
                );
            }
            let detail = format!(
                "normalised score {}, threshold {} (distance {} against both images' {} nearest of {} training images)",
                crate::text::number(score),
                crate::text::number(record.threshold),
                crate::text::number(distance),
                record.top_k.min(cohort.len()),
                cohort.len()
            );
            (score <= record.threshold, detail)
        }
        None => {
            // Checked on load: a checkpoint's threshold is a finite number >= 0.
            let threshold = match a.threshold {
                Some(t) => t,
                None => provenance
                    .threshold
                    .context("the checkpoint holds no threshold; pass --threshold")?,
            };
            if !distance.is_finite() {
                bail!(
                    "no verdict: the distance ({distance}) is not a finite number; the checkpoint {} is broken",
                    a.model.display()
                );
            }
            let detail = format!(
                "distance {}, threshold {}",
                crate::text::number(distance),
                crate::text::number(threshold)
            );
            (distance <= threshold, detail)
        }
    };
    println!("{}: {detail}", if verdict { "same" } else { "different" });
    Ok(())
}

/// The embeddings of image files, read and scaled as the checkpoint's training
/// images were (resized for image folders, exact size for the IDX sets; for Omniglot,
/// 105 x 105 drawings with dark ink, turned and reduced as the npz drawings are).
pub(crate) fn embed_files(
    tower: &siamese_model::ConvTower,
    ckpt: &checkpoint::Checkpoint,
    files: &[PathBuf],
) -> Result<Vec<f32>> {
    let (h, w) = (ckpt.config.input_height, ckpt.config.input_width);
    let provenance = Provenance::from_checkpoint(ckpt)?;
    let omniglot = provenance.omniglot.is_some();
    let preprocessing = provenance.preprocessing.unwrap_or(Preprocessing {
        height: h,
        width: w,
        resize: false,
    });
    if (preprocessing.height, preprocessing.width) != (h, w) {
        bail!("the checkpoint's preprocessing and model config disagree on the input size");
    }
    let mut pixels = Vec::with_capacity(files.len() * h * w);
    for file in files {
        if omniglot {
            let (_, small) = siamese_data::omniglot::runs::read_drawing(file, [h, w])?;
            pixels.extend(small);
        } else {
            pixels.extend(read_image(file, &preprocessing)?);
        }
    }
    let images = Batcher::new(device()?).raw_images(&pixels, h, w)?;
    Ok(tower.embed(&images)?.flatten_all()?.to_vec1::<f32>()?)
}

/// An embeddings file (`embeddings [n, dim]`, optional `labels [n]`): values, `dim`
/// and labels (all 0 when it has none).
pub(crate) fn read_embeddings(path: &Path) -> Result<(Vec<f32>, usize, Vec<u32>)> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let embeddings = tensors
        .get("embeddings")
        .with_context(|| format!("{} has no `embeddings` tensor", path.display()))?;
    let (n, dim) = embeddings
        .dims2()
        .with_context(|| format!("{}: `embeddings` must be [n, dim]", path.display()))?;
    let labels: Vec<u32> = match tensors.get("labels") {
        Some(l) => {
            // Class indices: integers below MAX_CLASSES (older files hold u8, newer
            // u32). A float or negative label is not a class, and a huge one would
            // make every per-class table huge.
            let wide = match l.dtype() {
                candle_core::DType::U8 | candle_core::DType::U32 | candle_core::DType::I64 => l
                    .to_dtype(candle_core::DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?,
                other => bail!(
                    "{}: `labels` must hold integer class indices, found {other:?}",
                    path.display()
                ),
            };
            match wide
                .iter()
                .find(|&&v| !(0..MAX_CLASSES as i64).contains(&v))
            {
                Some(v) => bail!(
                    "{}: label {v} is not a class index (0 to {})",
                    path.display(),
                    MAX_CLASSES - 1
                ),
                None => wide.iter().map(|&v| v as u32).collect(),
            }
        }
        None => vec![0; n],
    };
    if labels.len() != n {
        bail!(
            "{}: {} labels for {n} embeddings",
            path.display(),
            labels.len()
        );
    }
    let values = embeddings
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((values, dim, labels))
}

fn plot(a: PlotArgs) -> Result<()> {
    let (values, dim, labels) = read_embeddings(&a.embeddings)?;
    let title = a
        .embeddings
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    siamese_train::plot::plot_embeddings(&a.out, &values, dim, &labels, &[], &title)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn data(a: DataArgs) -> Result<()> {
    let name = a.source.data.clone().unwrap_or_else(|| "mnist".into());
    let description = describe(
        &a.source,
        &name,
        (None, None),
        a.source.holdout_classes.clone(),
        0,
    )?;
    let loaded = load_data(&description, 0)?;
    let data = loaded.data;
    let origin = loaded.origin;
    match a.action {
        DataAction::Fetch => println!(
            "{}: ready ({origin}), counts and checksums verified",
            data.spec.name
        ),
        DataAction::Info if a.json => {
            let info = serde_json::json!({
                "name": data.spec.name,
                "origin": origin,
                "classes": data.spec.class_names,
                "rows": data.spec.rows,
                "cols": data.spec.cols,
                "train": data.train.len(),
                "validation": data.validation.len(),
                "test": data.test.len(),
                "train_class_counts": data.train.class_counts(),
                "validation_class_counts": data.validation.class_counts(),
                "test_class_counts": data.test.class_counts(),
            });
            println!("{info}");
        }
        DataAction::Info => {
            println!(
                "data set:   {} ({} classes: {})",
                data.spec.name,
                data.spec.num_classes(),
                data.spec.class_names.join(", ")
            );
            println!("found:      {origin}");
            println!(
                "images:     {}x{} grayscale",
                data.spec.rows, data.spec.cols
            );
            println!(
                "splits:     train {}, validation {}, test {}",
                data.train.len(),
                data.validation.len(),
                data.test.len()
            );
            if let Some(folder) = loaded.folder {
                println!("split:      {}", serde_json::to_string(&folder.split)?);
            }
            println!("{}", describe_protocol(&data));
            println!("per class:  train {:?}", data.train.class_counts());
            println!("            test  {:?}", data.test.class_counts());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> TrainConfig {
        let cli =
            crate::args::Cli::try_parse_from(["siamese", "train"].iter().chain(args)).unwrap();
        let crate::args::Command::Train(a) = cli.command else {
            panic!("not train")
        };
        train_config(&a, None).unwrap()
    }

    #[test]
    fn flip_adds_mirroring_to_the_runs_distortions_or_alone() {
        let faces = config(&["--preset", "faces", "--data", "faces_folder"]);
        let flipped = config(&["--preset", "faces", "--data", "faces_folder", "--flip"]);
        let (kept, added) = (faces.augment.unwrap(), flipped.augment.unwrap());
        assert!(!kept.horizontal_flip && added.horizontal_flip);
        assert_eq!(
            siamese_data::AugmentConfig {
                horizontal_flip: false,
                ..added
            },
            kept,
            "the preset's other distortions are kept"
        );
        assert_eq!(config(&[]).augment, None);
        let alone = config(&["--flip"]).augment.unwrap();
        assert!(alone.horizontal_flip && alone.max_rotation_degrees == 0.0);
        assert_eq!((alone.scale, alone.max_shift), ([1.0, 1.0], 0.0));
    }

    #[test]
    fn optimizer_and_momentum() {
        assert_eq!(config(&[]).optim.sgd, None);
        let sgd = config(&["--optimizer", "sgd"]).optim.sgd.unwrap();
        assert_eq!(sgd.momentum, 0.9);
        let slow = config(&["--optimizer", "sgd", "--momentum", "0.5"]);
        assert_eq!(slow.optim.sgd.unwrap().momentum, 0.5);
        let parse = |args: &[&str]| {
            let all = ["siamese", "train"].iter().chain(args);
            let cli = crate::args::Cli::try_parse_from(all).unwrap();
            let crate::args::Command::Train(a) = cli.command else {
                panic!("not train")
            };
            train_config(&a, None).unwrap_err().to_string()
        };
        assert!(parse(&["--momentum", "0.5"]).contains("--optimizer sgd"));
        let bad = parse(&["--optimizer", "sgd", "--momentum", "1"]);
        assert!(bad.contains("momentum must be in [0, 1)"), "{bad}");
    }
}
