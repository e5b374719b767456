#![allow(clippy::unwrap_used)] // tests may unwrap
//! `POST /classify` with a classifier checkpoint (text-embeddings-inference's request and response shape),
//! and how each kind of model answers the routes of the other.

mod common;

use common::*;
use lushan_model::checkpoint::{load_model_dir, save_model_dir};
use lushan_model::{Gpt, Head, ModelConfig, classify_batch};
use lushan_server::ServerOptions;
use lushan_tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

const BLOCK: usize = 16;

/// A tiny random `ham` / `spam` classifier over the test vocabulary, saved and loaded back as a checkpoint
/// directory (config.json + model.safetensors) as `lushan serve` would load it.
fn classifier() -> Gpt {
    let tok = tokenizer();
    let mut cfg = ModelConfig::new(tok.vocab_size(), BLOCK, 2, 2, 32);
    let pad = tok.encode("?").unwrap()[0];
    cfg.head = Head::Classifier { labels: vec!["ham".into(), "spam".into()], pad_token_id: pad };
    let model = Gpt::new(cfg, SEED).unwrap();
    static SAVES: AtomicUsize = AtomicUsize::new(0);
    let n = SAVES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lushan-classify-test-{}-{n}", std::process::id()));
    save_model_dir(&dir, &model.config, &model.params).unwrap();
    let (cfg, params) = load_model_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cfg.head, model.config.head);
    Gpt::from_params(cfg, params).unwrap()
}

async fn classifier_server() -> TestServer {
    serve(classifier(), tokenizer(), ServerOptions::new("spam-filter")).await
}

/// What the server should answer for `texts`: probabilities (or logits) straight from the model crate.
fn expected(texts: &[&str], raw: bool) -> Vec<Vec<f32>> {
    let tok: Tokenizer = tokenizer();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let got = classify_batch(&classifier(), &ids).unwrap();
    if raw { got.logits } else { got.probabilities }
}

/// Checks one ranked list against `scores` (label order ham, spam): every label once, highest first.
fn check_ranked(ranked: &Value, scores: &[f32]) {
    let list = ranked.as_array().unwrap_or_else(|| panic!("not a list: {ranked}"));
    assert_eq!(list.len(), 2, "{ranked}");
    assert!(list[0]["score"].as_f64().unwrap() >= list[1]["score"].as_f64().unwrap(), "{ranked}");
    for entry in list {
        let i = ["ham", "spam"].iter().position(|l| entry["label"] == *l).unwrap();
        let score = entry["score"].as_f64().unwrap();
        assert!((score - f64::from(scores[i])).abs() < 1e-6, "{ranked} vs {scores:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_answers_in_the_shape_of_text_embeddings_inference() {
    let s = classifier_server().await;
    let (status, one) = post(s.addr, "/classify", json!({"inputs": "win a prize now"})).await;
    assert_eq!(status, 200, "{one}");
    let probs = &expected(&["win a prize now"], false)[0];
    check_ranked(&one, probs);
    let total: f64 = one.as_array().unwrap().iter().map(|e| e["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-6);

    // A list gives one ranked list per text, in order, each as if classified alone.
    let texts = ["see you at lunch", "win a prize now", "ok"];
    let (status, many) = post(s.addr, "/classify", json!({"inputs": texts, "raw_scores": false})).await;
    assert_eq!(status, 200, "{many}");
    let many = many.as_array().unwrap();
    assert_eq!(many.len(), 3);
    for (ranked, scores) in many.iter().zip(expected(&texts, false)) {
        check_ranked(ranked, &scores);
    }
    assert_eq!(many[1], one);
    assert_ne!(many[0], many[1]);

    // raw_scores: the head's logits; /predict is the same route (text-embeddings-inference's name).
    let (status, raw) = post(s.addr, "/predict", json!({"inputs": ["win a prize now"], "raw_scores": true})).await;
    assert_eq!(status, 200, "{raw}");
    check_ranked(&raw[0], &expected(&["win a prize now"], true)[0]);

    let (status, models) = send(s.addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(status, 200);
    assert!(models.contains("spam-filter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_inputs_need_truncate_and_bad_inputs_name_the_param() {
    let s = classifier_server().await;
    let long = "this message is far longer than sixteen characters";
    let (status, err) = post(s.addr, "/classify", json!({"inputs": ["ok", long]})).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("inputs")), "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("input 1 has 50 tokens") && message.contains("truncate"), "{message}");
    // truncate: true keeps the first BLOCK tokens, as training does.
    let (status, cut) = post(s.addr, "/classify", json!({"inputs": long, "truncate": true})).await;
    assert_eq!(status, 200, "{cut}");
    check_ranked(&cut, &expected(&[&long[..BLOCK]], false)[0]);

    let too_many: Vec<&str> = vec!["a"; 33];
    let cases = [
        json!({}),
        json!({"inputs": 5}),
        json!({"inputs": []}),
        json!({"inputs": ["a", 1]}),
        json!({"inputs": ""}),
        json!({"inputs": "€"}),
        json!({"inputs": too_many}),
    ];
    for body in cases {
        let (status, err) = post(s.addr, "/classify", body.clone()).await;
        assert_eq!((status, err["error"]["param"].as_str()), (400, Some("inputs")), "{body} → {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    let (status, err) = post(s.addr, "/classify", json!({"inputs": "a", "raw_scores": "yes"})).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("raw_scores")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_model_refuses_the_other_kinds_routes() {
    let cls = classifier_server().await;
    let cases = [
        ("/v1/completions", json!({"prompt": "hello", "max_tokens": 3})),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}]})),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "stream": true})),
        ("/v1/explain", json!({"prompt": "hello"})),
    ];
    for (path, body) in cases {
        let (status, err) = post(cls.addr, path, body).await;
        assert_eq!((status, err["error"]["param"].as_str()), (400, Some("model")), "{path} → {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("is a classifier") && message.contains("/classify"), "{path}: {message}");
    }
    // The classifier still answers after refusing (nothing broke on the way).
    let (status, _) = post(cls.addr, "/classify", json!({"inputs": "ok"})).await;
    assert_eq!(status, 200);

    let lm = small().await;
    let (status, err) = post(lm.addr, "/classify", json!({"inputs": "hello"})).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("model")), "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("classifier checkpoint") && message.contains("lushan train --task classify"), "{message}");
}
