//! The training loop: micro-batches → forward → backward → clip → AdamW, with periodic evaluation,
//! best-model checkpoints, resumable state, early stopping and a clean stop on request.

use crate::config::TrainConfig;
use crate::data::{
    Loader, Shard, TRAIN_SHARD, VAL_SHARD, eval_batches, load_tokenizer, prepare_streaming, prepare_with,
};
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use crate::parallel::{BatchRunner, choose_replicas};
use crate::resume::{self, ResumeState};
use crate::schedule::LrSchedule;
use lushan_kernels::rng::Rng;
use lushan_model::Gpt;
use lushan_tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The prepared data a run trains on.
#[derive(Debug)]
pub struct TrainData {
    pub train: Shard,
    pub val: Shard,
    pub tokenizer: Tokenizer,
}

impl TrainData {
    /// Opens the data `config.data` names: a directory made by `lushan prepare`, or text (a file or a
    /// directory of text files) that is tokenized per character into `out_dir/data` first.
    pub fn load(config: &TrainConfig) -> Result<Self> {
        Self::load_for(config, None)
    }

    /// Like [`TrainData::load`], for a model that already has a tokenizer (fine-tuning): text is tokenized
    /// with it, and prepared shards must have been made with it.
    pub fn load_for(config: &TrainConfig, tokenizer: Option<&Tokenizer>) -> Result<Self> {
        let dir = if config.data.join(TRAIN_SHARD).is_file() {
            config.data.clone()
        } else {
            let dir = config.out_dir.join("data");
            let inputs = std::slice::from_ref(&config.data);
            match tokenizer {
                Some(t) => prepare_with(Some(t), inputs, &dir, config.val_fraction)?,
                None if config.tokenizer == "char" => prepare_with(None, inputs, &dir, config.val_fraction)?,
                None => {
                    let t = Tokenizer::load(&config.tokenizer)
                        .map_err(|source| TrainError::Tokenizer { path: PathBuf::from(&config.tokenizer), source })?;
                    prepare_streaming(&t, inputs, &dir, config.val_fraction, &mut |_, _| {})?
                }
            };
            dir
        };
        let tokenizer = match tokenizer {
            Some(t) => t.clone(),
            None => load_tokenizer(&dir)?,
        };
        let vocab = Some(tokenizer.vocab_size());
        let train = Shard::open(&dir.join(TRAIN_SHARD), vocab)?;
        let val = Shard::open(&dir.join(VAL_SHARD), vocab)?;
        for shard in [&train, &val] {
            if shard.description() != tokenizer.describe() {
                return Err(TrainError::VocabMismatch {
                    data: format!("{} ({})", shard.description(), shard.path().display()),
                    model_vocab: tokenizer.vocab_size(),
                });
            }
        }
        Ok(Self { train, val, tokenizer })
    }
}

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
    pub improved: bool,
    pub saved_model: bool,
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

/// Everything a run holds in memory.
#[derive(Debug)]
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Gpt,
    pub optimizer: AdamWState,
    pub data: TrainData,
    grads: Vec<f32>,
    runner: BatchRunner,
    loader: Loader,
    dropout_rng: Rng,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    eval_train: Vec<(Vec<u32>, Vec<u32>)>,
    eval_val: Vec<(Vec<u32>, Vec<u32>)>,
    pub best_val_loss: f32,
    pub evals_without_improvement: u64,
    metrics: MetricsLog,
}

impl Trainer {
    /// A fresh run: model initialised from `config.seed` (or given), optimiser state zero.
    pub fn new(config: TrainConfig, data: TrainData, model: Option<Gpt>) -> Result<Self> {
        config.validate()?;
        let vocab = data.tokenizer.vocab_size();
        let model = match model {
            Some(m) => m,
            None => Gpt::new(config.model_config(vocab), config.seed)?,
        };
        if model.config.vocab_size != vocab {
            return Err(TrainError::VocabMismatch {
                data: data.tokenizer.describe(),
                model_vocab: model.config.vocab_size,
            });
        }
        Self::assemble(config, data, model, AdamWState::new(0), false)
    }

    /// Checks the run's shapes against the model, allocates every buffer, then opens the metrics log
    /// (appending when resuming) — last, so a rejected run never truncates an existing log.
    fn assemble(
        config: TrainConfig,
        data: TrainData,
        model: Gpt,
        mut optimizer: AdamWState,
        resuming: bool,
    ) -> Result<Self> {
        let (b, t) = (config.batch_size, config.block_size);
        if t > model.config.block_size {
            return Err(TrainError::InvalidSetting {
                name: "--block-size".into(),
                reason: format!("{t} is longer than the model's context of {}", model.config.block_size),
            });
        }
        let replicas = choose_replicas(config.data_parallel, model.num_params(), b);
        let runner = BatchRunner::new(&model.config, b, t, replicas)?;
        let loader = Loader::new(&data.train, b, t, config.seed)?;
        let eval_train = eval_batches(&data.train, b, t, config.eval_iters, config.seed ^ 0x0074_7261_696e)?;
        let eval_val = eval_batches(&data.val, b, t, config.eval_iters, config.seed ^ 0x76_616c)?;
        if optimizer.m.is_empty() {
            optimizer = AdamWState::new(model.num_params());
        }
        let metrics =
            if resuming { MetricsLog::append(&config.out_dir)? } else { MetricsLog::create(&config.out_dir)? };
        // A run killed mid-save leaves its temporary files behind; the new run sweeps them.
        for dir in [config.out_dir.clone(), config.out_dir.join(crate::resume::RESUME_DIR)] {
            lushan_model::checkpoint::remove_stale_temp_files(&dir)
                .map_err(|source| TrainError::Io { path: dir.clone(), source })?;
        }
        Ok(Self {
            grads: vec![0.0; model.num_params()],
            dropout_rng: Rng::new(config.seed ^ 0x6472_6f70),
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            config,
            model,
            optimizer,
            data,
            runner,
            loader,
            eval_train,
            eval_val,
            best_val_loss: f32::INFINITY,
            evals_without_improvement: 0,
            metrics,
        })
    }

    /// Continues the run saved in `config.out_dir/resume`, bit-identically.
    pub fn resume(config: TrainConfig, data: TrainData) -> Result<Self> {
        let state = resume::load(&config.out_dir)?;
        let vocab = data.tokenizer.vocab_size();
        let wanted = config.model_config(vocab);
        resume::check_same_model(&config.out_dir, &state.model.config, &wanted)?;
        if state.data_description != data.tokenizer.describe() {
            return Err(TrainError::Resume {
                path: config.out_dir.clone(),
                message: format!(
                    "the checkpoint was trained on `{}` data but --data is `{}`",
                    state.data_description,
                    data.tokenizer.describe()
                ),
            });
        }
        // Dropout is a training setting, not part of the model's shape: the resumed run uses the one asked for.
        let mut model = state.model;
        model.config.dropout = config.dropout;
        let mut trainer = Self::assemble(config, data, model, state.optimizer, true)?;
        trainer.loader.set_state(state.loader_state);
        trainer.dropout_rng = Rng::from_state(state.dropout_rng_state);
        trainer.best_val_loss = state.best_val_loss;
        trainer.evals_without_improvement = state.evals_without_improvement;
        Ok(trainer)
    }

    pub fn step_count(&self) -> u64 {
        self.optimizer.step
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
        let start = Instant::now();
        let k = self.config.gradient_accumulation_steps;
        self.grads.fill(0.0);
        let mut loss_sum = 0.0f64;
        for _ in 0..k {
            self.loader.next_batch(&mut self.inputs, &mut self.targets);
            let dropout_seed = self.dropout_rng.next_u64();
            let loss = self.runner.forward_backward(
                &self.model,
                &self.inputs,
                &self.targets,
                1.0 / k as f32,
                dropout_seed,
                &mut self.grads,
            )?;
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss { step: self.optimizer.step + 1, loss });
            }
            loss_sum += loss as f64;
        }
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
            tokens_per_second: self.config.tokens_per_step() as f64 / seconds.max(1e-9),
        };
        if report.step.is_multiple_of(self.config.log_interval) {
            self.metrics.step(&report)?;
        }
        Ok(report)
    }

    /// Mean loss over the fixed evaluation batches of each split: (train, val).
    pub fn evaluate(&mut self) -> Result<(f32, f32)> {
        let mut mean = |batches: &[(Vec<u32>, Vec<u32>)]| -> Result<f32> {
            let mut sum = 0.0f64;
            for (x, y) in batches {
                sum += self.runner.loss(&self.model, x, y)? as f64;
            }
            Ok((sum / batches.len().max(1) as f64) as f32)
        };
        let train = mean(&self.eval_train)?;
        let val = mean(&self.eval_val)?;
        Ok((train, val))
    }

    /// Evaluates, keeps the best model, writes the resume state.
    pub fn eval_and_checkpoint(&mut self) -> Result<EvalReport> {
        let (train_loss, val_loss) = self.evaluate()?;
        let step = self.optimizer.step;
        if !val_loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss: val_loss });
        }
        let improved = val_loss < self.best_val_loss;
        if improved {
            self.best_val_loss = val_loss;
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        let saved_model = step > 0 && (improved || self.config.always_save_checkpoint);
        if saved_model {
            resume::save_best(&self.config.out_dir, &self.model, &self.data.tokenizer)?;
        }
        if step > 0 {
            self.save_resume()?;
        }
        let report = EvalReport { step, train_loss, val_loss, improved, saved_model };
        self.metrics.eval(&report)?;
        Ok(report)
    }

    /// Writes `out_dir/resume` atomically.
    pub fn save_resume(&self) -> Result<()> {
        let state = ResumeState {
            model: self.model.clone(),
            optimizer: self.optimizer.clone(),
            loader_state: self.loader.state(),
            dropout_rng_state: self.dropout_rng.state(),
            best_val_loss: self.best_val_loss,
            evals_without_improvement: self.evals_without_improvement,
            data_description: self.data.tokenizer.describe(),
            train_config: self.config.clone(),
        };
        resume::save(&self.config.out_dir, &state)
    }

    /// Trains until `max_iters`, early stopping, or `stop` being raised (then the resume state is saved).
    pub fn run(&mut self, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<RunEnd> {
        if self.optimizer.step == 0 {
            let report = self.eval_and_checkpoint()?;
            observer.on_eval(&report);
        }
        while self.optimizer.step < self.config.max_iters {
            if stop.load(Ordering::Relaxed) {
                self.save_resume()?;
                return Ok(RunEnd::Interrupted);
            }
            let report = self.step()?;
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
