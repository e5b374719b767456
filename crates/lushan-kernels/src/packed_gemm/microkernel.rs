//! The microkernels of [`super`]: one `MR × NR` tile of `Σ_steps a_panel[step] ⊗ b_panel[step]` over
//! packed panels, and where it is written (a scratch tile, or straight onto C with beta and a bias).

use super::{Kernel, MR, NR, Precision};

/// Where a microkernel puts its `MR × NR` tile: a scratch tile (the caller copies its valid part into C), or
/// straight onto a whole tile of C, `C = beta·C + (tile + bias)` (beta 0 stores without reading C).
pub(super) enum TileOut<'a> {
    Scratch(&'a mut [f32; MR * NR]),
    /// `c` starts at the tile's first element and holds `MR` rows of `NR` values, `rsc` apart; `bias`, when
    /// given, holds the tile's `NR` columns' biases (the bias epilogue: added in the first block of k only).
    C {
        c: &'a mut [f32],
        rsc: usize,
        beta: f32,
        bias: Option<&'a [f32]>,
    },
}

impl TileOut<'_> {
    /// Adds `row` (`NR` values of tile row `i`) where this output keeps it — the portable twin's writeback,
    /// and the order the vector kernels' stores follow.
    fn put_row(&mut self, i: usize, row: &[f32]) {
        match self {
            TileOut::Scratch(tile) => tile[i * NR..][..NR].copy_from_slice(row),
            TileOut::C { c, rsc, beta, bias } => {
                write_row(&mut c[i * *rsc..][..NR], row, *beta, *bias);
            }
        }
    }
}

/// `c_row = beta·c_row + (t_row + bias)`, beta 0 without reading `c_row`: one rounding for the bias and one
/// (fused) for beta, as the vector kernels' stores. With beta 1 and no bias, `c + t` exactly.
pub(super) fn write_row(c_row: &mut [f32], t_row: &[f32], beta: f32, bias: Option<&[f32]>) {
    let biased = |j: usize, t: f32| bias.map_or(t, |b| t + b[j]);
    if beta == 0.0 {
        c_row.iter_mut().zip(t_row).enumerate().for_each(|(j, (c, &t))| *c = biased(j, t));
    } else {
        c_row.iter_mut().zip(t_row).enumerate().for_each(|(j, (c, &t))| *c = beta.mul_add(*c, biased(j, t)));
    }
}

/// `tile = Σ_steps a_panel[step] ⊗ b_panel[step]` in the layout both panels were packed in, put in `out`.
/// The tile is `MR × NR`, row-major.
fn microkernel_portable(mut out: TileOut<'_>, a: &[u32], b: &[u32], steps: usize, precision: Precision) {
    let mut tile = [0.0f32; MR * NR];
    for s in 0..steps {
        let a_step = &a[s * MR..][..MR];
        let b_step = &b[s * NR..][..NR];
        for (i, &aw) in a_step.iter().enumerate() {
            let row = &mut tile[i * NR..][..NR];
            match precision {
                Precision::F32 => {
                    let av = f32::from_bits(aw);
                    for (t, &bw) in row.iter_mut().zip(b_step) {
                        *t = av.mul_add(f32::from_bits(bw), *t);
                    }
                }
                Precision::Bf16 => {
                    let (alo, ahi) = (f32::from_bits(aw << 16), f32::from_bits(aw & 0xffff_0000));
                    for (t, &bw) in row.iter_mut().zip(b_step) {
                        let (blo, bhi) = (f32::from_bits(bw << 16), f32::from_bits(bw & 0xffff_0000));
                        // Both products are exact in f32 (8-bit significands); one rounding per addition.
                        *t = *t + alo * blo + ahi * bhi;
                    }
                }
            }
        }
    }
    for (i, row) in tile.chunks_exact(NR).enumerate() {
        out.put_row(i, row);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{MR, NR, TileOut};
    use std::arch::x86_64::*;

    /// The f32 microkernel: `tile = Σ_s a[s]ᵀ ⊗ b[s]` over `steps` packed steps, put in `out`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F; `a` holds `steps·MR` words and `b` `steps·NR` (asserted).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_f32(out: TileOut<'_>, a: &[u32], b: &[u32], steps: usize) {
        assert!(a.len() >= steps * MR && b.len() >= steps * NR, "packed_gemm: panel shorter than its steps");
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for s in 0..steps {
            // SAFETY: s < steps, so words s·NR..s·NR+32 of b and s·MR..s·MR+12 of a are inside (asserted above).
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(s * NR).cast());
                let b1 = _mm512_loadu_ps(bp.add(s * NR + 16).cast());
                for i in 0..MR {
                    let ai = _mm512_set1_ps(f32::from_bits(*ap.add(s * MR + i)));
                    acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                    acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
                }
            }
        }
        store(out, &acc);
    }

    /// The bf16 microkernel: each packed word holds two consecutive k-steps, and `vdpbf16ps` adds both
    /// products of a lane to its f32 accumulator.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F and BF16; `a` holds `steps·MR` words and `b` `steps·NR` (asserted).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_bf16(out: TileOut<'_>, a: &[u32], b: &[u32], steps: usize) {
        assert!(a.len() >= steps * MR && b.len() >= steps * NR, "packed_gemm: panel shorter than its steps");
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for s in 0..steps {
            // SAFETY: as in `tile_f32`; the bf16 vectors are reinterpretations of the packed words.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(s * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(s * NR + 16).cast()));
                for i in 0..MR {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(s * MR + i) as i32));
                    acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], ai, b0);
                    acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], ai, b1);
                }
            }
        }
        store(out, &acc);
    }

    /// Writes the accumulators (row `i`'s halves are `acc[2i]`, `acc[2i+1]`) as [`TileOut::put_row`] does:
    /// straight onto C saves a pass through a scratch tile and back (7 % of a product's time in a profile).
    #[target_feature(enable = "avx512f")]
    fn store(out: TileOut<'_>, acc: &[__m512; 2 * MR]) {
        match out {
            TileOut::Scratch(tile) => {
                for (i, row) in tile.chunks_exact_mut(16).enumerate() {
                    // SAFETY: each chunk is 16 f32, exactly one unaligned 512-bit store.
                    unsafe { _mm512_storeu_ps(row.as_mut_ptr(), acc[i]) };
                }
            }
            TileOut::C { c, rsc, beta, bias } => {
                let beta_v = _mm512_set1_ps(beta);
                let bias_v = bias.map(|b| {
                    let b = &b[..NR];
                    // SAFETY: `b` is NR = 32 f32 (bounds-checked above): two unaligned 512-bit loads.
                    unsafe { [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b[16..].as_ptr())] }
                });
                for i in 0..MR {
                    let row = &mut c[i * rsc..][..NR];
                    for (h, half) in row.chunks_exact_mut(16).enumerate() {
                        let p = half.as_mut_ptr();
                        let t = bias_v.map_or(acc[2 * i + h], |b| _mm512_add_ps(acc[2 * i + h], b[h]));
                        // SAFETY: `half` is 16 f32 of C (the slice above is bounds-checked): one unaligned
                        // 512-bit load and store. beta·C + t is one fused multiply-add, as `put_row`'s mul_add.
                        unsafe {
                            let v = if beta == 0.0 { t } else { _mm512_fmadd_ps(beta_v, _mm512_loadu_ps(p), t) };
                            _mm512_storeu_ps(p, v);
                        }
                    }
                }
            }
        }
    }
}

/// One tile through the microkernel this CPU has for `precision`.
pub(super) fn tile(kernel: Kernel, out: TileOut<'_>, a: &[u32], b: &[u32], steps: usize, precision: Precision) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx512 => match precision {
            // SAFETY: `multiply` asserts `runs(kernel, precision)`: the CPU reports the features each kernel
            // enables; panel lengths are asserted inside.
            Precision::F32 => unsafe { avx512::tile_f32(out, a, b, steps) },
            Precision::Bf16 => unsafe { avx512::tile_bf16(out, a, b, steps) },
        },
        _ => microkernel_portable(out, a, b, steps, precision),
    }
}
