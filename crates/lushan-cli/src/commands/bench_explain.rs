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
    let flops = sweep_flops(&config, args.prompt_tokens, if args.mean { 2 } else { 1 });
    let ceiling = super::bench::measure_sgemm_ceiling();
    println!(
        "work: ≈ {:.0} GFLOP of matrix products in the sweep → {:.1} GFLOP/s = {:.0} % of the sgemm ceiling measured \
         in this run ({:.1} GFLOP/s at 768×768×768)",
        flops / 1e9,
        flops / best_sweep / 1e9,
        100.0 * flops / best_sweep / ceiling,
        ceiling / 1e9
    );
    Ok(ExitCode::SUCCESS)
}

/// Matrix-product FLOPs of the sweep as `explain` runs it: one unedited pass of the prompt, then per sweep
/// and layer `l` one batch of `n_head + 1` variants (the layer's heads and its MLP) that recomputes layers
/// `l..` for every position — the last block past its attention only at the explained position — and the
/// output layer at the explained position.
fn sweep_flops(cfg: &lushan_model::ModelConfig, t: usize, sweeps: usize) -> f64 {
    let (c, l, v) = (cfg.n_embd as f64, cfg.n_layer, cfg.vocab_size as f64);
    let t = t as f64;
    let qkv_and_attention = 2.0 * 3.0 * c * c + 2.0 * t * c; // per row (causal: half of QKᵀ and of A·V)
    let rest_of_block = 2.0 * (c * c + 8.0 * c * c); // per row: output projection, MLP
    let head = 2.0 * c * v; // per explained row
    let clean = t * l as f64 * (qkv_and_attention + rest_of_block) + head;
    let b = (cfg.n_head + 1) as f64;
    let per_sweep: f64 = (0..l)
        .map(|first| {
            let full_layers = (l - 1 - first) as f64;
            b * t * full_layers * (qkv_and_attention + rest_of_block)
                + b * t * qkv_and_attention
                + b * (rest_of_block + head)
        })
        .sum();
    clean + sweeps as f64 * per_sweep
}
