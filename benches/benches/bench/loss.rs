//! siamese-loss: forward, and forward plus backward, of each loss over Euclidean
//! distances for B pairs of D-dimensional embeddings; and the matrix distance used by
//! k-nearest-neighbour evaluation (10,000 test x 55,000 train, D = 2).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use siamese_loss::{
    Chopra2005, ContrastiveLoss, Distance, Euclidean, Hadsell2006, PairLoss, Reduction,
};

fn inputs(b: usize, d: usize) -> (Var, Tensor, Tensor) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, d), &dev).unwrap()).unwrap();
    let y = Tensor::randn(0f32, 1., (b, d), &dev).unwrap();
    let same = Tensor::rand(0f32, 1., b, &dev)
        .unwrap()
        .ge(0.5)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (x, y, same)
}

fn bench_loss<L: PairLoss + Copy>(c: &mut Criterion, name: &str, loss: L) {
    let mut group = c.benchmark_group(format!("loss_{name}"));
    for b in [64usize, 4096, 65536] {
        for d in [2usize, 128] {
            let (x, y, same) = inputs(b, d);
            let full = ContrastiveLoss {
                distance: Euclidean::default(),
                loss,
                reduction: Reduction::Mean,
            };
            group.throughput(Throughput::Elements(b as u64));
            let id = format!("cpu_f32_B{b}_D{d}");
            group.bench_function(BenchmarkId::new("forward", &id), |bench| {
                bench.iter(|| full.forward(black_box(x.as_tensor()), &y, &same).unwrap())
            });
            group.bench_function(BenchmarkId::new("forward_backward", &id), |bench| {
                bench.iter(|| {
                    full.forward(black_box(x.as_tensor()), &y, &same)
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn losses(c: &mut Criterion) {
    bench_loss(c, "chopra2005", Chopra2005 { q: 5.0 });
    bench_loss(c, "hadsell2006", Hadsell2006 { margin: 1.0 });
}

fn matrix(c: &mut Criterion) {
    let dev = Device::Cpu;
    let test = Tensor::randn(0f32, 1., (10_000, 2), &dev).unwrap();
    let train = Tensor::randn(0f32, 1., (55_000, 2), &dev).unwrap();
    let mut group = c.benchmark_group("distance_matrix");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000 * 55_000));
    group.bench_function("euclidean_cpu_f32_10000x55000_D2", |bench| {
        bench.iter(|| {
            Euclidean::default()
                .matrix(black_box(&test), &train)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, losses, matrix);
