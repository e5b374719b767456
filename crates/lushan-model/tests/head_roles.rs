#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
//! Head roles agree with TransformerLens' head detector (`transformer_lens.head_detector`, error_measure
//! "mul") on the `transformers` fixture of tests/hf_parity.rs: `tests/fixtures/head_detector.json` from
//! `tools/head_detector_fixture.py` holds the token sequence (20 random tokens repeated) and every head's
//! score for the three roles, with exclude_bos / exclude_current_token off and on.

use lushan_model::Gpt;
use lushan_model::checkpoint::load_model_dir;
use lushan_model::inspect::{HeadDetection, HeadRole, detect_heads};
use std::path::Path;

const TOL: f32 = 1e-3;

#[test]
fn head_scores_match_transformer_lens() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (cfg, params) = load_model_dir(&fixtures.join("hf_gpt2_tiny")).unwrap();
    let model = Gpt::from_params(cfg, params).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("head_detector.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    assert_eq!(tokens.len(), 40);
    let settings = [
        ("default", HeadDetection::default()),
        ("exclude_bos_and_current", HeadDetection { exclude_bos: true, exclude_current_token: true }),
    ];
    let names = [
        (HeadRole::PreviousToken, "previous_token_head"),
        (HeadRole::DuplicateToken, "duplicate_token_head"),
        (HeadRole::Induction, "induction_head"),
    ];
    let mut worst = 0.0f32;
    for (setting, detection) in settings {
        let roles = detect_heads(&model, &tokens, 0, detection).unwrap();
        for (role, name) in names {
            let reference = &expected["scores"][setting][name];
            for (layer, heads) in roles.scores(role).iter().enumerate() {
                for (head, &score) in heads.iter().enumerate() {
                    let want = reference[layer][head].as_f64().unwrap() as f32;
                    let diff = (score - want).abs();
                    worst = worst.max(diff);
                    assert!(diff < TOL, "{setting} {name} layer {layer} head {head}: lushan {score}, TL {want}");
                }
            }
        }
    }
    println!("largest difference from TransformerLens: {worst:e}");
}
