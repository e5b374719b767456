//! Search spaces: what values a training setting may take in a sweep, checked against the settings
//! `lushan train` knows, sampled with a seeded generator, and enumerated for a grid.
//!
//! In the sweep file a space is written as one of
//! `name = [a, b, c]` or `name = { values = [a, b, c] }` (a list), `name = { uniform = [lo, hi] }`,
//! `name = { log_uniform = [lo, hi] }` (uniform in ln x, Optuna's `log=True`) or `name = { int = [lo, hi] }`
//! (every integer from lo to hi inclusive).

use super::{Result, SweepError};
use crate::config::{Preset, TrainConfig};
use lushan_kernels::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Value;

/// The most points a grid may have (the product of its lists' lengths).
pub const MAX_GRID_POINTS: u64 = 100_000;

/// The type of a training setting's value, read from how the resolved config writes it as TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Float,
    Text,
    Bool,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::Float => "a number",
            Kind::Text => "a string",
            Kind::Bool => "true or false",
        }
    }
}

/// Every setting name `lushan train --config` accepts, with its value type.
pub fn setting_kinds() -> BTreeMap<String, Kind> {
    let table = toml::Table::try_from(TrainConfig::preset(Preset::default())).unwrap_or_default();
    table
        .into_iter()
        .map(|(name, value)| {
            let kind = match value {
                Value::Integer(_) => Kind::Integer,
                Value::Float(_) => Kind::Float,
                Value::Boolean(_) => Kind::Bool,
                _ => Kind::Text,
            };
            (name, kind)
        })
        .collect()
}

/// The values one setting may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    /// One of these values (a categorical choice; a grid takes each).
    Values(Vec<Value>),
    /// Uniform in `[lo, hi]`.
    Uniform([f64; 2]),
    /// Uniform in `[ln lo, ln hi]`, so each factor of ten gets the same share of trials.
    LogUniform([f64; 2]),
    /// Every integer in `lo..=hi`.
    Int([i64; 2]),
}

impl Space {
    /// Reads and checks the space of setting `name` (whose values are `kind`) from the sweep file.
    pub fn parse(name: &str, kind: Kind, value: &Value) -> Result<Space> {
        let bad = |reason: String| Err(SweepError::Space { name: name.to_owned(), reason });
        let space = match value {
            Value::Array(values) => Space::Values(values.clone()),
            Value::Table(table) if table.len() == 1 => {
                let Some((key, arg)) = table.iter().next() else { return bad("an empty table".into()) };
                let pair = |arg: &Value| -> Option<[f64; 2]> {
                    match arg.as_array()?.as_slice() {
                        [lo, hi] => Some([number(lo)?, number(hi)?]),
                        _ => None,
                    }
                };
                match key.as_str() {
                    "values" => match arg.as_array() {
                        Some(values) => Space::Values(values.clone()),
                        None => return bad(format!("`values` must be a list, got {arg}")),
                    },
                    "uniform" | "log_uniform" => match pair(arg) {
                        Some(range) if key == "uniform" => Space::Uniform(range),
                        Some(range) => Space::LogUniform(range),
                        None => return bad(format!("`{key}` must be two numbers [lo, hi], got {arg}")),
                    },
                    "int" => match arg.as_array().map(|a| a.as_slice()) {
                        Some([Value::Integer(lo), Value::Integer(hi)]) => Space::Int([*lo, *hi]),
                        _ => return bad(format!("`int` must be two integers [lo, hi], got {arg}")),
                    },
                    other => {
                        return bad(format!(
                            "unknown kind of space `{other}`: expected `values`, `uniform`, `log_uniform` or `int`"
                        ));
                    }
                }
            }
            other => {
                return bad(format!(
                    "expected a list [a, b, …] or one of {{ values = […] }}, {{ uniform = [lo, hi] }}, \
                     {{ log_uniform = [lo, hi] }}, {{ int = [lo, hi] }}; got {other}"
                ));
            }
        };
        space.check(name, kind)?;
        Ok(space)
    }

    /// Refuses an empty space, a reversed or degenerate range, a log range reaching 0, and values of the
    /// wrong type for the setting.
    fn check(&self, name: &str, kind: Kind) -> Result<()> {
        let bad = |reason: String| Err(SweepError::Space { name: name.to_owned(), reason });
        let continuous = |what: &str| {
            if matches!(kind, Kind::Text | Kind::Bool) {
                return bad(format!("{what} needs a numeric setting, but `{name}` takes {}", kind.describe()));
            }
            Ok(())
        };
        match self {
            Space::Values(values) => {
                if values.is_empty() {
                    return bad("the list is empty: a space needs at least one value".into());
                }
                for value in values {
                    if convert(value, kind).is_none() {
                        return bad(format!("the value {value} is not {}", kind.describe()));
                    }
                }
            }
            Space::Uniform([lo, hi]) | Space::LogUniform([lo, hi]) => {
                let what = if matches!(self, Space::Uniform(_)) { "uniform" } else { "log_uniform" };
                continuous(what)?;
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return bad(format!("the {what} range [{lo}, {hi}] is empty: expected finite lo < hi"));
                }
                if what == "log_uniform" && *lo <= 0.0 {
                    return bad(format!(
                        "the log_uniform range [{lo}, {hi}] includes 0 or negative numbers, whose logarithm does \
                         not exist: use a lower bound above 0 (e.g. 1e-5), or `uniform`"
                    ));
                }
            }
            Space::Int([lo, hi]) => {
                continuous("int")?;
                if lo >= hi {
                    return bad(format!("the int range [{lo}, {hi}] is empty: expected lo < hi"));
                }
            }
        }
        Ok(())
    }

    /// Whether the space is spread evenly in the logarithm (its pictures then use a log axis).
    pub fn is_log(&self) -> bool {
        matches!(self, Space::LogUniform(_))
    }

    /// A random value of the space, of type `kind`.
    pub fn sample(&self, kind: Kind, rng: &mut Rng) -> Value {
        let float = |x: f64| match kind {
            Kind::Integer => Value::Integer(x.round() as i64),
            _ => Value::Float(x),
        };
        match self {
            Space::Values(values) => {
                let i = rng.below(values.len() as u64) as usize;
                convert(&values[i], kind).unwrap_or_else(|| values[i].clone())
            }
            Space::Uniform([lo, hi]) => float(lo + rng.next_f64() * (hi - lo)),
            Space::LogUniform([lo, hi]) => float((lo.ln() + rng.next_f64() * (hi.ln() - lo.ln())).exp()),
            Space::Int([lo, hi]) => {
                let span = hi.abs_diff(*lo).saturating_add(1);
                let value = lo.saturating_add_unsigned(rng.below(span));
                convert(&Value::Integer(value), kind).unwrap_or(Value::Integer(value))
            }
        }
    }

    /// The values a grid takes: a list's values or an int range's integers; `None` for a continuous range.
    pub fn grid_values(&self, kind: Kind) -> Option<Vec<Value>> {
        match self {
            Space::Values(values) => {
                Some(values.iter().map(|v| convert(v, kind).unwrap_or_else(|| v.clone())).collect())
            }
            Space::Int([lo, hi]) if hi.abs_diff(*lo) < MAX_GRID_POINTS => {
                Some((*lo..=*hi).map(|v| convert(&Value::Integer(v), kind).unwrap_or(Value::Integer(v))).collect())
            }
            _ => None,
        }
    }

    /// The values a user may check the setting with: a list's values, a range's two ends.
    pub fn extremes(&self, kind: Kind) -> Vec<Value> {
        let float = |x: f64| match kind {
            Kind::Integer => Value::Integer(x.round() as i64),
            _ => Value::Float(x),
        };
        match self {
            Space::Values(values) => values.iter().map(|v| convert(v, kind).unwrap_or_else(|| v.clone())).collect(),
            Space::Uniform([lo, hi]) | Space::LogUniform([lo, hi]) => vec![float(*lo), float(*hi)],
            Space::Int([lo, hi]) => {
                [*lo, *hi].iter().map(|&v| convert(&Value::Integer(v), kind).unwrap_or(Value::Integer(v))).collect()
            }
        }
    }

    /// How the space reads in the report (`log_uniform [0.0001, 0.01]`).
    pub fn describe(&self) -> String {
        match self {
            Space::Values(values) => {
                format!("one of {}", values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
            }
            Space::Uniform([lo, hi]) => format!("uniform [{lo}, {hi}]"),
            Space::LogUniform([lo, hi]) => format!("log-uniform [{lo}, {hi}]"),
            Space::Int([lo, hi]) => format!("integers {lo}..={hi}"),
        }
    }
}

/// Every point of the grid over `spaces` (names in order, the last varying fastest); refuses a continuous
/// range and a grid larger than [`MAX_GRID_POINTS`].
pub fn grid(spaces: &BTreeMap<String, Space>, kinds: &BTreeMap<String, Kind>) -> Result<Vec<BTreeMap<String, Value>>> {
    let mut axes = Vec::new();
    let mut count: u64 = 1;
    for (name, space) in spaces {
        let kind = kinds.get(name).copied().unwrap_or(Kind::Text);
        let Some(values) = space.grid_values(kind) else {
            return Err(SweepError::Space {
                name: name.clone(),
                reason: format!(
                    "`grid` takes each value of a list or int range, but this space is {}: give a list of \
                     values, or use method `random` or `halving`",
                    space.describe()
                ),
            });
        };
        count = count.checked_mul(values.len() as u64).filter(|&c| c <= MAX_GRID_POINTS).ok_or_else(|| {
            SweepError::Space {
                name: name.clone(),
                reason: format!("the grid would have more than {MAX_GRID_POINTS} points; use `random` instead"),
            }
        })?;
        axes.push((name, values));
    }
    let mut points = vec![BTreeMap::new()];
    for (name, values) in axes {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |value| {
                    let mut point = point.clone();
                    point.insert(name.clone(), value.clone());
                    point
                })
            })
            .collect();
    }
    Ok(points)
}

/// Trial `index`'s settings: each space sampled with a generator derived from the sweep's seed and the
/// index alone, so a trial's settings do not depend on how many trials ran before it (or in parallel).
pub fn sample_point(
    spaces: &BTreeMap<String, Space>,
    kinds: &BTreeMap<String, Kind>,
    seed: u64,
    index: u64,
) -> BTreeMap<String, Value> {
    let mut rng = Rng::derive(seed, index);
    spaces
        .iter()
        .map(|(name, space)| (name.clone(), space.sample(kinds.get(name).copied().unwrap_or(Kind::Text), &mut rng)))
        .collect()
}

/// A TOML number as f64.
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// `value` as a value of `kind` (an integer is also a number); `None` when it is not one.
fn convert(value: &Value, kind: Kind) -> Option<Value> {
    match (kind, value) {
        (Kind::Integer, Value::Integer(_))
        | (Kind::Float, Value::Float(_))
        | (Kind::Text, Value::String(_))
        | (Kind::Bool, Value::Boolean(_)) => Some(value.clone()),
        (Kind::Float, Value::Integer(i)) => Some(Value::Float(*i as f64)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Space> {
        let table: toml::Table = toml::from_str(&format!("{name} = {text}")).unwrap();
        let kinds = setting_kinds();
        Space::parse(name, kinds[name], &table[name])
    }

    #[test]
    fn the_known_settings_and_their_types_come_from_the_train_config() {
        let kinds = setting_kinds();
        assert_eq!(kinds["learning_rate"], Kind::Float);
        assert_eq!(kinds["batch_size"], Kind::Integer);
        assert_eq!(kinds["decay_lr"], Kind::Bool);
        assert_eq!(kinds["position_encoding"], Kind::Text);
        assert!(!kinds.contains_key("lr"));
    }

    #[test]
    fn log_uniform_samples_stay_in_range_and_spread_over_the_decades() {
        let space = parse("learning_rate", "{ log_uniform = [1e-4, 1e-2] }").unwrap();
        assert!(space.is_log());
        let mut rng = Rng::new(7);
        let samples: Vec<f64> = (0..2000).map(|_| number(&space.sample(Kind::Float, &mut rng)).unwrap()).collect();
        assert!(samples.iter().all(|&x| (1e-4..=1e-2).contains(&x)), "{samples:?}");
        // Uniform in ln x: about half the samples fall below the geometric middle 1e-3.
        let below = samples.iter().filter(|&&x| x < 1e-3).count();
        assert!((900..1100).contains(&below), "{below} of 2000 below 1e-3");
    }

    #[test]
    fn integer_settings_get_integers_and_floats_accept_integers() {
        let space = parse("batch_size", "{ log_uniform = [4, 64] }").unwrap();
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let v = space.sample(Kind::Integer, &mut rng);
            assert!(matches!(v, Value::Integer(4..=64)), "{v}");
        }
        let space = parse("n_layer", "{ int = [1, 3] }").unwrap();
        assert_eq!(
            space.grid_values(Kind::Integer).unwrap(),
            vec![Value::Integer(1), Value::Integer(2), Value::Integer(3)]
        );
        let space = parse("dropout", "[0, 0.1]").unwrap();
        assert_eq!(space.grid_values(Kind::Float).unwrap(), vec![Value::Float(0.0), Value::Float(0.1)]);
    }

    #[test]
    fn grid_enumerates_every_combination_last_name_fastest() {
        let kinds = setting_kinds();
        let mut spaces = BTreeMap::new();
        spaces.insert("batch_size".to_owned(), parse("batch_size", "[8, 16]").unwrap());
        spaces.insert("learning_rate".to_owned(), parse("learning_rate", "[1e-3, 3e-3, 1e-2]").unwrap());
        let points = grid(&spaces, &kinds).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points[0]["batch_size"], Value::Integer(8));
        assert_eq!(points[1]["learning_rate"], Value::Float(3e-3));
        assert_eq!(points[3]["batch_size"], Value::Integer(16));
        spaces.insert("dropout".to_owned(), parse("dropout", "{ uniform = [0, 0.2] }").unwrap());
        let msg = grid(&spaces, &kinds).unwrap_err().to_string();
        assert!(msg.contains("dropout") && msg.contains("random"), "{msg}");
    }

    #[test]
    fn the_same_seed_gives_the_same_trials_and_another_seed_others() {
        let kinds = setting_kinds();
        let mut spaces = BTreeMap::new();
        spaces.insert("learning_rate".to_owned(), parse("learning_rate", "{ log_uniform = [1e-4, 1e-2] }").unwrap());
        spaces.insert("batch_size".to_owned(), parse("batch_size", "[8, 12, 16]").unwrap());
        let a: Vec<_> = (0..5).map(|i| sample_point(&spaces, &kinds, 42, i)).collect();
        let b: Vec<_> = (0..5).map(|i| sample_point(&spaces, &kinds, 42, i)).collect();
        let c: Vec<_> = (0..5).map(|i| sample_point(&spaces, &kinds, 43, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn bad_spaces_are_refused_naming_the_setting_and_the_problem() {
        let cases = [
            ("learning_rate", "[]", "empty"),
            ("learning_rate", "{ log_uniform = [0, 1e-2] }", "includes 0"),
            ("learning_rate", "{ uniform = [1e-2, 1e-3] }", "lo < hi"),
            ("batch_size", "{ int = [4, 4] }", "empty"),
            ("batch_size", "[8, \"sixteen\"]", "not an integer"),
            ("decay_lr", "{ uniform = [0, 1] }", "numeric"),
            ("learning_rate", "{ normal = [0, 1] }", "unknown kind"),
            ("learning_rate", "3", "expected a list"),
        ];
        for (name, text, needle) in cases {
            let msg = parse(name, text).unwrap_err().to_string();
            assert!(msg.contains(name) && msg.contains(needle), "{name} = {text}: {msg}");
        }
    }
}
