//! The report's pictures as PNGs: attention heat maps (a grid of small multiples and large per-head maps),
//! the logit-lens heat map, the surprisal strip, the sampling bars and the embedding scatter plot.
//!
//! Heat-map cells are painted straight into the RGB buffer — one pass over the pixels, taking the largest
//! value when several cells share a pixel so that a sharp attention peak never disappears — and plotters then
//! draws text and lines on the same buffer with the embedded DejaVu Sans. Each picture's size is worked out
//! before drawing and returned with it, so the HTML `<img>` tags, the `--png` manifest and the tests know it.

use anyhow::{Context, Result, anyhow, ensure};
use lushan_model::inspect::{EmbeddingView, Explanation, SamplingStep, SamplingView};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rayon::prelude::*;

use super::{HeadSelection, label};
use crate::plot::{FONT_FAMILY, ensure_font};

/// Largest side of any picture: browsers and viewers cope, and the PNG stays a few megabytes at most.
const MAX_SIDE: u32 = 8000;
/// Longest token label drawn on an axis, in characters.
const AXIS_LABEL_CHARS: usize = 12;
/// Colour of text and lines.
const INK: RGBColor = RGBColor(34, 34, 34);
/// Colour of secondary text (subtitles, tick labels).
const GREY_INK: RGBColor = RGBColor(100, 100, 100);
/// Colour of the cells a causal mask hides (a key after the query).
const MASKED: RGBColor = RGBColor(246, 246, 246);
/// Tableau blue and orange: "what the model would do" and "what happened".
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const LIGHT_GREY: RGBColor = RGBColor(200, 200, 200);

const TITLE_SIZE: f64 = 20.0;
const SUBTITLE_SIZE: f64 = 14.0;
const LABEL_SIZE: f64 = 13.0;

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

/// Every picture of one report.
#[derive(Debug, Clone)]
pub struct Pictures {
    pub surprisal: Picture,
    pub attention_grid: Picture,
    pub attention_heads: Vec<Picture>,
    pub logit_lens: Picture,
    pub sampling: Option<Picture>,
    pub embeddings: Option<Picture>,
}

impl Pictures {
    /// All pictures, in report order.
    pub fn all(&self) -> Vec<&Picture> {
        let mut all = vec![&self.surprisal, &self.attention_grid];
        all.extend(&self.attention_heads);
        all.push(&self.logit_lens);
        all.extend(&self.sampling);
        all.extend(&self.embeddings);
        all
    }
}

/// Draws every picture of `explanation`; `selection` says which attention heads get a large map.
pub fn draw_all(explanation: &Explanation, selection: &HeadSelection) -> Result<Pictures> {
    ensure_font()?;
    // The large maps are independent and the biggest to draw: one per worker of the thread pool.
    let attention_heads = selection
        .heads
        .par_iter()
        .map(|&(layer, head)| attention_head(explanation, layer, head))
        .collect::<Result<Vec<_>>>()?;
    Ok(Pictures {
        surprisal: surprisal_strip(explanation).context("drawing the surprisal strip")?,
        attention_grid: attention_grid(explanation).context("drawing the attention grid")?,
        attention_heads,
        logit_lens: logit_lens(explanation).context("drawing the logit-lens heat map")?,
        sampling: explanation.sampling.as_ref().map(sampling_bars).transpose().context("drawing the sampling view")?,
        embeddings: explanation.embeddings.as_ref().map(embedding_scatter).transpose().context("drawing the PCA")?,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Colour scales

/// A sequential colour map: colours at evenly spaced stops, linearly interpolated.
struct Colormap(&'static [(u8, u8, u8)]);

/// matplotlib's viridis (perceptually uniform, readable in grey and by most colour-blind readers).
const VIRIDIS: Colormap = Colormap(&[
    (68, 1, 84),
    (72, 36, 117),
    (65, 68, 135),
    (53, 95, 141),
    (42, 120, 142),
    (33, 145, 140),
    (34, 168, 132),
    (68, 191, 112),
    (122, 209, 81),
    (189, 223, 38),
    (253, 231, 37),
]);

/// ColorBrewer's YlOrRd: pale for expected tokens, dark red for surprising ones.
const YELLOW_ORANGE_RED: Colormap = Colormap(&[
    (255, 255, 204),
    (255, 237, 160),
    (254, 217, 118),
    (254, 178, 76),
    (253, 141, 60),
    (252, 78, 42),
    (227, 26, 28),
    (189, 0, 38),
    (128, 0, 38),
]);

impl Colormap {
    /// The colour at `t` in [0, 1] (clamped; NaN is 0).
    fn at(&self, t: f32) -> RGBColor {
        let stops = self.0;
        let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
        let x = t * (stops.len() - 1) as f32;
        let i = (x.floor() as usize).min(stops.len() - 2);
        let f = x - i as f32;
        let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * f).round() as u8;
        let (a, b) = (stops[i], stops[i + 1]);
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }
}

/// Values `min..=max` mapped onto a colour map, with the legend's caption.
struct Scale {
    map: &'static Colormap,
    min: f32,
    max: f32,
    caption: String,
}

impl Scale {
    fn color(&self, value: f32) -> RGBColor {
        self.map.at((value - self.min) / (self.max - self.min).max(f32::MIN_POSITIVE))
    }

    /// Round tick values covering the range (steps of 1, 2 or 5 times a power of ten; at most 6 ticks).
    fn ticks(&self) -> Vec<f32> {
        let span = f64::from(self.max - self.min);
        if !(span.is_finite() && span > 0.0) {
            return vec![self.min];
        }
        let raw = span / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| span / s <= 5.0).unwrap_or(span);
        let first = (f64::from(self.min) / step).ceil() as i64;
        let last = (f64::from(self.max) / step + 1e-6).floor() as i64;
        (first..=last).map(|i| (i as f64 * step) as f32).collect()
    }
}

fn probability_scale(caption: &str) -> Scale {
    Scale { map: &VIRIDIS, min: 0.0, max: 1.0, caption: caption.to_string() }
}

/// Black or white, whichever reads better on `background`.
fn text_color_on(background: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = background;
    let luma = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
    if luma > 140.0 { INK } else { WHITE }
}

/// A tick label with two decimals, never "-0.00".
fn axis_number(value: f64) -> String {
    let text = format!("{value:.2}");
    if text == "-0.00" { "0.00".to_string() } else { text }
}

fn format_tick(value: f32) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".to_string() } else { text.to_string() }
}

// ---------------------------------------------------------------------------------------------------------
// Canvas: an RGB buffer painted directly and through plotters.

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT_FAMILY), size, FontStyle::Normal)
}

/// Width in pixels of `text` at `size` (an estimate when the font cannot say).
fn text_width(text: &str, size: f64) -> u32 {
    font(size).box_size(text).map(|(w, _)| w).unwrap_or_else(|_| (text.chars().count() as f64 * size * 0.62) as u32)
}

fn widest(texts: impl IntoIterator<Item = impl AsRef<str>>, size: f64) -> u32 {
    texts.into_iter().map(|t| text_width(t.as_ref(), size)).max().unwrap_or(0)
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// How text sits on its anchor point, and whether it runs upwards (rotated a quarter turn left).
#[derive(Clone, Copy)]
struct Anchor {
    h: HPos,
    v: VPos,
    upwards: bool,
}

const LEFT: Anchor = Anchor { h: HPos::Left, v: VPos::Center, upwards: false };
const RIGHT: Anchor = Anchor { h: HPos::Right, v: VPos::Center, upwards: false };
const CENTER: Anchor = Anchor { h: HPos::Center, v: VPos::Center, upwards: false };
const TOP_LEFT: Anchor = Anchor { h: HPos::Left, v: VPos::Top, upwards: false };
/// Upwards text ending at the anchor (labels hanging below an axis).
const UP_ENDING_HERE: Anchor = Anchor { h: HPos::Right, v: VPos::Center, upwards: true };
/// Upwards text starting at the anchor (labels standing above an axis).
const UP_STARTING_HERE: Anchor = Anchor { h: HPos::Left, v: VPos::Center, upwards: true };
const UP_CENTERED: Anchor = Anchor { h: HPos::Center, v: VPos::Center, upwards: true };

struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Result<Self> {
        ensure!(
            (1..=MAX_SIDE).contains(&width) && (1..=MAX_SIDE).contains(&height),
            "picture size {width}x{height} is out of range (1 to {MAX_SIDE} pixels a side)"
        );
        Ok(Self { width, height, pixels: vec![255; width as usize * height as usize * 3] })
    }

    fn fill(&mut self, rect: Rect, color: RGBColor) {
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
    fn heat_map(
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
    fn frame(&mut self, rect: Rect, color: RGBColor) {
        let (x0, y0) = (rect.x.saturating_sub(1), rect.y.saturating_sub(1));
        let (w, h) = (rect.w + 2, rect.h + 2);
        self.fill(Rect { x: x0, y: y0, w, h: 1 }, color);
        self.fill(Rect { x: x0, y: y0 + h - 1, w, h: 1 }, color);
        self.fill(Rect { x: x0, y: y0, w: 1, h }, color);
        self.fill(Rect { x: x0 + w - 1, y: y0, w: 1, h }, color);
    }

    /// A colour bar: the gradient in `rect` (low at the bottom, or at the left when `rect` is wide), and the
    /// text the legend needs, returned for [`Canvas::text`] to draw afterwards.
    fn color_bar(&mut self, rect: Rect, scale: &Scale) -> Vec<Label> {
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
    fn plotters(&mut self, draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
        let root = BitMapBackend::with_buffer(&mut self.pixels, (self.width, self.height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(draw_err)
    }

    fn text(&mut self, labels: &[Label]) -> Result<()> {
        self.plotters(|area| labels.iter().try_for_each(|l| l.draw(area)))
    }

    fn into_picture(self, file_name: String, title: String, description: String) -> Result<Picture> {
        let mut png_bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png_bytes, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            // `Best` takes several times longer for a few percent less; a long prompt draws many big maps.
            encoder.set_compression(png::Compression::Default);
            let mut writer = encoder.write_header().context("encoding the PNG header")?;
            writer.write_image_data(&self.pixels).context("encoding the PNG data")?;
            writer.finish().context("finishing the PNG")?;
        }
        Ok(Picture { file_name, title, description, width: self.width, height: self.height, png: png_bytes })
    }
}

/// A piece of text to draw.
struct Label {
    text: String,
    x: u32,
    y: u32,
    size: f64,
    color: RGBColor,
    anchor: Anchor,
}

impl Label {
    fn new(text: impl Into<String>, x: u32, y: u32, size: f64, color: RGBColor, anchor: Anchor) -> Self {
        Self { text: text.into(), x, y, size, color, anchor }
    }

    fn draw(&self, area: &Area) -> Result<()> {
        let mut style = TextStyle::from(font(self.size)).color(&self.color).pos(Pos::new(self.anchor.h, self.anchor.v));
        if self.anchor.upwards {
            style = style.transform(FontTransform::Rotate270);
        }
        area.draw_text(&self.text, &style, (self.x as i32, self.y as i32)).map_err(draw_err)
    }
}

/// Title and subtitle at the top left; returns the labels and the height they take.
fn heading(title: &str, subtitle: &str) -> (Vec<Label>, u32) {
    let mut labels = vec![Label::new(title, 16, 12, TITLE_SIZE, INK, TOP_LEFT)];
    if subtitle.is_empty() {
        return (labels, 44);
    }
    labels.push(Label::new(subtitle, 16, 40, SUBTITLE_SIZE, GREY_INK, TOP_LEFT));
    (labels, 66)
}

fn heading_width(title: &str, subtitle: &str) -> u32 {
    32 + text_width(title, TITLE_SIZE).max(text_width(subtitle, SUBTITLE_SIZE))
}

/// Token labels along one side of a heat map: which of `count` cells spread over `length` pixels get a label
/// (every one when they fit, else every k-th), and where each label's centre lies.
fn axis_ticks(count: usize, length: u32, label_height: f64) -> Vec<(usize, u32)> {
    if count == 0 {
        return Vec::new();
    }
    let cell = f64::from(length) / count as f64;
    let every = (label_height / cell).ceil().max(1.0) as usize;
    (0..count).step_by(every).map(|i| (i, ((i as f64 + 0.5) * cell) as u32)).collect()
}

/// Side of a square heat map for `count` cells: big cells for short prompts, one pixel per cell down to
/// `max_side` pixels, pooled beyond.
fn map_side(count: usize, preferred: u32, max_side: u32) -> u32 {
    let count = count.max(1) as u32;
    let cell = (preferred / count).clamp(1, 36);
    (count.saturating_mul(cell)).clamp(1, max_side)
}

/// The labelled cells along a side of `length` pixels with `count` token cells: `(centre, text)`. When only
/// every k-th token gets a label, each says its position too ("120 ␣the"), since neighbours cannot be counted.
fn tick_labels(labels: &[String], count: usize, length: u32) -> Vec<(u32, String)> {
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

fn token_labels(explanation: &Explanation) -> Vec<String> {
    explanation.tokens.iter().map(|t| label(&t.text, AXIS_LABEL_CHARS)).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Attention

fn attention_value(matrix: &[Vec<f32>], query: usize, key: usize) -> Option<f32> {
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

// ---------------------------------------------------------------------------------------------------------
// Logit lens

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

// ---------------------------------------------------------------------------------------------------------
// Surprisal strip

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

// ---------------------------------------------------------------------------------------------------------
// Sampling

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

// ---------------------------------------------------------------------------------------------------------
// Embeddings

/// The queried tokens and their neighbours on the first two principal components of their embeddings.
pub fn embedding_scatter(view: &EmbeddingView) -> Result<Picture> {
    let (width, height) = (900u32, 680u32);
    let mut canvas = Canvas::new(width, height)?;
    let points: Vec<(f64, f64, String, bool)> = view
        .pca
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .map(|p| (f64::from(p.x), f64::from(p.y), label(&p.text, 14), p.query))
        .collect();
    let range = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return -1.0..1.0;
        }
        let pad = ((hi - lo) * 0.12).max(1e-3);
        (lo - pad)..(hi + pad)
    };
    let x_range = range(&mut points.iter().map(|p| p.0));
    let y_range = range(&mut points.iter().map(|p| p.1));
    let title = "Token embeddings: 2-D projection (PCA)";
    let subtitle = "tokens that sit close together have similar embedding directions";
    let x_desc = format!("PC1 ({:.0}% of the variance)", view.explained_variance[0] * 100.0);
    let y_desc = format!("PC2 ({:.0}% of the variance)", view.explained_variance[1] * 100.0);
    // Title and legend sit above the plot, where they cannot hide a point.
    let (mut text, head_height) = heading(title, subtitle);
    let legend_y = head_height + 2;
    let mut x = 16;
    for (color, radius, name) in [(ORANGE, 7, "queried token"), (BLUE, 5, "nearest neighbour")] {
        text.push(Label::new("●", x, legend_y + 8, f64::from(radius) * 2.6, color, LEFT));
        text.push(Label::new(name, x + 22, legend_y + 8, LABEL_SIZE, INK, LEFT));
        x += 22 + text_width(name, LABEL_SIZE) + 28;
    }
    let plot_top = legend_y + 24;
    canvas.plotters(|root| {
        let area = root.margin(plot_top, 0, 0, 0);
        let mut chart = ChartBuilder::on(&area)
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc.as_str())
            .y_desc(y_desc.as_str())
            .axis_desc_style((FONT_FAMILY, SUBTITLE_SIZE))
            .label_style((FONT_FAMILY, 12))
            .x_label_formatter(&|x| axis_number(*x))
            .y_label_formatter(&|y| axis_number(*y))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(draw_err)?;
        // Neighbours first, so that the queried tokens are drawn on top.
        for query in [false, true] {
            let (color, radius): (RGBColor, i32) = if query { (ORANGE, 7) } else { (BLUE, 5) };
            let label_style = TextStyle::from(font(if query { 16.0 } else { 14.0 })).color(&INK);
            chart
                .draw_series(points.iter().filter(|p| p.3 == query).map(|(x, y, text, _)| {
                    EmptyElement::at((*x, *y))
                        + Circle::new((0, 0), radius, color.filled())
                        + Text::new(text.clone(), (radius + 3, -radius - 12), label_style.clone())
                }))
                .map_err(draw_err)?;
        }
        text.iter().try_for_each(|l| l.draw(root))
    })?;
    let description = "Queried tokens (orange) and their nearest neighbours by cosine similarity (blue), placed by \
                       the first two principal components of their embeddings."
        .to_string();
    canvas.into_picture("embeddings-pca.png".to_string(), title.to_string(), description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::fixture;

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
        let mut pixels = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        pixels.truncate(info.buffer_size());
        (info.width, info.height, pixels)
    }

    fn check(picture: &Picture) {
        let (w, h, pixels) = decode(&picture.png);
        assert_eq!((w, h), (picture.width, picture.height), "{}", picture.file_name);
        let dark = pixels.chunks_exact(3).filter(|p| p.iter().all(|&c| c < 80)).count();
        assert!(dark > 200, "{}: no text drawn", picture.file_name);
        if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
            std::fs::write(format!("/tmp/lushan-explain-{}", picture.file_name), &picture.png).unwrap();
        }
    }

    #[test]
    fn every_picture_decodes_with_its_declared_size() {
        let explanation = fixture::explanation("ROMEO: But soft, what light", 2, 3);
        let selection = HeadSelection::of_layer(1, None, 3);
        let pictures = draw_all(&explanation, &selection).unwrap();
        assert_eq!(pictures.all().len(), 1 + 1 + 3 + 1 + 1 + 1);
        for picture in pictures.all() {
            check(picture);
        }
    }

    #[test]
    fn pictures_cope_with_one_token_and_with_long_prompts() {
        for prompt in ["R".to_string(), "x".repeat(700)] {
            let explanation = fixture::explanation(&prompt, 1, 1);
            let pictures = draw_all(&explanation, &HeadSelection::of_layer(0, Some(0), 1)).unwrap();
            for picture in pictures.all() {
                let (w, h, _) = decode(&picture.png);
                assert_eq!((w, h), (picture.width, picture.height));
                assert!(w <= MAX_SIDE && h <= MAX_SIDE);
            }
        }
    }

    #[test]
    fn attention_peaks_survive_pooling() {
        // 2000 tokens on a 1600-pixel map: the diagonal peak must still be bright everywhere.
        let matrix: Vec<Vec<f32>> =
            (0..2000).map(|q| (0..2000).map(|k| f32::from(u8::from(k == q))).collect()).collect();
        let mut canvas = Canvas::new(100, 100).unwrap();
        let scale = probability_scale("p");
        canvas.heat_map(Rect { x: 0, y: 0, w: 100, h: 100 }, 2000, 2000, |q, k| attention_value(&matrix, q, k), &scale);
        let top = VIRIDIS.at(1.0);
        for i in 0..100usize {
            let p = (i * 100 + i) * 3;
            assert_eq!(canvas.pixels[p..p + 3], [top.0, top.1, top.2], "diagonal pixel {i}");
        }
    }

    #[test]
    fn a_missing_head_is_an_error_not_a_panic() {
        let explanation = fixture::explanation("abc", 1, 1);
        assert!(attention_head(&explanation, 3, 0).is_err());
    }

    #[test]
    fn scale_ticks_are_round() {
        assert_eq!(probability_scale("").ticks(), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let bits = Scale { map: &YELLOW_ORANGE_RED, min: 0.0, max: 7.0, caption: String::new() };
        assert_eq!(bits.ticks(), vec![0.0, 2.0, 4.0, 6.0]);
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(2.0), "2");
    }
}
