//! The HTTP routes: request → validated jobs → generation on a blocking thread → JSON or SSE.

use crate::batcher::{Done, Work};
use crate::engine::{self, Collect, Job, Outcome, Sink, TokenLogprob};
use crate::error::ApiError;
use crate::openai::{ChunkFormat, Kind, StreamSink, full_response, logprobs_json, prompt_tokens, sse};
use crate::request::{self, MAX_CHAT_TOP_LOGPROBS, MAX_LOGPROBS};
use crate::{AppState, unix_time};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lushan_model::{Activations, Mode};
use lushan_tokenizer::chat;
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/classify", post(crate::classify::classify))
        .route("/predict", post(crate::classify::classify))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .merge(crate::playground::routes(state.clone(), auth))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|| async {
            ApiError::invalid("path", "no such route").with_status(StatusCode::NOT_FOUND).with_code("not_found")
        })
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Marks a response whose request the generation code logs itself (with token counts, when it ends).
#[derive(Clone, Copy)]
struct SelfLogged;

/// One line per request on stderr for every request the generation code does not log itself.
async fn log_request(State(st): St, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    if response.extensions().get::<SelfLogged>().is_none() {
        let id = format!("req-{}", st.metrics.requests.fetch_add(1, Ordering::Relaxed));
        let ms = started.elapsed().as_millis();
        eprintln!("{id} {method} {path} status={} ms={ms}", response.status().as_u16());
    }
    response
}

/// `Authorization: Bearer KEY` on `/v1/*` when the server has a key (compared in constant time).
async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.options.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            let e = ApiError::bad_body("invalid or missing API key (Authorization: Bearer KEY)")
                .with_status(StatusCode::UNAUTHORIZED)
                .with_code("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn read_body(st: &AppState, body: Body) -> Result<Map<String, Value>, ApiError> {
    let limit = st.options.max_body_bytes;
    let deadline = st.options.body_timeout;
    // A whole-body deadline, not one per read: a client trickling a byte at a time is cut off too.
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        ApiError::invalid("body", format!("the request body did not arrive within {} s", deadline.as_secs_f64()))
            .with_status(StatusCode::REQUEST_TIMEOUT)
    })?;
    let bytes = read.map_err(|_| {
        ApiError::invalid("body", format!("the request body is larger than {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    })?;
    request::parse_object(&bytes)
}

async fn models(State(st): St) -> Response {
    let model = json!({
        "id": st.options.model_id, "object": "model", "created": st.created, "owned_by": "lushan",
        "max_model_len": st.model.config.block_size,
    });
    axum::Json(json!({"object": "list", "data": [model]})).into_response()
}

async fn tokenize(State(st): St, body: Body) -> Result<Response, ApiError> {
    let map = read_body(&st, body).await?;
    let text = match map.get("prompt").or_else(|| map.get("text")) {
        Some(Value::String(s)) => s,
        _ => return Err(ApiError::invalid("prompt", "`prompt` (or `text`) must be a string")),
    };
    let tokens = st.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    let body = json!({"count": tokens.len(), "tokens": tokens, "max_model_len": st.model.config.block_size});
    Ok(axum::Json(body).into_response())
}

async fn detokenize(State(st): St, body: Body) -> Result<Response, ApiError> {
    let map = read_body(&st, body).await?;
    let bad = || ApiError::invalid("tokens", "`tokens` must be a list of token ids");
    let ids = match map.get("tokens") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().and_then(|u| u32::try_from(u).ok()).ok_or_else(bad))
            .collect::<Result<Vec<u32>, _>>()?,
        _ => return Err(bad()),
    };
    let text = st.tokenizer.decode(&ids).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(axum::Json(json!({"prompt": text})).into_response())
}

async fn completions(State(st): St, body: Body) -> Response {
    let id = format!("cmpl-{}", st.metrics.requests.fetch_add(1, Ordering::Relaxed));
    let started = Instant::now();
    let result = async {
        let map = read_body(&st, body).await?;
        request::check_model(&map, &st.options.model_id)?;
        st.require_language_model()?;
        let mut common = request::common(&map)?;
        common.stop_tokens.extend(st.tokenizer.end_of_text());
        let prompts = request::prompts(&map, &st.tokenizer)?;
        let logprobs = request::get_usize(&map, "logprobs")?;
        if logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return Err(ApiError::invalid("logprobs", format!("`logprobs` must be at most {MAX_LOGPROBS}")));
        }
        let echo = request::get_bool(&map, "echo")?;
        let ids: Vec<Vec<u32>> = prompts.iter().map(|(ids, _)| ids.clone()).collect();
        let cfg = &st.model.config;
        let jobs = request::jobs(&ids, &common, Some(16), logprobs, cfg.block_size, cfg.vocab_size, "prompt")?;
        let prompt_logprobs = match (echo, logprobs) {
            (true, Some(top)) => Some(prompt_token_logprobs(&st, ids, top).await?),
            _ => None,
        };
        let echo = echo.then(|| prompts.iter().map(|(_, t)| t.clone()).collect());
        Ok((jobs, common.n, common.stream, Kind::Text { echo, logprobs, prompt_logprobs }))
    }
    .await;
    dispatch(st, id, started, result).await
}

async fn chat_completions(State(st): St, body: Body) -> Response {
    let id = format!("chatcmpl-{}", st.metrics.requests.fetch_add(1, Ordering::Relaxed));
    let started = Instant::now();
    let result = async {
        let map = read_body(&st, body).await?;
        request::check_model(&map, &st.options.model_id)?;
        st.require_language_model()?;
        let mut common = request::common(&map)?;
        let logprobs = request::get_bool(&map, "logprobs")?;
        let top_logprobs = request::get_usize(&map, "top_logprobs")?;
        if top_logprobs.is_some_and(|n| n > MAX_CHAT_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be at most {MAX_CHAT_TOP_LOGPROBS}"),
            ));
        }
        if top_logprobs.is_some() && !logprobs {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
        }
        let job_logprobs = logprobs.then_some(top_logprobs.unwrap_or(0));
        // The reply ends at the template's end of turn (not written), or where it starts a user turn.
        let end_of_turn = chat::end_of_turn(&st.tokenizer).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        common.stop_tokens.push(end_of_turn);
        common.stop.push(request::chat_stop());
        common.trim_leading_space = true;
        let ids = request::chat_prompt_ids(&map, &st.tokenizer)?;
        let cfg = &st.model.config;
        if ids.len() >= cfg.block_size {
            return Err(ApiError::invalid(
                "messages",
                format!("the conversation has {} tokens; the model's context is {}", ids.len(), cfg.block_size),
            ));
        }
        let jobs = request::jobs(&[ids], &common, None, job_logprobs, cfg.block_size, cfg.vocab_size, "messages")?;
        Ok((jobs, common.n, common.stream, Kind::Chat { logprobs }))
    }
    .await;
    dispatch(st, id, started, result).await
}

type Prepared = Result<(Vec<Job>, usize, bool, Kind), ApiError>;

async fn dispatch(st: Arc<AppState>, id: String, started: Instant, prepared: Prepared) -> Response {
    let result = async {
        let (jobs, n, stream, kind) = prepared?;
        let permit = st.queue_slot()?;
        if stream {
            return Ok(stream_response(st.clone(), id.clone(), started, jobs, n, kind, permit));
        }
        let pending =
            jobs.iter().map(|job| submit(&st, job.clone(), Box::new(Collect))).collect::<Result<Vec<_>, _>>()?;
        let mut outcomes = Vec::with_capacity(pending.len());
        for done in pending {
            outcomes.push(outcome_of(&st, done.await)?);
        }
        drop(permit);
        let body = full_response(&st.options.model_id, &id, &jobs, n, &kind, &outcomes);
        log(&id, StatusCode::OK, prompt_tokens(&jobs, n), outcomes.iter().map(|o| o.completion_tokens).sum(), started);
        Ok(axum::Json(body).into_response())
    }
    .await;
    let mut response = result.unwrap_or_else(|e: ApiError| {
        log(&id, e.status, 0, 0, started);
        e.into_response()
    });
    response.extensions_mut().insert(SelfLogged);
    response
}

/// Hands `job` to the decoding thread; the receiver answers when it ends.
fn submit(st: &AppState, job: Job, sink: Box<dyn Sink + Send>) -> Result<oneshot::Receiver<Done>, ApiError> {
    let (done, receiver) = oneshot::channel();
    let metrics = st.metrics.clone();
    let on_token = Arc::new(move || {
        metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
    });
    let batcher = st.batcher.as_ref().ok_or_else(|| ApiError::internal("this model has no decoding thread"))?;
    batcher
        .submit(Work { job, sink, on_token, done })
        .map_err(|_| ApiError::internal("the decoding thread has stopped"))?;
    Ok(receiver)
}

/// The outcome of a submitted job, counted in the metrics; a failure becomes a 500.
fn outcome_of(st: &AppState, done: Result<Done, oneshot::error::RecvError>) -> Result<Outcome, ApiError> {
    st.metrics.generations_done.fetch_add(1, Ordering::Relaxed);
    let outcome = done
        .map_err(|_| ApiError::internal("the decoding thread dropped the request"))?
        .map_err(|e| ApiError::internal(format!("generation failed: {e}")))?;
    if outcome.cancelled {
        st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    Ok(outcome)
}

/// Log-probabilities of each prompt's tokens after the first (which has none: nothing predicts it), from
/// one full forward pass per prompt, with the `top` most likely alternatives.
async fn prompt_token_logprobs(
    st: &Arc<AppState>,
    prompts: Vec<Vec<u32>>,
    top: usize,
) -> Result<Vec<Vec<TokenLogprob>>, ApiError> {
    let state = st.clone();
    tokio::task::spawn_blocking(move || {
        prompts
            .iter()
            .map(|ids| {
                let cfg = &state.model.config;
                let mut acts = Activations::new(cfg, 1, ids.len())
                    .map_err(|e| ApiError::internal(format!("cannot score the prompt: {e}")))?;
                state
                    .model
                    .forward(&mut acts, ids, None, Mode::Eval)
                    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
                let v = cfg.vocab_size;
                let first = TokenLogprob {
                    token: state.tokenizer.decode(&ids[..1]).unwrap_or_default(),
                    logprob: f32::NAN,
                    top: Vec::new(),
                };
                let rest = ids[1..].iter().enumerate().map(|(i, &tok)| {
                    engine::token_logprobs(&acts.logits[i * v..(i + 1) * v], tok, top, &state.tokenizer)
                });
                Ok(std::iter::once(first).chain(rest).collect())
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt scoring panicked: {e}")))?
}

fn stream_response(
    st: Arc<AppState>,
    id: String,
    started: Instant,
    jobs: Vec<Job>,
    n: usize,
    kind: Kind,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let format = ChunkFormat {
        id: id.clone(),
        model: st.options.model_id.clone(),
        created: unix_time(),
        chat: matches!(kind, Kind::Chat { .. }),
        logprobs: matches!(kind, Kind::Text { logprobs: Some(_), .. } | Kind::Chat { logprobs: true }),
    };
    tokio::spawn(async move {
        let mut pending = Vec::with_capacity(jobs.len());
        let mut status = StatusCode::OK;
        for (index, job) in jobs.iter().enumerate() {
            // The opening chunk: the role for chat, the echoed prompt (with its log-probabilities) for text.
            let mut offset = 0;
            let first = match &kind {
                Kind::Chat { .. } => Some(format.chunk(index, Some(""), true, None, None)),
                Kind::Text { echo: Some(texts), prompt_logprobs, .. } => {
                    let text = texts[index / n.max(1)].as_str();
                    offset = text.chars().count();
                    let lp = prompt_logprobs.as_ref().map(|p| logprobs_json(&p[index / n.max(1)], 0).0);
                    Some(format.chunk(index, Some(text), false, None, lp))
                }
                Kind::Text { echo: None, .. } => None,
            };
            if let Some(first) = first
                && tx.send(sse(&first)).is_err()
            {
                break;
            }
            let sink = StreamSink { tx: tx.clone(), format: format.clone(), index, offset };
            match submit(&st, job.clone(), Box::new(sink)) {
                Ok(done) => pending.push((index, done)),
                Err(e) => {
                    status = e.status;
                    let _ = tx.send(sse(&e.body()));
                    break;
                }
            }
        }
        let mut completion = 0;
        for (index, done) in pending {
            match outcome_of(&st, done.await) {
                Ok(out) if out.cancelled => {
                    completion += out.completion_tokens;
                    status = StatusCode::from_u16(499).unwrap_or(StatusCode::OK);
                }
                Ok(out) => {
                    completion += out.completion_tokens;
                    let last = if format.chat { None } else { Some("") };
                    let _ = tx.send(sse(&format.chunk(index, last, false, Some(out.finish.as_str()), None)));
                }
                Err(e) => {
                    status = e.status;
                    let _ = tx.send(sse(&e.body()));
                }
            }
        }
        // Free the slot before the client hears the end, so that its next request finds it free.
        drop(permit);
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
        log(&id, status, prompt_tokens(&jobs, n), completion, started);
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx)) },
        );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

/// One line per request on stderr: id, status, tokens in and out, milliseconds.
fn log(id: &str, status: StatusCode, prompt: usize, completion: usize, started: Instant) {
    let ms = started.elapsed().as_millis();
    eprintln!("{id} status={} prompt_tokens={prompt} completion_tokens={completion} ms={ms}", status.as_u16());
}
