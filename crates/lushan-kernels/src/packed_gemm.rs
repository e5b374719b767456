//! A cache-blocked matrix product on packed operands, `C = A·B + beta·C`, in single precision or with the
//! operands rounded to bfloat16 and the products summed in single precision (mixed precision, as PyTorch's
//! `autocast(dtype=torch.bfloat16)` computes a linear layer on a CPU).
//!
//! The blocking is Goto's / BLIS's: for each block of `KC` steps of the inner dimension, a block of B
//! (`KC × n`) is packed into column panels of [`NR`] and, for each block of `MC` rows, a block of A into row
//! panels of [`MR`]; a microkernel multiplies one A panel by one B panel into an `MR × NR` tile held in
//! registers. The B panel (`KC × NR`) stays in L1 while the A panels of the block stream past it from L2.
//!
//! Microkernels, chosen at run time (the build machine need not be the run machine):
//! - AVX-512 F (f32): per step of k, two 16-lane loads of B and `MR` broadcasts of A feed `2·MR`
//!   fused multiply-adds into 24 accumulators.
//! - AVX-512 BF16 (bf16): operands packed as pairs of consecutive k, so one `vdpbf16ps` does two steps of k
//!   for 16 columns (32 multiply-adds, products exact, summed in f32).
//! - AMX BF16 (bf16, preferred where the CPU and OS allow it): 32 × 32 blocks of C in four accumulator tiles,
//!   A packed as tiles of 16 rows × 32 k, B in the same panels as the AVX-512 BF16 kernel ([`amx`]).
//! - A portable twin of both over the same packed layout, the reference the vector kernels are tested against
//!   and the path on CPUs without AVX-512.
//!
//! Rounding to bf16 is round-to-nearest-even (`half::bf16::from_f32`), done once per element while packing.

use crate::{amx, fits};
pub use epilogue::Then;
use microkernel::{TileOut, tile, write_row};
use rayon::prelude::*;
use std::cell::RefCell;

/// How the operands of a matrix product are represented while they are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// IEEE single precision throughout.
    #[default]
    F32,
    /// Operands rounded to bfloat16, products (exact in f32) summed in f32.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name flags and files use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| format!("unknown precision `{s}`: expected f32 or bf16"))
    }
}

/// Rows of an A panel (and of the register tile).
pub const MR: usize = 12;
/// Columns of a B panel: two 16-lane registers.
pub const NR: usize = 32;
/// Rows of A packed at once: a block of `MC × KC` stays in L2.
const MC: usize = 12 * MR;
/// Steps of the inner dimension packed at once, in packed words: f32 values, or bf16 pairs (twice the k).
const KC_WORDS: usize = 512;

/// Which microkernel this CPU runs for a precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Amx,
    Avx512,
    Portable,
}

/// Whether this CPU runs `kernel` for `precision` (features checked once per process).
pub fn runs(kernel: Kernel, precision: Precision) -> bool {
    use std::sync::OnceLock;
    static FEATURES: OnceLock<(bool, bool)> = OnceLock::new();
    let (f32_ok, bf16_ok) = *FEATURES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f");
            (f, f && std::arch::is_x86_feature_detected!("avx512bf16"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (false, false)
        }
    });
    match (kernel, precision) {
        (Kernel::Portable, _) => true,
        (Kernel::Avx512, Precision::F32) => f32_ok,
        (Kernel::Avx512, Precision::Bf16) => bf16_ok,
        (Kernel::Amx, Precision::Bf16) => amx::available(),
        (Kernel::Amx, Precision::F32) => false,
    }
}

/// The fastest microkernel this CPU runs for `precision`.
pub fn kernel(precision: Precision) -> Kernel {
    [Kernel::Amx, Kernel::Avx512].into_iter().find(|&k| runs(k, precision)).unwrap_or(Kernel::Portable)
}

/// The precision and how this CPU computes it, for logs: `f32`, `bf16 (AVX-512 BF16)` or
/// `bf16 (AMX)` or `bf16 (emulated: this CPU has no AVX-512 BF16 instructions, slower than f32)`.
pub fn describe(precision: Precision) -> &'static str {
    match (precision, kernel(precision)) {
        (Precision::F32, _) => "f32",
        (Precision::Bf16, Kernel::Amx) => "bf16 (AMX)",
        (Precision::Bf16, Kernel::Avx512) => "bf16 (AVX-512 BF16)",
        (Precision::Bf16, Kernel::Portable) => {
            "bf16 (emulated: this CPU has no AVX-512 BF16 instructions, slower than f32)"
        }
    }
}

thread_local! {
    /// Each thread's packed block of A, reused from call to call.
    static A_PANELS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's packed block of B (shared read-only by the tasks of one product).
    static B_PANELS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// A matrix read through strides: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `x` rounded to the nearest bfloat16 (ties to even), its bits in the high half, the low half zero; NaNs
/// stay quiet NaNs. Integer arithmetic only, so packing loops vectorise; equal to `half::bf16::from_f32`.
#[inline(always)]
pub(crate) fn bf16_high_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    let quiet_nan = (bits | 0x0040_0000) & 0xffff_0000;
    if bits & 0x7fff_ffff > 0x7f80_0000 { quiet_nan } else { rounded }
}

/// One packed word of the k-steps `2p` (low half) and `2p + 1` (high half).
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    (bf16_high_bits(lo) >> 16) | bf16_high_bits(hi)
}

/// One operand read as `(x, k)` → `data[x·xs + k·ks]`: A with `x` its rows, B with `x` its columns.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    xs: usize,
    ks: usize,
}

/// Packs `x0..x0+width` (zero past `x_end`) × k-steps `k0..k0+kc` of `op` into steps of `width` words:
/// word `s·width + x` is element `(x0+x, k0+s)` as f32 bits, or for bf16 the pair of k-steps `2s`, `2s+1`
/// (the second zero past `kc`), then zero steps up to `padded` (the kernel's multiple). The loop runs along
/// whichever axis is contiguous in memory.
fn pack(
    dst: &mut [u32],
    op: Operand<'_>,
    precision: Precision,
    width: usize,
    (x0, x_end): (usize, usize),
    (k0, kc): (usize, usize),
    padded: usize,
) {
    let valid = width.min(x_end - x0);
    let steps = steps(precision, kc);
    let (dst, padding) = dst[..padded * width].split_at_mut(steps * width);
    padding.fill(0);
    if valid < width {
        dst.fill(0);
    }
    let Operand { data, xs, ks } = op;
    match precision {
        Precision::F32 if xs == 1 => {
            for (s, words) in dst.chunks_exact_mut(width).enumerate() {
                let src = &data[x0 + (k0 + s) * ks..][..valid];
                words.iter_mut().zip(src).for_each(|(w, v)| *w = v.to_bits());
            }
        }
        Precision::F32 if ks == 1 => {
            // k contiguous (a weight read as Wᵀ, or A's rows): a transpose.
            transpose::transpose_rows(dst, data, xs, (x0, valid), (k0, steps), width);
        }
        Precision::F32 => {
            let rows = row_slices(data, xs, ks, (x0, valid), (k0, kc));
            for (s, words) in dst.chunks_exact_mut(width).enumerate() {
                for (w, row) in words.iter_mut().zip(&rows[..valid]) {
                    *w = row.at(s).to_bits();
                }
            }
        }
        Precision::Bf16 if xs == 1 => {
            for (s, words) in dst.chunks_exact_mut(width).enumerate() {
                let lo = &data[x0 + (k0 + 2 * s) * ks..][..valid];
                if 2 * s + 1 < kc {
                    let hi = &data[x0 + (k0 + 2 * s + 1) * ks..][..valid];
                    words.iter_mut().zip(lo.iter().zip(hi)).for_each(|(w, (&l, &h))| *w = pair(l, h));
                } else {
                    words.iter_mut().zip(lo).for_each(|(w, &l)| *w = pair(l, 0.0));
                }
            }
        }
        Precision::Bf16 if ks == 1 => {
            // Each row's pairs are converted in one contiguous (vectorised) pass, then spread over the steps.
            let mut words = [0u32; KC_WORDS];
            for x in 0..valid {
                let row = &data[(x0 + x) * xs + k0..][..kc];
                let mut pairs = row.chunks_exact(2);
                for (w, p) in words.iter_mut().zip(pairs.by_ref()) {
                    *w = pair(p[0], p[1]);
                }
                if let [last] = pairs.remainder() {
                    words[kc / 2] = pair(*last, 0.0);
                }
                for (s, &w) in words[..steps].iter().enumerate() {
                    dst[s * width + x] = w;
                }
            }
        }
        Precision::Bf16 => {
            let rows = row_slices(data, xs, ks, (x0, valid), (k0, kc));
            for (s, words) in dst.chunks_exact_mut(width).enumerate() {
                if 2 * s + 1 < kc {
                    for (w, row) in words.iter_mut().zip(&rows[..valid]) {
                        *w = pair(row.at(2 * s), row.at(2 * s + 1));
                    }
                } else {
                    for (w, row) in words.iter_mut().zip(&rows[..valid]) {
                        *w = pair(row.at(2 * s), 0.0);
                    }
                }
            }
        }
    }
}

/// Packs B's column panels from column `j0` on (to `n`), k-steps `k0..k0+kc`, into `dst` (whole panels, in
/// order, each `padded_steps` long for `kernel`), the panels in parallel.
fn pack_b_panels(
    dst: &mut [u32],
    b: Operand<'_>,
    (kernel, precision): (Kernel, Precision),
    (j0, n): (usize, usize),
    (k0, kc): (usize, usize),
) {
    let padded = padded_steps(kernel, precision, kc);
    dst.par_chunks_mut(NR * padded).enumerate().for_each(|(p, panel)| {
        pack(panel, b, precision, NR, (j0 + p * NR, n), (k0, kc), padded);
    });
}

/// One x of an operand along k: `kc` values `stride` apart (1 when k is contiguous).
#[derive(Clone, Copy)]
struct KRow<'a> {
    data: &'a [f32],
    stride: usize,
}

impl KRow<'_> {
    #[inline(always)]
    fn at(&self, k: usize) -> f32 {
        self.data[k * self.stride]
    }
}

/// The `valid` x's of a panel as rows along k, so the packing loops run along k with `width` rows read side
/// by side (each row's reads sequential) and each step's words written together.
fn row_slices<'a>(
    data: &'a [f32],
    xs: usize,
    ks: usize,
    (x0, valid): (usize, usize),
    (k0, kc): (usize, usize),
) -> [KRow<'a>; NR] {
    let mut rows = [KRow { data: &[], stride: 1 }; NR];
    for (x, row) in rows.iter_mut().enumerate().take(valid) {
        let start = (x0 + x) * xs + k0 * ks;
        *row = KRow { data: &data[start..=start + (kc - 1) * ks], stride: ks };
    }
    rows
}

/// Columns of B packed at once: a packed block (`KC_WORDS × NC` words, 4 MiB) stays in the last-level cache
/// while every row block of C is computed against it.
const NC: usize = 128 * NR;

/// `C = A·B + beta·C` for an `m × k` A and a `k × n` B read through strides, C row-major with row stride
/// `rsc`, multiplied in `precision` by the given microkernel (tests pin the portable one); with `bias`
/// (`n` values), `C = beta·C + (A·B + bias)`, the bias added as each tile is written, and `then` run on each
/// finished tile (the epilogue).
///
/// Parallel over rayon's threads: for each block of k and of columns, B is packed once (its panels in
/// parallel) and shared; then each task owns a block of C's rows, packs its rows of A and computes them. Each
/// output is summed by one thread in a fixed order, so results do not depend on the thread count.
///
/// # Shapes
/// A: `(m, k)` with strides `(a.rs, a.cs)`; B: `(k, n)` with strides `(b.rs, b.cs)`; C: `(m, n)`, rows `rsc` apart.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    precision: Precision,
    (m, k, n): (usize, usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
    (beta, bias, then): (f32, Option<&[f32]>, Then<'_>),
    c: &mut [f32],
    rsc: usize,
) {
    if m > 0 && n > 0 && k > 0 {
        assert!(fits((k, n), (b.rs, b.cs), b.data.len()), "packed_gemm: B too short for its shape");
    }
    multiply(kernel, precision, (m, k, n), a, BSource::Strided(b), (beta, bias, then), c, rsc);
}

/// A B operand packed once for several products — the output layer's weight, multiplied by every chunk of
/// rows of a training pass — in the layout [`gemm_with`] packs each block into: its k-blocks in order, each
/// holding every column panel.
pub struct PackedB {
    kernel: Kernel,
    precision: Precision,
    k: usize,
    n: usize,
    words: Vec<u32>,
}

impl PackedB {
    /// Packs the `k × n` matrix `b` (read through its strides) for products in `precision`.
    pub fn new(precision: Precision, (k, n): (usize, usize), b: Strided<'_>) -> Self {
        assert!(k == 0 || n == 0 || fits((k, n), (b.rs, b.cs), b.data.len()), "packed_gemm: B too short for its shape");
        let kernel = kernel(precision);
        let kc_max = kc_max(precision);
        let panels_n = n.div_ceil(NR);
        let total_steps: usize =
            (0..k).step_by(kc_max).map(|k0| padded_steps(kernel, precision, kc_max.min(k - k0))).sum();
        // Every word is written by `pack` (zero padding included), so a reused buffer needs no clearing
        // beyond `resize`'s; reusing it spares the page faults of a fresh allocation of this size per pass.
        let mut words = SPARE_PACKED.with_borrow_mut(Vec::pop).unwrap_or_default();
        words.clear();
        words.resize(panels_n * NR * total_steps, 0);
        let b_op = Operand { data: b.data, xs: b.cs, ks: b.rs };
        let mut rest = &mut words[..];
        for k0 in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - k0);
            let block_len = panels_n * NR * padded_steps(kernel, precision, kc);
            let (block, tail) = rest.split_at_mut(block_len);
            rest = tail;
            pack_b_panels(block, b_op, (kernel, precision), (0, n), (k0, kc));
        }
        Self { kernel, precision, k, n, words }
    }

    /// `(k, n)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The precision its words hold.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes its packed words take.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.words.as_slice())
    }

    /// The panels of columns `j0..j0+nc` (`j0` a multiple of [`NR`]) in the k-block starting at `k0`.
    fn panels(&self, k0: usize, j0: usize, nc: usize) -> &[u32] {
        let kc_max = kc_max(self.precision);
        let panels_n = self.n.div_ceil(NR);
        let start_block = (k0 / kc_max) * panels_n * NR * padded_steps(self.kernel, self.precision, kc_max);
        let steps = padded_steps(self.kernel, self.precision, kc_max.min(self.k - k0));
        &self.words[start_block + (j0 / NR) * NR * steps..][..nc.div_ceil(NR) * NR * steps]
    }
}

impl Drop for PackedB {
    /// Keeps the buffer for the next `PackedB` of this thread (the output layer packs its weight every pass).
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        SPARE_PACKED.with_borrow_mut(|spare| {
            if spare.len() < MAX_SPARE_PACKED {
                spare.push(words);
            }
        });
    }
}

/// Packed-B buffers a thread keeps for reuse: the output layer's weight as Wᵀ and as W.
const MAX_SPARE_PACKED: usize = 2;

thread_local! {
    static SPARE_PACKED: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// `C = A·B + beta·C` with B packed beforehand ([`PackedB`], whose precision it takes), on the fastest
/// microkernel this CPU has; with `bias` and `then` as [`gemm_with`]'s epilogue. The values are those of
/// [`gemm_with`] on the unpacked B bit for bit (the same blocks, in the same order).
///
/// # Shapes
/// A: `(m, k)`; B: `(k, n)` = `b.shape()`; bias: `(n)`; C and `then`'s matrices: `(m, n)`, rows `rsc` apart.
pub fn gemm_packed(
    m: usize,
    a: Strided<'_>,
    b: &PackedB,
    (beta, bias, then): (f32, Option<&[f32]>, Then<'_>),
    c: &mut [f32],
    rsc: usize,
) {
    let (k, n) = b.shape();
    multiply(b.kernel, b.precision, (m, k, n), a, BSource::Packed(b), (beta, bias, then), c, rsc);
}

/// Where a product's B comes from: packed block by block as it goes, or packed beforehand.
#[derive(Clone, Copy)]
enum BSource<'a> {
    Strided(Strided<'a>),
    Packed(&'a PackedB),
}

/// Steps of packed words for `kc` values of k.
fn steps(precision: Precision, kc: usize) -> usize {
    match precision {
        Precision::F32 => kc,
        Precision::Bf16 => kc.div_ceil(2),
    }
}

/// Steps of packed words `kernel` reads for `kc` values of k: AMX reads whole tiles of [`amx::WORD_STEP`]
/// steps, the zeros past `kc` adding nothing.
fn padded_steps(kernel: Kernel, precision: Precision, kc: usize) -> usize {
    match kernel {
        Kernel::Amx => steps(precision, kc).next_multiple_of(amx::WORD_STEP),
        _ => steps(precision, kc),
    }
}

/// Rows of a packed A panel for `kernel`.
fn panel_rows(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Amx => amx::BLOCK,
        _ => MR,
    }
}

/// Values of k in one packed block.
fn kc_max(precision: Precision) -> usize {
    match precision {
        Precision::F32 => KC_WORDS,
        Precision::Bf16 => 2 * KC_WORDS,
    }
}

#[allow(clippy::too_many_arguments)]
fn multiply(
    kernel: Kernel,
    precision: Precision,
    (m, k, n): (usize, usize, usize),
    a: Strided<'_>,
    b: BSource<'_>,
    (beta, bias, mut then): (f32, Option<&[f32]>, Then<'_>),
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(bias.is_none_or(|b| b.len() == n), "packed_gemm: bias is not one value per column");
    assert!(then.fits((m - 1) * rsc + n), "packed_gemm: the epilogue's matrices are not C's shape");
    assert!(runs(kernel, precision), "packed_gemm: this CPU cannot run the {kernel:?} kernel for {precision}");
    assert!(k == 0 || fits((m, k), (a.rs, a.cs), a.data.len()), "packed_gemm: A too short for its shape");
    assert!(fits((m, n), (rsc, 1), c.len()), "packed_gemm: C too short for its shape");
    let c = &mut c[..(m - 1) * rsc + n];
    if k == 0 {
        let zeros = [0.0; NR];
        for (i, row) in c.chunks_mut(rsc).enumerate() {
            for (j0, c) in (0..n).step_by(NR).zip(row[..n].chunks_mut(NR)) {
                write_row(c, &zeros[..c.len()], beta, bias.map(|b| &b[j0..]));
                then.apply(i * rsc + j0, c);
            }
        }
        return;
    }
    let kc_max = kc_max(precision);
    let tasks = rayon::current_num_threads().max(1);
    // Rows per task: whole panels, at most MC, and enough tasks to keep every thread busy.
    let mr = panel_rows(kernel);
    let rows = m.div_ceil(tasks).div_ceil(mr).clamp(1, (MC / mr).max(1)) * mr;
    let a_op = Operand { data: a.data, xs: a.rs, ks: a.cs };
    let mut nothing = Then::Nothing;
    B_PANELS.with_borrow_mut(|b_buf| {
        let need_b = NC.min(n.div_ceil(NR) * NR) * KC_WORDS;
        if matches!(b, BSource::Strided(_)) && b_buf.len() < need_b {
            b_buf.resize(need_b, 0);
        }
        for k0 in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - k0);
            let steps = padded_steps(kernel, precision, kc);
            // The first block of k scales C by beta and adds the bias; the later ones add onto it.
            let (beta_now, bias_now) = if k0 == 0 { (beta, bias) } else { (1.0, None) };
            for j0 in (0..n).step_by(NC) {
                let nc = NC.min(n - j0);
                let panels: &[u32] = match b {
                    BSource::Strided(b) => {
                        let b_op = Operand { data: b.data, xs: b.cs, ks: b.rs };
                        let panels = &mut b_buf[..nc.div_ceil(NR) * NR * steps];
                        pack_b_panels(panels, b_op, (kernel, precision), (j0, n), (k0, kc));
                        panels
                    }
                    BSource::Packed(packed) => packed.panels(k0, j0, nc),
                };
                // The last block of k finishes C's values: the epilogue's step runs on them there.
                let blocks = c.len().div_ceil(rows * rsc);
                let thens = if k0 + kc == k { then.split(rows * rsc, blocks) } else { nothing.split(0, blocks) };
                c.par_chunks_mut(rows * rsc).zip(thens).enumerate().for_each(|(t, (c_rows, then))| {
                    let block = RowBlock { i0: t * rows, m, j0, nc, k0, kc, steps, beta: beta_now, bias: bias_now };
                    multiply_row_block(kernel, precision, &block, a_op, panels, (c_rows, then), rsc);
                });
            }
        }
    });
}

/// Where one task's work lies: rows `i0..` of C (to `m`), columns `j0..j0+nc`, k-steps `k0..k0+kc`, and
/// how its tiles are written (`beta`, and the bias of all `n` columns when this block adds it).
struct RowBlock<'a> {
    i0: usize,
    m: usize,
    j0: usize,
    nc: usize,
    k0: usize,
    kc: usize,
    steps: usize,
    beta: f32,
    bias: Option<&'a [f32]>,
}

/// Packs this block's rows of A and multiplies them by every packed B panel into `c_rows` (C from row `i0`).
fn multiply_row_block(
    kernel: Kernel,
    precision: Precision,
    blk: &RowBlock,
    a: Operand<'_>,
    b_panels: &[u32],
    (c_rows, mut then): (&mut [f32], Then<'_>),
    rsc: usize,
) {
    let mr = panel_rows(kernel);
    let mr_all = c_rows.len().div_ceil(rsc);
    let panels_m = mr_all.div_ceil(mr);
    let panel_len = mr * blk.steps;
    A_PANELS.with_borrow_mut(|a_buf| {
        // The panels, then (AMX) one panel in the step-major layout `pack` writes, to be regrouped as tiles.
        let need = (panels_m + usize::from(kernel == Kernel::Amx)) * panel_len;
        if a_buf.len() < need {
            a_buf.resize(need, 0);
        }
        let (panels, scratch) = a_buf.split_at_mut(panels_m * panel_len);
        for (q, panel) in panels.chunks_exact_mut(panel_len).enumerate() {
            let rows = (blk.i0 + q * mr, blk.m);
            if kernel == Kernel::Amx && a.ks == 1 {
                pack_a_amx_rows(panel, a, rows, (blk.k0, blk.kc), blk.steps);
            } else if kernel == Kernel::Amx {
                pack(scratch, a, precision, mr, rows, (blk.k0, blk.kc), blk.steps);
                amx_tiles_of_a(panel, &scratch[..panel_len]);
            } else {
                pack(panel, a, precision, mr, rows, (blk.k0, blk.kc), blk.steps);
            }
        }
        let mut small = [0.0f32; MR * NR];
        let mut large = [0.0f32; amx::BLOCK * NR];
        for (p, b_panel) in b_panels.chunks_exact(NR * blk.steps).enumerate() {
            let j0 = blk.j0 + p * NR;
            let cols = NR.min(blk.j0 + blk.nc - j0);
            for (q, a_panel) in panels.chunks_exact(panel_len).enumerate() {
                let rows = mr.min(mr_all - q * mr);
                let out: Option<&[f32]> = if kernel == Kernel::Amx {
                    amx_tile(&mut large, a_panel, b_panel, blk.steps);
                    Some(&large)
                } else if rows == MR && cols == NR {
                    // A whole tile: the microkernel writes it onto C itself.
                    let c = &mut c_rows[q * mr * rsc + j0..];
                    let bias = blk.bias.map(|b| &b[j0..][..NR]);
                    let out = TileOut::C { c, rsc, beta: blk.beta, bias };
                    tile(kernel, out, a_panel, b_panel, blk.steps, precision);
                    None
                } else {
                    tile(kernel, TileOut::Scratch(&mut small), a_panel, b_panel, blk.steps, precision);
                    Some(&small)
                };
                for ii in 0..rows {
                    let at = (q * mr + ii) * rsc + j0;
                    let c_row = &mut c_rows[at..][..cols];
                    if let Some(out) = out {
                        write_row(c_row, &out[ii * NR..][..cols], blk.beta, blk.bias.map(|b| &b[j0..]));
                    }
                    then.apply(at, c_row);
                }
            }
        }
    });
}

// One AMX block is one packed B panel wide.
const _: () = assert!(NR == amx::BLOCK);

/// Regroups an A panel of [`amx::BLOCK`] rows from step-major (`word s·32 + row`) into AMX tiles: for each
/// tile step of [`amx::WORD_STEP`] words, the 32 rows' words of that step in row order (`tile rows` of 64
/// bytes), so rows 0–15 form one A tile and rows 16–31 the next.
fn amx_tiles_of_a(tiles: &mut [u32], step_major: &[u32]) {
    const ROWS: usize = amx::BLOCK;
    const W: usize = amx::WORD_STEP;
    for (dst, src) in tiles.chunks_exact_mut(ROWS * W).zip(step_major.chunks_exact(ROWS * W)) {
        for (row, dst_row) in dst.chunks_exact_mut(W).enumerate() {
            for (w, word) in dst_row.iter_mut().enumerate() {
                *word = src[w * ROWS + row];
            }
        }
    }
}

/// Packs an AMX A panel (the layout [`amx_tiles_of_a`] makes) straight from an A whose rows are contiguous
/// along k: rows `x0..x0+32` (zero past `x_end`), k-steps `k0..k0+kc` as bf16 pairs, zero to `padded` steps.
fn pack_a_amx_rows(
    dst: &mut [u32],
    a: Operand<'_>,
    (x0, x_end): (usize, usize),
    (k0, kc): (usize, usize),
    padded: usize,
) {
    const ROWS: usize = amx::BLOCK;
    const W: usize = amx::WORD_STEP;
    debug_assert_eq!(a.ks, 1);
    let valid = ROWS.min(x_end - x0);
    let steps = kc.div_ceil(2);
    let mut words = [0u32; KC_WORDS];
    for x in 0..ROWS {
        if x < valid {
            let row = &a.data[(x0 + x) * a.xs + k0..][..kc];
            let mut pairs = row.chunks_exact(2);
            for (w, p) in words.iter_mut().zip(pairs.by_ref()) {
                *w = pair(p[0], p[1]);
            }
            if let [last] = pairs.remainder() {
                words[kc / 2] = pair(*last, 0.0);
            }
            words[steps..padded].fill(0);
        } else {
            words[..padded].fill(0);
        }
        for (c, chunk) in words[..padded].chunks_exact(W).enumerate() {
            dst[(c * ROWS + x) * W..][..W].copy_from_slice(chunk);
        }
    }
}

/// One 32 × 32 block of C from an A panel regrouped by [`amx_tiles_of_a`] and a B panel (`steps` packed
/// steps, a multiple of [`amx::WORD_STEP`]).
fn amx_tile(out: &mut [f32; amx::BLOCK * NR], a_panel: &[u32], b_panel: &[u32], steps: usize) {
    const TILE_BYTES: usize = 16 * 64;
    // A: tile rows of 64 bytes back to back, rows 16–31 one tile further, the next step two tiles on.
    let a_tiles = amx::Tiles { half: TILE_BYTES, row: 64, step: 2 * TILE_BYTES };
    // B: each packed step is a tile row of 32 columns' pairs (128 bytes); columns 16–31 from byte 64.
    let b_tiles = amx::Tiles { half: 64, row: NR * 4, step: amx::WORD_STEP * NR * 4 };
    let (a, b) = (bytemuck::cast_slice(a_panel), bytemuck::cast_slice(b_panel));
    amx::block(out, a, a_tiles, b, b_tiles, steps / amx::WORD_STEP, amx::Prefetch::NONE);
}

/// [`gemm_with`] on the fastest microkernel this CPU has for `precision`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    precision: Precision,
    shape: (usize, usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    gemm_with(kernel(precision), precision, shape, a, b, (beta, None, Then::Nothing), c, rsc);
}

/// `C = A·B (+ bias)`, then `then` on C's finished values, on the fastest microkernel this CPU has for
/// `precision`: the bias (one value per column) added as each tile is written, and the step after the
/// product run on each tile while it is in L1, rather than in passes over C before and after.
///
/// # Shapes
/// A: `(m, k)`; B: `(k, n)`; bias: `(n)`; C and `then`'s matrices: `(m, n)`, rows `rsc` apart.
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue(
    precision: Precision,
    shape: (usize, usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
    (bias, then): (Option<&[f32]>, Then<'_>),
    c: &mut [f32],
    rsc: usize,
) {
    gemm_with(kernel(precision), precision, shape, a, b, (0.0, bias, then), c, rsc);
}

mod epilogue;
mod microkernel;
#[cfg(test)]
mod tests;
mod transpose;
