//! Head roles: how much each attention head behaves like a previous-token, duplicate-token or induction
//! head, measured as TransformerLens' `head_detector.detect_head` does with `error_measure="mul"`.
//!
//! The model reads a seeded random token sequence repeated twice (`x₀ … x_{n−1} x₀ … x_{n−1}`). For a
//! role, a 0/1 *detection pattern* `D` (T × T, lower triangular) marks the (query, key) pairs that role
//! attends to:
//! - previous token: `D[i][i−1] = 1`;
//! - duplicate token: `D[i][j] = 1` when `j < i` and `tokens[j] == tokens[i]` (in the second half: the same
//!   token one repetition earlier);
//! - induction: `D[i][j] = dup[i][j−1]` for `j ≥ 1` — the token *after* an earlier copy of the current one,
//!   the one an induction head copies forward.
//!
//! A head's score is `Σ A⊙D / Σ A` over its attention probabilities `A` (T × T): the fraction of its
//! attention that goes where the role says. With `exclude_bos` column 0 of `A` is zeroed first, with
//! `exclude_current_token` its diagonal (lushan has no BOS token: "bos" is position 0, as in TransformerLens
//! when the sequence is fed without a prepended BOS).

use serde::{Deserialize, Serialize};

use crate::activations::Activations;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};
use lushan_kernels::rng::Rng;

/// Seed of the random sequence `explain` and the trainer's evaluations measure head roles on, so that two
/// runs (and two checkpoints of one run) are scored on the same tokens.
pub const HEAD_ROLES_SEED: u64 = 0x0068_6561_6473;
/// Length of the random segment that is repeated (the sequence is twice as long), cut to what the model's
/// context and vocabulary allow.
pub const HEAD_ROLES_SEGMENT: usize = 32;
/// Strongest heads listed per role in [`HeadRoles::strongest`].
const STRONGEST_PER_ROLE: usize = 3;

/// The three roles TransformerLens' head detector names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadRole {
    PreviousToken,
    DuplicateToken,
    Induction,
}

impl HeadRole {
    pub const ALL: [HeadRole; 3] = [HeadRole::PreviousToken, HeadRole::DuplicateToken, HeadRole::Induction];

    /// A label for tables and pictures.
    pub fn label(self) -> &'static str {
        match self {
            HeadRole::PreviousToken => "previous token",
            HeadRole::DuplicateToken => "duplicate token",
            HeadRole::Induction => "induction",
        }
    }
}

/// TransformerLens' `exclude_bos` / `exclude_current_token` (both false by default, as there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadDetection {
    pub exclude_bos: bool,
    pub exclude_current_token: bool,
}

/// One head's score for one role; `layer` and `head` are 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadScore {
    pub role: HeadRole,
    pub layer: usize,
    pub head: usize,
    pub score: f32,
}

/// Every head's score for every role, on one repeated random sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadRoles {
    /// The token ids the model read: a random segment and its repetition.
    pub tokens: Vec<u32>,
    /// Seed the segment was drawn with.
    pub seed: u64,
    pub detection: HeadDetection,
    /// `[layer][head]` scores in 0..=1.
    pub previous_token: Vec<Vec<f32>>,
    pub duplicate_token: Vec<Vec<f32>>,
    pub induction: Vec<Vec<f32>>,
    /// For each role (in [`HeadRole::ALL`] order) its strongest heads, highest score first.
    pub strongest: Vec<HeadScore>,
}

impl HeadRoles {
    /// The `[layer][head]` scores of `role`.
    pub fn scores(&self, role: HeadRole) -> &[Vec<f32>] {
        match role {
            HeadRole::PreviousToken => &self.previous_token,
            HeadRole::DuplicateToken => &self.duplicate_token,
            HeadRole::Induction => &self.induction,
        }
    }

    /// Every head scored for `role`, highest score first (ties: lower layer, then lower head).
    pub fn ranked(&self, role: HeadRole) -> Vec<HeadScore> {
        ranked(role, self.scores(role))
    }

    /// The head that scores highest for `role` (absent for a model without heads).
    pub fn strongest(&self, role: HeadRole) -> Option<HeadScore> {
        self.ranked(role).into_iter().next()
    }
}

fn ranked(role: HeadRole, scores: &[Vec<f32>]) -> Vec<HeadScore> {
    let mut all: Vec<HeadScore> = scores
        .iter()
        .enumerate()
        .flat_map(|(layer, heads)| {
            heads.iter().enumerate().map(move |(head, &score)| HeadScore { role, layer, head, score })
        })
        .collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.layer.cmp(&b.layer)).then(a.head.cmp(&b.head)));
    all
}

/// `segment` distinct random token ids (distinct when the vocabulary allows it, so that every duplicate is
/// the planted repetition) followed by the same ids again.
pub fn repeated_random_tokens(vocab_size: usize, segment: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut first: Vec<u32> = Vec::with_capacity(segment);
    while first.len() < segment && vocab_size > 0 {
        let id = rng.below(vocab_size as u64) as u32;
        if first.len() >= vocab_size || !first.contains(&id) {
            first.push(id);
        }
    }
    let mut tokens = first.clone();
    tokens.extend_from_slice(&first);
    tokens
}

/// The detection pattern of `role` for `tokens`, (T × T) row-major: 1 where the role attends, else 0.
pub fn detection_pattern(role: HeadRole, tokens: &[u32]) -> Vec<f32> {
    let t = tokens.len();
    let duplicate = |i: usize, j: usize| j < i && tokens[i] == tokens[j];
    let mut pattern = vec![0.0f32; t * t];
    for i in 0..t {
        for j in 0..=i {
            let hit = match role {
                HeadRole::PreviousToken => j + 1 == i,
                HeadRole::DuplicateToken => duplicate(i, j),
                HeadRole::Induction => j >= 1 && duplicate(i, j - 1),
            };
            if hit {
                pattern[i * t + j] = 1.0;
            }
        }
    }
    pattern
}

/// `Σ A⊙D / Σ A` for one head's attention `A` and a detection pattern `D`, both (T × T); 0 when the
/// excluded entries leave no attention at all.
pub fn head_score(attention: &[f32], pattern: &[f32], t: usize, detection: HeadDetection) -> f32 {
    let (mut hit, mut total) = (0.0f64, 0.0f64);
    for i in 0..t {
        for j in 0..=i {
            if (detection.exclude_bos && j == 0) || (detection.exclude_current_token && i == j) {
                continue;
            }
            let a = f64::from(attention[i * t + j]);
            hit += a * f64::from(pattern[i * t + j]);
            total += a;
        }
    }
    if total > 0.0 { (hit / total) as f32 } else { 0.0 }
}

/// Runs `model` over `tokens` (eval mode) and scores every head for every role.
///
/// # Errors
/// Fewer than 2 tokens, more than the context, or an id outside the vocabulary.
pub fn detect_heads(model: &Gpt, tokens: &[u32], seed: u64, detection: HeadDetection) -> Result<HeadRoles> {
    let cfg = &model.config;
    let t = tokens.len();
    if t < 2 {
        return Err(ModelError::InvalidExplainOption {
            field: "head roles",
            reason: format!("the sequence needs at least 2 tokens, got {t}"),
        });
    }
    if t > cfg.block_size {
        return Err(ModelError::SequenceTooLong { len: t, block_size: cfg.block_size });
    }
    let mut acts = Activations::with_lora(cfg, 1, t, model.lora_shape())?;
    model.forward(&mut acts, tokens, None, Mode::Eval)?;
    let patterns = HeadRole::ALL.map(|role| detection_pattern(role, tokens));
    // scores[role][layer][head]; `att` is (B = 1, NH, T, T) per layer.
    let [previous_token, duplicate_token, induction] = patterns.map(|pattern| {
        acts.layers
            .iter()
            .map(|layer| {
                layer.att.chunks_exact(t * t).take(cfg.n_head).map(|a| head_score(a, &pattern, t, detection)).collect()
            })
            .collect::<Vec<Vec<f32>>>()
    });
    let strongest = [(HeadRole::PreviousToken, &previous_token), (HeadRole::DuplicateToken, &duplicate_token)]
        .into_iter()
        .chain([(HeadRole::Induction, &induction)])
        .flat_map(|(role, scores)| ranked(role, scores).into_iter().take(STRONGEST_PER_ROLE))
        .collect();
    Ok(HeadRoles { tokens: tokens.to_vec(), seed, detection, previous_token, duplicate_token, induction, strongest })
}

/// Head roles on the standard sequence ([`HEAD_ROLES_SEED`], a segment of up to [`HEAD_ROLES_SEGMENT`]
/// tokens repeated), or `None` when the model's context cannot hold a segment of 2 repeated.
pub fn head_roles(model: &Gpt) -> Result<Option<HeadRoles>> {
    let cfg = &model.config;
    let segment = HEAD_ROLES_SEGMENT.min(cfg.block_size / 2).min(cfg.vocab_size);
    if segment < 2 {
        return Ok(None);
    }
    let tokens = repeated_random_tokens(cfg.vocab_size, segment, HEAD_ROLES_SEED);
    detect_heads(model, &tokens, HEAD_ROLES_SEED, HeadDetection::default()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn patterns_mark_the_roles_of_a_repeated_sequence() {
        let tokens = [5, 7, 9, 5, 7, 9];
        let t = tokens.len();
        let previous = detection_pattern(HeadRole::PreviousToken, &tokens);
        assert!((1..t).all(|i| previous[i * t + i - 1] == 1.0));
        assert_eq!(previous.iter().sum::<f32>(), (t - 1) as f32);
        let duplicate = detection_pattern(HeadRole::DuplicateToken, &tokens);
        assert_eq!(duplicate.iter().sum::<f32>(), 3.0);
        assert_eq!(duplicate[3 * t], 1.0);
        assert_eq!(duplicate[5 * t + 2], 1.0);
        let induction = detection_pattern(HeadRole::Induction, &tokens);
        // Position 3 (second `5`) looks at position 1 (the `7` after the first `5`).
        assert_eq!(induction[3 * t + 1], 1.0);
        assert_eq!(induction[4 * t + 2], 1.0);
        assert_eq!(induction[5 * t + 3], 1.0);
        assert_eq!(induction.iter().sum::<f32>(), 3.0);
    }

    #[test]
    fn a_perfect_previous_token_head_scores_one_and_exclusions_renormalise() {
        // Row 0 can only attend to itself; every other row attends to its previous token.
        let t = 4;
        let mut att = vec![0.0f32; t * t];
        att[0] = 1.0;
        for i in 1..t {
            att[i * t + i - 1] = 1.0;
        }
        let pattern = detection_pattern(HeadRole::PreviousToken, &[1, 2, 3, 4]);
        assert!((head_score(&att, &pattern, t, HeadDetection::default()) - 0.75).abs() < 1e-6);
        let without_current = HeadDetection { exclude_bos: false, exclude_current_token: true };
        assert!((head_score(&att, &pattern, t, without_current) - 1.0).abs() < 1e-6);
        let without_bos = HeadDetection { exclude_bos: true, exclude_current_token: false };
        // Row 0 and row 1's attention to position 0 go: 2 of the remaining 2 are hits.
        assert!((head_score(&att, &pattern, t, without_bos) - 1.0).abs() < 1e-6);
        assert_eq!(head_score(&[1.0], &[0.0], 1, without_bos), 0.0);
    }

    #[test]
    fn the_standard_sequence_repeats_distinct_tokens() {
        let tokens = repeated_random_tokens(65, 32, HEAD_ROLES_SEED);
        assert_eq!(tokens.len(), 64);
        assert_eq!(tokens[..32], tokens[32..]);
        let mut first = tokens[..32].to_vec();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 32);
        assert!(tokens.iter().all(|&id| id < 65));
        // A vocabulary smaller than the segment still gives a full segment.
        assert_eq!(repeated_random_tokens(3, 5, 1).len(), 10);
    }

    #[test]
    fn every_head_is_scored_and_ranked() {
        let model = Gpt::new(ModelConfig::new(50, 16, 2, 2, 16), 3).unwrap();
        let roles = head_roles(&model).unwrap().unwrap();
        assert_eq!(roles.tokens.len(), 16);
        for role in HeadRole::ALL {
            let scores = roles.scores(role);
            assert_eq!((scores.len(), scores[0].len()), (2, 2));
            assert!(scores.iter().flatten().all(|s| (0.0..=1.0).contains(s)));
            let ranked = roles.ranked(role);
            assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));
        }
        assert_eq!(roles.strongest.len(), 9);
        let tiny = Gpt::new(ModelConfig::new(50, 3, 1, 1, 8), 3).unwrap();
        assert!(head_roles(&tiny).unwrap().is_none());
        assert!(detect_heads(&model, &[1], 0, HeadDetection::default()).is_err());
    }
}
