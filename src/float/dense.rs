//! InnerProduct: Caffe flattens every axis from `axis` on (C-major, i.e. the NCHW memory order)
//! into K and keeps the axes before it as rows. Because images are contiguous, a whole chunk of
//! images is one `(n·outer) × K` matrix, so the chunk is one GEMM instead of one GEMV per image.

use super::gemm::{sgemm, View};
use crate::ir::{InnerProductParams, Tensor};
use anyhow::{ensure, Result};

pub(crate) struct Dense<'g> {
    /// Rows per image: product of the input axes before `axis` (1 for the usual `axis: 1`).
    outer: usize,
    k: usize,
    n_out: usize,
    transpose: bool,
    weights: &'g [f32],
    bias: Option<&'g [f32]>,
}

impl<'g> Dense<'g> {
    pub fn new(p: &InnerProductParams, input: &[usize], weights: &'g [Tensor]) -> Result<Self> {
        ensure!(
            p.axis >= 1 && p.axis <= input.len(),
            "axis {} out of range for input {input:?}",
            p.axis
        );
        Ok(Dense {
            outer: input[..p.axis - 1].iter().product(),
            k: input[p.axis - 1..].iter().product(),
            n_out: p.num_output,
            transpose: p.transpose,
            weights: &weights[0].data,
            bias: p.bias_term.then(|| weights[1].data.as_slice()),
        })
    }

    pub fn run(&self, input: &[f32], n: usize, out: &mut [f32]) {
        let m = n * self.outer;
        for row in out.chunks_mut(self.n_out) {
            match self.bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        // B[k][j] = W[j][k] (Caffe's [N, K]) or W[k][j] (transposed [K, N]).
        let b = if self.transpose {
            View {
                data: self.weights,
                rs: self.n_out,
                cs: 1,
            }
        } else {
            View {
                data: self.weights,
                rs: 1,
                cs: self.k,
            }
        };
        sgemm(
            m,
            self.k,
            self.n_out,
            View::rows(input, self.k),
            b,
            1.0,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: usize, axis: usize, transpose: bool, bias: bool) -> InnerProductParams {
        InnerProductParams {
            num_output: n,
            bias_term: bias,
            axis,
            transpose,
        }
    }

    #[test]
    fn flattens_chw_and_adds_bias() {
        // input [2,1,2] = [1,2,3,4]; W [2,4] rows [1,0,0,1], [1,1,1,1]; bias [10, 20].
        let w = vec![
            Tensor::new(vec![2, 4], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            Tensor::new(vec![2], vec![10.0, 20.0]),
        ];
        let d = Dense::new(&ip(2, 1, false, true), &[2, 1, 2], &w).unwrap();
        let mut y = vec![0.0; 4];
        d.run(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, -1.0], 2, &mut y);
        assert_eq!(y, vec![15.0, 30.0, 9.0, 19.0]);
    }

    #[test]
    fn transpose_reads_k_by_n() {
        // Same W as above stored [K=4, N=2].
        let w = vec![Tensor::new(
            vec![4, 2],
            vec![1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0],
        )];
        let d = Dense::new(&ip(2, 1, true, false), &[4], &w).unwrap();
        let mut y = vec![0.0; 2];
        d.run(&[1.0, 2.0, 3.0, 4.0], 1, &mut y);
        assert_eq!(y, vec![5.0, 10.0]);
    }

    #[test]
    fn axis_two_keeps_leading_axis_as_rows() {
        // input [2, 3], axis 2: two rows of K=3 per image, output [2, 1].
        let w = vec![Tensor::new(vec![1, 3], vec![1.0, 2.0, 3.0])];
        let d = Dense::new(&ip(1, 2, false, false), &[2, 3], &w).unwrap();
        let mut y = vec![0.0; 2];
        d.run(&[1.0, 1.0, 1.0, 0.0, 1.0, 0.0], 1, &mut y);
        assert_eq!(y, vec![6.0, 2.0]);
    }
}
