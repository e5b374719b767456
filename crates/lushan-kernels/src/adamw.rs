//! AdamW (decoupled weight decay), in exactly `torch.optim.AdamW`'s order of operations.

use rayon::prelude::*;

const CHUNK: usize = 4096;

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamW {
    /// One update at step `step` (1-based, for bias correction):
    /// `θ *= 1 - lr·wd; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;`
    /// `θ -= (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + eps)`.
    ///
    /// # Shapes
    /// `params`, `grads`, `m`, `v`: any length, equal.
    pub fn update(&self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], step: u64) {
        debug_assert!(step >= 1);
        debug_assert_eq!(params.len(), grads.len());
        let bias1 = 1.0 - (self.beta1 as f64).powf(step as f64);
        let bias2_sqrt = (1.0 - (self.beta2 as f64).powf(step as f64)).sqrt() as f32;
        let step_size = (self.lr as f64 / bias1) as f32;
        let decay = 1.0 - self.lr * self.weight_decay;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                    *p *= decay;
                    *m += (g - *m) * (1.0 - b1);
                    *v = *v * b2 + (1.0 - b2) * g * g;
                    let denom = v.sqrt() / bias2_sqrt + eps;
                    *p -= step_size * *m / denom;
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook AdamW in f64, step by step.
    fn reference(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], h: &AdamW, t: u64) {
        let (lr, b1, b2, eps, wd) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.eps as f64, h.weight_decay as f64);
        for i in 0..p.len() {
            p[i] -= lr * wd * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = m[i] / (1.0 - b1.powi(t as i32));
            let vhat = v[i] / (1.0 - b2.powi(t as i32));
            p[i] -= lr * mhat / (vhat.sqrt() + eps);
        }
    }

    #[test]
    fn matches_textbook_adamw_over_several_steps() {
        let h = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let n = 9000;
        let mut p: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0.0; n], vec![0.0; n]);
        for t in 1..=5u64 {
            let g: Vec<f32> = (0..n).map(|i| (((i * 7 + t as usize) % 11) as f32 - 5.0) * 0.03).collect();
            let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            h.update(&mut p, &g, &mut m, &mut v, t);
            reference(&mut p64, &g64, &mut m64, &mut v64, &h, t);
        }
        for i in 0..n {
            assert!((p[i] as f64 - p64[i]).abs() < 1e-6, "param {i}: {} vs {}", p[i], p64[i]);
        }
    }

    #[test]
    fn zero_gradient_only_decays() {
        let h = AdamW { lr: 0.5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.2 };
        let mut p = vec![2.0f32];
        h.update(&mut p, &[0.0], &mut [0.0], &mut [0.0], 1);
        assert!((p[0] - 2.0 * (1.0 - 0.1)).abs() < 1e-7);
    }
}
