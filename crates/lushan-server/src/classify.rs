//! `POST /classify` (also `/predict`): text classification with a classifier checkpoint, in the shape of
//! Hugging Face text-embeddings-inference's `/predict`.
//!
//! Request: `{"inputs": "text" | ["text", …], "raw_scores": false, "truncate": false}`. Response for one text:
//! `[{"label": "spam", "score": 0.99}, …]`, every label, highest score first; for a list, one such list per
//! text. `raw_scores: true` gives the head's logits instead of probabilities. A text longer than the context
//! is a 400 naming `inputs` unless `truncate: true`, which keeps its first `block_size` tokens (as training
//! does).

use crate::AppState;
use crate::error::ApiError;
use crate::request;
use crate::routes::read_body;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use lushan_model::{Head, classify_batch};
use serde_json::{Value, json};
use std::sync::Arc;

/// Most texts one request may carry (text-embeddings-inference's default `max_client_batch_size`).
pub const MAX_INPUTS: usize = 32;

pub(crate) async fn classify(State(st): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let map = read_body(&st, body).await?;
    request::check_model(&map, &st.options.model_id)?;
    let labels = match &st.model.config.head {
        Head::Classifier { labels, .. } => labels.clone(),
        Head::LanguageModel => {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "the model `{}` is a language model; /classify needs a classifier checkpoint (train one with \
                     `lushan train --task classify`); use /v1/completions or /v1/chat/completions",
                    st.options.model_id
                ),
            ));
        }
    };
    let (texts, single) = match map.get("inputs") {
        Some(Value::String(text)) => (vec![text.as_str()], true),
        Some(Value::Array(items)) => {
            let texts = items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| ApiError::invalid("inputs", "`inputs` must hold strings")))
                .collect::<Result<Vec<_>, _>>()?;
            (texts, false)
        }
        None | Some(Value::Null) => return Err(ApiError::invalid("inputs", "`inputs` is required")),
        Some(_) => return Err(ApiError::invalid("inputs", "`inputs` must be a string or a list of strings")),
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("inputs", "`inputs` is an empty list"));
    }
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "inputs",
            format!("`inputs` has {} texts; at most {MAX_INPUTS} per request", texts.len()),
        ));
    }
    let raw_scores = request::get_bool(&map, "raw_scores")?;
    let truncate = request::get_bool(&map, "truncate")?;
    let block = st.model.config.block_size;
    let mut sequences = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let ids = st
            .tokenizer
            .encode(text)
            .map_err(|e| ApiError::invalid("inputs", format!("cannot encode input {i}: {e}")))?;
        if ids.is_empty() {
            return Err(ApiError::invalid("inputs", format!("input {i} is empty: it has no tokens to classify")));
        }
        if ids.len() > block && !truncate {
            return Err(ApiError::invalid(
                "inputs",
                format!(
                    "input {i} has {} tokens; the model's context is {block}: shorten it, or send \
                     `\"truncate\": true` to classify its first {block} tokens",
                    ids.len()
                ),
            ));
        }
        sequences.push(ids);
    }
    let permit = st.queue_slot()?;
    let state = st.clone();
    let classified = tokio::task::spawn_blocking(move || classify_batch(&state.model, &sequences))
        .await
        .map_err(|e| ApiError::internal(format!("classification panicked: {e}")))?
        .map_err(|e| ApiError::internal(format!("classification failed: {e}")))?;
    drop(permit);
    let scores = if raw_scores { &classified.logits } else { &classified.probabilities };
    let mut ranked: Vec<Value> = scores.iter().map(|row| ranked_labels(&labels, row)).collect();
    let body = if single { ranked.pop().unwrap_or_default() } else { Value::Array(ranked) };
    Ok(axum::Json(body).into_response())
}

/// `[{"label", "score"}, …]` for every label, highest score first (ties in label order).
fn ranked_labels(labels: &[String], scores: &[f32]) -> Value {
    let mut order: Vec<usize> = (0..scores.len().min(labels.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Value::Array(order.into_iter().map(|i| json!({"label": labels[i], "score": scores[i]})).collect())
}
