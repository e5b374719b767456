//! `lushan generate`: sample from a checkpoint with a KV cache, streaming text as tokens arrive.

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_model::{Generator, Sampling};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--temperature -1` reaches the validation that names the flag
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file).
    #[arg(long, default_value = "out/shakespeare-char")]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
}

/// The sampling flags `generate` and `chat` share.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probability adds up to P.
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 1337)]
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

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load_with(&args.model, args.adapter.as_deref())?;
    let sampling = args.sampling.sampling()?;
    anyhow::ensure!(!args.prompt.is_empty(), "--prompt must not be empty");
    let prompt = tokenizer.encode(&args.prompt).context("encoding --prompt with the model's tokenizer")?;
    let stdout = std::io::stdout();
    for i in 0..args.num_samples {
        let seed = args.sampling.seed.wrapping_add(i as u64);
        let mut generator = Generator::new(&model, &prompt, sampling.clone(), seed, args.max_new_tokens)?;
        if generator.prompt_cropped() {
            eprintln!(
                "note: the prompt has {} tokens; only its last {} fit the model's context",
                prompt.len(),
                model.config.block_size
            );
        }
        let mut out = stdout.lock();
        write!(out, "{}", args.prompt)?;
        // A byte-level token can end inside a character: the stream decoder holds it back until complete.
        let mut decoder = tokenizer.stream_decoder();
        while let Some(token) = generator.next_token()? {
            write!(out, "{}", decoder.push(token)?)?;
            out.flush()?;
        }
        writeln!(out, "{}", decoder.finish())?;
        if i + 1 < args.num_samples {
            writeln!(out, "---------------")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
