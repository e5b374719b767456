//! One next-token distribution, `softmax(logits)`, computed in f64: a position's probabilities are summed
//! over the whole vocabulary (entropy, ranks), and f32 rounding there would show in the printed digits.
//! One row at a time into a reused buffer, so no caller ever keeps a (positions × vocabulary) table.

use super::ranking::{self, Ranked};

/// `softmax(logits)` of one position, with its entropy; reused across rows.
#[derive(Debug, Default)]
pub(super) struct Distribution {
    probs: Vec<f64>,
    entropy_bits: f64,
}

impl Distribution {
    /// Replaces the distribution with `softmax(logits)`.
    pub fn set_logits(&mut self, logits: &[f32]) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        self.probs.clear();
        self.probs.extend(logits.iter().map(|&z| (z as f64 - max).exp()));
        let sum: f64 = self.probs.iter().sum();
        let log_sum = sum.ln();
        let inv_sum = 1.0 / sum;
        // Entropy from log-probabilities `(z - max) - ln Σ`, not `ln p`, which loses the digits of tiny p.
        let mut entropy_nats = 0.0;
        for (p, &z) in self.probs.iter_mut().zip(logits) {
            *p *= inv_sum;
            if *p > 0.0 {
                entropy_nats -= *p * ((z as f64 - max) - log_sum);
            }
        }
        self.entropy_bits = entropy_nats / std::f64::consts::LN_2;
    }

    pub fn prob(&self, id: u32) -> f64 {
        self.probs[id as usize]
    }

    pub fn entropy_bits(&self) -> f64 {
        self.entropy_bits
    }

    /// `id` with its probability and competition rank.
    pub fn ranked(&self, id: u32) -> Ranked {
        Ranked { id, value: self.prob(id), rank: ranking::rank_of(&self.probs, id) }
    }

    /// The `k` most likely tokens, most likely first (ties by lower id).
    pub fn top(&self, k: usize) -> Vec<Ranked> {
        ranking::top_k(&self.probs, k, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_have_entropy_log2_of_the_vocabulary() {
        let mut distribution = Distribution::default();
        for (vocab, logit) in [(1usize, 0.0f32), (2, 3.0), (50257, -7.5)] {
            distribution.set_logits(&vec![logit; vocab]);
            let want = (vocab as f64).log2();
            assert!((distribution.entropy_bits() - want).abs() < 1e-9, "{vocab}: {}", distribution.entropy_bits());
            assert!((distribution.prob(0) - 1.0 / vocab as f64).abs() < 1e-15);
            assert_eq!(distribution.ranked(0).rank, 1);
        }
    }

    #[test]
    fn probabilities_sum_to_one_and_rank_by_logit() {
        let mut distribution = Distribution::default();
        let logits = [1.0f32, 3.0, 2.0, -1.0, 2.5, f32::NEG_INFINITY];
        distribution.set_logits(&logits);
        let total: f64 = (0..6).map(|id| distribution.prob(id)).sum();
        assert!((total - 1.0).abs() < 1e-15);
        assert_eq!(distribution.prob(5), 0.0);
        let top: Vec<_> = distribution.top(3).iter().map(|r| (r.id, r.rank)).collect();
        assert_eq!(top, [(1, 1), (4, 2), (2, 3)]);
        assert_eq!(distribution.ranked(3).rank, 5);
        // Two equally likely tokens carry one bit.
        distribution.set_logits(&[0.0, 0.0, f32::NEG_INFINITY]);
        assert!((distribution.entropy_bits() - 1.0).abs() < 1e-12);
    }
}
