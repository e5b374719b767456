//! The one chat template: used to fine-tune on conversations, by the server's `/v1/chat/completions` and by
//! `lushan chat`, so a model is always prompted exactly the way it was trained.
//!
//! # The template
//!
//! A conversation is rendered turn by turn:
//!
//! | message | rendered as |
//! |---|---|
//! | system (`"system"` or `"developer"`) | `System: {content}\n` |
//! | user | `User: {content}\n` |
//! | assistant | `Assistant: {content}` END-OF-TURN, then `\n` unless END-OF-TURN is itself the newline |
//! | generation prompt (serving) | `Assistant:` — the model then writes ` {content}` and END-OF-TURN |
//!
//! END-OF-TURN is a token id, never text: the tokenizer's `<|endoftext|>` when it has one
//! ([`Tokenizer::end_of_text`]), otherwise the id of `\n` (character-level tokenizers). The `\n` after an
//! assistant turn separates it from what follows, so it is written only when another turn or the
//! generation prompt follows; a conversation that ends with an assistant turn ends with END-OF-TURN.
//!
//! Example (GPT-2, END-OF-TURN = `<|endoftext|>`):
//!
//! ```text
//! System: Be brief.
//! User: Hi
//! Assistant: Hello!<|endoftext|>
//! User: Who are you?
//! Assistant:
//! ```
//!
//! # Token ids and the loss mask
//!
//! [`encode_chat`] encodes in segments — all text up to and including `Assistant:`, then ` {content}`, then
//! the END-OF-TURN id — so that the tokens of an assistant reply never merge with the template around them.
//! That makes the loss mask exact (`trained` is true for each reply's ` {content}` tokens and its END-OF-TURN:
//! TRL's assistant-only loss) and makes the ids of a served prompt for a history a prefix of the training
//! ids of that history plus a reply, by construction.
//!
//! Message contents are encoded as plain text: `<|endoftext|>` typed by a user is text, not END-OF-TURN.
//! With a character-level tokenizer END-OF-TURN is `\n`, so a reply containing a newline ends there when
//! served; keep replies on one line for such models.

use std::fmt;
use std::str::FromStr;

use crate::{Tokenizer, TokenizerError};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The name used in JSON (`"system"`, `"user"`, `"assistant"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// The label written before the content (`System:`, `User:`, `Assistant:`).
    pub fn label(self) -> &'static str {
        match self {
            Role::System => "System:",
            Role::User => "User:",
            Role::Assistant => "Assistant:",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ChatError;

    /// `"system"` and `"developer"` (OpenAI's newer name for it) are both the system role.
    fn from_str(role: &str) -> Result<Self> {
        match role {
            "system" | "developer" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            _ => Err(ChatError::UnknownRole { role: role.to_owned() }),
        }
    }
}

impl TryFrom<String> for Role {
    type Error = ChatError;

    fn try_from(role: String) -> Result<Self> {
        role.parse()
    }
}

impl From<Role> for &'static str {
    fn from(role: Role) -> Self {
        role.as_str()
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Token ids of a rendered conversation and, for each id, whether the loss is taken on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    /// Same length as `ids`; true exactly for each assistant turn's ` {content}` tokens and its END-OF-TURN.
    pub trained: Vec<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("unknown role {role:?}: expected \"system\", \"developer\", \"user\" or \"assistant\"")]
    UnknownRole { role: String },

    #[error(
        "the tokenizer has neither <|endoftext|> nor a single token for \"\\n\", so a chat turn cannot be \
         ended; use a tokenizer with one of them"
    )]
    NoEndOfTurn,

    #[error("the conversation has no messages; expected {expected}")]
    Empty { expected: &'static str },

    #[error("message {index} has role \"{found}\"; expected {expected}")]
    Misplaced { index: usize, found: Role, expected: &'static str },

    #[error("message {index} (the last) has role \"{found}\"; {expected}")]
    WrongEnd { index: usize, found: Role, expected: &'static str },

    #[error("the conversation has only a system message; expected a user message after it (index 1)")]
    OnlySystem,

    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// The END-OF-TURN id: `<|endoftext|>` when the tokenizer has it, otherwise the id of `\n`.
pub fn end_of_turn(tok: &Tokenizer) -> Result<u32> {
    if let Some(id) = tok.end_of_text() {
        return Ok(id);
    }
    newline_id(tok).ok_or(ChatError::NoEndOfTurn)
}

/// The id of `\n` when it is a single token.
fn newline_id(tok: &Tokenizer) -> Option<u32> {
    match tok {
        Tokenizer::Char(t) => t.id_of('\n'),
        // A byte-level BPE always has a token for every byte; `encode` is the way to its id.
        Tokenizer::Bpe(_) => match tok.encode("\n").ok()?.as_slice() {
            &[id] => Some(id),
            _ => None,
        },
    }
}

/// Encodes a conversation with the template (see the module docs); with `generation_prompt` it ends with
/// `Assistant:` for the model to continue. Callers check the turn order first ([`validate_for_training`],
/// [`validate_for_generation`]); this function renders whatever order it is given.
pub fn encode_chat(tok: &Tokenizer, messages: &[Message], generation_prompt: bool) -> Result<ChatTokens> {
    let eot = end_of_turn(tok)?;
    // When END-OF-TURN is the newline it already separates the turns.
    let eot_is_newline = newline_id(tok) == Some(eot);
    let mut out = ChatTokens::default();
    // Untrained template text is gathered and encoded as one segment, so `User: …\nAssistant:` gets the
    // same ids whether it is followed by a reply (training) or by nothing (serving).
    let mut pending = String::new();
    let mut separator_owed = false;
    for message in messages {
        if separator_owed {
            pending.push('\n');
            separator_owed = false;
        }
        pending.push_str(message.role.label());
        match message.role {
            Role::System | Role::User => {
                pending.push(' ');
                pending.push_str(&message.content);
                pending.push('\n');
            }
            Role::Assistant => {
                push_segment(tok, &mut out, &pending, false)?;
                pending.clear();
                let mut reply = String::with_capacity(message.content.len() + 1);
                reply.push(' ');
                reply.push_str(&message.content);
                push_segment(tok, &mut out, &reply, true)?;
                out.ids.push(eot);
                out.trained.push(true);
                separator_owed = !eot_is_newline;
            }
        }
    }
    if generation_prompt {
        if separator_owed {
            pending.push('\n');
        }
        pending.push_str(Role::Assistant.label());
    }
    push_segment(tok, &mut out, &pending, false)?;
    Ok(out)
}

fn push_segment(tok: &Tokenizer, out: &mut ChatTokens, text: &str, trained: bool) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let ids = tok.encode(text)?;
    out.trained.resize(out.trained.len() + ids.len(), trained);
    out.ids.extend(ids);
    Ok(())
}

/// Renders the template as text, END-OF-TURN written as `end_of_turn_text` (for display and the docs;
/// training and serving use [`encode_chat`]).
pub fn render_chat(messages: &[Message], generation_prompt: bool, end_of_turn_text: &str) -> String {
    let eot_is_newline = end_of_turn_text == "\n";
    let mut text = String::new();
    let mut separator_owed = false;
    for message in messages {
        if separator_owed {
            text.push('\n');
            separator_owed = false;
        }
        text.push_str(message.role.label());
        text.push(' ');
        text.push_str(&message.content);
        match message.role {
            Role::System | Role::User => text.push('\n'),
            Role::Assistant => {
                text.push_str(end_of_turn_text);
                separator_owed = !eot_is_newline;
            }
        }
    }
    if generation_prompt {
        if separator_owed {
            text.push('\n');
        }
        text.push_str(Role::Assistant.label());
    }
    text
}

/// A conversation to train on: an optional leading system message, then user and assistant messages
/// strictly alternating, starting with user and ending with assistant.
pub fn validate_for_training(messages: &[Message]) -> Result<()> {
    validate(messages, Role::Assistant)
}

/// A conversation to reply to: the same order as [`validate_for_training`], but ending with user.
pub fn validate_for_generation(messages: &[Message]) -> Result<()> {
    validate(messages, Role::User)
}

fn validate(messages: &[Message], last: Role) -> Result<()> {
    let start_expected = "a system or user message first";
    let Some(first) = messages.first() else {
        return Err(ChatError::Empty { expected: start_expected });
    };
    let start = usize::from(first.role == Role::System);
    if start == 1 && messages.len() == 1 {
        return Err(ChatError::OnlySystem);
    }
    for (index, message) in messages.iter().enumerate().skip(start) {
        // Turns after the optional system message alternate user, assistant, user, …
        let (want, expected) = if (index - start) % 2 == 0 {
            (Role::User, if index == 0 { start_expected } else { "a user message (turns alternate user, assistant)" })
        } else {
            (Role::Assistant, "an assistant message (turns alternate user, assistant)")
        };
        if message.role != want {
            let expected =
                if message.role == Role::System { "a system message only as the first message" } else { expected };
            return Err(ChatError::Misplaced { index, found: message.role, expected });
        }
    }
    let index = messages.len() - 1;
    let found = messages[index].role;
    if found != last {
        let expected = match last {
            Role::Assistant => "a conversation to train on must end with an assistant message (the reply to learn)",
            _ => "a conversation to reply to must end with a user message",
        };
        return Err(ChatError::WrongEnd { index, found, expected });
    }
    Ok(())
}

/// The template writes a reply as ` {content}`: as a generated reply streams, its first text loses that one
/// leading space, so the reply shown (and sent back as history) is `content`. Later text passes unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyStart {
    done: bool,
}

impl ReplyStart {
    /// `piece` without the template's space if it is the reply's first text (an empty piece is not text yet).
    pub fn strip<'p>(&mut self, piece: &'p str) -> &'p str {
        if self.done || piece.is_empty() {
            return piece;
        }
        self.done = true;
        piece.strip_prefix(' ').unwrap_or(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CharTokenizer;

    fn char_tok() -> Tokenizer {
        Tokenizer::Char(
            CharTokenizer::from_text("SystemUserAssistant: abcdefghijklmnopqrstuvwxyz!?.\n").expect("vocabulary"),
        )
    }

    fn gpt2() -> Tokenizer {
        Tokenizer::gpt2().expect("bundled GPT-2 tokenizer")
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::system("be brief."),
            Message::user("hi"),
            Message::assistant("hello!"),
            Message::user("who are you?"),
            Message::assistant("a model."),
        ]
    }

    /// The text the trained ids decode to, joined per contiguous run.
    fn trained_text(tok: &Tokenizer, tokens: &ChatTokens) -> Vec<String> {
        let mut runs = Vec::new();
        let mut run = Vec::new();
        for (&id, &trained) in tokens.ids.iter().zip(&tokens.trained) {
            if trained {
                run.push(id);
            } else if !run.is_empty() {
                runs.push(tok.decode(&run).expect("decode"));
                run.clear();
            }
        }
        if !run.is_empty() {
            runs.push(tok.decode(&run).expect("decode"));
        }
        runs
    }

    #[test]
    fn char_template_uses_the_newline_as_end_of_turn() {
        let tok = char_tok();
        assert_eq!(end_of_turn(&tok).expect("eot"), tok.encode("\n").expect("encode")[0]);
        let tokens = encode_chat(&tok, &conversation(), false).expect("encode");
        let text = tok.decode(&tokens.ids).expect("decode");
        assert_eq!(text, "System: be brief.\nUser: hi\nAssistant: hello!\nUser: who are you?\nAssistant: a model.\n");
        assert_eq!(text, render_chat(&conversation(), false, "\n"));
        assert_eq!(trained_text(&tok, &tokens), [" hello!\n", " a model.\n"]);
    }

    #[test]
    fn gpt2_template_ends_turns_with_endoftext() {
        let tok = gpt2();
        assert_eq!(end_of_turn(&tok).expect("eot"), 50256);
        let tokens = encode_chat(&tok, &conversation(), false).expect("encode");
        assert_eq!(tokens.ids.len(), tokens.trained.len());
        let text = tok.decode(&tokens.ids).expect("decode");
        let expected = "System: be brief.\nUser: hi\nAssistant: hello!<|endoftext|>\nUser: who are you?\nAssistant: a model.<|endoftext|>";
        assert_eq!(text, expected);
        assert_eq!(text, render_chat(&conversation(), false, "<|endoftext|>"));
        assert_eq!(trained_text(&tok, &tokens), [" hello!<|endoftext|>", " a model.<|endoftext|>"]);
        assert_eq!(*tokens.ids.last().expect("ids"), 50256);
        // Content that spells <|endoftext|> is text, not END-OF-TURN.
        let sneaky = [Message::user("<|endoftext|>"), Message::assistant("ok")];
        let ids = encode_chat(&tok, &sneaky, false).expect("encode").ids;
        assert_eq!(ids.iter().filter(|&&id| id == 50256).count(), 1);
    }

    #[test]
    fn mask_marks_exactly_the_replies() {
        let tok = gpt2();
        let tokens = encode_chat(&tok, &conversation(), false).expect("encode");
        // Rebuild the expected mask from the segments by hand.
        let enc = |s: &str| tok.encode(s).expect("encode");
        let mut expected = vec![false; enc("System: be brief.\nUser: hi\nAssistant:").len()];
        expected.extend(vec![true; enc(" hello!").len() + 1]);
        expected.extend(vec![false; enc("\nUser: who are you?\nAssistant:").len()]);
        expected.extend(vec![true; enc(" a model.").len() + 1]);
        assert_eq!(tokens.trained, expected);
    }

    #[test]
    fn served_prompt_is_a_prefix_of_the_training_ids() {
        for tok in [gpt2(), char_tok()] {
            let full = conversation();
            for history_len in [2, 4] {
                let history = &full[..history_len];
                let served = encode_chat(&tok, history, true).expect("served");
                validate_for_generation(history).expect("history ends with user");
                let trained = encode_chat(&tok, &full[..=history_len], false).expect("trained");
                validate_for_training(&full[..=history_len]).expect("ends with assistant");
                assert!(trained.ids.len() > served.ids.len());
                assert_eq!(served.ids, trained.ids[..served.ids.len()]);
                assert_eq!(served.trained, trained.trained[..served.ids.len()]);
                assert!(!served.trained[served.ids.len() - 1], "the prompt ends with untrained `Assistant:`");
                assert!(trained.trained[served.ids.len()], "the reply starts right after the prompt");
                let text = tok.decode(&served.ids).expect("decode");
                assert!(text.ends_with("\nAssistant:"), "{text:?}");
            }
        }
        let served = encode_chat(&gpt2(), &[Message::user("hi")], true).expect("served");
        assert_eq!(gpt2().decode(&served.ids).expect("decode"), "User: hi\nAssistant:");
    }

    #[test]
    fn roles_parse_and_serialize() {
        assert_eq!("developer".parse::<Role>().expect("role"), Role::System);
        assert_eq!("assistant".parse::<Role>().expect("role"), Role::Assistant);
        let err = "tool".parse::<Role>().expect_err("unknown role");
        assert!(err.to_string().contains("\"tool\""), "{err}");
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).expect("json");
        assert_eq!(m, Message::user("hi"));
        assert_eq!(serde_json::to_string(&m).expect("json"), r#"{"role":"user","content":"hi"}"#);
        assert!(serde_json::from_str::<Message>(r#"{"role":"bot","content":"hi"}"#).is_err());
    }

    #[test]
    fn validation_names_the_message_and_what_was_expected() {
        let msg = |m: &[Message], training: bool| {
            let r = if training { validate_for_training(m) } else { validate_for_generation(m) };
            r.expect_err("invalid").to_string()
        };
        assert!(msg(&[], true).contains("no messages"));
        assert!(msg(&[Message::system("s")], true).contains("only a system message"));
        let e = msg(&[Message::assistant("a")], true);
        assert!(e.contains("message 0 has role \"assistant\"") && e.contains("system or user"), "{e}");
        let e = msg(&[Message::user("u"), Message::user("u")], true);
        assert!(e.contains("message 1 has role \"user\"") && e.contains("an assistant message"), "{e}");
        let e = msg(&[Message::system("s"), Message::user("u"), Message::system("s")], false);
        assert!(e.contains("message 2 has role \"system\"") && e.contains("only as the first"), "{e}");
        let e = msg(&[Message::user("u"), Message::assistant("a"), Message::user("u")], true);
        assert!(e.contains("message 2 (the last)") && e.contains("end with an assistant"), "{e}");
        let e = msg(&[Message::user("u"), Message::assistant("a")], false);
        assert!(e.contains("message 1 (the last)") && e.contains("end with a user"), "{e}");
        validate_for_training(&conversation()).expect("valid");
        validate_for_generation(&conversation()[..4]).expect("valid");
    }

    #[test]
    fn a_tokenizer_without_end_of_turn_is_an_error() {
        let tok = Tokenizer::Char(CharTokenizer::from_text("abc").expect("vocabulary"));
        assert!(matches!(end_of_turn(&tok), Err(ChatError::NoEndOfTurn)));
        assert!(matches!(encode_chat(&tok, &[Message::user("a")], true), Err(ChatError::NoEndOfTurn)));
    }

    #[test]
    fn only_the_first_text_of_a_reply_loses_the_template_space() {
        let mut start = ReplyStart::default();
        assert_eq!([start.strip(""), start.strip(" Hi"), start.strip(" there")], ["", "Hi", " there"]);
        let mut start = ReplyStart::default();
        assert_eq!([start.strip("Hi"), start.strip(" x")], ["Hi", " x"]);
    }
}
