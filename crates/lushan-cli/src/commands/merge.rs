//! `lushan merge`: folds a LoRA adapter into its base model and writes a plain Hugging Face checkpoint (what
//! PEFT's `merge_and_unload()` + `save_pretrained` give), which every command and `transformers` load.

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_model::checkpoint::{self, adapter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The base model directory, or the adapter directory itself (its `lushan-adapter.json` names the base).
    #[arg(long)]
    model: PathBuf,
    /// The LoRA adapter directory (PEFT's `adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Where to write the merged checkpoint (created; an existing checkpoint there is refused unless
    /// --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Replace a checkpoint already in --out.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    anyhow::ensure!(
        args.adapter.is_some() || adapter::is_adapter_dir(&args.model),
        "--model {} is not a LoRA adapter directory: pass the adapter with --adapter DIR",
        args.model.display()
    );
    if args.out.join(checkpoint::WEIGHTS_FILE).exists() && !args.overwrite {
        anyhow::bail!(
            "--out {} already holds a checkpoint (model.safetensors); pass --overwrite to replace it",
            args.out.display()
        );
    }
    let (model, tokenizer) = model_dir::load_with(&args.model, args.adapter.as_deref())?;
    checkpoint::save_model_dir(&args.out, &model.config, &model.params)
        .with_context(|| format!("writing {}", args.out.display()))?;
    lushan_train::data::save_tokenizer(&args.out, &tokenizer)?;
    println!(
        "merged {} ({}, {} parameters) into {}",
        args.adapter.as_ref().unwrap_or(&args.model).display(),
        adapter::describe(&model.config),
        model.num_params(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
