//! Causal multi-head self-attention for training that never materialises the `T × T` probabilities: the CPU
//! analogue of FlashAttention-2.
//!
//! The same function as [`crate::attention`] — `out[b,t,h] = Σ_{s≤t} softmax_s(q_t·k_s/√hs) · v_s` — computed
//! over (query tile × key tile) blocks with an online softmax. A tile of scores lives in a stack buffer (one
//! L1-sized block); tiles above the diagonal are never touched. The forward keeps only each row's
//! log-sum-exp `lse_t = ln Σ_{s≤t} e^{score_ts}`, from which the backward recomputes each tile's
//! probabilities `P = e^{S - lse}`. At T = 1024 this keeps 1024·NH values per sequence and layer instead of
//! 1024²·NH.
//!
//! [`crate::attention`] keeps the probabilities (inspection reads them); this module is for passes that
//! only need the output and the gradient.

use crate::PAR_ROWS;
use crate::matmul::gemm_serial;
use crate::vector::{dot, exp_fast, sum8};
use rayon::prelude::*;

/// Query rows and keys per tile. 64 × 64 scores are 16 KiB: the score tile, the key/value rows it reads
/// (hs = 64: 16 KiB each) and the output rows stay in a 48 KiB L1 and a 2 MiB L2.
const TILE: usize = 64;

/// Scratch values [`backward`] needs per batch element: per head, `dQ`, `dK`, `dV` head-major (3·T·hs) and
/// `D_t = dO_t·O_t` (T) — `T·(3C + NH)` in all.
pub fn backward_scratch_len(t: usize, c: usize, nh: usize) -> usize {
    t * (3 * c + nh)
}

/// Maximum with eight independent lanes, so the loop vectorises (a plain fold is a serial chain).
fn max8(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let split = x.len() / 8 * 8;
    for chunk in x[..split].chunks_exact(8) {
        for i in 0..8 {
            lanes[i] = lanes[i].max(chunk[i]);
        }
    }
    x[split..].iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Forward: per query tile `Q_i` (rows `r0..r1`), head by head, for every key tile `K_j` with `j ≤ i`:
/// `S = scale·Q_i·K_jᵀ` (keys after the query masked on the diagonal tile), running row maximum
/// `m' = max(m, max S)`, `P = e^{S - m'}`, `l' = l·e^{m - m'} + Σ P`, `O = O·e^{m - m'} + P·V_j`; at the end
/// `O /= l` and `lse = m + ln l`. Query tiles run in parallel (their output rows are disjoint).
///
/// # Shapes
/// `out`: (B, T, C); `lse`: (B, T, NH); `qkv`: (B, T, 3C) laid out `[q | k | v]` per position, head `h`
/// owning channels `h·hs .. (h+1)·hs` of each part, `hs = C / NH`.
pub fn forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    debug_assert_eq!(out.len() % (t * c), 0);
    debug_assert_eq!(qkv.len(), out.len() * 3);
    debug_assert_eq!(lse.len() * c, out.len() * nh);
    out.par_chunks_mut(t * c).zip(lse.par_chunks_mut(t * nh)).zip(qkv.par_chunks(t * c3)).for_each(
        |((out, lse), qkv)| {
            out.par_chunks_mut(TILE * c).zip(lse.par_chunks_mut(TILE * nh)).enumerate().for_each(
                |(tile, (out, lse))| {
                    let r0 = tile * TILE;
                    for h in 0..nh {
                        forward_tile_head(out, lse, qkv, (r0, h), (t, c, nh), scale);
                    }
                },
            );
        },
    );
}

/// One query tile (rows `r0..`, as many as `out` holds) of one head `h`; see [`forward`].
fn forward_tile_head(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    (r0, h): (usize, usize),
    (_t, c, nh): (usize, usize, usize),
    scale: f32,
) {
    let (hs, c3) = (c / nh, 3 * c);
    let rows = out.len() / c;
    let r1 = r0 + rows;
    let (q, k, v) = (&qkv[r0 * c3 + h * hs..], &qkv[c + h * hs..], &qkv[2 * c + h * hs..]);
    let o = &mut out[h * hs..];
    let mut scores = [0.0f32; TILE * TILE];
    let (mut max, mut sum) = ([f32::NEG_INFINITY; TILE], [0.0f32; TILE]);
    for i in 0..rows {
        o[i * c..i * c + hs].fill(0.0);
    }
    for s0 in (0..r1).step_by(TILE) {
        let keys = (s0 + TILE).min(r1) - s0;
        gemm_serial((rows, hs, keys), scale, q, (c3, 1), &k[s0 * c3..], (1, c3), 0.0, &mut scores, (TILE, 1));
        for i in 0..rows {
            // Keys s0 .. s0+visible are at or before query r0+i (tiles are aligned, so s0 ≤ r0 + i).
            let visible = (r0 + i + 1 - s0).min(keys);
            let row = &mut scores[i * TILE..i * TILE + keys];
            let new_max = max[i].max(max8(&row[..visible]));
            let correction = exp_fast(max[i] - new_max);
            row[..visible].iter_mut().for_each(|x| *x = exp_fast(*x - new_max));
            let tile_sum = sum8(&row[..visible]);
            row[visible..].fill(0.0);
            sum[i] = sum[i] * correction + tile_sum;
            max[i] = new_max;
            if correction != 1.0 {
                o[i * c..i * c + hs].iter_mut().for_each(|x| *x *= correction);
            }
        }
        gemm_serial((rows, keys, hs), 1.0, &scores, (TILE, 1), &v[s0 * c3..], (c3, 1), 1.0, o, (c, 1));
    }
    for i in 0..rows {
        let inv = 1.0 / sum[i];
        o[i * c..i * c + hs].iter_mut().for_each(|x| *x *= inv);
        lse[i * nh + h] = max[i] + sum[i].ln();
    }
}

/// Backward, **accumulating** into `dqkv` (FlashAttention-2's backward).
///
/// Forward was `O = P·V`, `P = e^{S - lse}` row-wise (a softmax), `S = scale·Q·Kᵀ`. So `dV = Pᵀ·dO`,
/// `dP = dO·Vᵀ`, and the softmax backward `dS = P ⊙ (dP - rowsum(P ⊙ dP))` where
/// `rowsum(P ⊙ dP)_t = Σ_s P_ts·(dO_t·v_s) = dO_t·O_t =: D_t` needs no full row of `P`; then
/// `dQ = scale·dS·K` and `dK = scale·dSᵀ·Q`. Per batch element and head (in parallel), for every key tile
/// `j` and every query tile `i ≥ j`, `P_ij` is recomputed from `Q_i`, `K_j` and `lse_i`, and the five
/// tile products accumulate into that head's `dQ`, `dK`, `dV` in `scratch`, which are then added into
/// `dqkv` row by row.
///
/// # Shapes
/// `dqkv`, `qkv`: (B, T, 3C); `scratch`: (B, [`backward_scratch_len`]); `dout`, `out`: (B, T, C);
/// `lse`: (B, T, NH).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let c3 = 3 * c;
    let head_len = 3 * t * hs + t;
    let batch = dout.len() / (t * c);
    debug_assert_eq!(dqkv.len(), qkv.len());
    debug_assert_eq!(out.len(), dout.len());
    debug_assert_eq!(scratch.len(), batch * backward_scratch_len(t, c, nh));
    scratch.par_chunks_mut(head_len).enumerate().for_each(|(bh, grads)| {
        let (b, h) = (bh / nh, bh % nh);
        let sequence = |width: usize| b * t * width..(b + 1) * t * width;
        let views = HeadViews {
            qkv: &qkv[sequence(c3)],
            out: &out[sequence(c)],
            dout: &dout[sequence(c)],
            lse: &lse[sequence(nh)],
        };
        backward_head(grads, &views, h, (t, c, nh));
    });
    // dqkv[b, t, part, h] += the head-major gradient of (b, h, part, t).
    dqkv.par_chunks_mut(PAR_ROWS * c3).enumerate().for_each(|(chunk, rows)| {
        for (i, row) in rows.chunks_exact_mut(c3).enumerate() {
            let (b, tt) = ((chunk * PAR_ROWS + i) / t, (chunk * PAR_ROWS + i) % t);
            for h in 0..nh {
                let grads = &scratch[(b * nh + h) * head_len..];
                for part in 0..3 {
                    let from = &grads[(part * t + tt) * hs..][..hs];
                    let to = &mut row[part * c + h * hs..][..hs];
                    to.iter_mut().zip(from).for_each(|(d, &g)| *d += g);
                }
            }
        }
    });
}

/// One batch element's inputs to [`backward_head`].
struct HeadViews<'a> {
    /// (T, 3C)
    qkv: &'a [f32],
    /// (T, C)
    out: &'a [f32],
    /// (T, C)
    dout: &'a [f32],
    /// (T, NH)
    lse: &'a [f32],
}

/// The gradients of head `h` of one batch element into `grads` = `[dQ | dK | dV]` (each (T, hs), overwritten)
/// followed by `D` (T); see [`backward`].
fn backward_head(grads: &mut [f32], x: &HeadViews<'_>, h: usize, (t, c, nh): (usize, usize, usize)) {
    let (hs, c3) = (c / nh, 3 * c);
    let scale = 1.0 / (hs as f32).sqrt();
    let (q, k, v) = (&x.qkv[h * hs..], &x.qkv[c + h * hs..], &x.qkv[2 * c + h * hs..]);
    let dout = &x.dout[h * hs..];
    let (dq, rest) = grads.split_at_mut(t * hs);
    let (dk, rest) = rest.split_at_mut(t * hs);
    let (dv, d) = rest.split_at_mut(t * hs);
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    for (tt, d) in d.iter_mut().enumerate() {
        *d = dot(&x.dout[tt * c + h * hs..][..hs], &x.out[tt * c + h * hs..][..hs]);
    }
    let mut p = [0.0f32; TILE * TILE];
    let mut ds = [0.0f32; TILE * TILE];
    for s0 in (0..t).step_by(TILE) {
        let keys = (s0 + TILE).min(t) - s0;
        for r0 in (s0..t).step_by(TILE) {
            let rows = (r0 + TILE).min(t) - r0;
            let (q_i, dout_i) = (&q[r0 * c3..], &dout[r0 * c..]);
            // S = scale·Q_i·K_jᵀ, then P = e^{S - lse} (zero for keys after the query).
            gemm_serial((rows, hs, keys), scale, q_i, (c3, 1), &k[s0 * c3..], (1, c3), 0.0, &mut p, (TILE, 1));
            for i in 0..rows {
                let visible = (r0 + i + 1 - s0).min(keys);
                let lse = x.lse[(r0 + i) * nh + h];
                let row = &mut p[i * TILE..i * TILE + keys];
                row[..visible].iter_mut().for_each(|s| *s = exp_fast(*s - lse));
                row[visible..].fill(0.0);
            }
            // dV_j += P_ijᵀ·dO_i
            let dv_j = &mut dv[s0 * hs..];
            gemm_serial((keys, rows, hs), 1.0, &p, (1, TILE), dout_i, (c, 1), 1.0, dv_j, (hs, 1));
            // dP = dO_i·V_jᵀ; dS = scale·P ⊙ (dP - D_i) (the scale of both products below folded in)
            gemm_serial((rows, hs, keys), 1.0, dout_i, (c, 1), &v[s0 * c3..], (1, c3), 0.0, &mut ds, (TILE, 1));
            for i in 0..rows {
                let d_i = d[r0 + i];
                let (ds_row, p_row) = (&mut ds[i * TILE..i * TILE + keys], &p[i * TILE..i * TILE + keys]);
                ds_row.iter_mut().zip(p_row).for_each(|(g, &p)| *g = scale * p * (*g - d_i));
            }
            // dQ_i += dS·K_j, dK_j += dSᵀ·Q_i
            let dq_i = &mut dq[r0 * hs..];
            gemm_serial((rows, keys, hs), 1.0, &ds, (TILE, 1), &k[s0 * c3..], (c3, 1), 1.0, dq_i, (hs, 1));
            let dk_j = &mut dk[s0 * hs..];
            gemm_serial((keys, rows, hs), 1.0, &ds, (1, TILE), q_i, (c3, 1), 1.0, dk_j, (hs, 1));
        }
    }
}

/// The plain-loop forward [`forward`] is tested against: two passes over each row (maximum, then
/// exponentials), no tiles.
///
/// # Shapes
/// As [`forward`].
pub fn forward_naive(out: &mut [f32], lse: &mut [f32], qkv: &[f32], t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    for (bi, (out, lse)) in out.chunks_exact_mut(t * c).zip(lse.chunks_exact_mut(t * nh)).enumerate() {
        let qkv = &qkv[bi * t * c3..(bi + 1) * t * c3];
        for h in 0..nh {
            for tq in 0..t {
                let q = &qkv[tq * c3 + h * hs..][..hs];
                let score = |s: usize| dot(q, &qkv[s * c3 + c + h * hs..][..hs]) * scale;
                let max = (0..=tq).map(score).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..=tq).map(|s| (score(s) - max).exp()).sum();
                let o = &mut out[tq * c + h * hs..][..hs];
                o.fill(0.0);
                for s in 0..=tq {
                    let p = (score(s) - max).exp() / sum;
                    o.iter_mut().zip(&qkv[s * c3 + 2 * c + h * hs..][..hs]).for_each(|(o, &v)| *o += p * v);
                }
                lse[tq * nh + h] = max + sum.ln();
            }
        }
    }
}

/// The plain-loop backward [`backward`] is tested against (accumulating, like it): per query `t` and key
/// `s ≤ t`, `p = e^{q_t·k_s·scale - lse_t}`, `dv_s += p·dout_t`, `ds = p·(dout_t·v_s - dout_t·out_t)`,
/// `dq_t += scale·ds·k_s`, `dk_s += scale·ds·q_t`.
///
/// # Shapes
/// As [`backward`], without scratch.
#[allow(clippy::too_many_arguments)]
pub fn backward_naive(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    for bi in 0..dout.len() / (t * c) {
        let (dqkv, qkv) = (&mut dqkv[bi * t * c3..(bi + 1) * t * c3], &qkv[bi * t * c3..(bi + 1) * t * c3]);
        let (dout, out, lse) = (&dout[bi * t * c..], &out[bi * t * c..], &lse[bi * t * nh..]);
        for h in 0..nh {
            for tq in 0..t {
                let g = &dout[tq * c + h * hs..][..hs];
                let d = dot(g, &out[tq * c + h * hs..][..hs]);
                for s in 0..=tq {
                    let (q, k) = (&qkv[tq * c3 + h * hs..][..hs], &qkv[s * c3 + c + h * hs..][..hs]);
                    let p = (dot(q, k) * scale - lse[tq * nh + h]).exp();
                    let ds = p * (dot(g, &qkv[s * c3 + 2 * c + h * hs..][..hs]) - d);
                    for i in 0..hs {
                        dqkv[s * c3 + 2 * c + h * hs + i] += p * g[i];
                        dqkv[tq * c3 + h * hs + i] += scale * ds * qkv[s * c3 + c + h * hs + i];
                        dqkv[s * c3 + c + h * hs + i] += scale * ds * qkv[tq * c3 + h * hs + i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    /// Attention output in f64 (the function both kernels compute), for finite differences.
    fn reference_out(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
        let (hs, c3) = (c / nh, 3 * c);
        let mut out = vec![0.0; b * t * c];
        for bi in 0..b {
            let at = |tt: usize, part: usize, h: usize, i: usize| qkv[(bi * t + tt) * c3 + part * c + h * hs + i];
            for h in 0..nh {
                for tq in 0..t {
                    let scores: Vec<f64> = (0..=tq)
                        .map(|s| (0..hs).map(|i| at(tq, 0, h, i) * at(s, 1, h, i)).sum::<f64>() / (hs as f64).sqrt())
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for (s, score) in scores.iter().enumerate() {
                        let p = (score - max).exp() / sum;
                        for i in 0..hs {
                            out[(bi * t + tq) * c + h * hs + i] += p * at(s, 2, h, i);
                        }
                    }
                }
            }
        }
        out
    }

    /// The log-sum-exp of each row of the probabilities kernel's scores, from its probabilities and the
    /// scores: `lse = score - ln p` for any unmasked entry (the diagonal).
    fn lse_from_probabilities(att: &[f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
        let (hs, c3) = (c / nh, 3 * c);
        let mut lse = vec![0.0; b * t * nh];
        for bi in 0..b {
            for h in 0..nh {
                for tq in 0..t {
                    let row = (bi * t + tq) * c3 + h * hs;
                    let q = to_f64(&qkv[row..row + hs]);
                    let k = to_f64(&qkv[row + c..row + c + hs]);
                    let score = q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt();
                    let p = att[((bi * nh + h) * t + tq) * t + tq] as f64;
                    lse[(bi * t + tq) * nh + h] = score - p.ln();
                }
            }
        }
        lse
    }

    fn check(b: usize, t: usize, c: usize, nh: usize, finite_differences: bool) {
        let mut rng = Rng::new((b * 1000 + t * 10 + c) as u64);
        let qkv = random_f32(&mut rng, b * t * 3 * c, 1.5);
        let dout = random_f32(&mut rng, b * t * c, 1.0);
        // The probabilities kernel: the one training used before, and inspection still uses.
        let (mut want_out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention::forward(&mut want_out, &mut att, &qkv, t, c, nh);
        let mut want_dqkv = vec![0.5; qkv.len()];
        attention::backward(&mut want_dqkv, &mut vec![0.0; b * t * t], &dout, &qkv, &att, t, c, nh);

        let (mut out, mut lse) = (vec![7.0; b * t * c], vec![7.0; b * t * nh]);
        forward(&mut out, &mut lse, &qkv, t, c, nh);
        assert_close("flash out vs probabilities kernel", &out, &to_f64(&want_out), 1e-6, 1e-5);
        assert_close("flash lse", &lse, &lse_from_probabilities(&att, &qkv, b, t, c, nh), 1e-5, 1e-5);
        let (mut naive_out, mut naive_lse) = (vec![7.0; b * t * c], vec![7.0; b * t * nh]);
        forward_naive(&mut naive_out, &mut naive_lse, &qkv, t, c, nh);
        assert_close("flash out vs naive", &out, &to_f64(&naive_out), 1e-6, 1e-5);
        assert_close("flash lse vs naive", &lse, &to_f64(&naive_lse), 1e-6, 1e-5);

        let mut dqkv = vec![0.5; qkv.len()];
        let mut scratch = vec![f32::NAN; b * backward_scratch_len(t, c, nh)];
        backward(&mut dqkv, &mut scratch, &dout, &qkv, &out, &lse, t, c, nh);
        assert_close("flash dqkv vs probabilities kernel", &dqkv, &to_f64(&want_dqkv), 1e-5, 1e-5);
        let mut naive_dqkv = vec![0.5; qkv.len()];
        backward_naive(&mut naive_dqkv, &dout, &qkv, &out, &lse, t, c, nh);
        assert_close("flash dqkv vs naive", &dqkv, &to_f64(&naive_dqkv), 1e-5, 1e-5);
        if finite_differences {
            let qkv64 = to_f64(&qkv);
            let num = numeric_grad(|x| weighted_sum(&reference_out(x, b, t, c, nh), &dout), &qkv64, 1e-6);
            let num: Vec<f64> = num.into_iter().map(|g| g + 0.5).collect();
            assert_close("flash dqkv (accumulated onto 0.5) vs finite differences", &dqkv, &num, 1e-4, 1e-3);
        }
    }

    #[test]
    fn matches_probabilities_kernel_naive_twin_and_finite_differences() {
        check(2, 4, 6, 2, true);
        check(1, 1, 4, 1, true);
        check(3, 5, 9, 3, true);
        check(2, 19, 12, 3, true);
        // Ragged tiles: more than one query and key tile, the last one partial.
        check(1, TILE + 5, 8, 2, true);
        check(2, 2 * TILE + 17, 16, 4, false);
    }

    #[test]
    fn many_tiles_at_gpt2_head_size() {
        // hs = 64 as in GPT-2, four full tiles and a partial fifth.
        check(1, 4 * TILE + 3, 128, 2, false);
    }
}
