//! Loading what a checkpoint directory holds: the model and its tokenizer.

use anyhow::{Context, Result};
use lushan_model::{Gpt, checkpoint};
use lushan_tokenizer::Tokenizer;
use std::path::Path;

/// Loads `config.json` + `model.safetensors` and the tokenizer file from `dir`.
pub fn load(dir: &Path) -> Result<(Gpt, Tokenizer)> {
    let (config, params) =
        checkpoint::load_model_dir(dir).with_context(|| format!("loading model from {}", dir.display()))?;
    let model = Gpt::from_params(config, params)?;
    let tokenizer =
        lushan_train::data::load_tokenizer(dir).with_context(|| format!("loading tokenizer from {}", dir.display()))?;
    anyhow::ensure!(
        tokenizer.vocab_size() == model.config.vocab_size,
        "{}: the tokenizer has {} tokens but the model's vocab_size is {}",
        dir.display(),
        tokenizer.vocab_size(),
        model.config.vocab_size
    );
    Ok((model, tokenizer))
}
