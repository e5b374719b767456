#![allow(clippy::unwrap_used)] // tests may unwrap
//! Error messages say each cause once and name the right field: a path is not repeated by the context
//! around it, a size that overflows is reported against the flag that overflowed, and an absurdly large
//! request is not called "too small".

mod common;

use common::{fails, s};

/// No message states the same clause twice ("X: Y: X: Y").
fn says_each_cause_once(stderr: &str) {
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or(stderr);
    let clauses: Vec<&str> = line.trim_start_matches("error:").split(": ").map(str::trim).collect();
    for (i, a) in clauses.iter().enumerate() {
        for b in &clauses[i + 1..] {
            assert!(a != b, "{line:?} repeats {a:?}");
        }
    }
}

#[test]
fn a_missing_model_directory_is_named_once_with_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-model");
    let corpus = common::corpus(dir.path());
    let commands: [&[&str]; 5] = [
        &["generate"],
        &["eval", "--data", s(&corpus)],
        &["explain", "--prompt", "ROMEO:"],
        &["chat"],
        &["classify", "some text"],
    ];
    for command in commands {
        let args: Vec<&str> = command.iter().copied().chain(["--model", s(&missing)]).collect();
        let out = fails(&args, &["does not exist", "lushan train"]);
        assert_eq!(out.stderr.matches(s(&missing)).count(), 2, "{command:?}: {out:?}"); // the path, and the hint
        says_each_cause_once(&out.stderr);
    }
}

#[test]
fn a_missing_tokenizer_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-tokenizer");
    let out = fails(&["tokenizer", "encode", "--tokenizer", s(&missing), "hello"], &["not found"]);
    assert_eq!(out.stderr.matches(s(&missing)).count(), 1, "{out:?}");
    says_each_cause_once(&out.stderr);
}

#[test]
fn a_vocabulary_size_beyond_32_bits_is_out_of_range_not_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "hello world ".repeat(50)).unwrap();
    let out = fails(
        &["tokenizer", "train", "--vocab-size", "18446744073709551615", s(&corpus), "--out", s(&dir.path().join("t"))],
        &["18446744073709551615", "out of range", "at most 4294967295"],
    );
    assert!(!out.stderr.contains("too small"), "{out:?}");
}

#[test]
fn an_overflowing_width_names_n_embd_not_n_layer() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::corpus(dir.path());
    let out = fails(
        &[
            "train",
            "--data",
            s(&corpus),
            "--out-dir",
            s(&dir.path().join("o")),
            "--n-embd",
            "1099511627776",
            "--n-head",
            "1",
        ],
        &["--n-embd"],
    );
    assert!(!out.stderr.contains("--n-layer"), "{out:?}");
    says_each_cause_once(&out.stderr);
}
