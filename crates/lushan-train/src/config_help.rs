//! How the training settings appear in `lushan train --help`: each flag's description with its default
//! (per preset where the presets differ), and the heading it is listed under.

use super::{Preset, TrainConfig};
use clap::ValueEnum;
use clap::builder::ValueRange;
use std::sync::OnceLock;

pub const DATA: &str = "Data";
pub const MODEL: &str = "Model";
pub const OPTIMISER: &str = "Optimiser";
pub const SCHEDULE: &str = "Schedule";
pub const EVALUATION: &str = "Evaluation";
pub const OUTPUT: &str = "Output";
pub const FINE_TUNING: &str = "Fine-tuning";

/// The heading a setting is listed under in `--help`.
pub fn heading(name: &str) -> &'static str {
    match name {
        "task" | "data" | "val_data" | "tokenizer" | "val_fraction" => DATA,
        "block_size" | "n_layer" | "n_head" | "n_embd" | "dropout" | "position_encoding" => MODEL,
        "learning_rate"
        | "batch_size"
        | "weight_decay"
        | "beta1"
        | "beta2"
        | "grad_clip"
        | "gradient_accumulation_steps"
        | "seed"
        | "data_parallel"
        | "checkpoint_activations"
        | "precision" => OPTIMISER,
        "max_iters" | "decay_lr" | "warmup_iters" | "lr_decay_iters" | "min_lr" => SCHEDULE,
        "eval_interval" | "eval_iters" | "early_stopping_patience" => EVALUATION,
        "init_from" | "reset_head" | "lora_rank" | "lora_alpha" | "lora_dropout" | "lora_targets" => FINE_TUNING,
        _ => OUTPUT,
    }
}

/// Values a flag of type `ty` takes: a boolean may be given bare (meaning `true`), every other flag takes one.
pub fn value_count(ty: &str) -> ValueRange {
    if ty == "bool" { ValueRange::new(0..=1) } else { ValueRange::new(1..=1) }
}

/// The doc comment `doc` (its lines joined) followed by the setting's default.
pub fn describe(name: &str, doc: &str) -> String {
    let text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{text} [{}]", default_note(name))
}

/// `default: VALUE` when every preset starts from the same value, else `default: preset's: VALUE (VALUE for
/// PRESET, …)`: the default preset's value, then each other preset's that differs from it.
fn default_note(name: &str) -> String {
    let values: Vec<(&str, String)> = preset_tables()
        .iter()
        .map(|(preset, table)| (preset.as_str(), table.get(name).map(show).unwrap_or_else(|| "none".to_owned())))
        .collect();
    let Some(((_, first), others)) = values.split_first() else { return String::new() };
    let differing: Vec<String> =
        others.iter().filter(|(_, v)| v != first).map(|(preset, v)| format!("{v} for {preset}")).collect();
    if differing.is_empty() {
        format!("default: {first}")
    } else {
        format!("default: preset's: {first} ({})", differing.join(", "))
    }
}

fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) if s.is_empty() => "none".to_owned(),
        toml::Value::String(s) => s.clone(),
        // The settings are f32: their shortest decimal, not the f64 widening's digits.
        toml::Value::Float(f) => (*f as f32).to_string(),
        other => other.to_string(),
    }
}

/// Every preset's settings as TOML tables, made once.
fn preset_tables() -> &'static [(String, toml::Table)] {
    static TABLES: OnceLock<Vec<(String, toml::Table)>> = OnceLock::new();
    TABLES.get_or_init(|| {
        Preset::value_variants()
            .iter()
            .filter_map(|preset| {
                let name = preset.to_possible_value()?.get_name().to_owned();
                let table = toml::Table::try_from(TrainConfig::preset(*preset)).ok()?;
                Some((name, table))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_each_preset_where_they_differ() {
        assert_eq!(default_note("seed"), "default: 1337");
        assert_eq!(default_note("val_data"), "default: none");
        let iters = default_note("max_iters");
        assert!(iters.starts_with("default: preset's: 2000 (5000 for baby-gpt, 600000 for gpt2"), "{iters}");
        assert_eq!(default_note("learning_rate").split(' ').nth(2), Some("0.001"));
        assert!(describe("seed", " Seed of\n the run.").starts_with("Seed of the run. [default: 1337]"));
    }
}
