//! [`explain`]: one eval-mode forward pass over the prompt, and every view read from it (and one over the
//! head-role sequence).

use super::embeddings::embedding_view;
use super::head_roles::head_roles;
use super::lens::{intermediate_lens, logit_lens};
use super::options::ExplainOptions;
use super::predictions::next_token_numbers;
use super::sampling_view::sampling_view;
use super::text::token;
use super::{Attention, Explanation, ModelSummary};
use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};

/// Everything `lushan explain` shows about `prompt` (token ids): next-token predictions, attention maps,
/// the logit lens, and — when `options` ask — a sampled continuation and embedding neighbours.
///
/// `token_text` decodes one id for display (e.g. a tokenizer's decode of `[id]`).
///
/// # Errors
/// An empty prompt, one longer than the model's context, an id outside the vocabulary, `top_k == 0`,
/// an invalid sampling setting or neighbour id; each names what was wrong.
pub fn explain(
    model: &Gpt,
    prompt: &[u32],
    token_text: &dyn Fn(u32) -> String,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let cfg = &model.config;
    if prompt.is_empty() {
        return Err(ModelError::EmptyInput);
    }
    if prompt.len() > cfg.block_size {
        return Err(ModelError::SequenceTooLong { len: prompt.len(), block_size: cfg.block_size });
    }
    model.check_tokens(prompt, false)?;
    options.validate(cfg)?;

    let t = prompt.len();
    let mut acts = Activations::new(cfg, 1, t)?;
    model.forward(&mut acts, prompt, None, Mode::Eval)?;
    let predictions = next_token_numbers(&acts.logits, prompt, cfg.vocab_size, options.top_k);
    let final_top1: Vec<u32> = predictions.iter().map(|p| p.top1().map_or(0, |top1| top1.id)).collect();
    let intermediate = intermediate_lens(model, &acts, &final_top1, options.top_k);
    let attention = attention_maps(&acts, cfg.n_head, t);
    // The activations of a long prompt are the largest allocation here; generation needs none of them.
    drop(acts);

    let sampling = if options.generate > 0 {
        let view =
            sampling_view(model, prompt, &options.sampling, options.seed, options.generate, options.top_k, token_text)?;
        Some(view)
    } else {
        None
    };
    let head_roles = head_roles(model)?;
    let embeddings = (!options.neighbors.is_empty())
        .then(|| embedding_view(model, &options.neighbors, options.neighbor_count, token_text));

    Ok(Explanation {
        model: ModelSummary {
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_embd: cfg.n_embd,
            block_size: cfg.block_size,
            vocab_size: cfg.vocab_size,
        },
        tokens: prompt.iter().map(|&id| token(id, token_text)).collect(),
        next_token: predictions.iter().enumerate().map(|(i, p)| p.to_prediction(i, token_text)).collect(),
        attention,
        logit_lens: logit_lens(&intermediate, &predictions, token_text),
        sampling,
        embeddings,
        head_roles,
        features: None,
    })
}

/// `probs[layer][head][query][key]` from each layer's `att` buffer, laid out (B = 1, NH, T, T).
fn attention_maps(acts: &Activations, n_head: usize, t: usize) -> Attention {
    let probs = acts
        .layers
        .iter()
        .map(|layer| {
            layer
                .att
                .chunks_exact(t * t)
                .take(n_head)
                .map(|head| head.chunks_exact(t).map(<[f32]>::to_vec).collect())
                .collect()
        })
        .collect();
    Attention { probs }
}
