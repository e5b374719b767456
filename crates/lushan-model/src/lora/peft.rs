//! PEFT adapter directories (DESIGN.md §12: PEFT's names and shapes are the file format).
//!
//! [`Lora::save_peft`] writes what `peft`'s `save_pretrained` writes for a LoRA on GPT-2:
//! `adapter_config.json` and `adapter_model.safetensors` with names
//! `base_model.model.transformer.h.{l}.{attn.c_attn|attn.c_proj|mlp.c_fc|mlp.c_proj}.lora_{A|B}.weight`
//! (`A` `[r, in]`, `B` `[out, r]`, F32, metadata `{"format": "pt"}`) and, for a `SEQ_CLS` adapter, the
//! trained score head as `base_model.model.score.weight` (PEFT saves a `modules_to_save` copy under the
//! module's own name). Every file is replaced atomically; the config is written last, so a directory whose
//! config exists was complete when it was written.
//!
//! [`Lora::load_peft`] is strict, because PEFT's own failure mode is a wrong key silently ignored: the
//! tensors in the file decide the targets and must agree with `target_modules`; every tensor is consumed;
//! unknown names, LoRA tensors on modules lushan does not adapt, missing factors or layers, wrong ranks and
//! adapters made for another base shape are refused by name, as are config options that change the math
//! (rsLoRA, DoRA, biases, per-module ranks…). The safetensors header is validated (by the checkpoint
//! loader's own checks) and every shape checked before anything is allocated.

use super::peft_config::{self, AdapterSettings};
use super::{Lora, LoraConfig, LoraSlot, LoraTarget};
use crate::checkpoint::atomic_write;
use crate::checkpoint::safetensors_io::{check_finite, decode_into, describe, map_checked};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::Path;

pub use super::peft_config::{PEFT_FORMAT_VERSION, peft_target_modules, write_adapter_config};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix before the base model's own names (`PeftModel.base_model` → `LoraModel.model`).
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The pickle PEFT writes with `safe_serialization=False`; recognised only to explain why it is refused.
const PICKLE_WEIGHTS: &str = "adapter_model.bin";

impl Lora {
    /// Writes this adapter into `dir` (created if needed) as `peft` ≥ 0.13 `save_pretrained` would, for a
    /// base model `model` (its head picks `task_type`). `base_model_name_or_path` is recorded in the config
    /// (PEFT's `AutoPeftModel` loads the base from it); an empty string is written as null.
    pub fn save_peft(&self, dir: &Path, model: &ModelConfig, base_model_name_or_path: &str) -> Result<()> {
        let expected = super::LoraLayout::new(&self.config, model)?;
        if expected != self.layout || self.params.len() != self.layout.total() {
            return Err(ModelError::InvalidLora {
                field: "base model",
                reason: format!(
                    "the adapter does not fit a model with n_layer={}, n_embd={}, {} labels",
                    model.n_layer,
                    model.n_embd,
                    model.num_labels()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let tensors: Vec<(String, F32Tensor<'_>)> = self
            .layout
            .entries()
            .into_iter()
            .map(|e| (e.slot.peft_name(), F32Tensor { data: &self.params[e.range], shape: e.shape.to_vec() }))
            .collect();
        // `transformers`/`peft` refuse safetensors files whose metadata lacks format "pt".
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| ModelError::Checkpoint {
            path: weights_path.clone(),
            message: format!("cannot serialize safetensors: {e}"),
        })?;
        atomic_write(&weights_path, &bytes).map_err(|source| ModelError::Io { path: weights_path, source })?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = write_adapter_config(&self.config, model, base_model_name_or_path);
        atomic_write(&config_path, text.as_bytes()).map_err(|source| ModelError::Io { path: config_path, source })
    }

    /// Reads a PEFT LoRA adapter directory for the base model `model` (see the module docs for what is
    /// refused). `adapter_model.safetensors` may hold F32, F16 or BF16.
    pub fn load_peft(dir: &Path, model: &ModelConfig) -> Result<Lora> {
        model.validate()?;
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(checkpoint_error(
                    dir,
                    format!("is not a directory (expected {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE} inside)"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(checkpoint_error(dir, "adapter directory does not exist".into()));
            }
            Err(source) => return Err(ModelError::Io { path: dir.to_path_buf(), source }),
        }
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights_path.exists() {
            let pickle = dir.join(PICKLE_WEIGHTS);
            return Err(if pickle.exists() {
                checkpoint_error(
                    &pickle,
                    format!(
                        "safetensors required: {ADAPTER_WEIGHTS_FILE} is missing and pickle files are never loaded \
                         (unpickling can run arbitrary code); re-save with peft's save_pretrained (safetensors is \
                         its default)"
                    ),
                )
            } else {
                checkpoint_error(&weights_path, "missing: a PEFT adapter directory needs its weights file".into())
            });
        }
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = lushan_fs::read_to_string_regular(&config_path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                checkpoint_error(&config_path, "missing: a PEFT adapter directory needs its adapter_config.json".into())
            } else {
                ModelError::Io { path: config_path.clone(), source }
            }
        })?;
        let settings = peft_config::parse_adapter_config(&text, &config_path, model)?;
        read_weights(&weights_path, &config_path, &settings, model)
    }
}

/// Reads and checks the tensors, then builds the adapter.
fn read_weights(path: &Path, config_path: &Path, settings: &AdapterSettings, model: &ModelConfig) -> Result<Lora> {
    let map = map_checked(path)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| checkpoint_error(path, describe(&e)))?;
    let found = match_tensors(&st, path, settings.rank, model)?;

    let targets: Vec<LoraTarget> = LoraTarget::ALL
        .into_iter()
        .filter(|t| found.keys().any(|s| matches!(s, LoraSlot::A(x, _) if x == t)))
        .collect();
    peft_config::check_target_modules(config_path, &settings.target_modules, &targets, model)?;

    // Every shape now matches the config and the data lies in the file, so this allocation is the size of
    // the adapter the config describes (rank ≤ n_embd), at most twice the file's data (F16 → F32).
    let config = LoraConfig { rank: settings.rank, alpha: settings.alpha, dropout: settings.dropout, targets };
    let total = super::LoraLayout::new(&config, model)?.total();
    let mut lora = Lora::from_params(config, model, vec![0.0; total])?;
    for entry in lora.layout.entries() {
        if let Some(view) = found.get(&entry.slot) {
            let values = &mut lora.params[entry.range];
            decode_into(view, values);
            check_finite(path, &entry.slot.peft_name(), values)?;
        }
    }
    Ok(lora)
}

/// Matches every tensor of the file to a slot. Returns the first base-shape mismatch if there is one
/// (it explains everything else), otherwise all other problems together.
fn match_tensors<'data>(
    st: &SafeTensors<'data>,
    path: &Path,
    rank: usize,
    model: &ModelConfig,
) -> Result<BTreeMap<LoraSlot, TensorView<'data>>> {
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let base_shape = |field, expected, found, tensor: &str| ModelError::AdapterBaseShape {
        path: path.to_path_buf(),
        field,
        expected,
        found,
        tensor: tensor.to_string(),
    };
    let mut problems = Vec::new();
    let mut wrong_base = None;
    let mut beyond_last_layer: Option<(usize, String)> = None;
    let mut found = BTreeMap::new();
    // Slots the file names (valid or not), so a mis-shaped tensor is not also reported missing.
    let mut present = BTreeSet::new();
    for (name, view) in tensors {
        let slot = match parse_name(&name, model) {
            Ok(slot) => slot,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        if let LoraSlot::A(_, layer) | LoraSlot::B(_, layer) = slot
            && layer >= model.n_layer
        {
            if beyond_last_layer.as_ref().is_none_or(|(max, _)| layer > *max) {
                beyond_last_layer = Some((layer, name));
            }
            continue;
        }
        present.insert(slot);
        let shape = view.shape();
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            problems.push(format!("`{name}` has dtype {:?}; only F32, F16 and BF16 are supported", view.dtype()));
            continue;
        }
        let [rows, cols] = *shape else {
            problems.push(format!("`{name}` has shape {shape:?}; expected a 2-D tensor"));
            continue;
        };
        let c = model.n_embd;
        let (want, base) = match slot {
            LoraSlot::A(t, _) => {
                let (in_dim, _) = t.dims(model);
                let mult = in_dim / c;
                ([rank, in_dim], (cols != in_dim && cols % mult == 0).then(|| ("n_embd", c, cols / mult)))
            }
            LoraSlot::B(t, _) => {
                let (_, out_dim) = t.dims(model);
                let mult = out_dim / c;
                ([out_dim, rank], (rows != out_dim && rows % mult == 0).then(|| ("n_embd", c, rows / mult)))
            }
            LoraSlot::Score => {
                let labels = model.num_labels();
                let base = if cols != c {
                    Some(("n_embd", c, cols))
                } else {
                    (rows != labels).then_some(("num_labels", labels, rows))
                };
                ([labels, c], base)
            }
        };
        if let Some((field, expected, found_dim)) = base {
            wrong_base.get_or_insert_with(|| base_shape(field, expected, found_dim, &name));
        } else if [rows, cols] != want {
            let r_found = if matches!(slot, LoraSlot::A(..)) { rows } else { cols };
            let why = if !matches!(slot, LoraSlot::Score) && r_found != rank {
                format!(
                    " (rank {r_found}, but adapter_config.json says r = {rank}; per-module ranks are not supported)"
                )
            } else {
                String::new()
            };
            problems.push(format!("`{name}` has shape {:?}, expected {want:?}{why}", [rows, cols]));
        } else {
            found.insert(slot, view);
        }
    }
    if let Some((layer, name)) = beyond_last_layer {
        return Err(base_shape("n_layer", model.n_layer, layer + 1, &name));
    }
    if let Some(e) = wrong_base {
        return Err(e);
    }
    problems.extend(missing(&present, path, rank, model)?);
    if problems.is_empty() { Ok(found) } else { Err(ModelError::AdapterTensors { path: path.to_path_buf(), problems }) }
}

/// The missing tensors: every adapted target needs `A` and `B` in every layer, and a classifier its score
/// head. An adapter whose targets all stop at the same layer `k < n_layer` was made for a `k`-layer base.
fn missing(present: &BTreeSet<LoraSlot>, path: &Path, rank: usize, model: &ModelConfig) -> Result<Vec<String>> {
    let mut layers: BTreeMap<LoraTarget, [BTreeSet<usize>; 2]> = BTreeMap::new();
    for slot in present {
        match *slot {
            LoraSlot::A(t, l) => layers.entry(t).or_default()[0].insert(l),
            LoraSlot::B(t, l) => layers.entry(t).or_default()[1].insert(l),
            LoraSlot::Score => false,
        };
    }
    let mut problems = Vec::new();
    if layers.is_empty() {
        problems.push("the file holds no LoRA tensors (`…lora_A.weight` / `…lora_B.weight`)".to_string());
    }
    let all_layers: BTreeSet<usize> = layers.values().flat_map(|[a, b]| a.union(b).copied()).collect();
    let uniform = layers.values().all(|[a, b]| a == &all_layers && b == &all_layers);
    let k = all_layers.len();
    if uniform && k > 0 && k < model.n_layer && all_layers.iter().copied().eq(0..k) {
        let t = layers.keys().next().copied().unwrap_or(LoraTarget::Qkv);
        return Err(ModelError::AdapterBaseShape {
            path: path.to_path_buf(),
            field: "n_layer",
            expected: model.n_layer,
            found: k,
            tensor: LoraSlot::A(t, k - 1).peft_name(),
        });
    }
    for (&t, [a, b]) in &layers {
        let (in_dim, out_dim) = t.dims(model);
        for l in 0..model.n_layer {
            if !a.contains(&l) {
                problems.push(format!(
                    "missing tensor `{}` (shape {:?})",
                    LoraSlot::A(t, l).peft_name(),
                    [rank, in_dim]
                ));
            }
            if !b.contains(&l) {
                problems.push(format!(
                    "missing tensor `{}` (shape {:?})",
                    LoraSlot::B(t, l).peft_name(),
                    [out_dim, rank]
                ));
            }
        }
    }
    if model.num_labels() > 0 && !present.contains(&LoraSlot::Score) {
        problems.push(format!(
            "missing tensor `{}` (shape {:?}): a SEQ_CLS adapter stores its trained score head (modules_to_save)",
            LoraSlot::Score.peft_name(),
            [model.num_labels(), model.n_embd]
        ));
    }
    Ok(problems)
}

/// The slot a PEFT tensor name stands for, or why it cannot be loaded.
fn parse_name(name: &str, model: &ModelConfig) -> std::result::Result<LoraSlot, String> {
    let classifier = model.num_labels() > 0;
    let Some(rest) = name.strip_prefix(PEFT_PREFIX) else {
        return Err(format!("unexpected tensor `{name}`: PEFT adapter tensors are named `{PEFT_PREFIX}…`"));
    };
    if rest == "score.weight" {
        return if classifier {
            Ok(LoraSlot::Score)
        } else {
            Err(format!(
                "unexpected tensor `{name}`: a classifier's score head, but the base model is a language model"
            ))
        };
    }
    let Some((module, tail)) = rest.split_once(".lora_") else {
        let holds = if classifier { "LoRA factors and the score head" } else { "LoRA factors" };
        return Err(format!("unexpected tensor `{name}`: lushan's adapters hold only {holds}"));
    };
    let factor = match tail {
        "A.weight" => LoraSlot::A as fn(LoraTarget, usize) -> LoraSlot,
        "B.weight" => LoraSlot::B,
        t if t.starts_with("magnitude_vector") => {
            return Err(format!("unexpected tensor `{name}`: a DoRA magnitude (use_dora is not supported)"));
        }
        t if t.starts_with("B.bias") => {
            return Err(format!("unexpected tensor `{name}`: a lora_B bias (lora_bias is not supported)"));
        }
        t if t.starts_with("embedding_") => {
            return Err(format!("unexpected tensor `{name}`: LoRA on an embedding (not supported)"));
        }
        t if t.starts_with("A.") || t.starts_with("B.") => {
            return Err(format!(
                "unexpected tensor `{name}`: PEFT files store `lora_A.weight` / `lora_B.weight` (a name with the \
                 adapter's name in it, like `lora_A.default.weight`, is PEFT's in-memory name, which PEFT would \
                 silently ignore when loading)"
            ));
        }
        _ => return Err(format!("unexpected tensor `{name}`: not a LoRA `lora_A.weight` / `lora_B.weight`")),
    };
    let not_adapted = || {
        format!(
            "LoRA tensor `{name}` on `{module}`, a module lushan does not adapt (it adapts attn.c_attn, attn.c_proj, \
             mlp.c_fc and mlp.c_proj in every layer)"
        )
    };
    let (layer, inner) =
        module.strip_prefix("transformer.h.").and_then(|r| r.split_once('.')).ok_or_else(not_adapted)?;
    let layer = parse_layer(layer).ok_or_else(not_adapted)?;
    let target = LoraTarget::ALL.into_iter().find(|t| t.peft_module() == inner).ok_or_else(not_adapted)?;
    Ok(factor(target, layer))
}

/// A layer index as PEFT writes it: decimal digits, no sign or leading zero.
fn parse_layer(s: &str) -> Option<usize> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// One F32 tensor as it will be stored; bytes are produced lazily.
struct F32Tensor<'a> {
    data: &'a [f32],
    shape: Vec<usize>,
}

impl View for F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        size_of_val(self.data)
    }
}

fn checkpoint_error(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}
