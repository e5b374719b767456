#![allow(clippy::unwrap_used)] // tests may unwrap
//! End-to-end tests of `lushan tokenizer`: GPT-2 ids equal to tiktoken's through the binary, byte-exact
//! round trips, `--allow-special`, training, and errors that name what was wrong.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lushan");
const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lushan-tokenizer/tests/fixtures");

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stdout = String::from_utf8_lossy(&self.stdout);
        let head: String = stdout.chars().take(2000).collect();
        write!(f, "exit code {}\n--- stdout ---\n{head}\n--- stderr ---\n{}", self.code, self.stderr)
    }
}

/// Runs `lushan ARGS` with `stdin` as standard input; no run may panic.
fn lushan(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().unwrap();
    // A command that fails before reading its input closes the pipe: that is not the test's concern.
    if let Err(e) = writer.join().unwrap() {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing stdin: {e}");
    }
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "`lushan {}` panicked: {out:?}", args.join(" "));
    out
}

fn ok(args: &[&str], stdin: &[u8]) -> Output {
    let out = lushan(args, stdin);
    assert_eq!(out.code, 0, "`lushan {}` failed: {out:?}", args.join(" "));
    out
}

fn fails(args: &[&str], stdin: &[u8], needles: &[&str]) {
    let out = lushan(args, stdin);
    assert!(out.code != 0 && out.code != 101, "`lushan {}` should fail cleanly: {out:?}", args.join(" "));
    for needle in needles {
        assert!(out.stderr.contains(needle), "`lushan {}`: stderr should name {needle:?}: {out:?}", args.join(" "));
    }
}

fn ids(out: &Output) -> Vec<u32> {
    String::from_utf8(out.stdout.clone()).unwrap().split_ascii_whitespace().map(|s| s.parse().unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn gpt2_encode_matches_tiktoken_and_decode_round_trips_bytes() {
    let out = ok(&["tokenizer", "encode", "--tokenizer", "gpt2", SHAKESPEARE], b"");
    let ours = ids(&out);
    let raw = std::fs::read(Path::new(FIXTURES).join("tinyshakespeare.gpt2.u16le")).unwrap();
    let tiktoken: Vec<u32> = raw.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
    assert!(ours == tiktoken, "ids differ from tiktoken's ({} vs {})", ours.len(), tiktoken.len());
    // One thread gives the same ids.
    let single = ok(&["tokenizer", "encode", "--threads", "1", SHAKESPEARE], b"");
    assert_eq!(single.stdout, out.stdout);

    let dir = tempfile::tempdir().unwrap();
    let ids_file = dir.path().join("ids.txt");
    std::fs::write(&ids_file, &out.stdout).unwrap();
    let decoded = ok(&["tokenizer", "decode", "--tokenizer", "gpt2", s(&ids_file)], b"");
    assert!(decoded.stdout == std::fs::read(SHAKESPEARE).unwrap(), "decode is not byte-exact");

    // Through standard input, on the Unicode sample, one id per line.
    let sample = std::fs::read(Path::new(FIXTURES).join("unicode_sample.txt")).unwrap();
    let lines = ok(&["tokenizer", "encode", "--lines"], &sample);
    let text = String::from_utf8(lines.stdout.clone()).unwrap();
    assert!(text.lines().count() > 500 && text.lines().all(|l| l.parse::<u32>().is_ok()));
    let back = ok(&["tokenizer", "decode", "-"], &lines.stdout);
    assert!(back.stdout == sample, "sample does not round-trip");
}

#[test]
fn allow_special_turns_endoftext_into_one_id() {
    let text = b"Hello<|endoftext|>";
    let plain = ids(&ok(&["tokenizer", "encode"], text));
    assert_eq!(plain, [15496, 27, 91, 437, 1659, 5239, 91, 29]);
    let special = ids(&ok(&["tokenizer", "encode", "--allow-special"], text));
    assert_eq!(special, [15496, 50256]);
    // Both decode to the same text.
    let back = ok(&["tokenizer", "decode"], b"15496 50256\n");
    assert_eq!(back.stdout, text);
    assert!(ok(&["tokenizer", "encode"], b"").stdout.is_empty());
}

#[test]
fn train_writes_loadable_files_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("tok");
    let train = ok(&["tokenizer", "train", "--vocab-size", "1000", SHAKESPEARE, "--out", s(&out_dir)], b"");
    let summary = String::from_utf8(train.stdout.clone()).unwrap();
    assert!(summary.contains("bpe:1000:"), "{summary}");
    assert!(summary.contains("1000 ids = 256 bytes + 743 merges"), "{summary}");
    for file in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "lushan-tokenizer.json"] {
        assert!(out_dir.join(file).is_file(), "{file} missing: {summary}");
        assert!(summary.contains(file), "{summary}");
    }
    let info = String::from_utf8(ok(&["tokenizer", "info", "--tokenizer", s(&out_dir)], b"").stdout).unwrap();
    assert!(info.contains("vocabulary size: 1000") && info.contains("special token 999: <|endoftext|>"), "{info}");

    let text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n月光 🙂<|endoftext|>";
    for spec in [out_dir.clone(), out_dir.join("tokenizer.json"), out_dir.join("lushan-tokenizer.json")] {
        let encoded = ok(&["tokenizer", "encode", "--tokenizer", s(&spec)], text.as_bytes());
        assert!(ids(&encoded).iter().all(|&id| id < 999), "{spec:?}");
        let decoded = ok(&["tokenizer", "decode", "--tokenizer", s(&spec)], &encoded.stdout);
        assert_eq!(decoded.stdout, text.as_bytes(), "{spec:?}");
    }
    let special = ids(&ok(&["tokenizer", "encode", "--allow-special", "--tokenizer", s(&out_dir)], text.as_bytes()));
    assert_eq!(special.last(), Some(&999));

    // Export copies a tokenizer to Hugging Face files; GPT-2's reloads to the same ids.
    let exported = dir.path().join("gpt2");
    ok(&["tokenizer", "export", "--tokenizer", "gpt2", "--out", s(&exported)], b"");
    let a = ok(&["tokenizer", "encode", "--tokenizer", s(&exported.join("tokenizer.json"))], text.as_bytes());
    let b = ok(&["tokenizer", "encode", "--tokenizer", "gpt2"], text.as_bytes());
    assert_eq!(a.stdout, b.stdout);

    // Training twice gives identical files.
    let again = dir.path().join("again");
    ok(&["tokenizer", "train", "--vocab-size", "1000", SHAKESPEARE, "--out", s(&again)], b"");
    for file in ["vocab.json", "merges.txt", "tokenizer.json"] {
        assert_eq!(std::fs::read(out_dir.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap(), "{file}");
    }
}

#[test]
fn bad_input_fails_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tokenizer");
    fails(&["tokenizer", "encode", "--tokenizer", s(&missing)], b"hi", &["no-such-tokenizer", "not found"]);
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    fails(&["tokenizer", "encode", "--tokenizer", s(&empty_dir)], b"hi", &["empty", "vocab.json + merges.txt"]);
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("tokenizer.json"), "{\"model\": ").unwrap();
    fails(&["tokenizer", "decode", "--tokenizer", s(&broken)], b"1", &["tokenizer.json is not valid JSON"]);

    fails(&["tokenizer", "encode"], b"caf\xE9 au lait", &["standard input", "not valid UTF-8", "byte 3 (0xE9)"]);
    fails(&["tokenizer", "decode"], b"15496 50257", &["token id 50257 at position 1", "50257 tokens"]);
    fails(&["tokenizer", "decode"], b"15496 hello", &["item 1 is \"hello\"", "not a token id"]);
    let nowhere = PathBuf::from(dir.path()).join("missing.txt");
    fails(&["tokenizer", "encode", s(&nowhere)], b"", &["missing.txt"]);
    fails(
        &["tokenizer", "train", SHAKESPEARE, "--vocab-size", "100", "--out", s(&dir.path().join("t"))],
        b"",
        &["vocabulary size 100 is out of range", "257"],
    );
    fails(&["tokenizer", "train", SHAKESPEARE], b"", &["--out"]);
}
