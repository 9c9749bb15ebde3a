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

use super::{cpu_f32, cpu_f32_tensor};

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
    let mut mean = vec![0f32; features];
    for (b, row) in x.chunks_exact(features).enumerate() {
        let mask_row = mask.map(|m| &m[b * features..(b + 1) * features]);
        for (f, (s, &v)) in mean.iter_mut().zip(row).enumerate() {
            *s += mask_row.map_or(v, |m| v * m[f]);
        }
    }
    let n = batch as f32;
    mean.iter_mut().for_each(|s| *s /= n);
    let mut var = vec![0f32; features];
    for (b, row) in x.chunks_exact(features).enumerate() {
        let mask_row = mask.map(|m| &m[b * features..(b + 1) * features]);
        for (f, ((s, &v), &mu)) in var.iter_mut().zip(row).zip(&mean).enumerate() {
            let c = mask_row.map_or(v, |m| v * m[f]) - mu;
            *s += c * c;
        }
    }
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
        // Written once, row by row (not a copy of the input overwritten in place).
        let mut y = Vec::with_capacity(batch * features);
        for (b, row) in x.chunks_exact(features).enumerate() {
            let mask_row = self
                .mask
                .as_ref()
                .map(|m| &m[b * features..(b + 1) * features]);
            y.extend(row.iter().enumerate().map(|(f, &v)| {
                let d = mask_row.map_or(v, |m| v * m[f]);
                (d - self.mean[f]) / std[f] * gamma[f] + beta[f]
            }));
        }
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
        // xhat, kept for the second pass; sums of g and g * xhat per feature.
        let mut xhat = vec![0f32; batch * features];
        let mut d_beta = vec![0f32; features];
        let mut d_gamma = vec![0f32; features];
        for b in 0..batch {
            let span = b * features..(b + 1) * features;
            let (row, g_row, h_row) = (&xv[span.clone()], &grad[span.clone()], &mut xhat[span]);
            let m = mask_row(b);
            for f in 0..features {
                let d = m.map_or(row[f], |m| row[f] * m[f]);
                let h = (d - self.mean[f]) / std[f];
                h_row[f] = h;
                d_beta[f] += g_row[f];
                d_gamma[f] += g_row[f] * h;
            }
        }
        let n = batch as f32;
        let mut dx = xhat;
        for b in 0..batch {
            let span = b * features..(b + 1) * features;
            let (g_row, dx_row) = (&grad[span.clone()], &mut dx[span]);
            let m = mask_row(b);
            for f in 0..features {
                let h = dx_row[f];
                let v = w[f] / std[f] * (g_row[f] - d_beta[f] / n - h * d_gamma[f] / n);
                dx_row[f] = m.map_or(v, |m| v * m[f]);
            }
        }
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (batch, features), device)?),
            Some(Tensor::from_vec(d_gamma, features, device)?),
            Some(Tensor::from_vec(d_beta, features, device)?),
        ))
    }
}
