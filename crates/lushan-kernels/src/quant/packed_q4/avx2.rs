//! The AVX2 path: a group's sixteen rows as two 256-bit halves (lane `r` row `8·h + r`), each block's lanes
//! by `maddubs` (unsigned nibble × signed input, pairs in `i16`) and `madd` (pairs of pairs in `i32`), from
//! the input's offset `−8·Σ x`: the portable twin's integer sums and float arithmetic, lane by lane.

#![allow(unsafe_code)]
// Under AVX-512 VNNI this path runs in the tests only.
#![cfg_attr(
    all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni", not(test)),
    allow(dead_code)
)]
use super::{GROUP, GroupBlock, InputBlock};
use std::arch::x86_64::*;

/// The group's `blocks` blocks `g` against one input row `x` (`blocks` blocks).
#[inline(always)]
fn row(g: &[GroupBlock], x: &[InputBlock]) -> [f32; GROUP] {
    assert_eq!(g.len(), x.len(), "packed q4_0: input blocks");
    // SAFETY: AVX2, FMA and F16C are compiled in (parent `cfg`); every load reads inside `g[k]` or `x[k]`:
    // 16 bytes of scales, 32-byte runs of the 256 nibble bytes, four bytes of an input block's 32 `qs` at
    // offsets 0..=28.
    unsafe {
        let nibble = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for (gb, xb) in g.iter().zip(x) {
            let four = |j: usize| _mm256_set1_epi32(xb.qs.as_ptr().add(j).cast::<i32>().read_unaligned());
            let offset = _mm256_set1_epi32(xb.q4_offset);
            let dx = _mm256_set1_ps(xb.d);
            for (h, acc) in acc.iter_mut().enumerate() {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gb.d[8 * h..].as_ptr().cast()));
                let mut pairs = _mm256_setzero_si256();
                for v in 0..4 {
                    let q = _mm256_loadu_si256(gb.qs[64 * v + 32 * h..].as_ptr().cast());
                    let low = _mm256_and_si256(q, nibble);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble);
                    // Each i16: two products of a nibble (≤ 15) and an input (|x| ≤ 128); the sum over the
                    // eight of a lane's halves at most 16·15·128 = 30 720 in magnitude: no saturation.
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(low, four(4 * v)));
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(high, four(16 + 4 * v)));
                }
                let ints = _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), offset);
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(ints), *acc);
            }
        }
        let mut v = [0.0f32; GROUP];
        _mm256_storeu_ps(v.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(v[8..].as_mut_ptr(), acc[1]);
        v
    }
}

/// [`super::group_products`]: one input row at a time (the group's blocks stay in the L1 cache).
pub(super) fn group(g: &[GroupBlock], x: &[InputBlock], out: &mut [[f32; GROUP]]) {
    let blocks = g.len();
    assert!(blocks > 0 && x.len() == out.len() * blocks, "packed q4_0: input rows");
    for (out, x) in out.iter_mut().zip(x.chunks_exact(blocks)) {
        *out = row(g, x);
    }
}
