//! LoRA adapters in PEFT's format, against adapters written by `peft`'s own `save_pretrained`
//! (`tests/fixtures/peft_lora_tiny_{lm,cls}`, from `tools/make_finetune_fixtures.py`): they load tensor for
//! tensor; what lushan saves has PEFT's names, shapes, dtypes and config keys and reloads bit-identically;
//! merging the LM adapter into its base gives the logits of PEFT's `merge_and_unload()` (and the classifier's
//! too); and every kind of broken or foreign adapter is refused with an error that names the problem.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_kernels::rng::Rng;
use lushan_model::checkpoint::load_model_dir;
use lushan_model::checkpoint::safetensors_io::{bf16_to_f32, f16_to_f32};
use lushan_model::lora::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use lushan_model::lora::{LoraSlot, LoraTarget};
use lushan_model::{Activations, Gpt, Lora, LoraConfig, Mode, ModelConfig, ModelError, ParamLayout};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

const LM_ADAPTER: &str = "peft_lora_tiny_lm/adapter";
const CLS_ADAPTER: &str = "peft_lora_tiny_cls/adapter";
/// Against `transformers` float32 logits (observed differences are ~1e-6).
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

fn lm_base() -> (ModelConfig, Vec<f32>) {
    load_model_dir(&fixture("peft_lora_tiny_lm/base")).unwrap()
}

fn cls_base() -> (ModelConfig, Vec<f32>) {
    load_model_dir(&fixture("hf_gpt2_classifier_tiny")).unwrap()
}

/// One tensor of a safetensors file, as stored.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Stored {
    fn f32s(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => self.data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::BF16 => self.data.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            other => panic!("{}: {other:?}", self.name),
        }
    }
}

/// A file's tensors sorted by name, and its metadata.
fn read_stored(path: &Path) -> (Vec<Stored>, Option<HashMap<String, String>>) {
    let bytes = fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Stored { name, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, meta.metadata().clone())
}

fn write_stored(path: &Path, tensors: &[Stored]) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of adapter fixture `src` in a temporary directory, its tensors and config edited.
fn broken_copy(
    src: &str,
    tensors: impl FnOnce(&mut Vec<Stored>),
    config: impl FnOnce(&mut Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (mut stored, _) = read_stored(&fixture(src).join(ADAPTER_WEIGHTS_FILE));
    tensors(&mut stored);
    write_stored(&dir.path().join(ADAPTER_WEIGHTS_FILE), &stored);
    let mut cfg = read_json(&fixture(src).join(ADAPTER_CONFIG_FILE));
    config(&mut cfg);
    fs::write(dir.path().join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

fn expected(dir: &str) -> Vec<u8> {
    fs::read(fixture(dir).join("expected.safetensors")).unwrap()
}

fn expected_f32(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn expected_ids(bytes: &[u8], name: &str) -> Vec<u32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data().chunks_exact(4).map(|b| u32::try_from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The adapter's tensors by PEFT name.
fn by_name(lora: &Lora) -> BTreeMap<String, Vec<f32>> {
    lora.layout.entries().into_iter().map(|e| (e.slot.peft_name(), lora.params[e.range].to_vec())).collect()
}

#[test]
fn peft_adapters_load_tensor_for_tensor() {
    let cases = [
        (LM_ADAPTER, lm_base().0, LoraTarget::ALL.to_vec(), 16),
        (CLS_ADAPTER, cls_base().0, vec![LoraTarget::Qkv], 5),
    ];
    for (dir, cfg, targets, count) in cases {
        let lora = Lora::load_peft(&fixture(dir), &cfg).unwrap();
        assert_eq!(lora.config, LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets }, "{dir}");
        assert_eq!(lora.scale(), 2.0);
        let (stored, _) = read_stored(&fixture(dir).join(ADAPTER_WEIGHTS_FILE));
        let mine = by_name(&lora);
        assert_eq!(mine.len(), count, "{dir}");
        assert_eq!(mine.keys().cloned().collect::<Vec<_>>(), stored.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
        for t in &stored {
            assert_eq!(bits(&mine[&t.name]), bits(&t.f32s()), "{dir}: {}", t.name);
            assert_eq!(
                lora.layout.entries().iter().find(|e| e.slot.peft_name() == t.name).unwrap().shape.to_vec(),
                t.shape
            );
        }
        // The accessors read the same tensors.
        let a = &mine[&LoraSlot::A(LoraTarget::Qkv, 1).peft_name()];
        assert_eq!(lora.a(LoraTarget::Qkv, 1), a.as_slice());
        assert_eq!(lora.score().is_some(), cfg.num_labels() > 0);
    }
}

#[test]
fn save_peft_writes_what_peft_writes_and_reloads_bit_identically() {
    for (dir, (cfg, _)) in [(LM_ADAPTER, lm_base()), (CLS_ADAPTER, cls_base())] {
        let lora = Lora::load_peft(&fixture(dir), &cfg).unwrap();
        let out = tempfile::tempdir().unwrap();
        let their_config = read_json(&fixture(dir).join(ADAPTER_CONFIG_FILE));
        lora.save_peft(out.path(), &cfg, their_config["base_model_name_or_path"].as_str().unwrap()).unwrap();

        let (theirs, their_meta) = read_stored(&fixture(dir).join(ADAPTER_WEIGHTS_FILE));
        let (mine, my_meta) = read_stored(&out.path().join(ADAPTER_WEIGHTS_FILE));
        assert_eq!(my_meta, their_meta, "{dir}: metadata");
        assert_eq!(my_meta.unwrap()["format"], "pt");
        let header = |v: &[Stored]| v.iter().map(|t| (t.name.clone(), t.dtype, t.shape.clone())).collect::<Vec<_>>();
        assert_eq!(header(&mine), header(&theirs), "{dir}: names, dtypes, shapes");
        assert_eq!(mine, theirs, "{dir}: values");
        let same_bytes = fs::read(out.path().join(ADAPTER_WEIGHTS_FILE)).unwrap()
            == fs::read(fixture(dir).join(ADAPTER_WEIGHTS_FILE)).unwrap();
        println!("{dir}: adapter_model.safetensors byte-identical to peft's: {same_bytes}");

        let written = read_json(&out.path().join(ADAPTER_CONFIG_FILE));
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(keys(&written), keys(&their_config), "{dir}: adapter_config.json keys");
        for (key, value) in their_config.as_object().unwrap() {
            match key.as_str() {
                // A set in PEFT, written in hash order: compare as sets.
                "target_modules" => {
                    let set = |v: &Value| v.as_array().unwrap().iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
                    assert_eq!(set(&written[key]), set(value), "{dir}: {key}");
                }
                _ => assert_eq!(&written[key], value, "{dir}: {key}"),
            }
        }

        if their_config["target_modules"].as_array().unwrap().len() == 1 {
            // No set order to differ in: the whole file is what PEFT wrote, byte for byte.
            let text = |d: &Path| fs::read_to_string(d.join(ADAPTER_CONFIG_FILE)).unwrap();
            assert_eq!(text(out.path()), text(&fixture(dir)), "{dir}: adapter_config.json text");
        }

        let back = Lora::load_peft(out.path(), &cfg).unwrap();
        assert_eq!(back.config, lora.config);
        assert_eq!(back.layout, lora.layout);
        assert_eq!(bits(&back.params), bits(&lora.params), "{dir}: load(save(x)) must be bit-identical");
    }
}

#[test]
fn save_peft_names_single_projections_so_peft_selects_only_them() {
    let (cfg, _) = lm_base();
    let config = LoraConfig { rank: 2, alpha: 3.5, dropout: 0.05, targets: vec![LoraTarget::FcProj, LoraTarget::Qkv] };
    let lora = Lora::new(config.clone(), &cfg, 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    lora.save_peft(out.path(), &cfg, "").unwrap();
    let written = read_json(&out.path().join(ADAPTER_CONFIG_FILE));
    assert_eq!(written["target_modules"], json!(["c_attn", "mlp.c_proj"]));
    assert_eq!((written["lora_alpha"].clone(), written["lora_dropout"].clone()), (json!(3.5), json!(0.05)));
    assert_eq!(written["base_model_name_or_path"], Value::Null);
    let back = Lora::load_peft(out.path(), &cfg).unwrap();
    assert_eq!(back, lora);
}

/// lushan's forward over `ids` (one row of `t` per sequence); returns the logits.
fn logits(model: &Gpt, ids: &[u32], t: usize) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, ids.len() / t, t).unwrap();
    model.forward(&mut acts, ids, None, Mode::Eval).unwrap();
    acts.logits.clone()
}

#[test]
fn merged_lm_adapter_gives_peft_merge_and_unload_logits() {
    let (cfg, mut params) = lm_base();
    let want = expected("peft_lora_tiny_lm");
    let ids = expected_ids(&want, "input_ids");
    let base_logits = logits(&Gpt::from_params(cfg.clone(), params.clone()).unwrap(), &ids, 10);
    let base_diff = max_abs_diff(&base_logits, &expected_f32(&want, "base_logits"));
    assert!(base_diff < TOL, "base logits differ from transformers by {base_diff}");

    let lora = Lora::load_peft(&fixture(LM_ADAPTER), &cfg).unwrap();
    lora.merge_into(&cfg, &ParamLayout::new(&cfg), &mut params).unwrap();
    let merged = logits(&Gpt::from_params(cfg, params).unwrap(), &ids, 10);
    let merged_diff = max_abs_diff(&merged, &expected_f32(&want, "merged_logits"));
    let adapter_diff = max_abs_diff(&merged, &expected_f32(&want, "logits"));
    let effect = max_abs_diff(&merged, &base_logits);
    println!(
        "LM adapter: merged vs merge_and_unload {merged_diff:.2e}, vs PEFT with adapter {adapter_diff:.2e}, adapter effect {effect:.2}"
    );
    assert!(merged_diff < TOL, "merged logits differ from PEFT's merge_and_unload by {merged_diff}");
    assert!(adapter_diff < TOL, "merged logits differ from PEFT's adapter logits by {adapter_diff}");
    assert!(effect > 0.5, "the adapter should change the logits (by {effect})");
}

#[test]
fn merged_classifier_adapter_gives_peft_merge_and_unload_logits() {
    let (cfg, mut params) = cls_base();
    let want = expected("peft_lora_tiny_cls");
    let ids = expected_ids(&want, "input_ids");
    let lora = Lora::load_peft(&fixture(CLS_ADAPTER), &cfg).unwrap();
    lora.merge_into(&cfg, &ParamLayout::new(&cfg), &mut params).unwrap();
    let merged = logits(&Gpt::from_params(cfg, params).unwrap(), &ids, 10);
    let diff = max_abs_diff(&merged, &expected_f32(&want, "merged_logits"));
    println!("classifier adapter: merged vs merge_and_unload {diff:.2e}");
    assert!(diff < TOL, "merged classifier logits differ from PEFT's merge_and_unload by {diff}");
}

#[test]
fn f16_and_bf16_adapters_load() {
    let (cfg, _) = lm_base();
    for (dtype, encode) in [
        (Dtype::BF16, (|x: f32| (x.to_bits() >> 16) as u16) as fn(f32) -> u16),
        (Dtype::F16, |x: f32| {
            // Truncating conversion for normal values (the adapter's are); any f16 pattern will do, since the
            // expectation is decoded from the same bits.
            let b = x.to_bits();
            let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
            if exp <= 0 {
                ((b >> 16) & 0x8000) as u16
            } else {
                (((b >> 16) & 0x8000) | ((exp as u32) << 10) | ((b >> 13) & 0x3ff)) as u16
            }
        }),
    ] {
        let dir = broken_copy(
            LM_ADAPTER,
            |ts| {
                for t in ts.iter_mut() {
                    t.data = t.f32s().into_iter().flat_map(|x| encode(x).to_le_bytes()).collect();
                    t.dtype = dtype;
                }
            },
            |_| {},
        );
        let (stored, _) = read_stored(&dir.path().join(ADAPTER_WEIGHTS_FILE));
        let lora = Lora::load_peft(dir.path(), &cfg).unwrap();
        let mine = by_name(&lora);
        for t in &stored {
            assert_eq!(bits(&mine[&t.name]), bits(&t.f32s()), "{dtype:?}: {}", t.name);
        }
    }
}

/// Loads `dir` for `cfg` and returns the error, printing it.
fn refused(dir: &Path, cfg: &ModelConfig) -> ModelError {
    let err = Lora::load_peft(dir, cfg).map(|_| ()).unwrap_err();
    println!("{err}\n");
    err
}

fn assert_tensor_problem(err: &ModelError, needle: &str) {
    match err {
        ModelError::AdapterTensors { problems, .. } => {
            assert!(problems.iter().any(|p| p.contains(needle)), "no problem mentions `{needle}`: {problems:#?}")
        }
        other => panic!("expected AdapterTensors mentioning `{needle}`, got: {other}"),
    }
}

fn assert_config_field(err: &ModelError, want: &str) {
    match err {
        ModelError::AdapterConfig { field, .. } => assert_eq!(*field, want, "{err}"),
        other => panic!("expected an AdapterConfig error on `{want}`, got: {other}"),
    }
}

fn rename(ts: &mut [Stored], from: &str, to: &str) {
    let t = ts.iter_mut().find(|t| t.name == from).unwrap_or_else(|| panic!("no tensor {from}"));
    t.name = to.to_string();
}

const QKV_A0: &str = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight";
const QKV_B1: &str = "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight";

#[test]
fn wrong_or_foreign_tensor_names_are_refused_by_name() {
    let (cfg, _) = lm_base();
    let with_adapter_name = "base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight";
    let dir = broken_copy(LM_ADAPTER, |ts| rename(ts, QKV_A0, with_adapter_name), |_| {});
    let err = refused(dir.path(), &cfg);
    assert_tensor_problem(&err, with_adapter_name);
    assert_tensor_problem(&err, &format!("missing tensor `{QKV_A0}`"));

    let extra = |name: &'static str, shape: Vec<usize>| {
        move |ts: &mut Vec<Stored>| {
            let n: usize = shape.iter().product();
            ts.push(Stored { name: name.into(), dtype: Dtype::F32, shape, data: vec![0; 4 * n] });
        }
    };
    let cases: [(&str, Vec<usize>, &str); 6] = [
        ("base_model.model.transformer.ln_f.weight", vec![32], "hold only LoRA factors"),
        ("base_model.model.transformer.h.0.ln_1.lora_A.weight", vec![4, 32], "a module lushan does not adapt"),
        ("base_model.model.lm_head.lora_A.weight", vec![4, 32], "a module lushan does not adapt"),
        ("base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector", vec![96], "DoRA"),
        ("base_model.model.transformer.h.0.attn.c_attn.lora_B.bias", vec![96], "lora_bias"),
        ("transformer.h.0.attn.c_attn.lora_A.weight", vec![4, 32], "named `base_model.model.…`"),
    ];
    for (name, shape, why) in cases {
        let err = refused(broken_copy(LM_ADAPTER, extra(name, shape), |_| {}).path(), &cfg);
        assert_tensor_problem(&err, name);
        assert_tensor_problem(&err, why);
    }
    // A classifier's head in a language model's adapter.
    let score = extra("base_model.model.score.weight", vec![3, 32]);
    assert_tensor_problem(&refused(broken_copy(LM_ADAPTER, score, |_| {}).path(), &cfg), "language model");
    // A layer index PEFT never writes.
    let dir = broken_copy(LM_ADAPTER, |ts| rename(ts, QKV_A0, &QKV_A0.replace("h.0.", "h.00.")), |_| {});
    assert_tensor_problem(&refused(dir.path(), &cfg), "h.00.attn.c_attn");
}

#[test]
fn missing_factors_and_score_are_refused_by_name() {
    let (cfg, _) = lm_base();
    let dir = broken_copy(LM_ADAPTER, |ts| ts.retain(|t| t.name != QKV_B1), |_| {});
    assert_tensor_problem(&refused(dir.path(), &cfg), &format!("missing tensor `{QKV_B1}` (shape [96, 4])"));

    let (cls, _) = cls_base();
    let dir = broken_copy(CLS_ADAPTER, |ts| ts.retain(|t| !t.name.ends_with("score.weight")), |_| {});
    assert_tensor_problem(&refused(dir.path(), &cls), "missing tensor `base_model.model.score.weight` (shape [3, 32])");

    let dir = broken_copy(LM_ADAPTER, |ts| ts.clear(), |_| {});
    assert_tensor_problem(&refused(dir.path(), &cfg), "no LoRA tensors");
}

fn assert_base_shape(err: &ModelError, want_field: &str, want_expected: usize, want_found: usize) {
    match err {
        ModelError::AdapterBaseShape { field, expected, found, .. } => {
            assert_eq!((*field, *expected, *found), (want_field, want_expected, want_found), "{err}");
            assert!(err.to_string().contains("an adapter for a different base shape"), "{err}");
        }
        other => panic!("expected AdapterBaseShape on {want_field}, got: {other}"),
    }
}

#[test]
fn adapters_for_another_base_shape_are_refused_naming_the_dimension() {
    let (cfg, _) = lm_base();
    // Made for a one-layer model: every target stops after layer 0.
    let dir = broken_copy(LM_ADAPTER, |ts| ts.retain(|t| t.name.contains(".h.0.")), |_| {});
    assert_base_shape(&refused(dir.path(), &cfg), "n_layer", 2, 1);
    // Made for a three-layer model.
    let dir = broken_copy(
        LM_ADAPTER,
        |ts| {
            let layer1: Vec<Stored> = ts.iter().filter(|t| t.name.contains(".h.1.")).cloned().collect();
            ts.extend(layer1.into_iter().map(|t| Stored { name: t.name.replace(".h.1.", ".h.2."), ..t }));
        },
        |_| {},
    );
    assert_base_shape(&refused(dir.path(), &cfg), "n_layer", 2, 3);

    // Made for n_embd = 48 (a real lushan adapter for that base).
    let mut wide = ModelConfig::new(96, 16, 2, 2, 48);
    wide.layer_norm_epsilon = cfg.layer_norm_epsilon;
    let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![LoraTarget::Qkv] };
    let out = tempfile::tempdir().unwrap();
    Lora::new(config, &wide, 1).unwrap().save_peft(out.path(), &wide, "").unwrap();
    assert_base_shape(&refused(out.path(), &cfg), "n_embd", 32, 48);

    // A classifier adapter with five labels.
    let (cls, _) = cls_base();
    let dir = broken_copy(
        CLS_ADAPTER,
        |ts| {
            let score = ts.iter_mut().find(|t| t.name.ends_with("score.weight")).unwrap();
            score.shape = vec![5, 32];
            score.data = vec![0; 5 * 32 * 4];
        },
        |_| {},
    );
    assert_base_shape(&refused(dir.path(), &cls), "num_labels", 3, 5);
}

#[test]
fn wrong_ranks_and_dtypes_are_refused() {
    let (cfg, _) = lm_base();
    // rank 8 for one module while the config says r = 4 (PEFT's rank_pattern).
    let dir = broken_copy(
        LM_ADAPTER,
        |ts| {
            let a = ts.iter_mut().find(|t| t.name == QKV_A0).unwrap();
            a.shape = vec![8, 32];
            a.data = vec![0; 8 * 32 * 4];
        },
        |_| {},
    );
    let err = refused(dir.path(), &cfg);
    assert_tensor_problem(&err, QKV_A0);
    assert_tensor_problem(&err, "rank 8, but adapter_config.json says r = 4");

    let dir = broken_copy(
        LM_ADAPTER,
        |ts| {
            let a = ts.iter_mut().find(|t| t.name == QKV_A0).unwrap();
            a.dtype = Dtype::I32;
        },
        |_| {},
    );
    assert_tensor_problem(&refused(dir.path(), &cfg), "dtype I32");
}

#[test]
fn config_options_that_change_the_math_are_refused_by_name() {
    let (cfg, _) = lm_base();
    let cases: [(&str, Value); 17] = [
        ("use_rslora", json!(true)),
        ("use_dora", json!(true)),
        ("bias", json!("all")),
        ("bias", json!("lora_only")),
        ("fan_in_fan_out", json!(false)),
        ("rank_pattern", json!({"c_attn": 8})),
        ("alpha_pattern", json!({"c_attn": 16})),
        ("lora_bias", json!(true)),
        ("layers_to_transform", json!([0])),
        ("init_lora_weights", json!("pissa")),
        ("init_lora_weights", json!("olora")),
        ("peft_type", json!("IA3")),
        ("task_type", json!("SEQ_CLS")),
        ("r", json!(0)),
        ("lora_alpha", json!(-1)),
        ("lora_dropout", json!(1.5)),
        ("modules_to_save", json!(["ln_f"])),
    ];
    for (field, value) in cases {
        let dir = broken_copy(LM_ADAPTER, |_| {}, |c| c[field] = value.clone());
        let err = refused(dir.path(), &cfg);
        assert_config_field(&err, field);
        let shown = if field == "modules_to_save" { "`ln_f`".to_string() } else { value.to_string() };
        assert!(err.to_string().contains(&shown) || field == "fan_in_fan_out", "{err}");
    }
    let dir = broken_copy(
        LM_ADAPTER,
        |_| {},
        |c| {
            c.as_object_mut().unwrap().remove("fan_in_fan_out").unwrap();
        },
    );
    assert_config_field(&refused(dir.path(), &cfg), "fan_in_fan_out");
    // Harmless values are accepted: another init, inference_mode, PEFT's own extra keys.
    let dir = broken_copy(
        LM_ADAPTER,
        |_| {},
        |c| {
            c["init_lora_weights"] = json!("gaussian");
            c["inference_mode"] = json!(false);
            c["some_future_key"] = json!(null);
        },
    );
    assert!(Lora::load_peft(dir.path(), &cfg).is_ok());
    // A SEQ_CLS adapter on a language model, and a CAUSAL_LM adapter on a classifier.
    assert_config_field(&refused(&fixture(CLS_ADAPTER), &cfg), "task_type");
    assert_config_field(&refused(&fixture(LM_ADAPTER), &cls_base().0), "task_type");
}

#[test]
fn target_modules_must_agree_with_the_tensors() {
    let (cfg, _) = lm_base();
    let cases: [(Value, &str); 7] = [
        (json!(["c_attn"]), "does not select attn.c_proj"),
        (json!(["c_attn", "c_proj", "c_fc", "wte"]), "`transformer.wte`"),
        (json!(["c_attn", "c_proj", "c_fc", "q_proj"]), "matches no module"),
        (json!(["c_attn", "c_proj", "c_fc", "h.0.ln_1"]), "`transformer.h.0.ln_1`"),
        (json!(".*c_attn"), "regular expression"),
        (json!(["c_attn", "c_proj", "mlp.c_fc", "lm_head"]), "`lm_head`"),
        (json!(["transformer.h.0.attn.c_attn", "c_proj", "c_fc"]), "only in layers [0]"),
    ];
    for (value, needle) in cases {
        let dir = broken_copy(LM_ADAPTER, |_| {}, |c| c["target_modules"] = value.clone());
        let err = refused(dir.path(), &cfg);
        assert_config_field(&err, "target_modules");
        assert!(err.to_string().contains(needle), "{value}: {err}");
    }
    // The config names a module the file has no tensors for.
    let dir = broken_copy(LM_ADAPTER, |ts| ts.retain(|t| !t.name.contains(".mlp.c_fc.")), |_| {});
    let err = refused(dir.path(), &cfg);
    assert!(err.to_string().contains("selects mlp.c_fc, but the weights file holds no LoRA tensors"), "{err}");
    // What PEFT writes for `all-linear` (every module's full path), and the shorthand itself, are accepted.
    let full: Vec<String> =
        (0..2).flat_map(|l| LoraTarget::ALL.map(|t| format!("transformer.h.{l}.{}", t.peft_module()))).collect();
    for value in [json!(full), json!("all-linear")] {
        let dir = broken_copy(LM_ADAPTER, |_| {}, |c| c["target_modules"] = value.clone());
        assert!(Lora::load_peft(dir.path(), &cfg).is_ok(), "{value}");
    }
}

#[test]
fn broken_files_and_directories_give_named_errors() {
    let (cfg, _) = lm_base();
    let dir = broken_copy(LM_ADAPTER, |_| {}, |_| {});
    let weights = dir.path().join(ADAPTER_WEIGHTS_FILE);
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() - 10]).unwrap();
    let err = refused(dir.path(), &cfg);
    assert!(err.to_string().contains("not a valid safetensors file"), "{err}");
    fs::write(&weights, &bytes[..4]).unwrap();
    assert!(refused(dir.path(), &cfg).to_string().contains("too short"));
    // A header listing a tensor twice.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let (first, rest) = header.split_once("},").unwrap();
    let dup = format!("{first}}},{}", rest.replacen(QKV_B1, QKV_A0, 1));
    assert!(dup.matches(QKV_A0).count() == 2 && dup.len() == header.len());
    fs::write(&weights, [&bytes[..8], dup.as_bytes(), &bytes[8 + n..]].concat()).unwrap();
    assert!(refused(dir.path(), &cfg).to_string().contains("twice"));

    fs::remove_file(&weights).unwrap();
    fs::write(dir.path().join("adapter_model.bin"), b"pickle").unwrap();
    assert!(refused(dir.path(), &cfg).to_string().contains("pickle files are never loaded"));
    fs::remove_file(dir.path().join("adapter_model.bin")).unwrap();
    assert!(refused(dir.path(), &cfg).to_string().contains(ADAPTER_WEIGHTS_FILE));

    let dir = broken_copy(LM_ADAPTER, |_| {}, |_| {});
    fs::remove_file(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    assert!(refused(dir.path(), &cfg).to_string().contains("adapter_config.json"));
    fs::write(dir.path().join(ADAPTER_CONFIG_FILE), "{not json").unwrap();
    assert!(matches!(refused(dir.path(), &cfg), ModelError::Json { .. }));
    assert!(refused(&dir.path().join("nowhere"), &cfg).to_string().contains("does not exist"));
}

/// Writes lushan-made adapters for `tools/check_peft_roundtrip.py` into `$LUSHAN_PEFT_ROUNDTRIP_DIR`:
/// `lm/` and `cls/`, each with `adapter/` and `expected.json` (input ids and lushan's logits of the merged
/// model), so PEFT can load them and compare. Run with
/// `LUSHAN_PEFT_ROUNDTRIP_DIR=/tmp/rt cargo test --release -p lushan-model --test lora_peft -- --ignored`.
#[test]
#[ignore = "writes adapters for tools/check_peft_roundtrip.py; needs LUSHAN_PEFT_ROUNDTRIP_DIR"]
fn write_adapters_for_peft_roundtrip() {
    let root = PathBuf::from(std::env::var("LUSHAN_PEFT_ROUNDTRIP_DIR").expect("set LUSHAN_PEFT_ROUNDTRIP_DIR"));
    let cases = [
        (
            "lm",
            lm_base(),
            vec![LoraTarget::Qkv, LoraTarget::AttnProj, LoraTarget::Fc],
            fixture("peft_lora_tiny_lm/base"),
        ),
        ("cls", cls_base(), vec![LoraTarget::AttnProj, LoraTarget::FcProj], fixture("hf_gpt2_classifier_tiny")),
    ];
    for (name, (cfg, params), targets, base_dir) in cases {
        let config = LoraConfig { rank: 3, alpha: 5.0, dropout: 0.1, targets };
        let mut lora = Lora::new(config, &cfg, 11).unwrap();
        let mut rng = Rng::new(12);
        lora.copy_score_from(&cfg, &ParamLayout::new(&cfg), &params).unwrap();
        for e in lora.layout.entries() {
            for x in &mut lora.params[e.range] {
                *x += (rng.next_normal() * 0.2) as f32; // B non-zero, the score head moved: the adapter matters
            }
        }
        let dir = root.join(name);
        lora.save_peft(&dir.join("adapter"), &cfg, base_dir.to_str().unwrap()).unwrap();
        let ids: Vec<u32> = (0..20u32).map(|i| (i * 37 + 5) % 95).collect();
        let mut merged = params.clone();
        lora.merge_into(&cfg, &ParamLayout::new(&cfg), &mut merged).unwrap();
        let out = logits(&Gpt::from_params(cfg.clone(), merged).unwrap(), &ids, 10);
        let expected = json!({"base": base_dir, "input_ids": ids.chunks(10).collect::<Vec<_>>(), "logits": out});
        fs::write(dir.join("expected.json"), serde_json::to_string(&expected).unwrap()).unwrap();
        println!("wrote {}", dir.display());
    }
}
