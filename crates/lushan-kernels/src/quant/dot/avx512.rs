//! The AVX-512 VNNI path: four weight rows a register and tiles of four weight rows × up to [`TILE`] input
//! rows; for many input rows, eight weight rows unpacked once ([`unpack8`]) and tiles of eight weight rows ×
//! up to [`TILE8`] input rows, where each input block's loads serve both register pairs.
//!
//! For one block `k`, the four rows' weights are unpacked once into two registers — positions 0..16 of row
//! `i` in 128-bit slot `i` of `low`, positions 16..32 in slot `i` of `high`, as unsigned bytes (Q8_0's bytes
//! with their top bit flipped) — and their scales into one vector (slot `i` holding row `i`'s scale four
//! times). Each input row's block then costs two 128-bit broadcasts, one broadcast of its offsets (`−128·s`,
//! the start of the integer sums), two `vpdpbusd` (64
//! products each), one conversion, one multiply (`d_w·d_x`) and one fused multiply-add, for 128 products.
//! The lanes are [`super`]'s, so each result is bit-identical to the portable twin.

#![allow(unsafe_code)]
use super::{BLOCK, BlockQ8_0, InputBlock, LANES, f16_table};
use crate::quant::dot::avx2::prefetch;
use std::arch::x86_64::*;

/// Input rows a tile holds in registers (one 512-bit accumulator each).
pub(super) const TILE: usize = 8;
const _: () = assert!(TILE == 8, "dot4_rows dispatches tiles of 1..=8 rows");

/// A block type's four-row unpacking.
trait Unpack: Copy {
    /// Row `i`'s positions 0..16 in slot `i` of the first register, 16..32 in slot `i` of the second, as the
    /// unsigned bytes `vpdpbusd` multiplies by the signed input.
    unsafe fn unpack4(w: [&Self; 4]) -> (__m512i, __m512i);
    /// The input offsets that turn the unsigned sums into the signed ones.
    fn offsets(x: &InputBlock) -> &[i32; LANES];
    fn d(&self) -> u16;
}

impl Unpack for BlockQ8_0 {
    #[inline(always)]
    unsafe fn unpack4(w: [&Self; 4]) -> (__m512i, __m512i) {
        // SAFETY: AVX-512 F is compiled in (parent `cfg`); each load reads one block's 32-byte `qs`.
        unsafe {
            let load = |b: &BlockQ8_0| _mm256_loadu_si256(b.qs.as_ptr().cast());
            // 128-bit slots [a0 a1 b0 b1] and [c0 c1 d0 d1] (0: positions 0..16, 1: 16..32) ...
            let ab = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(w[0])), load(w[1]));
            let cd = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(w[2])), load(w[3]));
            // ... to [a0 b0 c0 d0] and [a1 b1 c1 d1]; `w + 128` is `w` with its top bit flipped.
            let flip = _mm512_set1_epi8(i8::MIN);
            let low = _mm512_shuffle_i64x2::<0b10_00_10_00>(ab, cd);
            let high = _mm512_shuffle_i64x2::<0b11_01_11_01>(ab, cd);
            (_mm512_xor_si512(low, flip), _mm512_xor_si512(high, flip))
        }
    }
    fn offsets(x: &InputBlock) -> &[i32; LANES] {
        &x.q8_offsets
    }
    fn d(&self) -> u16 {
        self.d
    }
}

/// Four weight rows (each `blocks` long) against `R` input rows (`x`: `R · blocks` blocks): `[[row 0's
/// result, .., row 3's]; R]`.
#[inline(always)]
fn tile<B: Unpack, const R: usize>(w: [&[B]; 4], x: &[InputBlock], blocks: usize) -> [[f32; 4]; R] {
    assert!(w.iter().all(|w| w.len() == blocks), "quantized dot: weight rows");
    assert_eq!(x.len(), R * blocks, "quantized dot: input rows");
    let xs: [&[InputBlock]; R] = std::array::from_fn(|r| &x[r * blocks..(r + 1) * blocks]);
    let table = f16_table();
    // SAFETY: AVX-512 F/BW/VNNI and FMA are compiled in (parent `cfg`); every block read is an element of a
    // slice of `blocks` elements indexed by `k < blocks` (asserted above); unaligned loads accept any address.
    unsafe {
        // Slot `i` of the scale vector holds lane 0 (row `i`'s scale) four times.
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); R];
        for k in 0..blocks {
            let wb = w.map(|row| &row[k]);
            for b in wb {
                prefetch(b);
            }
            let (low, high) = B::unpack4(wb);
            let scales = _mm_setr_ps(
                table[usize::from(wb[0].d())],
                table[usize::from(wb[1].d())],
                table[usize::from(wb[2].d())],
                table[usize::from(wb[3].d())],
            );
            let dw = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales));
            for (a, xs) in acc.iter_mut().zip(&xs) {
                let xb = &xs[k];
                let x_low = _mm512_broadcast_i32x4(_mm_loadu_si128(xb.qs.as_ptr().cast()));
                let x_high = _mm512_broadcast_i32x4(_mm_loadu_si128(xb.qs[16..].as_ptr().cast()));
                let offsets = _mm512_broadcast_i32x4(_mm_loadu_si128(B::offsets(xb).as_ptr().cast()));
                // Each i32 lane: 8 products of an unsigned byte (≤ 255) and a signed one (|x| ≤ 128) plus an
                // offset of at most 128·8·128 in magnitude: exact.
                let ints = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(offsets, low, x_low), high, x_high);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
                *a = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(ints), *a);
            }
        }
        acc.map(|a| {
            let mut v = [0.0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), a);
            std::array::from_fn(|i| super::hsum([v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]]))
        })
    }
}

/// [`super::QuantBlock::dot4_rows`]: tiles of [`TILE`] input rows, then one tile of the rest.
fn dot4_rows<B: Unpack>(w: [&[B]; 4], x: &[InputBlock], out: &mut [[f32; 4]]) {
    let blocks = w[0].len();
    assert!(blocks > 0, "quantized dot: empty rows");
    assert_eq!(x.len(), out.len() * blocks, "quantized dot: input rows");
    for (out, x) in out.chunks_mut(TILE).zip(x.chunks(TILE * blocks)) {
        macro_rules! rest {
            ($($r:literal)*) => {
                match out.len() {
                    $($r => out.copy_from_slice(&tile::<B, $r>(w, x, blocks)),)*
                    _ => unreachable!("a chunk holds 1..=TILE rows"),
                }
            };
        }
        rest!(1 2 3 4 5 6 7 8);
    }
}

/// Registers one block of eight weight rows takes unpacked: rows 0..4's `low` and `high`, rows 4..8's, then
/// the two scale vectors.
const UNPACKED: usize = 6;

/// Eight weight rows (each `blocks` long) unpacked once for many input rows: block `k` is
/// `scratch[UNPACKED·k ..][..UNPACKED]` (see [`UNPACKED`]), read from the L1 cache by every input tile.
fn unpack8<B: Unpack>(w: [&[B]; 8], blocks: usize, scratch: &mut Vec<__m512i>) {
    assert!(w.iter().all(|w| w.len() == blocks), "quantized dot: weight rows");
    let table = f16_table();
    // SAFETY: AVX-512 F/BW are compiled in (parent `cfg`).
    scratch.resize(UNPACKED * blocks, unsafe { _mm512_setzero_si512() });
    // SAFETY: as above; every block read is `w[i][k]` with `k < blocks`, the length of every row (asserted
    // above), and every store `scratch[UNPACKED·k + i]` (i < UNPACKED) lies in the `UNPACKED · blocks`
    // registers just sized.
    unsafe {
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let scale = |b: &B| table[usize::from(b.d())];
        let scales = |a: &B, b: &B, c: &B, d: &B| {
            let s = _mm_setr_ps(scale(a), scale(b), scale(c), scale(d));
            _mm512_castps_si512(_mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s)))
        };
        let out = scratch.as_mut_ptr();
        let rows = w.map(|w| w.as_ptr());
        for k in 0..blocks {
            let b: [&B; 8] = [
                &*rows[0].add(k),
                &*rows[1].add(k),
                &*rows[2].add(k),
                &*rows[3].add(k),
                &*rows[4].add(k),
                &*rows[5].add(k),
                &*rows[6].add(k),
                &*rows[7].add(k),
            ];
            // Each row is one sequential stream, and the next groups of eight rows follow these in memory
            // (`super::channels`' runs): prefetching ahead overlaps their reads with this group's tiles.
            for b in b {
                prefetch(b);
            }
            let (low_a, high_a) = B::unpack4([b[0], b[1], b[2], b[3]]);
            let (low_b, high_b) = B::unpack4([b[4], b[5], b[6], b[7]]);
            let o = out.add(UNPACKED * k);
            o.write(low_a);
            o.add(1).write(high_a);
            o.add(2).write(low_b);
            o.add(3).write(high_b);
            o.add(4).write(scales(b[0], b[1], b[2], b[3]));
            o.add(5).write(scales(b[4], b[5], b[6], b[7]));
        }
    }
}

/// Input rows a tile of eight unpacked weight rows holds in registers (two 512-bit accumulators each).
pub(super) const TILE8: usize = 8;
const _: () = assert!(TILE8 == 8, "dot8_rows dispatches tiles of 1..=8 rows");

/// Eight unpacked weight rows ([`unpack8`]) against `R` input rows (`x`: `R · blocks` blocks): `[[row 0's
/// result, .., row 7's]; R]`, each bit-identical to [`tile`]'s (the same lanes, scales and order).
#[inline(always)]
fn tile8<B: Unpack, const R: usize>(unpacked: &[__m512i], x: &[InputBlock], blocks: usize) -> [[f32; 8]; R] {
    assert_eq!(unpacked.len(), UNPACKED * blocks, "quantized dot: unpacked weights");
    assert_eq!(x.len(), R * blocks, "quantized dot: input rows");
    // SAFETY: AVX-512 F/BW/VNNI and FMA are compiled in (parent `cfg`); the pointers read `unpacked[UNPACKED·k
    // + i]` (i < UNPACKED) and `x[r·blocks + k]` (r < R) with `k < blocks`, in bounds by the asserts above.
    unsafe {
        let mut acc_a = [_mm512_setzero_ps(); R];
        let mut acc_b = [_mm512_setzero_ps(); R];
        for k in 0..blocks {
            let u = unpacked.as_ptr().add(UNPACKED * k);
            let (low_a, high_a, low_b, high_b) = (*u, *u.add(1), *u.add(2), *u.add(3));
            let (dw_a, dw_b) = (_mm512_castsi512_ps(*u.add(4)), _mm512_castsi512_ps(*u.add(5)));
            for r in 0..R {
                let xb = &*x.as_ptr().add(r * blocks + k);
                let x_low = _mm512_broadcast_i32x4(_mm_loadu_si128(xb.qs.as_ptr().cast()));
                let x_high = _mm512_broadcast_i32x4(_mm_loadu_si128(xb.qs[16..].as_ptr().cast()));
                let offsets = _mm512_broadcast_i32x4(_mm_loadu_si128(B::offsets(xb).as_ptr().cast()));
                let dx = _mm512_set1_ps(xb.d);
                // Exact, as in `tile`.
                let ints_a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(offsets, low_a, x_low), high_a, x_high);
                let ints_b = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(offsets, low_b, x_low), high_b, x_high);
                acc_a[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw_a, dx), _mm512_cvtepi32_ps(ints_a), acc_a[r]);
                acc_b[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw_b, dx), _mm512_cvtepi32_ps(ints_b), acc_b[r]);
            }
        }
        std::array::from_fn(|r| {
            let mut v = [0.0f32; 32];
            _mm512_storeu_ps(v.as_mut_ptr(), acc_a[r]);
            _mm512_storeu_ps(v[16..].as_mut_ptr(), acc_b[r]);
            std::array::from_fn(|i| super::hsum([v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]]))
        })
    }
}

/// [`super::QuantBlock::dot8_rows`]: the eight rows unpacked once into a per-thread buffer, then tiles of
/// [`TILE8`] input rows and one tile of the rest.
fn dot8_rows<B: Unpack>(w: [&[B]; 8], x: &[InputBlock], out: &mut [[f32; 8]]) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let blocks = w[0].len();
    assert!(blocks > 0, "quantized dot: empty rows");
    assert_eq!(x.len(), out.len() * blocks, "quantized dot: input rows");
    SCRATCH.with_borrow_mut(|scratch| {
        unpack8(w, blocks, scratch);
        for (out, x) in out.chunks_mut(TILE8).zip(x.chunks(TILE8 * blocks)) {
            macro_rules! rest {
                ($($r:literal)*) => {
                    match out.len() {
                        $($r => out.copy_from_slice(&tile8::<B, $r>(scratch, x, blocks)),)*
                        _ => unreachable!("a chunk holds 1..=TILE8 rows"),
                    }
                };
            }
            rest!(1 2 3 4 5 6 7 8);
        }
    })
}

pub(super) fn dot8_rows_q8_0(w: [&[BlockQ8_0]; 8], x: &[InputBlock], out: &mut [[f32; 8]]) {
    dot8_rows(w, x, out)
}

pub(super) fn dot_q8_0(w: &[BlockQ8_0], x: &[InputBlock]) -> f32 {
    tile::<_, 1>([w; 4], x, w.len())[0][0]
}

pub(super) fn dot4_rows_q8_0(w: [&[BlockQ8_0]; 4], x: &[InputBlock], out: &mut [[f32; 4]]) {
    dot4_rows(w, x, out)
}

/// [`super::quantize_input`] of one block, bit-identical to [`super::quantize_block_portable`]: `Some` when
/// every value and the scale's inverse are finite (the rest, where the scalar cast turns NaN to 0 and
/// infinities to ±127, is left to the scalar code).
///
/// The scalar rounding is C's `roundf` (halves away from zero), which no rounding mode gives: `t = trunc(p)`,
/// then `t ± 1` where `|p − t| ≥ 0.5` (`p − t` is exact), the sign being `p`'s.
#[inline]
pub(super) fn quantize_block(xs: &[f32; BLOCK]) -> Option<InputBlock> {
    // SAFETY: AVX-512 F/BW are compiled in (parent `cfg`); the two loads read the 32 values of `xs`.
    unsafe {
        let lo = _mm512_loadu_ps(xs.as_ptr());
        let hi = _mm512_loadu_ps(xs[16..].as_ptr());
        let (alo, ahi) = (_mm512_abs_ps(lo), _mm512_abs_ps(hi));
        let finite = _mm512_set1_ps(f32::MAX);
        // Ordered comparisons: a NaN fails them.
        let ok = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(alo, finite) & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(ahi, finite);
        if ok != 0xFFFF {
            return None;
        }
        // The maximum is exact whatever the order.
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(alo, ahi));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A subnormal scale: infinite products, which the scalar cast saturates.
            return None;
        }
        let id = _mm512_set1_ps(id);
        let round = |v: __m512| {
            let p = _mm512_mul_ps(v, id);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(p);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(p, t)), _mm512_set1_ps(0.5));
            // ±1 with `p`'s sign (the sign bit of `p` on 1.0).
            let sign = _mm512_and_si512(_mm512_castps_si512(p), _mm512_set1_epi32(i32::MIN));
            let one = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(1.0))));
            // Saturated to `i8` as the scalar cast does (a tiny scale's products may pass ±127).
            let q = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, away, t, one));
            _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-128))
        };
        let (qlo, qhi) = (round(lo), round(hi));
        let mut block = InputBlock { d: half::f16::from_f32(d).to_f32(), ..InputBlock::default() };
        _mm_storeu_si128(block.qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qlo));
        _mm_storeu_si128(block.qs[16..].as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qhi));
        let mut pos = [0i32; 16];
        _mm512_storeu_si512(pos.as_mut_ptr().cast(), _mm512_add_epi32(qlo, qhi));
        let sums: [i32; LANES] = std::array::from_fn(|i| pos[4 * i..4 * i + 4].iter().sum());
        block.q4_offset = -8 * sums.iter().sum::<i32>();
        block.q8_offsets = sums.map(|s| -128 * s);
        Some(block)
    }
}
