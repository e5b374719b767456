//! The Hugging Face GPT-2 `config.json` mirror (DESIGN.md §6).
//!
//! Writing produces what `GPT2Config.save_pretrained` would, so `transformers` loads our directories
//! as-is; lushan's own extras live under a `"lushan"` key that `transformers` keeps but ignores. Reading
//! accepts real Hugging Face files: unknown keys (tokenizer ids, summary heads, `transformers_version`…)
//! are ignored, but every key that changes the network's math is checked, and options lushan does not
//! implement are refused by name — loading them silently would give a model that computes something else.

use crate::config::{Head, ModelConfig, PositionEncoding};
use crate::error::{ModelError, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::path::Path;

/// Version of the `"lushan"` section; bumped when its meaning changes so old builds refuse new files.
pub const FORMAT_VERSION: u32 = 1;

/// Hugging Face's dropout default, used when a file omits a `*_pdrop` key (as `GPT2Config` would).
const HF_DEFAULT_PDROP: f32 = 0.1;

/// `architectures` entry of a sequence classifier (score head at the last non-padding token).
pub const CLASSIFIER_ARCHITECTURE: &str = "GPT2ForSequenceClassification";

/// Activation names whose math equals our tanh-approximated GELU kernel.
const TANH_GELU_NAMES: [&str; 2] = ["gelu_new", "gelu_pytorch_tanh"];

/// Renders `cfg` as a Hugging Face GPT-2 `config.json` (pretty-printed, keys sorted like `transformers`).
pub fn write_config_json(cfg: &ModelConfig) -> String {
    let position_encoding = match cfg.position_encoding {
        PositionEncoding::Learned => "learned",
        PositionEncoding::Sinusoidal => "sinusoidal",
    };
    // GPT-2 uses its last id (50256) as both BOS and EOS; for other vocabularies the last id is the
    // natural equivalent and keeps the ids in range, which `transformers` checks.
    let last_id = cfg.vocab_size.saturating_sub(1);
    let dropout = json_f32(cfg.dropout);
    let mut value = json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "layer_norm_epsilon": json_f32(cfg.layer_norm_epsilon),
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": last_id,
        "eos_token_id": last_id,
        "dtype": "float32",
        "lushan": {
            "position_encoding": position_encoding,
            "format_version": FORMAT_VERSION,
        },
    });
    if let (Head::Classifier { labels, pad_token_id }, Value::Object(obj)) = (&cfg.head, &mut value) {
        // What `GPT2ForSequenceClassification.save_pretrained` writes for a single-label classifier.
        let id2label: Map<String, Value> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), Value::String(l.clone()))).collect();
        let label2id: Map<String, Value> = labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        obj.insert("architectures".into(), json!([CLASSIFIER_ARCHITECTURE]));
        obj.insert("id2label".into(), Value::Object(id2label));
        obj.insert("label2id".into(), Value::Object(label2id));
        obj.insert("pad_token_id".into(), json!(pad_token_id));
        obj.insert("problem_type".into(), json!("single_label_classification"));
    }
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// An `f32` as the shortest decimal that reads back to the same `f32` (`0.1`, not `0.10000000149011612`),
/// so the file stays readable and the round trip stays exact.
fn json_f32(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

/// Parses a Hugging Face GPT-2 `config.json` (`path` is only used in error messages) and validates it.
pub fn parse_config_json(text: &str, path: &Path) -> Result<ModelConfig> {
    let value: Value =
        serde_json::from_str(text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
    let Value::Object(top) = value else {
        return Err(field_error(path, "(top level)", "must be a JSON object".into()));
    };
    let f = Fields { obj: &top, path };

    if let Some(model_type) = f.get::<String>("model_type")?
        && model_type != "gpt2"
    {
        return Err(f.refuse("model_type", format!("is \"{model_type}\"; lushan loads only \"gpt2\" models")));
    }
    let n_embd: usize = f.require("n_embd")?;
    let mut cfg = ModelConfig::new(
        f.require("vocab_size")?,
        f.require("n_positions")?,
        f.require("n_layer")?,
        f.require("n_head")?,
        n_embd,
    );

    match f.get::<String>("activation_function")?.as_deref() {
        None => {} // Hugging Face's default is gelu_new.
        Some(name) if TANH_GELU_NAMES.contains(&name) => {}
        Some("gelu") => {
            return Err(f.refuse(
                "activation_function",
                "is \"gelu\" (the exact erf form); lushan's kernel is the tanh approximation \
                 (\"gelu_new\" / \"gelu_pytorch_tanh\"), which would compute different outputs"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(f.refuse(
                "activation_function",
                format!("is \"{other}\"; lushan implements only \"gelu_new\" / \"gelu_pytorch_tanh\""),
            ));
        }
    }
    if let Some(n_inner) = f.get::<usize>("n_inner")?
        && Some(n_inner) != n_embd.checked_mul(4)
    {
        return Err(f.refuse(
            "n_inner",
            format!("is {n_inner}; lushan's MLP width is fixed at 4·n_embd = {}", n_embd.saturating_mul(4)),
        ));
    }
    f.refuse_flag("scale_attn_by_inverse_layer_idx", true, "scaling attention by 1/layer index")?;
    f.refuse_flag("reorder_and_upcast_attn", true, "the reordered, upcast attention variant")?;
    f.refuse_flag("add_cross_attention", true, "cross-attention (encoder-decoder use)")?;
    f.refuse_flag("scale_attn_weights", false, "attention without the 1/√head_size scaling")?;
    f.refuse_flag("tie_word_embeddings", false, "an output layer separate from the token embedding")?;

    cfg.dropout = single_dropout(&f)?;
    if let Some(eps) = f.get::<f32>("layer_norm_epsilon")? {
        cfg.layer_norm_epsilon = eps;
    }
    if let Some(lushan) = f.get::<Map<String, Value>>("lushan")? {
        let l = Fields { obj: &lushan, path };
        let version = l.get::<u32>("format_version")?.unwrap_or(FORMAT_VERSION);
        if version != FORMAT_VERSION {
            return Err(field_error(
                path,
                "lushan.format_version",
                format!("is {version}; this build of lushan reads format version {FORMAT_VERSION}"),
            ));
        }
        if let Some(pe) = l.get_named::<PositionEncoding>("position_encoding", "lushan.position_encoding")? {
            cfg.position_encoding = pe;
        }
    }

    cfg.head = parse_head(&f)?;
    check_size(&cfg).map_err(|reason| field_error(path, "n_layer", reason))?;
    cfg.validate().map_err(|e| match e {
        ModelError::InvalidConfig { field, reason } => field_error(path, hf_field_name(field), reason),
        other => other,
    })?;
    Ok(cfg)
}

/// The head `architectures` names: a classifier reads its labels from `id2label` (keys `0..n`), needs
/// `pad_token_id` (pooling reads the last token that is not padding) and must be single-label.
fn parse_head(f: &Fields<'_>) -> Result<Head> {
    let architectures: Vec<String> = f.get("architectures")?.unwrap_or_default();
    if !architectures.iter().any(|a| a == CLASSIFIER_ARCHITECTURE) {
        if let Some(other) = architectures.iter().find(|a| a.as_str() != "GPT2LMHeadModel" && a.as_str() != "GPT2Model")
        {
            return Err(f.refuse(
                "architectures",
                format!("is [\"{other}\"]; lushan loads GPT2LMHeadModel and {CLASSIFIER_ARCHITECTURE}"),
            ));
        }
        return Ok(Head::LanguageModel);
    }
    let id2label: Map<String, Value> =
        f.get("id2label")?.ok_or_else(|| f.refuse("id2label", "is missing; a classifier needs its labels".into()))?;
    let mut labels = vec![None; id2label.len()];
    for (key, value) in &id2label {
        let index = key.parse::<usize>().ok().filter(|&i| i < labels.len()).ok_or_else(|| {
            f.refuse("id2label", format!("has key \"{key}\"; expected the ids 0..{}", id2label.len()))
        })?;
        let Value::String(name) = value else {
            return Err(f.refuse("id2label", format!("maps {key} to {value}; expected a label name (string)")));
        };
        labels[index] = Some(name.clone());
    }
    let labels: Vec<String> = labels.into_iter().flatten().collect();
    if let Some(n) = f.get::<usize>("num_labels")?
        && n != labels.len()
    {
        return Err(f.refuse("num_labels", format!("is {n} but id2label names {} labels", labels.len())));
    }
    if let Some(kind) = f.get::<String>("problem_type")?
        && kind != "single_label_classification"
    {
        return Err(f.refuse(
            "problem_type",
            format!("is \"{kind}\"; lushan trains single-label classifiers (softmax + cross-entropy)"),
        ));
    }
    let pad_token_id = f.get::<u32>("pad_token_id")?.ok_or_else(|| {
        f.refuse("pad_token_id", "is missing; a classifier pools at the last token that is not padding".into())
    })?;
    Ok(Head::Classifier { labels, pad_token_id })
}

/// lushan has one dropout rate; Hugging Face has three. Equal rates map exactly; differing ones would be
/// silently changed by any choice we made, so they are refused.
fn single_dropout(f: &Fields<'_>) -> Result<f32> {
    let resid = f.get::<f32>("resid_pdrop")?.unwrap_or(HF_DEFAULT_PDROP);
    for name in ["embd_pdrop", "attn_pdrop"] {
        let rate = f.get::<f32>(name)?.unwrap_or(HF_DEFAULT_PDROP);
        if rate != resid {
            return Err(f.refuse(
                name,
                format!("is {rate} but resid_pdrop is {resid}; lushan uses one dropout rate for all three"),
            ));
        }
    }
    Ok(resid)
}

/// Refuses configurations whose parameter count overflows, before anything computes a layout from them
/// (a hostile `config.json` must not turn into a giant allocation or an arithmetic overflow).
pub(crate) fn check_size(cfg: &ModelConfig) -> std::result::Result<(), String> {
    let (v, t, l, c) = (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd);
    // Per layer: 12·C² + 13·C (attention, MLP, two layer norms); plus (V + T)·C embeddings and 2·C for ln_f.
    let total = (|| {
        let per_layer = c.checked_mul(c)?.checked_mul(12)?.checked_add(c.checked_mul(13)?)?;
        let embeddings = v.checked_add(t)?.checked_mul(c)?;
        per_layer.checked_mul(l)?.checked_add(embeddings)?.checked_add(c.checked_mul(2)?)
    })();
    match total {
        Some(n) if n <= isize::MAX as usize / size_of::<f32>() => Ok(()),
        _ => Err(format!(
            "describes a model too large to address (n_layer {l}, n_embd {c}, vocab_size {v}, n_positions {t})"
        )),
    }
}

/// `ModelConfig` field names as the user sees them in `config.json`.
fn hf_field_name(field: &'static str) -> &'static str {
    match field {
        "block_size" => "n_positions",
        "dropout" => "resid_pdrop",
        other => other,
    }
}

fn field_error(path: &Path, field: &'static str, reason: String) -> ModelError {
    ModelError::ConfigField { path: path.to_path_buf(), field, reason }
}

/// Typed, field-named access to one JSON object: serde's own messages say "expected usize" but not
/// which key was wrong.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    /// The value of `key`, or `None` when it is absent or `null` (Hugging Face writes `null` for unset).
    fn get<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>> {
        self.get_named(key, key)
    }

    fn get_named<T: DeserializeOwned>(&self, key: &str, shown: &'static str) -> Result<Option<T>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| field_error(self.path, shown, format!("has the wrong type or value ({v}): {e}"))),
        }
    }

    fn require<T: DeserializeOwned>(&self, key: &'static str) -> Result<T> {
        self.get(key)?.ok_or_else(|| field_error(self.path, key, "is missing".into()))
    }

    fn refuse(&self, key: &'static str, reason: String) -> ModelError {
        field_error(self.path, key, reason)
    }

    /// Errors when boolean `key` is present and equal to `unsupported`.
    fn refuse_flag(&self, key: &'static str, unsupported: bool, what: &str) -> Result<()> {
        if self.get::<bool>(key)? == Some(unsupported) {
            return Err(self.refuse(key, format!("is {unsupported}; lushan does not implement {what}")));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        parse_config_json(text, Path::new("x/config.json"))
    }

    fn with(key: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(&write_config_json(&ModelConfig::new(11, 5, 2, 2, 8))).unwrap();
        v.as_object_mut().unwrap().insert(key.into(), value);
        v.to_string()
    }

    #[test]
    fn floats_are_written_shortest() {
        let mut cfg = ModelConfig::new(11, 5, 2, 2, 8);
        cfg.dropout = 0.1;
        let text = write_config_json(&cfg);
        assert!(text.contains("\"resid_pdrop\": 0.1,"), "{text}");
        assert!(text.contains("\"layer_norm_epsilon\": 0.00001,"), "{text}");
        assert_eq!(parse(&text).unwrap(), cfg);
    }

    #[test]
    fn each_refused_option_is_named() {
        for (key, value) in [
            ("model_type", json!("gpt_neo")),
            ("activation_function", json!("relu")),
            ("n_inner", json!(16)),
            ("scale_attn_by_inverse_layer_idx", json!(true)),
            ("reorder_and_upcast_attn", json!(true)),
            ("add_cross_attention", json!(true)),
            ("scale_attn_weights", json!(false)),
            ("tie_word_embeddings", json!(false)),
            ("attn_pdrop", json!(0.2)),
        ] {
            let e = parse(&with(key, value)).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains("config.json"), "{key}: {e}");
        }
        let e = parse(&with("activation_function", json!("gelu"))).unwrap_err().to_string();
        assert!(e.contains("erf") && e.contains("tanh"), "{e}");
    }

    #[test]
    fn accepted_variants_and_hf_defaults() {
        assert!(parse(&with("activation_function", json!("gelu_pytorch_tanh"))).is_ok());
        assert!(parse(&with("n_inner", json!(32))).is_ok());
        assert!(parse(&with("scale_attn_by_inverse_layer_idx", json!(false))).is_ok());
        let minimal = r#"{"vocab_size": 11, "n_positions": 5, "n_embd": 8, "n_layer": 2, "n_head": 2}"#;
        let cfg = parse(minimal).unwrap();
        assert_eq!(cfg.dropout, HF_DEFAULT_PDROP);
        assert_eq!(cfg.position_encoding, PositionEncoding::Learned);
    }

    #[test]
    fn classifier_head_round_trips_as_transformers_writes_it() {
        let mut cfg = ModelConfig::new(11, 5, 2, 2, 8);
        cfg.head = Head::Classifier { labels: vec!["ham".into(), "spam".into()], pad_token_id: 10 };
        let text = write_config_json(&cfg);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["architectures"], json!(["GPT2ForSequenceClassification"]));
        assert_eq!(v["id2label"], json!({"0": "ham", "1": "spam"}));
        assert_eq!(v["label2id"], json!({"ham": 0, "spam": 1}));
        assert_eq!(v["pad_token_id"], json!(10));
        assert_eq!(parse(&text).unwrap(), cfg);
        let mut no_pad = v.clone();
        no_pad.as_object_mut().unwrap().remove("pad_token_id");
        assert!(parse(&no_pad.to_string()).unwrap_err().to_string().contains("`pad_token_id`"));
        let mut gap = v.clone();
        gap["id2label"] = json!({"0": "ham", "2": "spam"});
        assert!(parse(&gap.to_string()).unwrap_err().to_string().contains("`id2label`"));
        let mut multi = v;
        multi["problem_type"] = json!("multi_label_classification");
        assert!(parse(&multi.to_string()).unwrap_err().to_string().contains("`problem_type`"));
        let other = with("architectures", json!(["GPT2ForTokenClassification"]));
        assert!(parse(&other).unwrap_err().to_string().contains("`architectures`"));
    }

    #[test]
    fn lushan_section_is_checked() {
        let e = parse(&with("lushan", json!({"format_version": 2}))).unwrap_err().to_string();
        assert!(e.contains("lushan.format_version"), "{e}");
        let e = parse(&with("lushan", json!({"position_encoding": "rotary"}))).unwrap_err().to_string();
        assert!(e.contains("lushan.position_encoding"), "{e}");
    }

    #[test]
    fn missing_fields_and_overflow_are_named() {
        let e = parse(r#"{"vocab_size": 11}"#).unwrap_err().to_string();
        assert!(e.contains("`n_embd` is missing"), "{e}");
        let e = parse(&with("vocab_size", json!(u64::MAX))).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = parse(&with("n_positions", json!(0))).unwrap_err().to_string();
        assert!(e.contains("`n_positions`"), "{e}");
        let e = parse("[1, 2]").unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
    }
}
