//! Softmax + cross-entropy, fused: the backward goes straight from per-row losses to logits.

use crate::PAR_ROWS;
use crate::softmax::softmax_row;
use rayon::prelude::*;

/// A target that contributes no loss and no gradient (padding, prompt tokens of an instruction pair).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Forward: `probs = softmax(logits)` per row and `losses[i] = -ln probs[i, targets[i]]`
/// (0 where the target is [`IGNORE_INDEX`]). Targets other than `IGNORE_INDEX` must be `< V`.
///
/// # Shapes
/// `losses`, `targets`: (N); `probs`, `logits`: (N, V).
pub fn forward(losses: &mut [f32], probs: &mut [f32], logits: &[f32], targets: &[u32], v: usize) {
    debug_assert_eq!(probs.len(), logits.len());
    debug_assert_eq!(losses.len() * v, logits.len());
    debug_assert_eq!(targets.len(), losses.len());
    losses
        .par_chunks_mut(PAR_ROWS)
        .zip(probs.par_chunks_mut(v * PAR_ROWS))
        .zip(logits.par_chunks(v * PAR_ROWS).zip(targets.par_chunks(PAR_ROWS)))
        .for_each(|((losses, probs), (logits, targets))| {
            for ((loss, p), (z, &target)) in
                losses.iter_mut().zip(probs.chunks_exact_mut(v)).zip(logits.chunks_exact(v).zip(targets))
            {
                // ln-sum-exp form keeps the loss finite when the target's probability underflows.
                let log_partition = softmax_row(p, z);
                *loss = if target == IGNORE_INDEX { 0.0 } else { log_partition - z[target as usize] };
            }
        });
}

/// Backward, **accumulating**: forward was `loss_i = -ln softmax(z_i)[y_i]`, so
/// `dz_i += dloss_i·(p_i - onehot(y_i))`. Rows whose target is [`IGNORE_INDEX`] get nothing.
///
/// # Shapes
/// `dlogits`, `probs`: (N, V); `dlosses`, `targets`: (N).
pub fn backward(dlogits: &mut [f32], dlosses: &[f32], probs: &[f32], targets: &[u32], v: usize) {
    debug_assert_eq!(dlogits.len(), probs.len());
    dlogits
        .par_chunks_mut(v * PAR_ROWS)
        .zip(probs.par_chunks(v * PAR_ROWS))
        .zip(dlosses.par_chunks(PAR_ROWS).zip(targets.par_chunks(PAR_ROWS)))
        .for_each(|((dz, probs), (dlosses, targets))| {
            for ((dz, p), (&dl, &target)) in
                dz.chunks_exact_mut(v).zip(probs.chunks_exact(v)).zip(dlosses.iter().zip(targets))
            {
                if target == IGNORE_INDEX {
                    continue;
                }
                for (d, &p) in dz.iter_mut().zip(p) {
                    *d += dl * p;
                }
                dz[target as usize] -= dl;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(z: &[f64], targets: &[u32], v: usize) -> Vec<f64> {
        z.chunks_exact(v)
            .zip(targets)
            .map(|(row, &t)| {
                if t == IGNORE_INDEX {
                    return 0.0;
                }
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                lse - row[t as usize]
            })
            .collect()
    }

    #[test]
    fn matches_reference_and_finite_differences_with_ignored_rows() {
        let mut rng = Rng::new(13);
        let (n, v) = (19, 11);
        let z = random_f32(&mut rng, n * v, 4.0);
        let targets: Vec<u32> = (0..n).map(|i| if i % 5 == 3 { IGNORE_INDEX } else { (i * 7 % v) as u32 }).collect();
        let (mut losses, mut probs) = (vec![0.0; n], vec![0.0; n * v]);
        forward(&mut losses, &mut probs, &z, &targets, v);
        let z64 = to_f64(&z);
        assert_close("cross-entropy losses", &losses, &reference(&z64, &targets, v), 1e-5, 1e-5);
        let dl = random_f32(&mut rng, n, 1.0);
        let mut dz = vec![0.5; n * v];
        backward(&mut dz, &dl, &probs, &targets, v);
        let num: Vec<f64> = numeric_grad(|x| weighted_sum(&reference(x, &targets, v), &dl), &z64, 1e-6)
            .iter()
            .map(|g| g + 0.5)
            .collect();
        assert_close("cross-entropy dlogits", &dz, &num, 1e-5, 1e-4);
    }

    #[test]
    fn loss_stays_finite_when_target_probability_underflows() {
        let (mut loss, mut p) = (vec![0.0], vec![0.0; 2]);
        forward(&mut loss, &mut p, &[200.0, -200.0], &[1], 2);
        assert!((loss[0] - 400.0).abs() < 1e-3, "{}", loss[0]);
    }
}
