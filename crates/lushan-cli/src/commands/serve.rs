//! `lushan serve`: an OpenAI-compatible HTTP API for a checkpoint (model id = the directory's name).

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_server::{Server, ServerOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file); its name is the model id.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model before serving.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests running plus waiting; further requests get 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Most completions decoded together (continuous batching); more wait for a place.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=32))]
    max_batch: u32,
    /// Larger request bodies get 413.
    #[arg(long, default_value_t = 2_000_000)]
    max_body_bytes: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load_with(&args.model, args.adapter.as_deref())?;
    let dir = std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone());
    let model_id = dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let options = ServerOptions {
        model_id,
        api_key: args.api_key,
        max_queue: args.max_queue as usize,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch as usize,
    };
    Server::new(model, tokenizer, options)
        .context("lushan serve: cannot start the decoding thread")?
        .run_blocking(&args.host, args.port)
        .context("lushan serve")?;
    Ok(ExitCode::SUCCESS)
}
