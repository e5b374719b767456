//! [`explain`]: one eval-mode forward pass over the prompt, and every view read from it (and one over the
//! head-role sequence).

use super::ablation::{Ablation, ablate_data, ablate_prediction, mean_outputs};
use super::attribution::attribute;
use super::embeddings::embedding_view;
use super::head_roles::head_roles;
use super::lens::{intermediate_lens, logit_lens};
use super::notice::what_to_notice;
use super::options::ExplainOptions;
use super::patching::{patch, top_prediction};
use super::predictions::next_token_numbers;
use super::sampling_view::sampling_view;
use super::text::token;
use super::{Attention, Explanation, ModelSummary};
use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};
use std::time::Instant;

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
    // Attribution and the weight-based views read the matrices as f32; a converted model is widened first
    // (`Gpt::into_f32_weights`) by whoever loaded it.
    model.require_f32("explain")?;
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

    // The causal views explain one prediction: `position`'s, of `target`.
    let position = options.position.unwrap_or(t - 1);
    if position >= t {
        return Err(ModelError::InvalidExplainOption {
            field: "position",
            reason: format!("{position} is out of range: the prompt has {t} tokens (positions 0..={})", t - 1),
        });
    }
    let target = match (options.target, prompt.get(position + 1)) {
        (Some(id), _) | (None, Some(&id)) => id,
        (None, None) => final_top1[position],
    };
    let started = Instant::now();
    let versus_token = options.versus.map(|id| token(id, token_text));
    let attribution =
        attribute(model, &acts, position, token(target, token_text), versus_token, options.top_components);
    // The activations of a long prompt are the largest allocation here; nothing after needs them.
    drop(acts);
    let ablation = if options.ablates() {
        let means = options.ablation_reference.as_deref().map(|r| mean_outputs(model, r)).transpose()?;
        let (clean_log_prob, zero, mean) =
            ablate_prediction(model, prompt, position, target, means.as_ref(), options.top_components)?;
        let seconds = started.elapsed().as_secs_f32();
        let data = options
            .ablation_data
            .as_deref()
            .map(|data| ablate_data(model, data, means.as_ref(), options.top_components))
            .transpose()?;
        Some(Ablation {
            position,
            target: token(target, token_text),
            clean_log_prob,
            zero,
            mean,
            reference_tokens: means.as_ref().map(|m| m.tokens),
            data,
            seconds,
        })
    } else {
        None
    };
    let patching = match &options.corrupt {
        Some(corrupted) => {
            if corrupted.len() != t {
                return Err(ModelError::InvalidExplainOption {
                    field: "corrupt",
                    reason: format!(
                        "the corrupted prompt is {} tokens long but the prompt is {t}: patching pairs positions, \
                         so both must have the same number of tokens",
                        corrupted.len()
                    ),
                });
            }
            model.check_tokens(corrupted, false)?;
            let versus = match options.versus {
                Some(id) => id,
                None => top_prediction(model, corrupted, position)?,
            };
            if versus == target {
                return Err(ModelError::InvalidExplainOption {
                    field: "versus",
                    reason: format!(
                        "the corrupted prompt's top prediction at position {position} is the target token {target} \
                         too, so there is no logit difference to recover: give a second token to compare against"
                    ),
                });
            }
            Some(patch(model, prompt, corrupted, position, (target, versus), options.top_components, token_text)?)
        }
        None => None,
    };

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

    let mut explanation = Explanation {
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
        attribution: Some(attribution),
        ablation,
        patching,
        notice: Vec::new(),
    };
    explanation.notice = what_to_notice(&explanation);
    Ok(explanation)
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
