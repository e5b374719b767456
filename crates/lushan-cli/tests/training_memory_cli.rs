//! `--checkpoint-activations` as a user meets it: `lushan train` with it (flag or config file) trains the
//! same run bit for bit, and `lushan bench train` reports peak RSS with and without it.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;
use common::*;
use std::path::Path;

/// The step losses and gradient norms and the evaluation losses of a run, as written to metrics.jsonl
/// (timings left out).
fn losses(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let fields = ["kind", "step", "loss", "grad_norm", "train_loss", "val_loss"];
            fields.map(|f| v[f].to_string()).join(" ")
        })
        .collect()
}

#[test]
fn checkpointed_training_is_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    // Two layers, dropout on, a context longer than one attention tile.
    let shape =
        ["--n-layer", "2", "--block-size", "80", "--dropout", "0.1", "--max-iters", "6", "--eval-interval", "3"];
    let plain = dir.path().join("plain");
    ok(&train_args(&data, &plain, &shape));
    let flagged = dir.path().join("flagged");
    let mut args = train_args(&data, &flagged, &shape);
    args.push("--checkpoint-activations");
    let o = ok(&args);
    assert!(o.stdout.contains("checkpoint_activations = true"), "the resolved settings show it: {o:?}");
    let config = dir.path().join("memory.toml");
    std::fs::write(&config, "checkpoint_activations = true\n").unwrap();
    let from_file = dir.path().join("from-file");
    let mut args = train_args(&data, &from_file, &shape);
    args.extend(["--config", s(&config)]);
    ok(&args);
    let want = losses(&plain);
    // Evaluations after 0, 3 and 6 updates: their losses follow every gradient of the run.
    assert!(want.iter().filter(|l| l.starts_with("\"eval\"")).count() >= 3, "{want:?}");
    assert_eq!(losses(&flagged), want, "--checkpoint-activations");
    assert_eq!(losses(&from_file), want, "checkpoint_activations in the config file");
    fails(&[&train_args(&data, &plain, &shape)[..], &["--checkpoint-activations", "maybe"]].concat(), &["maybe"]);
}

#[test]
fn bench_train_reports_peak_rss_and_what_it_kept() {
    let tiny = ["bench", "train", "--steps", "2", "--warmup", "1", "--n-layer", "2", "--n-embd", "32", "--n-head", "2"];
    let tiny = [&tiny[..], &["--block-size", "80", "--batch-size", "2"]].concat();
    for (extra, checkpointed, maps, said) in [
        (&[][..], false, false, "tiled (log-sum-exp kept)"),
        (&["--checkpoint-activations"][..], true, false, "blocks checkpointed"),
        (&["--attention-maps"][..], false, true, "keeping the T×T probabilities"),
    ] {
        let o = ok(&[&tiny[..], extra].concat());
        assert!(o.stdout.contains("peak RSS: ") && o.stdout.contains(said), "{extra:?}: {o:?}");
        let json = o.stdout.lines().find_map(|l| l.strip_prefix("JSON ")).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0, "{v}");
        assert_eq!(v["checkpoint_activations"], checkpointed, "{v}");
        assert_eq!(v["attention_maps"], maps, "{v}");
    }
}

#[test]
fn bf16_precision_trains_close_to_f32_and_says_how_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let shape = ["--n-layer", "2", "--block-size", "64", "--max-iters", "40", "--eval-interval", "20"];
    let f32_run = dir.path().join("f32");
    ok(&train_args(&data, &f32_run, &shape));
    let bf16_run = dir.path().join("bf16");
    let o = ok(&[&train_args(&data, &bf16_run, &shape)[..], &["--precision", "bf16"]].concat());
    assert!(o.stdout.contains("precision = \"bf16\""), "the resolved settings show it: {o:?}");
    let last_val = |out: &Path| {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let evals: Vec<f64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64())
            .collect();
        *evals.last().unwrap()
    };
    let (a, b) = (last_val(&f32_run), last_val(&bf16_run));
    assert!((a - b).abs() <= 0.02 * a, "validation loss after 40 updates: f32 {a}, bf16 {b}");
    assert_ne!(losses(&f32_run), losses(&bf16_run), "bf16 rounds the products' operands");
    // The setting in a config file, and a wrong value named.
    let config = dir.path().join("precision.toml");
    std::fs::write(&config, "precision = \"bf16\"\n").unwrap();
    let from_file = dir.path().join("from-file");
    ok(&[&train_args(&data, &from_file, &shape)[..], &["--config", s(&config)]].concat());
    assert_eq!(losses(&from_file), losses(&bf16_run), "precision in the config file");
    fails(&[&train_args(&data, &f32_run, &shape)[..], &["--precision", "fp8"]].concat(), &["fp8", "f32 or bf16"]);
    std::fs::write(&config, "precision = \"half\"\n").unwrap();
    fails(&[&train_args(&data, &f32_run, &shape)[..], &["--config", s(&config)]].concat(), &["half", "f32 or bf16"]);
    // bench train says which products it ran and how this CPU computes them.
    let tiny = ["bench", "train", "--steps", "1", "--warmup", "1", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"];
    let o = ok(&[&tiny[..], &["--precision", "bf16"]].concat());
    assert!(o.stdout.contains("products bf16 ("), "{o:?}");
    let json = o.stdout.lines().find_map(|l| l.strip_prefix("JSON ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["precision"], "bf16", "{v}");
}
