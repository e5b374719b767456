//! Shared harness of the CLI integration tests: run the `lushan` binary and check how it ended.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; tests may unwrap

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
