//! Resume state beside the checkpoint: `out_dir/resume/` holds the latest model, both AdamW moments and a
//! `state.json` (step, RNG states, data cursor, full training config, format version).
//!
//! A save writes a complete new directory `resume.tmp`, then swaps it in with [`lushan_fs::replace_dir`], so
//! a crash at any moment leaves either the old or the new state complete (`resume.old` is picked up if the
//! crash fell between the two renames).

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::optim::AdamWState;
use crate::tasks::TaskLoaderState;
use lushan_fs::atomic_write;
use lushan_model::checkpoint;
use lushan_model::{Gpt, ModelConfig};
use lushan_tokenizer::Tokenizer;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const RESUME_DIR: &str = "resume";
pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const FORMAT_VERSION: u32 = 1;
/// Where a LoRA run keeps its adapters inside the resume directory (the base weights beside it).
pub const ADAPTER_DIR: &str = "adapter";

/// Everything needed to continue a run bit-identically.
#[derive(Debug, Clone)]
pub struct ResumeState {
    pub model: Gpt,
    pub optimizer: AdamWState,
    pub loader_state: u64,
    /// The task loader's cursor (`classify` / `sft` runs).
    pub task_loader_state: Option<TaskLoaderState>,
    pub dropout_rng_state: u64,
    pub best_val_loss: f32,
    pub best_val_accuracy: Option<f32>,
    pub evals_without_improvement: u64,
    pub data_description: String,
    pub train_config: TrainConfig,
    /// The run's tokenizer, saved beside the resume weights so the directory is usable on its own.
    pub tokenizer: Option<Tokenizer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format_version: u32,
    step: u64,
    loader_state: u64,
    #[serde(default)]
    task_loader_state: Option<TaskLoaderState>,
    dropout_rng_state: u64,
    /// `None` before the first evaluation (JSON has no infinity).
    best_val_loss: Option<f32>,
    #[serde(default)]
    best_val_accuracy: Option<f32>,
    evals_without_improvement: u64,
    data_description: String,
    train_config: TrainConfig,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

fn resume_error(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Resume { path: path.to_path_buf(), message: message.into() }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the resume state for `out_dir` atomically (see the module docs).
pub fn save(out_dir: &Path, s: &ResumeState) -> Result<()> {
    let tmp = out_dir.join(format!("{RESUME_DIR}.tmp"));
    let live = out_dir.join(RESUME_DIR);
    let old = out_dir.join(format!("{RESUME_DIR}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    checkpoint::save_model_dir(&tmp, &s.model.config, &s.model.params)?;
    if s.model.lora.is_some() {
        let adapter = tmp.join(ADAPTER_DIR);
        checkpoint::adapter::save_adapter_dir(&adapter, &s.model, &String::from(s.train_config.init_from.clone()))?;
    }
    if let Some(tokenizer) = &s.tokenizer {
        crate::data::save_tokenizer(&tmp, tokenizer)?;
    }
    let (m, v) = (f32_bytes(&s.optimizer.m), f32_bytes(&s.optimizer.v));
    let shape = vec![s.optimizer.m.len()];
    let views = [
        ("adamw.m", TensorView::new(Dtype::F32, shape.clone(), &m)),
        ("adamw.v", TensorView::new(Dtype::F32, shape, &v)),
    ];
    let views: Vec<(&str, TensorView)> = views
        .into_iter()
        .map(|(n, r)| r.map(|t| (n, t)).map_err(|e| resume_error(&tmp, e.to_string())))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| resume_error(&tmp, e.to_string()))?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    atomic_write(&opt_path, &bytes).map_err(io(&opt_path))?;
    let state = StateFile {
        format_version: FORMAT_VERSION,
        step: s.optimizer.step,
        loader_state: s.loader_state,
        task_loader_state: s.task_loader_state,
        dropout_rng_state: s.dropout_rng_state,
        best_val_loss: s.best_val_loss.is_finite().then_some(s.best_val_loss),
        best_val_accuracy: s.best_val_accuracy,
        evals_without_improvement: s.evals_without_improvement,
        data_description: s.data_description.clone(),
        train_config: s.train_config.clone(),
    };
    let json = serde_json::to_string_pretty(&state).map_err(|e| resume_error(&tmp, e.to_string()))?;
    let state_path = tmp.join(STATE_FILE);
    atomic_write(&state_path, json.as_bytes()).map_err(io(&state_path))?;
    lushan_fs::replace_dir(&tmp, &live, &old).map_err(|e| TrainError::Io { path: e.path, source: e.source })
}

/// The directory holding the latest complete resume state.
pub fn locate(out_dir: &Path) -> Result<PathBuf> {
    let live = out_dir.join(RESUME_DIR);
    if live.join(STATE_FILE).is_file() {
        return Ok(live);
    }
    let old = out_dir.join(format!("{RESUME_DIR}.old"));
    if old.join(STATE_FILE).is_file() {
        return Ok(old);
    }
    Err(resume_error(out_dir, format!("no resume state found (expected {}/{STATE_FILE})", live.display())))
}

/// Reads the resume state written by [`save`].
pub fn load(out_dir: &Path) -> Result<ResumeState> {
    let dir = locate(out_dir)?;
    let state_path = dir.join(STATE_FILE);
    let text = lushan_fs::read_to_string_regular(&state_path).map_err(io(&state_path))?;
    let state: StateFile =
        serde_json::from_str(&text).map_err(|e| resume_error(&state_path, format!("invalid state file: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(resume_error(
            &state_path,
            format!("format version {} is not supported (expected {FORMAT_VERSION})", state.format_version),
        ));
    }
    let (config, params) = checkpoint::load_model_dir(&dir)?;
    let mut model = Gpt::from_params(config, params)?;
    let adapter = dir.join(ADAPTER_DIR);
    if checkpoint::adapter::is_adapter_dir(&adapter) {
        model.lora = Some(lushan_model::Lora::load_peft(&adapter, &model.config)?);
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    let bytes = lushan_fs::read_regular(&opt_path).map_err(io(&opt_path))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| resume_error(&opt_path, e.to_string()))?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let t = tensors.tensor(name).map_err(|e| resume_error(&opt_path, format!("tensor `{name}`: {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != [model.num_trainable()] {
            return Err(resume_error(
                &opt_path,
                format!("tensor `{name}` must be F32 [{}], got {:?} {:?}", model.num_trainable(), t.dtype(), t.shape()),
            ));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let m = read("adamw.m")?;
    let v = read("adamw.v")?;
    Ok(ResumeState {
        model,
        optimizer: AdamWState { m, v, step: state.step },
        loader_state: state.loader_state,
        task_loader_state: state.task_loader_state,
        dropout_rng_state: state.dropout_rng_state,
        best_val_loss: state.best_val_loss.unwrap_or(f32::INFINITY),
        best_val_accuracy: state.best_val_accuracy,
        evals_without_improvement: state.evals_without_improvement,
        data_description: state.data_description,
        train_config: state.train_config,
        tokenizer: Tokenizer::load_dir(&dir).ok(),
    })
}

/// The saved training config, for `--resume DIR` to start from.
pub fn saved_config(out_dir: &Path) -> Result<TrainConfig> {
    let dir = locate(out_dir)?;
    let state_path = dir.join(STATE_FILE);
    let text = lushan_fs::read_to_string_regular(&state_path).map_err(io(&state_path))?;
    let state: StateFile =
        serde_json::from_str(&text).map_err(|e| resume_error(&state_path, format!("invalid state file: {e}")))?;
    Ok(state.train_config)
}

/// Resuming must not change the model's shape: names every field that differs.
pub fn check_same_model(path: &Path, saved: &ModelConfig, wanted: &ModelConfig) -> Result<()> {
    let mut diffs = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            diffs.push(format!("{name}: checkpoint has {a}, requested {b}"));
        }
    };
    cmp("vocab_size", saved.vocab_size.to_string(), wanted.vocab_size.to_string());
    cmp("block_size", saved.block_size.to_string(), wanted.block_size.to_string());
    cmp("n_layer", saved.n_layer.to_string(), wanted.n_layer.to_string());
    cmp("n_head", saved.n_head.to_string(), wanted.n_head.to_string());
    cmp("n_embd", saved.n_embd.to_string(), wanted.n_embd.to_string());
    cmp("position_encoding", format!("{:?}", saved.position_encoding), format!("{:?}", wanted.position_encoding));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(resume_error(path, format!("the model configuration differs from the checkpoint's: {}", diffs.join("; "))))
    }
}

/// A resumed run saves its best model into `out_dir` itself, so `resume/` must belong to the run that owns
/// the directory: its settings (`train_config.toml`, written when that run started) — or, without them, its
/// best model (`config.json`) — must describe the same model. A `resume/` copied from another run would
/// otherwise overwrite the directory's model with a different one. Names every field that differs.
pub fn check_matches_directory(out_dir: &Path, resumed: &ResumeState) -> Result<()> {
    let settings_path = out_dir.join(SETTINGS_FILE);
    let settings = std::fs::read_to_string(&settings_path).ok().and_then(|t| toml::from_str::<TrainConfig>(&t).ok());
    let (file, diffs) = match settings {
        Some(settings) => (SETTINGS_FILE, settings_differences(&settings, &resumed.train_config)),
        None => {
            let config_path = out_dir.join(checkpoint::CONFIG_FILE);
            let text = match std::fs::read_to_string(&config_path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(TrainError::Io { path: config_path, source }),
            };
            let directory = checkpoint::parse_config_json(&text, &config_path)?;
            (checkpoint::CONFIG_FILE, model_differences(&directory, &resumed.model.config))
        }
    };
    if diffs.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> =
        diffs.into_iter().map(|(name, dir, res)| format!("{name}: {dir} in {file}, {res} in {RESUME_DIR}/")).collect();
    Err(resume_error(
        out_dir,
        format!(
            "{RESUME_DIR}/ holds another run's model than the directory's {file} ({}); resuming would overwrite \
             the directory's model, so the run is refused — resume the directory the state was saved in",
            fields.join("; ")
        ),
    ))
}

/// The settings file every run writes into its output directory when it starts.
pub const SETTINGS_FILE: &str = "train_config.toml";

/// (setting, a's value, b's value) for each model-shaping setting in which two runs differ.
fn settings_differences(a: &TrainConfig, b: &TrainConfig) -> Vec<(&'static str, String, String)> {
    [
        ("task", a.task.as_str().to_owned(), b.task.as_str().to_owned()),
        ("block_size", a.block_size.to_string(), b.block_size.to_string()),
        ("n_layer", a.n_layer.to_string(), b.n_layer.to_string()),
        ("n_head", a.n_head.to_string(), b.n_head.to_string()),
        ("n_embd", a.n_embd.to_string(), b.n_embd.to_string()),
        ("position_encoding", format!("{:?}", a.position_encoding), format!("{:?}", b.position_encoding)),
    ]
    .into_iter()
    .filter(|(_, x, y)| x != y)
    .collect()
}

/// (field, a's value, b's value) for each shape field in which two model configs differ.
fn model_differences(a: &ModelConfig, b: &ModelConfig) -> Vec<(&'static str, String, String)> {
    let labels = |c: &ModelConfig| match &c.head {
        lushan_model::Head::Classifier { labels, .. } => format!("{labels:?}"),
        _ => "none (a language model)".to_owned(),
    };
    [
        ("vocab_size", a.vocab_size.to_string(), b.vocab_size.to_string()),
        ("block_size", a.block_size.to_string(), b.block_size.to_string()),
        ("n_layer", a.n_layer.to_string(), b.n_layer.to_string()),
        ("n_head", a.n_head.to_string(), b.n_head.to_string()),
        ("n_embd", a.n_embd.to_string(), b.n_embd.to_string()),
        ("position_encoding", format!("{:?}", a.position_encoding), format!("{:?}", b.position_encoding)),
        ("labels", labels(a), labels(b)),
    ]
    .into_iter()
    .filter(|(_, x, y)| x != y)
    .collect()
}

/// Writes the best model so far as a Hugging Face style directory, with the tokenizer file; a LoRA run
/// writes its adapter (PEFT's files, naming `base_model`) instead of the weights.
pub fn save_best(out_dir: &Path, model: &Gpt, tokenizer: &Tokenizer, base_model: &str) -> Result<()> {
    if model.lora.is_some() {
        checkpoint::adapter::save_adapter_dir(out_dir, model, base_model)?;
        crate::data::save_tokenizer(out_dir, tokenizer)?;
        return Ok(());
    }
    checkpoint::save_model_dir(out_dir, &model.config, &model.params)?;
    crate::data::save_tokenizer(out_dir, tokenizer)?;
    Ok(())
}
