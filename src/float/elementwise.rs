//! Pointwise and per-channel ops: ReLU, PReLU, Scale/Bias and Eltwise. Each follows Caffe's
//! formula literally (e.g. ReLU is `max(x,0) + slope·min(x,0)`, not a branch), so that the float
//! reference rounds the way Caffe does.

use crate::ir::{EltwiseOp, Tensor};
use anyhow::{ensure, Result};

/// Split a blob shape (without batch) at a Caffe axis (which counts the batch axis) into
/// `(outer, dim, inner)`: the axes before it, the axis itself, the axes after it.
pub(super) fn split_axis(shape: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    ensure!(
        axis >= 1 && axis <= shape.len(),
        "axis {axis} is out of range for shape {shape:?}"
    );
    let a = axis - 1;
    Ok((
        shape[..a].iter().product(),
        shape[a],
        shape[a + 1..].iter().product(),
    ))
}

pub(super) fn relu(x: &[f32], slope: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x.max(0.0) + slope * x.min(0.0);
    }
}

/// Caffe's SigmoidLayer (CPU): `1 / (1 + exp(-x))`.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// PReLU: slope per channel (Caffe's axis 1), or one shared slope.
pub(crate) struct PRelu<'g> {
    slopes: &'g [f32],
    channels: usize,
    /// Elements per channel per image.
    inner: usize,
}

impl<'g> PRelu<'g> {
    pub fn new(shared: bool, input: &[usize], weights: &'g [Tensor]) -> Result<Self> {
        let channels = input.first().copied().unwrap_or(1);
        let slopes = weights[0].data.as_slice();
        ensure!(
            slopes.len() == if shared { 1 } else { channels },
            "PReLU slope count"
        );
        Ok(PRelu {
            slopes,
            channels,
            inner: input.iter().skip(1).product(),
        })
    }

    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        for (i, (y, x)) in y
            .chunks_mut(self.inner)
            .zip(x.chunks(self.inner))
            .enumerate()
        {
            let s = if self.slopes.len() == 1 {
                self.slopes[0]
            } else {
                self.slopes[i % self.channels]
            };
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x.max(0.0) + s * x.min(0.0);
            }
        }
    }
}

/// Scale (`x·s[d]`, then `+ b[d]`) and Bias (`x + b[d]`) along one axis.
pub(crate) struct Affine<'g> {
    scale: Option<&'g [f32]>,
    bias: Option<&'g [f32]>,
    /// `outer · dim` per image; the parameter index is `(row % dim)`.
    dim: usize,
    inner: usize,
}

impl<'g> Affine<'g> {
    pub fn new(
        input: &[usize],
        axis: usize,
        scale: Option<&'g [f32]>,
        bias: Option<&'g [f32]>,
    ) -> Result<Self> {
        let (_, dim, inner) = split_axis(input, axis)?;
        for p in scale.iter().chain(bias.iter()) {
            ensure!(
                p.len() == dim,
                "{} parameters for an axis of size {dim}",
                p.len()
            );
        }
        Ok(Affine {
            scale,
            bias,
            dim,
            inner,
        })
    }

    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        for (i, (y, x)) in y
            .chunks_mut(self.inner)
            .zip(x.chunks(self.inner))
            .enumerate()
        {
            let d = i % self.dim;
            let s = self.scale.map(|s| s[d]);
            let b = self.bias.map(|b| b[d]);
            for (y, &x) in y.iter_mut().zip(x) {
                let v = match s {
                    Some(s) => x * s,
                    None => x,
                };
                *y = match b {
                    Some(b) => v + b,
                    None => v,
                };
            }
        }
    }
}

/// Eltwise over same-shaped inputs. SUM uses Caffe's coefficients (default all 1).
pub(super) fn eltwise(op: EltwiseOp, coeffs: &[f32], ins: &[&[f32]], y: &mut [f32]) {
    let coeff = |i: usize| coeffs.get(i).copied().unwrap_or(1.0);
    match op {
        EltwiseOp::Sum => {
            for (y, &x) in y.iter_mut().zip(ins[0]) {
                *y = coeff(0) * x;
            }
            for (i, x) in ins.iter().enumerate().skip(1) {
                let c = coeff(i);
                for (y, &x) in y.iter_mut().zip(*x) {
                    *y += c * x;
                }
            }
        }
        EltwiseOp::Prod => {
            y.copy_from_slice(&ins[0][..y.len()]);
            for x in &ins[1..] {
                for (y, &x) in y.iter_mut().zip(*x) {
                    *y *= x;
                }
            }
        }
        EltwiseOp::Max => {
            y.copy_from_slice(&ins[0][..y.len()]);
            for x in &ins[1..] {
                for (y, &x) in y.iter_mut().zip(*x) {
                    // Caffe keeps the earlier input on ties (`>` comparison).
                    if x > *y {
                        *y = x;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_with_negative_slope() {
        let mut y = [0.0; 4];
        relu(&[-2.0, -0.0, 0.5, 3.0], 0.1, &mut y);
        assert_eq!(y, [-0.2, 0.0, 0.5, 3.0]);
        relu(&[-2.0, -0.0, 0.5, 3.0], 0.0, &mut y);
        assert_eq!(y, [0.0, 0.0, 0.5, 3.0]);
    }

    #[test]
    fn prelu_per_channel_and_shared() {
        let slopes = [Tensor::new(vec![2], vec![0.5, 2.0])];
        let p = PRelu::new(false, &[2, 1, 2], &slopes).unwrap();
        let mut y = [0.0; 8];
        // Two images of [2,1,2].
        p.run(&[-1.0, 1.0, -1.0, 1.0, -2.0, 2.0, -2.0, 2.0], &mut y);
        assert_eq!(y, [-0.5, 1.0, -2.0, 1.0, -1.0, 2.0, -4.0, 2.0]);
        let shared = [Tensor::new(vec![1], vec![0.25])];
        let p = PRelu::new(true, &[2, 1, 2], &shared).unwrap();
        let mut y = [0.0; 4];
        p.run(&[-1.0, 1.0, -4.0, 1.0], &mut y);
        assert_eq!(y, [-0.25, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn scale_and_bias_per_channel() {
        let (s, b) = ([2.0, -1.0], [1.0, 0.5]);
        let a = Affine::new(&[2, 2], 1, Some(&s), Some(&b)).unwrap();
        let mut y = [0.0; 4];
        a.run(&[1.0, 2.0, 3.0, 4.0], &mut y);
        assert_eq!(y, [3.0, 5.0, -2.5, -3.5]);
        // Axis 2 of [2, 2]: parameters index the last axis.
        let a = Affine::new(&[2, 2], 2, None, Some(&b)).unwrap();
        a.run(&[1.0, 2.0, 3.0, 4.0], &mut y);
        assert_eq!(y, [2.0, 2.5, 4.0, 4.5]);
    }

    #[test]
    fn eltwise_sum_prod_max() {
        let (a, b) = ([1.0, -2.0, 3.0], [4.0, 5.0, -6.0]);
        let mut y = [0.0; 3];
        eltwise(EltwiseOp::Sum, &[], &[&a, &b], &mut y);
        assert_eq!(y, [5.0, 3.0, -3.0]);
        eltwise(EltwiseOp::Sum, &[1.0, -0.5], &[&a, &b], &mut y);
        assert_eq!(y, [-1.0, -4.5, 6.0]);
        eltwise(EltwiseOp::Prod, &[], &[&a, &b], &mut y);
        assert_eq!(y, [4.0, -10.0, -18.0]);
        eltwise(EltwiseOp::Max, &[], &[&a, &b], &mut y);
        assert_eq!(y, [4.0, 5.0, 3.0]);
    }
}
