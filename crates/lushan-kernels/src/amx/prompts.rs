//! `out = inp·Wᵀ + b` for a prompt's rows on AMX tiles, over weights `(OC, C)` stored as bf16, f16, Q8_0 or
//! Q4_0: the prompt's products of a model loaded with `--dtype bf16|f16|q8_0|q4_0` on a CPU with AMX.
//!
//! bf16 weights are the tiles' A operand as they lie (16 weight rows × 32 bf16, rows `2·C` bytes apart), so
//! nothing the size of the model is copied. f16 and quantized weights are converted 32 rows at a time (f16
//! rounded to bf16, `d·q` rounded to bf16) into a block that stays in L2 while every input panel passes over
//! it. The input rows (a few dozen) are rounded to bf16 and packed as the B operand, pairs of `k` for 32 rows
//! side by side. Each call of [`super::block`] gives a 32 (weights) × 32 (inputs) block of `out` transposed.
//!
//! Arithmetic: the inputs are rounded to bf16, as llama.cpp's BF16 products and PyTorch's bf16 autocast round
//! them (llama.cpp's F16 products round them to f16, its Q8_0/Q4_0 products coarser, to 8-bit blocks); an f16
//! weight or a quantized weight `d·q` is rounded to bf16 (relative error ≤ 2⁻⁹; for Q8_0/Q4_0 below the
//! quantization step, for f16 the bf16 type's precision: this CPU's tiles have no f16 products). Products are
//! exact and summed in f32 by the tiles. So a prompt row here differs from the same row decoded alone by the
//! matrix-vector kernels by those roundings, not bit for bit ([`crate::weights::forward_rows`] keeps the
//! bit-identical paths). f32 weights are not taken: an f32 model's products stay in f32.

use super::{BLOCK, K_STEP, Prefetch, Tiles, WORD_STEP, available, block};
use crate::packed_gemm::pair;
use crate::quant::BlockQ4_0;
use crate::quant::packed_q4::GROUP;
use crate::weights::Weights;
use rayon::prelude::*;

/// Fewest input rows worth a tile: below, most of each 32-row block would be padding.
pub const MIN_ROWS: usize = 16;

/// Whether [`forward`] takes `m` rows of length `c` of these weights here: bf16, f16 or quantized weights,
/// AMX usable, enough rows, and rows a whole number of tile steps (bf16 weights are read in place, so they
/// cannot be padded; a Q8_0/Q4_0 block is one tile step). f32 weights keep their own precision.
pub fn takes(w: Weights<'_>, m: usize, c: usize) -> bool {
    let weight_type = matches!(w, Weights::Bf16(_) | Weights::F16(_) | Weights::Q8_0(_) | Weights::Q4_0(_));
    weight_type && m >= MIN_ROWS && c > 0 && c.is_multiple_of(K_STEP) && available()
}

/// `bf16(d·q[i])` for the 32 weights of a block, as bits (fixed-size, so the loop is one vector pass).
#[inline(always)]
fn scaled_bf16(d: f32, q: &[i8; K_STEP], out: &mut [u16]) {
    let mut bits = [0u16; K_STEP];
    for (b, &q) in bits.iter_mut().zip(q) {
        *b = (crate::packed_gemm::bf16_high_bits(d * f32::from(q)) >> 16) as u16;
    }
    out[..K_STEP].copy_from_slice(&bits);
}

/// Where row `r`'s block `b` (32 values of k) lies in a converted block of 32 weight rows: blocks of k
/// outermost, then rows — so each tile step's two A tiles (rows 0–15, 16–31) are 2 KiB in a row, tile rows 64
/// bytes apart ([`CONVERTED_TILES`]). Loaded this way, a step's tiles cost ~11 % less than rows `2·C` bytes
/// apart (one block of a GPT-2 product, 2 × 24 steps, alternated in one run, 2026-12-03).
fn chunk_at(r: usize, b: usize) -> usize {
    (b * BLOCK + r) * K_STEP
}

/// The tiles of a converted block ([`chunk_at`]): half at 16 rows of 64 bytes, a step 32 such rows on.
const CONVERTED_TILES: Tiles = Tiles { half: 16 * 64, row: 64, step: BLOCK * 64 };

/// Weight rows `r0..r0+rows` (`rows` ≤ 32) of length `c` as bf16 bits in `dst` (32 rows × `c`, laid out by
/// [`chunk_at`]; rows past `rows` zero): the tiles' A operand for one block of 32 weight rows.
fn weight_rows_bf16(w: Weights<'_>, c: usize, r0: usize, rows: usize, dst: &mut [u16]) {
    let blocks = c / K_STEP;
    assert!(rows <= BLOCK && dst.len() == BLOCK * c, "amx prompts: a converted block's extent");
    if rows < BLOCK {
        dst.fill(0);
    }
    match w {
        Weights::Bf16(w) => {
            for (i, src) in w[r0 * c..][..rows * c].chunks_exact(K_STEP).enumerate() {
                dst[chunk_at(i / blocks, i % blocks)..][..K_STEP].copy_from_slice(bytemuck::cast_slice(src));
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Weights::Q8_0(w) if vector_dequantize() => {
            // SAFETY: the CPU has AVX-512 F/BW and BF16 (`vector_dequantize`); lengths are asserted inside.
            unsafe { avx512::q8_0(&w[r0 * blocks..][..rows * blocks], blocks, dst) }
        }
        Weights::Q8_0(w) => {
            for (i, b) in w[r0 * blocks..][..rows * blocks].iter().enumerate() {
                scaled_bf16(b.scale(), &b.qs, &mut dst[chunk_at(i / blocks, i % blocks)..]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Weights::Q4_0(w) if vector_dequantize() => {
            // `r0` is a multiple of 32: whole groups of sixteen rows.
            for i in 0..rows.div_ceil(GROUP) {
                let group = w.group(r0 / GROUP + i);
                let group_rows = GROUP.min(rows - i * GROUP);
                // SAFETY: as for Q8_0.
                unsafe { avx512::q4_0_group(group, i * GROUP, group_rows, c, dst) };
            }
        }
        Weights::Q4_0(w) => {
            let mut row = vec![BlockQ4_0::default(); blocks];
            for r in 0..rows {
                w.row_blocks(r0 + r, &mut row);
                for (b, block) in row.iter().enumerate() {
                    scaled_bf16(block.scale(), &block.unpack(), &mut dst[chunk_at(r, b)..]);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Weights::F16(w) if vector_dequantize() => {
            // SAFETY: as for Q8_0.
            unsafe { avx512::f16(&w[r0 * c..][..rows * c], blocks, dst) }
        }
        Weights::F16(w) => {
            for (i, src) in w[r0 * c..][..rows * c].chunks_exact(K_STEP).enumerate() {
                let out = &mut dst[chunk_at(i / blocks, i % blocks)..][..K_STEP];
                for (o, v) in out.iter_mut().zip(src) {
                    *o = (crate::packed_gemm::bf16_high_bits(v.to_f32()) >> 16) as u16;
                }
            }
        }
        Weights::F32(_) => unreachable!("amx prompts: f32 weights are not taken"),
    }
}

/// Whether the blocks are dequantized with AVX-512 BF16 (`vcvtne2ps2bf16` rounds to nearest even, as
/// [`scaled_bf16`] does; `d·q` is never subnormal, since `d` is an f16).
fn vector_dequantize() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{BLOCK, K_STEP, chunk_at};
    use crate::quant::BlockQ8_0;
    use crate::quant::packed_q4::{GROUP, GroupBlock};
    use std::arch::x86_64::*;

    /// 32 weights as i32 in two vectors, times `d`, rounded to bf16 and stored as 32 bf16 bits.
    ///
    /// # Safety
    /// AVX-512 F/BW/BF16; `out` holds at least 32 values (the callers pass exact chunks).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn store_scaled(d: f32, low: __m512i, high: __m512i, out: &mut [u16]) {
        let d = _mm512_set1_ps(d);
        let low = _mm512_mul_ps(_mm512_cvtepi32_ps(low), d);
        let high = _mm512_mul_ps(_mm512_cvtepi32_ps(high), d);
        // The second operand fills the low 16 values.
        // SAFETY: both are 512 bits of plain integers; any bit pattern is valid.
        let bits: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(high, low)) };
        // SAFETY: `out` has 32 u16 = 64 bytes (caller).
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), bits) };
    }

    /// [`super::store_transposed`]: per output row `j` and half `h` of the channels, one gather of
    /// `tile[(16h + i)·32 + j]`, `i < 16`, plus the bias, stored under a mask of the row's channels.
    ///
    /// # Safety
    /// AVX-512 F; `dst` has at most 32 rows of at most 32 channels, `bias` (if any) at least as many values as
    /// the rows have channels (the caller's shapes).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store_transposed(tile: &[f32; 1024], dst: &mut [&mut [f32]], bias: Option<&[f32]>) {
        let index = _mm512_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480);
        let channels = dst.first().map_or(0, |d| d.len());
        assert!(dst.len() <= 32 && channels <= 32 && dst.iter().all(|d| d.len() == channels));
        assert!(bias.is_none_or(|b| b.len() >= channels), "amx prompts: bias extent");
        for h in 0..channels.div_ceil(16) {
            let n = (channels - 16 * h).min(16);
            let mask: __mmask16 = ((1u32 << n) - 1) as u16;
            // SAFETY: the masked load reads bias[16h..16h + n], inside `bias` (asserted).
            let b = bias.map(|b| unsafe { _mm512_maskz_loadu_ps(mask, b[16 * h..].as_ptr()) });
            for (j, row) in dst.iter_mut().enumerate() {
                // SAFETY: the gather reads tile[(16h + i)·32 + j] for i < 16: below 32·32 since h ≤ 1 and
                // j < 32; the masked store writes row[16h..16h + n], inside the row (n channels left).
                unsafe {
                    let sums = _mm512_i32gather_ps::<4>(index, tile[16 * h * 32 + j..].as_ptr().cast());
                    // No bias: the sum as it is (adding +0.0 would turn −0.0 into +0.0).
                    let out = b.map_or(sums, |b| _mm512_add_ps(sums, b));
                    _mm512_mask_storeu_ps(row[16 * h..].as_mut_ptr(), mask, out);
                }
            }
        }
    }

    /// Rows of `per_row` blocks, block `i` to [`chunk_at`]`(i / per_row, i % per_row)` of `out`.
    ///
    /// # Safety
    /// AVX-512 F/BW/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn q8_0(blocks: &[BlockQ8_0], per_row: usize, out: &mut [u16]) {
        assert!(blocks.len() <= BLOCK * per_row && out.len() == BLOCK * per_row * K_STEP, "amx prompts: extents");
        let rows = blocks.len() / per_row.max(1);
        // Blocks of k outer, rows inner: the writes in order (reading rows in order wrote 64 bytes every 2 KiB,
        // and cost more than the tile loads it saved); the reads are in L2 already (prefetched by the tiles).
        for (b, r) in (0..per_row).flat_map(|b| (0..rows).map(move |r| (b, r))) {
            let (b, out) = (&blocks[r * per_row + b], &mut out[chunk_at(r, b)..][..K_STEP]);
            // SAFETY: `qs` is 32 bytes; `out` is a chunk of 32.
            unsafe {
                let q = _mm256_loadu_si256(b.qs.as_ptr().cast());
                let low = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(q));
                let high = _mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q));
                store_scaled(b.scale(), low, high, out);
            }
        }
    }

    /// f16 weights rounded to bf16 (to nearest even, as [`super::scaled_bf16`]; an f16 widens to a normal
    /// f32 exactly), 32 at a time.
    ///
    /// # Safety
    /// AVX-512 F/BW/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn f16(w: &[half::f16], per_row: usize, out: &mut [u16]) {
        let total = BLOCK * per_row * K_STEP;
        assert!(w.len() <= total && out.len() == total && w.len().is_multiple_of(K_STEP), "amx prompts: extents");
        for (i, w) in w.chunks_exact(K_STEP).enumerate() {
            let out = &mut out[chunk_at(i / per_row, i % per_row)..][..K_STEP];
            // SAFETY: each load reads 16 of the chunk's 32 halves; the store writes the chunk's 32 outputs.
            unsafe {
                let low = _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().cast()));
                let high = _mm512_cvtph_ps(_mm256_loadu_si256(w[16..].as_ptr().cast()));
                let bits: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), bits);
            }
        }
    }

    /// The first `rows` rows of one group of sixteen (its blocks `group`, rows of `c`) into `out` (a converted
    /// block of 32 rows, [`chunk_at`]) as its rows `first..first + rows`:
    /// per block, the four registers of nibble bytes (lane `r` row `r`) transposed so that each 128-bit slot
    /// is one row's sixteen bytes in llama.cpp's order, then each row as a Q4_0 block.
    ///
    /// # Safety
    /// AVX-512 F/BW/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn q4_0_group(group: &[GroupBlock], first: usize, rows: usize, c: usize, out: &mut [u16]) {
        assert!(rows <= GROUP && group.len() * K_STEP == c, "amx prompts: a group's extent");
        assert!(first + rows <= BLOCK && out.len() == BLOCK * c, "amx prompts: a converted block's extent");
        let nibble = _mm_set1_epi8(0x0f);
        // n − 8 for n = 0..16.
        let steps =
            _mm512_setr_ps(-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        for (k, gb) in group.iter().enumerate() {
            // SAFETY: the loads read the block's 32 bytes of scales and 4 × 64 bytes of nibbles; the stores
            // write the local arrays; each row's 32 outputs lie in `out` (rows < `rows`, asserted above).
            unsafe {
                let q: [__m512i; 4] = std::array::from_fn(|v| _mm512_loadu_si512(gb.qs[64 * v..].as_ptr().cast()));
                // A 4×4 transpose of dwords in each 128-bit slot L: register t gets row 4L + t's dwords 0..4.
                let (t0, t1) = (_mm512_unpacklo_epi32(q[0], q[1]), _mm512_unpackhi_epi32(q[0], q[1]));
                let (t2, t3) = (_mm512_unpacklo_epi32(q[2], q[3]), _mm512_unpackhi_epi32(q[2], q[3]));
                let by_row = [
                    _mm512_unpacklo_epi64(t0, t2),
                    _mm512_unpackhi_epi64(t0, t2),
                    _mm512_unpacklo_epi64(t1, t3),
                    _mm512_unpackhi_epi64(t1, t3),
                ];
                let mut bytes = [0u8; 256];
                for (t, v) in by_row.iter().enumerate() {
                    _mm512_storeu_si512(bytes[64 * t..].as_mut_ptr().cast(), *v);
                }
                let mut scales = [0.0f32; GROUP];
                _mm512_storeu_ps(scales.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(gb.d.as_ptr().cast())));
                for (r, &d) in scales.iter().enumerate().take(rows) {
                    // Row r = 4L + t sits in slot L of register t.
                    let q = _mm_loadu_si128(bytes[64 * (r % 4) + 16 * (r / 4)..].as_ptr().cast());
                    // The row's 16 possible values bf16(d·(n − 8)), n = 0..16, then each of its 32 nibbles
                    // (low nibbles first: weights 0..16, then 16..32) picks its value: one `vpermw`.
                    let values = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_set1_ps(d), steps));
                    let table = _mm512_castsi256_si512(std::mem::transmute::<__m256bh, __m256i>(values));
                    let nibbles =
                        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(q), nibble), _mm_and_si128(q, nibble));
                    let bits = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(nibbles), table);
                    _mm512_storeu_si512(out[chunk_at(first + r, k)..][..K_STEP].as_mut_ptr().cast(), bits);
                }
            }
        }
    }
}

/// `out = inp·Wᵀ (+ bias)`.
///
/// # Shapes
/// `out`: (M, OC), `inp`: (M, C), `weight`: (OC, C), `bias`: (OC).
///
/// # Panics
/// Unless [`takes`]`(w, M, C)`, or on extents that do not match these shapes.
pub fn forward(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    assert!(c > 0 && inp.len().is_multiple_of(c), "amx bf16: input length {} is not a multiple of C = {c}", inp.len());
    let m = inp.len() / c;
    assert!(takes(w, m, c), "amx bf16: {m} rows of {c} are not for the tiles");
    assert_eq!(out.len(), m * oc, "amx bf16: output extent");
    assert_eq!(w.len(), oc * c, "amx bf16: weight extent");
    assert!(bias.is_none_or(|b| b.len() == oc), "amx bf16: bias extent");
    if oc == 0 {
        return;
    }
    // Inputs: panels of 32 rows (zero past M), each `C/2` steps of 32 words, in a buffer kept between calls (a
    // prompt makes ~50 of them; a fresh buffer of a few hundred KiB is a fresh mapping, page faults and all).
    // While this call waits for its tasks, a rayon worker may run another caller's job that comes back here:
    // that call, finding the buffer borrowed, takes a fresh one.
    let panel_words = BLOCK * c / 2;
    PANELS.with(|cell| {
        let mut kept = cell.try_borrow_mut();
        let mut fresh = Vec::new();
        let panels: &mut Vec<u32> = match kept.as_deref_mut() {
            Ok(kept) => kept,
            Err(_) => &mut fresh,
        };
        // Every word is written below (rows past M as zeros), so the kept contents need no clearing.
        panels.resize(m.div_ceil(BLOCK) * panel_words, 0);
        panels.par_chunks_mut(panel_words).enumerate().for_each(|(p, panel)| {
            let rows: Vec<&[f32]> = inp.chunks_exact(c).skip(p * BLOCK).take(BLOCK).collect();
            // Strips of 16 words (32 values of k): each row's pairs rounded in one contiguous (vectorised) pass
            // into a small block on the stack, then written out transposed, in order. Rounding inside the
            // strided loop kept it scalar (~10 % of a prompt's time); a heap buffer of the whole panel cost
            // an allocation, zeroing and page faults per call.
            const STRIP: usize = 16;
            let mut strip = [[0u32; STRIP]; BLOCK];
            for (s0, out) in (0..c / 2).step_by(STRIP).zip(panel.chunks_mut(STRIP * BLOCK)) {
                let words = STRIP.min(c / 2 - s0);
                for (r, strip) in strip.iter_mut().enumerate() {
                    match rows.get(r) {
                        Some(row) => {
                            for (w, pr) in strip.iter_mut().zip(row[2 * s0..2 * (s0 + words)].chunks_exact(2)) {
                                *w = pair(pr[0], pr[1]);
                            }
                        }
                        None => strip.fill(0),
                    }
                }
                for (s, step) in out.chunks_exact_mut(BLOCK).enumerate() {
                    for (w, strip) in step.iter_mut().zip(&strip) {
                        *w = strip[s];
                    }
                }
            }
        });
        let panels = &panels[..];
        let row_bytes = 2 * c;
        // bf16 weights read in place: tile rows are weight rows, `2·C` bytes apart.
        let in_place = Tiles { half: 16 * row_bytes, row: row_bytes, step: 2 * K_STEP };
        let input_tiles = Tiles { half: 64, row: BLOCK * 4, step: WORD_STEP * BLOCK * 4 };
        // Each task: 32 weight rows by every input panel, written into its 32 channels of every output row.
        crate::quant::dot::channels_by_task(out, oc, BLOCK).into_par_iter().enumerate().for_each(|(wb, mut dst)| {
            let rows = BLOCK.min(oc - wb * BLOCK);
            // bf16 weights in place; f16 and quantized ones converted, and the last block of a matrix whose OC
            // is not a multiple of 32 copied with zero rows (the tiles read 32 rows).
            ROWS_BF16.with_borrow_mut(|copy| {
                let weights = w;
                let (w, weight_tiles): (&[u8], Tiles) = match w {
                    Weights::Bf16(bf) if rows == BLOCK => {
                        (bytemuck::cast_slice(&bf[wb * BLOCK * c..][..BLOCK * c]), in_place)
                    }
                    _ => {
                        copy.resize(BLOCK * c, 0);
                        weight_rows_bf16(w, c, wb * BLOCK, rows, copy);
                        (bytemuck::cast_slice(copy.as_slice()), CONVERTED_TILES)
                    }
                };
                let bias = bias.map(|b| &b[wb * BLOCK..][..rows]);
                let next = next_weights(weights, c, oc, wb + 1);
                block_by_panels(w, panels, (m, c), (weight_tiles, input_tiles), &mut dst, bias, next);
            })
        });
    });
}

thread_local! {
    /// Each thread's block of 32 weight rows dequantized to bf16, reused from block to block.
    static ROWS_BF16: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's input panels, reused from call to call.
    static PANELS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where weight block `wb` (rows `32·wb ..`) lies as stored — what converting it will read — or nothing past
/// the last block. A task usually takes the next block next (rayon hands each thread a contiguous range).
fn next_weights(w: Weights<'_>, c: usize, oc: usize, wb: usize) -> Prefetch {
    let r0 = wb * BLOCK;
    if r0 >= oc {
        return Prefetch::NONE;
    }
    let rows = BLOCK.min(oc - r0);
    let blocks = c / K_STEP;
    match w {
        Weights::Bf16(w) => Prefetch::of(&w[r0 * c..][..rows * c]),
        Weights::F16(w) => Prefetch::of(&w[r0 * c..][..rows * c]),
        Weights::Q8_0(w) => Prefetch::of(&w[r0 * blocks..][..rows * blocks]),
        // Groups of sixteen rows lie one after another: the block's groups from its first group on.
        Weights::Q4_0(w) => {
            let first = Prefetch::of(w.group(r0 / GROUP));
            Prefetch { lines: first.lines * rows.div_ceil(GROUP), ..first }
        }
        Weights::F32(_) => Prefetch::NONE,
    }
}

/// One block of 32 weight rows (`w`, bf16 bytes) by every input panel, plus the bias, into `dst`: input row
/// `r`'s channels of this block (as many as the block has rows). `next` (the next block's weights as stored)
/// is prefetched a share per panel while the tiles work.
fn block_by_panels(
    w: &[u8],
    panels: &[u32],
    (m, c): (usize, usize),
    (weight_tiles, input_tiles): (Tiles, Tiles),
    dst: &mut [&mut [f32]],
    bias: Option<&[f32]>,
    next: Prefetch,
) {
    assert_eq!(dst.len(), m, "amx prompts: output rows");
    let panel_words = BLOCK * c / 2;
    let steps = c / K_STEP;
    let mut tile = [0.0f32; BLOCK * BLOCK];
    let per_panel = next.lines.div_ceil(m.div_ceil(BLOCK));
    for (p, panel) in panels.chunks_exact(panel_words).enumerate() {
        let share = Prefetch {
            start: next.start.wrapping_add(p * per_panel * 64),
            lines: per_panel.min(next.lines.saturating_sub(p * per_panel)),
        };
        block(&mut tile, w, weight_tiles, bytemuck::cast_slice(panel), input_tiles, steps, share);
        store_transposed(&tile, &mut dst[p * BLOCK..(p * BLOCK + BLOCK).min(m)], bias);
    }
}

/// `dst[j][i] = tile[i·32 + j] (+ bias[i])` for the rows `j` of `dst` (≤ 32) and its channels `i` (≤ 32): one
/// tile's sums (weight rows × input rows) into the output rows. The scalar loop, a strided read per value,
/// cost a third of the tiles' own time; with AVX-512 each output row's 16 channels are one gather.
fn store_transposed(tile: &[f32; BLOCK * BLOCK], dst: &mut [&mut [f32]], bias: Option<&[f32]>) {
    assert!(dst.len() <= BLOCK && dst.iter().all(|d| d.len() <= BLOCK), "amx prompts: a tile's outputs");
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if vector_dequantize() {
        // SAFETY: AVX-512 F is present (`vector_dequantize` checks it); extents asserted above.
        unsafe { avx512::store_transposed(tile, dst, bias) };
        return;
    }
    store_transposed_scalar(tile, dst, bias);
}

/// [`store_transposed`] one value at a time: the fallback and the vector path's reference.
fn store_transposed_scalar(tile: &[f32; BLOCK * BLOCK], dst: &mut [&mut [f32]], bias: Option<&[f32]>) {
    for (j, dst) in dst.iter_mut().enumerate() {
        for (i, d) in dst.iter_mut().enumerate() {
            let sum = tile[i * BLOCK + j];
            *d = bias.map_or(sum, |b| sum + b[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::random_f32;
    use crate::quant::packed_q4::PackedQ4_0;
    use crate::quant::{BlockQ4_0, BlockQ8_0, quantize_q4_0, quantize_q8_0};
    use crate::rng::Rng;
    use half::bf16;

    /// f64 products of the weights as the tiles see them (bf16, or `d·q` rounded to bf16) and the inputs
    /// rounded to bf16, plus the bias.
    fn reference(inp: &[f32], w: Weights<'_>, bias: &[f32], c: usize, oc: usize) -> Vec<f64> {
        let see = |x: f32| bf16::from_f32(x).to_f64();
        let mut wide = vec![0.0f32; oc * c];
        w.rows_to_f32(c, 0..oc, &mut wide);
        inp.chunks_exact(c)
            .flat_map(|row| {
                let wide = &wide;
                (0..oc).map(move |o| {
                    let dot: f64 = row.iter().zip(&wide[o * c..][..c]).map(|(&x, &wv)| see(x) * see(wv)).sum();
                    dot + bias[o] as f64
                })
            })
            .collect()
    }

    #[test]
    fn tiles_match_the_reference_of_the_rounded_operands_for_every_weight_type_taken() {
        let mut rng = Rng::new(11);
        // Ragged M (partial input panels) and OC (a padded last weight block), C of 1 and of 96 tile steps.
        for (m, c, oc) in [(16, 32, 1), (33, 64, 70), (64, 768, 96), (70, 96, 33), (17, 3072, 40)] {
            let inp = random_f32(&mut rng, m * c, 1.0);
            let wf = random_f32(&mut rng, oc * c, 1.0);
            let bf: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut q8 = vec![BlockQ8_0::default(); oc * c / K_STEP];
            quantize_q8_0(&wf, &mut q8);
            let q4 = PackedQ4_0::quantize(&wf, c);
            let hf: Vec<half::f16> = wf.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bias = random_f32(&mut rng, oc, 1.0);
            for (name, w) in [
                ("bf16", Weights::Bf16(&bf)),
                ("f16", Weights::F16(&hf)),
                ("q8_0", Weights::Q8_0(&q8)),
                ("q4_0", Weights::Q4_0(&q4)),
            ] {
                if !available() {
                    eprintln!("skipped: this CPU (or OS) gives no AMX BF16");
                    assert!(!takes(w, m, c));
                    return;
                }
                assert!(takes(w, m, c));
                let mut out = vec![f32::NAN; m * oc];
                forward(&mut out, &inp, w, Some(&bias), c, oc);
                let want = reference(&inp, w, &bias, c, oc);
                // f32 sums of C products of size ≤ 1.
                let tol = 4.0 * c as f64 * f32::EPSILON as f64 + 1e-6;
                for (idx, (&g, &r)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - r).abs() <= tol * (1.0 + r.abs()),
                        "{name} m{m} c{c} oc{oc} [{idx}]: {g} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_dequantization_equals_the_scalar_bit_for_bit() {
        if !vector_dequantize() {
            eprintln!("skipped: no AVX-512 BF16 here");
            return;
        }
        let mut rng = Rng::new(12);
        let (c, rows) = (96, 32);
        // Scales from tiny (f16 subnormal) to large, and weights with the extremes of each type.
        let mut wf = random_f32(&mut rng, rows * c, 1.0);
        wf.iter_mut().enumerate().for_each(|(i, v)| *v *= [1e-6, 1e-2, 1.0, 300.0][i / c % 4]);
        wf[0] = -1e4;
        let mut q8 = vec![BlockQ8_0::default(); rows * c / K_STEP];
        quantize_q8_0(&wf, &mut q8);
        q8[1].qs[5] = -128;
        let mut q4 = vec![BlockQ4_0::default(); rows * c / K_STEP];
        quantize_q4_0(&wf, &mut q4);
        let packed = PackedQ4_0::from_blocks(&q4, rows, c);
        // Whole blocks of 32 rows, and a last block of 21 (a partly filled group of sixteen; zeros after).
        // f16 weights from tiny (f16 subnormals) to 300, and ties of the rounding to bf16.
        let mut hf: Vec<half::f16> = wf.iter().map(|&v| half::f16::from_f32(v)).collect();
        hf[3] = half::f16::from_bits(0x3c04); // 1 + 2⁻⁸: halfway between two bf16, rounds to even
        hf[4] = half::f16::from_bits(0x3c0c); // 1 + 3·2⁻⁸: halfway, rounds up
        for (w, taken) in [
            (Weights::Q8_0(&q8), rows),
            (Weights::Q4_0(&packed), rows),
            (Weights::Q4_0(&packed), 21),
            (Weights::F16(&hf), rows),
        ] {
            let mut vector = vec![1u16; rows * c];
            weight_rows_bf16(w, c, 0, taken, &mut vector);
            let mut scalar = vec![0u16; rows * c];
            let blocks = c / K_STEP;
            for r in 0..taken * blocks {
                // Chunk r in row order (row r / blocks, block r % blocks) lies where `chunk_at` puts it.
                let out = &mut scalar[chunk_at(r / blocks, r % blocks)..][..K_STEP];
                match w {
                    Weights::Q8_0(b) => scaled_bf16(b[r].scale(), &b[r].qs, out),
                    Weights::Q4_0(_) => scaled_bf16(q4[r].scale(), &q4[r].unpack(), out),
                    Weights::F16(h) => {
                        for (o, v) in out.iter_mut().zip(&h[r * K_STEP..][..K_STEP]) {
                            *o = bf16::from_f32(v.to_f32()).to_bits();
                        }
                    }
                    _ => unreachable!(),
                }
            }
            assert_eq!(vector, scalar);
        }
    }

    type StoreTile = fn(&[f32; BLOCK * BLOCK], &mut [&mut [f32]], Option<&[f32]>);

    #[test]
    fn a_tile_is_stored_transposed_as_the_scalar_loop_stores_it() {
        let mut rng = Rng::new(13);
        let mut tile = [0.0f32; BLOCK * BLOCK];
        tile.copy_from_slice(&random_f32(&mut rng, BLOCK * BLOCK, 1.0));
        tile[5 * BLOCK + 3] = -0.0; // kept as −0.0 without a bias
        let bias = random_f32(&mut rng, BLOCK, 1.0);
        // Whole tiles, a last block of 21 channels, a partial panel of 7 rows, one channel.
        for (rows, channels) in [(32, 32), (32, 21), (7, 32), (7, 21), (1, 1), (32, 16), (32, 17)] {
            for bias in [None, Some(&bias[..channels])] {
                let run = |store: StoreTile| {
                    let mut out = vec![f32::NAN; rows * channels];
                    let mut dst: Vec<&mut [f32]> = out.chunks_exact_mut(channels).collect();
                    store(&tile, &mut dst, bias);
                    out
                };
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                let (got, want) = (bits(run(store_transposed)), bits(run(store_transposed_scalar)));
                assert_eq!(got, want, "{rows} rows × {channels} channels, bias {}", bias.is_some());
                assert!(want.iter().all(|&b| !f32::from_bits(b).is_nan()));
            }
        }
    }

    #[test]
    fn shapes_and_types_the_tiles_do_not_take() {
        let w = [0.0f32; 64 * 48];
        let bf = [bf16::ZERO; 64 * 48];
        assert!(!takes(Weights::F32(&w), 64, 48), "f32 weights stay in f32");
        assert!(!takes(Weights::Bf16(&bf), 64, 48), "C not a multiple of 32");
        assert!(!takes(Weights::Bf16(&bf), MIN_ROWS - 1, 96), "too few rows");
        assert!(!takes(Weights::Bf16(&bf), 64, 0));
    }
}
