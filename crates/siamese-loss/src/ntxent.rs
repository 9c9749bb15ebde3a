//! NT-Xent (normalised temperature-scaled cross entropy, SimCLR: Chen et al. 2020), the
//! self-supervised loss over two views of each image: each view must pick its twin out
//! of all the other views of the batch by cosine similarity. Unlike the pair losses it
//! is not a sum of per-pair terms (each term is a softmax over the whole batch).

use candle_core::Tensor;

use crate::error::LossError;

/// NT-Xent of `views [2N, D]`, where rows `i` and `i + N` are two views of one image,
/// at `temperature` (SimCLR uses 0.1-0.5): the mean over the `2N` rows of
/// `-log(exp(s(i, twin) / t) / sum over k != i of exp(s(i, k) / t))`, with `s` the
/// cosine similarity.
pub fn nt_xent(views: &Tensor, temperature: f64) -> Result<Tensor, LossError> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(LossError::Parameter {
            name: "temperature",
            expected: "positive and finite",
            found: temperature,
        });
    }
    let shape_error = || LossError::Shape {
        what: "views".into(),
        expected: "[2N, D] with N >= 1: rows i and i + N are views of one image".into(),
        found: format!("{:?}", views.dims()),
    };
    let (m, _) = views.dims2().map_err(|_| shape_error())?;
    if m < 2 || m % 2 != 0 {
        return Err(shape_error());
    }
    let (device, dtype) = (views.device(), views.dtype());
    // Unit rows; the epsilon keeps an all-zero row's gradient finite.
    let norms = (views.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    let z = views.broadcast_div(&norms)?;
    let logits = (z.matmul(&z.t()?)? / temperature)?;
    // A row never competes with itself: push the diagonal far below everything else
    // (exp of it is exactly 0 after the shift by the row maximum).
    let diagonal = (Tensor::eye(m, dtype, device)? * 1e9)?;
    let logits = (logits - diagonal)?;
    let max = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_prob = shifted.broadcast_sub(&log_sum)?;
    let half = m / 2;
    let twins: Vec<f32> = (0..m * m)
        .map(|k| f32::from(u8::from(k % m == (k / m + half) % m)))
        .collect();
    let twins = Tensor::from_vec(twins, (m, m), device)?.to_dtype(dtype)?;
    Ok(((log_prob * twins)?.sum_all()? / -(m as f64))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The definition in f64 with plain loops.
    fn naive(rows: &[Vec<f64>], t: f64) -> f64 {
        let m = rows.len();
        let unit: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
                r.iter().map(|x| x / n).collect()
            })
            .collect();
        let s = |i: usize, k: usize| {
            unit[i]
                .iter()
                .zip(&unit[k])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / t
        };
        (0..m)
            .map(|i| {
                let twin = (i + m / 2) % m;
                let denom: f64 = (0..m).filter(|&k| k != i).map(|k| s(i, k).exp()).sum();
                -(s(i, twin).exp() / denom).ln()
            })
            .sum::<f64>()
            / m as f64
    }

    #[test]
    fn equals_the_definition_and_has_finite_gradients() {
        let rows: Vec<Vec<f64>> = (0..6)
            .map(|i| (0..3).map(|j| ((i * 7 + j * 3) % 5) as f64 - 1.7).collect())
            .collect();
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        let v = Var::from_vec(flat, (6, 3), &Device::Cpu).unwrap();
        let loss = nt_xent(v.as_tensor(), 0.5).unwrap();
        let got = f64::from(loss.to_scalar::<f32>().unwrap());
        let want = naive(&rows, 0.5);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(&v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn twins_that_agree_cost_less_and_bad_input_is_refused() {
        let dev = Device::Cpu;
        // Twins identical and the two images orthogonal: log(1 + 2 e^-5) = 0.0134;
        // twins orthogonal with an identical impostor: log(2 + e^5) = 5.01.
        let good = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 0.], [0., 1.]], &dev).unwrap();
        let bad = Tensor::new(&[[1f32, 0.], [0., 1.], [0., 1.], [1., 0.]], &dev).unwrap();
        let l = |t: &Tensor| nt_xent(t, 0.2).unwrap().to_scalar::<f32>().unwrap();
        assert!(l(&good) < 0.02 && l(&bad) > 4.0, "{} {}", l(&good), l(&bad));
        assert!(nt_xent(&good, 0.0).is_err());
        assert!(nt_xent(&good, f64::NAN).is_err());
        let odd = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(nt_xent(&odd, 0.5).is_err());
        let flat = Tensor::zeros(4, DType::F32, &dev).unwrap();
        assert!(nt_xent(&flat, 0.5).is_err());
    }
}
