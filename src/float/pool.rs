//! MAX and AVE pooling with Caffe's window rules (`pooling_layer.cpp`), which differ from most
//! frameworks and decide the last bits of every output:
//! - output size: ceil rule with the "last window must start inside image or left padding" clip,
//!   already applied by `ir::shape` (read from the graph here);
//! - AVE divisor: `(hend - hstart)·(wend - wstart)` with `hend = min(hstart + k, H + pad)`, taken
//!   *before* clipping to the image, so padding inside the padded image counts, beyond it not;
//! - MAX: maximum over the window clipped to the image, starting from `-FLT_MAX`.

use crate::ir::{shape::pool_geometry, Hw, PoolMethod, PoolParams};
use anyhow::Result;

pub(crate) struct Pool {
    method: PoolMethod,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: Hw,
    stride: Hw,
    pad: Hw,
}

/// One axis of a window: `(start, end, unclipped_end)` with the start still possibly negative.
pub(super) fn window(
    o: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    size: usize,
) -> (isize, isize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min((size + pad) as isize);
    (start, end)
}

impl Pool {
    pub fn new(p: &PoolParams, input: &[usize], output: &[usize]) -> Result<Self> {
        let ([c, h, w], [_, oh, ow]) = (super::conv::dims3(input)?, super::conv::dims3(output)?);
        let (kernel, stride, pad) = pool_geometry(p, h, w);
        Ok(Pool {
            method: p.method,
            c,
            h,
            w,
            oh,
            ow,
            kernel,
            stride,
            pad,
        })
    }

    pub fn run(&self, input: &[f32], n: usize, out: &mut [f32]) {
        let (plane, oplane) = (self.h * self.w, self.oh * self.ow);
        if oplane == 0 {
            return; // nothing to write (and `chunks_mut(0)` would panic)
        }
        // Each output row's and column's window, clipped to the image, once per layer (not per
        // output value); the AVE divisor uses the windows before clipping.
        let axis = |o: usize, k: usize, s: usize, p: usize, size: usize| {
            let (start, end) = window(o, k, s, p, size);
            let clipped = (
                start.max(0) as usize,
                (end.min(size as isize).max(0) as usize).max(start.max(0) as usize),
            );
            (clipped, (end - start) as f32)
        };
        let rows: Vec<_> = (0..self.oh)
            .map(|py| axis(py, self.kernel.h, self.stride.h, self.pad.h, self.h))
            .collect();
        let cols: Vec<_> = (0..self.ow)
            .map(|px| axis(px, self.kernel.w, self.stride.w, self.pad.w, self.w))
            .collect();
        // One output row at a time, window row by window row across the whole output row: each
        // output still takes its values in Caffe's order (rows, then columns), but the outputs'
        // dependency chains are independent in the inner loop instead of one long serial chain.
        let max = self.method == PoolMethod::Max;
        for (x, y) in input
            .chunks(plane)
            .zip(out.chunks_mut(oplane))
            .take(n * self.c)
        {
            for (&((hs, he), rows_in), y) in rows.iter().zip(y.chunks_mut(self.ow)) {
                y.fill(if max { -f32::MAX } else { 0.0 });
                for r in hs..he {
                    let row = &x[r * self.w..(r + 1) * self.w];
                    for (&((ws, we), _), y) in cols.iter().zip(y.iter_mut()) {
                        for &v in &row[ws..we] {
                            // Caffe's `if (v > max) max = v`, as a select.
                            *y = if max {
                                if v > *y {
                                    v
                                } else {
                                    *y
                                }
                            } else {
                                *y + v
                            };
                        }
                    }
                }
                if !max {
                    for (&(_, cols_in), y) in cols.iter().zip(y.iter_mut()) {
                        *y /= rows_in * cols_in;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{shape::pool_out, RoundMode};

    fn run(
        method: PoolMethod,
        k: usize,
        s: usize,
        p: usize,
        global: bool,
        shape: [usize; 3],
        x: &[f32],
    ) -> Vec<f32> {
        let params = PoolParams {
            method,
            kernel: Hw::square(k),
            stride: Hw::square(s),
            pad: Hw::square(p),
            global,
            round: RoundMode::Ceil,
        };
        let [c, h, w] = shape;
        let (kk, ss, pp) = pool_geometry(&params, h, w);
        let oh = pool_out(h, kk.h, ss.h, pp.h, RoundMode::Ceil).unwrap();
        let ow = pool_out(w, kk.w, ss.w, pp.w, RoundMode::Ceil).unwrap();
        let pool = Pool::new(&params, &[c, h, w], &[c, oh, ow]).unwrap();
        let mut y = vec![f32::NAN; c * oh * ow];
        pool.run(x, 1, &mut y);
        y
    }

    #[test]
    fn ceil_rule_clips_the_last_window() {
        // 1×4 rows of a 4×4 plane, k3 s2 p0: ceil((4-3)/2)+1 = 2 windows per axis; the second
        // covers columns 2..4 only (clipped from 2..5).
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let max = run(PoolMethod::Max, 3, 2, 0, false, [1, 4, 4], &x);
        assert_eq!(max, vec![10.0, 11.0, 14.0, 15.0]);
        // AVE without padding: hend = min(hstart+3, 4) so the divisor counts only in-image cells.
        // Window (0,0): rows 0..3 cols 0..3 -> mean of 0,1,2,4,5,6,8,9,10 = 45/9 = 5.
        // Window (0,1): rows 0..3, cols 2..4 -> (2+3+6+7+10+11)/6 = 39/6 = 6.5.
        // Window (1,0): rows 2..4, cols 0..3 -> (8+9+10+12+13+14)/6 = 66/6 = 11.
        // Window (1,1): rows 2..4, cols 2..4 -> (10+11+14+15)/4 = 12.5.
        let ave = run(PoolMethod::Ave, 3, 2, 0, false, [1, 4, 4], &x);
        assert_eq!(ave, vec![5.0, 6.5, 11.0, 12.5]);
    }

    #[test]
    fn ave_divisor_counts_padding_inside_the_padded_image() {
        // 3×3 input 1..9, k3 s1 p1 -> 3×3 output. Every window lies inside the padded 5×5 image,
        // so every divisor is 9, padding included. Corner (0,0): (1+2+4+5)/9 = 12/9;
        // edge (0,1): (1+2+3+4+5+6)/9 = 21/9; centre: 45/9 = 5.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let ave = run(PoolMethod::Ave, 3, 1, 1, false, [1, 3, 3], &x);
        let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0].map(|v: f32| v / 9.0);
        assert_eq!(ave, want.to_vec());
        // MAX over the clipped window ignores padding (negative values stay negative).
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        let max = run(PoolMethod::Max, 3, 1, 1, false, [1, 3, 3], &neg);
        assert_eq!(
            max,
            vec![-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -4.0, -4.0, -5.0]
        );
    }

    #[test]
    fn ave_divisor_excludes_cells_beyond_the_padded_image() {
        // 1×4 plane is awkward; use 4×4, k3 s2 p1: out = ceil((4+2-3)/2)+1 = 3, and (3-1)*2 = 4
        // < 4+1 so no clip. Window index 2 starts at 4-1 = 3, hend = min(6, 4+1) = 5: size 2 per
        // axis (cell 3 plus one padding cell), so corner (2,2) divides by 4 and sums only x[3][3].
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let ave = run(PoolMethod::Ave, 3, 2, 1, false, [1, 4, 4], &x);
        assert_eq!(ave.len(), 9);
        assert_eq!(ave[8], 15.0 / 4.0);
        // Window (0,0): rows -1..2 cols -1..2 -> divisor 9, sum of x[0..2][0..2] = 0+1+4+5 = 10.
        assert_eq!(ave[0], 10.0 / 9.0);
        // Window (0,2): rows -1..2 (3), cols 3..5 (2) -> divisor 6, sum x[0][3]+x[1][3] = 3+7.
        assert_eq!(ave[2], 10.0 / 6.0);
    }

    #[test]
    fn global_pooling_covers_the_plane() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(
            run(PoolMethod::Ave, 0, 1, 0, true, [2, 2, 3], &x),
            vec![2.5, 8.5]
        );
        assert_eq!(
            run(PoolMethod::Max, 0, 1, 0, true, [2, 2, 3], &x),
            vec![5.0, 11.0]
        );
    }
}
