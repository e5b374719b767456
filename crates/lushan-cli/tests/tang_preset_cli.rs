//! The `tang-poems` preset: a character-level model of a Chinese corpus the user names with `--data`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{fails, ok, s};

/// Two poems (traditional characters, as in the 全唐诗 file), repeated so that the validation tenth holds
/// more than one context of 64 characters.
fn poems(dir: &std::path::Path) -> std::path::PathBuf {
    let poem = "登鸛雀樓\n王之渙\n白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。\n\n\
                靜夜思\n李白\n牀前看月光，疑是地上霜。\n舉頭望山月，低頭思故鄉。\n\n";
    let path = dir.join("poems.txt");
    std::fs::write(&path, poem.repeat(20)).unwrap();
    path
}

#[test]
fn without_data_the_preset_asks_for_the_corpus_path() {
    let out = fails(&["train", "--preset", "tang-poems"], &["--data", "tang-poems", "quantangshi.txt"]);
    assert!(!out.stdout.contains("resolved training configuration"), "nothing printed before the error: {out:?}");
}

#[test]
fn the_preset_trains_on_the_given_file_and_the_model_writes_chinese() {
    let dir = tempfile::tempdir().unwrap();
    let data = poems(dir.path());
    let model = dir.path().join("tang");
    let trained = ok(&[
        "train",
        "--preset",
        "tang-poems",
        "--data",
        s(&data),
        "--out-dir",
        s(&model),
        "--max-iters",
        "2",
        "--eval-interval",
        "1",
        "--eval-iters",
        "1",
        "--sample-tokens",
        "0",
    ]);
    for setting in ["n_layer = 4", "n_head = 4", "n_embd = 128", "block_size = 64", "batch_size = 16"] {
        assert!(trained.stdout.contains(setting), "the preset sets {setting}: {trained:?}");
    }
    let generated = ok(&["generate", "--model", s(&model), "--prompt", "白日", "--max-new-tokens", "8", "--seed", "1"]);
    assert!(generated.stdout.starts_with("白日"), "{generated:?}");
    let new_text = generated.stdout.trim_start_matches("白日");
    assert!(new_text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c) || "，。\n".contains(c)), "{generated:?}");
}
