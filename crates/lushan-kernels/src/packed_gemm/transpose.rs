//! The transposing pack of [`super::pack`] for f32 operands whose k is contiguous (a weight read as `Wᵀ`,
//! the rows of A): `dst[s·width + x] = data[(x0 + x)·xs + k0 + s]`. With AVX-512 F, 16 × 16 blocks are
//! transposed in registers (16 row loads, 64 shuffles, 16 stores) instead of one scalar store per value.

#[cfg(target_arch = "x86_64")]
use super::{Kernel, Precision, runs};

/// Writes `dst[s·width + x] = data[(x0 + x)·xs + k0 + s]` as f32 bits for `x < valid`, `s < steps`; the
/// words of `x ≥ valid` are left as they are.
///
/// # Panics
/// If `valid > width`, `dst` is shorter than `steps·width`, or `data` does not hold the rows.
pub(super) fn transpose_rows(
    dst: &mut [u32],
    data: &[f32],
    xs: usize,
    (x0, valid): (usize, usize),
    (k0, steps): (usize, usize),
    width: usize,
) {
    if valid == 0 || steps == 0 {
        return;
    }
    assert!(valid <= width && dst.len() >= steps * width, "packed_gemm: transpose outside its panel");
    assert!((x0 + valid - 1) * xs + k0 + steps <= data.len(), "packed_gemm: transpose outside its operand");
    #[cfg(target_arch = "x86_64")]
    if runs(Kernel::Avx512, Precision::F32) {
        // SAFETY: the CPU has AVX-512 F (checked); the bounds the kernel reads and writes are asserted above.
        #[allow(unsafe_code)]
        unsafe {
            avx512::transpose_rows(dst, data, xs, (x0, valid), (k0, steps), width)
        };
        return;
    }
    transpose_rows_portable(dst, data, xs, (x0, valid), (k0, steps), width);
}

/// [`transpose_rows`] one value at a time, in blocks of 16 steps so each row's reads are whole cache lines
/// and the block's writes stay in L1: the twin the vector kernel is tested against.
pub(super) fn transpose_rows_portable(
    dst: &mut [u32],
    data: &[f32],
    xs: usize,
    (x0, valid): (usize, usize),
    (k0, steps): (usize, usize),
    width: usize,
) {
    const BLOCK: usize = 16;
    for s0 in (0..steps).step_by(BLOCK) {
        let n = BLOCK.min(steps - s0);
        let block = &mut dst[s0 * width..][..n * width];
        for x in 0..valid {
            let src = &data[(x0 + x) * xs + k0 + s0..][..n];
            for (s, v) in src.iter().enumerate() {
                block[s * width + x] = v.to_bits();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX-512 F; `valid ≤ width`, `dst.len() ≥ steps·width` and `data` holds every row's
    /// `steps` values from `k0` (the caller asserts them).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_rows(
        dst: &mut [u32],
        data: &[f32],
        xs: usize,
        (x0, valid): (usize, usize),
        (k0, steps): (usize, usize),
        width: usize,
    ) {
        for s0 in (0..steps).step_by(16) {
            let n = 16.min(steps - s0);
            let load_mask: __mmask16 = ((1u32 << n) - 1) as u16;
            for xc in (0..valid).step_by(16) {
                let rows = 16.min(valid - xc);
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, row) in r.iter_mut().enumerate().take(rows) {
                    // SAFETY: row x0+xc+i < x0+valid and lanes < n ≤ steps − s0: inside `data` (asserted by
                    // the caller); masked-off lanes are not read.
                    *row = unsafe { _mm512_maskz_loadu_ps(load_mask, data.as_ptr().add((x0 + xc + i) * xs + k0 + s0)) };
                }
                let t = transpose16(r);
                let store_mask: __mmask16 = ((1u32 << rows) - 1) as u16;
                for (s, col) in t.iter().enumerate().take(n) {
                    // SAFETY: word (s0+s)·width + xc + lane < steps·width ≤ dst.len() for lanes < rows ≤
                    // width − xc; masked-off lanes are not written.
                    unsafe {
                        _mm512_mask_storeu_ps(dst.as_mut_ptr().add((s0 + s) * width + xc).cast(), store_mask, *col)
                    };
                }
            }
        }
    }

    /// The transpose of a 16 × 16 block held as 16 rows: result `j` holds element `j` of every row.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved by 32-bit element, then by 64-bit pair, then 128-bit lanes twice.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b) = (4 * i, 4 * i + 2);
            u[4 * i] = _mm512_shuffle_ps::<0x44>(t[a], t[b]);
            u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[a], t[b]);
            u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[a + 1], t[b + 1]);
            u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[a + 1], t[b + 1]);
        }
        for i in 0..2 {
            for j in 0..4 {
                let (a, b) = (8 * i + j, 8 * i + j + 4);
                t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(u[a], u[b]);
                t[8 * i + j + 4] = _mm512_shuffle_f32x4::<0xDD>(u[a], u[b]);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            out[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
            out[j + 8] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[j + 8]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn the_vector_transpose_equals_the_scalar_one_on_whole_and_ragged_blocks() {
        let mut rng = Rng::new(21);
        for (valid, width, steps, xs) in
            [(32, 32, 512, 768), (12, 12, 40, 50), (7, 12, 3, 9), (20, 32, 17, 33), (1, 32, 1, 1)]
        {
            let (x0, k0) = (3, 5);
            let data: Vec<f32> = (0..(x0 + valid) * xs + k0 + steps).map(|_| rng.next_normal() as f32).collect();
            let (mut got, mut want) = (vec![7u32; steps * width], vec![7u32; steps * width]);
            transpose_rows(&mut got, &data, xs, (x0, valid), (k0, steps), width);
            transpose_rows_portable(&mut want, &data, xs, (x0, valid), (k0, steps), width);
            assert_eq!(got, want, "valid {valid} width {width} steps {steps}");
            assert_eq!(want[width - 1], if valid < width { 7 } else { data[(x0 + width - 1) * xs + k0].to_bits() });
        }
    }
}
