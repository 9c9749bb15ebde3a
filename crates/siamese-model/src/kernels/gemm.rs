//! A safe, bounds-checked front to the `gemm` crate's matrix product (the one candle
//! itself uses), for the fused layers. Every matrix is a strided view of a slice; the
//! views are checked to lie inside their slices before the unchecked kernel runs.

use std::mem::MaybeUninit;

/// A read-only matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// The elements the view reads from.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows, in elements.
    pub row_stride: usize,
    /// Distance between columns, in elements.
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// One past the largest index the view touches; `None` when that overflows
    /// (a view no slice can hold), so that the bounds check below cannot wrap around.
    fn extent(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        let last_row = (self.rows - 1).checked_mul(self.row_stride)?;
        let last_col = (self.cols - 1).checked_mul(self.col_stride)?;
        last_row.checked_add(last_col)?.checked_add(1)
    }
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), `dst` row-major
/// `a.rows x b.cols` in the first elements of `dst`. `threads > 1` lets the product
/// split across the rayon pool; the result does not depend on it (each output element
/// is one sequential dot product).
///
/// Panics when the shapes disagree or a view runs past its slice: both are bugs in the
/// caller, never a property of user input.
pub fn matmul(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: usize) {
    let (m, n) = check(dst.len(), a, b);
    // SAFETY: `check` proved that `dst` holds the `m x n` result; it is initialised,
    // so reading it to accumulate is sound.
    #[allow(unsafe_code)]
    unsafe {
        product_raw(dst.as_mut_ptr(), m, n, a, b, accumulate, threads)
    }
}

/// `a · b` into the first `a.rows x b.cols` elements of `dst`, which may hold anything
/// (uninitialised memory included): the product writes every one of them, so nothing
/// is zero-filled first. Returns those elements, now initialised. For the buffers a
/// product overwrites anyway (the output of a layer, a weight gradient: `fc1`'s is
/// 25 MB a step), the fill was a full pass over memory for nothing.
pub fn matmul_uninit<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    a: Mat<'_>,
    b: Mat<'_>,
    threads: usize,
) -> &'d mut [f32] {
    let (m, n) = check(dst.len(), a, b);
    // SAFETY: `check` proved that `dst` holds the `m x n` result; `product_raw` without
    // `accumulate` never reads it and writes all `m * n` elements (the `k == 0` case
    // included), after which they are initialised f32s, as the returned slice claims.
    #[allow(unsafe_code)]
    unsafe {
        let ptr = dst.as_mut_ptr().cast::<f32>();
        product_raw(ptr, m, n, a, b, false, threads);
        std::slice::from_raw_parts_mut(ptr, m * n)
    }
}

/// `a · b` as a new row-major `a.rows x b.cols` vector, written once by the product
/// ([`matmul_uninit`]).
pub fn product(a: Mat<'_>, b: Mat<'_>, threads: usize) -> Vec<f32> {
    let len = a.rows.checked_mul(b.cols).expect("product: size overflows");
    let mut out = Vec::with_capacity(len);
    let written = matmul_uninit(&mut out.spare_capacity_mut()[..len], a, b, threads).len();
    // SAFETY: `matmul_uninit` initialised the first `len` elements of the spare capacity.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(written)
    };
    out
}

/// `s` set to zeros, as initialised floats (a buffer that is added into next).
pub fn zero_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written.
    #[allow(unsafe_code)]
    unsafe {
        std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len())
    }
}

/// The result's `(rows, columns)`, after checking that the shapes agree, that both
/// views lie inside their slices and that a destination of `dst_len` elements holds
/// the result. Panics otherwise (a bug in the caller).
fn check(dst_len: usize, a: Mat<'_>, b: Mat<'_>) -> (usize, usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    let inside = |view: &Mat<'_>| view.extent().is_some_and(|e| e <= view.data.len());
    assert!(inside(&a), "matmul: lhs view out of bounds");
    assert!(inside(&b), "matmul: rhs view out of bounds");
    assert!(
        m.checked_mul(n).is_some_and(|mn| mn <= dst_len),
        "matmul: destination too small"
    );
    (m, n)
}

/// The product into `dst` (row-major, row stride `n`), through the `gemm` crate.
///
/// # Safety
///
/// `a` and `b` passed [`check`], `dst` is valid for writes of `m * n` floats (and
/// for reads when `accumulate`, which needs them initialised) and aliases neither
/// input.
#[allow(unsafe_code)]
unsafe fn product_raw(
    dst: *mut f32,
    m: usize,
    n: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    threads: usize,
) {
    let k = a.cols;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            std::ptr::write_bytes(dst, 0, m * n);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    // SAFETY: the views lie inside their slices (largest index = extent - 1, checked
    // by the caller), `dst` is written row-major without overlap (row stride n >= n
    // columns of stride 1) and read only when `accumulate` (gemm's `read_dst`); the
    // inputs are shared borrows that cannot alias it.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        stride(n),
        accumulate,
        a.data.as_ptr(),
        stride(a.col_stride),
        stride(a.row_stride),
        b.data.as_ptr(),
        stride(b.col_stride),
        stride(b.row_stride),
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat<'_>, b: Mat<'_>) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride]
                            * b.data[p * b.row_stride + j * b.col_stride]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_a_loop() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..63).map(|i| (i as f32 * 0.11).cos()).collect();
        let (am, bm) = (Mat::rows(&a, 5, 7), Mat::rows(&b, 7, 9));
        for threads in [1, 2] {
            let mut out = vec![0f32; 45];
            matmul(&mut out, am, bm, false, threads);
            for (x, y) in out.iter().zip(naive(am, bm)) {
                assert!((x - y).abs() < 1e-5);
            }
        }
        // Transposed views: (b^T)(a^T) = (ab)^T, and accumulation adds.
        let mut out = vec![1f32; 45];
        matmul(&mut out, bm.t(), am.t(), true, 1);
        let ab = naive(am, bm);
        for i in 0..9 {
            for j in 0..5 {
                assert!((out[i * 5 + j] - 1.0 - ab[j * 9 + i]).abs() < 1e-5);
            }
        }
    }

    /// A destination full of NaN comes out as the product: the product never reads
    /// it (a read would leave NaN, since 0 * NaN is NaN), writes all of its result and
    /// nothing past it. Shapes both for gemm's blocked path and its small-matrix
    /// paths, straight and through transposed views.
    #[test]
    fn uninitialised_destinations_are_written_not_read() {
        for (m, k, n) in [(5, 7, 9), (37, 41, 29), (1, 300, 70), (64, 3, 1)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let (am, bm) = (Mat::rows(&a, m, k), Mat::rows(&b, k, n));
            // The same matrices stored transposed and read through views.
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let views = [
                (am, bm),
                (Mat::rows(&at, k, m).t(), Mat::rows(&bt, n, k).t()),
            ];
            let want = naive(am, bm);
            for ((a, b), threads) in views.into_iter().zip([1, 2]) {
                let mut dst = vec![MaybeUninit::new(f32::NAN); m * n + 3];
                let got = matmul_uninit(&mut dst, a, b, threads);
                assert_eq!(got.len(), m * n);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{m}x{k}x{n}: {x} against {y}");
                }
                // SAFETY: the whole buffer was initialised (to NaN) above.
                #[allow(unsafe_code)]
                let tail = unsafe { dst[m * n..].iter().map(|v| v.assume_init()) };
                assert!(tail.into_iter().all(f32::is_nan), "wrote past the result");
                let fresh = product(a, b, threads);
                assert_eq!(fresh.len(), m * n);
                assert!(fresh.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
            }
        }
        // An empty inner dimension: the product is zeros, not what was there.
        let empty = Mat::rows(&[], 3, 0);
        let mut dst = vec![MaybeUninit::new(f32::NAN); 6];
        assert_eq!(
            matmul_uninit(&mut dst, empty, Mat::rows(&[], 0, 2), 1),
            [0.0; 6]
        );
        let mut dirty = vec![MaybeUninit::new(f32::NAN); 4];
        assert_eq!(zero_init(&mut dirty), [0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_past_the_slice_are_refused() {
        let a = vec![0f32; 6];
        let mut out = vec![0f32; 9];
        matmul(&mut out, Mat::rows(&a, 3, 3), Mat::rows(&a, 3, 3), false, 1);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_whose_extent_overflows_are_refused() {
        let a = vec![0f32; 4];
        let huge = Mat {
            data: &a,
            rows: 2,
            cols: 2,
            row_stride: usize::MAX,
            col_stride: 1,
        };
        let mut out = vec![0f32; 4];
        matmul(&mut out, huge, Mat::rows(&a, 2, 2), false, 1);
    }
}
