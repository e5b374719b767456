//! Weights packed once per optimizer step (`Gpt::pack_for_step`, `Gpt::forward_backward_packed`): every
//! pass of a step reading the packed copies must give the losses and gradients of passes that pack as they
//! go, bit for bit — in f32 and bf16, with block checkpointing (whose recomputation reads them too), dropout,
//! LoRA adapters on a frozen base, and output-layer chunks that do not divide the rows — and packs made
//! from another model or for another precision are refused.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_kernels::matmul;
use lushan_kernels::packed_gemm::Precision;
use lushan_kernels::rng::Rng;
use lushan_model::activations::TrainingMemory;
use lushan_model::{Activations, Gpt, Lora, LoraConfig, LoraTarget, Mode, ModelConfig, ModelError};

fn model(seed: u64) -> Gpt {
    let mut cfg = ModelConfig::new(53, 32, 2, 2, 48);
    cfg.dropout = 0.1;
    Gpt::new(cfg, seed).unwrap()
}

/// `steps` micro-batches of (4, 16) — 64 rows, past the few-row kernels, so the products take the GEMM.
fn micro_batches(vocab: usize, steps: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(11);
    (0..steps)
        .map(|_| {
            let tokens: Vec<u32> = (0..4 * 16 + 1).map(|_| rng.below(vocab as u64) as u32).collect();
            (tokens[..4 * 16].to_vec(), tokens[1..].to_vec())
        })
        .collect()
}

fn acts(model: &Gpt, precision: Precision, checkpoint_blocks: bool) -> Activations {
    let memory = TrainingMemory { checkpoint_blocks, precision, ..TrainingMemory::default() };
    let mut acts = Activations::for_training(&model.config, 4, 16, model.lora_shape(), memory).unwrap();
    // 64 rows in chunks of 9: seven chunks share the head's packs, the last one of a single row.
    acts.set_head_chunk_rows(9);
    acts
}

/// Losses and the accumulated gradient of the micro-batches, packing per product or reading `packed`.
fn run(model: &Gpt, acts: &mut Activations, packed: bool) -> (Vec<u32>, Vec<u32>) {
    let step = if packed { model.pack_for_step(acts.precision()) } else { None };
    assert_eq!(step.is_some(), packed, "packs are made wherever the products take the packed GEMM");
    let mut grads = vec![0.0; model.num_trainable()];
    let losses = micro_batches(model.config.vocab_size, 3)
        .iter()
        .enumerate()
        .map(|(i, (x, y))| {
            let mode = Mode::Train { dropout_seed: 7 + i as u64 };
            let gradient = (&mut grads[..], 1.0 / 3.0);
            model.forward_backward_packed(acts, x, y, mode, gradient, &mut |_| {}, step.as_ref()).unwrap().to_bits()
        })
        .collect();
    (losses, grads.iter().map(|g| g.to_bits()).collect())
}

fn precisions() -> Vec<Precision> {
    // f32 products pack only on CPUs whose GEMM is the packed one (AVX-512 F); bf16 always.
    assert_eq!(model(1).pack_for_step(Precision::F32).is_some(), matmul::packs_weights(Precision::F32));
    Precision::ALL.into_iter().filter(|&p| matmul::packs_weights(p)).collect()
}

#[test]
fn passes_reading_the_steps_packed_weights_equal_passes_that_pack_as_they_go() {
    let model = model(3);
    for precision in precisions() {
        for checkpoint in [false, true] {
            let want = run(&model, &mut acts(&model, precision, checkpoint), false);
            let got = run(&model, &mut acts(&model, precision, checkpoint), true);
            assert!(got.1.iter().any(|&g| g != 0), "{precision}: some gradient");
            assert_eq!(got, want, "{precision}, checkpointed {checkpoint}: losses and gradients bit for bit");
        }
    }
}

#[test]
fn a_frozen_base_under_lora_reads_its_packed_weights_too() {
    let mut model = model(4);
    let lora_config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.1, targets: LoraTarget::ALL.to_vec() };
    let mut lora = Lora::new(lora_config, &model.config, 2).unwrap();
    lora.params.iter_mut().enumerate().for_each(|(i, p)| *p += 0.01 * ((i % 7) as f32 - 3.0));
    model.attach_lora(lora).unwrap();
    for precision in precisions() {
        let want = run(&model, &mut acts(&model, precision, true), false);
        let got = run(&model, &mut acts(&model, precision, true), true);
        assert_eq!(got, want, "{precision}: adapter gradients bit for bit");
    }
}

#[test]
fn the_packs_hold_every_matrix_once_per_layout() {
    let model = model(5);
    let (c, v, layers) = (48, 53, 2);
    for precision in precisions() {
        let step = model.pack_for_step(precision).unwrap();
        assert_eq!(step.precision(), precision);
        // f32: a word per value; bf16: a word per pair of k. Panels pad the columns to 32, k to its block.
        let values = layers * 12 * c * c + 2 * v * c;
        let words = step.bytes() / 4;
        let least = if precision == Precision::F32 { values } else { values / 2 };
        assert!(words >= least && words <= 3 * least, "{precision}: {words} words for {values} values");
    }
}

#[test]
fn packs_of_another_model_or_precision_are_refused() {
    let (a, b) = (model(6), model(6));
    let (x, y) = &micro_batches(53, 1)[0];
    let mode = Mode::Train { dropout_seed: 1 };
    let mut grads = vec![0.0; a.num_trainable()];
    let precision = precisions()[0];
    let mut acts = acts(&a, precision, false);
    let other_model = b.pack_for_step(precision).unwrap();
    let err = a.forward_backward_packed(&mut acts, x, y, mode, (&mut grads, 1.0), &mut |_| {}, Some(&other_model));
    let message = err.unwrap_err().to_string();
    assert!(message.contains("packed weights") && message.contains("another model"), "{message}");
    let other = if precision == Precision::F32 { Precision::Bf16 } else { Precision::F32 };
    if let Some(other_precision) = a.pack_for_step(other) {
        let err =
            a.forward_backward_packed(&mut acts, x, y, mode, (&mut grads, 1.0), &mut |_| {}, Some(&other_precision));
        assert!(matches!(err, Err(ModelError::InvalidConfig { field: "packed weights", .. })), "{err:?}");
    }
    assert!(grads.iter().all(|&g| g == 0.0), "a refused pass leaves the gradients untouched");
}
