//! Products that read quantized weights directly, as llama.cpp's CPU backend does: the activations are
//! quantized to Q8_0 per row (the same 32-value blocks), and each block pair is an integer dot product
//! scaled by both blocks' scales.
//!
//! For one block pair, lane `i` (of 8) sums the four integer products `w_j·x_j` of `j = 4i..4i+3` exactly
//! in `i32`; each lane then accumulates `d_w·d_x·lane` in `f32` with a fused multiply-add, and the lanes
//! are summed in a fixed tree at the end. That is the arithmetic of the AVX2 path (`maddubs` + `madd`
//! produce exactly those lane sums, `fmadd` accumulates them, then a fixed horizontal sum), so the portable
//! twin gives bit-identical results.
//!
//! # Shapes
//! A quantized matrix `W` (OC, C) is stored by rows: row `o` is blocks `o·C/32 .. (o+1)·C/32`; `C` is a
//! multiple of 32.

use rayon::prelude::*;

use super::{BLOCK, BlockQ4_0, BlockQ8_0, quantize_q8_0};
use crate::gemv::fmadd;

/// A weight block type the products read directly.
pub trait QuantBlock: Copy + Send + Sync {
    /// `Σ_k w_k·x_k` over whole rows of blocks (`w.len() == x.len()`).
    fn dot(w: &[Self], x: &[BlockQ8_0]) -> f32;
    /// [`QuantBlock::dot`] of four weight rows with one input row (each input block loaded once for the
    /// four); each result is bit-identical to its row's own `dot`.
    fn dot4(w: [&[Self]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
        w.map(|w| Self::dot(w, x))
    }
    /// The block's 32 weights as integers (their scale apart).
    fn integers(&self) -> [i8; BLOCK];
    fn scale(&self) -> f32;
}

impl QuantBlock for BlockQ8_0 {
    fn dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        dot_q8_0(w, x)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    fn dot4(w: [&[Self]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
        avx2::dot_rows(w, x)
    }
    fn integers(&self) -> [i8; BLOCK] {
        self.qs
    }
    fn scale(&self) -> f32 {
        BlockQ8_0::scale(self)
    }
}

impl QuantBlock for BlockQ4_0 {
    fn dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        dot_q4_0(w, x)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    fn dot4(w: [&[Self]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
        avx2::dot_rows(w, x)
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
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")),
    allow(dead_code)
)]
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

/// Sum of 8 lanes: lane i + (i + 4), then i + (i + 2), then 0 + 1 — the AVX2 horizontal sum's order.
#[inline(always)]
fn hsum8(mut v: [f32; 8]) -> f32 {
    for i in 0..4 {
        v[i] += v[i + 4];
    }
    for i in 0..2 {
        v[i] += v[i + 2];
    }
    v[0] + v[1]
}

/// Portable twin of the AVX2 block dot product, bit-identical to it.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", not(test)), allow(dead_code))]
pub fn dot_portable<B: QuantBlock>(w: &[B], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
    let mut acc = [0.0f32; 8];
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.scale() * xb.scale();
        let (qw, qx) = (wb.integers(), xb.qs);
        for (i, a) in acc.iter_mut().enumerate() {
            let lane: i32 = (4 * i..4 * i + 4).map(|j| i32::from(qw[j]) * i32::from(qx[j])).sum();
            *a = fmadd(d, lane as f32, *a);
        }
    }
    hsum8(acc)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    dot_portable(w, x)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    dot_portable(w, x)
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    #![allow(unsafe_code)]
    use super::{BlockQ4_0, BlockQ8_0};
    use std::arch::x86_64::*;

    /// Lane sums of `w·x` for 32 signed bytes each, as floats: `|w|` (unsigned) times `x` with `w`'s sign
    /// (`maddubs` gives pairs in i16: at most 2·128·127 = 32 512, no saturation, since `x` comes from
    /// [`super::quantize_q8_0`] and lies in ±127), then pairs of pairs in i32 (`madd` with ones).
    #[inline(always)]
    unsafe fn lane_sums(w: __m256i, x: __m256i) -> __m256 {
        // SAFETY: AVX2 is compiled in (module `cfg`); register-only operations.
        unsafe {
            let abs_w = _mm256_sign_epi8(w, w);
            let signed_x = _mm256_sign_epi8(x, w);
            let pairs = _mm256_maddubs_epi16(abs_w, signed_x);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    /// The 8 lanes summed in [`super::hsum8`]'s order.
    #[inline(always)]
    unsafe fn hsum(acc: __m256) -> f32 {
        // SAFETY: AVX2 is compiled in (module `cfg`); register-only operations.
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
        }
    }

    /// A weight block as 32 signed bytes in a register, and its scale's f16 bits.
    pub(super) trait Load {
        /// # Safety
        /// AVX2 must be available (it is compiled in wherever this module is).
        unsafe fn integers(&self) -> __m256i;
        fn scale_bits(&self) -> u16;
    }

    impl Load for BlockQ8_0 {
        #[inline(always)]
        unsafe fn integers(&self) -> __m256i {
            // SAFETY: reads the 32 bytes of `qs`; unaligned loads accept any address.
            unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) }
        }
        fn scale_bits(&self) -> u16 {
            self.d
        }
    }

    impl Load for BlockQ4_0 {
        #[inline(always)]
        unsafe fn integers(&self) -> __m256i {
            // SAFETY: reads the 16 bytes of `qs`; register operations otherwise. Weights 0..15 are the low
            // nibbles, 16..31 the high ones, each minus 8.
            unsafe {
                let bytes = _mm_loadu_si128(self.qs.as_ptr().cast());
                let both = _mm256_set_m128i(_mm_srli_epi16::<4>(bytes), bytes);
                _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8))
            }
        }
        fn scale_bits(&self) -> u16 {
            self.d
        }
    }

    /// How far ahead each weight stream is prefetched (as [`crate::gemv`]'s 4 KiB).
    const PREFETCH_BYTES: usize = 4096;

    /// An f16 scale to f32 with F16C (exact, as every f16 is an f32).
    #[inline(always)]
    unsafe fn f16_to_f32(bits: u16) -> f32 {
        // SAFETY: F16C is compiled in wherever this is called (`cfg` of the callers); register-only.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
    }

    /// Four weight rows against one input row: four independent accumulators (the fused multiply-add
    /// latency of one chain is hidden by the other three) and one load of each input block for the four.
    /// Each row's arithmetic is its single-row dot product's, so the results are bit-identical to it.
    #[cfg(target_feature = "f16c")]
    pub(super) fn dot_rows<B: Load>(w: [&[B]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
        assert!(w.iter().all(|w| w.len() == x.len()), "quantized dot: block counts differ");
        // SAFETY: AVX2, FMA and F16C are compiled in (module and function `cfg`); every block read is an
        // element of a slice indexed below its length (asserted equal for all five); the prefetch is a hint that
        // never faults, its address formed with `wrapping_add`.
        let table = super::f16_table();
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (k, xb) in x.iter().enumerate() {
                // Each row's stream goes on into the next rows of its run: keep all four ahead.
                for row in &w {
                    _mm_prefetch::<_MM_HINT_T0>((&raw const row[k]).cast::<i8>().wrapping_add(PREFETCH_BYTES));
                }
                let qx = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                let dx = f16_to_f32(xb.d);
                for r in 0..4 {
                    let wb = &w[r][k];
                    let d = _mm256_set1_ps(table[usize::from(wb.scale_bits())] * dx);
                    acc[r] = _mm256_fmadd_ps(d, lane_sums(wb.integers(), qx), acc[r]);
                }
            }
            acc.map(|a| hsum(a))
        }
    }

    pub(super) fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
        // SAFETY: AVX2 and FMA are compiled in (module `cfg`); each load reads the 32 bytes of one block's
        // `qs` array, in bounds by construction; unaligned loads accept any address.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (wb, xb) in w.iter().zip(x) {
                let d = _mm256_set1_ps(wb.scale() * xb.scale());
                let qw = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                let qx = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                acc = _mm256_fmadd_ps(d, lane_sums(qw, qx), acc);
            }
            hsum(acc)
        }
    }

    pub(super) fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
        // SAFETY: as in `dot_q8_0`; the 16-byte load reads one Q4_0 block's `qs` array.
        unsafe {
            let (low_nibbles, eight) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(8));
            let mut acc = _mm256_setzero_ps();
            for (wb, xb) in w.iter().zip(x) {
                let d = _mm256_set1_ps(wb.scale() * xb.scale());
                let bytes = _mm_loadu_si128(wb.qs.as_ptr().cast());
                // Weights 0..15 are the low nibbles, 16..31 the high ones.
                let both = _mm256_set_m128i(_mm_srli_epi16::<4>(bytes), bytes);
                let qw = _mm256_sub_epi8(_mm256_and_si256(both, low_nibbles), eight);
                let qx = _mm256_loadu_si256(xb.qs.as_ptr().cast());
                acc = _mm256_fmadd_ps(d, lane_sums(qw, qx), acc);
            }
            hsum(acc)
        }
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
    let mut xq = vec![BlockQ8_0::default(); m * blocks];
    for (q, row) in xq.chunks_exact_mut(blocks).zip(x.chunks_exact(c)) {
        quantize_q8_0(row, q);
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
fn channels<B: QuantBlock>(dst: &mut [f32], w: &[B], xq: &[BlockQ8_0], bias: Option<&[f32]>, blocks: usize, m: usize) {
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
        let mut xq = vec![BlockQ8_0::default(); 24];
        quantize_q8_0(&x, &mut xq);
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
