//! The web playground: `GET /` serves one self-contained page (no external resources, works offline) and
//! `POST /v1/explain` returns the [`Explanation`] of a text — the same JSON as `lushan explain --format json`
//! — for the page to draw: per-token probabilities and alternatives, attention of every layer and head (or of
//! those listed in `attention_layers` / `attention_heads`; the others come back empty), and the logit lens.
//! Its cost grows with the square of the prompt, so prompts are capped (`ServerOptions::max_explain_tokens`),
//! the attention it may carry is bounded, and at most [`EXPLAIN_CONCURRENCY`] run at once. Generation itself goes through the ordinary `POST /v1/completions` (streamed);
//! `/v1/explain` also takes `ablate` (heads / MLPs switched off, folded into a copy of the weights) with
//! `generate` tokens drawn at `temperature` from `seed`, so the page can switch a head off and regenerate.

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
use lushan_model::{Knockout, ModelError, Sampling};
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::{Arc, LazyLock};

/// The page, compiled in so that the binary needs no files next to it: `index.html` with the causal views
/// (`causes.html`: attribution heat map, knockout switches) spliced in where it says so.
static INDEX_HTML: LazyLock<String> = LazyLock::new(|| {
    include_str!("playground/index.html").replace("<!-- causes -->", include_str!("playground/causes.html"))
});

/// Alternatives per position when the request names none.
const DEFAULT_TOP_K: usize = 5;
/// Most alternatives per position: beyond this the page has no room and the JSON only grows.
const MAX_TOP_K: usize = 20;
/// Most tokens `/v1/explain` generates after the prompt (`generate`): the sampling view is for reading.
const MAX_EXPLAIN_GENERATE: usize = 64;
/// Most attention numbers (selected layers × selected heads × T²) one explanation may carry. The JSON grows
/// with the square of the prompt, so a GPT-2-sized model at its full context would answer with gigabytes;
/// ≈ 4 M numbers is ≈ 40 MB of JSON.
const MAX_ATTENTION_VALUES: usize = 1 << 22;
/// Explanations computed at once: each holds every activation of its prompt and builds a large answer, so
/// more wait their turn (in the request queue) rather than multiply the memory.
pub(crate) const EXPLAIN_CONCURRENCY: usize = 2;

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
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX_HTML.as_str())
        .into_response()
}

/// A validated `/v1/explain` request.
#[derive(Debug)]
struct ExplainRequest {
    ids: Vec<u32>,
    top_k: usize,
    /// Whether the attention of each layer, and of each head, is returned (`attention_layers` /
    /// `attention_heads`; all by default).
    layers: Vec<bool>,
    heads: Vec<bool>,
    /// Heads and MLPs switched off (zero ablation) for the whole explanation and its generated tokens.
    ablations: Vec<Knockout>,
    /// Tokens generated after the prompt (the sampling view), drawn at `temperature` from `seed`.
    generate: usize,
    temperature: f32,
    seed: u64,
}

/// `ablate`: a list of `{"layer": L, "head": H}` (switch a head off) and `{"layer": L, "mlp": true}` (switch
/// a block's MLP off), 0-based.
fn ablations(map: &Map<String, Value>, n_layer: usize, n_head: usize) -> Result<Vec<Knockout>, ApiError> {
    let items = match map.get("ablate") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("ablate", "`ablate` must be a list of {layer, head} or {layer, mlp}")),
    };
    let index = |item: &Value, key: &str, count: usize| -> Result<Option<usize>, ApiError> {
        match item.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => {
                value.as_u64().and_then(|i| usize::try_from(i).ok()).filter(|&i| i < count).map(Some).ok_or_else(|| {
                    ApiError::invalid(
                        "ablate",
                        format!("`ablate` {key} {value} is out of range: 0 to {}", count.saturating_sub(1)),
                    )
                })
            }
        }
    };
    items
        .iter()
        .map(|item| {
            if !item.is_object() {
                return Err(ApiError::invalid(
                    "ablate",
                    format!("`ablate` holds {item}; expected {{layer, head}} or {{layer, mlp}}"),
                ));
            }
            let layer = index(item, "layer", n_layer)?
                .ok_or_else(|| ApiError::invalid("ablate", format!("`ablate` entry {item} has no `layer`")))?;
            let mlp = item.get("mlp").and_then(Value::as_bool).unwrap_or(false);
            match (index(item, "head", n_head)?, mlp) {
                (Some(head), false) => Ok(Knockout::Head { layer, head }),
                (None, true) => Ok(Knockout::Mlp { layer }),
                _ => Err(ApiError::invalid(
                    "ablate",
                    format!("`ablate` entry {item} must name either a `head` or `mlp: true`"),
                )),
            }
        })
        .collect()
}

/// The indices listed in `key` (each below `count`) as a mask; every index when absent.
fn selection(map: &Map<String, Value>, key: &'static str, count: usize) -> Result<Vec<bool>, ApiError> {
    let items = match map.get(key) {
        None | Some(Value::Null) => return Ok(vec![true; count]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid(key, format!("`{key}` must be a list of indices"))),
    };
    let mut mask = vec![false; count];
    for item in items {
        let index = item.as_u64().and_then(|i| usize::try_from(i).ok()).filter(|&i| i < count);
        let index = index.ok_or_else(|| {
            ApiError::invalid(key, format!("`{key}` holds {item}; the indices are 0 to {}", count.saturating_sub(1)))
        })?;
        mask[index] = true;
    }
    Ok(mask)
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
    let cap = st.options.max_explain_tokens;
    if ids.len() > cap {
        return Err(ApiError::invalid(
            "prompt",
            format!("the prompt has {} tokens; /v1/explain takes at most {cap}", ids.len()),
        ));
    }
    let layers = selection(map, "attention_layers", cfg.n_layer)?;
    let heads = selection(map, "attention_heads", cfg.n_head)?;
    let maps = layers.iter().filter(|&&l| l).count() * heads.iter().filter(|&&h| h).count();
    let attention = ids.len().checked_mul(ids.len()).and_then(|square| square.checked_mul(maps));
    if attention.is_none_or(|values| values > MAX_ATTENTION_VALUES) {
        return Err(ApiError::invalid(
            "attention_layers",
            format!(
                "the prompt has {} tokens: the attention of {maps} maps ({}² each) would be more than the \
                 {MAX_ATTENTION_VALUES} numbers one explanation may carry; select fewer layers \
                 (`attention_layers`) or heads (`attention_heads`), or shorten the prompt",
                ids.len(),
                ids.len(),
            ),
        ));
    }
    let top_k = request::get_usize(map, "top_k")?.unwrap_or(DEFAULT_TOP_K);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::invalid("top_k", format!("`top_k` must be between 1 and {MAX_TOP_K}, got {top_k}")));
    }
    let ablations = ablations(map, cfg.n_layer, cfg.n_head)?;
    let generate = request::get_usize(map, "generate")?.unwrap_or(0);
    if generate > MAX_EXPLAIN_GENERATE {
        return Err(ApiError::invalid(
            "generate",
            format!("`generate` must be at most {MAX_EXPLAIN_GENERATE} tokens, got {generate}"),
        ));
    }
    if ids.len() + generate > cfg.block_size {
        return Err(ApiError::invalid(
            "generate",
            format!(
                "the prompt ({} tokens) and {generate} generated tokens exceed the model's context of {}",
                ids.len(),
                cfg.block_size
            ),
        ));
    }
    let temperature = request::get_f64(map, "temperature")?.map_or(1.0, |t| t as f32);
    let seed = request::get_u64(map, "seed")?.unwrap_or(0);
    Ok(ExplainRequest { ids, top_k, layers, heads, ablations, generate, temperature, seed })
}

async fn explain_route(State(st): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let map = crate::routes::read_body(&st, body).await?;
    let req = parse_request(&st, &map)?;
    // A forward pass over the whole prompt with every activation kept: as heavy as a generation, so it takes
    // a place in the same queue and runs off the async executor.
    let permit = st.queue_slot()?;
    // The slots are never closed, so acquiring only waits.
    let explaining = st.explain_slots.clone().acquire_owned().await;
    let state = st.clone();
    let body = tokio::task::spawn_blocking(move || {
        let _slots = (permit, explaining);
        // A single id always decodes (they were just encoded); should one not, the page shows its number.
        let token_text = |id: u32| state.tokenizer.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"));
        let sampling = Sampling { temperature: req.temperature, ..Sampling::default() };
        let options = ExplainOptions {
            top_k: req.top_k,
            generate: req.generate,
            sampling,
            seed: req.seed,
            ..ExplainOptions::default()
        };
        // Switched-off components are folded into a copy of the weights (only when some are asked for).
        let ablated = match req.ablations.is_empty() {
            true => None,
            false => Some(state.model.ablated(&req.ablations).map_err(|e| ApiError::invalid("ablate", e.to_string()))?),
        };
        let model = ablated.as_ref().unwrap_or(&state.model);
        let mut explanation = explain(model, &req.ids, &token_text, &options).map_err(|e| match e {
            ModelError::InvalidSampling { field, .. } | ModelError::InvalidExplainOption { field, .. } => {
                ApiError::invalid(field, e.to_string())
            }
            e @ ModelError::NeedsF32Weights { .. } => ApiError::invalid("model", e.to_string()),
            e => ApiError::internal(format!("explain failed: {e}")),
        })?;
        keep_selected_attention(&mut explanation, &req.layers, &req.heads);
        // Serialised here, off the executor and while the slot is held: the answer is the large allocation.
        serde_json::to_vec(&explanation).map_err(|e| ApiError::internal(format!("cannot write the explanation: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("explain panicked: {e}")))??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Empties the attention maps of layers and heads not selected (the lists keep their length, so that
/// `probs[layer][head]` still indexes by layer and head).
fn keep_selected_attention(explanation: &mut Explanation, layers: &[bool], heads: &[bool]) {
    for (layer, &keep_layer) in explanation.attention.probs.iter_mut().zip(layers) {
        for (head, &keep_head) in layer.iter_mut().zip(heads) {
            if !(keep_layer && keep_head) {
                *head = Vec::new();
            }
        }
    }
}
