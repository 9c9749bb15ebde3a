//! Convolution + bias + ReLU as one candle op (CPU, f32, NCHW), forward and backward.
//!
//! Plain candle runs this layer as a padding copy, a convolution, a broadcast bias add
//! and a ReLU, each a fresh tensor; its backward goes through a transposed convolution
//! and a per-element dot-product path. Here each layer is one pass of im2col and one
//! GEMM per chunk of images, with bias and ReLU folded into the pass that writes the
//! output, and the backward is two GEMMs and a col2im per chunk. Chunks are sized so
//! the im2col buffer stays near the core's L2 cache, are processed in parallel (rayon,
//! one chunk per task, single-threaded GEMMs inside), and reuse per-thread buffers
//! across calls, so a training step allocates only its outputs.
//!
//! Results are deterministic: partial weight gradients are kept per chunk and summed
//! in chunk order, whatever the number of threads.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::{cpu_f32, cpu_f32_tensor};

/// The shape of one convolution: input `[c_in, h_in, w_in]`, `c_out` filters of
/// `kernel x kernel`, a stride, zero padding before (top, left) and the output size
/// (whatever padding lies after is implied by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h_in: usize,
    /// Input width.
    pub w_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero rows added above the input.
    pub pad_top: usize,
    /// Zero columns added left of the input.
    pub pad_left: usize,
    /// Output height.
    pub h_out: usize,
    /// Output width.
    pub w_out: usize,
}

/// Floats of im2col buffer per chunk: 256 Ki floats = 1 MiB, about one core's L2.
const CHUNK_FLOATS: usize = 1 << 18;

impl ConvGeometry {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn k(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.h_out * self.w_out
    }

    fn images_per_chunk(&self) -> usize {
        (CHUNK_FLOATS / (self.k() * self.p()).max(1)).max(1)
    }

    /// Calls `f(k, i, c, ky, kx)` for every im2col row `k` (input channel `c`, kernel
    /// tap `(ky, kx)`) and image `i` of a chunk of `nb`: the walk that im2col and
    /// col2im share.
    fn for_each_tap(&self, nb: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        for c in 0..self.c_in {
            for ky in 0..self.kernel {
                for kx in 0..self.kernel {
                    let k = (c * self.kernel + ky) * self.kernel + kx;
                    for i in 0..nb {
                        f(k, i, c, ky, kx);
                    }
                }
            }
        }
    }

    /// im2col of `nb` images (`x`, NCHW, contiguous) into `col` as a `[K, nb * P]`
    /// row-major matrix: column `i * P + p` holds the receptive field of output pixel
    /// `p` of image `i`, zero where it falls in the padding.
    fn im2col(&self, x: &[f32], nb: usize, col: &mut [f32]) {
        let (p, hw) = (self.p(), self.h_in * self.w_in);
        self.for_each_tap(nb, |k, i, c, ky, kx| {
            let plane = &x[(i * self.c_in + c) * hw..][..hw];
            self.gather(plane, ky, kx, &mut col[(k * nb + i) * p..][..p]);
        });
    }

    /// The output columns `ox` whose input column `ox * stride + kx - pad_left` lies
    /// inside the image, as a range: the loops below run branch-free inside it.
    fn valid_columns(&self, kx: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        // ox * s + kx >= pad_left  and  ox * s + kx - pad_left < w_in
        let lo = self.pad_left.saturating_sub(kx).div_ceil(s);
        let hi = (self.w_in + self.pad_left)
            .saturating_sub(kx)
            .div_ceil(s)
            .min(self.w_out);
        lo.min(hi)..hi
    }

    /// The kernel tap `(ky, kx)` of one input plane at every output pixel.
    fn gather(&self, plane: &[f32], ky: usize, kx: usize, out: &mut [f32]) {
        let cols = self.valid_columns(kx);
        for oy in 0..self.h_out {
            let out_row = &mut out[oy * self.w_out..(oy + 1) * self.w_out];
            let iy = (oy * self.stride + ky).wrapping_sub(self.pad_top);
            if iy >= self.h_in || cols.is_empty() {
                out_row.fill(0.0);
                continue;
            }
            let in_row = &plane[iy * self.w_in..(iy + 1) * self.w_in];
            out_row[..cols.start].fill(0.0);
            out_row[cols.end..].fill(0.0);
            let first = cols.start * self.stride + kx - self.pad_left;
            let dst = &mut out_row[cols.clone()];
            if self.stride == 1 {
                dst.copy_from_slice(&in_row[first..first + dst.len()]);
            } else {
                for (o, &v) in dst
                    .iter_mut()
                    .zip(in_row[first..].iter().step_by(self.stride))
                {
                    *o = v;
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: adds each column entry back to the input
    /// pixel it was read from. `dx` (`nb` images) must be zeroed by the caller.
    fn col2im(&self, col: &[f32], nb: usize, dx: &mut [f32]) {
        let (p, hw) = (self.p(), self.h_in * self.w_in);
        self.for_each_tap(nb, |k, i, c, ky, kx| {
            let plane = &mut dx[(i * self.c_in + c) * hw..][..hw];
            self.scatter(&col[(k * nb + i) * p..][..p], ky, kx, plane);
        });
    }

    fn scatter(&self, src: &[f32], ky: usize, kx: usize, plane: &mut [f32]) {
        let cols = self.valid_columns(kx);
        if cols.is_empty() {
            return;
        }
        for oy in 0..self.h_out {
            let iy = (oy * self.stride + ky).wrapping_sub(self.pad_top);
            if iy >= self.h_in {
                continue;
            }
            let in_row = &mut plane[iy * self.w_in..(iy + 1) * self.w_in];
            let src_row = &src[oy * self.w_out..(oy + 1) * self.w_out][cols.clone()];
            let first = cols.start * self.stride + kx - self.pad_left;
            for (d, &g) in in_row[first..].iter_mut().step_by(self.stride).zip(src_row) {
                *d += g;
            }
        }
    }
}

thread_local! {
    /// Per-thread scratch buffers, reused across calls (rayon's workers live as long
    /// as the process), so the hot loop does not fault in fresh pages every step.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch slices of the given lengths (contents unspecified).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let [x, y] = &mut *bufs;
        if x.len() < a {
            x.resize(a, 0.0);
        }
        if y.len() < b {
            y.resize(b, 0.0);
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// `relu(conv(x, weight) + bias)` with `x` `[B, c_in, h_in, w_in]`, `weight`
/// `[c_out, c_in, k, k]`, `bias` `[c_out]`. Apply with
/// `x.apply_op3(&weight, &bias, Conv2dRelu { .. })`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dRelu {
    /// The convolution's shape.
    pub geometry: ConvGeometry,
    /// Whether the backward pass computes the input's gradient (not needed for the
    /// first layer, whose input is the images).
    pub input_grad: bool,
}

impl Conv2dRelu {
    fn batch(&self, l: &Layout) -> candle_core::Result<usize> {
        let g = &self.geometry;
        match l.dims() {
            [b, c, h, w] if (*c, *h, *w) == (g.c_in, g.h_in, g.w_in) => Ok(*b),
            dims => candle_core::bail!(
                "conv2d_relu: input {dims:?}, expected [batch, {}, {}, {}]",
                g.c_in,
                g.h_in,
                g.w_in
            ),
        }
    }
}

impl CustomOp3 for Conv2dRelu {
    fn name(&self) -> &'static str {
        "conv2d_relu"
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
        let g = self.geometry;
        let batch = self.batch(l1)?;
        let x = cpu_f32(s1, l1, "conv2d_relu input")?;
        let w = cpu_f32(s2, l2, "conv2d_relu weight")?;
        let b = cpu_f32(s3, l3, "conv2d_relu bias")?;
        let (k, p, o) = (g.k(), g.p(), g.c_out);
        if w.len() != o * k || b.len() != o {
            candle_core::bail!("conv2d_relu: weight or bias size does not match {g:?}");
        }
        let per_chunk = g.images_per_chunk();
        let in_image = g.c_in * g.h_in * g.w_in;
        let mut out = vec![0f32; batch * o * p];
        out.par_chunks_mut(per_chunk * o * p)
            .zip(x.par_chunks(per_chunk * in_image))
            .for_each(|(out, x)| {
                let nb = x.len() / in_image;
                with_scratch(k * nb * p, o * nb * p, |col, y| {
                    g.im2col(x, nb, col);
                    matmul(y, Mat::rows(w, o, k), Mat::rows(col, k, nb * p), false, 1);
                    // y is [O, nb * P]; the output is [nb, O, P].
                    for (oc, y_row) in y.chunks_exact(nb * p).enumerate() {
                        for (i, y_img) in y_row.chunks_exact(p).enumerate() {
                            let dst = &mut out[(i * o + oc) * p..][..p];
                            for (d, &v) in dst.iter_mut().zip(y_img) {
                                *d = (v + b[oc]).max(0.0);
                            }
                        }
                    }
                });
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, o, g.h_out, g.w_out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let (k, p, o) = (g.k(), g.p(), g.c_out);
        let x = x.contiguous()?;
        let grad_res = grad_res.contiguous()?;
        let batch = self.batch(x.layout())?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = grad_res.storage_and_layout();
        let xv = cpu_f32_tensor(&xs, xl, "conv2d_relu input")?;
        let w = cpu_f32_tensor(&ws, wl, "conv2d_relu weight")?;
        let out = cpu_f32_tensor(&rs, rl, "conv2d_relu output")?;
        let grad = cpu_f32_tensor(&gs, gl, "conv2d_relu gradient")?;
        if grad.len() != batch * o * p || out.len() != grad.len() {
            candle_core::bail!("conv2d_relu backward: gradient shape does not match {g:?}");
        }

        let per_chunk = g.images_per_chunk();
        let in_image = g.c_in * g.h_in * g.w_in;
        let mut dx = if self.input_grad {
            vec![0f32; batch * in_image]
        } else {
            Vec::new()
        };
        let chunks: Vec<usize> = (0..batch.div_ceil(per_chunk)).collect();
        // One (dW, db) partial per chunk, summed in chunk order below.
        let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(chunks.len());
        let dx_chunks: Vec<&mut [f32]> = if self.input_grad {
            dx.chunks_mut(per_chunk * in_image).collect()
        } else {
            chunks.iter().map(|_| <&mut [f32]>::default()).collect()
        };
        chunks
            .par_iter()
            .zip(dx_chunks)
            .map(|(&c, dx)| {
                let first = c * per_chunk;
                let nb = per_chunk.min(batch - first);
                let mut dw = vec![0f32; o * k];
                let mut db = vec![0f32; o];
                with_scratch(k * nb * p, o * nb * p, |col, gy| {
                    // gy: the gradient after the ReLU, as [O, nb * P] to match im2col.
                    for i in 0..nb {
                        for oc in 0..o {
                            let at = ((first + i) * o + oc) * p;
                            let src = &grad[at..at + p];
                            let alive = &out[at..at + p];
                            let dst = &mut gy[oc * nb * p + i * p..][..p];
                            for ((d, &gv), &y) in dst.iter_mut().zip(src).zip(alive) {
                                *d = if y > 0.0 { gv } else { 0.0 };
                            }
                        }
                    }
                    for (oc, row) in gy.chunks_exact(nb * p).enumerate() {
                        db[oc] = row.iter().sum();
                    }
                    g.im2col(&xv[first * in_image..(first + nb) * in_image], nb, col);
                    let gy_mat = Mat::rows(gy, o, nb * p);
                    // dW = gy · col^T
                    matmul(&mut dw, gy_mat, Mat::rows(col, k, nb * p).t(), false, 1);
                    if self.input_grad {
                        // dcol = W^T · gy, into the col buffer (its im2col is used up).
                        matmul(col, Mat::rows(w, o, k).t(), gy_mat, false, 1);
                        g.col2im(col, nb, dx);
                    }
                });
                (dw, db)
            })
            .collect_into_vec(&mut partials);
        let mut dw = vec![0f32; o * k];
        let mut db = vec![0f32; o];
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let device = weight.device();
        let dw = Tensor::from_vec(dw, weight.shape(), device)?;
        let db = Tensor::from_vec(db, o, device)?;
        let dx = if self.input_grad {
            Some(Tensor::from_vec(dx, x.shape(), device)?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}
