//! What [`explain`](super::explain) is asked to show, and the check that the request has a meaning.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::sampling::Sampling;

/// Knobs of one [`explain`](super::explain) call. `Default` is what `lushan explain` does without flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainOptions {
    /// Alternatives listed per prompt position, per logit-lens cell and per sampling step (at least 1;
    /// more than the vocabulary lists the whole vocabulary).
    pub top_k: usize,
    /// Tokens to generate after the prompt for the sampling view; 0 leaves `sampling` out.
    pub generate: usize,
    /// How the sampling view draws its tokens (the same knobs as `lushan generate`).
    pub sampling: Sampling,
    /// Seed of the sampling view's draws: the same seed gives the same tokens as `lushan generate`.
    pub seed: u64,
    /// Token ids whose embedding neighbours to show; empty leaves `embeddings` out.
    pub neighbors: Vec<u32>,
    /// Neighbours listed per queried token.
    pub neighbor_count: usize,
    /// The prediction the causal views (attribution, ablation, patching) explain: the one made at this
    /// prompt position (0-based; default: the last).
    pub position: Option<usize>,
    /// The token whose logit is attributed (default: the token the prompt has next, or at the last position
    /// the model's top prediction).
    pub target: Option<u32>,
    /// A second token: attribution and patching then explain `logit(target) − logit(versus)`.
    pub versus: Option<u32>,
    /// Components named in each top list of attribution, ablation and patching.
    pub top_components: usize,
    /// Zero-ablate every head and MLP (also implied by `ablation_reference` and `ablation_data`).
    pub ablate: bool,
    /// A text (token ids) whose mean head / MLP outputs replace the ablated ones: adds mean ablation.
    pub ablation_reference: Option<Vec<u32>>,
    /// A text (token ids) over which each ablation's change of the mean loss is measured.
    pub ablation_data: Option<Vec<u32>>,
    /// A corrupted prompt of the same token length: patch clean activations into it.
    pub corrupt: Option<Vec<u32>>,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            top_k: 5,
            generate: 0,
            sampling: Sampling::default(),
            seed: 0,
            neighbors: Vec::new(),
            neighbor_count: 8,
            position: None,
            target: None,
            versus: None,
            top_components: 10,
            ablate: false,
            ablation_reference: None,
            ablation_data: None,
            corrupt: None,
        }
    }
}

impl ExplainOptions {
    /// Whether the ablation sweep runs.
    pub fn ablates(&self) -> bool {
        self.ablate || self.ablation_reference.is_some() || self.ablation_data.is_some()
    }

    /// Rejects options that have no meaning for `config`'s model, naming the option.
    pub fn validate(&self, config: &ModelConfig) -> Result<()> {
        if self.top_k == 0 {
            return Err(ModelError::InvalidExplainOption {
                field: "top_k",
                reason: "must be at least 1 (how many alternatives to list per position)".into(),
            });
        }
        self.sampling.validate()?;
        if self.top_components == 0 {
            return Err(ModelError::InvalidExplainOption {
                field: "top_components",
                reason: "must be at least 1 (how many components to list)".into(),
            });
        }
        let vocab_size = config.vocab_size;
        let out_of_vocab = |field: &'static str, id: u32| ModelError::InvalidExplainOption {
            field,
            reason: format!(
                "token id {id} is out of range: the model's vocabulary has {vocab_size} tokens (ids 0..={})",
                vocab_size.saturating_sub(1)
            ),
        };
        for (field, id) in [("target", self.target), ("versus", self.versus)] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab_size) {
                return Err(out_of_vocab(field, id));
            }
        }
        if self.versus.is_some() && self.versus == self.target {
            return Err(ModelError::InvalidExplainOption {
                field: "versus",
                reason: "is the target token itself: the logit difference would be 0; give another token".into(),
            });
        }
        if let Some(&id) = self.neighbors.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ModelError::InvalidExplainOption {
                field: "neighbors",
                reason: format!(
                    "token id {id} is out of range: the model's vocabulary has {vocab_size} tokens (ids 0..={})",
                    vocab_size.saturating_sub(1)
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let options = ExplainOptions::default();
        assert_eq!((options.top_k, options.generate, options.neighbor_count), (5, 0, 8));
        assert!(options.neighbors.is_empty());
        assert!(options.validate(&ModelConfig::new(10, 8, 1, 1, 4)).is_ok());
    }

    #[test]
    fn invalid_options_name_the_option() {
        let config = ModelConfig::new(10, 8, 1, 1, 4);
        let cases = [
            (ExplainOptions { top_k: 0, ..ExplainOptions::default() }, "top_k"),
            (ExplainOptions { neighbors: vec![3, 10], ..ExplainOptions::default() }, "neighbors"),
            (
                ExplainOptions {
                    sampling: Sampling { temperature: -1.0, ..Sampling::default() },
                    ..ExplainOptions::default()
                },
                "temperature",
            ),
        ];
        for (options, field) in cases {
            let Err(error) = options.validate(&config) else { panic!("{options:?} was accepted") };
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
