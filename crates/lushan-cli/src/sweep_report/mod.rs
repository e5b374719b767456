//! The sweep's report: `report.html` (one self-contained file: the ranking table and the pictures embedded
//! as base64 PNGs, as the explain report does) and the same pictures as PNG files beside it.

pub mod pictures;

use crate::explain::html::escape;
use anyhow::{Context, Result};
use base64::Engine as _;
use lushan_train::sweep::state::{plain, trial_dir};
use lushan_train::sweep::{Curve, Journal, Method, Space, SweepSpec, TrialRecord};
use pictures::{Axis, TrialCurve};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const REPORT_FILE: &str = "report.html";
pub const CURVES_FILE: &str = "curves.png";
pub const PARALLEL_FILE: &str = "parallel.png";

/// What was written.
pub struct Written {
    pub html: PathBuf,
    pub pictures: usize,
}

/// Trials best first (those with a value), then the rest by id.
pub fn ranking<'a>(spec: &SweepSpec, journal: &'a Journal) -> Vec<&'a TrialRecord> {
    let direction = spec.metric.direction();
    let mut trials: Vec<&TrialRecord> = journal.trials.iter().collect();
    trials.sort_by(|a, b| match (a.best, b.best) {
        (Some(x), Some(y)) => direction.compare(x, y).then(a.id.cmp(&b.id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    trials
}

/// Writes the pictures and `report.html` into `dir`.
pub fn write(dir: &Path, spec: &SweepSpec, journal: &Journal, wall_seconds: f64) -> Result<Written> {
    let ranked = ranking(spec, journal);
    let mut rank_of = vec![None; journal.trials.len()];
    for (rank, t) in ranked.iter().filter(|t| t.best.is_some()).enumerate() {
        rank_of[t.id] = Some(rank);
    }
    let metric_name = spec.metric.name();
    let mut figures: Vec<(String, String, Vec<u8>)> = Vec::new();

    let curves: Vec<TrialCurve> = journal
        .trials
        .iter()
        .filter_map(|t| {
            let (curve, _) = Curve::read(&trial_dir(dir, t.id), spec.metric).unwrap_or_default();
            Some(TrialCurve { id: t.id, rank: rank_of[t.id]?, points: curve.points })
        })
        .collect();
    figures.push((
        CURVES_FILE.into(),
        format!("Every trial's validation {metric_name}; the best trial in orange."),
        pictures::curves(&curves, metric_name)?,
    ));

    let metric: Vec<Option<f64>> = journal.trials.iter().map(|t| t.best).collect();
    let axes: Vec<Axis> = spec.space.iter().map(|(name, space)| axis(name, space, journal)).collect();
    let best = ranked.first().filter(|t| t.best.is_some()).map(|t| t.id);
    for a in &axes {
        let file = format!("param-{}.png", a.name.replace('_', "-"));
        let caption = format!(
            "Best {metric_name} of each trial against {}{}; the best trial in orange.",
            a.name,
            if a.log { " (a log axis: the space is log-uniform)" } else { "" }
        );
        figures.push((file, caption, pictures::metric_vs(a, &metric, best, metric_name)?));
    }
    figures.push((
        PARALLEL_FILE.into(),
        format!("Parallel coordinates: each line a trial through its settings to its best {metric_name}."),
        pictures::parallel(&axes, &metric, &rank_of, metric_name)?,
    ));
    for (file, _, png) in &figures {
        let path = dir.join(file);
        lushan_fs::atomic_write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    }

    let html = html(spec, journal, &ranked, &figures, wall_seconds);
    let path = dir.join(REPORT_FILE);
    lushan_fs::atomic_write(&path, html.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(Written { html: path, pictures: figures.len() })
}

/// A swept setting's values per trial as an axis.
fn axis(name: &str, space: &Space, journal: &Journal) -> Axis {
    let raw: Vec<Option<&toml::Value>> = journal.trials.iter().map(|t| t.settings.get(name)).collect();
    let numeric = raw.iter().flatten().all(|v| lushan_train::sweep::space::number(v).is_some());
    if numeric {
        let values = raw.iter().map(|v| v.and_then(lushan_train::sweep::space::number)).collect();
        return Axis { name: name.to_owned(), values, log: space.is_log(), categories: None };
    }
    let mut categories: Vec<String> = Vec::new();
    if let Space::Values(listed) = space {
        categories.extend(listed.iter().map(plain));
    }
    for v in raw.iter().flatten() {
        if !categories.contains(&plain(v)) {
            categories.push(plain(v));
        }
    }
    let values =
        raw.iter().map(|v| v.and_then(|v| categories.iter().position(|c| *c == plain(v)).map(|i| i as f64))).collect();
    Axis { name: name.to_owned(), values, log: false, categories: Some(categories) }
}

fn html(
    spec: &SweepSpec,
    journal: &Journal,
    ranked: &[&TrialRecord],
    figures: &[(String, String, Vec<u8>)],
    wall_seconds: f64,
) -> String {
    let metric = spec.metric.name();
    let steps: u64 = journal.trials.iter().map(|t| t.steps).sum();
    let trial_seconds: f64 = journal.trials.iter().map(|t| t.seconds).sum();
    let mut out = String::new();
    out.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lushan sweep</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}\
         table{border-collapse:collapse;font-size:14px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;\
         text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}tr.best td{background:#fff1e0}\
         figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}</style></head><body>\n<h1>lushan sweep</h1>\n",
    );
    let method = match (spec.method, &spec.halving) {
        (Method::Halving, Some(h)) => lushan_train::sweep::method::describe_halving(h),
        (Method::Grid, _) => format!("grid of {} points", spec.grid_points.unwrap_or(0)),
        (_, _) if spec.median.enabled => format!(
            "random search (seed {}) with the median stopping rule after {} steps",
            spec.seed, spec.median.grace_steps
        ),
        _ => format!("random search (seed {})", spec.seed),
    };
    let _ = writeln!(
        out,
        "<p>{}. {} trials trained {steps} steps in all; the trials' runs took {trial_seconds:.1} s, this \
         invocation of the sweep {wall_seconds:.1} s. Trials are compared by their best {metric}.</p>",
        escape(&method),
        journal.trials.len()
    );
    out.push_str("<h2>Search space</h2>\n<ul>\n");
    for (name, space) in &spec.space {
        let _ = writeln!(out, "<li><code>{}</code>: {}</li>", escape(name), escape(&space.describe()));
    }
    out.push_str("</ul>\n<h2>Ranking</h2>\n<table><tr><th>rank</th><th>trial</th>");
    for name in spec.space.keys() {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    let _ = writeln!(
        out,
        "<th>best {metric}</th><th>at step</th><th>steps</th><th>seconds</th><th class=\"l\">status</th></tr>"
    );
    for (rank, t) in ranked.iter().enumerate() {
        let class = if rank == 0 && t.best.is_some() { " class=\"best\"" } else { "" };
        let _ = write!(out, "<tr{class}><td>{}</td><td>{}</td>", rank + 1, t.id);
        for name in spec.space.keys() {
            let value = t.settings.get(name).map(plain).unwrap_or_default();
            let _ = write!(out, "<td>{}</td>", escape(&value));
        }
        let status =
            if t.reason.is_empty() { t.status.name().to_owned() } else { format!("{}: {}", t.status.name(), t.reason) };
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td class=\"l\">{}</td></tr>",
            t.best.map(|b| format!("{b:.4}")).unwrap_or_else(|| "–".into()),
            t.best_step.map(|s| s.to_string()).unwrap_or_default(),
            t.steps,
            t.seconds,
            escape(&status)
        );
    }
    out.push_str("</table>\n<h2>Pictures</h2>\n");
    for (file, caption, png) in figures {
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        let _ = writeln!(
            out,
            "<figure><img src=\"data:image/png;base64,{data}\" width=\"{}\" height=\"{}\" alt=\"{}\">\
             <figcaption>{} ({})</figcaption></figure>",
            pictures::WIDTH,
            pictures::HEIGHT,
            escape(caption),
            escape(caption),
            escape(file)
        );
    }
    out.push_str("</body></html>\n");
    out
}
