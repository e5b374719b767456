//! Row-wise softmax, numerically stabilised by subtracting the row maximum.

use crate::PAR_ROWS;
use crate::vector::{exp_fast, sum8};
use rayon::prelude::*;

/// Softmax of one row into `probs` (no allocation; used by sampling and inspection too). Returns
/// `ln Σ e^logits` (the log-partition), which cross-entropy needs.
pub fn softmax_row(probs: &mut [f32], logits: &[f32]) -> f32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = exp_fast(l - max);
    }
    let sum = sum8(probs);
    let inv = 1.0 / sum;
    probs.iter_mut().for_each(|p| *p *= inv);
    max + sum.ln()
}

/// Softmax of one row, overwriting it.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_fast(*x - max);
    }
    let sum = sum8(row);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Forward.
///
/// # Shapes
/// `probs`, `logits`: (N, V).
pub fn forward(probs: &mut [f32], logits: &[f32], v: usize) {
    debug_assert_eq!(probs.len(), logits.len());
    probs.par_chunks_mut(v * PAR_ROWS).zip(logits.par_chunks(v * PAR_ROWS)).for_each(|(p, l)| {
        for (p, l) in p.chunks_exact_mut(v).zip(l.chunks_exact(v)) {
            softmax_row(p, l);
        }
    });
}

/// Backward, **accumulating**: forward was `p = softmax(z)`, so `dz += p ⊙ (dp - Σ p·dp)`.
///
/// # Shapes
/// `dlogits`, `probs`, `dprobs`: (N, V).
pub fn backward(dlogits: &mut [f32], probs: &[f32], dprobs: &[f32], v: usize) {
    debug_assert_eq!(dlogits.len(), probs.len());
    dlogits.par_chunks_mut(v).zip(probs.par_chunks(v)).zip(dprobs.par_chunks(v)).for_each(|((dz, p), dp)| {
        let dot: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
        for ((dz, &p), &dp) in dz.iter_mut().zip(p).zip(dp) {
            *dz += p * (dp - dot);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(z: &[f64], v: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for row in z.chunks_exact(v) {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
            out.extend(row.iter().map(|x| (x - max).exp() / sum));
        }
        out
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        let mut rng = Rng::new(11);
        for (n, v) in [(1, 1), (3, 5), (20, 17)] {
            let z = random_f32(&mut rng, n * v, 5.0);
            let mut p = vec![0.0; n * v];
            forward(&mut p, &z, v);
            let z64 = to_f64(&z);
            assert_close("softmax probs", &p, &reference(&z64, v), 1e-7, 1e-5);
            let dp = random_f32(&mut rng, n * v, 1.0);
            let mut dz = vec![0.25; n * v];
            backward(&mut dz, &p, &dp, v);
            let num: Vec<f64> =
                numeric_grad(|x| weighted_sum(&reference(x, v), &dp), &z64, 1e-6).iter().map(|g| g + 0.25).collect();
            assert_close("softmax dlogits", &dz, &num, 1e-5, 1e-4);
        }
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let mut p = vec![0.0; 3];
        let log_partition = softmax_row(&mut p, &[1000.0, 1000.0, -1000.0]);
        assert!((log_partition - (1000.0 + 2f32.ln())).abs() < 1e-3);
        assert_eq!(p, vec![0.5, 0.5, 0.0]);
        let mut row = vec![1000.0, 1000.0, -1000.0];
        softmax_in_place(&mut row);
        assert_eq!(row, p);
    }
}
