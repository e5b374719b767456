//! Model directories in Hugging Face GPT-2 form (DESIGN.md §6): `config.json` + `model.safetensors`,
//! loadable by `transformers.GPT2LMHeadModel.from_pretrained(dir)`, and Hugging Face GPT-2 directories
//! loadable by lushan. Tokenizer files and resume state live beside these but belong to other crates.

pub mod adapter;
mod header;
pub mod hf_config;
pub mod safetensors_io;
mod stream_load;
mod tensor_match;

pub use header::{MAX_HEADER_BYTES, MAX_HEADER_ENTRIES};
pub use hf_config::{parse_config_json, write_config_json};
pub use lushan_fs::{atomic_write, atomic_write_with, remove_stale_temp_files};
pub use safetensors_io::{load_safetensors, load_safetensors_as, save_safetensors};
pub use stream_load::Loaded;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::DType;
use std::io;
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Weight files Hugging Face may hold instead of `model.safetensors`. They are pickles, which can run
/// arbitrary code when loaded, so they are recognised only to explain why they are refused.
const PICKLE_FILES: [&str; 2] = ["pytorch_model.bin", "pytorch_model.bin.index.json"];

/// Index of a checkpoint split over several safetensors files; GPT-2 sizes fit one file.
const SHARDED_INDEX: &str = "model.safetensors.index.json";

/// Saves `params` (in `ParamLayout` order) and `cfg` into `dir`, creating it if needed.
///
/// Each file is replaced atomically. The weights are written first, so a directory whose `config.json`
/// exists was complete when that config was written.
pub fn save_model_dir(dir: &Path, cfg: &ModelConfig, params: &[f32]) -> Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    save_safetensors(&dir.join(WEIGHTS_FILE), cfg, params)?;
    let config_path = dir.join(CONFIG_FILE);
    atomic_write(&config_path, write_config_json(cfg).as_bytes())
        .map_err(|source| ModelError::Io { path: config_path, source })
}

/// Loads a model directory written by [`save_model_dir`] or by `transformers`' `save_pretrained`.
///
/// The weights are returned exactly as stored — including a sinusoidal position table, which is not
/// recomputed — so a save/load round trip is bit-identical.
pub fn load_model_dir(dir: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let (cfg, loaded) = load_model_dir_as(dir, DType::F32)?;
    Ok((cfg, loaded.params))
}

/// [`load_model_dir`] with the weight matrices converted to `dtype` as they are read (no `f32` copy held).
pub fn load_model_dir_as(dir: &Path, dtype: DType) -> Result<(ModelConfig, Loaded)> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(checkpoint_error(
                dir,
                format!("is not a directory (expected {CONFIG_FILE} and {WEIGHTS_FILE} inside)"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(checkpoint_error(dir, "model directory does not exist".into()));
        }
        Err(source) => {
            return Err(ModelError::Io { path: dir.to_path_buf(), source });
        }
    }

    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.exists() {
        return Err(missing_weights(dir));
    }

    let config_path = dir.join(CONFIG_FILE);
    let text = lushan_fs::read_to_string_regular(&config_path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            checkpoint_error(&config_path, "missing: a model directory needs its Hugging Face GPT-2 config.json".into())
        } else {
            ModelError::Io { path: config_path.clone(), source }
        }
    })?;
    let cfg = parse_config_json(&text, &config_path)?;
    let loaded = load_safetensors_as(&weights_path, &cfg, dtype)?;
    Ok((cfg, loaded))
}

/// Explains a missing `model.safetensors`, naming what is there instead when that is the reason.
fn missing_weights(dir: &Path) -> ModelError {
    if let Some(pickle) = PICKLE_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        return checkpoint_error(
            &pickle,
            format!(
                "safetensors required: {WEIGHTS_FILE} is missing and pickle files are never loaded (unpickling \
                 can run arbitrary code); re-save with transformers, e.g. \
                 `GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR)`, which writes {WEIGHTS_FILE}"
            ),
        );
    }
    let index = dir.join(SHARDED_INDEX);
    if index.exists() {
        return checkpoint_error(
            &index,
            format!("sharded checkpoints are not supported; save the model as a single {WEIGHTS_FILE}"),
        );
    }
    checkpoint_error(&dir.join(WEIGHTS_FILE), "missing: a model directory needs its weights file".into())
}

fn checkpoint_error(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}
