//! The surprisal strip: the prompt coloured by how surprised the model was by each token.

use anyhow::Result;
use lushan_model::inspect::Explanation;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use crate::draw::canvas::{Anchor, CENTER, Canvas, Label, Picture, Rect, heading, heading_width};
use crate::draw::{GREY_INK, LABEL_SIZE, MASKED, Scale, YELLOW_ORANGE_RED, text_color_on, text_width};
use crate::explain::label;

/// 0 to a round number of bits at or above the largest surprisal of the prompt.
fn surprisal_scale(explanation: &Explanation) -> Scale {
    let max_bits =
        explanation.next_token.iter().filter_map(|p| p.surprisal_bits).filter(|b| b.is_finite()).fold(1.0f32, f32::max);
    // A round top, so that the legend's ticks end at its edge.
    let max = if max_bits <= 10.0 { max_bits.ceil() } else { (max_bits / 5.0).ceil() * 5.0 };
    Scale { map: &YELLOW_ORANGE_RED, min: 0.0, max, caption: "surprisal (bits)".to_string() }
}

/// The background and text colours the surprisal strip gives `bits`, as CSS `#rrggbb` (for the report's
/// table, so that table and picture agree).
pub fn surprisal_css(explanation: &Explanation, bits: f32) -> (String, String) {
    let background = surprisal_scale(explanation).color(bits);
    let css = |c: RGBColor| format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2);
    (css(background), css(text_color_on(background)))
}

/// The prompt as a row of cells coloured by surprisal (−log2 of the probability the model gave each token),
/// wrapped over several lines; the first token, which nothing predicts, is grey.
pub fn surprisal_strip(explanation: &Explanation) -> Result<Picture> {
    let cells: Vec<(String, Option<f32>)> = explanation
        .tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let bits = i
                .checked_sub(1)
                .and_then(|p| explanation.next_token.get(p))
                .and_then(|prediction| prediction.surprisal_bits)
                .filter(|b| b.is_finite());
            (label(&token.text, 16), bits)
        })
        .collect();
    let scale = surprisal_scale(explanation);
    let token_size = 15.0;
    let widths: Vec<u32> = cells.iter().map(|(t, _)| (text_width(t, token_size) + 14).max(34)).collect();

    let title = "Surprisal of each prompt token";
    let subtitle = "−log2 p(token | the tokens before it): dark red = the model did not expect it, pale = it did";
    let (mut text, head_height) = heading(title, subtitle);
    let margin = 16;
    let max_line = 1168;
    let (cell_h, value_h, line_gap) = (32, 18, 10);
    // Lay the cells out left to right, wrapping at `max_line`.
    let mut placed = Vec::with_capacity(cells.len());
    let (mut x, mut line) = (0u32, 0u32);
    for &w in &widths {
        if x > 0 && x + w > max_line {
            x = 0;
            line += 1;
        }
        placed.push((x, line));
        x += w + 2;
    }
    let used_w = placed.iter().zip(&widths).map(|(&(x, _), &w)| x + w).max().unwrap_or(0);
    let lines = line + 1;
    let strip_top = head_height + 6;
    let legend_y = strip_top + lines * (cell_h + value_h + line_gap) + 10;
    let width = (used_w + 2 * margin).max(640).max(heading_width(title, subtitle));
    let height = legend_y + 16 + 36;
    let mut canvas = Canvas::new(width, height)?;
    for (((token, bits), &(x, line)), &w) in cells.iter().zip(&placed).zip(&widths) {
        let rect = Rect { x: margin + x, y: strip_top + line * (cell_h + value_h + line_gap), w, h: cell_h };
        let background = bits.map_or(MASKED, |b| scale.color(b));
        canvas.fill(rect, background);
        let (cx, cy) = (rect.x + w / 2, rect.y + cell_h / 2);
        text.push(Label::new(token, cx, cy, token_size, text_color_on(background), CENTER));
        let value = bits.map_or_else(|| "—".to_string(), |b| format!("{b:.1}"));
        let anchor = Anchor { h: HPos::Center, v: VPos::Top, upwards: false };
        text.push(Label::new(value, cx, rect.y + cell_h + 3, 11.0, GREY_INK, anchor));
    }
    let caption_w = text_width(&scale.caption, LABEL_SIZE) + 10;
    let bar = Rect { x: margin + caption_w + 10, y: legend_y, w: 300, h: 14 };
    text.extend(canvas.color_bar(bar, &scale));
    canvas.text(&text)?;
    let description = "Each prompt token coloured by how surprised the model was to see it (bits); \
                       the number under it is the surprisal."
        .to_string();
    canvas.into_picture("surprisal.png".to_string(), title.to_string(), description)
}
