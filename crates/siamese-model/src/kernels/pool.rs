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

    /// Calls `visit(tap, values)` for each tap of output pixel `(oy, ox)`'s window, in
    /// row-major order: `values` are the tap's `c` channels in the image `x` (`[h, w, c]`
    /// flattened), `tap` its offset there.
    fn taps<'x>(
        &self,
        x: &'x [f32],
        (w, c): (usize, usize),
        (oy, ox): (usize, usize),
        mut visit: impl FnMut(usize, &'x [f32]),
    ) {
        let p = self.window;
        for dy in 0..p {
            for dx in 0..p {
                let at = ((oy * p + dy) * w + ox * p + dx) * c;
                visit(at, &x[at..at + c]);
            }
        }
    }

    /// `relu(max)` of each window of one image `x` (`[h, w, c]`) into `y` (`[h_out,
    /// w_out, c]`), channel by channel in vector lanes. A NaN in a window is its maximum
    /// (not hidden by the ReLU, as `f32::max` would).
    fn forward_image(&self, x: &[f32], (h, w, c): (usize, usize, usize), y: &mut [f32]) {
        let p = self.window;
        let (ho, wo) = (h / p, w / p);
        for oy in 0..ho {
            for ox in 0..wo {
                let out = &mut y[(oy * wo + ox) * c..][..c];
                out.fill(0.0);
                self.taps(x, (w, c), (oy, ox), |_, values| {
                    for (o, &v) in out.iter_mut().zip(values) {
                        *o = if v > *o || v.is_nan() { v } else { *o };
                    }
                });
            }
        }
    }

    /// The gradient of one image: each output's `g` to its window's first maximum in
    /// `x`, when that maximum is positive (the ReLU's gradient), into `dx` (zeroed).
    fn backward_image(
        &self,
        x: &[f32],
        (h, w, c): (usize, usize, usize),
        g: &[f32],
        dx: &mut [f32],
    ) {
        let p = self.window;
        let (ho, wo) = (h / p, w / p);
        // Each channel's largest value so far (above 0: only those take a gradient)
        // and where it is.
        let mut best = vec![0f32; c];
        let mut at_best = vec![usize::MAX; c];
        for oy in 0..ho {
            for ox in 0..wo {
                best.fill(0.0);
                at_best.fill(usize::MAX);
                self.taps(x, (w, c), (oy, ox), |at, values| {
                    let lanes = best.iter_mut().zip(at_best.iter_mut()).zip(values);
                    for (ch, ((b, a), &v)) in lanes.enumerate() {
                        if v > *b {
                            (*b, *a) = (v, at + ch);
                        }
                    }
                });
                let out = &g[(oy * wo + ox) * c..][..c];
                for (&a, &gv) in at_best.iter().zip(out) {
                    if a != usize::MAX {
                        dx[a] += gv;
                    }
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
            .for_each(|(y, x)| self.forward_image(x, (h, w, c), y));
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
            .for_each(|((dx, x), g)| self.backward_image(x, (h, w, c), g, dx));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
