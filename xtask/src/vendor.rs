//! `cargo xtask vendor-check`: the vendored candle-core is the crates.io release plus
//! `vendor/candle-core.patch` and nothing else, and candle's own gradient tests pass
//! on it.
//!
//! The release is fetched the way cargo fetches any dependency (a throwaway package
//! under `target/` that depends on exactly that version, `cargo fetch`), unpacked with
//! `tar`, patched with `git apply`, and compared file by file with `vendor/`. candle's
//! `grad_tests` and `custom_op_tests` then run in `vendor/candle-core` itself, against
//! the lock file the release was published with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The release the patch applies to.
const CRATE: &str = "candle-core";
const VERSION: &str = "0.11.1";
/// candle's tests that exercise what the patch changes (the backward pass).
const TESTS: [&str; 2] = ["grad_tests", "custom_op_tests"];

pub fn vendor_check() -> Result<()> {
    let work = Path::new("target/vendor-check");
    if work.exists() {
        std::fs::remove_dir_all(work).context("clearing target/vendor-check")?;
    }
    let released = unpack_release(work)?;
    run(
        Command::new("git")
            .args(["apply", "-p1", "--whitespace=nowarn"])
            .arg(
                std::fs::canonicalize("vendor/candle-core.patch")
                    .context("vendor/candle-core.patch")?,
            )
            .current_dir(&released),
        "git apply vendor/candle-core.patch",
    )?;
    let vendored = Path::new("vendor/candle-core");
    let (want, have) = (files_under(&released)?, files_under(vendored)?);
    let mut differences = Vec::new();
    for (path, bytes) in &want {
        match have.get(path) {
            None => differences.push(format!("{} is missing", path.display())),
            Some(b) if b != bytes => differences.push(format!("{} differs", path.display())),
            Some(_) => {}
        }
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        differences.push(format!("{} is not in the release", path.display()));
    }
    if !differences.is_empty() {
        bail!(
            "vendor/candle-core is not {CRATE} {VERSION} plus vendor/candle-core.patch: {}",
            differences.join("; ")
        );
    }
    eprintln!(
        "vendor/candle-core: {} files, equal to {CRATE} {VERSION} from crates.io plus \
         vendor/candle-core.patch",
        want.len()
    );
    let target = std::fs::canonicalize("target")?.join("vendor-tests");
    let mut test = Command::new(cargo_bin());
    test.args(["test", "--locked"])
        .args(TESTS.iter().flat_map(|t| ["--test", t]))
        .current_dir(vendored)
        .env("CARGO_TARGET_DIR", target);
    run(
        &mut test,
        "candle's own gradient tests on vendor/candle-core",
    )
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Fetches the release into cargo's cache and unpacks it under `work`.
fn unpack_release(work: &Path) -> Result<PathBuf> {
    let fetcher = work.join("fetch");
    std::fs::create_dir_all(fetcher.join("src"))?;
    std::fs::write(
        fetcher.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-release\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{CRATE} = \"={VERSION}\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(fetcher.join("src/lib.rs"), "")?;
    run(
        Command::new(cargo_bin())
            .args(["fetch", "--manifest-path"])
            .arg(fetcher.join("Cargo.toml")),
        "cargo fetch of the release",
    )?;
    let archive = find_crate_file()?;
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(work),
        "unpacking the release",
    )?;
    Ok(work.join(format!("{CRATE}-{VERSION}")))
}

/// `$CARGO_HOME/registry/cache/<index>/candle-core-0.11.1.crate`.
fn find_crate_file() -> Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let cache = home.join("registry/cache");
    let name = format!("{CRATE}-{VERSION}.crate");
    for index in std::fs::read_dir(&cache).with_context(|| format!("{}", cache.display()))? {
        let candidate = index?.path().join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} is not in {} after cargo fetch", cache.display())
}

/// Every file under `root`, by path relative to it, with its bytes.
fn files_under(root: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
                files.insert(path.strip_prefix(root)?.to_path_buf(), bytes);
            }
        }
    }
    Ok(files)
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: could not start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
