//! Hugging Face `tokenizer.json`, the GPT-2 subset.
//!
//! Read: `model.type` `"BPE"` (or absent) with a token → id `vocab` and `merges` as `"left right"` strings or
//! `["left", "right"]` pairs; no normalizer; a `ByteLevel` pre-tokenizer with `add_prefix_space: false`
//! (GPT-2's regex); a `ByteLevel` decoder or none; no subword prefix/suffix, byte fallback or dropout.
//! Anything else would tokenize differently from this crate, so it is refused with the field named rather
//! than half-honoured. Every entry of `added_tokens` becomes a special token (matched only by
//! [`Bpe::encode_with_special`]); an added token's id may also be in `model.vocab` (GPT-2 lists
//! `<|endoftext|>` in both), with the same text.
//!
//! Written: what `transformers` saves for GPT-2, so `AutoTokenizer.from_pretrained` loads it.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Bpe;
use super::files::{OrderedEntries, merge_ids, parts_from_strings, split_merge_line, string_vocab};
use crate::error::{Result, TokenizerError, VocabError, json_kind};

#[derive(Deserialize)]
struct VocabOnly {
    model: ModelVocab,
}

#[derive(Deserialize)]
struct ModelVocab {
    vocab: OrderedEntries,
}

fn unsupported(file: &str, field: &'static str, expected: &'static str, found: &Value) -> TokenizerError {
    VocabError::UnsupportedTokenizerJson { file: file.to_owned(), field, expected, found: found.to_string() }.into()
}

/// `value` is absent, null, or equal to one of `allowed`.
fn absent_or(value: Option<&Value>, allowed: &[Value]) -> bool {
    value.is_none_or(|v| v.is_null() || allowed.contains(v))
}

/// Parses `tokenizer.json` text; `file` names it in errors.
pub(super) fn parse(text: &[u8], file: &str) -> Result<Bpe> {
    let json_error = |source| TokenizerError::FileJson { file: file.to_owned(), source };
    let root: Value = serde_json::from_slice(text).map_err(json_error)?;
    let object = root.as_object().ok_or_else(|| unsupported(file, "(top level)", "an object", &root))?;
    let model = object
        .get("model")
        .ok_or_else(|| TokenizerError::MissingFileField { file: file.to_owned(), field: "model" })?;
    if !absent_or(model.get("type"), &[json!("BPE")]) {
        return Err(unsupported(file, "model.type", "\"BPE\"", &model["type"]));
    }
    for field in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if !absent_or(model.get(field), &[json!("")]) {
            return Err(unsupported(
                file,
                "model.continuing_subword_prefix / end_of_word_suffix",
                "empty",
                &model[field],
            ));
        }
    }
    if !absent_or(model.get("byte_fallback"), &[json!(false)]) {
        return Err(unsupported(file, "model.byte_fallback", "false", &model["byte_fallback"]));
    }
    if !absent_or(model.get("dropout"), &[]) {
        return Err(unsupported(file, "model.dropout", "null", &model["dropout"]));
    }
    if !absent_or(object.get("normalizer"), &[]) {
        return Err(unsupported(file, "normalizer", "null", &object["normalizer"]));
    }
    let pre = object.get("pre_tokenizer").unwrap_or(&Value::Null);
    let byte_level = pre.get("type") == Some(&json!("ByteLevel"))
        && pre.get("add_prefix_space") == Some(&json!(false))
        && absent_or(pre.get("use_regex"), &[json!(true)]);
    if !byte_level {
        return Err(unsupported(
            file,
            "pre_tokenizer",
            "{\"type\":\"ByteLevel\",\"add_prefix_space\":false} (GPT-2's)",
            pre,
        ));
    }
    let decoder = object.get("decoder");
    if !decoder.is_none_or(|d| d.is_null() || d.get("type") == Some(&json!("ByteLevel"))) {
        return Err(unsupported(file, "decoder", "ByteLevel", decoder.unwrap_or(&Value::Null)));
    }

    let entries: VocabOnly = serde_json::from_slice(text).map_err(json_error)?;
    let mut entries = entries.model.vocab.0;
    // Added tokens beyond the model's vocabulary extend it; those inside must agree with it.
    let mut added_ids = Vec::new();
    let added = match object.get("added_tokens") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(list)) => list.as_slice(),
        Some(other) => return Err(unsupported(file, "added_tokens", "an array", other)),
    };
    let known: std::collections::HashMap<u64, usize> =
        entries.iter().enumerate().filter_map(|(i, (_, id))| id.as_u64().map(|id| (id, i))).collect();
    for token in added {
        let (Some(id), Some(content)) =
            (token.get("id").and_then(Value::as_u64), token.get("content").and_then(Value::as_str))
        else {
            return Err(VocabError::BadSpecialEntry { file: file.to_owned(), entry: token.to_string() }.into());
        };
        match known.get(&id) {
            Some(&i) if entries[i].0 == content => {}
            Some(&i) => {
                return Err(VocabError::AddedTokenConflict {
                    file: file.to_owned(),
                    id,
                    vocab: entries[i].0.clone(),
                    added: content.to_owned(),
                }
                .into());
            }
            None => entries.push((content.to_owned(), Value::from(id))),
        }
        added_ids.push(u32::try_from(id).unwrap_or(u32::MAX));
    }
    let vocab = string_vocab(entries, file)?;

    let merges = match model.get("merges") {
        Some(Value::Array(list)) => list.as_slice(),
        None | Some(Value::Null) => &[][..],
        Some(other) => return Err(unsupported(file, "model.merges", "an array", other)),
    };
    let mut pairs = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let location = || format!("{file} merge {index}");
        let (left, right) = match merge {
            Value::String(line) => split_merge_line(line, &location)?,
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(left), Value::String(right)] => (left.as_str(), right.as_str()),
                _ => return Err(VocabError::MergeSyntax { location: location(), text: merge.to_string() }.into()),
            },
            other => {
                return Err(VocabError::MergeSyntax {
                    location: location(),
                    text: format!("{other} ({})", json_kind(other)),
                }
                .into());
            }
        };
        pairs.push(merge_ids(left, right, &vocab, &location)?);
    }
    Bpe::from_parts(parts_from_strings(vocab, pairs, Vec::new(), &added_ids, file, file)?)
}

/// The `tokenizer.json` text for `bpe`, in the layout `transformers` writes for GPT-2.
pub(super) fn to_string(bpe: &Bpe) -> String {
    let byte_level = |trim_offsets: bool, add_prefix_space: bool| json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": true});
    let added: Vec<Value> = bpe
        .special_tokens()
        .iter()
        .map(|(text, id)| {
            json!({"id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": true, "special": true})
        })
        .collect();
    let merges: Vec<Value> = bpe
        .merges()
        .iter()
        .map(|&(l, r)| Value::String(format!("{} {}", bpe.token_string(l), bpe.token_string(r))))
        .collect();
    let mut model = Map::new();
    for (key, value) in [
        ("type", json!("BPE")),
        ("dropout", Value::Null),
        ("unk_token", Value::Null),
        ("continuing_subword_prefix", json!("")),
        ("end_of_word_suffix", json!("")),
        ("fuse_unk", json!(false)),
        ("byte_fallback", json!(false)),
        ("ignore_merges", json!(false)),
    ] {
        model.insert(key.into(), value);
    }
    // Fields in the order `transformers` writes them; `vocab` is spliced in as text to keep id order.
    let head = [
        ("version", json!("1.0")),
        ("truncation", Value::Null),
        ("padding", Value::Null),
        ("added_tokens", Value::Array(added)),
        ("normalizer", Value::Null),
        ("pre_tokenizer", byte_level(true, false)),
        ("post_processor", byte_level(false, true)),
        ("decoder", byte_level(true, true)),
    ];
    let mut text = String::from("{");
    for (key, value) in head {
        text.push_str(&format!("{}:{value},", Value::String(key.into())));
    }
    let model_fields = Value::Object(model).to_string();
    // `model_fields` is `{…}`: drop its closing brace and append the vocabulary and the merges.
    text.push_str("\"model\":");
    text.push_str(model_fields.strip_suffix('}').unwrap_or(&model_fields));
    text.push_str(",\"vocab\":");
    text.push_str(&bpe.vocab_json());
    text.push_str(",\"merges\":");
    text.push_str(&Value::Array(merges).to_string());
    text.push_str("}}\n");
    text
}
