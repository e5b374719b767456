//! The sampling bars: what temperature, top-k and top-p did to each generated token.

use anyhow::Result;
use lushan_model::inspect::{SamplingStep, SamplingView};

use crate::draw::canvas::{Canvas, LEFT, Label, Picture, RIGHT, Rect, heading, heading_width};
use crate::draw::{BLUE, GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, ORANGE, text_width};
use crate::explain::label;

/// Most steps the sampling picture shows (the HTML table lists them all).
pub const MAX_SAMPLING_PANELS: usize = 48;
/// Most candidates per step in the sampling picture.
const MAX_SAMPLING_ROWS: usize = 8;

/// One panel per generated token: its most likely candidates with the model's raw probability (grey) and
/// the probability after temperature / top-k / top-p (blue; orange for the token drawn).
pub fn sampling_bars(view: &SamplingView) -> Result<Picture> {
    let steps = &view.steps[..view.steps.len().min(MAX_SAMPLING_PANELS)];
    let columns = steps.len().clamp(1, 3) as u32;
    let panel_rows = steps.iter().map(|s| rows_of(s).len()).max().unwrap_or(0).max(1) as u32;
    let (row_h, label_w, bar_w, value_w) = (22, 70, 200, 110);
    let panel_w = label_w + bar_w + value_w;
    let panel_h = 28 + panel_rows * row_h + 10;
    let gap = 24;
    let knobs = knob_summary(view);
    let title = "Sampling: what temperature, top-k and top-p did to each step";
    let (mut text, head_height) = heading(title, &knobs);
    let legend_y = head_height + 4;
    let grid_top = legend_y + 30;
    let panels_down = (steps.len() as u32).div_ceil(columns).max(1);
    let width = (16 + columns * (panel_w + gap)).max(heading_width(title, &knobs)).max(620);
    let height = grid_top + panels_down * (panel_h + gap) + 10;
    let mut canvas = Canvas::new(width, height)?;

    // Legend: three swatches.
    let mut x = 16;
    for (color, name) in [(LIGHT_GREY, "model (raw)"), (BLUE, "after the knobs"), (ORANGE, "the token drawn")] {
        canvas.fill(Rect { x, y: legend_y + 4, w: 16, h: 12 }, color);
        text.push(Label::new(name, x + 22, legend_y + 10, LABEL_SIZE, INK, LEFT));
        x += 22 + text_width(name, LABEL_SIZE) + 24;
    }
    if view.steps.len() > steps.len() {
        let note = format!("(first {} of {} steps shown)", steps.len(), view.steps.len());
        text.push(Label::new(note, x, legend_y + 10, LABEL_SIZE, GREY_INK, LEFT));
    }

    for (i, step) in steps.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let (px, py) = (16 + col * (panel_w + gap), grid_top + row * (panel_h + gap));
        let heading =
            format!("{}. drew {} (p {:.2}, {} kept)", i + 1, label(&step.chosen.text, 10), step.chosen.prob, step.kept);
        text.push(Label::new(heading, px, py + 9, LABEL_SIZE, INK, LEFT));
        let bars_x = px + label_w;
        // Axis line at zero.
        canvas.fill(Rect { x: bars_x, y: py + 22, w: 1, h: panel_rows * row_h + 4 }, GREY_INK);
        for (r, row) in rows_of(step).into_iter().enumerate() {
            let y = py + 24 + r as u32 * row_h;
            let length = |p: f32| (p.clamp(0.0, 1.0) * bar_w as f32).round() as u32;
            let chosen = row.id == step.chosen.id;
            if let Some(raw) = row.raw_prob {
                canvas.fill(Rect { x: bars_x + 1, y: y + 2, w: length(raw), h: 7 }, LIGHT_GREY);
            }
            let final_color = if chosen { ORANGE } else { BLUE };
            canvas.fill(Rect { x: bars_x + 1, y: y + 10, w: length(row.final_prob), h: 7 }, final_color);
            let token_color = if chosen { ORANGE } else { INK };
            text.push(Label::new(label(row.text, 8), bars_x - 6, y + 10, LABEL_SIZE, token_color, RIGHT));
            let numbers = match row.raw_prob {
                Some(raw) => format!("{raw:.2} → {:.2}", row.final_prob),
                None => format!("→ {:.2} (rank {})", row.final_prob, step.chosen.rank),
            };
            text.push(Label::new(numbers, bars_x + bar_w + 8, y + 10, 11.0, GREY_INK, LEFT));
        }
    }
    canvas.text(&text)?;
    let description = "For each generated token, its most likely candidates: grey bars are the model's probabilities, \
                       blue/orange bars the probabilities it was drawn with after the sampling knobs."
        .to_string();
    canvas.into_picture("sampling.png".to_string(), title.to_string(), description)
}

/// One bar pair of a sampling panel.
struct SamplingRow<'a> {
    id: u32,
    text: &'a str,
    /// Absent for a drawn token outside the model's top candidates (the explanation lists only those).
    raw_prob: Option<f32>,
    final_prob: f32,
}

/// The step's top candidates, plus the drawn token when it is not among them: the panel always shows it.
fn rows_of(step: &SamplingStep) -> Vec<SamplingRow<'_>> {
    let mut rows: Vec<SamplingRow> = step
        .candidates
        .iter()
        .take(MAX_SAMPLING_ROWS)
        .map(|c| SamplingRow { id: c.id, text: &c.text, raw_prob: Some(c.raw_prob), final_prob: c.final_prob })
        .collect();
    if !rows.iter().any(|r| r.id == step.chosen.id) {
        let chosen = &step.chosen;
        rows.push(SamplingRow { id: chosen.id, text: &chosen.text, raw_prob: None, final_prob: chosen.prob });
    }
    rows
}

/// "temperature 0.8 · top-k 40 · top-p off · repetition penalty 1 · seed 1337".
pub fn knob_summary(view: &SamplingView) -> String {
    let top_k = view.top_k.map_or_else(|| "off".to_string(), |k| k.to_string());
    let top_p = view.top_p.map_or_else(|| "off".to_string(), |p| p.to_string());
    format!(
        "temperature {} · top-k {top_k} · top-p {top_p} · repetition penalty {} · seed {}",
        view.temperature, view.repetition_penalty, view.seed
    )
}
