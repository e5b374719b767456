//! An SAE on disk, beside its model (`MODEL/features/layer-L/` by default):
//! - `sae.safetensors`: `b_pre` (C), `w_enc` (F, C), `b_enc` (F), `w_dec` (F, C), float32;
//! - `sae.json`: the [`SaeConfig`] (model fingerprint, layer, sizes, l1) and the training summary;
//! - `contexts.json`: each feature's top-activating contexts in the training text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::view::Context;
use super::{Sae, SaeConfig};
use crate::checkpoint::atomic_write;
use crate::checkpoint::hf_config::write_config_json;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;

pub const SAE_WEIGHTS_FILE: &str = "sae.safetensors";
pub const SAE_CONFIG_FILE: &str = "sae.json";
pub const SAE_CONTEXTS_FILE: &str = "contexts.json";

/// `MODEL_DIR/features/layer-L`.
pub fn default_sae_dir(model_dir: &Path, layer: usize) -> PathBuf {
    model_dir.join("features").join(format!("layer-{layer}"))
}

/// A 64-bit FNV-1a hash of the model's configuration and every parameter's bits, as 16 hex digits: an SAE
/// names the exact model it was trained on.
pub fn model_fingerprint(model: &Gpt) -> String {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let config = write_config_json(&model.config);
    let bytes = config.bytes().chain(model.params.iter().flat_map(|p| p.to_le_bytes()));
    for byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    }
    format!("{hash:016x}")
}

/// Everything saved about one SAE.
#[derive(Debug, Clone)]
pub struct SavedSae {
    pub sae: Sae,
    /// The training summary (reconstruction loss, L0, dead features, loss preserved, speed).
    pub summary: serde_json::Value,
    /// `contexts[i]`: feature i's top-activating contexts, strongest first.
    pub contexts: Vec<Vec<Context>>,
}

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    config: SaeConfig,
    #[serde(default)]
    summary: serde_json::Value,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

fn bad(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}

/// Writes the three files into `dir` (created if needed).
pub fn save_sae_dir(dir: &Path, saved: &SavedSae) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let sae = &saved.sae;
    let (c, f) = (sae.config.n_embd, sae.config.n_features);
    let r = sae.layout();
    let bytes =
        |range: std::ops::Range<usize>| -> Vec<u8> { sae.params[range].iter().flat_map(|v| v.to_le_bytes()).collect() };
    let tensors = [
        ("b_pre", bytes(r.b_pre), vec![c]),
        ("w_enc", bytes(r.w_enc), vec![f, c]),
        ("b_enc", bytes(r.b_enc), vec![f]),
        ("w_dec", bytes(r.w_dec), vec![f, c]),
    ];
    let path = dir.join(SAE_WEIGHTS_FILE);
    let views = tensors
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(|e| bad(&path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let encoded = safetensors::serialize(views, Some(metadata)).map_err(|e| bad(&path, e.to_string()))?;
    atomic_write(&path, &encoded).map_err(io_error(&path))?;

    let config = ConfigFile { config: sae.config.clone(), summary: saved.summary.clone() };
    let path = dir.join(SAE_CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&config).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    atomic_write(&path, format!("{text}\n").as_bytes()).map_err(io_error(&path))?;
    let path = dir.join(SAE_CONTEXTS_FILE);
    let text =
        serde_json::to_string(&saved.contexts).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    atomic_write(&path, format!("{text}\n").as_bytes()).map_err(io_error(&path))
}

/// Reads an SAE directory back, checking every tensor's name, dtype and shape against `sae.json`.
///
/// # Errors
/// A missing file, invalid JSON, a tensor missing or of the wrong shape, or contexts for another number of
/// features; each names the file.
pub fn load_sae_dir(dir: &Path) -> Result<SavedSae> {
    let path = dir.join(SAE_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let file: ConfigFile =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    let config = file.config;
    let (c, f) = (config.n_embd, config.n_features);
    // Validates the sizes (and that they fit in memory) before anything is allocated from them.
    config.validate().map_err(|e| bad(&path, e.to_string()))?;

    let path = dir.join(SAE_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, format!("not a safetensors file: {e}")))?;
    let mut params = Vec::with_capacity(Sae::ranges(c, f).w_dec.end);
    for (name, shape) in [("b_pre", vec![c]), ("w_enc", vec![f, c]), ("b_enc", vec![f]), ("w_dec", vec![f, c])] {
        let tensor = tensors.tensor(name).map_err(|_| bad(&path, format!("tensor `{name}` is missing")))?;
        if tensor.dtype() != Dtype::F32 || tensor.shape() != shape.as_slice() {
            return Err(bad(
                &path,
                format!(
                    "tensor `{name}` is {:?} {:?}; sae.json (n_embd {c}, n_features {f}) needs F32 {shape:?}",
                    tensor.dtype(),
                    tensor.shape()
                ),
            ));
        }
        params.extend(tensor.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    let sae = Sae::from_params(config, params).map_err(|e| bad(&path, e.to_string()))?;

    let path = dir.join(SAE_CONTEXTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let contexts: Vec<Vec<Context>> =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    if contexts.len() != f {
        return Err(bad(&path, format!("lists contexts for {} features; the SAE has {f}", contexts.len())));
    }
    Ok(SavedSae { sae, summary: file.summary, contexts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn saved() -> SavedSae {
        let config = SaeConfig { n_embd: 4, n_features: 8, layer: 1, model_hash: "abc".into(), l1: 0.5 };
        let sae = Sae::new(config, 2).unwrap();
        let context = Context { activation: 1.5, before: "ab".into(), token: "c".into(), after: "d".into() };
        SavedSae { sae, summary: serde_json::json!({"l0": 3.0}), contexts: vec![vec![context]; 8] }
    }

    #[test]
    fn an_sae_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved();
        save_sae_dir(dir.path(), &original).unwrap();
        let back = load_sae_dir(dir.path()).unwrap();
        assert_eq!(back.sae.params, original.sae.params);
        assert_eq!(back.sae.config, original.sae.config);
        assert_eq!(back.contexts, original.contexts);
        assert_eq!(back.summary["l0"], 3.0);

        std::fs::write(dir.path().join(SAE_WEIGHTS_FILE), b"garbage").unwrap();
        let err = load_sae_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SAE_WEIGHTS_FILE) && err.contains("not a safetensors file"), "{err}");
        std::fs::remove_file(dir.path().join(SAE_CONFIG_FILE)).unwrap();
        let err = load_sae_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SAE_CONFIG_FILE), "{err}");
    }

    #[test]
    fn fingerprints_tell_models_apart() {
        let a = Gpt::new(ModelConfig::new(20, 8, 1, 1, 8), 1).unwrap();
        let b = Gpt::new(ModelConfig::new(20, 8, 1, 1, 8), 2).unwrap();
        assert_eq!(model_fingerprint(&a), model_fingerprint(&a.clone()));
        assert_ne!(model_fingerprint(&a), model_fingerprint(&b));
        assert_eq!(model_fingerprint(&a).len(), 16);
    }
}
