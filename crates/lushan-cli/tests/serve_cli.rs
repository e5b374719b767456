#![allow(clippy::unwrap_used)] // tests may unwrap
//! `lushan serve` end to end: the built binary on a tiny random checkpoint, spoken to over HTTP.

mod common;

use common::{BIN, ok, s};
use lushan_model::checkpoint::save_model_dir;
use lushan_model::{Gpt, ModelConfig};
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\n";

/// A random two-layer model and the character tokenizer, saved in `dir/tiny`.
fn checkpoint(dir: &Path) -> PathBuf {
    let tok = Tokenizer::from(CharTokenizer::from_text(ALPHABET).unwrap());
    let model = Gpt::new(ModelConfig::new(tok.vocab_size(), 64, 2, 2, 32), 5).unwrap();
    let out = dir.join("tiny");
    save_model_dir(&out, &model.config, &model.params).unwrap();
    lushan_train::data::save_tokenizer(&out, &tok).unwrap();
    out
}

/// A running `lushan serve`, killed when dropped.
struct Served {
    child: Child,
    port: u16,
    /// What it wrote on stderr up to the line saying where it serves.
    stderr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `lushan serve --port 0 ARGS` and waits for the line naming its address.
fn serve(model: &Path, args: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--model", s(model), "--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    let port = loop {
        let Some(Ok(line)) = lines.next() else { panic!("`lushan serve` ended before serving: {stderr}") };
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(at) = line.strip_prefix("serving ").and_then(|rest| rest.split("http://").nth(1)) {
            let address = at.split_whitespace().next().unwrap();
            break address.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr (the request log) so that the server never blocks writing it.
    std::thread::spawn(move || lines.for_each(drop));
    Served { child, port, stderr }
}

/// POSTs `body` as JSON to 127.0.0.1:`port`; the status and the JSON answer.
fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, answer) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(answer).unwrap())
}

#[test]
fn serving_beyond_loopback_without_an_api_key_warns() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let open = serve(&model, &["--host", "0.0.0.0"]);
    assert!(open.stderr.contains("warning") && open.stderr.contains("--api-key"), "{}", open.stderr);
    let keyed = serve(&model, &["--host", "0.0.0.0", "--api-key", "k"]);
    assert!(!keyed.stderr.contains("warning"), "{}", keyed.stderr);
    let local = serve(&model, &[]);
    assert!(!local.stderr.contains("warning"), "{}", local.stderr);
}

#[test]
fn a_served_completion_equals_lushan_generate_with_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let (prompt, seed, tokens) = ("The king", 7u64, 30usize);
    let generated = ok(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        prompt,
        "--temperature",
        "0.9",
        "--top-k",
        "12",
        "--top-p",
        "0.95",
        "--repetition-penalty",
        "1.2",
        "--seed",
        &seed.to_string(),
        "--max-new-tokens",
        &tokens.to_string(),
    ]);
    let expected = generated.stdout.strip_prefix(prompt).unwrap().strip_suffix('\n').unwrap();
    let served = serve(&model, &[]);
    let body = json!({"prompt": prompt, "max_tokens": tokens, "temperature": 0.9, "top_k": 12, "top_p": 0.95,
                      "repetition_penalty": 1.2, "seed": seed});
    let (status, answer) = post(served.port, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], tokens, "{answer}");
}

#[test]
fn every_weight_type_serves_what_generate_gives_with_that_type() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path());
    let (prompt, tokens) = ("The king", 20usize);
    for dtype in ["bf16", "q8_0", "q4_0"] {
        let generated = ok(&[
            "generate",
            "--model",
            s(&model),
            "--dtype",
            dtype,
            "--prompt",
            prompt,
            "--seed",
            "11",
            "--temperature",
            "0.9",
            "--max-new-tokens",
            &tokens.to_string(),
        ]);
        let expected = generated.stdout.strip_prefix(prompt).unwrap().strip_suffix('\n').unwrap();
        let served = serve(&model, &["--dtype", dtype]);
        // Two at once: continuous batching decodes them together, and each gets what it would alone.
        let body = json!({"prompt": prompt, "max_tokens": tokens, "seed": 11, "temperature": 0.9});
        let other = json!({"prompt": "A horse", "max_tokens": tokens, "seed": 12});
        let port = served.port;
        let background = std::thread::spawn(move || post(port, "/v1/completions", &other));
        let (status, answer) = post(served.port, "/v1/completions", &body);
        assert_eq!(status, 200, "{dtype}: {answer}");
        assert_eq!(answer["choices"][0]["text"], expected, "{dtype}: {answer}");
        assert_eq!(background.join().unwrap().0, 200);
    }
}
