//! Attention heat maps: one large map per selected head, and every layer and head as small multiples.

use anyhow::{Result, anyhow};
use lushan_model::inspect::Explanation;
use plotters::style::text_anchor::{HPos, VPos};

use super::token_labels;
use crate::draw::canvas::{
    Anchor, CENTER, Canvas, Label, Picture, RIGHT, Rect, UP_CENTERED, UP_ENDING_HERE, heading, heading_width, map_side,
    tick_labels,
};
use crate::draw::{GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, SUBTITLE_SIZE, probability_scale, widest};

pub(super) fn attention_value(matrix: &[Vec<f32>], query: usize, key: usize) -> Option<f32> {
    if key > query {
        return None;
    }
    matrix.get(query).and_then(|row| row.get(key)).copied()
}

/// One head's `T × T` attention matrix, large, with the tokens on both axes.
pub fn attention_head(explanation: &Explanation, layer: usize, head: usize) -> Result<Picture> {
    let matrix = explanation
        .attention
        .probs
        .get(layer)
        .and_then(|heads| heads.get(head))
        .ok_or_else(|| anyhow!("the explanation has no attention for layer {} head {}", layer + 1, head + 1))?;
    let labels = token_labels(explanation);
    let count = matrix.len().max(labels.len());
    let side = map_side(count, 800, 1600);
    let ticks = tick_labels(&labels, count, side);
    let label_width = widest(ticks.iter().map(|t| &t.1), LABEL_SIZE);
    let title = format!("Attention of layer {} head {}", layer + 1, head + 1);
    let subtitle = "row: the token looking (query) · column: the token looked at (key) · each row sums to 1";
    let scale = probability_scale("attention probability");
    let (mut text, head_height) = heading(&title, subtitle);

    let axis_caption = 22;
    let left = 16 + axis_caption + label_width + 8;
    let top = head_height + 8;
    let bar = Rect { x: left + side + 24, y: top, w: 18, h: side.clamp(120, 400) };
    let width = (bar.x + bar.w + 70).max(heading_width(&title, subtitle));
    let height = top + side + 8 + label_width + axis_caption + 16;
    let mut canvas = Canvas::new(width, height)?;
    let map = Rect { x: left, y: top, w: side, h: side };
    canvas.heat_map(map, count, count, |q, k| attention_value(matrix, q, k), &scale);
    canvas.frame(map, LIGHT_GREY);
    text.extend(canvas.color_bar(bar, &scale));
    for (centre, token) in &ticks {
        text.push(Label::new(token, left - 6, top + centre, LABEL_SIZE, INK, RIGHT));
        text.push(Label::new(token, left + centre, top + side + 6, LABEL_SIZE, INK, UP_ENDING_HERE));
    }
    text.push(Label::new(
        "query (looking)",
        16 + axis_caption / 2,
        top + side / 2,
        SUBTITLE_SIZE,
        GREY_INK,
        UP_CENTERED,
    ));
    text.push(Label::new(
        "key (looked at)",
        left + side / 2,
        height - 16 - axis_caption / 2,
        SUBTITLE_SIZE,
        GREY_INK,
        CENTER,
    ));
    canvas.text(&text)?;
    let description = format!(
        "Layer {} head {}: how much each token (row) attends to each earlier token (column); brighter is more.",
        layer + 1,
        head + 1
    );
    canvas.into_picture(format!("attention-layer{}-head{}.png", layer + 1, head + 1), title, description)
}

/// Every layer's and head's attention as small multiples: one row per layer, one column per head.
pub fn attention_grid(explanation: &Explanation) -> Result<Picture> {
    let layers = &explanation.attention.probs;
    let n_layer = layers.len().max(1) as u32;
    let n_head = layers.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
    let count = layers.iter().flatten().map(Vec::len).max().unwrap_or(0).max(explanation.tokens.len());
    // Panels share about 1100 pixels of width and at most ~7000 of height.
    let panel = (1100 / n_head).clamp(48, 160).min((7000 / n_layer).max(24));
    let gap = 10;
    let title = "Attention of every layer and head";
    let subtitle = "rows: layers · columns: heads · in each square, row = query token, column = key token";
    let (mut text, head_height) = heading(title, subtitle);
    let row_labels: Vec<String> = (1..=n_layer).map(|l| format!("layer {l}")).collect();
    let left = 16 + widest(&row_labels, LABEL_SIZE) + 10;
    let top = head_height + 24;
    let grid_w = n_head * (panel + gap) - gap;
    let grid_h = n_layer * (panel + gap) - gap;
    let scale = probability_scale("attention probability");
    let bar = Rect { x: left + grid_w + 24, y: top, w: 18, h: grid_h.clamp(120, 360) };
    let width = (bar.x + bar.w + 70).max(heading_width(title, subtitle));
    let height = (top + grid_h + 16).max(bar.y + bar.h + 16);
    let mut canvas = Canvas::new(width, height)?;
    for (l, heads) in layers.iter().enumerate() {
        let y = top + l as u32 * (panel + gap);
        text.push(Label::new(&row_labels[l], left - 10, y + panel / 2, LABEL_SIZE, INK, RIGHT));
        for (h, matrix) in heads.iter().enumerate() {
            let x = left + h as u32 * (panel + gap);
            let rect = Rect { x, y, w: panel, h: panel };
            canvas.heat_map(rect, count, count, |q, k| attention_value(matrix, q, k), &scale);
            canvas.frame(rect, LIGHT_GREY);
        }
    }
    for h in 0..n_head {
        let x = left + h * (panel + gap) + panel / 2;
        let anchor = Anchor { h: HPos::Center, v: VPos::Bottom, upwards: false };
        text.push(Label::new(format!("head {}", h + 1), x, top - 6, LABEL_SIZE, INK, anchor));
    }
    text.extend(canvas.color_bar(bar, &scale));
    canvas.text(&text)?;
    let description = format!(
        "{} layers × {} heads: each square is one head's causal attention over the {count} prompt tokens.",
        layers.len(),
        n_head
    );
    canvas.into_picture("attention-grid.png".to_string(), title.to_string(), description)
}
