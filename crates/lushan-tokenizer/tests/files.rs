#![allow(clippy::unwrap_used)] // tests may unwrap
//! Vocabulary files: every format loads to the same tokenizer, written files read back identically, and
//! broken files give errors naming the file, line and token.

use std::path::{Path, PathBuf};

use lushan_tokenizer::bpe::bytes::{GPT2_BYTE_ORDER, token_to_string};
use lushan_tokenizer::{Bpe, BpeTrainer, TOKENIZER_FILE, Tokenizer, TokenizerError, TrainOptions, VocabError};

fn gpt2_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2")
}

fn sample() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unicode_sample.txt");
    std::fs::read_to_string(path).unwrap()
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

fn assert_same_tokenizer(a: &Bpe, b: &Bpe) {
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    let text = sample();
    assert_eq!(a.encode_ordinary(&text), b.encode_ordinary(&text));
    assert_eq!(a.encode_with_special(&text), b.encode_with_special(&text));
}

#[test]
fn every_gpt2_format_loads_the_same_tokenizer() {
    let gpt2 = Bpe::gpt2().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // encoder.json + vocab.bpe, as OpenAI ships them.
    let original = dir.path().join("original");
    std::fs::create_dir(&original).unwrap();
    copy(&gpt2_dir().join("encoder.json"), &original.join("encoder.json"));
    copy(&gpt2_dir().join("vocab.bpe"), &original.join("vocab.bpe"));
    assert_same_tokenizer(&Bpe::from_dir(&original).unwrap(), &gpt2);

    // vocab.json + merges.txt (Hugging Face's names for the same formats).
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    copy(&gpt2_dir().join("encoder.json"), &hf.join("vocab.json"));
    copy(&gpt2_dir().join("vocab.bpe"), &hf.join("merges.txt"));
    assert_same_tokenizer(&Bpe::from_dir(&hf).unwrap(), &gpt2);
    let loaded = Tokenizer::load(hf.to_str().unwrap()).unwrap();
    assert_eq!(loaded.describe(), "gpt2-bpe:50257");

    // What we write: vocab.json + merges.txt + tokenizer.json (+ config); tokenizer.json is preferred.
    let written = dir.path().join("written");
    let files = gpt2.write_hf_files(&written).unwrap();
    assert_eq!(files.len(), 4);
    assert_same_tokenizer(&Bpe::from_dir(&written).unwrap(), &gpt2);
    assert_same_tokenizer(&Bpe::from_tokenizer_json_file(&written.join("tokenizer.json")).unwrap(), &gpt2);
    assert_same_tokenizer(
        &Bpe::from_vocab_and_merges(&written.join("vocab.json"), &written.join("merges.txt")).unwrap(),
        &gpt2,
    );
    // The written vocab.json and merges.txt are byte-identical to OpenAI's up to JSON spacing and order.
    let merges = std::fs::read_to_string(written.join("merges.txt")).unwrap();
    let original_merges = std::fs::read_to_string(gpt2_dir().join("vocab.bpe")).unwrap();
    assert_eq!(merges.lines().skip(1).collect::<Vec<_>>(), original_merges.lines().skip(1).collect::<Vec<_>>());

    // tokenizer.json with merges in the newer ["left", "right"] form.
    let json = std::fs::read_to_string(written.join("tokenizer.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pairs: Vec<serde_json::Value> = value["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let (l, r) = m.as_str().unwrap().split_once(' ').unwrap();
            serde_json::json!([l, r])
        })
        .collect();
    value["model"]["merges"] = serde_json::Value::Array(pairs);
    let pair_form = dir.path().join("pair-form.json");
    std::fs::write(&pair_form, value.to_string()).unwrap();
    assert_same_tokenizer(&Bpe::from_tokenizer_json_file(&pair_form).unwrap(), &gpt2);

    // lushan-tokenizer.json in a directory wins over the Hugging Face files beside it.
    std::fs::write(written.join(TOKENIZER_FILE), Tokenizer::Bpe(gpt2.clone()).to_json()).unwrap();
    assert_eq!(Tokenizer::load(written.to_str().unwrap()).unwrap(), Tokenizer::Bpe(gpt2));
}

#[test]
fn merges_file_without_version_header_loads() {
    let dir = tempfile::tempdir().unwrap();
    copy(&gpt2_dir().join("encoder.json"), &dir.path().join("vocab.json"));
    let merges = std::fs::read_to_string(gpt2_dir().join("vocab.bpe")).unwrap();
    assert!(merges.starts_with("#version"));
    let body: String = merges.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("merges.txt"), body).unwrap();
    assert_same_tokenizer(&Bpe::from_dir(dir.path()).unwrap(), &Bpe::gpt2().unwrap());
}

#[test]
fn trained_tokenizer_round_trips_through_every_format() {
    let mut trainer = BpeTrainer::new();
    trainer.add_text(&sample().repeat(3));
    let (bpe, _) = trainer.train(&TrainOptions::new(400)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    bpe.write_hf_files(dir.path()).unwrap();
    assert_same_tokenizer(&Bpe::from_dir(dir.path()).unwrap(), &bpe);
    assert_same_tokenizer(
        &Bpe::from_vocab_and_merges(&dir.path().join("vocab.json"), &dir.path().join("merges.txt")).unwrap(),
        &bpe,
    );
    let tok = Tokenizer::Bpe(bpe.clone());
    let back = Tokenizer::from_json(&tok.to_json()).unwrap();
    assert_eq!(back, tok);
    assert_eq!(back.describe(), tok.describe());
    assert!(tok.describe().starts_with("bpe:400:"), "{}", tok.describe());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["tokenizer_class"], "GPT2Tokenizer");
    assert_eq!(config["eos_token"], "<|endoftext|>");
}

/// A tiny valid vocabulary: the 256 bytes in GPT-2's order, then `extra` tokens, and merges.
fn tiny_vocab(extra: &[&str]) -> String {
    let mut entries: Vec<String> = GPT2_BYTE_ORDER.iter().map(|&b| token_to_string(&[b])).collect();
    entries.extend(extra.iter().map(|s| s.to_string()));
    let body: Vec<String> =
        entries.iter().enumerate().map(|(id, t)| format!("{}:{id}", serde_json::Value::String(t.clone()))).collect();
    format!("{{{}}}", body.join(","))
}

/// `vocab` (a JSON object) with one more `"token":id` entry.
fn with_entry(vocab: &str, entry: &str) -> String {
    format!("{},{entry}}}", &vocab[..vocab.len() - 1])
}

/// Loads vocab.json + merges.txt text from a temporary directory; returns the error message.
fn load_error(vocab: &str, merges: &str) -> (TokenizerError, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.json"), vocab).unwrap();
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    let err = Bpe::from_dir(dir.path()).unwrap_err();
    let message = err.to_string();
    (err, message)
}

#[test]
fn tiny_vocabulary_loads_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.json"), tiny_vocab(&["ab", "abc", "<|endoftext|>"])).unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b\nab c\n\n").unwrap();
    let bpe = Bpe::from_dir(dir.path()).unwrap();
    assert_eq!(bpe.vocab_size(), 259);
    assert_eq!(bpe.encode_ordinary("abc ab"), [257, 220, 256]); // 220: the space byte, as in GPT-2
    assert_eq!(bpe.special_id("<|endoftext|>"), Some(258));
    assert_eq!(bpe.encode_with_special("<|endoftext|>abc"), [258, 257]);
}

#[test]
fn broken_files_give_named_errors() {
    let good_vocab = tiny_vocab(&["ab", "abc"]);
    let cases: Vec<(String, &str, &[&str])> = vec![
        // corrupt JSON
        (good_vocab[..good_vocab.len() - 10].to_owned(), "a b\n", &["vocab.json is not valid JSON"]),
        ("".to_owned(), "", &["vocab.json is not valid JSON"]),
        ("[1, 2]".to_owned(), "", &["vocab.json is not valid JSON", "an object mapping tokens to ids"]),
        // empty vocabulary
        ("{}".to_owned(), "", &["vocab.json", "has 0"]),
        // a token twice (JSON objects with repeated keys are otherwise silently collapsed)
        (with_entry(&good_vocab, "\"ab\":258"), "a b\n", &["token \"ab\" appears twice", "256 and 258"]),
        // an id twice, an id gap, a bad id
        (good_vocab.replacen("\"abc\":257", "\"abc\":256", 1), "", &["id 256 is given to both \"ab\" and \"abc\""]),
        (good_vocab.replacen("\"abc\":257", "\"abc\":300", 1), "", &["id 300 is out of range", "0..258"]),
        (good_vocab.replacen("\"abc\":257", "\"abc\":-1", 1), "", &["token \"abc\" has id -1"]),
        // a merge naming an unknown token, making a missing token, malformed, repeated
        (good_vocab.clone(), "#version: 0.2\na b\nab zzz\n", &["merges.txt line 3", "names \"zzz\""][..]),
        (good_vocab.clone(), "a b\nab c\nb c\n", &["merges.txt line 3", "makes \"bc\"", "not in the vocabulary"]),
        (good_vocab.clone(), "a b\nabc\n", &["merges.txt line 2", "two tokens separated by one space", "\"abc\""]),
        (good_vocab.clone(), "a b\na b c\n", &["merges.txt line 2", "\"a b c\""]),
        (
            tiny_vocab(&["ab", "abc", "ba"]),
            "a b\nab c\nb a\na b\n",
            &["merges.txt line 4", "listed a second time", "first at", "line 1"],
        ),
        // an ordinary-looking token no merge makes: a truncated merges file
        (
            good_vocab.clone(),
            "a b\n",
            &["\"abc\" (id 257)", "neither a single byte nor made by any merge", "truncated"],
        ),
        (good_vocab.clone(), "", &["\"ab\" (id 256)", "truncated"]),
        // a byte missing from the vocabulary
        (
            good_vocab.replacen("\"!\":0,", "", 1).replacen("\"abc\":257", "\"abc\":0", 1),
            "a b\nab c\n",
            &["no token for the byte 0x21"],
        ),
    ];
    for (vocab, merges, needles) in &cases {
        let (_, message) = load_error(vocab, merges);
        for needle in *needles {
            assert!(message.contains(needle), "merges {merges:?}: {message:?} should contain {needle:?}");
        }
    }
    // Missing files and directories name what was looked for.
    let dir = tempfile::tempdir().unwrap();
    let message = Bpe::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("no tokenizer files in") && message.contains("vocab.json + merges.txt"), "{message}");
    std::fs::write(dir.path().join("vocab.json"), &good_vocab).unwrap();
    let message = Bpe::from_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("cannot read") && message.contains("merges.txt"), "{message}");
    let message = Tokenizer::load("/no/such/tokenizer").unwrap_err().to_string();
    assert!(message.contains("/no/such/tokenizer"), "{message}");
    let err = load_error("{\"a\":0}", "").0;
    assert!(
        matches!(&err, TokenizerError::Vocab(e) if matches!(**e, VocabError::MissingByte { byte: 0, .. })),
        "{err}"
    );
}

/// A change to a parsed `tokenizer.json`.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn unsupported_tokenizer_json_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = Bpe::gpt2().unwrap();
    gpt2.write_hf_files(dir.path()).unwrap();
    let json = std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&json).unwrap();
    let edits: Vec<(&str, Edit, &[&str])> = vec![
        ("wordpiece", Box::new(|v| v["model"]["type"] = "WordPiece".into()), &["model.type", "\"BPE\"", "WordPiece"]),
        ("prefix", Box::new(|v| v["pre_tokenizer"]["add_prefix_space"] = true.into()), &["pre_tokenizer"]),
        ("normalizer", Box::new(|v| v["normalizer"] = serde_json::json!({"type": "NFC"})), &["normalizer", "NFC"]),
        ("no model", Box::new(|v| drop(v.as_object_mut().unwrap().remove("model"))), &["no field \"model\""]),
        (
            "conflict",
            Box::new(|v| v["added_tokens"][0]["content"] = "<|im_end|>".into()),
            &["added token 50256 is \"<|im_end|>\"", "\"<|endoftext|>\""],
        ),
        (
            "bad merge",
            Box::new(|v| v["model"]["merges"][5] = serde_json::json!(["Ġ", "nonexistent"])),
            &["tokenizer.json merge 5", "\"nonexistent\""],
        ),
        ("merge type", Box::new(|v| v["model"]["merges"][0] = 7.into()), &["merge 0", "a number"]),
    ];
    for (name, edit, needles) in edits {
        let mut value = base.clone();
        edit(&mut value);
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, value.to_string()).unwrap();
        let message = Bpe::from_tokenizer_json_file(&path).unwrap_err().to_string();
        assert!(message.contains("tokenizer.json"), "{name}: {message}");
        for needle in needles {
            assert!(message.contains(needle), "{name}: {message:?} should contain {needle:?}");
        }
    }
    // Added tokens beyond the model vocabulary extend it.
    let mut value = base.clone();
    value["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({"id": 50257, "content": "<|pad|>"}));
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, value.to_string()).unwrap();
    let bpe = Bpe::from_tokenizer_json_file(&path).unwrap();
    assert_eq!(bpe.vocab_size(), 50258);
    assert_eq!(bpe.encode_with_special("<|pad|><|endoftext|>"), [50257, 50256]);
}

#[test]
fn lushan_json_errors_name_the_field() {
    let cases = [
        (r#"{"type":"bpe","name":"gpt3"}"#, "\"gpt3\""),
        (r#"{"type":"bpe","name":"gpt2","vocab":[]}"#, "both \"name\" and \"vocab\""),
        (r#"{"type":"bpe"}"#, "no field \"vocab\""),
        (r#"{"type":"bpe","vocab":{},"merges":[]}"#, "field \"vocab\" must be an array"),
        (r#"{"type":"bpe","vocab":["a"],"merges":[],"extra":1}"#, "unknown field \"extra\""),
        (r#"{"type":"bpe","vocab":["a",1],"merges":[]}"#, "found a number"),
        (r#"{"type":"bpe","vocab":["a"],"merges":[]}"#, "no token for the byte"),
    ];
    for (json, needle) in cases {
        let message = Tokenizer::from_json(json).unwrap_err().to_string();
        assert!(message.contains(needle), "{json}: {message:?} should contain {needle:?}");
    }
}
