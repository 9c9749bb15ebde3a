//! The fused CPU kernels against plain candle, forward and backward, on random inputs:
//! each layer kind alone (several geometries, batches that span several chunks), then
//! the whole tower, fused vs plain, including every parameter's gradient.

use candle_core::{DType, Device, Tensor, Var};
use std::sync::Arc;

use siamese_model::kernels::{
    batch_statistics, conv_stack_inference, Conv2dRelu, ConvGeometry, DropoutBatchNorm, LinearAct,
    MaxPoolRelu,
};
use siamese_model::{ConvTower, Embedder, Padding, TowerConfig};

fn random(shape: &[usize], seed: u64) -> Tensor {
    // A fixed generator (not candle's, which cannot be seeded): values in [-1, 1).
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: fused {x}, plain {y}"
        );
    }
}

/// A square-kernel convolution: `c_in` x `h_in` x `w_in` in, `pad` zeros before (top
/// and left), `out` the output size.
fn geometry(
    c_in: usize,
    (h_in, w_in): (usize, usize),
    c_out: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    (h_out, w_out): (usize, usize),
) -> ConvGeometry {
    ConvGeometry {
        c_in,
        h_in,
        w_in,
        c_out,
        kernel,
        stride,
        pad_top: pad,
        pad_left: pad,
        h_out,
        w_out,
    }
}

/// The plain candle layer, padded by the test's own arithmetic rather than the
/// kernel's geometry: `pad_top` / `pad_left` zeros before, as many after as the
/// output size reads, and the input rows and columns the output never reads cropped
/// first (candle 0.11's conv2d backward mishandles unread leftovers). Then conv, bias
/// and ReLU.
fn plain_conv(x: &Tensor, w: &Tensor, b: &Tensor, g: &ConvGeometry, relu: bool) -> Tensor {
    let (s, k) = (g.stride, g.kernel);
    let read = |out: usize| (out - 1) * s + k;
    let (hn, wn) = (read(g.h_out), read(g.w_out));
    let rows = g.h_in.min(hn - g.pad_top);
    let cols = g.w_in.min(wn - g.pad_left);
    let y = x
        .narrow(2, 0, rows)
        .unwrap()
        .narrow(3, 0, cols)
        .unwrap()
        .pad_with_zeros(2, g.pad_top, hn - g.pad_top - rows)
        .unwrap()
        .pad_with_zeros(3, g.pad_left, wn - g.pad_left - cols)
        .unwrap()
        .conv2d(w, 0, s, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, g.c_out, 1, 1)).unwrap())
        .unwrap();
    if relu {
        y.relu().unwrap()
    } else {
        y
    }
}

/// The fused layer on channels-first `x`: permuted to channels last for the kernel and
/// its output back to channels first (unless the op writes that itself), so both paths
/// are compared (and differentiated) in the same layout.
fn fused_conv(x: &Tensor, w: &Tensor, b: &Tensor, op: Conv2dRelu) -> Tensor {
    let y = x
        .permute((0, 2, 3, 1))
        .unwrap()
        .contiguous()
        .unwrap()
        .apply_op3(w, b, op)
        .unwrap();
    if op.channels_first_output {
        y
    } else {
        y.permute((0, 3, 1, 2)).unwrap()
    }
}

/// [`check_conv_to`] for both output layouts, with and without the ReLU.
fn check_conv(g: ConvGeometry, batch: usize, seed: u64) {
    for relu in [true, false] {
        check_conv_to(g, batch, seed, false, relu);
        check_conv_to(g, batch, seed, true, relu);
    }
}

fn check_conv_to(
    g: ConvGeometry,
    batch: usize,
    seed: u64,
    channels_first_output: bool,
    relu: bool,
) {
    let x = Var::from_tensor(&random(&[batch, g.c_in, g.h_in, g.w_in], seed)).unwrap();
    let w = Var::from_tensor(
        &(random(&[g.c_out, g.c_in, g.kernel, g.kernel], seed + 1) * 0.3).unwrap(),
    )
    .unwrap();
    let b = Var::from_tensor(&(random(&[g.c_out], seed + 2) * 0.1).unwrap()).unwrap();
    let r = random(&[batch, g.c_out, g.h_out, g.w_out], seed + 3);
    let op = Conv2dRelu {
        geometry: g,
        input_grad: true,
        channels_first_output,
        relu,
    };
    let fused = fused_conv(x.as_tensor(), w.as_tensor(), b.as_tensor(), op);
    let plain = plain_conv(x.as_tensor(), w.as_tensor(), b.as_tensor(), &g, relu);
    assert_eq!(plain.dims(), [batch, g.c_out, g.h_out, g.w_out]);
    assert_close("conv output", &fused, &plain, 1e-5);
    let alive = plain.gt(0f32).unwrap().to_dtype(DType::F32).unwrap();
    let share = alive.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(
        share > 0.2 && share < 0.8,
        "ReLU should cut part of the outputs (or, without it, part be negative): {share}"
    );

    let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("dx", &x), ("dw", &w), ("db", &b)] {
        assert_close(name, gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-5);
    }
}

#[test]
fn conv_matches_candle_stride_1_same_padding() {
    let g = geometry(1, (9, 7), 6, 3, 1, 1, (9, 7));
    check_conv(g, 3, 10);
}

#[test]
fn conv_matches_candle_stride_2_asymmetric_padding() {
    // TensorFlow SAME on an even input: one extra row and column after, none before.
    let g = geometry(3, (8, 10), 5, 3, 2, 0, (4, 5));
    check_conv(g, 4, 20);
    // Odd input: one on each side.
    let g = ConvGeometry {
        h_in: 9,
        w_in: 7,
        pad_top: 1,
        pad_left: 1,
        h_out: 5,
        w_out: 4,
        ..g
    };
    check_conv(g, 2, 30);
    // A 5x5 kernel: taps that fall two pixels outside on either side.
    let g = geometry(2, (9, 11), 3, 5, 2, 2, (5, 6));
    check_conv(g, 3, 35);
}

#[test]
fn conv_matches_candle_stride_3_with_unread_pixels() {
    // Stride 3 takes the kernels' generic-stride path; with no padding a 10x8 input has
    // its last row and last two columns never read, whose gradient must be 0.
    let g = geometry(2, (10, 8), 4, 3, 3, 0, (3, 2));
    check_conv(g, 3, 50);
}

#[test]
fn conv_matches_candle_across_chunks() {
    // K * P = 288 * 196: at most four images per chunk, so a batch of 10 is spread
    // over four chunks of 3, 3, 3 and 1.
    let g = geometry(32, (14, 14), 8, 3, 1, 1, (14, 14));
    check_conv(g, 10, 40);
}

#[test]
fn conv_without_input_gradient_still_gives_weight_gradients() {
    let g = geometry(1, (6, 6), 4, 3, 1, 1, (6, 6));
    // The images, as in the tower: a plain tensor, not a variable (candle expects a
    // gradient for every tracked input of an op).
    let x = random(&[2, 1, 6, 6], 1);
    let w = Var::from_tensor(&random(&[4, 1, 3, 3], 2)).unwrap();
    let b = Var::from_tensor(&random(&[4], 3)).unwrap();
    let op = Conv2dRelu {
        geometry: g,
        input_grad: false,
        channels_first_output: false,
        relu: true,
    };
    let y = fused_conv(&x, w.as_tensor(), b.as_tensor(), op);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let plain = plain_conv(&x, w.as_tensor(), b.as_tensor(), &g, true);
    let gp = plain.sum_all().unwrap().backward().unwrap();
    assert_close("dw", grads.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-5);
}

#[test]
fn conv_refuses_a_wrong_input_shape() {
    let g = geometry(1, (6, 6), 4, 3, 1, 1, (6, 6));
    let op = Conv2dRelu {
        geometry: g,
        input_grad: true,
        channels_first_output: false,
        relu: true,
    };
    // Channels first where channels last is expected, then a wrong height.
    for dims in [[2, 1, 6, 6], [2, 5, 6, 1]] {
        let err = random(&dims, 1)
            .apply_op3(&random(&[4, 1, 3, 3], 2), &random(&[4], 3), op)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected [batch, 6, 6, 1] (channels last)"),
            "{err}"
        );
    }
}

#[test]
fn conv_matches_candle_with_many_channels_and_a_5x5_kernel() {
    // Runs of 5 * 16 floats per receptive-field row, chunks of one image (K * P large).
    let g = geometry(16, (11, 9), 7, 5, 2, 2, (6, 5));
    check_conv(g, 5, 80);
}

#[test]
fn conv_input_gradient_ignores_what_the_output_never_reads() {
    // Cross-check against a hand-made case: a 1x1 kernel of weight 1 at stride 2 reads
    // the even pixels only; with a gradient of one everywhere, the input gradient is
    // 1 at even (row, column) pixels where the output is positive and 0 elsewhere.
    let g = geometry(1, (4, 4), 1, 1, 2, 0, (2, 2));
    let x =
        Var::from_tensor(&Tensor::ones((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let w = Tensor::ones((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let op = Conv2dRelu {
        geometry: g,
        input_grad: true,
        channels_first_output: false,
        relu: true,
    };
    let y = fused_conv(x.as_tensor(), &w, &b, op);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0; 4]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&x).unwrap().flatten_all().unwrap();
    let expected: Vec<f32> = (0..16)
        .map(|i| f32::from(u8::from((i / 4) % 2 == 0 && (i % 4) % 2 == 0)))
        .collect();
    assert_eq!(dx.to_vec1::<f32>().unwrap(), expected);
}

/// Random weights and biases for the convolutions of `config`, with their ops (the last
/// writing channels first, as in the tower).
fn conv_layers(config: &TowerConfig, seed: u64) -> Vec<(Conv2dRelu, Tensor, Tensor)> {
    let geometries = config.conv_layers();
    let last = geometries.len() - 1;
    geometries
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let s = seed + 10 * i as u64;
            let w = (random(&[g.c_out, g.c_in, g.kernel, g.kernel], s) * 0.3).unwrap();
            let b = (random(&[g.c_out], s + 1) * 0.1).unwrap();
            let op = Conv2dRelu {
                geometry: g,
                input_grad: false,
                channels_first_output: i == last,
                relu: true,
            };
            (op, w, b)
        })
        .collect()
}

/// The inference stack (each chunk of images through every convolution in turn) gives
/// bit for bit what the convolutions give one op at a time over the whole batch, on a
/// batch of several chunks (the reference network's conv2 takes 4 images a chunk) and
/// an odd one, and what plain candle's layers give (an independent reference).
#[test]
fn conv_stack_matches_the_layers_one_by_one_and_candle() {
    let config = TowerConfig::default();
    let layers = conv_layers(&config, 40);
    for batch in [1, 23] {
        let images = random(&[batch, 1, 28, 28], 41 + batch as u64);
        let nhwc = images.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let refs: Vec<(Conv2dRelu, &Tensor, &Tensor)> =
            layers.iter().map(|(op, w, b)| (*op, w, b)).collect();
        let stacked = conv_stack_inference(&refs, &nhwc).unwrap();
        let mut one_by_one = nhwc.clone();
        let mut plain = images.clone();
        for (op, w, b) in &layers {
            one_by_one = one_by_one.apply_op3(w, b, *op).unwrap();
            plain = plain_conv(&plain, w, b, &op.geometry, true);
        }
        assert_eq!(stacked.dims(), [batch, 128, 7, 7]);
        assert_eq!(
            stacked.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            one_by_one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "batch {batch}: the stack and the layers one by one differ"
        );
        assert_close("conv stack against candle", &stacked, &plain, 1e-4);
        let alive = stacked.gt(0f32).unwrap().to_dtype(DType::F32).unwrap();
        let share = alive.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            share > 0.1 && share < 0.9,
            "ReLU cut {share} of the outputs"
        );
    }
}

/// Layers that do not chain, no layers, or images of the wrong shape are errors.
#[test]
fn conv_stack_refuses_what_does_not_fit() {
    let config = TowerConfig::default();
    let layers = conv_layers(&config, 50);
    let refs: Vec<(Conv2dRelu, &Tensor, &Tensor)> =
        layers.iter().map(|(op, w, b)| (*op, w, b)).collect();
    let images = random(&[2, 28, 28, 1], 51);
    assert!(conv_stack_inference(&[], &images).is_err());
    // conv1 then conv3: 32 channels in, conv3 reads 64.
    let skipped = [refs[0], refs[2]];
    assert!(conv_stack_inference(&skipped, &images).is_err());
    // A channels-first output feeding another layer.
    let mut first = refs[0];
    first.0.channels_first_output = true;
    assert!(conv_stack_inference(&[first, refs[1], refs[2]], &images).is_err());
    // Channels first instead of last.
    let wrong = random(&[2, 1, 28, 28], 52);
    assert!(conv_stack_inference(&refs, &wrong).is_err());
    // A weight of another size.
    let small = random(&[32, 1, 2, 2], 53);
    assert!(conv_stack_inference(&[(refs[0].0, &small, refs[0].2)], &images).is_err());
}

#[test]
fn linear_matches_candle_with_and_without_relu() {
    for (relu, seed) in [(true, 50), (false, 60)] {
        let x = Var::from_tensor(&random(&[7, 33], seed)).unwrap();
        let w = Var::from_tensor(&(random(&[12, 33], seed + 1) * 0.3).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[12], seed + 2)).unwrap();
        let r = random(&[7, 12], seed + 3);
        let fused = x
            .as_tensor()
            .apply_op3(w.as_tensor(), b.as_tensor(), LinearAct { relu })
            .unwrap();
        let pre = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let plain = if relu { pre.relu().unwrap() } else { pre };
        assert_close("linear output", &fused, &plain, 1e-5);
        let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("dx", &x), ("dw", &w), ("db", &b)] {
            assert_close(name, gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-5);
        }
    }
}

/// Dropout then training-mode batch norm, fused, against candle's product and
/// candle-nn's `BatchNorm`: output and the gradients of the input, scale and shift, at
/// odd shapes, with and without a mask, and with a batch of two.
#[test]
fn dropout_batch_norm_matches_candle() {
    for (batch, features, masked, seed) in
        [(5, 13, true, 80), (37, 70, true, 90), (2, 3, false, 100)]
    {
        let x = Var::from_tensor(&random(&[batch, features], seed)).unwrap();
        let gamma = Var::from_tensor(&(random(&[features], seed + 1) + 1.5).unwrap()).unwrap();
        let beta = Var::from_tensor(&random(&[features], seed + 2)).unwrap();
        let r = random(&[batch, features], seed + 3);
        // Every third element dropped, the rest scaled by 1 / (1 - p) for p = 0.3.
        let mask: Vec<f32> = (0..batch * features)
            .map(|i| if i % 3 == 1 { 0.0 } else { 1.0 / 0.7 })
            .collect();
        let eps = 1e-3;
        let (mean, var) =
            batch_statistics(x.as_tensor(), masked.then_some(mask.as_slice())).unwrap();
        let op = DropoutBatchNorm {
            mask: masked.then(|| Arc::new(mask.clone())),
            mean: Arc::new(mean),
            var: Arc::new(var),
            eps,
        };
        let fused = x
            .as_tensor()
            .apply_op3(gamma.as_tensor(), beta.as_tensor(), op)
            .unwrap();
        let dropped = if masked {
            let m = Tensor::from_vec(mask.clone(), (batch, features), &Device::Cpu).unwrap();
            (x.as_tensor() * m).unwrap()
        } else {
            x.as_tensor().clone()
        };
        let zeros = Tensor::zeros(features, DType::F32, &Device::Cpu).unwrap();
        let ones = Tensor::ones(features, DType::F32, &Device::Cpu).unwrap();
        let bn = candle_nn::BatchNorm::new(
            features,
            zeros,
            ones,
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            eps,
        )
        .unwrap();
        let plain = candle_core::ModuleT::forward_t(&bn, &dropped, true).unwrap();
        assert_close("dropout + batch norm output", &fused, &plain, 1e-5);
        let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("dx", &x), ("dgamma", &gamma), ("dbeta", &beta)] {
            assert_close(name, gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
        }
    }
}

/// The reference tower, fused and plain, from the same weights: the same embeddings
/// (inference and training mode with the same dropout masks) and the same gradient
/// for every parameter.
#[test]
fn fused_tower_matches_plain_tower() {
    check_tower(&TowerConfig::default());
}

#[test]
fn fused_tower_matches_plain_tower_with_symmetric_padding_of_odd_widths() {
    // 20 x 17 images, padding 1 on every side: the stride-2 layers leave the last padded
    // row unread but read every column, the case candle's own backward gets wrong.
    check_tower(&TowerConfig {
        input_height: 20,
        input_width: 17,
        padding: Padding::Symmetric,
        ..TowerConfig::default()
    });
}

#[test]
fn fused_tower_matches_plain_tower_with_two_convolutions_and_colour() {
    // The image-folder test's small tower, on 3-channel inputs: channels last from
    // the first layer on.
    check_tower(&TowerConfig {
        input_channels: 3,
        input_height: 16,
        input_width: 16,
        conv_channels: vec![8, 16],
        conv_strides: vec![1, 2],
        fc_widths: vec![64],
        embedding_dim: 8,
        ..TowerConfig::default()
    });
}

#[test]
fn fused_tower_matches_plain_tower_with_snell_blocks() {
    // Snell's four blocks at 28x28: 7 rows pooled to 3 (one row left over), then 3 to 1.
    check_tower(&TowerConfig::four_block(28, 28, 16));
    // Odd widths at every stage, and a hidden layer after the blocks.
    check_tower(&TowerConfig {
        conv_channels: vec![8, 8],
        conv_strides: vec![1, 1],
        fc_widths: vec![32],
        ..TowerConfig::four_block(19, 23, 8)
    });
    // Pooling without batch norm, and batch norm without pooling.
    check_tower(&TowerConfig {
        conv_batch_norm: false,
        ..TowerConfig::four_block(28, 28, 8)
    });
    check_tower(&TowerConfig {
        conv_pool: 1,
        conv_channels: vec![8, 8],
        conv_strides: vec![1, 2],
        ..TowerConfig::four_block(12, 12, 8)
    });
}

/// The tower on both paths: inference and training embeddings, and the gradient of
/// every parameter.
fn check_tower(config: &TowerConfig) {
    let shape = [
        6,
        config.input_channels,
        config.input_height,
        config.input_width,
    ];
    check_tower_on(
        config,
        &((random(&shape, 70) + 1.0).unwrap() * 0.5).unwrap(),
    );
}

/// [`check_tower`] on given images.
fn check_tower_on(config: &TowerConfig, images: &Tensor) {
    let images = images.clone();
    let (mut tower, varmap) = ConvTower::init(config, &Device::Cpu, 7).unwrap();
    assert!(tower.fused(), "CPU f32 takes the fused path by default");
    let r = random(&[6, config.embedding_dim], 71);
    // Inference first: a training pass moves batch norm's running statistics.
    let mut evals = Vec::new();
    for fused in [true, false] {
        tower.set_fused(fused);
        assert_eq!(tower.fused(), fused);
        evals.push(tower.forward_t(&images, false).unwrap());
    }
    assert_close("inference embeddings", &evals[0], &evals[1], 1e-4);
    let mut results = Vec::new();
    // Batch norm's running statistics, set to zero before each training pass and read
    // after it: both paths must move them alike. From zero, what they hold afterwards
    // is the batch's statistic times its weight alone (from the initial variance of 1,
    // the decay of that 1 would hide an error in the batch's part).
    let running = |tower: &ConvTower| -> Vec<(String, Tensor)> {
        let named = tower.named_tensors().into_iter();
        named.filter(|(n, _)| n.contains("running")).collect()
    };
    let before: Vec<(String, Tensor)> = running(&tower)
        .into_iter()
        .map(|(n, t)| (n, t.zeros_like().unwrap()))
        .collect();
    let mut moved = Vec::new();
    for fused in [true, false] {
        tower.set_fused(fused);
        tower.set_dropout_state(siamese_model::DropoutState {
            seed: 3,
            word_pos: 0,
        });
        for ((_, t), (_, saved)) in running(&tower).iter().zip(&before) {
            Var::from_tensor(t).unwrap().set(saved).unwrap();
        }
        let train = tower.forward_t(&images, true).unwrap();
        // Copies: the tensors share storage with the variables the next pass sets.
        let after = running(&tower).into_iter();
        moved.push(
            after
                .map(|(n, t)| (n, t.copy().unwrap()))
                .collect::<Vec<_>>(),
        );
        let grads = (&train * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        let mut named: Vec<(String, Tensor)> = data
            .iter()
            .filter_map(|(n, v)| grads.get(v).map(|g| (n.clone(), g.clone())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        results.push((train, named));
    }
    let (fused, plain) = (&results[0], &results[1]);
    assert_close("training embeddings", &fused.0, &plain.0, 1e-4);
    let conv_bns = if config.conv_batch_norm {
        config.conv_channels.len()
    } else {
        0
    };
    assert_eq!(
        moved[0].len(),
        (config.fc_widths.len() + conv_bns) * 2,
        "running statistics"
    );
    for (((name, a), (_, b)), (_, old)) in moved[0].iter().zip(&moved[1]).zip(&before) {
        let step = |t: &Tensor| (t - old).unwrap().to_vec1::<f32>().unwrap();
        let (fused_step, plain_step) = (step(a), step(b));
        let largest = plain_step.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.0, "{name} did not move");
        for (x, y) in fused_step.iter().zip(&plain_step) {
            assert!(
                (x - y).abs() <= 1e-3 * largest,
                "{name}: moved {x}, plain {y}"
            );
        }
    }
    assert_eq!(
        fused.1.len(),
        (config.conv_channels.len() + conv_bns) * 2 + config.fc_widths.len() * 4 + 2,
        "every trainable tensor"
    );
    for ((name, a), (_, b)) in fused.1.iter().zip(&plain.1) {
        assert_close(name, a, b, 1e-3);
    }
}

#[test]
fn max_pool_relu_on_a_hand_made_case() {
    // One image 3x5, one channel (channels last): 2x2 windows give 1x2, the last row and
    // column left over. Window 1 holds a tie (7 twice: the first one takes the
    // gradient); window 2's maximum is negative (the ReLU zeroes it, no gradient).
    let values = [
        1f32, 7., -5., -3., 9., //
        7., 2., -4., -6., 9., //
        9., 9., 9., 9., 9.,
    ];
    let x = Var::from_tensor(&Tensor::from_slice(&values, (1, 3, 5, 1), &Device::Cpu).unwrap())
        .unwrap();
    let y = x.apply_op1(MaxPoolRelu { window: 2 }).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 1]);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [7., 0.]);
    let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut expected = [0f32; 15];
    expected[1] = 3.0;
    assert_eq!(dx, expected);
    // A NaN is not hidden by the ReLU; a window too small for the input is refused.
    let nan = Tensor::from_slice(&[f32::NAN, 1., 2., 3.], (1, 2, 2, 1), &Device::Cpu).unwrap();
    let y = nan.apply_op1(MaxPoolRelu { window: 2 }).unwrap();
    assert!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0].is_nan());
    assert!(nan.apply_op1(MaxPoolRelu { window: 3 }).is_err());
}

/// Blank patches (exact zeros through zero biases: pre-activations of exactly 0) on
/// both paths: ReLU's gradient there is 0 on both, as PyTorch's. candle's own `relu`
/// passes it, and conv1's bias gradients were 20% apart; candle's `max` gives every
/// tied value of a pooling window the whole gradient.
#[test]
fn fused_tower_matches_plain_tower_on_blank_patches() {
    // Snell's blocks too: blank patches through batch norm are equal values, which tie
    // in a max-pool window (the gradient goes to the first, as PyTorch's).
    for config in [
        TowerConfig::strided_four(16, 16, 8),
        TowerConfig::default(),
        TowerConfig::four_block(16, 16, 8),
    ] {
        let (h, w) = (config.input_height, config.input_width);
        let noise = ((random(&[6, 1, h, w], 72) + 1.0).unwrap() * 0.5).unwrap();
        let left_half_blank: Vec<f32> = (0..6 * h * w)
            .map(|i| if i % w < w / 2 { 0.0 } else { 1.0 })
            .collect();
        let mask = Tensor::from_vec(left_half_blank, (6, 1, h, w), &Device::Cpu).unwrap();
        check_tower_on(&config, &(noise * mask).unwrap());
    }
}
