//! A safe, bounds-checked front to the `gemm` crate's matrix product (the one candle
//! itself uses), for the fused layers. Every matrix is a strided view of a slice; the
//! views are checked to lie inside their slices before the unchecked kernel runs.

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
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    let inside = |view: &Mat<'_>| view.extent().is_some_and(|e| e <= view.data.len());
    assert!(inside(&a), "matmul: lhs view out of bounds");
    assert!(inside(&b), "matmul: rhs view out of bounds");
    assert!(
        m.checked_mul(n).is_some_and(|mn| mn <= dst.len()),
        "matmul: destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    // SAFETY: the three views were checked above to lie inside their slices (largest
    // index = extent - 1), `dst` is an exclusive borrow written row-major without
    // overlap (row stride n >= n columns of stride 1), and the inputs are shared
    // borrows that cannot alias it.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
