//! `lushan generate`: sample from a checkpoint with a KV cache, streaming text as tokens arrive.

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_model::{Generator, Sampling};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--temperature -1` reaches the validation that names the flag
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file).
    #[arg(short = 'm', long, default_value = "out/shakespeare-char")]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    dtype: model_dir::DtypeArg,
    /// Text to continue (the same as --prompt); without any prompt, generation starts from a newline.
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt", "prompt_file"])]
    positional_prompt: Option<String>,
    /// Text to continue.
    #[arg(short = 'p', long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the text to continue from FILE (UTF-8), e.g. a long prompt.
    #[arg(short = 'f', long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Most tokens to generate per sample.
    #[arg(short = 'n', long, visible_alias = "max-tokens", alias = "n-predict", default_value_t = 500)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Samples to generate, each with the next seed.
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
}

/// The sampling flags `generate` and `chat` share; `explain --generate` has the same names and defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Divides the logits before sampling; 0 = greedy (always the most likely token).
    #[arg(long, alias = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens [default: off, every token may be drawn].
    #[arg(long, value_name = "K", alias = "sample-top-k")] // explain's former name
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probability adds up to P [default: off].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Divides the logits of tokens already in the context (1 = none).
    #[arg(long, alias = "repeat-penalty", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the sampling: the same seed and flags give the same text.
    #[arg(short = 's', long, default_value_t = 1337)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The flags as a checked [`Sampling`]; an error names the flag.
    pub fn sampling(&self) -> Result<Sampling> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
        };
        sampling
            .validate()
            .context("invalid sampling flags (--temperature, --top-k, --top-p, --repetition-penalty)")?;
        Ok(sampling)
    }
}

/// The text to continue: the positional prompt, --prompt or --prompt-file (at most one; clap checks that), or a
/// newline when none is given.
fn prompt_text(args: &Args) -> Result<String> {
    if let Some(path) = &args.prompt_file {
        let bytes = std::fs::read(path).with_context(|| format!("reading --prompt-file {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "--prompt-file {}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        anyhow::ensure!(
            !text.is_empty(),
            "--prompt-file {} is empty: give a file with text to continue",
            path.display()
        );
        return Ok(text);
    }
    let text = args.positional_prompt.as_ref().or(args.prompt.as_ref()).map_or("\n", String::as_str);
    anyhow::ensure!(!text.is_empty(), "--prompt must not be empty");
    Ok(text.to_owned())
}

/// Time spent reading the prompt (prefill) and producing tokens (decode), over every sample.
#[derive(Default)]
struct Timing {
    prompt_tokens: usize,
    prefill_tokens: usize,
    prefill: Duration,
    decode_tokens: usize,
    decode: Duration,
}

impl Timing {
    /// One line, as llama-cli ends with: how long the prompt took to read and how fast tokens came.
    fn line(&self) -> String {
        format!(
            "timing: prompt {} tokens; prefill {} tokens in {:.2} ms ({} tokens/s); decode {} tokens in {:.2} ms \
             ({} tokens/s)",
            self.prompt_tokens,
            self.prefill_tokens,
            self.prefill.as_secs_f64() * 1e3,
            rate(self.prefill_tokens, self.prefill),
            self.decode_tokens,
            self.decode.as_secs_f64() * 1e3,
            rate(self.decode_tokens, self.decode)
        )
    }
}

/// Tokens per second with one decimal, or "-" when no time was measured.
fn rate(tokens: usize, time: Duration) -> String {
    let seconds = time.as_secs_f64();
    if tokens == 0 || seconds <= 0.0 { "-".to_owned() } else { format!("{:.1}", tokens as f64 / seconds) }
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Checks that need no model come first, so a typo fails fast.
    let text = prompt_text(&args)?;
    let sampling = args.sampling.sampling()?;
    let (model, tokenizer) = model_dir::load_as(&args.model, args.adapter.as_deref(), args.dtype.dtype)?;
    let prompt = tokenizer.encode(&text).context("encoding the prompt with the model's tokenizer")?;
    let stdout = std::io::stdout();
    let mut timing = Timing { prompt_tokens: prompt.len(), ..Timing::default() };
    for i in 0..args.num_samples {
        let seed = args.sampling.seed.wrapping_add(i as u64);
        let started = Instant::now();
        let mut generator = Generator::new(&model, &prompt, sampling.clone(), seed, args.max_new_tokens)?;
        timing.prefill += started.elapsed();
        timing.prefill_tokens += prompt.len().min(model.config.block_size);
        if generator.prompt_cropped() {
            eprintln!(
                "note: the prompt has {} tokens; only its last {} fit the model's context",
                prompt.len(),
                model.config.block_size
            );
        }
        let mut out = stdout.lock();
        write!(out, "{text}")?;
        // A byte-level token can end inside a character: the stream decoder holds it back until complete.
        let mut decoder = tokenizer.stream_decoder();
        let started = Instant::now();
        while let Some(token) = generator.next_token()? {
            timing.decode_tokens += 1;
            write!(out, "{}", decoder.push(token)?)?;
            out.flush()?;
        }
        timing.decode += started.elapsed();
        writeln!(out, "{}", decoder.finish())?;
        if i + 1 < args.num_samples {
            writeln!(out, "---------------")?;
        }
    }
    eprintln!("{}", timing.line());
    Ok(ExitCode::SUCCESS)
}
