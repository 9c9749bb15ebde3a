//! siamese-neighbours (what gallery search runs): one query against a gallery of 1,000,000 embeddings of 128
//! dimensions (512 MB), exact k = 5; the target is well under a second on 2 cores.
//! Throughput is in gallery rows scanned per second.

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};

/// `n` values uniform in [-1, 1), from the project's own seeded generator.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = siamese_data::Rng::new(seed);
    (0..n)
        .map(|_| (rng.unit_f64() * 2.0 - 1.0) as f32)
        .collect()
}

fn search(c: &mut Criterion) {
    let mut group = c.benchmark_group("search");
    group.sample_size(10);
    for (n, dim) in [(1_000_000usize, 128usize), (100_000, 1024)] {
        let gallery = values(n * dim, 1);
        let query = values(dim, 2);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("exact_k5_n{n}_d{dim}"), |b| {
            b.iter(|| siamese_neighbours::nearest(black_box(&gallery), dim, &query, 5))
        });
    }
    group.finish();
}

criterion_group!(benches, search);
