//! Training buffers ([`Activations::for_training`]) keep less than inspection buffers and must give the same
//! training step: the tiled attention (log-sum-exp kept, probabilities recomputed in the backward) gives the
//! loss and gradients of the probabilities kernel, and block checkpointing (each block recomputed before its
//! backward) gives bit-identical gradients — with dropout and LoRA-adapter dropout too, whose masks the
//! recomputation must draw again.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_kernels::rng::Rng;
use lushan_model::activations::TrainingMemory;
use lushan_model::{Activations, Gpt, Lora, LoraConfig, LoraTarget, Mode, ModelConfig};

/// Two layers, context longer than one 64-row attention tile.
fn config(dropout: f32) -> ModelConfig {
    let mut cfg = ModelConfig::new(37, 160, 2, 2, 16);
    cfg.dropout = dropout;
    cfg
}

fn batch(b: usize, t: usize, vocab: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(vocab as u64) as u32).collect();
    (tokens[..b * t].to_vec(), tokens[1..].to_vec())
}

/// Loss and accumulated gradient of one forward/backward on `acts` (reshaped to (b, t)).
fn step(model: &Gpt, acts: &mut Activations, (b, t): (usize, usize), mode: Mode, seed: u64) -> (f32, Vec<f32>) {
    acts.reshape(b, t).unwrap();
    let (inputs, targets) = batch(b, t, model.config.vocab_size, seed);
    let loss = model.forward(acts, &inputs, Some(&targets), mode).unwrap().unwrap();
    let mut grads = vec![0.0; model.num_trainable()];
    model.backward(acts, &mut grads, 1.0, mode);
    (loss, grads)
}

fn training(model: &Gpt, b: usize, t: usize, checkpoint_blocks: bool) -> Activations {
    Activations::for_training(
        &model.config,
        b,
        t,
        model.lora_shape(),
        TrainingMemory { checkpoint_blocks, ..TrainingMemory::default() },
    )
    .unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * scale + 1e-7, "{what}[{i}]: {g} vs {w} (largest |value| {scale})");
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn tiled_attention_gives_the_probabilities_kernels_loss_and_gradients() {
    let model = Gpt::new(config(0.0), 7).unwrap();
    let shape = (2, 150); // three attention tiles, the last one partial
    let mode = Mode::Train { dropout_seed: 3 };
    let mut maps = Activations::new(&model.config, 2, 150).unwrap();
    let (want_loss, want) = step(&model, &mut maps, shape, mode, 11);
    let mut tiled = training(&model, 2, 150, false);
    let (loss, got) = step(&model, &mut tiled, shape, mode, 11);
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs {want_loss}");
    assert_close("gradients", &got, &want, 1e-5);
    assert!(maps.keeps_attention_maps() && !tiled.keeps_attention_maps());
    for layer in &tiled.layers {
        assert!(layer.att.is_empty(), "training buffers hold no T×T probabilities");
        assert_eq!(layer.lse.len(), 2 * 150 * 2, "one log-sum-exp per row and head");
    }
}

#[test]
fn checkpointed_blocks_give_bit_identical_gradients_with_dropout() {
    let model = Gpt::new(config(0.1), 5).unwrap();
    let mode = Mode::Train { dropout_seed: 99 };
    let mut full = training(&model, 3, 70, false);
    let mut checkpointed = training(&model, 3, 70, true);
    for (shape, seed) in [((3, 70), 1), ((2, 33), 2)] {
        let (want_loss, want) = step(&model, &mut full, shape, mode, seed);
        let (loss, got) = step(&model, &mut checkpointed, shape, mode, seed);
        assert_eq!(loss.to_bits(), want_loss.to_bits(), "loss at {shape:?}");
        assert_eq!(bits(&got), bits(&want), "gradients at {shape:?}");
    }
    // Each layer keeps its block output only; the block buffers exist once.
    for layer in &checkpointed.layers {
        assert!(layer.ln1.is_empty() && layer.qkv.is_empty() && layer.fch.is_empty() && layer.lse.is_empty());
        assert_eq!(layer.residual3.len(), 2 * 33 * 16);
    }
    // Evaluation (no backward) through checkpointed buffers: the same loss.
    let eval = |acts: &mut Activations| step(&model, acts, (3, 70), Mode::Eval, 4).0;
    assert_eq!(eval(&mut checkpointed).to_bits(), eval(&mut full).to_bits());
}

#[test]
fn checkpointed_blocks_give_bit_identical_adapter_gradients() {
    let mut model = Gpt::new(config(0.1), 9).unwrap();
    let lora_config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.2, targets: LoraTarget::ALL.to_vec() };
    let mut lora = Lora::new(lora_config, &model.config, 3).unwrap();
    // PEFT starts B at zero; make it non-zero so the adapters change the activations the backward sees.
    lora.params.iter_mut().enumerate().for_each(|(i, p)| *p += 0.01 * ((i % 7) as f32 - 3.0));
    model.attach_lora(lora).unwrap();
    let mode = Mode::Train { dropout_seed: 17 };
    let (want_loss, want) = step(&model, &mut training(&model, 2, 40, false), (2, 40), mode, 8);
    let (loss, got) = step(&model, &mut training(&model, 2, 40, true), (2, 40), mode, 8);
    assert_eq!(loss.to_bits(), want_loss.to_bits());
    assert_eq!(bits(&got), bits(&want));
    assert!(got.iter().any(|&g| g != 0.0), "the adapters receive gradients");
}
