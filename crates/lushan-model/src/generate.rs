//! A token stream from a prompt. [`Generation`] makes every token-level decision of one generation —
//! sampling with penalties, stop tokens, the token budget and why it ended — from logits someone else
//! computes; [`Generator`] runs the model for it alone (the CLI), the server's batcher runs many together.
//! Both know only token ids: text, stop strings and transport are the caller's.

use crate::decode::DecodeState;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::sampling::{Sampler, Sampling};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` were generated.
    Length,
    /// A stop token was generated (it is the last token returned), or the caller stopped it
    /// ([`Generation::stop`], e.g. at a stop string).
    Stop,
}

impl FinishReason {
    /// The name the OpenAI API gives it (`finish_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// OpenAI's additive penalties on tokens already generated, applied to the logits before sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Penalties {
    /// Subtracted once from the logit of every token generated so far.
    pub presence: f32,
    /// Subtracted from a token's logit once per time it was generated so far.
    pub frequency: f32,
}

impl Penalties {
    /// Most a penalty may be in either direction (OpenAI's range).
    pub const LIMIT: f32 = 2.0;

    /// Rejects penalties outside `[-2, 2]` (or not finite), naming the setting as the API does.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [("presence_penalty", self.presence), ("frequency_penalty", self.frequency)] {
            if !(-Self::LIMIT..=Self::LIMIT).contains(&value) {
                return Err(ModelError::InvalidSampling {
                    field,
                    reason: format!("must be between -{0} and {0}, got {value}", Self::LIMIT),
                });
            }
        }
        Ok(())
    }

    fn is_zero(&self) -> bool {
        self.presence == 0.0 && self.frequency == 0.0
    }
}

/// The token-level state of one generation, fed the logits after each token by whoever runs the model.
#[derive(Debug, Clone)]
pub struct Generation {
    sampler: Sampler,
    penalties: Penalties,
    /// Times each token id was generated (sized on the first logits; unused without penalties).
    counts: Vec<u32>,
    /// The logits after the penalties, reused across steps.
    adjusted: Vec<f32>,
    /// What the model sees: the prompt (or the window kept of it) and the tokens generated.
    context: Vec<u32>,
    generated: usize,
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
    finished: Option<FinishReason>,
}

impl Generation {
    /// A generation continuing `prompt` (non-empty) for at most `max_new_tokens` tokens.
    pub fn new(prompt: &[u32], sampling: Sampling, seed: u64, max_new_tokens: usize) -> Result<Self> {
        if prompt.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        Ok(Self {
            sampler: Sampler::new(sampling, seed)?,
            penalties: Penalties::default(),
            counts: Vec::new(),
            adjusted: Vec::new(),
            context: prompt.to_vec(),
            generated: 0,
            max_new_tokens,
            stop_tokens: Vec::new(),
            finished: (max_new_tokens == 0).then_some(FinishReason::Length),
        })
    }

    /// Ends generation after any of these tokens (e.g. an end-of-text id).
    pub fn with_stop_tokens(mut self, stop: &[u32]) -> Self {
        self.stop_tokens = stop.to_vec();
        self
    }

    /// Applies presence / frequency penalties; errs (naming the setting) outside their range.
    pub fn with_penalties(mut self, penalties: Penalties) -> Result<Self> {
        penalties.validate()?;
        self.penalties = penalties;
        Ok(self)
    }

    /// Samples the next token from `logits` (the model's output after the last token of
    /// [`Generation::context`]) and records it; `None` once finished.
    pub fn next_token(&mut self, logits: &[f32]) -> Option<u32> {
        if self.finished.is_some() {
            return None;
        }
        let tok = if self.penalties.is_zero() {
            self.sampler.sample(logits, &self.context)
        } else {
            self.counts.resize(logits.len(), 0);
            self.adjusted.clear();
            self.adjusted.extend_from_slice(logits);
            let Penalties { presence, frequency } = self.penalties;
            for (z, &c) in self.adjusted.iter_mut().zip(&self.counts) {
                if c > 0 {
                    *z -= presence + frequency * c as f32;
                }
            }
            self.sampler.sample(&self.adjusted, &self.context)
        };
        if let Some(count) = self.counts.get_mut(tok as usize) {
            *count += 1;
        }
        self.context.push(tok);
        self.generated += 1;
        if self.stop_tokens.contains(&tok) {
            self.finished = Some(FinishReason::Stop);
        } else if self.generated >= self.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        Some(tok)
    }

    /// Ends generation now for a reason the caller found (a stop string in the text); a stop found in the
    /// text of the last token allowed still ends it as [`FinishReason::Stop`].
    pub fn stop(&mut self) {
        self.finished = Some(FinishReason::Stop);
    }

    /// Ends generation now because the model has no room for another token (its context is full).
    pub fn stop_at_length(&mut self) {
        self.finished.get_or_insert(FinishReason::Length);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Tokens sampled so far (stop tokens included).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The tokens the model sees: the prompt (or what the window kept of it) and those generated.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// The token sampled last (the last of the prompt before any).
    pub fn last_token(&self) -> u32 {
        // Never empty: `new` refuses an empty prompt and `keep_last` keeps at least one token.
        self.context.last().copied().unwrap_or_default()
    }

    /// The distribution the last token was drawn from, after temperature / top-k / top-p.
    pub fn last_distribution(&self) -> &[f32] {
        self.sampler.distribution()
    }

    /// Forgets all but the last `keep` (at least one) tokens of the context: the window slid.
    fn keep_last(&mut self, keep: usize) {
        let start = self.context.len().saturating_sub(keep.max(1));
        self.context.drain(..start);
    }
}

/// Yields generated tokens one at a time, running the model for one [`Generation`].
///
/// When the context fills (`block_size` positions), the window slides: the cache is rebuilt from the last
/// `block_size / 2` tokens with one prefill and decoding continues, so every step still sees at least half
/// a context. The logits after a slide equal a full forward pass over that cropped window.
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m Gpt,
    state: DecodeState,
    generation: Generation,
    unfed: Option<u32>,
    prompt_cropped: bool,
}

impl<'m> Generator<'m> {
    /// Prefills `prompt`. A prompt longer than the context keeps its last `block_size` tokens (as nanoGPT
    /// does); [`Generator::prompt_cropped`] tells.
    pub fn new(model: &'m Gpt, prompt: &[u32], sampling: Sampling, seed: u64, max_new_tokens: usize) -> Result<Self> {
        Self::with_state(model, DecodeState::new(model, 256), prompt, sampling, seed, max_new_tokens)
    }

    /// As [`Generator::new`], in `state`'s cache and buffers (reset first) instead of fresh ones: a caller
    /// generating again and again (a server, a benchmark) skips allocating — and the kernel zeroing — a
    /// cache of the whole context each time. Get the state back with [`Generator::into_state`]. Errs when
    /// the state was made for a model of another shape.
    pub fn with_state(
        model: &'m Gpt,
        mut state: DecodeState,
        prompt: &[u32],
        sampling: Sampling,
        seed: u64,
        max_new_tokens: usize,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        if !state.fits(model) {
            return Err(ModelError::InvalidConfig {
                field: "state",
                reason: "the decoding state was made for a model of another shape".into(),
            });
        }
        check_generates(model)?;
        let block = model.config.block_size;
        let window = &prompt[prompt.len().saturating_sub(block)..];
        let generation = Generation::new(window, sampling, seed, max_new_tokens)?;
        state.reset();
        model.decode(&mut state, window)?;
        Ok(Self { model, state, generation, unfed: None, prompt_cropped: window.len() < prompt.len() })
    }

    /// The decoding state, to reuse with [`Generator::with_state`].
    pub fn into_state(self) -> DecodeState {
        self.state
    }

    /// Ends generation after any of these tokens (e.g. an end-of-text id).
    pub fn with_stop_tokens(mut self, stop: &[u32]) -> Self {
        self.generation = self.generation.with_stop_tokens(stop);
        self
    }

    /// Applies presence / frequency penalties; errs (naming the setting) outside their range.
    pub fn with_penalties(mut self, penalties: Penalties) -> Result<Self> {
        self.generation = self.generation.with_penalties(penalties)?;
        Ok(self)
    }

    pub fn prompt_cropped(&self) -> bool {
        self.prompt_cropped
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.generation.finish_reason()
    }

    /// Logits the last token was sampled from. Tokens are fed to the model lazily (at the start of the next
    /// `next_token`), so between two calls these still belong to the token just returned.
    pub fn logits(&self) -> &[f32] {
        self.state.logits()
    }

    /// The distribution the last token was drawn from, after temperature / top-k / top-p.
    pub fn last_distribution(&self) -> &[f32] {
        self.generation.last_distribution()
    }

    /// The context the model currently sees (window tokens, including generated ones).
    pub fn context(&self) -> &[u32] {
        self.generation.context()
    }

    /// Next token, or `None` once finished.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.generation.is_finished() {
            return Ok(None);
        }
        if let Some(tok) = self.unfed.take() {
            self.feed(tok)?;
        }
        let tok = self.generation.next_token(self.state.logits());
        self.unfed = tok;
        Ok(tok)
    }

    fn feed(&mut self, tok: u32) -> Result<()> {
        let block = self.model.config.block_size;
        if self.state.cache.len() < block {
            self.model.decode(&mut self.state, &[tok])?;
            return Ok(());
        }
        self.generation.keep_last(block / 2);
        self.state.reset();
        self.model.decode(&mut self.state, self.generation.context())?;
        Ok(())
    }
}

/// Errs unless `model` can generate with cached decoding: a classifier labels texts, and an unmerged LoRA
/// adapter is not read by the decoding kernels.
fn check_generates(model: &Gpt) -> Result<()> {
    if model.config.num_labels() > 0 {
        return Err(ModelError::InvalidConfig {
            field: "architectures",
            reason: "is GPT2ForSequenceClassification: a classifier labels texts (`lushan classify`), it does \
                     not generate them"
                .into(),
        });
    }
    if model.lora.is_some() {
        return Err(ModelError::InvalidLora {
            field: "adapter",
            reason: "cached decoding reads plain weights: merge the adapter first (`Gpt::merge_lora`)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits that make token `t` the clear favourite of 6.
    fn favour(t: usize) -> Vec<f32> {
        let mut z = vec![0.0; 6];
        z[t] = 5.0;
        z
    }

    #[test]
    fn stop_tokens_the_budget_and_the_caller_end_a_generation_with_their_reason() {
        let mut g = Generation::new(&[1], Sampling::greedy(), 0, 3).unwrap().with_stop_tokens(&[4]);
        assert_eq!(g.next_token(&favour(2)), Some(2));
        assert_eq!(g.next_token(&favour(4)), Some(4));
        assert_eq!(g.finish_reason(), Some(FinishReason::Stop));
        assert_eq!(g.next_token(&favour(2)), None);
        assert_eq!((g.generated(), g.context()), (2, &[1, 2, 4][..]));

        let mut g = Generation::new(&[1], Sampling::greedy(), 0, 2).unwrap();
        g.next_token(&favour(2));
        g.next_token(&favour(2));
        assert_eq!(g.finish_reason(), Some(FinishReason::Length));

        let mut g = Generation::new(&[1], Sampling::greedy(), 0, usize::MAX).unwrap();
        g.next_token(&favour(3));
        g.stop();
        assert_eq!((g.finish_reason(), g.next_token(&favour(3))), (Some(FinishReason::Stop), None));
        assert!(Generation::new(&[], Sampling::greedy(), 0, 1).is_err());
    }

    #[test]
    fn penalties_push_away_from_generated_tokens_and_are_checked() {
        // 2 leads 3 by 1: a presence penalty of 2 makes whichever was generated the underdog.
        let z = vec![0.0, 0.0, 3.0, 2.0, 0.0, 0.0];
        let mut g = Generation::new(&[0], Sampling::greedy(), 0, 5).unwrap();
        let plain: Vec<_> = (0..3).filter_map(|_| g.next_token(&z)).collect();
        assert_eq!(plain, [2, 2, 2]);
        let presence = Penalties { presence: 2.0, frequency: 0.0 };
        let mut g = Generation::new(&[0], Sampling::greedy(), 0, 5).unwrap().with_penalties(presence).unwrap();
        let penalised: Vec<_> = (0..3).filter_map(|_| g.next_token(&z)).collect();
        assert_eq!(penalised, [2, 3, 2]);
        for (bad, field) in [
            (Penalties { presence: 2.5, frequency: 0.0 }, "presence_penalty"),
            (Penalties { presence: 0.0, frequency: f32::NAN }, "frequency_penalty"),
        ] {
            let e = Generation::new(&[0], Sampling::greedy(), 0, 5).unwrap().with_penalties(bad).unwrap_err();
            assert!(matches!(e, ModelError::InvalidSampling { field: f, .. } if f == field), "{e}");
        }
    }
}
