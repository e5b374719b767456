//! The training crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // ---- data: corpora, shards, loader (owned by the data module) ----
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} does not exist: no token shard there; run `lushan prepare` to create train.bin and val.bin")]
    ShardMissing { path: PathBuf },

    #[error("{path}: not a lushan token shard (the file does not start with \"LUSHANTK\"); re-run `lushan prepare`")]
    NotAShard { path: PathBuf },

    #[error(
        "{path}: shard format version {found} is not supported (this build reads version {expected}); re-run `lushan prepare`"
    )]
    ShardVersion { path: PathBuf, found: u32, expected: u32 },

    #[error("{path}: shard token width is {found} bytes; expected 2 (u16 ids) or 4 (u32 ids)")]
    ShardWidth { path: PathBuf, found: u32 },

    #[error(
        "{path}: shard header is cut short: it needs {expected} bytes but the file has {actual}; re-run `lushan prepare`"
    )]
    ShardHeaderTruncated { path: PathBuf, expected: u64, actual: u64 },

    #[error("{path}: shard tokenizer description is not valid UTF-8: {source}")]
    ShardDescription {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },

    #[error(
        "{path}: shard body should hold {count} tokens × {width} bytes = {expected} bytes but has {actual} bytes \
         (the file is truncated or has trailing bytes); re-run `lushan prepare`"
    )]
    ShardSize { path: PathBuf, count: u64, width: u32, expected: u64, actual: u64 },

    #[error(
        "{path}: token id {id} at index {index} is out of range for a vocabulary of {vocab_size} tokens \
         (the shard was made with a different tokenizer?)"
    )]
    TokenOutOfRange { path: PathBuf, id: u32, index: usize, vocab_size: usize },

    #[error(
        "{path}: corpus of {tokens} tokens is shorter than one window of block_size+1 = {window} tokens \
         (use a smaller --block-size or more text)"
    )]
    CorpusTooShort { path: PathBuf, tokens: usize, window: usize },

    #[error("invalid data argument `{name}` = {value}: {expected}")]
    DataArgument { name: &'static str, value: String, expected: String },

    #[error("input {path} does not exist; pass a UTF-8 text file or a directory of text files")]
    InputMissing { path: PathBuf },

    #[error("{path}: not valid UTF-8 at byte offset {offset}; the corpus must be UTF-8 text")]
    NotUtf8 { path: PathBuf, offset: usize },

    #[error("the corpus is empty: {paths} contain no text")]
    EmptyCorpus { paths: String },

    #[error(
        "--val-fraction {val_fraction} of {tokens} tokens leaves the {split} split empty; \
         use more text or a --val-fraction further from 0 and 1"
    )]
    EmptySplit { split: &'static str, tokens: usize, val_fraction: f64 },

    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: lushan_tokenizer::TokenizerError,
    },

    #[error("{path} not found: the directory has no tokenizer file; re-run `lushan prepare`")]
    TokenizerMissing { path: PathBuf },

    // ---- training: config, loop, resume (owned by the trainer) ----
    #[error(transparent)]
    Model(#[from] lushan_model::ModelError),

    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting { name: String, reason: String },

    #[error("{path}: invalid config file: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error(
        "loss became {loss} at step {step}: training stopped; the last good checkpoint is kept (try a lower \
         --learning-rate or --grad-clip)"
    )]
    NonFiniteLoss { step: u64, loss: f32 },

    #[error(
        "gradient norm became {norm} at step {step}: training stopped; the last good checkpoint is kept (try a \
         lower --learning-rate or --grad-clip)"
    )]
    NonFiniteGradient { step: u64, norm: f32 },

    #[error("{path}: cannot resume: {message}")]
    Resume { path: PathBuf, message: String },

    #[error(
        "vocabulary mismatch: the data was tokenized with `{data}` but the model has {model_vocab} tokens \
         (prepare the data with the model's tokenizer)"
    )]
    VocabMismatch { data: String, model_vocab: usize },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
