#![allow(clippy::unwrap_used)] // tests may unwrap
//! The inference commands' flags as users of llama.cpp type them: `-m`/`-p`/`-n`, `--max-tokens`, a
//! positional prompt, `--prompt-file`; `generate`'s timing line; `tokenizer encode --show-tokens`;
//! `explain --alternatives`; what `serve` says at start, and a taken port said once.

mod common;

use common::{BIN, corpus, fails, lushan, ok, s, train_args};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A tiny character-level model trained for two steps, once per test run.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inference-flags-cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = corpus(&dir);
        let out = dir.join("model");
        // The shared tiny run, with a longer context and only two steps.
        let flags = ["--block-size", "32", "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1"];
        let schedule = ["--warmup-iters", "1", "--lr-decay-iters", "2"];
        ok(&train_args(&data, &out, &[&flags[..], &schedule[..]].concat()));
        out
    })
}

/// The generated text of `lushan generate ARGS` (greedy, so that spellings of the same request agree).
fn greedy(args: &[&str]) -> String {
    let mut all = vec!["generate", "--temperature", "0"];
    all.extend_from_slice(args);
    ok(&all).stdout
}

#[test]
fn generate_takes_llama_cli_spellings() {
    let m = s(model());
    let long = greedy(&["--model", m, "--prompt", "ROMEO:", "--max-new-tokens", "7"]);
    assert!(long.starts_with("ROMEO:"), "{long:?}");
    assert_eq!(greedy(&["-m", m, "-p", "ROMEO:", "-n", "7"]), long);
    assert_eq!(greedy(&["--model", m, "--prompt", "ROMEO:", "--max-tokens", "7"]), long);
    assert_eq!(greedy(&["-m", m, "-n", "7", "ROMEO:"]), long, "a positional prompt");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, "ROMEO:").unwrap();
    assert_eq!(greedy(&["-m", m, "-n", "7", "--prompt-file", s(&file)]), long);
}

#[test]
fn generate_prompt_sources_are_checked() {
    let m = s(model());
    fails(&["generate", "-m", m, "-p", "a", "b"], &["cannot be used with"]);
    fails(&["generate", "-m", m, "-p", "a", "--prompt-file", "x.txt"], &["--prompt-file"]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    fails(&["generate", "-m", m, "--prompt-file", s(&missing)], &["--prompt-file", "missing.txt"]);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails(&["generate", "-m", m, "--prompt-file", s(&empty)], &["empty.txt", "empty"]);
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [b'a', 0xff]).unwrap();
    fails(&["generate", "-m", m, "--prompt-file", s(&binary)], &["binary.txt", "UTF-8", "offset 1"]);
}

#[test]
fn a_mistyped_flag_gets_a_suggestion_that_fits() {
    let out = fails(&["generate", "--max-token", "5"], &["--max-token"]);
    assert!(out.stderr.contains("--max-tokens") || out.stderr.contains("--max-new-tokens"), "{out:?}");
    fails(&["generate", "--promt", "x"], &["--prompt"]);
}

#[test]
fn generate_ends_with_a_timing_line_on_stderr() {
    let out = ok(&["generate", "-m", s(model()), "-p", "ROMEO:", "-n", "5"]);
    let timing = out.stderr.lines().last().unwrap_or_default();
    assert!(timing.starts_with("timing: prompt 6 tokens; prefill 6 tokens in "), "{out:?}");
    assert!(timing.contains("; decode 5 tokens in ") && timing.matches("tokens/s").count() == 2, "{out:?}");
    assert!(!out.stdout.contains("timing"), "the timing line belongs on stderr: {out:?}");
}

#[test]
fn chat_and_eval_take_the_same_short_flags() {
    for command in ["chat", "eval"] {
        let out = lushan(&[command, "--help"]);
        assert_eq!(out.code, 0, "{out:?}");
        for flag in ["-m, --model", "-n, --max-new-tokens", "--max-tokens"] {
            assert!(out.stdout.contains(flag), "`{command} --help` lacks {flag}: {out:?}");
        }
    }
}

#[test]
fn sampling_help_states_the_one_top_k_default() {
    for command in ["generate", "chat", "explain"] {
        let out = lushan(&[command, "--help"]);
        assert_eq!(out.code, 0, "{out:?}");
        let help = out.stdout.split("--top-k <K>").nth(1).and_then(|rest| rest.split("--top-p").next());
        let help = help.unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("[default: off"), "`{command} --help`: --top-k should state its default: {out:?}");
    }
}

#[test]
fn explain_lists_alternatives_with_their_own_flag() {
    let m = s(model());
    let out = ok(&["explain", "-m", m, "--format", "json", "--alternatives", "2", "ROMEO"]);
    let explanation: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(explanation["next_token"][0]["top"].as_array().unwrap().len(), 2, "{out:?}");
    // --top-k samples, as in `generate`; alone it says where the alternatives went.
    let out = ok(&["explain", "-m", m, "-p", "ROMEO", "--format", "json", "--top-k", "3"]);
    assert!(out.stderr.contains("--alternatives"), "{out:?}");
    let help = lushan(&["explain", "--help"]).stdout;
    assert!(help.contains("--alternatives <N>") && !help.contains("--sample-top-k"), "{help}");
}

#[test]
fn tokenizer_show_tokens_prints_each_text_beside_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, "Hello world\n").unwrap();
    let out = ok(&["tokenizer", "encode", "--tokenizer", "gpt2", "--show-tokens", s(&file)]);
    assert_eq!(out.stdout, "15496\t\"Hello\"\n995\t\" world\"\n198\t\"\\n\"\n", "{out:?}");
}

/// Starts `lushan serve ARGS` and returns it with the stderr lines up to the one saying where it serves.
fn start_serving(args: &[&str]) -> (std::process::Child, String) {
    let mut child =
        Command::new(BIN).arg("serve").args(args).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    while let Some(Ok(line)) = lines.next() {
        stderr.push_str(&line);
        stderr.push('\n');
        if line.starts_with("serving ") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, stderr)
}

#[test]
fn serve_says_where_the_playground_and_the_api_are() {
    let (mut child, stderr) = start_serving(&["-m", s(model()), "--port", "0"]);
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    let _ = child.kill();
    let _ = child.wait();
    let playground = line.split("playground http://").nth(1).and_then(|rest| rest.split_whitespace().next());
    let api = line.split("API base URL http://").nth(1).and_then(|rest| rest.split_whitespace().next());
    let (Some(playground), Some(api)) = (playground, api) else { panic!("no URLs in {stderr:?}") };
    assert!(playground.starts_with("127.0.0.1:") && playground.ends_with('/'), "{line}");
    assert_eq!(api, format!("{}v1", playground), "{line}");
}

#[test]
fn the_playground_url_serves_the_page() {
    let (mut child, stderr) = start_serving(&["-m", s(model()), "--port", "0"]);
    let address = stderr.split("playground http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("lushan playground"), "{}", &page[..200]);
}

#[test]
fn a_taken_port_is_said_once_with_the_next_step() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = fails(&["serve", "-m", s(model()), "--port", &port], &["--port", &port]);
    assert_eq!(out.stderr.matches("already in use").count(), 1, "the OS's reason once: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}
