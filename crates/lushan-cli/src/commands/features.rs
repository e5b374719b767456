//! `lushan features train`: a sparse autoencoder on one layer's residual stream (see
//! `lushan_model::features`), saved beside the model with each feature's top-activating contexts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail, ensure};
use lushan_model::features::{Context, Sae, SaeConfig, SavedSae, default_sae_dir, model_fingerprint, save_sae_dir};
use lushan_train::features::{MAX_ROWS, SaeTraining, collect_residuals, splice_losses, top_activations, train_sae};

use crate::model_dir;

/// Tokens shown before and after an activating token in a context.
const CONTEXT_BEFORE: usize = 12;
const CONTEXT_AFTER: usize = 3;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a sparse autoencoder on the residual stream entering block --layer, over the text of --data.
    Train(TrainArgs),
}

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--layer -1` reaches the validation that names the flag
pub struct TrainArgs {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The residual stream entering block L: 0 = the embeddings, n_layer = after the last block.
    #[arg(long, value_name = "L")]
    layer: i64,
    /// A text file to run the model over; its activations train the SAE and give the features' contexts.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Dictionary size as a multiple of n_embd.
    #[arg(long, default_value_t = 4, value_name = "K")]
    expansion: usize,
    /// Sparsity penalty: loss = MSE + l1·Σ|f|·‖d‖.
    #[arg(long, default_value_t = 0.3)]
    l1: f32,
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Activations per step.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Resample features that did not fire in this many steps (0: never).
    #[arg(long, default_value_t = 500)]
    resample_every: u64,
    /// Most tokens of --data used.
    #[arg(long, default_value_t = 200_000)]
    max_tokens: usize,
    /// Contexts kept per feature.
    #[arg(long, default_value_t = 5)]
    contexts: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (default: MODEL/features/layer-L).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Train(args) => train(args),
    }
}

fn train(args: TrainArgs) -> Result<ExitCode> {
    ensure!(args.expansion >= 1, "--expansion must be at least 1 (features per residual dimension), got 0");
    ensure!(args.l1.is_finite() && args.l1 >= 0.0, "--l1 must be a finite number ≥ 0, got {}", args.l1);
    ensure!(args.lr.is_finite() && args.lr > 0.0, "--lr must be a positive number, got {}", args.lr);
    ensure!(args.steps >= 1 && args.batch_size >= 1, "--steps and --batch-size must be at least 1");
    ensure!(args.max_tokens >= 2, "--max-tokens must be at least 2, got {}", args.max_tokens);
    let (model, tokenizer) = model_dir::load(&args.model)?;
    let cfg = &model.config;
    let layer = match usize::try_from(args.layer) {
        Ok(l) if l <= cfg.n_layer => l,
        _ => bail!(
            "--layer {} is out of range: the model has {} blocks, so the residual stream has layers 0..={} \
             (0 = the embeddings, {} = after the last block)",
            args.layer,
            cfg.n_layer,
            cfg.n_layer,
            cfg.n_layer
        ),
    };
    let n_features = cfg
        .n_embd
        .checked_mul(args.expansion)
        .filter(|&f| f.checked_mul(cfg.n_embd).is_some_and(|x| x <= 1 << 28))
        .with_context(|| format!("--expansion {} makes a dictionary too large to hold", args.expansion))?;
    let text =
        std::fs::read_to_string(&args.data).with_context(|| format!("--data: reading {}", args.data.display()))?;
    let mut tokens = tokenizer.encode(&text).with_context(|| format!("--data: encoding {}", args.data.display()))?;
    tokens.truncate(args.max_tokens.min(MAX_ROWS));
    ensure!(
        tokens.len() >= 2,
        "--data {} encodes to {} token(s): at least 2 are needed",
        args.data.display(),
        tokens.len()
    );

    println!(
        "collecting the residual stream entering block {layer} over {} tokens of {}",
        tokens.len(),
        args.data.display()
    );
    let rows = collect_residuals(&model, &tokens, layer, tokens.len()).context("running the model over --data")?;
    let config =
        SaeConfig { n_embd: cfg.n_embd, n_features, layer, model_hash: model_fingerprint(&model), l1: args.l1 };
    let mut sae = Sae::new(config, args.seed)?;
    let settings = SaeTraining {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        resample_every: args.resample_every,
        seed: args.seed,
    };
    let load =
        std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_owned));
    let report = train_sae(&mut sae, &rows, &settings, &mut |step, loss, l0| {
        println!("step {step}/{}: loss {loss:.4}, L0 {l0:.1}", args.steps);
    })
    .context("training the sparse autoencoder")?;

    // The loss check runs on the tail of the text (the held-out tenth of the activations).
    let heldout = &tokens[tokens.len() - (tokens.len() / 10).max(2)..];
    let splice = splice_losses(&model, &sae, heldout).context("splicing the reconstruction into the model")?;
    let top = top_activations(&sae, &rows, args.contexts);
    let piece = |range: &[u32]| tokenizer.decode(range).unwrap_or_default();
    // Contexts stay inside the model's window the activation was computed in.
    let window = cfg.block_size;
    let contexts: Vec<Vec<Context>> = top
        .iter()
        .map(|list| {
            list.iter()
                .map(|&(activation, row)| {
                    let window_start = row - row % window;
                    let start = row.saturating_sub(CONTEXT_BEFORE).max(window_start);
                    let end = (row + 1 + CONTEXT_AFTER).min(tokens.len()).min(window_start + window);
                    Context {
                        activation,
                        before: piece(&tokens[start..row]),
                        token: piece(&tokens[row..row + 1]),
                        after: piece(&tokens[row + 1..end]),
                    }
                })
                .collect()
        })
        .collect();
    let summary = serde_json::json!({
        "expansion": args.expansion,
        "tokens": tokens.len(),
        "data": args.data.display().to_string(),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "report": report,
        "splice": splice,
        "load_average": load,
    });
    let out = args.out.clone().unwrap_or_else(|| default_sae_dir(&args.model, layer));
    save_sae_dir(&out, &SavedSae { sae, summary, contexts }).context("saving the sparse autoencoder")?;
    println!(
        "held-out reconstruction: MSE {:.5} per element, fraction of variance unexplained {:.4}; L0 {:.1} of {n_features} \
         features; {} dead ({} resampled during training)",
        report.mse, report.fvu, report.l0, report.dead_features, report.resampled_features
    );
    println!(
        "model loss over {} held-out tokens: clean {:.4}, with the reconstruction spliced in {:.4}, with the stream \
         zeroed {:.4}: the SAE preserves {:.1} % of the loss",
        splice.tokens,
        splice.clean_loss,
        splice.spliced_loss,
        splice.zero_ablated_loss,
        100.0 * splice.loss_preserved
    );
    println!(
        "speed: {:.0} activations/s ({} steps × {} in {:.1} s; expansion {}, n_embd {}; load average {})",
        report.activations_per_second,
        report.steps,
        args.batch_size.min(report.train_rows),
        report.seconds,
        args.expansion,
        cfg.n_embd,
        load.as_deref().unwrap_or("unknown")
    );
    // The encoder is one dense product per activation (2·C·F FLOPs) whatever the sparsity: at the
    // machine's GEMM ceiling it alone bounds the rate.
    let ceiling = super::bench::measure_sgemm_ceiling();
    let encoder_flops = 2.0 * cfg.n_embd as f64 * n_features as f64;
    println!(
        "the dense encoder product alone ({:.0} kFLOP an activation) allows at most {:.0} activations/s at the sgemm \
         ceiling measured now ({:.1} GFLOP/s)",
        encoder_flops / 1e3,
        ceiling / encoder_flops,
        ceiling / 1e9
    );
    println!("wrote the sparse autoencoder to {}", out.display());
    Ok(ExitCode::SUCCESS)
}
