//! GELU, tanh approximation (GPT-2's `gelu_new`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.

use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEFF: f32 = 0.044_715;
use crate::vector::exp_fast;

const CHUNK: usize = 4096;

/// `tanh(x) = (e^{2x} - 1) / (e^{2x} + 1)`, clamped where tanh is ±1 in f32; absolute error ≈ 2e-7.
#[inline(always)]
pub fn tanh_fast(x: f32) -> f32 {
    let e = exp_fast(2.0 * x.clamp(-9.0, 9.0));
    (e - 1.0) / (e + 1.0)
}

/// Forward.
///
/// # Shapes
/// `out`, `inp`: any length, equal.
pub fn forward(out: &mut [f32], inp: &[f32]) {
    debug_assert_eq!(out.len(), inp.len());
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(out, inp)| forward_row(out, inp));
}

/// [`forward`] on one thread: what a GEMM epilogue runs on each finished tile row (bit for bit the same).
#[inline]
pub fn forward_row(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let u = SQRT_2_OVER_PI * (x + COEFF * x * x * x);
        *o = 0.5 * x * (1.0 + tanh_fast(u));
    }
}

/// `dy/dx` of [`forward`] at `x` (derived at [`backward`]).
#[inline(always)]
fn slope(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + COEFF * x * x * x);
    let th = tanh_fast(u);
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * COEFF * x * x)
}

/// `dinp = dout·gelu'(inp)`, **overwriting** `dinp`, on one thread: the backward as a GEMM epilogue runs it
/// on each finished tile row of `dout` (bit for bit [`backward`] into zeros, but for the sign of a zero).
#[inline]
pub fn backward_row_into(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
        *d = g * slope(x);
    }
}

/// Backward, **accumulating**: forward was `y = 0.5·x·(1 + tanh u)` with `u = √(2/π)(x + 0.044715x³)`, so
/// `dx += dy·(0.5(1 + tanh u) + 0.5·x·(1 - tanh² u)·√(2/π)(1 + 3·0.044715x²))`.
///
/// # Shapes
/// `dinp`, `inp`, `dout`: any length, equal.
pub fn backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    debug_assert_eq!(dinp.len(), inp.len());
    debug_assert_eq!(dout.len(), inp.len());
    dinp.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).zip(dout.par_chunks(CHUNK)).for_each(
        |((dinp, inp), dout)| {
            for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
                *d += g * slope(x);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(x: &[f64]) -> Vec<f64> {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        x.iter().map(|&x| 0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())).collect()
    }

    #[test]
    fn fast_tanh_matches_libm() {
        let mut worst = 0.0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((tanh_fast(x) - x.tanh()).abs());
        }
        assert!(worst < 5e-7, "worst abs error {worst}");
        assert_eq!(tanh_fast(100.0), 1.0);
        assert_eq!(tanh_fast(-100.0), -1.0);
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        let mut rng = Rng::new(5);
        for n in [1, 7, 5000] {
            let x = random_f32(&mut rng, n, 4.0);
            let dout = random_f32(&mut rng, n, 1.0);
            let mut y = vec![0.0; n];
            forward(&mut y, &x);
            let x64 = to_f64(&x);
            assert_close("gelu out", &y, &reference(&x64), 1e-6, 1e-5);
            let mut dx = vec![1.0; n];
            backward(&mut dx, &x, &dout);
            // Elementwise: the numeric gradient of Σ w·y w.r.t. x_i only needs y_i.
            let num: Vec<f64> = x64
                .iter()
                .zip(&dout)
                .map(|(&xi, &w)| {
                    let e = 1e-6;
                    let f = |v: f64| reference(&[v])[0];
                    1.0 + w as f64 * (f(xi + e) - f(xi - e)) / (2.0 * e)
                })
                .collect();
            assert_close("gelu dinp (accumulated onto 1)", &dx, &num, 1e-5, 1e-4);
        }
    }
}
