//! PEFT's `adapter_config.json` for LoRA on GPT-2: written with the keys and defaults `peft` 0.21 writes,
//! read strictly — every key that changes the adapter's math is checked, and PEFT options lushan does not
//! implement are refused by name rather than silently computing something else.

use super::{ALL_LINEAR, LoraConfig, LoraTarget};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The `peft` release whose `adapter_config.json` lushan writes (its keys and their defaults, checked against
/// that release's `save_pretrained`). PEFT only records this value.
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";

/// What PEFT adds to `modules_to_save` for `SEQ_CLS`: the usual names of a classification head.
const SEQ_CLS_MODULES_TO_SAVE: [&str; 2] = ["classifier", "score"];

/// `init_lora_weights` values that only choose starting values: an adapter read from a file is the same
/// whichever was used. The others (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, MiCA) rewrite the base weights or
/// change the layer when the adapter is created, so the file only fits a base lushan does not have.
const PLAIN_INITS: [&str; 3] = ["gaussian", "eva", "orthogonal"];

/// Keys whose presence (anything but null, false, or an empty list/object) means a LoRA variant or a
/// placement lushan does not implement, with what it is.
const REFUSED_WHEN_SET: [(&str, &str); 15] = [
    ("use_rslora", "rank-stabilised LoRA (scale alpha/√r instead of alpha/r)"),
    ("use_dora", "DoRA (weight-decomposed LoRA, with a magnitude vector)"),
    ("lora_bias", "a trained bias on lora_B"),
    ("use_qalora", "QA-LoRA (pooled inputs for quantised layers)"),
    ("use_bdlora", "block-diagonal LoRA"),
    ("rank_pattern", "different ranks per module"),
    ("alpha_pattern", "different alphas per module"),
    ("layers_to_transform", "adapting only some layers"),
    ("layer_replication", "replicated layers"),
    ("exclude_modules", "excluded modules"),
    ("target_parameters", "LoRA on raw parameters"),
    ("trainable_token_indices", "trainable token embeddings"),
    ("alora_invocation_tokens", "activated LoRA (applied only after invocation tokens)"),
    ("arrow_config", "Arrow routing between adapters"),
    ("kasa_config", "KaSA (a learned singular-value diagonal between A and B)"),
];

/// Variant configs refused the same way, kept apart to keep the table readable.
const REFUSED_CONFIGS: [(&str, &str); 2] =
    [("monteclora_config", "MonteCLoRA (Monte Carlo sampled adapters)"), ("velora_config", "VeLoRA")];

/// `task_type` for a model's head.
pub(crate) fn task_type(model: &ModelConfig) -> &'static str {
    if model.num_labels() > 0 { "SEQ_CLS" } else { "CAUSAL_LM" }
}

/// The shortest `target_modules` list that selects exactly `targets` under PEFT's suffix matching:
/// `c_proj` when both projections are adapted, `attn.c_proj` / `mlp.c_proj` when only one is.
pub fn peft_target_modules(targets: &[LoraTarget]) -> Vec<&'static str> {
    let has = |t| targets.contains(&t);
    let mut names = Vec::new();
    if has(LoraTarget::Qkv) {
        names.push("c_attn");
    }
    match (has(LoraTarget::AttnProj), has(LoraTarget::FcProj)) {
        (true, true) => names.push("c_proj"),
        (true, false) => names.push("attn.c_proj"),
        (false, true) => names.push("mlp.c_proj"),
        (false, false) => {}
    }
    if has(LoraTarget::Fc) {
        names.push("c_fc");
    }
    names
}

/// `adapter_config.json` as `peft` writes it for this adapter: every key of its `LoraConfig`, sorted,
/// two-space indented, no trailing newline. An empty `base_model_name_or_path` is written as null.
pub fn write_adapter_config(config: &LoraConfig, model: &ModelConfig, base_model_name_or_path: &str) -> String {
    let classifier = model.num_labels() > 0;
    let alpha = if config.alpha.fract() == 0.0 && config.alpha.abs() < 1e9 {
        json!(config.alpha as i64)
    } else {
        json_f32(config.alpha)
    };
    let entries: BTreeMap<&str, Value> = BTreeMap::from([
        ("alora_invocation_tokens", Value::Null),
        ("alpha_pattern", json!({})),
        ("arrow_config", Value::Null),
        ("auto_mapping", Value::Null),
        (
            "base_model_name_or_path",
            if base_model_name_or_path.is_empty() { Value::Null } else { json!(base_model_name_or_path) },
        ),
        ("bias", json!("none")),
        ("corda_config", Value::Null),
        ("ensure_weight_tying", json!(false)),
        ("eva_config", Value::Null),
        ("exclude_modules", Value::Null),
        ("fan_in_fan_out", json!(true)),
        ("inference_mode", json!(true)),
        ("init_lora_weights", json!(true)),
        ("kasa_config", Value::Null),
        ("layer_replication", Value::Null),
        ("layers_pattern", Value::Null),
        ("layers_to_transform", Value::Null),
        ("loftq_config", json!({})),
        ("lora_alpha", alpha),
        ("lora_bias", json!(false)),
        ("lora_dropout", json_f32(config.dropout)),
        ("lora_ga_config", Value::Null),
        ("megatron_config", Value::Null),
        ("megatron_core", json!("megatron.core")),
        ("modules_to_save", if classifier { json!(SEQ_CLS_MODULES_TO_SAVE) } else { Value::Null }),
        ("monteclora_config", Value::Null),
        ("peft_type", json!("LORA")),
        ("peft_version", json!(PEFT_FORMAT_VERSION)),
        ("qalora_group_size", json!(16)),
        ("r", json!(config.rank)),
        ("rank_pattern", json!({})),
        ("revision", Value::Null),
        ("target_modules", json!(peft_target_modules(&config.targets))),
        ("target_parameters", Value::Null),
        ("task_type", json!(task_type(model))),
        ("trainable_token_indices", Value::Null),
        ("use_bdlora", Value::Null),
        ("use_dora", json!(false)),
        ("use_qalora", json!(false)),
        ("use_rslora", json!(false)),
        ("velora_config", Value::Null),
    ]);
    // Inserted in sorted order, so the output is sorted whether or not serde_json preserves insertion order.
    let object: Map<String, Value> = entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let value = Value::Object(object);
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
}

/// An `f32` as the shortest decimal that reads back to the same `f32` (`0.05`, not `0.05000000074505806`).
fn json_f32(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

/// `target_modules` as written: PEFT's shorthand or a list of names matched by suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetModules {
    AllLinear,
    Names(Vec<String>),
}

/// What an `adapter_config.json` says about the adapter, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdapterSettings {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub target_modules: TargetModules,
}

/// A JSON object's fields, with errors naming the file and the key.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    /// The value of `key`, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn refuse(&self, field: &'static str, reason: String) -> ModelError {
        ModelError::AdapterConfig { path: self.path.to_path_buf(), field, reason }
    }

    fn string(&self, key: &'static str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.refuse(key, format!("is {other}; expected a string"))),
        }
    }

    fn number(&self, key: &'static str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(self.refuse(key, format!("is {other}; expected a number"))),
        }
    }

    fn strings(&self, key: &'static str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| self.refuse(key, format!("lists {v}; expected names")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(self.refuse(key, format!("is {other}; expected a list of names"))),
        }
    }
}

/// Whether a value asks for something: not null, false, 0-length or an empty string.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Parses and checks an `adapter_config.json` (`path` for messages) for a LoRA adapter on `model`. The
/// targets are only recorded here: [`check_target_modules`] compares them with the file's tensors.
pub(crate) fn parse_adapter_config(text: &str, path: &Path, model: &ModelConfig) -> Result<AdapterSettings> {
    let value: Value =
        serde_json::from_str(text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
    let Value::Object(obj) = value else {
        return Err(ModelError::AdapterConfig {
            path: path.to_path_buf(),
            field: "(top level)",
            reason: "must be a JSON object".into(),
        });
    };
    let f = Fields { obj: &obj, path };

    match f.string("peft_type")? {
        Some("LORA") => {}
        Some(other) => {
            return Err(f.refuse("peft_type", format!("is \"{other}\"; lushan loads LoRA adapters (\"LORA\")")));
        }
        None => return Err(f.refuse("peft_type", "is missing; a PEFT adapter config names its type (\"LORA\")".into())),
    }
    let want_task = task_type(model);
    match f.string("task_type")? {
        Some(task) if task == want_task => {}
        None if want_task == "CAUSAL_LM" => {}
        found => {
            let head = if model.num_labels() > 0 {
                "a classifier (GPT2ForSequenceClassification)"
            } else {
                "a language model (GPT2LMHeadModel)"
            };
            let found = found.map_or("missing".to_string(), |t| format!("\"{t}\""));
            return Err(
                f.refuse("task_type", format!("is {found}, but the base model is {head}: expected \"{want_task}\""))
            );
        }
    }

    let rank = match f.get("r") {
        Some(v) => v.as_u64().filter(|&r| r > 0).and_then(|r| usize::try_from(r).ok()),
        None => None,
    }
    .ok_or_else(|| f.refuse("r", format!("is {}; expected a positive integer (the LoRA rank)", show(f.get("r")))))?;
    if rank > model.n_embd {
        return Err(f.refuse("r", format!("is {rank}, above the base model's n_embd = {}", model.n_embd)));
    }
    let alpha = f.number("lora_alpha")?.unwrap_or(8.0); // PEFT's default
    if !(alpha.is_finite() && alpha > 0.0 && alpha <= f64::from(f32::MAX)) {
        return Err(f.refuse("lora_alpha", format!("is {alpha}; expected a number above 0")));
    }
    let dropout = f.number("lora_dropout")?.unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(f.refuse("lora_dropout", format!("is {dropout}; expected a number in [0, 1)")));
    }

    match f.get("fan_in_fan_out") {
        Some(Value::Bool(true)) => {}
        other => {
            return Err(f.refuse(
                "fan_in_fan_out",
                format!(
                    "is {}; GPT-2's c_attn, c_proj and c_fc are Conv1D layers storing (in, out), for which PEFT \
                     itself saves true: this adapter was written for another layer type",
                    show(other)
                ),
            ));
        }
    }
    match f.string("bias")? {
        None | Some("none") => {}
        Some(other) => {
            return Err(f.refuse(
                "bias",
                format!("is \"{other}\": trained base-model biases are not part of a LoRA adapter lushan loads (expected \"none\")"),
            ));
        }
    }
    for (key, what) in REFUSED_WHEN_SET.iter().chain(&REFUSED_CONFIGS) {
        if let Some(value) = f.get(key).filter(|v| is_set(v)) {
            return Err(f.refuse(key, format!("is {value}: lushan does not support {what}")));
        }
    }
    match f.get("init_lora_weights") {
        None | Some(Value::Bool(_)) => {}
        Some(Value::String(init)) if PLAIN_INITS.contains(&init.as_str()) => {}
        Some(other) => {
            return Err(f.refuse(
                "init_lora_weights",
                format!(
                    "is {other}: that initialisation rewrites the base weights (or the layer) when the adapter is \
                     created, so the adapter only fits that modified base; lushan applies adapters to the unmodified \
                     base (accepted: true, false, \"gaussian\", \"eva\", \"orthogonal\")"
                ),
            ));
        }
    }
    check_modules_to_save(&f, model)?;

    let target_modules = match f.get("target_modules") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case(ALL_LINEAR) => TargetModules::AllLinear,
        Some(Value::String(s)) => {
            return Err(f.refuse(
                "target_modules",
                format!("is the regular expression \"{s}\"; lushan checks adapters against a list of module names"),
            ));
        }
        Some(_) => TargetModules::Names(f.strings("target_modules")?.unwrap_or_default()),
        None => return Err(f.refuse("target_modules", "is missing; a LoRA adapter names the modules it adapts".into())),
    };
    Ok(AdapterSettings { rank, alpha: alpha as f32, dropout: dropout as f32, target_modules })
}

fn show(value: Option<&Value>) -> String {
    value.map_or("missing".into(), Value::to_string)
}

/// The module names of a `transformers` GPT-2 with this head (what `named_modules()` lists, root
/// excluded), each with the LoRA target it is, if lushan can adapt it.
fn gpt2_modules(model: &ModelConfig) -> Vec<(String, Option<(LoraTarget, usize)>)> {
    let mut out: Vec<(String, Option<(LoraTarget, usize)>)> =
        ["transformer", "transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h"]
            .into_iter()
            .map(|n| (n.to_string(), None))
            .collect();
    for l in 0..model.n_layer {
        let block = format!("transformer.h.{l}");
        out.push((block.clone(), None));
        for m in ["ln_1", "attn", "attn.attn_dropout", "attn.resid_dropout", "ln_2", "mlp", "mlp.act", "mlp.dropout"] {
            out.push((format!("{block}.{m}"), None));
        }
        for t in LoraTarget::ALL {
            out.push((format!("{block}.{}", t.peft_module()), Some((t, l))));
        }
    }
    out.push(("transformer.ln_f".into(), None));
    out.push((if model.num_labels() > 0 { "score" } else { "lm_head" }.into(), None));
    out
}

/// `modules_to_save` keeps full trainable copies of the modules whose names end with an entry (PEFT's
/// plain suffix test). lushan's adapters carry only the classifier's score head that way.
fn check_modules_to_save(f: &Fields<'_>, model: &ModelConfig) -> Result<()> {
    let Some(entries) = f.strings("modules_to_save")? else { return Ok(()) };
    let modules = gpt2_modules(model);
    for entry in &entries {
        if let Some((name, _)) = modules.iter().find(|(name, _)| name.ends_with(entry.as_str()) && name != "score") {
            return Err(f.refuse(
                "modules_to_save",
                format!(
                    "lists `{entry}`, which selects `{name}`: lushan's adapters train only LoRA factors{}, so a full \
                     trained copy of `{name}` cannot be loaded",
                    if model.num_labels() > 0 { " and the classifier's score head" } else { "" }
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that `target_modules` selects, under PEFT's rules for this model, exactly the modules the file
/// has LoRA tensors for (`found`), in every layer.
pub(crate) fn check_target_modules(
    path: &Path,
    target_modules: &TargetModules,
    found: &[LoraTarget],
    model: &ModelConfig,
) -> Result<()> {
    let refuse =
        |reason: String| ModelError::AdapterConfig { path: path.to_path_buf(), field: "target_modules", reason };
    let mut selected: BTreeMap<LoraTarget, BTreeSet<usize>> = BTreeMap::new();
    match target_modules {
        TargetModules::AllLinear => {
            for t in LoraTarget::ALL {
                selected.insert(t, (0..model.n_layer).collect());
            }
        }
        TargetModules::Names(entries) => {
            let modules = gpt2_modules(model);
            for entry in entries {
                let suffix = format!(".{entry}");
                let matched: Vec<_> =
                    modules.iter().filter(|(name, _)| name == entry || name.ends_with(&suffix)).collect();
                if matched.is_empty() {
                    return Err(refuse(format!(
                        "lists `{entry}`, which matches no module of this GPT-2 (n_layer = {}); lushan adapts \
                         attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj",
                        model.n_layer
                    )));
                }
                for (name, target) in matched {
                    let Some((t, layer)) = target else {
                        return Err(refuse(format!(
                            "lists `{entry}`, which selects `{name}`: lushan adapts only attn.c_attn, attn.c_proj, \
                             mlp.c_fc and mlp.c_proj"
                        )));
                    };
                    selected.entry(*t).or_default().insert(*layer);
                }
            }
        }
    }
    for t in found {
        if !selected.contains_key(t) {
            return Err(refuse(format!(
                "does not select {t}, but the weights file holds LoRA tensors for it (the config and the weights \
                 disagree)"
            )));
        }
    }
    for (t, layers) in &selected {
        if !found.contains(t) {
            return Err(refuse(format!(
                "selects {t}, but the weights file holds no LoRA tensors for it (the config and the weights disagree)"
            )));
        }
        if layers.len() != model.n_layer {
            return Err(refuse(format!(
                "selects {t} only in layers {:?}; lushan adapts a module in all {} layers",
                layers.iter().collect::<Vec<_>>(),
                model.n_layer
            )));
        }
    }
    Ok(())
}
