#![allow(clippy::unwrap_used)] // tests may unwrap
//! Hugging Face files for every kind of tokenizer: `Tokenizer::write_hf_files` writes the files
//! `transformers` loads, with the structure it expects, and lushan's own loader reads them back (with no
//! `lushan-tokenizer.json` beside them) to a tokenizer that encodes identically.

use std::path::{Path, PathBuf};

use lushan_tokenizer::hf_export::{CHAR_SPLIT_REGEX, CHAR_TOKENIZER_CLASS, CHAR_UNK_TOKEN};
use lushan_tokenizer::{Bpe, BpeTrainer, CharTokenizer, TOKENIZER_FILE, Tokenizer, TrainOptions};
use serde_json::{Value, json};

fn sample() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unicode_sample.txt");
    // CRLF, a tab, a BOM, a zero-width joiner and a lone combining mark on top of the fixture's scripts.
    std::fs::read_to_string(path).unwrap() + "CRLF\r\n\ttab\u{feff}\u{200d}\u{301}\n"
}

fn shakespeare() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt");
    let text = std::fs::read(path).unwrap();
    String::from_utf8(text[..20_000].to_vec()).unwrap()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

fn load(path: &Path) -> Tokenizer {
    Tokenizer::load(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_same_encodes(a: &Tokenizer, b: &Tokenizer, texts: &[&str]) {
    assert_eq!(a, b);
    assert_eq!(a.describe(), b.describe());
    for text in texts {
        let ids = a.encode(text).unwrap();
        assert_eq!(b.encode(text).unwrap(), ids);
        assert_eq!(b.encode_with_special(text).unwrap(), a.encode_with_special(text).unwrap());
        assert_eq!(b.decode_bytes(&ids).unwrap(), text.as_bytes());
    }
}

#[test]
fn char_tokenizer_writes_a_wordlevel_tokenizer_json_that_loads_back() {
    let text = shakespeare() + &sample();
    let tok = Tokenizer::Char(CharTokenizer::from_text(&text).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let written = tok.write_hf_files(dir.path()).unwrap();
    assert_eq!(names(&written), ["tokenizer.json", "tokenizer_config.json"]);

    let json = read_json(&dir.path().join("tokenizer.json"));
    let Tokenizer::Char(chars) = &tok else { unreachable!() };
    let vocab = json["model"]["vocab"].as_object().unwrap();
    assert_eq!(json["model"]["type"], "WordLevel");
    assert_eq!(vocab.len(), chars.vocab_size());
    for (id, ch) in chars.vocab().iter().enumerate() {
        assert_eq!(vocab[&ch.to_string()], json!(id), "{ch:?}");
    }
    assert_eq!(json["model"]["unk_token"], CHAR_UNK_TOKEN);
    assert!(!vocab.contains_key(CHAR_UNK_TOKEN));
    assert_eq!(
        json["pre_tokenizer"],
        json!({"type": "Split", "pattern": {"Regex": CHAR_SPLIT_REGEX}, "behavior": "Isolated", "invert": false})
    );
    assert_eq!(json["decoder"], json!({"type": "Fuse"}));
    assert_eq!(json["normalizer"], Value::Null);
    assert_eq!(json["post_processor"], Value::Null);
    assert_eq!(json["added_tokens"], json!([]));
    let config = read_json(&dir.path().join("tokenizer_config.json"));
    assert_eq!(config["tokenizer_class"], CHAR_TOKENIZER_CLASS);
    assert_eq!(config["clean_up_tokenization_spaces"], false);

    // No lushan-tokenizer.json: the directory and the file itself load as the same char tokenizer.
    assert!(!dir.path().join(TOKENIZER_FILE).exists());
    let texts = [text.as_str(), "\n", "a\r\nb"];
    assert_same_encodes(&load(dir.path()), &tok, &texts);
    assert_same_encodes(&load(&dir.path().join("tokenizer.json")), &tok, &texts);
    assert_eq!(load(dir.path()).describe(), format!("char:{}", chars.vocab_size()));
}

#[test]
fn bpe_tokenizers_write_the_four_files_and_load_back_from_each_form() {
    let mut trainer = BpeTrainer::new();
    trainer.add_text(&(shakespeare() + &sample()));
    let (trained, _) = trainer.train(&TrainOptions::new(600)).unwrap();
    let text = shakespeare() + &sample();
    let texts = [text.as_str(), "<|endoftext|> hello <|endoftext|>", " 你好 ROMEO"];
    for tok in [Tokenizer::gpt2().unwrap(), Tokenizer::Bpe(trained)] {
        let dir = tempfile::tempdir().unwrap();
        let written = tok.write_hf_files(dir.path()).unwrap();
        assert_eq!(names(&written), ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]);

        let vocab = read_json(&dir.path().join("vocab.json"));
        assert_eq!(vocab.as_object().unwrap().len(), tok.vocab_size(), "{}", tok.describe());
        assert_eq!(vocab["<|endoftext|>"], json!(tok.end_of_text().unwrap()));
        let json = read_json(&dir.path().join("tokenizer.json"));
        assert_eq!(json["model"]["type"], "BPE");
        assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
        assert_eq!(json["decoder"]["type"], "ByteLevel");
        assert_eq!(json["added_tokens"][0]["content"], "<|endoftext|>");
        let Tokenizer::Bpe(bpe) = &tok else { unreachable!() };
        assert_eq!(json["model"]["merges"].as_array().unwrap().len(), bpe.merges().len());
        let merges = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
        assert!(merges.starts_with("#version: 0.2\n"));
        assert_eq!(merges.lines().count(), bpe.merges().len() + 1);
        let config = read_json(&dir.path().join("tokenizer_config.json"));
        assert_eq!(config["tokenizer_class"], "GPT2Tokenizer");
        assert_eq!(config["eos_token"], "<|endoftext|>");

        // tokenizer.json (preferred), then vocab.json + merges.txt alone.
        assert_same_encodes(&load(dir.path()), &tok, &texts);
        assert_same_encodes(&load(&dir.path().join("tokenizer.json")), &tok, &texts);
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        assert_same_encodes(&load(dir.path()), &tok, &texts);
    }
}

#[test]
fn lushan_tokenizer_json_wins_over_hugging_face_files() {
    // A directory whose HF files are GPT-2's but whose lushan-tokenizer.json is a char tokenizer (and the
    // reverse): lushan's own file decides.
    let chars = Tokenizer::Char(CharTokenizer::from_text("abc\n").unwrap());
    let gpt2 = Tokenizer::gpt2().unwrap();
    for (own, hf) in [(&chars, &gpt2), (&gpt2, &chars)] {
        let dir = tempfile::tempdir().unwrap();
        hf.write_hf_files(dir.path()).unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), own.to_json()).unwrap();
        assert_eq!(&load(dir.path()), own);
        std::fs::remove_file(dir.path().join(TOKENIZER_FILE)).unwrap();
        assert_eq!(&load(dir.path()), hf);
    }
}

#[test]
fn other_tokenizer_json_shapes_are_refused_with_the_field_named() {
    let tok = CharTokenizer::from_text("abc").unwrap();
    let good: Value = serde_json::from_str(&tok.hf_tokenizer_json()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let cases: [(&str, Value, &str); 3] = [
        // Not lushan's split: then it is not a char tokenizer, and the BPE reader names model.type.
        ("/pre_tokenizer/pattern/Regex", json!("."), "model.type"),
        // A vocabulary entry of two characters.
        ("/model/vocab", json!({"ab": 0, "c": 1}), "\"ab\""),
        // Ids with a gap.
        ("/model/vocab", json!({"a": 0, "b": 5}), "id 5 is out of range"),
    ];
    for (pointer, replacement, expected) in cases {
        let mut value = good.clone();
        *value.pointer_mut(pointer).unwrap() = replacement;
        std::fs::write(&path, value.to_string()).unwrap();
        for spec in [dir.path(), path.as_path()] {
            let message = Tokenizer::load(spec.to_str().unwrap()).unwrap_err().to_string();
            assert!(message.contains(expected), "{pointer}: {message}");
        }
    }
    std::fs::write(&path, "{not json").unwrap();
    let message = Tokenizer::load(dir.path().to_str().unwrap()).unwrap_err().to_string();
    assert!(message.contains("tokenizer.json") && message.contains("not valid JSON"), "{message}");
}

#[test]
fn bpe_files_from_gpt2_match_the_bundled_vocabulary() {
    // The files written for GPT-2 read back with the same fingerprint (what shard headers record).
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = Bpe::gpt2().unwrap();
    Tokenizer::Bpe(gpt2.clone()).write_hf_files(dir.path()).unwrap();
    let Tokenizer::Bpe(back) = load(dir.path()) else { panic!("not BPE") };
    assert_eq!(back.fingerprint(), gpt2.fingerprint());
    assert_eq!(Tokenizer::Bpe(back).describe(), "gpt2-bpe:50257");
}
