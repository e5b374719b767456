#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
//! `explain` reads the model's own numbers: attention equals `transformers`' `output_attentions`, next-token
//! probabilities equal the softmax of cached decoding's logits, the logit lens ends on the model's output
//! and its earlier layers are `ln_f` + `wte` applied to the residual streams, the sampling view replays
//! `Generator`, and embedding neighbours and the PCA agree with brute-force computations here.

use lushan_model::checkpoint::load_model_dir;
use lushan_model::inspect::{ExplainOptions, Explanation, explain};
use lushan_model::{Activations, DecodeState, Generator, Gpt, Mode, ModelConfig, ModelError, Sampling};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// The `transformers` fixture of tests/hf_parity.rs: V=96, n_positions=48, C=48, L=2, NH=4.
struct Fixture {
    model: Gpt,
    /// The 20 ids `transformers` ran.
    input_ids: Vec<u32>,
    /// `output_attentions=True`: (L, B=1, NH, T, T).
    attentions: Vec<f32>,
}

fn fixture() -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_gpt2_tiny");
    let (cfg, params) = load_model_dir(&dir).unwrap();
    let model = Gpt::from_params(cfg, params).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let words = |name: &str, dtype: Dtype| {
        let tensor = expected.tensor(name).unwrap();
        assert_eq!(tensor.dtype(), dtype, "{name}");
        tensor.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]).collect::<Vec<_>>()
    };
    let input_ids: Vec<u32> =
        words("input_ids", Dtype::I32).into_iter().map(|b| u32::try_from(i32::from_le_bytes(b)).unwrap()).collect();
    let attentions: Vec<f32> = words("attentions", Dtype::F32).into_iter().map(f32::from_le_bytes).collect();
    let cfg = &model.config;
    let t = input_ids.len();
    assert_eq!(attentions.len(), cfg.n_layer * cfg.n_head * t * t);
    Fixture { model, input_ids, attentions }
}

/// A randomly initialised model with a larger vocabulary and context than the fixture, with weights wide
/// enough that positions and layers change the predictions.
fn random_model() -> Gpt {
    let mut model = Gpt::new(ModelConfig::new(300, 128, 2, 2, 32), 9).unwrap();
    model.params.iter_mut().for_each(|p| *p *= 6.0);
    model
}

fn token_text(id: u32) -> String {
    format!("<{id}>")
}

fn run(model: &Gpt, prompt: &[u32], options: &ExplainOptions) -> Explanation {
    explain(model, prompt, &token_text, options).unwrap()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&z| (z as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Token ids sorted by probability, most likely first, ties by lower id.
fn ranked_ids(probs: &[f64]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..probs.len() as u32).collect();
    ids.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
    ids
}

fn decode_logits(model: &Gpt, prefix: &[u32]) -> Vec<f32> {
    let mut state = DecodeState::new(model, 256);
    model.decode(&mut state, prefix).unwrap().to_vec()
}

/// The logit lens of one residual stream `(T, C)`, computed here in f64: `softmax(layernorm_f(x) · wteᵀ)`.
fn brute_force_lens(model: &Gpt, stream: &[f32]) -> Vec<Vec<f64>> {
    let cfg = &model.config;
    let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon as f64);
    let p = model.layout.split(&model.params);
    stream
        .chunks_exact(c)
        .map(|x| {
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            let normed: Vec<f64> = (0..c)
                .map(|i| (x[i] as f64 - mean) / (var + eps).sqrt() * p.lnf_w[i] as f64 + p.lnf_b[i] as f64)
                .collect();
            let logits: Vec<f32> = p
                .wte
                .chunks_exact(c)
                .map(|row| row.iter().zip(&normed).map(|(&w, &n)| w as f64 * n).sum::<f64>() as f32)
                .collect();
            softmax(&logits)
        })
        .collect()
}

fn assert_attention_is_causal_and_normalised(explanation: &Explanation, t: usize) {
    for (l, layer) in explanation.attention.probs.iter().enumerate() {
        for (h, head) in layer.iter().enumerate() {
            assert_eq!(head.len(), t);
            for (q, row) in head.iter().enumerate() {
                assert_eq!(row.len(), t);
                let sum: f64 = row.iter().map(|&p| p as f64).sum();
                assert!((sum - 1.0).abs() <= 1e-5, "layer {l} head {h} row {q} sums to {sum}");
                assert!(row[q + 1..].iter().all(|&p| p == 0.0), "layer {l} head {h} row {q} looks ahead");
                assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
            }
        }
    }
}

#[test]
fn attention_equals_transformers_output_attentions() {
    let fx = fixture();
    let cfg = &fx.model.config;
    let t = fx.input_ids.len();
    let explanation = run(&fx.model, &fx.input_ids, &ExplainOptions::default());
    assert_eq!(explanation.attention.probs.len(), cfg.n_layer);
    let mut worst = 0.0f32;
    for (l, layer) in explanation.attention.probs.iter().enumerate() {
        assert_eq!(layer.len(), cfg.n_head);
        for (h, head) in layer.iter().enumerate() {
            for (q, row) in head.iter().enumerate() {
                for (k, &p) in row.iter().enumerate() {
                    let want = fx.attentions[((l * cfg.n_head + h) * t + q) * t + k];
                    assert!((p - want).abs() <= 1e-4, "layer {l} head {h} [{q}][{k}]: {p} vs transformers {want}");
                    worst = worst.max((p - want).abs());
                }
            }
        }
    }
    println!("max |attention - transformers| = {worst:.3e}");
    assert_attention_is_causal_and_normalised(&explanation, t);
}

#[test]
fn summary_and_tokens_describe_the_model_and_the_prompt() {
    let fx = fixture();
    let explanation = run(&fx.model, &fx.input_ids, &ExplainOptions::default());
    let summary = &explanation.model;
    assert_eq!(
        (summary.n_layer, summary.n_head, summary.n_embd, summary.block_size, summary.vocab_size),
        (2, 4, 48, 48, 96)
    );
    let ids: Vec<u32> = explanation.tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, fx.input_ids);
    assert!(explanation.tokens.iter().all(|t| t.text == token_text(t.id)));
    assert_eq!(explanation.next_token.len(), fx.input_ids.len());
    assert!(explanation.sampling.is_none() && explanation.embeddings.is_none());
    // What the CLI prints and the server returns survives JSON.
    let json = serde_json::to_string(&explanation).unwrap();
    assert_eq!(serde_json::from_str::<Explanation>(&json).unwrap(), explanation);
}

#[test]
fn next_token_probabilities_are_the_softmax_of_cached_decoding() {
    let fx = fixture();
    let v = fx.model.config.vocab_size;
    let t = fx.input_ids.len();
    // More alternatives than the vocabulary: every token is listed, so the whole distribution is checked.
    let everything = run(&fx.model, &fx.input_ids, &ExplainOptions { top_k: 1000, ..ExplainOptions::default() });
    let top5 = run(&fx.model, &fx.input_ids, &ExplainOptions::default());
    for position in [0, 3, 11, t - 1] {
        let probs = softmax(&decode_logits(&fx.model, &fx.input_ids[..=position]));
        let prediction = &everything.next_token[position];
        assert_eq!(prediction.position, position);
        assert_eq!(prediction.top.len(), v);
        for candidate in &prediction.top {
            let want = probs[candidate.id as usize];
            assert!((candidate.prob as f64 - want).abs() <= 1e-5, "position {position}: {candidate:?} vs {want}");
            assert_eq!(candidate.text, token_text(candidate.id));
        }
        // Listed most likely first, ranks 1-based and never decreasing.
        assert!(prediction.top.windows(2).all(|w| w[0].prob >= w[1].prob && w[0].rank <= w[1].rank));
        assert_eq!(prediction.top[0].rank, 1);
        let entropy: f64 = -probs.iter().filter(|&&p| p > 0.0).map(|p| p * p.log2()).sum::<f64>();
        assert!((prediction.entropy_bits as f64 - entropy).abs() <= 1e-4, "{} vs {entropy}", prediction.entropy_bits);
        assert!(prediction.entropy_bits > 0.0 && (prediction.entropy_bits as f64) < (v as f64).log2());
        // The default lists the first five of the same order.
        let first5: Vec<u32> = top5.next_token[position].top.iter().map(|c| c.id).collect();
        let all: Vec<u32> = prediction.top.iter().map(|c| c.id).collect();
        assert_eq!(first5, all[..5]);
        assert_eq!(all[..5], ranked_ids(&probs)[..5], "position {position}");

        match fx.input_ids.get(position + 1) {
            Some(&next) => {
                let actual = prediction.actual.as_ref().unwrap();
                assert_eq!(actual.id, next);
                assert!((actual.prob as f64 - probs[next as usize]).abs() <= 1e-5);
                let listed = prediction.top.iter().find(|c| c.id == next).unwrap();
                assert_eq!((actual.rank, actual.prob), (listed.rank, listed.prob));
                let strictly_more_likely = prediction.top.iter().filter(|c| c.prob > actual.prob).count();
                assert_eq!(actual.rank, 1 + strictly_more_likely);
                let surprisal = prediction.surprisal_bits.unwrap();
                assert!((surprisal - -actual.prob.log2()).abs() <= 1e-4 * surprisal.max(1.0));
            }
            None => assert!(prediction.actual.is_none() && prediction.surprisal_bits.is_none()),
        }
    }
}

#[test]
fn last_lens_layer_is_the_next_token_distribution() {
    let fx = fixture();
    let explanation = run(&fx.model, &fx.input_ids, &ExplainOptions { top_k: 7, ..ExplainOptions::default() });
    let lens = &explanation.logit_lens.layers;
    let labels: Vec<&str> = lens.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["embed", "layer 1", "layer 2"]);
    let last = lens.last().unwrap();
    assert_eq!(last.positions.len(), explanation.next_token.len());
    for (cell, prediction) in last.positions.iter().zip(&explanation.next_token) {
        let ids = |c: &[lushan_model::inspect::Candidate]| c.iter().map(|c| (c.id, c.rank)).collect::<Vec<_>>();
        assert_eq!(ids(&cell.top), ids(&prediction.top));
        for (a, b) in cell.top.iter().zip(&prediction.top) {
            assert!((a.prob - b.prob).abs() <= 1e-6);
        }
        assert_eq!(cell.top.len(), 7);
        assert!((cell.final_token_prob - prediction.top[0].prob).abs() <= 1e-6);
    }
}

/// Earlier lens layers against `ln_f` and `wte` applied here, in f64, to the forward pass's residual
/// streams; on the fixture and on a model whose 100-token prompt spans several chunks of positions.
#[test]
fn lens_layers_read_each_residual_stream_through_the_output_head() {
    let random = random_model();
    let long_prompt: Vec<u32> = (0..100).map(|i| (i * 37 + 11) % 300).collect();
    let fx = fixture();
    for (model, prompt) in [(&fx.model, &fx.input_ids), (&random, &long_prompt)] {
        let explanation = run(model, prompt, &ExplainOptions { top_k: 4, ..ExplainOptions::default() });
        let mut acts = Activations::new(&model.config, 1, prompt.len()).unwrap();
        model.forward(&mut acts, prompt, None, Mode::Eval).unwrap();
        let streams = [&acts.encoded, &acts.layers[0].residual3, &acts.layers[1].residual3];
        assert_eq!(explanation.logit_lens.layers.len(), streams.len());
        for (layer, (lens, stream)) in explanation.logit_lens.layers.iter().zip(streams).enumerate() {
            let want = brute_force_lens(model, stream);
            assert_eq!(lens.positions.len(), prompt.len());
            for (position, (cell, probs)) in lens.positions.iter().zip(&want).enumerate() {
                let final_top1 = explanation.next_token[position].top[0].id;
                let got: Vec<u32> = cell.top.iter().map(|c| c.id).collect();
                assert_eq!(got, ranked_ids(probs)[..4], "layer {layer} position {position}");
                for candidate in &cell.top {
                    assert!((candidate.prob as f64 - probs[candidate.id as usize]).abs() <= 1e-5);
                }
                let want_final = probs[final_top1 as usize];
                assert!(
                    (cell.final_token_prob as f64 - want_final).abs() <= 1e-5,
                    "layer {layer} position {position}: {} vs {want_final}",
                    cell.final_token_prob
                );
            }
        }
        // The streams differ, so the lens must too (a lens reading one stream thrice would pass the above
        // only if the test's streams were also the same).
        let first_tops =
            |l: usize| -> Vec<u32> { explanation.logit_lens.layers[l].positions.iter().map(|c| c.top[0].id).collect() };
        assert_ne!(first_tops(0), first_tops(2));
        assert_attention_is_causal_and_normalised(&explanation, prompt.len());
    }
}

#[test]
fn sampling_view_replays_the_generator() {
    let fx = fixture();
    let prompt = &fx.input_ids[..8];
    let samplings = [
        Sampling { temperature: 0.8, top_k: Some(5), top_p: Some(0.9), repetition_penalty: 1.0 },
        Sampling { temperature: 1.0, top_k: None, top_p: None, repetition_penalty: 1.3 },
        Sampling::greedy(),
    ];
    for sampling in samplings {
        let seed = 1234;
        let options =
            ExplainOptions { top_k: 10, generate: 12, sampling: sampling.clone(), seed, ..Default::default() };
        let view = run(&fx.model, prompt, &options).sampling.unwrap();
        assert_eq!(
            (view.temperature, view.top_k, view.top_p, view.repetition_penalty, view.seed),
            (sampling.temperature, sampling.top_k, sampling.top_p, sampling.repetition_penalty, seed)
        );

        let mut generator = Generator::new(&fx.model, prompt, sampling.clone(), seed, 12).unwrap();
        let mut generated = Vec::new();
        while let Some(token) = generator.next_token().unwrap() {
            generated.push(token);
        }
        let chosen: Vec<u32> = view.steps.iter().map(|s| s.chosen.id).collect();
        assert_eq!(chosen, generated, "{sampling:?}");

        for (j, step) in view.steps.iter().enumerate() {
            // Raw probabilities: softmax of the logits the token was drawn from.
            let prefix: Vec<u32> = prompt.iter().chain(&generated[..j]).copied().collect();
            let raw = softmax(&decode_logits(&fx.model, &prefix));
            let ids: Vec<u32> = step.candidates.iter().map(|c| c.id).collect();
            assert_eq!(ids, ranked_ids(&raw)[..10], "{sampling:?} step {j}");
            for candidate in &step.candidates {
                assert!((candidate.raw_prob as f64 - raw[candidate.id as usize]).abs() <= 1e-5);
                assert_eq!(candidate.text, token_text(candidate.id));
            }
            let kept: Vec<_> = step.candidates.iter().filter(|c| c.final_prob > 0.0).collect();
            assert!(step.chosen.prob > 0.0 && step.chosen.rank >= 1 && step.chosen.rank <= step.kept);
            if let Some(listed) = step.candidates.iter().find(|c| c.id == step.chosen.id) {
                assert_eq!(listed.final_prob, step.chosen.prob);
            }
            match (sampling.top_k, sampling.temperature) {
                (Some(k), _) => {
                    // Temperature keeps the order, so top-k keeps (a subset of) the k most likely raw tokens,
                    // all listed among the 10 candidates: their final probabilities make up the whole mass.
                    assert!(step.kept <= k && kept.len() == step.kept, "{step:?}");
                    let mass: f64 = kept.iter().map(|c| c.final_prob as f64).sum();
                    assert!((mass - 1.0).abs() <= 1e-5, "step {j}: kept mass {mass}");
                    assert!(step.candidates[k..].iter().all(|c| c.final_prob == 0.0), "{step:?}");
                }
                (None, 0.0) => {
                    assert_eq!((step.kept, step.chosen.prob, step.chosen.rank), (1, 1.0, 1));
                    assert_eq!(step.chosen.id, ranked_ids(&raw)[0]);
                }
                (None, _) => assert!(step.kept >= kept.len() && step.kept <= fx.model.config.vocab_size),
            }
        }
    }
}

#[test]
fn sampling_stops_where_the_context_is_full() {
    let fx = fixture();
    let block = fx.model.config.block_size;
    let prompt: Vec<u32> = (0..block as u32 - 4).map(|i| fx.input_ids[i as usize % fx.input_ids.len()]).collect();
    let sampling = Sampling { temperature: 0.9, ..Sampling::default() };
    let options = ExplainOptions { generate: 10, sampling: sampling.clone(), seed: 5, ..Default::default() };
    let view = run(&fx.model, &prompt, &options).sampling.unwrap();
    let mut generator = Generator::new(&fx.model, &prompt, sampling, 5, 4).unwrap();
    let generated: Vec<u32> = std::iter::from_fn(|| generator.next_token().unwrap()).collect();
    assert_eq!(view.steps.iter().map(|s| s.chosen.id).collect::<Vec<_>>(), generated);
    assert_eq!(generated.len(), 4);

    let full: Vec<u32> = (0..block).map(|i| fx.input_ids[i % fx.input_ids.len()]).collect();
    assert!(run(&fx.model, &full, &options).sampling.unwrap().steps.is_empty());
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn embedding_neighbours_are_the_most_cosine_similar_rows_of_wte() {
    let fx = fixture();
    let (v, c) = (fx.model.config.vocab_size, fx.model.config.n_embd);
    let wte = &fx.model.layout.split(&fx.model.params).wte[..v * c];
    let row = |id: u32| &wte[id as usize * c..(id as usize + 1) * c];
    let queries = vec![5u32, 17, 60];
    let options = ExplainOptions { neighbors: queries.clone(), neighbor_count: 6, ..ExplainOptions::default() };
    let view = run(&fx.model, &fx.input_ids[..3], &options).embeddings.unwrap();
    assert_eq!(view.queries.len(), queries.len());
    for (neighbours, &query) in view.queries.iter().zip(&queries) {
        assert_eq!((neighbours.token.id, neighbours.token.text.as_str()), (query, token_text(query).as_str()));
        let mut want: Vec<(u32, f64)> =
            (0..v as u32).filter(|&id| id != query).map(|id| (id, cosine(row(query), row(id)))).collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(neighbours.nearest.len(), 6);
        for (got, (id, cos)) in neighbours.nearest.iter().zip(&want) {
            assert_eq!(got.id, *id, "query {query}: {:?}", neighbours.nearest);
            assert!((got.cosine as f64 - cos).abs() <= 1e-6);
            assert_eq!(got.text, token_text(got.id));
        }
    }

    // The projected set: the queries first, then every neighbour, each token once.
    let mut want_ids = queries.clone();
    for id in view.queries.iter().flat_map(|q| q.nearest.iter().map(|n| n.id)) {
        if !want_ids.contains(&id) {
            want_ids.push(id);
        }
    }
    let ids: Vec<u32> = view.pca.iter().map(|p| p.id).collect();
    assert_eq!(ids, want_ids);
    assert!(view.pca.iter().all(|p| p.query == queries.contains(&p.id)));
}

#[test]
fn pca_coordinates_carry_the_variance_they_claim() {
    let fx = fixture();
    let c = fx.model.config.n_embd;
    let wte = fx.model.layout.split(&fx.model.params).wte;
    let options = ExplainOptions { neighbors: vec![3, 40, 41, 90], neighbor_count: 8, ..ExplainOptions::default() };
    let view = run(&fx.model, &fx.input_ids[..2], &options).embeddings.unwrap();
    let [first, second] = view.explained_variance;
    assert!(
        (0.0..=1.0).contains(&first)
            && (0.0..=1.0).contains(&second)
            && first >= second
            && first + second <= 1.0 + 1e-6
    );
    assert!(second > 0.0, "{:?}", view.explained_variance);

    // The projected embeddings, centred, in f64.
    let n = view.pca.len();
    let mut points: Vec<Vec<f64>> =
        view.pca.iter().map(|p| wte[p.id as usize * c..][..c].iter().map(|&x| x as f64).collect()).collect();
    let mean: Vec<f64> = (0..c).map(|k| points.iter().map(|p| p[k]).sum::<f64>() / n as f64).collect();
    points.iter_mut().for_each(|p| p.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m));
    let total: f64 = points.iter().flatten().map(|x| x * x).sum();

    let xs: Vec<f64> = view.pca.iter().map(|p| p.x as f64).collect();
    let ys: Vec<f64> = view.pca.iter().map(|p| p.y as f64).collect();
    let square_sum = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
    assert!((square_sum(&xs) / total - first as f64).abs() <= 1e-4, "{} vs {first}", square_sum(&xs) / total);
    assert!((square_sum(&ys) / total - second as f64).abs() <= 1e-4);
    let cross: f64 = xs.iter().zip(&ys).map(|(x, y)| x * y).sum();
    assert!(cross.abs() <= 1e-4 * total, "the two coordinates are correlated: {cross}");

    // Each coordinate is the projection on a unit direction `d` with `Xᵀ·X·d = λ·d`, `λ = Σ coord²`:
    // then `d = Xᵀ·coords / λ` is a unit vector and `X·d` gives the coordinates back.
    for coords in [&xs, &ys] {
        let lambda = square_sum(coords);
        let direction: Vec<f64> =
            (0..c).map(|k| points.iter().zip(coords.iter()).map(|(p, y)| p[k] * y).sum::<f64>() / lambda).collect();
        assert!((square_sum(&direction) - 1.0).abs() <= 1e-4, "{}", square_sum(&direction));
        for (p, y) in points.iter().zip(coords.iter()) {
            let projected: f64 = p.iter().zip(&direction).map(|(a, b)| a * b).sum();
            assert!((projected - y).abs() <= 1e-4 * lambda.sqrt());
        }
    }
    // And no direction carries more than the first: the Rayleigh quotient of power iteration stays below it.
    let mut d: Vec<f64> = (0..c).map(|k| 1.0 + k as f64 * 0.01).collect();
    let mut rayleigh = 0.0;
    for _ in 0..300 {
        let norm = square_sum(&d).sqrt();
        d.iter_mut().for_each(|x| *x /= norm);
        let projected: Vec<f64> = points.iter().map(|p| p.iter().zip(&d).map(|(a, b)| a * b).sum()).collect();
        rayleigh = square_sum(&projected);
        d = (0..c).map(|k| points.iter().zip(&projected).map(|(p, y)| p[k] * y).sum()).collect();
    }
    assert!(rayleigh / total <= first as f64 + 1e-4, "{} > {first}", rayleigh / total);
    assert!(rayleigh / total >= first as f64 - 1e-2, "power iteration found {} < {first}", rayleigh / total);
}

#[test]
fn invalid_requests_are_errors_naming_what_was_wrong() {
    let fx = fixture();
    let block = fx.model.config.block_size;
    let defaults = ExplainOptions::default();
    let error =
        |prompt: &[u32], options: &ExplainOptions| explain(&fx.model, prompt, &token_text, options).unwrap_err();

    assert!(matches!(error(&[], &defaults), ModelError::EmptyInput));
    let too_long = vec![1u32; block + 1];
    let e = error(&too_long, &defaults);
    assert!(matches!(e, ModelError::SequenceTooLong { len, block_size } if len == block + 1 && block_size == block));
    let e = error(&[1, 2, 96, 3], &defaults);
    assert!(matches!(e, ModelError::TokenOutOfRange { token: 96, position: 2, vocab_size: 96 }), "{e}");

    let e = error(&[1, 2], &ExplainOptions { top_k: 0, ..ExplainOptions::default() });
    assert!(matches!(e, ModelError::InvalidExplainOption { field: "top_k", .. }), "{e}");
    assert!(e.to_string().contains("top_k") && e.to_string().contains("at least 1"), "{e}");
    let bad_sampling = Sampling { top_p: Some(1.5), ..Sampling::default() };
    let e = error(&[1, 2], &ExplainOptions { generate: 3, sampling: bad_sampling, ..ExplainOptions::default() });
    assert!(matches!(e, ModelError::InvalidSampling { field: "top_p", .. }), "{e}");
    let e = error(&[1, 2], &ExplainOptions { neighbors: vec![4, 200], ..ExplainOptions::default() });
    assert!(e.to_string().contains("neighbors") && e.to_string().contains("200"), "{e}");

    // The longest prompt the model accepts still works.
    let full = vec![1u32; block];
    assert_eq!(run(&fx.model, &full, &defaults).next_token.len(), block);
}
