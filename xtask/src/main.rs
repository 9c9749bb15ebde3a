//! Developer and CI entry points, run as `cargo xtask <task>` (the alias is in
//! `.cargo/config.toml`). Tasks are verbs:
//!
//! - `ci`: what `.ci/run` runs: format check, clippy with warnings denied, the test
//!   suite, then `data-check`.
//! - `data-check`: loads MNIST and Fashion-MNIST from `SIAMESE_DATA_DIR` (never the
//!   network) and checks the split sizes; the loader itself verifies counts per class
//!   and the SHA-256 of every file.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use siamese_data::{load, DatasetSpec, LoadOptions, KNOWN_DATASETS};

const USAGE: &str = "usage: cargo xtask <ci | data-check>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("data-check") => data_check(),
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
    if std::env::var_os("SIAMESE_DATA_DIR").is_some() {
        data_check()?;
    } else {
        eprintln!("SIAMESE_DATA_DIR is not set: skipping the real-data check");
    }
    Ok(())
}

fn data_check() -> Result<()> {
    let Some(dir) = std::env::var_os("SIAMESE_DATA_DIR") else {
        bail!("data-check reads the data sets from SIAMESE_DATA_DIR, which is not set");
    };
    // Only the folder: a missing copy must fail here, not be downloaded.
    let options = LoadOptions {
        data_dir: Some(dir.into()),
        offline: true,
        progress: false,
        ..LoadOptions::default()
    };
    for name in KNOWN_DATASETS {
        let spec = DatasetSpec::by_name(name)?;
        let (data, origin) = load(&spec, &options).with_context(|| format!("loading {name}"))?;
        let sizes = (data.train.len(), data.validation.len(), data.test.len());
        if sizes != (55_000, 5_000, 10_000) {
            bail!("{name}: expected splits 55000/5000/10000, found {sizes:?}");
        }
        eprintln!(
            "{name}: {}/{}/{} train/validation/test from {origin}; per class: train+validation {:?}, test {:?}; SHA-256 of all four files verified",
            sizes.0,
            sizes.1,
            sizes.2,
            merge_counts(&data.train.class_counts(), &data.validation.class_counts()),
            data.test.class_counts()
        );
    }
    Ok(())
}

fn merge_counts(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
