//! Inspection data: why the model says what it says. Everything here is numbers read from the model's own
//! forward pass (attention probabilities, residual streams, logits) — no kernel knows about it.
//!
//! One [`Explanation`] is what `lushan explain --format json` prints and what the server's playground
//! (`POST /v1/explain`) returns; the HTML report and the PNGs are drawn from it.
//!
//! Conventions: `position` counts from 0 over the prompt's tokens; the prediction made at position `i` is for
//! token `i + 1`; probabilities are plain (not log) f32; token `text` is the decoded piece (lossy UTF-8 for a
//! byte-level token that splits a character).

use serde::{Deserialize, Serialize};

mod ablation;
mod attribution;
mod components;
mod distribution;
mod embeddings;
mod explain;
mod head_roles;
mod lens;
mod notice;
mod options;
mod patching;
mod pca;
mod predictions;
mod ranking;
mod sampling_view;
mod text;

pub use ablation::{Ablation, DataAblation, loss_windows};
pub use attribution::Attribution;
pub use components::{Component, ComponentSweep, ComponentValue};
pub use explain::explain;
pub use head_roles::{
    HEAD_ROLES_SEED, HEAD_ROLES_SEGMENT, HeadDetection, HeadRole, HeadRoles, HeadScore, detect_heads,
    detection_pattern, head_roles, head_score, repeated_random_tokens,
};
pub use notice::{Notice, what_to_notice};
pub use options::ExplainOptions;
pub use patching::Patching;

/// Everything `explain` shows about one prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    pub model: ModelSummary,
    /// The prompt's tokens, in order.
    pub tokens: Vec<TokenText>,
    /// One entry per prompt position.
    pub next_token: Vec<Prediction>,
    pub attention: Attention,
    pub logit_lens: LogitLens,
    /// Present when tokens were generated (`--generate N`).
    pub sampling: Option<SamplingView>,
    /// Present when neighbours were asked for (`--neighbors TOKEN…`).
    pub embeddings: Option<EmbeddingView>,
    /// Previous-token, duplicate-token and induction scores of every head on a seeded repeated random
    /// sequence (absent when the context cannot hold one).
    #[serde(default)]
    pub head_roles: Option<HeadRoles>,
    /// Present with `--features DIR`: each position's most active features of a sparse autoencoder.
    #[serde(default)]
    pub features: Option<crate::features::FeatureView>,
    /// Direct logit attribution of the explained prediction (always computed by `explain`).
    #[serde(default)]
    pub attribution: Option<Attribution>,
    /// Present when the ablation sweep ran (`--ablate`, `--reference`, `--data`).
    #[serde(default)]
    pub ablation: Option<Ablation>,
    /// Present with a corrupted prompt (`--corrupt TEXT`).
    #[serde(default)]
    pub patching: Option<Patching>,
    /// "What to notice": sentences read off the views above, each naming its report section.
    #[serde(default)]
    pub notice: Vec<Notice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSummary {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenText {
    pub id: u32,
    pub text: String,
}

/// A token with the probability some distribution gives it and its rank there (1 = most likely).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub text: String,
    pub prob: f32,
    pub rank: usize,
}

/// What the model predicts at one position: `softmax(logits)` there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub position: usize,
    /// The token the text actually has next (absent at the last position).
    pub actual: Option<Candidate>,
    /// `-log2(actual.prob)`.
    pub surprisal_bits: Option<f32>,
    /// The `top_k` most likely next tokens, most likely first.
    pub top: Vec<Candidate>,
    /// Entropy of the whole distribution, in bits.
    pub entropy_bits: f32,
}

/// Causal attention probabilities of every layer and head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attention {
    /// `probs[layer][head][query][key]`: a full `T × T` matrix per head, zero above the diagonal; each row
    /// sums to 1.
    pub probs: Vec<Vec<Vec<Vec<f32>>>>,
}

/// The residual stream after the embeddings and after each block, read through the final layer norm and the
/// output layer as if it were the last layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogitLens {
    /// `n_layer + 1` entries: index 0 is the embeddings (`"embed"`), index `l` the output of block `l`
    /// (`"layer l"`, 1-based). The last entry is the model's real output distribution.
    pub layers: Vec<LensLayer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LensLayer {
    pub label: String,
    /// One entry per prompt position.
    pub positions: Vec<LensCell>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LensCell {
    /// The lens's most likely tokens at this (layer, position), most likely first.
    pub top: Vec<Candidate>,
    /// The probability this layer gives to the model's final top-1 prediction at this position.
    pub final_token_prob: f32,
}

/// Tokens generated after the prompt, each with the distribution it was drawn from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplingView {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: f32,
    pub seed: u64,
    pub steps: Vec<SamplingStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplingStep {
    /// The sampled token; `prob` is its probability after temperature / top-k / top-p.
    pub chosen: Candidate,
    /// The most likely tokens of the raw model distribution, each with what the knobs made of it.
    pub candidates: Vec<SampledCandidate>,
    /// How many tokens kept a non-zero probability after top-k / top-p.
    pub kept: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampledCandidate {
    pub id: u32,
    pub text: String,
    /// `softmax(logits)`, before any knob.
    pub raw_prob: f32,
    /// The probability the token was drawn with (0 when top-k / top-p removed it).
    pub final_prob: f32,
}

/// The token embedding (`wte`) seen through cosine similarity and a 2-D projection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingView {
    pub queries: Vec<Neighbours>,
    /// The queries and their neighbours projected on the first two principal components of their embeddings.
    pub pca: Vec<ProjectedToken>,
    /// Fraction of the variance (of the projected set) along each of the two components.
    pub explained_variance: [f32; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Neighbours {
    pub token: TokenText,
    /// Most similar first; the query itself is left out.
    pub nearest: Vec<Similar>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Similar {
    pub id: u32,
    pub text: String,
    pub cosine: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectedToken {
    pub id: u32,
    pub text: String,
    pub x: f32,
    pub y: f32,
    /// True for a queried token, false for a neighbour.
    pub query: bool,
}
