//! `lushan bench`: speed figures printed for people and scripts (never asserted by tests).

use anyhow::{Context, Result, bail};
use lushan_kernels::packed_gemm::Precision;
use lushan_kernels::rng::Rng;
use lushan_model::activations::TrainingMemory;
use lushan_model::sampling::argmax;
use lushan_model::{BatchScratch, DecodeState, Generator, Gpt, ModelConfig, Sampling};
use lushan_train::distributed::{RankSlice, micro_batch};
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use lushan_train::parallel::{BatchRunner, choose_replicas};
use lushan_train::{Preset, TrainConfig, TrainOverrides};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Bench {
    /// Training throughput: tokens/s, ms/step and model FLOP utilisation after a warm-up.
    Train(TrainArgs),
    /// Batch-1 generation speed with a KV cache (random GPT-2-initialised model, greedy): prefill and
    /// decode tokens/s, against the memory-bandwidth bound measured in the same run.
    Generate(GenerateArgs),
    /// Serving throughput and latency: 1, 4 and 16 concurrent streaming clients against `lushan serve`
    /// (aggregate tokens/s, time to first token, inter-token latency p50/p99).
    Serve(super::bench_serve::Args),
    /// Fine-tuning step throughput (classifier, masked SFT, LoRA) at the shapes of
    /// `../shared/bench/hf_finetune_bench.py`: ms/step, tokens/s, trainable parameters, peak RSS.
    Finetune(super::bench_finetune::Args),
    /// `explain`'s causal sweep: direct logit attribution plus the zero ablation of every head and MLP, for a
    /// random prompt on a random model of GPT-2 124M shapes.
    Explain(super::bench_explain::Args),
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
    /// Vocabulary size of the random data [default: 50257 for `--preset gpt2`, else 65 (tiny
    /// Shakespeare's characters)].
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Train with the attention kernel that keeps the (B, NH, T, T) probabilities, as before the tiled one
    /// (for comparison).
    #[arg(long)]
    attention_maps: bool,
    /// Under `mpirun`: sum the gradients in one blocking all-reduce after the backward pass instead of
    /// overlapping the sum of each layer's gradients with the rest of the pass (for comparison).
    #[arg(long)]
    no_overlap: bool,
    #[command(flatten)]
    settings: BenchTrainSettings,
}

/// The training settings that change a step's work (the shape, the batch, the optimiser); the rest of
/// `lushan train`'s (data, schedule, evaluation, output) do not enter a benchmark. Unset = the preset's.
#[derive(clap::Args)]
pub struct BenchTrainSettings {
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per sequence (the context length).
    #[arg(long)]
    block_size: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    n_layer: Option<usize>,
    /// Attention heads per block.
    #[arg(long)]
    n_head: Option<usize>,
    /// Embedding width.
    #[arg(long)]
    n_embd: Option<usize>,
    /// Dropout probability (the preset's; 0 for baby-gpt, as the PyTorch reference figures).
    #[arg(long)]
    dropout: Option<f32>,
    /// `learned` or `sinusoidal` position encoding.
    #[arg(long)]
    position_encoding: Option<lushan_model::PositionEncoding>,
    /// Micro-batches per update.
    #[arg(long)]
    gradient_accumulation_steps: Option<usize>,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long)]
    grad_clip: Option<f32>,
    /// Data-parallel replicas (0 = automatic).
    #[arg(long)]
    data_parallel: Option<usize>,
    /// Keep only each block's input in the forward and recompute the block before its backward.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    checkpoint_activations: Option<bool>,
    /// Matrix products of the linear layers and the output layer: `f32` or `bf16` (see `lushan train --help`).
    #[arg(long)]
    precision: Option<lushan_train::config::PrecisionSetting>,
    /// Seed of the initialisation and the random tokens.
    #[arg(long)]
    seed: Option<u64>,
}

impl From<BenchTrainSettings> for TrainOverrides {
    fn from(s: BenchTrainSettings) -> Self {
        TrainOverrides {
            batch_size: s.batch_size,
            block_size: s.block_size,
            n_layer: s.n_layer,
            n_head: s.n_head,
            n_embd: s.n_embd,
            dropout: s.dropout,
            position_encoding: s.position_encoding,
            gradient_accumulation_steps: s.gradient_accumulation_steps,
            grad_clip: s.grad_clip,
            data_parallel: s.data_parallel,
            checkpoint_activations: s.checkpoint_activations,
            precision: s.precision,
            seed: s.seed,
            ..TrainOverrides::default()
        }
    }
}

pub fn run(bench: Bench) -> Result<ExitCode> {
    match bench {
        Bench::Train(args) => train(args),
        Bench::Generate(args) => generate(args),
        Bench::Serve(args) => super::bench_serve::run(args),
        Bench::Finetune(args) => super::bench_finetune::run(args),
        Bench::Explain(args) => super::bench_explain::run(args),
    }
}

/// Same work per step as `lushan train` (forward, backward, clip, AdamW) on random tokens.
fn train(args: TrainArgs) -> Result<ExitCode> {
    let mut settings = TrainOverrides::from(args.settings);
    if args.preset == Preset::BabyGpt && settings.dropout.is_none() {
        settings.dropout = Some(0.0); // the PyTorch reference figures are without dropout
    }
    if args.preset == Preset::Gpt2 {
        // The reference figure for GPT-2 124M on a CPU: B=4, T=64 (bench/BASELINES.md).
        settings.batch_size.get_or_insert(4);
        settings.block_size.get_or_insert(64);
    }
    let vocab_size = args.vocab_size.unwrap_or(if args.preset == Preset::Gpt2 { 50257 } else { 65 });
    let config = TrainConfig::resolve(args.preset, None, &settings)?;
    let mcfg = config.model_config(vocab_size);
    let mut model = Gpt::new(mcfg.clone(), config.seed)?;
    let (b, t) = (config.batch_size, config.block_size);
    // Under `mpirun`, each rank runs its share of the global batch and the ranks sum their gradients, as
    // `lushan train` does.
    let mut group = lushan_train::distributed::connect()?;
    group.set_overlap(!args.no_overlap);
    let (rank, ranks) = (group.rank(), group.size());
    anyhow::ensure!(ranks <= b, "--batch-size {b} cannot be split over {ranks} ranks: give at least {ranks}");
    let rank_b = lushan_train::distributed::rank_share(0, ranks, b).len();
    let replicas = choose_replicas(config.data_parallel, model.num_params(), rank_b);
    let memory = TrainingMemory {
        checkpoint_blocks: config.checkpoint_activations,
        attention_maps: args.attention_maps,
        precision: config.precision.0,
    };
    let mut runner = BatchRunner::with_memory(&mcfg, None, rank_b, t, replicas, memory)?;
    let mut grads = vec![0.0; model.num_params()];
    let mut opt = AdamWState::new(model.num_params());
    let hp =
        OptimizerSettings { beta1: config.beta1, beta2: config.beta2, eps: 1e-8, weight_decay: config.weight_decay };
    let mut rng = Rng::new(config.seed);
    let mut tokens = vec![0u32; b * t + 1];
    let threads = rayon::current_num_threads();
    let writer = rank == 0;
    let k = config.gradient_accumulation_steps;
    // Whether each step packs the weights once for all its micro-batches (as `lushan train` decides).
    let step_packs = runner.packs_for_step(&model, k);
    if writer {
        println!(
            "bench train: {:?} preset, {} params, B={b} T={t} accum={}, {} × {threads} threads, {} data-parallel replica(s) per rank, {} warm-up + {} timed steps, attention {}{}, products {}{}",
            args.preset,
            model.num_params(),
            config.gradient_accumulation_steps,
            group.describe(),
            runner.replicas(),
            args.warmup,
            args.steps,
            if args.attention_maps { "keeping the T×T probabilities" } else { "tiled (log-sum-exp kept)" },
            if config.checkpoint_activations { ", blocks checkpointed" } else { "" },
            lushan_kernels::packed_gemm::describe(config.precision.0),
            if step_packs { ", weights packed once per step" } else { "" },
        );
    }
    // Per timed step: its time, and its gradient sums' time in flight and time not hidden (CommStats).
    let (mut times, mut in_flight_times, mut exposed_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut comm_bytes = 0u64;
    for i in 0..args.warmup + args.steps {
        let start = Instant::now();
        let before = group.stats();
        grads.fill(0.0);
        let step = runner.pack_for_step(&model, k);
        for micro in 0..k {
            tokens.iter_mut().for_each(|x| *x = rng.below(vocab_size as u64) as u32);
            let seed = rng.next_u64().wrapping_add((rank * runner.replicas()) as u64);
            let (inputs, targets) = (&tokens[..b * t], &tokens[1..]);
            let mine = RankSlice::of(rank, ranks, inputs, targets, (b, t));
            let scaling = (1.0 / k as f32, seed);
            let model = (&model, step.as_ref());
            micro_batch(&mut group, &mut runner, model, mine, t, scaling, &mut grads, micro + 1 == k)?;
        }
        drop(step);
        clip_grad_norm(&mut grads, config.grad_clip);
        opt.update(&mut model, &grads, config.learning_rate, &hp);
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
            let after = group.stats();
            in_flight_times.push(after.in_flight_seconds - before.in_flight_seconds);
            exposed_times.push(after.seconds - before.seconds);
            comm_bytes = after.bytes - before.bytes;
        }
    }
    // Overlap: the share of the all-reduce time (in flight) that the computing threads did not spend on it
    // (exposed), over all timed steps of all ranks (docs/distributed.md) — a rank that waits for a slower
    // one sees its sums complete at once, the slower one sees them hidden.
    let mut totals = [in_flight_times.iter().sum(), exposed_times.iter().sum()];
    group.sum_f64(&mut totals);
    let [in_flight_total, exposed_total] = totals;
    let overlap = if in_flight_total > 0.0 { (1.0 - exposed_total / in_flight_total).max(0.0) } else { 0.0 };
    // Every rank measures its GEMM ceiling at the same time (each with its own threads), so the sum is what
    // the machine's cores give together, the figure the ranks' combined FLOP/s compares with.
    // With bf16 products the ceiling is the bf16 product's at the same shape (the f32 one is printed too).
    let precision = config.precision.0;
    let mut ceiling = [measure_sgemm_ceiling(), measure_gemm_ceiling(precision)];
    group.sum_f64(&mut ceiling);
    let [sgemm_ceiling, ceiling] = ceiling;
    if !writer {
        return Ok(ExitCode::SUCCESS);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let tokens_per_step = config.tokens_per_step() as f64;
    // nanoGPT's estimate: 6N + 12·L·H·Q·T FLOPs per token (N excludes the position table).
    let n = lushan_model::params::count_non_embedding(&mcfg) as f64;
    let flops_per_token = 6.0 * n + 12.0 * (mcfg.n_layer * mcfg.n_head * mcfg.head_size() * t) as f64;
    let achieved = flops_per_token * tokens_per_step / median;
    let peak_rss = peak_rss_mib();
    println!("ms/step: median {:.2}, mean {:.2}", median * 1e3, mean * 1e3);
    println!("tokens/s: {:.0} (median step)", tokens_per_step / median);
    let every_rank = if ranks > 1 { ", every rank at once" } else { "" };
    if precision == Precision::F32 {
        println!(
            "model FLOP/s: {:.1} GFLOP/s = {:.0}% of the sgemm ceiling measured in this run ({:.1} GFLOP/s at 768×768×768{every_rank})",
            achieved / 1e9,
            100.0 * achieved / ceiling,
            ceiling / 1e9,
        );
    } else {
        println!(
            "model FLOP/s: {:.1} GFLOP/s = {:.0}% of the {precision} GEMM ceiling measured in this run ({:.1} GFLOP/s at 768×768×768{every_rank}; the sgemm ceiling: {:.1} GFLOP/s)",
            achieved / 1e9,
            100.0 * achieved / ceiling,
            ceiling / 1e9,
            sgemm_ceiling / 1e9,
        );
    }
    println!("peak RSS: {}", fmt_mib(peak_rss));
    let median_of = |mut values: Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let (in_flight, exposed) = (median_of(in_flight_times), median_of(exposed_times));
    if ranks > 1 {
        let how = if args.no_overlap {
            "a blocking all-reduce after the backward pass"
        } else if runner.replicas() > 1 {
            "one all-reduce per layer, started after the replicas' sum: overlap needs one replica per rank"
        } else {
            "one non-blocking all-reduce per layer, started as the backward pass finishes it"
        };
        println!(
            "per step ({ranks} ranks): compute {:.2} ms, gradient all-reduce {:.2} ms of which {:.2} ms not hidden \
             ({:.1} % of the step), {:.2} MiB per rank, overlap {:.0} % ({how})",
            (median - exposed) * 1e3,
            in_flight * 1e3,
            exposed * 1e3,
            100.0 * exposed / median,
            comm_bytes as f64 / (1u64 << 20) as f64,
            100.0 * overlap
        );
    }
    println!(
        "JSON {}",
        serde_json::json!({"bench": "train", "preset": format!("{:?}", args.preset), "ms_per_step": median * 1e3,
            "tokens_per_second": tokens_per_step / median, "gflops": achieved / 1e9, "sgemm_ceiling_gflops": sgemm_ceiling / 1e9, "gemm_ceiling_gflops": ceiling / 1e9,
            "threads": threads, "replicas": runner.replicas(), "params": model.num_params(), "ranks": ranks,
            "allreduce_ms": in_flight * 1e3, "allreduce_exposed_ms": exposed * 1e3, "allreduce_bytes": comm_bytes,
            "overlap": overlap,
            "batch_size": b, "block_size": t, "peak_rss_mib": peak_rss,
            "checkpoint_activations": config.checkpoint_activations, "precision": config.precision.0.name(), "attention_maps": args.attention_maps, "step_packs": step_packs})
    );
    Ok(ExitCode::SUCCESS)
}

/// Best of a few 768³ matrix products through the same matmul kernel the model uses.
pub(super) fn measure_sgemm_ceiling() -> f64 {
    measure_gemm_ceiling(Precision::F32)
}

/// [`measure_sgemm_ceiling`] with the products in `precision`.
fn measure_gemm_ceiling(precision: Precision) -> f64 {
    let n = 768;
    let a = vec![0.5f32; n * n];
    let w = vec![0.25f32; n * n];
    let mut out = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let start = Instant::now();
        lushan_kernels::matmul::forward_in(precision, &mut out, &a, &w[..], None, n, n);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best
}

/// Model shapes for `bench generate` and `bench explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Shape {
    /// GPT-2 124M: 12 layers, 12 heads, 768 channels, context 1024, vocabulary 50257.
    Gpt2,
    /// nanoGPT's CPU model: 4 layers, 4 heads, 128 channels, vocabulary 65.
    ShakespeareChar,
    /// nanoGPT's baby GPT: 6 layers, 6 heads, 384 channels, context 256, vocabulary 65.
    BabyGpt,
}

/// The random model a bench runs: a preset shape, parts of it overridden by flags.
#[derive(clap::Args)]
pub struct ShapeArgs {
    /// Model shape; the flags below override parts of it.
    #[arg(long, value_enum, default_value_t = Shape::Gpt2)]
    preset: Shape,
    /// Transformer blocks [default: the preset's].
    #[arg(long)]
    n_layer: Option<usize>,
    /// Attention heads per block [default: the preset's].
    #[arg(long)]
    n_head: Option<usize>,
    /// Embedding width [default: the preset's].
    #[arg(long)]
    n_embd: Option<usize>,
    /// Vocabulary size [default: the preset's].
    #[arg(long)]
    vocab_size: Option<usize>,
}

impl ShapeArgs {
    /// The preset's configuration with the flags' overrides (not yet validated).
    pub fn config(&self) -> ModelConfig {
        let mut cfg = match self.preset {
            Shape::Gpt2 => ModelConfig::gpt2(),
            Shape::ShakespeareChar => ModelConfig::shakespeare_char(65),
            Shape::BabyGpt => ModelConfig::baby_gpt(65),
        };
        cfg.n_layer = self.n_layer.unwrap_or(cfg.n_layer);
        cfg.n_head = self.n_head.unwrap_or(cfg.n_head);
        cfg.n_embd = self.n_embd.unwrap_or(cfg.n_embd);
        cfg.vocab_size = self.vocab_size.unwrap_or(cfg.vocab_size);
        cfg
    }
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Context length [default: the preset's, raised to fit the prompt and the new tokens].
    #[arg(long)]
    block_size: Option<usize>,
    /// Random prompt length.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens generated per run (greedy; at least 2: the first comes from the prefill).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs (after one untimed warm-up); figures are medians over runs.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the weights and of the prompt.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Also decode this many sequences together (batched decoding, as `lushan serve` does for concurrent
    /// requests) and report the aggregate rate against batch 1.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    dtype: crate::model_dir::DtypeArg,
}

pub(super) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What `generate` models, resolved from the preset and the flags.
fn generate_config(args: &GenerateArgs) -> Result<ModelConfig> {
    let mut cfg = args.shape.config();
    let needed = args.prompt_tokens + args.new_tokens;
    cfg.block_size = args.block_size.unwrap_or(cfg.block_size.max(needed));
    if args.prompt_tokens == 0 || args.repeats == 0 {
        bail!("--prompt-tokens and --repeats must be at least 1");
    }
    if args.new_tokens < 2 {
        bail!("--new-tokens must be at least 2 (the first comes from the prefill; the rest are decode steps)");
    }
    if needed > cfg.block_size {
        bail!(
            "--prompt-tokens + --new-tokens = {needed} do not fit in --block-size {} (the window would slide)",
            cfg.block_size
        );
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Timings of one generation: prefill (prompt → first token) and each later token.
struct Run {
    prefill: f64,
    steps: Vec<f64>,
}

/// One generation in `state`'s buffers (reused from run to run, as a server keeps its states and llama-bench
/// its context: allocating a cache for the whole context is not the prefill's work); gives the state back.
fn generate_once(model: &Gpt, state: DecodeState, prompt: &[u32], new_tokens: usize) -> Result<(Run, DecodeState)> {
    let start = Instant::now();
    let mut g = Generator::with_state(model, state, prompt, Sampling::greedy(), 0, new_tokens)?;
    g.next_token()?; // sampled from the prefill's logits
    let prefill = start.elapsed().as_secs_f64();
    let mut steps = Vec::with_capacity(new_tokens);
    loop {
        let t = Instant::now();
        if g.next_token()?.is_none() {
            break;
        }
        steps.push(t.elapsed().as_secs_f64());
    }
    Ok((Run { prefill, steps }, g.into_state()))
}

/// Batch-1 greedy generation with the KV cache, as `lushan generate` runs it (the same `Generator`).
fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let cfg = generate_config(&args)?;
    let dtype = args.dtype.dtype.unwrap_or_default();
    let model = Gpt::new(cfg.clone(), args.seed)?.with_dtype(dtype).with_context(|| format!("--dtype {dtype}"))?;
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let (p, n) = (args.prompt_tokens, args.new_tokens);
    let threads = rayon::current_num_threads();
    let weight_bytes = model.weight_bytes();
    println!(
        "bench generate: {:?} shape (L{} H{} C{} V{} T{}), {} params = {:.1} MB of {dtype} weights, {threads} threads",
        args.shape.preset,
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.block_size,
        model.num_params(),
        weight_bytes as f64 / 1e6
    );
    println!("prompt {p} random tokens, {n} new tokens (greedy), 1 warm-up + {} timed runs", args.repeats);
    let (_, mut state) = generate_once(&model, DecodeState::new(&model, 256), &prompt[..p.min(8)], 8.min(n))?;
    let mut runs = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let (run, kept) = generate_once(&model, state, &prompt, n)?;
        runs.push(run);
        state = kept;
    }
    // Read before the bandwidth probe below allocates its 1 GiB.
    let peak_rss = peak_rss_mib();

    let prefill = median(&runs.iter().map(|r| r.prefill).collect::<Vec<_>>());
    let step_median = median(&runs.iter().map(|r| median(&r.steps)).collect::<Vec<_>>());
    let decode_overall =
        median(&runs.iter().map(|r| r.steps.len() as f64 / r.steps.iter().sum::<f64>()).collect::<Vec<_>>());
    let generate_rate =
        median(&runs.iter().map(|r| n as f64 / (r.prefill + r.steps.iter().sum::<f64>())).collect::<Vec<_>>());

    // Bytes a decode step must read: every weight but the position table (one row of it), plus the keys and
    // values cached so far (at the average position of the decoded tokens).
    let (c, l) = (cfg.n_embd, cfg.n_layer);
    let wpe = if cfg.position_encoding == lushan_model::PositionEncoding::Learned { cfg.block_size * c } else { 0 };
    let avg_pos = p as f64 + n as f64 / 2.0;
    let kv_bytes = 2.0 * (l * c * 4) as f64 * avg_pos;
    let bytes_per_token = (weight_bytes - 4 * wpe + 4 * c) as f64 + kv_bytes;
    let bandwidth = measure_read_bandwidth();
    let bound = bandwidth / bytes_per_token;
    let achieved = 1.0 / step_median;

    println!("prefill: {:.1} ms for {p} tokens ({:.0} tokens/s)", prefill * 1e3, p as f64 / prefill);
    println!(
        "decode: {:.2} ms/token median ({:.1} tokens/s); {:.1} tokens/s overall; whole generation {:.1} new tokens/s",
        step_median * 1e3,
        achieved,
        decode_overall,
        generate_rate
    );
    println!(
        "memory bound: {:.1} MB read per token at {:.1} GB/s measured read bandwidth → {:.1} tokens/s; achieved {:.0}%{}",
        bytes_per_token / 1e6,
        bandwidth / 1e9,
        bound,
        100.0 * achieved / bound,
        if achieved > bound { " (above 100%: the weights stay in the caches between tokens)" } else { "" }
    );
    println!("peak RSS: {}", fmt_mib(peak_rss));
    let batched = if args.batch > 1 {
        let step = batched_step_seconds(&model, &prompt, n, args.batch, args.repeats)?;
        let rate = args.batch as f64 / step;
        println!(
            "batched decode: {} sequences together: {:.2} ms/step median → {:.1} tokens/s aggregate = {:.2}× batch 1",
            args.batch,
            step * 1e3,
            rate,
            rate / achieved
        );
        Some(rate)
    } else {
        None
    };
    println!(
        "JSON {}",
        serde_json::json!({"bench": "generate", "dtype": dtype.name(), "batch": args.batch, "batched_tokens_per_second": batched, "preset": format!("{:?}", args.shape.preset), "params": model.num_params(),
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
            "block_size": cfg.block_size, "threads": threads, "prompt_tokens": p, "new_tokens": n,
            "repeats": args.repeats, "prefill_ms": prefill * 1e3, "prefill_tokens_per_second": p as f64 / prefill,
            "decode_ms_per_token": step_median * 1e3, "decode_tokens_per_second": achieved,
            "decode_tokens_per_second_overall": decode_overall, "generate_tokens_per_second": generate_rate,
            "weight_bytes": weight_bytes, "bytes_per_token": bytes_per_token,
            "read_bandwidth_gbs": bandwidth / 1e9, "bandwidth_bound_tokens_per_second": bound,
            "bandwidth_bound_percent": 100.0 * achieved / bound, "peak_rss_mib": peak_rss})
    );
    Ok(ExitCode::SUCCESS)
}

/// Median seconds of one [`Gpt::decode_batch`] step over `batch` sequences (prompts rotated copies of
/// `prompt`), greedy, `new_tokens` steps per run.
fn batched_step_seconds(model: &Gpt, prompt: &[u32], new_tokens: usize, batch: usize, repeats: usize) -> Result<f64> {
    if batch > BatchScratch::MAX_ROWS {
        bail!("--batch must be at most {}", BatchScratch::MAX_ROWS);
    }
    let mut scratch = BatchScratch::new(model, batch);
    let mut medians = Vec::new();
    for _ in 0..repeats {
        let mut states = Vec::with_capacity(batch);
        let mut next = Vec::with_capacity(batch);
        for s in 0..batch {
            let mut p = prompt.to_vec();
            p.rotate_left(s % prompt.len());
            let mut state = DecodeState::new(model, 256);
            next.push(argmax(model.decode(&mut state, &p)?) as u32);
            states.push(state);
        }
        let mut steps = Vec::with_capacity(new_tokens);
        for _ in 1..new_tokens {
            let t = Instant::now();
            let mut refs: Vec<&mut DecodeState> = states.iter_mut().collect();
            model.decode_batch(&mut refs, &next, &mut scratch)?;
            steps.push(t.elapsed().as_secs_f64());
            for (tok, state) in next.iter_mut().zip(&states) {
                *tok = argmax(state.logits()) as u32;
            }
        }
        medians.push(median(&steps));
    }
    Ok(median(&medians))
}

/// Streaming read bandwidth in bytes/s: best of a few sums of a 1 GiB array (far larger than any cache)
/// split over every thread, through the same kind of loop the decode kernels use.
fn measure_read_bandwidth() -> f64 {
    let a = vec![1.0f32; 1 << 28];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::hint::black_box(lushan_kernels::gemv::stream_sum(std::hint::black_box(&a)));
        best = best.min(start.elapsed().as_secs_f64());
    }
    (a.len() * 4) as f64 / best
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB; `None` where /proc is unavailable.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(super) fn fmt_mib(mib: Option<f64>) -> String {
    mib.map_or_else(|| "unavailable".into(), |m| format!("{m:.0} MiB"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap
    use super::*;

    fn args(extra: &[&str]) -> GenerateArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: GenerateArgs,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("bench").chain(extra.iter().copied())).unwrap().args
    }

    #[test]
    fn generate_config_follows_preset_and_flags() {
        let gpt2 = generate_config(&args(&[])).unwrap();
        assert_eq!((gpt2.n_layer, gpt2.n_embd, gpt2.vocab_size, gpt2.block_size), (12, 768, 50257, 1024));
        // shakespeare-char's context (64) grows to fit 64 + 128 tokens unless set explicitly.
        let small = generate_config(&args(&["--preset", "shakespeare-char"])).unwrap();
        assert_eq!((small.n_layer, small.n_embd, small.vocab_size, small.block_size), (4, 128, 65, 192));
        assert!(generate_config(&args(&["--preset", "shakespeare-char", "--block-size", "64"])).is_err());
        assert!(generate_config(&args(&["--new-tokens", "1"])).is_err());
        assert!(generate_config(&args(&["--repeats", "0"])).is_err());
        assert!(generate_config(&args(&["--n-embd", "30", "--n-head", "4"])).is_err());
    }

    #[test]
    fn generate_once_times_prefill_and_every_later_token() {
        let cfg = generate_config(&args(&["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "11"]))
            .unwrap();
        let model = Gpt::new(cfg, 1).unwrap();
        let (run, state) = generate_once(&model, DecodeState::new(&model, 256), &[1, 2, 3], 5).unwrap();
        assert!(run.prefill > 0.0);
        assert_eq!(run.steps.len(), 4);
        // The state comes back holding that generation's cache; the next run resets it.
        assert_eq!(state.cache.len(), 3 + 4);
        let (again, state) = generate_once(&model, state, &[4, 5], 3).unwrap();
        assert_eq!((again.steps.len(), state.cache.len()), (2, 2 + 2));
        assert!(peak_rss_mib().is_none_or(|m| m > 0.0));
    }
}
