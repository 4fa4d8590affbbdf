//! The one place the float engine multiplies matrices, so that the GEMM backend can be swapped
//! (and measured) without touching the kernels.
//!
//! Backend: `matrixmultiply::sgemm` (already a dependency of ndarray, so it costs no build time).
//! It picks AVX-512, AVX2+FMA or AVX kernels at run time and takes arbitrary strides, which lets
//! inner product read Caffe's `[N, K]` or transposed `[K, N]` weights in place.

/// A read-only row-major-ish matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Contiguous row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }
}

/// Largest index touched by a `rows × cols` view with these strides, checked so that the unsafe
/// call below can never read or write out of bounds.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// `C ← A·B + beta·C` with `A: m×k`, `B: k×n`, `C: m×n` contiguous row-major (`ldc` = n).
pub(super) fn sgemm(m: usize, k: usize, n: usize, a: View, b: View, beta: f32, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.len() >= m * n,
        "gemm: C has {} elements, needs {}",
        c.len(),
        m * n
    );
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    assert!(
        a.data.len() >= extent(m, k, a.rs, a.cs),
        "gemm: A too small"
    );
    assert!(
        b.data.len() >= extent(k, n, b.rs, b.cs),
        "gemm: B too small"
    );
    // SAFETY: the asserts above bound every index sgemm reads (A, B) or writes (C, whose rows
    // and columns do not alias: rsc = n, csc = 1).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_naive() {
        // A 2×3, B given transposed in memory (3×2 read with rs=1, cs=3).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5]; // B^T rows: [1,0,-1], [2,1,0.5]
        let mut c = [1.0; 4];
        sgemm(
            2,
            3,
            2,
            View::rows(&a, 3),
            View {
                data: &bt,
                rs: 1,
                cs: 3,
            },
            1.0,
            &mut c,
        );
        // row0: [1-3, 2+2+1.5] + 1 ; row1: [4-6, 8+5+3] + 1
        assert_eq!(c, [-1.0, 6.5, -1.0, 17.0]);
    }
}
