//! The causal views' pictures: a layer × head heat map with a bar per MLP (direct logit attribution,
//! ablation), and the layer × position map of activation patching. Values are signed, so the colours diverge
//! around zero on a scale symmetric about it.

use anyhow::Result;
use lushan_model::inspect::{Ablation, Attribution, ComponentSweep, Explanation, Patching};

use super::{AXIS_LABEL_CHARS, token_labels};
use crate::draw::canvas::{
    CENTER, Canvas, LEFT, Label, Picture, RIGHT, Rect, UP_ENDING_HERE, heading, heading_width, tick_labels,
};
use crate::draw::{BLUE_WHITE_RED, GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, Scale, text_color_on, widest};
use crate::explain::label;

const CELL_W: u32 = 52;
const CELL_H: u32 = 28;
/// Half the width of the MLP bars' zone: a bar of the scale's largest magnitude is this long.
const BAR_HALF: u32 = 70;

/// A colour scale symmetric around zero covering every value (at least ±`floor`, so all-zero data draws).
fn symmetric_scale<'a>(values: impl IntoIterator<Item = &'a f32>, floor: f32, caption: &str) -> Scale {
    let largest = values.into_iter().filter(|v| v.is_finite()).fold(floor, |m, v| m.max(v.abs()));
    Scale { map: &BLUE_WHITE_RED, min: -largest, max: largest, caption: caption.to_string() }
}

/// A signed number short enough for a cell.
fn cell_number(value: f32) -> String {
    let text = if value.abs() >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") };
    if text == "-0.00" { "0.00".to_string() } else { text }
}

/// What a layer × head map with MLP bars shows.
struct ComponentMap<'a> {
    file_name: String,
    title: &'a str,
    subtitle: &'a str,
    caption: &'a str,
    description: String,
    heads: &'a [Vec<f32>],
    /// One per layer; empty draws no bars.
    mlp: &'a [f32],
}

/// Rows: layers; columns: heads; a diverging bar per layer's MLP on the right.
fn component_map(map: ComponentMap) -> Result<Picture> {
    let rows = map.heads.len().max(1);
    let cols = map.heads.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let scale = symmetric_scale(map.heads.iter().flatten().chain(map.mlp), 1e-6, map.caption);
    let (mut text, head_height) = heading(map.title, map.subtitle);
    let row_labels: Vec<String> = (1..=rows).map(|l| format!("layer {l}")).collect();
    let left = 16 + widest(&row_labels, LABEL_SIZE) + 10;
    let top = head_height + 30;
    let (map_w, map_h) = (cols as u32 * CELL_W, rows as u32 * CELL_H);
    let bars_x = left + map_w + 30;
    let bars_w = if map.mlp.is_empty() { 0 } else { 2 * BAR_HALF + 20 };
    let bar = Rect { x: bars_x + bars_w + 24, y: top, w: 18, h: map_h.max(120) };
    let width = (bar.x + bar.w + 90).max(heading_width(map.title, map.subtitle));
    let height = (top + map_h + 30).max(bar.y + bar.h + 30);
    let mut canvas = Canvas::new(width, height)?;
    let area = Rect { x: left, y: top, w: map_w, h: map_h };
    let value = |r: usize, c: usize| map.heads.get(r).and_then(|row| row.get(c)).copied();
    canvas.heat_map(area, rows, cols, value, &scale);
    canvas.frame(area, LIGHT_GREY);
    for (r, name) in row_labels.iter().enumerate() {
        let y = top + r as u32 * CELL_H + CELL_H / 2;
        text.push(Label::new(name, left - 8, y, LABEL_SIZE, INK, RIGHT));
        for c in 0..cols {
            let Some(v) = value(r, c) else { continue };
            let x = left + c as u32 * CELL_W + CELL_W / 2;
            text.push(Label::new(cell_number(v), x, y, 11.0, text_color_on(scale.color(v)), CENTER));
        }
    }
    for c in 0..cols {
        let x = left + c as u32 * CELL_W + CELL_W / 2;
        text.push(Label::new(format!("head {}", c + 1), x, top - 12, LABEL_SIZE, GREY_INK, CENTER));
    }
    if !map.mlp.is_empty() {
        let zero_x = bars_x + 10 + BAR_HALF;
        text.push(Label::new("MLP", zero_x, top - 12, LABEL_SIZE, GREY_INK, CENTER));
        canvas.fill(Rect { x: zero_x, y: top, w: 1, h: map_h }, LIGHT_GREY);
        let largest = scale.max.max(f32::MIN_POSITIVE);
        for (r, &v) in map.mlp.iter().enumerate() {
            let length = ((v.abs() / largest).min(1.0) * BAR_HALF as f32).round() as u32;
            let y = top + r as u32 * CELL_H + 5;
            let x = if v < 0.0 { zero_x - length } else { zero_x };
            canvas.fill(Rect { x, y, w: length.max(1), h: CELL_H - 10 }, scale.color(v));
            let (tx, anchor) = if v < 0.0 { (zero_x + 4, LEFT) } else { (zero_x.saturating_sub(4), RIGHT) };
            text.push(Label::new(cell_number(v), tx, y + (CELL_H - 10) / 2, 11.0, INK, anchor));
        }
    }
    text.extend(canvas.color_bar(bar, &scale));
    canvas.text(&text)?;
    canvas.into_picture(map.file_name, map.title.to_string(), map.description)
}

/// Direct logit attribution: each head's and each MLP's share of the explained logit.
pub fn attribution_map(explanation: &Explanation, attribution: &Attribution) -> Result<Picture> {
    let target = label(&attribution.target.text, AXIS_LABEL_CHARS);
    let what = match &attribution.versus {
        Some(v) => format!("logit({target}) − logit({})", label(&v.text, AXIS_LABEL_CHARS)),
        None => format!("logit({target})"),
    };
    let subtitle = format!(
        "direct contribution to {what} at position {} ({}); red raises it, blue lowers it",
        attribution.position + 1,
        position_token(explanation, attribution.position)
    );
    component_map(ComponentMap {
        file_name: "attribution.png".to_string(),
        title: "Direct logit attribution",
        subtitle: &subtitle,
        caption: "contribution (logits)",
        description: format!(
            "Direct logit attribution: how much each attention head (grid) and MLP (bars) adds to {what} straight \
             through the final layer norm; red raises it, blue lowers it."
        ),
        heads: &attribution.heads,
        mlp: &attribution.mlp,
    })
}

/// Ablation: the change of ln p(target) when each head / MLP is zeroed (or set to its mean).
pub fn ablation_map(explanation: &Explanation, ablation: &Ablation, mean: bool) -> Result<Picture> {
    let sweep: &ComponentSweep = match (mean, &ablation.mean) {
        (true, Some(sweep)) => sweep,
        _ => &ablation.zero,
    };
    let kind = if mean { "mean" } else { "zero" };
    let subtitle = format!(
        "Δ ln p({}) at position {} ({}) when the component's output is set to {}; blue: it was needed",
        label(&ablation.target.text, AXIS_LABEL_CHARS),
        ablation.position + 1,
        position_token(explanation, ablation.position),
        if mean { "its mean over the reference text" } else { "zero" }
    );
    let title = if mean { "Mean ablation" } else { "Zero ablation" };
    component_map(ComponentMap {
        file_name: format!("ablation-{kind}.png"),
        title,
        subtitle: &subtitle,
        caption: "Δ ln p(target)",
        description: format!(
            "{title}: the change of the target's log-probability when one attention head (grid) or MLP (bars) is \
             switched off; blue cells are components the prediction needs."
        ),
        heads: &sweep.heads,
        mlp: &sweep.mlp,
    })
}

/// Activation patching of each head's output (at every position) from the clean into the corrupted run.
pub fn patching_heads_map(patching: &Patching) -> Result<Picture> {
    let subtitle = patching_subtitle(patching);
    component_map(ComponentMap {
        file_name: "patching-heads.png".to_string(),
        title: "Activation patching: heads",
        subtitle: &subtitle,
        caption: "recovered fraction",
        description: "Activation patching of heads: the fraction of the clean logit difference recovered when one \
                      head's output is copied from the clean into the corrupted run."
            .to_string(),
        heads: &patching.heads,
        mlp: &[],
    })
}

fn patching_subtitle(patching: &Patching) -> String {
    format!(
        "recovered fraction of logit({}) − logit({}) at position {}: 1 = the clean run's, 0 = the corrupted run's",
        label(&patching.target.text, AXIS_LABEL_CHARS),
        label(&patching.versus.text, AXIS_LABEL_CHARS),
        patching.position + 1
    )
}

/// Causal tracing: rows are the residual stream entering each layer, columns the positions; each cell the
/// fraction recovered by copying that one stream vector from the clean run.
pub fn patching_map(explanation: &Explanation, patching: &Patching) -> Result<Picture> {
    let rows = patching.resid.len().max(1);
    let count = patching.resid.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let title = "Activation patching: residual stream";
    let subtitle = patching_subtitle(patching);
    let scale = symmetric_scale(patching.resid.iter().flatten(), 1.0, "recovered fraction");
    let (mut text, head_height) = heading(title, &subtitle);
    let row_labels: Vec<String> =
        (0..rows).map(|l| if l == 0 { "embed".to_string() } else { format!("into layer {}", l + 1) }).collect();
    let left = 16 + widest(&row_labels, LABEL_SIZE) + 10;
    let top = head_height + 16;
    let map_w = (count as u32).saturating_mul(CELL_W).clamp(1, 3200);
    let cell_w = f64::from(map_w) / count as f64;
    let map_h = rows as u32 * CELL_H;
    // Clean tokens below the map, corrupted ones where they differ in brackets.
    let clean = token_labels(explanation);
    let inputs: Vec<String> = (0..count)
        .map(|p| {
            let clean_token = clean.get(p).cloned().unwrap_or_default();
            match patching.corrupted_tokens.get(p) {
                Some(c) if explanation.tokens.get(p).is_some_and(|t| t.id != c.id) => {
                    format!("{clean_token} [{}]", label(&c.text, 8))
                }
                _ => clean_token,
            }
        })
        .collect();
    let input_ticks = tick_labels(&inputs, count, map_w);
    let input_width = widest(input_ticks.iter().map(|t| &t.1), LABEL_SIZE);
    let bar = Rect { x: left + map_w + 24, y: top, w: 18, h: map_h.max(120) };
    let width = (bar.x + bar.w + 90).max(heading_width(title, &subtitle));
    let height = (top + map_h + 8 + input_width + 16).max(bar.y + bar.h + 30);
    let mut canvas = Canvas::new(width, height)?;
    let area = Rect { x: left, y: top, w: map_w, h: map_h };
    let value = |l: usize, p: usize| patching.resid.get(l).and_then(|row| row.get(p)).copied();
    canvas.heat_map(area, rows, count, value, &scale);
    canvas.frame(area, LIGHT_GREY);
    let annotate = cell_w >= f64::from(CELL_W) - 0.5;
    for (l, name) in row_labels.iter().enumerate() {
        let y = top + l as u32 * CELL_H + CELL_H / 2;
        text.push(Label::new(name, left - 8, y, LABEL_SIZE, INK, RIGHT));
        for p in (0..count).filter(|_| annotate) {
            let Some(v) = value(l, p) else { continue };
            let x = left + ((p as f64 + 0.5) * cell_w) as u32;
            text.push(Label::new(cell_number(v), x, y, 11.0, text_color_on(scale.color(v)), CENTER));
        }
    }
    for (centre, input) in &input_ticks {
        text.push(Label::new(input, left + centre, top + map_h + 6, LABEL_SIZE, INK, UP_ENDING_HERE));
    }
    text.extend(canvas.color_bar(bar, &scale));
    canvas.text(&text)?;
    let description = "Causal tracing: the fraction of the clean prediction recovered when the residual stream \
                       entering one layer at one position is copied from the clean into the corrupted run; [brackets] \
                       show the corrupted tokens."
        .to_string();
    canvas.into_picture("patching.png".to_string(), title.to_string(), description)
}

/// The token at `position` as a label, for subtitles.
fn position_token(explanation: &Explanation, position: usize) -> String {
    explanation.tokens.get(position).map_or_else(String::new, |t| label(&t.text, AXIS_LABEL_CHARS))
}
