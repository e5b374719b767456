#![allow(clippy::unwrap_used)] // tests may unwrap
//! The playground end to end: `GET /` (the page) and `POST /v1/explain` (its data) against a tiny random model
//! with a character tokenizer, the server on 127.0.0.1:0 and a minimal HTTP/1.1 client over a raw socket. The
//! page's script itself is exercised in a headless browser by `tests/browser/check_playground.sh`.

mod common;

use common::*;
use lushan_model::inspect::{ExplainOptions, Explanation, explain};
use lushan_server::ServerOptions;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn post_with(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let (status, _, text) = send_full(addr, "POST", "/v1/explain", headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post_explain(addr: SocketAddr, body: Value) -> (u16, Value) {
    post_with(addr, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_one_self_contained_html_document() {
    let s = small().await;
    let (status, head, page) = send_full(s.addr, "GET", "/", &[], b"").await;
    assert_eq!(status, 200, "{page}");
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{}", &page[..40]);
    for id in [
        "prompt",
        "max-tokens",
        "temperature",
        "top-k",
        "top-p",
        "repetition-penalty",
        "api-key",
        "generate",
        "explain",
        "output",
        "ex-tokens",
        "layer",
        "head",
        "attn-canvas",
        "lens",
        "lens-layer",
        "lens-canvas",
        "legend-generation",
        "legend-tokens",
        "legend-attention",
        "legend-lens",
        "legend-lens-map",
        "error",
        "causes-view",
        "dla-canvas",
        "legend-attribution",
        "knockouts",
        "regenerate",
        "knockout-output",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "no element #{id}");
    }
    for call in [
        "'/v1/completions'",
        "'/v1/explain'",
        "stream: true",
        "body.top_p",
        "body.repetition_penalty",
        "Authorization",
        "autorun",
        "data-state",
        "ablate",
        "generate: Math.min(64",
    ] {
        assert!(page.contains(call), "the page never mentions {call}");
    }
    // Offline: nothing is loaded from elsewhere.
    for external in ["http://", "https://", "<script src", "<link rel=\"stylesheet\"", "@import"] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_returns_the_models_explanation() {
    let s = small().await;
    let prompt = "hello world";
    let (status, body) = post_explain(s.addr, json!({"prompt": prompt, "model": "tiny"})).await;
    assert_eq!(status, 200, "{body}");
    let ex: Explanation = serde_json::from_value(body).unwrap();
    let t = prompt.len();
    assert_eq!((ex.model.n_layer, ex.model.n_head, ex.model.block_size), (2, 2, 128));
    assert_eq!(ex.tokens.iter().map(|t| t.text.as_str()).collect::<String>(), prompt);
    assert_eq!(ex.next_token.len(), t);
    assert!(ex.next_token.iter().all(|p| p.top.len() == 5), "the default top_k is 5");
    assert_eq!(ex.attention.probs.len(), 2);
    for (l, layer) in ex.attention.probs.iter().enumerate() {
        assert_eq!(layer.len(), 2, "heads of layer {l}");
        for head in layer {
            assert_eq!(head.len(), t);
            for (q, row) in head.iter().enumerate() {
                assert_eq!(row.len(), t);
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "layer {l} row {q} sums to {sum}");
                assert!(row[q + 1..].iter().all(|&p| p == 0.0), "layer {l} row {q} attends ahead: {row:?}");
            }
        }
    }
    assert_eq!(ex.logit_lens.layers.len(), 3, "embeddings + 2 blocks");
    assert!(ex.logit_lens.layers.iter().all(|l| l.positions.len() == t));
    assert!(ex.sampling.is_none() && ex.embeddings.is_none());

    // Exactly what the library computes for the same model, ids and token texts.
    let tok = tokenizer();
    let ids = tok.encode(prompt).unwrap();
    let text = |id: u32| tok.decode(&[id]).unwrap();
    let options = ExplainOptions { top_k: 3, ..ExplainOptions::default() };
    let expected = explain(&model(128, 32), &ids, &text, &options).unwrap();
    let (status, body) = post_explain(s.addr, json!({"prompt": prompt, "top_k": 3})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_value::<Explanation>(body).unwrap(), expected);

    // The prompt may fill the whole context (nothing is generated after it).
    let (status, body) = post_explain(s.addr, json!({"prompt": "a".repeat(128), "top_k": 20})).await;
    assert_eq!(status, 200, "{body}");
    let ex: Explanation = serde_json::from_value(body).unwrap();
    assert_eq!((ex.tokens.len(), ex.next_token[0].top.len()), (128, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_errors_name_their_param() {
    let s = small().await;
    let cases = [
        (json!({"prompt": ""}), "prompt"),
        (json!({}), "prompt"),
        (json!({"prompt": null}), "prompt"),
        (json!({"prompt": ["ab"]}), "prompt"),
        (json!({"prompt": "a".repeat(129)}), "prompt"),
        (json!({"prompt": "naïve"}), "prompt"), // `ï` is not in the character vocabulary
        (json!({"prompt": "ab", "top_k": 0}), "top_k"),
        (json!({"prompt": "ab", "top_k": 21}), "top_k"),
        (json!({"prompt": "ab", "top_k": -1}), "top_k"),
        (json!({"prompt": "ab", "top_k": "5"}), "top_k"),
        (json!({"prompt": "ab", "model": 7}), "model"),
        (json!({"prompt": "ab", "ablate": [{"layer": 2, "head": 0}]}), "ablate"),
        (json!({"prompt": "ab", "ablate": [{"layer": 0, "head": 2}]}), "ablate"),
        (json!({"prompt": "ab", "ablate": [{"layer": 0}]}), "ablate"),
        (json!({"prompt": "ab", "ablate": [{"head": 0}]}), "ablate"),
        (json!({"prompt": "ab", "ablate": [{"layer": 0, "head": 1, "mlp": true}]}), "ablate"),
        (json!({"prompt": "ab", "ablate": {"layer": 0}}), "ablate"),
        (json!({"prompt": "ab", "ablate": [3]}), "ablate"),
        (json!({"prompt": "ab", "generate": 65}), "generate"),
        (json!({"prompt": "a".repeat(120), "generate": 9}), "generate"),
        (json!({"prompt": "ab", "generate": 2, "temperature": -1.0}), "temperature"),
    ];
    for (body, param) in cases {
        let (status, answer) = post_explain(s.addr, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["param"], param, "{body} → {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{body} → {answer}");
    }

    let (status, answer) = post_explain(s.addr, json!({"prompt": "ab", "model": "gpt-4"})).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        (answer["error"]["param"].as_str(), answer["error"]["code"].as_str()),
        (Some("model"), Some("model_not_found"))
    );

    for bad in [&b"{\"prompt\": "[..], b"[1, 2]", b"\xff\xfe"] {
        let (status, answer) = post_with(s.addr, &[], bad).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
        assert!(answer["error"]["param"].is_null(), "{answer}");
    }
    // A refused request never took a place in the queue.
    assert_eq!(s.metrics.rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_components_off_explains_and_regenerates_with_the_ablated_model() {
    let s = small().await;
    let prompt = "hello world";
    let request =
        |ablate: Value| json!({"prompt": prompt, "generate": 6, "temperature": 0.0, "seed": 3, "ablate": ablate});
    let (status, body) = post_explain(s.addr, request(json!([]))).await;
    assert_eq!(status, 200, "{body}");
    let plain: Explanation = serde_json::from_value(body).unwrap();
    assert_eq!(plain.sampling.as_ref().map(|view| view.steps.len()), Some(6), "six tokens were asked for");

    let ablate = json!([{"layer": 0, "head": 1}, {"layer": 1, "mlp": true}]);
    let (status, body) = post_explain(s.addr, request(ablate)).await;
    assert_eq!(status, 200, "{body}");
    let switched_off: Explanation = serde_json::from_value(body).unwrap();
    // Exactly the library's explanation of the model with those components folded out.
    let tok = tokenizer();
    let ids = tok.encode(prompt).unwrap();
    let text = |id: u32| tok.decode(&[id]).unwrap();
    let ablations = [lushan_model::Knockout::Head { layer: 0, head: 1 }, lushan_model::Knockout::Mlp { layer: 1 }];
    let options = ExplainOptions {
        generate: 6,
        sampling: lushan_model::Sampling { temperature: 0.0, ..Default::default() },
        seed: 3,
        ..ExplainOptions::default()
    };
    let expected = explain(&model(128, 32).ablated(&ablations).unwrap(), &ids, &text, &options).unwrap();
    assert_eq!(switched_off, expected);
    assert_ne!(switched_off.next_token, plain.next_token, "switching a head and an MLP off changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_needs_the_api_key_and_the_page_does_not() {
    let mut options = ServerOptions::new("tiny");
    options.api_key = Some("sekrit".into());
    let s = start(64, 32, options).await;
    let body = json!({"prompt": "ab"}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("sekrit")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (status, answer) = post_with(s.addr, &headers, body.as_bytes()).await;
        assert_eq!(status, 401, "{auth:?} → {answer}");
        assert_eq!(answer["error"]["code"], "invalid_api_key");
    }
    let (status, answer) = post_with(s.addr, &[("Authorization", "Bearer sekrit")], body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tokens"].as_array().unwrap().len(), 2);
    let (status, _, page) = send_full(s.addr, "GET", "/", &[], b"").await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_waits_its_turn_in_the_queue() {
    let mut options = ServerOptions::new("big");
    options.max_queue = 1;
    let s = start(1024, 128, options).await;
    // A long streamed completion holds the only place while its socket is open.
    let long = json!({"prompt": "a", "max_tokens": 1000, "n": 8, "stream": true}).to_string();
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(&raw_request("POST", "/v1/completions", &[], long.as_bytes())).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first event: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let (status, answer) = post_explain(s.addr, json!({"prompt": "ab"})).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["type"], "rate_limit_error");
    assert_eq!(s.metrics.rejected.load(Ordering::Relaxed), 1);
    drop(stream);
    // Once the hung-up generation has stopped, the place is free again.
    let start = std::time::Instant::now();
    loop {
        let (status, answer) = post_explain(s.addr, json!({"prompt": "ab"})).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{answer}");
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the queue never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
