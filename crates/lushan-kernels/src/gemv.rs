//! Matrix-vector products for cached decoding: `out = inp·Wᵀ + b` for a handful of input rows, with `W`
//! stored `(OC, C)` as in `torch.nn.Linear`.
//!
//! At batch 1 a GPT step is memory-bound: every weight is read once per token and used for one multiply-add.
//! A general GEMM cannot block such a product (2–30 GFLOP/s); this kernel instead streams the weights at
//! memory bandwidth:
//! - each output channel is a dot product of the input with one contiguous row of `W`, so each thread owns
//!   one large contiguous block of rows (a rayon task costs microseconds, and a GPT-2 124M token has a
//!   budget of ≈20 ms for ≈50 products; hundreds of small tasks also interleave the threads' streams);
//! - four weight rows, one from each quarter of the block, are walked side by side: each input element is
//!   loaded once for four rows, and four sequential streams keep enough reads in flight;
//! - each row accumulates in [`LANES`] independent lanes, summed in a fixed tree. The compiler does not
//!   vectorise this well, so on x86-64 with AVX2 + FMA (`target-cpu=native` on anything since Haswell) an
//!   explicit path does it, with software prefetch; [`dot_rows_portable`] is its bit-identical twin.
//!
//! A row's result does not depend on which rows it was grouped with, how many input rows there were, nor
//! on the number of threads: the single-row tail runs the same arithmetic as the four-row body.
//! [`forward_naive`] is the plain loop the optimised path is tested against.

use rayon::prelude::*;

/// Up to this many input rows a GEMM cannot block its work and this kernel is the faster one.
pub const MAX_ROWS: usize = 4;
/// Input rows one call accepts (batched decoding of several sequences): the weights are read once for all
/// of them, and each row's result is the same as if it had been computed alone.
pub const MAX_BATCH: usize = 32;
/// Independent accumulator lanes per weight row.
const LANES: usize = 16;
/// Weight rows walked side by side.
const GROUP: usize = 4;
/// How far ahead (in elements, 4 KiB) each weight stream is prefetched.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
const PREFETCH: usize = 1024;
/// Weight elements below which one more task costs more than it saves (≈ 256 KiB, a few microseconds).
const MIN_TASK_ELEMS: usize = 1 << 16;
/// Upper bound on tasks per call (the output pieces live in a fixed array: no allocation).
const MAX_TASKS: usize = 16;

/// `a·b + c`, fused where the target has FMA (always under `target-cpu=native` on x86-64 since Haswell);
/// without it `mul_add` would be a libm call, so fall back to a separate multiply and add.
#[inline(always)]
pub(crate) fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") { a.mul_add(b, c) } else { a * b + c }
}

/// A weight element the products read directly: `f32`, or a 16-bit float (`bf16`, `f16`) widened to `f32`
/// as it is loaded. Widening is exact (every bf16 and f16 value is an f32), so a 16-bit matrix gives the
/// same results as its `f32` copy would, at half the bytes read.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Eight consecutive elements from `p`, widened.
    ///
    /// # Safety
    /// `p..p + 8` must be readable; AVX2 and F16C must be available (they are compiled in wherever this is).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen consecutive elements from `p`, widened (the many-row tiles of [`crate::dot_gemm`]).
    ///
    /// # Safety
    /// `p..p + 16` must be readable; AVX-512 F/BW/VL must be available (they are compiled in wherever this is).
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl"
    ))]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable floats at `p`; unaligned loads accept any address.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl"
    ))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees sixteen readable floats at `p`; unaligned loads accept any address.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl Element for half::bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable bf16 (16 bytes) at `p`; a bf16 is the top half of
        // its f32, so zero-extending to 32 bits and shifting left by 16 widens it exactly.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl"
    ))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable bf16 (32 bytes) at `p`; widened as in `load8`.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
}

impl Element for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable f16 (16 bytes) at `p`; F16C widens them exactly.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl"
    ))]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable f16 (32 bytes) at `p`; AVX-512 F widens them exactly.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// Sum of the lanes in a fixed pairwise order (halves first), the order the AVX2 path uses too.
#[inline(always)]
fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// Dot products of `x` (length `c`) with `R` weight rows (each of length `c`): lane `i` of a row
/// accumulates the elements `k ≡ i (mod LANES)`, then [`hsum`], then the `c mod LANES` tail in order.
///
/// Portable twin of the AVX2 path, bit-identical to it. The compiler does not vectorise this loop well
/// (it vectorises across the `R` rows and broadcasts `x`), hence the explicit path where available.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn dot_rows_portable<T: Element, const R: usize>(x: &[f32], rows: [&[T]; R], c: usize) -> [f32; R] {
    debug_assert!(x.len() == c && rows.iter().all(|r| r.len() == c));
    let (xs, x_tail) = x.as_chunks::<LANES>();
    let ws: [&[[T; LANES]]; R] = std::array::from_fn(|r| rows[r].as_chunks::<LANES>().0);
    let mut acc = [[0.0f32; LANES]; R];
    for (k, xs) in xs.iter().enumerate() {
        for r in 0..R {
            let ws = &ws[r][k];
            for i in 0..LANES {
                acc[r][i] = fmadd(xs[i], ws[i].to_f32(), acc[r][i]);
            }
        }
    }
    let body = c - x_tail.len();
    std::array::from_fn(|r| {
        let mut s = hsum(&acc[r]);
        for (k, &xk) in x_tail.iter().enumerate() {
            s = fmadd(xk, rows[r][body + k].to_f32(), s);
        }
        s
    })
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
use dot_rows_portable as dot_rows;

/// [`dot_rows_portable`] with AVX2 + FMA: each row's 16 lanes are two 8-lane registers, so four rows keep
/// eight independent accumulators in flight and each input load serves four rows. Each row stream is
/// prefetched [`PREFETCH`] elements ahead (the next rows of a stream follow it in memory).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
#[inline(always)]
#[allow(unsafe_code)]
fn dot_rows<T: Element, const R: usize>(x: &[f32], rows: [&[T]; R], c: usize) -> [f32; R] {
    use std::arch::x86_64::*;
    const { assert!(LANES == 16) };
    // Checked in release builds: the raw loads below rely on them, and they cost nothing next to the loop.
    assert!(x.len() == c && rows.iter().all(|r| r.len() == c), "gemv: dot_rows shapes");
    let body = c / LANES * LANES;
    let xp = x.as_ptr();
    let wp: [*const T; R] = std::array::from_fn(|r| rows[r].as_ptr());
    // SAFETY: the intrinsics need AVX2 and FMA, which this function is compiled only with (`cfg` above). The
    // loads read x[k..k + 16] and rows[r][k..k + 16] with k + 16 ≤ body ≤ c = x.len() = rows[r].len()
    // (asserted above); unaligned loads accept any address. A prefetch is a hint that never faults, and its
    // address is formed with `wrapping_add`, so it may point past the weights.
    let (lo, hi) = unsafe {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for k in (0..body).step_by(LANES) {
            let (x0, x1) = (_mm256_loadu_ps(xp.add(k)), _mm256_loadu_ps(xp.add(k + 8)));
            for r in 0..R {
                let p = wp[r].add(k);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
                lo[r] = _mm256_fmadd_ps(x0, T::load8(p), lo[r]);
                hi[r] = _mm256_fmadd_ps(x1, T::load8(p.add(8)), hi[r]);
            }
        }
        (lo, hi)
    };
    std::array::from_fn(|r| {
        // hsum's order: lanes i + 8, then i + 4, then i + 2, then i + 1.
        // SAFETY: AVX2 is enabled at compile time (`cfg` above); these touch registers only.
        let mut s = unsafe {
            let s8 = _mm256_add_ps(lo[r], hi[r]);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
        };
        for k in body..c {
            s = x[k].mul_add(rows[r][k].to_f32(), s);
        }
        s
    })
}

/// [`dot_rows`] for two input rows at once: each weight load serves both, so with several sequences
/// decoding together (where the weights of a group stay in cache across the input rows) half the loads
/// per multiply-add go. Each row's lanes, order and tail are those of [`dot_rows`]: bit-identical results.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
#[inline(always)]
#[allow(unsafe_code)]
fn dot_rows_pair<T: Element, const R: usize>(xa: &[f32], xb: &[f32], rows: [&[T]; R], c: usize) -> [[f32; R]; 2] {
    use std::arch::x86_64::*;
    const { assert!(LANES == 16) };
    assert!(xa.len() == c && xb.len() == c && rows.iter().all(|r| r.len() == c), "gemv: dot_rows_pair shapes");
    let body = c / LANES * LANES;
    let (ap, bp) = (xa.as_ptr(), xb.as_ptr());
    let wp: [*const T; R] = std::array::from_fn(|r| rows[r].as_ptr());
    // SAFETY: as in `dot_rows`: AVX2 + FMA are compiled in (`cfg` above); every load reads 16 floats at
    // k + 16 ≤ body ≤ c, the length of xa, xb and each row (asserted above); unaligned loads accept any
    // address; the prefetch is a non-faulting hint formed with `wrapping_add`.
    let acc = unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; 2];
        for k in (0..body).step_by(LANES) {
            let a = [_mm256_loadu_ps(ap.add(k)), _mm256_loadu_ps(ap.add(k + 8))];
            let b = [_mm256_loadu_ps(bp.add(k)), _mm256_loadu_ps(bp.add(k + 8))];
            for r in 0..R {
                let p = wp[r].add(k);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
                let w = [T::load8(p), T::load8(p.add(8))];
                for h in 0..2 {
                    acc[0][r][h] = _mm256_fmadd_ps(a[h], w[h], acc[0][r][h]);
                    acc[1][r][h] = _mm256_fmadd_ps(b[h], w[h], acc[1][r][h]);
                }
            }
        }
        acc
    };
    let xs = [xa, xb];
    std::array::from_fn(|i| {
        std::array::from_fn(|r| {
            let [lo, hi] = acc[i][r];
            // SAFETY: AVX2 is enabled at compile time (`cfg` above); these touch registers only.
            let mut s = unsafe {
                let s8 = _mm256_add_ps(lo, hi);
                let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
            };
            for k in body..c {
                s = xs[i][k].mul_add(rows[r][k].to_f32(), s);
            }
            s
        })
    })
}

/// Without AVX2 the pair is two single-row calls (the same arithmetic).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
#[inline(always)]
fn dot_rows_pair<T: Element, const R: usize>(xa: &[f32], xb: &[f32], rows: [&[T]; R], c: usize) -> [[f32; R]; 2] {
    [dot_rows::<T, R>(xa, rows, c), dot_rows::<T, R>(xb, rows, c)]
}

/// One task: output channels `0..w.len()/c` of this block for every input row.
/// `outs[i]` is row `i`'s piece of the output, `bias` this block's piece of the bias.
///
/// The block is cut into [`GROUP`] equal runs of rows and the four rows walked together are one from each
/// run (`j`, `j + q`, `j + 2q`, `j + 3q`): four sequential streams far apart, which the hardware prefetchers
/// follow better than four adjacent rows (≈10% more bandwidth here). Rows past the four runs are the tail.
/// Input rows go two at a time ([`dot_rows_pair`]), an odd last one alone.
fn block<T: Element>(outs: &mut [&mut [f32]], inp: &[f32], w: &[T], bias: Option<&[f32]>, c: usize) {
    let oc = w.len() / c;
    let q = oc / GROUP;
    let n = outs.len();
    let row = |j: usize| &w[j * c..(j + 1) * c];
    let x = |i: usize| &inp[i * c..(i + 1) * c];
    let bias_at = |j: usize| bias.map_or(0.0, |b| b[j]);
    for j in 0..q {
        let rows: [&[T]; GROUP] = std::array::from_fn(|g| row(j + g * q));
        for i in (0..n - n % 2).step_by(2) {
            let pair = dot_rows_pair::<T, GROUP>(x(i), x(i + 1), rows, c);
            for (h, r) in pair.into_iter().enumerate() {
                for (g, r) in r.into_iter().enumerate() {
                    outs[i + h][j + g * q] = r + bias_at(j + g * q);
                }
            }
        }
        if n % 2 == 1 {
            let r = dot_rows::<T, GROUP>(x(n - 1), rows, c);
            for (g, r) in r.into_iter().enumerate() {
                outs[n - 1][j + g * q] = r + bias_at(j + g * q);
            }
        }
    }
    for j in GROUP * q..oc {
        for (o, x) in outs.iter_mut().zip(inp.chunks_exact(c)) {
            let [r] = dot_rows::<T, 1>(x, [row(j)], c);
            o[j] = r + bias_at(j);
        }
    }
}

/// Forward for at most [`MAX_BATCH`] input rows.
///
/// # Shapes
/// `out`: (N, OC), `inp`: (N, C), `weight`: (OC, C), `bias`: (OC), with 1 ≤ N ≤ [`MAX_BATCH`].
///
/// # Panics
/// With more than [`MAX_BATCH`] rows (the output pieces live in fixed arrays).
pub fn forward<T: Element>(out: &mut [f32], inp: &[f32], weight: &[T], bias: Option<&[f32]>, c: usize, oc: usize) {
    debug_assert!(c > 0);
    let n = inp.len() / c;
    assert!(n <= MAX_BATCH, "gemv: {n} rows > {MAX_BATCH}");
    debug_assert_eq!(inp.len(), n * c);
    debug_assert_eq!(out.len(), n * oc);
    debug_assert_eq!(weight.len(), oc * c);
    debug_assert!(bias.is_none_or(|b| b.len() == oc));
    if n == 0 || oc == 0 {
        return;
    }
    let tasks = (oc * c / MIN_TASK_ELEMS).clamp(1, rayon::current_num_threads().clamp(1, MAX_TASKS));
    if tasks == 1 {
        let mut outs: [&mut [f32]; MAX_BATCH] = std::array::from_fn(|_| &mut [][..]);
        for (piece, row) in outs.iter_mut().zip(out.chunks_exact_mut(oc)) {
            *piece = row;
        }
        return block(&mut outs[..n], inp, weight, bias, c);
    }
    // Contiguous blocks of output channels, a multiple of the row group so only the last block has a tail.
    let per_task = oc.div_ceil(tasks).next_multiple_of(GROUP);
    let tasks = oc.div_ceil(per_task);
    // pieces[t][i]: input row i's outputs in block t — disjoint slices carved without allocating.
    let mut pieces: [[&mut [f32]; MAX_BATCH]; MAX_TASKS] =
        std::array::from_fn(|_| std::array::from_fn(|_| &mut [][..]));
    for (i, row) in out.chunks_exact_mut(oc).enumerate() {
        for (t, piece) in row.chunks_mut(per_task).enumerate() {
            pieces[t][i] = piece;
        }
    }
    pieces[..tasks].par_iter_mut().enumerate().for_each(|(t, outs)| {
        let (j0, j1) = (t * per_task, ((t + 1) * per_task).min(oc));
        block(&mut outs[..n], inp, &weight[j0 * c..j1 * c], bias.map(|b| &b[j0..j1]), c);
    });
}

/// Sum of `a` split over the threads in contiguous blocks: the pure streaming read a GEMV cannot beat.
/// Benchmarks time it over an array larger than the caches to measure the machine's read bandwidth.
///
/// Like [`forward`] each thread reads [`GROUP`] streams side by side (one stream per thread reaches only
/// ≈80% of the bandwidth here).
pub fn stream_sum(a: &[f32]) -> f32 {
    let chunk = a.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    a.par_chunks(chunk)
        .map(|block| {
            let part = block.len() / GROUP / LANES * LANES;
            let streams: [&[[f32; LANES]]; GROUP] =
                std::array::from_fn(|s| block[s * part..(s + 1) * part].as_chunks::<LANES>().0);
            let mut acc = [[0.0f32; LANES]; GROUP];
            #[allow(clippy::needless_range_loop)] // k indexes the four streams at once
            for k in 0..part / LANES {
                for s in 0..GROUP {
                    for i in 0..LANES {
                        acc[s][i] += streams[s][k][i];
                    }
                }
            }
            acc.iter().flatten().sum::<f32>() + block[GROUP * part..].iter().sum::<f32>()
        })
        .sum()
}

/// The plain loop [`forward`] must agree with.
pub fn forward_naive(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, c: usize, oc: usize) {
    for (o_row, x_row) in out.chunks_exact_mut(oc).zip(inp.chunks_exact(c)) {
        for (j, o) in o_row.iter_mut().enumerate() {
            let w_row = &weight[j * c..][..c];
            let dot: f32 = x_row.iter().zip(w_row).map(|(a, b)| a * b).sum();
            *o = dot + bias.map_or(0.0, |b| b[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, c: usize, oc: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for row in x.chunks_exact(c) {
            for j in 0..oc {
                let dot: f64 = row.iter().zip(&w[j * c..(j + 1) * c]).map(|(&a, &b)| a as f64 * b as f64).sum();
                out.push(dot + b.map_or(0.0, |b| b[j] as f64));
            }
        }
        out
    }

    #[test]
    fn agrees_with_naive_twin_and_f64_on_ragged_shapes() {
        let mut rng = Rng::new(11);
        // Ragged C (tails of the 16 lanes), ragged OC (tails of the 4-row groups and of the task blocks),
        // and shapes big enough to be split over several tasks.
        for (n, c, oc) in [
            (1, 1, 1),
            (1, 13, 7),
            (2, 17, 5),
            (3, 31, 203),
            (4, 129, 67),
            (1, 768, 1001),
            (4, 300, 1030),
            (7, 40, 333),
            (MAX_BATCH, 65, 1030),
        ] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            for bias in [Some(&b[..]), None] {
                let (mut fast, mut slow) = (vec![f32::NAN; n * oc], vec![0.0; n * oc]);
                forward(&mut fast, &x, &w, bias, c, oc);
                forward_naive(&mut slow, &x, &w, bias, c, oc);
                let what = format!("gemv n={n} c={c} oc={oc} bias={}", bias.is_some());
                assert_close(&what, &fast, &to_f64(&slow), 1e-4, 1e-4);
                assert_close(&what, &fast, &reference(&x, &w, bias, c, oc), 1e-4, 1e-5);
            }
        }
    }

    #[test]
    fn stream_sum_sums() {
        for n in [1, 100, 1000, 4099] {
            let a: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
            assert_eq!(stream_sum(&a), a.iter().sum::<f32>(), "n={n}");
        }
        assert_eq!(stream_sum(&[]), 0.0);
    }

    #[test]
    fn explicit_simd_path_is_bit_identical_to_the_portable_twin() {
        let mut rng = Rng::new(13);
        for c in [1, 15, 16, 17, 48, 100, 768] {
            let x = random_f32(&mut rng, c, 1.0);
            let w = random_f32(&mut rng, 4 * c, 1.0);
            let rows: [&[f32]; 4] = std::array::from_fn(|r| &w[r * c..(r + 1) * c]);
            assert_eq!(dot_rows::<f32, 4>(&x, rows, c), dot_rows_portable::<f32, 4>(&x, rows, c), "c={c}");
            assert_eq!(dot_rows::<f32, 1>(&x, [rows[2]], c), dot_rows_portable::<f32, 1>(&x, [rows[2]], c), "c={c}");
        }
    }

    #[test]
    fn two_row_path_is_bit_identical_to_one_row_at_a_time() {
        let mut rng = Rng::new(14);
        for c in [1, 15, 16, 17, 48, 100, 768, 3072] {
            let (xa, xb) = (random_f32(&mut rng, c, 1.0), random_f32(&mut rng, c, 1.0));
            let w = random_f32(&mut rng, 4 * c, 1.0);
            let rows: [&[f32]; 4] = std::array::from_fn(|r| &w[r * c..(r + 1) * c]);
            let pair = dot_rows_pair::<f32, 4>(&xa, &xb, rows, c);
            assert_eq!(pair, [dot_rows::<f32, 4>(&xa, rows, c), dot_rows::<f32, 4>(&xb, rows, c)], "c={c}");
            assert_eq!(pair[1], dot_rows_portable::<f32, 4>(&xb, rows, c), "c={c}");
        }
    }

    #[test]
    fn rows_are_independent_of_grouping_batching_and_threads() {
        // Each output must be bit-identical whether its row fell in a group of four or the tail, whether
        // it was computed alone or with other input rows, and for any thread count.
        let (c, oc) = (200, 1_500);
        let mut rng = Rng::new(12);
        let rows = 11;
        let x = random_f32(&mut rng, rows * c, 1.0);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let mut together = vec![0.0; rows * oc];
        forward(&mut together, &x, &w, None, c, oc);
        for i in 0..rows {
            let xi = &x[i * c..(i + 1) * c];
            let mut alone = vec![0.0; oc];
            forward(&mut alone, xi, &w, None, c, oc);
            assert_eq!(alone, together[i * oc..(i + 1) * oc]);
            let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
            let mut serial = vec![0.0; oc];
            one_thread.install(|| forward(&mut serial, xi, &w, None, c, oc));
            assert_eq!(serial, alone);
            // Row 1 starts a group when computed from offset 1: its row is then in a different group.
            let mut shifted = vec![0.0; oc - 1];
            forward(&mut shifted, xi, &w[c..], None, c, oc - 1);
            assert_eq!(shifted, alone[1..]);
        }
    }

    #[test]
    fn sixteen_bit_weights_give_exactly_the_products_of_their_f32_widening() {
        // Widening bf16/f16 is exact, and the arithmetic is the f32 path's: the results must be bit-identical
        // to the f32 kernel on the widened matrix, SIMD path and portable twin alike.
        let mut rng = Rng::new(15);
        for (n, c, oc) in [(1, 13, 7), (1, 768, 1001), (3, 100, 203), (MAX_BATCH, 65, 130)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            let bf: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let hf: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bf_wide: Vec<f32> = bf.iter().map(|v| v.to_f32()).collect();
            let hf_wide: Vec<f32> = hf.iter().map(|v| v.to_f32()).collect();
            let (mut got, mut want) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward(&mut got, &x, &bf, Some(&b), c, oc);
            forward(&mut want, &x, &bf_wide, Some(&b), c, oc);
            assert_eq!(got, want, "bf16 n={n} c={c} oc={oc}");
            forward(&mut got, &x, &hf, Some(&b), c, oc);
            forward(&mut want, &x, &hf_wide, Some(&b), c, oc);
            assert_eq!(got, want, "f16 n={n} c={c} oc={oc}");
            let rows: [&[half::f16]; 4] = std::array::from_fn(|r| &hf[r * c..(r + 1) * c]);
            let xr = &x[..c];
            assert_eq!(dot_rows::<half::f16, 4>(xr, rows, c), dot_rows_portable::<half::f16, 4>(xr, rows, c));
            let rows: [&[half::bf16]; 4] = std::array::from_fn(|r| &bf[r * c..(r + 1) * c]);
            assert_eq!(dot_rows::<half::bf16, 4>(xr, rows, c), dot_rows_portable::<half::bf16, 4>(xr, rows, c));
        }
    }
}
