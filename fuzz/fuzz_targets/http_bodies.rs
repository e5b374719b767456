//! HTTP request bodies on every POST route of `lushan serve`, through the real router (validation, the
//! batcher and the response shapes) of a tiny character-level model: the first byte picks the route
//! (`/v1/completions`, `/v1/chat/completions`, `/tokenize`, `/detokenize`, `/v1/explain`, and `/classify`
//! on a tiny classifier), the rest is the body. Any answer is fine except a server error: a 5xx, a panic
//! or a hang is a bug.
#![no_main]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use lushan_model::Gpt;
use lushan_server::{Server, ServerOptions};
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use std::sync::OnceLock;
use tower::ServiceExt;

const ROUTES: [&str; 6] =
    ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/explain", "/classify"];

struct Servers {
    runtime: tokio::runtime::Runtime,
    language_model: Router,
    classifier: Router,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tokenizer = Tokenizer::from(CharTokenizer::from_text("abcdefgh ,.!?\nABC:").unwrap());
        let vocab = match &tokenizer {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Bpe(_) => unreachable!(),
        };
        // A tiny context keeps every generation (and its max_tokens) short.
        let config = lushan_model::ModelConfig::new(vocab, 16, 1, 2, 8);
        let model = Gpt::new(config.clone(), 1).unwrap();
        let classifier =
            Gpt::new(config, 2).unwrap().with_classifier_head(vec!["ham".into(), "spam".into()], 0, 3).unwrap();
        // Routers are built inside the runtime: the batcher and the server state may spawn onto it.
        let (language_model, classifier) = runtime.block_on(async {
            let lm = Server::new(model, tokenizer.clone(), ServerOptions::new("fuzz")).unwrap().router();
            let cls = Server::new(classifier, tokenizer, ServerOptions::new("fuzz-classifier")).unwrap().router();
            (lm, cls)
        });
        Servers { runtime, language_model, classifier }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let route = ROUTES[usize::from(pick) % ROUTES.len()];
    let servers = servers();
    let router = if route == "/classify" { &servers.classifier } else { &servers.language_model };
    let request = Request::post(route)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let (status, text) = servers.runtime.block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        // Streams are read to the end: errors inside a stream count too.
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    });
    assert!(!status.is_server_error(), "{route} answered {status}: {text}");
    assert!(!text.contains("\"type\":\"server_error\""), "{route} streamed a server error: {text}");
});
