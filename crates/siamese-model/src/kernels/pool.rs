//! Max-pool then ReLU as one candle op (CPU, f32, channels last), forward and backward:
//! the end of a Snell block (convolution, batch norm, ReLU, max-pool).
//!
//! ReLU and max-pool commute (the largest of the rectified values is the rectified
//! largest value), so the ReLU runs on the pooled output, a quarter of the elements for
//! 2x2 windows. Plain candle runs the two as separate tensors, and its max-pool backward
//! upsamples the gradient and compares every input with its window's maximum (and maps
//! the rows of an odd-sized input to the wrong windows: 7 rows pooled to 3 upsample back
//! as 0,0,0,1,1,2,2). Here the backward finds each window's first maximum again and
//! sends it the gradient, which is what PyTorch's `MaxPool2d` does.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, cpu_f32_tensor};

/// The input's `(batch, height, width, channels)` and the output's `(height, width)`.
type PoolShapes = ((usize, usize, usize, usize), (usize, usize));

/// `relu(max_pool(x))` over `window x window` windows at stride `window`, rounding the
/// output size down: `x` `[B, H, W, C]` (channels last) to `[B, H / window, W / window,
/// C]`. Apply with `x.apply_op1(MaxPoolRelu { window })`.
#[derive(Debug, Clone, Copy)]
pub struct MaxPoolRelu {
    /// The window's side, and the stride.
    pub window: usize,
}

impl MaxPoolRelu {
    /// `(batch, h, w, c)` of the input and `(h_out, w_out)`.
    fn shapes(&self, l: &Layout) -> candle_core::Result<PoolShapes> {
        let p = self.window;
        match l.dims() {
            &[b, h, w, c] if p > 0 && h >= p && w >= p => Ok(((b, h, w, c), (h / p, w / p))),
            dims => candle_core::bail!(
                "max_pool_relu: input {dims:?}, expected [batch, height, width, channels] of \
                 at least {p}x{p}"
            ),
        }
    }

    /// For each output element of one image (`[h_out, w_out, c]`), the offset in the
    /// image (`[h, w, c]`) of its window's first maximum, and that maximum.
    fn argmax_image(
        &self,
        x: &[f32],
        (h, w, c): (usize, usize, usize),
        mut f: impl FnMut(usize, usize, f32),
    ) {
        let p = self.window;
        let (ho, wo) = (h / p, w / p);
        let mut best = vec![(0usize, f32::NEG_INFINITY); c];
        for oy in 0..ho {
            for ox in 0..wo {
                best.iter_mut()
                    .for_each(|b| *b = (usize::MAX, f32::NEG_INFINITY));
                for dy in 0..p {
                    for dx in 0..p {
                        let at = ((oy * p + dy) * w + ox * p + dx) * c;
                        for (ch, (b, &v)) in best.iter_mut().zip(&x[at..at + c]).enumerate() {
                            // `>` keeps the first maximum; a NaN is taken so it propagates.
                            if b.0 == usize::MAX || v > b.1 || (v.is_nan() && !b.1.is_nan()) {
                                *b = (at + ch, v);
                            }
                        }
                    }
                }
                let out = (oy * wo + ox) * c;
                for (ch, &(at, v)) in best.iter().enumerate() {
                    f(out + ch, at, v);
                }
            }
        }
    }
}

impl CustomOp1 for MaxPoolRelu {
    fn name(&self) -> &'static str {
        "max_pool_relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((b, h, w, c), (ho, wo)) = self.shapes(l)?;
        let x = cpu_f32(s, l, "max_pool_relu input")?;
        let (in_image, out_image) = (h * w * c, ho * wo * c);
        let mut y = vec![0f32; b * out_image];
        y.par_chunks_mut(out_image.max(1))
            .zip(x.par_chunks(in_image.max(1)))
            .for_each(|(y, x)| {
                // A NaN stays NaN (`f32::max` would turn it into 0).
                self.argmax_image(x, (h, w, c), |o, _, v| {
                    y[o] = if v.is_nan() || v > 0.0 { v } else { 0.0 }
                });
            });
        Ok((CpuStorage::F32(y), Shape::from((b, ho, wo, c))))
    }

    /// The gradient of each output goes to its window's first maximum when the output is
    /// positive (the ReLU's gradient), to nothing otherwise.
    fn bwd(
        &self,
        x: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = x.contiguous()?;
        let grad_res = grad_res.contiguous()?;
        let ((b, h, w, c), (ho, wo)) = self.shapes(x.layout())?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad_res.storage_and_layout();
        let xv = cpu_f32_tensor(&xs, xl, "max_pool_relu input")?;
        let grad = cpu_f32_tensor(&gs, gl, "max_pool_relu gradient")?;
        let (in_image, out_image) = (h * w * c, ho * wo * c);
        if grad.len() != b * out_image {
            candle_core::bail!("max_pool_relu backward: gradient shape does not fit");
        }
        let mut dx = vec![0f32; b * in_image];
        dx.par_chunks_mut(in_image.max(1))
            .zip(xv.par_chunks(in_image.max(1)))
            .zip(grad.par_chunks(out_image.max(1)))
            .for_each(|((dx, x), g)| {
                self.argmax_image(x, (h, w, c), |o, at, v| {
                    if v > 0.0 {
                        dx[at] += g[o];
                    }
                });
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
