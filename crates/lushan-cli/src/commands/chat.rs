//! `lushan chat`: a multi-turn conversation with a checkpoint, like llama.cpp's conversation mode.
//!
//! Each user line is added to the history, the history is rendered with the one chat template
//! (`lushan_tokenizer::chat::encode_chat`, the ids `lushan serve` builds for the same messages and training
//! builds before a reply), and the reply is streamed token by token until the end-of-turn id. When the
//! history no longer fits the context the oldest exchanges are dropped, with a note on stderr.
//!
//! On a terminal it prompts with `> ` and takes `/reset` and `/exit`; with stdin from a pipe or file it
//! reads one user turn per line until the end and writes each reply on its own line (notes go to stderr),
//! so it can be scripted.

use crate::commands::generate::SamplingArgs;
use crate::model_dir;
use anyhow::{Context, Result, bail};
use lushan_model::{FinishReason, Generator, Gpt, Head, Sampling};
use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::chat::{self, Message, ReplyStart};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--temperature -1` reaches the validation that names the flag
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file) of a language model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    dtype: model_dir::DtypeArg,
    /// A system message that starts the conversation (kept when old turns are dropped).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens of one reply.
    #[arg(short = 'n', long, visible_alias = "max-tokens", alias = "n-predict", default_value_t = 256)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load_as(&args.model, args.adapter.as_deref(), args.dtype.dtype)?;
    if let Head::Classifier { labels, .. } = &model.config.head {
        bail!(
            "{} is a classifier checkpoint (labels: {}); `lushan chat` needs a language model. Label texts with \
             `lushan classify --model {}`",
            args.model.display(),
            labels.join(", "),
            args.model.display()
        );
    }
    let sampling = args.sampling.sampling()?;
    anyhow::ensure!(args.max_new_tokens > 0, "--max-new-tokens must be at least 1");
    let end_of_turn = chat::end_of_turn(&tokenizer).context("the checkpoint's tokenizer cannot end a chat turn")?;
    let system = args.system.map(Message::system);
    let mut session = Session {
        model: &model,
        tokenizer: &tokenizer,
        end_of_turn,
        sampling,
        seed: args.sampling.seed,
        max_new_tokens: args.max_new_tokens,
        system,
        history: Vec::new(),
        turns: 0,
    };
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!(
            "chatting with {} (context {} tokens); /reset starts over, /exit or Ctrl-D ends",
            args.model.display(),
            model.config.block_size
        );
    }
    let stdout = std::io::stdout();
    let mut lines = stdin.lock();
    let mut line = String::new();
    for number in 1u64.. {
        if interactive {
            print!("> ");
            std::io::stdout().flush()?;
        }
        line.clear();
        if lines.read_line(&mut line).context("reading stdin")? == 0 {
            if interactive {
                println!(); // Ctrl-D leaves the cursor after the prompt
            }
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.history.clear();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        let mut out = stdout.lock();
        match session.reply(text, &mut out) {
            Ok(()) => {}
            Err(e) if interactive => eprintln!("error: {e:#}"),
            Err(e) => return Err(e.context(format!("stdin line {number}"))),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A conversation in progress.
struct Session<'a> {
    model: &'a Gpt,
    tokenizer: &'a Tokenizer,
    end_of_turn: u32,
    sampling: Sampling,
    seed: u64,
    max_new_tokens: usize,
    system: Option<Message>,
    /// User and assistant turns, alternating, oldest first.
    history: Vec<Message>,
    /// Replies so far (each turn samples with `seed + turns`).
    turns: u64,
}

impl Session<'_> {
    /// Adds the user's `text`, streams the reply to `out` (then a newline) and adds it to the history; on an
    /// error the user's turn is taken back.
    fn reply(&mut self, text: &str, out: &mut impl Write) -> Result<()> {
        self.history.push(Message::user(text));
        match self.generate(out) {
            Ok(reply) => {
                self.history.push(Message::assistant(reply));
                Ok(())
            }
            Err(e) => {
                self.history.pop();
                Err(e)
            }
        }
    }

    /// Streams the reply to the history (which ends with the user's turn) and returns its text.
    fn generate(&mut self, out: &mut impl Write) -> Result<String> {
        let (prompt, dropped) = self.fit_prompt()?;
        let block = self.model.config.block_size;
        if dropped > 0 {
            self.history.drain(..2 * dropped);
            eprintln!(
                "(the conversation no longer fit the model's context of {block} tokens: dropped the oldest \
                 {dropped} exchange{})",
                if dropped == 1 { "" } else { "s" }
            );
        }
        let max_new = self.max_new_tokens.min(block.saturating_sub(prompt.len()));
        let seed = self.seed.wrapping_add(self.turns);
        self.turns += 1;
        let mut generator = Generator::new(self.model, &prompt, self.sampling.clone(), seed, max_new)?
            .with_stop_tokens(&[self.end_of_turn]);
        // A byte-level token can end inside a character: the stream decoder holds it back until complete.
        let mut decoder = self.tokenizer.stream_decoder();
        let mut reply = ReplyText::default();
        while let Some(token) = generator.next_token()? {
            if token == self.end_of_turn {
                break;
            }
            write!(out, "{}", reply.push(&decoder.push(token)?))?;
            out.flush()?;
        }
        writeln!(out, "{}", reply.push(&decoder.finish()))?;
        out.flush()?;
        if generator.finish_reason() == Some(FinishReason::Length) {
            eprintln!("(the reply reached {max_new} tokens and was cut; see --max-new-tokens)");
        }
        Ok(reply.text)
    }

    /// The prompt ids for the history (which ends with the user's turn) and how many of the oldest exchanges
    /// (a user turn and its reply) must go so that a reply of `--max-new-tokens` (at most half the context)
    /// fits after it. The system message always stays.
    fn fit_prompt(&self) -> Result<(Vec<u32>, usize)> {
        let block = self.model.config.block_size;
        let room = self.max_new_tokens.min(block / 2).max(1);
        let mut dropped = 0;
        loop {
            let kept = &self.history[2 * dropped..];
            let messages: Vec<Message> = self.system.iter().chain(kept).cloned().collect();
            let ids = chat::encode_chat(self.tokenizer, &messages, true)
                .context("encoding the conversation with the model's tokenizer")?
                .ids;
            if ids.len().saturating_add(room) <= block || kept.len() < 3 {
                if ids.len() >= block {
                    bail!(
                        "the message is too long: with the template{} it is {} tokens, and the model's context is \
                         {block}",
                        if self.system.is_some() { " and the system message" } else { "" },
                        ids.len()
                    );
                }
                return Ok((ids, dropped));
            }
            dropped += 1;
        }
    }
}

/// A reply's text as it streams: the template writes a reply as ` {content}`, so its first text loses one
/// leading space (the server's chat completions do the same), and the content re-enters the history as
/// training saw it.
#[derive(Default)]
struct ReplyText {
    text: String,
    start: ReplyStart,
}

impl ReplyText {
    /// Appends `piece` and returns what of it to show.
    fn push<'p>(&mut self, piece: &'p str) -> &'p str {
        let piece = self.start.strip(piece);
        self.text.push_str(piece);
        piece
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use lushan_model::ModelConfig;
    use lushan_tokenizer::CharTokenizer;

    #[test]
    fn only_the_first_space_of_a_reply_is_dropped() {
        let mut r = ReplyText::default();
        assert_eq!([r.push(""), r.push(" Hi"), r.push(" there")], ["", "Hi", " there"]);
        assert_eq!(r.text, "Hi there");
        let mut r = ReplyText::default();
        assert_eq!([r.push(" "), r.push(" x")], ["", " x"]);
        let mut r = ReplyText::default();
        assert_eq!(r.push("Hi"), "Hi");
    }

    #[test]
    fn old_exchanges_are_dropped_to_fit_and_the_system_message_stays() {
        let tokenizer =
            Tokenizer::from(CharTokenizer::from_text("SystemUserAssistant: abcdefghijklmnopqrstuvwxyz\n").unwrap());
        let model = Gpt::new(ModelConfig::new(tokenizer.vocab_size(), 96, 1, 1, 8), 1).unwrap();
        let mut session = Session {
            model: &model,
            tokenizer: &tokenizer,
            end_of_turn: chat::end_of_turn(&tokenizer).unwrap(),
            sampling: Sampling::greedy(),
            seed: 0,
            max_new_tokens: 10,
            system: Some(Message::system("be brief")),
            history: Vec::new(),
            turns: 0,
        };
        for (user, reply) in [("one", "first"), ("two", "second"), ("three", "third")] {
            session.history.extend([Message::user(user), Message::assistant(reply)]);
        }
        session.history.push(Message::user("four"));
        let (ids, dropped) = session.fit_prompt().unwrap();
        assert_eq!(dropped, 2);
        session.history.drain(..2 * dropped);
        // 96 - 10 = 86 tokens for the prompt (one per character): all of it is 122, without the oldest exchange
        // 95, without the two oldest 67.
        let expected = [Message::system("be brief")].into_iter().chain(session.history.clone()).collect::<Vec<_>>();
        assert_eq!(session.history[0], Message::user("three"));
        assert_eq!(session.history.len(), 3);
        assert_eq!(ids, chat::encode_chat(&tokenizer, &expected, true).unwrap().ids);
        assert!(ids.len() + 10 <= 96);
        // A message that cannot fit even alone is an error, and the conversation keeps going without it.
        session.history.truncate(2);
        let before = session.history.clone();
        let long = "a".repeat(100);
        let mut out = Vec::new();
        let e = session.reply(&long, &mut out).unwrap_err().to_string();
        assert!(e.contains("too long") && e.contains("96"), "{e}");
        assert!(out.is_empty());
        assert_eq!(session.history, before);
        session.history.clear();
        session.reply("one", &mut out).unwrap();
        assert_eq!(session.history.len(), 2);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{}\n", session.history[1].content));
    }
}
