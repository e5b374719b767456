//! Dropout inside the model: with dropout > 0 and a fixed seed the masks are a fixed function of the seed,
//! so the training-mode loss is a deterministic function of the parameters and its gradient can be checked
//! by finite differences. Every branch that drops (embeddings, each block's attention output, each block's
//! MLP output) is covered: using one branch's mask in another branch's backward pass, or forgetting the
//! 1/(1-p) scale, changes the analytic gradient of the parameters checked here and fails the test.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use lushan_model::{Activations, Gpt, Mode, ModelConfig, ParamKind};

const SEED: u64 = 0x5eed;

fn dropout_model() -> Gpt {
    let mut cfg = ModelConfig::new(29, 8, 2, 2, 16);
    cfg.dropout = 0.3;
    Gpt::new(cfg, 11).unwrap()
}

fn batch() -> (Vec<u32>, Vec<u32>) {
    let (b, t) = (2, 8);
    let ids = (0..b * t).map(|i| (i as u32 * 7 + 2) % 29).collect();
    let targets = (0..b * t).map(|i| (i as u32 * 5 + 1) % 29).collect();
    (ids, targets)
}

fn loss(model: &Gpt, mode: Mode) -> f64 {
    let (ids, targets) = batch();
    let mut acts = Activations::new(&model.config, 2, 8).unwrap();
    model.forward(&mut acts, &ids, Some(&targets), mode).unwrap().unwrap() as f64
}

#[test]
fn dropout_is_active_in_training_and_reproducible_for_a_seed() {
    let model = dropout_model();
    let train = loss(&model, Mode::Train { dropout_seed: SEED });
    assert_eq!(train, loss(&model, Mode::Train { dropout_seed: SEED }), "same seed, same masks");
    assert_ne!(train, loss(&model, Mode::Eval), "dropout changed nothing in training mode");
    assert_ne!(train, loss(&model, Mode::Train { dropout_seed: SEED + 1 }), "masks ignore the seed");
}

#[test]
fn gradients_with_dropout_match_finite_differences_in_every_branch() {
    let model = dropout_model();
    let mode = Mode::Train { dropout_seed: SEED };
    let (ids, targets) = batch();
    let mut acts = Activations::new(&model.config, 2, 8).unwrap();
    model.forward(&mut acts, &ids, Some(&targets), mode).unwrap();
    let mut grads = vec![0.0; model.num_params()];
    model.backward(&mut acts, &mut grads, 1.0, mode);

    let loss_at = |params: Vec<f32>| loss(&Gpt::from_params(model.config.clone(), params).unwrap(), mode);
    // Parameters before each dropout site: the embeddings (embedding dropout), the attention projection
    // (attention-output dropout) and the MLP projection (MLP-output dropout), in both layers, plus the
    // parameters whose gradient flows back through all of them.
    let kinds = [
        ParamKind::Wte,
        ParamKind::Wpe,
        ParamKind::QkvW,
        ParamKind::AttnProjW,
        ParamKind::AttnProjB,
        ParamKind::FcW,
        ParamKind::FcProjW,
        ParamKind::FcProjB,
        ParamKind::Ln1W,
        ParamKind::Ln2B,
    ];
    let mut checked = 0;
    let mut largest = 0.0f64;
    for kind in kinds {
        for layer in 0..model.config.n_layer {
            let range = if matches!(kind, ParamKind::Wte | ParamKind::Wpe) {
                if layer > 0 {
                    continue;
                }
                model.layout.range(kind)
            } else {
                model.layout.layer_range(kind, layer)
            };
            for offset in [1, range.len() / 2, range.len() - 2] {
                let i = range.start + offset;
                let eps = 1e-2f32;
                let (mut plus, mut minus) = (model.params.clone(), model.params.clone());
                plus[i] += eps;
                minus[i] -= eps;
                let numeric = (loss_at(plus) - loss_at(minus)) / (2.0 * eps as f64);
                let analytic = grads[i] as f64;
                assert!(
                    (analytic - numeric).abs() < 1e-3 + 2e-2 * numeric.abs(),
                    "{kind:?} layer {layer} element {offset}: analytic {analytic} vs numeric {numeric}"
                );
                largest = largest.max(numeric.abs());
                checked += 1;
            }
        }
    }
    assert!(checked >= 50, "{checked} parameters checked");
    // The check has teeth only if the gradients are not all tiny.
    assert!(largest > 1e-2, "largest gradient checked is {largest}");
}
