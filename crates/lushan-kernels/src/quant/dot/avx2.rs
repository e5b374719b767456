//! The 256-bit paths: two weight rows a register (row `a`'s lanes in the low half, row `b`'s in the high
//! half), so each input block is loaded once for every pair and one conversion and multiply-add serve two
//! rows. With AVX-VNNI compiled in (`avxvnni`), each block pair is two `vpdpbusd` from the input's offsets;
//! otherwise `maddubs` and `madd` (see the parent module for both forms).

#![allow(unsafe_code)]
// Under AVX-512 VNNI only the prefetch is used outside the tests.
#![cfg_attr(
    all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni", not(test)),
    allow(dead_code)
)]
use super::{BlockQ8_0, InputBlock, eight_as_fours, f16_table, rows_of};
use std::arch::x86_64::*;

/// The 4 lanes of `v` summed in [`super::hsum`]'s order.
#[inline(always)]
unsafe fn hsum4(v: __m128) -> f32 {
    // SAFETY: SSE is part of x86_64; register-only operations.
    unsafe {
        let s2 = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

/// How far ahead each weight stream is prefetched (as [`crate::gemv`]'s 4 KiB).
pub(super) const PREFETCH_BYTES: usize = 4096;

/// Prefetches the weight stream at `block` [`PREFETCH_BYTES`] ahead: a hint that never faults, its
/// address formed with `wrapping_add`.
#[inline(always)]
pub(super) fn prefetch<B>(block: &B) {
    // SAFETY: SSE is part of x86_64; a prefetch reads nothing the program sees and never faults.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((&raw const *block).cast::<i8>().wrapping_add(PREFETCH_BYTES)) }
}

/// A block type's integer lanes for two rows in one register.
trait Pair: Copy {
    /// The 4 lanes of `a` (low half) and of `b` (high half) against the input block `x`, whose first and
    /// second 16 values are `x_low` and `x_high`, each in both halves; exact in `i32`.
    unsafe fn lanes(a: &Self, b: &Self, x: &InputBlock, x_low: __m256i, x_high: __m256i) -> __m256i;
    fn d(&self) -> u16;
}

impl Pair for BlockQ8_0 {
    #[inline(always)]
    unsafe fn lanes(a: &Self, b: &Self, x: &InputBlock, x_low: __m256i, x_high: __m256i) -> __m256i {
        // SAFETY: AVX2 is compiled in (parent `cfg`), AVX-VNNI where used; the loads read the 16-byte halves
        // of two blocks' `qs` arrays and one input block's 16-byte offsets, in bounds by construction.
        unsafe {
            let low = _mm256_loadu2_m128i(b.qs.as_ptr().cast(), a.qs.as_ptr().cast());
            let high = _mm256_loadu2_m128i(b.qs[16..].as_ptr().cast(), a.qs[16..].as_ptr().cast());
            #[cfg(target_feature = "avxvnni")]
            {
                // Σ (w+128)·x − 128·Σ x: the top bit flipped makes `w + 128` an unsigned byte.
                let flip = _mm256_set1_epi8(i8::MIN);
                let offsets = _mm256_broadcastsi128_si256(_mm_loadu_si128(x.q8_offsets.as_ptr().cast()));
                let acc = _mm256_dpbusd_avx_epi32(offsets, _mm256_xor_si256(low, flip), x_low);
                _mm256_dpbusd_avx_epi32(acc, _mm256_xor_si256(high, flip), x_high)
            }
            #[cfg(not(target_feature = "avxvnni"))]
            {
                let _ = x;
                // `|w|` (unsigned) times `x` with `w`'s sign: pairs in i16 of at most 2·128·127 = 32 512 (no
                // saturation: `x` lies in ±127), then pairs of pairs in i32, each half's lanes added.
                let ones = _mm256_set1_epi16(1);
                let part = |w: __m256i, x: __m256i| {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones)
                };
                _mm256_add_epi32(part(low, x_low), part(high, x_high))
            }
        }
    }
    fn d(&self) -> u16 {
        self.d
    }
}

/// Pairs of weight rows against one input row, each pair in one register: one accumulator a pair, each
/// input block loaded once for all. A row's lanes are the same whichever half and pair it is in, so each
/// result is bit-identical to its row's single-row dot product and to the portable twin.
#[inline(always)]
fn dot_row_pairs<B: Pair, const P: usize>(w: [(&[B], &[B]); P], x: &[InputBlock]) -> [(f32, f32); P] {
    assert!(w.iter().all(|(a, b)| a.len() == x.len() && b.len() == x.len()), "quantized dot: block counts differ");
    let table = f16_table();
    // SAFETY: AVX2, FMA and F16C are compiled in (parent `cfg`); every block read is an element of a slice
    // indexed below its length (asserted equal for all); unaligned loads accept any address.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); P];
        for (k, xb) in x.iter().enumerate() {
            for (a, b) in &w {
                prefetch(&a[k]);
                prefetch(&b[k]);
            }
            // Input positions 0..16 and 16..32, each in both halves.
            let x_low = _mm256_broadcastsi128_si256(_mm_loadu_si128(xb.qs.as_ptr().cast()));
            let x_high = _mm256_broadcastsi128_si256(_mm_loadu_si128(xb.qs[16..].as_ptr().cast()));
            for (p, (a, b)) in w.iter().enumerate() {
                let (a, b) = (&a[k], &b[k]);
                let d = _mm256_set_m128(
                    _mm_set1_ps(table[usize::from(b.d())] * xb.d),
                    _mm_set1_ps(table[usize::from(a.d())] * xb.d),
                );
                let lanes = B::lanes(a, b, xb, x_low, x_high);
                acc[p] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[p]);
            }
        }
        acc.map(|a| (hsum4(_mm256_castps256_ps128(a)), hsum4(_mm256_extractf128_ps::<1>(a))))
    }
}

fn dot4<B: Pair>(w: [&[B]; 4], x: &[InputBlock]) -> [f32; 4] {
    let [a, b] = dot_row_pairs([(w[0], w[1]), (w[2], w[3])], x);
    [a.0, a.1, b.0, b.1]
}

pub(super) fn dot_q8_0(w: &[BlockQ8_0], x: &[InputBlock]) -> f32 {
    dot_row_pairs([(w, w)], x)[0].0
}

pub(super) fn dot4_rows_q8_0(w: [&[BlockQ8_0]; 4], x: &[InputBlock], out: &mut [[f32; 4]]) {
    rows_of(w, x, out, dot4)
}

pub(super) fn dot8_rows_q8_0(w: [&[BlockQ8_0]; 8], x: &[InputBlock], out: &mut [[f32; 8]]) {
    eight_as_fours(w, x, out, dot4_rows_q8_0)
}
