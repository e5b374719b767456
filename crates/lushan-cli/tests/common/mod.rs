//! Shared harness of the CLI integration tests: run the `lushan` binary and check how it ended.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; tests may unwrap

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_lushan");
pub const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt");

/// What a finished command left behind.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `lushan ARGS` to completion; no run may panic.
pub fn lushan(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap();
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "`lushan {}` panicked: {out:?}", args.join(" "));
    out
}

/// Runs `lushan ARGS` and requires exit code 0.
pub fn ok(args: &[&str]) -> Output {
    let out = lushan(args);
    assert_eq!(out.code, 0, "`lushan {}` failed: {out:?}", args.join(" "));
    out
}

/// Runs `lushan ARGS` and requires a clean failure (not a panic's 101) whose stderr names every needle.
pub fn fails(args: &[&str], needles: &[&str]) -> Output {
    let out = lushan(args);
    assert!(out.code != 0 && out.code != 101, "`lushan {}` should fail cleanly: {out:?}", args.join(" "));
    for needle in needles {
        assert!(out.stderr.contains(needle), "`lushan {}`: stderr should name {needle:?}: {out:?}", args.join(" "));
    }
    out
}

/// The first 20 KB of tiny Shakespeare as `dir/small.txt`.
pub fn corpus(dir: &Path) -> PathBuf {
    let text = std::fs::read(SHAKESPEARE).unwrap();
    let path = dir.join("small.txt");
    std::fs::write(&path, &text[..20_000]).unwrap();
    path
}

/// The step of the saved resume state (in `resume/`, or in `resume.old/` between the two renames of a save).
pub fn saved_step(out: &Path) -> Option<u64> {
    ["resume", "resume.old"].iter().find_map(|d| {
        let text = std::fs::read_to_string(out.join(d).join("state.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
    })
}

/// Polls `cond` every few milliseconds; false if `timeout` passed first.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Starts `lushan ARGS` in the background with stdout/stderr going to files in `dir`.
pub fn spawn(args: &[&str], dir: &Path) -> Child {
    let stdout = std::fs::File::create(dir.join("bg.stdout")).unwrap();
    let stderr = std::fs::File::create(dir.join("bg.stderr")).unwrap();
    Command::new(BIN).args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn().unwrap()
}

/// The tiny run most CLI tests train: 1 layer, 2 heads, 32 channels, context 16, batch 4, 20 steps evaluated
/// every 10 on 2 batches, no closing sample (well under a second).
pub const TINY: &[&str] = &[
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
    "--max-iters",
    "20",
    "--eval-interval",
    "10",
    "--eval-iters",
    "2",
    "--sample-tokens",
    "0",
    "--warmup-iters",
    "2",
    "--lr-decay-iters",
    "20",
];

/// `train --data DATA --out-dir OUT` with the [`TINY`] settings, overridden or extended by the `--flag value`
/// pairs of `extra` (clap rejects a flag given twice).
pub fn train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut pairs: Vec<[&str; 2]> = TINY.chunks(2).map(|p| [p[0], p[1]]).collect();
    for p in extra.chunks(2) {
        assert_eq!(p.len(), 2, "extra flags come in pairs: {extra:?}");
        match pairs.iter_mut().find(|q| q[0] == p[0]) {
            Some(q) => q[1] = p[1],
            None => pairs.push([p[0], p[1]]),
        }
    }
    let mut args = vec!["train", "--data", s(data), "--out-dir", s(out)];
    args.extend(pairs.into_iter().flatten());
    args
}

/// Waits (at most `timeout`, then kills it) for a background run; the exit code is 128 + the signal for a
/// process killed by one (as a shell reports it).
pub fn finish(mut child: Child, dir: &Path, timeout: Duration) -> Output {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("background run did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = Output {
        code: std::os::unix::process::ExitStatusExt::signal(&status).map_or(status.code().unwrap_or(-1), |s| 128 + s),
        stdout: std::fs::read_to_string(dir.join("bg.stdout")).unwrap(),
        stderr: std::fs::read_to_string(dir.join("bg.stderr")).unwrap(),
    };
    assert!(!out.stderr.contains("panicked"), "background run panicked: {out:?}");
    out
}
