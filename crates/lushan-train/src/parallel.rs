//! Data-parallel steps for small models: the batch is split by sequence into one replica per core, each
//! replica runs the whole forward and backward on its own thread with its own buffers (kernels run serially
//! inside a one-thread pool), and the replicas' gradients are summed in a fixed order.
//!
//! Splitting every kernel over both cores costs a synchronisation per kernel call — about 150 per step —
//! and shares caches badly; a small model's step is dominated by that. Large models (whose matrix products
//! are big enough to split well) use a single replica, which keeps one gradient buffer.

use crate::error::{Result, TrainError};
use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::matmul;
use lushan_model::activations::{LoraShape, TrainingMemory};
use lushan_model::{Activations, Gpt, Mode, ModelConfig, OnGradsFinal, StepWeights};
use rayon::prelude::*;

/// Models up to this many parameters are split across cores by batch; larger ones by kernel.
pub const DATA_PARALLEL_MAX_PARAMS: usize = 30_000_000;

struct Replica {
    acts: Activations,
    /// Gradient buffer of this replica (empty for a lone replica, which writes the caller's buffer).
    grads: Vec<f32>,
    pool: Option<rayon::ThreadPool>,
}

/// Whether a step of `micro_batches` micro-batches of a model of `num_params` parameters packs its weights
/// once for all its passes ([`BatchRunner::pack_for_step`]): with several micro-batches, for models past
/// [`DATA_PARALLEL_MAX_PARAMS`]. Packing each weight as a product needs it costs the same as packing it once
/// when a step runs one pass, without holding a second copy; and a small model's weights stay in cache,
/// where the packed copy beside them measured slower than packing per product (nanoGPT's CPU
/// configuration: 0.82–0.93× with it, GPT-2 124M: 1.08×; docs/performance.md).
pub fn packs_per_step(micro_batches: usize, num_params: usize) -> bool {
    micro_batches > 1 && num_params > DATA_PARALLEL_MAX_PARAMS
}

/// Buffers for batches of up to (B, T) split over replicas. Batches may be smaller than that — task batches
/// are padded only to their own longest sequence — and each replica's buffers are reshaped, not reallocated.
pub struct BatchRunner {
    replicas: Vec<Replica>,
    t: usize,
    b: usize,
}

impl std::fmt::Debug for BatchRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRunner").field("replicas", &self.replicas.len()).field("b", &self.b).finish()
    }
}

/// How many replicas to use: `requested` if non-zero, else one per core for small models.
pub fn choose_replicas(requested: usize, num_params: usize, b: usize) -> usize {
    let wanted = if requested > 0 {
        requested
    } else if num_params <= DATA_PARALLEL_MAX_PARAMS {
        rayon::current_num_threads()
    } else {
        1
    };
    wanted.clamp(1, b.max(1))
}

/// Sequences `start..end` of a batch of `b` handled by replica `r` of `replicas` (the first `b % replicas`
/// replicas take one more).
pub fn share_of(r: usize, replicas: usize, b: usize) -> std::ops::Range<usize> {
    let start = r * (b / replicas) + r.min(b % replicas);
    start..start + b / replicas + usize::from(r < b % replicas)
}

/// Targets that count in a loss (not ignored).
pub(crate) fn counted(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

impl BatchRunner {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, replicas: usize) -> Result<Self> {
        Self::for_model(cfg, None, b, t, replicas)
    }

    /// Buffers for a model that may carry LoRA adapters (whose gradients then replace the base's).
    pub fn for_model(cfg: &ModelConfig, lora: Option<LoraShape>, b: usize, t: usize, replicas: usize) -> Result<Self> {
        Self::with_memory(cfg, lora, b, t, replicas, TrainingMemory::default())
    }

    /// [`BatchRunner::for_model`] keeping what `memory` says between each forward and backward (block
    /// checkpointing). Training buffers never keep the attention probabilities
    /// ([`Activations::for_training`]).
    pub fn with_memory(
        cfg: &ModelConfig,
        lora: Option<LoraShape>,
        b: usize,
        t: usize,
        replicas: usize,
        memory: TrainingMemory,
    ) -> Result<Self> {
        let replicas = replicas.clamp(1, b.max(1));
        let num_grads = match &lora {
            Some(_) => 0, // sized by the caller's buffer on first use; see `grads_len`
            None => lushan_model::ParamLayout::new(cfg).total(),
        };
        let mut out = Vec::with_capacity(replicas);
        for r in 0..replicas {
            let pool = if replicas > 1 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("lushan-replica-{r}"))
                    .build()
                    .map_err(|e| TrainError::InvalidSetting { name: "threads".into(), reason: e.to_string() })?;
                Some(pool)
            } else {
                None
            };
            out.push(Replica {
                acts: Activations::for_training(cfg, share_of(r, replicas, b).len(), t, lora, memory)?,
                grads: if replicas > 1 { vec![0.0; num_grads] } else { Vec::new() },
                pool,
            });
        }
        Ok(Self { replicas: out, t, b })
    }

    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// `model`'s weights packed once for an optimizer step of `micro_batches` micro-batches through this
    /// runner ([`Gpt::pack_for_step`]) where [`packs_per_step`] says so: every pass of the step then reads
    /// the same packed copy. A checkpointed run of one micro-batch, which recomputes its blocks, keeps its
    /// memory rather than saving that repacking.
    pub fn pack_for_step<'m>(&self, model: &'m Gpt, micro_batches: usize) -> Option<StepWeights<'m>> {
        let precision = self.replicas.first()?.acts.precision();
        if self.packs_for_step(model, micro_batches) { model.pack_for_step(precision) } else { None }
    }

    /// Whether [`BatchRunner::pack_for_step`] packs `model`'s f32 weights for a step of `micro_batches`:
    /// [`packs_per_step`], on a CPU whose products in this runner's precision take the packed GEMM.
    pub fn packs_for_step(&self, model: &Gpt, micro_batches: usize) -> bool {
        let packed_gemm = self.replicas.first().is_some_and(|r| matmul::packs_weights(r.acts.precision()));
        packed_gemm && packs_per_step(micro_batches, model.num_params())
    }

    /// Forward and backward of one full (B, T) batch; see [`BatchRunner::forward_backward_shaped`].
    pub fn forward_backward(
        &mut self,
        model: &Gpt,
        inputs: &[u32],
        targets: &[u32],
        loss_scale: f32,
        dropout_seed: u64,
        grads: &mut [f32],
    ) -> Result<f32> {
        let (b, t) = (self.b, self.t);
        self.forward_backward_shaped(model, inputs, targets, (b, t), loss_scale, dropout_seed, grads)
    }

    /// Forward and backward of one (b, t) batch (b ≤ B, t ≤ T); **accumulates** `loss_scale ×` the gradient
    /// of the batch's mean loss (over its counted targets) into `grads` — the model's trainable layout — and
    /// returns that mean loss. Each replica's dropout masks come from its own seed.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_shaped(
        &mut self,
        model: &Gpt,
        inputs: &[u32],
        targets: &[u32],
        (b, t): (usize, usize),
        loss_scale: f32,
        dropout_seed: u64,
        grads: &mut [f32],
    ) -> Result<f32> {
        let hook: OnGradsFinal<'_> = &mut |_| {};
        self.forward_backward_hooked((model, None), inputs, targets, (b, t), loss_scale, dropout_seed, grads, hook)
    }

    /// [`BatchRunner::forward_backward_shaped`], handing each bucket of `grads` to `on_final` once it is
    /// final ([`Gpt::backward_with`]) — with a single replica only: several replicas' gradients are
    /// complete only after their sum at the end, so then nothing is handed over. With `step`, the model's
    /// weights packed for this optimizer step ([`Gpt::pack_for_step`]), every replica reads them.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_hooked(
        &mut self,
        (model, step): (&Gpt, Option<&StepWeights<'_>>),
        inputs: &[u32],
        targets: &[u32],
        (b, t): (usize, usize),
        loss_scale: f32,
        dropout_seed: u64,
        grads: &mut [f32],
        on_final: OnGradsFinal<'_>,
    ) -> Result<f32> {
        if let [single] = self.replicas.as_mut_slice() {
            let mode = Mode::Train { dropout_seed };
            single.acts.reshape(b, t)?;
            let acts = &mut single.acts;
            return Ok(model.forward_backward_packed(
                acts,
                inputs,
                targets,
                mode,
                (grads, loss_scale),
                on_final,
                step,
            )?);
        }
        for r in &mut self.replicas {
            if r.grads.len() != grads.len() {
                r.grads = vec![0.0; grads.len()];
            }
        }
        let (loss, _) = self.on_replicas(inputs, targets, (b, t), |i, share, acts, replica_grads, x, y| {
            let mode = Mode::Train { dropout_seed: dropout_seed.wrapping_add(i as u64) };
            // Zeroed before the forward, which already accumulates the output layer's gradient.
            replica_grads.fill(0.0);
            let gradient = (replica_grads, loss_scale * share);
            Ok(model.forward_backward_packed(acts, x, y, mode, gradient, &mut |_| {}, step)?)
        })?;
        // Fixed order of addition: results do not depend on scheduling.
        const CHUNK: usize = 1 << 14;
        let replicas = &self.replicas;
        let used = b.min(replicas.len());
        grads.par_chunks_mut(CHUNK).enumerate().for_each(|(i, g)| {
            let range = i * CHUNK..i * CHUNK + g.len();
            for r in &replicas[..used] {
                for (g, &x) in g.iter_mut().zip(&r.grads[range.clone()]) {
                    *g += x;
                }
            }
        });
        Ok(loss)
    }

    /// Mean loss of one full (B, T) batch without gradients (evaluation), split over replicas like training.
    pub fn loss(&mut self, model: &Gpt, inputs: &[u32], targets: &[u32]) -> Result<f32> {
        let (b, t) = (self.b, self.t);
        Ok(self.evaluate(model, inputs, targets, (b, t))?.0)
    }

    /// Mean loss of one (b, t) batch without gradients, and for a classifier each sequence's predicted label
    /// (the arg-max of its logits; empty for a language model).
    pub fn evaluate(
        &mut self,
        model: &Gpt,
        inputs: &[u32],
        targets: &[u32],
        (b, t): (usize, usize),
    ) -> Result<(f32, Vec<u32>)> {
        let labels = model.config.num_labels();
        let argmax = |acts: &Activations| -> Vec<u32> {
            if labels == 0 {
                return Vec::new();
            }
            acts.logits.chunks_exact(labels).map(|row| lushan_model::sampling::argmax(row) as u32).collect()
        };
        if let [single] = self.replicas.as_mut_slice() {
            single.acts.reshape(b, t)?;
            let loss = model.forward(&mut single.acts, inputs, Some(targets), Mode::Eval)?.unwrap_or(f32::NAN);
            return Ok((loss, argmax(&single.acts)));
        }
        let (loss, replicas_used) = self.on_replicas(inputs, targets, (b, t), |_, _, acts, _, x, y| {
            Ok(model.forward(acts, x, Some(y), Mode::Eval)?.unwrap_or(f32::NAN))
        })?;
        let predictions = self.replicas[..replicas_used].iter().flat_map(|r| argmax(&r.acts)).collect();
        Ok((loss, predictions))
    }

    /// Runs `work(replica index, share of the loss, activations, gradient buffer, inputs, targets)` for every
    /// replica that has sequences of this (b, t) batch, on its own thread (inside its one-thread pool), and
    /// returns the share-weighted sum of the losses it returns (each replica's share is its part of the
    /// batch's counted targets, so the sum is the batch's mean loss) and the number of replicas used.
    fn on_replicas<F>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        (b, t): (usize, usize),
        work: F,
    ) -> Result<(f32, usize)>
    where
        F: Fn(usize, f32, &mut Activations, &mut [f32], &[u32], &[u32]) -> Result<f32> + Sync,
    {
        let used = b.min(self.replicas.len());
        let per_sequence = targets.len() / b.max(1);
        let total = counted(targets).max(1) as f32;
        let work = &work;
        // Each replica runs in its own one-thread pool; the current pool's workers only wait for them, so no
        // thread is created per step (spawning one cost page faults and TLB shoot-downs every step).
        let results: Vec<Result<f32>> = self.replicas[..used]
            .par_iter_mut()
            .enumerate()
            .map(|(i, r)| {
                let Replica { acts, grads, pool } = r;
                let sequences = share_of(i, used, b);
                let rows = sequences.start * t..sequences.end * t;
                let target_rows = sequences.start * per_sequence..sequences.end * per_sequence;
                let share = counted(&targets[target_rows.clone()]) as f32 / total;
                let mut run = move || -> Result<f32> {
                    acts.reshape(sequences.len(), t)?;
                    Ok(work(i, share, acts, grads, &inputs[rows.clone()], &targets[target_rows.clone()])? * share)
                };
                match pool {
                    Some(pool) => pool.install(run),
                    None => run(),
                }
            })
            .collect();
        Ok((results.into_iter().sum::<Result<f32>>()?, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_models_with_several_micro_batches_pack_their_weights_per_step() {
        let large = DATA_PARALLEL_MAX_PARAMS + 1;
        assert!(packs_per_step(4, large));
        assert!(!packs_per_step(1, large), "one pass packs as it goes");
        assert!(!packs_per_step(4, DATA_PARALLEL_MAX_PARAMS), "a small model's weights stay in cache");
    }

    fn batch(b: usize, t: usize, v: u32) -> (Vec<u32>, Vec<u32>) {
        let tokens: Vec<u32> = (0..b * t + 1).map(|i| (i as u32 * 7 + 3) % v).collect();
        (tokens[..b * t].to_vec(), tokens[1..].to_vec())
    }

    #[test]
    fn replicas_give_the_same_loss_and_gradient_as_one_batch_and_repeat_exactly() {
        let cfg = ModelConfig::new(23, 8, 2, 2, 16);
        let model = Gpt::new(cfg.clone(), 3).unwrap();
        let (b, t) = (5, 8); // uneven split: 3 + 2 sequences
        let (x, y) = batch(b, t, 23);
        let mut one = BatchRunner::new(&cfg, b, t, 1).unwrap();
        let mut two = BatchRunner::new(&cfg, b, t, 2).unwrap();
        assert_eq!(two.replicas(), 2);
        let (mut g1, mut g2, mut g2_again) =
            (vec![0.0; model.num_params()], vec![0.0; model.num_params()], vec![0.0; model.num_params()]);
        let l1 = one.forward_backward(&model, &x, &y, 0.5, 0, &mut g1).unwrap();
        let l2 = two.forward_backward(&model, &x, &y, 0.5, 0, &mut g2).unwrap();
        two.forward_backward(&model, &x, &y, 0.5, 0, &mut g2_again).unwrap();
        assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
        let max = g1.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        for (a, b) in g1.iter().zip(&g2) {
            assert!((a - b).abs() <= 1e-5 * max, "{a} vs {b}");
        }
        assert_eq!(g2, g2_again, "replicated steps must be bit-identical run to run");
        let e1 = one.loss(&model, &x, &y).unwrap();
        let e2 = two.loss(&model, &x, &y).unwrap();
        assert!((e1 - e2).abs() < 1e-5 && (e1 - l1).abs() < 1e-5);
    }

    #[test]
    fn small_models_split_by_batch_and_large_ones_do_not() {
        assert_eq!(choose_replicas(0, 1_000_000, 12), rayon::current_num_threads().clamp(1, 12));
        assert_eq!(choose_replicas(0, 124_000_000, 12), 1);
        assert_eq!(choose_replicas(3, 124_000_000, 2), 2);
    }
}
