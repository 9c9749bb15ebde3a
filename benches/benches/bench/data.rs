//! siamese-data: IDX decoding (MB/s of uncompressed data), pair sampling and batching
//! to tensors (pairs/s). Decoding uses the real MNIST train images when
//! `SIAMESE_DATA_DIR` is set, otherwise a synthetic file of the same shape; the bench id
//! says which.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use candle_core::Device;
use criterion::{criterion_group, Criterion, Throughput};
use siamese_data::idx::{self, IdxImages};
use siamese_data::{BalancedPairs, Batcher, ImageSet, Layout, PairSampler, RandomPairs};

fn train_images_gz() -> (Vec<u8>, &'static str) {
    if let Some(dir) = std::env::var_os("SIAMESE_DATA_DIR") {
        let path = PathBuf::from(dir).join("mnist/train-images-idx3-ubyte.gz");
        if let Ok(bytes) = std::fs::read(&path) {
            return (bytes, "mnist");
        }
    }
    // Synthetic digits-like images: mostly zeros, so they compress like MNIST does.
    let pixels = (0..60_000 * 784)
        .map(|i: usize| {
            if (i * 7919).is_multiple_of(5) {
                (i % 251) as u8
            } else {
                0
            }
        })
        .collect();
    let images = IdxImages {
        count: 60_000,
        rows: 28,
        cols: 28,
        pixels,
    };
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, &idx::encode_images(&images)).unwrap();
    (e.finish().unwrap(), "synthetic")
}

fn decode(c: &mut Criterion) {
    let (gz, kind) = train_images_gz();
    let mut group = c.benchmark_group("idx_decode");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(60_000 * 784 + 16));
    group.bench_function(format!("{kind}_train_images_60000x28x28_gzip"), |b| {
        b.iter(|| idx::decode_images(black_box(&gz), Path::new("bench")).unwrap())
    });
    group.finish();
}

fn labels() -> Vec<u32> {
    (0..55_000u32).map(|i| i * 7 % 10).collect()
}

fn sample(c: &mut Criterion) {
    let labels = labels();
    let mut group = c.benchmark_group("sampler");
    group.throughput(Throughput::Elements(64));
    let mut random = RandomPairs::new(&labels, 0).unwrap();
    group.bench_function("random_pairs_batch64", |b| {
        b.iter(|| random.sample(black_box(64)))
    });
    let mut balanced = BalancedPairs::new(&labels, 10, 0.5, 0).unwrap();
    group.bench_function("balanced_pairs_batch64", |b| {
        b.iter(|| balanced.sample(black_box(64)))
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    let labels = labels();
    let pixels = (0..labels.len() * 784).map(|i| (i % 256) as u8).collect();
    let set = ImageSet::new(28, 28, 10, pixels, labels.clone(), Path::new("bench")).unwrap();
    let mut sampler = BalancedPairs::new(&labels, 10, 0.5, 0).unwrap();
    let pairs = sampler.sample(64);
    let batcher = Batcher::new(Device::Cpu);
    let mut group = c.benchmark_group("batcher");
    group.throughput(Throughput::Elements(64));
    group.bench_function("cpu_f32_pairs_64x1x28x28", |b| {
        b.iter(|| {
            batcher
                .labelled(&set, black_box(&pairs), Layout::Pairs, None)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, sample, batch);
