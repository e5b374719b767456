//! Products that read Q8_0 weights directly, as llama.cpp's CPU backend does: the activations are quantized
//! to Q8_0 per row (the same 32-value blocks, [`InputBlock`]), and each block pair is an integer dot product
//! scaled by both blocks' scales. (Q4_0 weights are repacked sixteen rows at a time and have their own
//! products, [`super::packed_q4`], which read the same input blocks.)
//!
//! For one block pair, each of 4 lanes sums a fixed set of 8 integer products `w_j·x_j` exactly in `i32`:
//! lane `i` holds positions `4i..4i+3` and `16+4i..16+4i+3`. Each lane then accumulates `d_w·d_x·lane` in
//! `f32` with a fused multiply-add (`d_w·d_x` rounded to `f32` first), and the 4 lanes are summed in a fixed
//! tree at the end (`(0 + 2) + (1 + 3)`). Every fast path computes exactly those lanes, so the portable twin
//! [`dot_portable`] gives bit-identical results, whatever the path, the grouping of rows, the number of input
//! rows or of threads.
//!
//! Why these lanes: a block's first and second 16 bytes go to the same lanes of two registers, so the
//! integer products of a 128-bit slot cover one whole block, and one register holds the lanes of two rows
//! (256-bit) or four rows (512-bit):
//! - **AVX-512 VNNI** ([`avx512`], chosen when `avx512f`, `avx512bw` and `avx512vnni` are compiled in): four
//!   weight rows' blocks in one register pair, `vpdpbusd` (unsigned × signed bytes, four products summed
//!   into each `i32` lane with accumulation) twice per block, starting from an input-only offset: the signed
//!   weights become unsigned by flipping their top bit, `Σ w·x = Σ (w+128)·x − 128·Σ x`, the offsets
//!   `−128·Σ x` of each lane computed once per input row ([`InputBlock`]). Several input rows (up to
//!   [`avx512::TILE`]) share each unpacked weight register and scale vector. Over many input rows (a prompt),
//!   eight weight rows are unpacked once into a per-thread buffer (6 registers a block: 36 KiB for C = 3072,
//!   nothing kept between calls) and every input block serves all eight ([`QuantBlock::dot8_rows`]). The
//!   input rows are quantized by a vector twin of [`quantize_input`].
//! - **AVX2** ([`avx2`]): two rows a register; with AVX-VNNI (`avxvnni`) the same `vpdpbusd` form in 256
//!   bits, otherwise `maddubs`/`madd` with the sign trick (`|w|` times `x` with `w`'s sign).
//!
//! # Shapes
//! A quantized matrix `W` (OC, C) is stored by rows: row `o` is blocks `o·C/32 .. (o+1)·C/32`; `C` is a
//! multiple of 32.

use rayon::prelude::*;

use super::{BLOCK, BlockQ8_0, quantize_q8_0};
use crate::gemv::fmadd;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni",
    target_feature = "fma"
))]
mod avx512;
#[cfg(test)]
mod tests;

/// One 32-value block of an input row as the products read it: quantized to Q8_0, its scale widened, and
/// the offsets the unsigned forms of the weights need.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InputBlock {
    /// The Q8_0 block's scale (its f16 value, widened exactly).
    pub d: f32,
    pub qs: [i8; BLOCK],
    /// `−8 · Σ x_j` over the whole block: the start of [`super::packed_q4`]'s integer sums for Q4_0's
    /// unsigned nibbles (`Σ (q−8)·x = Σ q·x − 8·Σ x`).
    pub q4_offset: i32,
    /// `−128 · s_i`: added to `Σ (w+128)·x` of Q8_0's weights with their top bit flipped.
    pub q8_offsets: [i32; LANES],
}

/// Lanes per block pair (see the module documentation).
pub const LANES: usize = 4;

/// The lane a block position belongs to: positions `4i..4i+3` and `16+4i..16+4i+3` are lane `i`.
pub fn lane(j: usize) -> usize {
    (j % (BLOCK / 2)) / 4
}

/// Quantizes one input row `x` into `out` (`out.len() · 32 == x.len()`).
///
/// # Panics
/// If the lengths disagree (a caller bug).
pub fn quantize_input(x: &[f32], out: &mut [InputBlock]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_input: {} values for {} blocks", x.len(), out.len());
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni",
            target_feature = "fma"
        ))]
        if let Some(b) = avx512::quantize_block(xs.try_into().expect("32 values")) {
            *block = b;
            continue;
        }
        *block = quantize_block_portable(xs);
    }
}

/// One block of [`quantize_input`] in plain code: the portable twin of the vector quantizer.
pub fn quantize_block_portable(xs: &[f32]) -> InputBlock {
    let mut q8 = [BlockQ8_0::default()];
    quantize_q8_0(xs, &mut q8);
    let mut sums = [0i32; LANES];
    for (j, &q) in q8[0].qs.iter().enumerate() {
        sums[lane(j)] += i32::from(q);
    }
    InputBlock {
        d: q8[0].scale(),
        qs: q8[0].qs,
        q4_offset: -8 * sums.iter().sum::<i32>(),
        q8_offsets: sums.map(|s| -128 * s),
    }
}

/// A weight block type the products read directly.
pub trait QuantBlock: Copy + Send + Sync {
    /// `Σ_k w_k·x_k` over whole rows of blocks (`w.len() == x.len()`).
    fn dot(w: &[Self], x: &[InputBlock]) -> f32;
    /// [`QuantBlock::dot`] of four weight rows (each of `n` blocks) with each input row of `x` (rows of `n`
    /// blocks, `out.len()` of them): `out[r][i]` is row `i` against input row `r`, bit-identical to its
    /// own `dot`. The weights are unpacked once for all the input rows.
    fn dot4_rows(w: [&[Self]; 4], x: &[InputBlock], out: &mut [[f32; 4]]);
    /// [`QuantBlock::dot4_rows`] of eight weight rows, for many input rows (a prompt): on AVX-512 the eight
    /// rows are unpacked once for all the input rows and each input block serves all eight; elsewhere two
    /// calls of [`QuantBlock::dot4_rows`].
    fn dot8_rows(w: [&[Self]; 8], x: &[InputBlock], out: &mut [[f32; 8]]);
    /// The block's 32 weights as integers (their scale apart).
    fn integers(&self) -> [i8; BLOCK];
    fn scale(&self) -> f32;
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    not(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))
))]
use avx2 as fast;
/// The paths: AVX-512 VNNI where compiled in, else AVX2 + FMA, else the portable twin.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni",
    target_feature = "fma"
))]
use avx512 as fast;
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
use portable as fast;

/// Without AVX2: the portable twin is the kernel.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod portable {
    use super::{BlockQ8_0, InputBlock, dot_portable, eight_as_fours, rows_of};
    pub(super) fn dot_q8_0(w: &[BlockQ8_0], x: &[InputBlock]) -> f32 {
        dot_portable(w, x)
    }
    pub(super) fn dot4_rows_q8_0(w: [&[BlockQ8_0]; 4], x: &[InputBlock], out: &mut [[f32; 4]]) {
        rows_of(w, x, out, |w, x| w.map(|w| dot_portable(w, x)))
    }
    pub(super) fn dot8_rows_q8_0(w: [&[BlockQ8_0]; 8], x: &[InputBlock], out: &mut [[f32; 8]]) {
        eight_as_fours(w, x, out, dot4_rows_q8_0)
    }
}

/// [`QuantBlock::dot4_rows`] one input row at a time with a four-row kernel.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    ),
    allow(dead_code)
)]
fn rows_of<B: QuantBlock>(
    w: [&[B]; 4],
    x: &[InputBlock],
    out: &mut [[f32; 4]],
    dot4: impl Fn([&[B]; 4], &[InputBlock]) -> [f32; 4],
) {
    let blocks = w[0].len();
    assert!(blocks > 0 && w.iter().all(|w| w.len() == blocks), "quantized dot: weight rows");
    assert_eq!(x.len(), out.len() * blocks, "quantized dot: input rows");
    for (o, x) in out.iter_mut().zip(x.chunks_exact(blocks)) {
        *o = dot4(w, x);
    }
}

impl QuantBlock for BlockQ8_0 {
    fn dot(w: &[Self], x: &[InputBlock]) -> f32 {
        fast::dot_q8_0(w, x)
    }
    fn dot4_rows(w: [&[Self]; 4], x: &[InputBlock], out: &mut [[f32; 4]]) {
        fast::dot4_rows_q8_0(w, x, out)
    }
    fn dot8_rows(w: [&[Self]; 8], x: &[InputBlock], out: &mut [[f32; 8]]) {
        fast::dot8_rows_q8_0(w, x, out)
    }
    fn integers(&self) -> [i8; BLOCK] {
        self.qs
    }
    fn scale(&self) -> f32 {
        BlockQ8_0::scale(self)
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

/// Sum of the 4 lanes, halves folded onto halves: `(0 + 2) + (1 + 3)`, the vector paths' order.
#[inline(always)]
fn hsum(v: [f32; LANES]) -> f32 {
    (v[0] + v[2]) + (v[1] + v[3])
}

/// Portable twin of the vector block dot products, bit-identical to them.
pub fn dot_portable<B: QuantBlock>(w: &[B], x: &[InputBlock]) -> f32 {
    assert_eq!(w.len(), x.len(), "quantized dot: block counts differ");
    let mut acc = [0.0f32; LANES];
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.scale() * xb.d;
        let mut lanes = [0i32; LANES];
        for (j, (&qw, &qx)) in wb.integers().iter().zip(&xb.qs).enumerate() {
            lanes[lane(j)] += i32::from(qw) * i32::from(qx);
        }
        for (a, &lane) in acc.iter_mut().zip(&lanes) {
            *a = fmadd(d, lane as f32, *a);
        }
    }
    hsum(acc)
}
/// `out = x·Wᵀ (+ bias)` with `W` (OC, C) quantized by rows and `x` (M, C) in `f32`, quantized to Q8_0
/// row by row first. `out` is (M, OC).
///
/// As in [`crate::gemv`], each thread owns one large contiguous block of output channels (a rayon task costs
/// microseconds, and one decoding step makes ≈ 50 of these calls), and walks it four weight rows at a time
/// ([`QuantBlock::dot4_rows`]) against every input row — eight at a time ([`QuantBlock::dot8_rows`]) beyond
/// `MANY_ROWS` (8) input rows: the rows' blocks are unpacked once for all the input rows (on AVX-512, tiles of
/// four or eight weight rows × up to eight input rows in registers), and the rows — adjacent in memory —
/// stay in the L1 cache while every input row passes over them, so batched decoding and prompts read the
/// weights once for all their rows. Each task writes its channels of every output row in place. Each
/// result is its row's own [`QuantBlock::dot`], whatever the grouping, the number of input rows or of
/// threads.
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
    let xq = quantize_rows(x, c);
    let per_task = oc.div_ceil(tasks(c, oc)).next_multiple_of(4);
    let parts = channels_by_task(out, oc, per_task);
    parts.into_par_iter().enumerate().for_each(|(t, mut dst)| {
        let j0 = t * per_task;
        let n = dst[0].len();
        channels(&mut dst, &w[j0 * blocks..(j0 + n) * blocks], &xq, bias.map(|b| &b[j0..]), blocks);
    });
}

/// The rows of `x` (rows of `c`, a multiple of 32) quantized to input blocks (`c/32` a row), the rows in
/// parallel when there are enough values.
pub(crate) fn quantize_rows(x: &[f32], c: usize) -> Vec<InputBlock> {
    let blocks = c / BLOCK;
    let mut xq = vec![InputBlock::default(); x.len() / c * blocks];
    if x.len() >= MIN_PARALLEL_QUANTIZE {
        xq.par_chunks_mut(blocks).zip(x.par_chunks_exact(c)).for_each(|(q, row)| quantize_input(row, q));
    } else {
        xq.chunks_exact_mut(blocks).zip(x.chunks_exact(c)).for_each(|(q, row)| quantize_input(row, q));
    }
    xq
}

/// Tasks a product of `oc` rows of `c` weights is split into: one per thread, fewer for small matrices.
pub(crate) fn tasks(c: usize, oc: usize) -> usize {
    (oc * c / MIN_TASK_WEIGHTS).clamp(1, rayon::current_num_threads().clamp(1, MAX_TASKS))
}

/// `out` (rows of `oc`) cut into each task's output channels in every row: `parts[t][r]` is row `r`'s
/// channels `t·per_task ..` (fewer in the last task's), so tasks write their channels in place.
pub(crate) fn channels_by_task(out: &mut [f32], oc: usize, per_task: usize) -> Vec<Vec<&mut [f32]>> {
    let m = out.len() / oc.max(1);
    let mut parts: Vec<Vec<&mut [f32]>> = (0..oc.div_ceil(per_task)).map(|_| Vec::with_capacity(m)).collect();
    for row in out.chunks_exact_mut(oc) {
        for (part, channels) in parts.iter_mut().zip(row.chunks_mut(per_task)) {
            part.push(channels);
        }
    }
    parts
}

/// Input values (rows × C) from which the rows are quantized in parallel.
const MIN_PARALLEL_QUANTIZE: usize = 1 << 14;
/// Weights below which one more task costs more than it saves (as [`crate::gemv`]'s threshold in bytes).
const MIN_TASK_WEIGHTS: usize = 1 << 16;
/// Upper bound on tasks per call.
const MAX_TASKS: usize = 16;

/// One task: `dst[r]` (channels) for the weight rows `w` (channels × `blocks`) against each quantized input
/// row `r` of `xq` (M × `blocks`), plus the bias from `bias[0]` on.
///
/// As in [`crate::gemv`]'s blocks, the rows are cut into four equal runs and the four rows walked together
/// are one from each run (`o`, `o + q`, `o + 2q`, `o + 3q`): four long sequential streams, which the hardware
/// prefetchers (and the software prefetch in the dot products) follow. Rows past the four runs are the tail.
fn channels<B: QuantBlock>(dst: &mut [&mut [f32]], w: &[B], xq: &[InputBlock], bias: Option<&[f32]>, blocks: usize) {
    let row = |o: usize| &w[o * blocks..(o + 1) * blocks];
    let bias_at = |o: usize| bias.map_or(0.0, |b| b[o]);
    let n = dst[0].len();
    let mut start = 0;
    if dst.len() > MANY_ROWS {
        // Eight runs; the rows past them go to the four runs below.
        let q = n / 8;
        let mut dots = vec![[0.0f32; 8]; dst.len()];
        for j in 0..q {
            let at: [usize; 8] = std::array::from_fn(|i| j + i * q);
            B::dot8_rows(at.map(row), xq, &mut dots);
            for (dst, eight) in dst.iter_mut().zip(&dots) {
                for (&o, d) in at.iter().zip(eight) {
                    dst[o] = d + bias_at(o);
                }
            }
        }
        start = 8 * q;
    }
    let q = (n - start) / 4;
    let mut dots = vec![[0.0f32; 4]; dst.len()];
    for j in start..start + q {
        let at = [j, j + q, j + 2 * q, j + 3 * q];
        B::dot4_rows(at.map(row), xq, &mut dots);
        for (dst, four) in dst.iter_mut().zip(&dots) {
            for (&o, d) in at.iter().zip(four) {
                dst[o] = d + bias_at(o);
            }
        }
    }
    for o in start + 4 * q..n {
        for (dst, x) in dst.iter_mut().zip(xq.chunks_exact(blocks)) {
            dst[o] = B::dot(row(o), x) + bias_at(o);
        }
    }
}

/// Input rows above which [`channels`] walks eight weight rows at a time ([`QuantBlock::dot8_rows`]).
const MANY_ROWS: usize = 8;

/// [`QuantBlock::dot8_rows`] as two calls of a four-row product (the paths without an eight-row kernel).
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni",
        not(test)
    ),
    allow(dead_code)
)]
fn eight_as_fours<B: QuantBlock>(
    w: [&[B]; 8],
    x: &[InputBlock],
    out: &mut [[f32; 8]],
    dot4_rows: impl Fn([&[B]; 4], &[InputBlock], &mut [[f32; 4]]),
) {
    let mut half = vec![[0.0f32; 4]; out.len()];
    for h in 0..2 {
        dot4_rows(std::array::from_fn(|i| w[4 * h + i]), x, &mut half);
        for (o, four) in out.iter_mut().zip(&half) {
            o[4 * h..4 * h + 4].copy_from_slice(four);
        }
    }
}
