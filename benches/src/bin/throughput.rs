//! Training and embedding throughput of the reference network, as `cargo xtask bench`
//! reports it: one mode per process so each peak resident memory is its own.
//!
//! `throughput train [STEPS]`: training pairs per second (64 pairs = 128 images through
//! the tower, Chopra loss, backward, Adam step) after warm-up.
//! `throughput embed [BATCHES]`: embedded images per second in inference, batches of
//! 1000, after warm-up. Both print one JSON line; inputs are random images, since the
//! arithmetic does not depend on the pixel values.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use siamese_data::{BalancedPairs, Batcher, ImageSet};
use siamese_loss::Chopra2005;
use siamese_model::{ConvTower, Embedder, SiameseModel, TowerConfig};
use siamese_train::{AdamConfig, Trainer};

const WARMUP: usize = 3;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn synthetic_set(n: usize) -> ImageSet {
    let pixels = (0..n * 784)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    ImageSet::new(28, 28, 10, pixels, labels, "synthetic".as_ref()).expect("consistent sizes")
}

fn train(steps: usize) -> serde_json::Value {
    let device = Device::Cpu;
    let set = synthetic_set(5_000);
    let (tower, varmap) =
        ConvTower::init(&TowerConfig::default(), &device, 0).expect("valid config");
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("lock")
        .iter()
        .filter(|(n, _)| !n.contains("running"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let sampler = BalancedPairs::new(set.labels(), 10, 0.5, 0).expect("valid sampler");
    let mut trainer = Trainer::new(
        sampler,
        SiameseModel::new(tower),
        Chopra2005 { q: 5.0 },
        params,
        AdamConfig::default(),
        Batcher::new(device),
    )
    .expect("trainer");
    for s in 0..WARMUP {
        trainer.step(&set, 64, 1e-3, s as u64).expect("step");
    }
    let start = Instant::now();
    for s in 0..steps {
        trainer.step(&set, 64, 1e-3, s as u64).expect("step");
    }
    let secs = start.elapsed().as_secs_f64();
    serde_json::json!({
        "mode": "train", "steps": steps, "batch_pairs": 64,
        "train_pairs_per_s": (steps * 64) as f64 / secs,
        "peak_rss_mib": peak_rss_mib(),
    })
}

fn embed(batches: usize) -> serde_json::Value {
    let device = Device::Cpu;
    let (tower, _varmap) =
        ConvTower::init(&TowerConfig::default(), &device, 0).expect("valid config");
    let x = Tensor::rand(0f32, 1., (1000, 1, 28, 28), &device)
        .expect("tensor")
        .to_dtype(DType::F32)
        .expect("f32");
    for _ in 0..WARMUP.min(1) {
        tower.forward_t(&x, false).expect("forward");
    }
    let start = Instant::now();
    for _ in 0..batches {
        tower.forward_t(&x, false).expect("forward");
    }
    let secs = start.elapsed().as_secs_f64();
    serde_json::json!({
        "mode": "embed", "batches": batches, "batch_images": 1000,
        "embed_images_per_s": (batches * 1000) as f64 / secs,
        "peak_rss_mib": peak_rss_mib(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    let out = match args.first().map(String::as_str) {
        Some("train") => train(count(30)),
        Some("embed") => embed(count(5)),
        _ => {
            eprintln!("usage: throughput train [STEPS] | embed [BATCHES]");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
