//! LoRA inside lushan's forward and backward against `peft` (fixtures of `tools/make_finetune_fixtures.py`):
//! with the PEFT adapter attached, the logits, the (masked) loss and the gradient of every `lora_A` /
//! `lora_B` — and for the classifier the trained score head — equal PEFT's; the frozen base receives none.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::load_model_dir;
use lushan_model::lora::LoraSlot;
use lushan_model::{Activations, Gpt, Lora, Mode};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Expected(Vec<u8>);

impl Expected {
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// Integer ids; −100 (PyTorch's ignore index) becomes lushan's `u32::MAX`.
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        let width = t.dtype().bitsize() / 8;
        t.data()
            .chunks_exact(width)
            .map(|b| {
                let v = if width == 8 {
                    i64::from_le_bytes(b.try_into().unwrap())
                } else {
                    i32::from_le_bytes(b.try_into().unwrap()) as i64
                };
                if v < 0 { u32::MAX } else { v as u32 }
            })
            .collect()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Loads base + adapter, runs forward/backward on the fixture batch, compares with PEFT.
fn check(name: &str, base_dir: &Path, b: usize, t: usize, targets_key: &str) {
    let dir = fixture(name);
    let want = Expected(std::fs::read(dir.join("expected.safetensors")).unwrap());
    let (cfg, params) = load_model_dir(base_dir).unwrap();
    let mut model = Gpt::from_params(cfg, params).unwrap();
    let lora = Lora::load_peft(&dir.join("adapter"), &model.config).unwrap();
    model.attach_lora(lora).unwrap();
    // attach_lora takes the base's score head as the adapter's start; PEFT's saved one is the trained copy.
    let saved = Lora::load_peft(&dir.join("adapter"), &model.config).unwrap();
    model.lora = Some(saved);
    let ids = want.ids("input_ids");
    let targets = want.ids(targets_key);
    let mut acts = Activations::with_lora(&model.config, b, t, model.lora_shape()).unwrap();
    let loss = model.forward(&mut acts, &ids, Some(&targets), Mode::Eval).unwrap().unwrap();
    let want_logits = want.f32("logits");
    // The masked LM forward keeps only counted rows; compare logits from a forward without targets.
    let mut plain = Activations::with_lora(&model.config, b, t, model.lora_shape()).unwrap();
    model.forward(&mut plain, &ids, None, Mode::Eval).unwrap();
    let diff = max_abs_diff(&plain.logits, &want_logits);
    assert!(diff < 1e-4, "{name}: logits differ by {diff}");
    let want_loss = want.f32("loss")[0];
    assert!((loss - want_loss).abs() < 1e-5, "{name}: loss {loss} vs {want_loss}");

    let lora = model.lora.as_ref().unwrap();
    let mut grads = vec![0.0; lora.params.len()];
    model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
    let mut checked = 0;
    for entry in lora.layout.entries() {
        let expected = want.f32(&format!("grad.{}", entry.slot.peft_name()));
        let got = &grads[entry.range.clone()];
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
        let d = max_abs_diff(got, &expected);
        assert!(d <= 1e-5 + 1e-4 * scale, "{name}: grad of {:?} differs by {d} (scale {scale})", entry.slot);
        checked += 1;
    }
    assert_eq!(checked, lora.layout.entries().len());
    assert!(checked > 0 && (name.ends_with("cls") == lora.layout.entries().iter().any(|e| e.slot == LoraSlot::Score)));
}

#[test]
fn lora_on_a_language_model_matches_peft_logits_masked_loss_and_adapter_gradients() {
    let dir = fixture("peft_lora_tiny_lm");
    check("peft_lora_tiny_lm", &dir.join("base"), 2, 10, "targets");
}

#[test]
fn lora_on_a_classifier_matches_peft_logits_loss_and_adapter_and_score_gradients() {
    check("peft_lora_tiny_cls", &fixture("hf_gpt2_classifier_tiny"), 3, 10, "labels");
}

#[test]
fn merging_gives_the_attached_adapters_logits_and_activations_must_have_room() {
    let dir = fixture("peft_lora_tiny_lm");
    let (cfg, params) = load_model_dir(&dir.join("base")).unwrap();
    let mut model = Gpt::from_params(cfg, params).unwrap();
    model.lora = Some(Lora::load_peft(&dir.join("adapter"), &model.config).unwrap());
    let ids: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 96).collect();
    let mut no_room = Activations::new(&model.config, 1, 10).unwrap();
    let e = model.forward(&mut no_room, &ids, None, Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("LoRA"), "{e}");
    let mut acts = Activations::with_lora(&model.config, 1, 10, model.lora_shape()).unwrap();
    model.forward(&mut acts, &ids, None, Mode::Eval).unwrap();
    let attached = acts.logits.clone();
    model.merge_lora().unwrap();
    assert!(model.lora.is_none());
    let mut plain = Activations::new(&model.config, 1, 10).unwrap();
    model.forward(&mut plain, &ids, None, Mode::Eval).unwrap();
    let d = max_abs_diff(&attached, &plain.logits);
    assert!(d < 1e-4, "merged vs attached logits differ by {d}");
}
