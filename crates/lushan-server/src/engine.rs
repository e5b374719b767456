//! One completion's side of decoding: the model crate's [`Generation`] makes every token-level decision
//! (sampling, presence / frequency penalties, stop tokens, `max_tokens`, the finish reason) exactly as
//! `lushan generate` does; this adds only what is about text and transport: decoding, stop strings matched
//! across token boundaries, log-probabilities of the raw logits, and streaming of text that became final.
//! The model itself is run by the [`crate::batcher`].
//!
//! The caller has already checked that `prompt + max_tokens` fits the context, so the window never slides.

use lushan_model::{FinishReason, Generation, Penalties, Sampling};
use lushan_tokenizer::chat::ReplyStart;
use lushan_tokenizer::{StreamDecoder, Tokenizer};

/// One completion to generate.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// OpenAI's presence / frequency penalties.
    pub penalties: Penalties,
    /// Generation ends before the first occurrence of any of these in the completion text.
    pub stop: Vec<String>,
    /// Generation ends at any of these token ids, which add no text (`<|endoftext|>`; chat's end of turn).
    pub stop_tokens: Vec<u32>,
    /// Drop one space at the start of the text: the chat template writes a reply as ` {content}`, and a
    /// client sends `{content}` back in the next request's history.
    pub trim_leading_space: bool,
    /// Return this many alternatives per token (and the chosen token's log-probability).
    pub logprobs: Option<usize>,
}

/// Log-probabilities of one generated token, from `log_softmax(logits)` before any sampling transform.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// The completion text, cut before a stop string.
    pub text: String,
    /// Tokens sampled (including an end-of-text token and tokens of a cut stop string).
    pub completion_tokens: usize,
    pub finish: FinishReason,
    /// Per token, when `logprobs` was asked for (tokens wholly after a stop cut are dropped). A chat reply's
    /// first token keeps the space its text lost (`Job::trim_leading_space`).
    pub logprobs: Vec<TokenLogprob>,
    /// The client went away and generation stopped early.
    pub cancelled: bool,
}

/// Where generated text goes while it is produced.
pub trait Sink {
    /// False once nobody listens any more: generation stops before the next token.
    fn alive(&self) -> bool {
        true
    }
    /// Text that is final (no stop string can start in it) and the log-probabilities of the tokens it completes
    /// (when asked for); false stops generation.
    fn emit(&mut self, _text: &str, _logprobs: &[TokenLogprob]) -> bool {
        true
    }
}

/// A sink for non-streaming requests: only the final [`Outcome`] matters.
pub struct Collect;
impl Sink for Collect {}

/// One completion being generated: its [`Generation`] plus text, stop strings and streaming of final text,
/// fed one position's logits at a time by the [`crate::batcher`] (batched with the other running sequences).
pub struct Sequence<'t> {
    generation: Generation,
    job: Job,
    tokenizer: &'t Tokenizer,
    decoder: StreamDecoder<'t>,
    /// A chat reply (`Job::trim_leading_space`): its first text drops the template's leading space.
    reply_start: Option<ReplyStart>,
    out: String,
    /// Bytes of `out` emitted.
    sent: usize,
    /// Log-probabilities emitted.
    lp_sent: usize,
    logprobs: Vec<TokenLogprob>,
    /// Byte length of `out` after each token, to drop tokens past a cut.
    token_ends: Vec<usize>,
    cancelled: bool,
    stopped_at: Option<usize>,
}

impl<'t> Sequence<'t> {
    /// Errs (naming the setting) when the job's sampling settings or penalties have no meaning.
    pub fn new(job: Job, tokenizer: &'t Tokenizer) -> lushan_model::Result<Self> {
        let generation = Generation::new(&job.prompt, job.sampling.clone(), job.seed, job.max_tokens)?
            .with_stop_tokens(&job.stop_tokens)
            .with_penalties(job.penalties)?;
        Ok(Self {
            generation,
            reply_start: job.trim_leading_space.then(ReplyStart::default),
            job,
            tokenizer,
            decoder: tokenizer.stream_decoder(),
            out: String::new(),
            sent: 0,
            lp_sent: 0,
            logprobs: Vec::new(),
            token_ends: Vec::new(),
            cancelled: false,
            stopped_at: None,
        })
    }

    pub fn prompt(&self) -> &[u32] {
        &self.job.prompt
    }

    /// False once the sequence needs no more logits.
    pub fn wants_more(&self) -> bool {
        !(self.cancelled || self.generation.is_finished())
    }

    /// The token to feed the model next (the one sampled last).
    pub fn last_token(&self) -> u32 {
        self.generation.last_token()
    }

    /// The client went away: stop without emitting anything more.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// The model's context is full: end as `max_tokens` would.
    pub fn end_at_context(&mut self) {
        self.generation.stop_at_length();
    }

    /// Samples the next token from `logits` (the model's output after the last token fed) and passes any
    /// text that became final to `sink`.
    pub fn step(&mut self, logits: &[f32], sink: &mut dyn Sink) -> lushan_model::Result<()> {
        if self.cancelled {
            return Ok(());
        }
        let Some(tok) = self.generation.next_token(logits) else { return Ok(()) };
        if let Some(n) = self.job.logprobs {
            self.logprobs.push(token_logprobs(logits, tok, n, self.tokenizer));
        }
        if self.job.stop_tokens.contains(&tok) {
            self.token_ends.push(self.out.len());
            return Ok(());
        }
        let piece = self
            .decoder
            .push(tok)
            .map_err(|e| lushan_model::ModelError::InvalidSampling { field: "token", reason: e.to_string() })?;
        push_text(&mut self.out, &mut self.reply_start, &piece);
        self.token_ends.push(self.out.len());
        match scan(&self.out, self.sent, &self.job.stop) {
            Scan::Stop(at) => {
                self.stopped_at = Some(at);
                self.generation.stop();
            }
            Scan::Emit(upto) if upto > self.sent => {
                let through = fully_before(&self.token_ends, upto).min(self.logprobs.len());
                if !sink.emit(&self.out[self.sent..upto], &self.logprobs[self.lp_sent..through]) {
                    self.cancel();
                    return Ok(());
                }
                (self.sent, self.lp_sent) = (upto, through);
            }
            Scan::Emit(_) => {}
        }
        Ok(())
    }

    /// Flushes held-back text (cut before a stop string) and returns the outcome.
    pub fn finish(mut self, sink: &mut dyn Sink) -> Outcome {
        if !self.cancelled {
            if self.stopped_at.is_none() {
                push_text(&mut self.out, &mut self.reply_start, &self.decoder.finish());
                if let Scan::Stop(at) = scan(&self.out, self.sent, &self.job.stop) {
                    self.generation.stop();
                    self.stopped_at = Some(at);
                }
            }
            let end = self.stopped_at.unwrap_or(self.out.len());
            // Keep the tokens that contributed text before a cut (the one the cut falls in too).
            let keep = self
                .stopped_at
                .map_or(self.token_ends.len(), |at| starting_before(&self.token_ends, at))
                .min(self.logprobs.len());
            self.logprobs.truncate(keep);
            if end > self.sent || keep > self.lp_sent {
                sink.emit(&self.out[self.sent..end], &self.logprobs[self.lp_sent.min(keep)..]);
            }
            self.out.truncate(end);
        }
        Outcome {
            text: self.out,
            completion_tokens: self.generation.generated(),
            finish: self.generation.finish_reason().unwrap_or(FinishReason::Length),
            logprobs: self.logprobs,
            cancelled: self.cancelled,
        }
    }
}

/// Appends decoded text to `out`; a chat reply's first text loses the template's leading space.
fn push_text(out: &mut String, reply_start: &mut Option<ReplyStart>, piece: &str) {
    out.push_str(match reply_start {
        Some(start) => start.strip(piece),
        None => piece,
    });
}

/// The log-probability of `chosen` and of the `n` most likely tokens (most likely first), from
/// `log_softmax(logits)`.
pub fn token_logprobs(logits: &[f32], chosen: u32, n: usize, tokenizer: &Tokenizer) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&z| ((z - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    let mut top: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(top.len());
    if n > 0 && n < top.len() {
        top.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    top.truncate(n);
    top.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    TokenLogprob {
        token: text(chosen),
        logprob: logits[chosen as usize] - log_sum,
        top: top.into_iter().map(|id| (text(id), logits[id as usize] - log_sum)).collect(),
    }
}

/// How many tokens end at or before byte `upto`.
fn fully_before(token_ends: &[usize], upto: usize) -> usize {
    token_ends.iter().take_while(|&&e| e <= upto).count()
}

/// How many tokens start before byte `at` (or end by it).
fn starting_before(token_ends: &[usize], at: usize) -> usize {
    let mut start = 0;
    token_ends
        .iter()
        .take_while(|&&e| {
            let keep = start < at || e <= at;
            start = e;
            keep
        })
        .count()
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A stop string starts at this byte of the text.
    Stop(usize),
    /// Text up to this byte cannot be part of a stop string.
    Emit(usize),
}

/// Looks for a stop string in `out[sent..]` (text before `sent` was already checked and emitted), and
/// otherwise holds back the longest tail that could still grow into one.
fn scan(out: &str, sent: usize, stops: &[String]) -> Scan {
    let tail = &out[sent..];
    if let Some(at) = stops.iter().filter_map(|s| tail.find(s.as_str())).min() {
        return Scan::Stop(sent + at);
    }
    for (i, _) in tail.char_indices() {
        let rest = &tail[i..];
        if stops.iter().any(|s| s.len() > rest.len() && s.starts_with(rest)) {
            return Scan::Emit(sent + i);
        }
    }
    Scan::Emit(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_stops_and_holds_back_prefixes() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        assert_eq!(scan("hello", 0, &stops), Scan::Emit(5));
        assert_eq!(scan("hello\nUs", 0, &stops), Scan::Emit(5));
        assert_eq!(scan("hello\nUser: x", 0, &stops), Scan::Stop(5));
        assert_eq!(scan("abEN", 2, &stops), Scan::Emit(2));
        assert_eq!(scan("abENDx", 2, &stops), Scan::Stop(2));
        assert_eq!(scan("é", 0, &[]), Scan::Emit(2));
    }

    /// Records what a sequence emits, piece by piece.
    #[derive(Default)]
    struct Recorder {
        pieces: Vec<String>,
        logprobs: usize,
    }

    impl Sink for Recorder {
        fn emit(&mut self, text: &str, logprobs: &[TokenLogprob]) -> bool {
            self.pieces.push(text.to_string());
            self.logprobs += logprobs.len();
            true
        }
    }

    #[test]
    fn a_character_split_over_two_tokens_is_streamed_whole() {
        let tokenizer = Tokenizer::gpt2().unwrap();
        let vocab = tokenizer.vocab_size();
        let byte_token = |b: u8| {
            (0..vocab as u32).find(|&id| tokenizer.decode_bytes(&[id]).unwrap() == [b]).expect("a single-byte token")
        };
        // "é" is 0xC3 0xA9 in UTF-8: two byte tokens, neither valid text alone.
        let chosen = [byte_token(0xC3), byte_token(0xA9), byte_token(b'x')];
        let job = Job {
            prompt: vec![byte_token(b'a')],
            max_tokens: 3,
            sampling: Sampling::greedy(),
            seed: 0,
            penalties: Penalties::default(),
            stop: Vec::new(),
            stop_tokens: Vec::new(),
            trim_leading_space: false,
            logprobs: Some(1),
        };
        let mut seq = Sequence::new(job, &tokenizer).unwrap();
        let mut sink = Recorder::default();
        let mut logits = vec![0.0f32; vocab];
        for (step, &tok) in chosen.iter().enumerate() {
            logits.fill(0.0);
            logits[tok as usize] = 10.0; // greedy picks it
            seq.step(&logits, &mut sink).unwrap();
            let expected: &[&str] = [&[][..], &["é"][..], &["é", "x"][..]][step];
            assert_eq!(sink.pieces, expected, "after step {step}");
        }
        // The first byte's log-probability travels with the character it completes.
        assert_eq!(sink.logprobs, 3);
        let outcome = seq.finish(&mut sink);
        assert_eq!((outcome.text.as_str(), outcome.completion_tokens, outcome.finish), ("éx", 3, FinishReason::Length));
    }

    #[test]
    fn a_stop_token_ends_the_reply_unwritten_and_one_leading_space_is_dropped() {
        let tokenizer = Tokenizer::gpt2().unwrap();
        let vocab = tokenizer.vocab_size();
        let eot = tokenizer.end_of_text().unwrap();
        let ids = |s: &str| tokenizer.encode(s).unwrap();
        // " Hi" " there" <|endoftext|> "never": the reply ends at the end-of-turn id.
        let mut chosen = ids(" Hi there");
        chosen.extend([eot, ids("never")[0]]);
        let job = Job {
            prompt: ids("User: hi\nAssistant:"),
            max_tokens: 10,
            sampling: Sampling::greedy(),
            seed: 0,
            penalties: Penalties::default(),
            stop: Vec::new(),
            stop_tokens: vec![eot],
            trim_leading_space: true,
            logprobs: None,
        };
        let mut seq = Sequence::new(job, &tokenizer).unwrap();
        let mut sink = Recorder::default();
        let mut logits = vec![0.0f32; vocab];
        for &tok in &chosen {
            if !seq.wants_more() {
                break;
            }
            logits.fill(0.0);
            logits[tok as usize] = 10.0;
            seq.step(&logits, &mut sink).unwrap();
        }
        assert!(!seq.wants_more());
        let outcome = seq.finish(&mut sink);
        assert_eq!(
            (outcome.text.as_str(), outcome.completion_tokens, outcome.finish),
            ("Hi there", 3, FinishReason::Stop)
        );
        assert_eq!(sink.pieces.concat(), "Hi there");
    }

    #[test]
    fn tokens_are_kept_up_to_a_cut() {
        let ends = [1, 3, 3, 6];
        assert_eq!(fully_before(&ends, 3), 3);
        assert_eq!(starting_before(&ends, 0), 0);
        assert_eq!(starting_before(&ends, 2), 2);
        assert_eq!(starting_before(&ends, 3), 3);
        assert_eq!(starting_before(&ends, 4), 4);
    }
}
