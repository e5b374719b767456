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
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the most likely tokens whose probability adds up to P.
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load(&args.model)?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
    };
    sampling.validate().context("invalid sampling flags (--temperature, --top-k, --top-p, --repetition-penalty)")?;
    anyhow::ensure!(!args.prompt.is_empty(), "--prompt must not be empty");
    let prompt = tokenizer.encode(&args.prompt).context("encoding --prompt with the model's tokenizer")?;
    let stdout = std::io::stdout();
    for i in 0..args.num_samples {
        let seed = args.seed.wrapping_add(i as u64);
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
