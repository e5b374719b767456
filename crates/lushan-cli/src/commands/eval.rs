//! `lushan eval`: loss, perplexity and bits per character/byte of a checkpoint on held-out text.

use super::eval_task;
use crate::model_dir;
use anyhow::{Context, Result};
use lushan_model::{Activations, Mode};
use lushan_tokenizer::Tokenizer;
use lushan_train::data::Shard;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory.
    #[arg(short = 'm', long, default_value = "out/shakespeare-char")]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    dtype: model_dir::DtypeArg,
    /// A token shard (.bin), a prepared data directory (its val.bin is used) or a text file.
    #[arg(long)]
    data: PathBuf,
    /// Window length (default: the model's context).
    #[arg(long)]
    block_size: Option<usize>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Task records (.jsonl / .csv) with a language model: also answer each prompt greedily and score the
    /// answers against the references (exact match, chrF).
    #[arg(long)]
    generate: bool,
    /// Longest answer `--generate` produces.
    #[arg(short = 'n', long, visible_alias = "max-tokens", alias = "n-predict", default_value_t = 128)]
    max_new_tokens: usize,
    /// Evaluate only the first N records of a task file.
    #[arg(long)]
    limit: Option<usize>,
    /// A classifier's confusion matrix as a PNG picture, written here.
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Sequences per forward pass on task records.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (model, tokenizer) = model_dir::load_as(&args.model, args.adapter.as_deref(), args.dtype.dtype)?;
    if eval_task::is_task_file(&args.data) || model.config.num_labels() > 0 {
        let options = eval_task::TaskEvalOptions {
            generate: args.generate,
            max_new_tokens: args.max_new_tokens,
            limit: args.limit,
            png: args.png.as_deref(),
            json: args.json,
            batch_size: args.batch_size,
        };
        eval_task::run(&model, &tokenizer, &args.data, &options)?;
        return Ok(ExitCode::SUCCESS);
    }
    let tokens: Vec<u32> = if args.data.is_dir() {
        let path = args.data.join("val.bin");
        shard_tokens(&path, &tokenizer)?
    } else if args.data.extension().is_some_and(|e| e == "bin") {
        shard_tokens(&args.data, &tokenizer)?
    } else {
        lushan_train::data::encode_file_with(&tokenizer, &args.data)?
    };
    anyhow::ensure!(
        tokens.len() >= 2,
        "{}: need at least 2 tokens to evaluate, got {}",
        args.data.display(),
        tokens.len()
    );
    let t = args.block_size.unwrap_or(model.config.block_size);
    anyhow::ensure!(
        t >= 1 && t <= model.config.block_size,
        "--block-size must be between 1 and the model's context ({}), got {t}",
        model.config.block_size
    );
    let (mut total_nats, mut count, mut bytes) = (0.0f64, 0usize, 0usize);
    let mut acts: Option<Activations> = None;
    // Non-overlapping windows: every token after the first is predicted exactly once.
    for start in (0..tokens.len() - 1).step_by(t) {
        let len = t.min(tokens.len() - 1 - start);
        let (inputs, targets) = (&tokens[start..start + len], &tokens[start + 1..start + 1 + len]);
        if acts.as_ref().is_none_or(|a| a.seq_len() != len) {
            acts = Some(Activations::new(&model.config, 1, len)?);
        }
        let Some(a) = acts.as_mut() else { continue };
        model.forward(a, inputs, Some(targets), Mode::Eval)?;
        total_nats += a.losses.iter().map(|&l| l as f64).sum::<f64>();
        count += len;
        bytes += tokenizer.decode(targets)?.len();
    }
    let loss = total_nats / count as f64;
    let bits_per_byte = total_nats / bytes as f64 / std::f64::consts::LN_2;
    let unit = if tokenizer.describe().starts_with("char") { "character" } else { "byte" };
    let chars_or_bytes = if unit == "character" { count } else { bytes };
    let bits_per_unit = total_nats / chars_or_bytes as f64 / std::f64::consts::LN_2;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"tokens": count, "loss": loss, "perplexity": loss.exp(),
                "bits_per_token": loss / std::f64::consts::LN_2, "bits_per_byte": bits_per_byte,
                format!("bits_per_{unit}"): bits_per_unit})
        );
    } else {
        println!("tokens evaluated: {count}");
        println!("loss: {loss:.4} nats/token");
        println!("perplexity: {:.3}", loss.exp());
        println!("bits per {unit}: {bits_per_unit:.4}");
        println!("bits per byte: {bits_per_byte:.4}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every token of a shard made with the model's tokenizer; a shard made with another one is refused, as
/// `lushan train` refuses it (the same check: [`Shard::open_for`]).
fn shard_tokens(path: &std::path::Path, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let shard = Shard::open_for(path, tokenizer).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = vec![0u32; shard.len()];
    shard.copy_window(0, &mut tokens).with_context(|| format!("reading {}", path.display()))?;
    Ok(tokens)
}
