//! Property tests of the loss invariants, over random embeddings and labels, in f32 and
//! f64, for both losses. Each invariant is its own test, with 1,024 cases each
//! (`PROPTEST_CASES` raises it).

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use siamese_loss::{
    Chopra2005, ContrastiveLoss, Distance, Euclidean, Hadsell2006, PairLoss, Reduction,
};

/// A batch of pairs: `b` rows of `d`-dimensional embeddings on each side, and labels.
#[derive(Debug, Clone)]
struct Batch {
    d: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    same: Vec<f64>,
}

impl Batch {
    fn n(&self) -> usize {
        self.same.len()
    }

    fn tensors(&self, dtype: DType) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let shape = (self.n(), self.d);
        let a = Tensor::from_vec(self.a.clone(), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let b = Tensor::from_vec(self.b.clone(), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let s = Tensor::from_vec(self.same.clone(), self.n(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (a, b, s)
    }

    /// Pair `i` alone, as a batch of one.
    fn single(&self, i: usize) -> Batch {
        Batch {
            d: self.d,
            a: self.a[i * self.d..(i + 1) * self.d].to_vec(),
            b: self.b[i * self.d..(i + 1) * self.d].to_vec(),
            same: vec![self.same[i]],
        }
    }

    fn permuted(&self, order: &[usize]) -> Batch {
        let rows = |x: &[f64]| {
            order
                .iter()
                .flat_map(|&i| x[i * self.d..(i + 1) * self.d].to_vec())
                .collect()
        };
        Batch {
            d: self.d,
            a: rows(&self.a),
            b: rows(&self.b),
            same: order.iter().map(|&i| self.same[i]).collect(),
        }
    }
}

fn batch_with(scale: f64) -> impl Strategy<Value = Batch> {
    (1usize..12, 1usize..5).prop_flat_map(move |(n, d)| {
        (
            proptest::collection::vec(-scale..scale, n * d),
            proptest::collection::vec(-scale..scale, n * d),
            proptest::collection::vec(any::<bool>(), n),
        )
            .prop_map(move |(a, b, same)| Batch {
                d,
                a,
                b,
                same: same.into_iter().map(|s| f64::from(u8::from(s))).collect(),
            })
    })
}

fn batch() -> impl Strategy<Value = Batch> {
    batch_with(4.0)
}

/// The two losses under test, by index, so that proptest can pick one.
fn loss_terms(which: usize, e: &Tensor, same: &Tensor) -> Tensor {
    match which {
        0 => Chopra2005 { q: 5.0 }.terms(e, same).unwrap(),
        _ => Hadsell2006 { margin: 2.0 }.terms(e, same).unwrap(),
    }
}

fn mean_loss(which: usize, batch: &Batch, dtype: DType) -> f64 {
    let (a, b, s) = batch.tensors(dtype);
    let e = Euclidean::default().paired(&a, &b).unwrap();
    let terms = loss_terms(which, &e, &s);
    Reduction::Mean
        .reduce(&terms, &s)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn terms_vec(which: usize, batch: &Batch, dtype: DType) -> Vec<f64> {
    let (a, b, s) = batch.tensors(dtype);
    let e = Euclidean::default().paired(&a, &b).unwrap();
    loss_terms(which, &e, &s)
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn dtypes() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

fn rel_close(x: f64, y: f64, rel: f64, abs: f64) -> bool {
    (x - y).abs() <= abs + rel * x.abs().max(y.abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn loss_is_non_negative(batch in batch(), which in 0usize..2, dtype in dtypes()) {
        for term in terms_vec(which, &batch, dtype) {
            prop_assert!(term >= 0.0, "term {}", term);
        }
    }

    #[test]
    fn swapping_the_sides_changes_nothing(batch in batch(), which in 0usize..2, dtype in dtypes()) {
        let swapped = Batch { a: batch.b.clone(), b: batch.a.clone(), ..batch.clone() };
        // Bit-identical: (a - b)^2 and (b - a)^2 are the same floats.
        prop_assert_eq!(terms_vec(which, &batch, dtype), terms_vec(which, &swapped, dtype));
    }

    #[test]
    fn batch_mean_is_the_mean_of_single_pair_losses(batch in batch(), which in 0usize..2, dtype in dtypes()) {
        let singles: f64 = (0..batch.n()).map(|i| mean_loss(which, &batch.single(i), dtype)).sum::<f64>() / batch.n() as f64;
        let whole = mean_loss(which, &batch, dtype);
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        prop_assert!(rel_close(whole, singles, tol, tol), "batch {} vs singles {}", whole, singles);
    }

    #[test]
    fn permuting_the_pairs_changes_nothing(
        (batch, order) in batch().prop_flat_map(|b| { let n = b.n(); (Just(b), Just((0..n).collect::<Vec<_>>()).prop_shuffle()) }),
        which in 0usize..2,
        dtype in dtypes(),
    ) {
        let permuted = batch.permuted(&order);
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let (x, y) = (mean_loss(which, &batch, dtype), mean_loss(which, &permuted, dtype));
        prop_assert!(rel_close(x, y, tol, tol), "{} vs {}", x, y);
        let terms = terms_vec(which, &batch, dtype);
        let permuted_terms = terms_vec(which, &permuted, dtype);
        for (k, &i) in order.iter().enumerate() {
            prop_assert_eq!(permuted_terms[k], terms[i]);
        }
    }

    #[test]
    fn chopra_genuine_term_rises_and_impostor_term_falls_with_distance(e1 in 0.0f64..50.0, de in 0.0f64..50.0, dtype in dtypes()) {
        let e = Tensor::new(&[e1, e1 + de], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let loss = Chopra2005 { q: 5.0 };
        let at = |same: f64| {
            let s = Tensor::new(&[same, same], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            loss.terms(&e, &s).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
        };
        let genuine = at(1.0);
        let impostor = at(0.0);
        prop_assert!(genuine[0] <= genuine[1], "genuine {:?}", genuine);
        prop_assert!(impostor[0] >= impostor[1], "impostor {:?}", impostor);
    }

    #[test]
    fn hadsell_impostor_term_is_zero_beyond_the_margin(margin in 0.01f64..10.0, beyond in 0.0f64..100.0, inside in 0.0f64..1.0, dtype in dtypes()) {
        let loss = Hadsell2006 { margin };
        let e = Tensor::new(&[margin + beyond, margin * inside * 0.99], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let s = Tensor::zeros(2, dtype, &Device::Cpu).unwrap();
        let terms = loss.terms(&e, &s).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        prop_assert_eq!(terms[0], 0.0);
        prop_assert!(terms[1] > 0.0, "inside the margin the impostor term must be positive: {:?}", terms);
    }

    #[test]
    fn loss_and_gradient_are_finite_for_identical_inputs_and_huge_distances(
        batch in batch(), which in 0usize..2, dtype in dtypes(), huge in any::<bool>(),
    ) {
        // Identical sides (E = 0 everywhere), or sides 1e6 apart.
        let b: Vec<f64> = if huge { batch.a.iter().map(|x| x + 1e6).collect() } else { batch.a.clone() };
        let batch = Batch { b, ..batch };
        let (a, b, s) = batch.tensors(dtype);
        let va = Var::from_tensor(&a).unwrap();
        let vb = Var::from_tensor(&b).unwrap();
        let e = Euclidean::default().paired(va.as_tensor(), vb.as_tensor()).unwrap();
        let loss = Reduction::Mean.reduce(&loss_terms(which, &e, &s), &s).unwrap();
        let value = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        prop_assert!(value.is_finite(), "loss {}", value);
        let grads = loss.backward().unwrap();
        for v in [&va, &vb] {
            let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            prop_assert!(g.iter().all(|x| x.is_finite()), "gradient {:?}", g);
        }
    }

    #[test]
    fn autograd_matches_central_finite_differences(batch in batch(), which in 0usize..2) {
        let (a, b, s) = batch.tensors(DType::F64);
        // Stay away from the kinks: E = 0 (the smoothed sqrt) and E = margin (the hinge).
        let e = Euclidean::default().paired(&a, &b).unwrap().to_vec1::<f64>().unwrap();
        prop_assume!(e.iter().all(|&x| x > 1e-2 && (x - 2.0).abs() > 1e-2));
        let loss_of = |a: &Tensor| {
            let e = Euclidean::default().paired(a, &b).unwrap();
            Reduction::Mean.reduce(&loss_terms(which, &e, &s), &s).unwrap()
        };
        let va = Var::from_tensor(&a).unwrap();
        let grads = loss_of(va.as_tensor()).backward().unwrap();
        let analytic = grads.get(va.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for k in 0..batch.a.len() {
            let mut plus = batch.a.clone();
            plus[k] += h;
            let mut minus = batch.a.clone();
            minus[k] -= h;
            let f = |x: Vec<f64>| loss_of(&Tensor::from_vec(x, (batch.n(), batch.d), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap();
            let numeric = (f(plus) - f(minus)) / (2.0 * h);
            prop_assert!(rel_close(analytic[k], numeric, 1e-5, 1e-7), "d/da[{}]: autograd {} vs finite differences {}", k, analytic[k], numeric);
        }
    }

    #[test]
    fn f32_and_f64_agree(batch in batch(), which in 0usize..2) {
        let x = terms_vec(which, &batch, DType::F32);
        let y = terms_vec(which, &batch, DType::F64);
        for (p, q) in x.iter().zip(&y) {
            prop_assert!(rel_close(*p, *q, 1e-4, 1e-5), "f32 {} vs f64 {}", p, q);
        }
    }

    #[test]
    fn composed_loss_equals_its_parts(batch in batch(), dtype in dtypes()) {
        let (a, b, s) = batch.tensors(dtype);
        let composed = ContrastiveLoss { distance: Euclidean::default(), loss: Chopra2005 { q: 5.0 }, reduction: Reduction::Mean }
            .forward(&a, &b, &s).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        prop_assert_eq!(composed, mean_loss(0, &batch, dtype));
    }
}
