//! A token stream from a prompt: prefill, then sample and feed one token per step. Shared by the CLI and
//! the server; it knows only token ids.

use crate::decode::DecodeState;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::sampling::{Sampler, Sampling};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` were generated.
    Length,
    /// A stop token was generated (it is the last token returned).
    Stop,
}

/// Yields generated tokens one at a time.
///
/// When the context fills (`block_size` positions), the window slides: the cache is rebuilt from the last
/// `block_size / 2` tokens with one prefill and decoding continues, so every step still sees at least half
/// a context. The logits after a slide equal a full forward pass over that cropped window.
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m Gpt,
    state: DecodeState,
    sampler: Sampler,
    tokens: Vec<u32>,
    unfed: Option<u32>,
    generated: usize,
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
    finished: Option<FinishReason>,
    prompt_cropped: bool,
}

impl<'m> Generator<'m> {
    /// Prefills `prompt`. A prompt longer than the context keeps its last `block_size` tokens (as nanoGPT
    /// does); [`Generator::prompt_cropped`] tells.
    pub fn new(model: &'m Gpt, prompt: &[u32], sampling: Sampling, seed: u64, max_new_tokens: usize) -> Result<Self> {
        if prompt.is_empty() {
            return Err(ModelError::EmptyInput);
        }
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
        let sampler = Sampler::new(sampling, seed)?;
        let block = model.config.block_size;
        let window = &prompt[prompt.len().saturating_sub(block)..];
        let mut state = DecodeState::new(model, 256);
        model.decode(&mut state, window)?;
        Ok(Self {
            model,
            state,
            sampler,
            tokens: window.to_vec(),
            unfed: None,
            generated: 0,
            max_new_tokens,
            stop_tokens: Vec::new(),
            finished: (max_new_tokens == 0).then_some(FinishReason::Length),
            prompt_cropped: window.len() < prompt.len(),
        })
    }

    /// Ends generation after any of these tokens (e.g. an end-of-text id).
    pub fn with_stop_tokens(mut self, stop: &[u32]) -> Self {
        self.stop_tokens = stop.to_vec();
        self
    }

    pub fn prompt_cropped(&self) -> bool {
        self.prompt_cropped
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Logits the last token was sampled from. Tokens are fed to the model lazily (at the start of the next
    /// `next_token`), so between two calls these still belong to the token just returned.
    pub fn logits(&self) -> &[f32] {
        self.state.logits()
    }

    /// The distribution the last token was drawn from, after temperature / top-k / top-p.
    pub fn last_distribution(&self) -> &[f32] {
        self.sampler.distribution()
    }

    /// The context the model currently sees (window tokens, including generated ones).
    pub fn context(&self) -> &[u32] {
        &self.tokens
    }

    /// Next token, or `None` once finished.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.finished.is_some() {
            return Ok(None);
        }
        if let Some(tok) = self.unfed.take() {
            self.feed(tok)?;
        }
        let tok = self.sampler.sample(self.state.logits(), &self.tokens);
        self.tokens.push(tok);
        self.unfed = Some(tok);
        self.generated += 1;
        if self.stop_tokens.contains(&tok) {
            self.finished = Some(FinishReason::Stop);
        } else if self.generated >= self.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        Ok(Some(tok))
    }

    fn feed(&mut self, tok: u32) -> Result<()> {
        let block = self.model.config.block_size;
        if self.state.cache.len() < block {
            self.model.decode(&mut self.state, &[tok])?;
            return Ok(());
        }
        let keep = (block / 2).max(1);
        let start = self.tokens.len() - keep;
        self.tokens.drain(..start);
        self.state.reset();
        self.model.decode(&mut self.state, &self.tokens)?;
        Ok(())
    }
}
