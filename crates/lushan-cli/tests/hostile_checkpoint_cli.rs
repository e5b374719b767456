#![allow(clippy::unwrap_used)] // tests may unwrap
//! `lushan generate` on checkpoint directories that were tampered with: a config.json claiming far more
//! layers than the weights hold, NaN/Inf weights (in the model or a LoRA adapter), a safetensors header
//! with 100 000 entries, and a FIFO in place of a file. Each must end at once with a clean error that names
//! the problem in a few lines — never a hang, a memory climb, or a flood of output.

mod common;

use common::{BIN, Output, s};
use lushan_model::checkpoint::{CONFIG_FILE, WEIGHTS_FILE, save_model_dir};
use lushan_model::{Gpt, Lora, LoraConfig, LoraTarget, ModelConfig, ParamKind, ParamLayout};
use lushan_tokenizer::{CharTokenizer, TOKENIZER_FILE, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a correct run ends in well under a second. Only here so a regression hangs no test run.
const WATCHDOG: Duration = Duration::from_secs(120);

fn tokenizer() -> Tokenizer {
    Tokenizer::from(CharTokenizer::from_text("abcdefghijklmnopqrstuvwxyz .\n").unwrap())
}

/// Two layers: 28 tensors.
fn config() -> ModelConfig {
    ModelConfig::new(tokenizer().vocab_size(), 16, 2, 2, 32)
}

/// A random model and its character tokenizer, saved the way training saves them, in `dir/model`.
fn checkpoint(dir: &Path) -> PathBuf {
    let tok = tokenizer();
    let model = Gpt::new(config(), 7).unwrap();
    let out = dir.join("model");
    save_model_dir(&out, &model.config, &model.params).unwrap();
    tok.save_dir(&out).unwrap();
    out
}

/// Runs `lushan ARGS`, killing it if it outlives [`WATCHDOG`] (which fails the test as a hang).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WATCHDOG {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("`lushan {}` hung", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `lushan generate --model MODEL [extra]` must fail cleanly (not a panic) naming every needle.
fn generate_fails(model: &Path, extra: &[&str], needles: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", s(model), "--prompt", "ab", "--max-new-tokens", "4"];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.code != 0 && out.code != 101, "should fail cleanly: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "stderr should name {needle:?}: {out:?}");
    }
    out
}

fn set_config(model: &Path, key: &str, value: Value) {
    let path = model.join(CONFIG_FILE);
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json[key] = value;
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn a_config_claiming_a_billion_layers_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    for (n_layer, missing) in [(1_000_000_000u64, "11999999976"), (100_000, "1199976")] {
        set_config(&model, "n_layer", n_layer.into());
        let out = generate_fails(
            &model,
            &[],
            &[WEIGHTS_FILE, "but the file holds 28", "missing tensor `transformer.h.2.ln_1.weight`", missing],
        );
        assert!(out.stderr.lines().count() < 20, "a few lines, not one per tensor: {out:?}");
    }
}

#[test]
fn nan_or_infinite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let cfg = config();
    let mut params = Gpt::new(cfg.clone(), 7).unwrap().params;
    let layout = ParamLayout::new(&cfg);
    params[layout.layer_range(ParamKind::QkvW, 1).start] = f32::NAN;
    save_model_dir(&model, &cfg, &params).unwrap();
    generate_fails(&model, &[], &["transformer.h.1.attn.c_attn.weight", "holds NaN"]);

    params[layout.layer_range(ParamKind::QkvW, 1).start] = 0.0;
    params[layout.range(ParamKind::LnfW).start] = f32::INFINITY;
    save_model_dir(&model, &cfg, &params).unwrap();
    generate_fails(&model, &[], &["transformer.ln_f.weight", "holds inf"]);
}

#[test]
fn nan_adapter_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let cfg = config();
    let config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Qkv] };
    let mut lora = Lora::new(config, &cfg, 3).unwrap();
    let last = lora.params.len() - 1;
    lora.params[last] = f32::NAN;
    let adapter = dir.path().join("adapter");
    lora.save_peft(&adapter, &cfg, s(&model)).unwrap();
    generate_fails(&model, &["--adapter", s(&adapter)], &["adapter_model.safetensors", "lora_B", "holds NaN"]);
}

#[test]
fn a_header_with_a_hundred_thousand_entries_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let entries: Vec<String> = (0..100_000)
        .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#, 4 * i, 4 * i + 4))
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + 400_000, 0);
    std::fs::write(model.join(WEIGHTS_FILE), bytes).unwrap();
    let out = generate_fails(&model, &[], &["100000 entries", "limit"]);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("entries")).collect();
    assert_eq!(lines.len(), 1, "one summary message: {out:?}");
    assert!(out.stderr.lines().count() < 10, "{out:?}");
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_a_checkpoint_file_is_refused_without_blocking() {
    for name in [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE] {
        let dir = tempfile::tempdir().unwrap();
        let model = checkpoint(dir.path());
        let path = model.join(name);
        std::fs::remove_file(&path).unwrap();
        assert!(Command::new("mkfifo").arg(&path).status().unwrap().success());
        generate_fails(&model, &[], &[name, "named pipe"]);
    }
}
