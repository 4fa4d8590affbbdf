//! Normalising ops: BatchNorm, LRN (both regions) and Softmax, each in the operation order of
//! Caffe's CPU implementation so that the float reference rounds like Caffe.

use super::elementwise::split_axis;
use crate::ir::{LrnParams, NormRegion, Tensor};
use anyhow::{ensure, Result};

/// Caffe BatchNorm with stored statistics: `(x - mean/sf) / sqrt(var/sf + eps)`, where `sf` is
/// the moving-average counter (blob 2) and `sf == 0` makes the factor 0 (Caffe's rule).
pub(crate) struct BatchNorm {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Elements per channel per image.
    inner: usize,
}

impl BatchNorm {
    pub fn new(eps: f32, input: &[usize], weights: &[Tensor]) -> Result<Self> {
        let channels = input.first().copied().unwrap_or(1);
        let sf = weights[2].data.first().copied().unwrap_or(0.0);
        let factor = if sf == 0.0 { 0.0 } else { 1.0 / sf };
        ensure!(
            weights[0].len() == channels && weights[1].len() == channels,
            "BatchNorm statistics do not match {channels} channels"
        );
        Ok(BatchNorm {
            mean: weights[0].data.iter().map(|m| m * factor).collect(),
            std: weights[1]
                .data
                .iter()
                .map(|v| (v * factor + eps).sqrt())
                .collect(),
            inner: input.iter().skip(1).product(),
        })
    }

    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let c = self.mean.len();
        for (i, (y, x)) in y
            .chunks_mut(self.inner)
            .zip(x.chunks(self.inner))
            .enumerate()
        {
            let (m, s) = (self.mean[i % c], self.std[i % c]);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - m) / s;
            }
        }
    }
}

/// Local response normalisation.
pub(crate) struct Lrn {
    p: LrnParams,
    c: usize,
    h: usize,
    w: usize,
}

impl Lrn {
    pub fn new(p: &LrnParams, input: &[usize]) -> Result<Self> {
        ensure!(
            p.local_size % 2 == 1,
            "LRN local_size must be odd, got {}",
            p.local_size
        );
        let [c, h, w] = super::conv::dims3(input)?;
        Ok(Lrn {
            p: p.clone(),
            c,
            h,
            w,
        })
    }

    pub fn run(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let per = self.c * self.h * self.w;
        for (x, y) in x.chunks(per).zip(y.chunks_mut(per)).take(n) {
            match self.p.region {
                NormRegion::AcrossChannels => self.across(x, y),
                NormRegion::WithinChannel => self.within(x, y),
            }
        }
    }

    /// ACROSS_CHANNELS: `scale_c = k + alpha/size · Σ x²` over channels `c-(size-1)/2 ..=
    /// c+(size-1)/2` (zero outside), computed as Caffe does with a running sum (add the head
    /// channel, subtract the tail), then `y = x · scale^-beta`.
    fn across(&self, x: &[f32], y: &mut [f32]) {
        let (size, plane) = (self.p.local_size, self.h * self.w);
        let pre_pad = (size - 1) / 2;
        let a = self.p.alpha / size as f32;
        let mut sq = vec![0.0f32; (self.c + size - 1) * plane];
        for (d, &v) in sq[pre_pad * plane..].iter_mut().zip(x) {
            *d = v * v;
        }
        let mut scale = vec![self.p.k; self.c * plane];
        for c in 0..size {
            for (s, &q) in scale[..plane].iter_mut().zip(&sq[c * plane..]) {
                *s += a * q;
            }
        }
        for c in 1..self.c {
            let (prev, cur) = scale.split_at_mut(c * plane);
            let cur = &mut cur[..plane];
            cur.copy_from_slice(&prev[(c - 1) * plane..]);
            for (s, &q) in cur.iter_mut().zip(&sq[(c + size - 1) * plane..]) {
                *s += a * q;
            }
            for (s, &q) in cur.iter_mut().zip(&sq[(c - 1) * plane..]) {
                *s += -a * q;
            }
        }
        for ((y, &x), &s) in y.iter_mut().zip(x).zip(&scale) {
            *y = s.powf(-self.p.beta) * x;
        }
    }

    /// WITHIN_CHANNEL, as Caffe builds it from layers: square, AVE-pool `size×size` with stride 1
    /// and pad `(size-1)/2` (divisor always `size²`: the window never leaves the padded image),
    /// then `(1 + alpha·avg)^-beta` (Caffe's Power layer uses shift 1 here: `k` is ignored), times x.
    fn within(&self, x: &[f32], y: &mut [f32]) {
        let (size, h, w) = (self.p.local_size, self.h as isize, self.w as isize);
        let pad = ((size - 1) / 2) as isize;
        let pool_size = (size * size) as f32;
        let plane = self.h * self.w;
        for (xc, yc) in x.chunks(plane).zip(y.chunks_mut(plane)) {
            for py in 0..h {
                for px in 0..w {
                    let mut s = 0.0f32;
                    for r in (py - pad).max(0)..(py - pad + size as isize).min(h) {
                        for c in (px - pad).max(0)..(px - pad + size as isize).min(w) {
                            let v = xc[(r * w + c) as usize];
                            s += v * v;
                        }
                    }
                    let avg = s / pool_size;
                    let i = (py * w + px) as usize;
                    yc[i] = (1.0 + self.p.alpha * avg).powf(-self.p.beta) * xc[i];
                }
            }
        }
    }
}

/// Softmax along a Caffe axis, max-subtracted for stability (as Caffe does).
pub(crate) struct Softmax {
    dim: usize,
    inner: usize,
}

impl Softmax {
    pub fn new(axis: usize, input: &[usize]) -> Result<Self> {
        let (_, dim, inner) = split_axis(input, axis)?;
        Ok(Softmax { dim, inner })
    }

    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let block = self.dim * self.inner;
        if block == 0 {
            return;
        }
        for (x, y) in x.chunks(block).zip(y.chunks_mut(block)) {
            for j in 0..self.inner {
                let at = |c: usize| c * self.inner + j;
                let max = (0..self.dim)
                    .map(|c| x[at(c)])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for c in 0..self.dim {
                    let e = (x[at(c)] - max).exp();
                    y[at(c)] = e;
                    sum += e;
                }
                for c in 0..self.dim {
                    y[at(c)] /= sum;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn batchnorm_divides_statistics_by_the_scale_factor() {
        // mean [2, 4], var [8, 0], sf 2 -> mean' [1, 2], std [sqrt(4+eps), sqrt(0+eps)].
        let w = [
            Tensor::new(vec![2], vec![2.0, 4.0]),
            Tensor::new(vec![2], vec![8.0, 0.0]),
            Tensor::new(vec![1], vec![2.0]),
        ];
        let bn = BatchNorm::new(1e-5, &[2, 1, 1], &w).unwrap();
        let mut y = [0.0; 2];
        bn.run(&[5.0, 3.0], &mut y);
        close(
            &y,
            &[4.0 / (4.0f32 + 1e-5).sqrt(), 1.0 / 1e-5f32.sqrt()],
            1e-6,
        );
        // sf == 0: statistics multiplied by 0 -> y = x / sqrt(eps).
        let w0 = [w[0].clone(), w[1].clone(), Tensor::new(vec![1], vec![0.0])];
        let bn = BatchNorm::new(0.25, &[2], &w0).unwrap();
        bn.run(&[1.0, -1.0], &mut y);
        assert_eq!(y, [2.0, -2.0]);
    }

    #[test]
    fn lrn_across_channels_by_hand() {
        // 3 channels, 1×1 plane, x = [1, 2, 3], size 3, alpha 3, beta 0.5, k 1:
        // scale = 1 + (3/3)·Σ x² over the window: c0: 1+1+4 = 6, c1: 1+1+4+9 = 15, c2: 1+4+9 = 14.
        let p = LrnParams {
            local_size: 3,
            alpha: 3.0,
            beta: 0.5,
            k: 1.0,
            region: NormRegion::AcrossChannels,
        };
        let lrn = Lrn::new(&p, &[3, 1, 1]).unwrap();
        let mut y = [0.0; 3];
        lrn.run(&[1.0, 2.0, 3.0], 1, &mut y);
        close(
            &y,
            &[1.0 / 6f32.sqrt(), 2.0 / 15f32.sqrt(), 3.0 / 14f32.sqrt()],
            1e-6,
        );
    }

    #[test]
    fn lrn_within_channel_by_hand() {
        // 1 channel 2×2 plane x = [1,2,3,4], size 3, alpha 9, beta 1: every 3×3 window (pad 1)
        // covers the whole plane: Σx² = 30, avg = 30/9, scale = 1 + 9·30/9 = 31 (k is ignored).
        let p = LrnParams {
            local_size: 3,
            alpha: 9.0,
            beta: 1.0,
            k: 100.0,
            region: NormRegion::WithinChannel,
        };
        let lrn = Lrn::new(&p, &[1, 2, 2]).unwrap();
        let mut y = [0.0; 4];
        lrn.run(&[1.0, 2.0, 3.0, 4.0], 1, &mut y);
        close(&y, &[1.0 / 31.0, 2.0 / 31.0, 3.0 / 31.0, 4.0 / 31.0], 1e-6);
    }

    #[test]
    fn softmax_along_channels_is_stable() {
        // [2 channels, 2 positions]: softmax over channels at each position.
        let sm = Softmax::new(1, &[2, 2]).unwrap();
        let mut y = [0.0; 4];
        sm.run(&[1000.0, 0.0, 1000.0, 2f32.ln()], &mut y);
        close(&y, &[0.5, 1.0 / 3.0, 0.5, 2.0 / 3.0], 1e-6);
    }
}
