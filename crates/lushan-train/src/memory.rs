//! How much memory a training run needs, estimated from its shape before anything is allocated, so a
//! configuration that cannot fit is refused with the figures and the flag to change — instead of the
//! allocator aborting the process (or the kernel killing it) minutes later.
//!
//! Every product uses checked arithmetic: the sizes come straight from flags, and a shape whose byte count
//! does not even fit in a `u64` is simply "too large".

use crate::error::{Result, TrainError};
use lushan_model::{ModelConfig, PositionEncoding};
use std::path::Path;

const F32: u64 = 4;
const U32: u64 = 4;

/// The shape of a run, as far as memory is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunShape {
    pub vocab_size: usize,
    /// The model's context (the position table's rows).
    pub context: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub sinusoidal: bool,
    /// Classifier labels (0 for a language model).
    pub labels: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence of a training batch (the context, or a task's longest example).
    pub seq_len: usize,
    /// Evaluation batches kept in memory per split (token-shard runs materialise them once).
    pub eval_batches: usize,
    /// Gradient buffers besides the main one (one per data-parallel replica when there are several, and
    /// two for the gradient sum of a job of several processes).
    pub replica_grads: usize,
    /// LoRA: only the adapters train (their own small buffers are ignored); the base needs no gradient or
    /// optimiser moments.
    pub frozen_base: bool,
    /// The model's weights are already in memory (fine-tuning, resuming), so they are not counted again.
    pub model_loaded: bool,
    /// `--checkpoint-activations`: each layer keeps its block's output only, one block's buffers are shared.
    pub checkpoint_blocks: bool,
    /// A step of several micro-batches holds its weights packed once for all of them
    /// ([`crate::parallel::packs_per_step`]): about one more copy of the weights.
    pub step_packs: bool,
}

impl RunShape {
    /// A run of `model` with (`batch_size`, `seq_len`) micro-batches.
    pub fn of(model: &ModelConfig, batch_size: usize, seq_len: usize) -> Self {
        Self {
            vocab_size: model.vocab_size,
            context: model.block_size,
            n_layer: model.n_layer,
            n_head: model.n_head,
            n_embd: model.n_embd,
            sinusoidal: model.position_encoding == PositionEncoding::Sinusoidal,
            labels: model.num_labels(),
            batch_size,
            seq_len,
            eval_batches: 0,
            replica_grads: 0,
            frozen_base: false,
            model_loaded: false,
            checkpoint_blocks: false,
            step_packs: false,
        }
    }
}

/// Bytes by purpose; see [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub parameters: u64,
    /// The weights themselves (counted unless already loaded), and their copy packed for a step's products
    /// when a step runs several passes.
    pub weights: u64,
    /// Gradients, AdamW's two moments and the copies a checkpoint save makes.
    pub optimizer: u64,
    /// Per-layer activations kept for backward, without the attention maps.
    pub activations: u64,
    /// Attention: each row's log-sum-exp, B·T·H per layer, and the backward's scratch (training never keeps
    /// the B·H·T·T probabilities).
    pub attention: u64,
    /// The output layer: a language model's logits and probabilities of one chunk of rows (the logits'
    /// gradient reuses the first buffer), at most [`lushan_model::activations::HEAD_CHUNK_BYTES`] each;
    /// a classifier's logits, probabilities and their gradient, B·labels.
    pub logits: u64,
    /// Batches of token ids: the loader's and the fixed evaluation batches.
    pub batches: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        [self.weights, self.optimizer, self.activations, self.attention, self.logits, self.batches]
            .iter()
            .fold(0u64, |sum, &x| sum.saturating_add(x))
    }

    /// The flags that shrink the largest part of the estimate.
    pub fn advice(&self) -> &'static str {
        let parts = [
            (self.weights.saturating_add(self.optimizer), "the model: lower --n-layer, --n-embd or --block-size"),
            (self.attention, "attention (B·heads·T per layer): lower --block-size or --batch-size"),
            (self.logits, "logits (B·T·vocabulary): lower --batch-size or --block-size"),
            (self.activations, "activations (B·T·layers·width): lower --batch-size, --block-size or --n-layer"),
            (self.batches, "token batches: lower --batch-size, --block-size or --eval-iters"),
        ];
        parts.iter().max_by_key(|(bytes, _)| *bytes).map_or("", |(_, advice)| advice)
    }

    fn describe(&self) -> String {
        format!(
            "about {} in all: model weights {}, gradients + AdamW moments + checkpoint copies {}, activations {}, \
             attention {}, logits {}, token batches {}",
            human(self.total()),
            human(self.weights),
            human(self.optimizer),
            human(self.activations),
            human(self.attention),
            human(self.logits),
            human(self.batches)
        )
    }
}

/// "12.3 GiB"-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Checked product of sizes, as a u64 byte count; `None` when it overflows.
fn product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

fn sum(terms: &[Option<u64>]) -> Option<u64> {
    terms.iter().try_fold(0u64, |acc, x| acc.checked_add((*x)?))
}

/// Parameters of the model: embeddings, `n_layer` blocks of 12·C² + 13·C, the final layer norm and a
/// classifier's score head.
pub fn parameter_count(s: &RunShape) -> Option<u64> {
    let (v, t, l, c) = (s.vocab_size as u64, s.context as u64, s.n_layer as u64, s.n_embd as u64);
    let per_layer = sum(&[product(&[12, c, c]), product(&[13, c])])?;
    sum(&[
        product(&[v, c]),
        product(&[t, c]),
        product(&[l, per_layer]),
        product(&[2, c]),
        product(&[s.labels as u64, c]),
    ])
}

/// What a run of this shape allocates; `None` when a size overflows 64 bits (certainly too large).
pub fn estimate(s: &RunShape) -> Option<MemoryEstimate> {
    let parameters = parameter_count(s)?;
    let (b, t, l, h, c) = (s.batch_size as u64, s.seq_len as u64, s.n_layer as u64, s.n_head as u64, s.n_embd as u64);
    let rows = product(&[b, t])?;
    let copies = u64::from(!s.model_loaded) + u64::from(s.step_packs);
    let weights = product(&[parameters, copies, F32])?;
    // The fixed position table needs neither a gradient nor moments, the frozen LoRA base neither.
    let trainable = match (s.frozen_base, s.sinusoidal) {
        (true, _) => 0,
        (false, true) => parameters.checked_sub(product(&[s.context as u64, c])?)?,
        (false, false) => parameters,
    };
    // Gradient, m, v, each replica's gradient; a checkpoint save clones the weights and serialises m and v
    // (a byte copy, then the file's buffer).
    let buffers = sum(&[Some(3), s.replica_grads.try_into().ok(), Some(4)])?;
    let optimizer = sum(&[product(&[trainable, buffers, F32]), product(&[parameters, F32])])?;
    // Per layer 16 values per row and channel (layer norms, QKV, attention output, residuals, MLP) — or, with
    // block checkpointing, the block output (1) per layer and the 15 others once — plus about 19 more shared
    // (embedding output, final norm, backward scratch).
    let per_layer = if s.checkpoint_blocks { sum(&[Some(l), Some(15)])? } else { product(&[16, l])? };
    let activations = product(&[rows, sum(&[product(&[per_layer, c]), product(&[19, c])])?, F32])?;
    let attention = sum(&[product(&[l, rows, h, F32]), product(&[rows, sum(&[product(&[3, c]), Some(h)])?, F32])])?;
    let head_width = if s.labels > 0 { s.labels } else { s.vocab_size };
    let head_rows =
        if s.labels > 0 { b } else { rows.min(lushan_model::activations::head_chunk_rows(head_width) as u64) };
    let buffers = if s.labels > 0 { 3 } else { 2 };
    let logits = product(&[buffers, head_rows, head_width as u64, F32])?;
    // The loader's inputs and targets, and the evaluation batches of both splits.
    let batches = product(&[rows, U32, 2, sum(&[Some(1), product(&[2, s.eval_batches as u64])])?])?;
    Some(MemoryEstimate { parameters, weights, optimizer, activations, attention, logits, batches })
}

/// Memory this process may still allocate: the smaller of the system's available memory and what is left
/// under a cgroup limit; `None` when neither can be read (the check is then skipped).
pub fn available_memory() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| meminfo_available(&text));
    [system, cgroup_headroom()].into_iter().flatten().min()
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Limit minus usage of this process's cgroup (v2, else v1).
fn cgroup_headroom() -> Option<u64> {
    let read_u64 = |path: &Path| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let own = std::fs::read_to_string("/proc/self/cgroup").ok();
    let v2_dir = own
        .as_deref()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("0::")))
        .map(|relative| Path::new("/sys/fs/cgroup").join(relative.trim_start_matches('/')));
    if let Some(dir) = v2_dir
        && let Some(limit) = read_u64(&dir.join("memory.max"))
    {
        return Some(limit.saturating_sub(read_u64(&dir.join("memory.current")).unwrap_or(0)));
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let limit = read_u64(&v1.join("memory.limit_in_bytes"))?;
    Some(limit.saturating_sub(read_u64(&v1.join("memory.usage_in_bytes")).unwrap_or(0)))
}

/// Refuses a run whose estimate exceeds `available` (when known), naming the figures and the flags to change.
pub fn check_fits(s: &RunShape, available: Option<u64>) -> Result<MemoryEstimate> {
    let Some(estimate) = estimate(s) else {
        return Err(TrainError::TooLarge {
            needed: "more than 16 EiB (its sizes overflow 64-bit byte counts)".to_owned(),
            available: available.map_or_else(|| "no machine has that much".to_owned(), available_clause),
            advice: largest_flag(s),
        });
    };
    match available {
        Some(available) if estimate.total() > available => Err(TrainError::TooLarge {
            needed: estimate.describe(),
            available: available_clause(available),
            advice: estimate.advice().to_owned(),
        }),
        _ => Ok(estimate),
    }
}

fn available_clause(bytes: u64) -> String {
    format!("only {} is available", human(bytes))
}

/// For a shape too large to even count: the flag whose value is largest.
fn largest_flag(s: &RunShape) -> String {
    let flags = [
        ("--batch-size", s.batch_size),
        ("--block-size", s.context.max(s.seq_len)),
        ("--n-layer", s.n_layer),
        ("--n-embd", s.n_embd),
    ];
    let (flag, value) = flags.iter().max_by_key(|(_, v)| *v).copied().unwrap_or(("--batch-size", s.batch_size));
    format!("lower {flag} (now {value})")
}

/// Refuses a run whose buffers would not fit in memory, before they are allocated: the model of
/// `model_config` (already in memory when `loaded` is given) trained on `data` with `config`'s batch shape.
pub fn check_memory(
    config: &crate::TrainConfig,
    model_config: &ModelConfig,
    data: &crate::TrainData,
    loaded: Option<&lushan_model::Gpt>,
) -> Result<()> {
    check_memory_of_rank(config, model_config, data, loaded, 1)
}

/// [`check_memory`] for one of `ranks` processes: a job's gradient sum needs a send buffer and a buffer for
/// the sums, each of the gradient's size ([`crate::distributed::Group::sum_gradients_during`]).
pub fn check_memory_of_rank(
    config: &crate::TrainConfig,
    model_config: &ModelConfig,
    data: &crate::TrainData,
    loaded: Option<&lushan_model::Gpt>,
    ranks: usize,
) -> Result<()> {
    let seq_len = match &data.source {
        crate::DataSource::Shards { .. } => config.block_size,
        crate::DataSource::Task(task) => task.longest_example().clamp(1, config.block_size),
    };
    let mut shape = RunShape::of(model_config, config.batch_size, seq_len);
    shape.eval_batches = config.eval_iters;
    shape.model_loaded = loaded.is_some();
    shape.frozen_base = loaded.is_some_and(|m| m.lora.is_some());
    shape.checkpoint_blocks = config.checkpoint_activations;
    let params = parameter_count(&shape).and_then(|p| usize::try_from(p).ok()).unwrap_or(usize::MAX);
    let replicas = crate::parallel::choose_replicas(config.data_parallel, params, config.batch_size);
    shape.replica_grads = if replicas > 1 { replicas } else { 0 } + if ranks > 1 { 2 } else { 0 };
    shape.step_packs = crate::parallel::packs_per_step(config.gradient_accumulation_steps, params);
    check_fits(&shape, available_memory()).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn tiny() -> RunShape {
        RunShape::of(&ModelConfig::new(65, 16, 1, 2, 32), 4, 16)
    }

    #[test]
    fn parameters_match_the_model() {
        let cfg = ModelConfig::new(65, 16, 2, 2, 32);
        let model = lushan_model::Gpt::new(cfg.clone(), 1).unwrap();
        assert_eq!(parameter_count(&RunShape::of(&cfg, 1, 1)), Some(model.num_params() as u64));
    }

    #[test]
    fn a_tiny_run_fits_and_huge_ones_do_not() {
        let small = check_fits(&tiny(), Some(1 << 30)).unwrap();
        assert!(small.total() < 10 << 20, "{small:?}");
        let mut wide = tiny();
        wide.batch_size = 1_000_000_000_000;
        let message = check_fits(&wide, Some(1 << 34)).unwrap_err().to_string();
        assert!(message.contains("--batch-size") && message.contains("16.0 GiB"), "{message}");
        let mut long = tiny();
        (long.context, long.seq_len) = (200_000, 200_000);
        // Training keeps no T×T attention maps: a long context costs activations linear in T.
        let message = check_fits(&long, Some(1 << 30)).unwrap_err().to_string();
        assert!(message.contains("activations (B·T") && message.contains("--block-size"), "{message}");
        // With several layers, checkpointing keeps one block's buffers instead of one per layer.
        long.n_layer = 4;
        long.checkpoint_blocks = true;
        let kept = estimate(&long).unwrap().activations;
        long.checkpoint_blocks = false;
        assert!(kept < estimate(&long).unwrap().activations, "checkpointing keeps less");
        // Weights packed once for a step of several passes: one more copy of them.
        let mut packed = tiny();
        packed.step_packs = true;
        let (with, without) = (estimate(&packed).unwrap(), estimate(&tiny()).unwrap());
        assert_eq!(with.weights, 2 * without.weights, "{with:?}");
        let mut overflowing = tiny();
        (overflowing.n_layer, overflowing.n_embd) = (usize::MAX, usize::MAX);
        let message = check_fits(&overflowing, None).unwrap_err().to_string();
        assert!(message.contains("overflow") && message.contains("--n-"), "{message}");
    }

    #[test]
    fn unknown_memory_skips_the_comparison() {
        let mut big = tiny();
        big.n_layer = 1000;
        assert!(check_fits(&big, None).is_ok());
    }

    #[test]
    fn meminfo_is_parsed_in_bytes() {
        let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(meminfo_available(text), Some(8_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }
}
