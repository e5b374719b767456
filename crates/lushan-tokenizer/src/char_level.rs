//! Character-level tokenizer, as in nanoGPT's `shakespeare_char/prepare.py`.
//!
//! The vocabulary is the set of distinct Unicode scalar values of a corpus sorted by code point, and a
//! character's id is its index in that list. Python's `sorted(set(text))` orders strings by code point too,
//! so for the same corpus the ids match nanoGPT's `stoi` exactly.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{Result, TokenizerError, json_kind};

/// The value of the JSON `"type"` field for this tokenizer.
pub const CHAR_TYPE: &str = "char";

/// Sentinel in the ASCII fast table for "not in the vocabulary".
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct CharTokenizer {
    /// id → character.
    vocab: Vec<char>,
    /// Direct lookup for ASCII, which is nearly every character of most corpora.
    ascii: [u32; 128],
    /// Lookup for everything else.
    other: HashMap<char, u32>,
}

impl PartialEq for CharTokenizer {
    /// Two tokenizers are equal when they map ids to the same characters; the lookup tables follow.
    fn eq(&self, other: &Self) -> bool {
        self.vocab == other.vocab
    }
}

impl Eq for CharTokenizer {}

impl CharTokenizer {
    /// Builds the vocabulary from every distinct character of `text`, sorted by code point.
    pub fn from_text(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(TokenizerError::EmptyText);
        }
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        Self::from_vocab(vocab)
    }

    /// Builds the lookup tables for an id → character list, rejecting an empty list and repeats (an id
    /// order that is not sorted is accepted: the ids are whatever the list says).
    pub fn from_vocab(vocab: Vec<char>) -> Result<Self> {
        if vocab.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        let mut ascii = [ABSENT; 128];
        let mut other = HashMap::new();
        let mut first_index: HashMap<char, usize> = HashMap::with_capacity(vocab.len());
        for (index, &ch) in vocab.iter().enumerate() {
            if let Some(&first) = first_index.get(&ch) {
                return Err(TokenizerError::DuplicateVocabEntry { ch, first, second: index });
            }
            first_index.insert(ch, index);
            // At most 0x110000 distinct chars exist, so every index fits in a u32.
            let id = index as u32;
            let code = u32::from(ch) as usize;
            if code < ascii.len() {
                ascii[code] = id;
            } else {
                other.insert(ch, id);
            }
        }
        Ok(Self { vocab, ascii, other })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The id → character list.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    /// The id of one character, if it is in the vocabulary.
    pub fn id_of(&self, ch: char) -> Option<u32> {
        let code = u32::from(ch) as usize;
        if code < self.ascii.len() {
            let id = self.ascii[code];
            (id != ABSENT).then_some(id)
        } else {
            self.other.get(&ch).copied()
        }
    }

    /// Encodes every character; the first one missing from the vocabulary is reported with its 1-based
    /// line and column (counted in characters) so the user can find it in the file.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len());
        for ch in text.chars() {
            match self.id_of(ch) {
                Some(id) => ids.push(id),
                None => return Err(unknown_character(text, ids.len(), ch)),
            }
        }
        Ok(ids)
    }

    /// Decodes ids back to text; an id outside the vocabulary is an error naming it and its position.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::with_capacity(ids.len());
        for (index, &id) in ids.iter().enumerate() {
            match self.vocab.get(id as usize) {
                Some(&ch) => text.push(ch),
                None => {
                    return Err(TokenizerError::IdOutOfRange { id, index, vocab_size: self.vocab.len() });
                }
            }
        }
        Ok(text)
    }

    /// `{"type":"char","vocab":["\n"," ","!",...]}`: the list order is the id order.
    pub fn to_json(&self) -> String {
        let vocab = self.vocab.iter().map(|ch| Value::String(ch.to_string())).collect();
        let mut object = Map::new();
        object.insert("type".to_owned(), Value::String(CHAR_TYPE.to_owned()));
        object.insert("vocab".to_owned(), Value::Array(vocab));
        // `Value`'s Display writes compact JSON and cannot fail, unlike `serde_json::to_string`.
        Value::Object(object).to_string()
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)?;
        Self::from_value(&value)
    }

    /// Validates an already-parsed JSON document (shared with [`crate::Tokenizer::from_json`], which reads
    /// `"type"` first to dispatch).
    pub(crate) fn from_value(value: &Value) -> Result<Self> {
        let object = value.as_object().ok_or(TokenizerError::NotAnObject { found: json_kind(value) })?;
        if let Some(field) = object.keys().find(|k| *k != "type" && *k != "vocab") {
            return Err(TokenizerError::UnknownField { field: field.clone() });
        }
        let kind = object.get("type").ok_or(TokenizerError::MissingField { field: "type" })?;
        let kind = kind.as_str().ok_or(TokenizerError::FieldType {
            field: "type",
            expected: "a string",
            found: json_kind(kind),
        })?;
        if kind != CHAR_TYPE {
            return Err(TokenizerError::UnknownType { found: kind.to_owned() });
        }
        let entries = object.get("vocab").ok_or(TokenizerError::MissingField { field: "vocab" })?;
        let entries = entries.as_array().ok_or(TokenizerError::FieldType {
            field: "vocab",
            expected: "an array of one-character strings",
            found: json_kind(entries),
        })?;
        let mut vocab = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_str().ok_or(TokenizerError::FieldType {
                field: "vocab",
                expected: "an array of one-character strings",
                found: json_kind(entry),
            })?;
            let mut chars = entry.chars();
            match (chars.next(), chars.next()) {
                (Some(ch), None) => vocab.push(ch),
                _ => {
                    return Err(TokenizerError::VocabEntryNotOneChar {
                        index,
                        entry: entry.to_owned(),
                        chars: entry.chars().count(),
                    });
                }
            }
        }
        Self::from_vocab(vocab)
    }
}

/// Builds the unknown-character error; only runs on the error path, so recounting lines is fine.
fn unknown_character(text: &str, char_index: usize, ch: char) -> TokenizerError {
    let (mut line, mut column) = (1, 1);
    for c in text.chars().take(char_index) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    TokenizerError::UnknownCharacter { ch, line, column }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    const TEXT: &str = "First Citizen:\nBefore we proceed, hear me.\n\n床前明月光，疑是地上霜。\n🙂 smile 😀\n";

    #[test]
    fn round_trip_multiline_unicode() {
        let tok = CharTokenizer::from_text(TEXT).unwrap();
        let ids = tok.encode(TEXT).unwrap();
        assert_eq!(ids.len(), TEXT.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), TEXT);
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    }

    #[test]
    fn vocab_is_sorted_unique_code_points() {
        let tok = CharTokenizer::from_text(TEXT).unwrap();
        let vocab = tok.vocab();
        assert!(vocab.windows(2).all(|w| u32::from(w[0]) < u32::from(w[1])));
        assert_eq!(vocab[0], '\n');
        assert_eq!(vocab[1], ' ');
        assert_eq!(*vocab.last().unwrap(), '🙂'); // U+1F642 sorts after 😀 U+1F600
        let mut expected: Vec<char> = TEXT.chars().collect();
        expected.sort();
        expected.dedup();
        assert_eq!(vocab, expected.as_slice());
        assert_eq!(tok.encode("\n ").unwrap(), vec![0, 1]);
    }

    #[test]
    fn empty_text_is_an_error() {
        let err = CharTokenizer::from_text("").unwrap_err();
        assert!(matches!(err, TokenizerError::EmptyText));
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn unknown_character_names_line_and_column() {
        let tok = CharTokenizer::from_text("abc\ndef\n").unwrap();
        let err = tok.encode("abc\nde\nfaz").unwrap_err();
        match err {
            TokenizerError::UnknownCharacter { ch, line, column } => {
                assert_eq!((ch, line, column), ('z', 3, 3));
            }
            other => panic!("unexpected error {other}"),
        }
        let message = err_message(tok.encode("ab月"));
        assert!(message.contains("'月'"), "{message}");
        assert!(message.contains("U+6708"), "{message}");
        assert!(message.contains("line 1, column 3"), "{message}");
        assert!(message.contains("different corpus"), "{message}");
    }

    #[test]
    fn out_of_range_decode_names_id_and_vocab_size() {
        let tok = CharTokenizer::from_text("abc").unwrap();
        let message = err_message(tok.decode(&[0, 1, 3]));
        assert!(message.contains("token id 3"), "{message}");
        assert!(message.contains("position 2"), "{message}");
        assert!(message.contains("3 tokens"), "{message}");
    }

    #[test]
    fn json_round_trip() {
        let tok = CharTokenizer::from_text(TEXT).unwrap();
        let json = tok.to_json();
        assert!(json.starts_with(r#"{"type":"char","vocab":["\n"," ","#), "{json}");
        let back = CharTokenizer::from_json(&json).unwrap();
        assert_eq!(back, tok);
        assert_eq!(back.encode(TEXT).unwrap(), tok.encode(TEXT).unwrap());
    }

    #[test]
    fn json_with_unsorted_vocab_keeps_its_order() {
        let tok = CharTokenizer::from_json(r#"{"type":"char","vocab":["b","a"]}"#).unwrap();
        assert_eq!(tok.encode("ab").unwrap(), vec![1, 0]);
    }

    #[test]
    fn json_validation_errors_name_the_problem() {
        let cases = [
            ("{", "malformed"),
            ("[]", "must be an object"),
            (r#"{"vocab":["a"]}"#, "no field \"type\""),
            (r#"{"type":1,"vocab":["a"]}"#, "field \"type\" must be a string"),
            (r#"{"type":"bpe","vocab":["a"]}"#, "\"bpe\""),
            (r#"{"type":"char"}"#, "no field \"vocab\""),
            (r#"{"type":"char","vocab":"ab"}"#, "field \"vocab\" must be an array"),
            (r#"{"type":"char","vocab":["a",7]}"#, "found a number"),
            (r#"{"type":"char","vocab":[]}"#, "\"vocab\" is empty"),
            (r#"{"type":"char","vocab":["a","bc"]}"#, "entry 1 is \"bc\""),
            (r#"{"type":"char","vocab":["a",""]}"#, "entry 1 is \"\" (0 characters)"),
            (r#"{"type":"char","vocab":["a","b","a"]}"#, "entries 0 and 2 are both 'a'"),
            (r#"{"type":"char","vocab":["a"],"merges":[]}"#, "unknown field \"merges\""),
        ];
        for (json, expected) in cases {
            let message = err_message(CharTokenizer::from_json(json));
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    fn err_message<T: std::fmt::Debug>(result: Result<T>) -> String {
        result.unwrap_err().to_string()
    }
}
