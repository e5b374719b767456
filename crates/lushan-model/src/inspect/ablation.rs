//! Ablation: switch one head or one MLP off and see what the prediction loses.
//!
//! Zero ablation writes zeros where the component's output would be (a head's `z`, TransformerLens'
//! `hook_z`; an MLP's output, `hook_mlp_out`); mean ablation writes the component's mean output over every
//! position of a reference text instead, which keeps the stream at its usual scale. Each variant is one
//! edited forward ([`Gpt::forward_edited`]); a sweep runs them as batch elements, last layer first, so every
//! batch recomputes only the layers from its own on.

use super::TokenText;
use super::components::{ComponentSweep, run_variants};
use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};
use crate::intervene::{Edit, Site};
use lushan_kernels::crossentropy::IGNORE_INDEX;
use serde::{Deserialize, Serialize};

/// What switching each head and each MLP off does to the explained prediction (and to a text's loss).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ablation {
    /// The position whose prediction is explained (0-based) and the token whose log-probability is read.
    pub position: usize,
    pub target: TokenText,
    /// `ln p(target)` of the unedited model.
    pub clean_log_prob: f32,
    /// `ln p(target)` ablated − clean, per component, zeros written.
    pub zero: ComponentSweep,
    /// The same with the component's mean output over the reference text (present with a reference).
    pub mean: Option<ComponentSweep>,
    /// Tokens of the reference text the means were taken over.
    pub reference_tokens: Option<usize>,
    /// The change of the mean loss over a whole text (present with `data`).
    pub data: Option<DataAblation>,
    /// Wall time of the attribution and of the zero / mean sweeps at the explained position (not `data`),
    /// in seconds.
    pub seconds: f32,
}

/// The mean next-token loss over a text, and its change (ablated − clean, nats per token) per component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataAblation {
    /// Predicted tokens the mean is over.
    pub tokens: usize,
    pub clean_loss: f32,
    pub zero: ComponentSweep,
    pub mean: Option<ComponentSweep>,
}

/// Each head's mean `z` (hs values) and each MLP's mean output (C values) over a text: `heads[layer][head]`,
/// `mlp[layer]`.
#[derive(Debug, Clone)]
pub(super) struct MeanOutputs {
    pub heads: Vec<Vec<Vec<f32>>>,
    pub mlp: Vec<Vec<f32>>,
    pub tokens: usize,
}

/// Every head and MLP, last layer first, with `edit` making one ablation of it: per layer `n_head` heads then
/// the MLP.
fn sweep_variants(model: &Gpt, mean: Option<&MeanOutputs>) -> Vec<Vec<Edit>> {
    let cfg = &model.config;
    let mut variants = Vec::with_capacity(cfg.n_layer * (cfg.n_head + 1));
    for layer in (0..cfg.n_layer).rev() {
        for head in 0..cfg.n_head {
            let site = Site::HeadZ { layer, head };
            variants.push(vec![match mean {
                Some(m) => Edit::set(site, None, None, m.heads[layer][head].clone()),
                None => Edit::zero(site),
            }]);
        }
        let site = Site::MlpOut { layer };
        variants.push(vec![match mean {
            Some(m) => Edit::set(site, None, None, m.mlp[layer].clone()),
            None => Edit::zero(site),
        }]);
    }
    variants
}

/// Sweep results (last layer first) regrouped per layer, first layer first: `n_head + 1` values a layer.
fn per_layer(values: &[f32], model: &Gpt) -> Vec<Vec<f32>> {
    let mut layers: Vec<Vec<f32>> = values.chunks(model.config.n_head + 1).map(<[f32]>::to_vec).collect();
    layers.reverse();
    layers
}

/// Zero (and with `mean`, mean) ablation of every head and MLP: the change of `ln p(target)` at `position`.
/// Returns the clean log-probability and the sweeps.
pub(super) fn ablate_prediction(
    model: &Gpt,
    prompt: &[u32],
    position: usize,
    target: u32,
    mean: Option<&MeanOutputs>,
    top_n: usize,
) -> Result<(f32, ComponentSweep, Option<ComponentSweep>)> {
    let t = prompt.len();
    let mut targets = vec![IGNORE_INDEX; t];
    targets[position] = target;
    // One counted target per element: its loss is −ln p(target).
    let log_prob = |acts: &Activations, element: usize| -acts.losses[element * t + position];
    let mut variants = sweep_variants(model, None);
    if let Some(mean) = mean {
        variants.extend(sweep_variants(model, Some(mean)));
    }
    let (clean, results) = run_variants(model, prompt, &targets, &variants, log_prob)?;
    let deltas: Vec<f32> = results.iter().map(|&r| r - clean).collect();
    let half = variants.len() / if mean.is_some() { 2 } else { 1 };
    let zero = ComponentSweep::from_layers(&per_layer(&deltas[..half], model), top_n);
    let mean = mean.map(|_| ComponentSweep::from_layers(&per_layer(&deltas[half..], model), top_n));
    Ok((clean, zero, mean))
}

/// The text cut into windows the model can read: inputs of up to `block_size` tokens, each followed by its
/// next token as the target. Consecutive windows share one token (the last target of one is the first input
/// of the next), so every token after the first is a target exactly once.
pub fn loss_windows(tokens: &[u32], block_size: usize) -> impl Iterator<Item = &[u32]> {
    let step = block_size.max(1);
    (0..tokens.len().saturating_sub(1))
        .step_by(step)
        .map(move |start| &tokens[start..(start + step + 1).min(tokens.len())])
}

/// Zero (and mean) ablation of every component, read as the change of the mean loss over `data`.
pub(super) fn ablate_data(model: &Gpt, data: &[u32], mean: Option<&MeanOutputs>, top_n: usize) -> Result<DataAblation> {
    if data.len() < 2 {
        return Err(ModelError::InvalidExplainOption {
            field: "ablation_data",
            reason: format!("the text has {} token(s); at least 2 are needed to measure a loss", data.len()),
        });
    }
    let mut variants = sweep_variants(model, None);
    if let Some(mean) = mean {
        variants.extend(sweep_variants(model, Some(mean)));
    }
    // Σ loss over every window, clean and per variant.
    let mut clean_sum = 0.0f64;
    let mut sums = vec![0.0f64; variants.len()];
    let mut tokens = 0usize;
    for window in loss_windows(data, model.config.block_size) {
        let (inputs, targets) = (&window[..window.len() - 1], &window[1..]);
        let t = inputs.len();
        let loss_sum = |acts: &Activations, element: usize| -> f64 {
            acts.losses[element * t..(element + 1) * t].iter().map(|&l| l as f64).sum()
        };
        let (clean, results) = run_variants(model, inputs, targets, &variants, loss_sum)?;
        clean_sum += clean;
        sums.iter_mut().zip(results).for_each(|(s, r)| *s += r);
        tokens += t;
    }
    let clean_loss = clean_sum / tokens as f64;
    let deltas: Vec<f32> = sums.iter().map(|s| (s / tokens as f64 - clean_loss) as f32).collect();
    let half = variants.len() / if mean.is_some() { 2 } else { 1 };
    Ok(DataAblation {
        tokens,
        clean_loss: clean_loss as f32,
        zero: ComponentSweep::from_layers(&per_layer(&deltas[..half], model), top_n),
        mean: mean.map(|_| ComponentSweep::from_layers(&per_layer(&deltas[half..], model), top_n)),
    })
}

/// Each head's mean `z` and each MLP's mean output over every position of `reference` (read in windows of
/// the model's context).
pub(super) fn mean_outputs(model: &Gpt, reference: &[u32]) -> Result<MeanOutputs> {
    let cfg = &model.config;
    let (c, nh) = (cfg.n_embd, cfg.n_head);
    let hs = c / nh;
    if reference.is_empty() {
        return Err(ModelError::InvalidExplainOption {
            field: "ablation_reference",
            reason: "the reference text has no tokens; give some text to take the mean outputs over".into(),
        });
    }
    let mut z_sum = vec![vec![0.0f64; c]; cfg.n_layer];
    let mut mlp_sum = vec![vec![0.0f64; c]; cfg.n_layer];
    for window in reference.chunks(cfg.block_size.max(1)) {
        let mut acts = Activations::new(cfg, 1, window.len())?;
        model.forward(&mut acts, window, None, Mode::Eval)?;
        for (l, layer) in acts.layers.iter().enumerate() {
            for row in layer.atty.chunks_exact(c) {
                z_sum[l].iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
            }
            // MLP output = residual3 − residual2.
            for (after, before) in layer.residual3.chunks_exact(c).zip(layer.residual2.chunks_exact(c)) {
                for ((s, &a), &b) in mlp_sum[l].iter_mut().zip(after).zip(before) {
                    *s += a as f64 - b as f64;
                }
            }
        }
    }
    let n = reference.len() as f64;
    let mean = |v: &[f64]| -> Vec<f32> { v.iter().map(|s| (s / n) as f32).collect() };
    Ok(MeanOutputs {
        heads: z_sum.iter().map(|z| (0..nh).map(|h| mean(&z[h * hs..(h + 1) * hs])).collect()).collect(),
        mlp: mlp_sum.iter().map(|m| mean(m)).collect(),
        tokens: reference.len(),
    })
}
