//! The gradient rules this workspace relies on, checked against values worked out by
//! hand: candle's backward pass is patched (vendor/README.md) to store the first
//! gradient reaching a node instead of adding it to zeros, so a node with one consumer,
//! a node with several, and a tensor used twice in one op must all still get the sum
//! of their contributions.

use candle_core::{Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn gradients_sum_every_contribution() {
    let x = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let w = Var::new(&[0.5f32, 4.0, -1.0], &Device::Cpu).unwrap();
    // y = sum(x * w) + sum(x + x) + sum(exp(x) * 0): x reaches the loss through three
    // consumers, and twice through the same add.
    let xw = (x.as_tensor() * w.as_tensor()).unwrap();
    let twice = (x.as_tensor() + x.as_tensor()).unwrap();
    let dead = (x.as_tensor().exp().unwrap() * 0.0).unwrap();
    let loss =
        (xw.sum_all().unwrap() + twice.sum_all().unwrap() + dead.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    // d/dx = w + 2 + 0; d/dw = x.
    assert_eq!(values(grads.get(&x).unwrap()), [2.5, 6.0, 1.0]);
    assert_eq!(values(grads.get(&w).unwrap()), [1.0, -2.0, 3.0]);
}

#[test]
fn a_single_consumer_gets_its_gradient_unchanged_and_broadcasts_come_out_whole() {
    let x = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    // sum_all's backward broadcasts one value over x's shape: the stored gradient must
    // be a whole tensor of that shape, usable as any other.
    let grads = (x.as_tensor() * 3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(&x).unwrap();
    assert_eq!(g.dims(), [2, 2]);
    assert!(g.is_contiguous());
    assert_eq!(values(g), [3.0; 4]);
    // A gradient used in further arithmetic behaves as a plain tensor.
    assert_eq!(values(&(g + 1.0).unwrap()), [4.0; 4]);
}
