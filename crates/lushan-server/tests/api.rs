#![allow(clippy::unwrap_used)] // tests may unwrap
//! The HTTP API end to end: a tiny random model with a character tokenizer, the server on 127.0.0.1:0 and a
//! minimal HTTP/1.1 client over a raw socket.

mod common;

use common::*;
use lushan_model::{Gpt, ModelConfig};
use lushan_server::{Server, ServerOptions};
use lushan_tokenizer::chat::{self, Message};
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The JSON payloads of an SSE body, checking the framing and the final `[DONE]`.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{body:?}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap()).collect()
}

async fn stream_post(addr: SocketAddr, path: &str, body: Value) -> Vec<Value> {
    let (status, text) = send(addr, "POST", path, &[], body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    sse_events(&text)
}

fn completion_text(events: &[Value]) -> String {
    events.iter().map(|e| e["choices"][0]["text"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_routes() {
    let s = small().await;
    let (status, body) = send(s.addr, "GET", "/health", &[], b"").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));

    let (status, body) = send(s.addr, "GET", "/v1/models", &[], b"").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "tiny");
    assert_eq!(body["data"][0]["object"], "model");

    let (status, body) = post(s.addr, "/tokenize", json!({"prompt": "abc"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 3);
    let tokens = body["tokens"].clone();
    let (_, body) = post(s.addr, "/tokenize", json!({"text": "abc"})).await;
    assert_eq!(body["tokens"], tokens);
    let (status, body) = post(s.addr, "/detokenize", json!({"tokens": tokens})).await;
    assert_eq!((status, body["prompt"].as_str()), (200, Some("abc")));
    let (status, body) = post(s.addr, "/detokenize", json!({"tokens": [s.vocab + 3]})).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("tokens")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_happy_path_usage_echo_logprobs() {
    let s = small().await;
    let (status, body) =
        post(s.addr, "/v1/completions", json!({"model": "tiny", "prompt": "hello", "max_tokens": 7, "seed": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "tiny");
    assert!(body["created"].as_u64().unwrap() > 0);
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["text"].as_str().unwrap().chars().count(), 7);
    assert_eq!(body["usage"], json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}));

    // Default max_tokens is 16; token-id prompts, several prompts and n multiply the choices.
    let (_, ids) = post(s.addr, "/tokenize", json!({"prompt": "hi"})).await;
    let body = json!({"prompt": [ids["tokens"].clone(), "abc"], "n": 2, "seed": 3});
    let (status, body) = post(s.addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert!(
        choices.iter().enumerate().all(|(i, c)| c["index"] == i && c["text"].as_str().unwrap().chars().count() == 16)
    );
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 64);

    let body = json!({"prompt": "hey", "max_tokens": 5, "temperature": 0, "echo": true, "logprobs": 3});
    let (status, body) = post(s.addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with("hey") && text.chars().count() == 8, "{text}");
    // With echo, the prompt's tokens come first: the first has no log-probability (nothing predicts it).
    let lp = &choice["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3 + 5);
    assert_eq!(tokens.iter().map(|t| t.as_str().unwrap()).collect::<String>(), text);
    assert_eq!(lp["text_offset"], json!([0, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!((&lp["token_logprobs"][0], &lp["top_logprobs"][0]), (&Value::Null, &Value::Null));
    for i in 1..3 {
        let prompt_lp = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(prompt_lp < 0.0 && lp["top_logprobs"][i].as_object().unwrap().len() == 3);
    }
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate().skip(3) {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-5, "greedy picks the most likely token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_format_and_stop_strings_across_tokens() {
    let s = small().await;
    let base = json!({"prompt": "The ", "max_tokens": 40, "temperature": 0});
    let (_, body) = post(s.addr, "/v1/completions", base.clone()).await;
    let full = body["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(full.chars().count(), 40);

    let events = stream_post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "The ", "max_tokens": 40, "temperature": 0, "stream": true}),
    )
    .await;
    assert!(events.len() >= 2);
    assert!(events.iter().all(|e| e["object"] == "text_completion" && e["choices"][0]["index"] == 0));
    assert_eq!(completion_text(&events), full);
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "length");

    // A stop string of three characters (three tokens) cut out of the greedy text: the output ends before its
    // first occurrence, streamed or not.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[20..23].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    let body = json!({"prompt": "The ", "max_tokens": 40, "temperature": 0, "stop": [stop.clone(), "QQQQ"]});
    let (status, body) = post(s.addr, "/v1/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["text"], cut);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let body = json!({"prompt": "The ", "max_tokens": 40, "temperature": 0, "stop": stop, "stream": true});
    let events = stream_post(s.addr, "/v1/completions", body).await;
    assert_eq!(completion_text(&events), cut);
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // Log-probabilities streamed chunk by chunk add up to the non-streamed ones, cut at the stop string too.
    let body = json!({"prompt": "The ", "max_tokens": 40, "temperature": 0, "stop": stop, "logprobs": 2, "echo": true});
    let (_, plain) = post(s.addr, "/v1/completions", body.clone()).await;
    let plain = &plain["choices"][0]["logprobs"];
    let tokens: String = plain["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens, format!("The {cut}"));
    assert_eq!(plain["text_offset"][0], 0);
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = stream_post(s.addr, "/v1/completions", streamed).await;
    assert_eq!(completion_text(&events), format!("The {cut}"));
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        let joined: Vec<Value> = events
            .iter()
            .filter_map(|e| e["choices"][0]["logprobs"][key].as_array())
            .flat_map(|a| a.iter().cloned())
            .collect();
        assert_eq!(Value::Array(joined), plain[key], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_and_streamed() {
    let s = small().await;
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]);
    let body = json!({"model": "tiny", "messages": messages, "max_tokens": 12, "seed": 9});
    let (status, resp) = post(s.addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(resp["object"], "chat.completion");
    let choice = &resp["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    // The character tokenizer's end of turn is the newline: a reply is one line, without it.
    assert!(!content.contains('\n'), "{content:?}");
    // The prompt is the one chat template's: `System: Be brief.\nUser: Hi!\nAssistant:` in characters.
    let history = [Message::system("Be brief."), Message::user("Hi!")];
    let prompt = chat::encode_chat(&tokenizer(), &history, true).unwrap().ids;
    assert_eq!(tokenizer().decode(&prompt).unwrap(), "System: Be brief.\nUser: Hi!\nAssistant:");
    assert_eq!(resp["usage"]["prompt_tokens"], prompt.len());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = stream_post(s.addr, "/v1/chat/completions", streamed).await;
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, content);
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], choice["finish_reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_reproduce_sequentially_and_concurrently() {
    let s = small().await;
    let req =
        |seed: u64| json!({"prompt": "abc", "max_tokens": 30, "seed": seed, "top_k": 20, "repetition_penalty": 1.1});
    let text = |v: &Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    let mut sequential = Vec::new();
    for seed in 0..4 {
        sequential.push(text(&post(s.addr, "/v1/completions", req(seed)).await.1));
    }
    assert_eq!(text(&post(s.addr, "/v1/completions", req(0)).await.1), sequential[0]);
    assert_ne!(sequential[0], sequential[1]);
    let handles: Vec<_> = (0..4).map(|seed| tokio::spawn(post(s.addr, "/v1/completions", req(seed)))).collect();
    for (seed, h) in handles.into_iter().enumerate() {
        assert_eq!(text(&h.await.unwrap().1), sequential[seed]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_their_param() {
    let mut options = ServerOptions::new("tiny");
    options.max_body_bytes = 1000;
    let s = start(128, 32, options).await;
    let cases = [
        (json!({"prompt": "a", "max_tokens": 200}), 400, Some("max_tokens")),
        (json!({"prompt": "a", "temperature": -1}), 400, Some("temperature")),
        (json!({"prompt": "a", "temperature": "hot"}), 400, Some("temperature")),
        (json!({"prompt": "a", "top_p": 0}), 400, Some("top_p")),
        (json!({"prompt": "a", "top_p": 1.5}), 400, Some("top_p")),
        (json!({"prompt": "a", "n": 100}), 400, Some("n")),
        (json!({"prompt": "a", "stop": [""]}), 400, Some("stop")),
        (json!({"prompt": "a", "presence_penalty": 3}), 400, Some("presence_penalty")),
        (json!({"prompt": "a", "model": "gpt-4"}), 404, Some("model")),
        (json!({"prompt": [s.vocab as u64 + 5]}), 400, Some("prompt")),
        (json!({"max_tokens": 3}), 400, Some("prompt")),
        (json!({"prompt": "a", "logprobs": 9}), 400, Some("logprobs")),
        (json!({"prompt": "x".repeat(2000)}), 413, Some("body")),
    ];
    for (body, status, param) in cases {
        let (got, resp) = post(s.addr, "/v1/completions", body.clone()).await;
        assert_eq!(got, status, "{body} → {resp}");
        assert_eq!(resp["error"]["param"].as_str(), param, "{body} → {resp}");
        assert!(resp["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(resp["error"]["type"].is_string());
    }
    let (got, resp) =
        post(s.addr, "/v1/chat/completions", json!({"messages": [{"role": "robot", "content": "x"}]})).await;
    assert_eq!((got, resp["error"]["param"].as_str()), (400, Some("messages")));
    for raw in [&b"{\"prompt\": "[..], &[0x7b, 0xff, 0xfe, 0x7d][..]] {
        let (got, text) = send(s.addr, "POST", "/v1/completions", &[], raw).await;
        let resp: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, 400, "{text}");
        assert_eq!(resp["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_v1() {
    let mut options = ServerOptions::new("tiny");
    options.api_key = Some("sekrit".into());
    let s = start(64, 32, options).await;
    let (status, body) = send(s.addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"));
    let (status, _) = send(s.addr, "GET", "/v1/models", &[("Authorization", "Bearer wrong!")], b"").await;
    assert_eq!(status, 401);
    let (status, _) = send(s.addr, "GET", "/v1/models", &[("Authorization", "Bearer sekrit")], b"").await;
    assert_eq!(status, 200);
    let body = json!({"prompt": "ab", "max_tokens": 2}).to_string();
    let (status, _) = send(s.addr, "POST", "/v1/completions", &[], body.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, _) =
        send(s.addr, "POST", "/v1/completions", &[("Authorization", "Bearer sekrit")], body.as_bytes()).await;
    assert_eq!(status, 200);
    let (status, _) = send(s.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
}

/// Opens a streamed completion and returns the socket once the first SSE event has arrived.
async fn open_stream(addr: SocketAddr, body: Value) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_request("POST", "/v1/completions", &[], body.to_string().as_bytes())).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first event: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    s
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_disconnect_stops_generation() {
    let mut options = ServerOptions::new("big");
    options.max_queue = 1;
    let s = start(1024, 128, options).await;
    let long = json!({"prompt": "a", "max_tokens": 1000, "n": 8, "stream": true});
    let stream = open_stream(s.addr, long).await;
    let (status, body) = post(s.addr, "/v1/completions", json!({"prompt": "a", "max_tokens": 1})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(s.metrics.rejected.load(Ordering::Relaxed), 1);

    // Hanging up ends the generation early (well before 8 × 1000 tokens) and frees the queue.
    drop(stream);
    // All eight choices were decoding together; all eight stop.
    wait_for("the cancelled generations", || s.metrics.cancelled.load(Ordering::Relaxed) == 8).await;
    let generated = s.metrics.tokens_generated.load(Ordering::Relaxed);
    assert!(generated < 8000, "{generated} tokens");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.metrics.tokens_generated.load(Ordering::Relaxed), generated, "generation went on after the stop");
    let (status, body) = post(s.addr, "/v1/completions", json!({"prompt": "a", "max_tokens": 1})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_penalty_is_applied_before_sampling() {
    // The random model's logits differ by far less than 2, so greedy decoding with a presence penalty of 2 never
    // repeats a character while unused ones remain.
    let s = small().await;
    let body = json!({"prompt": "a", "max_tokens": 40, "temperature": 0, "presence_penalty": 2});
    let (status, body) = post(s.addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let text: Vec<char> = body["choices"][0]["text"].as_str().unwrap().chars().collect();
    let mut distinct = text.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), text.len(), "{text:?}");
    let (_, plain) = post(s.addr, "/v1/completions", json!({"prompt": "a", "max_tokens": 40, "temperature": 0})).await;
    let plain: Vec<char> = plain["choices"][0]["text"].as_str().unwrap().chars().collect();
    assert_ne!(plain, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_serve() {
    let tokenizer = Tokenizer::from(CharTokenizer::from_text(TEXT).unwrap());
    let model = Gpt::new(ModelConfig::new(tokenizer.vocab_size(), 32, 1, 1, 16), 1).unwrap();
    let server = Server::new(model, tokenizer, ServerOptions::new("m")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let (status, _) = send(addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), handle).await.expect("serve returned");
    assert!(result.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_plain_and_streamed() {
    let s = small().await;
    let messages = json!([{"role": "user", "content": "Hi!"}]);
    let body = json!({"messages": messages, "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (status, resp) = post(s.addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{resp}");
    let choice = &resp["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap();
    let entries = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(entries.len(), resp["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    let joined: String = entries.iter().map(|e| e["token"].as_str().unwrap()).collect();
    // The tokens are every token sampled: the first may carry the template's space, which the content drops.
    assert!(joined.strip_prefix(' ').unwrap_or(&joined).starts_with(content), "{joined:?} vs {content:?}");
    for e in entries {
        let token = e["token"].as_str().unwrap();
        let bytes: Vec<u8> = e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(bytes, token.as_bytes());
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one, listed first.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - e["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = stream_post(s.addr, "/v1/chat/completions", streamed).await;
    let streamed_entries: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flat_map(|a| a.iter().cloned())
        .collect();
    assert_eq!(&streamed_entries, entries);

    // Without `logprobs` there are none; `top_logprobs` alone or above 20 is an error naming it.
    let (_, plain) = post(s.addr, "/v1/chat/completions", json!({"messages": messages, "max_tokens": 2})).await;
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
    for bad in [
        json!({"messages": messages, "top_logprobs": 2}),
        json!({"messages": messages, "logprobs": true, "top_logprobs": 21}),
    ] {
        let (status, err) = post(s.addr, "/v1/chat/completions", bad).await;
        assert_eq!((status, err["error"]["param"].as_str()), (400, Some("top_logprobs")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_are_decoded_together_and_match_sequential_runs() {
    // A model big enough that a step takes a while, so the streams overlap.
    let s = start(512, 128, ServerOptions::new("big")).await;
    let req = |seed: u64| {
        json!({"prompt": (["a", "ab", "abc", "b", "bc", "c"][seed as usize]), "max_tokens": 60, "seed": seed, "temperature": 0.9, "top_p": 0.95,
               "stream": true})
    };
    let mut sequential = Vec::new();
    for seed in 0..6 {
        sequential.push(completion_text(&stream_post(s.addr, "/v1/completions", req(seed)).await));
    }
    assert_eq!(s.metrics.peak_batch.load(Ordering::Relaxed), 1, "one request at a time decodes alone");
    let handles: Vec<_> = (0..6).map(|seed| tokio::spawn(stream_post(s.addr, "/v1/completions", req(seed)))).collect();
    for (seed, h) in handles.into_iter().enumerate() {
        assert_eq!(completion_text(&h.await.unwrap()), sequential[seed], "seed {seed}");
    }
    let peak = s.metrics.peak_batch.load(Ordering::Relaxed);
    assert!(peak >= 2, "the concurrent streams were never decoded in one step (peak batch {peak})");
}
