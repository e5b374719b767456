//! Small vector helpers shared by kernels, written so the compiler vectorises them.

/// Dot product with eight independent accumulators: a plain `.sum()` is a serial chain of additions
/// (float addition is not associative, so the compiler may not reorder it), this keeps FMA lanes full.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let split = a.len() / 8 * 8;
    let (a8, a_rest) = a.split_at(split);
    let (b8, b_rest) = b.split_at(split);
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[j] = dot(q, keys[j·n .. (j+1)·n])` with `n = q.len()`, bit for bit what [`dot`] gives each row: one
/// query against many keys (cached attention). With AVX-512, two keys share a register (each half holds one
/// key's eight accumulators, summed over `k` in [`dot`]'s order, then reduced in its order) and eight keys are
/// in flight, where one key at a time waited on its chain of additions.
pub fn dots(q: &[f32], keys: &[f32], out: &mut [f32]) {
    let n = q.len();
    assert!(n > 0 && keys.len() == out.len() * n, "dots: {} keys' values for {} rows of {n}", keys.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if n >= 8 && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: AVX-512 F/DQ are present (checked); extents asserted above.
        unsafe { avx512::dots(q, keys, out) };
        return;
    }
    for (o, k) in out.iter_mut().zip(keys.chunks_exact(n)) {
        *o = dot(q, k);
    }
}

/// `out = Σ_j weights[j] · rows[j]` (rows of `out.len()`), summed from zero in the order of `j`: bit for bit
/// `out.fill(0.0)` then [`axpy`] row by row. With AVX-512 the sums stay in registers across the rows (up to 64
/// values at a time), where `axpy` stored and reloaded them for every row.
pub fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    let n = out.len();
    assert!(rows.len() == weights.len() * n, "weighted_sum: {} values for {} rows of {n}", rows.len(), weights.len());
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present (checked); extents asserted above.
        unsafe { avx512::weighted_sum(out, weights, rows) };
        return;
    }
    out.fill(0.0);
    for (&a, row) in weights.iter().zip(rows.chunks_exact(n.max(1))) {
        axpy(out, a, row);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::dot;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F; `rows.len() == weights.len() · out.len()` (the caller asserts).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
        let n = out.len();
        const REGS: usize = 4;
        for start in (0..n).step_by(16 * REGS) {
            let len = (n - start).min(16 * REGS);
            // Register r holds values start + 16r .. (masked past `len`).
            let masks: [__mmask16; REGS] = std::array::from_fn(|r| {
                let left = len.saturating_sub(16 * r).min(16);
                ((1u32 << left) - 1) as u16
            });
            let mut acc = [_mm512_setzero_ps(); REGS];
            for (j, &a) in weights.iter().enumerate() {
                let a = _mm512_set1_ps(a);
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the masked load reads row j's values from start + 16r, as many as the mask's
                    // count (start + 16r + count ≤ start + len ≤ n: inside the row); a register wholly past
                    // `len` has a zero mask and reads nothing (masked lanes never fault).
                    let at = j * n + (start + 16 * r).min(n);
                    let v = unsafe { _mm512_maskz_loadu_ps(masks[r], rows[at..].as_ptr()) };
                    // `y += alpha * x`: multiply, then add (Rust never fuses it), as `axpy`.
                    *acc = _mm512_add_ps(*acc, _mm512_mul_ps(a, v));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: the masked store writes the values the loads read, inside `out`.
                unsafe { _mm512_mask_storeu_ps(out[(start + 16 * r).min(n)..].as_mut_ptr(), masks[r], *acc) };
            }
        }
    }

    /// [`dot`]'s final sum for the key in each 256-bit half of `acc` (its eight accumulators in order):
    /// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`, as two values.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce_halves(acc: __m512) -> (f32, f32) {
        // Lane e + lane e ^ 4 (128-bit blocks swapped within each half): a_i + a_{i+4} in lanes 0..4.
        let s1 = _mm512_add_ps(acc, _mm512_shuffle_f32x4::<0b10_11_00_01>(acc, acc));
        // Lane 0: (a0 + a4) + (a1 + a5); lane 2: (a2 + a6) + (a3 + a7).
        let s2 = _mm512_add_ps(s1, _mm512_permute_ps::<0b10_11_00_01>(s1));
        // Lane 0: the two added.
        let s3 = _mm512_add_ps(s2, _mm512_permute_ps::<0b01_00_11_10>(s2));
        let mut lanes = [0.0f32; 16];
        // SAFETY: 16 floats into the local array.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), s3) };
        (lanes[0], lanes[8])
    }

    /// # Safety
    /// AVX-512 F/DQ; `keys.len() == out.len() · q.len()`, `q.len() ≥ 8` (the caller asserts).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn dots(q: &[f32], keys: &[f32], out: &mut [f32]) {
        let n = q.len();
        let split = n / 8 * 8;
        // The products past the last whole eight, added last, as `dot` adds them.
        let tail = |k: &[f32]| -> f32 { q[split..].iter().zip(&k[split..]).map(|(x, y)| x * y).sum() };
        let key = |j: usize| &keys[j * n..(j + 1) * n];
        const PAIRS: usize = 4;
        let mut j = 0;
        while j + 2 * PAIRS <= out.len() {
            let mut acc = [_mm512_setzero_ps(); PAIRS];
            for t in (0..split).step_by(8) {
                // SAFETY: `t + 8 ≤ split ≤ n`: eight values of `q` and of each key row.
                unsafe {
                    let qq = _mm512_broadcast_f32x8(_mm256_loadu_ps(q[t..].as_ptr()));
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let low = _mm256_loadu_ps(key(j + 2 * p)[t..].as_ptr());
                        let high = _mm256_loadu_ps(key(j + 2 * p + 1)[t..].as_ptr());
                        let kk = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(low), high);
                        // Multiply, then add: `dot`'s `acc[i] += x[i] * y[i]` (Rust never fuses it).
                        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(qq, kk));
                    }
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                // SAFETY: AVX-512 F (this function's features).
                let (a, b) = unsafe { reduce_halves(*acc) };
                out[j + 2 * p] = a + tail(key(j + 2 * p));
                out[j + 2 * p + 1] = b + tail(key(j + 2 * p + 1));
            }
            j += 2 * PAIRS;
        }
        for (o, jj) in out[j..].iter_mut().zip(j..) {
            *o = dot(q, key(jj));
        }
    }
}

/// Sum with eight independent accumulators, for the same reason as [`dot`] (softmax rows, attention tiles).
#[inline]
pub fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let split = x.len() / 8 * 8;
    for chunk in x[..split].chunks_exact(8) {
        for i in 0..8 {
            acc[i] += chunk[i];
        }
    }
    acc.iter().sum::<f32>() + x[split..].iter().sum::<f32>()
}

/// `y += alpha·x`.
#[inline]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `e^x`, branch-free so loops over it vectorise: `2^n · p(r)` with `r = x - n·ln2` and a degree-6
/// minimax polynomial (Cephes `expf`), accurate to about 2 ulp; 0 below -87, e^88 above 88. libm's scalar
/// `expf`/`tanhf` took a quarter of a training step in the profile; this takes a few percent.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let below = x < -87.0; // e^x underflows: exactly 0, so masked logits (-∞) get probability 0
    let x = x.clamp(-87.0, 88.0);
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to the nearest integer
    // `shifted` holds round(x·log2e) in its low mantissa bits; reading them with integer ops keeps the loop
    // free of float→int conversions, which would stop it from vectorising.
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let e = p * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if below { 0.0 } else { e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sum_equals_axpy_row_by_row_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(4);
        for n in [1, 5, 16, 17, 48, 64, 65, 100, 128] {
            for rows_n in [0, 1, 2, 7, 33] {
                let weights: Vec<f32> = (0..rows_n).map(|_| rng.next_f32()).collect();
                let mut rows: Vec<f32> =
                    (0..rows_n * n).map(|i| rng.next_normal() as f32 * [1e-4, 1.0, 30.0][i % 3]).collect();
                if rows_n > 1 {
                    rows[0] = -0.0; // −0.0 · a added to +0.0 stays +0.0, as in axpy
                }
                let mut got = vec![f32::NAN; n];
                weighted_sum(&mut got, &weights, &rows);
                let mut want = vec![0.0f32; n];
                for (&a, row) in weights.iter().zip(rows.chunks_exact(n)) {
                    axpy(&mut want, a, row);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n {n}, {rows_n} rows");
            }
        }
    }

    #[test]
    fn dots_equal_dot_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(3);
        for n in [1, 5, 8, 9, 16, 17, 31, 64, 65, 128] {
            // 0..=19 keys: whole groups of eight and every remainder.
            for keys_n in 0..20 {
                let q: Vec<f32> = (0..n).map(|i| rng.next_normal() as f32 * [1e-3, 1.0, 50.0][i % 3]).collect();
                let mut keys: Vec<f32> = (0..keys_n * n).map(|_| rng.next_normal() as f32).collect();
                if keys_n > 3 {
                    keys[n] = -0.0; // signed zeros and a cancelling pair
                    keys[2 * n] = -keys[2 * n];
                }
                let mut out = vec![f32::NAN; keys_n];
                dots(&q, &keys, &mut out);
                for (j, &o) in out.iter().enumerate() {
                    let want = dot(&q, &keys[j * n..(j + 1) * n]);
                    assert_eq!(o.to_bits(), want.to_bits(), "n {n}, {keys_n} keys, key {j}: {o} vs {want}");
                }
            }
        }
    }

    #[test]
    fn exp_fast_matches_f64_exp() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(0.0), 1.0);
    }

    #[test]
    fn dot_and_axpy_match_plain_loops() {
        for n in [0, 1, 7, 8, 9, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
            let mut y = b.clone();
            axpy(&mut y, 2.0, &a);
            for i in 0..n {
                assert_eq!(y[i], b[i] + 2.0 * a[i]);
            }
        }
    }
}
