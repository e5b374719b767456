//! The GPT-2 model: configuration, one parameter layout, forward and backward over preallocated buffers,
//! cached decoding, sampling, generation and Hugging Face compatible checkpoints.
// Unsafe code only item by item (memory-mapping a checkpoint), each with a SAFETY note.
#![deny(unsafe_code)]

pub mod activations;
mod adapter_pass;
mod block_pass;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod decode;
pub mod error;
pub mod features;
pub mod generate;
pub mod gguf;
pub mod gpt;
pub mod grad_buckets;
mod head;
pub mod inspect;
pub mod intervene;
pub mod lora;
pub mod params;
pub mod sampling;
pub mod step_weights;
pub mod weights;

pub use activations::Activations;
pub use classify::{Classified, classify_batch};
pub use config::{Head, ModelConfig, PositionEncoding};
pub use decode::{BatchScratch, DecodeState};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generation, Generator, Penalties};
pub use gpt::{Gpt, Mode};
pub use grad_buckets::{GradSegment, OnGradsFinal};
pub use inspect::{ExplainOptions, Explanation, explain};
pub use intervene::{Edit, Knockout, Patch, Site};
pub use lora::{Lora, LoraConfig, LoraLayout, LoraTarget};
pub use params::{ParamKind, ParamLayout};
pub use sampling::{Sampler, Sampling};
pub use step_weights::StepWeights;
pub use weights::{DType, PackedWeights};
