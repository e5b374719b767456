//! What `explain --features` shows: for each prompt token, its most active SAE features, each with its
//! top-activating contexts from the text the SAE was trained on.

use serde::{Deserialize, Serialize};

use super::io::{SavedSae, model_fingerprint};
use super::{SaeBatch, residual_stream};
use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};

/// A place in the training text where a feature fired: the token and the text around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub activation: f32,
    /// Decoded text of the tokens before the activating one.
    pub before: String,
    /// The activating token.
    pub token: String,
    /// Decoded text of a few tokens after it.
    pub after: String,
}

/// One feature's activation at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureActivation {
    pub feature: usize,
    pub activation: f32,
    /// Its strongest contexts in the training text.
    pub contexts: Vec<Context>,
}

/// The most active features at one prompt position, strongest first (only active ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFeatures {
    pub position: usize,
    /// Active features at this position.
    pub l0: usize,
    pub top: Vec<FeatureActivation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureView {
    /// The residual stream the SAE reads: entering block `layer` (0 = the embeddings).
    pub layer: usize,
    pub n_features: usize,
    /// The SAE's training summary (reconstruction loss, L0, dead features, loss preserved).
    pub summary: serde_json::Value,
    pub positions: Vec<TokenFeatures>,
}

/// Runs `model` over `prompt`, encodes the residual stream the SAE was trained on and lists each position's
/// `top_k` most active features with up to `contexts_per_feature` contexts.
///
/// # Errors
/// An SAE trained for another model (its fingerprint differs) or a layer this model does not have.
pub fn feature_view(
    model: &Gpt,
    saved: &SavedSae,
    prompt: &[u32],
    top_k: usize,
    contexts_per_feature: usize,
) -> Result<FeatureView> {
    let cfg = &model.config;
    let sae_cfg = &saved.sae.config;
    let fingerprint = model_fingerprint(model);
    if sae_cfg.model_hash != fingerprint {
        return Err(ModelError::InvalidExplainOption {
            field: "features",
            reason: format!(
                "the SAE was trained on another model (fingerprint {}; this model's is {fingerprint}): train one \
                 for this model with `lushan features train`",
                sae_cfg.model_hash
            ),
        });
    }
    if sae_cfg.layer > cfg.n_layer || sae_cfg.n_embd != cfg.n_embd {
        return Err(ModelError::InvalidExplainOption {
            field: "features",
            reason: format!(
                "the SAE reads layer {} of width {}; this model has layers 0..={} of width {}",
                sae_cfg.layer, sae_cfg.n_embd, cfg.n_layer, cfg.n_embd
            ),
        });
    }
    let mut acts = Activations::with_lora(cfg, 1, prompt.len(), model.lora_shape())?;
    model.forward(&mut acts, prompt, None, Mode::Eval)?;
    let x = residual_stream(&acts, sae_cfg.layer).unwrap_or(&acts.encoded);
    let mut batch = SaeBatch::default();
    saved.sae.encode(x, &mut batch);
    let f = sae_cfg.n_features;
    let positions = batch
        .features
        .chunks_exact(f)
        .enumerate()
        .map(|(position, feats)| {
            let mut active: Vec<(usize, f32)> = feats.iter().copied().enumerate().filter(|&(_, a)| a > 0.0).collect();
            let l0 = active.len();
            active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let top = active
                .into_iter()
                .take(top_k)
                .map(|(feature, activation)| FeatureActivation {
                    feature,
                    activation,
                    contexts: saved
                        .contexts
                        .get(feature)
                        .map_or_else(Vec::new, |c| c.iter().take(contexts_per_feature).cloned().collect()),
                })
                .collect();
            TokenFeatures { position, l0, top }
        })
        .collect();
    Ok(FeatureView { layer: sae_cfg.layer, n_features: f, summary: saved.summary.clone(), positions })
}
