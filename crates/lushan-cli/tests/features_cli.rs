#![allow(clippy::unwrap_used)] // tests may unwrap
//! End-to-end tests of head roles and learned features: `lushan train` records the strongest induction head
//! per evaluation, `lushan features train` saves a sparse autoencoder beside the model, `lushan explain
//! --features` shows it, and the errors a user can provoke are clear.

mod common;

use common::{corpus, fails, ok, s, train_args};
use lushan_train::metrics::{MetricsLine, read_metrics};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Two tiny models (different seeds) trained on the first 20 KB of Shakespeare, in a fresh directory.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = corpus(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&train_args(&data, &a, &["--n-layer", "2"]));
    ok(&train_args(&data, &b, &["--n-layer", "2", "--seed", "7"]));
    (dir, data, a, b)
}

fn features_train<'a>(model: &'a Path, data: &'a Path, layer: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["features", "train", "--model", s(model), "--data", s(data), "--layer", layer];
    args.extend_from_slice(&["--steps", "60", "--batch-size", "64", "--max-tokens", "3000", "--resample-every", "20"]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn training_records_the_strongest_induction_head() {
    let (_dir, _data, a, _b) = setup("roles-metrics");
    let evals: Vec<(f32, usize, usize)> = read_metrics(&a)
        .unwrap()
        .into_iter()
        .filter_map(|line| match line {
            MetricsLine::Eval { induction_score, induction_layer, induction_head, .. } => {
                Some((induction_score.unwrap(), induction_layer.unwrap(), induction_head.unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(evals.len(), 3, "evaluations at steps 0, 10, 20");
    for (score, layer, head) in evals {
        assert!((0.0..=1.0).contains(&score) && layer < 2 && head < 2);
    }
}

#[test]
fn features_train_then_explain_shows_them_and_bad_input_is_named() {
    let (dir, data, a, b) = setup("features-cli");
    let out = ok(&features_train(&a, &data, "1", &["--expansion", "2"]));
    assert!(out.stdout.contains("activations/s") && out.stdout.contains("fraction of variance unexplained"), "{out:?}");
    assert!(out.stdout.contains("allows at most") && out.stdout.contains("sgemm ceiling measured now"), "{out:?}");
    let sae_dir = a.join("features").join("layer-1");
    for file in ["sae.safetensors", "sae.json", "contexts.json"] {
        assert!(sae_dir.join(file).is_file(), "{file}");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(sae_dir.join("sae.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["layer"], 1);
    assert_eq!(config["config"]["n_features"], 64);
    assert!(config["summary"]["report"]["l0"].as_f64().unwrap() > 0.0);
    assert!(out.stdout.contains("preserves"), "{out:?}");
    assert!(config["summary"]["splice"]["loss_preserved"].as_f64().is_some());

    // JSON: every prompt token has its features, each with contexts from the training text.
    let prompt = "ROMEO: But soft";
    let explain = |model: &Path, extra: &[&str]| {
        let mut args = vec!["explain", "--model", s(model), "--prompt", prompt, "--format", "json", "--features"];
        args.push(s(&sae_dir));
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let args = explain(&a, &[]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    let positions = json["features"]["positions"].as_array().unwrap();
    assert_eq!(positions.len(), prompt.len());
    let shown = positions.iter().flat_map(|p| p["top"].as_array().unwrap()).count();
    assert!(shown > 0, "some features are active");
    assert!(
        positions
            .iter()
            .flat_map(|p| p["top"].as_array().unwrap())
            .all(|f| !f["contexts"].as_array().unwrap().is_empty())
    );
    assert!(json["head_roles"]["induction"].as_array().unwrap().len() == 2);

    // HTML: the sections are there.
    let report = dir.join("report.html");
    let out = ok(&["explain", "--model", s(&a), "--prompt", prompt, "--features", s(&sae_dir), "--out", s(&report)]);
    assert!(out.stdout.contains("Learned features") && out.stdout.contains("Head roles"), "{out:?}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("id=\"features\"") && html.contains("id=\"head-roles\""));

    // Another model's SAE, a layer out of range, a corrupt or missing SAE file.
    let args = explain(&b, &[]);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--features", "another model"]);
    fails(&features_train(&a, &data, "3", &[]), &["--layer 3", "0..=2"]);
    // An SAE whose layer this model does not have (sae.json edited by hand).
    let config_path = sae_dir.join("sae.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, original.replace("\"layer\": 1", "\"layer\": 5")).unwrap();
    let args = explain(&a, &[]);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--features", "layer 5"]);
    std::fs::write(&config_path, original).unwrap();
    fails(&features_train(&a, &data, "-1", &[]), &["--layer -1"]);
    std::fs::write(sae_dir.join("sae.safetensors"), b"not a tensor file").unwrap();
    let args = explain(&a, &[]);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["sae.safetensors", "not a safetensors file"]);
    std::fs::remove_file(sae_dir.join("contexts.json")).unwrap();
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--features"]);
    fails(&["explain", "--model", s(&a), "--prompt", prompt, "--features", s(&dir.join("none"))], &["sae.json"]);
}
