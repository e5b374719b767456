//! `--model FILE.gguf` and `lushan export --format gguf`, run as a user runs them, on the GGUF files
//! llama.cpp made in crates/lushan-model/tests/fixtures/gguf (tools/gguf_fixture.py).
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;

use common::{fails, ok, s};
use lushan_model::gguf::{self, TensorData, Value, write_gguf};
use lushan_model::{Gpt, ModelConfig};
use std::path::PathBuf;

const PROMPT: &str = "ROMEO: But soft, what light";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lushan-model/tests/fixtures/gguf").join(name)
}

fn expected(key: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap();
    all[key].clone()
}

/// Greedy text from `model` (with extra flags), 8 new tokens.
fn greedy(model: &str, extra: &[&str]) -> String {
    let mut args = vec!["generate", "--model", model, "--temperature", "0", "-n", "8", "--prompt", PROMPT];
    args.extend_from_slice(extra);
    ok(&args).stdout
}

#[test]
fn generate_runs_llama_cpp_files_with_their_embedded_tokenizer() {
    // The F32 file continues the prompt as transformers did (greedy, same 8 tokens, same text).
    let text = greedy(s(&fixture("tiny-f32.gguf")), &[]);
    let want = format!("{PROMPT}{}\n", expected("greedy_text").as_str().unwrap());
    assert_eq!(text, want);
    // Every type llama.cpp wrote runs; Q8_0 and F16 keep the greedy path of this small model.
    for file in ["tiny-f16.gguf", "tiny-q8_0.gguf", "tiny-q4_0.gguf"] {
        let out = greedy(s(&fixture(file)), &[]);
        assert!(out.starts_with(PROMPT) && out.len() > PROMPT.len() + 1, "{file}: {out}");
    }
    // --dtype applies on top of a GGUF: the F32 file run as q8_0 is the Q8_0 file (identical matrices).
    assert_eq!(greedy(s(&fixture("tiny-f32.gguf")), &["--dtype", "q8_0"]), greedy(s(&fixture("tiny-q8_0.gguf")), &[]));
}

#[test]
fn export_writes_gguf_that_generates_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["f32", "f16", "q8_0", "q4_0"] {
        let out = dir.path().join(format!("tiny-{dtype}.gguf"));
        let printed = ok(&["export", "--model", s(&fixture("tiny-f32.gguf")), "--dtype", dtype, "--out", s(&out)]);
        assert!(printed.stdout.contains("GGUF") && printed.stdout.contains(dtype), "{}", printed.stdout);
        let ours = greedy(s(&out), &[]);
        let direct = greedy(s(&fixture("tiny-f32.gguf")), &["--dtype", dtype]);
        assert_eq!(ours, direct, "{dtype}: the export runs as the model converted at load");
    }
}

#[test]
fn export_refuses_rows_that_are_not_whole_blocks_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // A GPT-2 with 40 channels (rows of 40 weights), the fixture's tokenizer.
    let tokenizer = gguf::load_gpt2(&fixture("tiny-f32.gguf")).unwrap().tokenizer;
    let model = Gpt::new(ModelConfig::new(300, 16, 1, 2, 40), 7).unwrap();
    let path = dir.path().join("c40.gguf");
    gguf::save_gpt2(&path, &model, &tokenizer, "c40").unwrap();
    let out = dir.path().join("x.gguf");
    fails(&["export", "--model", s(&path), "--dtype", "q4_0", "--out", s(&out)], &["q4_0", "40", "32", "weight"]);
    assert!(!out.exists());
    // f16 has no blocks: the same model exports and runs.
    ok(&["export", "--model", s(&path), "--dtype", "f16", "--out", s(&out)]);
    ok(&["generate", "--model", s(&out), "-n", "3", "--prompt", "ab"]);
}

#[test]
fn foreign_and_broken_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let llama = dir.path().join("llama.gguf");
    let mut bytes = Vec::new();
    let arch = [("general.architecture".to_string(), Value::String("llama".into()))];
    write_gguf(&mut bytes, &arch, &[] as &[TensorData<'_>]).unwrap();
    std::fs::write(&llama, &bytes).unwrap();
    fails(&["generate", "--model", s(&llama), "-n", "2"], &["llama.gguf", "architecture `llama` is not supported"]);

    let full = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &full[..full.len() / 3]).unwrap();
    fails(&["generate", "--model", s(&cut), "-n", "2"], &["cut.gguf", "truncated"]);
}
