//! `lushan export`: writes a checkpoint in another format — a GGUF file that llama.cpp runs, its weight
//! matrices in f32, f16, bf16, Q8_0 or Q4_0 (quantized with llama.cpp's reference quantizers, byte for
//! byte), with the tokenizer embedded.

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_model::DType;
use lushan_model::gguf;
use std::path::PathBuf;
use std::process::ExitCode;

/// The formats `export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// llama.cpp's GGUF (architecture gpt2, tokenizer embedded).
    Gguf,
}

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory (or a GGUF file) to export.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gguf")]
    format: Format,
    /// Type of the weight matrices in the file: f32, f16, bf16, q8_0 or q4_0 (biases, layer norms and the
    /// position table stay f32). Default: the model's own (f32 for a checkpoint directory).
    #[arg(long, value_name = "TYPE")]
    dtype: Option<DType>,
    /// The file to write (replaced atomically if it exists).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Format::Gguf = args.format;
    let (model, tokenizer) = model_dir::load_with(&args.model, args.adapter.as_deref())?;
    // The tokenizer is checked before any conversion work: a character-level one cannot be exported.
    let gguf_tokenizer = model_dir::to_gguf_tokenizer(&tokenizer)?;
    let model = match args.dtype {
        Some(dtype) => model.with_dtype(dtype).with_context(|| format!("exporting with --dtype {dtype}"))?,
        None => model,
    };
    let name = args.model.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "lushan".into());
    // The writer's errors name the file.
    gguf::save_gpt2(&args.out, &model, &gguf_tokenizer, &name)?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} (GGUF, gpt2, {} parameters, weight matrices {}, {:.1} MB)",
        args.out.display(),
        model.num_params(),
        model.dtype(),
        bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
