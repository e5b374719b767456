//! The golden test: lushan's forward, backward and 10 AdamW steps against a PyTorch reference written by
//! `tools/make_fixtures.py` (see tools/README.md). Fails naming the tensor and the worst index.

#![allow(clippy::unwrap_used)] // tests may unwrap

use lushan_model::{Activations, Gpt, Mode, ModelConfig, ParamKind, PositionEncoding};
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use safetensors::{Dtype, SafeTensors};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        Self { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn u32(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I32, "{name}");
        t.data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32).collect()
    }
}

/// Compares within `atol + rtol·|want|`, reporting the worst element; `skip` masks indices.
fn compare(what: &str, got: &[f32], want: &[f32], skip: impl Fn(usize) -> bool) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if skip(i) {
            continue;
        }
        let excess = (g - w).abs() - (ATOL + RTOL * w.abs());
        if (excess > 0.0 || g.is_nan()) && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, if g.is_nan() { f32::INFINITY } else { excess }));
        }
    }
    match worst {
        Some((i, _)) => Err(format!("{what}: worst mismatch at index {i}: lushan {} vs torch {}", got[i], want[i])),
        None => Ok(()),
    }
}

fn check_fixture(name: &str, position_encoding: PositionEncoding) {
    let fx = Fixture::load(name);
    let (b, t) = (2, 8);
    let mut cfg = ModelConfig::new(64, 8, 2, 2, 32);
    cfg.position_encoding = position_encoding;
    let params: Vec<f32> = ParamKind::ALL
        .iter()
        .filter(|k| k.present(&cfg))
        .flat_map(|k| fx.f32(&format!("param.{}", k.name())))
        .collect();
    let mut model = Gpt::from_params(cfg.clone(), params).unwrap();
    let inputs = fx.u32("inputs");
    let targets = fx.u32("targets");
    let mut acts = Activations::new(&cfg, b, t).unwrap();
    let mut failures = Vec::new();
    let mut check = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e);
        }
    };

    let loss = model.forward(&mut acts, &inputs, Some(&targets), Mode::Eval).unwrap().unwrap();
    check(compare("loss", &[loss], &fx.f32("loss"), |_| false));
    check(compare("logits", &acts.logits, &fx.f32("logits"), |_| false));
    for l in 0..2 {
        check(compare(&format!("attention layer {l}"), &acts.layers[l].att, &fx.f32(&format!("att.{l}")), |_| false));
    }
    let mut grads = vec![0.0; model.num_params()];
    model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
    for kind in ParamKind::ALL.into_iter().filter(|k| k.present(&cfg)) {
        let got = &grads[model.layout.range(kind)];
        check(compare(&format!("grad.{}", kind.name()), got, &fx.f32(&format!("grad.{}", kind.name())), |_| false));
    }

    // Ten AdamW steps on the same batch, clipping the global norm at 1.0, constant lr 1e-2.
    let settings = OptimizerSettings { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamWState::new(model.num_params());
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let loss = model.forward(&mut acts, &inputs, Some(&targets), Mode::Eval).unwrap().unwrap();
        grads.fill(0.0);
        model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
        norms.push(clip_grad_norm(&mut grads, 1.0));
        opt.update(&mut model, &grads, 1e-2, &settings);
        losses.push(loss);
    }
    check(compare("adamw_losses", &losses, &fx.f32("adamw_losses"), |_| false));
    check(compare("grad_norms", &norms, &fx.f32("grad_norms"), |_| false));
    for kind in ParamKind::ALL.into_iter().filter(|k| k.present(&cfg)) {
        let got = &model.params[model.layout.range(kind)];
        // The key bias has an exactly-zero true gradient; AdamW amplifies rounding noise there (see the
        // fixture's `key_bias_note`), so that slice is not reproducible by any implementation.
        let key_bias = |i: usize| kind == ParamKind::QkvB && (32..64).contains(&(i % 96));
        check(compare(
            &format!("param_after.{}", kind.name()),
            got,
            &fx.f32(&format!("param_after.{}", kind.name())),
            key_bias,
        ));
    }
    assert!(failures.is_empty(), "{name}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn learned_positions_match_pytorch() {
    check_fixture("gpt_tiny_learned", PositionEncoding::Learned);
}

#[test]
fn sinusoidal_positions_match_pytorch() {
    check_fixture("gpt_tiny_sinusoidal", PositionEncoding::Sinusoidal);
}

#[test]
fn comparison_catches_a_wrong_value() {
    assert!(compare("x", &[1.0, 2.0], &[1.0, 2.001], |_| false).unwrap_err().contains("index 1"));
    assert!(compare("x", &[f32::NAN], &[1.0], |_| false).is_err());
}
