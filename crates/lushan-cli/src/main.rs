//! `lushan`: train, evaluate, sample from and inspect GPT models on the CPU. This file only dispatches.
#![forbid(unsafe_code)]

mod commands;
mod confusion_plot;
mod draw;
mod explain;
mod interrupt;
mod model_dir;
mod plot;
mod sweep_report;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Large buffers (weights, activations) start on cache lines, so the kernels' vector loads never straddle two.
#[global_allocator]
static ALLOC: lushan_kernels::alloc::CacheLineAligned = lushan_kernels::alloc::CacheLineAligned;

#[derive(Parser)]
#[command(name = "lushan", version, about = "Train, evaluate and sample from GPT models on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize text into train.bin / val.bin shards and a tokenizer file.
    Prepare(commands::prepare::Args),
    /// Train a GPT (defaults: nanoGPT's CPU run on the bundled tiny Shakespeare).
    Train(commands::train::Args),
    /// Sample text from a checkpoint, streamed as it is generated.
    Generate(commands::generate::Args),
    /// Loss, perplexity and bits per character/byte of a checkpoint on a shard or text file.
    Eval(commands::eval::Args),
    /// Show why the model says what it says: next-token probabilities, attention, logit lens.
    Explain(Box<commands::explain::Args>),
    /// Learned features: train a sparse autoencoder on a layer's residual stream.
    #[command(subcommand)]
    Features(commands::features::Command),
    /// Talk with a checkpoint, turn by turn, with the chat template it was fine-tuned on.
    Chat(commands::chat::Args),
    /// Label texts with a classifier checkpoint (from arguments, a file or stdin); prints JSONL.
    Classify(commands::classify::Args),
    /// Merge a LoRA adapter into its base model: a plain checkpoint every command and transformers load.
    Merge(commands::merge::Args),
    /// Write a checkpoint as a GGUF file llama.cpp runs (f32, f16, bf16, q8_0 or q4_0 weights).
    Export(commands::export::Args),
    /// Serve an OpenAI-compatible HTTP API (completions, chat, streaming, /classify) for a checkpoint.
    Serve(commands::serve::Args),
    /// Search hyper-parameters: grid, random (median stopping) or successive halving over `train` runs.
    Sweep(Box<commands::sweep::Args>),
    /// Measure speed.
    #[command(subcommand)]
    Bench(commands::bench::Bench),
    /// Encode, decode and train tokenizers (GPT-2 byte-level BPE).
    #[command(subcommand)]
    Tokenizer(commands::tokenizer::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Run the command on a worker of the thread pool: every kernel's parallel loop then starts from inside
    // the pool (a cheap local push) instead of injecting work from outside and sleeping on a latch, which
    // cost a thread wake-up per kernel call — about a third of a small model's training step.
    let pool = match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("error: cannot start the thread pool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = pool.install(|| match cli.command {
        Command::Prepare(args) => commands::prepare::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Explain(args) => commands::explain::run(*args),
        Command::Features(command) => commands::features::run(command),
        Command::Chat(args) => commands::chat::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Sweep(args) => commands::sweep::run(*args),
        Command::Bench(bench) => commands::bench::run(bench),
        Command::Tokenizer(command) => commands::tokenizer::run(command),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: library errors already name their source in their message, so a
/// cause whose text the message so far contains is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
