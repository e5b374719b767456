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
