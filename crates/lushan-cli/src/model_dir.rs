//! Loading what a checkpoint directory holds: the model and its tokenizer — or a LoRA adapter directory,
//! whose base model it names, merged onto that base — or a GGUF file with its embedded tokenizer.

use anyhow::{Context, Result};
use lushan_model::checkpoint::adapter;
use lushan_model::gguf::{self, GgufTokenizer};
use lushan_model::{DType, Gpt, checkpoint};
use lushan_tokenizer::{Tokenizer, bpe};
use std::fmt::Write as _;
use std::path::Path;

/// Loads `config.json` + `model.safetensors` and the tokenizer file from `dir`. A PEFT adapter directory
/// written by `lushan train --lora-rank R` loads its base (named in `lushan-adapter.json`) and merges the
/// adapter into it. A file (not a directory) is read as GGUF: a GPT-2 with its embedded tokenizer, its
/// matrices in the file's types.
pub fn load(dir: &Path) -> Result<(Gpt, Tokenizer)> {
    if dir.exists() && !dir.is_dir() {
        return load_gguf(dir);
    }
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
    check_vocab(dir, model, tokenizer)
}

/// The model and tokenizer, if they agree on the vocabulary size.
fn check_vocab(dir: &Path, model: Gpt, tokenizer: Tokenizer) -> Result<(Gpt, Tokenizer)> {
    anyhow::ensure!(
        tokenizer.vocab_size() == model.config.vocab_size,
        "{}: the tokenizer has {} tokens but the model's vocab_size is {}",
        dir.display(),
        tokenizer.vocab_size(),
        model.config.vocab_size
    );
    Ok((model, tokenizer))
}

/// A GGUF file's GPT-2 and embedded tokenizer; what loading chose (the tied output layer's type) is said on
/// stderr.
fn load_gguf(path: &Path) -> Result<(Gpt, Tokenizer)> {
    // The GGUF reader's errors name the file.
    let loaded = gguf::load_gpt2(path)?;
    for note in &loaded.notes {
        eprintln!("note: {}: {note}", path.display());
    }
    let tokenizer = gguf_tokenizer(&loaded.tokenizer, &path.display().to_string())?;
    check_vocab(path, loaded.model, tokenizer)
}

/// The byte-level BPE a GGUF file embeds, built through the tokenizer crate's `vocab.json` + `merges.txt`
/// reader (GGUF spells tokens and merges the same way), so its checks and errors apply; `source` names the
/// file in them.
pub fn gguf_tokenizer(t: &GgufTokenizer, source: &str) -> Result<Tokenizer> {
    let mut vocab = String::from("{");
    for (id, token) in t.tokens.iter().enumerate() {
        let sep = if id == 0 { "" } else { "," };
        let _ = write!(vocab, "{sep}{}:{id}", serde_json::Value::String(token.clone()));
    }
    vocab.push('}');
    let mut merges = String::from("#version: 0.2\n");
    for merge in &t.merges {
        merges.push_str(merge);
        merges.push('\n');
    }
    let source = format!("{source} (embedded tokenizer)");
    Ok(bpe::files::from_encoder_and_vocab_bpe(vocab.as_bytes(), merges.as_bytes(), &source)?.into())
}

/// The GGUF form of a byte-level BPE: tokens and merges spelled as `vocab.json` / `merges.txt` do, special
/// tokens as control tokens (type 3), `<|endoftext|>` as bos, eos and unknown token, as
/// `convert_hf_to_gguf.py` writes GPT-2's.
pub fn to_gguf_tokenizer(tokenizer: &Tokenizer) -> Result<GgufTokenizer> {
    let Tokenizer::Bpe(bpe) = tokenizer else {
        anyhow::bail!(
            "a character-level tokenizer has no GGUF form llama.cpp reads (GGUF GPT-2 files carry a byte-level \
             BPE): train the model with a BPE tokenizer (`lushan prepare --tokenizer gpt2` or a trained one)"
        );
    };
    let ids = 0..bpe.vocab_size() as u32;
    let special = |id: u32| bpe.special_tokens().iter().any(|&(_, s)| s == id);
    let merges = bpe.merges().iter().map(|&(l, r)| format!("{} {}", bpe.token_string(l), bpe.token_string(r)));
    let eot = tokenizer.end_of_text();
    Ok(GgufTokenizer {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: ids.clone().map(|id| bpe.token_string(id)).collect(),
        token_types: ids.map(|id| if special(id) { 3 } else { 1 }).collect(),
        merges: merges.collect(),
        bos: eot,
        eos: eot,
        unknown: eot,
    })
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
    /// model loads and their f32 copies dropped (biases, layer norms and positions stay f32). Default: the
    /// checkpoint's own — f32 for a checkpoint directory, the file's types for a GGUF file.
    #[arg(long, value_name = "TYPE")]
    pub dtype: Option<DType>,
}

/// [`load_with`], then the weight matrices converted to `dtype` (kept as loaded when `None`). A plain
/// checkpoint directory is converted as it is read (no f32 copy of the matrices is ever held); an adapter is
/// merged in f32 first.
pub fn load_as(model: &Path, adapter_dir: Option<&Path>, dtype: Option<DType>) -> Result<(Gpt, Tokenizer)> {
    let plain = adapter_dir.is_none() && model.is_dir() && model.join(checkpoint::WEIGHTS_FILE).exists();
    if let Some(dtype) = dtype.filter(|&d| plain && d != DType::F32) {
        let (config, loaded) = checkpoint::load_model_dir_as(model, dtype)
            .with_context(|| format!("loading {} as --dtype {dtype}", model.display()))?;
        let gpt = Gpt::from_parts(config, loaded.params, loaded.packed)?;
        let tokenizer = Tokenizer::load_dir(model)?;
        return check_vocab(model, gpt, tokenizer);
    }
    let (gpt, tokenizer) = load_with(model, adapter_dir)?;
    let Some(dtype) = dtype else { return Ok((gpt, tokenizer)) };
    let gpt = gpt.with_dtype(dtype).with_context(|| format!("converting {} to --dtype {dtype}", model.display()))?;
    Ok((gpt, tokenizer))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
    use super::*;
    use lushan_tokenizer::CharTokenizer;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lushan-model/tests/fixtures/gguf").join(name)
    }

    #[test]
    fn the_embedded_tokenizer_encodes_like_the_hugging_face_one() {
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            expected[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        let (model, tokenizer) = load(&fixture("tiny-q8_0.gguf")).unwrap();
        assert_eq!(model.dtype(), DType::Q8_0);
        let text = expected["tokenizer_text"].as_str().unwrap();
        // transformers matches <|endoftext|> in text: lushan's encode_with_special.
        assert_eq!(tokenizer.encode_with_special(text).unwrap(), ids("tokenizer_ids"));
        assert_eq!(tokenizer.encode(expected["prompt"].as_str().unwrap()).unwrap(), ids("prompt_ids"));
        assert_eq!(tokenizer.decode(&ids("tokenizer_ids")).unwrap(), text);
        assert_eq!(tokenizer.end_of_text(), Some(0));
    }

    #[test]
    fn the_gguf_form_of_a_tokenizer_round_trips() {
        let stored = gguf::load_gpt2(&fixture("tiny-f32.gguf")).unwrap().tokenizer;
        let tokenizer = gguf_tokenizer(&stored, "tiny-f32.gguf").unwrap();
        let written = to_gguf_tokenizer(&tokenizer).unwrap();
        // What convert_hf_to_gguf.py wrote, entry for entry.
        assert_eq!(written, stored);
    }

    #[test]
    fn a_character_level_tokenizer_has_no_gguf_form() {
        let char_level: Tokenizer = CharTokenizer::from_text("abc").unwrap().into();
        let err = to_gguf_tokenizer(&char_level).unwrap_err().to_string();
        assert!(err.contains("character-level") && err.contains("GGUF"), "{err}");
    }

    #[test]
    fn a_broken_embedded_vocabulary_names_the_file() {
        let mut stored = gguf::load_gpt2(&fixture("tiny-f32.gguf")).unwrap().tokenizer;
        stored.merges.push("zz qq".into());
        let err = gguf_tokenizer(&stored, "x.gguf").unwrap_err().to_string();
        assert!(err.contains("x.gguf (embedded tokenizer)"), "{err}");
    }
}
