//! The fused, chunked output layer of training passes (`Gpt::forward_backward`): each chunk of rows gets
//! its logits, softmax, loss and gradient at once, so training buffers never hold (rows, V) logits,
//! probabilities or logit gradient. Its loss and every gradient must equal the unchunked computation —
//! inspection buffers keeping every logit, then `Gpt::backward` — with chunks that do not divide the rows,
//! ignored targets, gradient accumulation, frozen embeddings (LoRA), a classifier, block checkpointing, and
//! the data-parallel hook still handing every gradient over once with its final value.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::rng::Rng;
use lushan_model::activations::{HEAD_CHUNK_BYTES, TrainingMemory};
use lushan_model::{Activations, Gpt, Head, Lora, LoraConfig, LoraTarget, Mode, ModelConfig};

fn config(vocab: usize, dropout: f32) -> ModelConfig {
    let mut cfg = ModelConfig::new(vocab, 32, 2, 2, 16);
    cfg.dropout = dropout;
    cfg
}

/// Inputs and next-token targets of a (b, t) batch; every `ignore_every`-th target ignored (0: none).
fn batch(b: usize, t: usize, vocab: usize, seed: u64, ignore_every: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(vocab as u64) as u32).collect();
    let mut targets = tokens[1..].to_vec();
    if ignore_every > 0 {
        targets.iter_mut().step_by(ignore_every).for_each(|x| *x = IGNORE_INDEX);
    }
    (tokens[..b * t].to_vec(), targets)
}

fn training(model: &Gpt, b: usize, t: usize, checkpoint_blocks: bool, chunk_rows: usize) -> Activations {
    let memory = TrainingMemory { checkpoint_blocks, ..TrainingMemory::default() };
    let mut acts = Activations::for_training(&model.config, b, t, model.lora_shape(), memory).unwrap();
    acts.set_head_chunk_rows(chunk_rows);
    acts
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: all zero");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * scale, "{what}[{i}]: {g} vs {w} (largest |value| {scale})");
    }
}

/// `micro` micro-batches accumulated into `grads` (which starts non-zero, as after earlier micro-steps) by
/// the unchunked reference: inspection buffers, forward, then backward. Returns the losses.
fn reference(model: &Gpt, micro: &[(Vec<u32>, Vec<u32>)], (b, t): (usize, usize), grads: &mut [f32]) -> Vec<f32> {
    let mut acts = Activations::with_lora(&model.config, b, t, model.lora_shape()).unwrap();
    let mode = Mode::Train { dropout_seed: 5 };
    let scale = 1.0 / micro.len() as f32;
    let mut losses = Vec::new();
    for (x, y) in micro {
        losses.push(model.forward(&mut acts, x, Some(y), mode).unwrap().unwrap());
        model.backward(&mut acts, grads, scale, mode);
    }
    losses
}

/// The same micro-batches through the fused pass on `acts`.
fn fused(model: &Gpt, micro: &[(Vec<u32>, Vec<u32>)], acts: &mut Activations, grads: &mut [f32]) -> Vec<f32> {
    let mode = Mode::Train { dropout_seed: 5 };
    let scale = 1.0 / micro.len() as f32;
    micro.iter().map(|(x, y)| model.forward_backward(acts, x, y, mode, grads, scale, &mut |_| {}).unwrap()).collect()
}

fn start_grads(model: &Gpt) -> Vec<f32> {
    (0..model.num_trainable()).map(|i| (i % 5) as f32 * 1e-3).collect()
}

fn check_against_reference(model: &Gpt, (b, t): (usize, usize), ignore_every: usize, micro_steps: usize) {
    let vocab = model.config.vocab_size;
    let micro: Vec<_> = (0..micro_steps).map(|k| batch(b, t, vocab, 40 + k as u64, ignore_every)).collect();
    let mut want = start_grads(model);
    let want_losses = reference(model, &micro, (b, t), &mut want);
    // 7 rows per chunk: neither the 2·13 = 26 rows nor the counted ones divide into whole chunks.
    for (chunk, checkpoint) in [(7, false), (7, true), (1, false), (usize::MAX, false)] {
        let mut acts = training(model, b, t, checkpoint, chunk);
        let mut got = start_grads(model);
        let losses = fused(model, &micro, &mut acts, &mut got);
        let what = format!("ignore every {ignore_every}, {micro_steps} micro-steps, chunk {chunk}");
        for (l, w) in losses.iter().zip(&want_losses) {
            assert!((l - w).abs() <= 1e-5 * w.abs(), "{what}: loss {l} vs {w}");
        }
        assert_close(&what, &got, &want, 1e-5);
    }
}

#[test]
fn chunked_fused_loss_and_gradients_equal_the_unchunked_pass() {
    let model = Gpt::new(config(37, 0.0), 3).unwrap();
    check_against_reference(&model, (2, 13), 0, 1);
}

#[test]
fn ignored_targets_and_accumulation_give_the_unchunked_gradients() {
    let model = Gpt::new(config(37, 0.1), 4).unwrap();
    // Every third target ignored (SFT prompts, padding): only the counted rows reach the head.
    check_against_reference(&model, (2, 13), 3, 1);
    // Three micro-steps accumulating into one buffer that already held gradients: wte's head part (taken
    // in the forward) and its embedding part (in the backward) both add up.
    check_against_reference(&model, (2, 13), 4, 3);
}

#[test]
fn frozen_embedding_under_lora_gets_no_head_gradient() {
    let mut model = Gpt::new(config(37, 0.0), 6).unwrap();
    let lora_config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.1, targets: LoraTarget::ALL.to_vec() };
    let mut lora = Lora::new(lora_config, &model.config, 2).unwrap();
    lora.params.iter_mut().enumerate().for_each(|(i, p)| *p += 0.01 * ((i % 7) as f32 - 3.0));
    model.attach_lora(lora).unwrap();
    // The buffer is the adapter's layout: the frozen wte gets no head gradient (only dh = dz·Wte is taken).
    assert_ne!(model.num_trainable(), model.num_params());
    check_against_reference(&model, (2, 13), 5, 2);
}

#[test]
fn a_classifier_takes_the_same_pass() {
    let mut cfg = config(37, 0.0);
    cfg.head = Head::Classifier { labels: vec!["a".into(), "b".into(), "c".into()], pad_token_id: 0 };
    let model = Gpt::new(cfg, 8).unwrap();
    let (x, _) = batch(3, 9, 37, 1, 0);
    let micro = vec![(x.clone(), vec![2, 0, 1]), (x, vec![1, 1, 0])];
    let mut want = start_grads(&model);
    let want_losses = reference(&model, &micro, (3, 9), &mut want);
    let mut acts = training(&model, 3, 9, false, 2);
    let mut got = start_grads(&model);
    let losses = fused(&model, &micro, &mut acts, &mut got);
    assert_close("classifier losses", &losses, &want_losses, 1e-6);
    assert_close("classifier gradients", &got, &want, 1e-5);
    assert_eq!(acts.logits.len(), 3 * 3, "a classifier keeps its few logits");
}

#[test]
fn the_data_parallel_hook_still_sees_every_gradient_once_and_final() {
    let model = Gpt::new(config(37, 0.1), 2).unwrap();
    let (x, y) = batch(2, 13, 37, 9, 4);
    let mut acts = training(&model, 2, 13, true, 5);
    let mut grads = start_grads(&model);
    let mut seen = vec![f32::NAN; grads.len()];
    let mut times = vec![0u8; grads.len()];
    let mut order = Vec::new();
    let mode = Mode::Train { dropout_seed: 1 };
    model
        .forward_backward(&mut acts, &x, &y, mode, &mut grads, 0.5, &mut |segments| {
            order.push(segments.iter().map(|s| s.offset..s.offset + s.values.len()).collect::<Vec<_>>());
            for s in segments {
                seen[s.offset..s.offset + s.values.len()].copy_from_slice(s.values);
                times[s.offset..s.offset + s.values.len()].iter_mut().for_each(|n| *n += 1);
            }
        })
        .unwrap();
    assert_eq!(order, model.gradient_buckets(), "the announced bucket order");
    assert!(times.iter().all(|&n| n == 1), "every gradient handed over exactly once");
    assert_eq!(seen, grads, "a bucket was handed over before the pass finished it (wte: head and embedding)");
}

#[test]
fn training_buffers_hold_one_chunk_of_vocabulary_rows() {
    // GPT-2's vocabulary, a tiny body: 4·64 = 256 rows, more than the 166 of one 32 MiB chunk.
    let cfg = ModelConfig::new(50257, 64, 1, 2, 8);
    let model = Gpt::new(cfg, 1).unwrap();
    let (b, t, v) = (4, 64, 50257);
    let chunk = lushan_model::activations::head_chunk_rows(v);
    assert_eq!(chunk, 166);
    let mut acts = Activations::for_training(&model.config, b, t, None, TrainingMemory::default()).unwrap();
    assert!(acts.logits.is_empty(), "training buffers keep no (rows, V) logits");
    // Two chunk buffers (logits then their gradient; probabilities) and per-row values only.
    let head = acts.head_bytes();
    assert!(head <= 2 * HEAD_CHUNK_BYTES + 64 * 1024, "{head} bytes");
    assert!(head >= 2 * chunk * v * 4, "{head} bytes");
    let inspection = Activations::new(&model.config, b, t).unwrap();
    assert!(inspection.head_bytes() >= b * t * v * 4, "inspection buffers keep every row's logits");
    // The unchunked result, on the model whose vocabulary needs two chunks.
    let micro = vec![batch(b, t, v, 3, 0)];
    let mut want = vec![0.0; model.num_params()];
    let want_losses = reference(&model, &micro, (b, t), &mut want);
    let mut got = vec![0.0; model.num_params()];
    let losses = fused(&model, &micro, &mut acts, &mut got);
    assert!((losses[0] - want_losses[0]).abs() <= 1e-5 * want_losses[0], "{losses:?} vs {want_losses:?}");
    assert_close("gradients", &got, &want, 1e-5);
    assert_eq!(acts.head_bytes(), head, "the pass allocated no head buffer");
}

#[test]
fn wrong_gradient_buffers_and_packed_weights_are_refused() {
    let model = Gpt::new(config(37, 0.0), 1).unwrap();
    let (x, y) = batch(1, 4, 37, 2, 0);
    let mut acts = training(&model, 1, 4, false, 3);
    let mut short = vec![0.0; 10];
    let err = model.forward_backward(&mut acts, &x, &y, Mode::Eval, &mut short, 1.0, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("gradient buffer") && err.to_string().contains("got 10"), "{err}");
    let packed = model.clone().with_dtype(lushan_model::DType::Bf16).unwrap();
    let mut grads = vec![0.0; packed.num_params()];
    let err = packed.forward_backward(&mut acts, &x, &y, Mode::Eval, &mut grads, 1.0, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
}
