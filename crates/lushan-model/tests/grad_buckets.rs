//! The hook of `Gpt::backward_with`, on which data-parallel training starts each bucket's all-reduce: it
//! must see every range of the gradient buffer exactly once, in the order `Gpt::gradient_buckets` promises
//! (all ranks issue their sums in that order), and only values the pass no longer changes — a bucket
//! handed over too early would be summed over the ranks without its last contributions.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::{Activations, Gpt, Head, Mode, ModelConfig};
use std::ops::Range;

/// What the hook saw: each call's ranges and a copy of the values it was given.
fn run_hooked(model: &Gpt, ids: &[u32], targets: &[u32], (b, t): (usize, usize), mode: Mode) -> (Vec<f32>, Vec<f32>) {
    let mut acts = Activations::new(&model.config, b, t).unwrap();
    // Earlier micro-batches' gradients already in the buffer: the hook must hand over the accumulated sums.
    let mut grads: Vec<f32> = (0..model.num_params()).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut seen_ranges: Vec<Vec<Range<usize>>> = Vec::new();
    let mut seen = vec![f32::NAN; grads.len()];
    let mut times_seen = vec![0u8; grads.len()];
    model.forward(&mut acts, ids, Some(targets), mode).unwrap();
    model.backward_with(&mut acts, &mut grads, 0.5, mode, &mut |segments| {
        seen_ranges.push(segments.iter().map(|s| s.offset..s.offset + s.values.len()).collect());
        for s in segments {
            seen[s.offset..s.offset + s.values.len()].copy_from_slice(s.values);
            times_seen[s.offset..s.offset + s.values.len()].iter_mut().for_each(|n| *n += 1);
        }
    });
    assert_eq!(seen_ranges, model.gradient_buckets(), "the hook's buckets, in order, are the announced plan");
    assert!(times_seen.iter().all(|&n| n == 1), "every gradient is handed over exactly once");
    (seen, grads)
}

#[test]
fn the_hook_sees_every_gradient_once_in_backward_order_with_its_final_value() {
    let mut cfg = ModelConfig::new(29, 8, 3, 2, 16);
    cfg.dropout = 0.2;
    let model = Gpt::new(cfg, 5).unwrap();
    let (b, t) = (2, 8);
    let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 7 + 2) % 29).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i as u32 * 5 + 1) % 29).collect();
    let (seen, final_grads) = run_hooked(&model, &ids, &targets, (b, t), Mode::Train { dropout_seed: 9 });
    assert_eq!(seen, final_grads, "a bucket was handed over before the pass finished it");

    // The plan: the head (lnf), then layers 2, 1, 0, then the embeddings.
    let plan = model.gradient_buckets();
    assert_eq!(plan.len(), 5);
    assert_eq!(plan[0].len(), 2);
    assert!(plan[1][0].start > plan[2][0].start && plan[2][0].start > plan[3][0].start, "last layer first");
    assert_eq!(plan[4][0].start, 0, "wte last");

    // Without the hook, the same gradients.
    let mut acts = Activations::new(&model.config, b, t).unwrap();
    let mut plain: Vec<f32> = (0..model.num_params()).map(|i| (i % 7) as f32 * 0.01).collect();
    model.forward(&mut acts, &ids, Some(&targets), Mode::Train { dropout_seed: 9 }).unwrap();
    model.backward(&mut acts, &mut plain, 0.5, Mode::Train { dropout_seed: 9 });
    assert_eq!(plain, final_grads);
}

#[test]
fn a_classifier_hands_over_its_score_head_first() {
    let mut cfg = ModelConfig::new(29, 8, 2, 2, 16);
    cfg.head = Head::Classifier { labels: vec!["a".into(), "b".into(), "c".into()], pad_token_id: 0 };
    let model = Gpt::new(cfg, 3).unwrap();
    let (b, t) = (2, 8);
    let ids: Vec<u32> = (0..b * t).map(|i| 1 + (i as u32 * 7) % 28).collect();
    let (seen, final_grads) = run_hooked(&model, &ids, &[0, 2], (b, t), Mode::Eval);
    assert_eq!(seen, final_grads);
    let score = model.layout.range(lushan_model::ParamKind::Score);
    assert_eq!(model.gradient_buckets()[0][0], score);
}
