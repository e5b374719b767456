//! An RGB canvas: heat maps and bars painted straight into the pixel buffer — one pass over the pixels,
//! taking the largest value when several cells share a pixel so that a sharp peak never disappears — then
//! text and lines drawn on the same buffer through plotters, and the result encoded as a PNG whose size is
//! known before drawing (so HTML `<img>` tags, manifests and tests know it).

use anyhow::{Result, ensure};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    GREY_INK, INK, LABEL_SIZE, LIGHT_GREY, MASKED, SUBTITLE_SIZE, Scale, TITLE_SIZE, draw_err, font, format_tick,
};
use super::{text_width, widest};

/// Largest side of any picture: browsers and viewers cope, and the PNG stays a few megabytes at most.
pub(crate) const MAX_SIDE: u32 = 8000;

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// One finished picture.
#[derive(Debug, Clone)]
pub struct Picture {
    /// File name under `--png DIR`, e.g. `attention-layer2-head1.png`.
    pub file_name: String,
    pub title: String,
    /// How to read it, in a sentence (also the image's alt text).
    pub description: String,
    pub width: u32,
    pub height: u32,
    pub png: Vec<u8>,
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rect {
    pub(crate) x: u32,
    pub(crate) y: u32,
    pub(crate) w: u32,
    pub(crate) h: u32,
}

/// How text sits on its anchor point, and whether it runs upwards (rotated a quarter turn left).
#[derive(Clone, Copy)]
pub(crate) struct Anchor {
    pub(crate) h: HPos,
    pub(crate) v: VPos,
    pub(crate) upwards: bool,
}

pub(crate) const LEFT: Anchor = Anchor { h: HPos::Left, v: VPos::Center, upwards: false };
pub(crate) const RIGHT: Anchor = Anchor { h: HPos::Right, v: VPos::Center, upwards: false };
pub(crate) const CENTER: Anchor = Anchor { h: HPos::Center, v: VPos::Center, upwards: false };
pub(crate) const TOP_LEFT: Anchor = Anchor { h: HPos::Left, v: VPos::Top, upwards: false };
/// Upwards text ending at the anchor (labels hanging below an axis).
pub(crate) const UP_ENDING_HERE: Anchor = Anchor { h: HPos::Right, v: VPos::Center, upwards: true };
/// Upwards text starting at the anchor (labels standing above an axis).
pub(crate) const UP_STARTING_HERE: Anchor = Anchor { h: HPos::Left, v: VPos::Center, upwards: true };
pub(crate) const UP_CENTERED: Anchor = Anchor { h: HPos::Center, v: VPos::Center, upwards: true };

pub(crate) struct Canvas {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixels: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(width: u32, height: u32) -> Result<Self> {
        ensure!(
            (1..=MAX_SIDE).contains(&width) && (1..=MAX_SIDE).contains(&height),
            "picture size {width}x{height} is out of range (1 to {MAX_SIDE} pixels a side)"
        );
        Ok(Self { width, height, pixels: vec![255; width as usize * height as usize * 3] })
    }

    pub(crate) fn fill(&mut self, rect: Rect, color: RGBColor) {
        let x_end = rect.x.saturating_add(rect.w).min(self.width);
        let y_end = rect.y.saturating_add(rect.h).min(self.height);
        for y in rect.y.min(y_end)..y_end {
            let row = y as usize * self.width as usize;
            for x in rect.x.min(x_end)..x_end {
                let i = (row + x as usize) * 3;
                self.pixels[i..i + 3].copy_from_slice(&[color.0, color.1, color.2]);
            }
        }
    }

    /// Paints a `rows × cols` matrix into `rect`. `value(r, c)` is `None` for a hidden cell. Each pixel shows
    /// the largest value among the cells it covers, so a matrix larger than the rectangle keeps its peaks.
    pub(crate) fn heat_map(
        &mut self,
        rect: Rect,
        rows: usize,
        cols: usize,
        value: impl Fn(usize, usize) -> Option<f32>,
        scale: &Scale,
    ) {
        if rows == 0 || cols == 0 || rect.w == 0 || rect.h == 0 {
            return;
        }
        let span = |pixel: u32, pixels: u32, cells: usize| {
            let start = pixel as usize * cells / pixels as usize;
            let end = ((pixel as usize + 1) * cells / pixels as usize).max(start + 1);
            start..end.min(cells)
        };
        for py in 0..rect.h {
            let row_span = span(py, rect.h, rows);
            for px in 0..rect.w {
                let col_span = span(px, rect.w, cols);
                let mut best: Option<f32> = None;
                for r in row_span.clone() {
                    for c in col_span.clone() {
                        if let Some(v) = value(r, c).filter(|v| v.is_finite()) {
                            best = Some(best.map_or(v, |b: f32| b.max(v)));
                        }
                    }
                }
                let color = best.map_or(MASKED, |v| scale.color(v));
                self.fill(Rect { x: rect.x + px, y: rect.y + py, w: 1, h: 1 }, color);
            }
        }
    }

    /// A thin frame just outside `rect`.
    pub(crate) fn frame(&mut self, rect: Rect, color: RGBColor) {
        let (x0, y0) = (rect.x.saturating_sub(1), rect.y.saturating_sub(1));
        let (w, h) = (rect.w + 2, rect.h + 2);
        self.fill(Rect { x: x0, y: y0, w, h: 1 }, color);
        self.fill(Rect { x: x0, y: y0 + h - 1, w, h: 1 }, color);
        self.fill(Rect { x: x0, y: y0, w: 1, h }, color);
        self.fill(Rect { x: x0 + w - 1, y: y0, w: 1, h }, color);
    }

    /// A colour bar: the gradient in `rect` (low at the bottom, or at the left when `rect` is wide), and the
    /// text the legend needs, returned for [`Canvas::text`] to draw afterwards.
    pub(crate) fn color_bar(&mut self, rect: Rect, scale: &Scale) -> Vec<Label> {
        let vertical = rect.h >= rect.w;
        let mut labels = Vec::new();
        if vertical {
            for i in 0..rect.h {
                let t = 1.0 - i as f32 / (rect.h.max(2) - 1) as f32;
                self.fill(Rect { x: rect.x, y: rect.y + i, w: rect.w, h: 1 }, scale.map.at(t));
            }
            for tick in scale.ticks() {
                let t = (tick - scale.min) / (scale.max - scale.min).max(f32::MIN_POSITIVE);
                let y = rect.y + ((1.0 - t) * (rect.h - 1) as f32).round() as u32;
                self.fill(Rect { x: rect.x + rect.w, y, w: 4, h: 1 }, INK);
                labels.push(Label::new(format_tick(tick), rect.x + rect.w + 7, y, LABEL_SIZE, GREY_INK, LEFT));
            }
            // The caption runs upwards beside the tick labels.
            let x = rect.x + rect.w + 12 + widest(scale.ticks().iter().map(|t| format_tick(*t)), LABEL_SIZE);
            labels.push(Label::new(&scale.caption, x + 8, rect.y + rect.h / 2, LABEL_SIZE, INK, UP_CENTERED));
        } else {
            for i in 0..rect.w {
                let t = i as f32 / (rect.w.max(2) - 1) as f32;
                self.fill(Rect { x: rect.x + i, y: rect.y, w: 1, h: rect.h }, scale.map.at(t));
            }
            for tick in scale.ticks() {
                let t = (tick - scale.min) / (scale.max - scale.min).max(f32::MIN_POSITIVE);
                let x = rect.x + (t * (rect.w - 1) as f32).round() as u32;
                self.fill(Rect { x, y: rect.y + rect.h, w: 1, h: 4 }, INK);
                let anchor = Anchor { h: HPos::Center, v: VPos::Top, upwards: false };
                labels.push(Label::new(format_tick(tick), x, rect.y + rect.h + 7, LABEL_SIZE, GREY_INK, anchor));
            }
            labels.push(Label::new(
                &scale.caption,
                rect.x.saturating_sub(10),
                rect.y + rect.h / 2,
                LABEL_SIZE,
                INK,
                RIGHT,
            ));
        }
        self.frame(rect, LIGHT_GREY);
        labels
    }

    /// Draws text (and whatever else `draw` does) through plotters on top of the painted pixels.
    pub(crate) fn plotters(&mut self, draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
        let root = BitMapBackend::with_buffer(&mut self.pixels, (self.width, self.height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(draw_err("a picture"))
    }

    pub(crate) fn text(&mut self, labels: &[Label]) -> Result<()> {
        self.plotters(|area| labels.iter().try_for_each(|l| l.draw(area)))
    }

    pub(crate) fn into_picture(self, file_name: String, title: String, description: String) -> Result<Picture> {
        let png_bytes = super::encode_png(&self.pixels, self.width, self.height)?;
        Ok(Picture { file_name, title, description, width: self.width, height: self.height, png: png_bytes })
    }
}

/// A piece of text to draw.
pub(crate) struct Label {
    text: String,
    x: u32,
    y: u32,
    size: f64,
    color: RGBColor,
    anchor: Anchor,
}

impl Label {
    pub(crate) fn new(text: impl Into<String>, x: u32, y: u32, size: f64, color: RGBColor, anchor: Anchor) -> Self {
        Self { text: text.into(), x, y, size, color, anchor }
    }

    pub(crate) fn draw(&self, area: &Area) -> Result<()> {
        let mut style = TextStyle::from(font(self.size)).color(&self.color).pos(Pos::new(self.anchor.h, self.anchor.v));
        if self.anchor.upwards {
            style = style.transform(FontTransform::Rotate270);
        }
        area.draw_text(&self.text, &style, (self.x as i32, self.y as i32)).map_err(draw_err("a picture"))
    }
}

/// Title and subtitle at the top left; returns the labels and the height they take.
pub(crate) fn heading(title: &str, subtitle: &str) -> (Vec<Label>, u32) {
    let mut labels = vec![Label::new(title, 16, 12, TITLE_SIZE, INK, TOP_LEFT)];
    if subtitle.is_empty() {
        return (labels, 44);
    }
    labels.push(Label::new(subtitle, 16, 40, SUBTITLE_SIZE, GREY_INK, TOP_LEFT));
    (labels, 66)
}

pub(crate) fn heading_width(title: &str, subtitle: &str) -> u32 {
    32 + text_width(title, TITLE_SIZE).max(text_width(subtitle, SUBTITLE_SIZE))
}

/// Token labels along one side of a heat map: which of `count` cells spread over `length` pixels get a label
/// (every one when they fit, else every k-th), and where each label's centre lies.
pub(crate) fn axis_ticks(count: usize, length: u32, label_height: f64) -> Vec<(usize, u32)> {
    if count == 0 {
        return Vec::new();
    }
    let cell = f64::from(length) / count as f64;
    let every = (label_height / cell).ceil().max(1.0) as usize;
    (0..count).step_by(every).map(|i| (i, ((i as f64 + 0.5) * cell) as u32)).collect()
}

/// Side of a square heat map for `count` cells: big cells for short prompts, one pixel per cell down to
/// `max_side` pixels, pooled beyond.
pub(crate) fn map_side(count: usize, preferred: u32, max_side: u32) -> u32 {
    let count = count.max(1) as u32;
    let cell = (preferred / count).clamp(1, 36);
    (count.saturating_mul(cell)).clamp(1, max_side)
}

/// The labelled cells along a side of `length` pixels with `count` token cells: `(centre, text)`. When only
/// every k-th token gets a label, each says its position too ("120 ␣the"), since neighbours cannot be counted.
pub(crate) fn tick_labels(labels: &[String], count: usize, length: u32) -> Vec<(u32, String)> {
    let ticks = axis_ticks(count, length, LABEL_SIZE);
    let numbered = ticks.len() < count;
    ticks
        .into_iter()
        .filter_map(|(i, centre)| {
            let token = labels.get(i)?;
            Some((centre, if numbered { format!("{i} {token}") } else { token.clone() }))
        })
        .collect()
}
