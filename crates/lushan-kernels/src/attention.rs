//! Causal multi-head self-attention over a packed `qkv` tensor.
//!
//! For each batch `b`, head `h` and query position `t`:
//! `att[b,h,t,:] = softmax_{s ≤ t}(q_t · k_s / √hs)` and `out[b,t,h] = Σ_s att[b,h,t,s] · v_s`.
//! The probabilities are kept (entries above the diagonal are zero) for the backward pass and for inspection.

use crate::matmul::gemm_serial;
use crate::softmax::softmax_in_place;
use crate::vector::{axpy, dot};
use rayon::prelude::*;

/// Query rows computed together. Causal attention needs, for query rows `r0..r1`, only the keys `0..r1`:
/// going a block of rows at a time skips all but a thin band of the zero upper triangle, so at T = 256 the
/// products do 56 % of the full `T × T` work, and at T = 1024 51 %.
const QUERY_BLOCK: usize = 32;

/// The query-row blocks `(r0, r1)` of a length-`t` sequence.
fn query_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(QUERY_BLOCK).map(move |r0| (r0, (r0 + QUERY_BLOCK).min(t)))
}

/// Forward, per batch element and head as matrix products over blocks of query rows `r0..r1`:
/// `S[r0..r1, ..r1] = scale·Q[r0..r1]·K[..r1]ᵀ`, causal softmax of each row of `S` in place (the
/// probabilities are kept in `att`, zero above the diagonal), then `O[r0..r1] = P[r0..r1, ..r1]·V[..r1]`.
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
    let c3 = 3 * c;
    out.par_chunks_mut(t * c).zip(att.par_chunks_mut(nh * t * t)).zip(qkv.par_chunks(t * c3)).for_each(
        |((out, att), qkv)| {
            for (h, p) in att.chunks_exact_mut(t * t).enumerate() {
                let (q, k, v) = (&qkv[h * hs..], &qkv[c + h * hs..], &qkv[2 * c + h * hs..]);
                for (r0, r1) in query_blocks(t) {
                    let rows = r1 - r0;
                    gemm_serial(
                        (rows, hs, r1),
                        scale,
                        &q[r0 * c3..],
                        (c3, 1),
                        k,
                        (1, c3),
                        0.0,
                        &mut p[r0 * t..],
                        (t, 1),
                    );
                    for (tq, row) in p[r0 * t..r1 * t].chunks_exact_mut(t).enumerate().map(|(i, row)| (r0 + i, row)) {
                        softmax_in_place(&mut row[..=tq]);
                        row[tq + 1..].fill(0.0);
                    }
                    let o = &mut out[r0 * c + h * hs..];
                    gemm_serial((rows, r1, hs), 1.0, &p[r0 * t..], (t, 1), v, (c3, 1), 0.0, o, (c, 1));
                }
            }
        },
    );
}

/// Backward, **accumulating** into `dqkv`.
///
/// Forward was `O = P·V`, `P = softmax(S)` row-wise, `S = scale·Q·Kᵀ`, so
/// `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dQ += scale·dS·K`, `dK += scale·dSᵀ·Q`.
/// `scratch` holds `dP`/`dS` for one head per batch element.
///
/// # Shapes
/// `dqkv`, `qkv`: (B, T, 3C); `scratch`: (B, T, T); `dout`: (B, T, C); `att`: (B, NH, T, T).
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
    let c3 = 3 * c;
    debug_assert_eq!(dqkv.len(), qkv.len());
    debug_assert_eq!(scratch.len() * c, dout.len() * t);
    dqkv.par_chunks_mut(t * c3)
        .zip(scratch.par_chunks_mut(t * t))
        .zip(dout.par_chunks(t * c))
        .zip(qkv.par_chunks(t * c3).zip(att.par_chunks(nh * t * t)))
        .for_each(|(((dqkv, ds), dout), (qkv, att))| {
            for (h, p) in att.chunks_exact(t * t).enumerate() {
                let (q, k, v) = (&qkv[h * hs..], &qkv[c + h * hs..], &qkv[2 * c + h * hs..]);
                let dout_h = &dout[h * hs..];
                // Query rows r0..r1 touch keys ..r1 only (P and dS are zero above the diagonal).
                for (r0, r1) in query_blocks(t) {
                    let rows = r1 - r0;
                    let (p_blk, dout_blk) = (&p[r0 * t..], &dout_h[r0 * c..]);
                    let dv = &mut dqkv[2 * c + h * hs..];
                    gemm_serial((r1, rows, hs), 1.0, p_blk, (1, t), dout_blk, (c, 1), 1.0, dv, (c3, 1));
                    let ds_blk = &mut ds[r0 * t..];
                    gemm_serial((rows, hs, r1), 1.0, dout_blk, (c, 1), v, (1, c3), 0.0, ds_blk, (t, 1));
                    let p_rows = p[r0 * t..r1 * t].chunks_exact(t);
                    for (i, (d, p)) in ds[r0 * t..r1 * t].chunks_exact_mut(t).zip(p_rows).enumerate() {
                        let tq = r0 + i;
                        let weighted = dot(&p[..=tq], &d[..=tq]);
                        for (d, &p) in d[..=tq].iter_mut().zip(&p[..=tq]) {
                            *d = p * (*d - weighted) * scale;
                        }
                        d[tq + 1..].fill(0.0);
                    }
                    let ds_blk = &ds[r0 * t..];
                    let dq = &mut dqkv[r0 * c3 + h * hs..];
                    gemm_serial((rows, r1, hs), 1.0, ds_blk, (t, 1), k, (c3, 1), 1.0, dq, (c3, 1));
                    let dk = &mut dqkv[c + h * hs..];
                    gemm_serial((r1, rows, hs), 1.0, ds_blk, (1, t), &q[r0 * c3..], (c3, 1), 1.0, dk, (c3, 1));
                }
            }
        });
}

/// The plain-loop forward [`forward`] is tested against.
///
/// # Shapes
/// `out`: (B, T, C); `att`: (B, NH, T, T); `qkv`: (B, T, 3C) laid out `[q | k | v]` per position, head `h`
/// owning channels `h·hs .. (h+1)·hs` of each part, `hs = C / NH`.
pub fn forward_naive(out: &mut [f32], att: &mut [f32], qkv: &[f32], t: usize, c: usize, nh: usize) {
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

/// The plain-loop backward [`backward`] is tested against (accumulating, like it); `scratch` is (B, T).
///
/// Forward was `out_t = Σ_s a_ts·v_s` with `a_t = softmax(p_t)`, `p_ts = q_t·k_s·scale`, so
/// `dv_s += a_ts·dout_t`, `da_ts = dout_t·v_s`, `dp_ts = a_ts·(da_ts - Σ_r a_tr·da_tr)`,
/// `dq_t += scale·Σ_s dp_ts·k_s` and `dk_s += scale·dp_ts·q_t`.
/// `scratch` holds one row of `da` per batch element.
///
/// # Shapes
/// `dqkv`, `qkv`: (B, T, 3C); `scratch`: (B, T); `dout`: (B, T, C); `att`: (B, NH, T, T).
#[allow(clippy::too_many_arguments)]
pub fn backward_naive(
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
        let (mut naive_out, mut naive_att) = (vec![0.0; b * t * c], vec![7.0; b * nh * t * t]);
        forward_naive(&mut naive_out, &mut naive_att, &qkv, t, c, nh);
        assert_close("attention out vs naive", &out, &to_f64(&naive_out), 1e-5, 1e-4);
        assert_close("attention probabilities vs naive", &att, &to_f64(&naive_att), 1e-6, 1e-4);
        let mut dqkv = vec![0.5; qkv.len()];
        let mut scratch = vec![0.0; b * t * t];
        backward(&mut dqkv, &mut scratch, &dout, &qkv, &att, t, c, nh);
        let mut naive_dqkv = vec![0.5; qkv.len()];
        let mut naive_scratch = vec![0.0; b * t];
        backward_naive(&mut naive_dqkv, &mut naive_scratch, &dout, &qkv, &att, t, c, nh);
        assert_close("attention dqkv vs naive", &dqkv, &to_f64(&naive_dqkv), 1e-5, 1e-4);
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
        check(2, 19, 12, 3);
        // Longer than one query block: the blocked products must still see every earlier key.
        check(1, 2 * QUERY_BLOCK + 5, 8, 2);
    }
}
