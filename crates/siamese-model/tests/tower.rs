//! Behaviour of the tower and the pair model: inference independent of the batch,
//! batch norm statistics moving only in training, shared weights reached by gradients
//! from both sides, reproducible dropout, and TensorFlow SAME padding.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use siamese_model::{ConvTower, Embedder, SiameseModel, TowerConfig};

/// A small tower so the tests stay quick; the same code paths as the reference one.
fn small() -> TowerConfig {
    TowerConfig {
        input_height: 12,
        input_width: 10,
        conv_channels: vec![4, 8],
        conv_strides: vec![1, 2],
        fc_widths: vec![32, 16],
        embedding_dim: 3,
        ..Default::default()
    }
}

fn images(n: usize, seed: u64, config: &TowerConfig) -> Tensor {
    let len = n * config.input_height * config.input_width;
    let values: Vec<f32> = (0..len)
        .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1000) as f32 / 1000.0)
        .collect();
    Tensor::from_vec(
        values,
        (n, 1, config.input_height, config.input_width),
        &Device::Cpu,
    )
    .unwrap()
}

/// The config's parameter names, sorted.
fn parameter_names(config: &TowerConfig) -> Vec<String> {
    let mut names: Vec<String> = config
        .parameter_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name]
        .as_tensor()
        .copy()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A batch larger than the inference slice (1,024 images) goes through in slices: the
/// rows on both sides of the slice boundary are those of the images embedded alone.
#[test]
fn large_inference_batches_are_sliced_without_changing_the_result() {
    let config = small();
    let (tower, _) = ConvTower::init(&config, &Device::Cpu, 2).unwrap();
    tower.forward_t(&images(32, 1, &config), true).unwrap();
    let batch = images(1030, 9, &config);
    let all = tower.forward_t(&batch, false).unwrap();
    assert_eq!(all.dims(), &[1030, config.embedding_dim]);
    assert_rows_match_images_alone(&tower, &batch, &all, &[0, 1023, 1024, 1029]);
}

/// Rows `rows` of `all` (the inference embeddings of `batch`) equal the embeddings of
/// those images alone, up to the summation order of the matrix products.
fn assert_rows_match_images_alone(tower: &ConvTower, batch: &Tensor, all: &Tensor, rows: &[usize]) {
    for &i in rows {
        let alone = tower
            .forward_t(&batch.narrow(0, i, 1).unwrap(), false)
            .unwrap();
        let diff = max_abs_diff(&alone, &all.narrow(0, i, 1).unwrap());
        assert!(
            diff < 1e-5,
            "image {i}: alone vs in a batch of {} differ by {diff}",
            batch.dim(0).unwrap()
        );
    }
}

#[test]
fn inference_is_independent_of_the_batch_and_repeatable() {
    let config = TowerConfig::default();
    let (tower, _) = ConvTower::init(&config, &Device::Cpu, 1).unwrap();
    // Move the running statistics away from the identity first, so the check means something.
    for s in 0..3 {
        tower.forward_t(&images(32, s, &config), true).unwrap();
    }
    let batch = images(100, 42, &config);
    let all = tower.forward_t(&batch, false).unwrap();
    let again = tower.forward_t(&batch, false).unwrap();
    assert_eq!(
        all.to_vec2::<f32>().unwrap(),
        again.to_vec2::<f32>().unwrap()
    );
    assert_rows_match_images_alone(&tower, &batch, &all, &[0, 37, 99]);
}

#[test]
fn running_statistics_move_in_training_only() {
    let config = small();
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 2).unwrap();
    let (mean0, var0) = (
        var(&varmap, "bn1.running_mean"),
        var(&varmap, "bn1.running_var"),
    );
    tower.forward_t(&images(16, 3, &config), false).unwrap();
    assert_eq!(max_abs_diff(&mean0, &var(&varmap, "bn1.running_mean")), 0.0);
    tower.forward_t(&images(16, 3, &config), true).unwrap();
    assert!(max_abs_diff(&mean0, &var(&varmap, "bn1.running_mean")) > 0.0);
    assert!(max_abs_diff(&var0, &var(&varmap, "bn1.running_var")) > 0.0);
}

#[test]
fn training_mode_applies_dropout_and_inference_does_not() {
    let config = small();
    let (tower, _) = ConvTower::init(&config, &Device::Cpu, 4).unwrap();
    let x = images(8, 5, &config);
    let a = tower.forward_t(&x, true).unwrap();
    let b = tower.forward_t(&x, true).unwrap();
    assert!(
        max_abs_diff(&a, &b) > 0.0,
        "two training passes must draw different dropout masks"
    );
    let no_dropout = TowerConfig {
        dropout: 0.0,
        batch_norm: false,
        ..small()
    };
    let (plain, _) = ConvTower::init(&no_dropout, &Device::Cpu, 4).unwrap();
    let t = plain.forward_t(&x, true).unwrap();
    let e = plain.forward_t(&x, false).unwrap();
    assert_eq!(
        max_abs_diff(&t, &e),
        0.0,
        "without dropout and batch norm, the modes agree"
    );
}

#[test]
fn dropout_is_reproducible_from_the_seed_and_resumable() {
    let config = small();
    let x = images(8, 6, &config);
    let (a, _) = ConvTower::init(&config, &Device::Cpu, 9).unwrap();
    let (b, _) = ConvTower::init(&config, &Device::Cpu, 9).unwrap();
    let (ya, yb) = (
        a.forward_t(&x, true).unwrap(),
        b.forward_t(&x, true).unwrap(),
    );
    assert_eq!(ya.to_vec2::<f32>().unwrap(), yb.to_vec2::<f32>().unwrap());

    // Resuming: a fresh tower set to a saved position draws the same next masks. No
    // batch norm here, so that only the masks could make the outputs differ.
    let nobn = TowerConfig {
        batch_norm: false,
        ..small()
    };
    let (c, _) = ConvTower::init(&nobn, &Device::Cpu, 9).unwrap();
    let (d, _) = ConvTower::init(&nobn, &Device::Cpu, 9).unwrap();
    c.forward_t(&x, true).unwrap();
    let state = c.dropout_state();
    assert!(state.word_pos > 0);
    let expected = c.forward_t(&x, true).unwrap();
    d.set_dropout_state(state);
    assert_eq!(
        d.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap(),
        expected.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn pair_model_shares_one_set_of_parameters_reached_from_both_sides() {
    let config = small();
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 7).unwrap();
    // One set of parameters: exactly the config's, each once.
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, parameter_names(&config));

    let model = SiameseModel::new(tower);
    let (left_images, right_images) = (images(4, 1, &config), images(4, 2, &config));
    let conv1 = varmap.data().lock().unwrap()["conv1.weight"].clone();
    for side in 0..2 {
        let (l, r) = model
            .forward_pair(&left_images, &right_images, true)
            .unwrap();
        let only = if side == 0 { l } else { r };
        let grads = only.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(conv1.as_tensor())
            .expect("gradient reaches the shared conv1");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "side {side}: zero gradient on conv1.weight");
    }
    // In inference, a pair's embeddings equal the tower applied to each side alone.
    let (l, r) = model
        .forward_pair(&left_images, &right_images, false)
        .unwrap();
    let alone = model.tower.forward_t(&right_images, false).unwrap();
    assert!(max_abs_diff(&r, &alone) < 1e-5);
    assert_eq!(l.dims(), &[4, 3]);
    assert!(model
        .forward_pair(&left_images, &images(3, 2, &config), false)
        .is_err());
}

#[test]
fn wrong_input_shape_is_an_error() {
    let (tower, _) = ConvTower::init(&small(), &Device::Cpu, 0).unwrap();
    let bad = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let msg = tower.forward_t(&bad, false).unwrap_err().to_string();
    assert!(
        msg.contains("[batch, 1, 12, 10]") && msg.contains("[2, 1, 28, 28]"),
        "{msg}"
    );
}

/// TensorFlow SAME on a 4x4 input with a 3x3 stride-2 kernel: output 2x2, padding one
/// row and column at the bottom and right only. Checked against a plain loop.
#[test]
fn tf_same_padding_matches_a_naive_convolution() {
    let config = TowerConfig {
        input_height: 4,
        input_width: 4,
        conv_channels: vec![1],
        conv_strides: vec![2],
        fc_widths: vec![],
        embedding_dim: 4,
        dropout: 0.0,
        batch_norm: false,
        ..Default::default()
    };
    let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 0).unwrap();
    let kernel: Vec<f32> = (1..=9).map(|k| k as f32 * 0.1).collect();
    {
        let data = varmap.data().lock().unwrap();
        data["conv1.weight"]
            .set(&Tensor::from_vec(kernel.clone(), (1, 1, 3, 3), &Device::Cpu).unwrap())
            .unwrap();
        // The head is the identity, so the embedding is the conv output itself.
        data["fc1.weight"]
            .set(&Tensor::eye(4, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    }
    let input: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let x = Tensor::from_vec(input.clone(), (1, 1, 4, 4), &Device::Cpu).unwrap();
    let out = tower
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut naive = Vec::new();
    for oy in 0..2 {
        for ox in 0..2 {
            let mut s = 0.0;
            for ky in 0..3 {
                for kx in 0..3 {
                    // pad_top = pad_left = 0 for TF SAME here.
                    let (iy, ix) = (oy * 2 + ky, ox * 2 + kx);
                    if iy < 4 && ix < 4 {
                        s += input[iy * 4 + ix] * kernel[ky * 3 + kx];
                    }
                }
            }
            naive.push(f32::max(s, 0.0));
        }
    }
    for (o, n) in out.iter().zip(&naive) {
        assert!((o - n).abs() < 1e-4, "tower {out:?} vs naive {naive:?}");
    }
}

/// `embed_from: fc1` reads the embedding at the first hidden layer, scaled to unit
/// length, in inference mode; the training output stays the head's. The reference is
/// computed here from the layer's output, the normalisation written out by hand.
#[test]
fn embedding_from_a_hidden_layer_is_that_layer_at_unit_length() {
    use siamese_model::TowerLayer;
    let config = TowerConfig {
        embed_from: TowerLayer::Hidden(0),
        ..small()
    };
    let (tower, _) = ConvTower::init(&config, &Device::Cpu, 4).unwrap();
    let x = images(5, 9, &config);
    assert_eq!(tower.embedding_dim(), 32);
    let embedded = tower.embed(&x).unwrap().to_vec2::<f32>().unwrap();
    let hidden = tower
        .forward_to(&x, false, TowerLayer::Hidden(0))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (e, h) in embedded.iter().zip(&hidden) {
        assert_eq!(e.len(), 32);
        let norm = h.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 0.0);
        for (a, b) in e.iter().zip(h) {
            assert!((f64::from(*a) - f64::from(*b) / norm).abs() < 1e-5);
        }
    }
    // Training still sees the head.
    assert_eq!(tower.forward_t(&x, true).unwrap().dims(), &[5, 3]);
    // A loaded tower can be read at another layer.
    let mut tower = tower;
    tower.set_embed_from(TowerLayer::Head).unwrap();
    assert_eq!(tower.embed(&x).unwrap().dims(), &[5, 3]);
    assert!(tower.set_embed_from(TowerLayer::Hidden(7)).is_err());
    // The same weights read at the head give the head's output.
    let head = TowerConfig { ..small() };
    assert_eq!(head.output_dim(), 3);
    // A layer the tower does not have is a config error, named.
    let bad = TowerConfig {
        embed_from: TowerLayer::Hidden(2),
        ..small()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.contains("fc3") && err.contains("2 hidden layers"),
        "{err}"
    );
}

/// Configs that read at the head (every checkpoint before `embed_from` existed) keep
/// their exact JSON; the hidden-layer choice round-trips.
#[test]
fn embed_from_is_saved_only_when_it_is_not_the_head() {
    use siamese_model::TowerLayer;
    let json = serde_json::to_string(&small()).unwrap();
    assert!(!json.contains("embed_from"), "{json}");
    let hidden = TowerConfig {
        embed_from: TowerLayer::Hidden(1),
        ..small()
    };
    let json = serde_json::to_string(&hidden).unwrap();
    assert!(json.contains(r#""embed_from":{"hidden":1}"#), "{json}");
    assert_eq!(serde_json::from_str::<TowerConfig>(&json).unwrap(), hidden);
}

/// The tower's state ([`Stateful`]) carries every parameter, the batch-norm statistics
/// and the dropout position: a tower from another seed, given it, computes the same
/// training and inference outputs from then on, and the variables an optimiser holds
/// see the restored values. A state that does not fit changes nothing.
#[test]
fn tower_state_restores_parameters_statistics_and_dropout() {
    use siamese_model::{StateDict, Stateful};
    let config = small();
    let x = images(6, 3, &config);
    let (a, _) = ConvTower::init(&config, &Device::Cpu, 1).unwrap();
    // Training-mode passes move the batch-norm statistics and the dropout generator.
    a.forward_t(&x, true).unwrap();
    a.forward_t(&x, true).unwrap();
    let state = a.state_dict().unwrap();
    let names: Vec<&str> = state.tensors().map(|(k, _)| k).collect();
    assert_eq!(names, parameter_names(&config));

    let (mut b, b_vars) = ConvTower::init(&config, &Device::Cpu, 2).unwrap();
    assert_ne!(
        b.embed(&x).unwrap().to_vec2::<f32>().unwrap(),
        a.embed(&x).unwrap().to_vec2::<f32>().unwrap()
    );
    b.load_state_dict(&state).unwrap();
    assert_eq!(
        var(&b_vars, "bn1.running_mean").to_vec1::<f32>().unwrap(),
        a.named_tensors()
            .iter()
            .find(|(n, _)| n == "bn1.running_mean")
            .unwrap()
            .1
            .to_vec1::<f32>()
            .unwrap(),
        "written into the variables themselves"
    );
    for train in [true, false] {
        assert_eq!(
            a.forward_t(&x, train).unwrap().to_vec2::<f32>().unwrap(),
            b.forward_t(&x, train).unwrap().to_vec2::<f32>().unwrap(),
            "train = {train}"
        );
    }

    // A state for another architecture is refused, naming the tensor, before anything
    // is written.
    let (mut c, _) = ConvTower::init(&config, &Device::Cpu, 5).unwrap();
    let before = c.embed(&x).unwrap().to_vec2::<f32>().unwrap();
    let (wide, _) = ConvTower::init(
        &TowerConfig {
            embedding_dim: 4,
            ..small()
        },
        &Device::Cpu,
        1,
    )
    .unwrap();
    let err = c
        .load_state_dict(&wide.state_dict().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"fc3.weight\""), "{err}");
    let mut lacking = StateDict::new();
    for (k, t) in state.tensors().filter(|(k, _)| *k != "conv2.bias") {
        lacking.insert_tensor(k, t.clone());
    }
    lacking.insert_text("dropout", state.text("dropout").unwrap());
    let err = c.load_state_dict(&lacking).unwrap_err().to_string();
    assert_eq!(err, "the state lacks \"conv2.bias\"");
    assert_eq!(c.embed(&x).unwrap().to_vec2::<f32>().unwrap(), before);
}

/// The loss's value for embeddings `e` under a loss that sees only their differences:
/// the sum of squared distances to their mean (every pairwise squared distance, up to
/// a factor).
fn spread(e: &Tensor) -> Tensor {
    e.broadcast_sub(&e.mean_keepdim(0).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn shift_entries_reported_uniform_have_a_zero_true_gradient_and_the_others_do_not() {
    for config in [
        TowerConfig::strided_four(16, 16, 8),
        TowerConfig::four_block(16, 16, 8),
    ] {
        let (tower, varmap) = ConvTower::init(&config, &Device::Cpu, 3).unwrap();
        let e = tower.forward_t(&images(12, 5, &config), true).unwrap();
        let activity = tower.shift_activity();
        assert_eq!(activity.len(), 1);
        let name = &activity[0].name;
        let expected = if config.conv_batch_norm {
            "conv4.bn.bias"
        } else {
            "conv4.bias"
        };
        assert_eq!(name, expected);
        let uniform = activity[0].uniform();
        let grads = spread(&e).backward().unwrap();
        let shift = varmap.data().lock().unwrap()[name.as_str()].clone();
        let g = grads.get(&shift).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(uniform.len(), g.len());
        let largest = g.iter().fold(0f32, |m, x| m.max(x.abs()));
        let (mut zero, mut real) = (0, 0);
        for (u, x) in uniform.iter().zip(&g) {
            if *u {
                // Rounding noise only.
                assert!(x.abs() <= 1e-5 * largest, "{name}: {x} of {largest}");
                zero += 1;
            } else if x.abs() > 1e-3 * largest {
                real += 1;
            }
        }
        assert!(zero > 0 && real > 0, "{name}: {zero} uniform, {real} real");
    }
    // Not reported where a shift is not common to every embedding: a hidden layer after
    // the convolutions, unit-length embeddings, or an inference forward.
    let hidden = small();
    let (tower, _) = ConvTower::init(&hidden, &Device::Cpu, 3).unwrap();
    tower.forward_t(&images(4, 1, &hidden), true).unwrap();
    assert!(tower.shift_activity().is_empty());
    let unit = TowerConfig {
        normalize: true,
        ..TowerConfig::strided_four(16, 16, 8)
    };
    let (tower, _) = ConvTower::init(&unit, &Device::Cpu, 3).unwrap();
    tower.forward_t(&images(4, 1, &unit), true).unwrap();
    assert!(tower.shift_activity().is_empty());
    let plain = TowerConfig::strided_four(16, 16, 8);
    let (tower, _) = ConvTower::init(&plain, &Device::Cpu, 3).unwrap();
    tower.forward_t(&images(4, 1, &plain), false).unwrap();
    assert!(tower.shift_activity().is_empty());
}

/// `image` (`rows x cols`, row-major) moved so that pixel `(y, x)` shows the original's
/// `(y + dy, x + dx)`, the nearest edge pixel where that falls outside: written out by
/// hand, knowing nothing of candle's padding.
fn shifted(image: &[f32], rows: usize, cols: usize, dy: isize, dx: isize) -> Vec<f32> {
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut out = Vec::with_capacity(rows * cols);
    for y in 0..rows {
        for x in 0..cols {
            out.push(image[clamp(y as isize + dy, rows) * cols + clamp(x as isize + dx, cols)]);
        }
    }
    out
}

/// With `shift_average: r` an image's embedding is the mean of the one-view embeddings
/// of its (2r + 1)^2 shifted copies, made here by hand, scaled back to unit length when
/// the tower's embeddings are unit length; 0 leaves `embed` the one view.
#[test]
fn shift_averaging_is_the_mean_over_hand_made_shifted_copies() {
    use siamese_model::TowerLayer;
    let cases = [
        ("head", small(), 1),
        (
            "normalised head",
            TowerConfig {
                normalize: true,
                ..small()
            },
            2,
        ),
        (
            "hidden layer",
            TowerConfig {
                embed_from: TowerLayer::Hidden(1),
                ..small()
            },
            1,
        ),
    ];
    for (what, config, r) in cases {
        // Weights large enough that a shift moves the embedding measurably (the
        // default 0.05 leaves an untrained tower's outputs nearly constant).
        let config = TowerConfig {
            init_std: 0.5,
            ..config
        };
        let (mut tower, _) = ConvTower::init(&config, &Device::Cpu, 6).unwrap();
        let (rows, cols) = (config.input_height, config.input_width);
        let x = images(3, 4, &config);
        let one_view = tower.embed(&x).unwrap();
        tower.set_shift_average(r).unwrap();
        assert_eq!(tower.config().shift_average, r);
        let averaged = tower.embed(&x).unwrap().to_vec2::<f32>().unwrap();
        // The one view is still there, for training's validation.
        let still = tower.embed_one_view(&x).unwrap();
        assert_eq!(max_abs_diff(&still, &one_view), 0.0, "{what}");
        let pixels = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let r = r as isize;
        // The same weights, embedding one view (the config's radius is 0).
        let plain = ConvTower::init(&config, &Device::Cpu, 6).unwrap().0;
        for (i, got) in averaged.iter().enumerate() {
            let image = &pixels[i * rows * cols..(i + 1) * rows * cols];
            let mut mean = vec![0f64; got.len()];
            let mut views = 0u32;
            for dy in -r..=r {
                for dx in -r..=r {
                    let copy = shifted(image, rows, cols, dy, dx);
                    let t = Tensor::from_vec(copy, (1, 1, rows, cols), &Device::Cpu).unwrap();
                    let e = plain.embed(&t).unwrap().to_vec2::<f32>().unwrap();
                    for (m, v) in mean.iter_mut().zip(&e[0]) {
                        *m += f64::from(*v);
                    }
                    views += 1;
                }
            }
            assert_eq!(views as isize, (2 * r + 1).pow(2));
            mean.iter_mut().for_each(|m| *m /= f64::from(views));
            if config.unit_length_embeddings() {
                let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
                mean.iter_mut().for_each(|m| *m /= norm);
                let got_norm = got.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
                assert!((got_norm - 1.0).abs() < 1e-5, "{what}: norm^2 {got_norm}");
            }
            for (a, b) in got.iter().zip(&mean) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-5,
                    "{what}, image {i}: {got:?} against {mean:?}"
                );
            }
        }
        // Averaging changes the answer (the test would pass vacuously otherwise).
        assert!(
            max_abs_diff(&Tensor::new(averaged, &Device::Cpu).unwrap(), &one_view) > 1e-4,
            "{what}"
        );
    }
}

/// A batch larger than one slice of copies gives each image the embedding it has alone.
#[test]
fn shift_averaging_does_not_depend_on_the_batch() {
    let config = TowerConfig {
        shift_average: 1,
        ..small()
    };
    let (tower, _) = ConvTower::init(&config, &Device::Cpu, 2).unwrap();
    // 9 views: 113 images per slice of 1,024 copies; 230 images make three slices.
    let x = images(230, 5, &config);
    let all = tower.embed(&x).unwrap();
    // No autograd graph comes back: one would keep every slice's activations alive
    // until the last slice (21 GB for 1,000 images of 28x28 with 25 views).
    assert!(!all.track_op());
    for i in [0, 112, 113, 229] {
        let alone = tower.embed(&x.narrow(0, i, 1).unwrap()).unwrap();
        let diff = max_abs_diff(&all.narrow(0, i, 1).unwrap(), &alone);
        assert!(diff < 1e-5, "image {i}: {diff}");
    }
}

/// The radius is saved only when set, bounded, and smaller than half the image: a
/// forged config cannot ask for millions of copies of every image.
#[test]
fn shift_average_is_saved_when_set_and_bounded() {
    let json = serde_json::to_string(&small()).unwrap();
    assert!(!json.contains("shift_average"), "{json}");
    let two = TowerConfig {
        shift_average: 2,
        ..small()
    };
    let json = serde_json::to_string(&two).unwrap();
    assert!(json.contains(r#""shift_average":2"#), "{json}");
    assert_eq!(serde_json::from_str::<TowerConfig>(&json).unwrap(), two);
    let forged: TowerConfig =
        serde_json::from_str(&json.replace(r#""shift_average":2"#, r#""shift_average":100000"#))
            .unwrap();
    let err = forged.validate().unwrap_err().to_string();
    assert!(err.contains("shift_average is 100000"), "{err}");
    // 8 columns: a shift of 4 moves the image by half its width.
    let wide = TowerConfig {
        shift_average: 4,
        input_width: 8,
        ..small()
    };
    let err = wide.validate().unwrap_err().to_string();
    assert!(err.contains("half its size"), "{err}");
    let (mut tower, _) = ConvTower::init(&small(), &Device::Cpu, 0).unwrap();
    assert!(tower.set_shift_average(5).is_err());
    assert_eq!(
        tower.config().shift_average,
        0,
        "a refused radius changes nothing"
    );
}
