//! Concat: joins inputs along a Caffe axis (1 = channels). Flatten and Reshape need no module:
//! they never move data in NCHW memory, so the engine copies the buffer unchanged.

use anyhow::{ensure, Result};

pub(crate) struct Concat {
    /// Elements per image of each input.
    sizes: Vec<usize>,
    /// For each input, the contiguous run copied per outer index (its axis extent × inner).
    runs: Vec<usize>,
    outer: usize,
}

impl Concat {
    pub fn new(axis: usize, inputs: &[&[usize]]) -> Result<Self> {
        let first = inputs.first().copied().unwrap_or(&[]);
        ensure!(
            axis >= 1 && axis <= first.len(),
            "concat axis {axis} out of range for {first:?}"
        );
        let outer: usize = first[..axis - 1].iter().product();
        let runs = inputs
            .iter()
            .map(|s| s[axis - 1..].iter().product())
            .collect();
        let sizes = inputs.iter().map(|s| s.iter().product()).collect();
        Ok(Concat { sizes, runs, outer })
    }

    pub fn run(&self, ins: &[&[f32]], n: usize, y: &mut [f32]) {
        let mut at = 0;
        for img in 0..n {
            for o in 0..self.outer {
                for ((x, &size), &run) in ins.iter().zip(&self.sizes).zip(&self.runs) {
                    y[at..at + run].copy_from_slice(&x[img * size + o * run..][..run]);
                    at += run;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_channels_and_last_axis() {
        // Channels: [1,1,2] + [2,1,2] -> [3,1,2] for two images.
        let c = Concat::new(1, &[&[1, 1, 2], &[2, 1, 2]]).unwrap();
        let a = [1.0, 2.0, 10.0, 20.0];
        let b = [3.0, 4.0, 5.0, 6.0, 30.0, 40.0, 50.0, 60.0];
        let mut y = [0.0; 12];
        c.run(&[&a, &b], 2, &mut y);
        assert_eq!(
            y,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        );
        // Axis 2 of [2, 1] + [2, 2] -> [2, 3].
        let c = Concat::new(2, &[&[2, 1], &[2, 2]]).unwrap();
        let mut y = [0.0; 6];
        c.run(&[&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0]], 1, &mut y);
        assert_eq!(y, [1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }
}

/// Transpose each of `n` images of `shape` (batch axis excluded) so that output axis `i` is
/// input axis `order[i]`.
pub fn permute(x: &[f32], n: usize, shape: &[usize], order: &[usize], out: &mut [f32]) {
    let len: usize = shape.iter().product();
    let out_shape: Vec<usize> = order.iter().map(|&a| shape[a]).collect();
    // Input strides, visited in output order.
    let mut stride = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    let strides: Vec<usize> = order.iter().map(|&a| stride[a]).collect();
    for img in 0..n {
        let (src, dst) = (
            &x[img * len..(img + 1) * len],
            &mut out[img * len..(img + 1) * len],
        );
        let mut idx = vec![0usize; out_shape.len()];
        for d in dst.iter_mut() {
            let at: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            *d = src[at];
            // Next output index, last axis fastest.
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < out_shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
    }
}

#[cfg(test)]
mod permute_tests {
    /// NCHW → NHWC (SSD's `order: 0 2 3 1`) on two images, against index arithmetic.
    #[test]
    fn permute_is_an_nchw_to_nhwc_transpose() {
        let (c, h, w) = (3, 2, 4);
        let x: Vec<f32> = (0..2 * c * h * w).map(|i| i as f32).collect();
        let mut out = vec![0.0; x.len()];
        super::permute(&x, 2, &[c, h, w], &[1, 2, 0], &mut out);
        for n in 0..2 {
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let nchw = x[n * c * h * w + (ch * h + y) * w + xx];
                        let nhwc = out[n * c * h * w + (y * w + xx) * c + ch];
                        assert_eq!(nchw, nhwc);
                    }
                }
            }
        }
        // The identity order copies.
        super::permute(&x, 2, &[c, h, w], &[0, 1, 2], &mut out);
        assert_eq!(out, x);
    }
}
