//! The AVX-512 VNNI path: one 512-bit register is the sixteen rows of a group, lane `r` row `r`.
//!
//! Per block: the scales widened by one `vcvtph2ps`, the 256 nibble bytes as four registers, their low and
//! high nibbles masked out (eight registers, the unsigned operand of `vpdpbusd`); per input row, eight
//! `vpdpbusd` against the input's four-byte groups broadcast to every lane (`x[4v..4v+4]` for the low
//! nibbles of register `v`, `x[16+4v..]` for the high ones), in two chains of four, from the input's offset
//! `−8·Σ x` (so the lane is `Σ (q−8)·x`, exact), then one conversion, one multiply (`d_w·d_x`) and one fused
//! multiply-add: the portable twin's arithmetic, lane by lane.

#![allow(unsafe_code)]
use super::{GROUP, GroupBlock, InputBlock, TILE};
use std::arch::x86_64::*;

/// How far ahead of the block in use the weight stream is prefetched.
const PREFETCH_BYTES: usize = 4096;
const _: () = assert!(TILE == 8, "group dispatches tiles of 1..=8 rows");

/// The group's `blocks` blocks `g` against `R` input rows (`x`: `R · blocks` blocks): one register a row.
#[inline(always)]
fn tile<const R: usize>(g: &[GroupBlock], x: &[InputBlock]) -> [[f32; GROUP]; R] {
    let blocks = g.len();
    assert_eq!(x.len(), R * blocks, "packed q4_0: input rows");
    // SAFETY: AVX-512 F/BW/VNNI and FMA are compiled in (parent `cfg`); every load reads inside `g[k]` or
    // `x[r·blocks + k]` with `k < blocks` and `r < R` (asserted above): the scales' 32 bytes, four 64-byte
    // runs of the 256 nibble bytes, four bytes of an input block's 32 `qs` at offsets 0..=28; a prefetch
    // never faults (its address formed with `wrapping_add`).
    unsafe {
        let nibble = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for (k, gb) in g.iter().enumerate() {
            let at = (&raw const *gb).cast::<i8>();
            for line in 0..5 {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES + 64 * line));
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(gb.d.as_ptr().cast()));
            let q: [__m512i; 4] = std::array::from_fn(|v| _mm512_loadu_si512(gb.qs[64 * v..].as_ptr().cast()));
            let low = q.map(|q| _mm512_and_si512(q, nibble));
            let high = q.map(|q| _mm512_and_si512(_mm512_srli_epi16::<4>(q), nibble));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xb = &x[r * blocks + k];
                let four = |j: usize| _mm512_set1_epi32(xb.qs.as_ptr().add(j).cast::<i32>().read_unaligned());
                // Each lane: 16 products of a nibble (≤ 15) and an input (|x| ≤ 128) a chain, plus the offset
                // (|−8·Σ x| ≤ 8·32·128): exact.
                let mut a = _mm512_set1_epi32(xb.q4_offset);
                let mut b = _mm512_setzero_si512();
                for v in 0..4 {
                    a = _mm512_dpbusd_epi32(a, low[v], four(4 * v));
                    b = _mm512_dpbusd_epi32(b, high[v], four(16 + 4 * v));
                }
                let ints = _mm512_add_epi32(a, b);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(ints), *acc);
            }
        }
        acc.map(|a| {
            let mut v = [0.0f32; GROUP];
            _mm512_storeu_ps(v.as_mut_ptr(), a);
            v
        })
    }
}

/// [`super::group_products`]: tiles of [`TILE`] input rows, then one tile of the rest.
pub(super) fn group(g: &[GroupBlock], x: &[InputBlock], out: &mut [[f32; GROUP]]) {
    let blocks = g.len();
    assert!(blocks > 0 && x.len() == out.len() * blocks, "packed q4_0: input rows");
    for (out, x) in out.chunks_mut(TILE).zip(x.chunks(TILE * blocks)) {
        macro_rules! rest {
            ($($r:literal)*) => {
                match out.len() {
                    $($r => out.copy_from_slice(&tile::<$r>(g, x)),)*
                    _ => unreachable!("a chunk holds 1..=TILE rows"),
                }
            };
        }
        rest!(1 2 3 4 5 6 7 8);
    }
}
