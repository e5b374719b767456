//! Adapter checkpoints: a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`, what
//! `peft` loads) plus `lushan-adapter.json`, which records the base model directory and the head the adapter
//! was trained for — a classifier adapter carries its score head, so loading it onto a language-model base
//! first gives the base that head's labels, as `AutoModelForSequenceClassification.from_pretrained(base,
//! num_labels=…)` does before `PeftModel.from_pretrained`.

use super::atomic_write;
use crate::config::{Head, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::lora::Lora;
use crate::lora::peft::ADAPTER_CONFIG_FILE;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// lushan's note beside a PEFT adapter.
pub const ADAPTER_INFO_FILE: &str = "lushan-adapter.json";
const INFO_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterInfo {
    pub format_version: u32,
    /// The base model directory the adapter was trained on (as given to `--init-from`).
    pub base_model: String,
    /// The head the adapter's model had (a classifier adapter stores the trained score head).
    pub head: Head,
}

/// Whether `dir` holds a PEFT adapter (an `adapter_config.json` of any file type: one that is not a regular
/// file is then refused by name when read, instead of the directory being taken for something else).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).exists()
}

/// Writes `model`'s adapters into `dir` as a PEFT adapter plus [`ADAPTER_INFO_FILE`].
pub fn save_adapter_dir(dir: &Path, model: &Gpt, base_model: &str) -> Result<()> {
    let lora = model.lora.as_ref().ok_or_else(|| ModelError::InvalidLora {
        field: "adapter",
        reason: "the model has no LoRA adapters to save".into(),
    })?;
    lora.save_peft(dir, &model.config, base_model)?;
    let info =
        AdapterInfo { format_version: INFO_VERSION, base_model: base_model.into(), head: model.config.head.clone() };
    let path = dir.join(ADAPTER_INFO_FILE);
    let text = serde_json::to_string_pretty(&info).unwrap_or_default();
    atomic_write(&path, text.as_bytes()).map_err(|source| ModelError::Io { path, source })
}

/// Reads [`ADAPTER_INFO_FILE`] when present.
pub fn read_adapter_info(dir: &Path) -> Result<Option<AdapterInfo>> {
    let path = dir.join(ADAPTER_INFO_FILE);
    let text = match lushan_fs::read_to_string_regular(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    let info: AdapterInfo =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    if info.format_version != INFO_VERSION {
        return Err(ModelError::Checkpoint {
            path,
            message: format!("format_version {} is not supported (expected {INFO_VERSION})", info.format_version),
        });
    }
    Ok(Some(info))
}

/// The base directory an adapter names, for commands given only `--adapter DIR`.
pub fn adapter_base(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(read_adapter_info(dir)?.map(|info| PathBuf::from(info.base_model)))
}

/// Attaches the adapter in `dir` to `base` (giving a language-model base the classifier head the adapter was
/// trained with); merge it with [`Gpt::merge_lora`] for inference.
pub fn attach_adapter_dir(mut base: Gpt, dir: &Path) -> Result<Gpt> {
    if !is_adapter_dir(dir) {
        return Err(ModelError::Checkpoint {
            path: dir.join(ADAPTER_CONFIG_FILE),
            message: "missing: not a PEFT adapter directory (train one with `lushan train --lora-rank R`)".into(),
        });
    }
    if let Some(AdapterInfo { head: Head::Classifier { labels, pad_token_id }, .. }) = read_adapter_info(dir)?
        && base.config.num_labels() == 0
    {
        base = base.with_classifier_head(labels, pad_token_id, 0)?;
    }
    let lora = Lora::load_peft(dir, &base.config)?;
    base.lora = Some(lora);
    Ok(base)
}

/// The configuration a merged adapter gives (for messages).
pub fn describe(cfg: &ModelConfig) -> String {
    match &cfg.head {
        Head::LanguageModel => "language model".into(),
        Head::Classifier { labels, .. } => format!("classifier over {labels:?}"),
    }
}
