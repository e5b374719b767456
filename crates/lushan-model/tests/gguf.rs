//! GGUF files made by llama.cpp (`tools/gguf_fixture.py`: convert_hf_to_gguf.py for F32, F16 and Q8_0,
//! llama-quantize for Q4_0, from a tiny transformers GPT-2) load and compute what transformers computed;
//! what lushan writes reads back tensor for tensor identical to llama.cpp's own files; hostile files are
//! clear errors.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::gguf::{self, Array, GgufModel, TensorData, TensorType, Value, parse, write_gguf};
use lushan_model::{DType, DecodeState, Gpt, PackedWeights};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load(name: &str) -> GgufModel {
    gguf::load_gpt2(&fixture(name)).unwrap()
}

/// Logits of every position of `tokens`, fed one at a time through the cached decoder: (T, V).
fn logits(model: &Gpt, tokens: &[u32]) -> Vec<f32> {
    let mut state = DecodeState::new(model, 1);
    tokens.iter().flat_map(|&t| model.decode(&mut state, &[t]).unwrap().to_vec()).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn packed(model: &Gpt) -> &PackedWeights {
    model.packed.as_ref().unwrap()
}

#[test]
fn f32_file_computes_what_transformers_computed() {
    let expected = expected();
    let loaded = load("tiny-f32.gguf");
    assert_eq!(loaded.model.dtype(), DType::F32);
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    let cfg = &loaded.model.config;
    assert_eq!((cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd), (300, 64, 2, 2, 32));
    let want: Vec<f32> = expected["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let got = logits(&loaded.model, &ids(&expected["prompt_ids"]));
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "F32 GGUF logits differ from transformers by {diff}");
    // The embedded tokenizer as stored: GPT-2's byte-level BPE with <|endoftext|> (id 0) as bos/eos.
    let t = &loaded.tokenizer;
    assert_eq!((t.model.as_str(), t.pre.as_deref(), t.tokens.len()), ("gpt2", Some("gpt-2"), 300));
    assert_eq!((t.bos, t.eos, t.tokens[0].as_str(), t.token_types[0]), (Some(0), Some(0), "<|endoftext|>", 3));
    assert!(!t.merges.is_empty() && t.merges.iter().all(|m| m.split(' ').count() == 2));
}

#[test]
fn f16_and_q8_0_files_hold_lushans_own_conversion_byte_for_byte() {
    let reference = load("tiny-f32.gguf").model;
    let prompt = ids(&expected()["prompt_ids"]);
    for (file, dtype) in [("tiny-f16.gguf", DType::F16), ("tiny-q8_0.gguf", DType::Q8_0)] {
        let loaded = load(file);
        assert_eq!(loaded.model.dtype(), dtype, "{file}");
        let ours = reference.clone().with_dtype(dtype).unwrap();
        // llama.cpp's converter rounds and quantizes exactly as lushan does: the matrices are identical.
        assert_eq!(packed(&loaded.model).wte, packed(&ours).wte, "{file}: token_embd");
        assert_eq!(packed(&loaded.model).layers, packed(&ours).layers, "{file}: block matrices");
        let diff = max_diff(&logits(&loaded.model, &prompt), &logits(&ours, &prompt));
        assert!(diff < 1e-5, "{file}: logits differ from lushan's --dtype {dtype} by {diff}");
    }
}

#[test]
fn q4_0_file_from_llama_quantize_keeps_the_more_precise_tied_output() {
    let loaded = load("tiny-q4_0.gguf");
    assert_eq!(loaded.model.dtype(), DType::Q4_0);
    // llama-quantize gives the output Q6_K, which falls back to Q8_0 for rows of 32; token_embd is Q4_0.
    assert!(loaded.notes.iter().any(|n| n.contains("Q4_0") && n.contains("Q8_0")), "{:?}", loaded.notes);
    let reference = load("tiny-f32.gguf").model;
    let mut ours = reference.clone().with_dtype(DType::Q4_0).unwrap();
    assert_eq!(packed(&loaded.model).layers, packed(&ours).layers, "block matrices");
    let q8 = reference.with_dtype(DType::Q8_0).unwrap();
    assert_eq!(packed(&loaded.model).wte, packed(&q8).wte, "the tied matrix is output.weight's Q8_0");
    ours.packed.as_mut().unwrap().wte = packed(&q8).wte.clone();
    let prompt = ids(&expected()["prompt_ids"]);
    let diff = max_diff(&logits(&loaded.model, &prompt), &logits(&ours, &prompt));
    assert!(diff < 1e-5, "Q4_0 GGUF logits differ from lushan's conversion by {diff}");
}

/// Every tensor of `a` that `b` also holds in the same type has identical bytes; returns how many.
fn same_tensors(a: &Path, b: &Path) -> usize {
    let (a_bytes, b_bytes) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (fa, fb) = (parse(&a_bytes).unwrap(), parse(&b_bytes).unwrap());
    let mut same = 0;
    for ta in &fa.tensors {
        let tb = fb.tensor(&ta.name).unwrap_or_else(|| panic!("{} lacks {}", b.display(), ta.name));
        assert_eq!(ta.dims, tb.dims, "{}", ta.name);
        if ta.ty == tb.ty {
            assert!(fa.tensor_bytes(ta) == fb.tensor_bytes(tb), "{}: bytes differ", ta.name);
            same += 1;
        }
    }
    assert_eq!(fa.tensors.len(), fb.tensors.len());
    same
}

#[test]
fn exports_match_llama_cpps_files_tensor_for_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let source = load("tiny-f32.gguf");
    for (dtype, theirs, same) in [
        (DType::F32, "tiny-f32.gguf", 29),
        (DType::F16, "tiny-f16.gguf", 29),
        (DType::Q8_0, "tiny-q8_0.gguf", 29),
        // llama-quantize's output.weight is Q8_0 (lushan writes the tied Q4_0 matrix twice).
        (DType::Q4_0, "tiny-q4_0.gguf", 28),
    ] {
        let out = dir.path().join(format!("{dtype}.gguf"));
        let model = source.model.clone().with_dtype(dtype).unwrap();
        gguf::save_gpt2(&out, &model, &source.tokenizer, "tiny").unwrap();
        assert_eq!(same_tensors(&out, &fixture(theirs)), same, "{dtype}");
        let back = gguf::load_gpt2(&out).unwrap();
        assert_eq!(back.tokenizer, source.tokenizer, "{dtype}: tokenizer round trip");
        assert_eq!(back.model.config, model.config);
        assert_eq!(back.model.params, model.params, "{dtype}");
        assert_eq!(back.model.dtype(), dtype);
        if dtype != DType::F32 {
            assert_eq!(packed(&back.model).layers, packed(&model).layers, "{dtype}");
        }
    }
}

#[test]
fn rows_not_whole_blocks_are_refused_naming_the_tensor() {
    let mut cfg = lushan_model::ModelConfig::new(50, 16, 1, 2, 40);
    cfg.dropout = 0.0;
    let err = Gpt::new(cfg, 1).unwrap().with_dtype(DType::Q4_0).unwrap_err().to_string();
    assert!(err.contains("wte") || err.contains("weight"), "{err}");
    assert!(err.contains("40") && err.contains("32"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Hostile and foreign files.

fn write(metadata: &[(String, Value)], tensors: &[TensorData<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    write_gguf(&mut out, metadata, tensors).unwrap();
    out
}

fn kv(key: &str, value: Value) -> (String, Value) {
    (key.to_string(), value)
}

fn load_bytes(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = gguf::load_gpt2(&path).unwrap_err().to_string();
    assert!(err.contains("bad.gguf"), "the error names the file: {err}");
    err
}

#[test]
fn another_architecture_is_named() {
    let bytes = write(&[kv("general.architecture", Value::String("llama".into()))], &[]);
    let err = load_bytes(&bytes);
    assert!(err.contains("architecture `llama` is not supported"), "{err}");
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let bytes = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    // Where the last tensor's data ends (the file may pad beyond it to the alignment).
    let data_end = {
        let file = parse(&bytes).unwrap();
        let ends = file.tensors.iter().map(|t| {
            let data = file.tensor_bytes(t);
            data.as_ptr() as usize - bytes.as_ptr() as usize + data.len()
        });
        ends.max().unwrap()
    };
    assert!(parse(&bytes[..data_end]).is_ok());
    for cut in [0, 3, 4, 7, 12, 23, 24, 100, 1000, 5000, bytes.len() / 2, data_end - 1] {
        let Err(err) = parse(&bytes[..cut]) else { panic!("cut at {cut} parsed") };
        let err = err.to_string();
        assert!(err.contains("truncated") || err.contains("not a GGUF"), "cut at {cut}: {err}");
    }
    // Every cut, not just those: never a panic.
    for cut in (0..data_end).step_by(97) {
        assert!(parse(&bytes[..cut]).is_err());
    }
}

/// A header by hand: version 3, the counts given, then `rest`.
fn header(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn counts_that_would_allocate_terabytes_are_refused_before_allocating() {
    let err = parse(&header(1 << 60, 0, &[0; 64])).unwrap_err().to_string();
    assert!(err.contains("tensor count is 1152921504606846976") && err.contains("at most"), "{err}");
    let err = parse(&header(0, 1 << 60, &[0; 64])).unwrap_err().to_string();
    assert!(err.contains("metadata count is 1152921504606846976"), "{err}");
    // An array claiming 2^60 strings.
    let mut kv = Vec::new();
    kv.extend_from_slice(&1u64.to_le_bytes());
    kv.push(b'a');
    kv.extend_from_slice(&9u32.to_le_bytes()); // array
    kv.extend_from_slice(&8u32.to_le_bytes()); // of strings
    kv.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = parse(&header(0, 1, &kv)).unwrap_err().to_string();
    assert!(err.contains("length of `a`") && err.contains("at most"), "{err}");
}

fn one_tensor(ty: TensorType, dims: Vec<u64>, bytes: usize) -> Vec<u8> {
    let t = TensorData { name: "w".into(), dims, ty, bytes: Cow::Owned(vec![0; bytes]) };
    write(&[kv("general.architecture", Value::String("gpt2".into()))], &[t])
}

/// Byte offset of the single tensor's description fields after its name `w` (n_dims, dims, type, offset).
fn tensor_info_at(bytes: &[u8]) -> usize {
    bytes.windows(9).position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'w']).unwrap() + 9
}

#[test]
fn tensor_offsets_outside_the_file_and_unknown_types_are_refused() {
    let mut bytes = one_tensor(TensorType::F32, vec![8], 32);
    assert!(parse(&bytes).is_ok());
    let at = tensor_info_at(&bytes);
    // n_dims (4) + one dim (8) + type (4), then the offset.
    bytes[at + 16..at + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("`w`") && err.contains("past the end of the file"), "{err}");

    let mut bytes = one_tensor(TensorType::F32, vec![8], 32);
    bytes[at + 12..at + 16].copy_from_slice(&99u32.to_le_bytes());
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("`w`") && err.contains("type id 99"), "{err}");

    // Dimensions whose product overflows.
    let mut bytes = one_tensor(TensorType::F32, vec![8], 32);
    bytes[at + 4..at + 12].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("`w`") && err.contains("64 bits"), "{err}");
}

#[test]
fn a_type_lushan_does_not_read_is_named_with_its_tensor() {
    // The F32 fixture with blk.0.attn_qkv.weight stored as Q4_1.
    let bytes = std::fs::read(fixture("tiny-f32.gguf")).unwrap();
    let file = parse(&bytes).unwrap();
    let tensors: Vec<TensorData<'_>> = file
        .tensors
        .iter()
        .map(|t| {
            if t.name == "blk.0.attn_qkv.weight" {
                let size = TensorType::Q4_1.bytes_for(t.elements(), t.dims[0]).unwrap() as usize;
                TensorData {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: TensorType::Q4_1,
                    bytes: vec![0; size].into(),
                }
            } else {
                TensorData { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty, bytes: file.tensor_bytes(t).into() }
            }
        })
        .collect();
    let err = load_bytes(&write(&file.metadata, &tensors));
    assert!(err.contains("blk.0.attn_qkv.weight") && err.contains("Q4_1"), "{err}");
}

#[test]
fn alignment_from_metadata_is_respected() {
    let t = |name: &str, n: usize| TensorData {
        name: name.into(),
        dims: vec![n as u64],
        ty: TensorType::F32,
        bytes: Cow::Owned((0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()),
    };
    let bytes = write(
        &[kv("general.alignment", Value::U32(64)), kv("x", Value::Array(Array::I32(vec![1, -2])))],
        &[t("a", 3), t("b", 5)],
    );
    let file = parse(&bytes).unwrap();
    assert_eq!(file.alignment, 64);
    assert_eq!(file.tensors[1].offset, 64);
    assert_eq!(file.tensor_bytes(&file.tensors[1]).len(), 20);
    assert_eq!(file.get("x"), Some(&Value::Array(Array::I32(vec![1, -2]))));
    let mut entry = 17u64.to_le_bytes().to_vec();
    entry.extend_from_slice(b"general.alignment");
    entry.extend_from_slice(&4u32.to_le_bytes()); // u32
    entry.extend_from_slice(&48u32.to_le_bytes());
    let err = parse(&header(0, 1, &entry)).unwrap_err().to_string();
    assert!(err.contains("general.alignment"), "{err}");
}
