//! The in-place pooling kernel equals the out-of-place kernels on random shapes (no padding),
//! including the ceil rule's clipped last windows and many channels (several channel blocks).

use nnquant::fixed::kernels::{avepool_hwc_q7, maxpool_hwc_q7, pool_hwc_q7_in_place, Dims, Pair};
use nnquant::ir::{shape::pool_out, RoundMode};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn in_place_pool_equals_out_of_place(
        h in 1usize..14, w in 1usize..14, c in 1usize..140,
        kh in 1usize..5, kw in 1usize..5, sh in 1usize..4, sw in 1usize..4,
        max in any::<bool>(), seed in any::<u64>(),
    ) {
        prop_assume!(kh <= h && kw <= w);
        let oh = pool_out(h, kh, sh, 0, RoundMode::Ceil).unwrap();
        let ow = pool_out(w, kw, sw, 0, RoundMode::Ceil).unwrap();
        let mut s = seed;
        let input: Vec<i8> = (0..h * w * c).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); (s >> 56) as i8 }).collect();
        let (id, od) = (Dims { h, w, c }, Dims { h: oh, w: ow, c });
        let (k, st, p0) = (Pair { h: kh, w: kw }, Pair { h: sh, w: sw }, Pair { h: 0, w: 0 });
        let mut expected = vec![0i8; od.len()];
        if max {
            maxpool_hwc_q7(&input, id, k, p0, st, &mut expected, od).unwrap();
        } else {
            avepool_hwc_q7(&input, id, k, p0, st, &mut expected, od).unwrap();
        }
        let mut buf = input.clone();
        pool_hwc_q7_in_place(&mut buf, id, k, st, od, max).unwrap();
        prop_assert_eq!(&buf[..od.len()], &expected[..]);
    }
}
