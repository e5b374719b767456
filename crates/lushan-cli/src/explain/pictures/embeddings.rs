//! The embedding scatter plot: queried tokens and their neighbours on two principal components.

use anyhow::Result;
use lushan_model::inspect::EmbeddingView;
use plotters::prelude::*;

use crate::draw::canvas::{Canvas, LEFT, Label, Picture, heading};
use crate::draw::{BLUE, FONT_FAMILY, INK, LABEL_SIZE, ORANGE, SUBTITLE_SIZE, axis_number, draw_err, font, text_width};
use crate::explain::label;

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
            .map_err(draw_err("a picture"))?;
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
            .map_err(draw_err("a picture"))?;
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
                .map_err(draw_err("a picture"))?;
        }
        text.iter().try_for_each(|l| l.draw(root))
    })?;
    let description = "Queried tokens (orange) and their nearest neighbours by cosine similarity (blue), placed by \
                       the first two principal components of their embeddings."
        .to_string();
    canvas.into_picture("embeddings-pca.png".to_string(), title.to_string(), description)
}
