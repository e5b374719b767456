//! Checkpoint formats (DESIGN.md §6, §9 "formats"): lossless round trips, Hugging Face names and
//! layouts, strict loading with every problem listed, and named errors for broken files.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::safetensors_io::{HF_PREFIX, hf_layers, hf_shape};
use lushan_model::checkpoint::{
    CONFIG_FILE, WEIGHTS_FILE, atomic_write, atomic_write_with, load_model_dir, load_safetensors, parse_config_json,
    save_model_dir, save_safetensors, write_config_json,
};
use lushan_model::{ModelConfig, ModelError, ParamKind, ParamLayout, PositionEncoding};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;

/// L=2, NH=2, C=8, V=11, T=5: small, yet every dimension differs so transposes are caught.
fn tiny(pe: PositionEncoding) -> ModelConfig {
    let mut cfg = ModelConfig::new(11, 5, 2, 2, 8);
    cfg.position_encoding = pe;
    cfg.dropout = 0.1;
    cfg
}

/// Deterministic values spread over many exponents (xorshift), so any byte-level mistake shows.
fn random_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..ParamLayout::new(cfg).total())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Values in multiples of 1/8 within ±4: exact in F16 and BF16, so conversions can be checked exactly.
fn coarse_params(cfg: &ModelConfig) -> Vec<f32> {
    (0..ParamLayout::new(cfg).total()).map(|i| ((i * 7 % 61) as f32 - 30.0) / 8.0).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every tensor of a saved file, by name, as (dtype, shape, raw bytes).
type Raw = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_raw(path: &Path) -> Raw {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Raw =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_raw(path: &Path, tensors: &Raw) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn saved_raw(cfg: &ModelConfig, params: &[f32]) -> (tempfile::TempDir, std::path::PathBuf, Raw) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    save_safetensors(&path, cfg, params).unwrap();
    let raw = read_raw(&path);
    (dir, path, raw)
}

fn load_err(path: &Path, cfg: &ModelConfig) -> String {
    load_safetensors(path, cfg).unwrap_err().to_string()
}

#[test]
fn save_load_is_bit_identical_for_both_position_encodings() {
    for pe in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let cfg = tiny(pe);
        let params = random_params(&cfg, 7);
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("ckpt");
        save_model_dir(&model, &cfg, &params).unwrap();
        let (cfg2, params2) = load_model_dir(&model).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(bits(&params2), bits(&params));
        let mut names: Vec<_> = fs::read_dir(&model).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![CONFIG_FILE, WEIGHTS_FILE], "no temporary files left behind");
    }
}

#[test]
fn config_json_round_trips_and_looks_like_hugging_face() {
    let mut cfg = tiny(PositionEncoding::Sinusoidal);
    cfg.layer_norm_epsilon = 1e-6;
    let text = write_config_json(&cfg);
    assert_eq!(parse_config_json(&text, Path::new(CONFIG_FILE)).unwrap(), cfg);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model_type"], "gpt2");
    assert_eq!(v["architectures"][0], "GPT2LMHeadModel");
    assert_eq!((v["n_positions"].as_u64(), v["n_ctx"].as_u64()), (Some(5), Some(5)));
    assert_eq!((v["n_embd"].as_u64(), v["n_layer"].as_u64(), v["n_head"].as_u64()), (Some(8), Some(2), Some(2)));
    assert!(v["n_inner"].is_null());
    assert_eq!(v["activation_function"], "gelu_new");
    for key in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
        assert_eq!(v[key].as_f64(), Some(0.1), "{key}");
    }
    assert_eq!((v["bos_token_id"].as_u64(), v["eos_token_id"].as_u64()), (Some(10), Some(10)));
    assert_eq!((v["tie_word_embeddings"].as_bool(), v["scale_attn_weights"].as_bool()), (Some(true), Some(true)));
    assert_eq!(v["lushan"]["position_encoding"], "sinusoidal");
    assert_eq!(v["lushan"]["format_version"], 1);
}

#[test]
fn file_holds_exactly_the_hugging_face_names_and_layouts() {
    let cfg = tiny(PositionEncoding::Learned);
    let params = random_params(&cfg, 3);
    let (_dir, _path, raw) = saved_raw(&cfg, &params);
    let expected: BTreeSet<String> = ParamKind::ALL
        .iter()
        .flat_map(|&k| hf_layers(k, &cfg).map(move |l| format!("{HF_PREFIX}{}", k.hf_name(l))))
        .collect();
    let got: BTreeSet<String> = raw.iter().map(|t| t.0.clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 4 + 12 * 2);
    let shape_of = |name: &str| raw.iter().find(|t| t.0 == name).unwrap().2.clone();
    let (c, v, t) = (8, 11, 5);
    assert_eq!(shape_of("transformer.wte.weight"), [v, c]);
    assert_eq!(shape_of("transformer.wpe.weight"), [t, c]);
    assert_eq!(shape_of("transformer.h.0.attn.c_attn.weight"), [c, 3 * c]);
    assert_eq!(shape_of("transformer.h.1.mlp.c_fc.weight"), [c, 4 * c]);
    assert_eq!(shape_of("transformer.h.1.mlp.c_proj.weight"), [4 * c, c]);
    assert_eq!(shape_of("transformer.ln_f.bias"), [c]);
    assert!(raw.iter().all(|t| t.1 == Dtype::F32));

    // Conv1D transpose: HF element [i, o] is our element (o, i).
    let layout = ParamLayout::new(&cfg);
    let ours = &params[layout.layer_range(ParamKind::FcProjW, 1)]; // (C, 4C)
    let hf = &raw.iter().find(|t| t.0 == "transformer.h.1.mlp.c_proj.weight").unwrap().3; // (4C, C)
    for (i, o) in [(0, 0), (5, 3), (31, 7), (17, 2)] {
        let b = &hf[(i * c + o) * 4..][..4];
        assert_eq!(f32::from_le_bytes(b.try_into().unwrap()), ours[o * 4 * c + i]);
    }
    let bytes = fs::read(_path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap().get("format").map(String::as_str), Some("pt"));
}

#[test]
fn names_without_prefix_and_ignored_buffers_load() {
    let cfg = tiny(PositionEncoding::Learned);
    let params = random_params(&cfg, 4);
    let (_dir, path, mut raw) = saved_raw(&cfg, &params);
    for t in &mut raw {
        t.0 = t.0.strip_prefix(HF_PREFIX).unwrap().to_string();
    }
    for l in 0..cfg.n_layer {
        raw.push((format!("h.{l}.attn.bias"), Dtype::F32, vec![1, 1, 5, 5], vec![0; 100]));
        raw.push((format!("{HF_PREFIX}h.{l}.attn.masked_bias"), Dtype::F32, vec![], vec![0; 4]));
    }
    write_raw(&path, &raw);
    assert_eq!(bits(&load_safetensors(&path, &cfg).unwrap()), bits(&params));
}

#[test]
fn tied_lm_head_is_accepted_and_untied_rejected() {
    let cfg = tiny(PositionEncoding::Learned);
    let params = random_params(&cfg, 5);
    let (_dir, path, mut raw) = saved_raw(&cfg, &params);
    let wte = raw.iter().find(|t| t.0 == "transformer.wte.weight").unwrap().clone();
    raw.push(("lm_head.weight".into(), wte.1, wte.2.clone(), wte.3.clone()));
    write_raw(&path, &raw);
    assert_eq!(bits(&load_safetensors(&path, &cfg).unwrap()), bits(&params));

    let last = raw.len() - 1;
    raw[last].3[0] ^= 0x01;
    write_raw(&path, &raw);
    let e = load_err(&path, &cfg);
    assert!(e.contains("lm_head.weight") && e.contains("untied"), "{e}");
}

#[test]
fn f16_and_bf16_tensors_load_as_f32() {
    let cfg = tiny(PositionEncoding::Learned);
    let params = coarse_params(&cfg);
    for dtype in [Dtype::F16, Dtype::BF16] {
        let (_dir, path, mut raw) = saved_raw(&cfg, &params);
        for t in &mut raw {
            t.1 = dtype;
            t.3 = t.3.chunks_exact(4).flat_map(|b| to_half(f32::from_le_bytes(b.try_into().unwrap()), dtype)).collect();
        }
        write_raw(&path, &raw);
        assert_eq!(bits(&load_safetensors(&path, &cfg).unwrap()), bits(&params), "{dtype:?}");
    }
}

/// Encodes values that are exactly representable (the multiples of 1/8 from `coarse_params`).
fn to_half(x: f32, dtype: Dtype) -> [u8; 2] {
    let b = x.to_bits();
    let h = if dtype == Dtype::BF16 {
        assert_eq!(b & 0xffff, 0);
        (b >> 16) as u16
    } else if x == 0.0 {
        ((b >> 16) & 0x8000) as u16
    } else {
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        assert!((1..31).contains(&exp) && b & 0x1fff == 0, "{x} is not exact in f16");
        (((b >> 16) & 0x8000) | ((exp as u32) << 10) | ((b >> 13) & 0x3ff)) as u16
    };
    h.to_le_bytes()
}

#[test]
fn all_problems_are_listed_in_one_error() {
    let cfg = tiny(PositionEncoding::Learned);
    let (_dir, path, mut raw) = saved_raw(&cfg, &random_params(&cfg, 6));
    raw.retain(|t| t.0 != "transformer.h.1.ln_2.bias");
    raw.push(("transformer.h.2.ln_1.weight".into(), Dtype::F32, vec![8], vec![0; 32]));
    let qkv = raw.iter_mut().find(|t| t.0 == "transformer.h.0.attn.c_attn.weight").unwrap();
    qkv.2 = vec![24, 8]; // ours, not HF's (8, 24)
    let ln = raw.iter_mut().find(|t| t.0 == "transformer.ln_f.weight").unwrap();
    ln.1 = Dtype::I32;
    write_raw(&path, &raw);
    let err = load_safetensors(&path, &cfg).unwrap_err();
    let ModelError::TensorMismatch { problems, .. } = &err else { panic!("wrong variant: {err}") };
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let e = err.to_string();
    assert!(e.contains(WEIGHTS_FILE), "{e}");
    assert!(e.contains("missing tensor `transformer.h.1.ln_2.bias`"), "{e}");
    assert!(e.contains("unexpected tensor `transformer.h.2.ln_1.weight`"), "{e}");
    assert!(e.contains("`transformer.h.0.attn.c_attn.weight` has shape [24, 8], expected [8, 24]"), "{e}");
    assert!(e.contains("`transformer.ln_f.weight` has dtype I32"), "{e}");
}

#[test]
fn broken_files_give_named_errors() {
    let cfg = tiny(PositionEncoding::Learned);
    let (_dir, path, _) = saved_raw(&cfg, &random_params(&cfg, 8));
    let good = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short"),
        ("seven bytes", vec![1; 7], "too short"),
        ("truncated data", good[..good.len() - 10].to_vec(), "truncated"),
        ("truncated header", good[..(8 + header_len as usize / 2)].to_vec(), "header claims"),
        ("header beyond file", [&u64::MAX.to_le_bytes()[..], b"{}"].concat(), "header claims"),
        ("garbage", b"\x10\0\0\0\0\0\0\0this is not json".to_vec(), "not valid JSON"),
        ("text file", b"hello, I am definitely not a model file\n".to_vec(), "header claims"),
    ];
    for (what, bytes, needle) in cases {
        fs::write(&path, bytes).unwrap();
        let e = load_err(&path, &cfg);
        assert!(e.contains(WEIGHTS_FILE) && e.contains(needle), "{what}: {e}");
    }
    // A header length within the file but over safetensors' 100 MB limit (a sparse file: no disk used).
    fs::write(&path, 200_000_000u64.to_le_bytes()).unwrap();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(200_000_100).unwrap();
    let e = load_err(&path, &cfg);
    assert!(e.contains("limit"), "{e}");
    fs::remove_file(&path).unwrap();
    assert!(load_err(&path, &cfg).contains(WEIGHTS_FILE));
}

#[test]
fn missing_directory_config_and_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = load_model_dir(&missing).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");

    let cfg = tiny(PositionEncoding::Learned);
    let model = dir.path().join("m");
    save_model_dir(&model, &cfg, &random_params(&cfg, 9)).unwrap();
    fs::remove_file(model.join(CONFIG_FILE)).unwrap();
    let e = load_model_dir(&model).unwrap_err().to_string();
    assert!(e.contains(CONFIG_FILE) && e.contains("missing"), "{e}");

    fs::write(model.join(CONFIG_FILE), write_config_json(&cfg)).unwrap();
    fs::remove_file(model.join(WEIGHTS_FILE)).unwrap();
    let e = load_model_dir(&model).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("missing"), "{e}");
}

#[test]
fn pickle_only_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(PositionEncoding::Learned);
    fs::write(dir.path().join(CONFIG_FILE), write_config_json(&cfg)).unwrap();
    fs::write(dir.path().join("pytorch_model.bin"), b"PK\x03\x04 not really a pickle").unwrap();
    let e = load_model_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("safetensors required") && e.contains("pytorch_model.bin") && e.contains("never"), "{e}");
}

#[test]
fn bad_config_json_names_the_field() {
    let cfg = tiny(PositionEncoding::Learned);
    let dir = tempfile::tempdir().unwrap();
    save_model_dir(dir.path(), &cfg, &random_params(&cfg, 10)).unwrap();
    let good: serde_json::Value = serde_json::from_str(&write_config_json(&cfg)).unwrap();
    let cases = [
        ("n_layer", serde_json::json!("two"), "n_layer"),
        ("activation_function", serde_json::json!("relu"), "activation_function"),
        ("n_embd", serde_json::json!(9), "n_embd"),
    ];
    for (key, value, needle) in cases {
        let mut v = good.clone();
        v[key] = value;
        fs::write(dir.path().join(CONFIG_FILE), v.to_string()).unwrap();
        let e = load_model_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(CONFIG_FILE) && e.contains(&format!("`{needle}`")), "{key}: {e}");
    }
    fs::write(dir.path().join(CONFIG_FILE), "{ not json").unwrap();
    let e = load_model_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains(CONFIG_FILE) && e.contains("invalid JSON"), "{e}");
}

#[test]
fn n_embd_not_divisible_by_n_head_is_rejected() {
    let text = r#"{"model_type":"gpt2","vocab_size":11,"n_positions":5,"n_embd":9,"n_layer":2,"n_head":2}"#;
    let e = parse_config_json(text, Path::new(CONFIG_FILE)).unwrap_err().to_string();
    assert!(e.contains("n_embd") && e.contains("n_head"), "{e}");
}

#[test]
fn shapes_follow_config_json() {
    let cfg = tiny(PositionEncoding::Learned);
    let (_dir, path, _) = saved_raw(&cfg, &random_params(&cfg, 11));
    let mut bigger = cfg.clone();
    bigger.vocab_size = 12;
    let e = load_err(&path, &bigger);
    assert!(e.contains("`transformer.wte.weight` has shape [11, 8], expected [12, 8]"), "{e}");
    assert_eq!(hf_shape(ParamKind::QkvW, &cfg), [8, 24]);
}

#[test]
fn wrong_buffer_length_is_an_error() {
    let cfg = tiny(PositionEncoding::Learned);
    let dir = tempfile::tempdir().unwrap();
    let e = save_model_dir(dir.path(), &cfg, &[0.0; 3]).unwrap_err().to_string();
    assert!(e.contains("holds 3 floats"), "{e}");
}

#[test]
fn failed_atomic_write_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CONFIG_FILE);
    atomic_write(&path, b"old contents").unwrap();
    let r = atomic_write_with(&path, |f| {
        use std::io::Write;
        f.write_all(b"new, half")?;
        Err(std::io::Error::other("simulated disk full"))
    });
    assert!(r.is_err());
    assert_eq!(fs::read(&path).unwrap(), b"old contents");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file removed");
}
