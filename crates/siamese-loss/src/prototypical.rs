//! The prototypical-network loss (Snell, Swersky & Zemel 2017) over an episode: each
//! class's prototype is the mean of its support embeddings; each query's logits are
//! its negative squared Euclidean distances to the prototypes; the loss is the
//! softmax cross-entropy of the query's own class, averaged over queries.
//!
//! The episode's rows come as siamese-data lays them out: `ways * shots` support rows,
//! class-major, then `ways * queries` query rows in the same class order.

use candle_core::{Tensor, D};

use crate::batch::BatchLoss;
use crate::error::LossError;

/// The prototypical loss of episodes of `ways` classes, `shots` support and `queries`
/// query images each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prototypical {
    /// Classes per episode.
    pub ways: usize,
    /// Support images per class.
    pub shots: usize,
    /// Query images per class.
    pub queries: usize,
}

impl Prototypical {
    /// Checks that the rows are the episode's layout: support rows of class `c` and
    /// query rows of class `c` carry one label, and the classes differ.
    fn check(&self, embeddings: &Tensor, labels: &[u32]) -> Result<(), LossError> {
        let (w, s, q) = (self.ways, self.shots, self.queries);
        let n = w * (s + q);
        let bad = |found: String| LossError::Shape {
            what: "prototypical episode".into(),
            expected: format!(
                "{n} rows: {w} classes x {s} support, then {w} x {q} queries, class-major"
            ),
            found,
        };
        if w < 2 || s == 0 || q == 0 {
            return Err(bad(format!("{w}-way {s}-shot with {q} queries")));
        }
        match embeddings.dims2() {
            Ok((rows, _)) if rows == n && labels.len() == n => {}
            _ => {
                return Err(bad(format!(
                    "embeddings {:?} with {} labels",
                    embeddings.dims(),
                    labels.len()
                )))
            }
        }
        let class_label = |c: usize| labels[c * s];
        for c in 0..w {
            let support = &labels[c * s..(c + 1) * s];
            let query = &labels[w * s + c * q..w * s + (c + 1) * q];
            if support.iter().chain(query).any(|&l| l != class_label(c)) {
                return Err(bad(format!("class {c}'s rows carry different labels")));
            }
            if (0..c).any(|o| class_label(o) == class_label(c)) {
                return Err(bad(format!(
                    "classes {c} and another share label {}",
                    class_label(c)
                )));
            }
        }
        Ok(())
    }
}

impl Prototypical {
    /// Squared distances `[ways * queries, ways]` from each query row to each class's
    /// prototype (the mean of its support rows), by broadcasting the difference: exact,
    /// and an episode is small (60-way 5-query episodes of 64-D rows are 1.2 M floats).
    fn query_distances(&self, embeddings: &Tensor) -> Result<Tensor, LossError> {
        let (w, s, q) = (self.ways, self.shots, self.queries);
        let dim = embeddings.dim(1)?;
        let prototypes = embeddings
            .narrow(0, 0, w * s)?
            .reshape((w, s, dim))?
            .mean(1)?;
        let queries = embeddings.narrow(0, w * s, w * q)?;
        Ok(queries
            .unsqueeze(1)?
            .broadcast_sub(&prototypes.unsqueeze(0)?)?
            .sqr()?
            .sum(D::Minus1)?)
    }
}

impl BatchLoss for Prototypical {
    fn forward(&self, embeddings: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        self.check(embeddings, labels)?;
        let (w, q) = (self.ways, self.queries);
        let logits = self.query_distances(embeddings)?.neg()?;
        // log-softmax, stable: the row maximum is subtracted before exp (the identity
        // holds for any shift, so its gradient cancels).
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_norm = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let log_probs = shifted.broadcast_sub(&log_norm)?;
        // The true class of query row i is i / q: a one-hot mask picks its log-prob.
        let one_hot: Vec<f32> = (0..w * q)
            .flat_map(|i| (0..w).map(move |c| if c == i / q { 1.0 } else { 0.0 }))
            .collect();
        let one_hot = Tensor::from_vec(one_hot, (w * q, w), embeddings.device())?
            .to_dtype(embeddings.dtype())?;
        let picked = (log_probs * one_hot)?.sum_all()?;
        Ok((picked.neg()? / (w * q) as f64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The definition in plain f64: prototypes, squared distances, log-softmax, mean.
    fn naive(rows: &[Vec<f64>], w: usize, s: usize, q: usize) -> f64 {
        let dim = rows[0].len();
        let protos: Vec<Vec<f64>> = (0..w)
            .map(|c| {
                (0..dim)
                    .map(|k| (0..s).map(|j| rows[c * s + j][k]).sum::<f64>() / s as f64)
                    .collect()
            })
            .collect();
        let mut total = 0.0;
        for i in 0..w * q {
            let x = &rows[w * s + i];
            let logits: Vec<f64> = protos
                .iter()
                .map(|p| -p.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum::<f64>())
                .collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            total += lse - logits[i / q];
        }
        total / (w * q) as f64
    }

    fn episode(w: usize, s: usize, q: usize, dim: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<u32>) {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        };
        let rows = (0..w * (s + q))
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        let labels = (0..w * s)
            .map(|i| (i / s) as u32 * 10)
            .chain((0..w * q).map(|i| (i / q) as u32 * 10))
            .collect();
        (rows, labels)
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_the_naive_loop() {
        for (w, s, q, seed) in [(2, 1, 1, 1), (5, 1, 3, 2), (4, 5, 2, 3), (20, 2, 5, 4)] {
            let (rows, labels) = episode(w, s, q, 7, seed);
            let loss = Prototypical {
                ways: w,
                shots: s,
                queries: q,
            };
            let got = loss
                .forward(&tensor(&rows), &labels)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let want = naive(&rows, w, s, q);
            assert!(
                (got - want).abs() < 1e-9 * (1.0 + want.abs()),
                "{w}-{s}-{q}: {got} vs {want}"
            );
        }
    }

    /// The gradient of every embedding coordinate against central finite differences
    /// of the naive loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let (w, s, q) = (3, 2, 2);
        let (rows, labels) = episode(w, s, q, 4, 9);
        let loss = Prototypical {
            ways: w,
            shots: s,
            queries: q,
        };
        let var = Var::from_tensor(&tensor(&rows)).unwrap();
        let value = loss.forward(var.as_tensor(), &labels).unwrap();
        let grad = value.backward().unwrap();
        let g = grad.get(var.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let h = 1e-6;
        for r in 0..rows.len() {
            for k in 0..4 {
                let (mut up, mut down) = (rows.clone(), rows.clone());
                up[r][k] += h;
                down[r][k] -= h;
                let numeric = (naive(&up, w, s, q) - naive(&down, w, s, q)) / (2.0 * h);
                assert!(
                    (g[r][k] - numeric).abs() < 1e-6,
                    "row {r} coord {k}: {} vs {numeric}",
                    g[r][k]
                );
            }
        }
    }

    #[test]
    fn a_batch_that_is_not_the_episode_is_refused() {
        let (rows, mut labels) = episode(3, 1, 2, 4, 1);
        let loss = Prototypical {
            ways: 3,
            shots: 1,
            queries: 2,
        };
        let t = tensor(&rows);
        assert!(loss.forward(&t, &labels).is_ok());
        let wrong_shape = Prototypical {
            ways: 3,
            shots: 2,
            queries: 2,
        };
        let e = wrong_shape.forward(&t, &labels).unwrap_err().to_string();
        assert!(e.contains("12 rows: 3 classes x 2 support"), "{e}");
        labels[5] = 99; // a query of class 1 labelled otherwise
        let e = loss.forward(&t, &labels).unwrap_err().to_string();
        assert!(e.contains("class 1's rows carry different labels"), "{e}");
        let (_, mut same) = episode(3, 1, 2, 4, 1);
        same[1] = 0;
        same[5] = 0;
        same[6] = 0;
        let e = loss.forward(&t, &same).unwrap_err().to_string();
        assert!(e.contains("share label 0"), "{e}");
    }
}
