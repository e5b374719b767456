//! The head-roles picture: three layer × head heat maps side by side, one per role (previous token,
//! duplicate token, induction), each cell annotated with its score.

use anyhow::Result;
use lushan_model::inspect::{HeadRole, HeadRoles};

use crate::draw::canvas::{CENTER, Canvas, Label, Picture, RIGHT, Rect, heading, heading_width};
use crate::draw::{GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, probability_scale, text_color_on, text_width};

/// Side of one (layer, head) cell, cut down for wide models so the picture stays readable.
fn cell_side(n_head: usize) -> u32 {
    if n_head <= 16 { 40 } else { 24 }
}

pub fn head_roles(roles: &HeadRoles) -> Result<Picture> {
    let n_layer = roles.induction.len().max(1);
    let n_head = roles.induction.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let side = cell_side(n_head);
    let (map_w, map_h) = (n_head as u32 * side, n_layer as u32 * side);
    let title = "Head roles: previous-token, duplicate-token and induction heads";
    let subtitle = format!(
        "score = fraction of a head's attention on the pattern of its role, on {} random tokens repeated twice",
        roles.tokens.len() / 2
    );
    let (mut text, head_height) = heading(title, &subtitle);
    let left = 16 + text_width("layer 99", LABEL_SIZE) + 10;
    let gap = 40;
    let top = head_height + 34;
    let scale = probability_scale("score");
    let maps_w = 3 * map_w + 2 * gap;
    let bar = Rect { x: left + maps_w + 24, y: top, w: 18, h: map_h.max(120) };
    let width = (bar.x + bar.w + 70).max(heading_width(title, &subtitle));
    let height = (top + map_h + 40).max(bar.y + bar.h + 30);
    let mut canvas = Canvas::new(width, height)?;
    for (i, role) in HeadRole::ALL.into_iter().enumerate() {
        let scores = roles.scores(role);
        let map = Rect { x: left + i as u32 * (map_w + gap), y: top, w: map_w, h: map_h };
        let value = |l: usize, h: usize| scores.get(l).and_then(|heads| heads.get(h)).copied();
        canvas.heat_map(map, n_layer, n_head, value, &scale);
        canvas.frame(map, LIGHT_GREY);
        text.push(Label::new(role.label(), map.x + map_w / 2, top - 14, LABEL_SIZE, INK, CENTER));
        for l in 0..n_layer {
            for h in 0..n_head {
                let Some(v) = value(l, h) else { continue };
                let (x, y) = (map.x + h as u32 * side + side / 2, top + l as u32 * side + side / 2);
                let shown = format!("{:.0}", v * 100.0);
                text.push(Label::new(shown, x, y, 11.0, text_color_on(scale.color(v)), CENTER));
            }
        }
        for h in (0..n_head).step_by(if n_head > 16 { 4 } else { 1 }) {
            let x = map.x + h as u32 * side + side / 2;
            text.push(Label::new(format!("{}", h + 1), x, top + map_h + 12, 11.0, GREY_INK, CENTER));
        }
    }
    for l in 0..n_layer {
        let y = top + l as u32 * side + side / 2;
        text.push(Label::new(format!("layer {}", l + 1), left - 8, y, LABEL_SIZE, INK, RIGHT));
    }
    text.push(Label::new("head →", left - 8, top + map_h + 12, 11.0, GREY_INK, RIGHT));
    text.extend(canvas.color_bar(bar, &scale));
    canvas.text(&text)?;
    let description = "Head roles: for each layer (row) and head (column), the share of its attention (in %) that \
                       goes to the previous token, to an earlier copy of the current token, or to the token after \
                       that copy (induction), on a random sequence repeated twice."
        .to_string();
    canvas.into_picture("head-roles.png".to_string(), title.to_string(), description)
}
