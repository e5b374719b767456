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

    #[error("tokenizer JSON field \"type\" is {found:?}; this build knows \"char\" and \"bpe\"")]
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

    // ---- byte-level BPE: input and ids ----
    #[error(
        "input is not valid UTF-8: byte {offset} (0x{byte:02X}) does not continue a character; \
         convert the file to UTF-8 first (e.g. `iconv -t UTF-8`)"
    )]
    InvalidUtf8 { offset: usize, byte: u8 },

    // ---- byte-level BPE: vocabulary files ----
    #[error("cannot read {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },

    #[error("cannot write {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },

    #[error("{path} not found: the directory has no tokenizer file; re-run `lushan prepare`")]
    TokenizerFileMissing { path: std::path::PathBuf },

    /// A problem inside a tokenizer file whose own message does not name the file.
    #[error("{path}: {source}")]
    InFile { path: std::path::PathBuf, source: Box<TokenizerError> },

    #[error("{file} is not valid JSON: {source}")]
    FileJson { file: String, source: serde_json::Error },

    #[error("{file} is not UTF-8 text: byte {offset} is invalid")]
    FileNotUtf8 { file: String, offset: usize },

    #[error("{file} has no field \"{field}\"")]
    MissingFileField { file: String, field: &'static str },

    #[error(
        "no tokenizer files in {dir}: expected lushan-tokenizer.json, tokenizer.json, vocab.json + merges.txt, \
         or encoder.json + vocab.bpe"
    )]
    NoTokenizerFiles { dir: std::path::PathBuf },

    #[error(
        "tokenizer {spec:?} not found: give `gpt2`, a directory of tokenizer files, or a lushan-tokenizer.json \
         / tokenizer.json file"
    )]
    TokenizerNotFound { spec: String },

    #[error(
        "tokenizer JSON has an unknown field \"{field}\" (a \"bpe\" tokenizer has \"type\", \"name\", \"vocab\", \
         \"merges\" and \"special_tokens\")"
    )]
    BpeUnknownField { field: String },

    #[error("tokenizer JSON field \"name\" is {found:?}; the only built-in BPE vocabulary is \"gpt2\"")]
    UnknownBpeName { found: String },

    #[error("tokenizer JSON has both \"name\" and \"vocab\"; give one")]
    BpeNameAndVocab,

    // ---- BPE training ----
    #[error(
        "vocabulary size {requested} is out of range: byte-level BPE needs at least {minimum} (256 bytes + the \
         special tokens) and token ids are 32-bit, so at most {maximum}"
    )]
    VocabSizeOutOfRange { requested: usize, minimum: usize, maximum: usize },

    #[error("cannot train a tokenizer on an empty corpus")]
    EmptyCorpus,

    /// A vocabulary file's content is wrong (boxed: these carry several strings, and every `Result` of the
    /// crate — and of crates that wrap this error — would otherwise pay for them).
    #[error(transparent)]
    Vocab(Box<VocabError>),
}

/// What is wrong inside a vocabulary file: which file, line or merge, and which token.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("{file}: a byte-level BPE vocabulary needs 256 to {max} tokens, this one has {size}", max = u32::MAX)]
    BpeVocabSize { file: String, size: usize },

    #[error("{file}: token {token:?} has id {found}; ids must be integers from 0 to {max}", max = u32::MAX)]
    VocabBadId { file: String, token: String, found: String },

    #[error("{file}: token {token:?} appears twice (ids {first} and {second})")]
    DuplicateToken { file: String, token: String, first: u64, second: u64 },

    #[error("{file}: id {id} is given to both {first:?} and {second:?}")]
    DuplicateId { file: String, id: u64, first: String, second: String },

    #[error("{file}: id {id} is out of range: {size} tokens must have the ids 0..{size} with no gaps")]
    VocabIdGap { file: String, id: u64, size: usize },

    #[error(
        "{file}: token {token:?} contains {ch:?}, which is not in GPT-2's byte alphabet; \
         byte-level vocabularies spell every byte as one character (space is 'Ġ')"
    )]
    NotByteLevel { file: String, token: String, ch: char },

    #[error(
        "{file}: the vocabulary has no token for the byte 0x{byte:02X}; a byte-level BPE vocabulary needs all \
         256 single bytes"
    )]
    MissingByte { file: String, byte: u8 },

    #[error("{location}: expected two tokens separated by one space, found {text:?}")]
    MergeSyntax { location: String, text: String },

    #[error("{location}: merge names {token:?}, which is not an ordinary token of the vocabulary")]
    MergeUnknownToken { location: String, token: String },

    #[error(
        "{location}: merging {left:?} and {right:?} makes {merged:?}, which is not in the vocabulary \
         (are the merges and the vocabulary from the same tokenizer?)"
    )]
    MergeResultMissing { location: String, left: String, right: String, merged: String },

    #[error("{location}: the merge {left:?} {right:?} is listed a second time (first at {first})")]
    DuplicateMerge { location: String, left: String, right: String, first: String },

    #[error(
        "{file}: token {token:?} (id {id}) is neither a single byte nor made by any merge in {merges_file}; \
         is the merges file truncated or from another tokenizer?"
    )]
    UnreachableToken { file: String, merges_file: String, token: String, id: usize },

    #[error("{file}: special token id {id} is out of range (the vocabulary has {vocab_size} tokens)")]
    SpecialIdOutOfRange { file: String, id: u32, vocab_size: usize },

    #[error("{file}: special token {id} ({token:?}) must be non-empty UTF-8 text")]
    BadSpecialToken { file: String, id: u32, token: String },

    #[error(
        "{file}: special/added token entry {entry} needs an integer \"id\" and a \"content\" string matching the vocabulary"
    )]
    BadSpecialEntry { file: String, entry: String },

    #[error("{file}: added token {id} is {added:?} but the vocabulary gives id {id} to {vocab:?}")]
    AddedTokenConflict { file: String, id: u64, vocab: String, added: String },

    #[error("{file}: field \"{field}\" must be {expected} for a GPT-2 style tokenizer, found {found}")]
    UnsupportedTokenizerJson { file: String, field: &'static str, expected: &'static str, found: String },
}

impl From<VocabError> for TokenizerError {
    fn from(error: VocabError) -> Self {
        Self::Vocab(Box::new(error))
    }
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
