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

    #[error(
        "{path} changed while the run was reading it: it had {expected} bytes when opened and has {actual} now; \
         a shard must not be rewritten or truncated during a run (restore it, or prepare new data into another \
         directory) — the run stopped, keeping its checkpoint; continue with `lushan train --resume`"
    )]
    ShardChanged { path: PathBuf, expected: u64, actual: u64 },

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

    /// Reading or writing a tokenizer directory; the tokenizer crate's error names the file.
    #[error(transparent)]
    TokenizerFiles(lushan_tokenizer::TokenizerError),

    // ---- task data: classification and SFT records, batches (owned by the tasks module) ----
    #[error("{path}:{line}: the line is longer than {limit} bytes; a record must fit in one line of at most 16 MiB")]
    TaskLineTooLong { path: PathBuf, line: usize, limit: usize },

    #[error("{path}:{line}: the line is not valid UTF-8 (byte {offset} of the line); convert the file to UTF-8")]
    TaskNotUtf8 { path: PathBuf, line: usize, offset: usize },

    #[error("{path}:{line}: not valid JSON ({source}); each line of a JSONL file must be one JSON object")]
    TaskJson {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}:{line}: a record must be a JSON object like {example}, found {found}")]
    TaskNotObject { path: PathBuf, line: usize, found: &'static str, example: &'static str },

    #[error("{path}:{line}: the record has no field \"{field}\"; expected {expected}")]
    TaskMissingField { path: PathBuf, line: usize, field: String, expected: &'static str },

    #[error("{path}:{line}: field \"{field}\" must be {expected}, found {found}")]
    TaskFieldType { path: PathBuf, line: usize, field: String, expected: &'static str, found: &'static str },

    #[error("{path}:{line}: field \"{field}\" is empty; it must contain text")]
    TaskEmptyField { path: PathBuf, line: usize, field: String },

    #[error(
        "{path}:{line}: the record has {fields}; an SFT record has exactly one of \"text\", \"prompt\" + \"completion\" or \"messages\""
    )]
    TaskRecordShape { path: PathBuf, line: usize, fields: String },

    #[error("{path}:{line}: field \"{field}\": {source}")]
    TaskChat {
        path: PathBuf,
        line: usize,
        field: String,
        #[source]
        source: lushan_tokenizer::chat::ChatError,
    },

    #[error("{path}:{line}: field \"{field}\" cannot be tokenized: {source}")]
    TaskTokenize {
        path: PathBuf,
        line: usize,
        field: String,
        #[source]
        source: lushan_tokenizer::TokenizerError,
    },

    #[error("{path} has no records: {expected}")]
    TaskNoRecords { path: PathBuf, expected: &'static str },

    #[error("{path}:{line}: {message}")]
    TaskCsv { path: PathBuf, line: u64, message: String },

    #[error("{path}: the CSV header is {header:?}; it must name a \"text\" and a \"label\" column")]
    TaskCsvHeader { path: PathBuf, header: Vec<String> },

    #[error("{path}: {task} data must be {expected}")]
    TaskFormat { path: PathBuf, task: &'static str, expected: &'static str },

    #[error(
        "{path}:{line}: label {label:?} is not one of the model's labels {known:?}; add --reset-head to train a \
         new classifier head for this data's labels"
    )]
    LabelNotInHead { path: PathBuf, line: usize, label: String, known: Vec<String> },

    #[error(
        "{path}:{line}: validation label {label:?} never occurs in the training data (labels {known:?}); \
         the classifier cannot predict it (use --val-data, or another --seed for the split)"
    )]
    UnseenValLabel { path: PathBuf, line: usize, label: String, known: Vec<String> },

    #[error("{path}: the training data has only one label, {label:?}; a classifier needs at least two")]
    SingleClass { path: PathBuf, label: String },

    #[error("the classifier's label list {labels:?} is invalid: {reason}")]
    InvalidLabels { labels: Vec<String>, reason: &'static str },

    #[error(
        "--val-fraction {val_fraction} of {records} records leaves the {split} split empty; \
         use more records, another --val-fraction or --val-data"
    )]
    TaskSplitEmpty { split: &'static str, records: usize, val_fraction: f64 },

    #[error("{path}: every example was dropped ({dropped}): no token left to train on within --block-size {max_len}")]
    TaskAllDropped { path: PathBuf, dropped: usize, max_len: usize },

    #[error("cannot resume the task data loader: {reason}")]
    TaskLoaderState { reason: String },

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

    #[error("the run does not fit in memory: it needs {needed}, but {available}; {advice}")]
    TooLarge { needed: String, available: String, advice: String },

    #[error(
        "{path} is locked by another training run (process {pid}); two runs on one --out-dir would overwrite \
         each other's checkpoints and metrics — wait for it, stop it, or choose another --out-dir"
    )]
    Locked { path: PathBuf, pid: String },

    #[error("{path}: cannot resume: {message}")]
    Resume { path: PathBuf, message: String },

    #[error(
        "vocabulary mismatch: the data was tokenized with `{data}` but the model has {model_vocab} tokens \
         (prepare the data with the model's tokenizer)"
    )]
    VocabMismatch { data: String, model_vocab: usize },

    // ---- distributed training over MPI (owned by the distributed module) ----
    /// A run across processes that cannot go on: the message names the rank(s) and what differs or failed.
    #[error("distributed training: {0}")]
    Distributed(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
