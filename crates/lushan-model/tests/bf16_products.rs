//! Training passes with the linear layers' and the output layer's products in bf16 (`--precision bf16`):
//! the loss and every gradient stay within bf16's rounding of the f32 pass, the rounding really happens,
//! and a checkpointed block's recomputation runs in the same precision (the same pass bit for bit).
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_kernels::packed_gemm::Precision;
use lushan_kernels::rng::Rng;
use lushan_model::activations::TrainingMemory;
use lushan_model::{Activations, Gpt, Mode, ModelConfig};

/// Loss and gradients of one fused training pass over a (4, 24) batch: 96 rows, past the matrix-vector path
/// that few-row products take.
fn pass(model: &Gpt, precision: Precision, checkpoint_blocks: bool) -> (f32, Vec<f32>) {
    pass_in_chunks(model, precision, checkpoint_blocks, usize::MAX)
}

/// [`pass`] with the output layer taking `chunk_rows` rows at a time.
fn pass_in_chunks(model: &Gpt, precision: Precision, checkpoint_blocks: bool, chunk_rows: usize) -> (f32, Vec<f32>) {
    let (b, t, vocab) = (4, 24, model.config.vocab_size);
    let mut rng = Rng::new(3);
    let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(vocab as u64) as u32).collect();
    let memory = TrainingMemory { checkpoint_blocks, precision, ..TrainingMemory::default() };
    let mut acts = Activations::for_training(&model.config, b, t, None, memory).unwrap();
    assert_eq!(acts.precision(), precision);
    acts.set_head_chunk_rows(chunk_rows);
    let mut grads = vec![0.0; model.num_params()];
    let mode = Mode::Train { dropout_seed: 9 };
    let loss = model.forward_backward(&mut acts, &tokens[..b * t], &tokens[1..], mode, &mut grads, 1.0, &mut |_| {});
    (loss.unwrap(), grads)
}

#[test]
fn bf16_products_stay_within_bf16_rounding_of_f32() {
    let mut cfg = ModelConfig::new(70, 32, 2, 4, 64);
    cfg.dropout = 0.1;
    let model = Gpt::new(cfg, 11).unwrap();
    let (loss32, grads32) = pass(&model, Precision::F32, false);
    let (loss16, grads16) = pass(&model, Precision::Bf16, false);
    // bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.2 % per operand).
    assert!((loss16 - loss32).abs() <= 5e-3 * loss32, "loss {loss16} vs f32 {loss32}");
    let scale = grads32.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    let worst = grads16.iter().zip(&grads32).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 3e-2 * scale, "largest gradient difference {worst} (largest gradient {scale})");
    // The cosine between the two gradients: the same direction of descent.
    let dot: f64 = grads16.iter().zip(&grads32).map(|(a, b)| (a * b) as f64).sum();
    let norm = |g: &[f32]| g.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
    let cosine = dot / (norm(&grads16) * norm(&grads32));
    assert!(cosine > 0.999, "cosine {cosine}");
    // The operands were rounded: the passes differ.
    assert_ne!(loss16, loss32);
    assert!(worst > 0.0);
}

#[test]
fn a_checkpointed_bf16_pass_recomputes_its_blocks_in_bf16() {
    let model = Gpt::new(ModelConfig::new(50, 32, 3, 2, 32), 5).unwrap();
    let plain = pass(&model, Precision::Bf16, false);
    let checkpointed = pass(&model, Precision::Bf16, true);
    assert_eq!(plain.0, checkpointed.0);
    assert!(plain.1 == checkpointed.1, "checkpointed bf16 gradients differ from the plain bf16 pass");
}

#[test]
fn the_output_layer_packed_once_for_its_chunks_gives_the_unchunked_pass() {
    // 96 rows in chunks of 7 (the last of 5): the weight is packed once, as Wᵀ and as W, for all 14 chunks.
    let model = Gpt::new(ModelConfig::new(300, 32, 1, 2, 32), 8).unwrap();
    let (whole_loss, whole) = pass_in_chunks(&model, Precision::Bf16, false, usize::MAX);
    let (chunked_loss, chunked) = pass_in_chunks(&model, Precision::Bf16, false, 7);
    assert!((whole_loss - chunked_loss).abs() <= 1e-6 * whole_loss, "{whole_loss} vs {chunked_loss}");
    let scale = whole.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    for (i, (a, b)) in chunked.iter().zip(&whole).enumerate() {
        // Only the order in which the chunks' weight gradients are summed differs.
        assert!((a - b).abs() <= 1e-5 * scale, "gradient {i}: {a} vs {b}");
    }
    // And it is the bf16 pass, not the f32 one.
    let (f32_loss, _) = pass_in_chunks(&model, Precision::F32, false, 7);
    assert_ne!(f32_loss, chunked_loss);
}
