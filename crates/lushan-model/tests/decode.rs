//! Cached decoding must give the same logits as a full forward pass (DESIGN.md §5).

#![allow(clippy::unwrap_used)] // tests may unwrap

use lushan_model::{Activations, DecodeState, Generator, Gpt, Mode, ModelConfig, PositionEncoding, Sampling};

fn tiny(position_encoding: PositionEncoding) -> Gpt {
    let mut cfg = ModelConfig::new(37, 12, 2, 2, 16);
    cfg.position_encoding = position_encoding;
    let mut model = Gpt::new(cfg, 5).unwrap();
    // Larger weights than GPT-2 init so positions and attention matter to the logits.
    model.params.iter_mut().for_each(|p| *p *= 8.0);
    model
}

fn full_forward_logits(model: &Gpt, tokens: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, 1, tokens.len()).unwrap();
    model.forward(&mut acts, tokens, None, Mode::Eval).unwrap();
    acts.logits
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: index {i}: {x} vs {y}");
    }
}

#[test]
fn cached_decode_equals_full_forward_at_every_position() {
    for pe in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let model = tiny(pe);
        let v = model.config.vocab_size;
        let tokens: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 37).collect();
        let full = full_forward_logits(&model, &tokens);
        // Prefill 5, then one at a time.
        let mut state = DecodeState::new(&model, 4); // chunking below the prompt length is exercised too
        let logits = model.decode(&mut state, &tokens[..5]).unwrap().to_vec();
        assert_close(&logits, &full[4 * v..5 * v], 1e-5, "prefill");
        for pos in 5..12 {
            let logits = model.decode(&mut state, &tokens[pos..pos + 1]).unwrap();
            assert_close(logits, &full[pos * v..(pos + 1) * v], 1e-5, &format!("{pe:?} step {pos}"));
        }
        assert_eq!(state.cache.len(), 12);
        let err = model.decode(&mut state, &[1]).unwrap_err().to_string();
        assert!(err.contains("longer than the model's context"), "{err}");
    }
}

#[test]
fn generation_is_greedy_consistent_and_slides_when_the_context_fills() {
    let model = tiny(PositionEncoding::Learned);
    let prompt = [1u32, 2, 3];
    let mut g = Generator::new(&model, &prompt, Sampling::greedy(), 0, 30).unwrap();
    let mut out = Vec::new();
    while let Some(t) = g.next_token().unwrap() {
        out.push(t);
    }
    assert_eq!(out.len(), 30);
    // Greedy token k must be the argmax of a full forward over the window the model saw.
    let mut context: Vec<u32> = prompt.to_vec();
    for (k, &tok) in out.iter().enumerate() {
        let full = full_forward_logits(&model, &context);
        let v = model.config.vocab_size;
        let last = &full[(context.len() - 1) * v..];
        let best = lushan_model::sampling::argmax(last) as u32;
        assert_eq!(tok, best, "step {k}");
        context.push(tok);
        if context.len() > model.config.block_size {
            // The generator slides to the last block_size/2 tokens.
            let keep = model.config.block_size / 2;
            context.drain(..context.len() - keep);
        }
    }
}

#[test]
fn seeds_reproduce_and_max_tokens_is_respected() {
    let model = tiny(PositionEncoding::Learned);
    let run = |seed| {
        let mut g =
            Generator::new(&model, &[4, 5], Sampling { top_k: Some(5), ..Sampling::default() }, seed, 20).unwrap();
        std::iter::from_fn(|| g.next_token().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    assert_eq!(run(3).len(), 20);
    assert_ne!(run(3), run(4));
    let mut g = Generator::new(&model, &[4], Sampling::greedy(), 0, 0).unwrap();
    assert_eq!(g.next_token().unwrap(), None);
}

#[test]
fn bad_prompts_are_errors() {
    let model = tiny(PositionEncoding::Learned);
    assert!(Generator::new(&model, &[], Sampling::greedy(), 0, 5).is_err());
    let e = Generator::new(&model, &[99], Sampling::greedy(), 0, 5).unwrap_err().to_string();
    assert!(e.contains("99") && e.contains("37"), "{e}");
    let long: Vec<u32> = (0..40).map(|i| i % 37).collect();
    let g = Generator::new(&model, &long, Sampling::greedy(), 0, 5).unwrap();
    assert!(g.prompt_cropped());
}

#[test]
fn batched_decode_is_bit_identical_to_decoding_each_sequence_alone() {
    use lushan_model::BatchScratch;
    for pe in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let model = tiny(pe);
        // Five sequences at different positions (prompts of different lengths), some joining late.
        let prompts: Vec<Vec<u32>> =
            (0..5).map(|s| (0..(1 + s)).map(|i| ((i * 5 + s * 3) % 37) as u32).collect()).collect();
        let mut alone: Vec<DecodeState> = prompts.iter().map(|_| DecodeState::new(&model, 4)).collect();
        let mut batched = alone.clone();
        for ((a, b), p) in alone.iter_mut().zip(batched.iter_mut()).zip(&prompts) {
            model.decode(a, p).unwrap();
            model.decode(b, p).unwrap();
        }
        let mut scratch = BatchScratch::new(&model, 5);
        for step in 0..4u32 {
            let tokens: Vec<u32> = (0..5).map(|s| (step * 11 + s * 7) % 37).collect();
            for (a, &t) in alone.iter_mut().zip(&tokens) {
                model.decode(a, &[t]).unwrap();
            }
            // A changing subset: sequence 0 sits out odd steps, as a finished request would.
            let take: Vec<usize> = (0..5).filter(|&s| s != 0 || step % 2 == 0).collect();
            let mut refs: Vec<&mut DecodeState> =
                batched.iter_mut().enumerate().filter(|(s, _)| take.contains(s)).map(|(_, b)| b).collect();
            let fed: Vec<u32> = take.iter().map(|&s| tokens[s]).collect();
            model.decode_batch(&mut refs, &fed, &mut scratch).unwrap();
            for &s in &take {
                assert_eq!(batched[s].logits(), alone[s].logits(), "{pe:?} step {step} sequence {s}");
                assert_eq!(batched[s].cache.len(), alone[s].cache.len());
            }
            if step % 2 == 1 {
                // Keep sequence 0 in step with its twin for the next round.
                batched[0] = alone[0].clone();
            }
        }
        // Errors: mismatched lengths, too many rows, a full context.
        let mut refs: Vec<&mut DecodeState> = batched.iter_mut().collect();
        assert!(model.decode_batch(&mut refs, &[1, 2], &mut scratch).is_err());
        let mut small = BatchScratch::new(&model, 2);
        assert!(model.decode_batch(&mut refs, &[1, 2, 3, 4, 5], &mut small).is_err());
        let mut full = DecodeState::new(&model, 16);
        model.decode(&mut full, &[1; 12]).unwrap();
        let err = model.decode_batch(&mut [&mut full], &[1], &mut scratch).unwrap_err().to_string();
        assert!(err.contains("longer than the model's context"), "{err}");
    }
}

/// Where the many-row tiles are compiled in (AVX-512), a prompt's products use the matrix-vector kernel's
/// arithmetic and the cached attention is computed row by row, so prefilling a prompt at once gives, bit for
/// bit, the logits of feeding it one token at a time, for f32 and 16-bit weights (bf16 and f16 on a CPU with
/// AMX excepted: their prompts round the activations, and f16 weights, to bf16). Elsewhere the prompt takes the packed GEMM and the
/// two agree to rounding.
#[test]
fn a_prompt_prefilled_at_once_gives_the_logits_of_feeding_it_token_by_token() {
    let mut cfg = ModelConfig::new(41, 24, 2, 3, 48);
    cfg.position_encoding = PositionEncoding::Learned;
    let mut f32_model = Gpt::new(cfg, 9).unwrap();
    f32_model.params.iter_mut().for_each(|p| *p *= 4.0);
    let tokens: Vec<u32> = (0..20).map(|i| (i * 11 + 5) % 41).collect();
    for dtype in [lushan_model::DType::F32, lushan_model::DType::F16, lushan_model::DType::Bf16] {
        let model = f32_model.clone().with_dtype(dtype).unwrap();
        let mut at_once = DecodeState::new(&model, tokens.len());
        let prefilled = model.decode(&mut at_once, &tokens).unwrap().to_vec();
        let mut one_by_one = DecodeState::new(&model, 1);
        let mut fed = Vec::new();
        for &token in &tokens {
            fed = model.decode(&mut one_by_one, &[token]).unwrap().to_vec();
        }
        // bf16 and f16 prompts on AMX round the activations (and f16 weights) to bf16 (each relative error
        // ≤ 2⁻⁹); token by token they stay f32 — as PyTorch's and llama.cpp's bf16 products round them too.
        let amx_rounds =
            matches!(dtype, lushan_model::DType::Bf16 | lushan_model::DType::F16) && lushan_kernels::amx::available();
        if amx_rounds {
            let worst = prefilled.iter().zip(&fed).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = fed.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
            assert!(prefilled != fed, "{dtype:?} on AMX: the prompt took the rounded path");
            assert!(worst <= 0.02 * scale, "{dtype:?} on AMX: prefill differs by {worst} (logits up to {scale})");
        } else if lushan_kernels::dot_gemm::TILED {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&prefilled), bits(&fed), "{dtype:?}: prefill ≠ token by token");
        } else {
            assert_close(&prefilled, &fed, 1e-5, "prefill vs token by token");
        }
    }
}

/// A generator run in a reused state (reset first) gives exactly what a fresh one gives; a state made for
/// another shape is refused by name.
#[test]
fn a_reused_state_generates_as_a_fresh_one_and_another_shape_is_refused() {
    let model = tiny(PositionEncoding::Learned);
    let run = |g: &mut Generator| std::iter::from_fn(|| g.next_token().unwrap()).collect::<Vec<u32>>();
    let mut fresh = Generator::new(&model, &[3, 1, 4], Sampling::greedy(), 0, 9).unwrap();
    let want = run(&mut fresh);
    // A state left holding a longer, different generation.
    let mut other = Generator::new(&model, &[9, 9, 8, 7, 6, 5], Sampling::greedy(), 0, 12).unwrap();
    run(&mut other);
    let mut reused = Generator::with_state(&model, other.into_state(), &[3, 1, 4], Sampling::greedy(), 0, 9).unwrap();
    assert_eq!(run(&mut reused), want);
    assert_eq!(reused.logits(), fresh.logits());

    let mut cfg = model.config.clone();
    cfg.n_layer += 1;
    let bigger = Gpt::new(cfg, 3).unwrap();
    let err = Generator::with_state(&bigger, reused.into_state(), &[1], Sampling::greedy(), 0, 2).unwrap_err();
    assert!(err.to_string().contains("state") && err.to_string().contains("another shape"), "{err}");
}
