//! The sweep report's pictures, drawn with the shared toolkit (`crate::draw`): every trial's validation
//! curve on one plot, the metric against each swept setting, and a parallel-coordinates picture.

use crate::draw::{BLUE, FONT_FAMILY, GREY_INK, INK, LIGHT_GREY, ORANGE, VIRIDIS, draw_err, encode_png, ensure_font};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 520;

/// One trial's validation curve; `rank` 0 is the best trial.
pub struct TrialCurve {
    pub id: usize,
    pub rank: usize,
    pub points: Vec<(u64, f64)>,
}

/// A swept setting's axis: each trial's value as a position, and how to label it.
pub struct Axis {
    pub name: String,
    /// Per trial (same order as the metric values): the value, or `None` when the trial lacks it.
    pub values: Vec<Option<f64>>,
    /// Drawn as log10 of the value (a log-uniform space).
    pub log: bool,
    /// For a setting of strings or booleans: the categories, whose indices are the values.
    pub categories: Option<Vec<String>>,
}

/// Draws into a `WIDTH`×`HEIGHT` RGB buffer and encodes it as PNG.
fn png(draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>) -> Result<Vec<u8>> {
    ensure_font()?;
    let mut buf = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err("a sweep picture"))?;
        draw(&root)?;
        root.present().map_err(draw_err("a sweep picture"))?;
    }
    encode_png(&buf, WIDTH, HEIGHT)
}

/// The range of `values` with a little room, never empty.
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.06 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad)..(hi + pad)
}

/// Colour of the trial ranked `rank` of `count` (the best dark, the worst light; the best is drawn orange).
fn rank_color(rank: usize, count: usize) -> RGBColor {
    if rank == 0 {
        return ORANGE;
    }
    VIRIDIS.at(0.85 * rank as f32 / count.max(2).saturating_sub(1) as f32)
}

/// A number short enough for a tick: `0.0003`, `12`, `1.5e-5`.
pub fn short_number(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() < 1e-3 || x.abs() >= 1e5 {
        return format!("{x:.1e}");
    }
    let text = format!("{x:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Every trial's validation curve on one plot.
pub fn curves(trials: &[TrialCurve], metric: &str) -> Result<Vec<u8>> {
    let x_max = trials.iter().flat_map(|t| t.points.iter().map(|p| p.0)).max().unwrap_or(1).max(1);
    let y = padded(trials.iter().flat_map(|t| t.points.iter().map(|p| p.1)));
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(16)
            .caption(format!("validation curves of {} trials", trials.len()), (FONT_FAMILY, 20))
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..x_max, y)
            .map_err(draw_err("the curves"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(metric)
            .label_style((FONT_FAMILY, 13))
            .axis_desc_style((FONT_FAMILY, 14))
            .y_label_formatter(&|v| short_number(*v))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(draw_err("the curves"))?;
        let mut order: Vec<&TrialCurve> = trials.iter().collect();
        // The best last, so that it is drawn on top.
        order.sort_by_key(|t| std::cmp::Reverse(t.rank));
        for t in order {
            let color = rank_color(t.rank, trials.len());
            let width = if t.rank == 0 { 3 } else { 1 };
            let series = chart
                .draw_series(LineSeries::new(t.points.iter().copied(), color.stroke_width(width)))
                .map_err(draw_err("the curves"))?;
            if t.rank == 0 {
                series
                    .label(format!("best: trial {}", t.id))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(LIGHT_GREY)
            .draw()
            .map_err(draw_err("the curves"))?;
        Ok(())
    })
}

/// Position of a value on an axis (log10 for a log axis).
fn position(axis: &Axis, value: f64) -> f64 {
    if axis.log && value > 0.0 { value.log10() } else { value }
}

/// A tick label for a position on an axis.
fn label(axis: &Axis, x: f64) -> String {
    match &axis.categories {
        Some(names) => {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        }
        None if axis.log => short_number(10f64.powf(x)),
        None => short_number(x),
    }
}

/// The metric against one setting: a point per trial, the best in orange.
pub fn metric_vs(axis: &Axis, metric: &[Option<f64>], best: Option<usize>, metric_name: &str) -> Result<Vec<u8>> {
    let points: Vec<(usize, f64, f64)> = axis
        .values
        .iter()
        .zip(metric)
        .enumerate()
        .filter_map(|(i, (x, y))| Some((i, position(axis, (*x)?), (*y)?)))
        .collect();
    let x = match &axis.categories {
        Some(names) => -0.5..(names.len() as f64 - 0.5),
        None => padded(points.iter().map(|p| p.1)),
    };
    let y = padded(points.iter().map(|p| p.2));
    let caption = format!("{metric_name} against {}{}", axis.name, if axis.log { " (log axis)" } else { "" });
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(16)
            .caption(caption, (FONT_FAMILY, 20))
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(draw_err("a setting's picture"))?;
        let categories = axis.categories.as_ref().map_or(10, |c| c.len().max(2));
        chart
            .configure_mesh()
            .x_desc(axis.name.as_str())
            .y_desc(metric_name)
            .x_labels(categories)
            .label_style((FONT_FAMILY, 13))
            .axis_desc_style((FONT_FAMILY, 14))
            .x_label_formatter(&|v| label(axis, *v))
            .y_label_formatter(&|v| short_number(*v))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(draw_err("a setting's picture"))?;
        chart
            .draw_series(points.iter().filter(|p| Some(p.0) != best).map(|p| Circle::new((p.1, p.2), 5, BLUE.filled())))
            .map_err(draw_err("a setting's picture"))?;
        chart
            .draw_series(
                points.iter().filter(|p| Some(p.0) == best).map(|p| Circle::new((p.1, p.2), 7, ORANGE.filled())),
            )
            .map_err(draw_err("a setting's picture"))?;
        Ok(())
    })
}

/// Parallel coordinates: one vertical axis per setting and a last one for the metric; a line per trial
/// through its values, coloured by rank (the best orange, on top).
pub fn parallel(axes: &[Axis], metric: &[Option<f64>], ranks: &[Option<usize>], metric_name: &str) -> Result<Vec<u8>> {
    let metric_axis = Axis { name: metric_name.to_owned(), values: metric.to_vec(), log: false, categories: None };
    let all: Vec<&Axis> = axes.iter().chain(std::iter::once(&metric_axis)).collect();
    // Each axis's range, from its values' positions.
    let ranges: Vec<(f64, f64)> = all
        .iter()
        .map(|a| match &a.categories {
            Some(names) => (0.0, (names.len().max(2) - 1) as f64),
            None => {
                let r = padded(a.values.iter().flatten().map(|v| position(a, *v)));
                (r.start, r.end)
            }
        })
        .collect();
    let n = all.len();
    let count = ranks.iter().flatten().count();
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(40)
            .caption(format!("parallel coordinates of {} trials", metric.len()), (FONT_FAMILY, 20))
            .build_cartesian_2d(-0.3..(n as f64 - 0.7), -0.08..1.08)
            .map_err(draw_err("the parallel coordinates"))?;
        let to_unit = |j: usize, v: f64| {
            let (lo, hi) = ranges[j];
            (position(all[j], v) - lo) / (hi - lo).max(f64::MIN_POSITIVE)
        };
        let mut order: Vec<usize> = (0..metric.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ranks[i].unwrap_or(usize::MAX)));
        for i in order {
            let line: Vec<(f64, f64)> =
                all.iter().enumerate().filter_map(|(j, a)| Some((j as f64, to_unit(j, a.values[i]?)))).collect();
            let (color, width) = match ranks[i] {
                Some(rank) => (rank_color(rank, count), if rank == 0 { 3 } else { 1 }),
                None => (LIGHT_GREY, 1),
            };
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(width)))
                .map_err(draw_err("the parallel coordinates"))?;
        }
        for (j, axis) in all.iter().enumerate() {
            let x = j as f64;
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, 1.0)], INK.stroke_width(1)))
                .map_err(draw_err("the parallel coordinates"))?;
            let (lo, hi) = ranges[j];
            let style =
                |size| TextStyle::from((FONT_FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
            let texts = [
                (1.065, axis.name.clone(), INK, 14),
                (-0.045, label(axis, if axis.categories.is_some() { 0.0 } else { lo }), GREY_INK, 12),
                (1.02, label(axis, hi), GREY_INK, 12),
            ];
            for (y, text, color, size) in texts {
                chart
                    .draw_series(std::iter::once(Text::new(text, (x, y), style(size).color(&color))))
                    .map_err(draw_err("the parallel coordinates"))?;
            }
        }
        Ok(())
    })
}
