//! Machine-readable metrics: one JSON object per line in `out_dir/metrics.jsonl`.

use crate::error::{Result, TrainError};
use crate::trainer::{EvalReport, StepReport};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of the metrics file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    Step {
        step: u64,
        loss: f32,
        lr: f32,
        grad_norm: f32,
        ms: f64,
        tokens_per_second: f64,
    },
    Eval {
        step: u64,
        train_loss: f32,
        val_loss: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_accuracy: Option<f32>,
        improved: bool,
        saved_model: bool,
        /// The strongest induction head's score (0..=1) and its 0-based layer and head, measured on a fixed
        /// seeded repeated random sequence (absent for a context too short for it, and in older logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        induction_score: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        induction_layer: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        induction_head: Option<usize>,
    },
    /// The model saved without being the best evaluated one: the run ended (`reason`: `interrupted`,
    /// `early_stopped`, `finished`) before any evaluation had saved a model, so the directory gets the
    /// model as it was at `step`, to be usable by `generate`.
    Saved {
        step: u64,
        best: bool,
        reason: String,
    },
}

/// Appends metrics lines, flushed after each.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Starts a new file (a fresh run replaces an old log).
    pub fn create(out_dir: &Path) -> Result<Self> {
        Self::open(out_dir, false)
    }

    /// Continues an existing file (resume).
    pub fn append(out_dir: &Path) -> Result<Self> {
        Self::open(out_dir, true)
    }

    fn open(out_dir: &Path, append: bool) -> Result<Self> {
        std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
        let path = out_dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|source| TrainError::Io { path: path.clone(), source })?;
        Ok(Self { path, file })
    }

    fn write(&mut self, line: &MetricsLine) -> Result<()> {
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(|source| TrainError::Io { path: self.path.clone(), source })
    }

    pub fn step(&mut self, r: &StepReport) -> Result<()> {
        self.write(&MetricsLine::Step {
            step: r.step,
            loss: r.loss,
            lr: r.lr,
            grad_norm: r.grad_norm,
            ms: r.seconds * 1e3,
            tokens_per_second: r.tokens_per_second,
        })
    }

    pub fn eval(&mut self, r: &EvalReport) -> Result<()> {
        self.write(&MetricsLine::Eval {
            step: r.step,
            train_loss: r.train_loss,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            improved: r.improved,
            saved_model: r.saved_model,
            induction_score: r.induction.map(|h| h.score),
            induction_layer: r.induction.map(|h| h.layer),
            induction_head: r.induction.map(|h| h.head),
        })
    }
}

impl MetricsLog {
    /// Records that the model at `step` was saved though no evaluation found it the best.
    pub fn saved_not_best(&mut self, step: u64, reason: &str) -> Result<()> {
        self.write(&MetricsLine::Saved { step, best: false, reason: reason.to_owned() })
    }
}

/// Reads a metrics file back (skipping lines a crash may have cut short).
pub fn read_metrics(out_dir: &Path) -> Result<Vec<MetricsLine>> {
    let path = out_dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TrainError::Io { path, source }),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
