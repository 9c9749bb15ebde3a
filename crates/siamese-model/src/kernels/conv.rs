//! Convolution + bias + ReLU as one candle op (CPU, f32, NCHW), forward and backward.
//!
//! Plain candle runs this layer as a padding copy, a convolution, a broadcast bias add
//! and a ReLU, each a fresh tensor; its backward goes through a transposed convolution
//! and a per-element dot-product path. Here each layer is one pass of im2col and one
//! GEMM per chunk of images, with bias and ReLU folded into the pass that writes the
//! output, and the backward is two GEMMs and a col2im per chunk. im2col reads from a
//! zero-padded copy of the chunk (and col2im writes into one), so their inner loops are
//! plain strided moves, with the stride a compile-time constant. Chunks are sized so
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
use super::{cpu_f32, cpu_f32_tensor, zeroed};

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

    /// Images per chunk for a batch: at most what fits [`CHUNK_FLOATS`], and spread
    /// over a multiple of 4 chunks so that 1, 2 or 4 threads get equal shares (128
    /// images in 15 chunks of 9 left one of 2 threads idle an eighth of the time). It
    /// depends on the batch only, never on the thread count, so results do not either.
    pub fn images_per_chunk(&self, batch: usize) -> usize {
        let most = (CHUNK_FLOATS / (self.k() * self.p()).max(1)).max(1);
        let chunks = batch.div_ceil(most).next_multiple_of(4);
        batch.div_ceil(chunks).max(1)
    }

    /// Height and width of an input plane with its padding: exactly the rows and
    /// columns the output reads (the input is cropped where the stride leaves its last
    /// rows or columns unread).
    fn padded(&self) -> (usize, usize) {
        (
            (self.h_out - 1) * self.stride + self.kernel,
            (self.w_out - 1) * self.stride + self.kernel,
        )
    }

    /// The fused kernel's zero padding for a `[B, c_in, h_in, w_in]` tensor, with
    /// candle's own ops: the input cropped to the rows and columns the output reads,
    /// then zero-padded, so a convolution without padding gives this geometry's output.
    /// The plain candle path pads this way rather than through candle's `conv2d`
    /// padding, whose backward (candle 0.11) takes the width of the input gradient from
    /// the height's leftover rows and gets it wrong when the two differ.
    pub fn pad_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (hp, wp) = self.padded();
        let (rows, cols) = self.interior();
        x.narrow(2, 0, rows.len())?
            .narrow(3, 0, cols.len())?
            .pad_with_zeros(2, rows.start, hp - rows.end)?
            .pad_with_zeros(3, cols.start, wp - cols.end)
    }

    /// Floats of a chunk of `nb` padded input planes.
    fn padded_len(&self, nb: usize) -> usize {
        let (hp, wp) = self.padded();
        nb * self.c_in * hp * wp
    }

    /// The padded rows and columns that hold input pixels (padded row `py` is input
    /// row `py - pad_top`, likewise for columns).
    fn interior(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (hp, wp) = self.padded();
        let rows = self.pad_top.min(hp)..(self.pad_top + self.h_in).min(hp);
        let cols = self.pad_left.min(wp)..(self.pad_left + self.w_in).min(wp);
        (rows, cols)
    }

    /// Copies `nb` images (`x`, NCHW, contiguous) into `padded`, zeros around them.
    fn pad(&self, x: &[f32], nb: usize, padded: &mut [f32]) {
        let (hp, wp) = self.padded();
        let (rows, cols) = self.interior();
        let hw = self.h_in * self.w_in;
        for (plane, out) in x
            .chunks_exact(hw)
            .zip(padded.chunks_exact_mut(hp * wp))
            .take(nb * self.c_in)
        {
            for (py, out_row) in out.chunks_exact_mut(wp).enumerate() {
                if !rows.contains(&py) {
                    out_row.fill(0.0);
                    continue;
                }
                let iy = py - self.pad_top;
                out_row[..cols.start].fill(0.0);
                out_row[cols.end..].fill(0.0);
                out_row[cols.clone()].copy_from_slice(&plane[iy * self.w_in..][..cols.len()]);
            }
        }
    }

    /// The adjoint of [`Self::pad`]: the interior of `padded` into `dx`, which must be
    /// zeroed by the caller (input pixels the output never reads get no gradient).
    fn crop(&self, padded: &[f32], nb: usize, dx: &mut [f32]) {
        let (hp, wp) = self.padded();
        let (rows, cols) = self.interior();
        let hw = self.h_in * self.w_in;
        for (plane, src) in dx
            .chunks_exact_mut(hw)
            .zip(padded.chunks_exact(hp * wp))
            .take(nb * self.c_in)
        {
            for py in rows.clone() {
                let iy = py - self.pad_top;
                plane[iy * self.w_in..][..cols.len()]
                    .copy_from_slice(&src[py * wp..][cols.clone()]);
            }
        }
    }

    /// Calls `f(k, i, c, ky, kx)` for every im2col row `k` (input channel `c`, kernel
    /// tap `(ky, kx)`) and image `i` of a chunk of `nb`: the walk that im2col and
    /// col2im share.
    #[inline(always)]
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

    /// im2col of `nb` padded images (from [`Self::pad`]) into `col` as a
    /// `[K, nb * P]` row-major matrix: column `i * P + p` holds the receptive field of
    /// output pixel `p` of image `i`.
    fn im2col(&self, padded: &[f32], nb: usize, col: &mut [f32]) {
        // The stride as a constant in the common cases, so the inner loops compile to
        // plain (stride 1) or de-interleaving (stride 2) vector moves.
        match self.stride {
            1 => self.im2col_strided::<1>(padded, nb, col),
            2 => self.im2col_strided::<2>(padded, nb, col),
            _ => self.im2col_strided::<0>(padded, nb, col),
        }
    }

    /// Calls `f(src, dst)` for every output row of every im2col row and image of a
    /// chunk of `nb`: `col[dst..dst + w_out]` holds the padded pixels
    /// `padded[src + ox * stride]`. The index walk that im2col and col2im share.
    #[inline(always)]
    fn for_each_row(&self, nb: usize, mut f: impl FnMut(usize, usize)) {
        let (p, (hp, wp)) = (self.p(), self.padded());
        self.for_each_tap(nb, |k, i, c, ky, kx| {
            let plane = (i * self.c_in + c) * hp * wp;
            let row = (k * nb + i) * p;
            for oy in 0..self.h_out {
                f(
                    plane + (oy * self.stride + ky) * wp + kx,
                    row + oy * self.w_out,
                );
            }
        });
    }

    /// [`Self::im2col`] with the stride `S` known at compile time (0: read it from
    /// `self`).
    #[inline(always)]
    fn im2col_strided<const S: usize>(&self, padded: &[f32], nb: usize, col: &mut [f32]) {
        let s = if S == 0 { self.stride } else { S };
        let w = self.w_out;
        self.for_each_row(nb, |src, dst| {
            let src = &padded[src..][..(w - 1) * s + 1];
            for (ox, o) in col[dst..][..w].iter_mut().enumerate() {
                *o = src[ox * s];
            }
        });
    }

    /// The adjoint of [`Self::im2col`]: adds each column entry back to the padded
    /// input pixel it was read from. `padded` must be zeroed by the caller.
    fn col2im(&self, col: &[f32], nb: usize, padded: &mut [f32]) {
        match self.stride {
            1 => self.col2im_strided::<1>(col, nb, padded),
            2 => self.col2im_strided::<2>(col, nb, padded),
            _ => self.col2im_strided::<0>(col, nb, padded),
        }
    }

    #[inline(always)]
    fn col2im_strided<const S: usize>(&self, col: &[f32], nb: usize, padded: &mut [f32]) {
        let s = if S == 0 { self.stride } else { S };
        let w = self.w_out;
        self.for_each_row(nb, |dst, src| {
            let dst = &mut padded[dst..][..(w - 1) * s + 1];
            for (ox, &g) in col[src..][..w].iter().enumerate() {
                dst[ox * s] += g;
            }
        });
    }
}

thread_local! {
    /// Per-thread scratch buffers, reused across calls (rayon's workers live as long
    /// as the process), so the hot loop does not fault in fresh pages every step.
    static SCRATCH: RefCell<[Vec<f32>; 3]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three scratch slices of the given lengths (contents unspecified).
fn with_scratch<R>(
    [a, b, c]: [usize; 3],
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut bufs = cell.borrow_mut();
        for (buf, len) in bufs.iter_mut().zip([a, b, c]) {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        let [x, y, z] = &mut *bufs;
        f(&mut x[..a], &mut y[..b], &mut z[..c])
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
        let per_chunk = g.images_per_chunk(batch);
        let in_image = g.c_in * g.h_in * g.w_in;
        let mut out = zeroed(batch * o * p);
        out.par_chunks_mut(per_chunk * o * p)
            .zip(x.par_chunks(per_chunk * in_image))
            .for_each(|(out, x)| {
                let nb = x.len() / in_image;
                with_scratch([k * nb * p, o * nb * p, g.padded_len(nb)], |col, y, pad| {
                    g.pad(x, nb, pad);
                    g.im2col(pad, nb, col);
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

        let per_chunk = g.images_per_chunk(batch);
        let in_image = g.c_in * g.h_in * g.w_in;
        // Zeros: `crop` writes only the pixels the output reads.
        let mut dx = if self.input_grad {
            zeroed(batch * in_image)
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
                with_scratch(
                    [k * nb * p, o * nb * p, g.padded_len(nb)],
                    |col, gy, pad| {
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
                        g.pad(&xv[first * in_image..(first + nb) * in_image], nb, pad);
                        g.im2col(pad, nb, col);
                        let gy_mat = Mat::rows(gy, o, nb * p);
                        // dW = gy · col^T
                        matmul(&mut dw, gy_mat, Mat::rows(col, k, nb * p).t(), false, 1);
                        if self.input_grad {
                            // dcol = W^T · gy, into the col buffer (its im2col is used up).
                            matmul(col, Mat::rows(w, o, k).t(), gy_mat, false, 1);
                            pad.fill(0.0);
                            g.col2im(col, nb, pad);
                            g.crop(pad, nb, dx);
                        }
                    },
                );
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
