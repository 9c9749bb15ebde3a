//! The composed batch losses against their parts and against plain loops: the sampled
//! pairs as a miner give exactly the loss of the two halves, a mined loss equals the
//! definition spelled out over its pairs, the view term adds what it says, and bad
//! batches are errors.

use candle_core::{DType, Device, Tensor, Var};
use siamese_loss::{
    view_labels, AllPairs, BatchHard, BatchLoss, Chopra2005, ContrastiveLoss, Euclidean,
    Hadsell2006, LossError, MinedLoss, Miner, MultiSimilarity, NtXent, PairedHalves, Reduction,
    WithViewTerm,
};

/// `n x dim` values from a small linear congruential sequence, in [-2, 2).
fn values(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n * dim)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn var(data: &[f32], n: usize, dim: usize) -> Var {
    Var::from_tensor(&Tensor::from_slice(data, (n, dim), &Device::Cpu).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The reference program's loss through the miner equals the contrastive loss of the
/// two halves, value and gradient, to the last bit.
#[test]
fn sampled_pairs_are_the_loss_of_the_two_halves() {
    let (n, dim) = (10, 3);
    let data = values(2 * n, dim, 1);
    let labels: Vec<u32> = (0..2 * n as u32).map(|i| i % 3).collect();
    let mined = MinedLoss::new(
        PairedHalves,
        Euclidean::default(),
        Chopra2005 { q: 5.0 },
        Reduction::Mean,
    );
    let whole = var(&data, 2 * n, dim);
    let value = mined.forward(whole.as_tensor(), &labels).unwrap();
    let grad = flat(value.backward().unwrap().get(&whole).unwrap());

    let (left, right) = (var(&data[..n * dim], n, dim), var(&data[n * dim..], n, dim));
    let same: Vec<f32> = (0..n)
        .map(|i| f32::from(u8::from(labels[i] == labels[i + n])))
        .collect();
    let plain = ContrastiveLoss {
        distance: Euclidean::default(),
        loss: Chopra2005 { q: 5.0 },
        reduction: Reduction::Mean,
    };
    let expected = plain
        .forward(
            left.as_tensor(),
            right.as_tensor(),
            &Tensor::new(same, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let grads = expected.backward().unwrap();
    assert_eq!(
        value.to_scalar::<f32>().unwrap(),
        expected.to_scalar::<f32>().unwrap()
    );
    let expected_grad = [
        flat(grads.get(&left).unwrap()),
        flat(grads.get(&right).unwrap()),
    ]
    .concat();
    assert_eq!(grad, expected_grad);
}

/// A mined loss is the reduced terms of exactly the pairs its miner picks: the margin
/// loss over batch-hard and multi-similarity pairs, balanced, in f64 by hand.
#[test]
fn a_mined_loss_equals_its_definition_over_the_mined_pairs() {
    let (n, dim, margin) = (12, 4, 1.5);
    let data = values(n, dim, 7);
    let labels: Vec<u32> = (0..n as u32).map(|i| i / 3).collect();
    let distance = |i: usize, j: usize| -> f64 {
        let d2: f64 = (0..dim)
            .map(|k| f64::from(data[i * dim + k] - data[j * dim + k]).powi(2))
            .sum();
        (d2 + Euclidean::DEFAULT_EPS).sqrt()
    };
    let matrix: Vec<f32> = (0..n * n).map(|k| distance(k / n, k % n) as f32).collect();
    let miners: [Box<dyn Miner>; 3] = [
        Box::new(BatchHard),
        Box::new(MultiSimilarity { epsilon: 0.5 }),
        Box::new(AllPairs),
    ];
    for miner in miners {
        let pairs = miner.mine(&matrix, &labels);
        assert!(!pairs.is_empty());
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for k in 0..pairs.len() {
            let e = distance(pairs.first[k] as usize, pairs.second[k] as usize);
            if pairs.same[k] == 1.0 {
                pos.push(e * e / 2.0);
            } else {
                neg.push((margin - e).max(0.0).powi(2) / 2.0);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let expected = (mean(&pos) + mean(&neg)) / 2.0;
        let loss = MinedLoss::new(
            miner,
            Euclidean::default(),
            Hadsell2006 { margin },
            Reduction::BalancedMean,
        );
        let e = Tensor::from_slice(&data, (n, dim), &Device::Cpu).unwrap();
        let found = f64::from(
            loss.forward(&e, &labels)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        assert!(
            (found - expected).abs() <= 1e-5 * expected.max(1.0),
            "found {found}, expected {expected}"
        );
    }
}

/// One class only: batch hard finds no pair, and the loss is a zero whose gradient is
/// zero or absent (the step runs and changes nothing), not an error or NaN.
#[test]
fn no_mined_pair_is_a_zero_with_zero_gradient() {
    let e = var(&values(4, 2, 3), 4, 2);
    let loss = MinedLoss::new(
        BatchHard,
        Euclidean::default(),
        Chopra2005 { q: 5.0 },
        Reduction::BalancedMean,
    );
    let value = loss.forward(e.as_tensor(), &[5, 5, 5, 5]).unwrap();
    assert_eq!(value.to_scalar::<f32>().unwrap(), 0.0);
    if let Some(grad) = value.backward().unwrap().get(&e) {
        let grad = flat(grad);
        assert!(grad.iter().all(|&g| g == 0.0), "{grad:?}");
    }
}

/// The view term is the labelled loss plus the weighted instance loss over the view
/// identities, with rows i and i + N/2 as one image's two views.
#[test]
fn the_view_term_adds_the_weighted_instance_loss() {
    let (n, dim) = (6, 3);
    let e = Tensor::from_slice(&values(2 * n, dim, 11), (2 * n, dim), &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..2 * n as u32).map(|i| (i % n as u32) / 2).collect();
    let labelled = MinedLoss::new(
        BatchHard,
        Euclidean::default(),
        Hadsell2006 { margin: 1.0 },
        Reduction::BalancedMean,
    );
    let instance = MinedLoss::new(
        AllPairs,
        Euclidean::default(),
        Hadsell2006 { margin: 1.0 },
        Reduction::BalancedMean,
    );
    let both = WithViewTerm {
        labelled,
        instance,
        weight: 0.25,
    };
    let scalar = |t: Tensor| f64::from(t.to_scalar::<f32>().unwrap());
    let found = scalar(both.forward(&e, &labels).unwrap());
    assert_eq!(view_labels(3), [0, 1, 2, 0, 1, 2]);
    let expected = scalar(labelled.forward(&e, &labels).unwrap())
        + 0.25 * scalar(instance.forward(&e, &view_labels(n)).unwrap());
    assert!((found - expected).abs() < 1e-6, "{found} vs {expected}");

    let with_nt_xent = WithViewTerm {
        labelled,
        instance: NtXent { temperature: 0.5 },
        weight: 1.0,
    };
    let found = scalar(with_nt_xent.forward(&e, &labels).unwrap());
    let expected = scalar(labelled.forward(&e, &labels).unwrap())
        + scalar(siamese_loss::nt_xent(&e, 0.5).unwrap());
    assert!((found - expected).abs() < 1e-6, "{found} vs {expected}");
}

/// Rows and labels that disagree, odd view batches and halves that are not views are
/// errors that say what was expected.
#[test]
fn batches_that_do_not_fit_are_errors() {
    let e = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    let mined = MinedLoss::new(
        AllPairs,
        Euclidean::default(),
        Chopra2005 { q: 5.0 },
        Reduction::Mean,
    );
    let shape = |r: Result<Tensor, LossError>| match r {
        Err(e @ LossError::Shape { .. }) => e.to_string(),
        other => panic!("expected a shape error, found {other:?}"),
    };
    assert!(shape(mined.forward(&e, &[1, 2, 3])).contains("one row per label"));
    let odd = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let views = WithViewTerm {
        labelled: mined,
        instance: mined,
        weight: 1.0,
    };
    assert!(shape(views.forward(&odd, &[1, 1, 1])).contains("even number of rows"));
    let nt = NtXent { temperature: 0.1 };
    assert!(shape(nt.forward(&e, &[0, 1, 1, 0])).contains("two views"));
    assert!(nt.forward(&e, &[0, 1, 0, 1]).is_ok());
}
