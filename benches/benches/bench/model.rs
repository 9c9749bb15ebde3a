//! siamese-model: the reference tower (28x28 -> 2), fp32 on the CPU. Inference for
//! batches of 1, 128 and 1000 images; training forward plus backward for 128 images
//! (64 pairs), with a stand-in loss (the sum of squared embeddings) so that only the
//! tower is measured.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use siamese_model::{ConvTower, Embedder, TowerConfig};

fn tower(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (tower, _varmap) = ConvTower::init(&TowerConfig::default(), &dev, 0).unwrap();
    let mut group = c.benchmark_group("tower");
    group.sample_size(10);
    for b in [1usize, 128, 1000] {
        let x = Tensor::rand(0f32, 1., (b, 1, 28, 28), &dev).unwrap();
        group.throughput(Throughput::Elements(b as u64));
        group.bench_function(
            BenchmarkId::new("inference", format!("cpu_f32_B{b}_1x28x28")),
            |bench| bench.iter(|| tower.forward_t(black_box(&x), false).unwrap()),
        );
    }
    let x = Tensor::rand(0f32, 1., (128, 1, 28, 28), &dev).unwrap();
    group.throughput(Throughput::Elements(128));
    group.bench_function("train_forward_backward/cpu_f32_B128_1x28x28", |bench| {
        bench.iter(|| {
            let e = tower.forward_t(black_box(&x), true).unwrap();
            e.sqr().unwrap().sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, tower);
