//! Tokens generated after the prompt by the very [`Generator`] `lushan generate` uses, each with the raw
//! distribution it came from and what temperature / top-k / top-p / repetition penalty made of it.

use super::distribution::Distribution;
use super::ranking;
use super::text::TokenTextFn;
use super::{Candidate, SampledCandidate, SamplingStep, SamplingView};
use crate::error::Result;
use crate::generate::Generator;
use crate::gpt::Gpt;
use crate::sampling::Sampling;

/// Up to `max_tokens` tokens after `prompt`, stopping where the prompt and the generated text fill the
/// model's context: every step then sees all of it, and the [`Generator`]'s sliding window never engages.
pub(super) fn sampling_view(
    model: &Gpt,
    prompt: &[u32],
    sampling: &Sampling,
    seed: u64,
    max_tokens: usize,
    top_k: usize,
    token_text: TokenTextFn,
) -> Result<SamplingView> {
    let steps_that_fit = model.config.block_size.saturating_sub(prompt.len());
    let max_tokens = max_tokens.min(steps_that_fit);
    let mut steps = Vec::with_capacity(max_tokens);
    if max_tokens > 0 {
        let mut generator = Generator::new(model, prompt, sampling.clone(), seed, max_tokens)?;
        let mut raw = Distribution::default();
        while let Some(chosen) = generator.next_token()? {
            // The generator feeds a token to the model only when asked for the next one, so right after
            // `next_token` its logits and distribution are still those `chosen` was drawn from.
            raw.set_logits(generator.logits());
            steps.push(step(chosen, &raw, generator.last_distribution(), top_k, token_text));
        }
    }
    Ok(SamplingView {
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        repetition_penalty: sampling.repetition_penalty,
        seed,
        steps,
    })
}

/// One step: `raw` is `softmax(logits)`, `drawn_from` the distribution the sampler drew `chosen` from.
fn step(chosen: u32, raw: &Distribution, drawn_from: &[f32], top_k: usize, token_text: TokenTextFn) -> SamplingStep {
    let final_prob = |id: u32| drawn_from.get(id as usize).copied().unwrap_or(0.0);
    SamplingStep {
        chosen: Candidate {
            id: chosen,
            text: token_text(chosen),
            prob: final_prob(chosen),
            rank: ranking::rank_of(drawn_from, chosen),
        },
        candidates: raw
            .top(top_k)
            .iter()
            .map(|ranked| SampledCandidate {
                id: ranked.id,
                text: token_text(ranked.id),
                raw_prob: ranked.value as f32,
                final_prob: final_prob(ranked.id),
            })
            .collect(),
        kept: drawn_from.iter().filter(|&&p| p > 0.0).count(),
    }
}
