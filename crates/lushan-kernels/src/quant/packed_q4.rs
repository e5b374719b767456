//! Q4_0 weights repacked sixteen rows at a time ([`PackedQ4_0`]), and the products that read them.
//!
//! llama.cpp's Q4_0 blocks (one row's 32 weights and their f16 scale, [`BlockQ4_0`]) are the file format;
//! for the products a matrix is stored in groups of [`GROUP`] rows. Group `g`'s block `k` ([`GroupBlock`])
//! holds the 16 rows' scales side by side, then their nibbles interleaved so that 32-bit lane `r` of each
//! 64-byte vector is row `r`'s: `qs[64·v + 4·r + b]` is byte `4·v + b` of row `r`'s block (weight `4·v + b`
//! in the low nibble, weight `16 + 4·v + b` in the high one). So on AVX-512 one block of sixteen rows is one
//! `vcvtph2ps` of the scales, four loads, eight `vpdpbusd` against the input's four-byte groups broadcast
//! from memory, and one multiply-add per input row — a sixteenth of the instructions per weight of four
//! rows unpacked into lanes — and each thread reads one sequential stream. The last group is padded with
//! zero rows.
//!
//! Arithmetic (every path, and the portable twin [`group_portable`], bit for bit): for output row `r` and
//! input row `x` (quantized to Q8_0 blocks, [`InputBlock`]), each block's integer sum `Σ (q−8)·x` is exact in
//! `i32` (at most 32·8·128 in magnitude, exact in `f32` too), and `acc = fma(d_w·d_x, sum, acc)` over the
//! blocks in order from `acc = 0`, `d_w·d_x` rounded to `f32` first. A row's result is therefore the same
//! whatever the number of input rows, the group it sits in or the number of threads.
//!
//! # Shapes
//! `W` (rows, cols), `cols` a multiple of 32; the groups hold `rows.div_ceil(16) · cols/32` blocks.

use std::ops::Range;

use rayon::prelude::*;

use super::dot::{InputBlock, channels_by_task, quantize_rows, tasks};
use super::{BLOCK, BlockQ4_0, dequantize_q4_0};
use crate::gemv::fmadd;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
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

/// Rows per group.
pub const GROUP: usize = 16;
/// Nibble bytes of one group block.
const QS: usize = GROUP * BLOCK / 2;
/// Input rows a kernel call holds in registers.
pub const TILE: usize = 8;

/// Block `k` of sixteen rows (see the module documentation for the order of `qs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct GroupBlock {
    /// Row `r`'s scale, f16 bits.
    pub d: [u16; GROUP],
    pub qs: [u8; QS],
}

impl GroupBlock {
    /// Sixteen zero rows (scale 0, every nibble standing for 0).
    pub const ZERO: GroupBlock = GroupBlock { d: [0; GROUP], qs: [0x88; QS] };

    /// Row `r`'s block in llama.cpp's layout.
    pub fn row(&self, r: usize) -> BlockQ4_0 {
        BlockQ4_0 { d: self.d[r], qs: std::array::from_fn(|j| self.qs[64 * (j / 4) + 4 * r + j % 4]) }
    }

    fn set_row(&mut self, r: usize, b: &BlockQ4_0) {
        self.d[r] = b.d;
        for (j, &byte) in b.qs.iter().enumerate() {
            self.qs[64 * (j / 4) + 4 * r + j % 4] = byte;
        }
    }
}

/// A Q4_0 matrix `(rows, cols)` in groups of sixteen rows.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedQ4_0 {
    rows: usize,
    cols: usize,
    /// Group `g`'s block `k` at `g · cols/32 + k`.
    groups: Vec<GroupBlock>,
}

impl PackedQ4_0 {
    /// The matrix whose row `o` is `blocks[o·cols/32 .. (o+1)·cols/32]` (llama.cpp's order).
    ///
    /// # Panics
    /// If `cols` is not a positive multiple of 32 or the blocks are not `rows · cols/32` (caller bugs: the
    /// model checks row lengths with a named error first).
    pub fn from_blocks(blocks: &[BlockQ4_0], rows: usize, cols: usize) -> PackedQ4_0 {
        assert!(cols > 0 && cols.is_multiple_of(BLOCK), "packed q4_0: {cols} columns are not whole blocks");
        let per_row = cols / BLOCK;
        assert_eq!(blocks.len(), rows * per_row, "packed q4_0: blocks for ({rows}, {cols})");
        let mut groups = vec![GroupBlock::ZERO; rows.div_ceil(GROUP) * per_row];
        for (o, row) in blocks.chunks_exact(per_row).enumerate() {
            let (g, r) = (o / GROUP, o % GROUP);
            for (gb, b) in groups[g * per_row..][..per_row].iter_mut().zip(row) {
                gb.set_row(r, b);
            }
        }
        PackedQ4_0 { rows, cols, groups }
    }

    /// `w` (rows of `cols`) quantized with llama.cpp's reference quantizer, then packed.
    pub fn quantize(w: &[f32], cols: usize) -> PackedQ4_0 {
        assert!(cols > 0 && w.len().is_multiple_of(cols), "packed q4_0: {} values are not rows of {cols}", w.len());
        let mut blocks = vec![BlockQ4_0::default(); w.len() / BLOCK];
        super::quantize_q4_0(w, &mut blocks);
        PackedQ4_0::from_blocks(&blocks, w.len() / cols, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Weights held (padding rows apart).
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the groups take (what a decoding step reads), padding rows included.
    pub fn bytes(&self) -> usize {
        self.groups.len() * std::mem::size_of::<GroupBlock>()
    }

    /// Row `o`'s blocks in llama.cpp's layout into `out` (`cols/32` of them).
    pub fn row_blocks(&self, o: usize, out: &mut [BlockQ4_0]) {
        assert!(o < self.rows, "packed q4_0: row {o} of {}", self.rows);
        let per_row = self.cols / BLOCK;
        assert_eq!(out.len(), per_row, "packed q4_0: blocks of a row");
        let (g, r) = (o / GROUP, o % GROUP);
        for (b, gb) in out.iter_mut().zip(&self.groups[g * per_row..][..per_row]) {
            *b = gb.row(r);
        }
    }

    /// Every row's blocks in llama.cpp's layout and order (what a GGUF file holds).
    pub fn to_blocks(&self) -> Vec<BlockQ4_0> {
        let per_row = self.cols / BLOCK;
        let mut out = vec![BlockQ4_0::default(); self.rows * per_row];
        for (o, row) in out.chunks_exact_mut(per_row).enumerate() {
            self.row_blocks(o, row);
        }
        out
    }

    /// Rows `rows` widened to `f32` into `out` (`rows.len() · cols` values).
    pub fn rows_to_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        assert_eq!(out.len(), rows.len() * self.cols, "packed q4_0: output length for rows {rows:?}");
        let mut blocks = vec![BlockQ4_0::default(); self.cols / BLOCK];
        for (o, out) in rows.zip(out.chunks_exact_mut(self.cols)) {
            self.row_blocks(o, &mut blocks);
            dequantize_q4_0(&blocks, out);
        }
    }

    /// Appends the rows of `more` (same `cols`; a caller bug otherwise). Only the last, partly filled group
    /// is repacked, so a matrix assembled part by part costs what packing it once does.
    pub fn append(&mut self, more: &PackedQ4_0) {
        assert_eq!(self.cols, more.cols, "packed q4_0: appending rows of another length");
        let per_row = self.cols / BLOCK;
        let tail = self.rows % GROUP;
        if tail == 0 {
            self.groups.extend_from_slice(&more.groups);
        } else {
            let mut blocks = vec![BlockQ4_0::default(); tail * per_row];
            for (i, row) in blocks.chunks_exact_mut(per_row).enumerate() {
                self.row_blocks(self.rows - tail + i, row);
            }
            blocks.extend(more.to_blocks());
            self.groups.truncate(self.rows / GROUP * per_row);
            self.groups.extend(PackedQ4_0::from_blocks(&blocks, tail + more.rows, self.cols).groups);
        }
        self.rows += more.rows;
    }

    /// Group `g`'s blocks (rows `16·g ..`), `cols/32` of them.
    pub fn group(&self, g: usize) -> &[GroupBlock] {
        let per_row = self.cols / BLOCK;
        &self.groups[g * per_row..][..per_row]
    }
}

/// Portable twin of the group products: `out[i][r]` is row `r` of the group (`g`, its `blocks` blocks)
/// against input row `i` of `x` (rows of `blocks` blocks).
pub fn group_portable(g: &[GroupBlock], x: &[InputBlock], out: &mut [[f32; GROUP]]) {
    let blocks = g.len();
    assert!(blocks > 0 && x.len() == out.len() * blocks, "packed q4_0: input rows");
    for (o, x) in out.iter_mut().zip(x.chunks_exact(blocks)) {
        let mut acc = [0.0f32; GROUP];
        for (gb, xb) in g.iter().zip(x) {
            for (r, a) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for j in 0..BLOCK / 2 {
                    let byte = gb.qs[64 * (j / 4) + 4 * r + j % 4];
                    sum += (i32::from(byte & 0x0F) - 8) * i32::from(xb.qs[j])
                        + (i32::from(byte >> 4) - 8) * i32::from(xb.qs[j + BLOCK / 2]);
                }
                let d = half::f16::from_bits(gb.d[r]).to_f32() * xb.d;
                *a = fmadd(d, sum as f32, *a);
            }
        }
        *o = acc;
    }
}

/// The group products on the fastest path compiled in ([`group_portable`]'s results, bit for bit).
pub fn group_products(g: &[GroupBlock], x: &[InputBlock], out: &mut [[f32; GROUP]]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni",
        target_feature = "fma"
    ))]
    return avx512::group(g, x, out);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c",
        not(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512vnni"))
    ))]
    return avx2::group(g, x, out);
    #[allow(unreachable_code)]
    group_portable(g, x, out)
}

/// `out = x·Wᵀ (+ bias)`: `x` (M, C) in `f32`, quantized to Q8_0 row by row; `out` (M, OC).
///
/// Each thread owns one contiguous run of groups (one sequential stream of weights) and walks it group by
/// group against every input row, [`TILE`] input rows at a time: a group's blocks stay in the L1/L2 cache
/// while the input tiles pass over them, so many input rows read the weights once.
///
/// # Panics
/// On shapes that disagree with `w` (caller bugs).
pub fn matmul(out: &mut [f32], x: &[f32], w: &PackedQ4_0, bias: Option<&[f32]>, c: usize, oc: usize) {
    assert!(c == w.cols && oc == w.rows, "packed q4_0: matrix is ({}, {}), not ({oc}, {c})", w.rows, w.cols);
    let blocks = c / BLOCK;
    let m = x.len() / c;
    assert_eq!(x.len(), m * c, "packed q4_0: input is not whole rows of C");
    assert_eq!(out.len(), m * oc, "packed q4_0: output length");
    assert!(bias.is_none_or(|b| b.len() == oc), "packed q4_0: bias length");
    if m == 0 || oc == 0 {
        return;
    }
    let xq = quantize_rows(x, c);
    let per_task = oc.div_ceil(GROUP).div_ceil(tasks(c, oc)) * GROUP;
    let parts = channels_by_task(out, oc, per_task);
    parts.into_par_iter().enumerate().for_each(|(t, mut dst)| {
        let mut sums = [[0.0f32; GROUP]; TILE];
        let n = dst[0].len();
        for local in 0..n.div_ceil(GROUP) {
            let g = t * per_task / GROUP + local;
            let j0 = local * GROUP;
            let width = GROUP.min(n - j0);
            for (rows, x) in dst.chunks_mut(TILE).zip(xq.chunks(TILE * blocks)) {
                let sums = &mut sums[..rows.len()];
                group_products(w.group(g), x, sums);
                for (dst, sum) in rows.iter_mut().zip(sums.iter()) {
                    let dst = &mut dst[j0..j0 + width];
                    dst.copy_from_slice(&sum[..width]);
                    if let Some(b) = bias {
                        let b = &b[g * GROUP..][..width];
                        dst.iter_mut().zip(b).for_each(|(d, b)| *d += b);
                    }
                }
            }
        }
    });
}
