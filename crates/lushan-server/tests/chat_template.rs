#![allow(clippy::unwrap_used)] // tests may unwrap
//! `/v1/chat/completions` prompts with the one chat template (`lushan_tokenizer::chat`): the served prompt
//! ids are exactly the ids training puts before the reply, a reply ends at the end-of-turn id without writing
//! it, and malformed conversations are 400s naming `messages` and the message at fault.

mod common;

use common::*;
use lushan_model::{Gpt, ModelConfig};
use lushan_server::ServerOptions;
use lushan_server::request::chat_prompt_ids;
use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::chat::{self, Message};
use serde_json::{Map, Value, json};

fn history() -> Vec<Message> {
    vec![
        Message::system("Be brief."),
        Message::user("Hi!"),
        Message::assistant("Hello, I am here."),
        Message::user("Who are you?"),
    ]
}

fn as_json(messages: &[Message]) -> Value {
    // `developer` is the system role by its newer OpenAI name; content may come as text parts.
    let list: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| match (i, m.role.as_str()) {
            (0, "system") => json!({"role": "developer", "content": m.content}),
            (1, _) => json!({"role": m.role.as_str(), "content": [{"type": "text", "text": m.content}]}),
            _ => json!({"role": m.role.as_str(), "content": m.content}),
        })
        .collect();
    Value::Array(list)
}

fn body(messages: &[Message]) -> Map<String, Value> {
    json!({"messages": as_json(messages)}).as_object().unwrap().clone()
}

#[test]
fn served_prompt_ids_are_the_training_ids_before_the_reply() {
    for tokenizer in [tokenizer(), Tokenizer::gpt2().unwrap()] {
        let mut conversation = history();
        conversation.push(Message::assistant("A tiny model."));
        chat::validate_for_training(&conversation).unwrap();
        let trained = chat::encode_chat(&tokenizer, &conversation, false).unwrap();
        let served = chat_prompt_ids(&body(&history()), &tokenizer).unwrap();
        assert!(served.len() < trained.ids.len());
        assert_eq!(served, trained.ids[..served.len()], "{}", tokenizer.describe());
        // The reply is what training learns right after the prompt.
        assert!(!trained.trained[served.len() - 1] && trained.trained[served.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_continues_exactly_the_training_prefix_and_ends_at_the_end_of_turn() {
    let s = small().await;
    let tok = tokenizer();
    let prefix = chat::encode_chat(&tok, &history(), true).unwrap().ids;
    let newline = chat::end_of_turn(&tok).unwrap();
    assert_eq!(tok.decode(&[newline]).unwrap(), "\n");
    let mut stopped = 0;
    for seed in 0..12u64 {
        let chat = json!({"messages": as_json(&history()), "max_tokens": 40, "temperature": 1, "seed": seed});
        let (status, reply) = post(s.addr, "/v1/chat/completions", chat).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["usage"]["prompt_tokens"], prefix.len());
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
        let finish = reply["choices"][0]["finish_reason"].as_str().unwrap();
        // The same tokens as a plain completion of the training prefix (same seed, same sampler), which
        // does not stop at the newline: the reply is that text up to the end of turn, its leading space dropped.
        let plain = json!({"prompt": prefix, "max_tokens": 40, "temperature": 1, "seed": seed});
        let (status, completion) = post(s.addr, "/v1/completions", plain).await;
        assert_eq!(status, 200, "{completion}");
        let raw = completion["choices"][0]["text"].as_str().unwrap();
        match raw.find('\n') {
            Some(end) => {
                let turn = &raw[..end];
                assert_eq!((content, finish), (turn.strip_prefix(' ').unwrap_or(turn), "stop"), "seed {seed}: {raw:?}");
                // Every character is a token; the end-of-turn newline is counted but not written.
                assert_eq!(reply["usage"]["completion_tokens"], end + 1, "seed {seed}");
                stopped += 1;
            }
            None => assert_eq!((content, finish), (raw.strip_prefix(' ').unwrap_or(raw), "length"), "seed {seed}"),
        }
    }
    assert!(stopped > 0, "no seed ended its turn within 40 tokens: the end-of-turn stop went untested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt2_replies_drop_the_templates_space_and_stream_the_same_text() {
    // A random model over GPT-2's vocabulary: replies are noise, but the ids, the text and the stream must agree.
    let tok = Tokenizer::gpt2().unwrap();
    let model = Gpt::new(ModelConfig::new(tok.vocab_size(), 64, 1, 2, 16), 3).unwrap();
    let s = serve(model, tok.clone(), ServerOptions::new("bpe")).await;
    let messages = vec![Message::user("Hi!")];
    let prefix = chat::encode_chat(&tok, &messages, true).unwrap().ids;
    let mut spaced = 0;
    for seed in 0..8u64 {
        let req = json!({"messages": as_json(&messages), "max_tokens": 6, "seed": seed});
        let (status, reply) = post(s.addr, "/v1/chat/completions", req.clone()).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["usage"]["prompt_tokens"], prefix.len());
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
        // The template writes a reply as ` {content}`: the space is the template's, not the content's, so a
        // client that sends the reply back gets the training ids again.
        let plain = json!({"prompt": prefix, "max_tokens": 6, "seed": seed});
        let (_, completion) = post(s.addr, "/v1/completions", plain).await;
        let raw = completion["choices"][0]["text"].as_str().unwrap();
        assert_eq!(content, raw.strip_prefix(' ').unwrap_or(raw), "seed {seed}");
        spaced += usize::from(raw.starts_with(' '));
        let mut streamed = req;
        streamed["stream"] = json!(true);
        let (status, text) = send(s.addr, "POST", "/v1/chat/completions", &[], streamed.to_string().as_bytes()).await;
        assert_eq!(status, 200);
        let deltas: String = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| {
                let event: Value = serde_json::from_str(e).unwrap();
                event["choices"][0]["delta"]["content"].as_str().map(String::from)
            })
            .collect();
        assert_eq!(deltas, content, "seed {seed}");
    }
    assert!(spaced > 0, "no reply started with a space: the trimming went untested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_conversations_name_the_message_and_what_was_expected() {
    let s = small().await;
    let cases = [
        (json!([]), "non-empty"),
        (json!([{"role": "tool", "content": "x"}]), "message 0: unknown role \"tool\""),
        (json!([{"content": "x"}]), "message 0 needs a `role`"),
        (json!([{"role": "user", "content": 7}]), "message 0: `content` must be"),
        (json!([{"role": "user", "content": [{"type": "image_url"}]}]), "message 0: content parts"),
        (json!([{"role": "assistant", "content": "a"}]), "message 0 has role \"assistant\""),
        (
            json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            "message 1 has role \"user\"; expected an assistant message",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
            "message 1 (the last) has role \"assistant\"; a conversation to reply to must end with a user message",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}]),
            "message 2 has role \"system\"; expected a system message only as the first message",
        ),
        (json!([{"role": "system", "content": "s"}]), "only a system message"),
        (json!([{"role": "user", "content": "€ is not in the vocabulary"}]), "cannot encode the conversation"),
    ];
    for (messages, needle) in cases {
        let (status, resp) = post(s.addr, "/v1/chat/completions", json!({"messages": messages})).await;
        assert_eq!((status, resp["error"]["param"].as_str()), (400, Some("messages")), "{messages} → {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{messages}: {message:?} should contain {needle:?}");
    }
}
