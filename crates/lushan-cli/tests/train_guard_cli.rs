#![allow(clippy::unwrap_used)] // tests may unwrap
//! `lushan train` guarding its run: sizes that cannot fit in memory, unbounded gradient accumulation,
//! two runs on one directory, SIGTERM, paths that cannot be saved, a `resume/` of another run, a shard
//! truncated mid-run, and `eval` on a shard of another tokenizer. Each is refused or survived with a
//! message naming the flag or file — never an abort, a hang or lost work.

mod common;

use common::{BIN, corpus, fails, finish, ok, s, saved_step, spawn, train_args, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TASKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lushan-train/tests/fixtures/tasks");

/// A run that goes on until it is stopped.
const ENDLESS: &[&str] = &["--max-iters", "100000", "--eval-interval", "1000", "--lr-decay-iters", "100000"];

fn step_lines(out: &Path) -> usize {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"kind\":\"step\"")).count()
}

/// Waits until the background run has done `steps` logged steps (killing it and failing otherwise).
fn wait_for_steps(child: &mut Child, out: &Path, steps: usize) {
    if !wait_for(Duration::from_secs(60), || step_lines(out) >= steps) {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("no {steps} step lines in metrics.jsonl within 60 s");
    }
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
}

// ---------------------------------------------------------------------------------------------------------
// Item 5: sizes that cannot fit are refused before anything is allocated.

#[test]
fn huge_training_sizes_are_refused_with_the_estimate_and_the_flag_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let cases: &[(&[&str], &str)] = &[
        (&["--batch-size", "1000000000000"], "--batch-size"),
        (&["--block-size", "1000000000"], "--block-size"),
        (&["--n-layer", "1000000"], "--n-layer"),
        (&["--n-embd", "1000000"], "--n-embd"),
        (&["--batch-size", "4294967296", "--block-size", "4294967296"], "--block-size"),
        (&["--batch-size", "4294967296"], "--batch-size"),
        (&["--block-size", "4294967296"], "--block-size"),
        // Training keeps no T×T attention maps, so a long context is refused for its activations (linear in T).
        (&["--block-size", "200000", "--batch-size", "200"], "--block-size"),
    ];
    for (extra, flag) in cases {
        let o = fails(&train_args(&data, &out, extra), &["does not fit in memory", flag]);
        assert_eq!(o.code, 1, "{extra:?}: {o:?}");
    }
    // The same for the fine-tuning tasks, trained from scratch on their records.
    let tasks = Path::new(TASKS);
    for (task, file) in [("classify", "spam.jsonl"), ("sft", "chat.jsonl")] {
        let records = tasks.join(file);
        for (extra, flag) in
            [(["--batch-size", "1000000000000"], "--batch-size"), (["--n-layer", "1000000"], "--n-layer")]
        {
            let extra = [extra[0], extra[1], "--task", task, "--block-size", "64"];
            let args = train_args(&records, &out, &extra);
            fails(&args, &["does not fit in memory", flag]);
        }
    }
    // A refused run leaves no lock behind: a fitting run in the same directory goes ahead.
    ok(&train_args(&data, &out, &["--max-iters", "2"]));
}

// ---------------------------------------------------------------------------------------------------------
// Item 6: gradient accumulation is bounded, and a stop request ends a long accumulation.

#[test]
fn gradient_accumulation_is_bounded_and_ctrl_c_stops_inside_a_long_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    fails(
        &train_args(&data, &out, &["--gradient-accumulation-steps", "1000000000000"]),
        &["--gradient-accumulation-steps", "65536"],
    );
    // The largest accumulation allowed, with micro-batches big enough that the first update takes minutes.
    let long = ["--gradient-accumulation-steps", "65536", "--batch-size", "16", "--block-size", "32"];
    let child = spawn(&train_args(&data, &out, &long), dir.path());
    let evaluated = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(dir.path().join("bg.stdout")).is_ok_and(|t| t.contains("step 0: train loss"))
    });
    std::thread::sleep(Duration::from_millis(300)); // into the first update's micro-batches
    signal(&child, "INT");
    let o = finish(child, dir.path(), Duration::from_secs(60));
    assert!(evaluated, "no step-0 evaluation: {o:?}");
    assert_eq!(o.code, 130, "{o:?}");
    assert!(o.stdout.contains("interrupted at step 0"), "{o:?}");
    assert_eq!(saved_step(&out), Some(0), "the resume state is the last completed step");
    let o = ok(&["train", "--resume", s(&out), "--gradient-accumulation-steps", "1", "--max-iters", "2"]);
    assert!(o.stdout.contains("starting at step 0") && o.stdout.contains("done: 2 steps"), "{o:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Item 7: one run per output directory.

#[test]
fn a_second_run_on_the_same_out_dir_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    // Resume state every 10 steps, so a `--resume` of the directory gets as far as the lock.
    let mut first =
        spawn(&train_args(&data, &out, &["--max-iters", "100000", "--lr-decay-iters", "100000"]), dir.path());
    if !wait_for(Duration::from_secs(60), || saved_step(&out).is_some()) {
        first.kill().unwrap();
        first.wait().unwrap();
        panic!("no resume state within 60 s");
    }
    let pid = first.id().to_string();
    let o = fails(&train_args(&data, &out, &[]), &["locked by another training run", &format!("process {pid}")]);
    assert_eq!(o.code, 1, "{o:?}");
    let resumed = fails(&["train", "--resume", s(&out)], &[&format!("process {pid}")]);
    assert!(!resumed.stdout.contains("starting at step"), "{resumed:?}");
    // The first run's history is intact.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.starts_with("{\"kind\":\"eval\",\"step\":0"), "{metrics:?}");
    signal(&first, "INT");
    let o = finish(first, dir.path(), Duration::from_secs(60));
    assert_eq!(o.code, 130, "{o:?}");
    assert!(!out.join(".lushan-train.lock").exists(), "the lock is released on exit");
    // A lock file left by a process that is gone is no obstacle.
    std::fs::write(out.join(".lushan-train.lock"), "999999999\n").unwrap();
    let o = ok(&["train", "--resume", s(&out), "--max-iters", "40"]);
    assert!(o.stdout.contains("done: 40 steps"), "{o:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Item 8: SIGTERM saves the resume state like Ctrl-C.

#[test]
fn sigterm_saves_resume_state_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("out");
    let mut child = spawn(&train_args(&data, &out, ENDLESS), dir.path());
    wait_for_steps(&mut child, &out, 3);
    signal(&child, "TERM");
    let o = finish(child, dir.path(), Duration::from_secs(60));
    assert_eq!(o.code, 143, "128 + SIGTERM, after saving: {o:?}");
    assert!(o.stdout.contains("by SIGTERM: resume state saved"), "{o:?}");
    let step: u64 = o.stdout.split("interrupted at step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(step >= 30, "interrupted at step {step}, but metrics had 3 step lines");
    assert_eq!(saved_step(&out), Some(step), "the work up to the signal is saved");
    let target = (step + 5).to_string();
    let o = ok(&["train", "--resume", s(&out), "--max-iters", &target]);
    assert!(o.stdout.contains(&format!("starting at step {step}")), "{o:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Item 9: paths that the saved settings cannot hold are refused before training.

#[test]
fn a_non_utf8_out_dir_is_refused_before_training() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join(std::ffi::OsStr::from_bytes(b"out-\xff"));
    let mut args: Vec<std::ffi::OsString> =
        train_args(&data, Path::new("placeholder"), &[]).into_iter().map(std::ffi::OsString::from).collect();
    let at = args.iter().position(|a| a == "placeholder").unwrap();
    args[at] = out.clone().into_os_string();
    let o = Command::new(BIN).args(&args).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--out-dir") && stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a refused run");
}

// ---------------------------------------------------------------------------------------------------------
// Item 10: `--resume` checks the state belongs to the directory, and says what it ignores.

#[test]
fn resume_refuses_another_runs_state_and_notes_ignored_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let (four, one) = (dir.path().join("four"), dir.path().join("one"));
    ok(&train_args(&data, &four, &["--n-layer", "4", "--max-iters", "10"]));
    ok(&train_args(&data, &one, &["--max-iters", "10"]));
    std::fs::remove_dir_all(four.join("resume")).unwrap();
    copy_dir(&one.join("resume"), &four.join("resume"));
    let model_before = std::fs::read(four.join("model.safetensors")).unwrap();
    let o = fails(
        &["train", "--resume", s(&four), "--max-iters", "20"],
        &["another run's model", "n_layer: 4 in train_config.toml, 1 in resume/"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(std::fs::read(four.join("model.safetensors")).unwrap(), model_before, "the 4-layer model is kept");

    // Flags that --resume makes meaningless are named on stderr, and have no effect.
    let elsewhere = dir.path().join("elsewhere");
    let o =
        ok(&["train", "--resume", s(&one), "--out-dir", s(&elsewhere), "--init-from", s(&four), "--max-iters", "12"]);
    assert!(o.stderr.contains("note: --out-dir") && o.stderr.contains("is ignored"), "{o:?}");
    assert!(o.stderr.contains("note: --init-from"), "{o:?}");
    assert!(!elsewhere.exists(), "{o:?}");
    let settings = std::fs::read_to_string(one.join("train_config.toml")).unwrap();
    assert!(settings.contains("init_from = \"scratch\""), "{settings}");

    fails(
        &train_args(&data, &dir.path().join("lr"), &["--min-lr", "0.01", "--learning-rate", "0.001"]),
        &["--min-lr", "--learning-rate"],
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Item 14: a shard truncated while training stops the run with an error, keeping its work.

#[test]
fn a_shard_truncated_mid_run_is_a_clear_error_not_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let prepared = dir.path().join("prepared");
    ok(&["prepare", s(&data), "--out", s(&prepared)]);
    let out = dir.path().join("out");
    let mut child = spawn(&train_args(&prepared, &out, ENDLESS), dir.path());
    wait_for_steps(&mut child, &out, 3);
    let shard = prepared.join("train.bin");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::File::options().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    let o = finish(child, dir.path(), Duration::from_secs(60));
    assert_eq!(o.code, 1, "an error, not a signal (SIGBUS would be 135): {o:?}");
    assert!(o.stderr.contains("train.bin") && o.stderr.contains("changed while the run was reading it"), "{o:?}");
    let step = saved_step(&out).unwrap();
    assert!(step >= 30, "the resume state holds the last completed step, got {step}");
    assert!(out.join("resume/model.safetensors").is_file());
    assert!(!out.join(".lushan-train.lock").exists());
}

// ---------------------------------------------------------------------------------------------------------
// Item 15: eval refuses a shard of another tokenizer, as train does.

#[test]
fn eval_refuses_a_shard_made_with_another_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let model = dir.path().join("model");
    ok(&train_args(&data, &model, &["--max-iters", "2"]));
    // Characters the model knows, but another vocabulary: every id is in range, so only the description tells.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "abc ".repeat(500)).unwrap();
    let prepared = dir.path().join("prepared");
    ok(&["prepare", s(&other), "--out", s(&prepared)]);
    for data in [prepared.clone(), prepared.join("val.bin")] {
        fails(&["eval", "--model", s(&model), "--data", s(&data)], &["vocabulary mismatch", "char:4", "val.bin"]);
    }
    let train = fails(
        &train_args(&prepared, &dir.path().join("t"), &["--init-from", s(&model)]),
        &["vocabulary mismatch", "char:4"],
    );
    assert_eq!(train.code, 1);
}
