//! The model crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    #[error("weight type {dtype}: tensor `{tensor}` {reason}")]
    WeightType { dtype: &'static str, tensor: String, reason: String },

    #[error("{job} needs the model's weights in f32, but they were loaded as {dtype} (load it without --dtype)")]
    NeedsF32Weights { job: &'static str, dtype: &'static str },

    #[error("token id {token} at position {position} is out of range: the model's vocabulary has {vocab_size} tokens")]
    TokenOutOfRange { token: u32, position: usize, vocab_size: usize },

    #[error(
        "sequence of {len} tokens is longer than the model's context of {block_size} (`block_size` / `n_positions`)"
    )]
    SequenceTooLong { len: usize, block_size: usize },

    #[error("label {label} of sequence {sequence} is out of range: the classifier has {num_labels} labels")]
    LabelOutOfRange { label: u32, sequence: usize, num_labels: usize },

    #[error("empty input: at least one token is needed")]
    EmptyInput,

    #[error("batch shape mismatch: buffers were allocated for (B={allocated_b}, T={allocated_t}), got (B={b}, T={t})")]
    BatchMismatch { allocated_b: usize, allocated_t: usize, b: usize, t: usize },

    #[error("invalid sampling setting `{field}`: {reason}")]
    InvalidSampling { field: &'static str, reason: String },

    /// An `explain` option without meaning (e.g. `top_k = 0`, a neighbour id outside the vocabulary),
    /// naming the option and what it accepts.
    #[error("invalid explain option `{field}`: {reason}")]
    InvalidExplainOption { field: &'static str, reason: String },

    /// A forward-pass edit (ablation, patching) at a site or rows the model or batch does not have, or with
    /// values of the wrong length.
    #[error("invalid intervention: {reason}")]
    InvalidEdit { reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A Hugging Face `config.json` field that is missing, mistyped or names an option lushan does not
    /// implement; `field` is the JSON key, so the user knows which line to fix.
    #[error("{path}: config field `{field}` {reason}")]
    ConfigField { path: PathBuf, field: &'static str, reason: String },

    /// Every missing, unexpected, mis-shaped or mistyped tensor of a weights file, listed together so one
    /// run shows the whole mismatch instead of one problem per attempt.
    /// Long lists are cut: each kind of problem names its first few tensors and counts the rest, so
    /// `problems` (the lines shown) can be fewer than `total`.
    #[error("{path}: the tensors do not match config.json ({total} problem(s)):\n  - {}", .problems.join("\n  - "))]
    TensorMismatch { path: PathBuf, problems: Vec<String>, total: u64 },

    /// A LoRA setting without meaning (rank 0, a target no module matches…), naming the setting.
    #[error("invalid LoRA setting `{field}`: {reason}")]
    InvalidLora { field: &'static str, reason: String },

    /// A PEFT `adapter_config.json` field that is missing, mistyped, or asks for something lushan does not
    /// implement (rsLoRA, DoRA, per-module ranks…); `field` is the JSON key.
    #[error("{path}: adapter config field `{field}` {reason}")]
    AdapterConfig { path: PathBuf, field: &'static str, reason: String },

    /// An adapter saved for a base model of another shape, naming the dimension and a tensor that shows it.
    #[error(
        "{path}: an adapter for a different base shape: `{tensor}` implies {field} = {found}, but the base model \
         has {field} = {expected}"
    )]
    AdapterBaseShape { path: PathBuf, field: &'static str, expected: usize, found: usize, tensor: String },

    /// Every unexpected, missing, mis-shaped or mistyped tensor of an adapter file, listed together.
    #[error("{path}: the adapter's tensors do not fit ({} problem(s)):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    AdapterTensors { path: PathBuf, problems: Vec<String> },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
