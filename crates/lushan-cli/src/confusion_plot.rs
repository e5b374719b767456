//! The confusion matrix of a classification eval as a PNG heat map: gold classes on rows, predicted classes on
//! columns, the count written in every cell, and each cell coloured by its share of the gold row (so a class
//! with few examples is as readable as a big one). Drawn with the shared toolkit in `crate::draw`.

use anyhow::bail;
use lushan_train::task_metrics::ClassificationReport;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::draw::{
    BLUES, FONT_FAMILY, GREY_INK, INK, LIGHT_GREY as GRID, draw_err, encode_png, ensure_font, text_width,
};

/// Most classes drawn; beyond this the cells would be too small to read.
pub const MAX_CLASSES: usize = 200;
/// Longest label drawn, in characters (longer ones end in "…").
const LABEL_CHARS: usize = 24;
/// Longest title drawn, in characters.
const TITLE_CHARS: usize = 120;

const TITLE_SIZE: f64 = 18.0;
const NOTE_SIZE: f64 = 12.0;
const LABEL_SIZE: f64 = 13.0;
const PAD: u32 = 16;
const COLORBAR_WIDTH: u32 = 14;

fn style(size: f64, color: &'static RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, size).into_font()).color(color).pos(Pos::new(h, v))
}

/// A label fit for an axis: control characters blanked, at most [`LABEL_CHARS`] characters.
fn axis_label(label: &str) -> String {
    let clean: String = label.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.chars().count() <= LABEL_CHARS {
        clean
    } else {
        clean.chars().take(LABEL_CHARS - 1).chain(std::iter::once('…')).collect()
    }
}

/// Where everything goes, in pixels.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    width: u32,
    height: u32,
    /// Top-left corner of the grid and the side of one cell.
    grid_x: u32,
    grid_y: u32,
    cell: u32,
    /// Column labels run upwards (rotated) when they are wider than a cell.
    rotate_columns: bool,
    count_size: f64,
}

fn layout(labels: &[String], title: &str) -> Layout {
    let k = labels.len() as u32;
    let cell = (640 / k.max(1)).clamp(18, 72);
    let widest = labels.iter().map(|l| text_width(l, LABEL_SIZE)).max().unwrap_or(0);
    let rotate_columns = widest + 6 > cell;
    let column_labels = if rotate_columns { widest + 8 } else { LABEL_SIZE as u32 + 8 };
    let axis_title = LABEL_SIZE as u32 + 8;
    let heading = PAD + TITLE_SIZE as u32 + 8 + NOTE_SIZE as u32 + 14;
    let grid_x = PAD + axis_title + widest + 8;
    let grid_y = heading;
    let side = k * cell;
    let colorbar = 20 + COLORBAR_WIDTH + 6 + text_width("100%", LABEL_SIZE);
    let heading_width = text_width(title, TITLE_SIZE).max(text_width(NOTE, NOTE_SIZE)) + 2 * PAD;
    let width = (grid_x + side + colorbar + PAD).max(heading_width);
    let height = grid_y + side.max(60) + 6 + column_labels + axis_title + PAD;
    Layout {
        width,
        height,
        grid_x,
        grid_y,
        cell,
        rotate_columns,
        count_size: (f64::from(cell) * 0.32).clamp(8.0, 15.0),
    }
}

const NOTE: &str = "rows: gold class, columns: predicted class; colour: share of the gold row";

/// Renders `report`'s confusion matrix as an RGB PNG and returns the encoded bytes.
///
/// The picture is sized to fit the classes (cells of 18 to 72 pixels) and the labels; counts are written in
/// every cell wide enough for them. Fails for more than [`MAX_CLASSES`] classes.
pub fn render_confusion_png(report: &ClassificationReport, title: &str) -> anyhow::Result<Vec<u8>> {
    let k = report.classes.len();
    if k > MAX_CLASSES {
        bail!("cannot draw a confusion matrix of {k} classes (at most {MAX_CLASSES})");
    }
    ensure_font()?;
    let labels: Vec<String> = report.labels().map(axis_label).collect();
    let title: String = title.chars().take(TITLE_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    let title = if title.trim().is_empty() { "confusion matrix".to_string() } else { title };
    let lay = layout(&labels, &title);
    let mut buf = vec![0u8; lay.width as usize * lay.height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (lay.width, lay.height)).into_drawing_area();
        draw(&root, report, &labels, &title, &lay)?;
        root.present().map_err(draw_err("the confusion matrix"))?;
    }
    encode_png(&buf, lay.width, lay.height)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws the heading, the cells with their counts, the labels and the colour bar.
fn draw(
    root: &Area,
    report: &ClassificationReport,
    labels: &[String],
    title: &str,
    lay: &Layout,
) -> anyhow::Result<()> {
    let k = labels.len();
    let (gx, gy, c) = (lay.grid_x as i32, lay.grid_y as i32, lay.cell as i32);
    let side = k as i32 * c;
    root.fill(&WHITE).map_err(draw_err("the confusion matrix"))?;
    let text =
        |s: &str, at: (i32, i32), st: &TextStyle| root.draw_text(s, st, at).map_err(draw_err("the confusion matrix"));

    text(title, (PAD as i32, PAD as i32), &style(TITLE_SIZE, &INK, HPos::Left, VPos::Top))?;
    let note_y = (PAD + TITLE_SIZE as u32 + 8) as i32;
    text(NOTE, (PAD as i32, note_y), &style(NOTE_SIZE, &GREY_INK, HPos::Left, VPos::Top))?;

    if k == 0 {
        text("(no classes)", (gx, gy), &style(LABEL_SIZE, &GREY_INK, HPos::Left, VPos::Top))?;
        root.present().map_err(draw_err("the confusion matrix"))?;
        return Ok(());
    }

    // Cells, coloured by their share of the gold row, with the count on top.
    for g in 0..k {
        let row_total: u64 = (0..k).map(|p| report.count(g, p)).sum();
        for p in 0..k {
            let count = report.count(g, p);
            let share = if row_total == 0 { 0.0 } else { count as f64 / row_total as f64 };
            let (x, y) = (gx + p as i32 * c, gy + g as i32 * c);
            root.draw(&Rectangle::new([(x, y), (x + c, y + c)], BLUES.at(share as f32).filled()))
                .map_err(draw_err("the confusion matrix"))?;
            let label = count.to_string();
            if text_width(&label, lay.count_size) + 4 <= lay.cell {
                let ink = if share > 0.55 { &WHITE } else { &INK };
                text(&label, (x + c / 2, y + c / 2), &style(lay.count_size, ink, HPos::Center, VPos::Center))?;
            }
        }
    }
    for i in 0..=k as i32 {
        let at = i * c;
        root.draw(&PathElement::new([(gx, gy + at), (gx + side, gy + at)], GRID))
            .map_err(draw_err("the confusion matrix"))?;
        root.draw(&PathElement::new([(gx + at, gy), (gx + at, gy + side)], GRID))
            .map_err(draw_err("the confusion matrix"))?;
    }

    // Row labels (gold) on the left, column labels (predicted) below, axis titles outside them.
    let row_style = style(LABEL_SIZE, &INK, HPos::Right, VPos::Center);
    for (i, label) in labels.iter().enumerate() {
        text(label, (gx - 8, gy + i as i32 * c + c / 2), &row_style)?;
    }
    let below = gy + side + 6;
    let column_style = if lay.rotate_columns {
        style(LABEL_SIZE, &INK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270)
    } else {
        style(LABEL_SIZE, &INK, HPos::Center, VPos::Top)
    };
    let mut lowest = below + LABEL_SIZE as i32;
    for (i, label) in labels.iter().enumerate() {
        text(label, (gx + i as i32 * c + c / 2, below), &column_style)?;
        if lay.rotate_columns {
            lowest = lowest.max(below + text_width(label, LABEL_SIZE) as i32);
        }
    }
    let axis_style = style(LABEL_SIZE, &GREY_INK, HPos::Center, VPos::Top);
    text("predicted", (gx + side / 2, lowest + 6), &axis_style)?;
    let gold_style = style(LABEL_SIZE, &GREY_INK, HPos::Center, VPos::Top).transform(FontTransform::Rotate270);
    text("gold", (PAD as i32, gy + side / 2), &gold_style)?;

    // Colour bar: 0% at the bottom, 100% at the top.
    let bar_x = gx + side + 20;
    let bar_h = side.max(60);
    for row in 0..bar_h {
        let share = 1.0 - f64::from(row) / f64::from((bar_h - 1).max(1));
        let y = gy + row;
        root.draw(&PathElement::new([(bar_x, y), (bar_x + COLORBAR_WIDTH as i32 - 1, y)], BLUES.at(share as f32)))
            .map_err(draw_err("the confusion matrix"))?;
    }
    root.draw(&Rectangle::new([(bar_x, gy), (bar_x + COLORBAR_WIDTH as i32, gy + bar_h)], GRID))
        .map_err(draw_err("the confusion matrix"))?;
    let tick_style = style(LABEL_SIZE, &GREY_INK, HPos::Left, VPos::Center);
    text("100%", (bar_x + COLORBAR_WIDTH as i32 + 6, gy + 6), &tick_style)?;
    text("0%", (bar_x + COLORBAR_WIDTH as i32 + 6, gy + bar_h - 6), &tick_style)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    /// Decodes an 8-bit RGB PNG into (width, height, pixels).
    fn decode(bytes: &[u8]) -> anyhow::Result<(u32, u32, Vec<u8>)> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
        let mut pixels = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels)?;
        anyhow::ensure!(info.color_type == png::ColorType::Rgb && info.bit_depth == png::BitDepth::Eight);
        pixels.truncate(info.buffer_size());
        Ok((info.width, info.height, pixels))
    }

    fn pixel(pixels: &[u8], width: u32, x: u32, y: u32) -> RGBColor {
        let i = (y as usize * width as usize + x as usize) * 3;
        RGBColor(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn confusion_png_is_sized_labelled_and_coloured_by_row_share() -> anyhow::Result<()> {
        let names = labels(&["négatif", "positif", "neutral"]);
        // Rows: négatif 3/4 right, positif 2/2 right, neutral never right and never predicted.
        let report =
            ClassificationReport::from_predictions(&names, &[0, 0, 0, 0, 1, 1, 2, 2, 2], &[0, 0, 0, 1, 1, 1, 0, 1, 1]);
        let bytes = render_confusion_png(&report, "sentiment: confusion on the test split")?;
        assert!(bytes.starts_with(&PNG_SIGNATURE));
        if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
            std::fs::write("/tmp/lushan_confusion_test.png", &bytes)?;
        }

        let (w, h, pixels) = decode(&bytes)?;
        let lay = layout(&names, "sentiment: confusion on the test split");
        assert_eq!((w, h), (lay.width, lay.height));
        assert!(w >= 3 * lay.cell && h >= 3 * lay.cell, "{w}x{h}");
        let first = &pixels[..3];
        assert!(pixels.chunks_exact(3).any(|p| p != first), "image is a single colour");

        // Sample each cell near its top-left corner (away from the count text and the grid lines).
        let cell_colour =
            |g: u32, p: u32| pixel(&pixels, w, lay.grid_x + p * lay.cell + 3, lay.grid_y + g * lay.cell + 3);
        assert_eq!(cell_colour(0, 0), BLUES.at(0.75));
        assert_eq!(cell_colour(0, 1), BLUES.at(0.25));
        assert_eq!(cell_colour(1, 1), BLUES.at(1.0));
        assert_eq!(cell_colour(1, 0), BLUES.at(0.0));
        assert_eq!(cell_colour(2, 1), BLUES.at(2.0 / 3.0));
        assert_eq!(BLUES.at(1.0), RGBColor(8, 48, 107));
        assert_eq!(BLUES.at(0.0), RGBColor(247, 251, 255));

        // Counts: white text on the dark full cell, dark text on a pale one.
        let cell_pixels = |g: u32, p: u32, pred: &dyn Fn(RGBColor) -> bool| {
            let (x0, y0) = (lay.grid_x + p * lay.cell, lay.grid_y + g * lay.cell);
            (y0 + 2..y0 + lay.cell - 2)
                .flat_map(|y| (x0 + 2..x0 + lay.cell - 2).map(move |x| (x, y)))
                .filter(|&(x, y)| pred(pixel(&pixels, w, x, y)))
                .count()
        };
        assert!(cell_pixels(1, 1, &|RGBColor(r, g, b)| r > 200 && g > 200 && b > 200) > 10, "no white count");
        assert!(cell_pixels(1, 0, &|RGBColor(r, g, b)| r < 120 && g < 120 && b < 120) > 10, "no dark count");

        // The title and the row labels left of the grid are drawn with the font.
        let dark = |RGBColor(r, g, b): RGBColor| r < 100 && g < 100 && b < 100;
        let title_dark = (0..PAD + TITLE_SIZE as u32).flat_map(|y| (0..w).map(move |x| (x, y)));
        assert!(title_dark.filter(|&(x, y)| dark(pixel(&pixels, w, x, y))).count() > 50, "no title text");
        let left_of_grid = (lay.grid_y..lay.grid_y + 3 * lay.cell).flat_map(|y| (0..lay.grid_x).map(move |x| (x, y)));
        assert!(left_of_grid.filter(|&(x, y)| dark(pixel(&pixels, w, x, y))).count() > 50, "no row labels");
        Ok(())
    }

    #[test]
    fn confusion_png_handles_degenerate_reports() -> anyhow::Result<()> {
        let long = "a very long label name that will not fit under one cell\nwith a newline";
        let cases = [
            ClassificationReport::from_predictions(&[], &[], &[]),
            ClassificationReport::from_predictions(&labels(&["only"]), &[0], &[0]),
            ClassificationReport::from_predictions(&labels(&[long, "b"]), &[0, 1, 9], &[1, 1, 0]),
            ClassificationReport::from_predictions(&labels(&["x", "y"]), &[], &[]),
        ];
        for (i, report) in cases.iter().enumerate() {
            let bytes = render_confusion_png(report, "")?;
            if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
                std::fs::write(format!("/tmp/lushan_confusion_degenerate_{i}.png"), &bytes)?;
            }
            let (w, h, _) = decode(&bytes)?;
            let names: Vec<String> = report.labels().map(axis_label).collect();
            let lay = layout(&names, "confusion matrix");
            assert_eq!((w, h), (lay.width, lay.height));
        }
        // Many classes: small cells, no counts written, still drawn.
        let many: Vec<String> = (0..MAX_CLASSES).map(|i| format!("class {i}")).collect();
        let ids: Vec<u32> = (0..MAX_CLASSES as u32).collect();
        let report = ClassificationReport::from_predictions(&many, &ids, &ids);
        let bytes = render_confusion_png(&report, "many")?;
        if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
            std::fs::write("/tmp/lushan_confusion_many.png", &bytes)?;
        }
        let (w, h, _) = decode(&bytes)?;
        assert!(w > MAX_CLASSES as u32 * 18 && h > MAX_CLASSES as u32 * 18);
        // Too many classes is an error, not a giant picture.
        let too_many: Vec<String> = (0..=MAX_CLASSES).map(|i| i.to_string()).collect();
        let report = ClassificationReport::from_predictions(&too_many, &[], &[]);
        assert!(render_confusion_png(&report, "too many").is_err());
        Ok(())
    }

    #[test]
    fn axis_labels_are_cleaned_and_shortened() {
        assert_eq!(axis_label("a\nb"), "a b");
        assert_eq!(axis_label("short"), "short");
        let long = axis_label(&"é".repeat(40));
        assert_eq!(long.chars().count(), LABEL_CHARS);
        assert!(long.ends_with('…'));
    }
}
