#![allow(clippy::unwrap_used)] // tests may unwrap
//! End-to-end tests of the `lushan` binary: every subcommand on a tiny model and a 20 KB corpus, the
//! errors a user can provoke, Ctrl-C and kill -9 in the middle of training.

mod common;

use common::{corpus, fails, finish, lushan, ok, s, saved_step, spawn, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `common::train_args` with a 20-token closing sample, which some tests read.
fn train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let extra: Vec<&str> = ["--sample-tokens", "20"].into_iter().chain(extra.iter().copied()).collect();
    common::train_args(data, out, &extra)
}

/// A temporary directory with the corpus and a tiny model trained on it in `out/`.
fn trained() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    ok(&train_args(&data, &out, &[]));
    (dir, data, out)
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}"))).collect()
}

fn step_lines(out: &Path) -> usize {
    // Read leniently: the file may be mid-write while a run is going.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"kind\":\"step\"")).count()
}

/// The step number in "… at step N …" after `prefix`.
fn step_after(text: &str, prefix: &str) -> u64 {
    let rest = &text[text.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in {text}")) + prefix.len()..];
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// 1. train

#[test]
fn train_tiny_writes_a_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out_dir = dir.path().join("out");
    let out = ok(&train_args(&data, &out_dir, &[]));
    let so = &out.stdout;

    // The resolved configuration, as TOML, with the flags applied.
    assert!(so.contains("# resolved training configuration"), "{out:?}");
    for line in ["n_layer = 1", "n_head = 2", "n_embd = 32", "block_size = 16", "max_iters = 20"] {
        assert!(so.contains(line), "missing {line:?}: {out:?}");
    }
    assert!(so.contains("starting at step 0"), "{out:?}");
    // Evaluation lines reach stdout even though it is not a terminal.
    for step in [0, 10, 20] {
        assert!(so.contains(&format!("step {step}: train loss ")), "no eval line for step {step}: {out:?}");
    }
    assert!(so.contains("val loss"), "{out:?}");
    assert!(so.contains("done: 20 steps"), "{out:?}");
    // The closing sample: a header, then 20 characters (which may include newlines).
    let sample = &so[so.find("--- sample (20 tokens").unwrap_or_else(|| panic!("no sample: {out:?}"))..];
    let text = sample.split_once('\n').unwrap().1.strip_suffix('\n').unwrap();
    assert_eq!(text.chars().count(), 20, "sample {text:?}");

    for file in [
        "config.json",
        "model.safetensors",
        "lushan-tokenizer.json",
        "train_config.toml",
        "metrics.jsonl",
        "loss.png",
        "resume/state.json",
        "resume/optimizer.safetensors",
        "data/train.bin",
        "data/val.bin",
    ] {
        let meta = std::fs::metadata(out_dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap()).unwrap();
    assert!(config.is_object(), "{config}");
    let toml_text = std::fs::read_to_string(out_dir.join("train_config.toml")).unwrap();
    let settings: toml::Table = toml::from_str(&toml_text).unwrap();
    assert_eq!(settings["n_embd"].as_integer(), Some(32), "{toml_text}");
    assert_eq!(settings["max_iters"].as_integer(), Some(20), "{toml_text}");
    let png = std::fs::read(out_dir.join("loss.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "loss.png is not a PNG");
    assert_eq!(saved_step(&out_dir), Some(20));

    let lines = metrics(&out_dir);
    let kinds = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).collect::<Vec<_>>();
    let steps: Vec<u64> = kinds("step").iter().map(|l| l["step"].as_u64().unwrap()).collect();
    let evals: Vec<u64> = kinds("eval").iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [10, 20], "{lines:?}");
    assert_eq!(evals, [0, 10, 20], "{lines:?}");
    for line in kinds("step") {
        assert!(line["loss"].as_f64().unwrap().is_finite() && line["lr"].as_f64().unwrap() > 0.0, "{line}");
    }
    for line in kinds("eval") {
        assert!(line["val_loss"].as_f64().unwrap().is_finite(), "{line}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. generate

#[test]
fn generate_is_deterministic_per_seed_and_slides_past_the_context() {
    let (_dir, _data, out) = trained();
    let m = s(&out);
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", m, "--prompt", "ROMEO:"];
        args.extend_from_slice(extra);
        ok(&args).stdout
    };
    let a = generate(&["--max-new-tokens", "40", "--seed", "3"]);
    let b = generate(&["--max-new-tokens", "40", "--seed", "3"]);
    assert_eq!(a, b, "same seed, different text");
    assert!(a.starts_with("ROMEO:"), "{a:?}");
    let body = a.strip_prefix("ROMEO:").unwrap().strip_suffix('\n').unwrap();
    assert_eq!(body.chars().count(), 40, "{a:?}");
    let c = generate(&["--max-new-tokens", "40", "--seed", "4"]);
    assert_ne!(a, c, "a different seed gave the same text");

    let g1 = generate(&["--max-new-tokens", "40", "--temperature", "0", "--seed", "1"]);
    let g2 = generate(&["--max-new-tokens", "40", "--temperature", "0", "--seed", "2"]);
    assert_eq!(g1, g2, "greedy decoding depends on the seed");
    assert!(g1.starts_with("ROMEO:"), "{g1:?}");

    // 6 + 60 tokens > the 16-token context: the window slides and generation goes on.
    let long = generate(&["--max-new-tokens", "60", "--seed", "3"]);
    let body60 = long.strip_prefix("ROMEO:").unwrap().strip_suffix('\n').unwrap();
    assert_eq!(body60.chars().count(), 60, "{long:?}");
    assert!(body60.starts_with(body), "the first 40 of 60 tokens differ from a 40-token run: {body:?} vs {body60:?}");

    // Several samples, separated.
    let two = generate(&["--max-new-tokens", "5", "--num-samples", "2"]);
    assert_eq!(two.matches("ROMEO:").count(), 2, "{two:?}");
    assert!(two.contains("---------------"), "{two:?}");
}

// ---------------------------------------------------------------------------------------------------------
// 3. eval

#[test]
fn eval_reports_loss_perplexity_and_bits_on_text_shards_and_directories() {
    let (_dir, data, out) = trained();
    let m = s(&out);
    let val_dir = out.join("data");
    let val_bin = val_dir.join("val.bin");
    let mut texts = Vec::new();
    for d in [s(&data), s(&val_dir), s(&val_bin)] {
        let o = ok(&["eval", "--model", m, "--data", d]);
        for needle in ["loss:", "perplexity:", "bits per character:", "tokens evaluated:"] {
            assert!(o.stdout.contains(needle), "eval --data {d}: no {needle:?}: {o:?}");
        }
        texts.push(o.stdout);
    }
    assert!(texts[0].contains("tokens evaluated: 19999"), "{}", texts[0]);
    assert_eq!(texts[1], texts[2], "a data directory is evaluated on its val.bin");
    assert!(texts[1].contains("tokens evaluated: 1999"), "{}", texts[1]);

    for d in [s(&data), s(&val_dir)] {
        let o = ok(&["eval", "--model", m, "--data", d, "--json"]);
        let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {o:?}"));
        let loss = v["loss"].as_f64().unwrap();
        let ppl = v["perplexity"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{v}");
        assert!((ppl - loss.exp()).abs() <= 1e-6 * ppl, "perplexity {ppl} != exp(loss {loss})");
        let bits = v["bits_per_character"].as_f64().unwrap();
        assert!((bits - loss / std::f64::consts::LN_2).abs() <= 1e-9 * bits, "{v}");
    }
    // A shorter window is allowed; a longer one than the model's context is not.
    ok(&["eval", "--model", m, "--data", s(&val_bin), "--block-size", "8"]);
    fails(&["eval", "--model", m, "--data", s(&val_bin), "--block-size", "17"], &["--block-size", "16"]);
}

// ---------------------------------------------------------------------------------------------------------
// 4. prepare

#[test]
fn prepare_writes_shards_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let prep = dir.path().join("prep");
    let out = ok(&["prepare", s(&data), "--out", s(&prep)]);
    for needle in ["20000 tokens", "18000", "2000", "train.bin", "val.bin", "lushan-tokenizer.json"] {
        assert!(out.stdout.contains(needle), "no {needle:?}: {out:?}");
    }
    for file in ["train.bin", "val.bin", "lushan-tokenizer.json"] {
        assert!(prep.join(file).is_file(), "{file} missing");
    }
    assert!(std::fs::read(prep.join("train.bin")).unwrap().starts_with(b"LUSHANTK"));
    // A prepared directory trains directly (no re-tokenizing into OUT/data).
    let out_dir = dir.path().join("out");
    ok(&train_args(&prep, &out_dir, &["--max-iters", "2", "--sample-tokens", "0"]));
    assert!(!out_dir.join("data").exists(), "a prepared directory should be used as is");
    // --val-fraction is validated.
    fails(&["prepare", s(&data), "--out", s(&prep), "--val-fraction", "1.5"], &["val-fraction"]);
}

// ---------------------------------------------------------------------------------------------------------
// 5. bad input

#[test]
fn bad_training_input_fails_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let train = |extra: &[&str], needles: &[&str]| fails(&train_args(&data, &out, extra), needles);

    let o = train(&["--learning-rat", "0.1"], &["--learning-rat"]);
    assert_eq!(o.code, 2, "usage errors exit 2");
    train(&["--n-embd", "30", "--n-head", "4"], &["--n-embd", "--n-head"]);
    train(&["--learning-rate", "-1"], &["--learning-rate"]);
    fails(&["train", "--data", s(&data), "--out-dir", s(&out), "--batch-size", "0"], &["--batch-size"]);
    assert!(!out.exists(), "a rejected configuration should not create the output directory");

    let missing = dir.path().join("no-such-corpus.txt");
    fails(&train_args(&missing, &out, &[]), &["no-such-corpus.txt"]);

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails(&train_args(&empty, &out, &[]), &["empty.txt", "empty"]);

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "0123456789").unwrap();
    fails(&train_args(&short, &out, &[]), &["shorter than one window", "--block-size"]);

    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "max_itters = 5\n").unwrap();
    train(&["--config", s(&bad_toml)], &["bad.toml", "max_itters"]);
    let bad_value = dir.path().join("bad-value.toml");
    std::fs::write(&bad_value, "n_layer = \"two\"\n").unwrap();
    train(&["--config", s(&bad_value)], &["bad-value.toml", "n_layer"]);
    train(&["--config", s(&dir.path().join("absent.toml"))], &["absent.toml"]);
}

#[test]
fn bad_resume_fails_with_a_message_naming_it() {
    let (dir, _data, out) = trained();
    let empty = dir.path().join("never-trained");
    std::fs::create_dir(&empty).unwrap();
    fails(&["train", "--resume", s(&empty)], &["never-trained", "resume"]);
    fails(&["train", "--resume", s(&dir.path().join("absent"))], &["absent"]);
    let o = fails(&["train", "--resume", s(&out), "--n-embd", "64", "--max-iters", "30"], &["n_embd", "32", "64"]);
    assert!(!o.stderr.contains("n_layer"), "only the changed field is named: {o:?}");
    // The failed attempt left the run resumable.
    let o = ok(&["train", "--resume", s(&out), "--max-iters", "22", "--sample-tokens", "0"]);
    assert!(o.stdout.contains("starting at step 20"), "{o:?}");
}

#[test]
fn bad_generate_and_eval_input_fails_with_a_message_naming_it() {
    let (dir, data, out) = trained();
    let m = s(&out);
    fails(&["generate", "--model", m, "--temperature", "-1"], &["temperature"]);
    fails(&["generate", "--model", m, "--top-p", "1.5"], &["top-p", "1.5"]);
    fails(&["generate", "--model", m, "--top-k", "0"], &["top-k"]);
    fails(&["generate", "--model", "/nonexistent"], &["/nonexistent"]);
    fails(&["eval", "--model", "/nonexistent", "--data", s(&data)], &["/nonexistent"]);
    fails(&["generate", "--model", m, "--prompt", "€"], &["€"]);
    fails(&["generate", "--model", m, "--prompt", ""], &["--prompt"]);
    fails(&["eval", "--model", m], &["--data"]);

    // A damaged checkpoint: weights truncated (in the header, in the data) or gone.
    let size = std::fs::metadata(out.join("model.safetensors")).unwrap().len();
    for (name, keep) in
        [("trunc-head", Some(4)), ("trunc-header", Some(100)), ("trunc-data", Some(size - 64)), ("gone", None)]
    {
        let ckpt = dir.path().join(name);
        std::fs::create_dir(&ckpt).unwrap();
        for f in ["config.json", "model.safetensors", "lushan-tokenizer.json"] {
            std::fs::copy(out.join(f), ckpt.join(f)).unwrap();
        }
        match keep {
            Some(len) => {
                std::fs::File::options().write(true).open(ckpt.join("model.safetensors")).unwrap().set_len(len).unwrap()
            }
            None => std::fs::remove_file(ckpt.join("model.safetensors")).unwrap(),
        }
        fails(&["generate", "--model", s(&ckpt)], &["model.safetensors"]);
        fails(&["eval", "--model", s(&ckpt), "--data", s(&data)], &["model.safetensors"]);
    }
    // Other missing or broken checkpoint files.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(out.join(f), broken.join(f)).unwrap();
    }
    fails(&["generate", "--model", s(&broken)], &["lushan-tokenizer.json"]);
    std::fs::write(broken.join("config.json"), "not json").unwrap();
    fails(&["generate", "--model", s(&broken)], &["config.json"]);

    // Shards: bad magic, truncated body, missing file.
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, b"NOTASHARD-------------------------------------").unwrap();
    fails(&["eval", "--model", m, "--data", s(&bad)], &["bad.bin", "LUSHANTK"]);
    let cut = dir.path().join("cut.bin");
    let shard = std::fs::read(out.join("data/val.bin")).unwrap();
    std::fs::write(&cut, &shard[..shard.len() - 3]).unwrap();
    fails(&["eval", "--model", m, "--data", s(&cut)], &["cut.bin"]);
    fails(&["eval", "--model", m, "--data", s(&dir.path().join("none.bin"))], &["none.bin"]);
    let text = dir.path().join("euro.txt");
    std::fs::write(&text, "ROMEO: €5").unwrap();
    fails(&["eval", "--model", m, "--data", s(&text)], &["€"]);
}

// ---------------------------------------------------------------------------------------------------------
// 6. Ctrl-C

#[test]
fn ctrl_c_saves_resume_state_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let long = ["--max-iters", "100000", "--eval-interval", "1000", "--lr-decay-iters", "100000"];
    let mut child = spawn(&train_args(&data, &out, &long), dir.path());
    let pid = child.id().to_string();
    if !wait_for(Duration::from_secs(60), || step_lines(&out) >= 3) {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("no step lines in metrics.jsonl within 60 s");
    }
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let o = finish(child, dir.path(), Duration::from_secs(60));
    assert_eq!(o.code, 130, "{o:?}");
    assert!(o.stdout.contains("interrupted at step"), "{o:?}");
    assert!(o.stdout.contains(&format!("lushan train --resume {}", s(&out))), "{o:?}");
    assert!(!o.stdout.contains("--- sample"), "an interrupted run should not sample: {o:?}");
    let step = step_after(&o.stdout, "interrupted at step ");
    assert!(step >= 30, "interrupted at step {step}, but metrics had 3 step lines");
    assert!(out.join("resume/state.json").is_file());
    assert_eq!(saved_step(&out), Some(step));

    let target = (step + 10).to_string();
    let o = ok(&["train", "--resume", s(&out), "--max-iters", &target, "--sample-tokens", "0"]);
    assert_eq!(step_after(&o.stdout, "starting at step "), step, "{o:?}");
    assert!(o.stdout.contains(&format!("done: {target} steps")), "{o:?}");
    assert_eq!(saved_step(&out), Some(step + 10));
    // The metrics log was continued, not restarted.
    let lines = metrics(&out);
    assert_eq!(lines.first().unwrap()["step"], 0, "{lines:?}");
    assert_eq!(lines.last().unwrap()["step"].as_u64(), Some(step + 10), "{lines:?}");
}

// ---------------------------------------------------------------------------------------------------------
// 7. kill -9

#[test]
fn kill_9_during_checkpoint_saves_never_corrupts_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let m = s(&out);
    // A model save and a resume-state save after every step.
    let every_step = [
        "--eval-interval",
        "1",
        "--always-save-checkpoint",
        "true",
        "--max-iters",
        "100000",
        "--lr-decay-iters",
        "100000",
        "--sample-tokens",
        "0",
    ];
    let started = Instant::now();
    let mut last = 0;
    // Staggered delays so that the kills land at different points of the save sequence; each round after the
    // first kills a resumed run, so recovery from the previous kill is killed in turn.
    for (round, delay_ms) in [0u64, 1, 2, 3, 5, 7, 9, 12, 15, 18, 23, 29].into_iter().enumerate() {
        let mut child = if round == 0 {
            spawn(&train_args(&data, &out, &every_step), dir.path())
        } else {
            spawn(&["train", "--resume", m, "--max-iters", "100000"], dir.path())
        };
        let progressed = wait_for(Duration::from_secs(30), || saved_step(&out).is_some_and(|s| s > last));
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(progressed, "round {round}: no new checkpoint within 30 s");

        let o = ok(&["generate", "--model", m, "--max-new-tokens", "5", "--seed", &round.to_string()]);
        assert_eq!(o.stdout.chars().count(), 1 + 5 + 1, "prompt \\n, 5 tokens, \\n: {o:?}");
        let step = saved_step(&out).unwrap_or_else(|| panic!("round {round}: no resume state left"));
        assert!(step > last, "round {round}: step went from {last} to {step}");
        let target = (step + 2).to_string();
        let o = ok(&["train", "--resume", m, "--max-iters", &target]);
        assert_eq!(step_after(&o.stdout, "starting at step "), step, "{o:?}");
        last = step + 2;
        assert_eq!(saved_step(&out), Some(last));
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------------------
// 8. bench

#[test]
fn bench_train_reports_throughput() {
    let o = ok(&[
        "bench",
        "train",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "2",
    ]);
    for needle in ["tokens/s", "ms/step", "B=2 T=16"] {
        assert!(o.stdout.contains(needle), "no {needle:?}: {o:?}");
    }
    let json = o.stdout.lines().find_map(|l| l.strip_prefix("JSON ")).unwrap_or_else(|| panic!("no JSON line: {o:?}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0, "{v}");
    fails(&["bench", "train", "--n-embd", "30", "--n-head", "4"], &["--n-embd"]);
}

// ---------------------------------------------------------------------------------------------------------
// 9. --help

#[test]
fn help_for_every_subcommand_names_its_main_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--help"], &["prepare", "train", "generate", "eval", "bench"]),
        (&["train", "--help"], &["--data", "--out-dir", "--resume", "--config", "--max-iters", "--learning-rate"]),
        (&["train", "--help"], &["--n-layer", "--n-head", "--n-embd", "--block-size", "--batch-size", "--preset"]),
        (&["generate", "--help"], &["--model", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p"]),
        (&["generate", "--help"], &["--seed", "--num-samples"]),
        (&["eval", "--help"], &["--model", "--data", "--json", "--block-size"]),
        (&["prepare", "--help"], &["--out", "--val-fraction"]),
        (&["bench", "--help"], &["train"]),
        (&["bench", "train", "--help"], &["--steps", "--warmup", "--n-embd"]),
    ];
    for (args, needles) in cases {
        let o = ok(args);
        for needle in *needles {
            assert!(o.stdout.contains(needle), "`lushan {}` should mention {needle}: {o:?}", args.join(" "));
        }
    }
    let v = ok(&["--version"]);
    assert!(v.stdout.starts_with("lushan "), "{v:?}");
    let none = lushan(&[]);
    assert_eq!(none.code, 2, "no subcommand is a usage error: {none:?}");
}

#[test]
fn fine_tuning_starts_from_a_checkpoint_keeps_its_vocabulary_and_checks_the_data() {
    let (dir, data, base) = trained();
    let tuned = dir.path().join("tuned");
    // The checkpoint's shape wins over the flags; its step-0 evaluation is the "before" loss.
    let o = ok(&train_args(
        &data,
        &tuned,
        &[
            "--init-from",
            s(&base),
            "--n-layer",
            "3",
            "--max-iters",
            "10",
            "--eval-interval",
            "5",
            "--learning-rate",
            "3e-4",
        ],
    ));
    assert!(o.stdout.contains("fine-tuning"), "{o:?}");
    assert!(o.stdout.contains("step 0: train loss") && o.stdout.contains("step 10:"), "{o:?}");
    let settings = std::fs::read_to_string(tuned.join("train_config.toml")).unwrap();
    assert!(settings.contains("n_layer = 1"), "{settings}");
    assert_eq!(
        std::fs::read(tuned.join("lushan-tokenizer.json")).unwrap(),
        std::fs::read(base.join("lushan-tokenizer.json")).unwrap()
    );
    // A fresh model would start near ln(65) ≈ 4.2: the fine-tuned one starts where the checkpoint was.
    let first_val: f64 = o
        .stdout
        .lines()
        .find(|l| l.starts_with("step 0:"))
        .and_then(|l| l.split("val loss ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap();
    assert!(first_val < 3.9, "step-0 validation loss {first_val} is not the checkpoint's");
    ok(&["generate", "--model", s(&tuned), "--max-new-tokens", "10"]);

    // Text with a character the checkpoint's vocabulary lacks is refused, naming it.
    let odd = dir.path().join("odd.txt");
    std::fs::write(&odd, "ROMEO: ünïcödé ".repeat(200)).unwrap();
    fails(&train_args(&odd, &dir.path().join("odd-out"), &["--init-from", s(&base)]), &["odd.txt"]);
    // Shards made by another tokenizer are refused.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "abc ".repeat(500)).unwrap();
    let prepared = dir.path().join("prepared");
    ok(&["prepare", s(&other), "--out", s(&prepared)]);
    fails(&train_args(&prepared, &dir.path().join("mismatch"), &["--init-from", s(&base)]), &["vocabulary mismatch"]);
    fails(&["train", "--preset", "finetune-shakespeare", "--data", s(&data)], &["--init-from"]);
}

#[test]
fn out_is_an_alias_of_out_dir_as_the_issue_interface_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("via-out");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
    ]);
    assert!(out.join("model.safetensors").is_file());
}
