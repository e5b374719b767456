//! Loading what a checkpoint directory holds: the model and its tokenizer — or a LoRA adapter directory,
//! whose base model it names, merged onto that base.

use anyhow::{Context, Result};
use lushan_model::checkpoint::adapter;
use lushan_model::{DType, Gpt, checkpoint};
use lushan_tokenizer::Tokenizer;
use std::path::Path;

/// Loads `config.json` + `model.safetensors` and the tokenizer file from `dir`. A PEFT adapter directory
/// written by `lushan train --lora-rank R` loads its base (named in `lushan-adapter.json`) and merges the
/// adapter into it.
pub fn load(dir: &Path) -> Result<(Gpt, Tokenizer)> {
    anyhow::ensure!(
        dir.exists(),
        "model directory {} does not exist: train one with `lushan train --out-dir {}`, or pass --model DIR",
        dir.display(),
        dir.display()
    );
    if adapter::is_adapter_dir(dir) && !dir.join(checkpoint::WEIGHTS_FILE).exists() {
        let base = adapter::adapter_base(dir)?.filter(|b| !b.as_os_str().is_empty()).with_context(|| {
            format!(
                "{} is a LoRA adapter without a recorded base model: pass the base with --model BASE \
                     --adapter {}",
                dir.display(),
                dir.display()
            )
        })?;
        return load_with(&base, Some(dir));
    }
    // The checkpoint's errors name the directory or file, so no context repeats it.
    let (config, params) = checkpoint::load_model_dir(dir)?;
    let model = Gpt::from_params(config, params)?;
    // The tokenizer crate's error names the file, so no extra context is added.
    let tokenizer = Tokenizer::load_dir(dir)?;
    check_vocab(dir, &tokenizer, &model)?;
    Ok((model, tokenizer))
}

fn check_vocab(dir: &Path, tokenizer: &Tokenizer, model: &Gpt) -> Result<()> {
    anyhow::ensure!(
        tokenizer.vocab_size() == model.config.vocab_size,
        "{}: the tokenizer has {} tokens but the model's vocab_size is {}",
        dir.display(),
        tokenizer.vocab_size(),
        model.config.vocab_size
    );
    Ok(())
}

/// Loads `model` and, when given, merges the LoRA adapter in `adapter_dir` into it (as PEFT's
/// `merge_and_unload` does), so every inference path runs the adapted weights at the base's speed.
pub fn load_with(model: &Path, adapter_dir: Option<&Path>) -> Result<(Gpt, Tokenizer)> {
    let (base, tokenizer) = load(model)?;
    let Some(dir) = adapter_dir else { return Ok((base, tokenizer)) };
    let mut adapted = adapter::attach_adapter_dir(base, dir)
        .with_context(|| format!("loading LoRA adapter {} onto {}", dir.display(), model.display()))?;
    adapted.merge_lora()?;
    Ok((adapted, tokenizer))
}

/// `--dtype`: the type the weight matrices are converted to when the model loads.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DtypeArg {
    /// Weight type to run with: f32, bf16, f16, q8_0 or q4_0. The weight matrices are converted as the
    /// model loads and their f32 copies dropped (biases, layer norms and positions stay f32).
    #[arg(long, default_value = "f32", value_name = "TYPE")]
    pub dtype: DType,
}

/// [`load_with`], then the weight matrices converted to `dtype`. A plain checkpoint directory is converted
/// as it is read (no f32 copy of the matrices is ever held); an adapter is merged in f32 first.
pub fn load_as(model: &Path, adapter_dir: Option<&Path>, dtype: DType) -> Result<(Gpt, Tokenizer)> {
    let plain = adapter_dir.is_none() && model.join(checkpoint::WEIGHTS_FILE).exists();
    if plain && dtype != DType::F32 {
        let (config, loaded) = checkpoint::load_model_dir_as(model, dtype)
            .with_context(|| format!("loading {} as --dtype {dtype}", model.display()))?;
        let gpt = Gpt::from_parts(config, loaded.params, loaded.packed)?;
        let tokenizer = Tokenizer::load_dir(model)?;
        check_vocab(model, &tokenizer, &gpt)?;
        return Ok((gpt, tokenizer));
    }
    let (gpt, tokenizer) = load_with(model, adapter_dir)?;
    let gpt = gpt.with_dtype(dtype).with_context(|| format!("converting {} to --dtype {dtype}", model.display()))?;
    Ok((gpt, tokenizer))
}
