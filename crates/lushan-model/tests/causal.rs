#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
//! `explain`'s causal views: direct logit attribution adds up to the logit, ablation and patching sweeps
//! (batched, layers reused) equal single edited forwards, and all three agree with TransformerLens on the
//! `hf_gpt2_tiny` checkpoint (tests/fixtures/transformer_lens_tiny.json, made by
//! tools/transformer_lens_fixture.py) within 1e-4.

use lushan_model::checkpoint::load_model_dir;
use lushan_model::inspect::{Attribution, ComponentSweep, ExplainOptions, Explanation, explain};
use lushan_model::{Activations, Edit, Gpt, Mode, ModelConfig, ModelError, Site};
use serde_json::Value;
use std::path::Path;

const TOL: f32 = 1e-4;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny_checkpoint() -> Gpt {
    let (cfg, params) = load_model_dir(&fixture_dir().join("hf_gpt2_tiny")).unwrap();
    Gpt::from_params(cfg, params).unwrap()
}

/// A random model with weights wide enough that heads and layers matter.
fn random_model() -> Gpt {
    let mut model = Gpt::new(ModelConfig::new(50, 16, 3, 2, 16), 5).unwrap();
    model.params.iter_mut().for_each(|p| *p *= 4.0);
    model
}

fn token_text(id: u32) -> String {
    format!("<{id}>")
}

fn run(model: &Gpt, prompt: &[u32], options: &ExplainOptions) -> Explanation {
    explain(model, prompt, &token_text, options).unwrap()
}

fn sum_of_parts(a: &Attribution) -> f32 {
    a.components().iter().map(|c| c.value).sum()
}

/// The logits (T, V) of a plain forward.
fn logits(model: &Gpt, prompt: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, 1, prompt.len()).unwrap();
    model.forward(&mut acts, prompt, None, Mode::Eval).unwrap();
    acts.logits
}

#[test]
fn attribution_adds_up_to_the_logit_and_to_the_logit_difference() {
    let model = random_model();
    let prompt = [3u32, 17, 9, 41, 2, 30, 11];
    let v = model.config.vocab_size;
    let logits = logits(&model, &prompt);
    for position in [2, 6] {
        let options = ExplainOptions { position: Some(position), ..ExplainOptions::default() };
        let a = run(&model, &prompt, &options).attribution.unwrap();
        // Default target: the next prompt token, or at the end the model's top prediction.
        let row = &logits[position * v..(position + 1) * v];
        let expected_target = prompt
            .get(position + 1)
            .copied()
            .unwrap_or_else(|| (0..v).fold(0, |best, id| if row[id] > row[best] { id } else { best }) as u32);
        assert_eq!(a.target.id, expected_target);
        let logit = row[a.target.id as usize];
        assert!((a.total - logit).abs() < 1e-4, "total {} vs logit {logit}", a.total);
        assert!((sum_of_parts(&a) - logit).abs() < 1e-3, "parts {} vs logit {logit}", sum_of_parts(&a));
        assert_eq!(a.heads.len(), 3);
        assert!(a.heads.iter().all(|h| h.len() == 2));
        assert!(a.top.windows(2).all(|w| w[0].value.abs() >= w[1].value.abs()));

        let versus = (a.target.id + 1) % v as u32;
        let options = ExplainOptions { position: Some(position), versus: Some(versus), ..ExplainOptions::default() };
        let d = run(&model, &prompt, &options).attribution.unwrap();
        let diff = logit - row[versus as usize];
        assert!((d.total - diff).abs() < 1e-4 && (sum_of_parts(&d) - diff).abs() < 1e-3, "{} {diff}", d.total);
    }
}

/// Δ ln p(target) of one unbatched edited forward.
fn delta_log_prob(model: &Gpt, prompt: &[u32], position: usize, target: u32, edit: Edit) -> f32 {
    let v = model.config.vocab_size;
    let log_p = |logits: &[f32]| {
        let row = &logits[position * v..(position + 1) * v];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&z| (z as f64 - max).exp()).sum();
        row[target as usize] as f64 - max - sum.ln()
    };
    let mut acts = Activations::new(&model.config, 1, prompt.len()).unwrap();
    model.forward_edited(&mut acts, prompt, None, &[edit]).unwrap();
    (log_p(&acts.logits) - log_p(&logits(model, prompt))) as f32
}

#[test]
fn the_batched_ablation_sweep_equals_one_edited_forward_per_component() {
    let model = random_model();
    let prompt = [3u32, 17, 9, 41, 2, 30, 11, 8];
    let options = ExplainOptions { ablate: true, position: Some(5), ..ExplainOptions::default() };
    let ablation = run(&model, &prompt, &options).ablation.unwrap();
    assert_eq!(ablation.target.id, 11);
    assert!(ablation.mean.is_none() && ablation.data.is_none());
    for layer in 0..3 {
        for head in 0..2 {
            let expected = delta_log_prob(&model, &prompt, 5, 11, Edit::zero(Site::HeadZ { layer, head }));
            let got = ablation.zero.heads[layer][head];
            assert!((got - expected).abs() < 1e-4, "L{layer}H{head}: {got} vs {expected}");
        }
        let expected = delta_log_prob(&model, &prompt, 5, 11, Edit::zero(Site::MlpOut { layer }));
        assert!((ablation.zero.mlp[layer] - expected).abs() < 1e-4, "MLP {layer}");
    }
    assert!(ablation.zero.heads.iter().flatten().any(|d| d.abs() > 1e-3), "no head mattered: {ablation:?}");
}

#[test]
fn patching_embeddings_of_unchanged_positions_recovers_nothing() {
    let model = random_model();
    let clean = [3u32, 17, 9, 41, 2, 30, 11, 8];
    let mut corrupted = clean;
    corrupted[2] = 40;
    let options = ExplainOptions {
        corrupt: Some(corrupted.to_vec()),
        target: Some(5),
        versus: Some(6),
        ..ExplainOptions::default()
    };
    let patching = run(&model, &clean, &options).patching.unwrap();
    assert_eq!(patching.resid.len(), 3);
    for (position, &value) in patching.resid[0].iter().enumerate() {
        if position == 2 {
            // The only difference between the prompts: patching it back restores the clean run exactly.
            assert!((value - 1.0).abs() < 1e-4, "position 2 recovered {value}");
        } else {
            assert_eq!(value, 0.0, "position {position} is the same token in both prompts");
        }
    }
    assert!((patching.clean_diff - patching.corrupted_diff).abs() > 1e-6);
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn grid(value: &Value) -> Vec<Vec<f32>> {
    value.as_array().unwrap().iter().map(floats).collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn assert_close(what: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!((g - e).abs() < TOL, "{what}[{i}]: lushan {g}, TransformerLens {e}");
    }
}

fn assert_grid(what: &str, got: &[Vec<f32>], expected: &[Vec<f32>]) {
    assert_eq!(got.len(), expected.len(), "{what}: rows");
    for (row, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_close(&format!("{what}[{row}]"), g, e);
    }
}

fn assert_attribution(what: &str, got: &Attribution, expected: &Value) {
    assert_close(&format!("{what}.total"), &[got.total], &[expected["total"].as_f64().unwrap() as f32]);
    assert_close(&format!("{what}.embed"), &[got.embed], &[expected["embed"].as_f64().unwrap() as f32]);
    assert_grid(&format!("{what}.heads"), &got.heads, &grid(&expected["heads"]));
    assert_close(&format!("{what}.attn_bias"), &got.attn_bias, &floats(&expected["attn_bias"]));
    assert_close(&format!("{what}.mlp"), &got.mlp, &floats(&expected["mlp"]));
    let ln_bias = expected["ln_final_bias"].as_f64().unwrap() as f32;
    assert_close(&format!("{what}.ln_final_bias"), &[got.ln_final_bias], &[ln_bias]);
}

fn assert_sweep(what: &str, got: &ComponentSweep, expected: &Value) {
    assert_grid(&format!("{what}.heads"), &got.heads, &grid(&expected["heads"]));
    assert_close(&format!("{what}.mlp"), &got.mlp, &floats(&expected["mlp"]));
}

#[test]
fn attribution_ablation_and_patching_agree_with_transformer_lens() {
    let text = std::fs::read_to_string(fixture_dir().join("transformer_lens_tiny.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let model = tiny_checkpoint();
    let tokens = ids(&fx["tokens"]);
    let position = fx["position"].as_u64().unwrap() as usize;
    let (target, versus) = (fx["target"].as_u64().unwrap() as u32, fx["versus"].as_u64().unwrap() as u32);

    // Defaults: the last position, the model's top prediction there, the corrupted run's top prediction.
    let options = ExplainOptions {
        corrupt: Some(ids(&fx["corrupted"])),
        ablation_reference: Some(ids(&fx["reference"])),
        ablation_data: Some(ids(&fx["data"])),
        ..ExplainOptions::default()
    };
    let explanation = run(&model, &tokens, &options);
    let attribution = explanation.attribution.unwrap();
    assert_eq!((attribution.position, attribution.target.id), (position, target));
    assert_attribution("attribution", &attribution, &fx["attribution"]);

    let ablation = explanation.ablation.unwrap();
    let expected = &fx["ablation"];
    assert_close("clean log p", &[ablation.clean_log_prob], &[expected["clean"].as_f64().unwrap() as f32]);
    assert_sweep("zero ablation", &ablation.zero, &expected["zero"]);
    assert_sweep("mean ablation", ablation.mean.as_ref().unwrap(), &expected["mean"]);
    let data = ablation.data.unwrap();
    let expected = &fx["data_ablation"];
    assert_close("clean data loss", &[data.clean_loss], &[expected["clean"].as_f64().unwrap() as f32]);
    assert_sweep("zero ablation over data", &data.zero, &expected["zero"]);
    assert_sweep("mean ablation over data", data.mean.as_ref().unwrap(), &expected["mean"]);

    let patching = explanation.patching.unwrap();
    assert_eq!((patching.target.id, patching.versus.id), (target, versus));
    let expected = &fx["patching"];
    let diffs = [expected["clean_diff"].as_f64().unwrap() as f32, expected["corrupted_diff"].as_f64().unwrap() as f32];
    assert_close("logit differences", &[patching.clean_diff, patching.corrupted_diff], &diffs);
    assert_grid("patched residual streams", &patching.resid, &grid(&expected["resid"]));
    assert_grid("patched heads", &patching.heads, &grid(&expected["heads"]));

    // With --versus, the attribution is of the logit difference.
    let options = ExplainOptions { versus: Some(versus), ..ExplainOptions::default() };
    let attribution = run(&model, &tokens, &options).attribution.unwrap();
    assert_attribution("attribution versus", &attribution, &fx["attribution_versus"]);
}

#[test]
fn bad_requests_name_what_was_wrong() {
    let model = random_model();
    let prompt = [3u32, 17, 9, 41];
    let error = |options: ExplainOptions| explain(&model, &prompt, &token_text, &options).unwrap_err();
    let field_of = |e: &ModelError| match e {
        ModelError::InvalidExplainOption { field, .. } => *field,
        other => panic!("unexpected error {other}"),
    };
    let e = error(ExplainOptions { corrupt: Some(vec![1, 2, 3]), ..ExplainOptions::default() });
    assert_eq!(field_of(&e), "corrupt");
    assert!(e.to_string().contains("3 tokens long but the prompt is 4"), "{e}");
    let e = error(ExplainOptions { position: Some(4), ..ExplainOptions::default() });
    assert_eq!(field_of(&e), "position");
    let e = error(ExplainOptions { target: Some(50), ..ExplainOptions::default() });
    assert_eq!(field_of(&e), "target");
    let e = error(ExplainOptions { target: Some(7), versus: Some(7), ..ExplainOptions::default() });
    assert_eq!(field_of(&e), "versus");
    let e = error(ExplainOptions { ablation_data: Some(vec![1]), ..ExplainOptions::default() });
    assert!(e.to_string().contains("ablation_data"), "{e}");
    let e = error(ExplainOptions { ablation_reference: Some(vec![]), ..ExplainOptions::default() });
    assert!(e.to_string().contains("ablation_reference"), "{e}");
    // The same prompt as its own corruption has no difference to recover.
    let e = error(ExplainOptions { corrupt: Some(prompt.to_vec()), versus: Some(1), ..ExplainOptions::default() });
    assert!(e.to_string().contains("changes nothing"), "{e}");
}
