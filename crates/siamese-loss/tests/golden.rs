//! Golden values and plain-loop checks of the losses and distances, and their errors.
//!
//! The numbers were computed with this Python, kept so they can be checked:
//! ```text
//! import math
//! print(10*math.exp(-2.77))                                   # 0.6266200474215315
//! q=5; E=[0.0,0.5,2.0,5.0,7.5]; s=[1,0,1,0,1]
//! print([(2/q)*e*e if y else 2*q*math.exp(-2.77*e/q) for e,y in zip(E,s)])
//! # [0.0, 7.580544971105083, 1.6, 0.6266200474215315, 22.5]
//! m=1.0; print([e*e/2 if y else max(0,m-e)**2/2 for e,y in zip(E,[1,0,0,0,1])])
//! # [0.0, 0.125, 0.0, 0.0, 28.125]
//! ```

use candle_core::{DType, Device, Tensor, Var};
use siamese_loss::{
    split_means, Chopra2005, ContrastiveLoss, Cosine, Distance, Euclidean, Hadsell2006, LossError,
    PairLoss, Reduction, SquaredEuclidean,
};

const E: [f64; 5] = [0.0, 0.5, 2.0, 5.0, 7.5];

fn t(values: &[f64]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn close(found: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() <= tol,
            "found {found:?}, expected {expected:?}"
        );
    }
}

#[test]
fn chopra_golden_values() {
    let loss = Chopra2005 { q: 5.0 };
    let terms = loss.terms(&t(&E), &t(&[1., 0., 1., 0., 1.])).unwrap();
    close(
        &terms.to_vec1::<f64>().unwrap(),
        &[0.0, 7.580544971105083, 1.6, 0.6266200474215315, 22.5],
        1e-12,
    );
    // The three anchor points of the issue: impostor at E = 0 is 2q = 10, genuine at
    // E = q is 2q = 10, impostor at E = q is 10 exp(-2.77).
    let terms = loss.terms(&t(&[0.0, 5.0, 5.0]), &t(&[0., 1., 0.])).unwrap();
    close(
        &terms.to_vec1::<f64>().unwrap(),
        &[10.0, 10.0, 0.6266200474215315],
        1e-12,
    );
}

#[test]
fn hadsell_golden_values() {
    let terms = Hadsell2006 { margin: 1.0 }
        .terms(&t(&E), &t(&[1., 0., 0., 0., 1.]))
        .unwrap();
    close(
        &terms.to_vec1::<f64>().unwrap(),
        &[0.0, 0.125, 0.0, 0.0, 28.125],
        1e-12,
    );
}

/// The whole pipeline against a plain loop over pairs.
#[test]
fn small_batch_matches_a_naive_loop() {
    let a = [
        [0.3, -1.2, 2.0],
        [1.0, 1.0, 1.0],
        [0.0, 0.5, -0.5],
        [4.0, -3.0, 0.0],
    ];
    let b = [
        [0.1, -1.0, 2.5],
        [1.0, 1.0, 1.0],
        [2.0, 0.0, 0.0],
        [-1.0, 2.0, 1.0],
    ];
    let same = [1.0, 1.0, 0.0, 0.0];
    let naive_e: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q) * (p - q))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let q = 5.0;
    let naive: Vec<f64> = naive_e
        .iter()
        .zip(&same)
        .map(|(&e, &s)| s * (2.0 / q) * e * e + (1.0 - s) * 2.0 * q * (-2.77 * e / q).exp())
        .collect();
    let dev = Device::Cpu;
    let (ta, tb) = (
        Tensor::new(&a, &dev).unwrap(),
        Tensor::new(&b, &dev).unwrap(),
    );
    let ts = t(&same);
    let e = Euclidean::default().paired(&ta, &tb).unwrap();
    close(&e.to_vec1::<f64>().unwrap(), &naive_e, 1e-6);
    let terms = Chopra2005 { q }.terms(&e, &ts).unwrap();
    close(&terms.to_vec1::<f64>().unwrap(), &naive, 1e-5);
    let mean = ContrastiveLoss {
        distance: Euclidean::default(),
        loss: Chopra2005 { q },
        reduction: Reduction::Mean,
    }
    .forward(&ta, &tb, &ts)
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!((mean - naive.iter().sum::<f64>() / 4.0).abs() < 1e-5);
    // Balanced: (mean of the two genuine + mean of the two impostor terms) / 2.
    let balanced = Reduction::BalancedMean
        .reduce(&terms, &ts)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let expected = ((naive[0] + naive[1]) / 2.0 + (naive[2] + naive[3]) / 2.0) / 2.0;
    assert!((balanced - expected).abs() < 1e-5);
    let (pos, neg) = split_means(&terms, &ts).unwrap();
    assert!((pos.to_scalar::<f64>().unwrap() - (naive[0] + naive[1]) / 2.0).abs() < 1e-5);
    assert!((neg.to_scalar::<f64>().unwrap() - (naive[2] + naive[3]) / 2.0).abs() < 1e-5);
}

#[test]
fn balanced_mean_of_one_kind_is_its_mean() {
    let terms = t(&[1.0, 3.0]);
    let all_same = Reduction::BalancedMean
        .reduce(&terms, &t(&[1.0, 1.0]))
        .unwrap();
    assert_eq!(all_same.to_scalar::<f64>().unwrap(), 2.0);
    let none_same = Reduction::BalancedMean
        .reduce(&terms, &t(&[0.0, 0.0]))
        .unwrap();
    assert_eq!(none_same.to_scalar::<f64>().unwrap(), 2.0);
}

/// The reference program's sqrt gives NaN gradients for identical inputs; ours is 0.
#[test]
fn euclidean_gradient_is_zero_not_nan_at_zero_distance() {
    let dev = Device::Cpu;
    let a = Var::new(&[[1.5f32, -2.0]], &dev).unwrap();
    let b = Tensor::new(&[[1.5f32, -2.0]], &dev).unwrap();
    let e = Euclidean::default().paired(a.as_tensor(), &b).unwrap();
    assert!(e.to_vec1::<f32>().unwrap()[0] <= 1e-6);
    let grads = e.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(a.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, vec![0.0, 0.0]);
    // Unsmoothed, as the reference program: the gradient is NaN.
    let raw = (a.as_tensor() - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap();
    let grads = raw.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(a.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(g.iter().all(|v| v.is_nan()), "{g:?}");
}

#[test]
fn matrix_forms_agree_with_paired_forms() {
    let dev = Device::Cpu;
    let a = Tensor::new(&[[0.0f64, 1.0], [2.0, -1.0], [0.5, 0.5]], &dev).unwrap();
    let b = Tensor::new(&[[1.0f64, 1.0], [-3.0, 2.0]], &dev).unwrap();
    let check = |d: &dyn Distance| {
        let m = d.matrix(&a, &b).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!((m.len(), m[0].len()), (3, 2));
        for (i, row) in m.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let ai = a.narrow(0, i, 1).unwrap();
                let bj = b.narrow(0, j, 1).unwrap();
                let p = d.paired(&ai, &bj).unwrap().to_vec1::<f64>().unwrap()[0];
                assert!((v - p).abs() < 1e-9, "[{i},{j}]: matrix {v}, paired {p}");
            }
        }
    };
    check(&Euclidean::default());
    check(&SquaredEuclidean);
    check(&Cosine::default());
    // Cosine of orthogonal and opposite vectors.
    let c = Cosine::default()
        .paired(
            &t(&[1.0, 0.0, 1.0, 0.0]).reshape((2, 2)).unwrap(),
            &t(&[0.0, 3.0, -2.0, 0.0]).reshape((2, 2)).unwrap(),
        )
        .unwrap();
    close(&c.to_vec1::<f64>().unwrap(), &[1.0, 2.0], 1e-12);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dev = Device::Cpu;
    let a = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    let err = Euclidean::default().paired(&a, &b).unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[4, 2]") && err.to_string().contains("[3, 2]"));

    let ints = Tensor::zeros((4, 2), DType::U8, &dev).unwrap();
    assert!(matches!(
        Euclidean::default().paired(&ints, &ints),
        Err(LossError::DType { .. })
    ));
    let f64s = Tensor::zeros((4, 2), DType::F64, &dev).unwrap();
    assert!(matches!(
        SquaredEuclidean.paired(&a, &f64s),
        Err(LossError::DType { .. })
    ));
    assert!(matches!(
        Cosine::default().matrix(&a, &Tensor::zeros((3, 5), DType::F32, &dev).unwrap()),
        Err(LossError::Shape { .. })
    ));

    let e = Tensor::ones(4, DType::F32, &dev).unwrap();
    let err = Chopra2005 { q: 5.0 }
        .terms(&e, &Tensor::new(&[1f32, 0., 0.5, 1.], &dev).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, LossError::Labels { found } if found == 0.5),
        "{err}"
    );
    let err = Hadsell2006 { margin: 1.0 }
        .terms(&e, &Tensor::ones(3, DType::F32, &dev).unwrap())
        .unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    let err = Hadsell2006 { margin: 1.0 }
        .terms(&e, &Tensor::ones(4, DType::F64, &dev).unwrap())
        .unwrap_err();
    assert!(matches!(err, LossError::DType { .. }), "{err}");
    let nan_labels = Tensor::new(&[1f32, f32::NAN, 0., 1.], &dev).unwrap();
    assert!(Chopra2005 { q: 5.0 }.terms(&e, &nan_labels).is_err());
    assert!(Chopra2005::new(0.0).is_err() && Chopra2005::new(f64::NAN).is_err());
    assert!(Hadsell2006::new(-1.0).is_err() && Hadsell2006::new(2.0).is_ok());
}
