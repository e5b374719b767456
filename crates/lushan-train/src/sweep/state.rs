//! The sweep's journal: one record per trial in `trials.jsonl` (and the same table as `trials.csv`),
//! rewritten atomically after every event — a trial started, a rung reached, a trial stopped — so that a
//! sweep killed at any moment resumes from the last event. Validation curves are read back from each
//! trial's own `metrics.jsonl`.

use super::method::Direction;
use super::{Metric, Result, SweepError};
use crate::metrics::{MetricsLine, read_metrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const JOURNAL_FILE: &str = "trials.jsonl";
pub const CSV_FILE: &str = "trials.csv";
/// Where trial `id` trains, under the sweep's directory.
pub const TRIALS_DIR: &str = "trials";

/// A trial's directory: `DIR/trials/007`.
pub fn trial_dir(sweep_dir: &Path, id: usize) -> PathBuf {
    sweep_dir.join(TRIALS_DIR).join(format!("{id:03}"))
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// To be run to its target steps (new, or promoted by halving).
    Pending,
    /// Started; a sweep that finds this in its journal was interrupted and continues the trial.
    Running,
    /// Reached its halving rung; waits for the rung's decision.
    RungDone,
    /// Trained to the end.
    Finished,
    /// Stopped by the trainer's early stopping (no improvement for `early_stopping_patience` evaluations).
    EarlyStopped,
    /// Stopped by the sweep: a halving rung or the median rule.
    Pruned,
    /// The training run failed (its `train.log` says why).
    Failed,
}

impl Status {
    /// Whether the trial still has steps to run.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::RungDone => "rung_done",
            Status::Finished => "finished",
            Status::EarlyStopped => "early_stopped",
            Status::Pruned => "pruned",
            Status::Failed => "failed",
        }
    }
}

/// One trial: its settings, how far it went and what it reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub id: usize,
    /// The settings the sweep chose (the rest are the base's).
    pub settings: BTreeMap<String, toml::Value>,
    pub status: Status,
    /// Why it stopped (empty while it runs).
    #[serde(default)]
    pub reason: String,
    /// The steps it is to be trained to (halving: its rung's).
    pub target_steps: u64,
    /// Steps trained so far.
    pub steps: u64,
    /// Halving's rung (0 for the other methods).
    #[serde(default)]
    pub rung: usize,
    /// Halving: the best value up to each rung the trial completed (what ASHA ranks a rung's results by,
    /// a promoted trial's included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rung_results: Vec<Option<f64>>,
    /// The best value of the sweep's metric, and the step where it was reached.
    pub best: Option<f64>,
    pub best_step: Option<u64>,
    /// Seconds of training (all its runs together).
    pub seconds: f64,
    /// How many times `lushan train` was started for it.
    pub launches: u32,
}

impl TrialRecord {
    pub fn new(id: usize, settings: BTreeMap<String, toml::Value>, target_steps: u64) -> Self {
        Self {
            id,
            settings,
            status: Status::Pending,
            reason: String::new(),
            target_steps,
            steps: 0,
            rung: 0,
            rung_results: Vec::new(),
            best: None,
            best_step: None,
            seconds: 0.0,
            launches: 0,
        }
    }

    /// Takes the trial's steps and best value from its curve and metrics.
    pub fn update_from(&mut self, curve: &Curve, steps: u64, direction: Direction) {
        self.steps = steps;
        if let Some((step, value)) = curve.best(direction) {
            self.best = Some(value);
            self.best_step = Some(step);
        }
    }

    /// Notes the best value so far as the result of the rung the trial just completed (its curve holds
    /// only the steps up to that rung, so its best so far is its value there).
    pub fn complete_rung(&mut self) {
        self.rung_results.resize(self.rung, None);
        self.rung_results.push(self.best);
    }
}

/// Every trial's record, in order of their ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    pub trials: Vec<TrialRecord>,
}

impl Journal {
    /// Reads `DIR/trials.jsonl`; a missing file is an empty journal. A line cut short by a crash cannot
    /// occur (the file is replaced whole), so any bad line is an error naming it.
    pub fn load(dir: &Path) -> Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let text = match lushan_fs::read_to_string_regular(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
            Err(source) => return Err(SweepError::Io { path, source }),
        };
        let mut trials = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: TrialRecord = serde_json::from_str(line).map_err(|e| SweepError::Journal {
                path: path.clone(),
                line: i + 1,
                message: format!("not a trial record: {e}"),
            })?;
            if record.id != trials.len() {
                return Err(SweepError::Journal {
                    path: path.clone(),
                    line: i + 1,
                    message: format!("trial {} where trial {} was expected", record.id, trials.len()),
                });
            }
            trials.push(record);
        }
        Ok(Journal { trials })
    }

    /// Writes `trials.jsonl` and `trials.csv` atomically.
    pub fn save(&self, dir: &Path, metric: Metric) -> Result<()> {
        let mut jsonl = String::new();
        for trial in &self.trials {
            jsonl.push_str(&serde_json::to_string(trial).unwrap_or_default());
            jsonl.push('\n');
        }
        let path = dir.join(JOURNAL_FILE);
        lushan_fs::atomic_write(&path, jsonl.as_bytes()).map_err(|source| SweepError::Io { path, source })?;
        let path = dir.join(CSV_FILE);
        let csv =
            self.csv(metric).map_err(|e| SweepError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        lushan_fs::atomic_write(&path, &csv).map_err(|source| SweepError::Io { path, source })
    }

    /// The table: one row per trial, one column per swept setting.
    fn csv(&self, metric: Metric) -> std::result::Result<Vec<u8>, csv::Error> {
        let names: std::collections::BTreeSet<&String> = self.trials.iter().flat_map(|t| t.settings.keys()).collect();
        let mut writer = csv::Writer::from_writer(Vec::new());
        let best = format!("best_{}", metric.name());
        let mut header = vec!["trial", "status", &best, "best_step", "steps", "seconds", "rung"];
        header.extend(names.iter().map(|n| n.as_str()));
        header.push("reason");
        writer.write_record(&header)?;
        for t in &self.trials {
            let mut row = vec![
                t.id.to_string(),
                t.status.name().to_owned(),
                t.best.map(|b| format!("{b:.6}")).unwrap_or_default(),
                t.best_step.map(|s| s.to_string()).unwrap_or_default(),
                t.steps.to_string(),
                format!("{:.2}", t.seconds),
                t.rung.to_string(),
            ];
            row.extend(names.iter().map(|n| t.settings.get(*n).map(plain).unwrap_or_default()));
            row.push(t.reason.clone());
            writer.write_record(&row)?;
        }
        writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))
    }
}

/// A setting's value as plain text (a string without its quotes).
pub fn plain(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A trial's validation curve of the sweep's metric: (step, value), by step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve {
    pub points: Vec<(u64, f64)>,
}

impl Curve {
    /// Reads the trial's evaluations from its `metrics.jsonl`; a resumed run's evaluations replace those
    /// of the same step written before the interruption. Also returns the last step trained.
    pub fn read(trial_dir: &Path, metric: Metric) -> Result<(Curve, u64)> {
        let mut points = BTreeMap::new();
        let mut last = 0;
        for line in read_metrics(trial_dir)? {
            match line {
                MetricsLine::Step { step, .. } => last = last.max(step),
                MetricsLine::Eval { step, val_loss, val_accuracy, .. } => {
                    last = last.max(step);
                    let value = match metric {
                        Metric::ValLoss => Some(val_loss),
                        Metric::ValAccuracy => val_accuracy,
                    };
                    if let Some(value) = value.filter(|v| v.is_finite()) {
                        points.insert(step, f64::from(value));
                    }
                }
                MetricsLine::Saved { .. } => {}
            }
        }
        Ok((Curve { points: points.into_iter().collect() }, last))
    }

    /// The best value at or before `step`.
    pub fn best_until(&self, step: u64, direction: Direction) -> Option<f64> {
        self.points.iter().filter(|(s, _)| *s <= step).map(|&(_, v)| v).min_by(|a, b| direction.compare(*a, *b))
    }

    /// The best point (the earliest of equal ones).
    pub fn best(&self, direction: Direction) -> Option<(u64, f64)> {
        self.points.iter().copied().min_by(|a, b| direction.compare(a.1, b.1).then(a.0.cmp(&b.0)))
    }

    pub fn last_step(&self) -> Option<u64> {
        self.points.last().map(|&(s, _)| s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let settings = BTreeMap::from([
            ("learning_rate".to_owned(), toml::Value::Float(0.001)),
            ("batch_size".to_owned(), toml::Value::Integer(8)),
            ("position_encoding".to_owned(), toml::Value::String("sinusoidal".into())),
        ]);
        let mut first = TrialRecord::new(0, settings.clone(), 100);
        first.status = Status::Pruned;
        first.reason = "median rule".into();
        first.best = Some(2.5);
        let journal = Journal { trials: vec![first, TrialRecord::new(1, settings, 100)] };
        journal.save(dir.path(), Metric::ValLoss).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), journal);
        let csv = std::fs::read_to_string(dir.path().join(CSV_FILE)).unwrap();
        assert!(csv.starts_with("trial,status,best_val_loss,"), "{csv}");
        assert!(csv.contains("0,pruned,2.500000,,0,0.00,0,8,0.001,sinusoidal,median rule"), "{csv}");
        std::fs::write(dir.path().join(JOURNAL_FILE), "{\"id\": 0}\n").unwrap();
        let msg = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("trials.jsonl:1"), "{msg}");
        assert!(Journal::load(&dir.path().join("none")).unwrap().trials.is_empty());
    }

    #[test]
    fn curves_keep_the_resumed_evaluations_and_find_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"kind":"eval","step":0,"train_loss":4.0,"val_loss":4.1,"improved":true,"saved_model":false}"#,
            r#"{"kind":"step","step":10,"loss":3.0,"lr":0.001,"grad_norm":1.0,"ms":1.0,"tokens_per_second":1.0}"#,
            r#"{"kind":"eval","step":10,"train_loss":3.0,"val_loss":3.5,"improved":true,"saved_model":true}"#,
            r#"{"kind":"step","step":15,"loss":3.0,"lr":0.001,"grad_norm":1.0,"ms":1.0,"tokens_per_second":1.0}"#,
            r#"{"kind":"eval","step":10,"train_loss":3.0,"val_loss":3.4,"improved":true,"saved_model":true}"#,
            r#"{"kind":"eval","step":20,"train_loss":3.0,"val_loss":3.6,"improved":false,"saved_model":false}"#,
        ];
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
        let (curve, last) = Curve::read(dir.path(), Metric::ValLoss).unwrap();
        assert_eq!(curve.points, vec![(0, 4.1f32 as f64), (10, 3.4f32 as f64), (20, 3.6f32 as f64)]);
        assert_eq!(last, 20);
        assert_eq!(curve.best(Direction::Minimize), Some((10, 3.4f32 as f64)));
        assert_eq!(curve.best_until(5, Direction::Minimize), Some(4.1f32 as f64));
        assert_eq!(curve.best_until(20, Direction::Maximize), Some(4.1f32 as f64));
        let (accuracy, _) = Curve::read(dir.path(), Metric::ValAccuracy).unwrap();
        assert!(accuracy.points.is_empty());
    }
}
