//! `lushan bench`: speed figures printed for people and scripts (never asserted by tests).

use anyhow::Result;
use lushan_kernels::rng::Rng;
use lushan_model::Gpt;
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use lushan_train::parallel::{BatchRunner, choose_replicas};
use lushan_train::{Preset, TrainConfig, TrainOverrides};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Training throughput: tokens/s, ms/step and model FLOP utilisation after a warm-up.
    Train(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value_t = Preset::ShakespeareChar)]
    preset: Preset,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Vocabulary size of the random data (65 = tiny Shakespeare's characters).
    #[arg(long, default_value_t = 65)]
    vocab_size: usize,
    #[command(flatten)]
    settings: TrainOverrides,
}

pub fn run(bench: Bench) -> Result<ExitCode> {
    match bench {
        Bench::Train(args) => train(args),
    }
}

/// Same work per step as `lushan train` (forward, backward, clip, AdamW) on random tokens.
fn train(args: TrainArgs) -> Result<ExitCode> {
    let mut settings = args.settings.clone();
    if args.preset == Preset::BabyGpt && settings.dropout.is_none() {
        settings.dropout = Some(0.0); // the PyTorch reference figures are without dropout
    }
    let config = TrainConfig::resolve(args.preset, None, &settings)?;
    let mcfg = config.model_config(args.vocab_size);
    let mut model = Gpt::new(mcfg.clone(), config.seed)?;
    let (b, t) = (config.batch_size, config.block_size);
    let replicas = choose_replicas(config.data_parallel, model.num_params(), b);
    let mut runner = BatchRunner::new(&mcfg, b, t, replicas)?;
    let mut grads = vec![0.0; model.num_params()];
    let mut opt = AdamWState::new(model.num_params());
    let hp =
        OptimizerSettings { beta1: config.beta1, beta2: config.beta2, eps: 1e-8, weight_decay: config.weight_decay };
    let mut rng = Rng::new(config.seed);
    let mut tokens = vec![0u32; b * t + 1];
    let threads = rayon::current_num_threads();
    println!(
        "bench train: {:?} preset, {} params, B={b} T={t} accum={}, {threads} threads, {} data-parallel replica(s), {} warm-up + {} timed steps",
        args.preset,
        model.num_params(),
        config.gradient_accumulation_steps,
        runner.replicas(),
        args.warmup,
        args.steps
    );
    let mut times = Vec::new();
    for i in 0..args.warmup + args.steps {
        let start = Instant::now();
        grads.fill(0.0);
        for _ in 0..config.gradient_accumulation_steps {
            tokens.iter_mut().for_each(|x| *x = rng.below(args.vocab_size as u64) as u32);
            let scale = 1.0 / config.gradient_accumulation_steps as f32;
            runner.forward_backward(&model, &tokens[..b * t], &tokens[1..], scale, rng.next_u64(), &mut grads)?;
        }
        clip_grad_norm(&mut grads, config.grad_clip);
        opt.update(&mut model, &grads, config.learning_rate, &hp);
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let tokens_per_step = config.tokens_per_step() as f64;
    // nanoGPT's estimate: 6N + 12·L·H·Q·T FLOPs per token (N excludes the position table).
    let n = lushan_model::params::count_non_embedding(&mcfg) as f64;
    let flops_per_token = 6.0 * n + 12.0 * (mcfg.n_layer * mcfg.n_head * mcfg.head_size() * t) as f64;
    let achieved = flops_per_token * tokens_per_step / median;
    let ceiling = measure_sgemm_ceiling();
    println!("ms/step: median {:.2}, mean {:.2}", median * 1e3, mean * 1e3);
    println!("tokens/s: {:.0} (median step)", tokens_per_step / median);
    println!(
        "model FLOP/s: {:.1} GFLOP/s = {:.0}% of the sgemm ceiling measured in this run ({:.1} GFLOP/s at 768×768×768)",
        achieved / 1e9,
        100.0 * achieved / ceiling,
        ceiling / 1e9,
    );
    println!(
        "JSON {}",
        serde_json::json!({"bench": "train", "preset": format!("{:?}", args.preset), "ms_per_step": median * 1e3,
            "tokens_per_second": tokens_per_step / median, "gflops": achieved / 1e9, "sgemm_ceiling_gflops": ceiling / 1e9,
            "threads": threads, "replicas": runner.replicas()})
    );
    Ok(ExitCode::SUCCESS)
}

/// Best of a few 768³ matrix products through the same matmul kernel the model uses.
fn measure_sgemm_ceiling() -> f64 {
    let n = 768;
    let a = vec![0.5f32; n * n];
    let w = vec![0.25f32; n * n];
    let mut out = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let start = Instant::now();
        lushan_kernels::matmul::forward(&mut out, &a, &w, None, n, n);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best
}
