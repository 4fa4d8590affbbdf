//! The general engine's convolutions (group 1, no dilation) on the fast path's direct SIMD
//! kernels: per image, the NCHW input is written into a zero-bordered NHWC buffer, convolved by
//! [`DirectConv`], and the NHWC output transposed back to NCHW.
//!
//! Why: calibration and the per-layer report need every blob, so they run the general engine
//! (not the fused chain), where im2col (a copy of the input per kernel tap) and matrixmultiply's
//! packing cost more than the products on layers with few channels. Only the order of the
//! additions inside each output differs from the im2col GEMM (as between any two GEMMs); the
//! plain NCHW kernels stay what [`super::Engine::set_fast_path`]`(None)` runs.

use super::direct::{DirectConv, Isa};
use crate::ir::ConvParams;

pub(super) struct NchwDirect {
    k: DirectConv,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
}

impl NchwDirect {
    /// `None` when the direct kernels do not take this convolution ([`DirectConv::caffe`]): the
    /// caller keeps the im2col GEMM.
    pub fn build(
        p: &ConvParams,
        weights: &[crate::ir::Tensor],
        input: &[usize],
        output: &[usize],
        isa: Isa,
    ) -> Option<Self> {
        let k = DirectConv::caffe(isa, p, weights, input, output)?;
        let [c, h, w] = input.try_into().ok()?;
        Some(NchwDirect {
            k,
            c,
            h,
            w,
            o: p.num_output,
        })
    }

    /// `n` images: `input` is `n × C×H×W`, `out` is `n × O×OH×OW`.
    pub fn run(&self, input: &[f32], n: usize, out: &mut [f32]) {
        let (c, h, w, o) = (self.c, self.h, self.w, self.o);
        let hw_out = self.k.out_len() / o.max(1);
        let pad = self.k.pad();
        let wp = w + 2 * pad.1;
        // The border stays zero: only the interior is written, image after image.
        let mut padded = vec![0.0f32; self.k.padded_len()];
        let mut y = vec![0.0f32; self.k.out_len()];
        for (x, out) in input
            .chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(o * hw_out))
            .take(n)
        {
            for (ch, plane) in x.chunks_exact(h * w).enumerate() {
                for (r, row) in plane.chunks_exact(w).enumerate() {
                    let start = ((r + pad.0) * wp + pad.1) * c + ch;
                    for (dst, &v) in padded[start..].iter_mut().step_by(c).zip(row) {
                        *dst = v;
                    }
                }
            }
            self.k.run(&padded, &mut y);
            for (oc, plane) in out.chunks_exact_mut(hw_out).enumerate() {
                for (dst, &v) in plane.iter_mut().zip(y[oc..].iter().step_by(o)) {
                    *dst = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::conv::Conv;
    use crate::ir::{Hw, Tensor};

    /// On every ISA this CPU has: the transposed direct convolution equals the im2col GEMM
    /// (to float rounding) on rectangular kernels, strides, asymmetric padding, channel counts
    /// that are not a multiple of the lanes, with and without bias, over several images; and
    /// groups or dilation are left to the GEMM.
    #[test]
    fn equals_the_im2col_gemm() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.available())
            .collect();
        #[rustfmt::skip]
        let cases = [
            // (c, h, w, o, kernel, stride, pad, bias)
            (3, 9, 8, 5, Hw { h: 3, w: 2 }, Hw { h: 2, w: 1 }, Hw { h: 1, w: 2 }, true),
            (16, 8, 8, 16, Hw::square(3), Hw::square(1), Hw::square(1), false),
            (7, 6, 11, 19, Hw::square(5), Hw::square(2), Hw::square(2), true),
            (2, 4, 4, 3, Hw::square(1), Hw::square(1), Hw::square(0), true),
        ];
        for isa in isas {
            for &(c, h, w, o, kernel, stride, pad, bias) in &cases {
                let p = ConvParams {
                    num_output: o,
                    kernel,
                    stride,
                    pad,
                    dilation: Hw::square(1),
                    group: 1,
                    bias_term: bias,
                };
                let oh = crate::ir::shape::conv_out(h, kernel.h, stride.h, pad.h, 1).unwrap();
                let ow = crate::ir::shape::conv_out(w, kernel.w, stride.w, pad.w, 1).unwrap();
                let n = 3;
                let x: Vec<f32> = (0..n * c * h * w)
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                    .collect();
                let mut ws = vec![Tensor::new(
                    vec![o, c, kernel.h, kernel.w],
                    (0..o * c * kernel.h * kernel.w)
                        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                        .collect(),
                )];
                if bias {
                    ws.push(Tensor::new(
                        vec![o],
                        (0..o).map(|i| i as f32 * 0.25).collect(),
                    ));
                }
                let (input, output) = ([c, h, w], [o, oh, ow]);
                let d = NchwDirect::build(&p, &ws, &input, &output, isa).expect("direct");
                let mut got = vec![f32::NAN; n * o * oh * ow];
                d.run(&x, n, &mut got);
                let mut want = vec![0.0; n * o * oh * ow];
                Conv::new(&p, &input, &output, &ws)
                    .unwrap()
                    .run(&x, n, &mut want);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{} case {c}x{h}x{w}->{o}: value {i}: {a} vs {b}",
                        isa.name()
                    );
                }
                for other in [
                    ConvParams {
                        group: c.min(o),
                        ..p.clone()
                    },
                    ConvParams {
                        dilation: Hw::square(2),
                        ..p.clone()
                    },
                ] {
                    if other.group != 1 || other.dilation != Hw::square(1) {
                        assert!(NchwDirect::build(&other, &ws, &input, &output, isa).is_none());
                    }
                }
            }
        }
    }
}
