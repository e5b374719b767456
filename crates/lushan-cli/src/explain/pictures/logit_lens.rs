//! The logit-lens heat map: what each layer would predict at each position.

use anyhow::Result;
use lushan_model::inspect::Explanation;
use plotters::prelude::*;

use super::{AXIS_LABEL_CHARS, token_labels};
use crate::draw::canvas::{
    CENTER, Canvas, Label, Picture, RIGHT, Rect, UP_ENDING_HERE, UP_STARTING_HERE, heading, heading_width, tick_labels,
};
use crate::draw::{GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, probability_scale, text_color_on, text_width, widest};
use crate::explain::label;

/// Rows: the residual stream after the embeddings and after each block; columns: positions. Colour: the
/// probability that layer's lens gives to the model's final top-1 prediction; text: the lens's own top-1.
pub fn logit_lens(explanation: &Explanation) -> Result<Picture> {
    let layers = &explanation.logit_lens.layers;
    let rows = layers.len().max(1);
    let inputs = token_labels(explanation);
    let count = layers.iter().map(|l| l.positions.len()).max().unwrap_or(0).max(inputs.len()).max(1);
    // The token the text actually has after each position (the last has none).
    let nexts: Vec<String> = (0..count)
        .map(|p| explanation.tokens.get(p + 1).map_or_else(|| "—".to_string(), |t| label(&t.text, AXIS_LABEL_CHARS)))
        .collect();
    let cell_text = |l: usize, p: usize| {
        layers
            .get(l)
            .and_then(|layer| layer.positions.get(p))
            .and_then(|cell| cell.top.first())
            .map(|c| label(&c.text, 8))
    };
    let annotation_width = (0..rows).flat_map(|l| (0..count).map(move |p| (l, p))).filter_map(|(l, p)| cell_text(l, p));
    let wanted_cell_w = (widest(annotation_width, 12.0) + 10).clamp(22, 90);
    let max_map_w = 3200;
    let map_w = (count as u32).saturating_mul(wanted_cell_w).min(max_map_w).max(1);
    let cell_w = f64::from(map_w) / count as f64;
    let cell_h = 28;
    let map_h = rows as u32 * cell_h;
    // Annotations only where the cells got the width they asked for (long prompts shrink the cells).
    let annotate = cell_w + 0.5 >= f64::from(wanted_cell_w);

    let title = "Logit lens: what each layer would predict";
    let subtitle =
        "colour: probability each layer gives the model's final prediction · text: that layer's own top token";
    let (mut text, head_height) = heading(title, subtitle);
    let row_labels: Vec<&str> = layers.iter().map(|l| l.label.as_str()).collect();
    let left = 16 + widest(&row_labels, LABEL_SIZE).max(text_width("next token ↑", LABEL_SIZE)) + 10;
    let (input_ticks, next_ticks) = (tick_labels(&inputs, count, map_w), tick_labels(&nexts, count, map_w));
    let next_width = widest(next_ticks.iter().map(|t| &t.1), LABEL_SIZE);
    let top = head_height + 10 + next_width + 8;
    let input_width = widest(input_ticks.iter().map(|t| &t.1), LABEL_SIZE);
    let scale = probability_scale("p(final prediction)");
    let bar = Rect { x: left + map_w + 24, y: top, w: 18, h: map_h.max(120) };
    let width = (bar.x + bar.w + 70).max(heading_width(title, subtitle));
    let height = (top + map_h + 8 + input_width + 16).max(bar.y + bar.h + 30);
    let mut canvas = Canvas::new(width, height)?;
    let map = Rect { x: left, y: top, w: map_w, h: map_h };
    let value = |l: usize, p: usize| layers.get(l)?.positions.get(p).map(|c| c.final_token_prob);
    canvas.heat_map(map, rows, count, value, &scale);
    // White rules between rows keep the layers apart.
    for l in 1..rows as u32 {
        canvas.fill(Rect { x: left, y: top + l * cell_h, w: map_w, h: 1 }, WHITE);
    }
    canvas.frame(map, LIGHT_GREY);
    text.extend(canvas.color_bar(bar, &scale));
    for (l, name) in row_labels.iter().enumerate() {
        text.push(Label::new(*name, left - 8, top + l as u32 * cell_h + cell_h / 2, LABEL_SIZE, INK, RIGHT));
    }
    if annotate {
        for l in 0..rows {
            for p in 0..count {
                let (Some(cell), Some(v)) = (cell_text(l, p), value(l, p)) else { continue };
                let x = left + ((p as f64 + 0.5) * cell_w) as u32;
                let y = top + l as u32 * cell_h + cell_h / 2;
                text.push(Label::new(cell, x, y, 12.0, text_color_on(scale.color(v)), CENTER));
            }
        }
    }
    for (centre, input) in &input_ticks {
        text.push(Label::new(input, left + centre, top + map_h + 6, LABEL_SIZE, INK, UP_ENDING_HERE));
    }
    for (centre, next) in &next_ticks {
        text.push(Label::new(next, left + centre, top - 6, LABEL_SIZE, GREY_INK, UP_STARTING_HERE));
    }
    text.push(Label::new("next token ↑", left - 8, top - 12, 12.0, GREY_INK, RIGHT));
    text.push(Label::new("input token ↓", left - 8, top + map_h + 12, 12.0, GREY_INK, RIGHT));
    canvas.text(&text)?;
    let description = "Logit lens: each row reads the residual stream after one layer through the final layer norm \
                       and output layer; brighter cells already favour the model's final prediction."
        .to_string();
    canvas.into_picture("logit-lens.png".to_string(), title.to_string(), description)
}
