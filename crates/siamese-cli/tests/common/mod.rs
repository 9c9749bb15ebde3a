//! What the binary's integration tests share: `siamese` run sealed off from the network
//! and from the user's data and cache, the one-line-error check, small grey PNG files
//! and a small untrained model.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use siamese_model::{checkpoint, ConvTower, TowerConfig};

/// The `siamese` binary, offline (`HF_HUB_OFFLINE`) and blind to the user's
/// `SIAMESE_DATA_DIR`: a test reaches only the files it made.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_siamese"));
    command
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SIAMESE_DATA_DIR");
    command
}

/// Runs `siamese args` with `cache` as its private download cache.
pub fn siamese(args: &[&str], cache: &Path) -> Output {
    command()
        .args(args)
        .env("SIAMESE_CACHE_DIR", cache)
        .output()
        .unwrap()
}

/// The child's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The child's stdout, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Success, or a failure showing the child's stderr; returns its stdout.
pub fn check(o: &Output) -> String {
    assert!(
        o.status.success(),
        "siamese failed ({}): {}",
        o.status,
        stderr(o)
    );
    stdout(o)
}

/// A user error: non-zero exit, exactly one line on stderr starting `error: ` and
/// mentioning every needle, no panic.
pub fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
}

/// [`assert_one_line_error`] with one needle.
pub fn assert_user_error(o: &Output, needle: &str) {
    assert_one_line_error(o, &[needle]);
}

/// Writes an 8-bit grey PNG of `width x height` pixels, row by row.
pub fn write_gray_png(path: &Path, width: u32, height: u32, pixels: &[u8]) {
    assert_eq!(pixels.len(), (width * height) as usize);
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(pixels)
        .unwrap();
}

/// A tower small enough to build in milliseconds (28 x 28 input, as MNIST).
pub fn small_config() -> TowerConfig {
    TowerConfig {
        conv_channels: vec![4],
        conv_strides: vec![2],
        fc_widths: vec![8],
        ..Default::default()
    }
}

/// An untrained [`small_config`] model with `threshold` in its metadata, saved as
/// `dir/model.safetensors`.
pub fn small_model(dir: &Path, threshold: f64) -> PathBuf {
    let (_, varmap) = ConvTower::init(&small_config(), &Device::Cpu, 0).unwrap();
    let path = dir.join("model.safetensors");
    let meta = BTreeMap::from([("threshold".to_string(), threshold.to_string())]);
    checkpoint::save(&path, &varmap, &small_config(), &meta).unwrap();
    path
}

/// Side of [`write_bar_folder`]'s images.
pub const BAR_SIDE: usize = 12;

/// An image folder of 5 classes of 16 PGM images, `BAR_SIDE` square: class `c` is a
/// bright bar at row `2c`, on noise (a seeded generator: the same files every time).
pub fn write_bar_folder(dir: &Path) {
    const SIDE: usize = BAR_SIDE;
    let mut rng = siamese_data::Rng::new(9);
    for c in 0..5 {
        let class_dir = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..16 {
            let mut bytes = format!("P5\n{SIDE} {SIDE}\n255\n").into_bytes();
            bytes.extend((0..SIDE * SIDE).map(|p| {
                let on = p / SIDE == 2 * c || p / SIDE == 2 * c + 1;
                (if on { 200 } else { 20 } + rng.below(40)) as u8
            }));
            std::fs::write(class_dir.join(format!("{i:02}.pgm")), bytes).unwrap();
        }
    }
}
