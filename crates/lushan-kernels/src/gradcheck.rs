//! Test helpers: f64 reference math, central finite differences and tolerant comparisons.

use crate::rng::Rng;

pub fn random_f32(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect()
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central differences of a scalar f64 function at `x`.
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = probe[i];
            probe[i] = orig + eps;
            let plus = f(&probe);
            probe[i] = orig - eps;
            let minus = f(&probe);
            probe[i] = orig;
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

/// `sum(out .* weights)`: the scalar whose gradient w.r.t. `out` is `weights`.
pub fn weighted_sum(out: &[f64], weights: &[f32]) -> f64 {
    out.iter().zip(weights).map(|(&o, &w)| o * w as f64).sum()
}

/// Panics naming `what` and the worst index when `|got - want| > atol + rtol·|want|` anywhere.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 || g.is_nan() {
            worst = (i, if g.is_nan() { f64::INFINITY } else { excess });
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!("{what}: mismatch at index {i}: got {} want {} (atol {atol}, rtol {rtol})", got[i], want[i]);
    }
}
