#![allow(clippy::unwrap_used)] // tests may unwrap
//! Fine-tuning from the command line: pre-train on the texts of a JSONL file, then `--task classify` and
//! `--task sft` with `--init-from`, fully and with LoRA; the LoRA checkpoint is a PEFT adapter that
//! `generate --model ADAPTER`, `--adapter` and `lushan merge` all turn into the same text; bad settings
//! are refused naming the flag.

mod common;

use common::{fails, ok, s};
use std::path::{Path, PathBuf};

const TASKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lushan-train/tests/fixtures/tasks");

const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "64",
    "--batch-size",
    "4",
    "--max-iters",
    "8",
    "--eval-interval",
    "4",
    "--eval-iters",
    "2",
    "--sample-tokens",
    "0",
    "--warmup-iters",
    "1",
];

fn task(name: &str) -> PathBuf {
    Path::new(TASKS).join(name)
}

/// A tiny character-level model pre-trained on the texts of the chat slice.
fn pretrained(dir: &Path) -> PathBuf {
    let out = dir.join("base");
    let data = task("chat.jsonl");
    let mut args = vec!["train", "--data", s(&data), "--out-dir", s(&out)];
    args.extend_from_slice(TINY);
    ok(&args);
    assert!(out.join("model.safetensors").is_file());
    out
}

#[test]
fn lora_sft_writes_a_peft_adapter_that_generate_and_merge_agree_on() {
    let dir = tempfile::tempdir().unwrap();
    let base = pretrained(dir.path());
    let out = dir.path().join("lora");
    let data = task("chat.jsonl");
    let mut args = vec!["train", "--task", "sft", "--data", s(&data), "--init-from", s(&base), "--out-dir", s(&out)];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--lora-rank", "4", "--lora-targets", "c_attn,mlp.c_fc", "--learning-rate", "0.01"]);
    let run = ok(&args);
    assert!(run.stdout.contains("LoRA: rank 4"), "{}", run.stdout);
    for file in ["adapter_config.json", "adapter_model.safetensors", "lushan-adapter.json"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(!out.join("model.safetensors").exists(), "a LoRA run saves the adapter, not the weights");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);

    let generate = |extra: &[&str]| {
        let mut a = vec!["generate", "--prompt", "User: hi\n", "--max-new-tokens", "24", "--seed", "3"];
        a.extend_from_slice(extra);
        ok(&a).stdout
    };
    let via_adapter_dir = generate(&["--model", s(&out)]);
    let via_flag = generate(&["--model", s(&base), "--adapter", s(&out)]);
    let merged = dir.path().join("merged");
    ok(&["merge", "--model", s(&base), "--adapter", s(&out), "--out", s(&merged)]);
    let via_merged = generate(&["--model", s(&merged)]);
    assert_eq!(via_adapter_dir, via_flag);
    assert_eq!(via_flag, via_merged);
    assert_ne!(via_merged, generate(&["--model", s(&base)]), "the adapter must change the model");
    fails(&["merge", "--model", s(&base), "--adapter", s(&out), "--out", s(&merged)], &["--overwrite"]);

    // Masked loss on the answers and greedy answers scored against the references.
    let eval = ok(&[
        "eval",
        "--model",
        s(&out),
        "--data",
        s(&data),
        "--generate",
        "--limit",
        "4",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(eval.stdout.trim()).unwrap();
    assert_eq!(v["examples"], 4);
    assert_eq!(v["generated"], 4);
    assert!(v["masked_loss"].as_f64().unwrap() > 0.0 && v["chrf"].as_f64().is_some(), "{v}");
}

#[test]
fn classify_from_a_pretrained_lm_full_and_lora() {
    let dir = tempfile::tempdir().unwrap();
    // A character model pre-trained on the spam slice's texts (its vocabulary covers the texts).
    let base = dir.path().join("spam-lm");
    let data = task("spam.jsonl");
    let mut args = vec!["train", "--data", s(&data), "--out-dir", s(&base)];
    args.extend_from_slice(TINY);
    ok(&args);
    for lora in [false, true] {
        let out = dir.path().join(if lora { "cls-lora" } else { "cls-full" });
        let mut args =
            vec!["train", "--task", "classify", "--data", s(&data), "--init-from", s(&base), "--out-dir", s(&out)];
        args.extend_from_slice(TINY);
        if lora {
            args.extend_from_slice(&["--lora-rank", "2"]);
        }
        let run = ok(&args);
        assert!(run.stdout.contains("val accuracy"), "{}", run.stdout);
        assert!(run.stdout.contains("[\"ham\", \"spam\"]"), "{}", run.stdout);
    }
    // Task evaluation of the classifier: the report, the confusion matrix as text and PNG.
    let png = dir.path().join("confusion.png");
    let full = dir.path().join("cls-full");
    let report = ok(&["eval", "--model", s(&full), "--data", s(&data), "--png", s(&png)]).stdout;
    for needle in ["precision", "recall", "macro avg", "accuracy", "confusion matrix", "gold"] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let json = ok(&["eval", "--model", s(&full), "--data", s(&data), "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["texts"], 20);
    let accuracy = v["report"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{v}");
    // A classifier checkpoint with other labels is refused unless --reset-head.
    let relabelled = dir.path().join("relabelled.jsonl");
    let text = std::fs::read_to_string(&data).unwrap().replace("\"ham\"", "\"ok\"");
    std::fs::write(&relabelled, text).unwrap();
    let out = dir.path().join("again");
    let mut args =
        vec!["train", "--task", "classify", "--data", s(&relabelled), "--init-from", s(&full), "--out-dir", s(&out)];
    args.extend_from_slice(TINY);
    fails(&args, &["--reset-head"]);
    args.push("--reset-head");
    args.push("true");
    ok(&args);
}

#[test]
fn bad_fine_tuning_settings_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = task("chat.jsonl");
    let out = dir.path().join("x");
    fails(
        &["train", "--task", "sft", "--data", s(&data), "--out-dir", s(&out), "--lora-rank", "4"],
        &["--lora-rank", "--init-from"],
    );
    let base = pretrained(dir.path());
    let mut args = vec!["train", "--task", "sft", "--data", s(&data), "--init-from", s(&base), "--out-dir", s(&out)];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--lora-rank", "2", "--lora-targets", "c_nothing"]);
    fails(&args, &["c_nothing"]);
}
