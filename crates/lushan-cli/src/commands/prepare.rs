//! `lushan prepare`: text → token shards + tokenizer file.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lushan_tokenizer::Tokenizer;
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
    /// `char` (a character vocabulary built from the corpus, held in memory), `gpt2` (GPT-2's byte-level
    /// BPE, streamed over both cores), or a tokenizer directory/file (vocab.json + merges.txt,
    /// tokenizer.json, lushan-tokenizer.json).
    #[arg(long, default_value = "char")]
    tokenizer: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let report = if args.tokenizer == "char" {
        lushan_train::data::prepare_char(&args.inputs, &args.out, args.val_fraction)
    } else {
        let tokenizer =
            Tokenizer::load(&args.tokenizer).with_context(|| format!("loading --tokenizer {}", args.tokenizer))?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed_precise} < {eta_precise}]",
            )
            .context("progress bar template")?,
        );
        let result = lushan_train::data::prepare_streaming(
            &tokenizer,
            &args.inputs,
            &args.out,
            args.val_fraction,
            &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        );
        bar.finish_and_clear();
        result
    }
    .with_context(|| format!("preparing {}", args.out.display()))?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
