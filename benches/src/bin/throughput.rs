//! Training and embedding throughput of the reference network, as `cargo xtask bench`
//! reports it: one mode per process so each peak resident memory is its own.
//!
//! `throughput train [STEPS]`: training pairs per second (64 pairs = 128 images through
//! the tower, Chopra loss, backward, Adam step) after warm-up.
//! `--all-in-batch` scores every pair of the batch's images (the default recipe's loss)
//! instead of the 64 sampled pairs. `--plain` runs the same work on plain candle layers
//! and the tensor-op Adam instead of the fused kernels, for the before/after
//! comparison. `--candle-pool` keeps candle's element-wise thread pool next to the
//! fused kernels' (see `siamese_model::kernels::candle_ops_on_calling_thread`);
//! `--default-malloc` keeps glibc's default allocator settings.
//! `throughput embed [BATCHES]`: embedded images per second in inference, batches of
//! 1000, after warm-up.
//! `throughput episodes [EPISODES]`: the Omniglot recipe's training speed, as
//! `../shared/bench/torch_omniglot.py --bench` measures PyTorch's: Snell's four-block
//! tower at 28x28, 60-way episodes of 1 support and 5 query images a class (360
//! images), the prototypical loss, backward and Adam, after warm-up; then the embedding
//! of 4,000 images in batches of 500. Both print one JSON line; inputs are random images, since the
//! arithmetic does not depend on the pixel values.
//! `throughput layers [REPS]`: the per-layer profile: milliseconds of forward and of
//! backward for each layer at training shapes (128 images), fused and plain, one JSON
//! line per layer, then each hidden layer's dropout and batch norm likewise.
//! `throughput gemm [REPS]`: every matrix product of one training step with the shapes,
//! transposed views and chunking the fused kernels use, in GFLOP/s, and all of them
//! together; `benches/torch_gemm.py` times `torch.mm` on the same shapes, for the
//! GEMM ceiling of the machine.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use siamese_data::{BalancedPairs, Batcher, EpisodeSampler, ImageSet};
use siamese_loss::{Chopra2005, Euclidean, MinedLoss, Prototypical};
use siamese_model::kernels::{batch_statistics, Conv2dRelu, DropoutBatchNorm, LinearAct};
use siamese_model::{ConvTower, Embedder, TowerConfig};
use siamese_train::{AdamConfig, Pairing, Trainer};

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
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    ImageSet::new(28, 28, 10, pixels, labels, "synthetic".as_ref()).expect("consistent sizes")
}

fn train(steps: usize, plain: bool, pairing: Pairing) -> serde_json::Value {
    let device = Device::Cpu;
    let set = synthetic_set(5_000);
    let (mut tower, varmap) =
        ConvTower::init(&TowerConfig::default(), &device, 0).expect("valid config");
    tower.set_fused(!plain);
    let params = ConvTower::trainable_parameters(&varmap);
    let sampler = BalancedPairs::new(set.labels(), 10, 0.5, 0).expect("valid sampler");
    let loss = MinedLoss::new(
        pairing.miner(),
        Euclidean::default(),
        Chopra2005 { q: 5.0 },
        pairing.reduction(),
    );
    let mut trainer = Trainer::new(
        sampler,
        tower,
        loss,
        params,
        AdamConfig::default(),
        Batcher::new(device),
    )
    .expect("trainer");
    if plain {
        trainer.optimizer.use_tensor_ops();
    }
    for s in 0..WARMUP {
        trainer.step(&set, 64, 1e-3, s as u64).expect("step");
    }
    let start = Instant::now();
    for s in 0..steps {
        trainer.step(&set, 64, 1e-3, s as u64).expect("step");
    }
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    // Where a step's time goes: the same step, phase by phase (milliseconds per step).
    let mut phases = [0f64; 4];
    let mut lap = |i: usize, t: &mut Instant| {
        phases[i] += t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        *t = Instant::now();
    };
    for _ in 0..steps {
        let mut t = Instant::now();
        let batch = trainer.batch(&set, 64).expect("batch");
        let loss = trainer.loss_of(&batch).expect("loss");
        loss.to_scalar::<f32>().expect("scalar");
        lap(0, &mut t);
        let grads = loss.backward().expect("backward");
        lap(1, &mut t);
        trainer.optimizer.step(&grads, 1e-3).expect("adam");
        lap(2, &mut t);
        drop(grads);
        lap(3, &mut t);
    }
    serde_json::json!({
        "mode": "train", "plain_candle": plain, "steps": steps, "batch_pairs": 64,
        "pairing": format!("{pairing:?}"), "machine": siamese_benches::machine(),
        "train_pairs_per_s": (steps * 64) as f64 / secs,
        "peak_rss_mib": peak,
        "ms_per_step": {"forward_and_loss": phases[0], "backward": phases[1],
                        "optimizer": phases[2], "free": phases[3]},
    })
}

/// 60-way episodes of 1 + 5 images through Snell's four-block tower (the shapes of
/// `torch_omniglot.py --bench`), then the embedding of 4,000 images.
fn episodes(count: usize, plain: bool) -> serde_json::Value {
    let device = Device::Cpu;
    let (ways, shots, queries) = (60, 1, 5);
    // Omniglot's shape: 20 drawings of each of 200 characters.
    let pixels = (0..4_000usize * 784)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    let labels = (0..4_000).map(|i| (i / 20) as u32).collect();
    let set =
        ImageSet::new(28, 28, 200, pixels, labels, "synthetic".as_ref()).expect("consistent sizes");
    let config = TowerConfig::four_block(28, 28, 64);
    let (mut tower, varmap) = ConvTower::init(&config, &device, 0).expect("valid config");
    tower.set_fused(!plain);
    // As `siamese train` trains an episode recipe: the prototypical loss sees only
    // differences of embeddings.
    let params = ConvTower::trained_parameters(&varmap, &config, true);
    let sampler = EpisodeSampler::new(set.labels(), ways, shots, queries, 0).expect("sampler");
    let loss = Prototypical {
        ways,
        shots,
        queries,
    };
    let batcher = Batcher::new(device.clone());
    let mut trainer = Trainer::new(sampler, tower, loss, params, AdamConfig::default(), batcher)
        .expect("trainer");
    trainer.loss_sees_only_differences = true;
    if plain {
        trainer.optimizer.use_tensor_ops();
    }
    let images = ways * (shots + queries);
    for s in 0..WARMUP {
        trainer.step(&set, images, 1e-3, s as u64).expect("step");
    }
    let start = Instant::now();
    for s in 0..count {
        trainer.step(&set, images, 1e-3, s as u64).expect("step");
    }
    let train_secs = start.elapsed().as_secs_f64();
    let x = Tensor::rand(0f32, 1., (4_000, 1, 28, 28), &device).expect("tensor");
    let tower = &trainer.tower;
    tower
        .forward_t(&x.narrow(0, 0, 256).expect("narrow"), false)
        .expect("forward");
    let start = Instant::now();
    for first in (0..4_000).step_by(500) {
        let batch = x.narrow(0, first, 500).expect("narrow");
        tower.forward_t(&batch, false).expect("forward");
    }
    let embed_secs = start.elapsed().as_secs_f64();
    serde_json::json!({
        "mode": "episodes", "plain_candle": plain, "episodes": count, "way": ways,
        "shot": shots, "query": queries, "size": 28, "tower": "four-block",
        "train_episodes_per_s": count as f64 / train_secs,
        "train_images_per_s": (count * images) as f64 / train_secs,
        "embed_images_per_s": 4_000.0 / embed_secs,
        "machine": siamese_benches::machine(),
        "peak_rss_mib": peak_rss_mib(),
    })
}

/// A collective that times its calls and counts the bytes it sends.
struct Timed {
    inner: siamese_collective::SharedCollective,
    /// Seconds in the collectives, and bytes sent.
    spent: std::sync::Mutex<(f64, usize)>,
}

impl Timed {
    fn time<T>(&self, bytes: usize, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let mut spent = self.spent.lock().expect("not poisoned");
        spent.0 += start.elapsed().as_secs_f64();
        spent.1 += bytes;
        out
    }
}

impl siamese_collective::Collective for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&self, v: &mut [f32]) -> Result<(), siamese_collective::CollectiveError> {
        self.time(v.len() * 4, || self.inner.all_reduce_sum(v))
    }
    fn broadcast(
        &self,
        v: &mut [f32],
        root: usize,
    ) -> Result<(), siamese_collective::CollectiveError> {
        self.time(v.len() * 4, || self.inner.broadcast(v, root))
    }
    fn broadcast_bytes(
        &self,
        b: &mut Vec<u8>,
        root: usize,
    ) -> Result<(), siamese_collective::CollectiveError> {
        self.time(b.len(), || self.inner.broadcast_bytes(b, root))
    }
    fn all_gather(&self, l: &[f32]) -> Result<Vec<f32>, siamese_collective::CollectiveError> {
        self.time(l.len() * 4, || self.inner.all_gather(l))
    }
    fn barrier(&self) -> Result<(), siamese_collective::CollectiveError> {
        self.time(0, || self.inner.barrier())
    }
}

/// The faces recipe's step (20-way episodes of 2 + 3 photos of 56x46, four strided
/// convolutions, augmentation) on every rank of the MPI world when launched by
/// `mpiexec` (built with `--features mpi`), else in one process: episodes/s, and the
/// seconds and bytes each step spends in the collectives.
fn data_parallel(count: usize) -> serde_json::Value {
    #[cfg(feature = "mpi")]
    let inner: siamese_collective::SharedCollective = match siamese_collective::Mpi::launched() {
        true => Arc::new(siamese_collective::Mpi::init().expect("MPI initialised once")),
        false => Arc::new(siamese_collective::SingleProcess),
    };
    #[cfg(not(feature = "mpi"))]
    let inner: siamese_collective::SharedCollective = Arc::new(siamese_collective::SingleProcess);
    let timed = Arc::new(Timed {
        inner: inner.clone(),
        spent: std::sync::Mutex::new((0.0, 0)),
    });
    let collective: siamese_collective::SharedCollective = timed.clone();
    let (ways, shots, queries, h, w) = (20, 2, 3, 56, 46);
    let n = 400usize;
    let pixels = (0..n * h * w)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    let labels = (0..n).map(|i| (i / 10) as u32).collect();
    let set = ImageSet::new(h, w, n / 10, pixels, labels, "synthetic".as_ref()).expect("sizes");
    let config = TowerConfig::strided_four(h, w, 64);
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 0).expect("valid config");
    // As `siamese train` trains an episode recipe: the prototypical loss sees only
    // differences of embeddings.
    let params = ConvTower::trained_parameters(&varmap, &config, true);
    let param_count: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let sampler = EpisodeSampler::new(set.labels(), ways, shots, queries, 0).expect("sampler");
    let loss = Prototypical {
        ways,
        shots,
        queries,
    };
    let batcher = Batcher::new(Device::Cpu);
    let mut trainer = Trainer::new(sampler, tower, loss, params, AdamConfig::default(), batcher)
        .expect("trainer");
    trainer.loss_sees_only_differences = true;
    trainer.augmenter = Some(
        siamese_data::Augmenter::new(siamese_data::AugmentConfig::default(), 1).expect("augment"),
    );
    for s in 0..WARMUP {
        trainer
            .step_data_parallel(&set, 0, 1e-3, s as u64, &collective)
            .expect("step");
    }
    *timed.spent.lock().expect("not poisoned") = (0.0, 0);
    let start = Instant::now();
    for s in 0..count {
        trainer
            .step_data_parallel(&set, 0, 1e-3, s as u64, &collective)
            .expect("step");
    }
    let secs = start.elapsed().as_secs_f64();
    let (spent, bytes) = *timed.spent.lock().expect("not poisoned");
    serde_json::json!({
        "mode": "data-parallel", "ranks": inner.world_size(), "rank": inner.rank(),
        "threads_per_rank": rayon::current_num_threads(),
        "recipe": "faces: 20-way 2-shot 3-query episodes, 56x46, strided_four, augmented",
        "episodes": count, "train_episodes_per_s": count as f64 / secs,
        "collective_seconds_per_step": spent / count as f64,
        "collective_share": spent / secs,
        "bytes_sent_per_step": bytes / count,
        "gradient_bytes": param_count * 4,
        "machine": siamese_benches::machine(),
    })
}

fn embed(batches: usize, plain: bool) -> serde_json::Value {
    let device = Device::Cpu;
    let (mut tower, _varmap) =
        ConvTower::init(&TowerConfig::default(), &device, 0).expect("valid config");
    tower.set_fused(!plain);
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
        "mode": "embed", "plain_candle": plain, "batches": batches, "batch_images": 1000,
        "embed_images_per_s": (batches * 1000) as f64 / secs,
        "machine": siamese_benches::machine(),
        "peak_rss_mib": peak_rss_mib(),
    })
}

/// Median milliseconds of `f` over `reps` runs, after one warm-up run.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

/// Forward and backward time of one layer, given its forward as a closure of
/// (input, weight, bias) variables.
fn time_layer(
    name: &str,
    kind: &str,
    shapes: [&[usize]; 3],
    reps: usize,
    forward: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> serde_json::Value {
    let device = Device::Cpu;
    let var = |shape: &[usize]| {
        Var::from_tensor(&(Tensor::randn(0f32, 0.1, shape, &device).expect("randn"))).expect("var")
    };
    let (x, w, b) = (var(shapes[0]), var(shapes[1]), var(shapes[2]));
    let fwd = median_ms(reps, || {
        forward(x.as_tensor(), w.as_tensor(), b.as_tensor());
    });
    let y = forward(x.as_tensor(), w.as_tensor(), b.as_tensor());
    let r = Tensor::randn(0f32, 1., y.shape(), &device).expect("randn");
    let both = median_ms(reps, || {
        let y = forward(x.as_tensor(), w.as_tensor(), b.as_tensor());
        (y * &r)
            .and_then(|l| l.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
    });
    serde_json::json!({"layer": name, "kernels": kind, "forward_ms": fwd, "backward_ms": both - fwd})
}

fn layers(reps: usize) -> Vec<serde_json::Value> {
    let config = TowerConfig::default();
    let batch = 128;
    let mut out = Vec::new();
    for (i, g) in config.conv_layers().into_iter().enumerate() {
        let (c_in, c, k) = (g.c_in, g.c_out, g.kernel);
        // The fused kernel takes channels-last images, the plain layer channels first.
        let nhwc: [&[usize]; 3] = [&[batch, g.h_in, g.w_in, c_in], &[c, c_in, k, k], &[c]];
        let shapes: [&[usize]; 3] = [&[batch, c_in, g.h_in, g.w_in], &[c, c_in, k, k], &[c]];
        let name = format!("conv{}", i + 1);
        let op = Conv2dRelu {
            geometry: g,
            input_grad: i > 0,
            channels_first_output: false,
            relu: true,
        };
        out.push(time_layer(&name, "fused", nhwc, reps, |x, wt, b| {
            x.apply_op3(wt, b, op).expect("conv")
        }));
        out.push(time_layer(&name, "plain", shapes, reps, |x, wt, b| {
            g.pad_tensor(x)
                .and_then(|x| x.conv2d(wt, 0, g.stride, 1, 1))
                .and_then(|y| y.broadcast_add(&b.reshape((1, c, 1, 1))?))
                .and_then(|y| y.relu())
                .expect("conv")
        }));
    }
    let mut f_in = config.flatten_size();
    let widths: Vec<usize> = config
        .fc_widths
        .iter()
        .copied()
        .chain([config.embedding_dim])
        .collect();
    for (j, &f) in widths.iter().enumerate() {
        let relu = j + 1 < widths.len();
        let shapes: [&[usize]; 3] = [&[batch, f_in], &[f, f_in], &[f]];
        let name = format!("fc{}", j + 1);
        out.push(time_layer(&name, "fused", shapes, reps, |x, wt, b| {
            x.apply_op3(wt, b, LinearAct { relu }).expect("linear")
        }));
        out.push(time_layer(&name, "plain", shapes, reps, |x, wt, b| {
            let y = candle_nn::Linear::new(wt.clone(), Some(b.clone()));
            let y = candle_core::Module::forward(&y, x).expect("linear");
            if relu {
                y.relu().expect("relu")
            } else {
                y
            }
        }));
        f_in = f;
    }
    // Each hidden layer's dropout and training-mode batch norm: the fused kernel
    // (statistics pass included) against candle's product and candle-nn's BatchNorm.
    for (j, &f) in config.fc_widths.iter().enumerate() {
        let shapes: [&[usize]; 3] = [&[batch, f], &[f], &[f]];
        let name = format!("dropout+bn{}", j + 1);
        let keep = (1.0 / (1.0 - config.dropout)) as f32;
        // Every other element dropped (the timing does not depend on which).
        let mask: Vec<f32> = (0..batch * f)
            .map(|i| if i % 2 == 0 { keep } else { 0.0 })
            .collect();
        let eps = config.batch_norm_eps;
        out.push(time_layer(
            &name,
            "fused",
            shapes,
            reps,
            |x, gamma, beta| {
                let (mean, var) = batch_statistics(x, Some(&mask)).expect("statistics");
                let op = DropoutBatchNorm {
                    // A fresh mask each call, as the tower draws one each step.
                    mask: Some(Arc::new(mask.clone())),
                    mean: Arc::new(mean),
                    var: Arc::new(var),
                    eps,
                };
                x.apply_op3(gamma, beta, op).expect("dropout + batch norm")
            },
        ));
        let mask_t = Tensor::from_slice(&mask, (batch, f), &Device::Cpu).expect("mask");
        out.push(time_layer(
            &name,
            "plain",
            shapes,
            reps,
            |x, gamma, beta| {
                let zeros = Tensor::zeros(f, DType::F32, &Device::Cpu).expect("zeros");
                let ones = Tensor::ones(f, DType::F32, &Device::Cpu).expect("ones");
                let bn =
                    candle_nn::BatchNorm::new(f, zeros, ones, gamma.clone(), beta.clone(), eps)
                        .expect("batch norm");
                let dropped = (x * &mask_t).expect("dropout");
                candle_core::ModuleT::forward_t(&bn, &dropped, true).expect("batch norm")
            },
        ));
    }
    out
}

/// A `rows x cols` matrix over `data`, read through a transposed view when `t` (then
/// `data` holds the transpose row-major).
fn mat(data: &[f32], rows: usize, cols: usize, t: bool) -> siamese_model::kernels::Mat<'_> {
    use siamese_model::kernels::Mat;
    if t {
        Mat::rows(data, cols, rows).t()
    } else {
        Mat::rows(data, rows, cols)
    }
}

/// One matrix product of a training step: `[m x k] · [k x n]`, `ta`/`tb` when that
/// operand is read through a transposed view (as the kernels read it), run `chunks`
/// times in parallel (one single-threaded product per chunk, as the conv kernels run
/// their chunks) or once on all threads (`chunks == 1`, as the linear kernels do).
struct Product {
    name: String,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    chunks: usize,
}

/// Every matrix product of one training step of the default tower (128 images), with
/// the shapes and chunking the fused kernels use.
fn step_products() -> Vec<Product> {
    let config = TowerConfig::default();
    let batch = 128;
    let mut out = Vec::new();
    for (i, g) in config.conv_layers().into_iter().enumerate() {
        let nb = g.images_per_chunk(batch);
        let chunks = batch.div_ceil(nb);
        let (c, k, cols) = (
            g.c_out,
            g.c_in * g.kernel * g.kernel,
            nb * g.h_out * g.w_out,
        );
        let name = |what: &str| format!("conv{} {what} (chunks of {nb})", i + 1);
        let mut push = |what: &str, m, k, n, ta, tb| {
            out.push(Product {
                name: name(what),
                m,
                k,
                n,
                ta,
                tb,
                chunks,
            });
        };
        // Channels last: the column matrix is [pixels, K], the output [pixels, c_out].
        push("forward", cols, k, c, false, true);
        push("weight grad", c, cols, k, true, false);
        if i > 0 {
            push("input grad", cols, c, k, false, false);
        }
    }
    let mut f_in = config.flatten_size();
    for (j, &f) in config.fc_widths.iter().enumerate() {
        let name = |what: &str| format!("fc{} {what}", j + 1);
        let one = |name: String, m, k, n, ta, tb| Product {
            name,
            m,
            k,
            n,
            ta,
            tb,
            chunks: 1,
        };
        out.push(one(name("forward"), batch, f_in, f, false, true));
        out.push(one(name("weight grad"), f, batch, f_in, true, false));
        out.push(one(name("input grad"), batch, f, f_in, false, false));
        f_in = f;
    }
    out
}

/// GFLOP/s of each product of [`step_products`] (median of `reps`), and of all of them
/// together, for comparing with `torch.mm` on the same shapes
/// (`benches/torch_gemm.py`).
fn gemm_products(reps: usize) -> Vec<serde_json::Value> {
    use rayon::prelude::*;
    use siamese_model::kernels::matmul;
    let threads = rayon::current_num_threads();
    let mut total = (0.0, 0.0);
    let mut out: Vec<serde_json::Value> = step_products()
        .into_iter()
        .map(|p| {
            let a: Vec<f32> = (0..p.m * p.k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..p.k * p.n).map(|i| (i % 5) as f32 * 0.1).collect();
            let view = |data: &[f32], rows: usize, cols: usize, t: bool| -> Vec<f32> {
                // The same values, stored so that the view reads them transposed.
                if !t {
                    return data.to_vec();
                }
                let mut s = vec![0f32; data.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        s[c * rows + r] = data[r * cols + c];
                    }
                }
                s
            };
            let (sa, sb) = (view(&a, p.m, p.k, p.ta), view(&b, p.k, p.n, p.tb));
            let mut dst = vec![0f32; p.chunks * p.m * p.n];
            let ms = median_ms(reps, || {
                if p.chunks == 1 {
                    matmul(
                        &mut dst,
                        mat(&sa, p.m, p.k, p.ta),
                        mat(&sb, p.k, p.n, p.tb),
                        false,
                        threads,
                    );
                } else {
                    dst.par_chunks_mut(p.m * p.n).for_each(|d| {
                        matmul(
                            d,
                            mat(&sa, p.m, p.k, p.ta),
                            mat(&sb, p.k, p.n, p.tb),
                            false,
                            1,
                        );
                    });
                }
            });
            let gflop = 2.0 * (p.m * p.k * p.n * p.chunks) as f64 / 1e9;
            total.0 += gflop;
            total.1 += ms;
            serde_json::json!({
                "product": p.name, "m": p.m, "k": p.k, "n": p.n, "chunks": p.chunks,
                "ms": ms, "gflop_per_s": gflop / ms * 1e3,
            })
        })
        .collect();
    out.push(serde_json::json!({
        "product": "all of one step", "gflop": total.0, "ms": total.1,
        "gflop_per_s": total.0 / total.1 * 1e3, "machine": siamese_benches::machine(),
    }));
    out
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let default_malloc = args.iter().any(|a| a == "--default-malloc");
    args.retain(|a| a != "--default-malloc");
    if !default_malloc {
        assert!(siamese_model::kernels::retain_freed_memory(), "mallopt");
    }
    let plain = args.iter().any(|a| a == "--plain");
    args.retain(|a| a != "--plain");
    // The loss over every pair of the batch's images, as the default recipe trains.
    let pairing = if args.iter().any(|a| a == "--all-in-batch") {
        Pairing::AllInBatch
    } else {
        Pairing::Sampled
    };
    args.retain(|a| a != "--all-in-batch");
    let candle_pool = args.iter().any(|a| a == "--candle-pool");
    args.retain(|a| a != "--candle-pool");
    // Plain candle keeps candle's own thread pool, as a user of candle would have it.
    if !plain && !candle_pool {
        // SAFETY: nothing has started a thread yet (only arguments were read).
        #[allow(unsafe_code)]
        unsafe {
            siamese_model::kernels::candle_ops_on_calling_thread();
        }
    }
    let count = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    let out = match args.first().map(String::as_str) {
        Some("train") => train(count(30), plain, pairing),
        Some("embed") => embed(count(5), plain),
        Some("episodes") => episodes(count(20), plain),
        Some("data-parallel") => data_parallel(count(20)),
        Some("gemm") => {
            for line in gemm_products(count(9)) {
                println!("{line}");
            }
            return;
        }
        Some("layers") => {
            for line in layers(count(9)) {
                println!("{line}");
            }
            return;
        }
        _ => {
            eprintln!(
                "usage: throughput train [STEPS] | embed [BATCHES] | episodes [EPISODES] | \
                 data-parallel [EPISODES] (under mpiexec with --features mpi) | \
                 layers [REPS] | gemm [REPS], \
                 options --plain --all-in-batch --candle-pool --default-malloc"
            );
            std::process::exit(2);
        }
    };
    println!("{out}");
}
