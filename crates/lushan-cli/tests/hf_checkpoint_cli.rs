#![allow(clippy::unwrap_used)] // tests may unwrap
//! Checkpoint directories carry Hugging Face tokenizer files beside lushan's own, and the binary works from
//! a directory that has only the Hugging Face files (`config.json`, `model.safetensors` and the tokenizer
//! files transformers reads): generation, tokenizing and fine-tuning.

mod common;

use common::{Output, corpus, ok, s};
use std::path::Path;

/// A model and run small enough for a few seconds even with GPT-2's 50257-token vocabulary.
const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-iters",
    "2",
    "--sample-tokens",
    "0",
    "--warmup-iters",
    "1",
];

/// `train --data DATA --out-dir OUT` with [`TINY`] and `extra`.
fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--data", s(data), "--out-dir", s(out)];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    ok(&args)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A fresh directory holding copies of `files` from `from`.
fn copy_only(from: &Path, to: &Path, files: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for file in files {
        std::fs::copy(from.join(file), to.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// The validation loss on the `step 0:` line of a training run's output.
fn step0_val_loss(out: &Output) -> f64 {
    out.stdout
        .lines()
        .find(|l| l.starts_with("step 0:"))
        .and_then(|l| l.split("val loss ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no step-0 validation loss: {out:?}"))
}

fn encode(tokenizer: &Path, text: &Path) -> String {
    ok(&["tokenizer", "encode", "--tokenizer", s(tokenizer), s(text)]).stdout
}

#[test]
fn char_checkpoint_has_hugging_face_tokenizer_files_that_work_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    train(&data, &out, &["--max-iters", "20", "--eval-interval", "10"]);

    for file in ["lushan-tokenizer.json", "tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"]
    {
        assert!(out.join(file).is_file(), "{file} missing from the checkpoint");
    }
    let json = read_json(&out.join("tokenizer.json"));
    assert_eq!(json["model"]["type"], "WordLevel");
    let lushan = read_json(&out.join("lushan-tokenizer.json"));
    let vocab = lushan["vocab"].as_array().unwrap();
    assert_eq!(json["model"]["vocab"].as_object().unwrap().len(), vocab.len());
    for (id, ch) in vocab.iter().enumerate() {
        assert_eq!(json["model"]["vocab"][ch.as_str().unwrap()], id, "{ch}");
    }
    assert_eq!(read_json(&out.join("tokenizer_config.json"))["tokenizer_class"], "PreTrainedTokenizerFast");

    // The Hugging Face files alone: same ids, same generated text.
    let hf = dir.path().join("hf-only");
    copy_only(&out, &hf, &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    assert_eq!(encode(&hf, &data), encode(&out, &data));
    let generate = |model: &Path| {
        ok(&["generate", "--model", s(model), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "7"]).stdout
    };
    let text = generate(&hf);
    assert!(text.starts_with("ROMEO:"), "{text}");
    assert_eq!(text, generate(&out));
}

#[test]
fn gpt2_checkpoint_generates_from_a_unicode_prompt_and_fine_tunes_from_hugging_face_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("gpt2-out");
    train(&data, &out, &["--tokenizer", "gpt2", "--max-iters", "4", "--eval-interval", "2"]);
    for file in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "lushan-tokenizer.json"] {
        assert!(out.join(file).is_file(), "{file} missing from the checkpoint");
    }
    assert_eq!(read_json(&out.join("vocab.json")).as_object().unwrap().len(), 50257);
    assert_eq!(read_json(&out.join("tokenizer.json"))["model"]["type"], "BPE");
    assert_eq!(read_json(&out.join("tokenizer_config.json"))["tokenizer_class"], "GPT2Tokenizer");

    let prompt = "你好 ROMEO";
    let o = ok(&["generate", "--model", s(&out), "--prompt", prompt, "--max-new-tokens", "8", "--seed", "1"]);
    assert!(o.stdout.starts_with(prompt), "the output must start with the prompt exactly: {o:?}");

    // Only what transformers needs for a GPT-2 model: no lushan-tokenizer.json, no tokenizer.json.
    let hf = dir.path().join("hf-only");
    copy_only(&out, &hf, &["config.json", "model.safetensors", "vocab.json", "merges.txt"]);
    let info = ok(&["tokenizer", "info", "--tokenizer", s(&hf)]).stdout;
    assert!(info.contains("gpt2-bpe:50257"), "{info}");
    let o2 = ok(&["generate", "--model", s(&hf), "--prompt", prompt, "--max-new-tokens", "8", "--seed", "1"]);
    assert_eq!(o2.stdout, o.stdout, "the Hugging Face files alone generate the same text");

    let tune = |from: &Path, name: &str| {
        let o = train(
            &data,
            &dir.path().join(name),
            &["--init-from", s(from), "--max-iters", "2", "--eval-interval", "2", "--learning-rate", "1e-4"],
        );
        assert!(o.stdout.contains("fine-tuning"), "{o:?}");
        assert!(o.stdout.contains("step 2:"), "{o:?}");
        o
    };
    let from_hf = tune(&hf, "tuned-hf");
    let loss = step0_val_loss(&from_hf);
    assert!(loss.is_finite() && loss > 0.0, "{from_hf:?}");
    // The same model, tokenizer and data: the same step-0 loss as fine-tuning from the full checkpoint, and
    // the fine-tuned directory gets every tokenizer file again.
    assert_eq!(loss, step0_val_loss(&tune(&out, "tuned-full")));
    let tuned = dir.path().join("tuned-hf");
    for file in ["lushan-tokenizer.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"] {
        assert!(tuned.join(file).is_file(), "{file} missing from the fine-tuned checkpoint");
    }
}
