//! siamese-model: the reference tower (28x28 -> 2), fp32 on the CPU. Inference for
//! batches of 1, 128 and 1000 images; training forward plus backward for 128 images
//! (64 pairs), with a stand-in loss (the sum of squared embeddings) so that only the
//! tower is measured; and the divergence check a run makes after every step (every
//! weight and statistic tested for NaN and infinity), to state its cost beside a step.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use siamese_model::{checkpoint, ConvTower, Embedder, TowerConfig};

fn tower(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (tower, varmap) = ConvTower::init(&TowerConfig::default(), &dev, 0).unwrap();
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
    // As run.rs watches them: every variable of the tower, all finite (the usual case,
    // one fused sum per tensor and one read back).
    let watched: Vec<(String, Tensor)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    group.throughput(Throughput::Elements(1));
    group.bench_function("divergence_check/all_parameters", |bench| {
        bench.iter(|| {
            let found = checkpoint::first_non_finite(watched.iter().map(|(n, t)| (n.as_str(), t)));
            assert!(found.unwrap().is_none());
        })
    });
    group.finish();
}

criterion_group!(benches, tower);
