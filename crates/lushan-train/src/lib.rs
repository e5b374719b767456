//! Training: token shards and the batch loader, the optimiser, schedules, the training loop, resume state and
//! evaluation.
#![forbid(unsafe_code)]

pub mod config;
pub mod data;
pub mod distributed;
pub mod error;
pub mod features;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod resume;
pub mod schedule;
pub mod sweep;
pub mod task_metrics;
pub mod tasks;
pub mod train_data;
pub mod trainer;

pub use config::{InitFrom, Preset, TrainConfig, TrainOverrides};
pub use error::{Result, TrainError};
pub use trainer::{DataSource, EvalFigures, EvalReport, Observer, RunEnd, StepReport, TrainData, Trainer};
