//! Inference with a classifier head (`GPT2ForSequenceClassification`): token sequences in, per-label scores
//! out, for `lushan classify` and the server's `/classify`.
//!
//! Sequences are sorted by length and run in batches of at most [`MAX_BATCH_ROWS`] rows, each batch padded at
//! the right with the model's `pad_token_id` only up to its own longest row (the head pools each row at its
//! last token that is not padding, so padding never changes a row's result). Longer sequences than the
//! context keep their first `block_size` tokens (Hugging Face's right-side truncation); the result says how
//! many were cut.

use crate::activations::Activations;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, Mode};

/// Most sequences run in one forward pass.
pub const MAX_BATCH_ROWS: usize = 16;

/// Activation floats one batch may hold (about 1 GiB): long sequences run in fewer rows per batch, so a
/// batch of sixteen full GPT-2 contexts (whose attention maps alone are 10 GB) is never allocated.
const ACTIVATION_BUDGET: usize = 1 << 28;

/// The head's output for each sequence, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// Raw scores, (sequences, labels): the head's logits.
    pub logits: Vec<Vec<f32>>,
    /// `softmax(logits)` per sequence; each row sums to 1.
    pub probabilities: Vec<Vec<f32>>,
    /// How many sequences were longer than the context and lost their end.
    pub truncated: usize,
}

/// Classifies `sequences` with a classifier `model`: the logits and per-label probabilities of each, in
/// input order (labels in the order of `model.config.head`'s list).
///
/// Errors when the model has the language-model head, or a sequence is empty ([`ModelError::EmptyInput`]:
/// callers that know which text it was say so first) or holds an id outside the vocabulary.
pub fn classify_batch(model: &Gpt, sequences: &[Vec<u32>]) -> Result<Classified> {
    let cfg = &model.config;
    let labels = cfg.num_labels();
    let Some(pad) = cfg.pad_token_id() else {
        return Err(ModelError::InvalidConfig {
            field: "architectures",
            reason: "is GPT2LMHeadModel (a language model); classification needs a classifier checkpoint \
                     (GPT2ForSequenceClassification, made by `lushan train --task classify`)"
                .into(),
        });
    };
    if sequences.iter().any(Vec::is_empty) {
        return Err(ModelError::EmptyInput);
    }
    let block = cfg.block_size;
    let len = |i: usize| sequences[i].len().min(block);
    let truncated = sequences.iter().filter(|s| s.len() > block).count();
    // Longest first: the first batch needs the longest rows, later ones fit in what it allocated.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(i)));

    let mut logits = vec![Vec::new(); sequences.len()];
    let mut acts: Option<Activations> = None;
    let mut inputs = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let t = len(order[start]);
        let rows = rows_per_batch(cfg, t).min(order.len() - start);
        let batch = &order[start..start + rows];
        start += rows;
        let fits = acts.as_ref().is_some_and(|a| {
            let (cap_b, cap_t) = a.capacity();
            rows <= cap_b && t <= cap_t
        });
        let acts = match acts.as_mut() {
            Some(a) if fits => {
                a.reshape(rows, t)?;
                a
            }
            _ => acts.insert(Activations::new(cfg, rows, t)?),
        };
        inputs.clear();
        inputs.resize(rows * t, pad);
        for (row, &i) in inputs.chunks_exact_mut(t).zip(batch) {
            row[..len(i)].copy_from_slice(&sequences[i][..len(i)]);
        }
        model.forward(acts, &inputs, None, Mode::Eval)?;
        for (scores, &i) in acts.logits.chunks_exact(labels).zip(batch) {
            logits[i] = scores.to_vec();
        }
    }
    let probabilities = logits.iter().map(|row| softmax(row)).collect();
    Ok(Classified { logits, probabilities, truncated })
}

/// Rows of `t` tokens one batch may hold: [`MAX_BATCH_ROWS`], fewer when their activations would pass
/// [`ACTIVATION_BUDGET`], at least one.
fn rows_per_batch(cfg: &ModelConfig, t: usize) -> usize {
    // Per layer and row: about 16·C floats per position (layer norms, QKV, MLP, residuals) and the
    // (NH, T, T) attention probabilities.
    let per_layer = t.saturating_mul(16 * cfg.n_embd).saturating_add(cfg.n_head.saturating_mul(t).saturating_mul(t));
    let per_row = per_layer.saturating_mul(cfg.n_layer.max(1));
    (ACTIVATION_BUDGET / per_row.max(1)).clamp(1, MAX_BATCH_ROWS)
}

/// `softmax(z)`, computed in f64 so that the probabilities sum to 1 within f32 rounding.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = z.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::config::Head;

    fn classifier(block_size: usize, labels: usize) -> Gpt {
        let mut cfg = ModelConfig::new(40, block_size, 2, 2, 16);
        cfg.head = Head::Classifier { labels: (0..labels).map(|i| format!("l{i}")).collect(), pad_token_id: 0 };
        Gpt::new(cfg, 7).unwrap()
    }

    /// Deterministic pseudo-random ids in 1..40 (never the padding id 0).
    fn sequence(seed: usize, len: usize) -> Vec<u32> {
        (0..len).map(|i| 1 + ((seed * 31 + i * 17 + i * i) % 39) as u32).collect()
    }

    #[test]
    fn batches_equal_one_at_a_time_and_probabilities_sum_to_one() {
        let model = classifier(24, 3);
        // 37 sequences of ragged lengths: three batches of 16, 16 and 5 rows, each padded to its own longest.
        let sequences: Vec<Vec<u32>> = (0..37).map(|i| sequence(i, 1 + (i * 7) % 24)).collect();
        let all = classify_batch(&model, &sequences).unwrap();
        assert_eq!((all.logits.len(), all.probabilities.len(), all.truncated), (37, 37, 0));
        for (i, s) in sequences.iter().enumerate() {
            let one = classify_batch(&model, std::slice::from_ref(s)).unwrap();
            for (a, b) in all.logits[i].iter().zip(&one.logits[0]) {
                assert!((a - b).abs() <= 1e-5, "sequence {i}: {:?} vs {:?}", all.logits[i], one.logits[0]);
            }
            let p = &all.probabilities[i];
            assert_eq!(p.len(), 3);
            assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)));
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
            assert_eq!(*p, softmax(&all.logits[i]));
        }
        // Different inputs really give different answers (the comparison above is not vacuous).
        assert_ne!(all.logits[0], all.logits[1]);
    }

    #[test]
    fn long_sequences_keep_their_start_and_are_counted() {
        let model = classifier(8, 2);
        let long = sequence(3, 20);
        let got = classify_batch(&model, &[long.clone(), sequence(4, 5)]).unwrap();
        assert_eq!(got.truncated, 1);
        let start = classify_batch(&model, &[long[..8].to_vec()]).unwrap();
        assert_eq!(start.truncated, 0);
        assert_eq!(got.logits[0], start.logits[0]);
        let end = classify_batch(&model, &[long[12..].to_vec()]).unwrap();
        assert_ne!(got.logits[0], end.logits[0]);
    }

    #[test]
    fn refuses_language_models_and_empty_sequences() {
        let lm = Gpt::new(ModelConfig::new(40, 8, 1, 1, 8), 1).unwrap();
        let e = classify_batch(&lm, &[vec![1, 2]]).unwrap_err().to_string();
        assert!(e.contains("classifier") && e.contains("--task classify"), "{e}");
        let model = classifier(8, 2);
        let e = classify_batch(&model, &[vec![1], vec![]]).unwrap_err();
        assert!(matches!(e, ModelError::EmptyInput), "{e}");
        let e = classify_batch(&model, &[vec![1, 99]]).unwrap_err().to_string();
        assert!(e.contains("99"), "{e}");
        assert_eq!(classify_batch(&model, &[]).unwrap().logits.len(), 0);
    }

    #[test]
    fn long_rows_run_in_smaller_batches() {
        let gpt2 = ModelConfig::gpt2();
        assert_eq!(rows_per_batch(&gpt2, 1024), 1);
        assert_eq!(rows_per_batch(&gpt2, 16), MAX_BATCH_ROWS);
        let mid = rows_per_batch(&gpt2, 256);
        assert!(mid > 1 && mid < MAX_BATCH_ROWS, "{mid}");
    }
}
