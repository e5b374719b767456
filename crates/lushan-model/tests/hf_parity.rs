//! Hugging Face GPT-2 parity (DESIGN.md §6, §9): directories written by `transformers`' `save_pretrained`
//! load into lushan and compute what `transformers` computed — logits, attention maps and greedy ids —
//! in float32, float16 and bfloat16, with and without the `transformer.` prefix; and what lushan saves
//! from them reloads bit-identically as float32.
//!
//! The fixtures under `tests/fixtures/hf_gpt2_tiny*/` and their `expected.safetensors` come from
//! `tools/make_hf_fixtures.py` (see tools/README.md): V=96, n_positions=48, C=48, L=2, NH=4, weights drawn
//! wide enough that greedy decoding visits 14 distinct tokens with a clear top-2 logit gap at every step.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::safetensors_io::HF_PREFIX;
use lushan_model::checkpoint::{WEIGHTS_FILE, load_model_dir, save_model_dir};
use lushan_model::{Activations, Generator, Gpt, Mode, ModelConfig, PositionEncoding, Sampling};
use safetensors::{Dtype, SafeTensors};
use std::fs;
use std::path::{Path, PathBuf};

/// Each fixture directory and the dtype its `model.safetensors` stores.
const FIXTURES: [(&str, Dtype); 4] = [
    ("hf_gpt2_tiny", Dtype::F32),
    ("hf_gpt2_tiny_f16", Dtype::F16),
    ("hf_gpt2_tiny_bf16", Dtype::BF16),
    ("hf_gpt2_tiny_noprefix", Dtype::F32),
];

/// Absolute tolerance against `transformers` (observed differences are ~1e-6; see the report printed by
/// the tests with `--nocapture`).
const TOL: f32 = 1e-4;
const SEQ_LEN: usize = 20;
const PROMPT_LEN: usize = 8;
const NEW_TOKENS: usize = 32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

fn expected_config() -> ModelConfig {
    let mut cfg = ModelConfig::new(96, 48, 2, 4, 48);
    cfg.dropout = 0.0;
    cfg.layer_norm_epsilon = 1e-5;
    cfg.position_encoding = PositionEncoding::Learned;
    cfg
}

/// What `transformers` computed for one fixture directory.
struct Expected {
    input_ids: Vec<u32>,
    /// (1, T, V).
    logits: Vec<f32>,
    /// Prompt (the first `PROMPT_LEN` input ids) followed by `NEW_TOKENS` greedy ids.
    greedy: Vec<u32>,
    /// (L, 1, NH, T, T).
    attentions: Vec<f32>,
}

fn read_expected(dir: &Path) -> Expected {
    let bytes = fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str, dtype: Dtype, shape: &[usize]| {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape()), (dtype, shape), "{}: {name}", dir.display());
        t.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]).collect::<Vec<[u8; 4]>>()
    };
    let ids = |v: Vec<[u8; 4]>| v.into_iter().map(|b| u32::try_from(i32::from_le_bytes(b)).unwrap()).collect();
    let floats = |v: Vec<[u8; 4]>| v.into_iter().map(f32::from_le_bytes).collect();
    let cfg = expected_config();
    let (v, l, nh) = (cfg.vocab_size, cfg.n_layer, cfg.n_head);
    Expected {
        input_ids: ids(tensor("input_ids", Dtype::I32, &[1, SEQ_LEN])),
        logits: floats(tensor("logits", Dtype::F32, &[1, SEQ_LEN, v])),
        greedy: ids(tensor("greedy", Dtype::I32, &[1, PROMPT_LEN + NEW_TOKENS])),
        attentions: floats(tensor("attentions", Dtype::F32, &[l, 1, nh, SEQ_LEN, SEQ_LEN])),
    }
}

fn load(name: &str) -> (Gpt, Expected) {
    let dir = fixture(name);
    let (cfg, params) = load_model_dir(&dir).unwrap();
    assert_eq!(cfg, expected_config(), "{name}");
    (Gpt::from_params(cfg, params).unwrap(), read_expected(&dir))
}

/// Largest |a - b|, asserting equal lengths and finite values.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

fn forward(model: &Gpt, ids: &[u32]) -> Activations {
    let mut acts = Activations::new(&model.config, 1, ids.len()).unwrap();
    model.forward(&mut acts, ids, None, Mode::Eval).unwrap();
    acts
}

/// The tensors stored in a weights file: (name, dtype).
fn stored(path: &Path) -> Vec<(String, Dtype)> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.dtype())).collect();
    out.sort();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fixtures_are_what_they_claim() {
    for (name, dtype) in FIXTURES {
        let tensors = stored(&fixture(name).join(WEIGHTS_FILE));
        // 2 embeddings + ln_f (2) + 12 per layer; the tied lm_head is not stored.
        assert_eq!(tensors.len(), 4 + 12 * 2, "{name}");
        assert!(tensors.iter().all(|(_, d)| *d == dtype), "{name}: {tensors:?}");
        let prefixed = tensors.iter().filter(|(n, _)| n.starts_with(HF_PREFIX)).count();
        let want = if name.ends_with("noprefix") { 0 } else { tensors.len() };
        assert_eq!(prefixed, want, "{name}: {tensors:?}");
    }
}

#[test]
fn logits_match_transformers() {
    for (name, _) in FIXTURES {
        let (model, want) = load(name);
        let acts = forward(&model, &want.input_ids);
        let diff = max_abs_diff(&acts.logits, &want.logits);
        println!("{name}: max |logits - transformers| = {diff:.3e}");
        assert!(diff <= TOL, "{name}: logits differ from transformers by up to {diff}");
    }
}

#[test]
fn attention_maps_match_transformers() {
    for (name, _) in FIXTURES {
        let (model, want) = load(name);
        let acts = forward(&model, &want.input_ids);
        let per_layer = want.attentions.len() / model.config.n_layer;
        let mut worst = 0.0f32;
        for (l, layer) in acts.layers.iter().enumerate() {
            let diff = max_abs_diff(&layer.att, &want.attentions[l * per_layer..(l + 1) * per_layer]);
            assert!(diff <= TOL, "{name}: layer {l} attention differs from transformers by up to {diff}");
            worst = worst.max(diff);
        }
        println!("{name}: max |attention - transformers| = {worst:.3e}");
    }
}

#[test]
fn greedy_generation_matches_transformers_generate() {
    for (name, _) in FIXTURES {
        let (model, want) = load(name);
        assert_eq!(want.greedy[..PROMPT_LEN], want.input_ids[..PROMPT_LEN], "{name}: fixture prompt");
        let mut g = Generator::new(&model, &want.input_ids[..PROMPT_LEN], Sampling::greedy(), 0, NEW_TOKENS).unwrap();
        let mut got = Vec::new();
        while let Some(token) = g.next_token().unwrap() {
            got.push(token);
        }
        assert_eq!(got, want.greedy[PROMPT_LEN..], "{name}");
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert!(distinct.len() >= 10, "{name}: the fixture's greedy continuation is degenerate: {got:?}");
    }
}

/// The four directories hold one model: without the prefix bit-identical, in half precision within the
/// format's rounding of the float32 weights.
#[test]
fn every_variant_holds_the_same_model() {
    let (_, reference) = load_model_dir(&fixture("hf_gpt2_tiny")).unwrap();
    let (_, noprefix) = load_model_dir(&fixture("hf_gpt2_tiny_noprefix")).unwrap();
    assert_eq!(bits(&noprefix), bits(&reference));
    // Round to nearest: relative error at most 2^-11 (f16, normal range) or 2^-8 (bf16). The f16 bound
    // allows an absolute 2^-25 for the values that fall into f16's subnormal range.
    for (name, rel, abs) in
        [("hf_gpt2_tiny_f16", 2f32.powi(-11), 2f32.powi(-25)), ("hf_gpt2_tiny_bf16", 2f32.powi(-8), 0.0)]
    {
        let (_, half) = load_model_dir(&fixture(name)).unwrap();
        assert_eq!(half.len(), reference.len());
        let mut changed = 0;
        for (i, (h, r)) in half.iter().zip(&reference).enumerate() {
            assert!((h - r).abs() <= rel * r.abs() + abs, "{name}: param {i}: {h} vs f32 {r}");
            changed += usize::from(h != r);
        }
        assert!(changed > reference.len() / 2, "{name}: weights were not rounded ({changed} changed)");
    }
}

/// Loading F32/F16/BF16, with or without the prefix, then saving writes F32 with Hugging Face names, and
/// that reloads bit-identically.
#[test]
fn saved_after_loading_reloads_bit_identically_as_f32() {
    for (name, _) in FIXTURES {
        let (cfg, params) = load_model_dir(&fixture(name)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("resaved");
        save_model_dir(&out, &cfg, &params).unwrap();
        let tensors = stored(&out.join(WEIGHTS_FILE));
        assert_eq!(tensors.len(), 4 + 12 * cfg.n_layer, "{name}");
        assert!(tensors.iter().all(|(n, d)| *d == Dtype::F32 && n.starts_with(HF_PREFIX)), "{name}: {tensors:?}");
        let (cfg2, params2) = load_model_dir(&out).unwrap();
        assert_eq!(cfg2, cfg, "{name}");
        assert_eq!(bits(&params2), bits(&params), "{name}");
    }
}
