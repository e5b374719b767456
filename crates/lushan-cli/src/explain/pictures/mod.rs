//! The report's pictures as PNGs, one file per picture: attention heat maps (a grid of small multiples and
//! large per-head maps), the logit-lens heat map, the surprisal strip, the sampling bars and the embedding
//! scatter plot and the head-roles maps. They draw with the shared toolkit in `crate::draw`.

mod attention;
mod causal;
mod embeddings;
mod head_roles;
mod logit_lens;
mod sampling;
mod surprisal;

use anyhow::{Context, Result};
use lushan_model::inspect::Explanation;
use rayon::prelude::*;

use super::{HeadSelection, label};
pub use crate::draw::canvas::Picture;
use crate::draw::ensure_font;
pub use attention::{attention_grid, attention_head};
pub use causal::{ablation_map, attribution_map, patching_heads_map, patching_map};
pub use embeddings::embedding_scatter;
pub use head_roles::head_roles;
pub use logit_lens::logit_lens;
pub use sampling::{knob_summary, sampling_bars};
pub use surprisal::{surprisal_css, surprisal_strip};

/// Longest token label drawn on an axis, in characters.
const AXIS_LABEL_CHARS: usize = 12;

/// Every picture of one report.
#[derive(Debug, Clone)]
pub struct Pictures {
    pub surprisal: Picture,
    pub attention_grid: Picture,
    pub attention_heads: Vec<Picture>,
    pub logit_lens: Picture,
    pub sampling: Option<Picture>,
    pub embeddings: Option<Picture>,
    pub head_roles: Option<Picture>,
    /// Direct logit attribution, then the ablation maps (zero, mean), then the patching maps (residual
    /// stream, heads): each present when the explanation has the numbers.
    pub causal: Vec<Picture>,
}

impl Pictures {
    /// All pictures, in report order.
    pub fn all(&self) -> Vec<&Picture> {
        let mut all = vec![&self.surprisal, &self.attention_grid];
        all.extend(&self.attention_heads);
        all.push(&self.logit_lens);
        all.extend(&self.sampling);
        all.extend(&self.embeddings);
        all.extend(&self.head_roles);
        all.extend(&self.causal);
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
        head_roles: explanation.head_roles.as_ref().map(head_roles).transpose().context("drawing the head roles")?,
        causal: causal_pictures(explanation)?,
    })
}

/// The pictures of the causal views the explanation has, in report order.
fn causal_pictures(explanation: &Explanation) -> Result<Vec<Picture>> {
    let mut pictures = Vec::new();
    if let Some(attribution) = &explanation.attribution {
        pictures.push(attribution_map(explanation, attribution).context("drawing the attribution map")?);
    }
    if let Some(ablation) = &explanation.ablation {
        pictures.push(ablation_map(explanation, ablation, false).context("drawing the zero-ablation map")?);
        if ablation.mean.is_some() {
            pictures.push(ablation_map(explanation, ablation, true).context("drawing the mean-ablation map")?);
        }
    }
    if let Some(patching) = &explanation.patching {
        pictures.push(patching_map(explanation, patching).context("drawing the patching map")?);
        pictures.push(patching_heads_map(patching).context("drawing the head-patching map")?);
    }
    Ok(pictures)
}

pub(crate) fn token_labels(explanation: &Explanation) -> Vec<String> {
    explanation.tokens.iter().map(|t| label(&t.text, AXIS_LABEL_CHARS)).collect()
}

#[cfg(test)]
mod tests {
    use super::attention::attention_value;
    use super::*;
    use crate::draw::canvas::{Canvas, MAX_SIDE, Rect};
    use crate::draw::{Scale, VIRIDIS, YELLOW_ORANGE_RED, format_tick, probability_scale};
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
        // surprisal, grid, 3 heads, lens, sampling, PCA, head roles, attribution, zero + mean ablation, 2 patching
        // maps.
        assert_eq!(pictures.all().len(), 1 + 1 + 3 + 1 + 1 + 1 + 1 + 1 + 2 + 2);
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
