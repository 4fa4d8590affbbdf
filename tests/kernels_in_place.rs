//! The in-place kernels equal the out-of-place ones: pooling on random shapes (no padding),
//! including the ceil rule's clipped last windows and many channels (several channel blocks);
//! the Eltwise SUM written over either input, shifts up to the i32 wrap-around.

use nnquant::fixed::kernels::{
    add_q7, add_q7_in_place, avepool_hwc_q7, maxpool_hwc_q7, pool_hwc_q7_in_place, Dims, Pair,
};
use nnquant::ir::{shape::pool_out, RoundMode};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn in_place_pool_equals_out_of_place(
        h in 1usize..14, w in 1usize..14, c in 1usize..140,
        kh in 1usize..5, kw in 1usize..5, sh in 1usize..4, sw in 1usize..4,
        max in any::<bool>(), round in any::<bool>(), seed in any::<u64>(),
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
            avepool_hwc_q7(&input, id, k, p0, st, &mut expected, od, round).unwrap();
        }
        let mut buf = input.clone();
        pool_hwc_q7_in_place(&mut buf, id, k, st, od, max, round).unwrap();
        prop_assert_eq!(&buf[..od.len()], &expected[..]);
    }

    #[test]
    fn in_place_add_equals_add_over_either_input(
        a in proptest::collection::vec(any::<i8>(), 0..300),
        seed in any::<u64>(),
        la in 0i32..26, lb in 0i32..26, or in 0i32..32,
    ) {
        let mut s = seed;
        let b: Vec<i8> = (0..a.len()).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); (s >> 56) as i8 }).collect();
        let mut expected = vec![0i8; a.len()];
        add_q7(&a, la, &b, lb, or, &mut expected).unwrap();
        let mut over_a = a.clone();
        add_q7_in_place(&mut over_a, la, &b, lb, or).unwrap();
        prop_assert_eq!(&over_a, &expected);
        let mut over_b = b.clone();
        add_q7_in_place(&mut over_b, lb, &a, la, or).unwrap();
        prop_assert_eq!(&over_b, &expected);
    }
}

#[test]
fn in_place_add_refuses_bad_lengths_and_shifts() {
    let mut a = [1i8; 4];
    assert!(add_q7_in_place(&mut a, 0, &[1; 3], 0, 0).is_err());
    assert!(add_q7_in_place(&mut a, -1, &[1; 4], 0, 0).is_err());
    assert!(add_q7_in_place(&mut a, 0, &[1; 4], 0, 32).is_err());
    assert_eq!(a, [1; 4], "a refused call writes nothing");
}
