//! Hyper-parameter sweeps (`lushan sweep`): search spaces over any training setting ([`space`]), the
//! sweep's settings read from a file and flags ([`spec`]), the methods — grid, random with the median
//! stopping rule, successive halving (asynchronous: ASHA, or synchronous) — as pure decisions over the
//! trials' records ([`method`]), and the journal that makes a sweep resumable ([`state`]). The trials
//! themselves are `lushan train` runs, each in its own directory; the CLI starts them and draws the report.

pub mod method;
pub mod space;
pub mod spec;
pub mod state;

pub use method::{Direction, Method, Metric, NextJob, Schedule};
pub use space::{Kind, Space};
pub use spec::{SweepFlags, SweepSpec};
pub use state::{Curve, Journal, Status, TrialRecord};

use std::path::PathBuf;

/// What can go wrong in a sweep, naming the file, setting or trial.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("unknown setting `{name}` in {section}: {hint}")]
    UnknownSetting { section: String, name: String, hint: String },

    #[error("search space of `{name}`: {reason}")]
    Space { name: String, reason: String },

    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },

    #[error("the budget fits no trial: {reason}")]
    BudgetFitsNoTrial { reason: String },

    #[error(
        "{dir} was made by another sweep configuration: {differences}; resume it without --config (or with the \
         file it was started with), or start a new sweep in another --out directory"
    )]
    OtherSweep { dir: PathBuf, differences: String },

    #[error("{path}:{line}: {message}")]
    Journal { path: PathBuf, line: usize, message: String },

    #[error(transparent)]
    Train(#[from] crate::TrainError),
}

pub type Result<T> = std::result::Result<T, SweepError>;
