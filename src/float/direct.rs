//! Direct convolution on NHWC tensors with register-blocked SIMD kernels, for the fast chain path
//! ([`super::chain`]).
//!
//! Why not im2col + GEMM: the models nnquant targets have few channels (3 → 32 → 16 → 32), so a
//! GEMM is small in every dimension and im2col copies more bytes than the GEMM multiplies. Here
//! the input is NHWC with a zero border (`pad` on each side, so no tap needs a bounds check) and
//! every output channel block is one SIMD vector: a tile of `T` output pixels × `J` vectors of
//! channels stays in registers while the loop runs over the taps `(ky, kx, c)`, broadcasting one
//! input value per pixel and loading one weight vector per channel block. For stride `s` the taps
//! of one kernel row are contiguous in the input (`kx·C + c`), so the inner loop is one flat run.
//!
//! ISAs are chosen at run time ([`Isa::detect`]): AVX-512F (16 lanes), AVX2+FMA (8 lanes), or a
//! portable Rust loop (any CPU). Weights are packed once per ISA as `[ky][kx][c][O rounded up to
//! the lane count]`, zero-padded, so a partial channel block still loads whole vectors.

use crate::ir::{ConvParams, Tensor};
use anyhow::{bail, Result};

/// Which kernels the direct convolution uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The widest ISA this CPU supports, capped by a simulator path forced with `NNQUANT_SIMD`
    /// (a 256-bit path, `avx2` or `avx-vnni`: AVX2+FMA; a path without x86 SIMD, `portable`,
    /// `neon`, `neon-dotprod`: portable), so that a forced path measures what such a CPU runs
    /// from end to end. matrixmultiply (inner products, grouped convolutions) detects the CPU
    /// itself.
    pub fn detect() -> Isa {
        use crate::fixed::SimdPath;
        let cpu = Self::widest();
        // Only a path named in the variable caps (the simulator's own choice on an AVX-512 CPU
        // without VNNI is avx2, which must not cap the float kernels); a name the simulator does
        // not know is its error to report.
        let forced = std::env::var("NNQUANT_SIMD")
            .ok()
            .and_then(|name| SimdPath::parse(&name));
        match forced {
            Some(SimdPath::Portable | SimdPath::Neon | SimdPath::NeonDotprod) => Isa::Portable,
            Some(p) if !p.elementwise_avx512() && cpu == Isa::Avx512 => Isa::Avx2,
            _ => cpu,
        }
    }

    /// The widest ISA this CPU supports.
    fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run the ISA's kernels.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// f32 lanes of one vector (the channel block and the weight padding unit).
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2 => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// One convolution (group 1, dilation 1) prepared for NHWC input with a zero border.
pub(super) struct DirectConv {
    isa: Isa,
    c: usize,
    o: usize,
    /// `o` rounded up to the lane count: the packed weights' row length.
    op: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    oh: usize,
    ow: usize,
    /// Padded input width (`w + 2·pad.w`) and height.
    wp: usize,
    hp: usize,
    /// Input rows (unpadded) and the zero rows above them.
    h: usize,
    pad: (usize, usize),
    /// `[ky][kx][c][op]`, zero beyond `o`.
    weights: Vec<f32>,
    /// `op` values, zero beyond `o` (or all zero without bias).
    bias: Vec<f32>,
    /// ReLU epilogue (`max(x,0) + slope·min(x,0)`, Caffe's formula) when fused.
    pub relu: Option<f32>,
}

/// Geometry of a convolution as the chain sees it.
pub(super) struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl DirectConv {
    /// `weights`: Caffe's `[O][C][KH][KW]`; `bias`: `O` values or `None`.
    pub fn new(isa: Isa, g: &ConvGeom, weights: &[f32], bias: Option<&[f32]>) -> Result<Self> {
        if !isa.available() {
            bail!("this CPU cannot run {} kernels", isa.name());
        }
        let (kh, kw) = g.kernel;
        let (sh, sw) = g.stride;
        let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || kh > hp || kw > wp {
            bail!("direct convolution: kernel/stride do not fit the padded input");
        }
        if weights.len() != g.o * g.c * kh * kw || bias.is_some_and(|b| b.len() != g.o) {
            bail!("direct convolution: weight sizes do not match the geometry");
        }
        let lanes = isa.lanes();
        let op = g.o.div_ceil(lanes) * lanes;
        let mut packed = vec![0.0f32; kh * kw * g.c * op];
        for o in 0..g.o {
            for c in 0..g.c {
                for ky in 0..kh {
                    for kx in 0..kw {
                        packed[((ky * kw + kx) * g.c + c) * op + o] =
                            weights[((o * g.c + c) * kh + ky) * kw + kx];
                    }
                }
            }
        }
        let mut b = vec![0.0f32; op];
        if let Some(bias) = bias {
            b[..g.o].copy_from_slice(bias);
        }
        Ok(DirectConv {
            isa,
            c: g.c,
            o: g.o,
            op,
            kh,
            kw,
            sh,
            sw,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
            wp,
            hp,
            h: g.h,
            pad: g.pad,
            weights: packed,
            bias: b,
            relu: None,
        })
    }

    /// A Caffe convolution of `[c, h, w]` into `[o, oh, ow]` (Caffe's `[O][C][KH][KW]` weights,
    /// then the bias if it has one), or `None` when these kernels do not take it: groups,
    /// dilation, or a geometry whose output is not the graph's.
    pub fn caffe(
        isa: Isa,
        p: &ConvParams,
        weights: &[Tensor],
        input: &[usize],
        output: &[usize],
    ) -> Option<Self> {
        if p.group != 1 || p.dilation.h != 1 || p.dilation.w != 1 {
            return None;
        }
        let ([c, h, w], [o, oh, ow]) = (input.try_into().ok()?, output.try_into().ok()?);
        let geom = ConvGeom {
            c,
            h,
            w,
            o,
            kernel: (p.kernel.h, p.kernel.w),
            stride: (p.stride.h, p.stride.w),
            pad: (p.pad.h, p.pad.w),
        };
        let bias = match p.bias_term {
            true => Some(weights.get(1)?.data.as_slice()),
            false => None,
        };
        let k = DirectConv::new(isa, &geom, &weights.first()?.data, bias).ok()?;
        (o == p.num_output && k.out_len() == o * oh * ow).then_some(k)
    }

    /// The zero border (rows, columns) around the input in the padded buffer.
    pub fn pad(&self) -> (usize, usize) {
        self.pad
    }

    /// Values of the padded NHWC input this convolution reads.
    pub fn padded_len(&self) -> usize {
        self.hp * self.wp * self.c
    }

    /// The kernel rows of output row `oy` that read input rows rather than the zero border
    /// above or below them: the others only add `0·w`, and are skipped (7.5 % of the products
    /// of a 5×5 conv with pad 2 on 16×16, 15 % on 8×8; the weights are finite, checked at load).
    fn rows_inside(&self, oy: usize) -> std::ops::Range<usize> {
        let top = oy * self.sh;
        let first = self.pad.0.saturating_sub(top).min(self.kh);
        let end = (self.pad.0 + self.h).saturating_sub(top).min(self.kh);
        first..end.max(first)
    }

    /// Values of the NHWC output (`oh × ow × o`).
    pub fn out_len(&self) -> usize {
        self.oh * self.ow * self.o
    }

    /// One image: `x` is the padded NHWC input, `y` the compact NHWC output.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        assert!(x.len() >= self.padded_len() && y.len() >= self.out_len());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: `new` refused ISAs this CPU lacks. Bounds: the last tile's last tap is
                // input row (oh-1)·sh + kh-1 < hp and column (ow-1)·sw + kw-1 < wp, so every read
                // is below hp·wp·c ≤ x.len() (assert above); a channel block of J vectors starts
                // at a multiple of the lane count below o, so its weight and bias vectors end at
                // or before op; stores are limited to the `left` valid channels of each pixel.
                unsafe { avx512::run(self, x, y) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: as above.
                unsafe { avx2::run(self, x, y) }
            }
            _ => {
                // SAFETY: as above (the portable tiles need no CPU feature).
                unsafe { portable::run(self, x, y) }
            }
        }
    }
}

/// The tile loop shared by the SIMD back ends: for every output row, channel block and run of
/// `T` pixels, call `$tile::<J, T, XS>` (`XS` = the pixel stride as a constant, or 0). `$blocks` lists `(J, T_max)` from the widest channel block
/// down; a block of `J` vectors is used while at least `J·lanes` channels remain, except the last
/// entry which takes what is left (its tail vectors are zero-padded weights).
macro_rules! simd_backend {
    ($(#[$attr:meta])*, $lanes:expr, $tile:ident, [$(($j:literal, $tmax:literal)),+]) => {
        $(#[$attr])*
        pub(super) unsafe fn run(k: &DirectConv, x: &[f32], y: &mut [f32]) {
            let lanes = $lanes;
            let (xp, yp, wp) = (x.as_ptr(), y.as_mut_ptr(), k.weights.as_ptr());
            let geo = Geo {
                xs: k.sw * k.c,
                row: k.wp * k.c,
                q: k.kw * k.c,
                ky: 0..k.kh,
                op: k.op,
                o: k.o,
                relu: k.relu,
            };
            let mut ob = 0;
            while ob < k.o {
                let left = k.o - ob;
                $(
                    if block_fits(left, $j, lanes) {
                        for oy in 0..k.oh {
                            let geo = Geo { ky: k.rows_inside(oy), ..geo.clone() };
                            let mut ox = 0;
                            while ox < k.ow {
                                let t = (k.ow - ox).min($tmax);
                                let xt = xp.add(((oy * k.sh) * k.wp + ox * k.sw) * k.c);
                                let yt = yp.add((oy * k.ow + ox) * k.o + ob);
                                let args = (&geo, xt, wp.add(ob), k.bias.as_ptr().add(ob), yt, left);
                                if t == $tmax {
                                    full_tile!($tile, $j, $tmax, geo.xs, args);
                                } else {
                                    seq_t!($tile, $j, t, args);
                                }
                                ox += t;
                            }
                        }
                        ob += $j * lanes;
                        continue;
                    }
                )+
            }
        }
    };
}

/// A block of `j` vectors is taken while `j·lanes` channels remain; single vectors always are.
fn block_fits(left: usize, j: usize, lanes: usize) -> bool {
    left >= j * lanes || j == 1
}

/// A full tile, with the pixel stride as a constant for the channel counts of common models
/// (`C` = 3, 8, 16, 32, 64 at stride 1) and read at run time otherwise.
macro_rules! full_tile {
    ($f:ident, $j:literal, $t:literal, $xs:expr, $a:ident) => {
        match $xs {
            3 => $f::<$j, $t, 3>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            8 => $f::<$j, $t, 8>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            16 => $f::<$j, $t, 16>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            32 => $f::<$j, $t, 32>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            64 => $f::<$j, $t, 64>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            _ => $f::<$j, $t, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
        }
    };
}

/// `match t { 1 => f::<J, 1, 0>(args), … }` for the pixel counts a tile can have.
macro_rules! seq_t {
    ($f:ident, $j:literal, $t:expr, $a:ident) => {
        match $t {
            1 => $f::<$j, 1, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            2 => $f::<$j, 2, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            3 => $f::<$j, 3, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            4 => $f::<$j, 4, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            5 => $f::<$j, 5, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            6 => $f::<$j, 6, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            7 => $f::<$j, 7, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            8 => $f::<$j, 8, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            9 => $f::<$j, 9, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            10 => $f::<$j, 10, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            11 => $f::<$j, 11, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            12 => $f::<$j, 12, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            13 => $f::<$j, 13, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            14 => $f::<$j, 14, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            15 => $f::<$j, 15, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            16 => $f::<$j, 16, 0>($a.0, $a.1, $a.2, $a.3, $a.4, $a.5),
            _ => unreachable!("tiles have at most 16 pixels"),
        }
    };
}

/// Strides a tile needs, in f32 elements.
#[derive(Clone)]
struct Geo {
    /// Between neighbouring output pixels in the input (`stride_w · C`).
    xs: usize,
    /// One padded input row (`Wp · C`).
    row: usize,
    /// Taps of one kernel row (`KW · C`).
    q: usize,
    /// The kernel rows this output row reads (the others lie in the zero border).
    ky: std::ops::Range<usize>,
    /// Packed weight row length.
    op: usize,
    /// Output channels (= output pixel stride).
    o: usize,
    relu: Option<f32>,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{block_fits, DirectConv, Geo};
    use std::arch::x86_64::*;

    simd_backend!(#[target_feature(enable = "avx512f")], 16, tile, [(2, 12), (1, 16)]);

    /// `T` pixels × `J` 16-channel vectors. `x`: the tile's first tap; `w`, `b`: the channel
    /// block's first weight / bias; `y`: the first output; `left`: channels from this block on.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const J: usize, const T: usize, const XS: usize>(
        g: &Geo,
        x: *const f32,
        w: *const f32,
        b: *const f32,
        y: *mut f32,
        left: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); J]; T];
        for j in 0..J {
            let bv = _mm512_loadu_ps(b.add(16 * j));
            for a in acc.iter_mut() {
                a[j] = bv;
            }
        }
        // A constant pixel stride makes every broadcast address one register plus a constant.
        let xs = if XS == 0 { g.xs } else { XS };
        for ky in g.ky.clone() {
            let xr = x.add(ky * g.row);
            let wr = w.add(ky * g.q * g.op);
            for i in 0..g.q {
                let mut wv = [_mm512_setzero_ps(); J];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(wr.add(i * g.op + 16 * j));
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xr.add(t * xs + i));
                    for j in 0..J {
                        a[j] = _mm512_fmadd_ps(xv, wv[j], a[j]);
                    }
                }
            }
        }
        if let Some(s) = g.relu {
            let (zero, sv) = (_mm512_setzero_ps(), _mm512_set1_ps(s));
            for a in acc.iter_mut() {
                for v in a.iter_mut() {
                    let neg = _mm512_mul_ps(sv, _mm512_min_ps(*v, zero));
                    *v = _mm512_add_ps(_mm512_max_ps(*v, zero), neg);
                }
            }
        }
        let full = left >= 16 * J;
        for (t, a) in acc.iter().enumerate() {
            let yt = y.add(t * g.o);
            for (j, v) in a.iter().enumerate() {
                let valid = left.saturating_sub(16 * j).min(16);
                if full || valid == 16 {
                    _mm512_storeu_ps(yt.add(16 * j), *v);
                } else if valid > 0 {
                    _mm512_mask_storeu_ps(yt.add(16 * j), ((1u32 << valid) - 1) as u16, *v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{block_fits, DirectConv, Geo};
    use std::arch::x86_64::*;

    simd_backend!(#[target_feature(enable = "avx2,fma")], 8, tile, [(2, 6), (1, 12)]);

    /// `T` pixels × `J` 8-channel vectors; arguments as in the AVX-512 tile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const J: usize, const T: usize, const XS: usize>(
        g: &Geo,
        x: *const f32,
        w: *const f32,
        b: *const f32,
        y: *mut f32,
        left: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); J]; T];
        for j in 0..J {
            let bv = _mm256_loadu_ps(b.add(8 * j));
            for a in acc.iter_mut() {
                a[j] = bv;
            }
        }
        // A constant pixel stride makes every broadcast address one register plus a constant.
        let xs = if XS == 0 { g.xs } else { XS };
        for ky in g.ky.clone() {
            let xr = x.add(ky * g.row);
            let wr = w.add(ky * g.q * g.op);
            for i in 0..g.q {
                let mut wv = [_mm256_setzero_ps(); J];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(wr.add(i * g.op + 8 * j));
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xr.add(t * xs + i));
                    for j in 0..J {
                        a[j] = _mm256_fmadd_ps(xv, wv[j], a[j]);
                    }
                }
            }
        }
        if let Some(s) = g.relu {
            let (zero, sv) = (_mm256_setzero_ps(), _mm256_set1_ps(s));
            for a in acc.iter_mut() {
                for v in a.iter_mut() {
                    let neg = _mm256_mul_ps(sv, _mm256_min_ps(*v, zero));
                    *v = _mm256_add_ps(_mm256_max_ps(*v, zero), neg);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let yt = y.add(t * g.o);
            for (j, v) in a.iter().enumerate() {
                let valid = left.saturating_sub(8 * j).min(8);
                if valid == 8 {
                    _mm256_storeu_ps(yt.add(8 * j), *v);
                } else if valid > 0 {
                    let mut tmp = [0.0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), yt.add(8 * j), valid);
                }
            }
        }
    }
}

/// Any CPU: the same tiles on arrays of 8 lanes, which the compiler maps to the baseline vector
/// registers (NEON on aarch64, SSE2 on x86-64).
mod portable {
    use super::{block_fits, DirectConv, Geo};

    // Tiles sized to the register file: 32 NEON registers hold 24 accumulators (6 pixels × 2
    // blocks of 2 × 128 bit); x86-64's 16 SSE registers hold 8 (4 pixels × 1 block).
    #[cfg(target_arch = "aarch64")]
    simd_backend!(#[inline(never)], 8, tile, [(2, 6), (1, 12)]);
    #[cfg(not(target_arch = "aarch64"))]
    simd_backend!(#[inline(never)], 8, tile, [(1, 4)]);

    /// `T` pixels × `J` 8-channel blocks; arguments as in the AVX-512 tile.
    #[inline(always)]
    unsafe fn tile<const J: usize, const T: usize, const XS: usize>(
        g: &Geo,
        x: *const f32,
        w: *const f32,
        b: *const f32,
        y: *mut f32,
        left: usize,
    ) {
        let mut acc = [[[0.0f32; 8]; J]; T];
        for a in acc.iter_mut() {
            for (j, v) in a.iter_mut().enumerate() {
                v.copy_from_slice(std::slice::from_raw_parts(b.add(8 * j), 8));
            }
        }
        // A constant pixel stride makes every broadcast address one register plus a constant.
        let xs = if XS == 0 { g.xs } else { XS };
        for ky in g.ky.clone() {
            let xr = x.add(ky * g.row);
            let wr = w.add(ky * g.q * g.op);
            for i in 0..g.q {
                let mut wv = [[0.0f32; 8]; J];
                for (j, v) in wv.iter_mut().enumerate() {
                    v.copy_from_slice(std::slice::from_raw_parts(wr.add(i * g.op + 8 * j), 8));
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = *xr.add(t * xs + i);
                    for (av, wv) in a.iter_mut().zip(&wv) {
                        for l in 0..8 {
                            av[l] += xv * wv[l];
                        }
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let yt = y.add(t * g.o);
            for (j, v) in a.iter().enumerate() {
                let valid = left.saturating_sub(8 * j).min(8);
                for (l, &val) in v.iter().enumerate().take(valid) {
                    *yt.add(8 * j + l) = match g.relu {
                        Some(s) => val.max(0.0) + s * val.min(0.0),
                        None => val,
                    };
                }
            }
        }
    }
}
