//! Loss-curve rendering: draws train/validation loss against step into a PNG, with the shared drawing
//! toolkit's font and palette (`crate::draw`).

use anyhow::bail;
use plotters::prelude::*;

use crate::draw::{BLUE, FONT_FAMILY, GREEN, ORANGE, draw_err, ensure_font};

/// Smallest accepted image size; below this the axes and labels do not fit.
pub const MIN_SIZE: (u32, u32) = (160, 120);
/// Largest accepted image side.
pub const MAX_SIDE: u32 = 8192;

/// Colours of the training curve, the validation curve and a classifier's accuracy.
const TRAIN_COLOR: RGBColor = BLUE;
const VAL_COLOR: RGBColor = ORANGE;
const ACCURACY_COLOR: RGBColor = GREEN;
/// The strongest induction head's score: purple, apart from the other three.
const INDUCTION_COLOR: RGBColor = RGBColor(148, 103, 189);

/// Train and validation losses to draw. Each point is `(step, value)`;
/// non-finite values are skipped, points need not be sorted.
pub struct LossCurves<'a> {
    pub train: &'a [(u64, f32)],
    pub val: &'a [(u64, f32)],
    /// A classifier's validation accuracy (0–1), drawn on the same axis; empty for other runs.
    pub accuracy: &'a [(u64, f32)],
    /// The strongest induction head's score (0–1) at each evaluation, drawn on the same axis; may be empty.
    pub induction: &'a [(u64, f32)],
    pub title: &'a str,
}

/// Finite points sorted by step.
fn clean(points: &[(u64, f32)]) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> =
        points.iter().filter(|(_, v)| v.is_finite()).map(|&(s, v)| (s, f64::from(v))).collect();
    out.sort_by_key(|&(s, _)| s);
    out
}

/// Axis ranges covering all points, never empty or degenerate.
fn ranges(series: &[&[(u64, f64)]]) -> (std::ops::Range<u64>, std::ops::Range<f64>) {
    let all = || series.iter().flat_map(|s| s.iter());
    let (x_lo, x_hi) = all().fold((u64::MAX, 0u64), |(lo, hi), &(s, _)| (lo.min(s), hi.max(s)));
    let (y_lo, y_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| (lo.min(v), hi.max(v)));
    if x_lo > x_hi {
        // No points at all.
        return (0..1, 0.0..1.0);
    }
    let (x_lo, x_hi) = if x_lo == x_hi { (x_lo.saturating_sub(1), x_hi.saturating_add(1)) } else { (x_lo, x_hi) };
    let span = y_hi - y_lo;
    let pad = if span > 0.0 { span * 0.05 } else { (y_hi.abs() * 0.05).max(0.05) };
    (x_lo..x_hi, (y_lo - pad)..(y_hi + pad))
}

/// How y tick labels are written, chosen once per chart from the y range.
#[derive(Clone, Copy, Debug, PartialEq)]
enum YFormat {
    /// Fixed-point with this many decimals.
    Fixed(usize),
    /// Scientific notation with this many mantissa decimals.
    Sci(usize),
}

impl YFormat {
    fn for_range(range: &std::ops::Range<f64>) -> Self {
        let span = range.end - range.start;
        let step = span / 10.0;
        let magnitude = range.start.abs().max(range.end.abs());
        if !(step.is_finite() && step > 0.0) {
            return YFormat::Sci(2);
        }
        if !(1e-3..1e5).contains(&magnitude) || step < 1e-4 {
            // Enough mantissa digits to tell ticks apart, within reason.
            let digits = (magnitude / step).log10().ceil().clamp(1.0, 6.0) as usize;
            YFormat::Sci(digits)
        } else {
            YFormat::Fixed((-step.log10().floor()).clamp(0.0, 4.0) as usize)
        }
    }

    fn format(self, y: f64) -> String {
        match self {
            // Avoid "-0.00" for ticks that are zero up to rounding.
            YFormat::Fixed(d) => {
                let s = format!("{y:.d$}");
                if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') { s[1..].to_string() } else { s }
            }
            YFormat::Sci(d) => format!("{y:.d$e}"),
        }
    }
}

/// Step label: plain below 10 000, else with a k/M/G/T/P/E suffix ("12.5k", "3M").
fn format_step(step: u64) -> String {
    if step < 10_000 {
        return step.to_string();
    }
    const SUFFIXES: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    let mut value = step as f64;
    let mut suffix = "";
    for s in SUFFIXES {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        suffix = s;
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

/// Renders the curves as a `width` x `height` RGB PNG and returns the encoded bytes.
///
/// Train loss is a thin blue line, validation loss an orange line with point
/// markers; x is "step", y is "loss" (range from the finite data). Empty series
/// are left out; with no data at all an empty chart is drawn.
pub fn render_loss_curve_png(curves: &LossCurves, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
        bail!("plot size {width}x{height} out of range ({}x{} to {MAX_SIDE}x{MAX_SIDE})", MIN_SIZE.0, MIN_SIZE.1);
    }
    ensure_font()?;

    let train = clean(curves.train);
    let val = clean(curves.val);
    let accuracy = clean(curves.accuracy);
    let induction = clean(curves.induction);
    let (x_range, y_range) = ranges(&[&train, &val, &accuracy, &induction]);
    let y_format = YFormat::for_range(&y_range);
    // Ticks at zero can come out as tiny rounding residues (e.g. -1.4e14 on a 1e30 scale).
    let y_zero = (y_range.end - y_range.start) * 1e-9;
    let y_label_chars =
        [y_range.start, y_range.end].iter().map(|&y| y_format.format(y).chars().count()).max().unwrap_or(4);

    // Sizes scale with the image; `base` is the smaller side.
    let base = f64::from(width.min(height));
    let title_size = (base * 0.05).clamp(12.0, 36.0);
    let label_size = (base * 0.035).clamp(10.0, 24.0);
    let tick_size = (base * 0.03).clamp(9.0, 20.0);
    let margin = (base * 0.03).clamp(5.0, 30.0) as u32;
    let x_area = (label_size + tick_size * 1.8) as u32;
    let y_area = (label_size * 1.6 + tick_size * 0.6 * y_label_chars as f64) as u32;
    // Room for a label about every 6 (x) or 3 (y) tick-label heights.
    let x_labels = ((f64::from(width) / (tick_size * 6.0)) as usize).clamp(2, 10);
    let y_labels = ((f64::from(height) / (tick_size * 3.0)) as usize).clamp(2, 10);
    let train_width = ((base / 600.0).round() as u32).max(1);
    let val_width = train_width + 1;
    let marker = (base / 150.0).round().max(3.0) as u32;

    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err("the loss curve"))?;

        let mut chart = ChartBuilder::on(&root)
            .margin(margin)
            .caption(curves.title, (FONT_FAMILY, title_size))
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d(x_range, y_range)
            .map_err(draw_err("the loss curve"))?;

        let x_fmt = |x: &u64| format_step(*x);
        let y_fmt = |y: &f64| y_format.format(if y.abs() < y_zero { 0.0 } else { *y });
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(match (accuracy.is_empty(), induction.is_empty()) {
                (true, true) => "loss",
                (false, true) => "loss / accuracy",
                _ => "loss / score",
            })
            .axis_desc_style((FONT_FAMILY, label_size))
            .label_style((FONT_FAMILY, tick_size))
            .x_labels(x_labels)
            .y_labels(y_labels)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .bold_line_style(BLACK.mix(0.15))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(draw_err("the loss curve"))?;

        let mut any = false;
        if !train.is_empty() {
            any = true;
            chart
                .draw_series(LineSeries::new(train.iter().copied(), TRAIN_COLOR.stroke_width(train_width)))
                .map_err(draw_err("the loss curve"))?
                .label("train")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN_COLOR.stroke_width(train_width)));
            if let [only] = train[..] {
                // A one-point line is invisible; mark the point.
                chart
                    .draw_series(std::iter::once(Circle::new(only, marker.div_ceil(2).max(2), TRAIN_COLOR.filled())))
                    .map_err(draw_err("the loss curve"))?;
            }
        }
        if !val.is_empty() {
            any = true;
            chart
                .draw_series(LineSeries::new(val.iter().copied(), VAL_COLOR.stroke_width(val_width)))
                .map_err(draw_err("the loss curve"))?;
            chart
                .draw_series(val.iter().map(|&p| Circle::new(p, marker, VAL_COLOR.filled())))
                .map_err(draw_err("the loss curve"))?
                .label("validation")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (20, 0)], VAL_COLOR.stroke_width(val_width))
                        + Circle::new((10, 0), marker, VAL_COLOR.filled())
                });
        }
        if !accuracy.is_empty() {
            any = true;
            chart
                .draw_series(LineSeries::new(accuracy.iter().copied(), ACCURACY_COLOR.stroke_width(val_width)))
                .map_err(draw_err("the loss curve"))?;
            chart
                .draw_series(accuracy.iter().map(|&p| TriangleMarker::new(p, marker, ACCURACY_COLOR.filled())))
                .map_err(draw_err("the loss curve"))?
                .label("validation accuracy")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (20, 0)], ACCURACY_COLOR.stroke_width(val_width))
                        + TriangleMarker::new((10, 0), marker, ACCURACY_COLOR.filled())
                });
        }
        if !induction.is_empty() {
            any = true;
            chart
                .draw_series(LineSeries::new(induction.iter().copied(), INDUCTION_COLOR.stroke_width(val_width)))
                .map_err(draw_err("the loss curve"))?;
            chart
                .draw_series(induction.iter().map(|&p| Cross::new(p, marker, INDUCTION_COLOR.stroke_width(2))))
                .map_err(draw_err("the loss curve"))?
                .label("strongest induction head score")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (20, 0)], INDUCTION_COLOR.stroke_width(val_width))
                        + Cross::new((10, 0), marker, INDUCTION_COLOR.stroke_width(2))
                });
        }
        if any {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT_FAMILY, tick_size))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()
                .map_err(draw_err("the loss curve"))?;
        }
        root.present().map_err(draw_err("the loss curve"))?;
    }

    crate::draw::encode_png(&buf, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    /// Decodes an 8-bit RGB PNG into (width, height, pixels).
    fn decode(bytes: &[u8]) -> anyhow::Result<(u32, u32, Vec<u8>)> {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info()?;
        let mut pixels = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels)?;
        anyhow::ensure!(info.color_type == png::ColorType::Rgb, "not RGB");
        anyhow::ensure!(info.bit_depth == png::BitDepth::Eight, "not 8-bit");
        pixels.truncate(info.buffer_size());
        Ok((info.width, info.height, pixels))
    }

    fn count(pixels: &[u8], pred: impl Fn(u8, u8, u8) -> bool) -> usize {
        pixels.chunks_exact(3).filter(|p| pred(p[0], p[1], p[2])).count()
    }

    fn is_train_blue(r: u8, g: u8, b: u8) -> bool {
        b > 150 && r < 80 && g < 150 && b > g + 30
    }

    fn is_val_orange(r: u8, g: u8, b: u8) -> bool {
        r > 220 && (100..170).contains(&g) && b < 60
    }

    #[test]
    fn plot_renders_train_and_val() -> anyhow::Result<()> {
        let train: Vec<(u64, f32)> =
            (0..100).map(|i| (i * 10, 8.0 * (-(i as f32) / 30.0).exp() + 2.5 + 0.1 * (i as f32).sin())).collect();
        let val: Vec<(u64, f32)> = (0..5).map(|i| (i * 250, 8.0 * (-(i as f32) * 25.0 / 30.0).exp() + 2.7)).collect();
        let induction: Vec<(u64, f32)> = (0..5).map(|i| (i * 250, 0.1 + 0.2 * i as f32)).collect();
        let curves = LossCurves {
            train: &train,
            val: &val,
            accuracy: &[(0, 0.5), (10, 0.9)],
            induction: &induction,
            title: "lushan loss (test run)",
        };
        let (w, h) = (900, 540);
        let bytes = render_loss_curve_png(&curves, w, h)?;
        assert!(bytes.starts_with(&PNG_SIGNATURE));
        std::fs::write("/tmp/lushan_loss_test.png", &bytes)?;

        let (dw, dh, pixels) = decode(&bytes)?;
        assert_eq!((dw, dh), (w, h));
        let first = &pixels[..3];
        assert!(pixels.chunks_exact(3).any(|p| p != first), "image is a single colour");
        assert!(count(&pixels, is_train_blue) > 200, "no blue train line");
        assert!(count(&pixels, is_val_orange) > 100, "no orange val line");
        let is_induction_purple =
            |r: u8, g: u8, b: u8| r.abs_diff(148) < 20 && g.abs_diff(103) < 20 && b.abs_diff(189) < 20;
        assert!(count(&pixels, is_induction_purple) > 100, "no purple induction line");

        // The title (top rows) contains dark text pixels from the embedded font.
        let title_rows = &pixels[..(w as usize * 3 * (h as usize / 10))];
        assert!(count(title_rows, |r, g, b| r < 100 && g < 100 && b < 100) > 50);
        Ok(())
    }

    type Series = Vec<(u64, f32)>;

    #[test]
    fn plot_handles_degenerate_inputs() -> anyhow::Result<()> {
        let cases: Vec<(Series, Series)> = vec![
            (vec![], vec![]),
            (vec![(5, 3.0)], vec![]),
            (vec![], vec![(0, 4.0)]),
            (vec![(0, 0.0)], vec![(0, 0.0)]),
            (vec![(1, 2.0), (2, 2.0), (3, 2.0)], vec![(2, 2.0)]),
            (vec![(1, f32::NAN), (2, f32::INFINITY)], vec![(3, f32::NEG_INFINITY)]),
            (vec![(9, 1.0), (3, 5.0), (6, f32::NAN), (u64::MAX, 1e30)], vec![(u64::MAX, -1e30)]),
            (vec![(0, f32::MAX), (1, f32::MIN)], vec![]),
        ];
        for (train, val) in &cases {
            let curves = LossCurves { train, val, accuracy: &[], induction: &[], title: "" };
            let bytes = render_loss_curve_png(&curves, 320, 240)?;
            if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
                let n = train.len() * 10 + val.len();
                std::fs::write(format!("/tmp/lushan_loss_degenerate_{n}.png"), &bytes)?;
            }
            let (w, h, _) = decode(&bytes)?;
            assert_eq!((w, h), (320, 240));
        }
        Ok(())
    }

    #[test]
    fn plot_label_formats() {
        assert_eq!(format_step(0), "0");
        assert_eq!(format_step(9_999), "9999");
        assert_eq!(format_step(12_500), "12.5k");
        assert_eq!(format_step(3_000_000), "3M");
        assert_eq!(format_step(u64::MAX), "18.45E");
        assert_eq!(YFormat::for_range(&(2.5..11.0)), YFormat::Fixed(1));
        assert_eq!(YFormat::for_range(&(1.9..2.1)), YFormat::Fixed(2));
        assert_eq!(YFormat::Fixed(2).format(-0.001), "0.00");
        assert_eq!(YFormat::Fixed(1).format(3.25), "3.2");
        assert!(matches!(YFormat::for_range(&(-1e30..1e30)), YFormat::Sci(_)));
        assert_eq!(YFormat::Sci(2).format(1.5e30), "1.50e30");
    }

    #[test]
    fn plot_rejects_bad_sizes() {
        let curves = LossCurves { train: &[(0, 1.0)], val: &[], accuracy: &[], induction: &[], title: "t" };
        assert!(render_loss_curve_png(&curves, 0, 0).is_err());
        assert!(render_loss_curve_png(&curves, 10, 600).is_err());
        assert!(render_loss_curve_png(&curves, 100_000, 600).is_err());
        assert!(render_loss_curve_png(&curves, MIN_SIZE.0, MIN_SIZE.1).is_ok());
    }
}
