//! The drawing toolkit every picture lushan writes shares: the embedded font and text metrics, the palette,
//! colour maps and their legends' ticks, and (in [`canvas`]) an RGB canvas that heat maps are painted into
//! directly and that plotters then writes text on. The loss curve (`plot.rs`), the confusion matrix
//! (`confusion_plot.rs`) and the explain report's pictures (`explain/pictures/`) all draw with it.
//!
//! Text is rendered with an embedded DejaVu Sans (see `assets/`), registered with plotters' `ab_glyph`
//! backend, so no system fonts are needed.

pub(crate) mod canvas;

use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// The embedded font (DejaVu Sans, Bitstream Vera licence; see `assets/DejaVuSans-LICENSE.txt`).
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Font family name used for every piece of text. plotters' own defaults
/// (legend, tick labels) use "sans-serif" too, so the font is registered under it.
pub(crate) const FONT_FAMILY: &str = "sans-serif";

/// Registers the embedded font under [`FONT_FAMILY`] (once per process); every picture calls it first.
pub(crate) fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok { Ok(()) } else { bail!("the embedded DejaVu Sans font could not be loaded") }
}

/// Encodes an RGB buffer (`width × height × 3` bytes) as PNG: every picture lushan writes goes through here.
pub(crate) fn encode_png(rgb: &[u8], width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // The new encoder's default, the fast mode, leaves a big grid of flat cells megabytes large; `Best`
        // takes several times longer for a few percent less (a long prompt draws many big maps).
        encoder.set_compression(png::Compression::Default);
        let mut writer = encoder.write_header().context("encoding the PNG header")?;
        writer.write_image_data(rgb).context("encoding the PNG data")?;
        writer.finish().context("finishing the PNG")?;
    }
    Ok(png_bytes)
}

/// A plotters error as an error naming what was being drawn.
pub(crate) fn draw_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |e| anyhow!("drawing {what} failed: {e}")
}

/// The embedded font at `size` pixels.
pub(crate) fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT_FAMILY), size, FontStyle::Normal)
}

/// Width in pixels of `text` at `size` (an estimate when the font cannot say).
pub(crate) fn text_width(text: &str, size: f64) -> u32 {
    font(size).box_size(text).map(|(w, _)| w).unwrap_or_else(|_| (text.chars().count() as f64 * size * 0.62) as u32)
}

/// Width in pixels of the widest of `texts`.
pub(crate) fn widest(texts: impl IntoIterator<Item = impl AsRef<str>>, size: f64) -> u32 {
    texts.into_iter().map(|t| text_width(t.as_ref(), size)).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// Palette

/// Colour of text and lines.
pub(crate) const INK: RGBColor = RGBColor(34, 34, 34);
/// Colour of secondary text (subtitles, tick labels).
pub(crate) const GREY_INK: RGBColor = RGBColor(100, 100, 100);
/// Colour of the cells a causal mask hides (a key after the query).
pub(crate) const MASKED: RGBColor = RGBColor(246, 246, 246);
/// Tableau blue, orange and green (matplotlib's "tab:" colours): "what the model would do", "what
/// happened", and a third series.
pub(crate) const BLUE: RGBColor = RGBColor(31, 119, 180);
pub(crate) const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub(crate) const GREEN: RGBColor = RGBColor(44, 160, 44);
pub(crate) const LIGHT_GREY: RGBColor = RGBColor(200, 200, 200);

pub(crate) const TITLE_SIZE: f64 = 20.0;
pub(crate) const SUBTITLE_SIZE: f64 = 14.0;
pub(crate) const LABEL_SIZE: f64 = 13.0;

// ---------------------------------------------------------------------------------------------------------
// Colour scales

/// A sequential colour map: colours at evenly spaced stops, linearly interpolated.
pub(crate) struct Colormap(&'static [(u8, u8, u8)]);

/// matplotlib's viridis (perceptually uniform, readable in grey and by most colour-blind readers).
pub(crate) const VIRIDIS: Colormap = Colormap(&[
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
pub(crate) const YELLOW_ORANGE_RED: Colormap = Colormap(&[
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

/// ColorBrewer's Blues (matplotlib's "Blues", the usual confusion-matrix map): white to dark blue.
pub(crate) const BLUES: Colormap = Colormap(&[
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
]);

/// ColorBrewer's RdBu reversed, a diverging map: blue for negative, white for zero, red for positive (used
/// with a scale symmetric around zero).
pub(crate) const BLUE_WHITE_RED: Colormap = Colormap(&[
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
]);

impl Colormap {
    /// The colour at `t` in [0, 1] (clamped; NaN is 0).
    pub(crate) fn at(&self, t: f32) -> RGBColor {
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
pub(crate) struct Scale {
    pub(crate) map: &'static Colormap,
    pub(crate) min: f32,
    pub(crate) max: f32,
    pub(crate) caption: String,
}

impl Scale {
    pub(crate) fn color(&self, value: f32) -> RGBColor {
        self.map.at((value - self.min) / (self.max - self.min).max(f32::MIN_POSITIVE))
    }

    /// Round tick values covering the range (steps of 1, 2 or 5 times a power of ten; at most 6 ticks).
    pub(crate) fn ticks(&self) -> Vec<f32> {
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

pub(crate) fn probability_scale(caption: &str) -> Scale {
    Scale { map: &VIRIDIS, min: 0.0, max: 1.0, caption: caption.to_string() }
}

/// Black or white, whichever reads better on `background`.
pub(crate) fn text_color_on(background: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = background;
    let luma = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
    if luma > 140.0 { INK } else { WHITE }
}

/// A tick label with two decimals, never "-0.00".
pub(crate) fn axis_number(value: f64) -> String {
    let text = format!("{value:.2}");
    if text == "-0.00" { "0.00".to_string() } else { text }
}

pub(crate) fn format_tick(value: f32) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".to_string() } else { text.to_string() }
}
