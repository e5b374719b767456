//! Training: token shards and the batch loader, the optimiser, schedules, the training loop, resume state and
//! evaluation.

pub mod error;

pub use error::{Result, TrainError};
