//! Activation patching (causal tracing): run a corrupted prompt, copy one activation of the clean prompt
//! into it, and see how much of the clean prediction comes back.
//!
//! The measure is the logit difference `logit(target) − logit(versus)` at the explained position;
//! `recovered = (patched − corrupted) / (clean − corrupted)`: 0 where the patched activation carries none of
//! what distinguishes the prompts, 1 where it carries all of it. Patched are the residual stream entering
//! each layer at each position (TransformerLens' `get_act_patch_resid_pre`) and each head's `z` at every
//! position at once (`get_act_patch_attn_head_out_all_pos`).

use super::TokenText;
use super::components::{Component, ComponentValue, run_variants};
use super::text::{TokenTextFn, token};
use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};
use crate::intervene::{Edit, Site};
use lushan_kernels::crossentropy::IGNORE_INDEX;
use serde::{Deserialize, Serialize};

/// What patching clean activations into the corrupted run recovers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Patching {
    /// The corrupted prompt's tokens (as many as the clean prompt's).
    pub corrupted_tokens: Vec<TokenText>,
    /// The position whose prediction is measured (0-based).
    pub position: usize,
    pub target: TokenText,
    pub versus: TokenText,
    /// `logit(target) − logit(versus)` of the clean and of the corrupted run.
    pub clean_diff: f32,
    pub corrupted_diff: f32,
    /// `resid[layer][position]`: recovered fraction when the stream entering `layer` (0 = the embeddings)
    /// at `position` is the clean one.
    pub resid: Vec<Vec<f32>>,
    /// `heads[layer][head]`: recovered fraction when the head's `z` is the clean one at every position.
    pub heads: Vec<Vec<f32>>,
    /// The heads recovering the most (by magnitude), largest first.
    pub top: Vec<ComponentValue>,
}

/// Below this gap between the clean and the corrupted logit difference a fraction of it means nothing.
const MIN_DIFF_GAP: f32 = 1e-6;

/// The corrupted prompt's top prediction at `position`: the default `versus` token.
pub(super) fn top_prediction(model: &Gpt, prompt: &[u32], position: usize) -> Result<u32> {
    let mut acts = Activations::new(&model.config, 1, prompt.len())?;
    model.forward(&mut acts, prompt, None, Mode::Eval)?;
    let v = model.config.vocab_size;
    let row = &acts.logits[position * v..(position + 1) * v];
    // Ties go to the lower id, as in every ranked list of `explain`.
    let best = row.iter().enumerate().fold(0, |best, (id, &x)| if x > row[best] { id } else { best });
    Ok(best as u32)
}

/// Patches every residual stream × position and every head from `clean` into `corrupted` (same length),
/// measuring `logit(target) − logit(versus)` at `position`.
///
/// # Errors
/// Prompts between which the logit difference does not change (the caller checks the lengths).
pub(super) fn patch(
    model: &Gpt,
    clean: &[u32],
    corrupted: &[u32],
    position: usize,
    (target, versus): (u32, u32),
    top_n: usize,
    token_text: TokenTextFn,
) -> Result<Patching> {
    let cfg = &model.config;
    let (t, c, nh, v) = (clean.len(), cfg.n_embd, cfg.n_head, cfg.vocab_size);
    let hs = c / nh;
    let mut targets = vec![IGNORE_INDEX; t];
    targets[position] = target;
    // One counted row per element: its logits are row `element` of `acts.logits`.
    let diff = |acts: &Activations, element: usize| {
        let row = &acts.logits[element * v..(element + 1) * v];
        row[target as usize] - row[versus as usize]
    };

    // The clean run's streams and head outputs, to copy from.
    let mut acts = Activations::new(cfg, 1, t)?;
    model.forward(&mut acts, clean, Some(&targets), Mode::Eval)?;
    let clean_diff = diff(&acts, 0);
    let streams: Vec<Vec<f32>> = std::iter::once(&acts.encoded)
        .chain(acts.layers.iter().map(|layer| &layer.residual3))
        .take(cfg.n_layer)
        .cloned()
        .collect();
    let clean_z: Vec<Vec<Vec<f32>>> = acts
        .layers
        .iter()
        .map(|layer| {
            (0..nh)
                .map(|h| layer.atty.chunks_exact(c).flat_map(|row| row[h * hs..(h + 1) * hs].iter().copied()).collect())
                .collect()
        })
        .collect();
    drop(acts);

    // Last layer first, so every batch recomputes only from its own layer on.
    let mut variants = Vec::with_capacity(cfg.n_layer * (t + nh));
    for layer in (0..cfg.n_layer).rev() {
        for pos in 0..t {
            let row = streams[layer][pos * c..(pos + 1) * c].to_vec();
            variants.push(vec![Edit::set(Site::ResidPre { layer }, None, Some(pos), row)]);
        }
        for (head, z) in clean_z[layer].iter().enumerate() {
            variants.push(vec![Edit::set(Site::HeadZ { layer, head }, None, None, z.clone())]);
        }
    }
    let (corrupted_diff, patched) = run_variants(model, corrupted, &targets, &variants, diff)?;
    let gap = clean_diff - corrupted_diff;
    if gap.abs() < MIN_DIFF_GAP {
        return Err(ModelError::InvalidExplainOption {
            field: "corrupt",
            reason: format!(
                "the logit difference is {clean_diff} on both prompts: the corruption changes nothing to recover \
                 (choose another --corrupt text or --versus token)"
            ),
        });
    }
    let recovered: Vec<f32> = patched.iter().map(|&p| (p - corrupted_diff) / gap).collect();
    let mut resid = Vec::with_capacity(cfg.n_layer);
    let mut heads = Vec::with_capacity(cfg.n_layer);
    for layer_values in recovered.chunks(t + nh).rev() {
        resid.push(layer_values[..t].to_vec());
        heads.push(layer_values[t..].to_vec());
    }
    let all = heads
        .iter()
        .enumerate()
        .flat_map(|(layer, hv)| {
            hv.iter()
                .enumerate()
                .map(move |(head, &value)| ComponentValue { component: Component::Head { layer, head }, value })
        })
        .collect();
    Ok(Patching {
        corrupted_tokens: corrupted.iter().map(|&id| token(id, token_text)).collect(),
        position,
        target: token(target, token_text),
        versus: token(versus, token_text),
        clean_diff,
        corrupted_diff,
        resid,
        heads,
        top: super::attribution::largest(all, top_n),
    })
}
