#![allow(clippy::unwrap_used)] // tests may unwrap
//! `--dtype` as a user meets it: every inference command runs a converted model, `eval` reports the
//! converted weights' perplexity, and the errors name what was wrong.

mod common;

use common::{BIN, corpus, fails, ok, s, train_args};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A tiny character model (32 channels: rows are whole 32-weight blocks), trained once per test run.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dtype-cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = corpus(&dir);
        let out = dir.join("model");
        ok(&train_args(&data, &out, &["--max-iters", "40", "--lr-decay-iters", "40", "--block-size", "64"]));
        out
    })
}

fn eval_json(dtype: &str) -> Value {
    let m = model();
    let out = ok(&["eval", "--model", s(m), "--data", s(&m.join("data")), "--dtype", dtype, "--json"]);
    serde_json::from_str(out.stdout.trim()).unwrap()
}

#[test]
fn eval_reports_each_types_perplexity_close_to_f32s() {
    let f32_ppl = eval_json("f32")["perplexity"].as_f64().unwrap();
    for (dtype, tolerance) in [("bf16", 0.001), ("f16", 0.001), ("q8_0", 0.01), ("q4_0", 0.1)] {
        let v = eval_json(dtype);
        let ppl = v["perplexity"].as_f64().unwrap();
        let change = (ppl - f32_ppl).abs() / f32_ppl;
        assert!(change < tolerance, "{dtype}: perplexity {ppl} vs f32 {f32_ppl} ({change:.4} relative)");
        assert_eq!(v["tokens"], eval_json("f32")["tokens"]);
    }
}

#[test]
fn generate_explain_chat_and_bench_run_converted_weights() {
    let m = s(model());
    for dtype in ["bf16", "f16", "q8_0", "q4_0"] {
        let out = ok(&["generate", "--model", m, "--dtype", dtype, "--prompt", "ROMEO:", "-n", "20", "--seed", "3"]);
        assert!(out.stdout.starts_with("ROMEO:") && out.stdout.chars().count() > 20, "{dtype}: {out:?}");
    }
    // Greedy generation with the converted weights is reproducible.
    let greedy = ["generate", "--model", m, "--dtype", "q8_0", "--prompt", "To be", "-n", "30", "--temperature", "0"];
    assert_eq!(ok(&greedy).stdout, ok(&greedy).stdout);

    let explained = ok(&["explain", "--model", m, "--dtype", "q4_0", "--prompt", "ROMEO: But", "--format", "json"]);
    let v: Value = serde_json::from_str(&explained.stdout).unwrap();
    assert!(v.get("tokens").is_some() || v.as_object().is_some_and(|o| !o.is_empty()), "{explained:?}");

    let mut chat = Command::new(BIN)
        .args(["chat", "--model", m, "--dtype", "q8_0", "--temperature", "0", "--max-new-tokens", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chat.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let chat = chat.wait_with_output().unwrap();
    assert!(chat.status.success(), "{}", String::from_utf8_lossy(&chat.stderr));
    assert_eq!(String::from_utf8_lossy(&chat.stdout).lines().count(), 1);

    let bench = ok(&[
        "bench",
        "generate",
        "--preset",
        "shakespeare-char",
        "--n-layer",
        "1",
        "--n-embd",
        "64",
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "8",
        "--repeats",
        "1",
        "--dtype",
        "q4_0",
    ]);
    let line = bench.stdout.lines().find_map(|l| l.strip_prefix("JSON ")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["dtype"], "q4_0");
    // Q4_0 matrices take 4.5 bits a weight: the model's bytes are well under a third of f32's.
    let f32_bytes = 4.0 * v["params"].as_f64().unwrap();
    assert!(v["weight_bytes"].as_f64().unwrap() < 0.33 * f32_bytes, "{v}");
}

#[test]
fn bad_types_and_rows_that_are_not_whole_blocks_are_clear_errors() {
    let m = s(model());
    fails(&["generate", "--model", m, "--dtype", "q5_k"], &["q5_k", "f32, bf16, f16, q8_0, q4_0"]);
    // 48 channels: rows of 48 weights are not whole 32-weight blocks.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dtype-cli-48");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = corpus(&dir);
    let out = dir.join("model");
    ok(&train_args(&data, &out, &["--n-embd", "48", "--max-iters", "2", "--eval-interval", "2"]));
    fails(
        &["generate", "--model", s(&out), "--dtype", "q4_0"],
        &["--dtype q4_0", "tensor `transformer.h.0.attn.c_attn.weight` has rows of 48", "multiple of 32"],
    );
    fails(&["eval", "--model", s(&out), "--data", s(&out.join("data")), "--dtype", "q8_0"], &["rows of 48"]);
    // 16-bit floats have no blocks.
    ok(&["generate", "--model", s(&out), "--dtype", "bf16", "-n", "5"]);
}
