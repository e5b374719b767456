//! `lushan prepare`: text → token shards + tokenizer file.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Text files or directories of text files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where train.bin, val.bin and the tokenizer file go.
    #[arg(long, default_value = "data/prepared")]
    out: PathBuf,
    /// Fraction of the tokens held out for validation (the end of the corpus).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let report = lushan_train::data::prepare_char(&args.inputs, &args.out, args.val_fraction)
        .with_context(|| format!("preparing {}", args.out.display()))?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
