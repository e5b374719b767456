//! The GPT-2 model: configuration, one parameter layout, forward and backward over preallocated buffers,
//! cached decoding, sampling, generation and Hugging Face compatible checkpoints.

pub mod config;
pub mod error;
pub mod params;

pub use config::{ModelConfig, PositionEncoding};
pub use error::{ModelError, Result};
pub use params::{ParamKind, ParamLayout};
