//! Which gradients the backward pass has finished, and when: data-parallel training starts summing a
//! bucket of gradients over the processes as soon as the backward pass will not touch it again (as
//! PyTorch's DDP does), so the communication proceeds while the earlier layers' backward still computes.
//!
//! [`crate::Gpt::backward_with`] calls its hook once per bucket, in this order:
//!
//! 1. the head: `score` (classifiers), `lnf_w`, `lnf_b` — final once the final layer norm's backward ran;
//! 2. layer `n_layer − 1`, then `n_layer − 2`, …, layer 0: its 12 tensors, final at the end of its backward;
//! 3. the embeddings `wte`, `wpe` — last, as the tied `wte` also receives the head's gradient.
//!
//! Parameters are stored kind by kind across layers (llm.c's layout), so one layer's bucket is 12
//! separate ranges of the gradient buffer. Empty tensors (a language model's `score`) are left out. A
//! model with LoRA adapters reports nothing during its backward: its buffer is the adapter's layout, one
//! bucket summed after the pass.

use crate::config::ModelConfig;
use crate::params::{ParamKind, ParamLayout, Tensors};
use std::ops::Range;

/// A piece of the gradient buffer whose values are final for this backward pass: `values` is
/// `grads[offset..offset + values.len()]`.
#[derive(Debug, Clone, Copy)]
pub struct GradSegment<'a> {
    pub offset: usize,
    pub values: &'a [f32],
}

/// The hook of [`crate::Gpt::backward_with`]: called with each bucket's segments once they are final.
pub type OnGradsFinal<'h> = &'h mut dyn FnMut(&[GradSegment<'_>]);

const HEAD: [ParamKind; 3] = [ParamKind::Score, ParamKind::LnfW, ParamKind::LnfB];
const EMBEDDINGS: [ParamKind; 2] = [ParamKind::Wte, ParamKind::Wpe];

/// The kinds of one transformer block, in storage order.
fn layer_kinds() -> impl Iterator<Item = ParamKind> {
    ParamKind::ALL.into_iter().filter(|k| k.per_layer())
}

/// The buckets the backward pass finishes, in order, each as (its kinds, the layer).
fn bucket_kinds(n_layer: usize) -> impl Iterator<Item = (Vec<ParamKind>, usize)> {
    std::iter::once((HEAD.to_vec(), 0))
        .chain((0..n_layer).rev().map(|l| (layer_kinds().collect(), l)))
        .chain(std::iter::once((EMBEDDINGS.to_vec(), 0)))
}

/// The ranges of the gradient buffer, bucket by bucket, in the order the backward pass of a model without
/// adapters finishes them (see the module's documentation). Together they cover the buffer exactly once.
pub fn buckets(cfg: &ModelConfig, layout: &ParamLayout) -> Vec<Vec<Range<usize>>> {
    bucket_kinds(cfg.n_layer)
        .map(|(kinds, layer)| {
            kinds.into_iter().map(|k| layout.layer_range(k, layer)).filter(|r| !r.is_empty()).collect()
        })
        .collect()
}

/// The segments of one bucket — layer `layer`'s tensors of `kinds` — read from the gradient views `g`.
fn segments<'a, S: AsRef<[f32]>>(
    layout: &ParamLayout,
    g: &'a Tensors<S>,
    kinds: &[ParamKind],
    layer: usize,
) -> Vec<GradSegment<'a>> {
    kinds
        .iter()
        .map(|&k| GradSegment { offset: layout.layer_range(k, layer).start, values: g.layer_tensor(k, layer) })
        .filter(|s| !s.values.is_empty())
        .collect()
}

/// Hands the head's bucket to `on_final`.
pub(crate) fn head_done<S: AsRef<[f32]>>(layout: &ParamLayout, g: &Tensors<S>, on_final: OnGradsFinal<'_>) {
    on_final(&segments(layout, g, &HEAD, 0));
}

/// Hands layer `layer`'s bucket to `on_final`.
pub(crate) fn layer_done<S: AsRef<[f32]>>(
    layout: &ParamLayout,
    g: &Tensors<S>,
    layer: usize,
    on_final: OnGradsFinal<'_>,
) {
    let kinds: Vec<ParamKind> = layer_kinds().collect();
    on_final(&segments(layout, g, &kinds, layer));
}

/// Hands the embeddings' bucket to `on_final`.
pub(crate) fn embeddings_done<S: AsRef<[f32]>>(layout: &ParamLayout, g: &Tensors<S>, on_final: OnGradsFinal<'_>) {
    on_final(&segments(layout, g, &EMBEDDINGS, 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_buffer_once_head_first_layers_last_to_first() {
        let cfg = ModelConfig::new(11, 8, 3, 2, 8);
        let layout = ParamLayout::new(&cfg);
        let plan = buckets(&cfg, &layout);
        assert_eq!(plan.len(), 1 + 3 + 1);
        assert_eq!(plan[0], vec![layout.range(ParamKind::LnfW), layout.range(ParamKind::LnfB)]);
        assert_eq!(plan[1].len(), 12);
        assert_eq!(plan[1][0], layout.layer_range(ParamKind::Ln1W, 2));
        assert_eq!(plan[3][11], layout.layer_range(ParamKind::FcProjB, 0));
        let mut all: Vec<Range<usize>> = plan.into_iter().flatten().collect();
        all.sort_by_key(|r| r.start);
        let mut end = 0;
        for r in all {
            assert_eq!(r.start, end, "ranges must tile the buffer");
            end = r.end;
        }
        assert_eq!(end, layout.total());
    }
}
