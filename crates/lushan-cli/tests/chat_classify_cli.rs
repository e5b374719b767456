#![allow(clippy::unwrap_used)] // tests may unwrap
//! `lushan chat` and `lushan classify` end to end, on tiny random checkpoints written the way training
//! writes them (config.json + model.safetensors + tokenizer files).

mod common;

use common::{BIN, Output, fails, ok, s};
use lushan_model::checkpoint::save_model_dir;
use lushan_model::{Gpt, Head, ModelConfig, classify_batch};
use lushan_tokenizer::chat::{Message, render_chat};
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\n";

fn tokenizer() -> Tokenizer {
    Tokenizer::from(CharTokenizer::from_text(ALPHABET).unwrap())
}

/// A random two-layer model (with `head`) and the character tokenizer, saved in `dir/name`.
fn checkpoint(dir: &Path, name: &str, block_size: usize, head: Head) -> PathBuf {
    let tok = tokenizer();
    let mut cfg = ModelConfig::new(tok.vocab_size(), block_size, 2, 2, 32);
    cfg.head = head;
    let model = Gpt::new(cfg, 11).unwrap();
    let out = dir.join(name);
    save_model_dir(&out, &model.config, &model.params).unwrap();
    lushan_train::data::save_tokenizer(&out, &tok).unwrap();
    out
}

fn classifier(dir: &Path, block_size: usize) -> PathBuf {
    let pad = tokenizer().encode("?").unwrap()[0];
    checkpoint(
        dir,
        "spam",
        block_size,
        Head::Classifier { labels: vec!["ham".into(), "spam".into()], pad_token_id: pad },
    )
}

/// Runs `lushan ARGS` with `input` on stdin (a pipe, so not a terminal).
fn with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "`lushan {}` panicked: {out:?}", args.join(" "));
    out
}

/// What greedy `lushan generate` writes after `prompt`, as a chat reply: up to the end of turn (the
/// character tokenizer's is the newline), without the template's leading space.
fn greedy_reply(model: &Path, prompt: &str, max_new_tokens: usize) -> String {
    let n = max_new_tokens.to_string();
    let o = ok(&["generate", "--model", s(model), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", &n]);
    let continuation = o.stdout.strip_prefix(prompt).unwrap().strip_suffix('\n').unwrap();
    let turn = continuation.split('\n').next().unwrap();
    turn.strip_prefix(' ').unwrap_or(turn).to_string()
}

#[test]
fn piped_chat_replies_once_per_line_with_the_template_serve_uses() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path(), "lm", 128, Head::LanguageModel);
    let args = ["chat", "--model", s(&model), "--system", "Be brief.", "--temperature", "0", "--max-new-tokens", "20"];
    let o = with_stdin(&args, "hi there\n\nhow are you?\n");
    assert_eq!(o.code, 0, "{o:?}");
    let replies: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(replies.len(), 2, "one reply per non-empty line: {o:?}");

    // Each reply is what the model writes after the template's text for the history so far: the prompt
    // `lushan chat` builds is the text `render_chat` shows, token for token (one token per character here).
    let mut history = vec![Message::system("Be brief."), Message::user("hi there")];
    let first = greedy_reply(&model, &render_chat(&history, true, "\n"), 20);
    assert_eq!(replies[0], first);
    history.extend([Message::assistant(first), Message::user("how are you?")]);
    assert_eq!(replies[1], greedy_reply(&model, &render_chat(&history, true, "\n"), 20));

    // A reply ends at the end of turn (here the newline) without writing it: sampled replies that end
    // their turn early still come one per line.
    let hot = ["chat", "--model", s(&model), "--temperature", "1", "--seed", "3", "--max-new-tokens", "60"];
    let o = with_stdin(&hot, "a\nb\nc\nd\ne\nf\n");
    assert_eq!((o.code, o.stdout.lines().count()), (0, 6), "{o:?}");
    assert!(o.stderr.matches("was cut").count() < 6, "no reply ended its turn, the stop went untested: {o:?}");

    // Sampling is reproducible per seed, and /reset forgets the history.
    let sampled = ["chat", "--model", s(&model), "--seed", "5", "--max-new-tokens", "12"];
    let a = with_stdin(&sampled, "hi\nhi\n");
    let b = with_stdin(&sampled, "hi\nhi\n");
    assert_eq!((a.code, &a.stdout), (0, &b.stdout), "{a:?}");
    let reset = with_stdin(&["chat", "--model", s(&model), "--temperature", "0"], "hi\n/reset\nhi\n/exit\nignored\n");
    let lines: Vec<&str> = reset.stdout.lines().collect();
    assert_eq!((reset.code, lines.len()), (0, 2), "{reset:?}");
    assert_eq!(lines[0], lines[1], "after /reset the same question gets the same greedy answer");
}

#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path(), "lm", 64, Head::LanguageModel);
    let args = ["chat", "--model", s(&model), "--temperature", "0", "--max-new-tokens", "16"];
    let o = with_stdin(&args, "hello there\nand again\nonce more\n");
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.lines().count(), 3, "{o:?}");
    assert!(o.stderr.contains("dropped the oldest"), "{o:?}");
    // A message longer than the whole context is an error naming its line.
    let long = format!("{}\n", "a".repeat(80));
    let e = with_stdin(&args, &long);
    assert!(e.code != 0 && e.stderr.contains("stdin line 1") && e.stderr.contains("too long"), "{e:?}");
}

#[test]
fn chat_refuses_a_classifier_and_classify_refuses_a_language_model() {
    let dir = tempfile::tempdir().unwrap();
    let cls = classifier(dir.path(), 32);
    let lm = checkpoint(dir.path(), "lm", 32, Head::LanguageModel);
    fails(&["chat", "--model", s(&cls)], &["classifier checkpoint", "ham, spam", "lushan classify"]);
    fails(&["classify", "--model", s(&lm), "hello"], &["language model", "lushan train --task classify"]);
    fails(&["chat", "--model", s(&lm), "--top-p", "2"], &["--top-p"]);
}

#[test]
fn help_names_the_flags() {
    let chat = ok(&["chat", "--help"]).stdout;
    for flag in ["--model", "--system", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"] {
        assert!(chat.contains(flag), "chat --help should name {flag}: {chat}");
    }
    let classify = ok(&["classify", "--help"]).stdout;
    for flag in ["--model", "--file", "--top", "[TEXTS]"] {
        assert!(classify.contains(flag), "classify --help should name {flag}: {classify}");
    }
    let top = ok(&["--help"]).stdout;
    assert!(top.contains("chat") && top.contains("classify"), "{top}");
}

fn records(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

#[test]
fn classify_labels_arguments_files_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = classifier(dir.path(), 32);
    let texts = ["free money now", "see you at lunch", "ok"];
    let o = ok(&["classify", "--model", s(&model_dir), texts[0], texts[1], texts[2]]);
    let got = records(&o.stdout);
    assert_eq!(got.len(), 3, "{o:?}");

    // The probabilities are the model crate's, and the label is the most likely one.
    let tok = tokenizer();
    let (cfg, params) = lushan_model::checkpoint::load_model_dir(&model_dir).unwrap();
    let model = Gpt::from_params(cfg, params).unwrap();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let expected = classify_batch(&model, &ids).unwrap().probabilities;
    for ((record, text), probs) in got.iter().zip(texts).zip(&expected) {
        assert_eq!(record["text"], text);
        let p = [&record["probabilities"]["ham"], &record["probabilities"]["spam"]].map(|v| v.as_f64().unwrap());
        assert!((p[0] - f64::from(probs[0])).abs() < 1e-6 && (p[1] - f64::from(probs[1])).abs() < 1e-6, "{record}");
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6);
        assert_eq!(record["label"], if p[1] > p[0] { "spam" } else { "ham" });
    }

    // JSONL records with `text` (other fields ignored), plain lines, stdin: the same answers.
    let jsonl = dir.path().join("texts.jsonl");
    let lines: Vec<String> = texts.iter().map(|t| serde_json::json!({"text": t, "label": "ham"}).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    assert_eq!(records(&ok(&["classify", "--model", s(&model_dir), "--file", s(&jsonl)]).stdout), got);
    let plain = dir.path().join("texts.txt");
    std::fs::write(&plain, format!("{}\n\n", texts.join("\n"))).unwrap();
    assert_eq!(records(&ok(&["classify", "--model", s(&model_dir), "--file", s(&plain)]).stdout), got);
    let piped = with_stdin(&["classify", "--model", s(&model_dir)], &texts.join("\n"));
    assert_eq!((piped.code, records(&piped.stdout)), (0, got.clone()), "{piped:?}");

    // --top 1: the label, its probability and the text, tab-separated.
    let top = ok(&["classify", "--model", s(&model_dir), "--top", "1", texts[0]]);
    let fields: Vec<&str> = top.stdout.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{top:?}");
    assert_eq!((fields[0], fields[2]), (got[0]["label"].as_str().unwrap(), texts[0]));

    // Longer than the context: classified by its start, with a note.
    let long = "a very long message that goes on and on past the context";
    let o = ok(&["classify", "--model", s(&model_dir), long]);
    assert!(o.stderr.contains("1 text was longer than the model's context of 32 tokens"), "{o:?}");
    let start = ok(&["classify", "--model", s(&model_dir), &long[..32]]);
    assert_eq!(records(&o.stdout)[0]["probabilities"], records(&start.stdout)[0]["probabilities"]);

    // Bad input names where it is.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n").unwrap();
    fails(&["classify", "--model", s(&model_dir), "--file", s(&bad)], &["line 2", "`text`"]);
    fails(&["classify", "--model", s(&model_dir), "caf€"], &["argument 1"]);
    let empty = with_stdin(&["classify", "--model", s(&model_dir)], "\n\n");
    assert!(empty.code != 0 && empty.stderr.contains("no texts"), "{empty:?}");
}
