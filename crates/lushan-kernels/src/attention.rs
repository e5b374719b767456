//! Causal multi-head self-attention over a packed `qkv` tensor.
//!
//! For each batch `b`, head `h` and query position `t`:
//! `att[b,h,t,:] = softmax_{s ≤ t}(q_t · k_s / √hs)` and `out[b,t,h] = Σ_s att[b,h,t,s] · v_s`.
//! The probabilities are kept (entries above the diagonal are zero) for the backward pass and for inspection.

use crate::vector::{axpy, dot};
use rayon::prelude::*;

/// Forward.
///
/// # Shapes
/// `out`: (B, T, C); `att`: (B, NH, T, T); `qkv`: (B, T, 3C) laid out `[q | k | v]` per position, head `h`
/// owning channels `h·hs .. (h+1)·hs` of each part, `hs = C / NH`.
pub fn forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    debug_assert_eq!(out.len() % (t * c), 0);
    debug_assert_eq!(qkv.len(), out.len() * 3);
    debug_assert_eq!(att.len(), out.len() / c * nh * t);
    out.par_chunks_mut(t * c).zip(att.par_chunks_mut(nh * t * t)).zip(qkv.par_chunks(t * 3 * c)).for_each(
        |((out, att), qkv)| {
            for h in 0..nh {
                for tq in 0..t {
                    let q = &qkv[tq * 3 * c + h * hs..][..hs];
                    let row = &mut att[(h * t + tq) * t..][..t];
                    let mut max = f32::NEG_INFINITY;
                    for (s, a) in row[..=tq].iter_mut().enumerate() {
                        *a = dot(q, &qkv[s * 3 * c + c + h * hs..][..hs]) * scale;
                        max = max.max(*a);
                    }
                    let mut sum = 0.0;
                    for a in &mut row[..=tq] {
                        *a = (*a - max).exp();
                        sum += *a;
                    }
                    let inv = 1.0 / sum;
                    row[..=tq].iter_mut().for_each(|a| *a *= inv);
                    row[tq + 1..].fill(0.0);
                    let o = &mut out[tq * c + h * hs..][..hs];
                    o.fill(0.0);
                    for (s, &a) in row[..=tq].iter().enumerate() {
                        axpy(o, a, &qkv[s * 3 * c + 2 * c + h * hs..][..hs]);
                    }
                }
            }
        },
    );
}

/// Backward, **accumulating** into `dqkv`.
///
/// Forward was `out_t = Σ_s a_ts·v_s` with `a_t = softmax(p_t)`, `p_ts = q_t·k_s·scale`, so
/// `dv_s += a_ts·dout_t`, `da_ts = dout_t·v_s`, `dp_ts = a_ts·(da_ts - Σ_r a_tr·da_tr)`,
/// `dq_t += scale·Σ_s dp_ts·k_s` and `dk_s += scale·dp_ts·q_t`.
/// `scratch` holds one row of `da` per batch element.
///
/// # Shapes
/// `dqkv`, `qkv`: (B, T, 3C); `scratch`: (B, T); `dout`: (B, T, C); `att`: (B, NH, T, T).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    debug_assert_eq!(dqkv.len(), qkv.len());
    debug_assert_eq!(scratch.len() * c, dout.len());
    dqkv.par_chunks_mut(t * 3 * c)
        .zip(scratch.par_chunks_mut(t))
        .zip(dout.par_chunks(t * c))
        .zip(qkv.par_chunks(t * 3 * c).zip(att.par_chunks(nh * t * t)))
        .for_each(|(((dqkv, datt), dout), (qkv, att))| {
            for h in 0..nh {
                for tq in 0..t {
                    let a = &att[(h * t + tq) * t..][..=tq];
                    let g = &dout[tq * c + h * hs..][..hs];
                    let mut weighted = 0.0;
                    for (s, (d, &a)) in datt[..=tq].iter_mut().zip(a).enumerate() {
                        *d = dot(g, &qkv[s * 3 * c + 2 * c + h * hs..][..hs]);
                        weighted += a * *d;
                        axpy(&mut dqkv[s * 3 * c + 2 * c + h * hs..][..hs], a, g);
                    }
                    let q = &qkv[tq * 3 * c + h * hs..][..hs];
                    for (s, (d, &a)) in datt[..=tq].iter_mut().zip(a).enumerate() {
                        *d = a * (*d - weighted) * scale; // now dp_ts (pre-softmax score gradient · scale)
                        axpy(&mut dqkv[s * 3 * c + c + h * hs..][..hs], *d, q);
                    }
                    let dq = &mut dqkv[tq * 3 * c + h * hs..][..hs];
                    for (s, &dp) in datt[..=tq].iter().enumerate() {
                        axpy(dq, dp, &qkv[s * 3 * c + c + h * hs..][..hs]);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    fn reference(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
        let hs = c / nh;
        let mut out = vec![0.0; b * t * c];
        let mut att = vec![0.0; b * nh * t * t];
        for bi in 0..b {
            let at = |tt: usize, part: usize, h: usize, i: usize| qkv[(bi * t + tt) * 3 * c + part * c + h * hs + i];
            for h in 0..nh {
                for tq in 0..t {
                    let scores: Vec<f64> = (0..=tq)
                        .map(|s| (0..hs).map(|i| at(tq, 0, h, i) * at(s, 1, h, i)).sum::<f64>() / (hs as f64).sqrt())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for s in 0..=tq {
                        let a = exps[s] / sum;
                        att[((bi * nh + h) * t + tq) * t + s] = a;
                        for i in 0..hs {
                            out[(bi * t + tq) * c + h * hs + i] += a * at(s, 2, h, i);
                        }
                    }
                }
            }
        }
        (out, att)
    }

    fn check(b: usize, t: usize, c: usize, nh: usize) {
        let mut rng = Rng::new((b * 100 + t * 10 + c) as u64);
        let qkv = random_f32(&mut rng, b * t * 3 * c, 1.5);
        let dout = random_f32(&mut rng, b * t * c, 1.0);
        let mut out = vec![0.0; b * t * c];
        let mut att = vec![7.0; b * nh * t * t];
        forward(&mut out, &mut att, &qkv, t, c, nh);
        let qkv64 = to_f64(&qkv);
        let (ref_out, ref_att) = reference(&qkv64, b, t, c, nh);
        assert_close("attention out", &out, &ref_out, 1e-5, 1e-4);
        assert_close("attention probabilities", &att, &ref_att, 1e-6, 1e-4);
        for row in att.chunks_exact(t) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
        }
        let mut dqkv = vec![0.5; qkv.len()];
        let mut scratch = vec![0.0; b * t];
        backward(&mut dqkv, &mut scratch, &dout, &qkv, &att, t, c, nh);
        let num = numeric_grad(|x| weighted_sum(&reference(x, b, t, c, nh).0, &dout), &qkv64, 1e-6);
        let num: Vec<f64> = num.into_iter().map(|g| g + 0.5).collect();
        assert_close("attention dqkv (accumulated onto 0.5)", &dqkv, &num, 1e-4, 1e-3);
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        check(2, 4, 6, 2);
        check(1, 1, 4, 1);
        check(3, 5, 9, 3);
        check(1, 7, 8, 4);
    }
}
