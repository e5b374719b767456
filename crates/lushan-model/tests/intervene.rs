//! `Gpt::forward_edited`: edits land where they name, reusing the unedited layers of an earlier pass gives
//! the same numbers as a pass from scratch, and bad edits are refused with the reason.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::{Activations, Edit, Gpt, Knockout, Mode, ModelConfig, ModelError, ParamKind, Site};

const B: usize = 2;
const T: usize = 6;

fn model() -> Gpt {
    Gpt::new(ModelConfig::new(31, 8, 3, 2, 16), 7).unwrap()
}

fn ids() -> Vec<u32> {
    (0..B * T).map(|i| (i as u32 * 11 + 3) % 31).collect()
}

/// Logits of an edited pass over fresh buffers (nothing reused).
fn fresh(model: &Gpt, edits: &[Edit]) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, B, T).unwrap();
    model.forward_edited(&mut acts, &ids(), None, edits).unwrap();
    acts.logits.clone()
}

fn plain(model: &Gpt) -> Activations {
    let mut acts = Activations::new(&model.config, B, T).unwrap();
    model.forward(&mut acts, &ids(), None, Mode::Eval).unwrap();
    acts
}

#[test]
fn no_edits_is_the_plain_forward() {
    let model = model();
    assert_eq!(fresh(&model, &[]), plain(&model).logits);
}

#[test]
fn zeroing_every_head_leaves_only_the_projection_bias() {
    let model = model();
    let layer = 1;
    let heads: Vec<Edit> = (0..2).map(|head| Edit::zero(Site::HeadZ { layer, head })).collect();
    let bias = model.layout.range(ParamKind::AttnProjB);
    let c = model.config.n_embd;
    let bias = model.params[bias][layer * c..(layer + 1) * c].to_vec();
    let as_bias = [Edit::set(Site::AttnOut { layer }, None, None, bias)];
    assert_eq!(fresh(&model, &heads), fresh(&model, &as_bias));
    assert_ne!(fresh(&model, &heads), plain(&model).logits, "zeroing two heads changed nothing");
}

#[test]
fn patching_a_stream_with_its_own_values_changes_nothing_and_another_runs_values_change_it() {
    let model = model();
    let clean = plain(&model);
    for layer in 0..=3 {
        let stream = if layer == 0 { clean.encoded.clone() } else { clean.layers[layer - 1].residual3.clone() };
        let own = [Edit::set(Site::ResidPre { layer }, None, None, stream.clone())];
        let logits = fresh(&model, &own);
        let worst = logits.iter().zip(&clean.logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "layer {layer}: patching a stream with itself moved a logit by {worst}");
        // One position of the other sequence written into the first: only that sequence's later positions move.
        let c = model.config.n_embd;
        let row = stream[(T + 2) * c..(T + 3) * c].to_vec();
        let patched = fresh(&model, &[Edit::set(Site::ResidPre { layer }, Some(0), Some(2), row)]);
        let v = model.config.vocab_size;
        assert_eq!(patched[..2 * v], clean.logits[..2 * v], "layer {layer}: positions before the patch moved");
        assert_ne!(
            patched[2 * v..3 * v],
            clean.logits[2 * v..3 * v],
            "layer {layer}: the patched position did not move"
        );
        assert_eq!(patched[T * v..], clean.logits[T * v..], "layer {layer}: the other sequence moved");
    }
}

#[test]
fn reusing_earlier_layers_gives_the_numbers_of_a_pass_from_scratch() {
    let model = model();
    let mut acts = plain(&model);
    // Visit sites in an order that makes stale layers possible: a later pass must not reuse a stream that an
    // earlier edit changed.
    let sweep = [
        vec![Edit::zero(Site::MlpOut { layer: 1 })],
        vec![Edit::zero(Site::HeadZ { layer: 2, head: 1 })],
        vec![Edit::zero(Site::ResidPre { layer: 2 })],
        vec![Edit::zero(Site::AttnOut { layer: 0 })],
        vec![],
        vec![Edit::zero(Site::ResidPre { layer: 3 }), Edit::zero(Site::HeadZ { layer: 2, head: 0 })],
        vec![Edit::zero(Site::MlpOut { layer: 2 })],
    ];
    for edits in &sweep {
        model.forward_edited(&mut acts, &ids(), None, edits).unwrap();
        assert_eq!(acts.logits, fresh(&model, edits), "{edits:?}: reused layers gave other logits");
    }
    // Other inputs in the same buffers: nothing may be reused.
    let other: Vec<u32> = ids().iter().map(|&i| (i + 1) % 31).collect();
    let edits = [Edit::zero(Site::MlpOut { layer: 2 })];
    model.forward_edited(&mut acts, &other, None, &edits).unwrap();
    let mut reference = Activations::new(&model.config, B, T).unwrap();
    model.forward_edited(&mut reference, &other, None, &edits).unwrap();
    assert_eq!(acts.logits, reference.logits, "a pass over other inputs reused the old ones' layers");
}

#[test]
fn a_loss_through_edits_counts_only_the_given_targets() {
    let model = model();
    let mut targets = vec![u32::MAX; B * T];
    targets[T - 1] = 5;
    let mut acts = Activations::new(&model.config, B, T).unwrap();
    let loss = model.forward_edited(&mut acts, &ids(), Some(&targets), &[]).unwrap().unwrap();
    let all = plain(&model);
    let v = model.config.vocab_size;
    let row = &all.logits[(T - 1) * v..T * v];
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
    assert!((loss - (log_sum - row[5])).abs() < 1e-5, "loss {loss} is not -log p(5) at the last position");
}

#[test]
fn bad_edits_say_what_is_wrong() {
    let model = model();
    let mut acts = Activations::new(&model.config, B, T).unwrap();
    let cases = [
        (Edit::zero(Site::HeadZ { layer: 3, head: 0 }), "layer 3 is out of range"),
        (Edit::zero(Site::ResidPre { layer: 4 }), "layer 4 is out of range"),
        (Edit::zero(Site::HeadZ { layer: 0, head: 2 }), "head 2 is out of range"),
        (Edit { position: Some(T), ..Edit::zero(Site::MlpOut { layer: 0 }) }, "position 6 is out of range"),
        (Edit { batch: Some(B), ..Edit::zero(Site::MlpOut { layer: 0 }) }, "batch element 2 is out of range"),
        (Edit::set(Site::HeadZ { layer: 0, head: 0 }, None, None, vec![0.0; 9]), "expected 8 (one row) or 96"),
        (Edit::set(Site::AttnOut { layer: 0 }, None, Some(1), vec![f32::NAN; 16]), "value 0 of the patch"),
    ];
    for (edit, expected) in cases {
        match model.forward_edited(&mut acts, &ids(), None, std::slice::from_ref(&edit)) {
            Err(err @ ModelError::InvalidEdit { .. }) => {
                assert!(err.to_string().contains(expected), "{edit:?}: {err} does not say {expected:?}")
            }
            other => panic!("{edit:?}: expected an invalid-edit error, got {other:?}"),
        }
    }
}

#[test]
fn an_ablated_copy_runs_like_the_edited_forward() {
    let model = model();
    let ablations =
        [Knockout::Head { layer: 0, head: 1 }, Knockout::Mlp { layer: 2 }, Knockout::Head { layer: 2, head: 0 }];
    let edits: Vec<Edit> = ablations.iter().map(|a| a.edit()).collect();
    let ablated = model.ablated(&ablations).unwrap();
    let expected = fresh(&model, &edits);
    let got = plain(&ablated).logits;
    let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "folded ablation differs from the edited forward by {worst}");
    assert_ne!(got, plain(&model).logits, "the ablation changed nothing");
    assert_eq!(model.params, self::model().params, "the original model was changed");
    let err = model.ablated(&[Knockout::Head { layer: 0, head: 2 }]).unwrap_err();
    assert!(err.to_string().contains("head 2 is out of range"), "{err}");
}
