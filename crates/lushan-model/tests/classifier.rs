//! The sequence-classification head against `transformers`' `GPT2ForSequenceClassification`
//! (`tests/fixtures/hf_gpt2_classifier_tiny`, written by `tools/make_finetune_fixtures.py`): the directory
//! `save_pretrained` wrote loads with its labels and padding id, and lushan computes the same logits, loss
//! and gradient of every tensor on a right-padded batch (rows of 6, 10 and 1 real tokens); what lushan
//! saves has exactly `transformers`' tensor names and config keys. Also: masked language-model losses
//! (ignored targets) equal the full forward's losses on the counted positions, and reshaped activations
//! equal freshly allocated ones.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::safetensors_io::{hf_full_name, hf_layers};
use lushan_model::checkpoint::{WEIGHTS_FILE, load_model_dir, save_model_dir};
use lushan_model::{Activations, Gpt, Head, Mode, ModelConfig, ParamKind};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const IGNORE: u32 = u32::MAX;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn read(dir: &Path) -> Self {
        Self { bytes: fs::read(dir.join("expected.safetensors")).unwrap() }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn ints(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        match t.dtype() {
            Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect(),
            Dtype::I32 => t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect(),
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A tensor of lushan's flat buffer in Hugging Face's layout (Conv1D weights transposed to `(in, out)`).
fn hf_view(model: &Gpt, buf: &[f32], kind: ParamKind, layer: usize) -> Vec<f32> {
    let src = &buf[model.layout.layer_range(kind, layer)];
    if !kind.hf_transposed() {
        return src.to_vec();
    }
    let shape = kind.shape(&model.config);
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = vec![0.0; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

#[test]
fn classifier_matches_transformers_logits_loss_and_every_gradient() {
    let dir = fixture("hf_gpt2_classifier_tiny");
    let (cfg, params) = load_model_dir(&dir).unwrap();
    assert_eq!(cfg.head, Head::Classifier { labels: vec!["neg".into(), "neu".into(), "pos".into()], pad_token_id: 95 });
    let model = Gpt::from_params(cfg, params).unwrap();
    let want = Expected::read(&dir);
    let (b, t) = (3, 10);
    let ids = want.ints("input_ids");
    let labels = want.ints("labels");
    let mut acts = Activations::new(&model.config, b, t).unwrap();
    let loss = model.forward(&mut acts, &ids, Some(&labels), Mode::Eval).unwrap().unwrap();
    assert_eq!(acts.pooled, want.ints("pooled_positions").iter().map(|&p| p as usize).collect::<Vec<_>>());
    let logit_diff = max_abs_diff(&acts.logits, &want.f32("logits"));
    assert!(logit_diff < 1e-4, "logits differ by {logit_diff}");
    let want_loss = want.f32("loss")[0];
    assert!((loss - want_loss).abs() < 1e-5, "loss {loss} vs {want_loss}");

    let mut grads = vec![0.0; model.num_params()];
    model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
    let mut checked = 0;
    for kind in ParamKind::ALL {
        for layer in hf_layers(kind, &model.config) {
            let name = hf_full_name(kind, layer);
            let expected = want.f32(&format!("grad.{name}"));
            let got = hf_view(&model, &grads, kind, layer);
            let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
            let diff = max_abs_diff(&got, &expected);
            assert!(diff <= 1e-5 + 1e-4 * scale, "grad.{name}: max diff {diff} (scale {scale})");
            checked += 1;
        }
    }
    assert_eq!(checked, 29, "every tensor of the classifier, score head included");
}

#[test]
fn classifier_saves_what_transformers_saves_and_reloads_bit_identically() {
    let dir = fixture("hf_gpt2_classifier_tiny");
    let (cfg, params) = load_model_dir(&dir).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_model_dir(out.path(), &cfg, &params).unwrap();
    let names = |path: &Path| -> BTreeSet<(String, Vec<usize>)> {
        let bytes = fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect()
    };
    assert_eq!(names(&out.path().join(WEIGHTS_FILE)), names(&dir.join(WEIGHTS_FILE)));
    let (cfg2, params2) = load_model_dir(out.path()).unwrap();
    assert_eq!((cfg2, params2), (cfg, params));
    let written: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for key in ["architectures", "id2label", "label2id", "pad_token_id", "problem_type"] {
        assert_eq!(written[key], theirs[key], "{key}");
    }
}

#[test]
fn a_classifier_file_needs_its_score_and_an_lm_file_refuses_one() {
    let dir = fixture("hf_gpt2_classifier_tiny");
    let (cfg, params) = load_model_dir(&dir).unwrap();
    // The same weights described as a language model: score.weight is unexpected.
    let mut lm = cfg.clone();
    lm.head = Head::LanguageModel;
    let e = lushan_model::checkpoint::load_safetensors(&dir.join(WEIGHTS_FILE), &lm).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor `score.weight`"), "{e}");
    // A classifier config over LM weights: score.weight is missing.
    let out = tempfile::tempdir().unwrap();
    let model = Gpt::from_params(cfg.clone(), params).unwrap();
    let lm_params: Vec<f32> = model.params[..model.layout.range(ParamKind::Score).start].to_vec();
    save_model_dir(out.path(), &lm, &lm_params).unwrap();
    let e = lushan_model::checkpoint::load_safetensors(&out.path().join(WEIGHTS_FILE), &cfg).unwrap_err().to_string();
    assert!(e.contains("missing tensor `score.weight`"), "{e}");
}

fn lm_model() -> Gpt {
    Gpt::new(ModelConfig::new(37, 16, 2, 2, 16), 5).unwrap()
}

#[test]
fn masked_targets_give_the_counted_positions_losses_and_gradients_of_a_full_forward() {
    let model = lm_model();
    let (b, t) = (2, 8);
    let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 7 + 1) % 37).collect();
    let full: Vec<u32> = (0..b * t).map(|i| (i as u32 * 5 + 3) % 37).collect();
    let masked: Vec<u32> =
        full.iter().enumerate().map(|(i, &y)| if i % t < 3 || i == 9 { IGNORE } else { y }).collect();
    let mut a_full = Activations::new(&model.config, b, t).unwrap();
    model.forward(&mut a_full, &ids, Some(&full), Mode::Eval).unwrap();
    let mut a_masked = Activations::new(&model.config, b, t).unwrap();
    let loss = model.forward(&mut a_masked, &ids, Some(&masked), Mode::Eval).unwrap().unwrap();
    let counted: Vec<usize> = (0..b * t).filter(|&i| masked[i] != IGNORE).collect();
    let want = counted.iter().map(|&i| a_full.losses[i] as f64).sum::<f64>() / counted.len() as f64;
    assert!((loss as f64 - want).abs() < 1e-6, "{loss} vs {want}");
    for (i, (&target, (&got, &full_loss))) in masked.iter().zip(a_masked.losses.iter().zip(&a_full.losses)).enumerate()
    {
        let expected = if target == IGNORE { 0.0 } else { full_loss };
        assert!((got - expected).abs() < 1e-6, "position {i}");
    }
    // Gradient of the masked mean = gradient of the full forward with a per-position weighting, checked by
    // finite differences on a few parameters.
    let mut grads = vec![0.0; model.num_params()];
    model.backward(&mut a_masked, &mut grads, 1.0, Mode::Eval);
    let loss_at = |params: &[f32]| {
        let m = Gpt::from_params(model.config.clone(), params.to_vec()).unwrap();
        let mut a = Activations::new(&m.config, b, t).unwrap();
        m.forward(&mut a, &ids, Some(&masked), Mode::Eval).unwrap().unwrap() as f64
    };
    for kind in [ParamKind::Wte, ParamKind::QkvW, ParamKind::LnfB, ParamKind::FcB] {
        let i = model.layout.range(kind).start + 3;
        let eps = 1e-2f32;
        let (mut plus, mut minus) = (model.params.clone(), model.params.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * eps as f64);
        assert!((grads[i] as f64 - numeric).abs() < 2e-3 + 2e-2 * numeric.abs(), "{kind:?}: {} vs {numeric}", grads[i]);
    }
}

#[test]
fn reshaped_buffers_compute_what_fresh_ones_do() {
    let model = lm_model();
    let ids: Vec<u32> = (0..3 * 5).map(|i| (i as u32 * 11 + 2) % 37).collect();
    let tg: Vec<u32> = (0..3 * 5).map(|i| (i as u32 * 3 + 1) % 37).collect();
    let mut fresh = Activations::new(&model.config, 3, 5).unwrap();
    let want = model.forward(&mut fresh, &ids, Some(&tg), Mode::Eval).unwrap();
    let mut big = Activations::new(&model.config, 4, 16).unwrap();
    let long: Vec<u32> = (0..64).map(|i| i % 37).collect();
    model.forward(&mut big, &long, Some(&long), Mode::Eval).unwrap();
    big.reshape(3, 5).unwrap();
    assert_eq!(model.forward(&mut big, &ids, Some(&tg), Mode::Eval).unwrap(), want);
    assert_eq!(big.logits, fresh.logits);
    let (mut g1, mut g2) = (vec![0.0; model.num_params()], vec![0.0; model.num_params()]);
    model.backward(&mut fresh, &mut g1, 1.0, Mode::Eval);
    model.backward(&mut big, &mut g2, 1.0, Mode::Eval);
    assert_eq!(g1, g2);
    assert!(big.reshape(5, 5).is_err() && big.reshape(1, 17).is_err() && big.reshape(0, 1).is_err());
}
