//! `lushan bench finetune`: one fine-tuning optimiser step (forward + backward + gradient clipping + AdamW)
//! at the shapes, flags and data of `../shared/bench/hf_finetune_bench.py` (transformers + peft), so the two
//! can be run side by side (`tools/bench_finetune_vs_hf.sh`). Random weights, random ids, the same batch
//! every step, as the script does. The step goes through the training code `lushan train` runs:
//! [`BatchRunner::forward_backward_shaped`], [`clip_grad_norm`] and [`AdamWState::update`].
//!
//! The tasks, and how their batches mirror the script's:
//! - `classify`: a `GPT2ForSequenceClassification`-shaped model (score head, no bias). Ids are uniform in
//!   `[0, V-2]` and the padding id is `V-1`, so no sequence holds padding and every one is pooled at its
//!   last position `T-1`; labels are uniform in `[0, num_labels)`.
//! - `sft`: the language-model head with a loss mask. The script passes `labels = ids` with
//!   `labels[:, :T//2] = -100` and transformers shifts inside the model: position `i` (0 ≤ i ≤ T-2) predicts
//!   `labels[i+1]`, and position `T-1` predicts nothing. lushan takes explicit next-token targets, so the
//!   same loss is `targets[i] = ids[i+1]` for `T//2 - 1 ≤ i ≤ T-2` and ignored (`u32::MAX`) for every other
//!   `i` (the first `T//2 - 1` positions and the last): `T - T//2` counted positions per sequence, the same
//!   positions as transformers counts. (lushan projects only those rows onto the vocabulary; transformers
//!   projects all `B·T`.)
//! - `lora`: `classify` or `sft` (`--lora-task`) with LoRA adapters on `c_attn` only — rank `--r`,
//!   `alpha = 2r`, dropout 0, as the script's PEFT config — and the base frozen; a classifier's score head
//!   trains too (PEFT's `modules_to_save` for `SEQ_CLS`).
//!
//! Differences that do not change the work: the script decays every parameter by 0.01, lushan only 2-D
//! weights (DESIGN.md §3); the script's AdamW is PyTorch's (betas 0.9/0.999, eps 1e-8), as here.
//!
//! Besides the step time the bench reports where it goes: the time of each part of the timed steps (zeroing
//! the gradients, forward + backward, clipping, AdamW), and forward alone from `--forward-runs` extra passes
//! through [`BatchRunner::evaluate`] (the same forward, no backward), so backward ≈ forward + backward −
//! forward.

use super::bench::{fmt_mib, median, peak_rss_mib};
use anyhow::{Result, bail};
use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::rng::Rng;
use lushan_model::{Gpt, Head, Lora, LoraConfig, LoraTarget, ModelConfig};
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use lushan_train::parallel::{BatchRunner, choose_replicas};
use std::process::ExitCode;
use std::time::Instant;

/// What is fine-tuned (the script's `--task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Every weight of a sequence classifier (score head on the last non-padding token).
    Classify,
    /// Every weight of a language model, with the loss masked on the first half of each sequence.
    Sft,
    /// LoRA adapters on `c_attn` only (the base frozen), for `--lora-task`.
    Lora,
}

/// The objective under LoRA (the script's `--lora-task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    Classify,
    Sft,
}

impl Objective {
    fn name(self) -> &'static str {
        match self {
            Objective::Classify => "classify",
            Objective::Sft => "sft",
        }
    }
}

/// Flags and defaults are the script's (its `--n_layer` spellings are accepted too).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Task::Classify)]
    task: Task,
    /// The objective of `--task lora`.
    #[arg(long, value_enum, default_value_t = Objective::Classify, alias = "lora_task")]
    lora_task: Objective,
    /// LoRA rank (alpha is 2r, dropout 0, targets c_attn).
    #[arg(long, default_value_t = 8)]
    r: usize,
    #[arg(long, default_value_t = 6, alias = "n_layer")]
    n_layer: usize,
    #[arg(long, default_value_t = 6, alias = "n_head")]
    n_head: usize,
    #[arg(long, default_value_t = 384, alias = "n_embd")]
    n_embd: usize,
    #[arg(long, default_value_t = 50257, alias = "vocab_size")]
    vocab_size: usize,
    /// Sequence length T (also the model's context, as `n_positions` in the script).
    #[arg(long, default_value_t = 256, alias = "block_size")]
    block_size: usize,
    #[arg(long, default_value_t = 16, alias = "batch_size")]
    batch_size: usize,
    /// Classes of the classifier (at least 2: transformers treats one label as regression).
    #[arg(long, default_value_t = 2, alias = "num_labels")]
    num_labels: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f32,
    #[arg(long, default_value_t = 0.01, alias = "weight_decay")]
    weight_decay: f32,
    /// Global gradient-norm clip (the script's `clip_grad_norm_(params, 1.0)`).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Data-parallel replicas (0: as `lushan train` chooses — one per core for models up to 30M parameters).
    #[arg(long, default_value_t = 0)]
    data_parallel: usize,
    /// Forward-only passes after the timed steps, to split forward + backward (0: skip).
    #[arg(long, default_value_t = 3)]
    forward_runs: usize,
    /// Seed of the weights and of the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl Args {
    /// The objective actually trained: the task, or under LoRA the LoRA task.
    fn objective(&self) -> Objective {
        match self.task {
            Task::Classify => Objective::Classify,
            Task::Sft => Objective::Sft,
            Task::Lora => self.lora_task,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.vocab_size < 2 {
            bail!("--vocab-size must be at least 2 (the last id is the padding id, never in the data)");
        }
        if u32::try_from(self.vocab_size).is_err() {
            bail!("--vocab-size must fit in 32 bits");
        }
        match self.objective() {
            Objective::Classify if self.num_labels < 2 => {
                bail!("--num-labels must be at least 2 (transformers treats one label as regression)")
            }
            Objective::Sft if self.block_size < 2 => {
                bail!("--block-size must be at least 2 for sft (a sequence of one token predicts nothing)")
            }
            _ => Ok(()),
        }
    }

    /// The model: the script's `GPT2Config` (dropout 0), with the classifier head for `classify`.
    fn model_config(&self) -> ModelConfig {
        let mut cfg = ModelConfig::new(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd);
        if self.objective() == Objective::Classify {
            cfg.head = Head::Classifier {
                labels: (0..self.num_labels).map(|i| format!("LABEL_{i}")).collect(),
                pad_token_id: (self.vocab_size - 1) as u32,
            };
        }
        cfg
    }
}

/// One batch as the script draws it: inputs (B·T) uniform in `[0, V-2]`, and the targets — (B) labels for a
/// classifier, else (B·T) next-token targets masked as transformers masks the script's shifted labels
/// (module docs).
fn make_batch(objective: Objective, b: usize, t: usize, vocab: usize, labels: usize, rng: &mut Rng) -> Batch {
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64 - 1) as u32).collect();
    let targets = match objective {
        Objective::Classify => (0..b).map(|_| rng.below(labels as u64) as u32).collect(),
        Objective::Sft => inputs
            .chunks_exact(t)
            .flat_map(|row| {
                // labels[j] = ids[j] counts for j ≥ T//2; position i predicts labels[i+1].
                (0..t).map(move |i| if i + 1 >= t / 2 && i + 1 < t { row[i + 1] } else { IGNORE_INDEX })
            })
            .collect(),
    };
    Batch { inputs, targets }
}

struct Batch {
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

/// Seconds of each part of one step.
#[derive(Clone, Copy, Default)]
struct StepTimes {
    total: f64,
    zero: f64,
    forward_backward: f64,
    clip: f64,
    adamw: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    args.validate()?;
    let objective = args.objective();
    let cfg = args.model_config();
    let mut model = Gpt::new(cfg.clone(), args.seed)?;
    if args.task == Task::Lora {
        let lora =
            LoraConfig { rank: args.r, alpha: 2.0 * args.r as f32, dropout: 0.0, targets: vec![LoraTarget::Qkv] };
        model.attach_lora(Lora::new(lora, &cfg, args.seed ^ 0x6c6f_7261)?)?;
    }
    let (b, t) = (args.batch_size, args.block_size);
    let replicas = choose_replicas(args.data_parallel, model.num_params(), b);
    let mut runner = BatchRunner::for_model(&cfg, model.lora_shape(), b, t, replicas)?;
    let trainable = model.num_trainable();
    let mut grads = vec![0.0f32; trainable];
    let mut opt = AdamWState::new(trainable);
    let hp = OptimizerSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: args.weight_decay };
    let mut rng = Rng::new(args.seed ^ 0x6461_7461);
    let batch = make_batch(objective, b, t, args.vocab_size, args.num_labels, &mut rng);
    let counted = batch.targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
    let threads = rayon::current_num_threads();
    let task_name = match args.task {
        Task::Lora => format!("lora ({}, r={}, alpha={}, c_attn)", objective.name(), args.r, 2 * args.r),
        Task::Classify => "classify".into(),
        Task::Sft => "sft".into(),
    };
    println!(
        "bench finetune: {task_name}, L{} H{} C{} V{}, B={b} T={t}, {} of {} params trainable, {counted} counted targets, \
         {threads} threads, {} data-parallel replica(s), {} warm-up + {} timed steps",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        trainable,
        model.num_params(),
        runner.replicas(),
        args.warmup,
        args.steps
    );

    let mut times = Vec::with_capacity(args.steps);
    let mut last_loss = f32::NAN;
    for i in 0..args.warmup + args.steps {
        let start = Instant::now();
        grads.fill(0.0);
        let zeroed = Instant::now();
        let loss = runner.forward_backward_shaped(
            &model,
            &batch.inputs,
            &batch.targets,
            (b, t),
            1.0,
            rng.next_u64(),
            &mut grads,
        )?;
        let passed = Instant::now();
        let norm = clip_grad_norm(&mut grads, args.grad_clip);
        let clipped = Instant::now();
        opt.update(&mut model, &grads, args.lr, &hp);
        let end = Instant::now();
        if !loss.is_finite() || !norm.is_finite() {
            bail!("step {}: loss {loss}, gradient norm {norm}: not finite", i + 1);
        }
        last_loss = loss;
        if i >= args.warmup {
            times.push(StepTimes {
                total: (end - start).as_secs_f64(),
                zero: (zeroed - start).as_secs_f64(),
                forward_backward: (passed - zeroed).as_secs_f64(),
                clip: (clipped - passed).as_secs_f64(),
                adamw: (end - clipped).as_secs_f64(),
            });
        }
    }
    // Read before the forward-only passes (which allocate nothing, but keep the figure about the steps).
    let peak_rss = peak_rss_mib();
    let mut forward_times = Vec::with_capacity(args.forward_runs);
    for _ in 0..args.forward_runs {
        let start = Instant::now();
        runner.evaluate(&model, &batch.inputs, &batch.targets, (b, t))?;
        forward_times.push(start.elapsed().as_secs_f64());
    }

    let part = |f: fn(&StepTimes) -> f64| median(&times.iter().map(f).collect::<Vec<_>>());
    let step = part(|s| s.total);
    let mean = times.iter().map(|s| s.total).sum::<f64>() / times.len() as f64;
    let (zero, fwd_bwd, clip, adamw) =
        (part(|s| s.zero), part(|s| s.forward_backward), part(|s| s.clip), part(|s| s.adamw));
    let forward = (!forward_times.is_empty()).then(|| median(&forward_times));
    let tokens_per_s = (b * t) as f64 / step;
    let ms = |s: f64| s * 1e3;
    println!("ms/step: median {:.2}, mean {:.2} (last loss {last_loss:.4})", ms(step), ms(mean));
    println!("tokens/s: {tokens_per_s:.1} (B·T per median step)");
    match forward {
        Some(f) => println!(
            "split (medians): zero grads {:.2} ms, forward+backward {:.2} ms (forward alone {:.2} ms → backward ≈ {:.2} ms), clip {:.2} ms, AdamW {:.2} ms",
            ms(zero),
            ms(fwd_bwd),
            ms(f),
            ms(fwd_bwd - f),
            ms(clip),
            ms(adamw)
        ),
        None => println!(
            "split (medians): zero grads {:.2} ms, forward+backward {:.2} ms, clip {:.2} ms, AdamW {:.2} ms",
            ms(zero),
            ms(fwd_bwd),
            ms(clip),
            ms(adamw)
        ),
    }
    println!("peak RSS: {}", fmt_mib(peak_rss));
    println!(
        "JSON {}",
        serde_json::json!({
            "bench": "finetune",
            "task": match args.task { Task::Classify => "classify", Task::Sft => "sft", Task::Lora => "lora" },
            "lora_task": (args.task == Task::Lora).then(|| objective.name()),
            "B": b, "T": t, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
            "ms_per_step": ms(step), "tokens_per_s": tokens_per_s,
            "trainable_params": trainable, "peak_rss_mib": peak_rss,
            "optimizer_state_values": opt.m.len() + opt.v.len(),
            "counted_targets": counted, "threads": threads, "replicas": runner.replicas(),
            "zero_ms": ms(zero), "forward_backward_ms": ms(fwd_bwd), "forward_ms": forward.map(ms),
            "clip_ms": ms(clip), "adamw_ms": ms(adamw), "last_loss": last_loss,
            "lushan": env!("CARGO_PKG_VERSION"),
        })
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap
    use super::*;

    fn args(extra: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("finetune").chain(extra.iter().copied())).unwrap().args
    }

    #[test]
    fn defaults_are_the_scripts_and_its_spellings_parse() {
        let a = args(&[]);
        assert_eq!((a.task, a.n_layer, a.n_head, a.n_embd, a.vocab_size), (Task::Classify, 6, 6, 384, 50257));
        assert_eq!((a.block_size, a.batch_size, a.num_labels, a.steps, a.warmup, a.r), (256, 16, 2, 10, 2, 8));
        assert_eq!((a.lr, a.weight_decay), (5e-5, 0.01));
        let a = args(&["--task", "lora", "--lora_task", "sft", "--n_layer", "12", "--block_size", "128"]);
        assert_eq!((a.objective(), a.n_layer, a.block_size), (Objective::Sft, 12, 128));
        assert!(args(&["--num-labels", "1"]).validate().is_err());
        assert!(args(&["--task", "sft", "--block-size", "1"]).validate().is_err());
        assert!(args(&["--steps", "0"]).validate().is_err());
        assert!(args(&["--vocab-size", "1"]).validate().is_err());
    }

    #[test]
    fn sft_targets_count_what_transformers_counts_after_its_shift() {
        // transformers: labels = ids, labels[:, :T//2] = -100, then position i predicts labels[i+1].
        for t in [2, 3, 8, 9] {
            let mut rng = Rng::new(1);
            let batch = make_batch(Objective::Sft, 2, t, 50, 2, &mut rng);
            for (row, targets) in batch.inputs.chunks_exact(t).zip(batch.targets.chunks_exact(t)) {
                // The script's labels, then transformers' shift (logits[:, :-1] against labels[:, 1:]).
                let mut labels: Vec<Option<u32>> = row.iter().map(|&x| Some(x)).collect();
                labels[..t / 2].fill(None);
                let mut hf: Vec<u32> = labels[1..].iter().map(|l| l.unwrap_or(IGNORE_INDEX)).collect();
                hf.push(IGNORE_INDEX); // the last position predicts nothing
                assert_eq!(targets, hf.as_slice());
                assert_eq!(targets.iter().filter(|&&x| x != IGNORE_INDEX).count(), t - t / 2);
                assert_eq!(targets[t - 1], IGNORE_INDEX);
            }
            assert!(batch.inputs.iter().all(|&x| x < 49), "the padding id 49 never occurs");
        }
        let batch = make_batch(Objective::Classify, 3, 4, 50, 2, &mut Rng::new(2));
        assert_eq!(batch.targets.len(), 3);
        assert!(batch.targets.iter().all(|&l| l < 2) && batch.inputs.iter().all(|&x| x < 49));
    }

    #[test]
    fn every_task_runs_a_tiny_model() {
        let tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "37", "--block-size", "8"];
        for task in [&["--task", "classify"][..], &["--task", "sft"], &["--task", "lora", "--lora-task", "sft"]] {
            let mut a: Vec<&str> = tiny.to_vec();
            a.extend_from_slice(task);
            a.extend_from_slice(&["--batch-size", "3", "--steps", "2", "--warmup", "1", "--forward-runs", "1"]);
            assert_eq!(run(args(&a)).unwrap(), ExitCode::SUCCESS);
        }
    }
}
