//! Tokenizers: text ↔ token ids, and the one JSON file that stores a vocabulary beside data and checkpoints.
//!
//! [`Tokenizer`] is the type the rest of the workspace holds; it dispatches to a concrete tokenizer so that
//! shards, checkpoints and the server never care which kind produced the ids. Two kinds exist: the
//! character-level tokenizer of nanoGPT's Shakespeare example, and byte-level BPE ([`bpe`]) — GPT-2's own
//! vocabulary (identical ids to tiktoken's `gpt2` encoding), Hugging Face vocabulary files, or one trained
//! on a corpus.
//!
//! [`Tokenizer::encode`] treats special-token text such as `<|endoftext|>` as plain text (see the policies
//! in [`bpe`]); [`Tokenizer::encode_with_special`] is the explicit way in.
#![forbid(unsafe_code)]

pub mod bpe;
pub mod char_level;
pub mod chat;
pub mod error;
pub mod hf_export;
mod persist;

pub use bpe::decode::StreamDecoder;
pub use bpe::train::{BpeTrainer, TrainOptions, TrainReport};
pub use bpe::{Bpe, END_OF_TEXT, utf8_text};
pub use char_level::CharTokenizer;
pub use error::{Result, TokenizerError, VocabError};

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::json_kind;

/// File name of the tokenizer JSON inside a data directory (written by `lushan prepare`) and a checkpoint
/// directory, so that any directory with token ids also says how to turn them back into text.
pub const TOKENIZER_FILE: &str = "lushan-tokenizer.json";

// One tokenizer exists per process or checkpoint, never in bulk, so the char variant's inline ASCII table
// (584 bytes) costs nothing worth a Box — and boxing it would change the variant other crates construct.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokenizer {
    Char(CharTokenizer),
    Bpe(Bpe),
}

impl From<Bpe> for Tokenizer {
    fn from(tokenizer: Bpe) -> Self {
        Self::Bpe(tokenizer)
    }
}

impl From<CharTokenizer> for Tokenizer {
    fn from(tokenizer: CharTokenizer) -> Self {
        Self::Char(tokenizer)
    }
}

impl Tokenizer {
    /// GPT-2's tokenizer (the bundled vocabulary).
    pub fn gpt2() -> Result<Self> {
        Bpe::gpt2().map(Self::Bpe)
    }

    /// Encodes text; special-token text is plain text (BPE: tiktoken's `encode_ordinary`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Char(t) => t.encode(text),
            Self::Bpe(t) => Ok(t.encode_ordinary(text)),
        }
    }

    /// Encodes text, turning special-token text (`<|endoftext|>`) into its id. The character tokenizer
    /// has no special tokens, so this is [`Tokenizer::encode`] for it.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Char(t) => t.encode(text),
            Self::Bpe(t) => Ok(t.encode_with_special(text)),
        }
    }

    /// Decodes ids to text. BPE ids can end inside a character: such bytes become U+FFFD (use
    /// [`Tokenizer::decode_bytes`] for the exact bytes, or a [`StreamDecoder`] while generating).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Char(t) => t.decode(ids),
            Self::Bpe(t) => t.decode(ids),
        }
    }

    /// The exact bytes the ids stand for.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match self {
            Self::Char(t) => t.decode(ids).map(String::into_bytes),
            Self::Bpe(t) => t.decode_bytes(ids),
        }
    }

    /// Appends one token's bytes to `out`; an unknown id is [`TokenizerError::IdOutOfRange`] (position 0).
    pub fn append_token_bytes(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let out_of_range = || TokenizerError::IdOutOfRange { id, index: 0, vocab_size: self.vocab_size() };
        match self {
            Self::Char(t) => {
                let ch = t.vocab().get(id as usize).ok_or_else(out_of_range)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
            Self::Bpe(t) => out.extend_from_slice(t.token_bytes(id).ok_or_else(out_of_range)?),
        }
        Ok(())
    }

    /// A decoder for ids that arrive one at a time (generation), emitting only whole characters.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The id of `<|endoftext|>`, if this tokenizer has it.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            Self::Char(_) => None,
            Self::Bpe(t) => t.special_id(END_OF_TEXT),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Char(t) => t.vocab_size(),
            Self::Bpe(t) => t.vocab_size(),
        }
    }

    /// Loads a tokenizer from a file or directory: `gpt2` (the bundled GPT-2 vocabulary), a
    /// `lushan-tokenizer.json` file or a directory containing one, or a directory of Hugging Face / OpenAI
    /// BPE files (`tokenizer.json`, `vocab.json` + `merges.txt`, `encoder.json` + `vocab.bpe`), or a
    /// `tokenizer.json` file. A `tokenizer.json` in the character shape [`Tokenizer::write_hf_files`]
    /// writes loads as the character tokenizer (see [`hf_export`]).
    pub fn load(spec: &str) -> Result<Self> {
        if spec == "gpt2" {
            return Self::gpt2();
        }
        let path = Path::new(spec);
        if path.is_dir() {
            let own = path.join(TOKENIZER_FILE);
            if own.exists() {
                return Self::from_json_file(&own);
            }
            return hf_export::load_hf_dir(path);
        }
        if !path.exists() {
            return Err(TokenizerError::TokenizerNotFound { spec: spec.to_owned() });
        }
        match path.file_name().and_then(|n| n.to_str()) {
            Some(bpe::files::TOKENIZER_JSON) => hf_export::load_tokenizer_json_file(path),
            _ => Self::from_json_file(path),
        }
    }

    /// Writes the Hugging Face tokenizer files into `dir` (created if needed), so that `transformers`'
    /// `AutoTokenizer.from_pretrained(dir)` gives the same ids: BPE `vocab.json`, `merges.txt`,
    /// `tokenizer.json` and `tokenizer_config.json`; char `tokenizer.json` and `tokenizer_config.json` (see
    /// [`hf_export`]). Returns the paths written.
    pub fn write_hf_files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        match self {
            Self::Char(t) => t.write_hf_files(dir),
            Self::Bpe(t) => t.write_hf_files(dir),
        }
    }

    fn from_json_file(path: &Path) -> Result<Self> {
        let bytes = bpe::files::read(path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| TokenizerError::FileNotUtf8 { file: path.display().to_string(), offset: e.valid_up_to() })?;
        Self::from_json(text)
    }

    /// The JSON stored in [`TOKENIZER_FILE`]; its `"type"` field tells [`Tokenizer::from_json`] which
    /// variant to rebuild.
    pub fn to_json(&self) -> String {
        match self {
            Self::Char(t) => t.to_json(),
            Self::Bpe(t) => t.to_json(),
        }
    }

    /// Reads the `"type"` field and hands the document to that tokenizer's validator.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)?;
        let object = value.as_object().ok_or(TokenizerError::NotAnObject { found: json_kind(&value) })?;
        let kind = object.get("type").ok_or(TokenizerError::MissingField { field: "type" })?;
        match kind.as_str() {
            Some(char_level::CHAR_TYPE) => Ok(Self::Char(CharTokenizer::from_value(&value)?)),
            Some(bpe::BPE_TYPE) => Ok(Self::Bpe(Bpe::from_value(&value)?)),
            Some(other) => Err(TokenizerError::UnknownType { found: other.to_owned() }),
            None => Err(TokenizerError::FieldType { field: "type", expected: "a string", found: json_kind(kind) }),
        }
    }

    /// A short identity such as `char:65`, `gpt2-bpe:50257` or `bpe:8192:1a2b3c4d5e6f` (BPE: a hash of the
    /// vocabulary and merges), stored in shard headers so a shard can be matched to the tokenizer that
    /// wrote it without reading the whole vocabulary.
    pub fn describe(&self) -> String {
        match self {
            Self::Char(t) => format!("{}:{}", char_level::CHAR_TYPE, t.vocab_size()),
            Self::Bpe(t) => t.describe(),
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
    fn errors_stay_small() {
        // Other crates wrap this error beside a path; clippy's result_large_err fires above 128 bytes.
        assert!(std::mem::size_of::<TokenizerError>() <= 56, "{}", std::mem::size_of::<TokenizerError>());
    }

    #[test]
    fn file_name_constant() {
        assert_eq!(TOKENIZER_FILE, "lushan-tokenizer.json");
    }
}
