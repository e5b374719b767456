//! The training configuration: one list of settings, from which both the resolved [`TrainConfig`] and the
//! [`TrainOverrides`] (every setting optional; read from a TOML file or from command-line flags) are made.
//! Precedence: preset < config file < flags.

use crate::error::{Result, TrainError};
use crate::tasks::Task;
use lushan_kernels::packed_gemm::Precision;
use lushan_model::{ModelConfig, PositionEncoding};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A named starting point for the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// nanoGPT's CPU run on tiny Shakespeare: 4 layers, 4 heads, 128 channels, context 64, batch 12, 2000 iters.
    #[default]
    ShakespeareChar,
    /// nanoGPT's baby GPT: 6 layers, 6 heads, 384 channels, context 256, batch 64, dropout 0.2.
    BabyGpt,
    /// GPT-2 124M (12 layers, 12 heads, 768 channels, context 1024) with nanoGPT's `train_gpt2` settings
    /// (lr 6e-4 → 6e-5, β2 0.95, warm-up 2000) at batch 4 × 1024 tokens, which fits a 24 GiB laptop
    /// (nanoGPT's 12 × 1024 needs ≈ 24 GiB of activations and logits); text data is tokenized with GPT-2 BPE.
    Gpt2,
    /// nanoGPT's `finetune_shakespeare`: from `--init-from DIR`, lr 3e-5 constant, batch 1 × 32 accumulated,
    /// 20 iterations, evaluation every 5.
    FinetuneShakespeare,
    /// A character-level GPT on Tang poems (全唐诗) from the file given with `--data`: 4 layers, 4 heads,
    /// 128 channels, context 64, batch 16, 1500 iters, writing to `out/tang-poems`.
    TangPoems,
}

/// The `precision` setting: a [`Precision`] read and written by its name (`f32`, `bf16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PrecisionSetting(pub Precision);

impl std::str::FromStr for PrecisionSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl std::fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<PrecisionSetting> for String {
    fn from(v: PrecisionSetting) -> String {
        v.0.name().to_owned()
    }
}

impl TryFrom<String> for PrecisionSetting {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum InitFrom {
    /// GPT-2 initialisation from `seed`.
    #[default]
    Scratch,
    /// A checkpoint directory (lushan's or Hugging Face's GPT-2 layout); the optimiser starts fresh.
    Dir(PathBuf),
}

impl std::str::FromStr for InitFrom {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "" => Err("expected `scratch` or a checkpoint directory".into()),
            "scratch" => Ok(Self::Scratch),
            dir => Ok(Self::Dir(PathBuf::from(dir))),
        }
    }
}

impl From<InitFrom> for String {
    fn from(v: InitFrom) -> String {
        match v {
            InitFrom::Scratch => "scratch".into(),
            InitFrom::Dir(p) => p.display().to_string(),
        }
    }
}

impl TryFrom<String> for InitFrom {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

#[path = "config_help.rs"]
mod help;

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident $(| $alias:literal)* : $ty:ty = $default:expr ),* $(,)?) => {
        /// Every training setting, resolved.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        // A setting missing from a saved configuration (one written before it existed) takes its default.
        #[serde(deny_unknown_fields, default)]
        pub struct TrainConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        /// Settings to override; `None` keeps the value below it. Also the schema of `--config FILE`.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct TrainOverrides {
            $(
                $(#[doc = $doc])*
                // The help line is the doc comment plus the default (per preset where they differ); a boolean
                // works bare (`--always-save-checkpoint` = `--always-save-checkpoint true`).
                #[arg(
                    long,
                    $(visible_alias = $alias,)*
                    help = help::describe(stringify!($name), concat!($($doc),*)),
                    help_heading = help::heading(stringify!($name)),
                    num_args = help::value_count(stringify!($ty)),
                    default_missing_value = "true",
                )]
                pub $name: Option<$ty>,
            )*
        }

        impl Default for TrainConfig {
            fn default() -> Self {
                Self::base()
            }
        }

        impl TrainConfig {
            fn base() -> Self {
                Self { $( $name: $default, )* }
            }

            /// Applies every setting present in `overrides`.
            pub fn apply(&mut self, overrides: &TrainOverrides) {
                $( if let Some(v) = &overrides.$name { self.$name = v.clone(); } )*
            }
        }
    };
}

settings! {
    /// `lm` (next-token prediction on text or token shards), `classify` (one label per text, a
    /// `GPT2ForSequenceClassification` head) or `sft` (next-token loss on completions / assistant replies only).
    task: Task = Task::Lm,
    /// Training data: a text file (or directory of text files) to tokenize per character, or a directory
    /// made by `lushan prepare` (train.bin, val.bin, lushan-tokenizer.json). The default corpus is built into
    /// lushan, so it is found from any directory.
    data: PathBuf = PathBuf::from("data/tinyshakespeare.txt"),
    /// Validation records for `classify` / `sft` (JSONL, or CSV for classify); empty = hold out
    /// `val_fraction` of `data`.
    val_data: PathBuf = PathBuf::new(),
    /// How text `data` is tokenized: `char` (a vocabulary of the corpus's characters), `gpt2` (GPT-2's
    /// byte-level BPE) or a tokenizer directory/file. Ignored for prepared data and when fine-tuning (the
    /// checkpoint's tokenizer is used).
    tokenizer: String = "char".to_owned(),
    /// Fraction of a text corpus held out for validation when `data` is text.
    val_fraction: f64 = 0.1,
    /// Transformer blocks.
    n_layer: usize = 4,
    /// Attention heads per block (must divide --n-embd).
    n_head: usize = 4,
    /// Embedding width (channels).
    n_embd: usize = 128,
    /// Context length: tokens per training sequence (the model's maximum context).
    block_size: usize = 64,
    /// Dropout probability in training (0 = off).
    dropout: f32 = 0.0,
    /// `learned` (GPT-2) or `sinusoidal` (fixed, as in the original Transformer).
    position_encoding: PositionEncoding = PositionEncoding::Learned,
    /// Peak learning rate (reached after the warm-up).
    learning_rate | "lr": f32 = 1e-3,
    /// Sequences per micro-batch.
    batch_size: usize = 12,
    /// Micro-batches per update.
    gradient_accumulation_steps: usize = 1,
    /// AdamW weight decay (applied to matrices, not to biases or layer norms).
    weight_decay: f32 = 0.1,
    /// AdamW β1 (momentum of the gradient's mean).
    beta1: f32 = 0.9,
    /// AdamW β2 (momentum of the gradient's square).
    beta2: f32 = 0.99,
    /// Clip the global gradient norm to this (0 = off).
    grad_clip: f32 = 1.0,
    /// Seed of the initialisation, the batch order and dropout: the same seed gives the same run.
    seed: u64 = 1337,
    /// Replicas the batch is split over, one per core (0 = automatic: one per core for models up to 30M
    /// parameters, otherwise 1 with every kernel split over the cores instead).
    data_parallel: usize = 0,
    /// Keep only each transformer block's input during the forward and run the block's forward again just
    /// before its backward: activation memory of about one block instead of all, for about a third more
    /// forward work.
    checkpoint_activations: bool = false,
    /// Matrix products of the linear layers and the output layer: `f32`, or `bf16` (operands rounded to
    /// bfloat16, products summed in f32, as PyTorch's `autocast(dtype=torch.bfloat16)`; weights, activations,
    /// gradients and the optimiser stay f32). Runs on AVX-512 BF16 instructions where the CPU has them
    /// (checked when training starts), emulated — slower than f32 — where it does not.
    precision: PrecisionSetting = PrecisionSetting::default(),
    /// Updates (optimiser steps) to train for.
    max_iters | "iters" | "steps": u64 = 2000,
    /// Warm up then cosine-decay the learning rate (false = constant).
    decay_lr: bool = true,
    /// Updates over which the learning rate rises linearly from 0 to --learning-rate.
    warmup_iters: u64 = 100,
    /// Update at which the cosine decay reaches --min-lr; follows --max-iters unless set.
    lr_decay_iters: u64 = 2000,
    /// Learning rate at the end of the decay.
    min_lr: f32 = 1e-4,
    /// Evaluate (and maybe checkpoint) every N updates.
    eval_interval: u64 = 250,
    /// Batches per split in each evaluation.
    eval_iters: usize = 20,
    /// Stop after this many evaluations without improvement (0 = never).
    early_stopping_patience: u64 = 0,
    /// Checkpoint directory: the best model (Hugging Face layout), `resume/`, metrics.jsonl and loss.png.
    out_dir | "out": PathBuf = PathBuf::from("out/shakespeare-char"),
    /// Write a metrics line (and, when stdout is not a terminal, a progress line) every N updates.
    log_interval: u64 = 10,
    /// Save the model at every evaluation, not only when validation loss improves.
    always_save_checkpoint: bool = false,
    /// Characters/tokens sampled from the model when training ends (0 = none).
    sample_tokens: usize = 300,
    /// `scratch`, or a checkpoint directory to fine-tune (lushan's or Hugging Face's GPT-2 layout): the
    /// model's shape and tokenizer come from it, the optimiser starts fresh.
    init_from: InitFrom = InitFrom::Scratch,
    /// `classify` from a classifier checkpoint whose labels differ from the data's: start a new score head.
    reset_head: bool = false,
    /// LoRA rank (0 = full fine-tuning): the base stays frozen and only adapters (and a classifier's score
    /// head) train; the checkpoint is a PEFT adapter.
    lora_rank: usize = 0,
    /// LoRA scaling numerator: adapters add `lora_alpha / lora_rank · B·A`.
    lora_alpha: f32 = 16.0,
    /// Dropout on each adapter's input.
    lora_dropout: f32 = 0.05,
    /// Linear layers that get adapters (PEFT names): `c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`
    /// (`c_proj` = both projections, `all-linear` = all four), comma-separated.
    lora_targets: String = "c_attn".to_owned(),
}

impl TrainConfig {
    pub fn preset(preset: Preset) -> Self {
        let mut c = Self::base();
        if preset == Preset::BabyGpt {
            c.out_dir = PathBuf::from("out/baby-gpt");
            c.batch_size = 64;
            c.block_size = 256;
            c.n_layer = 6;
            c.n_head = 6;
            c.n_embd = 384;
            c.dropout = 0.2;
            c.max_iters = 5000;
            c.lr_decay_iters = 5000;
            c.eval_iters = 200;
        }
        if preset == Preset::Gpt2 {
            c.out_dir = PathBuf::from("out/gpt2");
            c.tokenizer = "gpt2".to_owned();
            c.batch_size = 4;
            c.block_size = 1024;
            c.n_layer = 12;
            c.n_head = 12;
            c.n_embd = 768;
            c.learning_rate = 6e-4;
            c.min_lr = 6e-5;
            c.beta2 = 0.95;
            c.warmup_iters = 2000;
            c.max_iters = 600_000;
            c.lr_decay_iters = 600_000;
            c.eval_interval = 1000;
            c.eval_iters = 200;
        }
        if preset == Preset::FinetuneShakespeare {
            c.out_dir = PathBuf::from("out/finetune-shakespeare");
            c.learning_rate = 3e-5;
            c.decay_lr = false;
            c.batch_size = 1;
            c.gradient_accumulation_steps = 32;
            c.max_iters = 20;
            c.eval_interval = 5;
            c.eval_iters = 40;
            c.sample_tokens = 200;
        }
        if preset == Preset::TangPoems {
            // No bundled corpus: `resolve` asks for `--data` rather than train on Shakespeare by mistake.
            c.data = PathBuf::new();
            c.out_dir = PathBuf::from("out/tang-poems");
            c.batch_size = 16;
            c.max_iters = 1500;
            c.lr_decay_iters = 1500;
            c.sample_tokens = 200;
        }
        c
    }

    /// Preset, then the TOML file, then the flags.
    pub fn resolve(preset: Preset, file: Option<&Path>, flags: &TrainOverrides) -> Result<Self> {
        let mut c = Self::preset(preset);
        let from_file = match file {
            Some(path) => read_overrides(path)?,
            None => TrainOverrides::default(),
        };
        c.apply(&from_file);
        c.apply(flags);
        // The cosine schedule ends where training ends unless its length was set explicitly: `--max-iters 300`
        // alone must not leave a schedule made for the preset's 2000 steps.
        let decay_set = from_file.lr_decay_iters.is_some() || flags.lr_decay_iters.is_some();
        let iters_set = from_file.max_iters.is_some() || flags.max_iters.is_some();
        if iters_set && !decay_set {
            c.lr_decay_iters = c.max_iters;
        }
        c.validate()?;
        if preset == Preset::FinetuneShakespeare && c.init_from == InitFrom::Scratch {
            return Err(TrainError::InvalidSetting {
                name: "--init-from".into(),
                reason: "the finetune-shakespeare preset needs a checkpoint directory to start from".into(),
            });
        }
        if preset == Preset::TangPoems && c.data.as_os_str().is_empty() {
            return Err(TrainError::InvalidSetting {
                name: "--data".into(),
                reason: "the tang-poems preset needs the corpus file, e.g. --data PATH/quantangshi.txt".into(),
            });
        }
        Ok(c)
    }

    pub fn model_config(&self, vocab_size: usize) -> ModelConfig {
        let mut m = ModelConfig::new(vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd);
        m.dropout = self.dropout;
        m.position_encoding = self.position_encoding;
        m
    }

    /// Checks every setting that the model config does not check, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, reason: String| {
            Err(TrainError::InvalidSetting { name: format!("--{}", name.replace('_', "-")), reason })
        };
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("block_size", self.block_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("eval_iters", self.eval_iters),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if self.gradient_accumulation_steps > MAX_GRADIENT_ACCUMULATION_STEPS {
            return bad(
                "gradient_accumulation_steps",
                format!(
                    "must be at most {MAX_GRADIENT_ACCUMULATION_STEPS} micro-batches per update, got {} (raise \
                     --batch-size instead for larger updates)",
                    self.gradient_accumulation_steps
                ),
            );
        }
        if self.eval_interval == 0 || self.log_interval == 0 {
            let name = if self.eval_interval == 0 { "eval_interval" } else { "log_interval" };
            return bad(name, "must be at least 1".into());
        }
        for (name, v) in [("learning_rate", self.learning_rate), ("min_lr", self.min_lr)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, format!("must be a finite number ≥ 0, got {v}"));
            }
        }
        if self.decay_lr && self.min_lr > self.learning_rate {
            return Err(TrainError::InvalidSetting {
                name: "--min-lr".into(),
                reason: format!(
                    "{} is above --learning-rate {}: the schedule decays from --learning-rate down to --min-lr, \
                     so --min-lr must not exceed it (or pass --decay-lr false for a constant rate)",
                    self.min_lr, self.learning_rate
                ),
            });
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, format!("must be in [0, 1), got {v}"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("must be ≥ 0, got {}", self.weight_decay));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad("grad_clip", format!("must be ≥ 0 (0 = off), got {}", self.grad_clip));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad("lora_alpha", format!("must be a positive number, got {}", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout", format!("must be in [0, 1), got {}", self.lora_dropout));
        }
        if self.lora_rank > 0 && self.init_from == InitFrom::Scratch {
            return bad("lora_rank", "LoRA adapts a pre-trained model: add --init-from DIR".into());
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad("val_fraction", format!("must be in (0, 1), got {}", self.val_fraction));
        }
        // The run's settings are saved as text (train_config.toml, resume/state.json) at its first checkpoint;
        // a path that is not UTF-8 cannot be written there, so it is refused before any work is done.
        let init_dir = match &self.init_from {
            InitFrom::Dir(dir) => dir.as_path(),
            InitFrom::Scratch => Path::new(""),
        };
        for (name, path) in [
            ("data", self.data.as_path()),
            ("val_data", &self.val_data),
            ("out_dir", &self.out_dir),
            ("init_from", init_dir),
        ] {
            if path.to_str().is_none() {
                return bad(
                    name,
                    format!(
                        "the path {} is not valid UTF-8; the run's settings are saved as UTF-8 text \
                         (train_config.toml, resume/state.json), so choose a path with a UTF-8 name",
                        path.display()
                    ),
                );
            }
        }
        self.model_config(2).validate().map_err(|e| match e {
            lushan_model::ModelError::InvalidConfig { field, reason } => TrainError::InvalidSetting {
                name: format!("--{}", field.replace('_', "-")),
                reason: reason.replace("n_head", "--n-head"),
            },
            other => TrainError::InvalidSetting { name: "model".into(), reason: other.to_string() },
        })?;

        Ok(())
    }

    /// Takes the model shape of a checkpoint being fine-tuned (its layers, heads, width and position
    /// encoding), so the saved training config describes the model actually trained.
    pub fn adopt_model_shape(&mut self, model: &ModelConfig) {
        self.n_layer = model.n_layer;
        self.n_head = model.n_head;
        self.n_embd = model.n_embd;
        self.position_encoding = model.position_encoding;
    }

    /// The validation file, when one is given.
    pub fn val_data_path(&self) -> Option<&Path> {
        (!self.val_data.as_os_str().is_empty()).then_some(self.val_data.as_path())
    }

    /// Tokens processed per update.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.block_size * self.gradient_accumulation_steps
    }
}

/// The most micro-batches one update may accumulate: more would make a single step last for hours while
/// nothing is saved (a larger update should come from a larger --batch-size).
pub const MAX_GRADIENT_ACCUMULATION_STEPS: usize = 65_536;

/// Reads a TOML file of settings (the same names as the flags, with underscores).
pub fn read_overrides(path: &Path) -> Result<TrainOverrides> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| TrainError::ConfigFile { path: path.to_path_buf(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_preset_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cfg.toml");
        std::fs::write(&file, "max_iters = 50\nn_layer = 2\nposition_encoding = \"sinusoidal\"\n").unwrap();
        let flags = TrainOverrides { n_layer: Some(3), ..Default::default() };
        let c = TrainConfig::resolve(Preset::BabyGpt, Some(&file), &flags).unwrap();
        assert_eq!((c.max_iters, c.n_layer, c.n_embd), (50, 3, 384));
        assert_eq!(c.position_encoding, PositionEncoding::Sinusoidal);
    }

    #[test]
    fn errors_name_the_setting_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "max_itters = 5\n").unwrap();
        let e = TrainConfig::resolve(Preset::ShakespeareChar, Some(&file), &TrainOverrides::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("bad.toml") && msg.contains("max_itters"), "{msg}");
        let flags = TrainOverrides { n_embd: Some(130), ..Default::default() };
        let msg = TrainConfig::resolve(Preset::ShakespeareChar, None, &flags).unwrap_err().to_string();
        assert!(msg.contains("--n-embd") && msg.contains("--n-head"), "{msg}");
        let flags = TrainOverrides { batch_size: Some(0), ..Default::default() };
        let msg = TrainConfig::resolve(Preset::ShakespeareChar, None, &flags).unwrap_err().to_string();
        assert!(msg.contains("--batch-size"), "{msg}");
        let flags = TrainOverrides { beta2: Some(1.0), ..Default::default() };
        assert!(
            TrainConfig::resolve(Preset::ShakespeareChar, None, &flags).unwrap_err().to_string().contains("--beta2")
        );
    }

    #[test]
    fn tang_poems_needs_the_corpus_path_and_keeps_its_shape() {
        let msg = TrainConfig::resolve(Preset::TangPoems, None, &TrainOverrides::default()).unwrap_err().to_string();
        assert!(msg.contains("--data") && msg.contains("tang-poems"), "{msg}");
        let flags = TrainOverrides { data: Some(PathBuf::from("quantangshi.txt")), ..Default::default() };
        let c = TrainConfig::resolve(Preset::TangPoems, None, &flags).unwrap();
        assert_eq!((c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size), (4, 4, 128, 64, 16));
        assert_eq!((c.max_iters, c.lr_decay_iters, c.tokenizer.as_str()), (1500, 1500, "char"));
        assert_eq!(c.out_dir, PathBuf::from("out/tang-poems"));
    }

    #[test]
    fn the_schedule_follows_max_iters_unless_set() {
        let flags = TrainOverrides { max_iters: Some(300), ..Default::default() };
        assert_eq!(TrainConfig::resolve(Preset::ShakespeareChar, None, &flags).unwrap().lr_decay_iters, 300);
        let flags = TrainOverrides { max_iters: Some(300), lr_decay_iters: Some(1000), ..Default::default() };
        assert_eq!(TrainConfig::resolve(Preset::ShakespeareChar, None, &flags).unwrap().lr_decay_iters, 1000);
        let c = TrainConfig::resolve(Preset::ShakespeareChar, None, &TrainOverrides::default()).unwrap();
        assert_eq!((c.max_iters, c.lr_decay_iters), (2000, 2000));
    }

    #[test]
    fn config_round_trips_through_toml() {
        let c = TrainConfig::preset(Preset::ShakespeareChar);
        let text = toml::to_string(&c).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(c, back);
    }
}
