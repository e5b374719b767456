//! Turning logits into the next token: repetition penalty, temperature, top-k, top-p, driven by our own
//! seeded RNG so that a seed gives the same text across dependency upgrades.

use crate::error::{ModelError, Result};
use lushan_kernels::{rng::Rng, softmax::softmax_in_place};

/// How to pick the next token. `temperature == 0` is greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (ties with the k-th are kept, as in `transformers`).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// CTRL-style penalty on tokens already in the context: positive logits divided, negative multiplied.
    pub repetition_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: None, repetition_penalty: 1.0 }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Rejects settings that have no meaning, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(ModelError::InvalidSampling { field, reason });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("must be a finite number ≥ 0, got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p", format!("must be in (0, 1], got {p}"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", format!("must be a finite number > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Applies a [`Sampling`] to logits; reuses its buffers across calls.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub sampling: Sampling,
    rng: Rng,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Result<Self> {
        sampling.validate()?;
        Ok(Self { sampling, rng: Rng::new(seed), probs: Vec::new(), order: Vec::new() })
    }

    /// The distribution the last sampled token was drawn from (one-hot for greedy).
    pub fn distribution(&self) -> &[f32] {
        &self.probs
    }

    /// Picks the next token given the logits of the last position and the tokens in the context.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let s = &self.sampling;
        let probs = &mut self.probs;
        probs.clear();
        probs.extend_from_slice(logits);
        if s.repetition_penalty != 1.0 {
            self.order.clear();
            self.order.extend(context.iter().copied().filter(|&t| (t as usize) < probs.len()));
            self.order.sort_unstable();
            self.order.dedup();
            for &t in &self.order {
                let z = &mut probs[t as usize];
                *z = if *z > 0.0 { *z / s.repetition_penalty } else { *z * s.repetition_penalty };
            }
        }
        if s.temperature == 0.0 {
            let best = argmax(probs);
            probs.iter_mut().enumerate().for_each(|(i, p)| *p = (i == best) as u8 as f32);
            return best as u32;
        }
        let inv_t = 1.0 / s.temperature;
        probs.iter_mut().for_each(|z| *z *= inv_t);
        if let Some(k) = s.top_k
            && k < probs.len()
        {
            let mut sorted = probs.clone();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let threshold = *kth;
            probs.iter_mut().filter(|z| **z < threshold).for_each(|z| *z = f32::NEG_INFINITY);
        }
        softmax_in_place(probs);
        if let Some(p) = s.top_p
            && p < 1.0
        {
            let order = &mut self.order;
            order.clear();
            order.extend((0..probs.len() as u32).filter(|&i| probs[i as usize] > 0.0));
            order.sort_unstable_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
            let mut cumulative = 0.0f32;
            let mut keep = order.len();
            for (rank, &i) in order.iter().enumerate() {
                cumulative += probs[i as usize];
                if cumulative >= p {
                    keep = rank + 1;
                    break;
                }
            }
            for &i in &order[keep..] {
                probs[i as usize] = 0.0;
            }
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= total);
        }
        let mut u = self.rng.next_f64() as f32;
        let mut last_nonzero = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last_nonzero = i;
                if u < p {
                    return i as u32;
                }
                u -= p;
            }
        }
        last_nonzero as u32 // rounding left a sliver of mass: take the last candidate
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.5, 0.0]
    }

    #[test]
    fn greedy_takes_argmax_and_penalty_can_change_it() {
        let mut s = Sampler::new(Sampling::greedy(), 0).unwrap();
        assert_eq!(s.sample(&logits(), &[]), 1);
        let mut s = Sampler::new(Sampling { repetition_penalty: 2.0, ..Sampling::greedy() }, 0).unwrap();
        assert_eq!(s.sample(&logits(), &[1]), 4); // 3.0/2 = 1.5 < 2.5
    }

    #[test]
    fn top_k_and_top_p_never_leave_their_set_and_seeds_reproduce() {
        let mut seen = [0usize; 6];
        let mut s = Sampler::new(Sampling { top_k: Some(2), ..Sampling::default() }, 1).unwrap();
        for _ in 0..2000 {
            seen[s.sample(&logits(), &[]) as usize] += 1;
        }
        assert!(seen[1] > 0 && seen[4] > 0);
        assert_eq!(seen[0] + seen[2] + seen[3] + seen[5], 0, "{seen:?}");

        // softmax(logits): p(1)≈0.46, p(4)≈0.28, p(2)≈0.17 → top_p 0.7 keeps {1, 4}.
        let mut seen = [0usize; 6];
        let mut s = Sampler::new(Sampling { top_p: Some(0.7), ..Sampling::default() }, 2).unwrap();
        for _ in 0..2000 {
            seen[s.sample(&logits(), &[]) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[3] + seen[5], 0, "{seen:?}");
        assert!((s.distribution().iter().sum::<f32>() - 1.0).abs() < 1e-5);

        let draw = |seed| {
            let mut s = Sampler::new(Sampling::default(), seed).unwrap();
            (0..50).map(|_| s.sample(&logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn temperature_sharpens() {
        let mut cold = Sampler::new(Sampling { temperature: 0.05, ..Sampling::default() }, 3).unwrap();
        assert!((0..200).all(|_| cold.sample(&logits(), &[]) == 1));
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        for (s, field) in [
            (Sampling { temperature: -1.0, ..Sampling::default() }, "temperature"),
            (Sampling { temperature: f32::NAN, ..Sampling::default() }, "temperature"),
            (Sampling { top_k: Some(0), ..Sampling::default() }, "top_k"),
            (Sampling { top_p: Some(0.0), ..Sampling::default() }, "top_p"),
            (Sampling { top_p: Some(1.5), ..Sampling::default() }, "top_p"),
            (Sampling { repetition_penalty: 0.0, ..Sampling::default() }, "repetition_penalty"),
        ] {
            let e = Sampler::new(s, 0).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
