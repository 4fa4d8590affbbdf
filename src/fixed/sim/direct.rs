//! The geometry shared by the direct-convolution kernels (`vnni.rs`, `avx256.rs`): a padded
//! copy of the input image, each output pixel's receptive field as a few contiguous segments of
//! it, and the weights reordered and packed to match.
//!
//! The kernels read a pixel's receptive field straight from the padded image, `G` elements at a
//! time (one 32-bit broadcast: four `u8` or two `i16`). Each segment's weights are padded with
//! zeros to a multiple of `G`, so whatever the last group reads beyond the segment is multiplied
//! by zero and adds nothing; the image keeps [`SLACK`] bytes after its end for those reads.

use crate::fixed::graph::Hwc;

/// Elements of slack after the padded image: a segment's last group may read up to `G - 1`
/// elements past it.
pub(super) const SLACK: usize = 64;

/// A conv (or an fc, as a 1×1 conv on a 1×1 image) as every direct-convolution kernel takes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvSpec<'a> {
    pub ind: Hwc,
    pub outd: Hwc,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub groups: usize,
    /// `[out_c][kh][kw][in_c / groups]`.
    pub weights: &'a [i8],
    pub bias: &'a [i8],
    /// One shift for every output channel (length 1) or one per output channel.
    pub bias_lshift: &'a [i32],
    pub out_rshift: &'a [i32],
}

impl ConvSpec<'_> {
    /// The geometry for a kernel whose dot product takes `g` elements at a time.
    pub fn geometry(&self, g: usize) -> Geometry {
        Geometry::new(
            self.ind,
            self.outd,
            self.kernel,
            self.stride,
            self.pad,
            self.groups,
            g,
        )
    }

    /// `(bias << bias_lshift) + round_term` of output channel `o`, wrapping.
    pub fn bias_term(&self, o: usize) -> i32 {
        let bl = Self::at(self.bias_lshift, o) as u32;
        ((self.bias[o] as i32) << bl)
            .wrapping_add(crate::fixed::kernels::round_term(self.rshift(o)))
    }

    /// `out_rshift` of output channel `o`.
    pub fn rshift(&self, o: usize) -> u32 {
        Self::at(self.out_rshift, o) as u32
    }

    fn at(v: &[i32], o: usize) -> i32 {
        v[if v.len() == 1 { 0 } else { o }]
    }
}

/// One contiguous run of the receptive field: `off` elements from the pixel's base in the padded
/// image, `len` elements (a multiple of the kernel's group `G`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Seg {
    pub off: usize,
    pub len: usize,
}

/// The part of an output row's receptive field that reads image rows, not the zero padding above
/// or below the image ([`Geometry::row_window`]).
#[derive(Clone, Debug)]
pub(super) struct RowWindow {
    /// The segments read (segments go kernel row by kernel row).
    pub segs: std::ops::Range<usize>,
    /// Weight elements per channel before `segs.start`: where the window's weights start.
    pub skipped: usize,
}

/// Where a conv (or an fc, as a 1×1 conv on a 1×1 image) reads its input.
#[derive(Debug)]
pub(super) struct Geometry {
    pub ind: Hwc,
    pub outd: Hwc,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    /// Padded image height/width.
    pub hp: usize,
    pub wp: usize,
    pub groups: usize,
    pub cout_g: usize,
    /// Receptive-field segments per group (offsets include the group's channel offset).
    pub segs: Vec<Vec<Seg>>,
    /// Padded reduction length in elements (the sum of one group's segment lengths).
    pub kp: usize,
    /// Per segment, the `(ky, kx)` of its first weight and its unpadded length.
    taps: Vec<(usize, usize, usize)>,
    /// Per output row, [`row_window`](Self::row_window).
    windows: Vec<RowWindow>,
    kw: usize,
    cin_g: usize,
}

impl Geometry {
    /// `g`: elements per group of the kernel's dot product (segments are padded to it).
    pub fn new(
        ind: Hwc,
        outd: Hwc,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        groups: usize,
        g: usize,
    ) -> Geometry {
        let (kh, kw) = kernel;
        let c = ind.c;
        let cin_g = c / groups;
        // The padded image must hold every window (Caffe's rule guarantees it; be general).
        let hp = (ind.h + 2 * pad.0).max((outd.h.max(1) - 1) * stride.0 + kh);
        let wp = (ind.w + 2 * pad.1).max((outd.w.max(1) - 1) * stride.1 + kw);
        // One segment per kernel row when a row of the window is contiguous (all channels), one
        // per tap otherwise (grouped convolution reads a slice of the channels).
        let mut taps = Vec::new();
        if groups == 1 {
            taps.extend((0..kh).map(|ky| (ky, 0, kw * c)));
        } else {
            for ky in 0..kh {
                taps.extend((0..kw).map(|kx| (ky, kx, cin_g)));
            }
        }
        let segs: Vec<Vec<Seg>> = (0..groups)
            .map(|grp| {
                taps.iter()
                    .map(|&(ky, kx, len)| Seg {
                        off: (ky * wp + kx) * c + grp * cin_g,
                        len: len.div_ceil(g) * g,
                    })
                    .collect()
            })
            .collect();
        let kp = segs[0].iter().map(|s| s.len).sum();
        let mut geo = Geometry {
            ind,
            outd,
            stride,
            pad,
            hp,
            wp,
            groups,
            cout_g: outd.c / groups,
            segs,
            kp,
            taps,
            windows: Vec::new(),
            kw,
            cin_g,
        };
        geo.windows = (0..outd.h)
            .map(|oy| {
                let segs = geo.row_segments(oy);
                let skipped = geo.segs[0][..segs.start].iter().map(|s| s.len).sum();
                RowWindow { segs, skipped }
            })
            .collect();
        geo
    }

    /// Each output channel's weights (`[out_c][kh][kw][in_c / groups]`) in segment order, each
    /// segment zero-padded: `[out_c][kp]`.
    pub fn reorder(&self, weights: &[i8]) -> Vec<i8> {
        let ksize = self.weights_per_output();
        let mut wk = vec![0i8; self.outd.c * self.kp];
        for (o, dst) in wk.chunks_exact_mut(self.kp).enumerate() {
            let src = &weights[o * ksize..(o + 1) * ksize];
            let mut at = 0;
            for (seg, &(ky, kx, len)) in self.segs[0].iter().zip(&self.taps) {
                let from = (ky * self.kw + kx) * self.cin_g;
                dst[at..at + len].copy_from_slice(&src[from..from + len]);
                at += seg.len;
            }
        }
        wk
    }

    /// What output row `oy` reads. The other kernel rows lie in the zero padding above or
    /// below the image: a kernel skips them (their products are zero, or `128·Σw` for a kernel
    /// that reads `u = x + 128`, see [`row_bias`](Self::row_bias)).
    pub fn row_window(&self, oy: usize) -> &RowWindow {
        &self.windows[oy]
    }

    /// The segments of output row `oy`'s receptive field that read image rows rather than the
    /// zero padding above or below it (segments go kernel row by kernel row).
    fn row_segments(&self, oy: usize) -> std::ops::Range<usize> {
        let top = oy * self.stride.0;
        let inside = |&(ky, _, _): &(usize, usize, usize)| {
            top + ky >= self.pad.0 && top + ky < self.pad.0 + self.ind.h
        };
        let first = self.taps.iter().position(inside).unwrap_or(0);
        let end = self.taps.iter().rposition(inside).map_or(0, |e| e + 1);
        first..end.max(first)
    }

    /// `[segment][group][block][lanes]`: `128·Σw` over each segment's weights in `wk` (from
    /// [`reorder`](Self::reorder)), wrapping. A kernel that reads `u = x + 128` (and took
    /// `128·Σw` of every weight off the bias) gives a skipped segment's share back to the bias:
    /// see [`row_bias`](Self::row_bias).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the offset kernels are x86
    pub fn segment_offsets(&self, wk: &[i8], lanes: usize) -> Vec<i32> {
        let mut out = Vec::new();
        let mut at = 0;
        for s in &self.segs[0] {
            out.extend(self.per_lane(lanes, |o| {
                let w = &wk[o * self.kp + at..o * self.kp + at + s.len];
                w.iter()
                    .fold(0i32, |a, &v| a.wrapping_add(v as i32))
                    .wrapping_mul(128)
            }));
            at += s.len;
        }
        out
    }

    /// The bias of `n` lanes from `first` on (`bias` laid out as [`per_lane`](Self::per_lane))
    /// for an output row that reads only segments `rows`: `bias` itself when the row skips
    /// nothing or there is no offset (`offsets` empty), else `buf` holding it plus the
    /// [`segment_offsets`](Self::segment_offsets) of the skipped segments. (Reading the bias in
    /// place matters: a copy on every row cost the avx2 kernel 5 %.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the offset kernels are x86
    pub fn row_bias<'a>(
        &self,
        bias: &'a [i32],
        offsets: &[i32],
        rows: &std::ops::Range<usize>,
        first: usize,
        buf: &'a mut [i32],
    ) -> &'a [i32] {
        let n = buf.len();
        if offsets.is_empty() || rows.len() == self.segs[0].len() {
            return &bias[first..first + n];
        }
        buf.copy_from_slice(&bias[first..first + n]);
        for j in (0..self.segs[0].len()).filter(|j| !rows.contains(j)) {
            let add = &offsets[j * bias.len() + first..][..n];
            for (b, &a) in buf.iter_mut().zip(add) {
                *b = b.wrapping_add(a);
            }
        }
        buf
    }

    fn weights_per_output(&self) -> usize {
        self.taps.iter().map(|t| t.2).sum()
    }

    /// Blocks of `lanes` output channels per group.
    pub fn blocks(&self, lanes: usize) -> usize {
        self.cout_g.div_ceil(lanes)
    }

    /// `wk` (from [`reorder`](Self::reorder)) packed as `[group][block][kp / g][lanes][g]`, so
    /// that one vector load gives the next `g` weights of `lanes` output channels; channels past
    /// the group's end are zero.
    pub fn pack(&self, wk: &[i8], lanes: usize, g: usize) -> Vec<i8> {
        let nb = self.blocks(lanes);
        let mut w = vec![0i8; self.groups * nb * self.kp * lanes];
        for grp in 0..self.groups {
            for blk in 0..nb {
                let base = (grp * nb + blk) * self.kp * lanes;
                for lane in 0..lanes.min(self.cout_g - blk * lanes) {
                    let o = grp * self.cout_g + blk * lanes + lane;
                    for (k, &v) in wk[o * self.kp..(o + 1) * self.kp].iter().enumerate() {
                        w[base + (k / g) * lanes * g + lane * g + k % g] = v;
                    }
                }
            }
        }
        w
    }

    /// Per output channel `o`, `f(o)` laid out as `[group][block][lanes]` (zero past the end).
    pub fn per_lane<T: Copy + Default>(&self, lanes: usize, f: impl Fn(usize) -> T) -> Vec<T> {
        let nb = self.blocks(lanes);
        let mut v = vec![T::default(); self.groups * nb * lanes];
        for grp in 0..self.groups {
            for blk in 0..nb {
                for lane in 0..lanes.min(self.cout_g - blk * lanes) {
                    v[(grp * nb + blk) * lanes + lane] = f(grp * self.cout_g + blk * lanes + lane);
                }
            }
        }
        v
    }

    /// `img` = the padded image of `x` with every element mapped by `map`, padding = `fill`,
    /// plus [`SLACK`] elements of `fill`.
    #[inline]
    pub fn pad_image<T: Copy>(&self, x: &[i8], map: impl Fn(i8) -> T, fill: T, img: &mut Vec<T>) {
        let (c, wp) = (self.ind.c, self.wp);
        // Only the padding is filled: each image row is written once (this runs per image and
        // layer, so a memset of the whole image would be a visible share of a small net's time).
        img.clear();
        let row = self.ind.w * c;
        let (left, right) = (self.pad.1 * c, (wp - self.ind.w - self.pad.1) * c);
        img.resize(self.pad.0 * wp * c, fill);
        for y in 0..self.ind.h {
            let xr = &x[y * row..(y + 1) * row];
            img.extend(std::iter::repeat_n(fill, left));
            img.extend(xr.iter().map(|&v| map(v)));
            img.extend(std::iter::repeat_n(fill, right));
        }
        img.resize(self.hp * wp * c + SLACK, fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(h: usize, kh: usize, pad: usize, stride: usize, groups: usize) -> Geometry {
        let (c, kw) = (2 * groups, 3);
        let oh = (h + 2 * pad - kh) / stride + 1;
        Geometry::new(
            Hwc { h, w: 4, c },
            Hwc {
                h: oh,
                w: 4 + 2 * pad - kw + 1,
                c: groups,
            },
            (kh, kw),
            (stride, 1),
            (pad, pad),
            groups,
            2,
        )
    }

    #[test]
    fn row_segments_skip_kernel_rows_in_the_padding() {
        // 5 kernel rows, pad 2, 3 image rows: output row 0 starts two rows above the image.
        let g = geo(3, 5, 2, 1, 1);
        let rows: Vec<_> = (0..g.outd.h).map(|oy| g.row_segments(oy)).collect();
        assert_eq!(rows, vec![2..5, 1..4, 0..3]);
        // Stride 2: output row 1 starts at padded row 2, the image's first row.
        let g = geo(6, 3, 1, 2, 1);
        assert_eq!(g.row_segments(0), 1..3);
        assert_eq!(g.row_segments(1), 0..3);
        assert_eq!(g.row_segments(2), 0..3);
        // Grouped: one segment per tap, kw = 3 per kernel row.
        let g = geo(3, 5, 2, 1, 2);
        assert_eq!(g.segs[0].len(), 15);
        assert_eq!(g.row_segments(0), 6..15);
        // A kernel row of 1 entirely in the padding: nothing to read.
        let g = geo(2, 1, 2, 1, 1);
        assert_eq!(g.row_segments(0), 0..0);
        assert_eq!(g.row_segments(2), 0..1);
    }
}
