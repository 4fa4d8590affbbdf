//! Convolution as Caffe computes it: per image and per group, im2col then one GEMM
//! `W_g [O/G × (C/G·KH·KW)] · col [(C/G·KH·KW) × (OH·OW)]`, bias added first.
//!
//! Caffe's output-size rule (floor) is already applied by `ir::shape`; this module only reads the
//! output size from the graph, so the two can never disagree.

use super::gemm::{sgemm, View};
use crate::ir::{ConvParams, Hw};
use anyhow::{ensure, Result};

pub(crate) struct Conv<'g> {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    oh: usize,
    ow: usize,
    kernel: Hw,
    stride: Hw,
    pad: Hw,
    dilation: Hw,
    group: usize,
    weights: &'g [f32],
    bias: Option<&'g [f32]>,
}

impl<'g> Conv<'g> {
    pub fn new(
        p: &ConvParams,
        input: &[usize],
        output: &[usize],
        weights: &'g [crate::ir::Tensor],
    ) -> Result<Self> {
        let ([c, h, w], [o, oh, ow]) = (dims3(input)?, dims3(output)?);
        ensure!(
            p.group > 0 && c % p.group == 0 && o % p.group == 0,
            "group {} does not divide channels",
            p.group
        );
        Ok(Conv {
            c,
            h,
            w,
            o,
            oh,
            ow,
            kernel: p.kernel,
            stride: p.stride,
            pad: p.pad,
            dilation: p.dilation,
            group: p.group,
            weights: &weights[0].data,
            bias: p.bias_term.then(|| weights[1].data.as_slice()),
        })
    }

    /// 1×1, stride 1, no padding: the input plane already is the column matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == Hw::square(1) && self.stride == Hw::square(1) && self.pad == Hw::square(0)
    }

    /// `n` images: `input` is `n × C×H×W`, `out` is `n × O×OH×OW`.
    pub fn run(&self, input: &[f32], n: usize, out: &mut [f32]) {
        let (cg, og) = (self.c / self.group, self.o / self.group);
        let kk = cg * self.kernel.h * self.kernel.w;
        let (plane, hw) = (self.h * self.w, self.oh * self.ow);
        let mut col = if self.is_pointwise() {
            Vec::new()
        } else {
            vec![0.0; kk * hw]
        };
        for img in 0..n {
            let x = &input[img * self.c * plane..][..self.c * plane];
            let y = &mut out[img * self.o * hw..][..self.o * hw];
            for (oc, row) in y.chunks_mut(hw).enumerate() {
                row.fill(self.bias.map_or(0.0, |b| b[oc]));
            }
            for g in 0..self.group {
                let xg = &x[g * cg * plane..][..cg * plane];
                let b: &[f32] = if self.is_pointwise() {
                    xg
                } else {
                    self.im2col(xg, cg, &mut col);
                    &col
                };
                let wg = &self.weights[g * og * kk..][..og * kk];
                sgemm(
                    og,
                    kk,
                    hw,
                    View::rows(wg, kk),
                    View::rows(b, hw),
                    1.0,
                    &mut y[g * og * hw..][..og * hw],
                );
            }
        }
    }

    /// Caffe's im2col: row `(c, ky, kx)`, column `(oy, ox)`, zero where the tap falls in padding.
    fn im2col(&self, x: &[f32], channels: usize, col: &mut [f32]) {
        let (h, w, oh, ow) = (self.h as isize, self.w as isize, self.oh, self.ow);
        let (sh, sw) = (self.stride.h as isize, self.stride.w as isize);
        let mut rows = col.chunks_mut(oh * ow);
        for c in 0..channels {
            let xc = &x[c * self.h * self.w..][..self.h * self.w];
            for ky in 0..self.kernel.h {
                for kx in 0..self.kernel.w {
                    let row = rows.next().expect("col has one row per (c, ky, kx)");
                    let dy = (ky * self.dilation.h) as isize - self.pad.h as isize;
                    let dx = (kx * self.dilation.w) as isize - self.pad.w as isize;
                    for (oy, dst) in row.chunks_mut(ow).enumerate() {
                        let iy = oy as isize * sh + dy;
                        if iy < 0 || iy >= h {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &xc[iy as usize * self.w..][..self.w];
                        if sw == 1 {
                            // Contiguous run of valid taps with zero fringes.
                            let lo = (-dx).clamp(0, ow as isize) as usize;
                            let hi = (w - dx).clamp(lo as isize, ow as isize) as usize;
                            dst[..lo].fill(0.0);
                            dst[lo..hi].copy_from_slice(
                                &src[(lo as isize + dx) as usize..(hi as isize + dx) as usize],
                            );
                            dst[hi..].fill(0.0);
                        } else {
                            for (ox, d) in dst.iter_mut().enumerate() {
                                let ix = ox as isize * sw + dx;
                                *d = if ix >= 0 && ix < w {
                                    src[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn dims3(s: &[usize]) -> Result<[usize; 3]> {
    match s {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => anyhow::bail!("needs a C×H×W blob, got shape {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Tensor;

    fn params(o: usize, k: Hw, s: Hw, p: Hw, d: Hw, group: usize, bias: bool) -> ConvParams {
        ConvParams {
            num_output: o,
            kernel: k,
            stride: s,
            pad: p,
            dilation: d,
            group,
            bias_term: bias,
        }
    }

    /// Direct definition of Caffe's convolution, for comparison.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        [c, h, w]: [usize; 3],
        p: &ConvParams,
        wt: &[f32],
        b: Option<&[f32]>,
        oh: usize,
        ow: usize,
    ) -> Vec<f32> {
        let (cg, og) = (c / p.group, p.num_output / p.group);
        let mut y = vec![0.0; p.num_output * oh * ow];
        for o in 0..p.num_output {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for ci in 0..cg {
                        for ky in 0..p.kernel.h {
                            for kx in 0..p.kernel.w {
                                let iy = (oy * p.stride.h + ky * p.dilation.h) as isize
                                    - p.pad.h as isize;
                                let ix = (ox * p.stride.w + kx * p.dilation.w) as isize
                                    - p.pad.w as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let xv = x[((g * cg + ci) * h + iy as usize) * w + ix as usize];
                                    acc += xv
                                        * wt[((o * cg + ci) * p.kernel.h + ky) * p.kernel.w + kx];
                                }
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn hand_computed_3x3_with_padding() {
        // 1 channel 3×3 input 1..9, kernel of ones 3×3, pad 1: each output is the sum of its
        // in-bounds neighbourhood. Corner (0,0): 1+2+4+5 = 12; centre: 45; edge (0,1): 1+2+3+4+5+6 = 21.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let p = params(
            1,
            Hw::square(3),
            Hw::square(1),
            Hw::square(1),
            Hw::square(1),
            1,
            true,
        );
        let w = vec![
            Tensor::new(vec![1, 1, 3, 3], vec![1.0; 9]),
            Tensor::new(vec![1], vec![0.5]),
        ];
        let conv = Conv::new(&p, &[1, 3, 3], &[1, 3, 3], &w).unwrap();
        let mut y = vec![0.0; 9];
        conv.run(&x, 1, &mut y);
        assert_eq!(
            y,
            vec![12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5]
        );
    }

    #[test]
    fn grouped_dilated_strided_rectangular_matches_definition() {
        let (c, h, w) = (4, 9, 8);
        let p = params(
            6,
            Hw { h: 3, w: 2 },
            Hw { h: 2, w: 1 },
            Hw { h: 1, w: 2 },
            Hw { h: 2, w: 3 },
            2,
            true,
        );
        let oh = crate::ir::shape::conv_out(h, 3, 2, 1, 2).unwrap();
        let ow = crate::ir::shape::conv_out(w, 2, 1, 2, 3).unwrap();
        let x: Vec<f32> = (0..2 * c * h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let wt: Vec<f32> = (0..6 * 2 * 3 * 2)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..6).map(|i| i as f32 * 0.25).collect();
        let ws = vec![
            Tensor::new(vec![6, 2, 3, 2], wt.clone()),
            Tensor::new(vec![6], b.clone()),
        ];
        let conv = Conv::new(&p, &[c, h, w], &[6, oh, ow], &ws).unwrap();
        let mut y = vec![0.0; 2 * 6 * oh * ow];
        conv.run(&x, 2, &mut y);
        for img in 0..2 {
            let want = naive(
                &x[img * c * h * w..][..c * h * w],
                [c, h, w],
                &p,
                &wt,
                Some(&b),
                oh,
                ow,
            );
            for (a, b) in y[img * 6 * oh * ow..][..6 * oh * ow].iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn pointwise_uses_input_directly() {
        let p = params(
            2,
            Hw::square(1),
            Hw::square(1),
            Hw::square(0),
            Hw::square(1),
            1,
            false,
        );
        let ws = vec![Tensor::new(vec![2, 2, 1, 1], vec![1.0, 2.0, -1.0, 0.5])];
        let conv = Conv::new(&p, &[2, 1, 2], &[2, 1, 2], &ws).unwrap();
        let mut y = vec![0.0; 4];
        conv.run(&[1.0, 2.0, 3.0, 4.0], 1, &mut y);
        assert_eq!(y, vec![7.0, 10.0, 0.5, 0.0]);
    }
}
