//! Products that read quantized weights directly, as llama.cpp's CPU backend does: the activations are
//! quantized to Q8_0 per row (the same 32-value blocks, [`InputBlock`]), and each block pair is an integer
//! dot product scaled by both blocks' scales.
//!
//! For one block pair, each lane sums a fixed set of integer products `w_j·x_j` exactly in `i32`; each lane
//! then accumulates `d_w·d_x·lane` in `f32` with a fused multiply-add, and the lanes are summed in a fixed
//! tree at the end (halves folded onto halves). The AVX2 paths compute exactly those lanes, so the portable
//! twin gives bit-identical results. The lanes differ by type, each chosen for its fastest AVX2 form:
//! - **Q8_0**: 8 lanes, lane `i` sums positions `4i..4i+3` (`maddubs` on `|w|` and `x` with `w`'s sign,
//!   then `madd` with ones: the lanes of one 256-bit register);
//! - **Q4_0**: 4 lanes, lane `i` sums positions `4i..4i+3` and `16+4i..16+4i+3` — the low and high nibbles
//!   of bytes `4i..4i+3`. The nibbles `q ∈ 0..=15` are unsigned, so `maddubs(q, x)` needs no sign trick and
//!   `Σ (q−8)·x = Σ q·x − 8·Σ x`, where `8·Σ x` per lane depends on the input alone
//!   ([`InputBlock::q4_offsets`], computed once per input row for every weight row). Two rows' blocks fill
//!   one register (row `a`'s 16 bytes in the low half, row `b`'s in the high half), so one `maddubs` pair,
//!   `madd`, subtraction, conversion and multiply-add serve two rows.
//!
//! # Shapes
//! A quantized matrix `W` (OC, C) is stored by rows: row `o` is blocks `o·C/32 .. (o+1)·C/32`; `C` is a
//! multiple of 32.

use rayon::prelude::*;

use super::{BLOCK, BlockQ4_0, BlockQ8_0, quantize_q8_0};
use crate::gemv::fmadd;

/// One 32-value block of an input row as the products read it: quantized to Q8_0, its scale widened, and
/// the sums Q4_0's offset of 8 needs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InputBlock {
    /// The Q8_0 block's scale (its f16 value, widened exactly).
    pub d: f32,
    pub qs: [i8; BLOCK],
    /// `8 · Σ x_j` over Q4_0 lane `i`'s positions (`4i..4i+3` and `16+4i..16+4i+3`) at `i` and `i + 4`,
    /// so that one 256-bit load serves a register holding two rows.
    pub q4_offsets: [i32; 8],
}

/// Q4_0 lanes per block (see the module documentation).
const Q4_LANES: usize = 4;

/// The Q4_0 lane a block position belongs to: the byte that holds it, in groups of four.
fn q4_lane(j: usize) -> usize {
    (j % (BLOCK / 2)) / 4
}

/// Quantizes one input row `x` into `out` (`out.len() · 32 == x.len()`).
///
/// # Panics
/// If the lengths disagree (a caller bug).
pub fn quantize_input(x: &[f32], out: &mut [InputBlock]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_input: {} values for {} blocks", x.len(), out.len());
    let mut q8 = [BlockQ8_0::default()];
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        quantize_q8_0(xs, &mut q8);
        let mut sums = [0i32; Q4_LANES];
        for (j, &q) in q8[0].qs.iter().enumerate() {
            sums[q4_lane(j)] += i32::from(q);
        }
        *block =
            InputBlock { d: q8[0].scale(), qs: q8[0].qs, q4_offsets: std::array::from_fn(|i| 8 * sums[i % Q4_LANES]) };
    }
}

/// A weight block type the products read directly.
pub trait QuantBlock: Copy + Send + Sync {
    /// Lanes per block pair (see the module documentation).
    const LANES: usize;
    /// The lane position `j` of a block pair adds into.
    fn lane(j: usize) -> usize;
    /// `Σ_k w_k·x_k` over whole rows of blocks (`w.len() == x.len()`).
    fn dot(w: &[Self], x: &[InputBlock]) -> f32;
    /// [`QuantBlock::dot`] of four weight rows with one input row (each input block loaded once for the
    /// four); each result is bit-identical to its row's own `dot`.
    fn dot4(w: [&[Self]; 4], x: &[InputBlock]) -> [f32; 4] {
        w.map(|w| Self::dot(w, x))
    }
    /// The block's 32 weights as integers (their scale apart).
    fn integers(&self) -> [i8; BLOCK];
    fn scale(&self) -> f32;
}

impl QuantBlock for BlockQ8_0 {
    const LANES: usize = 8;
    fn lane(j: usize) -> usize {
        j / 4
    }
    fn dot(w: &[Self], x: &[InputBlock]) -> f32 {
        dot_q8_0(w, x)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    fn dot4(w: [&[Self]; 4], x: &[InputBlock]) -> [f32; 4] {
        avx2::dot_rows_q8_0(w, x)
    }
    fn integers(&self) -> [i8; BLOCK] {
        self.qs
    }
    fn scale(&self) -> f32 {
        BlockQ8_0::scale(self)
    }
}

impl QuantBlock for BlockQ4_0 {
    const LANES: usize = Q4_LANES;
    fn lane(j: usize) -> usize {
        q4_lane(j)
    }
    fn dot(w: &[Self], x: &[InputBlock]) -> f32 {
        dot_q4_0(w, x)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    fn dot4(w: [&[Self]; 4], x: &[InputBlock]) -> [f32; 4] {
        let [a, b] = avx2::dot_row_pairs_q4_0([(w[0], w[1]), (w[2], w[3])], x);
        [a.0, a.1, b.0, b.1]
    }
    fn integers(&self) -> [i8; BLOCK] {
        self.unpack()
    }
    fn scale(&self) -> f32 {
        BlockQ4_0::scale(self)
    }
}

/// Every f16 value as an f32, indexed by its bits: a weight block's scale is one load instead of a
/// conversion (as ggml's `table_f32_f16`); 256 KiB, built on first use.
#[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")), allow(dead_code))]
fn f16_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0.0f32; 1 << 16]);
        for (bits, v) in t.iter_mut().enumerate() {
            *v = half::f16::from_bits(bits as u16).to_f32();
        }
        t
    })
}

/// Sum of the lanes, halves folded onto halves: for 8 lanes `i + (i + 4)`, then `i + (i + 2)`, then
/// `0 + 1` — the AVX2 horizontal sum's order (for 4 lanes, its last two steps).
#[inline(always)]
fn hsum(v: &mut [f32]) -> f32 {
    let mut n = v.len();
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// Portable twin of the AVX2 block dot products, bit-identical to them.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", not(test)), allow(dead_code))]
pub fn dot_portable<B: QuantBlock>(w: &[B], x: &[InputBlock]) -> f32 {
    assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
    let mut acc = [0.0f32; 8];
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.scale() * xb.d;
        let mut lanes = [0i32; 8];
        for (j, (&qw, &qx)) in wb.integers().iter().zip(&xb.qs).enumerate() {
            lanes[B::lane(j)] += i32::from(qw) * i32::from(qx);
        }
        for (a, &lane) in acc.iter_mut().zip(&lanes).take(B::LANES) {
            *a = fmadd(d, lane as f32, *a);
        }
    }
    hsum(&mut acc[..B::LANES])
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot_q8_0(w: &[BlockQ8_0], x: &[InputBlock]) -> f32 {
    dot_portable(w, x)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot_q4_0(w: &[BlockQ4_0], x: &[InputBlock]) -> f32 {
    dot_portable(w, x)
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    #![allow(unsafe_code)]
    use super::{BlockQ4_0, BlockQ8_0, InputBlock};
    use std::arch::x86_64::*;

    /// Q8_0's 8 lane sums of `w·x` for 32 signed bytes each, as floats: `|w|` (unsigned) times `x` with
    /// `w`'s sign (`maddubs` gives pairs in i16: at most 2·128·127 = 32 512, no saturation, since `x` comes
    /// from [`super::quantize_q8_0`] and lies in ±127), then pairs of pairs in i32 (`madd` with ones).
    #[inline(always)]
    unsafe fn q8_lane_sums(w: __m256i, x: __m256i) -> __m256 {
        // SAFETY: AVX2 is compiled in (module `cfg`); register-only operations.
        unsafe {
            let abs_w = _mm256_sign_epi8(w, w);
            let signed_x = _mm256_sign_epi8(x, w);
            let pairs = _mm256_maddubs_epi16(abs_w, signed_x);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    /// The 4 lanes of `v` summed in [`super::hsum`]'s order.
    #[inline(always)]
    unsafe fn hsum4(v: __m128) -> f32 {
        // SAFETY: SSE is part of x86_64; register-only operations.
        unsafe {
            let s2 = _mm_add_ps(v, _mm_movehl_ps(v, v));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
        }
    }

    /// The 8 lanes summed in [`super::hsum`]'s order.
    #[inline(always)]
    unsafe fn hsum8(acc: __m256) -> f32 {
        // SAFETY: AVX is compiled in (module `cfg`); register-only operations.
        unsafe { hsum4(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc))) }
    }

    /// How far ahead each weight stream is prefetched (as [`crate::gemv`]'s 4 KiB).
    const PREFETCH_BYTES: usize = 4096;

    /// Prefetches the weight stream at `block` [`PREFETCH_BYTES`] ahead: a hint that never faults, its
    /// address formed with `wrapping_add`.
    #[inline(always)]
    fn prefetch<B>(block: &B) {
        // SAFETY: SSE is part of x86_64; a prefetch reads nothing the program sees and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((&raw const *block).cast::<i8>().wrapping_add(PREFETCH_BYTES)) }
    }

    /// Four Q8_0 weight rows against one input row: four independent accumulators (the fused multiply-add
    /// latency of one chain is hidden by the other three) and one load of each input block for the four.
    /// Each row's arithmetic is its single-row dot product's, so the results are bit-identical to it.
    pub(super) fn dot_rows_q8_0(w: [&[BlockQ8_0]; 4], x: &[InputBlock]) -> [f32; 4] {
        assert!(w.iter().all(|w| w.len() == x.len()), "quantized dot: block counts differ");
        let table = super::f16_table();
        // SAFETY: AVX2, FMA and F16C are compiled in (module `cfg`); every block read is an element of a
        // slice indexed below its length (asserted equal for all five); unaligned loads accept any address.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (k, xb) in x.iter().enumerate() {
                // Each row's stream goes on into the next rows of its run: keep all four ahead.
                for row in &w {
                    prefetch(&row[k]);
                }
                let qx = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                for r in 0..4 {
                    let wb = &w[r][k];
                    let d = _mm256_set1_ps(table[usize::from(wb.d)] * xb.d);
                    let qw = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                    acc[r] = _mm256_fmadd_ps(d, q8_lane_sums(qw, qx), acc[r]);
                }
            }
            acc.map(|a| hsum8(a))
        }
    }

    pub(super) fn dot_q8_0(w: &[BlockQ8_0], x: &[InputBlock]) -> f32 {
        assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
        // SAFETY: AVX2 and FMA are compiled in (module `cfg`); each load reads the 32 bytes of one block's
        // `qs` array, in bounds by construction; unaligned loads accept any address.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (wb, xb) in w.iter().zip(x) {
                let d = _mm256_set1_ps(wb.scale() * xb.d);
                let qw = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                let qx = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                acc = _mm256_fmadd_ps(d, q8_lane_sums(qw, qx), acc);
            }
            hsum8(acc)
        }
    }

    /// Pairs of Q4_0 weight rows against one input row, each pair in one register (lanes 0..4 its first
    /// row, 4..8 its second; see the module documentation): one accumulator a pair, each input block
    /// loaded once for all. A row's lanes are the same whichever half and pair it is in, so each result is
    /// bit-identical to its row's single-row dot product.
    #[inline(always)]
    pub(super) fn dot_row_pairs_q4_0<const P: usize>(
        w: [(&[BlockQ4_0], &[BlockQ4_0]); P],
        x: &[InputBlock],
    ) -> [(f32, f32); P] {
        assert!(w.iter().all(|(a, b)| a.len() == x.len() && b.len() == x.len()), "quantized dot: block counts differ");
        let table = super::f16_table();
        // SAFETY: AVX2, FMA and F16C are compiled in (module `cfg`); every block read is an element of a
        // slice indexed below its length (asserted equal for all); unaligned loads accept any address.
        unsafe {
            let (low_nibbles, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
            let mut acc = [_mm256_setzero_ps(); P];
            for (k, xb) in x.iter().enumerate() {
                for (a, b) in &w {
                    prefetch(&a[k]);
                    prefetch(&b[k]);
                }
                // Input positions 0..16 and 16..32, each in both halves; the offsets, in both halves too.
                let x_low = _mm256_broadcastsi128_si256(_mm_loadu_si128(xb.qs.as_ptr().cast()));
                let x_high = _mm256_broadcastsi128_si256(_mm_loadu_si128(xb.qs[16..].as_ptr().cast()));
                let offsets = _mm256_loadu_si256(xb.q4_offsets.as_ptr().cast());
                for (p, (a, b)) in w.iter().enumerate() {
                    let (a, b) = (&a[k], &b[k]);
                    let d = _mm256_set_m128(
                        _mm_set1_ps(table[usize::from(b.d)] * xb.d),
                        _mm_set1_ps(table[usize::from(a.d)] * xb.d),
                    );
                    // [a's 16 bytes | b's 16 bytes]: low nibbles are positions 0..16, high ones 16..32.
                    let packed = _mm256_loadu2_m128i(b.qs.as_ptr().cast(), a.qs.as_ptr().cast());
                    let q_low = _mm256_and_si256(packed, low_nibbles);
                    let q_high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low_nibbles);
                    // Unsigned nibbles times signed inputs: each i16 is two products, at most 2·15·127 in
                    // magnitude, and the sum of the two halves' at most 4·15·127 = 7 620: no saturation.
                    let pairs =
                        _mm256_add_epi16(_mm256_maddubs_epi16(q_low, x_low), _mm256_maddubs_epi16(q_high, x_high));
                    // Σ q·x − 8·Σ x = Σ (q − 8)·x, exact in i32.
                    let lanes = _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), offsets);
                    acc[p] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[p]);
                }
            }
            acc.map(|a| (hsum4(_mm256_castps256_ps128(a)), hsum4(_mm256_extractf128_ps::<1>(a))))
        }
    }

    /// One Q4_0 row: paired with itself (the same lanes as in any pair).
    pub(super) fn dot_q4_0(w: &[BlockQ4_0], x: &[InputBlock]) -> f32 {
        dot_row_pairs_q4_0([(w, w)], x)[0].0
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
use avx2::{dot_q4_0, dot_q8_0};

/// `out = x·Wᵀ (+ bias)` with `W` (OC, C) quantized by rows and `x` (M, C) in `f32`, quantized to Q8_0
/// row by row first. `out` is (M, OC).
///
/// As in [`crate::gemv`], each thread owns one large contiguous block of output channels (a rayon task costs
/// microseconds, and one decoding step makes ≈ 50 of these calls), and walks it four weight rows at a time
/// ([`QuantBlock::dot4`]): each input block is loaded once for the four, and the four rows — adjacent in
/// memory — stay in the L1 cache while every input row passes over them, so batched decoding reads the
/// weights once for all its sequences. Each result is its row's own [`QuantBlock::dot`], whatever the
/// grouping, the number of input rows or of threads.
///
/// # Panics
/// On inconsistent shapes (caller bugs: the model checks a tensor's row length with a named error when it
/// quantizes it).
pub fn matmul<B: QuantBlock>(out: &mut [f32], x: &[f32], w: &[B], bias: Option<&[f32]>, c: usize, oc: usize) {
    assert!(c > 0 && c.is_multiple_of(BLOCK), "quantized matmul: C = {c} is not a multiple of {BLOCK}");
    let blocks = c / BLOCK;
    assert_eq!(w.len(), oc * blocks, "quantized matmul: weight blocks for ({oc}, {c})");
    let m = x.len() / c;
    assert_eq!(x.len(), m * c, "quantized matmul: input is not whole rows of C");
    assert_eq!(out.len(), m * oc, "quantized matmul: output length");
    assert!(bias.is_none_or(|b| b.len() == oc), "quantized matmul: bias length");
    if m == 0 || oc == 0 {
        return;
    }
    let mut xq = vec![InputBlock::default(); m * blocks];
    for (q, row) in xq.chunks_exact_mut(blocks).zip(x.chunks_exact(c)) {
        quantize_input(row, q);
    }
    let tasks = (oc * c / MIN_TASK_WEIGHTS).clamp(1, rayon::current_num_threads().clamp(1, MAX_TASKS));
    let per_task = oc.div_ceil(tasks).next_multiple_of(4);
    // Channel-major results (OC, M): for one input row that is `out` itself; otherwise transposed below.
    let mut by_channel = if m == 1 { Vec::new() } else { vec![0.0f32; oc * m] };
    let dst: &mut [f32] = if m == 1 { out } else { &mut by_channel };
    dst.par_chunks_mut(per_task * m).enumerate().for_each(|(t, dst)| {
        let j0 = t * per_task;
        channels(dst, &w[j0 * blocks..(j0 + dst.len() / m) * blocks], &xq, bias.map(|b| &b[j0..]), blocks, m);
    });
    if m > 1 {
        out.par_chunks_mut(oc).enumerate().for_each(|(r, row)| {
            for (o, v) in row.iter_mut().enumerate() {
                *v = by_channel[o * m + r];
            }
        });
    }
}

/// Weights below which one more task costs more than it saves (as [`crate::gemv`]'s threshold in bytes).
const MIN_TASK_WEIGHTS: usize = 1 << 16;
/// Upper bound on tasks per call.
const MAX_TASKS: usize = 16;

/// One task: `dst` (channels × M, channel-major) for the weight rows `w` (channels × `blocks`) against every
/// quantized input row of `xq` (M × `blocks`), plus the bias from `bias[0]` on.
///
/// As in [`crate::gemv`]'s blocks, the rows are cut into four equal runs and the four rows walked together
/// are one from each run (`o`, `o + q`, `o + 2q`, `o + 3q`): four long sequential streams, which the hardware
/// prefetchers (and the software prefetch in the dot products) follow. Rows past the four runs are the tail.
fn channels<B: QuantBlock>(dst: &mut [f32], w: &[B], xq: &[InputBlock], bias: Option<&[f32]>, blocks: usize, m: usize) {
    let row = |o: usize| &w[o * blocks..(o + 1) * blocks];
    let bias_at = |o: usize| bias.map_or(0.0, |b| b[o]);
    let n = dst.len() / m;
    let q = n / 4;
    for j in 0..q {
        let at = [j, j + q, j + 2 * q, j + 3 * q];
        let rows = at.map(row);
        for (r, x) in xq.chunks_exact(blocks).enumerate() {
            let dots = B::dot4(rows, x);
            for (&o, d) in at.iter().zip(dots) {
                dst[o * m + r] = d + bias_at(o);
            }
        }
    }
    for o in 4 * q..n {
        for (r, x) in xq.chunks_exact(blocks).enumerate() {
            dst[o * m + r] = B::dot(row(o), x) + bias_at(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_q4_0, dequantize_q8_0, quantize_q4_0};
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.next_f32() - 0.5).collect()
    }

    #[test]
    fn the_fast_dot_products_equal_their_portable_twins_bit_for_bit() {
        let (w, x) = (random(32 * 24, 1), random(32 * 24, 2));
        let mut xq = vec![InputBlock::default(); 24];
        quantize_input(&x, &mut xq);
        let mut w8 = vec![BlockQ8_0::default(); 24];
        quantize_q8_0(&w, &mut w8);
        // A hostile file may hold −128, outside what the quantizer makes: still exact.
        w8[3].qs[5] = -128;
        w8[7].qs = [-128; BLOCK];
        assert_eq!(dot_q8_0(&w8, &xq).to_bits(), dot_portable(&w8, &xq).to_bits());
        let mut w4 = vec![BlockQ4_0::default(); 24];
        quantize_q4_0(&w, &mut w4);
        assert_eq!(dot_q4_0(&w4, &xq).to_bits(), dot_portable(&w4, &xq).to_bits());
        // Four rows at once: each result is its row's own.
        let rows: Vec<Vec<BlockQ8_0>> = (0..4u64)
            .map(|seed| {
                let mut q = vec![BlockQ8_0::default(); 24];
                quantize_q8_0(&random(32 * 24, 10 + seed), &mut q);
                q
            })
            .collect();
        let four = BlockQ8_0::dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &xq);
        for (row, got) in rows.iter().zip(four) {
            assert_eq!(got.to_bits(), dot_portable(row, &xq).to_bits());
        }
        let rows4: Vec<Vec<BlockQ4_0>> = rows
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mut q = vec![BlockQ4_0::default(); 24];
                quantize_q4_0(&random(32 * 24, 20 + i as u64), &mut q);
                q
            })
            .collect();
        let four = BlockQ4_0::dot4([&rows4[0], &rows4[1], &rows4[2], &rows4[3]], &xq);
        for (row, got) in rows4.iter().zip(four) {
            assert_eq!(got.to_bits(), dot_portable(row, &xq).to_bits());
        }
    }

    /// The extremes of Q4_0's integer path: nibbles 0 and 15 (−8 and 7) against inputs of ±127 in every
    /// position, where the unsigned `maddubs` pairs and their sum across the halves are largest.
    #[test]
    fn q4_0_extremes_are_exact_and_equal_the_portable_twin() {
        for (nibbles, input) in [(0x00u8, 1.0f32), (0xFF, 1.0), (0x00, -1.0), (0xFF, -1.0), (0xF0, 1.0), (0x0F, -1.0)] {
            let w = vec![BlockQ4_0 { d: half::f16::ONE.to_bits(), qs: [nibbles; BLOCK / 2] }; 3];
            let mut xq = vec![InputBlock::default(); 3];
            quantize_input(&[input; 3 * BLOCK], &mut xq);
            assert!(xq.iter().all(|b| b.qs == [(127.0 * input) as i8; BLOCK]));
            let exact: f64 = w
                .iter()
                .zip(&xq)
                .map(|(wb, xb)| {
                    let ints: i32 = wb.unpack().iter().zip(&xb.qs).map(|(&q, &x)| i32::from(q) * i32::from(x)).sum();
                    f64::from(ints) * f64::from(xb.d)
                })
                .sum();
            let fast = dot_q4_0(&w, &xq);
            assert_eq!(fast.to_bits(), dot_portable(&w, &xq).to_bits(), "nibbles {nibbles:#04x}, input {input}");
            assert!((f64::from(fast) - exact).abs() <= 1e-6 * exact.abs(), "{fast} vs {exact}");
            let four = BlockQ4_0::dot4([&w, &w, &w, &w], &xq);
            assert!(four.iter().all(|v| v.to_bits() == fast.to_bits()));
        }
    }

    #[test]
    fn input_blocks_hold_the_q8_0_block_and_eight_times_each_q4_0_lane_s_sum() {
        let x = random(2 * BLOCK, 9);
        let mut q8 = vec![BlockQ8_0::default(); 2];
        quantize_q8_0(&x, &mut q8);
        let mut input = vec![InputBlock::default(); 2];
        quantize_input(&x, &mut input);
        for (block, q8) in input.iter().zip(&q8) {
            assert_eq!((block.d, block.qs), (q8.scale(), q8.qs));
            for i in 0..Q4_LANES {
                let sum: i32 = (4 * i..4 * i + 4).chain(16 + 4 * i..16 + 4 * i + 4).map(|j| i32::from(q8.qs[j])).sum();
                assert_eq!((block.q4_offsets[i], block.q4_offsets[i + 4]), (8 * sum, 8 * sum), "lane {i}");
            }
        }
    }

    /// Plain loops over the dequantized weights and the dequantized quantized input, in f64.
    fn reference(w: &[f32], x: &[f32], bias: &[f32], c: usize, oc: usize) -> Vec<f32> {
        let m = x.len() / c;
        let mut xq = vec![BlockQ8_0::default(); x.len() / BLOCK];
        quantize_q8_0(x, &mut xq);
        let mut xd = vec![0.0f32; x.len()];
        dequantize_q8_0(&xq, &mut xd);
        let mut out = vec![0.0f32; m * oc];
        for r in 0..m {
            for o in 0..oc {
                let s: f64 = (0..c).map(|k| f64::from(w[o * c + k]) * f64::from(xd[r * c + k])).sum();
                out[r * oc + o] = (s + f64::from(bias[o])) as f32;
            }
        }
        out
    }

    #[test]
    fn products_match_dequantize_then_f32_loops() {
        let (c, oc) = (96, 70);
        let w = random(oc * c, 3);
        let bias = random(oc, 4);
        let (mut w8, mut w4) = (vec![BlockQ8_0::default(); oc * c / BLOCK], vec![BlockQ4_0::default(); oc * c / BLOCK]);
        quantize_q8_0(&w, &mut w8);
        quantize_q4_0(&w, &mut w4);
        let (mut w8d, mut w4d) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        dequantize_q8_0(&w8, &mut w8d);
        dequantize_q4_0(&w4, &mut w4d);
        for m in [1, 3] {
            let x = random(m * c, 5 + m as u64);
            let mut out = vec![0.0f32; m * oc];
            matmul(&mut out, &x, &w8, Some(&bias), c, oc);
            let expected = reference(&w8d, &x, &bias, c, oc);
            assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5), "q8_0, m = {m}");
            matmul(&mut out, &x, &w4, Some(&bias), c, oc);
            let expected = reference(&w4d, &x, &bias, c, oc);
            assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5), "q4_0, m = {m}");
            // And near the unquantized product (the quantization error, not a kernel error).
            let exact = {
                let mut e = vec![0.0f32; m * oc];
                crate::matmul::forward_naive(&mut e, &x, &w, Some(&bias), c, oc);
                e
            };
            matmul(&mut out, &x, &w8, Some(&bias), c, oc);
            assert!(out.iter().zip(&exact).all(|(a, b)| (a - b).abs() < 0.02), "q8_0 vs f32, m = {m}");
        }
    }
}
