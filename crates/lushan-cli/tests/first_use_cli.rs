#![allow(clippy::unwrap_used)] // tests may unwrap
//! A newcomer's first `lushan train` (issue 11): the bundled corpus from any directory, no checkpoint
//! overwritten by accident, a usable model after Ctrl-C before the first evaluation, progress lines in
//! logs, the flag names people type, bare booleans, and a `--help` grouped under headings.

mod common;

use common::{BIN, Output, corpus, fails, ok, s};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A model small enough that a few steps take a fraction of a second.
const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "2",
    "--eval-iters",
    "1",
    "--sample-tokens",
    "0",
    "--warmup-iters",
    "1",
];

/// `lushan train TINY… EXTRA…` run in `dir`.
fn train_in(dir: &Path, extra: &[&str]) -> Output {
    let out =
        Command::new(BIN).arg("train").args(TINY).args(extra).current_dir(dir).stdin(Stdio::null()).output().unwrap();
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "`lushan train {extra:?}` panicked: {out:?}");
    out
}

fn metrics(out: &Path) -> String {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default()
}

#[test]
fn train_without_data_runs_from_any_directory_and_always_leaves_a_model() {
    let dir = tempfile::tempdir().unwrap();
    // One update with an evaluation after it: whether or not it beats the untrained model, the directory
    // must end with a model `generate` loads.
    let o = train_in(dir.path(), &["--out-dir", "out", "--max-iters", "1", "--eval-interval", "1"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("built into lushan"), "the bundled corpus is not announced: {o:?}");
    let out = dir.path().join("out");
    assert!(out.join("data/tinyshakespeare.txt").is_file());
    assert!(out.join("model.safetensors").is_file(), "no model after the run: {o:?}");
    ok(&["generate", "--model", s(&out), "--max-new-tokens", "5"]);

    // A missing input is named before the configuration is printed or anything is written.
    let o = train_in(dir.path(), &["--data", "missing.txt", "--out-dir", "other"]);
    assert!(o.code != 0 && o.stderr.contains("--data missing.txt"), "{o:?}");
    assert!(!o.stdout.contains("resolved training configuration"), "config printed before the check: {o:?}");
    assert!(!dir.path().join("other").exists(), "a refused run created its output directory");
    let o = train_in(dir.path(), &["--init-from", "no-such-model", "--out-dir", "other"]);
    assert!(o.code != 0 && o.stderr.contains("--init-from no-such-model"), "{o:?}");
}

#[test]
fn an_existing_checkpoint_is_not_overwritten_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let args = ["--data", s(&data), "--out-dir", s(&out), "--max-iters", "2", "--eval-interval", "2"];
    assert_eq!(train_in(dir.path(), &args).code, 0);
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = train_in(dir.path(), &[&args[..], &["--seed", "7"]].concat());
    assert!(o.code == 1, "{o:?}");
    for needle in ["already holds a checkpoint", "--resume", "--overwrite"] {
        assert!(o.stderr.contains(needle), "the refusal should mention {needle}: {o:?}");
    }
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before, "the refused run changed the model");
    let o = train_in(dir.path(), &[&args[..], &["--seed", "7", "--overwrite"]].concat());
    assert_eq!(o.code, 0, "{o:?}");
    assert_ne!(std::fs::read(out.join("model.safetensors")).unwrap(), before, "--overwrite kept the old model");
}

#[test]
fn ctrl_c_before_the_first_evaluation_leaves_a_model_generate_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let endless = ["--max-iters", "100000", "--eval-interval", "100000", "--log-interval", "1"];
    let mut args = vec!["train", "--data", s(&data), "--out-dir", s(&out)];
    args.extend(TINY);
    args.extend(endless);
    let stdout_path = dir.path().join("stdout");
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // stdout is a file, not a terminal: a plain progress line comes every --log-interval steps.
    let logged = wait_until(&mut child, || std::fs::read_to_string(&stdout_path).unwrap().contains("step 3/100000"));
    assert!(logged, "no progress line: {}", std::fs::read_to_string(&stdout_path).unwrap());
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("step 3/100000")).unwrap();
    for part in [": loss ", ", lr ", " tokens/s, ", " ms/step, ETA "] {
        assert!(line.contains(part), "progress line without {part:?}: {line}");
    }
    assert!(stdout.contains(&format!("sample it with `lushan generate --model {}`", out.display())), "{stdout}");
    let saved = metrics(&out);
    assert!(saved.contains(r#""kind":"saved""#) && saved.contains(r#""best":false"#), "{saved}");
    assert!(saved.contains(r#""reason":"interrupted""#), "{saved}");
    ok(&["generate", "--model", s(&out), "--max-new-tokens", "5"]);
    ok(&["generate", "--model", s(&out.join("resume")), "--max-new-tokens", "5"]);
    // The interrupted run continues where it stopped.
    let stopped: u64 =
        stdout.split("interrupted at step ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    let end = (stopped + 3).to_string();
    let o = ok(&["train", "--resume", s(&out), "--max-iters", &end, "--eval-interval", &end]);
    assert!(o.stdout.contains(&format!("done: {end} steps")), "{o:?}");
    ok(&["generate", "--model", s(&out), "--max-new-tokens", "5"]);
}

/// Polls `ready` until it holds; a run that ends first, or takes over two minutes, fails the test.
fn wait_until(child: &mut Child, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    false
}

#[test]
fn flags_people_type_are_accepted_and_booleans_work_bare() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let args = ["--data", s(&data), "--out", s(&out), "--lr", "0.002", "--steps", "2", "--eval-interval", "1"];
    // A bare boolean followed by another flag.
    let o = train_in(dir.path(), &[&args[..], &["--always-save-checkpoint", "--seed", "3"]].concat());
    assert_eq!(o.code, 0, "{o:?}");
    for line in ["learning_rate = 0.002", "max_iters = 2", "always_save_checkpoint = true", "seed = 3"] {
        assert!(o.stdout.lines().any(|l| l == line), "the printed config lacks `{line}`: {o:?}");
    }
    // Saving at every evaluation: the evaluations after steps 1 and 2 both saved.
    let saved = metrics(&out).lines().filter(|l| l.contains(r#""saved_model":true"#)).count();
    assert_eq!(saved, 2, "{}", metrics(&out));
    let o = train_in(dir.path(), &["--data", s(&data), "--out-dir", s(&dir.path().join("b")), "--iters", "1"]);
    assert!(o.code == 0 && o.stdout.lines().any(|l| l == "max_iters = 1"), "{o:?}");
    // Misspelt flags get the flag that was meant.
    fails(&["train", "--learning-rat", "0.1"], &["--learning-rate"]);
    fails(&["train", "--max-iter", "5"], &["--max-iters"]);
}

#[test]
fn train_help_groups_described_flags_with_defaults_under_headings() {
    let help = ok(&["train", "--help"]).stdout;
    let mut position = 0;
    for heading in ["Data:", "Model:", "Optimiser:", "Schedule:", "Evaluation:", "Output:", "Fine-tuning:"] {
        let at = help.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("no heading {heading}: {help}"));
        assert!(at > position, "{heading} out of order: {help}");
        position = at;
    }
    // Every flag has a description on the line after it.
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with("--")) {
        let described = lines.get(i + 1).is_some_and(|next| !next.trim().is_empty());
        assert!(described, "{line} has no description: {help}");
    }
    for needle in [
        "[default: 1337]",
        "[default: preset's: 2000 (5000 for baby-gpt",
        "[aliases: --iters, --steps]",
        "[alias: --lr]",
        "--always-save-checkpoint [<ALWAYS_SAVE_CHECKPOINT>]",
        "--overwrite",
    ] {
        assert!(help.contains(needle), "train --help lacks {needle:?}: {help}");
    }
    // `bench train` offers only what changes a step's work.
    let bench = ok(&["bench", "train", "--help"]).stdout;
    assert!(bench.contains("--batch-size") && bench.contains("--n-layer"), "{bench}");
    for unrelated in ["--eval-interval", "--out-dir", "--data <", "--lora-rank", "--max-iters"] {
        assert!(!bench.contains(unrelated), "bench train --help lists {unrelated}: {bench}");
    }
}
