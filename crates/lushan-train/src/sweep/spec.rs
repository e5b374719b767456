//! A sweep's settings: the sweep file (TOML) and the command's flags, resolved and checked into one
//! [`SweepSpec`] that is saved in the sweep's directory (`sweep.json`) and compared on `--resume`.
//!
//! ```toml
//! method = "halving"            # grid | random | halving
//! seed = 0
//! preset = "shakespeare-char"   # the base training config: a preset,
//! train_config = "base.toml"    # … a `lushan train --config` file (relative to this file),
//! [train]                       # … and settings over both
//! max_iters = 2000
//! [space]
//! learning_rate = { log_uniform = [3e-4, 1e-2] }
//! batch_size = [8, 12, 16]
//! [budget]                      # trials, total_steps, wall_time ("15m", "1h", seconds)
//! total_steps = 12000
//! [halving]                     # schedule (async = ASHA, or sync), eta (keep the best 1/eta at each
//!                               # rung), min_steps (the first rung)
//! [median]                      # the median stopping rule: enabled, grace_steps, min_trials
//! ```

use super::method::{self, Method, Metric, Schedule};
use super::space::{self, Kind, Space};
use super::{Result, SweepError};
use crate::config::{Preset, TrainConfig, TrainOverrides};
use crate::tasks::Task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;

/// The sweep file's schema.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    method: Option<Method>,
    seed: Option<u64>,
    metric: Option<Metric>,
    preset: Option<Preset>,
    train_config: Option<PathBuf>,
    #[serde(default)]
    train: toml::Table,
    #[serde(default)]
    space: toml::Table,
    #[serde(default)]
    budget: BudgetFile,
    #[serde(default)]
    halving: HalvingFile,
    #[serde(default)]
    median: MedianFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    trials: Option<u64>,
    total_steps: Option<u64>,
    wall_time: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HalvingFile {
    schedule: Option<Schedule>,
    eta: Option<u64>,
    min_steps: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MedianFile {
    enabled: Option<bool>,
    grace_steps: Option<u64>,
    min_trials: Option<usize>,
}

/// What the command line adds to (or puts over) the sweep file.
#[derive(Debug, Default, Clone)]
pub struct SweepFlags {
    pub method: Option<Method>,
    pub seed: Option<u64>,
    pub metric: Option<Metric>,
    pub preset: Option<Preset>,
    pub train_config: Option<PathBuf>,
    /// `NAME=VALUE` training settings over the file's `[train]`.
    pub set: Vec<String>,
    /// `NAME=SPACE` search spaces (the file's syntax, e.g. `learning_rate={ log_uniform = [1e-4, 1e-2] }`).
    pub space: Vec<String>,
    pub trials: Option<u64>,
    pub total_steps: Option<u64>,
    pub wall_time: Option<String>,
    pub schedule: Option<Schedule>,
    pub eta: Option<u64>,
    pub min_steps: Option<u64>,
}

/// How much a sweep may spend; it stops starting trials at the first limit reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub trials: Option<u64>,
    pub total_steps: Option<u64>,
    /// No trial (or rung) starts after this many seconds of this invocation.
    pub wall_seconds: Option<f64>,
}

/// Successive halving: rungs at `max_iters / eta^k` steps down to `min_steps`; the best `1/eta` of a rung
/// go on to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halving {
    /// Asynchronous (ASHA) or synchronous promotion; a `sweep.json` from before the choice existed is
    /// synchronous.
    #[serde(default = "Schedule::of_older_sweeps")]
    pub schedule: Schedule,
    pub eta: u64,
    pub min_steps: u64,
    /// The steps of each rung, the last being the full `max_iters`.
    pub rungs: Vec<u64>,
    /// Trials started at the first rung: planned from the budget when synchronous; the trials budget (if
    /// any) when asynchronous, which starts trials while the step and time budgets allow.
    pub trials: Option<u64>,
}

/// The median stopping rule (Google Vizier's): at an evaluation at step s ≥ `grace_steps`, a trial whose
/// best value so far is worse than the median of the other trials' best values up to s is stopped, once at
/// least `min_trials` others have reached s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Median {
    pub enabled: bool,
    pub grace_steps: u64,
    pub min_trials: usize,
}

/// A resolved, checked sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub method: Method,
    pub seed: u64,
    pub metric: Metric,
    pub preset: Preset,
    /// Training settings over the preset (from `train_config`, `[train]` and `--set`).
    pub train: toml::Table,
    pub space: BTreeMap<String, Space>,
    pub budget: Budget,
    pub halving: Option<Halving>,
    pub median: Median,
    /// The base configuration the trials start from.
    pub base: TrainConfig,
    /// The grid's size (for `grid`).
    pub grid_points: Option<u64>,
}

impl SweepSpec {
    /// Reads the sweep file (if any) and puts the flags over it.
    pub fn load(file: Option<&Path>, flags: &SweepFlags) -> Result<SweepSpec> {
        let (parsed, file_dir) = match file {
            Some(path) => {
                let text = lushan_fs::read_to_string_regular(path)
                    .map_err(|source| SweepError::Io { path: path.to_path_buf(), source })?;
                let parsed: SweepFile = toml::from_str(&text)
                    .map_err(|e| SweepError::File { path: path.to_path_buf(), message: e.to_string() })?;
                (parsed, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (SweepFile::default(), PathBuf::new()),
        };
        let kinds = space::setting_kinds();
        let preset = flags.preset.or(parsed.preset).unwrap_or_default();

        // The base settings: the train config file, then [train], then --set.
        let mut train = toml::Table::new();
        let train_config = match (&flags.train_config, &parsed.train_config) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(in_file)) => Some(file_dir.join(in_file)),
            (None, None) => None,
        };
        if let Some(path) = &train_config {
            let text = lushan_fs::read_to_string_regular(path)
                .map_err(|source| SweepError::Io { path: path.clone(), source })?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| SweepError::File { path: path.clone(), message: e.to_string() })?;
            check_names(&table, &kinds, &path.display().to_string())?;
            train.extend(table);
        }
        check_names(&parsed.train, &kinds, "[train]")?;
        train.extend(parsed.train);
        for item in &flags.set {
            let (name, value) = split_flag("--set", item)?;
            let value = parse_value(value);
            check_names(&toml::Table::from_iter([(name.to_owned(), value.clone())]), &kinds, "--set")?;
            train.insert(name.to_owned(), value);
        }
        let base = resolve(preset, &train, "the base training settings")?;

        let method = flags.method.or(parsed.method).unwrap_or(Method::Random);
        let metric = flags.metric.or(parsed.metric).unwrap_or(match base.task {
            Task::Classify => Metric::ValAccuracy,
            _ => Metric::ValLoss,
        });

        // The search spaces.
        let mut spaces = BTreeMap::new();
        let mut raw: Vec<(String, Value, String)> =
            parsed.space.into_iter().map(|(n, v)| (n, v, "[space]".to_owned())).collect();
        for item in &flags.space {
            let (name, text) = split_flag("--space", item)?;
            let table: toml::Table = toml::from_str(&format!("v = {text}")).map_err(|e| SweepError::Space {
                name: name.to_owned(),
                reason: format!("--space {item}: {}", e.message()),
            })?;
            let value = table.get("v").cloned().unwrap_or(Value::Array(Vec::new()));
            raw.push((name.to_owned(), value, "--space".to_owned()));
        }
        for (name, value, section) in raw {
            let Some(&kind) = kinds.get(&name) else {
                return Err(unknown(&section, &name, &kinds));
            };
            let owned_by = match name.as_str() {
                "out_dir" => Some("the sweep gives every trial its own directory under --out"),
                "max_iters" if method == Method::Halving => {
                    Some("halving sets each trial's steps (its rungs); set [train] max_iters for the last rung")
                }
                _ => None,
            };
            if let Some(reason) = owned_by {
                return Err(SweepError::Space { name, reason: reason.to_owned() });
            }
            let space = Space::parse(&name, kind, &value)?;
            // Every list value and both ends of a range must make a valid training config with the base.
            for extreme in space.extremes(kind) {
                let mut settings = train.clone();
                settings.insert(name.clone(), extreme.clone());
                resolve(preset, &settings, &format!("value {extreme}"))
                    .map_err(|e| SweepError::Space { name: name.clone(), reason: e.to_string() })?;
            }
            spaces.insert(name, space);
        }
        if spaces.is_empty() {
            return Err(SweepError::Invalid {
                name: "[space]".into(),
                reason: "the search space is empty: name at least one setting to vary, e.g. `learning_rate = { \
                         log_uniform = [1e-4, 1e-2] }` in [space] or --space 'learning_rate=[1e-3, 3e-3]'"
                    .into(),
            });
        }

        let wall_seconds = match (&flags.wall_time, &parsed.budget.wall_time) {
            (Some(text), _) => Some(parse_duration(&Value::String(text.clone()))?),
            (None, Some(value)) => Some(parse_duration(value)?),
            (None, None) => None,
        };
        let budget = Budget {
            trials: flags.trials.or(parsed.budget.trials),
            total_steps: flags.total_steps.or(parsed.budget.total_steps),
            wall_seconds,
        };
        let median = Median {
            enabled: parsed.median.enabled.unwrap_or(method == Method::Random),
            grace_steps: parsed.median.grace_steps.unwrap_or(base.max_iters / 4),
            min_trials: parsed.median.min_trials.unwrap_or(3).max(1),
        };
        let mut spec = SweepSpec {
            method,
            seed: flags.seed.or(parsed.seed).unwrap_or(0),
            metric,
            preset,
            train,
            space: spaces,
            budget,
            halving: None,
            median,
            base,
            grid_points: None,
        };
        match method {
            Method::Grid => spec.grid_points = Some(space::grid(&spec.space, &kinds)?.len() as u64),
            Method::Halving => {
                let schedule = flags.schedule.or(parsed.halving.schedule).unwrap_or(Schedule::Async);
                let eta = flags.eta.or(parsed.halving.eta).unwrap_or(3);
                let min_steps = flags.min_steps.or(parsed.halving.min_steps);
                spec.halving = Some(method::plan_halving(&spec, schedule, eta, min_steps)?);
            }
            Method::Random => {}
        }
        method::check_budget(&spec)?;
        Ok(spec)
    }

    /// Trial settings made into a complete training config (the base with `settings` over it).
    pub fn trial_config(&self, settings: &BTreeMap<String, Value>) -> Result<TrainConfig> {
        let mut table = self.train.clone();
        table.extend(settings.iter().map(|(k, v)| (k.clone(), v.clone())));
        resolve(self.preset, &table, "the trial's settings")
    }

    /// The names that differ between `self` and `other`, with both values (for refusing a `--resume` with
    /// another configuration).
    pub fn differences(&self, other: &SweepSpec) -> Vec<String> {
        let flat = |spec: &SweepSpec| {
            let mut out = BTreeMap::new();
            if let Ok(value) = serde_json::to_value(spec) {
                flatten("", &value, &mut out);
            }
            out
        };
        let (a, b) = (flat(self), flat(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            // `base` repeats `train` resolved: naming the setting once is enough.
            .filter(|k| !k.starts_with("base.") && a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not set)".into());
                format!("`{k}` was {} and is now {}", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// The preset with `settings` over it, resolved and validated as `lushan train --config` would.
fn resolve(preset: Preset, settings: &toml::Table, what: &str) -> Result<TrainConfig> {
    let overrides: TrainOverrides = settings
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| SweepError::Invalid { name: what.to_owned(), reason: e.message().to_owned() })?;
    Ok(TrainConfig::resolve(preset, None, &overrides)?)
}

/// Refuses a name `lushan train` does not know, suggesting the right one for the usual aliases.
fn check_names(table: &toml::Table, kinds: &BTreeMap<String, Kind>, section: &str) -> Result<()> {
    match table.keys().find(|name| !kinds.contains_key(*name)) {
        Some(name) => Err(unknown(section, name, kinds)),
        None => Ok(()),
    }
}

fn unknown(section: &str, name: &str, kinds: &BTreeMap<String, Kind>) -> SweepError {
    let alias = match name {
        "lr" => Some("learning_rate"),
        "iters" | "steps" => Some("max_iters"),
        "out" => Some("out_dir"),
        _ => None,
    };
    let close = alias.map(str::to_owned).or_else(|| {
        kinds.keys().find(|known| known.contains(name) || (name.len() > 3 && name.contains(known.as_str()))).cloned()
    });
    let hint = match close {
        Some(close) => format!("did you mean `{close}`? (the settings are `lushan train`'s flags with underscores)"),
        None => format!(
            "the settings are `lushan train`'s flags with underscores: {}",
            kinds.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    SweepError::UnknownSetting { section: section.to_owned(), name: name.to_owned(), hint }
}

fn split_flag<'a>(flag: &str, item: &'a str) -> Result<(&'a str, &'a str)> {
    match item.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value.trim())),
        _ => Err(SweepError::Invalid {
            name: flag.to_owned(),
            reason: format!("expected NAME=VALUE (a setting name with underscores), got `{item}`"),
        }),
    }
}

/// A flag's value as TOML (`3`, `1e-3`, `true`, `"x"`), or else as a plain string (`sinusoidal`).
fn parse_value(text: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

/// A wall-time budget: seconds as a number, or text like `90s`, `15m`, `1h30m`.
pub fn parse_duration(value: &Value) -> Result<f64> {
    let bad = |got: String| SweepError::Invalid {
        name: "wall_time".into(),
        reason: format!("expected seconds or a duration like 90s, 15m, 1h30m; got {got}"),
    };
    let seconds = match value {
        Value::Integer(_) | Value::Float(_) => space::number(value).unwrap_or(0.0),
        Value::String(text) => {
            let mut total = 0.0;
            let mut digits = String::new();
            for c in text.trim().chars() {
                match c {
                    '0'..='9' | '.' => digits.push(c),
                    'h' | 'm' | 's' => {
                        let n: f64 = digits.parse().map_err(|_| bad(format!("`{text}`")))?;
                        total += n * match c {
                            'h' => 3600.0,
                            'm' => 60.0,
                            _ => 1.0,
                        };
                        digits.clear();
                    }
                    _ => return Err(bad(format!("`{text}`"))),
                }
            }
            if !digits.is_empty() {
                total += digits.parse::<f64>().map_err(|_| bad(format!("`{text}`")))?;
            }
            total
        }
        other => return Err(bad(other.to_string())),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(SweepError::BudgetFitsNoTrial { reason: format!("a wall time of {seconds} s leaves no time") });
    }
    Ok(seconds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SweepSpec> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        std::fs::write(&path, text).unwrap();
        SweepSpec::load(Some(&path), &SweepFlags::default())
    }

    const BASE: &str = "[train]\nmax_iters = 90\n[budget]\ntrials = 4\n";

    #[test]
    fn a_file_resolves_with_the_base_settings_under_the_spaces() {
        let s = spec(&format!("method = \"random\"\nseed = 3\n{BASE}[space]\nlearning_rate = [1e-3, 2e-3]\n")).unwrap();
        assert_eq!((s.method, s.seed, s.base.max_iters), (Method::Random, 3, 90));
        assert!(s.median.enabled);
        let point = BTreeMap::from([("learning_rate".to_owned(), Value::Float(2e-3))]);
        let config = s.trial_config(&point).unwrap();
        assert_eq!((config.learning_rate, config.max_iters, config.lr_decay_iters), (2e-3, 90, 90));
    }

    #[test]
    fn bad_input_names_the_setting() {
        let cases = [
            (format!("{BASE}[space]\nlr = [1e-3]\n"), vec!["lr", "learning_rate"]),
            (format!("{BASE}[space]\nlearnin_rate = [1e-3]\n"), vec!["learnin_rate"]),
            (BASE.to_owned(), vec!["empty"]),
            (format!("{BASE}[space]\nlearning_rate = {{ log_uniform = [0.0, 0.1] }}\n"), vec!["learning_rate", "0"]),
            (format!("{BASE}[space]\nn_head = [3]\n"), vec!["n_head", "--n-embd"]),
            (
                "[train]\nmax_iters = 90\n[budget]\ntotal_steps = 50\n[space]\nlearning_rate = [1e-3]\n".to_owned(),
                vec!["budget fits no trial", "90"],
            ),
            (
                "method = \"halving\"\n[train]\nmax_iters = 90\n[budget]\ntrials = 3\n[space]\nmax_iters = [10]\n"
                    .to_owned(),
                vec!["max_iters", "halving"],
            ),
            ("[train]\nbatch = 3\n[budget]\ntrials = 2\n[space]\nn_layer = [1]\n".to_owned(), vec!["batch", "[train]"]),
        ];
        for (text, needles) in cases {
            let msg = spec(&text).unwrap_err().to_string();
            for needle in needles {
                assert!(msg.contains(needle), "{text}\n→ {msg}\n(expected {needle:?})");
            }
        }
    }

    #[test]
    fn differences_name_the_changed_settings() {
        let a = spec(&format!("{BASE}[space]\nlearning_rate = [1e-3, 2e-3]\n")).unwrap();
        let b = spec(&format!("{BASE}[space]\nlearning_rate = [1e-3, 3e-3]\n")).unwrap();
        assert!(a.differences(&a.clone()).is_empty());
        let diff = a.differences(&b).join("; ");
        assert!(diff.contains("space.learning_rate") && diff.contains("0.003"), "{diff}");
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration(&Value::String("1h30m".into())).unwrap(), 5400.0);
        assert_eq!(parse_duration(&Value::String("90s".into())).unwrap(), 90.0);
        assert_eq!(parse_duration(&Value::Integer(15)).unwrap(), 15.0);
        assert!(parse_duration(&Value::String("soon".into())).is_err());
        assert!(parse_duration(&Value::Integer(0)).unwrap_err().to_string().contains("budget fits no trial"));
    }
}
