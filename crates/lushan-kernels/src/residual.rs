//! Residual connection: `out = a + b`.

use rayon::prelude::*;

const CHUNK: usize = 4096;

/// Forward.
///
/// # Shapes
/// `out`, `a`, `b`: any length, equal.
pub fn forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    debug_assert_eq!(out.len(), a.len());
    debug_assert_eq!(out.len(), b.len());
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// Backward, **accumulating**: forward was `out = a + b`, so `da += dout` and `db += dout`.
///
/// The model does not call this: both branches' gradient *is* `dout`, so it passes the residual-stream
/// gradient buffer to both without copying. The kernel is kept, and tested, as the statement of that fact.
///
/// # Shapes
/// `da`, `db`, `dout`: any length, equal.
pub fn backward(da: &mut [f32], db: &mut [f32], dout: &[f32]) {
    debug_assert_eq!(da.len(), dout.len());
    debug_assert_eq!(db.len(), dout.len());
    for ((a, b), &g) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *a += g;
        *b += g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn forward_adds_and_backward_accumulates_the_finite_difference_gradient() {
        let mut rng = Rng::new(9);
        let n = 4100;
        let a = random_f32(&mut rng, n, 1.0);
        let b = random_f32(&mut rng, n, 1.0);
        let mut out = vec![0.0; n];
        forward(&mut out, &a, &b);
        let want: Vec<f64> = a.iter().zip(&b).map(|(&x, &y)| x as f64 + y as f64).collect();
        assert_close("residual out", &out, &want, 1e-6, 1e-6);
        let dout = random_f32(&mut rng, 5, 1.0);
        let (a5, b5) = (to_f64(&a[..5]), to_f64(&b[..5]));
        let loss = |a: &[f64], b: &[f64]| {
            let sum: Vec<f64> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            weighted_sum(&sum, &dout)
        };
        let num_a: Vec<f64> = numeric_grad(|x| loss(x, &b5), &a5, 1e-6).iter().map(|g| g + 2.0).collect();
        let num_b: Vec<f64> = numeric_grad(|x| loss(&a5, x), &b5, 1e-6).iter().map(|g| g - 1.0).collect();
        let (mut da, mut db) = (vec![2.0; 5], vec![-1.0; 5]);
        backward(&mut da, &mut db, &dout);
        assert_close("residual da", &da, &num_a, 1e-6, 1e-5);
        assert_close("residual db", &db, &num_b, 1e-6, 1e-5);
    }
}
