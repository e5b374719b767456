//! `lushan bench explain`: the time of `explain`'s causal sweep — direct logit attribution and the zero
//! ablation of every attention head and MLP — for a random prompt on a randomly initialised model (GPT-2
//! 124M shapes by default).

use anyhow::{Context, Result, ensure};
use lushan_kernels::rng::Rng;
use lushan_model::Gpt;
use lushan_model::inspect::{ExplainOptions, explain};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Timed runs (the figure is the fastest; each run is a whole `explain` with the sweep).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    shape: super::bench::ShapeArgs,
    /// Also mean-ablate (means over a random reference text as long as the prompt).
    #[arg(long)]
    mean: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let mut config = args.shape.config();
    config.dropout = 0.0;
    ensure!(
        (1..=config.block_size).contains(&args.prompt_tokens),
        "--prompt-tokens must be 1..={} (the context), got {}",
        config.block_size,
        args.prompt_tokens
    );
    let model = Gpt::new(config.clone(), args.seed).context("building the random model")?;
    let mut rng = Rng::new(args.seed ^ 0x6578_706c);
    let mut random_text =
        |len: usize| -> Vec<u32> { (0..len).map(|_| (rng.next_u64() % config.vocab_size as u64) as u32).collect() };
    let prompt = random_text(args.prompt_tokens);
    let reference = args.mean.then(|| random_text(args.prompt_tokens));
    let options = ExplainOptions { ablate: true, ablation_reference: reference, top_k: 1, ..ExplainOptions::default() };
    let token_text = |id: u32| format!("<{id}>");
    let variants = config.n_layer * (config.n_head + 1) * if args.mean { 2 } else { 1 };
    println!(
        "explain sweep: {} layers × {} heads, n_embd {}, vocabulary {}, {}-token prompt, {variants} ablations{}",
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.vocab_size,
        args.prompt_tokens,
        if args.mean { " (zero + mean)" } else { " (zero)" }
    );
    let (mut best_sweep, mut best_total) = (f64::INFINITY, f64::INFINITY);
    for run in 1..=args.repeats {
        let started = Instant::now();
        let explanation = explain(&model, &prompt, &token_text, &options).context("running explain")?;
        let total = started.elapsed().as_secs_f64();
        let sweep = explanation.ablation.map_or(f64::NAN, |a| f64::from(a.seconds));
        println!("run {run}: attribution + ablation sweep {sweep:.3} s (whole explain {total:.3} s)");
        best_sweep = best_sweep.min(sweep);
        best_total = best_total.min(total);
    }
    println!(
        "best: attribution + ablation sweep {best_sweep:.3} s, {:.1} ms per ablation (whole explain {best_total:.3} s) on {} \
         threads",
        1000.0 * best_sweep / variants as f64,
        rayon::current_num_threads()
    );
    Ok(ExitCode::SUCCESS)
}
