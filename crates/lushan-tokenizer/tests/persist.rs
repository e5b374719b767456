//! A tokenizer saved in a directory (lushan's file and the Hugging Face files) and read back, and the
//! errors of a directory that cannot be read.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_tokenizer::{CharTokenizer, TOKENIZER_FILE, Tokenizer};
use std::fs;
use std::path::Path;

fn char_tokenizer() -> Tokenizer {
    Tokenizer::Char(CharTokenizer::from_text("First Citizen:\r\n床前明月光 🙂\n").unwrap())
}

fn hf_tokenizer_kind(dir: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    json["model"]["type"].as_str().unwrap().to_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn save_dir_writes_lushan_and_hugging_face_files() {
    let gpt2 = Tokenizer::gpt2().unwrap();
    for (tokenizer, files, kind) in [
        (char_tokenizer(), &["tokenizer.json", "tokenizer_config.json"][..], "WordLevel"),
        (gpt2, &["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"][..], "BPE"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = tokenizer.save_dir(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(TOKENIZER_FILE));
        let mut expected: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        expected.push(TOKENIZER_FILE.to_owned());
        expected.sort();
        assert_eq!(names(dir.path()), expected, "no temporary files are left");
        assert_eq!(hf_tokenizer_kind(dir.path()), kind);
        assert_eq!(Tokenizer::load_dir(dir.path()).unwrap(), tokenizer);
        // Without lushan's file, the Hugging Face files alone give the same tokenizer.
        fs::remove_file(&path).unwrap();
        assert_eq!(Tokenizer::load_dir(dir.path()).unwrap(), tokenizer);
    }
}

#[test]
fn saving_the_same_tokenizer_again_leaves_the_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = char_tokenizer();
    tokenizer.save_dir(dir.path()).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    fs::write(&config, "marker").unwrap();
    tokenizer.save_dir(dir.path()).unwrap();
    assert_eq!(fs::read_to_string(&config).unwrap(), "marker", "an unchanged tokenizer is not rewritten");
    // A missing Hugging Face file makes the next save write them all again.
    fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    tokenizer.save_dir(dir.path()).unwrap();
    assert!(fs::read_to_string(&config).unwrap().contains("PreTrainedTokenizerFast"));
    assert_eq!(hf_tokenizer_kind(dir.path()), "WordLevel");
}

#[test]
fn saving_another_tokenizer_rewrites_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let (chars, gpt2) = (char_tokenizer(), Tokenizer::gpt2().unwrap());
    for (tokenizer, kind) in [(&chars, "WordLevel"), (&gpt2, "BPE"), (&chars, "WordLevel")] {
        tokenizer.save_dir(dir.path()).unwrap();
        assert_eq!(&Tokenizer::load_dir(dir.path()).unwrap(), tokenizer);
        assert_eq!(hf_tokenizer_kind(dir.path()), kind);
        let config = fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
        assert_eq!(config.contains("GPT2Tokenizer"), kind == "BPE", "{config}");
    }
}

#[test]
fn hugging_face_export_leaves_no_temporary_files_behind_a_stale_one() {
    // A temp file of a killed export (a dead pid) is in the one naming scheme the cleanup knows.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".tokenizer.json.tmp-4294967-0");
    fs::write(&stale, "half").unwrap();
    char_tokenizer().write_hf_files(dir.path()).unwrap();
    assert_eq!(lushan_fs::remove_stale_temp_files(dir.path()).unwrap(), 1);
    assert_eq!(names(dir.path()), vec!["tokenizer.json", "tokenizer_config.json"]);
}

#[test]
fn unreadable_directories_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TOKENIZER_FILE);
    let message = Tokenizer::load_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()) && message.contains("re-run `lushan prepare`"), "{message}");
    fs::write(&path, r#"{"type":"char","vocab":["a","ab"]}"#).unwrap();
    let message = Tokenizer::load_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()) && message.contains("entry 1 is \"ab\""), "{message}");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let message = Tokenizer::load_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()) && message.contains("is a directory"), "{message}");
}

#[cfg(unix)]
#[test]
fn a_fifo_tokenizer_file_is_refused_instead_of_blocking() {
    for name in [TOKENIZER_FILE, "tokenizer.json", "vocab.json"] {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(name);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let message = Tokenizer::load_dir(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&fifo.display().to_string()) && message.contains("named pipe"), "{name}: {message}");
        let message = Tokenizer::load(&dir.path().to_string_lossy()).unwrap_err().to_string();
        assert!(message.contains("named pipe"), "{name}: {message}");
    }
}
