//! Developer and CI entry points, run as `cargo xtask <task>` (the alias is in
//! `.cargo/config.toml`). Tasks are verbs:
//!
//! - `train [ARGS]`: builds in release and runs `siamese train ARGS` (the default
//!   preset unless `--preset` says otherwise): the main job.
//! - `bench [--plain] [--rounds N] [--torch COMMAND]`: training pairs/s and embedding
//!   images/s of the reference network, with the peak resident memory of each, as JSON
//!   (release build, one process per mode); `--plain` measures plain candle layers
//!   instead of the fused kernels, for the before/after ratio. `--rounds N` repeats the
//!   measurement N times and adds the median and best of each figure (shared machines
//!   vary by 10-20% from one minute to the next); `--torch COMMAND` (one argument, split
//!   at whitespace, no shell quoting) runs a reference
//!   (PyTorch's `bench/torch_ref.py --bench`, which prints `train_pairs_per_s` and
//!   `embed_images_per_s` as JSON) after each round, so both are measured alternately
//!   under the same load, and reports the ratio of each round and their median.
//!   `--omniglot` measures the Omniglot recipe instead (Snell's four-block tower,
//!   60-way episodes of 1 + 5 images: `train_episodes_per_s` and `embed_images_per_s`),
//!   against `--torch "python ../shared/bench/torch_omniglot.py --bench"`.
//! - `ci`: what `.ci/run` runs: format check, clippy with warnings denied, the test
//!   suite, siamese-data built without its default features, unused dependencies
//!   (`cargo machete`), `vendor-check`, then `data-check` and `train-check`.
//! - `vendor-check`: `vendor/candle-core` equals candle-core 0.11.1 from crates.io plus
//!   `vendor/candle-core.patch`, and candle's own gradient tests pass on it.
//! - `data-check`: loads MNIST and Fashion-MNIST from `SIAMESE_DATA_DIR` (never the
//!   network) through `siamese data info --json` and checks the split sizes; the loader
//!   itself verifies counts per class and the SHA-256 of every file.
//!
//! xtask depends on no product crate: it drives the `siamese` binary, so a fresh clone
//! compiles the workspace once, not once more for xtask.
//! - `train-check`: a short real-data training that must learn (validation ROC AUC
//!   above 0.98, where chance is 0.5), then `siamese eval` of its checkpoint, which must
//!   agree with the metrics written during training; then the same with digits 5-9
//!   held out, whose report must name them unseen and carry the baselines.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod vendor;

const USAGE: &str = "usage: cargo xtask <train [ARGS] | bench [--plain] [--omniglot] \
                     [--rounds N] [--torch COMMAND] | ci | data-check | train-check | vendor-check>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("train") => cargo(
            &[
                &["run", "--release", "-p", "siamese-cli", "--", "train"],
                &args_str(&args[1..])[..],
            ]
            .concat(),
        ),
        Some("bench") => BenchOptions::parse(&args[1..]).and_then(|o| bench(&o)),
        Some("ci") => ci(),
        Some("data-check") => siamese_binary(true).and_then(|bin| data_check(&bin)),
        Some("train-check") => siamese_binary(true).and_then(|bin| train_check(&bin)),
        Some("vendor-check") => vendor::vendor_check(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cargo` with `args`, echoing the command, failing on a non-zero exit.
fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn args_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `program` with `args` and the environment variables `envs` set, echoing the
/// command, and returns its standard output; a non-zero exit is an error.
fn output_of(program: &Path, args: &[&str], envs: &[(&str, &OsStr)]) -> Result<String> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    eprintln!("+ {shown}");
    let out = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The debug `siamese` binary, built first when `build` (standalone checks).
///
/// In `ci` it is the one `cargo test --workspace` has just built, run directly: a
/// `cargo run -p siamese-cli` there would build candle and everything above it a
/// second time, because the test build's dev-dependencies (proptest's rand) turn on
/// features of a crate under safetensors (getrandom) that the binary alone does not.
fn siamese_binary(build: bool) -> Result<PathBuf> {
    if build {
        cargo(&["build", "-q", "-p", "siamese-cli"])?;
    }
    built_binary("debug", "siamese")
}

/// The path of binary `name` built in `profile` (`debug` or `release`) under the
/// target directory (`CARGO_TARGET_DIR` or `target`); an error if it is not there.
fn built_binary(profile: &str, name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let bin = target
        .join(profile)
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// What `cargo xtask bench` measures.
#[derive(Debug, PartialEq)]
struct BenchOptions {
    /// Plain candle layers instead of the fused kernels.
    plain: bool,
    /// How many times to measure.
    rounds: usize,
    /// A reference benchmark run after each round, as a program and its arguments.
    torch: Option<Vec<String>>,
    /// The Omniglot recipe's episodes (`throughput episodes`: Snell's four-block tower,
    /// 60-way 1+5 episodes) instead of the reference network's pairs.
    omniglot: bool,
}

impl BenchOptions {
    /// The most rounds one run takes (each is about half a minute).
    const MAX_ROUNDS: usize = 100;

    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self {
            plain: false,
            rounds: 1,
            torch: None,
            omniglot: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--plain" => options.plain = true,
                "--omniglot" => options.omniglot = true,
                "--rounds" => {
                    let n = args.next().context("--rounds takes a number")?;
                    options.rounds = n
                        .parse()
                        .ok()
                        .filter(|r| (1..=Self::MAX_ROUNDS).contains(r))
                        .with_context(|| {
                            format!("--rounds {n:?}: expected 1 to {}", Self::MAX_ROUNDS)
                        })?;
                }
                "--torch" => {
                    let command = args.next().context("--torch takes a command")?;
                    let words: Vec<String> =
                        command.split_whitespace().map(str::to_string).collect();
                    if words.is_empty() {
                        bail!("--torch: the command is empty");
                    }
                    options.torch = Some(words);
                }
                other => bail!("bench: unknown option {other:?}\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

fn bench(options: &BenchOptions) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-q",
        "-p",
        "siamese-benches",
        "--bin",
        "throughput",
    ])?;
    let bin = built_binary("release", "throughput")?;
    let mode: &[&str] = if options.plain { &["--plain"] } else { &[] };
    let json = |out: String, what: &str| -> Result<serde_json::Value> {
        // The last line: a reference may print progress before its result.
        let line = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(line.trim()).with_context(|| format!("parsing {what}'s figures"))
    };
    let mut rounds = Vec::with_capacity(options.rounds);
    for _ in 0..options.rounds {
        let mut round = if options.omniglot {
            let episodes = output_of(&bin, &[&["episodes"], mode].concat(), &[])?;
            serde_json::json!({ "episodes": json(episodes, "episodes")? })
        } else {
            let train = json(output_of(&bin, &[&["train"], mode].concat(), &[])?, "train")?;
            let embed = json(output_of(&bin, &[&["embed"], mode].concat(), &[])?, "embed")?;
            serde_json::json!({ "train": train, "embed": embed })
        };
        if let Some(words) = &options.torch {
            let (program, rest) = words.split_first().context("--torch: empty command")?;
            let out = output_of(Path::new(program), &args_str(rest), &[])?;
            round["torch"] = json(out, "the --torch command")?;
        }
        rounds.push(round);
    }
    if let [only] = &rounds[..] {
        if options.torch.is_none() {
            println!("{only}");
            return Ok(());
        }
    }
    let figures = if options.omniglot {
        EPISODE_FIGURES
    } else {
        PAIR_FIGURES
    };
    let summary = summarise(&rounds, figures)?;
    println!(
        "{}",
        serde_json::json!({ "rounds": rounds, "summary": summary })
    );
    Ok(())
}

/// The figures of the reference network's rounds: (the round's part, the key).
const PAIR_FIGURES: &[(&str, &str)] = &[
    ("train", "train_pairs_per_s"),
    ("embed", "embed_images_per_s"),
];

/// The figures of the Omniglot recipe's rounds.
const EPISODE_FIGURES: &[(&str, &str)] = &[
    ("episodes", "train_episodes_per_s"),
    ("episodes", "embed_images_per_s"),
];

/// The median and best of each figure over the rounds, and with a reference, the
/// ratio of each round (ours over the reference's, measured minutes apart) and the
/// median of those ratios: the figure to quote on a shared machine, since both sides
/// of one round saw about the same load.
fn summarise(rounds: &[serde_json::Value], figures: &[(&str, &str)]) -> Result<serde_json::Value> {
    let figure = |round: &serde_json::Value, side: &str, key: &str| -> Result<f64> {
        round[side][key]
            .as_f64()
            .filter(|v| v.is_finite() && *v > 0.0)
            .with_context(|| format!("{side} gave no positive {key}"))
    };
    let mut summary = serde_json::Map::new();
    for &(side, key) in figures {
        let ours = rounds
            .iter()
            .map(|r| figure(r, side, key))
            .collect::<Result<Vec<_>>>()?;
        summary.insert(key.to_string(), spread(&ours));
        if rounds.iter().all(|r| !r["torch"].is_null()) {
            let theirs = rounds
                .iter()
                .map(|r| figure(r, "torch", key))
                .collect::<Result<Vec<_>>>()?;
            let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
            summary.insert(format!("torch_{key}"), spread(&theirs));
            summary.insert(
                format!("{key}_ratio"),
                serde_json::json!({ "per_round": ratios, "median": median(&ratios) }),
            );
        }
    }
    Ok(serde_json::Value::Object(summary))
}

/// `{"median", "best", "all"}` of positive throughputs.
fn spread(values: &[f64]) -> serde_json::Value {
    let best = values.iter().copied().fold(0.0, f64::max);
    serde_json::json!({ "median": median(values), "best": best, "all": values })
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The README's test command.
    cargo(&["test", "--workspace"])?;
    // A library user can take samplers and the batcher without the Hub, Parquet and
    // image decoders.
    cargo(&[
        "clippy",
        "-p",
        "siamese-data",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Every declared dependency is used (`.ci/run` installs cargo-machete). Run as its
    // own binary on this folder: as `cargo machete` under `cargo xtask` it took the
    // word `machete` for the folder to scan.
    eprintln!("+ cargo-machete .");
    let status = Command::new("cargo-machete")
        .arg(".")
        .status()
        .context("running cargo-machete (install it: cargo install --locked cargo-machete)")?;
    if !status.success() {
        bail!("cargo-machete found unused dependencies ({status})");
    }
    vendor::vendor_check()?;
    // The MPI collectives across real processes (`mpiexec -n 2` and `-n 3`), where an MPI
    // is installed (`.ci/run` installs MPICH); the rest of the workspace builds without.
    if Command::new("mpiexec").arg("--version").output().is_ok() {
        cargo(&[
            "clippy",
            "-p",
            "siamese-collective",
            "--features",
            "mpi",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        cargo(&["test", "-p", "siamese-collective", "--features", "mpi"])?;
        // `mpiexec -n 2 siamese train` against one process, and ranks that disagree, built
        // with the workspace's features plus `mpi` (measured no faster in CI than
        // `-p siamese-cli --features mpi`: 24.6 against 24.2 minutes in all).
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            "siamese-cli/mpi",
            "--",
            "-D",
            "warnings",
        ])?;
        cargo(&[
            "test",
            "--workspace",
            "--features",
            "siamese-cli/mpi",
            "--test",
            "mpi_train",
        ])?;
    } else if std::env::var_os("CI").is_some() {
        bail!("mpiexec is not installed: CI runs the MPI tests (apt-get install mpich libmpich-dev libclang-dev)");
    } else {
        eprintln!("no mpiexec: skipping the MPI tests");
    }
    if std::env::var_os("SIAMESE_DATA_DIR").is_some() {
        let bin = siamese_binary(false)?;
        data_check(&bin)?;
        train_check(&bin)?;
    } else {
        eprintln!("SIAMESE_DATA_DIR is not set: skipping the real-data checks");
    }
    Ok(())
}

/// Loads each known data set through `siamese data info --json`, offline and with an
/// empty cache, so only `SIAMESE_DATA_DIR` can supply it, and checks the split sizes
/// (the loader itself verifies the counts per class and every file's SHA-256).
fn data_check(bin: &Path) -> Result<()> {
    if std::env::var_os("SIAMESE_DATA_DIR").is_none() {
        bail!("data-check reads the data sets from SIAMESE_DATA_DIR, which is not set");
    }
    let empty_cache = Path::new("target/ci-empty-cache");
    std::fs::create_dir_all(empty_cache).context("creating target/ci-empty-cache")?;
    let envs = [
        ("HF_HUB_OFFLINE", OsStr::new("1")),
        ("SIAMESE_CACHE_DIR", empty_cache.as_os_str()),
    ];
    for name in KNOWN_DATASETS {
        let out = output_of(bin, &["data", "info", "--data", name, "--json"], &envs)?;
        let info: serde_json::Value =
            serde_json::from_str(out.trim()).with_context(|| format!("parsing {name}'s info"))?;
        let sizes = (&info["train"], &info["validation"], &info["test"]);
        if sizes != (&55_000.into(), &5_000.into(), &10_000.into()) {
            bail!("{name}: expected splits 55000/5000/10000, found {info}");
        }
        eprintln!(
            "{name}: 55000/5000/10000 train/validation/test from {}; per class: train {}, validation {}, test {}; SHA-256 of all four files verified",
            info["origin"], info["train_class_counts"], info["validation_class_counts"], info["test_class_counts"]
        );
    }
    Ok(())
}

/// The data sets `data-check` expects under `SIAMESE_DATA_DIR`.
const KNOWN_DATASETS: [&str; 2] = ["mnist", "fashion-mnist"];

/// Steps of the CI training. Measured on the 2-core machine: the default recipe over 600
/// steps reaches validation ROC AUC 0.9936 on the protocol's 10,000 pairs (test
/// accuracy 95.65%, kNN-5 95.89%), in 4 min 18 s of a debug build, compile included.
const CHECK_STEPS: &str = "600";
/// The bar the CI training must pass. Chance is 0.5; before the default preset scored
/// every pair of the batch (sampled pairs only), it reached 0.967 in as many steps.
const CHECK_MIN_AUC: f64 = 0.98;

fn train_check(bin: &Path) -> Result<()> {
    let dir = Path::new("target/ci-train-check");
    let written = train_and_eval(bin, dir, &["--steps", CHECK_STEPS, "--eval-every", "100"])?;
    let auc = written["validation"]["roc_auc"]
        .as_f64()
        .context("metrics.json lacks validation.roc_auc")?;
    if auc <= CHECK_MIN_AUC {
        bail!("the model did not learn: validation ROC AUC {auc:.4} after {CHECK_STEPS} steps (need > {CHECK_MIN_AUC})");
    }
    eprintln!("train-check: validation ROC AUC {auc:.4} after {CHECK_STEPS} steps; siamese eval agrees with metrics.json: {written}");

    // The held-out-class protocol: the checkpoint alone must rebuild it (eval agrees),
    // and the report must say which classes were unseen and carry the baselines.
    let dir = Path::new("target/ci-train-check-holdout");
    let written = train_and_eval(
        bin,
        dir,
        &[
            "--steps",
            HOLDOUT_CHECK_STEPS,
            "--eval-every",
            "100",
            "--holdout-classes",
            "5-9",
        ],
    )?;
    if written["unseen_test_classes"] != serde_json::json!([5, 6, 7, 8, 9])
        || written["knn_gallery"] != "test_leave_one_out"
    {
        bail!("the held-out run does not report digits 5-9 as unseen: {written}");
    }
    for baseline in ["pixel_baseline", "pca_baseline"] {
        if !written[baseline]["test_roc_auc"].is_f64() {
            bail!("the held-out report lacks {baseline}.test_roc_auc: {written}");
        }
    }
    eprintln!("train-check (held out 5-9, {HOLDOUT_CHECK_STEPS} steps): siamese eval rebuilt the protocol from the checkpoint and agrees: {written}");
    omniglot_check(bin)
}

/// Omniglot, when the data folder holds it: Lake's modified Hausdorff baseline on his
/// runs must give his 61.2% (the harness is right), and a short episodic run of the
/// `omniglot` preset must report one-shot episodes and Lake's runs, beating raw pixels
/// on them, with `siamese eval` agreeing.
fn omniglot_check(bin: &Path) -> Result<()> {
    let data = std::env::var_os("SIAMESE_DATA_DIR").map(PathBuf::from);
    let Some(data) = data.filter(|d| d.join("omniglot/images_background.npz").is_file()) else {
        eprintln!("omniglot-check: no Omniglot in SIAMESE_DATA_DIR: skipped");
        return Ok(());
    };
    let runs = output_of(bin, &["lake-runs", "--json"], &[])?;
    let runs: serde_json::Value = serde_json::from_str(runs.trim()).context("lake-runs --json")?;
    let mhd = runs["modified_hausdorff"]["accuracy"]
        .as_f64()
        .context("lake-runs lacks modified_hausdorff.accuracy")?;
    // Lake et al.: 38.8% error, i.e. 61.2% (here 245 of 400 queries: 61.25%).
    if (mhd - 0.6125).abs() > 1e-9 {
        bail!("modified Hausdorff on Lake's runs: {mhd}, expected 0.6125 (his 61.2%)");
    }
    eprintln!(
        "omniglot-check: modified Hausdorff baseline on Lake's runs {:.2}% (Lake et al. 61.2%), from {}",
        100.0 * mhd,
        data.display()
    );
    let dir = Path::new("target/ci-omniglot-check");
    let written = train_and_eval(
        bin,
        dir,
        &[
            "--preset",
            "omniglot",
            "--ways",
            "20",
            "--steps",
            OMNIGLOT_CHECK_STEPS,
            "--eval-every",
            "100",
            // One view per drawing: the preset's 25 test-time shifts would make each of
            // the check's two evaluations (training's and `siamese eval`'s) 25 times
            // longer, minutes of CI, for a path the CLI's Omniglot test already runs
            // (crates/siamese-cli/tests/omniglot.rs, with 9 views).
            "--shift-average",
            "0",
        ],
    )?;
    let lake = &written["lake_runs"];
    let (model, pixels) = (lake["accuracy"].as_f64(), lake["pixel_accuracy"].as_f64());
    let (Some(model), Some(pixels)) = (model, pixels) else {
        bail!("the Omniglot report lacks Lake's runs: {written}");
    };
    if model <= pixels || written["one_shot"].as_array().map_or(0, Vec::len) != 4 {
        bail!("after {OMNIGLOT_CHECK_STEPS} episodes the model does not beat raw pixels on Lake's runs, or episodes are missing: {written}");
    }
    eprintln!("omniglot-check ({OMNIGLOT_CHECK_STEPS} 20-way episodes): Lake's runs {:.2}% (raw pixels {:.2}%); siamese eval agrees: {written}", 100.0 * model, 100.0 * pixels);
    Ok(())
}

/// Episodes of the Omniglot check (20-way 1 + 2, a sixth of the preset's 120-way
/// episodes): a few hundred, as the check is of the pipeline. 300 60-way 1 + 5 episodes
/// took 4 min of CI's debug build and reached 64.75% on Lake's runs (pixels 20.75%).
const OMNIGLOT_CHECK_STEPS: &str = "200";

/// Steps of the held-out-class check: enough for a checkpoint and an evaluation; what
/// it checks is the protocol, not the quality.
const HOLDOUT_CHECK_STEPS: &str = "200";

/// Trains into a fresh `dir` with `args`, then checks that `siamese eval` of the
/// checkpoint (nothing but the file) reproduces `metrics.json` exactly; returns it.
fn train_and_eval(bin: &Path, dir: &Path, args: &[&str]) -> Result<serde_json::Value> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let out = dir.to_str().context("a UTF-8 path")?;
    let report = output_of(bin, &[&["train"], args, &["--out", out]].concat(), &[])?;
    eprint!("{report}");
    let written: serde_json::Value = read_json(&dir.join("metrics.json"))?;
    let model = dir.join("model.safetensors");
    let model = model.to_str().context("a UTF-8 path")?;
    let eval = output_of(bin, &["eval", "--model", model, "--json"], &[])?;
    let evaluated: serde_json::Value =
        serde_json::from_str(eval.trim()).context("parsing siamese eval --json")?;
    if evaluated != written {
        bail!("siamese eval disagrees with the metrics written during training:\n  eval:     {evaluated}\n  training: {written}");
    }
    Ok(written)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn bench_options_parse_and_refuse() {
        assert_eq!(
            BenchOptions::parse(&args(&[])).unwrap(),
            BenchOptions {
                plain: false,
                rounds: 1,
                torch: None,
                omniglot: false,
            }
        );
        assert!(
            BenchOptions::parse(&args(&["--omniglot"]))
                .unwrap()
                .omniglot
        );
        let o = BenchOptions::parse(&args(&["--rounds", "3", "--torch", "py  ref.py --bench"]))
            .unwrap();
        assert_eq!(o.rounds, 3);
        assert_eq!(o.torch, Some(args(&["py", "ref.py", "--bench"])));
        for bad in [
            &["--rounds"][..],
            &["--rounds", "0"],
            &["--rounds", "101"],
            &["--rounds", "x"],
            &["--torch", "  "],
            &["--torch"],
            &["--fast"],
        ] {
            assert!(BenchOptions::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    fn round(train: f64, embed: f64, torch: Option<(f64, f64)>) -> serde_json::Value {
        let mut r = serde_json::json!({
            "train": {"train_pairs_per_s": train},
            "embed": {"embed_images_per_s": embed},
        });
        if let Some((t, e)) = torch {
            r["torch"] = serde_json::json!({"train_pairs_per_s": t, "embed_images_per_s": e});
        }
        r
    }

    #[test]
    fn summary_pairs_each_round_with_its_reference() {
        let rounds = [
            round(400.0, 3000.0, Some((200.0, 1000.0))),
            round(500.0, 2000.0, Some((400.0, 1000.0))),
            round(450.0, 2500.0, Some((300.0, 500.0))),
        ];
        let s = summarise(&rounds, PAIR_FIGURES).unwrap();
        assert_eq!(s["train_pairs_per_s"]["median"], 450.0);
        assert_eq!(s["train_pairs_per_s"]["best"], 500.0);
        assert_eq!(s["torch_train_pairs_per_s"]["median"], 300.0);
        // Ratios per round 2.0, 1.25, 1.5: the median is 1.5, not 450 / 300 by chance.
        assert_eq!(s["train_pairs_per_s_ratio"]["median"], 1.5);
        assert_eq!(s["embed_images_per_s_ratio"]["per_round"][2], 5.0);
        assert_eq!(s["embed_images_per_s_ratio"]["median"], 3.0);
    }

    #[test]
    fn summary_refuses_missing_or_broken_figures() {
        assert!(summarise(&[round(f64::NAN, 1.0, None)], PAIR_FIGURES).is_err());
        assert!(summarise(&[round(1.0, 1.0, Some((0.0, 1.0)))], PAIR_FIGURES).is_err());
        let mut no_embed = round(1.0, 1.0, None);
        no_embed["embed"] = serde_json::json!({});
        assert!(summarise(&[no_embed], PAIR_FIGURES).is_err());
        // Without a reference there are no ratios.
        let s = summarise(&[round(1.0, 2.0, None)], PAIR_FIGURES).unwrap();
        assert!(s.get("train_pairs_per_s_ratio").is_none());
    }
}
