//! Tokenizers: text ↔ token ids, and the one JSON file that stores a vocabulary beside data and checkpoints.
//!
//! [`Tokenizer`] is the type the rest of the workspace holds; it dispatches to a concrete tokenizer so that
//! shards, checkpoints and the server never care which kind produced the ids. Only the character-level
//! tokenizer exists today; GPT-2 byte-level BPE will be a second variant.

pub mod char_level;
pub mod error;

pub use char_level::CharTokenizer;
pub use error::{Result, TokenizerError};

use serde_json::Value;

use crate::error::json_kind;

/// File name of the tokenizer JSON inside a data directory (written by `lushan prepare`) and a checkpoint
/// directory, so that any directory with token ids also says how to turn them back into text.
pub const TOKENIZER_FILE: &str = "lushan-tokenizer.json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokenizer {
    Char(CharTokenizer),
}

impl From<CharTokenizer> for Tokenizer {
    fn from(tokenizer: CharTokenizer) -> Self {
        Self::Char(tokenizer)
    }
}

impl Tokenizer {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Char(t) => t.encode(text),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Char(t) => t.decode(ids),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Char(t) => t.vocab_size(),
        }
    }

    /// The JSON stored in [`TOKENIZER_FILE`]; its `"type"` field tells [`Tokenizer::from_json`] which
    /// variant to rebuild.
    pub fn to_json(&self) -> String {
        match self {
            Self::Char(t) => t.to_json(),
        }
    }

    /// Reads the `"type"` field and hands the document to that tokenizer's validator.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)?;
        let object = value.as_object().ok_or(TokenizerError::NotAnObject { found: json_kind(&value) })?;
        let kind = object.get("type").ok_or(TokenizerError::MissingField { field: "type" })?;
        match kind.as_str() {
            Some(char_level::CHAR_TYPE) => Ok(Self::Char(CharTokenizer::from_value(&value)?)),
            Some(other) => Err(TokenizerError::UnknownType { found: other.to_owned() }),
            None => Err(TokenizerError::FieldType { field: "type", expected: "a string", found: json_kind(kind) }),
        }
    }

    /// A short identity such as `char:65`, stored in shard headers so a shard can be matched to the
    /// tokenizer that wrote it without reading the whole vocabulary.
    pub fn describe(&self) -> String {
        match self {
            Self::Char(t) => format!("{}:{}", char_level::CHAR_TYPE, t.vocab_size()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn enum_dispatches_and_round_trips_through_json() {
        let text = "hello, 世界 🌍\nbye\n";
        let tok = Tokenizer::from(CharTokenizer::from_text(text).unwrap());
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.describe(), format!("char:{}", tok.vocab_size()));
        let back = Tokenizer::from_json(&tok.to_json()).unwrap();
        assert_eq!(back, tok);
        assert_eq!(back.encode(text).unwrap(), ids);
    }

    #[test]
    fn enum_from_json_errors_name_the_field() {
        let cases = [
            ("not json", "malformed"),
            ("42", "must be an object"),
            (r#"{"vocab":["a"]}"#, "no field \"type\""),
            (r#"{"type":null}"#, "field \"type\" must be a string, found null"),
            (r#"{"type":"gpt2-bpe"}"#, "\"gpt2-bpe\""),
            (r#"{"type":"char","vocab":["a","a"]}"#, "entries 0 and 1"),
        ];
        for (json, expected) in cases {
            let message = Tokenizer::from_json(json).unwrap_err().to_string();
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    #[test]
    fn file_name_constant() {
        assert_eq!(TOKENIZER_FILE, "lushan-tokenizer.json");
    }
}
