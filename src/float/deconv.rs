//! Caffe's Deconvolution (transposed convolution) in float: every input value scatters through
//! its group's weights into the output, `y[o][iy·s + ky·d - p][ix·s + kx·d - p] += x[i][iy][ix] ·
//! w[i][o'][ky][kx]` (`o` = group·O/G + `o'`), then the bias. This is what Caffe's
//! `col = Wᵀ·x; col2im(col)` computes, in a different summation order (float rounding only).
//! The output size comes from the graph (`ir::shape::deconv_out`).

use super::conv::dims3;
use crate::ir::{ConvParams, Hw};
use anyhow::{ensure, Result};

pub(crate) struct Deconv<'g> {
    dims: [usize; 3],
    out: [usize; 3],
    kernel: Hw,
    stride: Hw,
    pad: Hw,
    dilation: Hw,
    group: usize,
    weights: &'g [f32],
    bias: Option<&'g [f32]>,
}

impl<'g> Deconv<'g> {
    pub fn new(
        p: &ConvParams,
        input: &[usize],
        output: &[usize],
        weights: &'g [crate::ir::Tensor],
    ) -> Result<Self> {
        let (dims, out) = (dims3(input)?, dims3(output)?);
        ensure!(
            p.group > 0 && dims[0] % p.group == 0 && out[0] % p.group == 0,
            "group {} does not divide channels",
            p.group
        );
        let w = &weights.first().map(|t| t.data.as_slice()).unwrap_or(&[]);
        ensure!(
            w.len() == dims[0] * out[0] / p.group * p.kernel.h * p.kernel.w,
            "Deconvolution weights have {} values, expected {}×{}×{}×{}",
            w.len(),
            dims[0],
            out[0] / p.group,
            p.kernel.h,
            p.kernel.w
        );
        let bias = p
            .bias_term
            .then(|| weights.get(1).map(|t| t.data.as_slice()));
        let bias = match bias {
            Some(Some(b)) => {
                ensure!(
                    b.len() == out[0],
                    "Deconvolution bias has {} values",
                    b.len()
                );
                Some(b)
            }
            Some(None) => anyhow::bail!("Deconvolution has bias_term but no bias blob"),
            None => None,
        };
        Ok(Deconv {
            dims,
            out,
            kernel: p.kernel,
            stride: p.stride,
            pad: p.pad,
            dilation: p.dilation,
            group: p.group,
            weights: w,
            bias,
        })
    }

    /// `n` images: `input` is `n × C×H×W`, `out` is `n × O×OH×OW`.
    pub fn run(&self, input: &[f32], n: usize, out: &mut [f32]) {
        let [c, h, w] = self.dims;
        let [o, oh, ow] = self.out;
        let (cg, og) = (c / self.group, o / self.group);
        let (kh, kw) = (self.kernel.h, self.kernel.w);
        for img in 0..n {
            let x = &input[img * c * h * w..][..c * h * w];
            let y = &mut out[img * o * oh * ow..][..o * oh * ow];
            y.fill(0.0);
            for i in 0..c {
                let g = i / cg;
                for oo in 0..og {
                    let oc = g * og + oo;
                    let wk = &self.weights[(i * og + oo) * kh * kw..][..kh * kw];
                    let plane = &mut y[oc * oh * ow..][..oh * ow];
                    for iy in 0..h {
                        for ky in 0..kh {
                            let yy = (iy * self.stride.h + ky * self.dilation.h) as isize
                                - self.pad.h as isize;
                            if yy < 0 || yy >= oh as isize {
                                continue;
                            }
                            for ix in 0..w {
                                let v = x[(i * h + iy) * w + ix];
                                for kx in 0..kw {
                                    let xx = (ix * self.stride.w + kx * self.dilation.w) as isize
                                        - self.pad.w as isize;
                                    if xx < 0 || xx >= ow as isize {
                                        continue;
                                    }
                                    plane[yy as usize * ow + xx as usize] += v * wk[ky * kw + kx];
                                }
                            }
                        }
                    }
                }
            }
            if let Some(b) = self.bias {
                for (row, &bv) in y.chunks_mut(oh * ow).zip(b) {
                    row.iter_mut().for_each(|v| *v += bv);
                }
            }
        }
    }
}
