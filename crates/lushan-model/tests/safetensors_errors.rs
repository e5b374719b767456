//! Hand-made broken `model.safetensors` files and model directories (DESIGN.md §6, §9): each is refused
//! with an error that names the file and says what is wrong, before anything large is allocated and
//! never with a panic. The files are written byte by byte here — the 8-byte little-endian header length,
//! the JSON header, the data — so the tests do not depend on a writer that would refuse to produce them.
//! (checkpoint.rs covers truncation, garbage, the header-size limit, mismatched names/shapes/dtypes and
//! the pickle-only directory.)
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::checkpoint::{CONFIG_FILE, WEIGHTS_FILE, load_model_dir, load_safetensors, write_config_json};
use lushan_model::{ModelConfig, ParamLayout};
use std::fs;
use std::path::Path;

/// The smallest model: V=2, T=1, L=1, NH=1, C=1 (30 floats), so a whole valid file fits in a test.
fn one_wide() -> ModelConfig {
    ModelConfig::new(2, 1, 1, 1, 1)
}

/// (name, shape) of every tensor of `one_wide`, as Hugging Face stores them (without the prefix).
const TENSORS: [(&str, &[usize]); 16] = [
    ("wte.weight", &[2, 1]),
    ("wpe.weight", &[1, 1]),
    ("h.0.ln_1.weight", &[1]),
    ("h.0.ln_1.bias", &[1]),
    ("h.0.attn.c_attn.weight", &[1, 3]),
    ("h.0.attn.c_attn.bias", &[3]),
    ("h.0.attn.c_proj.weight", &[1, 1]),
    ("h.0.attn.c_proj.bias", &[1]),
    ("h.0.ln_2.weight", &[1]),
    ("h.0.ln_2.bias", &[1]),
    ("h.0.mlp.c_fc.weight", &[1, 4]),
    ("h.0.mlp.c_fc.bias", &[4]),
    ("h.0.mlp.c_proj.weight", &[4, 1]),
    ("h.0.mlp.c_proj.bias", &[1]),
    ("ln_f.weight", &[1]),
    ("ln_f.bias", &[1]),
];

/// One header entry, written out as JSON text.
fn entry(name: &str, dtype: &str, shape: &[usize], start: usize, end: usize) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{start},{end}]}}"#)
}

/// A complete, valid header for `one_wide` in F32 (values 1.0, 2.0, …) plus its data.
fn valid_entries() -> (Vec<String>, Vec<u8>) {
    let (mut entries, mut data) = (Vec::new(), Vec::new());
    for (name, shape) in TENSORS {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            data.extend_from_slice(&((data.len() / 4 + 1) as f32).to_le_bytes());
        }
        entries.push(entry(&format!("transformer.{name}"), "F32", shape, start, data.len()));
    }
    (entries, data)
}

/// The file: 8-byte little-endian length, `{` entries `}`, data.
fn assemble(entries: &[String], data: &[u8]) -> Vec<u8> {
    let header = format!(r#"{{"__metadata__":{{"format":"pt"}},{}}}"#, entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn load_bytes(bytes: &[u8]) -> Result<Vec<f32>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    fs::write(&path, bytes).unwrap();
    load_safetensors(&path, &one_wide()).map_err(|e| e.to_string())
}

/// Asserts the error names the file and contains every needle.
fn assert_refused(what: &str, bytes: &[u8], needles: &[&str]) {
    let e = load_bytes(bytes).expect_err(what);
    assert!(e.contains(WEIGHTS_FILE), "{what}: error does not name the file: {e}");
    for needle in needles {
        assert!(e.contains(needle), "{what}: expected {needle:?} in: {e}");
    }
}

#[test]
fn the_hand_made_file_is_valid() {
    let (entries, data) = valid_entries();
    let params = load_bytes(&assemble(&entries, &data)).unwrap();
    assert_eq!(params.len(), ParamLayout::new(&one_wide()).total());
    assert_eq!(params[..3], [1.0, 2.0, 3.0]); // wte then wpe, in storage order
    // safetensors pads headers with trailing spaces; that is valid too.
    let mut entries = entries;
    let last = entries.len() - 1;
    entries[last].push_str("   ");
    assert!(load_bytes(&assemble(&entries, &data)).is_ok());
}

#[test]
fn header_length_beyond_the_file() {
    let (entries, data) = valid_entries();
    let mut bytes = assemble(&entries, &data);
    let claimed = (bytes.len() as u64 - 8) + 1; // one byte more than everything after the prefix
    bytes[..8].copy_from_slice(&claimed.to_le_bytes());
    assert_refused("header length + 1 beyond the file", &bytes, &["header claims"]);
    // Only the prefix: nothing follows.
    assert_refused("prefix only", &16u64.to_le_bytes(), &["header claims 16 bytes but only 0 follow"]);
}

#[test]
fn huge_header_length_is_refused_before_reading() {
    // Lengths a u64 can hold but no file here has; the file itself is tiny.
    for len in [u64::MAX, 1 << 40, 100_000_001] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert_refused(&format!("header length {len}"), &bytes, &["header claims"]);
    }
}

#[test]
fn overlapping_offsets() {
    let (mut entries, data) = valid_entries();
    // wpe (1 float at [8, 12]) moved onto the second half of wte ([0, 8]); the span stays 4 bytes.
    entries[1] = entry("transformer.wpe.weight", "F32", &[1, 1], 4, 8);
    assert_refused("overlap", &assemble(&entries, &data), &["overlap", "transformer.wpe.weight"]);
}

#[test]
fn out_of_range_offsets() {
    let (mut entries, data) = valid_entries();
    let last = entries.len() - 1;
    // ln_f.bias is the last float; point it past the end of the data section.
    let n = data.len();
    entries[last] = entry("transformer.ln_f.bias", "F32", &[1], n, n + 4);
    assert_refused("past the end", &assemble(&entries, &data), &["transformer.ln_f.bias", "beyond"]);
    // Offsets that end before they start.
    entries[last] = entry("transformer.ln_f.bias", "F32", &[1], n, n - 4);
    assert_refused("reversed", &assemble(&entries, &data), &["transformer.ln_f.bias", "offsets"]);
    // Offsets too large for any machine.
    entries[last] = entry("transformer.ln_f.bias", "F32", &[1], usize::MAX - 3, usize::MAX);
    assert_refused("huge offsets", &assemble(&entries, &data), &["transformer.ln_f.bias"]);
}

#[test]
fn gaps_and_trailing_bytes() {
    let (mut entries, mut data) = valid_entries();
    let mut padded = data.clone();
    padded.extend_from_slice(&[0; 4]);
    assert_refused("4 bytes after the last tensor", &assemble(&entries, &padded), &["truncated or padded"]);
    // A 4-byte hole between wpe and the rest: every later tensor shifted by 4.
    data.splice(12..12, [0u8; 4]);
    for (i, e) in entries.iter_mut().enumerate().skip(2) {
        let (name, shape) = TENSORS[i];
        let start: usize = 12 + 4 + TENSORS[2..i].iter().map(|(_, s)| 4 * s.iter().product::<usize>()).sum::<usize>();
        *e = entry(&format!("transformer.{name}"), "F32", shape, start, start + 4 * shape.iter().product::<usize>());
    }
    assert_refused("gap", &assemble(&entries, &data), &["offset"]);
}

#[test]
fn duplicate_names_in_the_header() {
    let (mut entries, data) = valid_entries();
    // The same name twice, pointing at the same bytes: a JSON map keeps only one of them, silently,
    // so the file must be refused before that happens.
    entries.push(entries[0].clone());
    assert_refused("same entry twice", &assemble(&entries, &data), &["transformer.wte.weight", "twice"]);

    // Twice, with different dtypes over the same bytes: which one is meant is unknowable.
    let (mut entries, data) = valid_entries();
    entries.push(entry("transformer.ln_f.bias", "F16", &[2], data.len() - 4, data.len()));
    assert_refused("same name, other dtype", &assemble(&entries, &data), &["transformer.ln_f.bias", "twice"]);
}

#[test]
fn the_same_tensor_with_and_without_prefix_is_a_duplicate() {
    let (mut entries, mut data) = valid_entries();
    let start = data.len();
    data.extend_from_slice(&9.0f32.to_le_bytes());
    entries.push(entry("ln_f.bias", "F32", &[1], start, start + 4));
    assert_refused("prefixed and bare", &assemble(&entries, &data), &["`ln_f.bias`", "stored twice"]);
}

#[test]
fn shape_times_dtype_must_equal_the_byte_span() {
    let (mut entries, data) = valid_entries();
    // wte is (2, 1) F32 = 8 bytes at [0, 8].
    for (dtype, shape, what) in [("F32", &[3usize, 1][..], "shape too big"), ("F16", &[2, 1][..], "dtype too small")] {
        entries[0] = entry("transformer.wte.weight", dtype, shape, 0, 8);
        assert_refused(what, &assemble(&entries, &data), &["transformer.wte.weight", "8 bytes"]);
    }
    // A shape whose element count overflows.
    entries[0] = entry("transformer.wte.weight", "F32", &[usize::MAX, 2], 0, 8);
    assert_refused("overflowing shape", &assemble(&entries, &data), &["transformer.wte.weight"]);
}

#[test]
fn unknown_and_unsupported_dtypes() {
    let (mut entries, data) = valid_entries();
    entries[0] = entry("transformer.wte.weight", "Q4_K", &[2, 1], 0, 8);
    assert_refused("unknown dtype", &assemble(&entries, &data), &["transformer.wte.weight", "Q4_K"]);
    // Known to safetensors but not a float lushan reads: named by the strict matcher.
    entries[0] = entry("transformer.wte.weight", "I32", &[2, 1], 0, 8);
    assert_refused("I32", &assemble(&entries, &data), &["transformer.wte.weight", "I32", "F32, F16 and BF16"]);
    entries[0] = entry("transformer.wte.weight", "F64", &[1, 1], 0, 8);
    assert_refused("F64", &assemble(&entries, &data), &["transformer.wte.weight"]);
}

#[test]
fn malformed_headers() {
    let (entries, data) = valid_entries();
    let good = assemble(&entries, &data);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut not_utf8 = good.clone();
    not_utf8[9] = 0xff;
    assert_refused("invalid UTF-8", &not_utf8, &["header"]);
    let array = [&2u64.to_le_bytes()[..], b"[]"].concat();
    assert_refused("header is an array", &array, &["header"]);
    let entry_not_object = [&12u64.to_le_bytes()[..], br#"{"a":[1, 2]}"#].concat();
    assert_refused("entry is not an object", &entry_not_object, &["header"]);
    // The header length cutting the JSON short.
    let mut cut = good.clone();
    cut[..8].copy_from_slice(&((header_len - 1) as u64).to_le_bytes());
    assert_refused("header cut by one byte", &cut, &["header"]);
}

#[test]
fn index_files_without_weights_are_explained() {
    let cfg = one_wide();
    for (file, needle) in [
        ("pytorch_model.bin", "safetensors required"),
        ("pytorch_model.bin.index.json", "safetensors required"),
        ("model.safetensors.index.json", "sharded"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONFIG_FILE), write_config_json(&cfg)).unwrap();
        fs::write(dir.path().join(file), b"{}").unwrap();
        let e = load_model_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(needle), "{file}: {e}");
    }
    // A directory path that is a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model");
    fs::write(&file, b"x").unwrap();
    let e = load_model_dir(Path::new(&file)).unwrap_err().to_string();
    assert!(e.contains("not a directory"), "{e}");
}
