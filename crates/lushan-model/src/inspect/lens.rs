//! The logit lens: each intermediate residual stream read through the final layer norm and the tied output
//! layer, as if the blocks after it were skipped.
//!
//! Vocabulary-sized rows are computed a chunk of positions at a time into one reused buffer and reduced to
//! their top tokens at once: GPT-2 124M at 1024 tokens would otherwise need 13 × 1024 × 50257 floats.

use super::distribution::Distribution;
use super::predictions::PredictionNumbers;
use super::ranking::Ranked;
use super::text::TokenTextFn;
use super::{LensCell, LensLayer, LogitLens};
use crate::activations::Activations;
use crate::gpt::Gpt;
use lushan_kernels::{layernorm, matmul};
use rayon::prelude::*;

/// Positions whose logits are computed together: a matrix product over many rows is far faster than one
/// row at a time, and 64 rows of GPT-2 logits are 13 MB.
const CHUNK_POSITIONS: usize = 64;

/// One lens cell's numbers, before token texts are attached.
#[derive(Debug, Clone)]
pub(super) struct LensNumbers {
    pub top: Vec<Ranked>,
    pub final_token_prob: f64,
}

/// The lens of the embeddings and of every block but the last, one `Vec` per stream, one entry per
/// position. `final_top1[i]` is the model's own most likely token at position `i`.
///
/// The last block's stream is not recomputed: read through `ln_f` and `wte` it *is* the model's output,
/// which [`next_token_numbers`](super::predictions::next_token_numbers) already summarised.
pub(super) fn intermediate_lens(
    model: &Gpt,
    acts: &Activations,
    final_top1: &[u32],
    top_k: usize,
) -> Vec<Vec<LensNumbers>> {
    let cfg = &model.config;
    let (c, v, eps) = (cfg.n_embd, cfg.vocab_size, cfg.layer_norm_epsilon);
    let t = final_top1.len();
    let p = model.layout.split(&model.params);
    let streams =
        std::iter::once(&acts.encoded).chain(acts.layers.iter().map(|layer| &layer.residual3)).take(cfg.n_layer);
    let mut normed = vec![0.0f32; t * c];
    let (mut mean, mut rstd) = (vec![0.0f32; t], vec![0.0f32; t]);
    let mut logits = vec![0.0f32; CHUNK_POSITIONS.min(t) * v];
    streams
        .map(|stream| {
            layernorm::forward(&mut normed, &mut mean, &mut rstd, stream, p.lnf_w, p.lnf_b, c, eps);
            let mut cells = Vec::with_capacity(t);
            for (chunk, rows) in normed.chunks(CHUNK_POSITIONS * c).enumerate() {
                let positions = rows.len() / c;
                let chunk_logits = &mut logits[..positions * v];
                matmul::forward(chunk_logits, rows, p.wte, None, c, v);
                let first = chunk * CHUNK_POSITIONS;
                let targets = &final_top1[first..first + positions];
                cells.par_extend(chunk_logits.par_chunks_exact(v).zip(targets).map_init(
                    Distribution::default,
                    |distribution, (row, &target)| {
                        distribution.set_logits(row);
                        LensNumbers { top: distribution.top(top_k), final_token_prob: distribution.prob(target) }
                    },
                ));
            }
            cells
        })
        .collect()
}

/// The whole lens: the intermediate streams, then the model's output (the next-token predictions).
pub(super) fn logit_lens(
    intermediate: &[Vec<LensNumbers>],
    predictions: &[PredictionNumbers],
    token_text: TokenTextFn,
) -> LogitLens {
    let cell = |numbers: &LensNumbers| LensCell {
        top: numbers.top.iter().map(|ranked| ranked.candidate(token_text)).collect(),
        final_token_prob: numbers.final_token_prob as f32,
    };
    let mut layers: Vec<LensLayer> = intermediate
        .iter()
        .enumerate()
        .map(|(index, cells)| LensLayer { label: layer_label(index), positions: cells.iter().map(cell).collect() })
        .collect();
    let output = predictions
        .iter()
        .map(|prediction| LensCell {
            top: prediction.top.iter().map(|ranked| ranked.candidate(token_text)).collect(),
            final_token_prob: prediction.top1().map_or(0.0, |top1| top1.value as f32),
        })
        .collect();
    layers.push(LensLayer { label: layer_label(intermediate.len()), positions: output });
    LogitLens { layers }
}

/// `"embed"` for the embeddings, `"layer l"` (1-based) for the output of block `l`.
fn layer_label(index: usize) -> String {
    if index == 0 { "embed".to_string() } else { format!("layer {index}") }
}
