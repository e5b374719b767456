//! Reading and validating request bodies. Fields are read one by one from the JSON object so that every
//! error names the field at fault (`param`), as the OpenAI API does.

use crate::engine::Job;
use crate::error::ApiError;
use lushan_model::{ModelError, Penalties, Sampling};
use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::chat::{self, Message, Role};
use serde_json::{Map, Value};

/// Most choices (`n` × prompts) one request may ask for.
pub const MAX_CHOICES: usize = 8;
/// Most alternatives per token for `logprobs` (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 5;
/// Most alternatives per token for chat `top_logprobs` (OpenAI's limit).
pub const MAX_CHAT_TOP_LOGPROBS: usize = 20;

/// Parses a body: invalid UTF-8 and malformed JSON are 400s; it must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_body(format!("the body is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_body("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_body(format!("malformed JSON body: {e}"))),
    }
}

fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub fn get_f64(map: &Map<String, Value>, key: &'static str) -> Result<Option<f64>, ApiError> {
    present(map, key)
        .map(|v| v.as_f64().ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a number"))))
        .transpose()
}

pub fn get_u64(map: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    present(map, key)
        .map(|v| {
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be an integer")))
        })
        .transpose()
}

pub fn get_usize(map: &Map<String, Value>, key: &'static str) -> Result<Option<usize>, ApiError> {
    present(map, key)
        .map(|v| {
            v.as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be an integer ≥ 0")))
        })
        .transpose()
}

pub fn get_bool(map: &Map<String, Value>, key: &'static str) -> Result<bool, ApiError> {
    present(map, key)
        .map(|v| v.as_bool().ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be true or false"))))
        .transpose()
        .map(|b| b.unwrap_or(false))
}

/// A sampling setting the model crate refused, as a 400 naming the API parameter (the same name).
fn setting_error(e: ModelError) -> ApiError {
    match e {
        ModelError::InvalidSampling { field, reason } => ApiError::invalid(field, format!("`{field}` {reason}")),
        other => ApiError::bad_body(other.to_string()),
    }
}

/// Checks `model` against the one model served (absent is fine).
pub fn check_model(map: &Map<String, Value>, model_id: &str) -> Result<(), ApiError> {
    match present(map, "model") {
        None => Ok(()),
        Some(Value::String(m)) if m == model_id => Ok(()),
        Some(Value::String(m)) => {
            Err(ApiError::invalid("model", format!("the model `{m}` does not exist; this server has `{model_id}`"))
                .with_status(axum::http::StatusCode::NOT_FOUND)
                .with_code("model_not_found"))
        }
        Some(_) => Err(ApiError::invalid("model", "`model` must be a string")),
    }
}

/// The settings both completion routes share, before the prompt is known.
#[derive(Debug, Clone)]
pub struct Common {
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub n: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub penalties: Penalties,
    /// Token ids that end a completion without being part of its text (set by the route, not the request).
    pub stop_tokens: Vec<u32>,
    /// Drop one space at the start of the text (chat: the template writes a reply as ` {content}`).
    pub trim_leading_space: bool,
}

pub fn common(map: &Map<String, Value>) -> Result<Common, ApiError> {
    let number = |key: &'static str| -> Result<Option<f32>, ApiError> { Ok(get_f64(map, key)?.map(|x| x as f32)) };
    // The model crate checks the settings (one validation for the CLI and the API); its field names are the
    // API's parameter names.
    let sampling = Sampling {
        temperature: number("temperature")?.unwrap_or(1.0),
        top_k: get_usize(map, "top_k")?,
        top_p: number("top_p")?,
        repetition_penalty: number("repetition_penalty")?.unwrap_or(1.0),
    };
    sampling.validate().map_err(setting_error)?;
    let penalties = Penalties {
        presence: number("presence_penalty")?.unwrap_or(0.0),
        frequency: number("frequency_penalty")?.unwrap_or(0.0),
    };
    penalties.validate().map_err(setting_error)?;
    let n = get_usize(map, "n")?.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_CHOICES}, got {n}")));
    }
    let stop = match present(map, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid("stop", "`stop` must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "`stop` must be a string or a list of strings")),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    if stop.len() > 4 {
        return Err(ApiError::invalid("stop", "at most 4 stop strings"));
    }
    let max_tokens = match get_usize(map, "max_tokens")? {
        Some(m) => Some(m),
        None => get_usize(map, "max_completion_tokens")?,
    };
    Ok(Common {
        max_tokens,
        sampling,
        n,
        stop,
        seed: get_u64(map, "seed")?,
        stream: get_bool(map, "stream")?,
        penalties,
        stop_tokens: Vec::new(),
        trim_leading_space: false,
    })
}

/// The prompts of `/v1/completions`: a string, a list of strings, a token list or a list of token lists.
/// Returns each prompt's ids and text.
pub fn prompts(map: &Map<String, Value>, tokenizer: &Tokenizer) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let bad = || ApiError::invalid("prompt", "`prompt` must be a string, a list of strings, or token ids");
    let value = present(map, "prompt").ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    let from_text = |s: &str| -> Result<(Vec<u32>, String), ApiError> {
        let mut ids =
            tokenizer.encode(s).map_err(|e| ApiError::invalid("prompt", format!("cannot encode the prompt: {e}")))?;
        // An empty prompt starts from `<|endoftext|>` where the vocabulary has it (as OpenAI's models do).
        if ids.is_empty()
            && let Some(eot) = tokenizer.end_of_text()
        {
            ids.push(eot);
        }
        Ok((ids, s.to_string()))
    };
    let from_ids = |items: &[Value]| -> Result<(Vec<u32>, String), ApiError> {
        let ids = items
            .iter()
            .map(|v| v.as_u64().and_then(|u| u32::try_from(u).ok()).ok_or_else(bad))
            .collect::<Result<Vec<u32>, _>>()?;
        let text = tokenizer.decode(&ids).map_err(|e| ApiError::invalid("prompt", format!("invalid token id: {e}")))?;
        Ok((ids, text))
    };
    let list = match value {
        Value::String(s) => vec![from_text(s)?],
        Value::Array(items) if items.is_empty() => return Err(ApiError::invalid("prompt", "`prompt` is empty")),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![from_ids(items)?],
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => from_text(s),
                Value::Array(ids) => from_ids(ids),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    Ok(list)
}

/// The chat `messages`: roles `system` / `developer` / `user` / `assistant`, content a string or a list of
/// text parts (joined); `null` content is empty. Errors name `messages` and the message at fault.
pub fn chat_messages(map: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let bad = |m: String| ApiError::invalid("messages", m);
    let messages = match present(map, "messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return Err(bad("`messages` must be a non-empty list".into())),
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.get("role") {
                Some(Value::String(r)) => r.parse::<Role>().map_err(|e| bad(format!("message {i}: {e}")))?,
                _ => return Err(bad(format!("message {i} needs a `role` string"))),
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad(format!("message {i}: content parts must be text parts")))
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(Value::Null) | None => String::new(),
                _ => return Err(bad(format!("message {i}: `content` must be a string or a list of text parts"))),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// The prompt ids of a chat request: its messages checked for a reply (an optional system message, then
/// user and assistant turns alternating, ending with user) and rendered by the one chat template
/// ([`chat::encode_chat`], the same ids `lushan chat` builds and training builds before a reply).
pub fn chat_prompt_ids(map: &Map<String, Value>, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    let messages = chat_messages(map)?;
    chat::validate_for_generation(&messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let tokens = chat::encode_chat(tokenizer, &messages, true)
        .map_err(|e| ApiError::invalid("messages", format!("cannot encode the conversation: {e}")))?;
    Ok(tokens.ids)
}

/// The extra stop string of chat completions: the template's next user turn (`\nUser:`), in case a model
/// writes one instead of ending its turn.
pub fn chat_stop() -> String {
    format!("\n{}", Role::User.label())
}

/// Checks ids and the context, and builds one job per choice (`n` per prompt, seeds `seed + index`).
pub fn jobs(
    prompts: &[Vec<u32>],
    common: &Common,
    default_max_tokens: Option<usize>,
    logprobs: Option<usize>,
    block_size: usize,
    vocab_size: usize,
    prompt_param: &'static str,
) -> Result<Vec<Job>, ApiError> {
    if prompts.len().checked_mul(common.n).is_none_or(|choices| choices > MAX_CHOICES) {
        return Err(ApiError::invalid("n", format!("at most {MAX_CHOICES} choices (prompts × n) per request")));
    }
    let base_seed = common.seed.unwrap_or_else(random_seed);
    let mut jobs = Vec::new();
    for (p, ids) in prompts.iter().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::invalid(prompt_param, "the prompt has no tokens"));
        }
        if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab_size) {
            return Err(ApiError::invalid(
                prompt_param,
                format!("token id {id} at {i} is beyond the vocabulary of {vocab_size}"),
            ));
        }
        let room = block_size.saturating_sub(ids.len());
        let max_tokens = common.max_tokens.or(default_max_tokens).unwrap_or(room);
        if ids.len().checked_add(max_tokens).is_none_or(|total| total > block_size) {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "the prompt has {} tokens and max_tokens is {max_tokens}: together they exceed the model's context of {block_size}",
                    ids.len()
                ),
            ));
        }
        for j in 0..common.n {
            let index = (p * common.n + j) as u64;
            jobs.push(Job {
                prompt: ids.clone(),
                max_tokens,
                sampling: common.sampling.clone(),
                seed: base_seed.wrapping_add(index),
                penalties: common.penalties,
                stop: common.stop.clone(),
                stop_tokens: common.stop_tokens.clone(),
                trim_leading_space: common.trim_leading_space,
                logprobs,
            });
        }
    }
    Ok(jobs)
}

fn random_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_nanos() as u64) ^ 0x9E37_79B9_7F4A_7C15
}
