//! Dropout then batch norm in training mode, as one candle op (CPU, f32), forward and
//! backward.
//!
//! candle-nn's `BatchNorm::forward_train` runs a hidden layer's normalisation as a
//! transpose and strided copy to `[features, batch]`, a mean, a subtraction, a square,
//! another mean, a square root, a division, a scale, a shift and a transpose back (whose
//! output is not contiguous, so the next layer copies it again); dropout before it is one
//! more product, and the backward pass walks all of those nodes, each a full-size
//! temporary. Here the batch statistics are two passes over the layer's output (the
//! mean, then the variance), the normalisation a third, and the backward two more,
//! all in `[batch, features]` order.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, cpu_f32_tensor};

/// Rows per chunk of the passes over `[rows, features]`. The chunks run in parallel and
/// their per-feature sums are added in chunk order, so results do not depend on the
/// thread count; a hidden layer's batch (a few hundred rows) is one chunk, summed row by
/// row as before. A convolution's output seen as `[images * pixels, channels]` (Snell's
/// blocks: 282,240 rows for a 60-way episode) is many.
const CHUNK_ROWS: usize = 4096;

/// `width` sums, to which `add(row, sums)` adds each of `rows` rows' terms, chunk by
/// chunk in parallel, the chunks' sums added in order.
fn sum_rows(rows: usize, width: usize, add: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(CHUNK_ROWS))
        .into_par_iter()
        .map(|c| {
            let mut sums = vec![0f32; width];
            for row in c * CHUNK_ROWS..rows.min((c + 1) * CHUNK_ROWS) {
                add(row, &mut sums);
            }
            sums
        })
        .collect();
    let mut total = vec![0f32; width];
    for part in &partials {
        total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    }
    total
}

/// The batch statistics of `x` `[batch, features]` (CPU, f32, contiguous; read in
/// place) after the dropout multipliers `mask` (as many elements; `None`: no dropout):
/// per feature the mean and the biased variance (divided by `batch`), as batch norm
/// normalises with them. Two passes: the mean, then the variance about it.
pub fn batch_statistics(
    x: &Tensor,
    mask: Option<&[f32]>,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let (batch, features) = x.dims2()?;
    let (storage, layout) = x.storage_and_layout();
    let x = cpu_f32_tensor(&storage, layout, "batch statistics input")?;
    if mask.is_some_and(|m| m.len() != x.len()) {
        candle_core::bail!("batch statistics: the mask does not fit [{batch}, {features}]");
    }
    let row = |b: usize| &x[b * features..(b + 1) * features];
    let mut mean = sum_rows(batch, features, |b, sums| {
        let row = row(b);
        let mask_row = mask.map(|m| &m[b * features..(b + 1) * features]);
        for (f, (s, &v)) in sums.iter_mut().zip(row).enumerate() {
            *s += mask_row.map_or(v, |m| v * m[f]);
        }
    });
    let n = batch as f32;
    mean.iter_mut().for_each(|s| *s /= n);
    let mut var = sum_rows(batch, features, |b, sums| {
        let row = row(b);
        let mask_row = mask.map(|m| &m[b * features..(b + 1) * features]);
        for (f, ((s, &v), &mu)) in sums.iter_mut().zip(row).zip(&mean).enumerate() {
            let c = mask_row.map_or(v, |m| v * m[f]) - mu;
            *s += c * c;
        }
    });
    var.iter_mut().for_each(|s| *s /= n);
    Ok((mean, var))
}

/// `batch_norm(x * mask)` with the batch statistics `mean` and `var` (from
/// [`batch_statistics`] on the same `x` and `mask`): `x` `[batch, features]`, the
/// scale `gamma` and shift `beta` `[features]`. Apply with `x.apply_op3(&gamma, &beta,
/// op)`; the gradient flows to all three, through the statistics as well (they are
/// functions of `x`), as in candle-nn's training mode. The running statistics are the
/// caller's to update.
#[derive(Debug, Clone)]
pub struct DropoutBatchNorm {
    /// The dropout multipliers (0 or `1 / (1 - p)`) of each element, `None` for none.
    pub mask: Option<Arc<Vec<f32>>>,
    /// The batch mean of each feature.
    pub mean: Arc<Vec<f32>>,
    /// The biased batch variance of each feature.
    pub var: Arc<Vec<f32>>,
    /// Added to the variance before its square root.
    pub eps: f64,
}

impl DropoutBatchNorm {
    /// Per feature `sqrt(var + eps)`, in f32 as candle-nn computes it.
    fn std(&self) -> Vec<f32> {
        let eps = self.eps as f32;
        self.var.iter().map(|v| (v + eps).sqrt()).collect()
    }

    fn check(&self, l: &Layout, gamma: usize, beta: usize) -> candle_core::Result<usize> {
        let features = self.mean.len();
        let batch = match l.dims() {
            [b, f] if *f == features => *b,
            dims => candle_core::bail!(
                "dropout_batch_norm: input {dims:?}, expected [batch, {features}]"
            ),
        };
        let mask_ok = self
            .mask
            .as_ref()
            .is_none_or(|m| m.len() == batch * features);
        if self.var.len() != features || gamma != features || beta != features || !mask_ok {
            candle_core::bail!(
                "dropout_batch_norm: statistics, scale, shift or mask do not fit [{batch}, \
                 {features}]"
            );
        }
        Ok(batch)
    }
}

impl CustomOp3 for DropoutBatchNorm {
    fn name(&self) -> &'static str {
        "dropout_batch_norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, "dropout_batch_norm input")?;
        let gamma = cpu_f32(s2, l2, "dropout_batch_norm scale")?;
        let beta = cpu_f32(s3, l3, "dropout_batch_norm shift")?;
        let batch = self.check(l1, gamma.len(), beta.len())?;
        let features = self.mean.len();
        let std = self.std();
        let mut y = vec![0f32; batch * features];
        let chunk = CHUNK_ROWS * features;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(c, (y, x))| {
                let rows = y.chunks_exact_mut(features).zip(x.chunks_exact(features));
                if self.mask.is_none() {
                    // The same arithmetic over plain slices, which the compiler turns
                    // into vector lanes (a spatial batch norm's millions of rows).
                    let stats = self.mean.iter().zip(&std).zip(gamma.iter().zip(beta));
                    let stats: Vec<_> = stats.collect();
                    for (y_row, row) in rows {
                        for ((d, &v), ((&mu, &sd), (&g, &b))) in
                            y_row.iter_mut().zip(row).zip(&stats)
                        {
                            *d = (v - mu) / sd * g + b;
                        }
                    }
                    return;
                }
                for (r, (y_row, row)) in rows.enumerate() {
                    let b = c * CHUNK_ROWS + r;
                    let mask_row = self
                        .mask
                        .as_ref()
                        .map(|m| &m[b * features..(b + 1) * features]);
                    for (f, (d, &v)) in y_row.iter_mut().zip(row).enumerate() {
                        let v = mask_row.map_or(v, |m| v * m[f]);
                        *d = (v - self.mean[f]) / std[f] * gamma[f] + beta[f];
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((batch, features))))
    }

    /// With `xhat = (x * mask - mean) / std` and `g` the incoming gradient: the shift's
    /// gradient is `sum_b g`, the scale's `sum_b g * xhat`, and the input's (the
    /// statistics differentiated too) `mask * gamma / std * (g - mean_b(g) - xhat *
    /// mean_b(g * xhat))`.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = x.contiguous()?;
        let grad_res = grad_res.contiguous()?;
        let batch = self.check(x.layout(), gamma.elem_count(), beta.elem_count())?;
        let features = self.mean.len();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = gamma.storage_and_layout();
        let (gs, gl) = grad_res.storage_and_layout();
        let xv = cpu_f32_tensor(&xs, xl, "dropout_batch_norm input")?;
        let w = cpu_f32_tensor(&ws, wl, "dropout_batch_norm scale")?;
        let grad = cpu_f32_tensor(&gs, gl, "dropout_batch_norm gradient")?;
        if grad.len() != batch * features {
            candle_core::bail!("dropout_batch_norm backward: gradient shape does not fit");
        }
        let std = self.std();
        let mask_row = |b: usize| {
            self.mask
                .as_ref()
                .map(|m| &m[b * features..(b + 1) * features])
        };
        let xhat = |b: usize, f: usize, v: f32| {
            let d = mask_row(b).map_or(v, |m| v * m[f]);
            (d - self.mean[f]) / std[f]
        };
        // Sums of g and of g * xhat per feature, in one pass.
        let sums = sum_rows(batch, 2 * features, |b, sums| {
            let (d_beta, d_gamma) = sums.split_at_mut(features);
            let span = b * features..(b + 1) * features;
            let (x_row, g_row) = (&xv[span.clone()], &grad[span]);
            if self.mask.is_none() {
                // As below, over plain slices (vector lanes).
                let lanes = d_beta.iter_mut().zip(d_gamma.iter_mut());
                let stats = self.mean.iter().zip(&std);
                for (((db, dg), (&v, &g)), (&mu, &sd)) in
                    lanes.zip(x_row.iter().zip(g_row)).zip(stats)
                {
                    *db += g;
                    *dg += g * ((v - mu) / sd);
                }
                return;
            }
            for (f, (&v, &g)) in x_row.iter().zip(g_row).enumerate() {
                d_beta[f] += g;
                d_gamma[f] += g * xhat(b, f, v);
            }
        });
        let (d_beta, d_gamma) = (sums[..features].to_vec(), sums[features..].to_vec());
        let n = batch as f32;
        let mut dx = vec![0f32; batch * features];
        let chunk = CHUNK_ROWS * features;
        dx.par_chunks_mut(chunk)
            .zip(xv.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .enumerate()
            .for_each(|(c, (dx, (x, g)))| {
                let rows = dx.chunks_exact_mut(features).zip(x.chunks_exact(features));
                if self.mask.is_none() {
                    // The same arithmetic over plain slices (vector lanes).
                    let stats: Vec<_> = (0..features)
                        .map(|f| (self.mean[f], std[f], w[f], d_beta[f], d_gamma[f]))
                        .collect();
                    for ((dx_row, x_row), g_row) in rows.zip(g.chunks_exact(features)) {
                        let lanes = dx_row.iter_mut().zip(x_row.iter().zip(g_row));
                        for ((d, (&v, &gv)), &(mu, sd, wf, db, dg)) in lanes.zip(&stats) {
                            let h = (v - mu) / sd;
                            *d = wf / sd * (gv - db / n - h * dg / n);
                        }
                    }
                    return;
                }
                for (r, ((dx_row, x_row), g_row)) in rows.zip(g.chunks_exact(features)).enumerate()
                {
                    let b = c * CHUNK_ROWS + r;
                    let m = mask_row(b);
                    for f in 0..features {
                        let h = xhat(b, f, x_row[f]);
                        let v = w[f] / std[f] * (g_row[f] - d_beta[f] / n - h * d_gamma[f] / n);
                        dx_row[f] = m.map_or(v, |m| v * m[f]);
                    }
                }
            });
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (batch, features), device)?),
            Some(Tensor::from_vec(d_gamma, features, device)?),
            Some(Tensor::from_vec(d_beta, features, device)?),
        ))
    }
}
