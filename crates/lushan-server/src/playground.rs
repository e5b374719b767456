//! The web playground: `GET /` serves one self-contained page (no external resources, works offline) and
//! `POST /v1/explain` returns the [`Explanation`] of a text — the same JSON as `lushan explain --format json`
//! — for the page to draw: per-token probabilities and alternatives, attention of every layer and head, and
//! the logit lens. Generation itself goes through the ordinary `POST /v1/completions` (streamed).

use crate::error::ApiError;
use crate::{AppState, request};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lushan_model::inspect::{ExplainOptions, Explanation, explain};
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;

/// The page, compiled in so that the binary needs no files next to it.
const INDEX_HTML: &str = include_str!("playground/index.html");

/// Alternatives per position when the request names none.
const DEFAULT_TOP_K: usize = 5;
/// Most alternatives per position: beyond this the page has no room and the JSON only grows.
const MAX_TOP_K: usize = 20;
/// Most attention numbers (`n_layer × n_head × T²`) one explanation may carry. The JSON grows with the square
/// of the prompt, so a GPT-2-sized model at its full context would answer with gigabytes; ≈ 16 M numbers is
/// ≈ 150 MB of JSON, already more than a browser tab draws comfortably.
const MAX_ATTENTION_VALUES: usize = 1 << 24;

/// `GET /` (public) and `POST /v1/explain` (behind `auth`, the same API-key check as the other `/v1/*`
/// routes; it is passed in so that the key is checked in one place only).
pub(crate) fn routes<A, Fut>(state: Arc<AppState>, auth: A) -> Router<Arc<AppState>>
where
    A: Fn(State<Arc<AppState>>, Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let api = Router::new()
        .route("/v1/explain", post(explain_route))
        .route_layer(middleware::from_fn_with_state(state, auth));
    Router::new().route("/", get(index)).merge(api)
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX_HTML)
        .into_response()
}

/// A validated `/v1/explain` request.
#[derive(Debug)]
struct ExplainRequest {
    ids: Vec<u32>,
    top_k: usize,
}

fn parse_request(st: &AppState, map: &Map<String, Value>) -> Result<ExplainRequest, ApiError> {
    request::check_model(map, &st.options.model_id)?;
    st.require_language_model()?;
    let text = match map.get("prompt") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err(ApiError::invalid("prompt", "`prompt` is empty")),
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string")),
    };
    let ids =
        st.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", format!("cannot encode the prompt: {e}")))?;
    let cfg = &st.model.config;
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
    }
    // Unlike a completion, nothing is generated after the prompt, so it may fill the whole context.
    if ids.len() > cfg.block_size {
        return Err(ApiError::invalid(
            "prompt",
            format!("the prompt has {} tokens; the model's context is {}", ids.len(), cfg.block_size),
        ));
    }
    let attention = cfg.n_layer * cfg.n_head * ids.len() * ids.len();
    if attention > MAX_ATTENTION_VALUES {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "the prompt has {} tokens: its attention ({} layers × {} heads × {}²) would be {attention} numbers, \
                 more than the {MAX_ATTENTION_VALUES} one explanation may carry; shorten it",
                ids.len(),
                cfg.n_layer,
                cfg.n_head,
                ids.len()
            ),
        ));
    }
    let top_k = request::get_usize(map, "top_k")?.unwrap_or(DEFAULT_TOP_K);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::invalid("top_k", format!("`top_k` must be between 1 and {MAX_TOP_K}, got {top_k}")));
    }
    Ok(ExplainRequest { ids, top_k })
}

async fn explain_route(State(st): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let map = crate::routes::read_body(&st, body).await?;
    let req = parse_request(&st, &map)?;
    // A forward pass over the whole prompt with every activation kept: as heavy as a generation, so it takes
    // a place in the same queue and runs off the async executor.
    let permit = st.queue_slot()?;
    let state = st.clone();
    let explanation: Explanation = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // A single id always decodes (they were just encoded); should one not, the page shows its number.
        let token_text = |id: u32| state.tokenizer.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"));
        let options = ExplainOptions { top_k: req.top_k, ..ExplainOptions::default() };
        explain(&state.model, &req.ids, &token_text, &options)
    })
    .await
    .map_err(|e| ApiError::internal(format!("explain panicked: {e}")))?
    .map_err(|e| ApiError::internal(format!("explain failed: {e}")))?;
    Ok(axum::Json(explanation).into_response())
}
