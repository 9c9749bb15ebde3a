//! Convolution + bias + ReLU as one candle op (CPU, f32, channels last), forward and
//! backward.
//!
//! Plain candle runs this layer as a padding copy, a convolution, a broadcast bias add
//! and a ReLU, each a fresh tensor; its backward goes through a transposed convolution
//! and a per-element dot-product path. Here each layer is one pass of im2col and one
//! GEMM per chunk of images, with bias and ReLU applied in place on the GEMM's output,
//! and the backward is two GEMMs and a col2im per chunk.
//!
//! Images are channels last (`[B, H, W, C]`) between the fused layers: a receptive
//! field's row is then one contiguous run of `kernel * C` floats, so im2col and col2im
//! are block copies (with channels first they were gathers of 7 or 14 floats at
//! stride 2), and the GEMM writes the output in the layout the next layer reads, with
//! no reordering pass. im2col writes zeros where a receptive field reads padding, and
//! col2im drops those entries: the padded image is never built. Chunks are sized so
//! the im2col buffer stays near the core's L2 cache, are processed in parallel (rayon,
//! one chunk per task, single-threaded GEMMs inside), and reuse per-thread buffers
//! across calls, so a training step allocates only its outputs.
//!
//! Results are deterministic: partial weight gradients are kept per chunk and summed
//! in chunk order, whatever the number of threads.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, matmul_uninit, product, zero_init, Mat};
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

    /// This geometry's zero padding for a channels-first `[B, c_in, h_in, w_in]`
    /// tensor, with candle's own ops (the fused kernel writes the same zeros in
    /// im2col instead): the input cropped to the rows and columns the output reads,
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

    /// The padded rows and columns that hold input pixels (padded row `py` is input
    /// row `py - pad_top`, likewise for columns).
    fn interior(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (hp, wp) = self.padded();
        let rows = self.pad_top.min(hp)..(self.pad_top + self.h_in).min(hp);
        let cols = self.pad_left.min(wp)..(self.pad_left + self.w_in).min(wp);
        (rows, cols)
    }

    /// Where each output column's receptive field lies in an input row: for output
    /// column `ox`, `(lead, len, ix)`: the first `lead` floats of a kernel row read
    /// padding, the next `len` floats are the input row's from column `ix` on (channels
    /// last, so `len` counts floats), the rest is padding again.
    fn column_spans(&self) -> Vec<(usize, usize, usize)> {
        let c = self.c_in;
        (0..self.w_out)
            .map(|ox| {
                // Padded column of the first tap; input column = padded - pad_left.
                let first = ox * self.stride;
                let lo = self.pad_left.saturating_sub(first).min(self.kernel);
                let hi = (self.pad_left + self.w_in)
                    .saturating_sub(first)
                    .clamp(lo, self.kernel);
                (
                    lo * c,
                    (hi - lo) * c,
                    (first + lo).saturating_sub(self.pad_left),
                )
            })
            .collect()
    }

    /// Calls `f(col, lead, len, src)` for every output pixel of `nb` images (channels
    /// last) and every kernel row: the receptive field's row is the `kernel * c_in`
    /// floats at `col` in the column matrix, of which `lead` zeros (padding), then
    /// `len` input floats from `src`, then zeros to the end. Rows of the kernel that
    /// fall in the top or bottom padding have `len == 0`. The walk that im2col and
    /// col2im share; the padding is never materialised.
    #[inline(always)]
    fn for_each_tap_row(&self, nb: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (c, s, kk) = (self.c_in, self.stride, self.kernel);
        let run = kk * c;
        let spans = self.column_spans();
        let mut col = 0;
        for i in 0..nb {
            for oy in 0..self.h_out {
                for ky in 0..kk {
                    // Padded row `py` is input row `py - pad_top`.
                    let py = oy * s + ky;
                    let row = (py >= self.pad_top && py - self.pad_top < self.h_in)
                        .then(|| (i * self.h_in + py - self.pad_top) * self.w_in);
                    for (ox, &(lead, len, ix)) in spans.iter().enumerate() {
                        let at = col + (ox * kk + ky) * run;
                        match row {
                            Some(row) => f(at, lead, len, (row + ix) * c),
                            None => f(at, run, 0, 0),
                        }
                    }
                }
                col += self.w_out * kk * run;
            }
        }
    }

    /// im2col of `nb` images (channels last) into `col` as a `[nb * P, K]` row-major
    /// matrix: row `i * P + p` is the receptive field of output pixel `p` of image
    /// `i`, ordered (kernel row, kernel column, channel), zeros where it reads padding.
    fn im2col(&self, x: &[f32], nb: usize, col: &mut [f32]) {
        // Short runs (one channel: the first layer) as fixed-size moves; a `memmove`
        // call per 3 floats cost more than the copy.
        match self.kernel * self.c_in {
            3 => self.im2col_run::<3>(x, nb, col),
            5 => self.im2col_run::<5>(x, nb, col),
            _ => self.im2col_run::<0>(x, nb, col),
        }
    }

    /// [`Self::im2col`] with the run length `R` known at compile time (0: any).
    #[inline(always)]
    fn im2col_run<const R: usize>(&self, x: &[f32], nb: usize, col: &mut [f32]) {
        let run = if R == 0 { self.kernel * self.c_in } else { R };
        self.for_each_tap_row(nb, |at, lead, len, src| {
            let dst = &mut col[at..at + run];
            if len == run {
                dst.copy_from_slice(&x[src..src + run]);
                return;
            }
            dst[..lead].fill(0.0);
            dst[lead..lead + len].copy_from_slice(&x[src..src + len]);
            dst[lead + len..].fill(0.0);
        });
    }

    /// The adjoint of [`Self::im2col`]: adds each column entry back to the input
    /// pixel it was read from (padding entries are dropped). `dx` must be zeroed by
    /// the caller.
    fn col2im(&self, col: &[f32], nb: usize, dx: &mut [f32]) {
        self.for_each_tap_row(nb, |at, lead, len, dst| {
            let src = &col[at + lead..at + lead + len];
            for (d, &g) in dx[dst..dst + len].iter_mut().zip(src) {
                *d += g;
            }
        });
    }

    /// The weight `[c_out, c_in, k, k]` (PyTorch's layout, as stored) as the `[c_out,
    /// K]` matrix the column matrix multiplies, its rows ordered (kernel row, kernel
    /// column, channel) like the columns.
    fn weight_to_taps(&self, w: &[f32]) -> Vec<f32> {
        let (c, kk) = (self.c_in, self.kernel);
        let mut out = vec![0f32; w.len()];
        for (dst, src) in out.chunks_exact_mut(self.k()).zip(w.chunks_exact(self.k())) {
            for ci in 0..c {
                for t in 0..kk * kk {
                    dst[t * c + ci] = src[ci * kk * kk + t];
                }
            }
        }
        out
    }

    /// The inverse of [`Self::weight_to_taps`], for the weight's gradient.
    fn taps_to_weight(&self, taps: &[f32]) -> Vec<f32> {
        let (c, kk) = (self.c_in, self.kernel);
        let mut out = vec![0f32; taps.len()];
        for (dst, src) in out
            .chunks_exact_mut(self.k())
            .zip(taps.chunks_exact(self.k()))
        {
            for ci in 0..c {
                for t in 0..kk * kk {
                    dst[ci * kk * kk + t] = src[t * c + ci];
                }
            }
        }
        out
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

thread_local! {
    /// Per-thread activations between the layers of [`conv_stack_inference`], two
    /// buffers used in turn, reused across calls.
    static ACTIVATIONS: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// `s` as memory for [`Conv2dRelu::forward_images`] to overwrite.
///
/// # Safety
///
/// The caller writes only initialised floats through the returned slice (as
/// `forward_images` does), so that `s` stays initialised.
#[allow(unsafe_code)]
unsafe fn overwritten(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller keeps every
    // element initialised.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [MaybeUninit<f32>]) }
}

/// Inference through consecutive convolutions (each with its bias and ReLU, as
/// [`Conv2dRelu`]): `layers` are the ops with their weights and biases, `x` the
/// channels-last images `[B, h_in, w_in, c_in]` of the first. Returns the last layer's
/// output, in the layout its op writes, as a tensor outside any autograd graph.
///
/// Each chunk of images goes through all the layers before the next chunk starts, so
/// the activations between layers stay in the core's caches instead of making a trip
/// to memory as whole-batch tensors (the first layer's output alone is 100 KB an image
/// here, 100 MB for a batch of 1,000 embedded at once). Each chunk's products are the
/// ones [`Conv2dRelu`]'s forward runs, so the result is the same bit for bit.
pub fn conv_stack_inference(
    layers: &[(Conv2dRelu, &Tensor, &Tensor)],
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let Some(((first, ..), (last, ..))) = layers.first().zip(layers.last()) else {
        candle_core::bail!("conv stack: no layers");
    };
    let x = x.contiguous()?;
    let batch = first.batch(x.layout())?;
    let mut prepared = Vec::with_capacity(layers.len());
    for (i, (op, weight, bias)) in layers.iter().enumerate() {
        let g = op.geometry;
        if let Some((prev, ..)) = i.checked_sub(1).map(|j| &layers[j]) {
            let p = prev.geometry;
            if prev.channels_first_output || (p.c_out, p.h_out, p.w_out) != (g.c_in, g.h_in, g.w_in)
            {
                candle_core::bail!(
                    "conv stack: layer {i} {g:?} does not read what layer {} {p:?} writes",
                    i - 1
                );
            }
        }
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let b = bias.flatten_all()?.to_vec1::<f32>()?;
        if w.len() != g.c_out * g.k() || b.len() != g.c_out {
            candle_core::bail!("conv stack: layer {i}'s weight or bias does not match {g:?}");
        }
        prepared.push((op, g.weight_to_taps(&w), b));
    }
    let per_chunk = layers
        .iter()
        .map(|(op, ..)| op.geometry.images_per_chunk(batch))
        .min()
        .unwrap_or(1);
    let in_image = first.geometry.c_in * first.geometry.h_in * first.geometry.w_in;
    let out_image = last.geometry.c_out * last.geometry.p();
    let (xs, xl) = x.storage_and_layout();
    let xv = cpu_f32_tensor(&xs, xl, "conv stack input")?;
    let len = batch * out_image;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(per_chunk * out_image)
        .zip(xv.par_chunks(per_chunk * in_image))
        .for_each(|(out, x)| {
            let nb = x.len() / in_image;
            ACTIVATIONS.with(|cell| {
                let mut bufs = cell.borrow_mut();
                let [a, b] = &mut *bufs;
                let (mut current, mut next) = (std::mem::take(a), std::mem::take(b));
                let mut filled = 0;
                for (i, (op, taps, bias)) in prepared.iter().enumerate() {
                    let input: &[f32] = if i == 0 { x } else { &current[..filled] };
                    if i + 1 == prepared.len() {
                        op.forward_images(input, taps, bias, out);
                        break;
                    }
                    filled = nb * op.geometry.p() * op.geometry.c_out;
                    if next.len() < filled {
                        next.resize(filled, 0.0);
                    }
                    // SAFETY: forward_images writes only initialised floats.
                    #[allow(unsafe_code)]
                    op.forward_images(input, taps, bias, unsafe {
                        overwritten(&mut next[..filled])
                    });
                    std::mem::swap(&mut current, &mut next);
                }
                (*a, *b) = (current, next);
            });
        });
    // SAFETY: the chunks cover the `len` elements, and the last layer's
    // `forward_images` wrote every element of each.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    let g = last.geometry;
    let shape = if last.channels_first_output {
        Shape::from((batch, g.c_out, g.h_out, g.w_out))
    } else {
        Shape::from((batch, g.h_out, g.w_out, g.c_out))
    };
    Tensor::from_vec(out, shape, x.device())
}

/// `relu(conv(x, weight) + bias)` on channels-last images: `x` `[B, h_in, w_in, c_in]`,
/// `weight` `[c_out, c_in, k, k]` (PyTorch's layout, as the checkpoint stores it),
/// `bias` `[c_out]`, output `[B, h_out, w_out, c_out]`. Apply with
/// `x.apply_op3(&weight, &bias, Conv2dRelu { .. })`.
///
/// Channels last makes each receptive-field row one contiguous run of `k * c_in`
/// floats (im2col and col2im are block copies, not strided gathers) and lets the
/// product write the output in its final layout: rows are output pixels, columns
/// channels, so bias and ReLU are applied in place and the next layer reads it as is.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dRelu {
    /// The convolution's shape.
    pub geometry: ConvGeometry,
    /// Whether the backward pass computes the input's gradient (not needed for the
    /// first layer, whose input is the images).
    pub input_grad: bool,
    /// Whether the output is channels first (`[B, c_out, h_out, w_out]`), for the last
    /// convolution, whose output is flattened in the reference's (channel, row,
    /// column) order: the reordering is done per chunk while it is in cache, instead
    /// of by a strided copy of the whole tensor and another of its gradient.
    pub channels_first_output: bool,
    /// Whether the ReLU is applied (`false` when batch norm comes between the
    /// convolution and its ReLU, as in Snell's blocks: the layer is then `conv + bias`).
    pub relu: bool,
}

impl Conv2dRelu {
    /// `relu(conv(x) + bias)` of the images in `x` (channels last, whole images) into
    /// `out` (`[nb, h_out, w_out, c_out]`, or channels first when
    /// [`Self::channels_first_output`]), every element of which is written; returns
    /// `out`, now initialised. `taps` is the weight as [`ConvGeometry::weight_to_taps`]
    /// lays it out. One im2col and one GEMM, single-threaded: the callers run chunks
    /// of images in parallel.
    fn forward_images<'o>(
        &self,
        x: &[f32],
        taps: &[f32],
        bias: &[f32],
        out: &'o mut [MaybeUninit<f32>],
    ) -> &'o mut [f32] {
        let g = self.geometry;
        let (k, p, o) = (g.k(), g.p(), g.c_out);
        let nb = x.len() / (g.c_in * g.h_in * g.w_in);
        assert_eq!(out.len(), nb * p * o, "conv2d_relu: output chunk size");
        let y_len = if self.channels_first_output {
            nb * p * o
        } else {
            0
        };
        with_scratch([k * nb * p, y_len, 0], |col, y, _| {
            g.im2col(x, nb, col);
            // y [nb * P, O] = col [nb * P, K] · taps^T [K, O]
            let (taps, col) = (Mat::rows(taps, o, k).t(), Mat::rows(col, nb * p, k));
            if !self.channels_first_output {
                let out = matmul_uninit(out, col, taps, 1);
                let floor = self.floor();
                for row in out.chunks_exact_mut(o) {
                    for (v, &b) in row.iter_mut().zip(bias) {
                        *v = super::relu_to(*v + b, floor);
                    }
                }
                return out;
            }
            matmul(y, col, taps, false, 1);
            // Each image's [P, O] block into [O, P]: output rows are written in order,
            // read at stride O.
            let images = out.chunks_exact_mut(p * o).zip(y.chunks_exact(p * o));
            let floor = self.floor();
            for (out_img, y_img) in images {
                for (oc, (row, &b)) in out_img.chunks_exact_mut(p).zip(bias).enumerate() {
                    let column = y_img[oc..].iter().step_by(o);
                    for (d, &v) in row.iter_mut().zip(column) {
                        d.write(super::relu_to(v + b, floor));
                    }
                }
            }
            // SAFETY: the loop above wrote all `nb` images of `p * o` elements, which
            // is all of `out` (checked on entry).
            #[allow(unsafe_code)]
            unsafe {
                std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len())
            }
        })
    }

    /// The lower bound of the output: 0 with the ReLU, none without (a floor of -inf
    /// keeps every value: one loop for both).
    fn floor(&self) -> f32 {
        if self.relu {
            0.0
        } else {
            f32::NEG_INFINITY
        }
    }

    /// The gradient after the ReLU (`grad` where the layer's output `out` is positive,
    /// else 0; all of `grad` without the ReLU) into `gy`, channels last `[images * P,
    /// O]`, for a chunk of images.
    fn relu_gradient(&self, grad: &[f32], out: &[f32], gy: &mut [f32]) {
        let g = self.geometry;
        let relu = self.relu;
        let (p, o) = (g.p(), g.c_out);
        if self.channels_first_output {
            // Each image's [O, P] plane into [P, O]: plane rows are read in order,
            // written at stride O.
            let images = gy.chunks_exact_mut(p * o).zip(grad.chunks_exact(p * o));
            for ((gy_img, g_img), y_img) in images.zip(out.chunks_exact(p * o)) {
                let planes = g_img.chunks_exact(p).zip(y_img.chunks_exact(p));
                for (oc, (g_row, y_row)) in planes.enumerate() {
                    let dst = gy_img[oc..].iter_mut().step_by(o);
                    for ((d, &gv), &y) in dst.zip(g_row).zip(y_row) {
                        *d = if !relu || y > 0.0 { gv } else { 0.0 };
                    }
                }
            }
        } else {
            if !relu {
                gy.copy_from_slice(grad);
                return;
            }
            for ((d, &gv), &y) in gy.iter_mut().zip(grad).zip(out) {
                *d = if y > 0.0 { gv } else { 0.0 };
            }
        }
    }

    fn batch(&self, l: &Layout) -> candle_core::Result<usize> {
        let g = &self.geometry;
        match l.dims() {
            [b, h, w, c] if (*h, *w, *c) == (g.h_in, g.w_in, g.c_in) => Ok(*b),
            dims => candle_core::bail!(
                "conv2d_relu: input {dims:?}, expected [batch, {}, {}, {}] (channels last)",
                g.h_in,
                g.w_in,
                g.c_in
            ),
        }
    }
}

/// The per-chunk `(dW, db)` partials summed in chunk order (a fixed order, so the
/// result does not depend on how the chunks were scheduled).
fn sum_partials(
    partials: &[(Vec<f32>, Vec<f32>)],
    dw_len: usize,
    db_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dw = vec![0f32; dw_len];
    let mut db = vec![0f32; db_len];
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
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
        let taps = g.weight_to_taps(w);
        let per_chunk = g.images_per_chunk(batch);
        let in_image = g.c_in * g.h_in * g.w_in;
        // Every chunk writes all of its part of the output (`forward_images`), so the
        // buffer is not zero-filled first.
        let len = batch * o * p;
        let mut out = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(per_chunk * o * p)
            .zip(x.par_chunks(per_chunk * in_image))
            .for_each(|(out, x)| {
                self.forward_images(x, &taps, b, out);
            });
        // SAFETY: the chunks cover the `len` elements, and `forward_images` wrote every
        // element of each.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(len)
        };
        let shape = if self.channels_first_output {
            Shape::from((batch, o, g.h_out, g.w_out))
        } else {
            Shape::from((batch, g.h_out, g.w_out, o))
        };
        Ok((CpuStorage::F32(out), shape))
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
        if grad.len() != batch * o * p || out.len() != grad.len() || w.len() != o * k {
            candle_core::bail!("conv2d_relu backward: gradient shape does not match {g:?}");
        }
        let taps = g.weight_to_taps(w);

        let per_chunk = g.images_per_chunk(batch);
        let in_image = g.c_in * g.h_in * g.w_in;
        // Each chunk zeroes its part just before col2im adds into it (pixels the
        // output never reads get nothing), while it is in cache, rather than in a
        // separate pass over the whole buffer.
        let dx_len = if self.input_grad { batch * in_image } else { 0 };
        let mut dx = Vec::with_capacity(dx_len);
        let chunks: Vec<usize> = (0..batch.div_ceil(per_chunk)).collect();
        // One (dW, db) partial per chunk, summed in chunk order below.
        let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(chunks.len());
        let dx_chunks: Vec<&mut [MaybeUninit<f32>]> = if self.input_grad {
            dx.spare_capacity_mut()[..dx_len]
                .chunks_mut(per_chunk * in_image)
                .collect()
        } else {
            chunks.iter().map(|_| <&mut [_]>::default()).collect()
        };
        chunks
            .par_iter()
            .zip(dx_chunks)
            .map(|(&c, dx)| {
                let first = c * per_chunk;
                let nb = per_chunk.min(batch - first);
                let mut dw = Vec::new();
                let mut db = vec![0f32; o];
                with_scratch([k * nb * p, nb * p * o, 0], |col, gy, _| {
                    // gy [nb * P, O]: the gradient after the ReLU, channels last.
                    let span = first * p * o..(first + nb) * p * o;
                    self.relu_gradient(&grad[span.clone()], &out[span], gy);
                    for row in gy.chunks_exact(o) {
                        db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                    }
                    g.im2col(&xv[first * in_image..(first + nb) * in_image], nb, col);
                    let gy_mat = Mat::rows(gy, nb * p, o);
                    // dW [O, K] = gy^T · col
                    dw = product(gy_mat.t(), Mat::rows(col, nb * p, k), 1);
                    if self.input_grad {
                        // dcol = gy · taps, into the col buffer (its im2col is used up).
                        matmul(col, gy_mat, Mat::rows(&taps, o, k), false, 1);
                        g.col2im(col, nb, zero_init(dx));
                    }
                });
                (dw, db)
            })
            .collect_into_vec(&mut partials);
        let (dw, db) = sum_partials(&partials, o * k, o);
        if self.input_grad {
            // SAFETY: the chunks of `dx` cover its `dx_len` elements, and every chunk
            // ran (collect_into_vec above) and zeroed its part before adding into it.
            #[allow(unsafe_code)]
            unsafe {
                dx.set_len(dx_len)
            };
        }
        let device = weight.device();
        let dw = Tensor::from_vec(g.taps_to_weight(&dw), weight.shape(), device)?;
        let db = Tensor::from_vec(db, o, device)?;
        let dx = if self.input_grad {
            Some(Tensor::from_vec(dx, x.shape(), device)?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}
