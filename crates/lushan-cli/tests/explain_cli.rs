#![allow(clippy::unwrap_used)] // tests may unwrap
//! End-to-end tests of `lushan explain` on a tiny character-level model: the HTML report, the JSON, the PNGs,
//! the sampling and embedding views, and the errors a user can provoke.

mod common;

use common::{BIN, corpus, fails, lushan, ok, s};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const PROMPT: &str = "ROMEO: But soft, what light";
const N_LAYER: usize = 2;
const N_HEAD: usize = 2;
const BLOCK_SIZE: usize = 64;

/// A tiny character-level model with a context long enough for [`PROMPT`], trained once per test run.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explain-cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = corpus(&dir);
        let out = dir.join("model");
        let (layers, heads, block) = (N_LAYER.to_string(), N_HEAD.to_string(), BLOCK_SIZE.to_string());
        ok(&[
            "train",
            "--data",
            s(&data),
            "--out-dir",
            s(&out),
            "--n-layer",
            &layers,
            "--n-head",
            &heads,
            "--n-embd",
            "32",
            "--block-size",
            &block,
            "--batch-size",
            "4",
            "--max-iters",
            "30",
            "--eval-interval",
            "30",
            "--eval-iters",
            "2",
            "--sample-tokens",
            "0",
            "--warmup-iters",
            "2",
            "--lr-decay-iters",
            "30",
        ]);
        out
    })
}

/// `lushan explain --model MODEL --prompt PROMPT EXTRA…`.
fn explain_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["explain", "--model", s(model()), "--prompt", PROMPT];
    args.extend_from_slice(extra);
    args
}

fn json(extra: &[&str]) -> Value {
    let mut args = explain_args(&["--format", "json"]);
    args.extend_from_slice(extra);
    let out = ok(&args);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

fn len(value: &Value) -> usize {
    value.as_array().unwrap_or_else(|| panic!("not an array: {value}")).len()
}

#[test]
fn html_report_has_every_section_and_only_embedded_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("sub/report.html");
    let out = ok(&explain_args(&["--out", s(&report)]));
    // The terminal summary: the next-token table and the lens.
    assert!(out.stdout.contains("Next-token predictions"), "{out:?}");
    assert!(out.stdout.contains("Logit lens"), "{out:?}");
    assert!(out.stdout.contains("'R'"), "{out:?}");
    assert!(out.stdout.contains("wrote the report to") && out.stdout.contains("report.html"), "{out:?}");

    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for section in ["id=\"next\"", "id=\"attention\"", "id=\"lens\"", "Next-token predictions", "Logit lens"] {
        assert!(html.contains(section), "no {section:?} in the report");
    }
    // No sampling or embedding section unless asked for.
    assert!(!html.contains("id=\"sampling\"") && !html.contains("id=\"embeddings\""));
    // Surprisal strip, attention grid, every head of the last layer, logit lens, head roles, direct logit
    // attribution.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5 + N_HEAD);
    // "What to notice" comes first and links to the sections it speaks of.
    let notice = html.find("id=\"notice\"").expect("a what-to-notice block");
    assert!(notice < html.find("id=\"next\"").unwrap(), "the notice is not first");
    assert!(
        html.contains("The most surprising token is") && html.contains("href=\"#head-roles\">"),
        "no notice sentences"
    );
    assert!(html.contains("id=\"attribution\"") && !html.contains("id=\"ablation\""));
    assert!(!html.contains("http://") && !html.contains("https://"), "the report refers to the network");
    assert!(!html.contains("<script"), "the report needs no script");
}

#[test]
fn html_report_defaults_to_explain_html_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(explain_args(&[]))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("explain.html").is_file());
    assert!(stdout.contains("explain.html"), "the summary should say where the report is: {stdout}");
}

#[test]
fn json_has_every_number_with_the_right_shapes() {
    let explanation = json(&[]);
    let t = PROMPT.chars().count();
    assert_eq!(explanation["model"]["n_layer"], N_LAYER);
    assert_eq!(explanation["model"]["n_head"], N_HEAD);
    assert_eq!(len(&explanation["tokens"]), t);
    assert_eq!(explanation["tokens"][0]["text"], "R");
    assert_eq!(len(&explanation["next_token"]), t);
    assert_eq!(len(&explanation["next_token"][0]["top"]), 5);
    assert!(explanation["next_token"][t - 1]["actual"].is_null());

    // n_layer × n_head causal T × T matrices whose rows sum to one.
    let probs = &explanation["attention"]["probs"];
    assert_eq!(len(probs), N_LAYER);
    for layer in probs.as_array().unwrap() {
        assert_eq!(len(layer), N_HEAD);
        for head in layer.as_array().unwrap() {
            assert_eq!(len(head), t);
            for (query, row) in head.as_array().unwrap().iter().enumerate() {
                assert_eq!(len(row), t);
                let row: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                assert!(
                    (row.iter().sum::<f64>() - 1.0).abs() < 1e-3,
                    "row {query} sums to {}",
                    row.iter().sum::<f64>()
                );
                assert!(row[query + 1..].iter().all(|&p| p == 0.0), "row {query} attends to the future");
            }
        }
    }
    let lens = &explanation["logit_lens"]["layers"];
    assert_eq!(len(lens), N_LAYER + 1);
    assert_eq!(lens[0]["label"], "embed");
    assert_eq!(len(&lens[N_LAYER]["positions"]), t);
    assert!(explanation["sampling"].is_null() && explanation["embeddings"].is_null());
    // Attribution is always there; ablation and patching only when asked for.
    assert_eq!(len(&explanation["attribution"]["heads"]), N_LAYER);
    assert!(explanation["ablation"].is_null() && explanation["patching"].is_null());
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

/// The prompt with one word changed, as many characters (= tokens) long.
const CORRUPTED: &str = "ROMEO: But hard, what light";

#[test]
fn causal_views_in_the_json_the_report_and_the_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.txt");
    std::fs::write(&reference, "O Romeo, Romeo, wherefore art thou Romeo?\n").unwrap();
    let data = corpus(dir.path());
    let flags = ["--reference", s(&reference), "--data", s(&data), "--corrupt", CORRUPTED, "--versus", "e"];
    let explanation = json(&flags);
    let t = PROMPT.chars().count();

    // Direct logit attribution of logit(top) − logit('e') at the last position; the parts add up.
    let a = &explanation["attribution"];
    assert_eq!(a["position"], t - 1);
    assert_eq!(a["versus"]["text"], "e");
    let heads: f64 = a["heads"].as_array().unwrap().iter().flat_map(|l| l.as_array().unwrap()).map(number).sum();
    let per_layer = |key: &str| a[key].as_array().unwrap().iter().map(number).sum::<f64>();
    let parts = number(&a["embed"]) + heads + per_layer("attn_bias") + per_layer("mlp") + number(&a["ln_final_bias"]);
    assert!((parts - number(&a["total"])).abs() < 1e-3, "parts {parts} vs total {}", a["total"]);
    assert_eq!(len(&a["top"]), 10);

    // Zero and mean ablation at the prompt, and over --data.
    let ablation = &explanation["ablation"];
    for sweep in [&ablation["zero"], &ablation["mean"], &ablation["data"]["zero"], &ablation["data"]["mean"]] {
        assert_eq!(len(&sweep["heads"]), N_LAYER);
        assert_eq!(len(&sweep["heads"][0]), N_HEAD);
        assert_eq!(len(&sweep["mlp"]), N_LAYER);
        assert!(!sweep["top"].as_array().unwrap().is_empty());
    }
    assert!(number(&ablation["data"]["tokens"]) > 100.0);
    assert!(number(&ablation["seconds"]) >= 0.0);

    // Patching: the embeddings of positions where the prompts agree carry nothing; where they differ, all.
    let patching = &explanation["patching"];
    assert_eq!(patching["versus"]["text"], "e");
    let embed_row: Vec<f64> = patching["resid"][0].as_array().unwrap().iter().map(number).collect();
    assert_eq!(embed_row.len(), t);
    for (position, (clean, corrupted)) in PROMPT.chars().zip(CORRUPTED.chars()).enumerate() {
        if clean == corrupted {
            assert_eq!(embed_row[position], 0.0, "position {position}");
        }
    }
    assert_eq!(len(&patching["heads"]), N_LAYER);

    // The report has a section and pictures for each; the summary names the top components and the time.
    let report = dir.path().join("report.html");
    let pngs = dir.path().join("pngs");
    let mut args = explain_args(&["--out", s(&report), "--png", s(&pngs)]);
    args.extend_from_slice(&flags);
    let out = ok(&args);
    for needle in ["Direct logit attribution of logit(", "attribution + ablation sweep took", "Activation patching"] {
        assert!(out.stdout.contains(needle), "no {needle:?} in {}", out.stdout);
    }
    let html = std::fs::read_to_string(&report).unwrap();
    for id in ["attribution", "ablation", "patching"] {
        assert!(html.contains(&format!("id=\"{id}\"")) && html.contains(&format!("href=\"#{id}\"")), "{id}");
    }
    let names = check_pngs(&pngs);
    for name in ["attribution.png", "ablation-zero.png", "ablation-mean.png", "patching.png", "patching-heads.png"] {
        assert!(names.contains(&name.to_string()), "no {name} in {names:?}");
    }
}

#[test]
fn causal_flags_refuse_bad_input_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    fails(&explain_args(&["--versus", "ab"]), &["--versus \"ab\"", "2 tokens"]);
    fails(&explain_args(&["--target", "#100000"]), &["--target \"#100000\"", "out of range"]);
    fails(&explain_args(&["--corrupt", "ROMEO"]), &["--corrupt is 5 tokens long", "27 tokens"]);
    fails(&explain_args(&["--position", "28"]), &["--position 28", "1..=27"]);
    fails(&explain_args(&["--position", "0"]), &["--position 0"]);
    fails(&explain_args(&["--components", "0"]), &["--components"]);
    let missing = dir.path().join("missing.txt");
    fails(&explain_args(&["--data", s(&missing)]), &["--data", "missing.txt"]);
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a").unwrap();
    fails(&explain_args(&["--reference", s(&short)]), &["--reference", "1 token"]);
    fails(&explain_args(&["--target", "e", "--versus", "e"]), &["versus", "target token itself"]);
    // The prompt as its own corruption leaves no difference to recover.
    fails(&explain_args(&["--corrupt", PROMPT, "--versus", "e"]), &["corrupt", "changes nothing"]);
}

#[test]
fn bench_explain_prints_the_sweep_time() {
    let args = ["bench", "explain", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--vocab-size", "50"];
    let out = ok(&[&args[..], &["--prompt-tokens", "8", "--repeats", "1", "--mean"]].concat());
    assert!(out.stdout.contains("8-token prompt, 12 ablations (zero + mean)"), "{}", out.stdout);
    assert!(out.stdout.contains("best: attribution + ablation sweep"), "{}", out.stdout);
    assert!(out.stdout.contains("% of the sgemm ceiling measured in this run"), "{}", out.stdout);
}

#[test]
fn json_goes_to_out_when_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("explanation.json");
    let out = ok(&explain_args(&["--format", "json", "--out", s(&path), "--alternatives", "3"]));
    assert!(out.stdout.trim().is_empty(), "stdout should be empty when --out takes the JSON: {out:?}");
    let explanation: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(len(&explanation["next_token"][0]["top"]), 3);
}

/// Reads `DIR/pictures.json` and checks every listed PNG decodes with the declared size; returns the names.
fn check_pngs(dir: &Path) -> Vec<String> {
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("pictures.json")).unwrap()).unwrap();
    let mut names = Vec::new();
    for entry in manifest.as_array().unwrap() {
        let name = entry["file"].as_str().unwrap();
        let file = std::fs::File::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
        let mut pixels = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        let declared = (entry["width"].as_u64().unwrap(), entry["height"].as_u64().unwrap());
        assert_eq!((u64::from(info.width), u64::from(info.height)), declared, "{name}");
        assert!(info.width >= 300 && info.height >= 100, "{name} is too small to read");
        names.push(name.to_string());
    }
    names
}

#[test]
fn png_dir_pictures_decode_with_their_declared_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs");
    let report = dir.path().join("report.html");
    ok(&explain_args(&["--out", s(&report), "--png", s(&pngs)]));
    let names = check_pngs(&pngs);
    let mut expected = vec!["surprisal.png", "attention-grid.png"];
    expected.extend(["attention-layer2-head1.png", "attention-layer2-head2.png", "logit-lens.png", "head-roles.png"]);
    expected.push("attribution.png");
    assert_eq!(names, expected);

    // --layer / --head choose the large map; json mode draws the PNGs too.
    let pngs = dir.path().join("one-head");
    let out = ok(&explain_args(&["--format", "json", "--png", s(&pngs), "--layer", "1", "--head", "2"]));
    serde_json::from_str::<Value>(&out.stdout).unwrap();
    let names = check_pngs(&pngs);
    assert!(names.contains(&"attention-layer1-head2.png".to_string()), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("attention-layer")).count(), 1, "{names:?}");
}

#[test]
fn generate_adds_the_sampling_view() {
    let explanation = json(&["--generate", "5", "--temperature", "0.9", "--top-k", "10", "--seed", "3"]);
    let sampling = &explanation["sampling"];
    assert_eq!(len(&sampling["steps"]), 5);
    assert_eq!(sampling["top_k"], 10);
    assert_eq!(sampling["seed"], 3);
    for step in sampling["steps"].as_array().unwrap() {
        assert!(step["kept"].as_u64().unwrap() <= 10, "{step}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (report, pngs) = (dir.path().join("report.html"), dir.path().join("pngs"));
    let out = ok(&explain_args(&["--generate", "5", "--out", s(&report), "--png", s(&pngs)]));
    assert!(out.stdout.contains("Generated 5 tokens"), "{out:?}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("id=\"sampling\"") && html.contains("temperature 0.8"));
    assert!(check_pngs(&pngs).contains(&"sampling.png".to_string()));
}

#[test]
fn neighbors_of_char_tokens_and_ids() {
    let explanation = json(&["--neighbors", "e", " ", "#0", "--neighbor-count", "4"]);
    let view = &explanation["embeddings"];
    let queries = view["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 3);
    assert_eq!(queries[0]["token"]["text"], "e");
    assert_eq!(queries[1]["token"]["text"], " ");
    assert_eq!(queries[2]["token"]["id"], 0);
    for query in queries {
        assert_eq!(len(&query["nearest"]), 4, "{query}");
    }
    assert!(len(&view["pca"]) >= 3);

    let dir = tempfile::tempdir().unwrap();
    let (report, pngs) = (dir.path().join("report.html"), dir.path().join("pngs"));
    ok(&explain_args(&["--neighbors", "e", "a", "--out", s(&report), "--png", s(&pngs)]));
    assert!(std::fs::read_to_string(&report).unwrap().contains("id=\"embeddings\""));
    assert!(check_pngs(&pngs).contains(&"embeddings-pca.png".to_string()));
}

#[test]
fn bad_input_fails_with_a_message_naming_the_flag() {
    let m = s(model());
    let too_long = "a".repeat(BLOCK_SIZE + 1);
    fails(&["explain", "--model", m, "--prompt", ""], &["--prompt", "empty"]);
    fails(&["explain", "--model", m, "--prompt", &too_long], &["--prompt", "65 tokens", "64"]);
    fails(&explain_args(&["--layer", "3"]), &["--layer 3", "1..=2"]);
    fails(&explain_args(&["--layer", "0"]), &["--layer 0", "1..=2"]);
    fails(&explain_args(&["--head", "3"]), &["--head 3", "1..=2"]);
    fails(&explain_args(&["--layer", "-1"]), &["--layer -1"]);
    fails(&explain_args(&["--neighbors", "soft"]), &["--neighbors \"soft\"", "4 tokens"]);
    fails(&explain_args(&["--neighbors", "Ж"]), &["--neighbors \"Ж\""]);
    fails(&explain_args(&["--neighbors", "#100000"]), &["--neighbors \"#100000\"", "out of range"]);
    fails(&explain_args(&["--alternatives", "0"]), &["--alternatives"]);
    fails(&explain_args(&["--generate", "2", "--top-k", "0"]), &["--top-k"]);
    fails(&explain_args(&["--temperature", "-1"]), &["--temperature"]);
    fails(&explain_args(&["--top-p", "2"]), &["--top-p"]);
    fails(&explain_args(&["--format", "xml"]), &["--format"]);
    fails(&["explain", "--model", "/nonexistent/model", "--prompt", PROMPT], &["/nonexistent/model"]);
    fails(&["explain", "--prompt", PROMPT], &["--model"]);
    // Nothing written on failure.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.html");
    fails(&explain_args(&["--layer", "9", "--out", s(&report)]), &["--layer"]);
    assert!(!report.exists());
}

#[test]
fn help_names_the_flags() {
    let out = lushan(&["explain", "--help"]);
    assert_eq!(out.code, 0, "{out:?}");
    for flag in
        ["--model", "--prompt", "--format", "--out", "--png", "--alternatives", "--layer", "--head", "--generate"]
    {
        assert!(out.stdout.contains(flag), "help lacks {flag}: {out:?}");
    }
    for flag in ["--temperature", "--top-k", "--top-p", "--seed", "--neighbors", "--neighbor-count"] {
        assert!(out.stdout.contains(flag), "help lacks {flag}: {out:?}");
    }
}

/// tests/browser/check_report.sh on a full report (sampling and embeddings included), when a Chromium is
/// installed; without one the check is skipped with a note (CI runs the script itself).
#[test]
fn report_passes_the_headless_browser_check() {
    let has_browser = ["chromium", "chromium-browser", "google-chrome"].iter().any(|b| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !has_browser && std::env::var_os("CHROMIUM").is_none() {
        eprintln!("note: no Chromium installed; skipping the headless browser check of the report");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    ok(&explain_args(&["--out", s(&report), "--generate", "5", "--neighbors", "e", "a"]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser/check_report.sh");
    let shot = dir.path().join("screenshot.png");
    let out = std::process::Command::new(script).args([s(&report), s(&shot)]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_report.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1280x2000"), "{stdout}");
}
