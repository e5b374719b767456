//! The OpenAI API's response shapes: completion and chat completion bodies, their streamed chunks (SSE),
//! `usage`, and the two `logprobs` formats (legacy completions' and chat's).

use crate::engine::{Job, Outcome, Sink, TokenLogprob};
use crate::unix_time;
use axum::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// What differs between the two completion routes.
#[derive(Clone)]
pub(crate) enum Kind {
    /// `/v1/completions`: prompt texts to echo (when `echo`), `logprobs` count, and with both, the
    /// log-probabilities of each prompt's tokens.
    Text { echo: Option<Vec<String>>, logprobs: Option<usize>, prompt_logprobs: Option<Vec<Vec<TokenLogprob>>> },
    /// `/v1/chat/completions`, with `logprobs: true` when asked for.
    Chat { logprobs: bool },
}

pub(crate) fn prompt_tokens(jobs: &[Job], n: usize) -> usize {
    jobs.iter().step_by(n.max(1)).map(|j| j.prompt.len()).sum()
}

pub(crate) fn usage(jobs: &[Job], n: usize, completion: usize) -> Value {
    let prompt = prompt_tokens(jobs, n);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub(crate) fn full_response(
    model_id: &str,
    id: &str,
    jobs: &[Job],
    n: usize,
    kind: &Kind,
    outcomes: &[Outcome],
) -> Value {
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    let (object, choices): (&str, Vec<Value>) = match kind {
        Kind::Text { echo, logprobs, prompt_logprobs } => {
            let choices = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let prefix = echo.as_ref().map_or("", |texts| texts[i / n.max(1)].as_str());
                    let logprobs = logprobs.map(|_| match prompt_logprobs {
                        Some(prompts) => {
                            let all: Vec<TokenLogprob> =
                                prompts[i / n.max(1)].iter().chain(&o.logprobs).cloned().collect();
                            logprobs_json(&all, 0).0
                        }
                        None => logprobs_json(&o.logprobs, prefix.chars().count()).0,
                    });
                    json!({"index": i, "text": format!("{prefix}{}", o.text), "logprobs": logprobs,
                           "finish_reason": o.finish.as_str()})
                })
                .collect();
            ("text_completion", choices)
        }
        Kind::Chat { logprobs } => {
            let choices = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let lp = logprobs.then(|| chat_logprobs_json(&o.logprobs));
                    json!({"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": lp,
                           "finish_reason": o.finish.as_str()})
                })
                .collect();
            ("chat.completion", choices)
        }
    };
    json!({"id": id, "object": object, "created": unix_time(), "model": model_id, "choices": choices,
           "usage": usage(jobs, n, completion)})
}

/// OpenAI's legacy `logprobs` object for `tokens`, whose text starts at character `start` of the choice's text
/// (after any echo); also returns the offset after them. A token nothing predicts (the first of an echoed
/// prompt) has `null` log-probability and alternatives.
pub(crate) fn logprobs_json(tokens: &[TokenLogprob], start: usize) -> (Value, usize) {
    let mut offset = start;
    let mut offsets = Vec::new();
    for t in tokens {
        offsets.push(offset);
        offset += t.token.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            if t.logprob.is_nan() {
                Value::Null
            } else {
                Value::Object(t.top.iter().map(|(s, lp)| (s.clone(), json!(lp))).collect())
            }
        })
        .collect();
    let logprob = |t: &TokenLogprob| if t.logprob.is_nan() { Value::Null } else { json!(t.logprob) };
    let value = json!({
        "tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    });
    (value, offset)
}

/// The chat API's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
pub(crate) fn chat_logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = Value::Array(t.top.iter().map(|(s, lp)| entry(s, *lp)).collect());
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// How one streamed choice's chunks look.
#[derive(Clone)]
pub(crate) struct ChunkFormat {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) chat: bool,
    /// `Some` when log-probabilities were asked for.
    pub(crate) logprobs: bool,
}

impl ChunkFormat {
    pub(crate) fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        lp: Option<Value>,
    ) -> Value {
        let choice = if self.chat {
            let mut delta = Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish})
        } else {
            json!({"index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish})
        };
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// Sends each piece of one choice's text as an SSE chunk, without ever blocking the decoding thread (the
/// channel is unbounded; a slow reader holds at most its own completion). Dead once the client has gone.
pub(crate) struct StreamSink {
    pub(crate) tx: mpsc::UnboundedSender<Bytes>,
    pub(crate) format: ChunkFormat,
    pub(crate) index: usize,
    /// Characters of the choice's text so far, for `text_offset` (legacy completions).
    pub(crate) offset: usize,
}

impl Sink for StreamSink {
    fn alive(&self) -> bool {
        !self.tx.is_closed()
    }
    fn emit(&mut self, text: &str, logprobs: &[TokenLogprob]) -> bool {
        let lp = self.format.logprobs.then(|| {
            if self.format.chat {
                chat_logprobs_json(logprobs)
            } else {
                let (value, end) = logprobs_json(logprobs, self.offset);
                self.offset = end;
                value
            }
        });
        self.tx.send(sse(&self.format.chunk(self.index, Some(text), false, None, lp))).is_ok()
    }
}

pub(crate) fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}
