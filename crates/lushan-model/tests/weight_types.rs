//! Weight types for inference (`--dtype`): a converted model must compute what its own weights, widened
//! back to f32, compute — through the full forward, cached decoding and batched decoding alike.

#![allow(clippy::unwrap_used)] // tests may unwrap

use lushan_model::{Activations, BatchScratch, DType, DecodeState, Gpt, Mode, ModelConfig, ModelError};

fn model() -> Gpt {
    let cfg = ModelConfig::new(50, 16, 2, 2, 64);
    let mut model = Gpt::new(cfg, 9).unwrap();
    // Larger weights than GPT-2 init so every layer matters to the logits.
    model.params.iter_mut().for_each(|p| *p *= 4.0);
    model
}

fn full_logits(model: &Gpt, tokens: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, 1, tokens.len()).unwrap();
    model.forward(&mut acts, tokens, None, Mode::Eval).unwrap();
    acts.logits
}

/// Largest difference relative to the largest reference logit.
fn relative_gap(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

const TOKENS: [u32; 12] = [3, 17, 4, 44, 9, 0, 31, 31, 2, 49, 18, 7];

#[test]
fn converted_models_compute_with_their_own_weights_on_every_path() {
    let f32_model = model();
    for dtype in [DType::Bf16, DType::F16, DType::Q8_0, DType::Q4_0] {
        let converted = f32_model.clone().with_dtype(dtype).unwrap();
        assert_eq!(converted.dtype(), dtype);
        let widened = converted.clone().into_f32_weights();
        assert_eq!(widened.dtype(), DType::F32);
        assert_eq!(widened.params.len(), f32_model.params.len());
        let v = f32_model.config.vocab_size;

        // Bounds below are in units of the rounding of the weights themselves (the converted model against
        // the f32 one): 8-bit activations move the logits by about as much as 8-bit weights do (llama.cpp
        // makes the same trade).
        let want = full_logits(&widened, &TOKENS);
        let original = full_logits(&f32_model, &TOKENS);
        let weight_rounding = relative_gap(&want, &original);
        assert!(weight_rounding > 0.0, "{dtype}: nothing was rounded");
        let activation_rounding = if dtype.is_block_quantized() { 2.0 * weight_rounding } else { 1e-5 };

        // Many rows (a whole window): widened tiles and the f32 GEMM — the same products up to summation
        // order — except block types where the integer products take every row count (AVX-512 VNNI), which
        // round the activations to Q8_0 as decoding does.
        let integer_rows = dtype.is_block_quantized() && lushan_kernels::weights::INTEGER_MANY_ROWS;
        let got = full_logits(&converted, &TOKENS);
        let full_gap = relative_gap(&got, &want);
        let allowed = if integer_rows { activation_rounding } else { 1e-5 };
        assert!(full_gap < allowed, "{dtype} full forward: {full_gap} ≥ {allowed}");

        // One row at a time (decoding): 16-bit floats are widened exactly; block types also round the
        // activations to Q8_0 for integer products, which moves the logits by far less than the weights' rounding.
        let mut state = DecodeState::new(&converted, 4);
        converted.decode(&mut state, &TOKENS[..1]).unwrap();
        let mut worst = 0.0f32;
        let mut worst_vs_full = 0.0f32;
        for (pos, &tok) in TOKENS.iter().enumerate().skip(1) {
            let logits = converted.decode(&mut state, &[tok]).unwrap();
            worst = worst.max(relative_gap(logits, &want[pos * v..(pos + 1) * v]));
            worst_vs_full = worst_vs_full.max(relative_gap(logits, &got[pos * v..(pos + 1) * v]));
        }
        assert!(worst < activation_rounding, "{dtype} cached decoding: {worst} ≥ {activation_rounding}");
        if integer_rows {
            // The same integer products row by row: only the attention's summation order differs.
            assert!(worst_vs_full < 1e-5, "{dtype} cached decoding vs full forward: {worst_vs_full}");
        }

        // Memory: the matrices take their type's bits.
        let ratio = converted.weight_bytes() as f64 / widened.weight_bytes() as f64;
        assert!(ratio < dtype.bits_per_weight() / 32.0 + 0.1, "{dtype}: {ratio} of the f32 bytes");
    }
}

#[test]
fn batched_decoding_equals_each_sequence_alone_for_every_type() {
    for dtype in DType::ALL {
        let model = model().with_dtype(dtype).unwrap();
        let prompts: [&[u32]; 3] = [&[1, 2, 3], &[7], &[40, 41]];
        let mut alone: Vec<DecodeState> = prompts.iter().map(|_| DecodeState::new(&model, 8)).collect();
        for (s, p) in alone.iter_mut().zip(prompts) {
            model.decode(s, p).unwrap();
        }
        let mut batched = alone.clone();
        let mut scratch = BatchScratch::new(&model, 3);
        for step in 0..3u32 {
            let tokens: Vec<u32> = (0..3).map(|s| (step * 13 + s * 5) % 50).collect();
            for (s, &t) in alone.iter_mut().zip(&tokens) {
                model.decode(s, &[t]).unwrap();
            }
            let mut refs: Vec<&mut DecodeState> = batched.iter_mut().collect();
            model.decode_batch(&mut refs, &tokens, &mut scratch).unwrap();
            for s in 0..3 {
                assert_eq!(batched[s].logits(), alone[s].logits(), "{dtype} step {step} sequence {s}");
            }
        }
    }
}

#[test]
fn a_converted_model_refuses_training_and_rows_that_are_not_whole_blocks() {
    let converted = model().with_dtype(DType::Q8_0).unwrap();
    let mut acts = Activations::new(&converted.config, 1, 4).unwrap();
    let err = converted.forward(&mut acts, &[1, 2, 3, 4], Some(&[2, 3, 4, 5]), Mode::Train { dropout_seed: 1 });
    assert!(matches!(err, Err(ModelError::NeedsF32Weights { job: "training", dtype: "q8_0" })), "{err:?}");
    // Evaluation with targets works (the loss of the converted weights).
    assert!(converted.forward(&mut acts, &[1, 2, 3, 4], Some(&[2, 3, 4, 5]), Mode::Eval).unwrap().is_some());

    // n_embd 48: rows of 48 weights are not whole blocks of 32; the error names the first such tensor.
    let odd = Gpt::new(ModelConfig::new(50, 16, 1, 2, 48), 1).unwrap();
    for dtype in [DType::Q8_0, DType::Q4_0] {
        let err = odd.clone().with_dtype(dtype).unwrap_err().to_string();
        assert!(err.contains("wte.weight") && err.contains("48") && err.contains(dtype.name()), "{err}");
    }
    // 16-bit floats have no blocks.
    assert_eq!(odd.with_dtype(DType::Bf16).unwrap().dtype(), DType::Bf16);
}

#[test]
fn converting_to_f32_or_to_the_same_type_changes_nothing() {
    let f32_model = model();
    let same = f32_model.clone().with_dtype(DType::F32).unwrap();
    assert_eq!(same.params, f32_model.params);
    let q8 = f32_model.with_dtype(DType::Q8_0).unwrap();
    let again = q8.clone().with_dtype(DType::Q8_0).unwrap();
    assert_eq!(again.packed.as_ref().map(|p| &p.wte), q8.packed.as_ref().map(|p| &p.wte));
}

#[test]
fn loading_a_checkpoint_as_a_type_equals_converting_the_loaded_model() {
    use lushan_model::checkpoint::{load_model_dir_as, save_model_dir};
    let f32_model = model();
    let dir = tempfile::tempdir().unwrap();
    save_model_dir(dir.path(), &f32_model.config, &f32_model.params).unwrap();
    for dtype in DType::ALL {
        let (config, loaded) = load_model_dir_as(dir.path(), dtype).unwrap();
        let streamed = Gpt::from_parts(config, loaded.params, loaded.packed).unwrap();
        let converted = f32_model.clone().with_dtype(dtype).unwrap();
        assert_eq!(streamed.params, converted.params, "{dtype}");
        assert_eq!(streamed.layout, converted.layout, "{dtype}");
        let (a, b) = (streamed.packed.as_ref(), converted.packed.as_ref());
        assert_eq!(a.map(|p| &p.wte), b.map(|p| &p.wte), "{dtype}");
        assert_eq!(a.map(|p| &p.layers), b.map(|p| &p.layers), "{dtype}");
        assert_eq!(full_logits(&streamed, &TOKENS), full_logits(&converted, &TOKENS), "{dtype}");
    }
}
