//! Many-row products over weights in the dot-product layout: `out = inp·Wᵀ + b` with `W` stored `(OC, C)` as
//! in `torch.nn.Linear`, for prompts and other inference passes of more rows than [`crate::gemv::MAX_ROWS`].
//!
//! Why not a packed GEMM: a prompt of 64 rows uses each weight 64 times. A packed GEMM first copies every
//! weight into its panel layout (a read and a write of the whole matrix per call), which for so few rows
//! costs more than the multiply-adds (27 % of a GPT-2 prompt's time against 20 % in the GEMM's kernel).
//! Both operands are already contiguous along `k`, so this kernel reads them in place (as llamafile's
//! tinyBLAS does): a register tile of [`TILE_ROWS`] input rows × [`TILE_WEIGHTS`] weight rows keeps one
//! 16-lane accumulator per output, and each step of 16 `k` loads `TILE_ROWS + TILE_WEIGHTS` vectors for
//! `TILE_ROWS · TILE_WEIGHTS` fused multiply-adds. Weight rows are widened to `f32` as they are loaded
//! (exact for `bf16`/`f16`).
//!
//! Each output is computed with exactly the arithmetic of the matrix-vector kernel ([`crate::gemv`]): lane `i`
//! accumulates `k ≡ i (mod 16)` over the whole multiples of 16, the lanes are summed halves first (`i + 8`,
//! `i + 4`, `i + 2`, `i + 1`), the `C mod 16` tail is added in order with multiply-adds (fused where the target
//! has FMA, as in [`crate::gemv`]), then the bias.
//! So a row's result is bit-identical whether it is computed alone (decoding), with a few rows ([`crate::gemv`]) or
//! in a prompt of any length here, whatever it is tiled with and however many threads run.
//!
//! The tiled path needs AVX-512 (32 vector registers hold a 6 × 4 tile of 16-lane accumulators);
//! [`forward_portable`] is its bit-identical twin. Built without AVX-512, the tiles compute with the twin's
//! scalar code (right but slow), so callers keep their packed GEMM there ([`TILED`]).

use crate::gemv::{Element, fmadd};
use rayon::prelude::*;

/// Input rows per register tile.
pub const TILE_ROWS: usize = 6;
/// Weight rows per register tile.
pub const TILE_WEIGHTS: usize = 4;
/// Lanes of one accumulator (one 512-bit register of `f32`).
const LANES: usize = 16;
/// Bytes of weight rows one task multiplies: they stay in the core's L2 cache while every tile of its input
/// rows (each in L1) passes over them.
const WEIGHT_BLOCK_BYTES: usize = 256 << 10;
/// Elements of `k` per block where rows are long (see [`task_block`]): a 6-row input tile's block is 12 KiB of
/// `f32`, a weight tile's 8 KiB, both within L1.
const K_BLOCK: usize = 512;
/// Input rows per task (whole tiles): the weights are read from memory once per this many rows.
const TASK_ROWS: usize = 16 * TILE_ROWS;

/// Whether this build multiplies many rows with the AVX-512 tiles (else the callers keep their GEMM: the
/// portable twin is a reference, not a fast path).
pub const TILED: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vl",
    target_feature = "fma"
));

/// `out = inp·Wᵀ (+ bias)`, tiled over the threads.
///
/// # Shapes
/// `out`: (M, OC), `inp`: (M, C), `weight`: (OC, C), `bias`: (OC); any M.
///
/// # Panics
/// On extents that do not match these shapes.
pub fn forward<T: Element>(out: &mut [f32], inp: &[f32], weight: &[T], bias: Option<&[f32]>, c: usize, oc: usize) {
    let m = check(out, inp, weight, bias, c, oc);
    if m == 0 || oc == 0 {
        return;
    }
    // Weight rows per task: as many whole tiles as fit the L2 share, at least one tile.
    let weights_per_task =
        (WEIGHT_BLOCK_BYTES / (std::mem::size_of::<T>() * c) / TILE_WEIGHTS * TILE_WEIGHTS).max(TILE_WEIGHTS);
    let (row_blocks, col_blocks) = (m.div_ceil(TASK_ROWS), oc.div_ceil(weights_per_task));
    let out = SharedOut { ptr: out.as_mut_ptr(), len: out.len() };
    (0..row_blocks * col_blocks).into_par_iter().for_each(|task| {
        let (row_block, col_block) = (task / col_blocks, task % col_blocks);
        let rows = row_block * TASK_ROWS..((row_block + 1) * TASK_ROWS).min(m);
        let cols = col_block * weights_per_task..((col_block + 1) * weights_per_task).min(oc);
        // The weight rows of the task after this one (rayon hands a thread neighbouring tasks), brought into
        // L2 while this one computes: without it, each task's first input tile waits on memory for its block.
        let next = if col_block + 1 < col_blocks {
            &weight[cols.end * c..(cols.end + weights_per_task).min(oc) * c]
        } else {
            &[]
        };
        task_block(&out, inp, weight, bias, c, oc, rows, cols, next);
    });
}

/// The same products one output at a time, with the same arithmetic: the bit-identical twin.
pub fn forward_portable<T: Element>(
    out: &mut [f32],
    inp: &[f32],
    weight: &[T],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    check(out, inp, weight, bias, c, oc);
    for (out, x) in out.chunks_exact_mut(oc.max(1)).zip(inp.chunks_exact(c)) {
        for (j, (o, w)) in out.iter_mut().zip(weight.chunks_exact(c)).enumerate() {
            *o = dot_portable(x, w) + bias.map_or(0.0, |b| b[j]);
        }
    }
}

fn check<T>(out: &[f32], inp: &[f32], weight: &[T], bias: Option<&[f32]>, c: usize, oc: usize) -> usize {
    assert!(c > 0, "dot_gemm: C = 0");
    let m = inp.len() / c;
    assert_eq!(inp.len(), m * c, "dot_gemm: input is not whole rows of C");
    assert_eq!(Some(out.len()), m.checked_mul(oc), "dot_gemm: output shape");
    assert_eq!(Some(weight.len()), oc.checked_mul(c), "dot_gemm: weight shape ({oc}, {c})");
    assert!(bias.is_none_or(|b| b.len() == oc), "dot_gemm: bias length");
    m
}

/// One output's dot product in the kernels' order (module doc).
fn dot_portable<T: Element>(x: &[f32], w: &[T]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    accumulate_portable(&mut lanes, x, w, 0..x.len() / LANES * LANES);
    finish(&lanes, x, w)
}

/// Lane `i` += `x[k]·w[k]` for the `k ≡ i (mod 16)` of `k_range` (whole multiples of 16), in order.
fn accumulate_portable<T: Element>(lanes: &mut [f32; LANES], x: &[f32], w: &[T], k_range: std::ops::Range<usize>) {
    for (xs, ws) in x[k_range.clone()].chunks_exact(LANES).zip(w[k_range].chunks_exact(LANES)) {
        for i in 0..LANES {
            lanes[i] = fmadd(xs[i], ws[i].to_f32(), lanes[i]);
        }
    }
}

/// The lanes summed halves first, then the `C mod 16` tail of `x·w` added in order.
fn finish<T: Element>(lanes: &[f32; LANES], x: &[f32], w: &[T]) -> f32 {
    let mut v = *lanes;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    let mut s = v[0];
    for k in x.len() / LANES * LANES..x.len() {
        s = fmadd(x[k], w[k].to_f32(), s);
    }
    s
}

/// The output buffer, shared by tasks that write disjoint `(rows, cols)` blocks of it.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write through the pointer only to their own block of outputs (disjoint by construction in
// `forward`), and the buffer outlives the parallel loop that borrows it.
#[allow(unsafe_code)]
unsafe impl Sync for SharedOut {}

/// Outputs `rows × cols`: for each tile of input rows (kept in L1), every tile of the weight rows (in L2).
#[allow(clippy::too_many_arguments)]
fn task_block<T: Element>(
    out: &SharedOut,
    inp: &[f32],
    weight: &[T],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    next: &[T],
) {
    assert!(rows.end * oc <= out.len && cols.end <= oc, "dot_gemm: task block outside the output");
    let body = c / LANES * LANES;
    let mut prefetch = Prefetch::of(next);
    let write = |i: usize, j: usize, value: f32| {
        debug_assert!(i < rows.end && j < cols.end);
        // SAFETY: i < rows.end and j < cols.end ≤ oc (callers pass indices of this block), so the index is
        // below rows.end · oc ≤ out.len (asserted above); this task alone writes its block.
        #[allow(unsafe_code)]
        unsafe {
            *out.ptr.add(i * oc + j) = value + bias.map_or(0.0, |b| b[j]);
        }
    };
    if body <= 2 * K_BLOCK {
        for i in rows.clone().step_by(TILE_ROWS) {
            let nr = TILE_ROWS.min(rows.end - i);
            for j in cols.clone().step_by(TILE_WEIGHTS) {
                let nw = TILE_WEIGHTS.min(cols.end - j);
                let mut results = [[0.0f32; TILE_WEIGHTS]; TILE_ROWS];
                tile(&mut results, &inp[i * c..(i + nr) * c], &weight[j * c..(j + nw) * c], c, &mut prefetch);
                for (r, result) in results.iter().take(nr).enumerate() {
                    for (w, &value) in result.iter().take(nw).enumerate() {
                        write(i + r, j + w, value);
                    }
                }
            }
        }
        return;
    }
    // Long rows: a tile's rows would not stay in L1, so `k` goes in blocks of K_BLOCK, each input tile's
    // block in L1 while every weight tile passes; the lanes are carried from block to block in memory, so
    // each lane still sums its `k` in order (the same bits as unblocked).
    let mut lanes: Vec<Lanes> = vec![[[[0.0; LANES]; TILE_WEIGHTS]; TILE_ROWS]; cols.len().div_ceil(TILE_WEIGHTS)];
    for i in rows.clone().step_by(TILE_ROWS) {
        let nr = TILE_ROWS.min(rows.end - i);
        lanes.iter_mut().for_each(|tile| *tile = [[[0.0; LANES]; TILE_WEIGHTS]; TILE_ROWS]);
        for k in (0..body).step_by(K_BLOCK) {
            let k_range = k..(k + K_BLOCK).min(body);
            for (tile, j) in lanes.iter_mut().zip(cols.clone().step_by(TILE_WEIGHTS)) {
                let nw = TILE_WEIGHTS.min(cols.end - j);
                let (inp, weight) = (&inp[i * c..(i + nr) * c], &weight[j * c..(j + nw) * c]);
                accumulate(tile, inp, weight, c, k_range.clone(), &mut prefetch);
            }
        }
        for (tile, j) in lanes.iter().zip(cols.clone().step_by(TILE_WEIGHTS)) {
            let nw = TILE_WEIGHTS.min(cols.end - j);
            for (r, tile) in tile.iter().take(nr).enumerate() {
                let x = &inp[(i + r) * c..(i + r + 1) * c];
                for (w, lanes) in tile.iter().take(nw).enumerate() {
                    write(i + r, j + w, finish(lanes, x, &weight[(j + w) * c..(j + w + 1) * c]));
                }
            }
        }
    }
}

/// The cache lines of a block of weights, requested into L2 one per step of the tiles (16 `k`) until all
/// are: spread that thin, the requests hide among the multiply-adds. A task makes `rows / 24` times more
/// steps than its next block of f32 weights has lines (`rows / 12` for 16-bit weights), so prompts of 24
/// rows or more ask for the whole block.
struct Prefetch {
    start: *const u8,
    line: usize,
    lines: usize,
}

impl Prefetch {
    fn of<T>(data: &[T]) -> Self {
        Self { start: data.as_ptr().cast(), line: 0, lines: std::mem::size_of_val(data).div_ceil(64) }
    }

    #[inline(always)]
    fn step(&mut self) {
        if self.line < self.lines {
            kernel::prefetch_l2(self.start.wrapping_add(self.line * 64));
            self.line += 1;
        }
    }
}

/// [`tile`]'s lanes over `k_range` only (whole multiples of 16 below `C`), **accumulated** into `lanes`.
fn accumulate<T: Element>(
    lanes: &mut Lanes,
    inp: &[f32],
    weight: &[T],
    c: usize,
    k_range: std::ops::Range<usize>,
    prefetch: &mut Prefetch,
) {
    with_tile_shape(inp.len() / c, weight.len() / c, Accumulate { lanes, inp, weight, c, k_range, prefetch });
}

/// `results[r][w]` = dot product of input row `r` and weight row `w` (no bias) for the `inp.len() / c`
/// rows and `weight.len() / c` weight rows given (each at most a tile).
fn tile<T: Element>(
    results: &mut [[f32; TILE_WEIGHTS]; TILE_ROWS],
    inp: &[f32],
    weight: &[T],
    c: usize,
    prefetch: &mut Prefetch,
) {
    with_tile_shape(inp.len() / c, weight.len() / c, Tile { results, inp, weight, c, prefetch });
}

/// Each output's 16 lanes, for a whole tile.
type Lanes = [[[f32; LANES]; TILE_WEIGHTS]; TILE_ROWS];

/// A job on one tile whose shape, `R` input rows × `W` weight rows, is a constant (registers need it).
trait TileJob {
    fn run<const R: usize, const W: usize>(self);
}

/// Runs `job` with the tile shape `nr × nw` (1..=[`TILE_ROWS`] × 1..=[`TILE_WEIGHTS`]) as constants.
fn with_tile_shape(nr: usize, nw: usize, job: impl TileJob) {
    fn by_weights<const R: usize>(nw: usize, job: impl TileJob) {
        match nw {
            4 => job.run::<R, 4>(),
            3 => job.run::<R, 3>(),
            2 => job.run::<R, 2>(),
            _ => job.run::<R, 1>(),
        }
    }
    const { assert!(TILE_ROWS == 6 && TILE_WEIGHTS == 4) };
    match nr {
        6 => by_weights::<6>(nw, job),
        5 => by_weights::<5>(nw, job),
        4 => by_weights::<4>(nw, job),
        3 => by_weights::<3>(nw, job),
        2 => by_weights::<2>(nw, job),
        _ => by_weights::<1>(nw, job),
    }
}

struct Tile<'a, T> {
    results: &'a mut [[f32; TILE_WEIGHTS]; TILE_ROWS],
    inp: &'a [f32],
    weight: &'a [T],
    c: usize,
    prefetch: &'a mut Prefetch,
}

impl<T: Element> TileJob for Tile<'_, T> {
    fn run<const R: usize, const W: usize>(self) {
        kernel::tile::<T, R, W>(self.results, self.inp, self.weight, self.c, self.prefetch)
    }
}

struct Accumulate<'a, T> {
    lanes: &'a mut Lanes,
    inp: &'a [f32],
    weight: &'a [T],
    c: usize,
    k_range: std::ops::Range<usize>,
    prefetch: &'a mut Prefetch,
}

impl<T: Element> TileJob for Accumulate<'_, T> {
    fn run<const R: usize, const W: usize>(self) {
        kernel::accumulate::<T, R, W>(self.lanes, self.inp, self.weight, self.c, self.k_range, self.prefetch)
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vl",
    target_feature = "fma"
))]
use avx512 as kernel;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vl",
    target_feature = "fma"
)))]
use portable as kernel;

/// Without AVX-512: the tile's outputs one at a time in the twin's scalar code.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vl",
    target_feature = "fma"
)))]
mod portable {
    use super::{Element, Lanes, Prefetch, TILE_ROWS, TILE_WEIGHTS, accumulate_portable, dot_portable};

    /// A hint only: the portable build has none to give.
    pub(super) fn prefetch_l2(_line: *const u8) {}

    pub(super) fn tile<T: Element, const R: usize, const W: usize>(
        results: &mut [[f32; TILE_WEIGHTS]; TILE_ROWS],
        inp: &[f32],
        weight: &[T],
        c: usize,
        _prefetch: &mut Prefetch,
    ) {
        for (result, x) in results.iter_mut().zip(inp.chunks_exact(c)).take(R) {
            for (value, row) in result.iter_mut().zip(weight.chunks_exact(c)).take(W) {
                *value = dot_portable(x, row);
            }
        }
    }

    pub(super) fn accumulate<T: Element, const R: usize, const W: usize>(
        lanes: &mut Lanes,
        inp: &[f32],
        weight: &[T],
        c: usize,
        k_range: std::ops::Range<usize>,
        _prefetch: &mut Prefetch,
    ) {
        for (lanes, x) in lanes.iter_mut().zip(inp.chunks_exact(c)).take(R) {
            for (lanes, row) in lanes.iter_mut().zip(weight.chunks_exact(c)).take(W) {
                accumulate_portable(lanes, x, row, k_range.clone());
            }
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vl",
    target_feature = "fma"
))]
#[allow(unsafe_code)]
mod avx512 {
    use super::{Element, LANES, Lanes, Prefetch, TILE_ROWS, TILE_WEIGHTS};
    use std::arch::x86_64::*;

    /// Asks for the cache line at `line` in L2.
    #[inline(always)]
    pub(super) fn prefetch_l2(line: *const u8) {
        // SAFETY: SSE is part of x86_64; a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.cast()) }
    }

    /// `R` input rows × `W` weight rows of [`super::dot_portable`], 16 lanes per output in one register.
    #[inline(always)]
    pub(super) fn tile<T: Element, const R: usize, const W: usize>(
        results: &mut [[f32; TILE_WEIGHTS]; TILE_ROWS],
        inp: &[f32],
        weight: &[T],
        c: usize,
        prefetch: &mut Prefetch,
    ) {
        assert!(R <= TILE_ROWS && W <= TILE_WEIGHTS, "dot_gemm: tile");
        let body = c / LANES * LANES;
        // SAFETY: AVX-512 F is compiled in (`cfg` on this module); this touches registers only.
        let mut acc = [[unsafe { _mm512_setzero_ps() }; W]; R];
        steps::<T, R, W>(&mut acc, inp, weight, c, 0..body, prefetch);
        for r in 0..R {
            for w in 0..W {
                let mut s = hsum(acc[r][w]);
                for k in body..c {
                    s = inp[r * c + k].mul_add(weight[w * c + k].to_f32(), s);
                }
                results[r][w] = s;
            }
        }
    }

    /// [`tile`]'s loop over `k_range` (whole multiples of 16 below `c`), starting from and returning to `lanes`.
    #[inline(always)]
    pub(super) fn accumulate<T: Element, const R: usize, const W: usize>(
        lanes: &mut Lanes,
        inp: &[f32],
        weight: &[T],
        c: usize,
        k_range: std::ops::Range<usize>,
        prefetch: &mut Prefetch,
    ) {
        assert!(R <= TILE_ROWS && W <= TILE_WEIGHTS, "dot_gemm: tile");
        // SAFETY: AVX-512 F is compiled in (`cfg` on this module); each load and store touches the 16 floats
        // of one `lanes[r][w]`, r < R ≤ TILE_ROWS and w < W ≤ TILE_WEIGHTS (asserted above).
        unsafe {
            let mut acc: [[__m512; W]; R] =
                std::array::from_fn(|r| std::array::from_fn(|w| _mm512_loadu_ps(lanes[r][w].as_ptr())));
            steps::<T, R, W>(&mut acc, inp, weight, c, k_range, prefetch);
            for (r, acc) in acc.iter().enumerate() {
                for (w, &acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(lanes[r][w].as_mut_ptr(), acc);
                }
            }
        }
    }

    /// The tile's inner loop: lane `i` of `acc[r][w]` += `inp[r][k]·weight[w][k]` for the `k ≡ i (mod 16)` of
    /// `k_range`, in order; one line of `prefetch` requested per step. One pointer per row, advanced together: ten streams and a counter fit the
    /// general registers.
    #[inline(always)]
    fn steps<T: Element, const R: usize, const W: usize>(
        acc: &mut [[__m512; W]; R],
        inp: &[f32],
        weight: &[T],
        c: usize,
        k_range: std::ops::Range<usize>,
        prefetch: &mut Prefetch,
    ) {
        // Checked in release builds: the raw loads below rely on them.
        assert!(inp.len() == R * c && weight.len() == W * c, "dot_gemm: tile rows");
        assert!(
            k_range.start.is_multiple_of(LANES) && k_range.start <= k_range.end && k_range.end <= c / LANES * LANES,
            "dot_gemm: k range"
        );
        // SAFETY: AVX-512 F/BW/VL and FMA are compiled in (`cfg` on this module). Every load reads 16 elements
        // at row · c + k with k + 16 ≤ k_range.end ≤ c, inside `inp` (R rows of c) and `weight` (W rows of c),
        // as asserted above; unaligned loads accept any address.
        unsafe {
            let mut xr: [*const f32; R] = std::array::from_fn(|r| inp.as_ptr().add(r * c + k_range.start));
            let mut wr: [*const T; W] = std::array::from_fn(|w| weight.as_ptr().add(w * c + k_range.start));
            for _ in 0..(k_range.end - k_range.start) / LANES {
                let w: [__m512; W] = std::array::from_fn(|w| T::load16(wr[w]));
                wr = wr.map(|p| p.add(LANES));
                prefetch.step();
                for (acc, x) in acc.iter_mut().zip(&mut xr) {
                    let row = *x;
                    *x = row.add(LANES);
                    let x = _mm512_loadu_ps(row);
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_fmadd_ps(x, w, *acc);
                    }
                }
            }
        }
    }

    /// Lanes summed halves first: `i + 8`, then `i + 4`, `i + 2`, `i + 1` (the matrix-vector kernel's order).
    #[inline(always)]
    fn hsum(v: __m512) -> f32 {
        // SAFETY: AVX-512 F is compiled in (`cfg` on this module); these touch registers only.
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let s8 = _mm256_add_ps(lo, hi);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
        }
    }
}

#[cfg(test)]
mod tests;
