//! Principal component analysis in plain Rust: the baseline a learned metric must beat
//! (pixels projected onto as many dimensions as the embedding has, fitted on the
//! training images) and the 2-D view of wider embeddings in plots.

use rayon::prelude::*;

/// A PCA projection: the mean of the fitted rows and the leading principal directions.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Length of an input row.
    pub input_dim: usize,
    /// The fitted rows' mean, `input_dim` values.
    pub mean: Vec<f32>,
    /// The principal directions, orthonormal, largest variance first: one row of
    /// `input_dim` values each.
    pub components: Vec<f32>,
    /// The variance of the fitted rows along each component.
    pub variances: Vec<f64>,
}

/// Most rows [`Pca::fit`] reads: evenly spaced rows beyond this change the leading
/// subspace of image data very little and cost time on every evaluation.
pub const PCA_MAX_FIT_ROWS: usize = 10_000;

/// Widest input whose `d x d` covariance [`Pca::fit`] builds (128 MiB of f64 at 4,096).
/// Wider inputs (a 65,536-D embeddings file would need 32 GiB) are never given a
/// covariance matrix: its products with a block of vectors are taken from the centred
/// rows instead, one pass over their `n x d` values for the whole block. The iteration
/// then runs on [`PCA_OVERSAMPLING`] extra vectors for at most [`PCA_MAX_WIDE_ROUNDS`]
/// rounds (randomized subspace iteration, Halko, Martinsson & Tropp 2011): a flat
/// spectrum (3,000 rows of 20,000 random values) ran 300 rounds, minutes, before.
pub const PCA_MAX_DENSE_DIM: usize = 4096;

/// Vectors iterated beyond the `k` asked for, on inputs wider than
/// [`PCA_MAX_DENSE_DIM`]: the leading `k` then converge at the rate of the gap to the
/// `k + PCA_OVERSAMPLING + 1`-th variance instead of the `k + 1`-th.
pub const PCA_OVERSAMPLING: usize = 8;

/// Most rounds of subspace iteration on inputs wider than [`PCA_MAX_DENSE_DIM`].
pub const PCA_MAX_WIDE_ROUNDS: usize = 30;

/// The covariance of the fitted rows, as [`leading_subspace`] and [`rayleigh_ritz`]
/// use it: only through its products with vectors.
enum Covariance {
    /// The `d x d` matrix, for inputs up to [`PCA_MAX_DENSE_DIM`] wide.
    Dense(Vec<f64>),
    /// The centred rows (`n x d`) and `1 / (n - 1)`: `C v = X^T (X v) / (n - 1)`.
    Rows { centred: Vec<f32>, scale: f64 },
}

impl Covariance {
    /// `C v` for each row `v` of `vs` (`d` columns), row by row.
    fn times_block(&self, vs: &[f64], d: usize) -> Vec<f64> {
        let Covariance::Rows { centred, scale } = self else {
            return vs
                .par_chunks_exact(d)
                .flat_map_iter(|v| self.times(v))
                .collect();
        };
        // One pass over the rows for all vectors, in f32 so that it vectorises; a fixed
        // number of chunks, summed in order, so the result does not depend on threads.
        let v32: Vec<f32> = vs.iter().map(|&x| x as f32).collect();
        let n = centred.len() / d.max(1);
        let chunk_rows = n.div_ceil(16).max(1);
        let partial: Vec<Vec<f32>> = centred
            .par_chunks(chunk_rows * d)
            .map(|rows| {
                let mut acc = vec![0f32; vs.len()];
                for row in rows.chunks_exact(d) {
                    for (v, out) in v32.chunks_exact(d).zip(acc.chunks_exact_mut(d)) {
                        let t = dot32(row, v) as f32;
                        out.iter_mut().zip(row).for_each(|(o, &x)| *o += t * x);
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f64; vs.len()];
        for acc in partial {
            out.iter_mut()
                .zip(acc)
                .for_each(|(o, a)| *o += f64::from(a) * scale);
        }
        out
    }

    /// `C v` for a vector `v` of `d` values.
    fn times(&self, v: &[f64]) -> Vec<f64> {
        let d = v.len();
        match self {
            Covariance::Dense(m) => m.chunks_exact(d).map(|row| dot64(row, v)).collect(),
            Covariance::Rows { centred, scale } => {
                let mut out = vec![0f64; d];
                for row in centred.chunks_exact(d) {
                    let t: f64 = row.iter().zip(v).map(|(&x, &y)| f64::from(x) * y).sum();
                    let t = t * scale;
                    out.iter_mut()
                        .zip(row)
                        .for_each(|(o, &x)| *o += f64::from(x) * t);
                }
                out
            }
        }
    }
}

impl Pca {
    /// Fits `k` components to `rows` (row-major, `input_dim` columns): subspace
    /// iteration on the covariance matrix from a start drawn with `seed`, then the
    /// directions within the subspace ordered by variance (Rayleigh-Ritz). At most
    /// [`PCA_MAX_FIT_ROWS`] evenly spaced rows are read.
    ///
    /// Panics when `k` is 0 or above `input_dim`, or `rows` is not whole rows.
    pub fn fit(rows: &[f32], input_dim: usize, k: usize, seed: u64) -> Pca {
        assert!(k > 0 && k <= input_dim, "0 < k <= input_dim");
        assert_eq!(rows.len() % input_dim, 0, "whole rows");
        let n_all = rows.len() / input_dim;
        let step = n_all.div_ceil(PCA_MAX_FIT_ROWS).max(1);
        let picked: Vec<&[f32]> = rows.chunks_exact(input_dim).step_by(step).collect();
        let n = picked.len();
        let mut mean = vec![0f64; input_dim];
        for row in &picked {
            mean.iter_mut()
                .zip(*row)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let scale = 1.0 / (n.max(2) - 1) as f64;
        let cov = if input_dim > PCA_MAX_DENSE_DIM {
            let centred = picked
                .iter()
                .flat_map(|r| r.iter().zip(&mean).map(|(&x, &m)| x - m as f32))
                .collect();
            Covariance::Rows { centred, scale }
        } else {
            Covariance::Dense(dense_covariance(&picked, &mean, scale))
        };
        let (iterated, rounds) = match cov {
            Covariance::Rows { .. } => ((k + PCA_OVERSAMPLING).min(input_dim), PCA_MAX_WIDE_ROUNDS),
            Covariance::Dense(_) => (k, 300),
        };
        let basis = leading_subspace(&cov, input_dim, iterated, rounds, seed);
        let (mut components, mut variances) = rayleigh_ritz(&cov, input_dim, &basis);
        components.truncate(k * input_dim);
        variances.truncate(k);
        Pca {
            input_dim,
            mean: mean.iter().map(|&m| m as f32).collect(),
            components: components.iter().map(|&v| v as f32).collect(),
            variances,
        }
    }

    /// Number of components.
    pub fn dim(&self) -> usize {
        self.components.len() / self.input_dim
    }

    /// Projects `rows` (row-major, `input_dim` columns); returns `dim()` values a row.
    pub fn project(&self, rows: &[f32]) -> Vec<f32> {
        assert_eq!(rows.len() % self.input_dim, 0, "whole rows");
        let d = self.input_dim;
        rows.par_chunks_exact(d)
            .flat_map_iter(|row| {
                let centred: Vec<f32> = row.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
                self.components
                    .chunks_exact(d)
                    .map(move |c| dot32(&centred, c) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The `d x d` covariance of the rows `picked` about `mean`, times `scale`.
fn dense_covariance(picked: &[&[f32]], mean: &[f64], scale: f64) -> Vec<f64> {
    let input_dim = mean.len();
    // Centred columns: the covariance entries are then contiguous dot products.
    let columns: Vec<Vec<f32>> = (0..input_dim)
        .into_par_iter()
        .map(|c| picked.iter().map(|r| r[c] - mean[c] as f32).collect())
        .collect();
    let upper: Vec<Vec<f64>> = (0..input_dim)
        .into_par_iter()
        .map(|i| {
            (i..input_dim)
                .map(|j| dot32(&columns[i], &columns[j]) * scale)
                .collect()
        })
        .collect();
    let mut cov = vec![0f64; input_dim * input_dim];
    for (i, row) in upper.iter().enumerate() {
        for (off, &v) in row.iter().enumerate() {
            cov[i * input_dim + i + off] = v;
            cov[(i + off) * input_dim + i] = v;
        }
    }
    cov
}

/// Dot product with eight running sums, so the compiler can vectorise it.
fn dot32(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    f64::from(acc.iter().sum::<f32>() + tail)
}

/// Orthonormal rows spanning the leading `k`-dimensional invariant subspace of the
/// symmetric `d x d` matrix `m`: subspace iteration with Gram-Schmidt, stopped when the
/// subspace no longer moves (or after `max_rounds`).
fn leading_subspace(m: &Covariance, d: usize, k: usize, max_rounds: usize, seed: u64) -> Vec<f64> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut q: Vec<f64> = (0..k * d)
        .map(|_| {
            // splitmix64: a fixed, portable start.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    orthonormalise(&mut q, d);
    for _ in 0..max_rounds {
        let mut next = m.times_block(&q, d);
        orthonormalise(&mut next, d);
        // ||Q_old Q_new^T||_F^2 is k exactly when the two span the same subspace.
        let overlap: f64 = q
            .chunks_exact(d)
            .flat_map(|a| {
                next.chunks_exact(d)
                    .map(move |b| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>().powi(2))
            })
            .sum();
        q = next;
        if k as f64 - overlap < 1e-12 * k as f64 {
            break;
        }
    }
    q
}

/// The principal directions within the subspace spanned by the orthonormal rows of
/// `basis`, largest variance first, and their variances: the eigenvectors of the
/// covariance `m` restricted to the subspace.
fn rayleigh_ritz(m: &Covariance, d: usize, basis: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let k = basis.len() / d;
    let mq = m.times_block(basis, d);
    let mut h: Vec<f64> = basis
        .chunks_exact(d)
        .flat_map(|a| mq.chunks_exact(d).map(move |mb| dot64(a, mb)))
        .collect();
    let vectors = jacobi_eigen(&mut h, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]).then(a.cmp(&b)));
    let mut components = vec![0f64; k * d];
    for (slot, &e) in order.iter().enumerate() {
        let out = &mut components[slot * d..(slot + 1) * d];
        for (r, row) in basis.chunks_exact(d).enumerate() {
            let w = vectors[r * k + e];
            out.iter_mut().zip(row).for_each(|(o, x)| *o += w * x);
        }
    }
    let variances = order.iter().map(|&e| h[e * k + e]).collect();
    (components, variances)
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Cyclic Jacobi rotations on the symmetric `n x n` matrix `a` until it is diagonal:
/// leaves the eigenvalues on its diagonal and returns the eigenvectors as the columns
/// of an `n x n` matrix.
fn jacobi_eigen(a: &mut [f64], n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n * n)
        .map(|i| f64::from(u8::from(i / n == i % n)))
        .collect();
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        if off <= 1e-30 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q]: t = tan of its angle, the root of
                // t^2 + 2 theta t - 1 = 0 of smaller magnitude.
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                let rotate = |x: &mut [f64], i: usize, j: usize| {
                    let (xi, xj) = (x[i], x[j]);
                    x[i] = c * xi - s * xj;
                    x[j] = s * xi + c * xj;
                };
                for r in 0..n {
                    rotate(a, r * n + p, r * n + q);
                    rotate(&mut v, r * n + p, r * n + q);
                }
                for col in 0..n {
                    rotate(a, p * n + col, q * n + col);
                }
            }
        }
    }
    v
}

/// Modified Gram-Schmidt on the rows of `q` (`d` columns). A row that vanishes (the
/// matrix has lower rank) is replaced by a unit vector orthogonal to the others.
fn orthonormalise(q: &mut [f64], d: usize) {
    let k = q.len() / d;
    for r in 0..k {
        let (done, rest) = q.split_at_mut(r * d);
        let row = &mut rest[..d];
        for prev in done.chunks_exact(d) {
            let p: f64 = row.iter().zip(prev).map(|(a, b)| a * b).sum();
            row.iter_mut().zip(prev).for_each(|(a, b)| *a -= p * b);
        }
        let mut norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        let mut axis = 0;
        while norm < 1e-12 && axis < d {
            row.iter_mut().for_each(|a| *a = 0.0);
            row[axis] = 1.0;
            for prev in done.chunks_exact(d) {
                let p = prev[axis];
                row.iter_mut().zip(prev).for_each(|(a, b)| *a -= p * b);
            }
            norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
            axis += 1;
        }
        row.iter_mut().for_each(|a| *a /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_inputs_are_fitted_without_a_covariance_matrix() {
        // Issue #28: 10 rows of 65,536 values made `explore` and `plot` abort building
        // a 32 GiB covariance. Row r is r along axis 0 and (r % 3) along axis 5, so the
        // leading direction is axis 0.
        let d = 65_536;
        let mut rows = vec![0f32; 10 * d];
        for r in 0..10 {
            rows[r * d] = r as f32;
            rows[r * d + 5] = (r % 3) as f32;
        }
        let pca = Pca::fit(&rows, d, 2, 0);
        assert!(pca.components[0].abs() > 0.99, "{}", pca.components[0]);
        assert!(
            pca.components[d + 5].abs() > 0.99,
            "{}",
            pca.components[d + 5]
        );
        // Both ways of taking covariance products agree where both apply.
        let (n, d) = (40, 12);
        let data: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0)
            .collect();
        let picked: Vec<&[f32]> = data.chunks_exact(d).collect();
        let mean: Vec<f64> = (0..d)
            .map(|c| picked.iter().map(|r| f64::from(r[c])).sum::<f64>() / n as f64)
            .collect();
        let scale = 1.0 / (n - 1) as f64;
        let dense = Covariance::Dense(dense_covariance(&picked, &mean, scale));
        let centred = picked
            .iter()
            .flat_map(|r| r.iter().zip(&mean).map(|(&x, &m)| x - m as f32))
            .collect();
        let rows = Covariance::Rows { centred, scale };
        let v: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
        for (a, b) in dense.times(&v).iter().zip(rows.times(&v)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // And the one-pass block product (in f32) with the products one by one.
        let block: Vec<f64> = (0..3 * d).map(|i| (i as f64 * 0.11).cos()).collect();
        let one_by_one: Vec<f64> = block.chunks(d).flat_map(|v| dense.times(v)).collect();
        for (a, b) in one_by_one.iter().zip(rows.times_block(&block, d)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn finds_the_directions_of_largest_spread() {
        // Points spread 10 along (1, 1, 0)/sqrt 2, 3 along z, 0.1 along (1, -1, 0).
        let mut rows = Vec::new();
        for i in 0..200 {
            let t = (i as f32 * 0.37).sin();
            let u = (i as f32 * 1.91).cos();
            let w = (i as f32 * 2.73).sin();
            let (a, b, c) = (10.0 * t, 3.0 * u, 0.1 * w);
            let s = std::f32::consts::FRAC_1_SQRT_2;
            rows.extend([5.0 + s * (a + c), -2.0 + s * (a - c), 1.0 + b]);
        }
        let pca = Pca::fit(&rows, 3, 2, 7);
        assert_eq!(pca.dim(), 2);
        assert!((pca.mean[0] - 5.0).abs() < 0.5 && (pca.mean[2] - 1.0).abs() < 0.5);
        // Largest spread first: (1, 1, 0)/sqrt 2, then (0, 0, 1); (1, -1, 0) is left out.
        let c = &pca.components;
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0] * s + c[1] * s).abs() > 0.999, "{c:?}");
        assert!(c[5].abs() > 0.999, "{c:?}");
        assert!(pca.variances[0] > pca.variances[1] && pca.variances[1] > 0.0);
        let in_span = |v: [f32; 3]| -> f32 {
            pca.components
                .chunks_exact(3)
                .map(|c| (c[0] * v[0] + c[1] * v[1] + c[2] * v[2]).powi(2))
                .sum()
        };
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((in_span([s, s, 0.0]) - 1.0).abs() < 1e-3, "{pca:?}");
        assert!((in_span([0.0, 0.0, 1.0]) - 1.0).abs() < 1e-3);
        assert!(in_span([s, -s, 0.0]) < 1e-3);
        // Components are orthonormal.
        let c = &pca.components;
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&c[..3], &c[..3]) - 1.0).abs() < 1e-5);
        assert!(dot(&c[..3], &c[3..]).abs() < 1e-5);
    }

    #[test]
    fn projection_is_the_dot_product_with_each_component() {
        let rows: Vec<f32> = (0..60).map(|i| ((i * 7919) % 23) as f32).collect();
        let pca = Pca::fit(&rows, 4, 3, 1);
        let p = pca.project(&rows[..8]);
        assert_eq!(p.len(), 6);
        for (r, row) in rows[..8].chunks(4).enumerate() {
            for (c, comp) in pca.components.chunks(4).enumerate() {
                let direct: f32 = (0..4).map(|i| (row[i] - pca.mean[i]) * comp[i]).sum();
                assert!((p[r * 3 + c] - direct).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn rank_deficient_data_still_gives_orthonormal_components() {
        // Every row the same: zero covariance.
        let rows = vec![1.0f32; 5 * 10];
        let pca = Pca::fit(&rows, 5, 3, 0);
        let c = &pca.components;
        for a in 0..3 {
            for b in 0..3 {
                let d: f32 = (0..5).map(|i| c[a * 5 + i] * c[b * 5 + i]).sum();
                assert!((d - f32::from(u8::from(a == b))).abs() < 1e-5, "{c:?}");
            }
        }
    }
}
