//! What the model predicts at each prompt position, and how it rated the token that actually came next.

use super::Prediction;
use super::distribution::Distribution;
use super::ranking::Ranked;
use super::text::TokenTextFn;
use rayon::prelude::*;

/// The numbers of one [`Prediction`], before token texts are attached (texts come from a caller's function
/// that need not be thread-safe; the numbers are computed in parallel).
#[derive(Debug, Clone)]
pub(super) struct PredictionNumbers {
    pub actual: Option<Ranked>,
    pub top: Vec<Ranked>,
    pub entropy_bits: f64,
}

impl PredictionNumbers {
    /// The model's most likely next token here (the first of `top`, which is never empty for `top_k ≥ 1`).
    pub fn top1(&self) -> Option<&Ranked> {
        self.top.first()
    }

    pub fn to_prediction(&self, position: usize, token_text: TokenTextFn) -> Prediction {
        Prediction {
            position,
            actual: self.actual.map(|actual| actual.candidate(token_text)),
            surprisal_bits: self.actual.map(|actual| -actual.value.log2() as f32),
            top: self.top.iter().map(|ranked| ranked.candidate(token_text)).collect(),
            entropy_bits: self.entropy_bits as f32,
        }
    }
}

/// `softmax(logits)` at every position of `prompt`; `logits` is the forward pass's (T, V) output.
pub(super) fn next_token_numbers(
    logits: &[f32],
    prompt: &[u32],
    vocab_size: usize,
    top_k: usize,
) -> Vec<PredictionNumbers> {
    logits
        .par_chunks_exact(vocab_size)
        .enumerate()
        .map_init(Distribution::default, |distribution, (position, row)| {
            distribution.set_logits(row);
            PredictionNumbers {
                actual: prompt.get(position + 1).map(|&next| distribution.ranked(next)),
                top: distribution.top(top_k),
                entropy_bits: distribution.entropy_bits(),
            }
        })
        .collect()
}
