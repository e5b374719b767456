//! The output layer after the final layer norm (DESIGN.md §12): the tied language-model head or the
//! sequence-classification score head, forward and backward.
//!
//! - Language model: `logits = lnf · wteᵀ` per position. With targets of which some are ignored (the prompt
//!   tokens of a fine-tuning example, padding), only the counted rows are projected onto the vocabulary —
//!   the masked half of an SFT batch never pays for the largest product of the model.
//! - Classifier (`GPT2ForSequenceClassification`): each sequence is pooled at its last token that is not
//!   `pad_token_id` (Hugging Face's rule: the rightmost non-padding position, 0 when the row is all
//!   padding), then `logits = pooled · scoreᵀ` (no bias) and the loss is the mean cross-entropy over
//!   sequences.

use lushan_kernels::crossentropy::{self, IGNORE_INDEX};
use lushan_kernels::matmul;

/// Rows of `targets` that count (not [`IGNORE_INDEX`]); `None` when all of them do.
pub(crate) fn counted_rows(targets: &[u32]) -> Option<Vec<usize>> {
    if targets.iter().all(|&t| t != IGNORE_INDEX) {
        return None;
    }
    Some(targets.iter().enumerate().filter(|&(_, &t)| t != IGNORE_INDEX).map(|(i, _)| i).collect())
}

/// The position each sequence is pooled at: its last token that is not `pad` (0 if there is none).
///
/// # Shapes
/// `inputs`: (B, T); `pooled`: (B).
pub(crate) fn pool_positions(pooled: &mut [usize], inputs: &[u32], t: usize, pad: u32) {
    for (p, row) in pooled.iter_mut().zip(inputs.chunks_exact(t)) {
        *p = row.iter().rposition(|&tok| tok != pad).unwrap_or(0);
    }
}

/// Copies rows `rows` of `src` (row width `c`) into consecutive rows of `dst`.
pub(crate) fn gather_rows(dst: &mut [f32], src: &[f32], rows: impl Iterator<Item = usize>, c: usize) {
    for (out, r) in dst.chunks_exact_mut(c).zip(rows) {
        out.copy_from_slice(&src[r * c..(r + 1) * c]);
    }
}

/// Backward of [`gather_rows`], **accumulating**: row `k` of `dsrc_rows` is added to row `rows[k]` of `dst`.
pub(crate) fn scatter_add_rows(dst: &mut [f32], dsrc_rows: &[f32], rows: impl Iterator<Item = usize>, c: usize) {
    for (g, r) in dsrc_rows.chunks_exact(c).zip(rows) {
        for (d, &x) in dst[r * c..(r + 1) * c].iter_mut().zip(g) {
            *d += x;
        }
    }
}

/// Cross-entropy of `logits` (rows × `width`) against `targets`, written per row into `losses`; returns the
/// mean over counted rows (0 when none counts).
pub(crate) fn loss(losses: &mut [f32], probs: &mut [f32], logits: &[f32], targets: &[u32], width: usize) -> f32 {
    crossentropy::forward(losses, probs, logits, targets, width);
    let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    if counted == 0 { 0.0 } else { (total / counted as f64) as f32 }
}

/// Backward of the mean loss through the head's projection `logits = inp · Wᵀ`: fills `dlogits`, then
/// **accumulates** `dinp += dlogits·W` and, when given, `dweight += dlogitsᵀ·inp`.
///
/// # Shapes
/// `dlogits`, `probs`: (rows, width); `dlosses`, `targets`: (rows); `dinp`, `inp`: (rows, C);
/// `weight`, `dweight`: (width, C).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dlogits: &mut [f32],
    dlosses: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    inp: &[f32],
    weight: &[f32],
    loss_scale: f32,
    c: usize,
    width: usize,
) {
    let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count().max(1);
    dlosses.fill(loss_scale / counted as f32);
    // loss = mean crossentropy(logits, targets)
    dlogits.fill(0.0);
    crossentropy::backward(dlogits, dlosses, probs, targets, width);
    // logits = inp · Wᵀ
    match dweight {
        Some(dweight) => matmul::backward(Some(dinp), dweight, None, dlogits, inp, weight, c, width),
        None => matmul::backward_input(dinp, dlogits, weight, c, width),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_transformers_last_non_pad_rule() {
        let inputs = [5, 6, 9, 9, /**/ 9, 9, 9, 9, /**/ 1, 9, 2, 9, /**/ 1, 2, 3, 4];
        let mut pooled = [0; 4];
        pool_positions(&mut pooled, &inputs, 4, 9);
        // All padding → 0 (argmax of an all-zero mask); a pad token inside the text does not end it.
        assert_eq!(pooled, [1, 0, 2, 3]);
    }

    #[test]
    fn gather_and_scatter_are_adjoint() {
        let src: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut dst = vec![0.0; 4];
        gather_rows(&mut dst, &src, [2, 0].into_iter(), 2);
        assert_eq!(dst, [4.0, 5.0, 0.0, 1.0]);
        let mut back = vec![1.0; 12];
        scatter_add_rows(&mut back, &dst, [2, 0].into_iter(), 2);
        assert_eq!(&back[..6], &[1.0, 2.0, 1.0, 1.0, 5.0, 6.0]);
        assert_eq!(counted_rows(&[1, IGNORE_INDEX, 3]), Some(vec![0, 2]));
        assert_eq!(counted_rows(&[1, 2]), None);
    }
}
