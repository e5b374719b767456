#![allow(clippy::unwrap_used)] // tests may unwrap
//! What a client cannot make the server do: overflow a request number into a 500 (or fail the requests
//! decoded alongside), hold connections open by never finishing a request, or make `/v1/explain` answer
//! with an unbounded body.

mod common;

use common::{post, send, small, start};
use lushan_server::ServerOptions;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for anything these tests wait for never to be reached unless the server hangs.
const HANG: Duration = Duration::from_secs(120);

/// Reads until the server closes the connection; fails the test should it never close.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(HANG, stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_past_any_number_is_a_400_and_the_batch_goes_on() {
    let s = small().await;
    // A valid request decoding while the bad ones arrive; it must finish untouched.
    let addr = s.addr;
    let valid = tokio::spawn(async move {
        post(addr, "/v1/completions", json!({"prompt": "ab", "max_tokens": 100, "temperature": 0})).await
    });
    let huge = json!(u64::MAX);
    let messages = json!([{"role": "user", "content": "hi"}]);
    for (path, body) in [
        ("/v1/completions", json!({"prompt": "a", "max_tokens": huge})),
        ("/v1/completions", json!({"prompt": "a", "max_tokens": huge, "stream": true})),
        ("/v1/completions", json!({"prompt": ["a", "b"], "max_tokens": huge, "n": 2})),
        ("/v1/chat/completions", json!({"messages": messages, "max_tokens": huge})),
        ("/v1/chat/completions", json!({"messages": messages, "max_tokens": huge, "stream": true})),
        ("/v1/chat/completions", json!({"messages": messages, "max_completion_tokens": huge})),
    ] {
        let (status, answer) = post(s.addr, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body} → {answer}");
        assert_eq!(answer["error"]["param"], "max_tokens", "{path} {body} → {answer}");
    }
    let (status, answer) = valid.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "length", "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 100, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_request_are_closed_and_others_are_served() {
    let mut options = ServerOptions::new("tiny");
    options.header_timeout = Duration::from_secs(1);
    options.body_timeout = Duration::from_secs(1);
    options.max_connections = 3;
    let s = start(64, 16, options).await;
    // More half-sent requests than the server keeps connections: they must not lock the others out.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n")
            .await
            .unwrap();
        stalled.push(c);
    }
    let (status, body) = send(s.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let body = json!({"prompt": "ab", "max_tokens": 3}).to_string();
    let (status, answer) = send(s.addr, "POST", "/v1/completions", &[], body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    for mut c in stalled {
        read_until_closed(&mut c).await;
    }
    assert!(s.metrics.peak_connections.load(Ordering::Relaxed) <= 3);

    // Headers complete, body never: 408 naming the body, then the connection closes.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
        .await
        .unwrap();
    let answer = read_until_closed(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"param\":\"body\""), "{answer}");
}

async fn explain(addr: SocketAddr, body: Value) -> (u16, Value, usize) {
    let text = body.to_string();
    let (status, answer) = send(addr, "POST", "/v1/explain", &[], text.as_bytes()).await;
    let size = answer.len();
    (status, serde_json::from_str(&answer).unwrap_or(Value::String(answer)), size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_caps_the_prompt_and_returns_only_the_attention_asked_for() {
    let mut options = ServerOptions::new("tiny");
    options.max_explain_tokens = 16;
    let s = start(128, 32, options).await;
    let (status, answer, _) = explain(s.addr, json!({"prompt": "a".repeat(17)})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "prompt", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("at most 16"), "{answer}");

    let prompt = "the cat sat on a";
    assert_eq!(prompt.len(), 16);
    let (status, all, all_size) = explain(s.addr, json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{all}");
    let (status, one, one_size) =
        explain(s.addr, json!({"prompt": prompt, "attention_layers": [1], "attention_heads": [0]})).await;
    assert_eq!(status, 200, "{one}");
    // Indexed by layer and head as before; only layer 1, head 0 carries its 16 × 16 map.
    let map_rows =
        |ex: &Value, layer: usize, head: usize| ex["attention"]["probs"][layer][head].as_array().unwrap().len();
    assert_eq!([map_rows(&one, 0, 0), map_rows(&one, 0, 1), map_rows(&one, 1, 0), map_rows(&one, 1, 1)], [0, 0, 16, 0]);
    assert_eq!(one["attention"]["probs"][1][0], all["attention"]["probs"][1][0]);
    assert_eq!(one["next_token"], all["next_token"]);
    // Three of the four maps (16² numbers each) are left out of the answer.
    assert!(one_size + 3 * 16 * 16 * 4 < all_size, "{one_size} vs {all_size}");

    for (body, param) in [
        (json!({"prompt": prompt, "attention_layers": [2]}), "attention_layers"),
        (json!({"prompt": prompt, "attention_heads": [-1]}), "attention_heads"),
        (json!({"prompt": prompt, "attention_heads": 0}), "attention_heads"),
    ] {
        let (status, answer, _) = explain(s.addr, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["param"], param, "{body} → {answer}");
    }
}
