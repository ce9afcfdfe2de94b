//! A safe matrix product over `f32` slices: the one module the workspace allows `unsafe` in
//! (besides the run-time instruction-set dispatch of `winograd`'s transform passes).
//!
//! The `gemm` crate (the kernels candle and burn-flex use) picks an AVX-512, AVX2+FMA or
//! portable micro-kernel at run time and packs its operands; on the 2-core CI machine its
//! AVX-512 kernel is about twice as fast as matrixmultiply's AVX2 one (BENCHMARKS.md,
//! issue 28). Its API takes raw pointers and strides; [`Mat`] and [`MatMut`] check, once per
//! call, that every element the strides can reach lies inside the borrowed slice, which is all
//! the soundness the call needs (the crate reads `lhs`/`rhs` and writes `dst` only at those
//! indices). It runs single-threaded: the callers split work into fixed pieces themselves, so
//! results never depend on the thread count.

#![allow(unsafe_code)]

/// A borrowed row-major or strided matrix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    /// The elements (at least the last reachable index + 1).
    pub(crate) data: &'a [f32],
    /// Rows.
    pub(crate) rows: usize,
    /// Columns.
    pub(crate) cols: usize,
    /// Distance between rows, in elements.
    pub(crate) rs: usize,
    /// Distance between columns, in elements.
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Mat<'a> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        reach(self.rows, self.cols, self.rs, self.cs).is_some_and(|r| r <= self.data.len())
    }
}

/// A mutable row-major matrix whose rows may be further apart than its width (a band of
/// columns of a wider matrix).
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    /// The elements (at least the last reachable index + 1).
    pub(crate) data: &'a mut [f32],
    /// Rows.
    pub(crate) rows: usize,
    /// Columns.
    pub(crate) cols: usize,
    /// Distance between rows, in elements (`>= cols`).
    pub(crate) rs: usize,
}

impl<'a> MatMut<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> MatMut<'a> {
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
        }
    }
}

/// One past the largest index a `rows × cols` matrix with strides `rs`, `cs` touches (0 when
/// empty); `None` on overflow.
fn reach(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

/// `dst = a × b` (or `dst += a × b` when `accumulate`).
///
/// # Panics
/// If the shapes disagree or a matrix's strides reach outside its slice: a bug in the caller,
/// never reachable from input data (every kernel sizes its buffers from the same dims).
pub(crate) fn matmul(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    assert!(
        a.rows == dst.rows && b.cols == dst.cols && a.cols == b.rows,
        "matmul shapes: [{}x{}] x [{}x{}] into [{}x{}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.rows,
        dst.cols
    );
    assert!(a.fits() && b.fits(), "matmul operand outside its slice");
    // Rows at least `cols` apart: no two destination elements alias.
    assert!(
        dst.rs >= dst.cols
            && reach(dst.rows, dst.cols, dst.rs, 1).is_some_and(|r| r <= dst.data.len()),
        "matmul destination outside its slice"
    );
    let as_isize = |v: usize| isize::try_from(v).unwrap_or(isize::MAX);
    // SAFETY: the asserts above show every index the strides reach lies inside each slice;
    // `dst` is borrowed mutably (no alias with `a` or `b`); the crate reads `dst` only when
    // `read_dst` is set, and all of it is initialised.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            1,
            as_isize(dst.rs),
            accumulate,
            a.data.as_ptr(),
            as_isize(a.cs),
            as_isize(a.rs),
            b.data.as_ptr(),
            as_isize(b.cs),
            as_isize(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
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
                    .map(|k| a.data[i * a.rs + k * a.cs] * b.data[k * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn products_match_the_definition_with_transposes_and_accumulation() {
        let a: Vec<f32> = (0..7 * 13).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..13 * 33).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let (am, bm) = (Mat::rows(&a, 7, 13), Mat::rows(&b, 13, 33));
        let mut c = vec![0f32; 7 * 33];
        matmul(MatMut::rows(&mut c, 7, 33), am, bm, false);
        assert_eq!(c, naive(am, bm));
        // Accumulating adds a second product.
        matmul(MatMut::rows(&mut c, 7, 33), am, bm, true);
        let twice: Vec<f32> = naive(am, bm).iter().map(|v| 2.0 * v).collect();
        assert_eq!(c, twice);
        // (bᵀ aᵀ) = (a b)ᵀ through transposed views.
        let mut ct = vec![0f32; 33 * 7];
        matmul(MatMut::rows(&mut ct, 33, 7), bm.t(), am.t(), false);
        assert_eq!(ct, naive(bm.t(), am.t()));
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn an_operand_shorter_than_its_shape_is_refused() {
        let (a, b) = (vec![1f32; 10], vec![1f32; 12]);
        let mut c = vec![0f32; 4];
        let short = Mat {
            data: &a,
            rows: 2,
            cols: 6,
            rs: 6,
            cs: 1,
        };
        let dst = MatMut::rows(&mut c, 2, 2);
        matmul(dst, short, Mat::rows(&b, 6, 2), false);
    }
}
