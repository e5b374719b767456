//! Checkpoints that do not fit their config, hold non-finite weights, or carry a header built to exhaust
//! the loader: each is refused quickly, with a short message naming what is wrong.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::{
    CONFIG_FILE, MAX_HEADER_ENTRIES, WEIGHTS_FILE, load_model_dir, load_safetensors, save_model_dir,
};
use lushan_model::{Lora, LoraConfig, LoraTarget, ModelConfig, ModelError, ParamLayout};
use serde_json::Value;
use std::fs;
use std::path::Path;

fn tiny() -> ModelConfig {
    ModelConfig::new(11, 5, 2, 2, 8)
}

fn params(cfg: &ModelConfig) -> Vec<f32> {
    (0..ParamLayout::new(cfg).total()).map(|i| (i % 13) as f32 / 16.0 - 0.3).collect()
}

/// A saved tiny model whose `config.json` then gets `key` set to `value`.
fn with_config(dir: &Path, key: &str, value: Value) {
    let cfg = tiny();
    save_model_dir(dir, &cfg, &params(&cfg)).unwrap();
    let path = dir.join(CONFIG_FILE);
    let mut json: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    json[key] = value;
    fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn a_config_with_a_billion_layers_is_compared_with_the_file_not_enumerated() {
    for (n_layer, missing) in [(1_000_000_000u64, 11_999_999_976u64), (100_000, 1_199_976)] {
        let dir = tempfile::tempdir().unwrap();
        with_config(dir.path(), "n_layer", n_layer.into());
        let err = load_model_dir(dir.path()).unwrap_err();
        let ModelError::TensorMismatch { problems, total, .. } = &err else { panic!("wrong variant: {err}") };
        let message = err.to_string();
        assert_eq!(*total, missing, "{message}");
        assert!(problems.len() <= 8, "the message lists a few names, not every one: {message}");
        assert!(message.contains("but the file holds 28"), "{message}");
        assert!(message.contains("missing tensor `transformer.h.2.ln_1.weight`"), "{message}");
        assert!(message.contains(&format!("… and {} more missing tensors", missing - 5)), "{message}");
        assert!(message.contains("bytes of tensor data"), "{message}");
    }
}

#[test]
fn a_config_wider_than_the_file_names_the_byte_shortfall() {
    let dir = tempfile::tempdir().unwrap();
    with_config(dir.path(), "n_embd", 8192.into());
    let e = load_model_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("bytes even in F16") && e.contains("has shape"), "{e}");
    assert!(e.lines().count() < 20, "{e}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let cfg = tiny();
    let layout = ParamLayout::new(&cfg);
    let cases = [
        (lushan_model::ParamKind::Wte, f32::NAN, "transformer.wte.weight", "NaN"),
        // A Conv1D weight, stored transposed.
        (lushan_model::ParamKind::FcW, f32::INFINITY, "transformer.h.0.mlp.c_fc.weight", "inf"),
        (lushan_model::ParamKind::LnfB, f32::NEG_INFINITY, "transformer.ln_f.bias", "-inf"),
    ];
    for (kind, bad, name, shown) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut values = params(&cfg);
        values[layout.layer_range(kind, 0).start + 1] = bad;
        save_model_dir(dir.path(), &cfg, &values).unwrap();
        let e = load_safetensors(&dir.path().join(WEIGHTS_FILE), &cfg).unwrap_err().to_string();
        assert!(e.contains(&format!("tensor `{name}` holds {shown}")), "{e}");
        assert!(e.contains("1 of its"), "{e}");
    }
}

#[test]
fn a_non_finite_weight_past_the_first_chunk_read_is_named_by_its_index_in_the_tensor() {
    // The loader reads a tensor in chunks of 2^22 values: an embedding of 40 000 × 128 = 5 120 000 values
    // takes two, and the bad value lies in the second.
    let cfg = ModelConfig::new(40_000, 4, 1, 2, 128);
    let layout = ParamLayout::new(&cfg);
    let mut values = vec![0.01f32; layout.total()];
    let bad_index = 4_500_000;
    values[layout.layer_range(lushan_model::ParamKind::Wte, 0).start + bad_index] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    save_model_dir(dir.path(), &cfg, &values).unwrap();
    let e = load_safetensors(&dir.path().join(WEIGHTS_FILE), &cfg).unwrap_err().to_string();
    assert!(e.contains(&format!("tensor `transformer.wte.weight` holds NaN at index {bad_index} ")), "{e}");
    assert!(e.contains("from index 4194304"), "{e}");
}

#[test]
fn non_finite_adapter_weights_are_refused_naming_the_tensor() {
    let cfg = tiny();
    let config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::ALL[0]] };
    let mut lora = Lora::new(config.clone(), &cfg, 3).unwrap();
    let n = lora.params.len();
    lora.params[n - 1] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    lora.save_peft(dir.path(), &cfg, "").unwrap();
    let e = Lora::load_peft(dir.path(), &cfg).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("holds NaN"), "{e}");
    assert!(e.contains("lora_"), "{e}");
}

#[test]
fn a_header_with_a_hundred_thousand_entries_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    let entries: Vec<String> = (0..100_000)
        .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#, 4 * i, 4 * i + 4))
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + 400_000, 0);
    fs::write(&path, bytes).unwrap();
    let e = load_safetensors(&path, &tiny()).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains(WEIGHTS_FILE) && e.contains("100000 entries"), "{e}");
    assert!(e.contains(&format!("limit of {MAX_HEADER_ENTRIES}")), "{e}");
}
