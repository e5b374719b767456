//! Layer normalisation over the channel dimension: `out = (x - mean)·rstd·w + b`.

use crate::PAR_ROWS;
use rayon::prelude::*;

/// Channels handed to one task in the weight-gradient pass.
const PAR_CHANNELS: usize = 16;

/// Forward. Caches the per-row mean and reciprocal standard deviation for the backward pass.
///
/// # Shapes
/// `out`, `inp`: (N, C); `mean`, `rstd`: (N); `weight`, `bias`: (C).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    c: usize,
    eps: f32,
) {
    debug_assert_eq!(out.len(), inp.len());
    debug_assert_eq!(mean.len() * c, inp.len());
    out.par_chunks_mut(c * PAR_ROWS)
        .zip(mean.par_chunks_mut(PAR_ROWS))
        .zip(rstd.par_chunks_mut(PAR_ROWS))
        .zip(inp.par_chunks(c * PAR_ROWS))
        .for_each(|(((out, mean), rstd), inp)| {
            for (((o, m), r), x) in out.chunks_exact_mut(c).zip(mean).zip(rstd).zip(inp.chunks_exact(c)) {
                (*m, *r) = normalize_row(o, x, weight, bias, eps);
            }
        });
}

/// The residual add and the layer norm after it in one pass: `sum = a + b`, then [`forward`] of `sum`
/// — each row normalised while it is still in L1, instead of written by one pass and read back by the
/// next. Bit for bit [`crate::residual::forward`] followed by [`forward`].
///
/// # Shapes
/// `sum`, `out`, `a`, `b`: (N, C); `mean`, `rstd`: (N); `weight`, `bias`: (C).
#[allow(clippy::too_many_arguments)]
pub fn forward_residual(
    (sum, out): (&mut [f32], &mut [f32]),
    mean: &mut [f32],
    rstd: &mut [f32],
    (a, b): (&[f32], &[f32]),
    weight: &[f32],
    bias: &[f32],
    c: usize,
    eps: f32,
) {
    assert!(
        sum.len() == a.len() && b.len() == a.len() && out.len() == a.len() && mean.len() * c == a.len(),
        "layernorm: residual operands are not all (N, C)"
    );
    sum.par_chunks_mut(c * PAR_ROWS)
        .zip(out.par_chunks_mut(c * PAR_ROWS))
        .zip(mean.par_chunks_mut(PAR_ROWS).zip(rstd.par_chunks_mut(PAR_ROWS)))
        .zip(a.par_chunks(c * PAR_ROWS).zip(b.par_chunks(c * PAR_ROWS)))
        .for_each(|(((sum, out), (mean, rstd)), (a, b))| {
            let rows = sum.chunks_exact_mut(c).zip(out.chunks_exact_mut(c)).zip(mean.iter_mut().zip(rstd));
            for (((s, o), (m, r)), (a, b)) in rows.zip(a.chunks_exact(c).zip(b.chunks_exact(c))) {
                s.iter_mut().zip(a).zip(b).for_each(|((s, &a), &b)| *s = a + b);
                (*m, *r) = normalize_row(o, s, weight, bias, eps);
            }
        });
}

/// One row: `o = (x - μ)·rstd·w + b`; returns `(μ, rstd)`.
#[inline(always)]
fn normalize_row(o: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len();
    let mu = x.iter().sum::<f32>() / c as f32;
    let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
    let s = 1.0 / (var + eps).sqrt();
    for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (x - mu) * s * w + b;
    }
    (mu, s)
}

/// Backward, **accumulating** into `dinp`, `dweight`, `dbias`.
///
/// Forward was `y = x̂·w + b` with `x̂ = (x - μ)·rstd`, so `dw += Σ_rows dy·x̂`, `db += Σ_rows dy` and,
/// with `g = dy·w`, `dx += rstd·(g - mean(g) - x̂·mean(g·x̂))`.
///
/// # Shapes
/// `dinp`, `dout`, `inp`: (N, C); `dweight`, `dbias`, `weight`: (C); `mean`, `rstd`: (N).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    debug_assert_eq!(dinp.len(), inp.len());
    debug_assert_eq!(dout.len(), inp.len());
    dinp.par_chunks_mut(c * PAR_ROWS)
        .zip(dout.par_chunks(c * PAR_ROWS))
        .zip(inp.par_chunks(c * PAR_ROWS))
        .zip(mean.par_chunks(PAR_ROWS).zip(rstd.par_chunks(PAR_ROWS)))
        .for_each(|(((dinp, dout), inp), (mean, rstd))| {
            for ((((dx, dy), x), &mu), &s) in
                dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(inp.chunks_exact(c)).zip(mean).zip(rstd)
            {
                let mut mean_g = 0.0f32;
                let mut mean_gx = 0.0f32;
                for ((&dy, &x), &w) in dy.iter().zip(x).zip(weight) {
                    let g = dy * w;
                    mean_g += g;
                    mean_gx += g * (x - mu) * s;
                }
                mean_g /= c as f32;
                mean_gx /= c as f32;
                for (((d, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
                    let xhat = (x - mu) * s;
                    *d += s * (dy * w - mean_g - xhat * mean_gx);
                }
            }
        });
    // Weight and bias gradients reduce over rows: split by channel so each task owns its outputs.
    dweight.par_chunks_mut(PAR_CHANNELS).zip(dbias.par_chunks_mut(PAR_CHANNELS)).enumerate().for_each(
        |(chunk, (dw, db))| {
            let c0 = chunk * PAR_CHANNELS;
            for ((dy, x), (&mu, &s)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
                for (j, (w, b)) in dw.iter_mut().zip(db.iter_mut()).enumerate() {
                    let g = dy[c0 + j];
                    *w += g * (x[c0 + j] - mu) * s;
                    *b += g;
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(x: &[f64], w: &[f64], b: &[f64], c: usize, eps: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c) {
            let mu = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
            let s = 1.0 / (var + eps).sqrt();
            out.extend(row.iter().zip(w).zip(b).map(|((x, w), b)| (x - mu) * s * w + b));
        }
        out
    }

    fn check(n: usize, c: usize) {
        let eps = 1e-5;
        let mut rng = Rng::new(n as u64 * 31 + c as u64);
        let x = random_f32(&mut rng, n * c, 2.0);
        let w = random_f32(&mut rng, c, 1.0);
        let b = random_f32(&mut rng, c, 1.0);
        let dout = random_f32(&mut rng, n * c, 1.0);
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, c, eps as f32);
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
        assert_close("layernorm out", &out, &reference(&x64, &w64, &b64, c, eps), 1e-5, 1e-4);

        let (mut dx, mut dw, mut db) = (vec![0.25; n * c], vec![0.25; c], vec![0.25; c]);
        backward(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, c);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| weighted_sum(&reference(x, w, b, c, eps), &dout);
        let plus = |g: Vec<f64>| g.into_iter().map(|v| v + 0.25).collect::<Vec<_>>();
        let ndx = plus(numeric_grad(|p| loss(p, &w64, &b64), &x64, 1e-6));
        let ndw = plus(numeric_grad(|p| loss(&x64, p, &b64), &w64, 1e-6));
        let ndb = plus(numeric_grad(|p| loss(&x64, &w64, p), &b64, 1e-6));
        assert_close("layernorm dinp", &dx, &ndx, 1e-4, 1e-3);
        assert_close("layernorm dweight", &dw, &ndw, 1e-4, 1e-3);
        assert_close("layernorm dbias", &db, &ndb, 1e-4, 1e-3);
    }

    #[test]
    fn residual_and_norm_in_one_pass_equal_the_two_passes_bit_for_bit() {
        let mut rng = Rng::new(11);
        for (n, c) in [(1, 1), (3, 7), (70, 96), (5, 768)] {
            let a = random_f32(&mut rng, n * c, 2.0);
            let b = random_f32(&mut rng, n * c, 2.0);
            let (w, bias) = (random_f32(&mut rng, c, 1.0), random_f32(&mut rng, c, 1.0));
            let (mut sum, mut out, mut mean, mut rstd) =
                (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            forward_residual((&mut sum, &mut out), &mut mean, &mut rstd, (&a, &b), &w, &bias, c, 1e-5);
            let mut sum2 = vec![0.0; n * c];
            crate::residual::forward(&mut sum2, &a, &b);
            let (mut out2, mut mean2, mut rstd2) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            forward(&mut out2, &mut mean2, &mut rstd2, &sum2, &w, &bias, c, 1e-5);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&sum), bits(&sum2), "sum n{n} c{c}");
            assert_eq!(bits(&out), bits(&out2), "out n{n} c{c}");
            assert_eq!((bits(&mean), bits(&rstd)), (bits(&mean2), bits(&rstd2)), "statistics n{n} c{c}");
        }
    }

    #[test]
    fn matches_f64_reference_and_finite_differences() {
        check(5, 7);
        check(1, 3);
        check(37, 19);
        check(3, 40);
    }
}
