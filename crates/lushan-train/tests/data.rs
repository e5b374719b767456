//! `lushan prepare` end to end, and the errors a user can cause with inputs and data directories.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};

use lushan_tokenizer::{TOKENIZER_FILE, Tokenizer};
use lushan_train::data::{
    Shard, TRAIN_SHARD, VAL_SHARD, encode_file_with, load_tokenizer, prepare_char, read_corpus, split_point,
};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt");

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn prepare_err(inputs: &[PathBuf], out: &Path, val_fraction: f64) -> String {
    prepare_char(inputs, out, val_fraction).unwrap_err().to_string()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn prepare_first_20kb_of_tinyshakespeare_end_to_end() {
    let bytes = fs::read(SHAKESPEARE).unwrap();
    let text = std::str::from_utf8(&bytes[..20_000]).unwrap(); // the corpus is ASCII
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "input.txt", text.as_bytes());
    let out = tmp.path().join("nested").join("prepared");

    let report = prepare_char(std::slice::from_ref(&input), &out, 0.1).unwrap();

    let mut chars: Vec<char> = text.chars().collect();
    chars.sort();
    chars.dedup();
    assert_eq!(report.files, [input]);
    assert_eq!(report.vocab_size, chars.len());
    assert_eq!(report.description, format!("char:{}", chars.len()));
    assert_eq!(report.train_tokens, 18_000);
    assert_eq!(report.val_tokens, 2_000);
    assert_eq!(report.train_path, out.join(TRAIN_SHARD));
    assert_eq!(report.val_path, out.join(VAL_SHARD));
    assert_eq!(report.tokenizer_path, out.join(TOKENIZER_FILE));
    assert_eq!(names_in(&out), [TOKENIZER_FILE, TRAIN_SHARD, VAL_SHARD]); // no temp files left
    let printed = report.to_string();
    assert!(printed.contains("18000 tokens"), "{printed}");
    assert!(printed.contains(&report.val_path.display().to_string()), "{printed}");

    let tokenizer = load_tokenizer(&out).unwrap();
    assert_eq!(tokenizer.describe(), report.description);
    let train = Shard::open(&report.train_path, Some(report.vocab_size)).unwrap();
    let val = Shard::open(&report.val_path, Some(report.vocab_size)).unwrap();
    assert_eq!((train.len(), val.len()), (18_000, 2_000));
    assert_eq!(train.description(), report.description);
    let mut ids = vec![0; train.len() + val.len()];
    train.copy_window(0, &mut ids[..train.len()]).unwrap();
    val.copy_window(0, &mut ids[train.len()..]).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}

#[test]
fn full_tinyshakespeare_matches_nanogpt_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let report = prepare_char(&[PathBuf::from(SHAKESPEARE)], tmp.path(), 0.1).unwrap();
    // nanoGPT's shakespeare_char/prepare.py prints: vocab size: 65, train has 1,003,854 tokens,
    // val has 111,540 tokens.
    assert_eq!(report.vocab_size, 65);
    assert_eq!((report.train_tokens, report.val_tokens), (1_003_854, 111_540));
    let tokenizer = load_tokenizer(tmp.path()).unwrap();
    // The ids of nanoGPT's stoi for this corpus.
    assert_eq!(tokenizer.encode("hii there").unwrap(), [46, 47, 47, 1, 58, 46, 43, 56, 43]);
}

#[test]
fn directory_input_reads_regular_files_sorted_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    fs::create_dir(&corpus).unwrap();
    write(&corpus, "b.txt", "world, again and again\n".as_bytes());
    write(&corpus, "a.txt", "hello ".as_bytes());
    fs::create_dir(corpus.join("sub")).unwrap();
    write(&corpus.join("sub"), "ignored.txt", b"zzz");
    let extra = write(tmp.path(), "extra.txt", "!".as_bytes());
    let read = read_corpus(&[corpus.clone(), extra.clone()]).unwrap();
    assert_eq!(read.text, "hello world, again and again\n!");
    assert_eq!(read.files, [corpus.join("a.txt"), corpus.join("b.txt"), extra]);
}

#[test]
fn missing_input_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-corpus.txt");
    let out = tmp.path().join("out");
    let message = prepare_err(std::slice::from_ref(&missing), &out, 0.1);
    assert!(message.contains(&missing.display().to_string()), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(!out.exists());
}

#[test]
fn empty_file_and_empty_directory_are_empty_corpora() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write(tmp.path(), "empty.txt", b"");
    let message = prepare_err(std::slice::from_ref(&empty), &tmp.path().join("out"), 0.1);
    assert!(message.contains("corpus is empty"), "{message}");
    assert!(message.contains(&empty.display().to_string()), "{message}");
    let dir = tmp.path().join("nothing-here");
    fs::create_dir(&dir).unwrap();
    let message = prepare_err(std::slice::from_ref(&dir), &tmp.path().join("out"), 0.1);
    assert!(message.contains("corpus is empty"), "{message}");
    assert!(message.contains("nothing-here"), "{message}");
    let message = prepare_err(&[], &tmp.path().join("out"), 0.1);
    assert!(message.contains("`inputs`"), "{message}");
}

#[test]
fn non_utf8_file_names_file_and_byte_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write(tmp.path(), "good.txt", "fine text\n".as_bytes());
    let bad = write(tmp.path(), "latin1.txt", b"caf\xe9 au lait");
    let message = prepare_err(&[good, bad.clone()], &tmp.path().join("out"), 0.1);
    assert!(message.contains(&bad.display().to_string()), "{message}");
    assert!(message.contains("byte offset 3"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn bad_val_fraction_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "in.txt", "some text to split\n".as_bytes());
    for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let message = prepare_err(std::slice::from_ref(&input), &tmp.path().join("out"), bad);
        assert!(message.contains("--val-fraction"), "{bad}: {message}");
        assert!(message.contains("between 0 and 1"), "{bad}: {message}");
    }
}

#[test]
fn a_split_that_would_be_empty_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "tiny.txt", b"a");
    let message = prepare_err(std::slice::from_ref(&input), &tmp.path().join("out"), 0.1);
    assert!(message.contains("train split empty"), "{message}");
    assert!(message.contains("1 tokens"), "{message}");
    // 1 - 1e-20 rounds to 1.0, so nothing is left for validation.
    let message = split_point(100, 1e-20).unwrap_err().to_string();
    assert!(message.contains("val split empty"), "{message}");
    assert_eq!(split_point(10, 0.1).unwrap(), 9);
    assert_eq!(split_point(2, 0.1).unwrap(), 1);
}

#[test]
fn encode_file_with_names_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write(tmp.path(), "train.txt", "abc\ndef\n".as_bytes());
    let out = tmp.path().join("out");
    prepare_char(&[train], &out, 0.25).unwrap();
    let tokenizer = load_tokenizer(&out).unwrap();

    let ok = write(tmp.path(), "ok.txt", "fed\ncab".as_bytes());
    assert_eq!(tokenizer.decode(&encode_file_with(&tokenizer, &ok).unwrap()).unwrap(), "fed\ncab");

    let other = write(tmp.path(), "other.txt", "abc\nbad!\n".as_bytes());
    let message = encode_file_with(&tokenizer, &other).unwrap_err().to_string();
    assert!(message.contains(&other.display().to_string()), "{message}");
    assert!(message.contains("'!'"), "{message}");
    assert!(message.contains("line 2, column 4"), "{message}");

    let missing = tmp.path().join("missing.txt");
    let message = encode_file_with(&tokenizer, &missing).unwrap_err().to_string();
    assert!(message.contains("missing.txt") && message.contains("does not exist"), "{message}");
    let binary = write(tmp.path(), "binary.txt", b"ab\x80");
    let message = encode_file_with(&tokenizer, &binary).unwrap_err().to_string();
    assert!(message.contains("byte offset 2"), "{message}");
    let empty = write(tmp.path(), "empty.txt", b"");
    let message = encode_file_with(&tokenizer, &empty).unwrap_err().to_string();
    assert!(message.contains("empty.txt") && message.contains("empty"), "{message}");
}

#[test]
fn load_tokenizer_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(TOKENIZER_FILE);
    let message = load_tokenizer(tmp.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("re-run `lushan prepare`"), "{message}");
    fs::write(&path, r#"{"type":"char","vocab":["a","ab"]}"#).unwrap();
    let message = load_tokenizer(tmp.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("entry 1 is \"ab\""), "{message}");
}

#[test]
fn shard_from_another_tokenizer_is_caught_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "in.txt", "the quick brown fox jumps over the lazy dog".as_bytes());
    let report = prepare_char(&[input], tmp.path(), 0.1).unwrap();
    let small = Tokenizer::from_json(r#"{"type":"char","vocab":[" ","a","b"]}"#).unwrap();
    let message = Shard::open(&report.train_path, Some(small.vocab_size())).unwrap_err().to_string();
    assert!(message.contains("vocabulary of 3 tokens"), "{message}");
}
