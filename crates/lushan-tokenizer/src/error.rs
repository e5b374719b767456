//! The tokenizer crate's one error type.
//!
//! The tokenizer never sees file paths: callers that read a vocabulary or a corpus from disk wrap these
//! errors with the path, so each message here names the field, character or id that was wrong.

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot build a character vocabulary from empty text: the corpus has no characters")]
    EmptyText,

    #[error(
        "character {ch:?} (U+{code:04X}) at line {line}, column {column} is not in the tokenizer's vocabulary; \
         the vocabulary was built from a different corpus (re-run `lushan prepare` on text that contains it)",
        code = u32::from(*.ch)
    )]
    UnknownCharacter { ch: char, line: usize, column: usize },

    #[error(
        "token id {id} at position {index} is out of range: the vocabulary has {vocab_size} tokens (ids 0..{vocab_size})"
    )]
    IdOutOfRange { id: u32, index: usize, vocab_size: usize },

    #[error("tokenizer JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),

    #[error("tokenizer JSON must be an object like {{\"type\":\"char\",\"vocab\":[...]}}, found {found}")]
    NotAnObject { found: &'static str },

    #[error("tokenizer JSON has no field \"{field}\"")]
    MissingField { field: &'static str },

    #[error("tokenizer JSON field \"{field}\" must be {expected}, found {found}")]
    FieldType { field: &'static str, expected: &'static str, found: &'static str },

    #[error("tokenizer JSON has an unknown field \"{field}\" (expected only \"type\" and \"vocab\")")]
    UnknownField { field: String },

    #[error("tokenizer JSON field \"type\" is {found:?}; this build knows only \"char\"")]
    UnknownType { found: String },

    #[error("tokenizer JSON field \"vocab\" is empty: a vocabulary needs at least one character")]
    EmptyVocab,

    #[error(
        "tokenizer JSON field \"vocab\" entry {index} is {entry:?} ({chars} characters); \
         every entry of a char vocabulary must be exactly one character"
    )]
    VocabEntryNotOneChar { index: usize, entry: String, chars: usize },

    #[error(
        "tokenizer JSON field \"vocab\" entries {first} and {second} are both {ch:?}; \
         a vocabulary must not repeat a character"
    )]
    DuplicateVocabEntry { ch: char, first: usize, second: usize },
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// The JSON kind of a value, for "found …" in error messages.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
