//! Model hyper-parameters, with the presets users of nanoGPT and GPT-2 know.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// How positions enter the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PositionEncoding {
    /// GPT-2: a trained `(block_size, n_embd)` table.
    #[default]
    Learned,
    /// "Attention Is All You Need": a fixed sine/cosine table, stored in `wpe` but never updated.
    Sinusoidal,
}

impl std::str::FromStr for PositionEncoding {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "learned" => Ok(Self::Learned),
            "sinusoidal" => Ok(Self::Sinusoidal),
            other => Err(format!("expected `learned` or `sinusoidal`, got `{other}`")),
        }
    }
}

/// What the network computes from the final hidden states (DESIGN.md §12): the checkpoint's
/// `architectures` picks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// `GPT2LMHeadModel`: next-token logits through the token embedding (tied `lm_head`).
    #[default]
    LanguageModel,
    /// `GPT2ForSequenceClassification`: `score.weight` `[labels, n_embd]`, no bias, applied to the final
    /// hidden state of each sequence's last token that is not `pad_token_id`.
    Classifier { labels: Vec<String>, pad_token_id: u32 },
}

/// The shape of a GPT-2 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    /// Longest sequence the model accepts (`n_positions` in Hugging Face's config).
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    #[serde(default)]
    pub position_encoding: PositionEncoding,
    /// Dropout on the embeddings and on both residual branches while training.
    #[serde(default)]
    pub dropout: f32,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f32,
    #[serde(default)]
    pub head: Head,
}

fn default_layer_norm_epsilon() -> f32 {
    1e-5
}

impl ModelConfig {
    /// nanoGPT's CPU configuration for `shakespeare_char` (4 layers, 4 heads, 128 channels, context 64).
    pub fn shakespeare_char(vocab_size: usize) -> Self {
        Self::new(vocab_size, 64, 4, 4, 128)
    }

    /// nanoGPT's "baby GPT" (6 layers, 6 heads, 384 channels, context 256).
    pub fn baby_gpt(vocab_size: usize) -> Self {
        Self::new(vocab_size, 256, 6, 6, 384)
    }

    /// GPT-2 124M (12 layers, 12 heads, 768 channels, context 1024, vocabulary 50257).
    pub fn gpt2() -> Self {
        Self::new(50257, 1024, 12, 12, 768)
    }

    pub fn new(vocab_size: usize, block_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        Self {
            vocab_size,
            block_size,
            n_layer,
            n_head,
            n_embd,
            position_encoding: PositionEncoding::Learned,
            dropout: 0.0,
            layer_norm_epsilon: default_layer_norm_epsilon(),
            head: Head::LanguageModel,
        }
    }

    /// Classes of a classifier head; 0 for the language-model head.
    pub fn num_labels(&self) -> usize {
        match &self.head {
            Head::LanguageModel => 0,
            Head::Classifier { labels, .. } => labels.len(),
        }
    }

    /// The padding id of a classifier head (pooling reads the last token that is not this one).
    pub fn pad_token_id(&self) -> Option<u32> {
        match &self.head {
            Head::LanguageModel => None,
            Head::Classifier { pad_token_id, .. } => Some(*pad_token_id),
        }
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Rejects sizes the kernels cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(ModelError::InvalidConfig { field, reason });
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1, got 0".into());
            }
        }
        if self.vocab_size > u32::MAX as usize - 1 {
            return invalid("vocab_size", format!("must fit token ids in u32, got {}", self.vocab_size));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return invalid("n_embd", format!("must be divisible by n_head ({}), got {}", self.n_head, self.n_embd));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("dropout", format!("must be in [0, 1), got {}", self.dropout));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return invalid("layer_norm_epsilon", format!("must be positive, got {}", self.layer_norm_epsilon));
        }
        if let Head::Classifier { labels, pad_token_id } = &self.head {
            if labels.len() < 2 {
                return invalid("id2label", format!("a classifier needs at least 2 labels, got {}", labels.len()));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
                return invalid("id2label", format!("label `{dup}` appears twice"));
            }
            if *pad_token_id as usize >= self.vocab_size {
                return invalid(
                    "pad_token_id",
                    format!("must be a token id below vocab_size {}, got {pad_token_id}", self.vocab_size),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let mut c = ModelConfig::shakespeare_char(65);
        assert!(c.validate().is_ok());
        c.n_embd = 130;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("n_embd") && e.contains("n_head"), "{e}");
        let mut c = ModelConfig::shakespeare_char(65);
        c.n_layer = 0;
        assert!(c.validate().unwrap_err().to_string().contains("n_layer"));
        let mut c = ModelConfig::shakespeare_char(65);
        c.dropout = 1.0;
        assert!(c.validate().unwrap_err().to_string().contains("dropout"));
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let g = ModelConfig::gpt2();
        assert_eq!((g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size), (12, 12, 768, 1024, 50257));
        let b = ModelConfig::baby_gpt(65);
        assert_eq!((b.n_layer, b.n_head, b.n_embd, b.block_size), (6, 6, 384, 256));
    }
}
