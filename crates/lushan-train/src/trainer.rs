//! The training loop: micro-batches → forward → backward → clip → AdamW, with periodic evaluation,
//! best-model checkpoints, resumable state, early stopping and a clean stop on request.

use crate::config::TrainConfig;
use crate::data::{Loader, eval_batches};
use crate::distributed::{Group, RankSlice, rank_share};
use crate::error::{Result, TrainError};
pub use crate::memory::{check_memory, check_memory_of_rank};
use crate::metrics::MetricsLog;
use crate::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use crate::parallel::{BatchRunner, choose_replicas, counted};
use crate::resume::{self, ResumeState};
use crate::schedule::LrSchedule;
use crate::tasks::{Task, TaskBatch, TaskLoader};
pub use crate::train_data::{DataSource, TrainData, task_file_texts};
use lushan_kernels::rng::Rng;
use lushan_model::Gpt;
use lushan_model::activations::TrainingMemory;
use lushan_model::inspect::{HeadRole, HeadScore, head_roles};
use lushan_tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// What one evaluation found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    pub step: u64,
    pub train_loss: f32,
    pub val_loss: f32,
    /// Classification: the share of validation texts whose arg-max label is right.
    pub val_accuracy: Option<f32>,
    pub improved: bool,
    pub saved_model: bool,
    /// The model's strongest induction head at this evaluation (see [`Trainer::strongest_induction_head`]).
    pub induction: Option<HeadScore>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    EarlyStopped,
    Interrupted,
}

/// Receives progress as the loop runs (the CLI draws a progress bar and a loss curve from it).
pub trait Observer {
    fn on_step(&mut self, _report: &StepReport) {}
    fn on_eval(&mut self, _report: &EvalReport) {}
}

impl Observer for () {}

/// Where batches come from: random windows of token shards, or length-grouped batches of task examples.
#[derive(Debug)]
enum Feed {
    Shards {
        loader: Loader,
        inputs: Vec<u32>,
        targets: Vec<u32>,
        eval_train: Vec<(Vec<u32>, Vec<u32>)>,
        eval_val: Vec<(Vec<u32>, Vec<u32>)>,
    },
    Task {
        loader: TaskLoader,
        eval_train: Vec<TaskBatch>,
        eval_val: Vec<TaskBatch>,
        pad_id: u32,
    },
}

/// A feed's data cursor, saved at the start of an update to undo an interrupted one.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Shards(u64),
    Task(crate::tasks::TaskLoaderState),
}

/// One evaluation batch: inputs, targets and its (b, t) shape.
type EvalBatch<'a> = (&'a [u32], &'a [u32], (usize, usize));

/// Loss (and accuracy) over a set of evaluation batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalFigures {
    pub loss: f32,
    pub accuracy: Option<f32>,
}

/// Everything a run holds in memory.
#[derive(Debug)]
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Gpt,
    pub optimizer: AdamWState,
    pub data: TrainData,
    grads: Vec<f32>,
    runner: BatchRunner,
    feed: Feed,
    dropout_rng: Rng,
    pub best_val_loss: f32,
    pub best_val_accuracy: Option<f32>,
    pub evals_without_improvement: u64,
    /// Whether an evaluation of this run (or of the run it resumes) saved a best model into the directory.
    best_model_saved: bool,
    /// The step of the model saved when the run ended before any evaluation had saved one (see [`Trainer::run`]).
    pub saved_not_best: Option<u64>,
    /// The metrics log; `None` on ranks other than 0, which write nothing.
    metrics: Option<MetricsLog>,
    /// The processes training together (one, unless started by `mpirun` / `srun`).
    group: Group,
}

/// The id task batches are padded with: the classifier's `pad_token_id`, else the end-of-turn token.
fn pad_id(model: &Gpt, tokenizer: &Tokenizer) -> u32 {
    model.config.pad_token_id().or_else(|| lushan_tokenizer::chat::end_of_turn(tokenizer).ok()).unwrap_or(0)
}

impl Trainer {
    /// A fresh run: model initialised from `config.seed` (or given), optimiser state zero.
    pub fn new(config: TrainConfig, data: TrainData, model: Option<Gpt>) -> Result<Self> {
        Self::new_in(Group::default(), config, data, model)
    }

    /// A fresh run as one rank of `group`: every rank must be given the same settings, data and model.
    pub fn new_in(group: Group, config: TrainConfig, data: TrainData, model: Option<Gpt>) -> Result<Self> {
        config.validate()?;
        let vocab = data.tokenizer.vocab_size();
        let model = match model {
            Some(m) => m,
            None => {
                let model_config = config.model_config(vocab);
                check_memory(&config, &model_config, &data, None)?;
                Gpt::new(model_config, config.seed)?
            }
        };
        if model.config.vocab_size != vocab {
            return Err(TrainError::VocabMismatch {
                data: data.tokenizer.describe(),
                model_vocab: model.config.vocab_size,
            });
        }
        Self::assemble(group, config, data, model, AdamWState::new(0), false)
    }

    /// Checks the run's shapes against the model, allocates every buffer, then opens the metrics log
    /// (appending when resuming) — last, so a rejected run never truncates an existing log.
    fn assemble(
        group: Group,
        config: TrainConfig,
        data: TrainData,
        model: Gpt,
        mut optimizer: AdamWState,
        resuming: bool,
    ) -> Result<Self> {
        let b = config.batch_size;
        if group.size() > b {
            return Err(TrainError::InvalidSetting {
                name: "--batch-size".into(),
                reason: format!(
                    "the global batch of {b} sequences cannot be split over {} ranks: give a --batch-size of at \
                     least the number of ranks (each rank trains on its share of the batch)",
                    group.size()
                ),
            });
        }
        if config.block_size > model.config.block_size {
            return Err(TrainError::InvalidSetting {
                name: "--block-size".into(),
                reason: format!(
                    "{} is longer than the model's context of {}",
                    config.block_size, model.config.block_size
                ),
            });
        }
        let task = match &data.source {
            DataSource::Shards { .. } => Task::Lm,
            DataSource::Task(t) => t.task(),
        };
        if task != config.task {
            return Err(TrainError::InvalidSetting {
                name: "--task".into(),
                reason: format!("the data was loaded for `{}`", task.as_str()),
            });
        }
        match (task, model.config.num_labels()) {
            (Task::Classify, 0) => {
                return Err(TrainError::InvalidSetting {
                    name: "--task".into(),
                    reason: "classify needs a model with a classifier head".into(),
                });
            }
            (Task::Lm | Task::Sft, n) if n > 0 => {
                return Err(TrainError::InvalidSetting {
                    name: "--task".into(),
                    reason: format!(
                        "`{}` trains a language model but the model is a classifier; start from a language model",
                        task.as_str()
                    ),
                });
            }
            _ => {}
        }
        check_memory_of_rank(&config, &model.config, &data, Some(&model), group.size())?;
        let (feed, t) = match &data.source {
            DataSource::Shards { train, val } => {
                let t = config.block_size;
                let feed = Feed::Shards {
                    loader: Loader::new(train, b, t, config.seed)?,
                    inputs: vec![0; b * t],
                    targets: vec![0; b * t],
                    eval_train: eval_batches(train, b, t, config.eval_iters, config.seed ^ 0x0074_7261_696e)?,
                    eval_val: eval_batches(val, b, t, config.eval_iters, config.seed ^ 0x76_616c)?,
                };
                (feed, t)
            }
            DataSource::Task(task) => {
                let pad_id = pad_id(&model, &data.tokenizer);
                let lengths = task.train_lengths();
                let longest_train = lengths.iter().copied().max().unwrap_or(1);
                let loader = TaskLoader::new(lengths.clone(), b, config.seed)?;
                // A fixed sample of training examples, as many as `eval_iters` batches, to report the
                // training loss on the same footing as the validation loss.
                let mut sampler = TaskLoader::new(lengths, b, config.seed ^ 0x0074_7261_696e)?;
                let eval_train = (0..config.eval_iters)
                    .map(|_| task.train_batch(&sampler.next_indices(), pad_id))
                    .collect::<Result<Vec<_>>>()?;
                let eval_val = task.val_batches(b, pad_id)?;
                if eval_val.is_empty() {
                    return Err(TrainError::InvalidSetting {
                        name: "--val-data".into(),
                        reason: "no validation examples: give --val-data FILE or a --val-fraction above 0".into(),
                    });
                }
                let t = longest_train.clamp(1, config.block_size);
                let t = eval_val.iter().chain(&eval_train).map(|batch| batch.t).fold(t, usize::max);
                (Feed::Task { loader, eval_train, eval_val, pad_id }, t.min(config.block_size))
            }
        };
        // This rank's share of the global batch (rank 0's is the largest).
        let rank_b = rank_share(0, group.size(), b).len();
        let replicas = choose_replicas(config.data_parallel, model.num_params(), rank_b);
        let memory = TrainingMemory {
            checkpoint_blocks: config.checkpoint_activations,
            attention_maps: false,
            precision: config.precision.0,
        };
        let runner = BatchRunner::with_memory(&model.config, model.lora_shape(), rank_b, t, replicas, memory)?;
        let trainable = model.num_trainable();
        if optimizer.m.is_empty() {
            optimizer = AdamWState::new(trainable);
        }
        let metrics = match (group.is_writer(), resuming) {
            (false, _) => None,
            (true, true) => Some(MetricsLog::append(&config.out_dir)?),
            (true, false) => Some(MetricsLog::create(&config.out_dir)?),
        };
        // A run killed mid-save leaves its temporary files behind; the new run sweeps them.
        for dir in [config.out_dir.clone(), config.out_dir.join(crate::resume::RESUME_DIR)] {
            if group.is_writer() {
                lushan_model::checkpoint::remove_stale_temp_files(&dir)
                    .map_err(|source| TrainError::Io { path: dir.clone(), source })?;
            }
        }
        Ok(Self {
            grads: vec![0.0; trainable],
            dropout_rng: Rng::new(config.seed ^ 0x6472_6f70),
            config,
            model,
            optimizer,
            data,
            runner,
            feed,
            best_val_loss: f32::INFINITY,
            best_val_accuracy: None,
            evals_without_improvement: 0,
            best_model_saved: false,
            saved_not_best: None,
            metrics,
            group,
        })
    }

    /// Continues the run saved in `config.out_dir/resume`, bit-identically.
    pub fn resume(config: TrainConfig, data: TrainData) -> Result<Self> {
        Self::resume_in(Group::default(), config, data)
    }

    /// Continues a run as one rank of `group`; the state may have been saved by a job of another size (the
    /// data cursor is global).
    pub fn resume_in(group: Group, config: TrainConfig, data: TrainData) -> Result<Self> {
        let state = resume::load(&config.out_dir)?;
        let vocab = data.tokenizer.vocab_size();
        let wanted = config.model_config(vocab);
        resume::check_same_model(&config.out_dir, &state.model.config, &wanted)?;
        resume::check_matches_directory(&config.out_dir, &state)?;
        if state.data_description != data.description() {
            return Err(TrainError::Resume {
                path: config.out_dir.clone(),
                message: format!(
                    "the checkpoint was trained on `{}` data but --data is `{}`",
                    state.data_description,
                    data.description()
                ),
            });
        }
        // Dropout is a training setting, not part of the model's shape: the resumed run uses the one asked for.
        let mut model = state.model;
        model.config.dropout = config.dropout;
        let mut trainer = Self::assemble(group, config, data, model, state.optimizer, true)?;
        match (&mut trainer.feed, state.task_loader_state) {
            (Feed::Shards { loader, .. }, _) => loader.set_state(state.loader_state),
            (Feed::Task { loader, .. }, Some(task_state)) => loader.set_state(task_state)?,
            (Feed::Task { .. }, None) => {
                return Err(TrainError::Resume {
                    path: trainer.config.out_dir.clone(),
                    message: "the resume state has no task data cursor (it was saved by an `lm` run)".into(),
                });
            }
        }
        trainer.dropout_rng = Rng::from_state(state.dropout_rng_state);
        trainer.best_val_loss = state.best_val_loss;
        trainer.best_val_accuracy = state.best_val_accuracy;
        trainer.evals_without_improvement = state.evals_without_improvement;
        let step = trainer.optimizer.step;
        trainer.best_model_saved = crate::metrics::read_metrics(&trainer.config.out_dir)?.iter().any(
            |line| matches!(line, crate::metrics::MetricsLine::Eval { step: at, saved_model: true, .. } if *at <= step),
        );
        Ok(trainer)
    }

    pub fn step_count(&self) -> u64 {
        self.optimizer.step
    }

    /// The processes training together, and what their gradient sums cost so far.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Ends every process of the job (a rank failed mid-run; see [`crate::distributed`]).
    pub fn abort_job(&self, code: i32) -> ! {
        self.group.abort(code)
    }

    fn schedule(&self) -> LrSchedule {
        let c = &self.config;
        LrSchedule {
            learning_rate: c.learning_rate,
            min_lr: c.min_lr,
            warmup_iters: c.warmup_iters,
            lr_decay_iters: c.lr_decay_iters,
            decay: c.decay_lr,
        }
    }

    /// One update over `gradient_accumulation_steps` micro-batches.
    pub fn step(&mut self) -> Result<StepReport> {
        let never = AtomicBool::new(false);
        match self.step_unless(&never)? {
            Some(report) => Ok(report),
            None => Err(TrainError::InvalidSetting { name: "stop".into(), reason: "raised without a signal".into() }),
        }
    }

    /// One update, unless `stop` is raised before one of its micro-batches: then the partial update is
    /// dropped and the data cursor and dropout RNG are put back where the update began, so the trainer is
    /// exactly at its last completed step (and a resume state saved now continues bit-identically). A long
    /// gradient accumulation thus stops within one micro-batch of a Ctrl-C.
    ///
    /// Also when reading a batch fails (a shard changed on disk) the cursors are put back, so the caller
    /// can still save the last completed step.
    pub fn step_unless(&mut self, stop: &AtomicBool) -> Result<Option<StepReport>> {
        let cursors = self.cursors();
        match self.accumulate(stop) {
            Ok(Some(done)) => self.finish_step(done).map(Some),
            Ok(None) => {
                self.restore_cursors(cursors)?;
                Ok(None)
            }
            Err(e) => {
                if matches!(e, TrainError::ShardChanged { .. } | TrainError::Io { .. }) {
                    self.restore_cursors(cursors)?;
                }
                Err(e)
            }
        }
    }

    /// Where the data and the dropout masks stand: restoring it undoes a partial update's draws.
    fn cursors(&self) -> (Cursor, u64) {
        let feed = match &self.feed {
            Feed::Shards { loader, .. } => Cursor::Shards(loader.state()),
            Feed::Task { loader, .. } => Cursor::Task(loader.state()),
        };
        (feed, self.dropout_rng.state())
    }

    fn restore_cursors(&mut self, (feed, dropout): (Cursor, u64)) -> Result<()> {
        match (&mut self.feed, feed) {
            (Feed::Shards { loader, .. }, Cursor::Shards(state)) => loader.set_state(state),
            (Feed::Task { loader, .. }, Cursor::Task(state)) => loader.set_state(state)?,
            _ => {}
        }
        self.dropout_rng = Rng::from_state(dropout);
        Ok(())
    }

    /// The micro-batches of one update: (loss sum, tokens, start time), or `None` when `stop` was raised.
    /// Every rank draws the whole global batch and trains on its share; the ranks' gradients and losses are
    /// then summed (each weighted by its share of the batch's counted targets, so the sums are the global
    /// batch's mean).
    fn accumulate(&mut self, stop: &AtomicBool) -> Result<Option<(f64, usize, Instant)>> {
        let start = Instant::now();
        let k = self.config.gradient_accumulation_steps;
        let (rank, ranks) = (self.group.rank(), self.group.size());
        // The ranks of a job stop at the same update, so they decide together, once per update.
        if ranks > 1 && self.group.any(stop.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        self.grads.fill(0.0);
        let mut loss_sum = 0.0f64;
        let mut tokens = 0usize;
        let step = self.runner.pack_for_step(&self.model, k);
        for micro in 0..k {
            if ranks == 1 && stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // Replica i of rank r draws its masks as replica r·replicas + i of one process would.
            let seed_offset = (rank * self.runner.replicas()) as u64;
            let dropout_seed = self.dropout_rng.next_u64().wrapping_add(seed_offset);
            let task_batch: TaskBatch;
            let (inputs, targets, (b, t)): (&[u32], &[u32], _) = match &mut self.feed {
                Feed::Shards { loader, inputs, targets, .. } => {
                    loader.next_batch(inputs, targets)?;
                    tokens += inputs.len();
                    (inputs, targets, (loader.batch_size(), loader.block_size()))
                }
                Feed::Task { loader, pad_id, .. } => {
                    let DataSource::Task(task) = &self.data.source else {
                        return Err(TrainError::InvalidSetting {
                            name: "--task".into(),
                            reason: "no task data".into(),
                        });
                    };
                    let batch = task.train_batch(&loader.next_indices(), *pad_id)?;
                    tokens += batch.real_tokens();
                    task_batch = batch;
                    (&task_batch.inputs, &task_batch.targets, (task_batch.b, task_batch.t))
                }
            };
            // The last micro-batch's backward pass also sums the gradients over the ranks, bucket by bucket.
            let slice = RankSlice::of(rank, ranks, inputs, targets, (b, t));
            let loss = crate::distributed::micro_batch(
                &mut self.group,
                &mut self.runner,
                (&self.model, step.as_ref()),
                slice,
                t,
                (1.0 / k as f32, dropout_seed),
                &mut self.grads,
                micro + 1 == k,
            )?;
            if let (Some(loss), Some(slice)) = (loss, slice) {
                loss_sum += loss as f64 * slice.share as f64;
            }
        }
        let mut sums = [loss_sum];
        self.group.sum_f64(&mut sums);
        let loss_sum = sums[0];
        // After the sums, so that every rank of a job stops at the same step with the same error.
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: self.optimizer.step + 1,
                loss: (loss_sum / k as f64) as f32,
            });
        }
        Ok(Some((loss_sum, tokens, start)))
    }

    /// Clips, updates the weights and reports the step whose micro-batches `accumulate` ran.
    fn finish_step(&mut self, (loss_sum, tokens, start): (f64, usize, Instant)) -> Result<StepReport> {
        let k = self.config.gradient_accumulation_steps;
        let grad_norm = clip_grad_norm(&mut self.grads, self.config.grad_clip);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFiniteGradient { step: self.optimizer.step + 1, norm: grad_norm });
        }
        let lr = self.schedule().at(self.optimizer.step);
        let settings = OptimizerSettings {
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: 1e-8,
            weight_decay: self.config.weight_decay,
        };
        self.optimizer.update(&mut self.model, &self.grads, lr, &settings);
        let seconds = start.elapsed().as_secs_f64();
        let report = StepReport {
            step: self.optimizer.step,
            loss: (loss_sum / k as f64) as f32,
            lr,
            grad_norm,
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
        };
        if let Some(metrics) = self.metrics.as_mut().filter(|_| report.step.is_multiple_of(self.config.log_interval)) {
            metrics.step(&report)?;
        }
        Ok(report)
    }

    /// Mean loss over the fixed evaluation batches of each split: (train, val).
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        let (train, val) = self.evaluate_figures()?;
        Ok((train.loss, val.loss))
    }

    /// Loss (and for a classifier, accuracy) over the fixed evaluation batches of each split. Task batches
    /// weigh each batch by its counted targets, so the figure is the mean over every example (classify) or
    /// every trained token (sft), whatever the batch sizes.
    pub fn evaluate_figures(&mut self) -> Result<(EvalFigures, EvalFigures)> {
        let (rank, ranks) = (self.group.rank(), self.group.size());
        let runner = &mut self.runner;
        let model = &self.model;
        // Each rank evaluates its share of every batch: [loss × counted, counted, correct, seen] per split,
        // summed over the ranks.
        let mut sums = [0.0f64; 8];
        let batches: [Vec<EvalBatch>; 2] = match &self.feed {
            Feed::Shards { eval_train, eval_val, loader, .. } => {
                let shape = (loader.batch_size(), loader.block_size());
                [eval_train, eval_val].map(|set| set.iter().map(|(x, y)| (&x[..], &y[..], shape)).collect())
            }
            Feed::Task { eval_train, eval_val, .. } => [eval_train, eval_val]
                .map(|set| set.iter().map(|b| (&b.inputs[..], &b.targets[..], (b.b, b.t))).collect()),
        };
        let task = matches!(self.feed, Feed::Task { .. });
        for (split, set) in batches.iter().enumerate() {
            for &(x, y, (b, t)) in set {
                let Some(slice) = RankSlice::of(rank, ranks, x, y, (b, t)) else { continue };
                let (loss, predicted) = runner.evaluate(model, slice.inputs, slice.targets, (slice.b, t))?;
                let sum = &mut sums[4 * split..4 * split + 4];
                if task {
                    // Task batches weigh by their counted targets (batches differ in size).
                    let counted = counted(slice.targets) as f64;
                    sum[0] += loss as f64 * counted;
                    sum[1] += counted;
                } else {
                    // A mean over equal batches.
                    sum[0] += loss as f64 * slice.share as f64;
                    sum[1] += slice.share as f64;
                }
                sum[2] += predicted.iter().zip(slice.targets).filter(|(p, t)| p == t).count() as f64;
                sum[3] += predicted.len() as f64;
            }
        }
        self.group.sum_f64(&mut sums);
        let classify = model.config.num_labels() > 0;
        let figures = |sum: &[f64]| EvalFigures {
            loss: (sum[0] / sum[1].max(1.0)) as f32,
            accuracy: classify.then(|| (sum[2] / sum[3].max(1.0)) as f32),
        };
        Ok((figures(&sums[..4]), figures(&sums[4..])))
    }

    /// Evaluates, keeps the best model, writes the resume state. The best model is the one with the highest
    /// validation accuracy for a classifier (ties broken by the lower loss), else the lowest validation loss.
    pub fn eval_and_checkpoint(&mut self) -> Result<EvalReport> {
        let (train, val) = self.evaluate_figures()?;
        let step = self.optimizer.step;
        if !val.loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss: val.loss });
        }
        let improved = match (val.accuracy, self.best_val_accuracy) {
            (Some(acc), Some(best)) => acc > best || (acc == best && val.loss < self.best_val_loss),
            (Some(_), None) => true,
            (None, _) => val.loss < self.best_val_loss,
        };
        if improved {
            self.best_val_loss = val.loss;
            self.best_val_accuracy = val.accuracy;
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        let saved_model = step > 0 && (improved || self.config.always_save_checkpoint);
        if saved_model {
            self.save_model()?;
            self.best_model_saved = true;
        }
        if step > 0 {
            self.save_resume()?;
        }
        let report = EvalReport {
            step,
            train_loss: train.loss,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            improved,
            saved_model,
            induction: self.strongest_induction_head()?,
        };
        if let Some(metrics) = &mut self.metrics {
            metrics.eval(&report)?;
        }
        Ok(report)
    }

    /// The head with the highest induction score (TransformerLens' detector, see
    /// `lushan_model::inspect::head_roles`) on a fixed seeded random segment repeated twice: one forward of a
    /// few dozen tokens, so each evaluation can record when induction heads appear. `None` when the context
    /// is too short for the sequence.
    pub fn strongest_induction_head(&self) -> Result<Option<HeadScore>> {
        let roles = head_roles(&self.model)?;
        Ok(roles.and_then(|roles| roles.strongest(HeadRole::Induction)))
    }

    /// Writes the current model with its tokenizer into `out_dir` (for a LoRA run, its adapter).
    fn save_model(&self) -> Result<()> {
        if !self.group.is_writer() {
            return Ok(());
        }
        let base = match &self.config.init_from {
            crate::config::InitFrom::Dir(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            crate::config::InitFrom::Scratch => PathBuf::new(),
        };
        resume::save_best(&self.config.out_dir, &self.model, &self.data.tokenizer, &base.display().to_string())
    }

    /// Writes `out_dir/resume` atomically.
    pub fn save_resume(&self) -> Result<()> {
        if !self.group.is_writer() {
            return Ok(());
        }
        let (loader_state, task_loader_state) = match &self.feed {
            Feed::Shards { loader, .. } => (loader.state(), None),
            Feed::Task { loader, .. } => (0, Some(loader.state())),
        };
        let state = ResumeState {
            model: self.model.clone(),
            optimizer: self.optimizer.clone(),
            loader_state,
            task_loader_state,
            dropout_rng_state: self.dropout_rng.state(),
            best_val_loss: self.best_val_loss,
            best_val_accuracy: self.best_val_accuracy,
            evals_without_improvement: self.evals_without_improvement,
            data_description: self.data.description(),
            train_config: self.config.clone(),
            tokenizer: Some(self.data.tokenizer.clone()),
        };
        resume::save(&self.config.out_dir, &state)
    }

    /// Trains until `max_iters`, early stopping, or `stop` being raised (then the resume state is saved).
    /// A run that ends before any evaluation saved a best model saves its current model all the same, marked
    /// `"best": false` in metrics.jsonl, so the directory always holds a model `generate` loads.
    pub fn run(&mut self, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<RunEnd> {
        let end = self.run_until_end(observer, stop)?;
        if !self.best_model_saved {
            let reason = match end {
                RunEnd::Finished => "finished",
                RunEnd::EarlyStopped => "early_stopped",
                RunEnd::Interrupted => "interrupted",
            };
            self.save_model()?;
            if let Some(metrics) = &mut self.metrics {
                metrics.saved_not_best(self.optimizer.step, reason)?;
            }
            self.saved_not_best = Some(self.optimizer.step);
        }
        Ok(end)
    }

    fn run_until_end(&mut self, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<RunEnd> {
        if self.optimizer.step == 0 {
            let report = self.eval_and_checkpoint()?;
            observer.on_eval(&report);
        }
        while self.optimizer.step < self.config.max_iters {
            let report = match self.step_unless(stop) {
                Ok(Some(report)) => report,
                Ok(None) => {
                    self.save_resume()?;
                    return Ok(RunEnd::Interrupted);
                }
                Err(e @ TrainError::ShardChanged { .. }) => {
                    // The work since the last evaluation is kept: the trainer is at its last completed step.
                    self.save_resume()?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            observer.on_step(&report);
            let step = self.optimizer.step;
            if step.is_multiple_of(self.config.eval_interval) || step == self.config.max_iters {
                let report = self.eval_and_checkpoint()?;
                observer.on_eval(&report);
                let patience = self.config.early_stopping_patience;
                if patience > 0 && self.evals_without_improvement >= patience {
                    return Ok(RunEnd::EarlyStopped);
                }
            }
        }
        Ok(RunEnd::Finished)
    }
}
