//! Hugging Face files for the character-level tokenizer, and reading them back.
//!
//! [`CharTokenizer::hf_tokenizer_json`] is a `tokenizer.json` that the `tokenizers` library (and so
//! `transformers`' `AutoTokenizer.from_pretrained(dir)`) runs with exactly lushan's ids:
//!
//! - model `WordLevel`, its vocabulary the characters with lushan's ids; its `unk_token` ([`CHAR_UNK_TOKEN`])
//!   is not in the vocabulary, so a character outside it is an error in Python too ("Missing [UNK] token
//!   from the vocabulary"), as [`CharTokenizer::encode`] is here, rather than a silent substitute;
//! - pre-tokenizer `Split` on the regex [`CHAR_SPLIT_REGEX`] (`[\s\S]`), `Isolated`: one piece per Unicode
//!   scalar value, whitespace and newlines included (Oniguruma's `.` skips `\n`, and `\X` would join a
//!   letter with its combining marks or `\r\n` into one piece);
//! - decoder `Fuse`: decoding concatenates the characters, adding no spaces;
//! - no normalizer, post-processor or added tokens (the char tokenizer has no special tokens).
//!
//! `tokenizer_config.json` names the class `PreTrainedTokenizerFast` (a GPT-2 model directory would
//! otherwise get GPT-2's BPE class) and turns off `clean_up_tokenization_spaces`, which would rewrite
//! `" ."` to `"."` on decode.
//!
//! Reading: a `tokenizer.json` of exactly that shape loads back as a [`CharTokenizer`]; anything else goes
//! to the BPE reader ([`Bpe::from_tokenizer_json_file`]), whose errors name the first field that is not
//! GPT-2's.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::bpe::files::{TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, read, write_file};
use crate::error::{Result, TokenizerError, VocabError};
use crate::{Bpe, CharTokenizer, Tokenizer};

/// The pre-tokenizer's regex: any one character.
pub const CHAR_SPLIT_REGEX: &str = r"[\s\S]";
/// `WordLevel` requires an unknown-token name; this one is never in a character vocabulary (it is five
/// characters long), so encoding an unknown character fails instead of mapping it somewhere.
pub const CHAR_UNK_TOKEN: &str = "<unk>";
/// The `tokenizer_class` written for a character tokenizer.
pub const CHAR_TOKENIZER_CLASS: &str = "PreTrainedTokenizerFast";

fn char_pre_tokenizer() -> Value {
    json!({"type": "Split", "pattern": {"Regex": CHAR_SPLIT_REGEX}, "behavior": "Isolated", "invert": false})
}

impl CharTokenizer {
    /// The Hugging Face `tokenizer.json` text (see the module comment); the vocabulary is in id order.
    pub fn hf_tokenizer_json(&self) -> String {
        let head = [
            ("version", json!("1.0")),
            ("truncation", Value::Null),
            ("padding", Value::Null),
            ("added_tokens", json!([])),
            ("normalizer", Value::Null),
            ("pre_tokenizer", char_pre_tokenizer()),
            ("post_processor", Value::Null),
            ("decoder", json!({"type": "Fuse"})),
        ];
        let mut text = String::with_capacity(64 + self.vocab_size() * 12);
        text.push('{');
        for (key, value) in head {
            text.push_str(&format!("{}:{value},", Value::String(key.into())));
        }
        // The vocabulary is written by hand so the object lists ids in order (a `Map` sorts its keys).
        text.push_str("\"model\":{\"type\":\"WordLevel\",\"vocab\":{");
        for (id, ch) in self.vocab().iter().enumerate() {
            if id > 0 {
                text.push(',');
            }
            text.push_str(&format!("{}:{id}", Value::String(ch.to_string())));
        }
        text.push_str(&format!("}},\"unk_token\":{}}}}}\n", Value::String(CHAR_UNK_TOKEN.into())));
        text
    }

    /// The `tokenizer_config.json` text for [`CharTokenizer::hf_tokenizer_json`].
    pub fn hf_tokenizer_config_json(&self) -> String {
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), Value::String(CHAR_TOKENIZER_CLASS.into()));
        config.insert("clean_up_tokenization_spaces".into(), Value::Bool(false));
        config.insert("model_input_names".into(), json!(["input_ids", "attention_mask"]));
        format!("{:#}\n", Value::Object(config))
    }

    /// The Hugging Face files as (file name, contents): `tokenizer.json` and `tokenizer_config.json`.
    pub fn hf_files(&self) -> Vec<(&'static str, String)> {
        vec![(TOKENIZER_JSON, self.hf_tokenizer_json()), (TOKENIZER_CONFIG_JSON, self.hf_tokenizer_config_json())]
    }

    /// Writes [`CharTokenizer::hf_files`] into `dir` (created if needed), each crash-safely; returns the
    /// paths written.
    pub fn write_hf_files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|source| TokenizerError::Write { path: dir.to_owned(), source })?;
        let mut written = Vec::new();
        for (name, text) in self.hf_files() {
            let path = dir.join(name);
            write_file(&path, text.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }

    /// Reads a `tokenizer.json` written by [`CharTokenizer::hf_tokenizer_json`] (already parsed); `file`
    /// names it in errors. Other shapes are refused: see [`is_char_tokenizer_json`].
    pub fn from_hf_tokenizer_json(value: &Value, file: &str) -> Result<Self> {
        if !is_char_tokenizer_json(value) {
            return Err(VocabError::UnsupportedTokenizerJson {
                file: file.to_owned(),
                field: "model",
                expected: "a WordLevel model split into single characters (lushan's character tokenizer)",
                found: value.get("model").and_then(|m| m.get("type")).unwrap_or(&Value::Null).to_string(),
            }
            .into());
        }
        let empty = Map::new();
        let vocab = value["model"]["vocab"].as_object().unwrap_or(&empty);
        let size = vocab.len();
        let mut by_id: Vec<Option<char>> = vec![None; size];
        for (token, id) in vocab {
            let bad_id =
                || VocabError::VocabBadId { file: file.to_owned(), token: token.clone(), found: id.to_string() };
            let id = id.as_u64().ok_or_else(bad_id)?;
            let mut chars = token.chars();
            let ch = match (chars.next(), chars.next()) {
                (Some(ch), None) => ch,
                _ => {
                    return Err(TokenizerError::VocabEntryNotOneChar {
                        index: usize::try_from(id).unwrap_or(usize::MAX),
                        entry: token.clone(),
                        chars: token.chars().count(),
                    });
                }
            };
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| by_id.get_mut(i))
                .ok_or_else(|| VocabError::VocabIdGap { file: file.to_owned(), id, size })?;
            if let Some(first) = slot.replace(ch) {
                return Err(VocabError::DuplicateId {
                    file: file.to_owned(),
                    id,
                    first: first.to_string(),
                    second: ch.to_string(),
                }
                .into());
            }
        }
        // `size` entries with distinct ids below `size` fill every slot.
        Self::from_vocab(by_id.into_iter().flatten().collect())
    }
}

/// Whether a parsed `tokenizer.json` has the shape [`CharTokenizer::hf_tokenizer_json`] writes: a
/// `WordLevel` model whose `unk_token` is not in its vocabulary, the single-character split, a `Fuse`
/// decoder (or none), and no normalizer, post-processor or added tokens. The vocabulary's entries are
/// checked by [`CharTokenizer::from_hf_tokenizer_json`].
pub fn is_char_tokenizer_json(value: &Value) -> bool {
    let null = |key: &str| value.get(key).is_none_or(Value::is_null);
    let Some(model) = value.get("model") else { return false };
    let Some(vocab) = model.get("vocab").and_then(Value::as_object) else { return false };
    let unk_outside = match model.get("unk_token") {
        None | Some(Value::Null) => true,
        Some(Value::String(unk)) => !vocab.contains_key(unk),
        Some(_) => false,
    };
    let decoder = value.get("decoder").is_none_or(|d| d.is_null() || d.get("type") == Some(&json!("Fuse")));
    let no_added = value.get("added_tokens").is_none_or(|a| a.is_null() || a.as_array().is_some_and(Vec::is_empty));
    model.get("type") == Some(&json!("WordLevel"))
        && unk_outside
        && value.get("pre_tokenizer") == Some(&char_pre_tokenizer())
        && null("normalizer")
        && null("post_processor")
        && decoder
        && no_added
}

/// Only `model.type` of a `tokenizer.json`, read without building the rest.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    model: Option<PeekModel>,
}

#[derive(Deserialize)]
struct PeekModel {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Reads a Hugging Face `tokenizer.json`: lushan's character shape as [`Tokenizer::Char`], anything else
/// through the BPE reader.
pub fn load_tokenizer_json_file(path: &Path) -> Result<Tokenizer> {
    let text = read(path)?;
    let file = path.display().to_string();
    let json_error = |source| TokenizerError::FileJson { file: file.clone(), source };
    let peek: Peek = serde_json::from_slice(&text).map_err(json_error)?;
    if peek.model.and_then(|m| m.kind).as_deref() == Some("WordLevel") {
        let value: Value = serde_json::from_slice(&text).map_err(json_error)?;
        if is_char_tokenizer_json(&value) {
            return CharTokenizer::from_hf_tokenizer_json(&value, &file).map(Tokenizer::Char);
        }
    }
    Bpe::from_tokenizer_json_file(path).map(Tokenizer::Bpe)
}

/// Reads a directory of Hugging Face files (no `lushan-tokenizer.json`): `tokenizer.json` if present
/// (either kind), else the BPE files [`Bpe::from_dir`] knows.
pub fn load_hf_dir(dir: &Path) -> Result<Tokenizer> {
    let tokenizer_json = dir.join(TOKENIZER_JSON);
    if tokenizer_json.exists() {
        return load_tokenizer_json_file(&tokenizer_json);
    }
    Bpe::from_dir(dir).map(Tokenizer::Bpe)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    const TEXT: &str =
        "First Citizen:\r\nBefore we proceed.\n\n床前明月光，疑是地上霜。\n🙂 e\u{301} 👨\u{200d}👩\t\u{a0}\u{2028}\n";

    #[test]
    fn tokenizer_json_round_trips_to_the_same_tokenizer() {
        let tok = CharTokenizer::from_text(TEXT).unwrap();
        let json = tok.hf_tokenizer_json();
        let value: Value = serde_json::from_str(&json).unwrap();
        assert!(is_char_tokenizer_json(&value), "{json}");
        assert_eq!(value["model"]["type"], "WordLevel");
        assert_eq!(value["model"]["vocab"].as_object().unwrap().len(), tok.vocab_size());
        assert_eq!(value["model"]["vocab"]["\n"], 1); // after '\t'
        let back = CharTokenizer::from_hf_tokenizer_json(&value, "t.json").unwrap();
        assert_eq!(back, tok);
        assert_eq!(back.encode(TEXT).unwrap(), tok.encode(TEXT).unwrap());
        // The vocabulary object lists ids in order even when the vocabulary is not sorted.
        let unsorted = CharTokenizer::from_vocab(vec!['b', 'a', '\n']).unwrap();
        assert!(unsorted.hf_tokenizer_json().contains(r#""vocab":{"b":0,"a":1,"\n":2}"#));
        let value: Value = serde_json::from_str(&unsorted.hf_tokenizer_json()).unwrap();
        assert_eq!(CharTokenizer::from_hf_tokenizer_json(&value, "t.json").unwrap(), unsorted);
    }

    #[test]
    fn config_names_the_fast_class_and_keeps_spaces() {
        let tok = CharTokenizer::from_text("ab").unwrap();
        let config: Value = serde_json::from_str(&tok.hf_tokenizer_config_json()).unwrap();
        assert_eq!(config["tokenizer_class"], CHAR_TOKENIZER_CLASS);
        assert_eq!(config["clean_up_tokenization_spaces"], false);
    }

    #[test]
    fn other_shapes_are_not_char_tokenizers() {
        let tok = CharTokenizer::from_text("abc").unwrap();
        let good: Value = serde_json::from_str(&tok.hf_tokenizer_json()).unwrap();
        let variants: [(&str, Value); 7] = [
            ("/model/type", json!("BPE")),
            ("/model/unk_token", json!("a")),
            ("/pre_tokenizer/pattern/Regex", json!(".")),
            ("/normalizer", json!({"type": "NFC"})),
            ("/post_processor", json!({"type": "ByteLevel"})),
            ("/decoder", json!({"type": "ByteLevel"})),
            ("/added_tokens", json!([{"id": 3, "content": "<s>"}])),
        ];
        for (pointer, replacement) in variants {
            let mut value = good.clone();
            *value.pointer_mut(pointer).unwrap() = replacement;
            assert!(!is_char_tokenizer_json(&value), "{pointer}");
            let message = CharTokenizer::from_hf_tokenizer_json(&value, "t.json").unwrap_err().to_string();
            assert!(message.contains("t.json") && message.contains("WordLevel"), "{pointer}: {message}");
        }
    }

    #[test]
    fn bad_vocabularies_name_the_entry() {
        let cases = [
            (json!({"ab": 0}), "entry 0 is \"ab\""),
            (json!({"a": 0, "b": 2}), "id 2 is out of range"),
            (json!({"a": 0, "b": 0}), "id 0 is given to both"),
            (json!({"a": -1}), "ids must be integers"),
            (json!({}), "empty"),
        ];
        let tok = CharTokenizer::from_text("abc").unwrap();
        let good: Value = serde_json::from_str(&tok.hf_tokenizer_json()).unwrap();
        for (vocab, expected) in cases {
            let mut value = good.clone();
            value["model"]["vocab"] = vocab;
            let message = CharTokenizer::from_hf_tokenizer_json(&value, "t.json").unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
    }
}
