//! LoRA inside the forward and backward passes: a frozen linear layer `y = x·Wᵀ + b` gains the low-rank
//! update `y += s·(drop(x)·Aᵀ)·Bᵀ` with `A` `(r, in)`, `B` `(out, r)` and `s = alpha / r` (PEFT's LoRA).
//!
//! Forward keeps `h = s·drop(x)·Aᵀ` `(N, r)` and the dropout mask; backward derives from the two lines
//! `y += h·Bᵀ` (so `dB += dyᵀ·h`, `dh = dy·B`) and `h = s·x̃·Aᵀ` with `x̃ = drop(x)` (so
//! `dA += s·dhᵀ·x̃`, `dx̃ = s·dh·A`, and through the dropout `dx += mask·dx̃/(1-p)`).

use lushan_kernels::{dropout, matmul};

/// One adapter's weights and sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adapter<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub scale: f32,
    pub in_dim: usize,
    pub out_dim: usize,
    pub rank: usize,
    /// Dropout rate on the adapter's input (0 = none, or not training).
    pub dropout: f32,
}

/// `out += s·(drop(x)·Aᵀ)·Bᵀ`, keeping `hidden` and `mask` for backward.
///
/// # Shapes
/// `out`: (N, out); `x`: (N, in); `hidden`: (N, r); `mask`: (N, in) when dropout is on; `x_drop` ≥ N·in.
pub(crate) fn forward(
    ad: &Adapter<'_>,
    out: &mut [f32],
    x: &[f32],
    hidden: &mut [f32],
    mask: &mut [u8],
    x_drop: &mut [f32],
    seed: u64,
) {
    let n = x.len() / ad.in_dim;
    let x_in: &[f32] = if ad.dropout > 0.0 {
        let buf = &mut x_drop[..n * ad.in_dim];
        dropout::forward(buf, mask, x, ad.dropout, seed);
        buf
    } else {
        x
    };
    matmul::forward(hidden, x_in, ad.a, None, ad.in_dim, ad.rank);
    hidden.iter_mut().for_each(|h| *h *= ad.scale);
    matmul::forward_accumulate(out, hidden, ad.b, ad.rank, ad.out_dim);
}

/// Backward of [`forward`], **accumulating** into `dx`, `da` and `db`.
///
/// # Shapes
/// `dx`, `x`: (N, in); `dout`: (N, out); `da`: (r, in); `db`: (out, r); `hidden`: (N, r); scratch `dh`
/// ≥ N·r, `x_drop` and `dx_drop` ≥ N·in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ad: &Adapter<'_>,
    dx: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    x: &[f32],
    hidden: &[f32],
    mask: &[u8],
    dh: &mut [f32],
    x_drop: &mut [f32],
    dx_drop: &mut [f32],
) {
    let n = x.len() / ad.in_dim;
    let dh = &mut dh[..n * ad.rank];
    // out += hidden·Bᵀ
    dh.fill(0.0);
    matmul::backward(Some(dh), db, None, dout, hidden, ad.b, ad.rank, ad.out_dim);
    // hidden = s·x̃·Aᵀ: the scale moves onto dh.
    dh.iter_mut().for_each(|g| *g *= ad.scale);
    if ad.dropout > 0.0 {
        // x̃ = x·mask/(1-p), recomputed from the kept mask.
        let keep = 1.0 / (1.0 - ad.dropout);
        let x_in = &mut x_drop[..n * ad.in_dim];
        for ((o, &v), &m) in x_in.iter_mut().zip(x).zip(mask) {
            *o = if m != 0 { v * keep } else { 0.0 };
        }
        let dx_in = &mut dx_drop[..n * ad.in_dim];
        dx_in.fill(0.0);
        matmul::backward(Some(dx_in), da, None, dh, x_in, ad.a, ad.in_dim, ad.rank);
        dropout::backward(dx, dx_in, mask, ad.dropout);
    } else {
        matmul::backward(Some(dx), da, None, dh, x, ad.a, ad.in_dim, ad.rank);
    }
}

/// Two disjoint mutable ranges of one buffer (an adapter's `A` and `B` gradients).
pub(crate) fn two_mut(
    buf: &mut [f32],
    first: std::ops::Range<usize>,
    second: std::ops::Range<usize>,
) -> (&mut [f32], &mut [f32]) {
    debug_assert!(first.end <= second.start || second.end <= first.start);
    if first.start < second.start {
        let (lo, hi) = buf.split_at_mut(second.start);
        (&mut lo[first], &mut hi[..second.end - second.start])
    } else {
        let (lo, hi) = buf.split_at_mut(first.start);
        let len = first.end - first.start;
        (&mut hi[..len], &mut lo[second])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lushan_kernels::gradcheck::*;
    use lushan_kernels::rng::Rng;

    /// `Σ w·out` of the adapter alone (base output zero), in f64, for finite differences.
    fn loss(x: &[f64], a: &[f64], b: &[f64], s: f64, n: usize, (i, o, r): (usize, usize, usize), w: &[f32]) -> f64 {
        let mut total = 0.0;
        for row in 0..n {
            let h: Vec<f64> = (0..r).map(|k| s * (0..i).map(|j| x[row * i + j] * a[k * i + j]).sum::<f64>()).collect();
            for out in 0..o {
                let y: f64 = (0..r).map(|k| h[k] * b[out * r + k]).sum();
                total += y * w[row * o + out] as f64;
            }
        }
        total
    }

    #[test]
    fn gradients_match_finite_differences_and_accumulate() {
        let (n, i, o, r) = (5, 7, 6, 3);
        let mut rng = Rng::new(9);
        let x = random_f32(&mut rng, n * i, 1.0);
        let a = random_f32(&mut rng, r * i, 1.0);
        let b = random_f32(&mut rng, o * r, 1.0);
        let w = random_f32(&mut rng, n * o, 1.0);
        let ad = Adapter { a: &a, b: &b, scale: 0.75, in_dim: i, out_dim: o, rank: r, dropout: 0.0 };
        let mut out = vec![0.0; n * o];
        let (mut hidden, mut xd, mut dxd, mut dh) =
            (vec![0.0; n * r], vec![0.0; n * i], vec![0.0; n * i], vec![0.0; n * r]);
        forward(&ad, &mut out, &x, &mut hidden, &mut [], &mut xd, 0);
        let (x64, a64, b64) = (to_f64(&x), to_f64(&a), to_f64(&b));
        let dims = (i, o, r);
        let want_out: Vec<f64> = (0..n * o)
            .map(|k| {
                let mut onehot = vec![0.0f32; n * o];
                onehot[k] = 1.0;
                loss(&x64, &a64, &b64, 0.75, n, dims, &onehot)
            })
            .collect();
        assert_close("lora out", &out, &want_out, 1e-5, 1e-4);
        let (mut dx, mut da, mut db) = (vec![0.5; n * i], vec![0.5; r * i], vec![0.5; o * r]);
        backward(&ad, &mut dx, &mut da, &mut db, &w, &x, &hidden, &[], &mut dh, &mut xd, &mut dxd);
        let plus = |g: Vec<f64>| g.into_iter().map(|v| v + 0.5).collect::<Vec<_>>();
        let f = |x: &[f64], a: &[f64], b: &[f64]| loss(x, a, b, 0.75, n, dims, &w);
        assert_close("lora dx", &dx, &plus(numeric_grad(|p| f(p, &a64, &b64), &x64, 1e-6)), 1e-4, 1e-4);
        assert_close("lora dA", &da, &plus(numeric_grad(|p| f(&x64, p, &b64), &a64, 1e-6)), 1e-4, 1e-4);
        assert_close("lora dB", &db, &plus(numeric_grad(|p| f(&x64, &a64, p), &b64, 1e-6)), 1e-4, 1e-4);
    }

    #[test]
    fn dropout_backward_uses_the_forward_mask() {
        let (n, i, o, r) = (4, 64, 3, 2);
        let mut rng = Rng::new(2);
        let x = random_f32(&mut rng, n * i, 1.0);
        let a = random_f32(&mut rng, r * i, 1.0);
        let b = random_f32(&mut rng, o * r, 1.0);
        let ad = Adapter { a: &a, b: &b, scale: 2.0, in_dim: i, out_dim: o, rank: r, dropout: 0.5 };
        let mut mask = vec![0u8; n * i];
        let (mut hidden, mut xd, mut dxd, mut dh) =
            (vec![0.0; n * r], vec![0.0; n * i], vec![0.0; n * i], vec![0.0; n * r]);
        let mut out = vec![0.0; n * o];
        forward(&ad, &mut out, &x, &mut hidden, &mut mask, &mut xd, 17);
        assert!(mask.contains(&0) && mask.contains(&1));
        // With the mask fixed, the adapter is linear in x: dropped inputs get no gradient.
        let dout = vec![1.0; n * o];
        let (mut dx, mut da, mut db) = (vec![0.0; n * i], vec![0.0; r * i], vec![0.0; o * r]);
        backward(&ad, &mut dx, &mut da, &mut db, &dout, &x, &hidden, &mask, &mut dh, &mut xd, &mut dxd);
        for (g, &m) in dx.iter().zip(&mask) {
            assert_eq!(m == 0, *g == 0.0);
        }
    }

    #[test]
    fn two_mut_splits_either_order() {
        let mut buf: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let (p, q) = two_mut(&mut buf, 6..8, 1..3);
        assert_eq!((p.to_vec(), q.to_vec()), (vec![6.0, 7.0], vec![1.0, 2.0]));
        let (p, q) = two_mut(&mut buf, 0..2, 5..9);
        assert_eq!((p.len(), q.len()), (2, 4));
    }
}
