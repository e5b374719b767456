//! Deterministic reductions: fixed-size chunks summed in parallel, then the partial sums added in order,
//! so the result does not depend on the thread count or on work stealing.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `sum(x²)` in f64 (used for the global gradient norm).
///
/// # Shapes
/// `x`: any length.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> =
        x.par_chunks(CHUNK).map(|chunk| chunk.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
    partials.iter().sum()
}

/// `x *= factor` (used to clip gradients).
pub fn scale(x: &mut [f32], factor: f32) {
    x.par_chunks_mut(CHUNK).for_each(|chunk| chunk.iter_mut().for_each(|v| *v *= factor));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_matches_serial_and_scale_scales() {
        let mut x: Vec<f32> = (0..100_003).map(|i| ((i % 17) as f32 - 8.0) * 0.25).collect();
        let serial: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
        assert!((sum_of_squares(&x) - serial).abs() < 1e-9 * serial);
        scale(&mut x, 0.5);
        assert!((sum_of_squares(&x) - serial / 4.0).abs() < 1e-9 * serial);
    }
}
