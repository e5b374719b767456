//! Training a sparse autoencoder (`lushan_model::features::Sae`) on one layer's residual stream: collect
//! the activations by running the model over a text, then AdamW steps on random mini-batches of them, with
//! decoder rows renormalised after each step and dead features resampled (Towards Monosemanticity).

use std::time::Instant;

use lushan_kernels::adamw::AdamW;
use lushan_kernels::rng::Rng;
use lushan_model::features::{Sae, SaeBatch, residual_stream};
use lushan_model::inspect::loss_windows;
use lushan_model::intervene::{Edit, Site};
use lushan_model::{Activations, Gpt, Mode};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// Context windows run through the model in one forward when collecting activations or measuring the
/// spliced loss: bigger products run nearer the GEMM's peak.
const WINDOWS_PER_BATCH: usize = 16;

/// Most activations collected (rows of C floats), so the buffer stays bounded whatever the text's size.
pub const MAX_ROWS: usize = 4_000_000;

/// How the SAE is trained.
#[derive(Debug, Clone)]
pub struct SaeTraining {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f32,
    /// Every this many steps, features that did not fire since the last check are resampled (0 = never).
    pub resample_every: u64,
    pub seed: u64,
}

/// What a finished training measured on held-out activations.
#[derive(Debug, Clone, Serialize)]
pub struct SaeReport {
    pub steps: u64,
    pub train_rows: usize,
    pub heldout_rows: usize,
    /// Mean squared error per element on the held-out rows.
    pub mse: f32,
    /// Fraction of variance unexplained: `Σ‖x̂ − x‖² / Σ‖x − mean(x)‖²`.
    pub fvu: f32,
    /// Mean number of active features per row.
    pub l0: f32,
    /// Features that never fire on the held-out rows.
    pub dead_features: usize,
    pub resampled_features: usize,
    pub final_loss: f32,
    /// Training throughput: activations (rows) per second over the steps.
    pub activations_per_second: f64,
    pub seconds: f64,
}

fn invalid(name: &str, reason: String) -> TrainError {
    TrainError::InvalidSetting { name: name.to_string(), reason }
}

/// The residual stream entering block `layer` at every token of `tokens` (windows of the model's context),
/// (N, C) with N = `tokens.len()` cut to `max_rows`.
pub fn collect_residuals(model: &Gpt, tokens: &[u32], layer: usize, max_rows: usize) -> Result<Vec<f32>> {
    let cfg = &model.config;
    if layer > cfg.n_layer {
        return Err(invalid("layer", format!("{layer} is out of range: the model has layers 0..={}", cfg.n_layer)));
    }
    let rows = tokens.len().min(max_rows);
    if rows == 0 {
        return Err(invalid("data", "the text encodes to no tokens".to_string()));
    }
    let c = cfg.n_embd;
    let mut out = Vec::with_capacity(rows.checked_mul(c).ok_or_else(|| invalid("data", "too many tokens".into()))?);
    let window = cfg.block_size.min(rows);
    // Whole windows go through the model a batch at a time; the residual stream of a batch is its windows'
    // rows in order.
    let mut acts =
        Activations::with_lora(cfg, WINDOWS_PER_BATCH.min(rows / window).max(1), window, model.lora_shape())?;
    let whole = rows / window * window;
    let batches = tokens[..whole].chunks(window * WINDOWS_PER_BATCH).map(|batch| (batch.len() / window, window));
    let tail = (whole < rows).then_some((1, rows - whole));
    let mut offset = 0;
    for (b, t) in batches.chain(tail) {
        let inputs = &tokens[offset..offset + b * t];
        offset += b * t;
        acts.reshape(b, t)?;
        model.forward(&mut acts, inputs, None, Mode::Eval)?;
        let stream = residual_stream(&acts, layer).ok_or_else(|| invalid("layer", format!("{layer}")))?;
        out.extend_from_slice(stream);
    }
    Ok(out)
}

/// Trains `sae` on `rows` (N, C): the last tenth (at least one row) is held out for the report.
/// `progress(step, loss, l0)` is called every 100 steps.
pub fn train_sae(
    sae: &mut Sae,
    rows: &[f32],
    settings: &SaeTraining,
    progress: &mut dyn FnMut(u64, f32, f32),
) -> Result<SaeReport> {
    let (c, f) = (sae.config.n_embd, sae.config.n_features);
    let n = rows.len() / c;
    if n < 2 {
        return Err(invalid("data", format!("{n} activation(s) collected: at least 2 are needed")));
    }
    if settings.batch_size == 0 || settings.steps == 0 {
        return Err(invalid("batch/steps", "--batch-size and --steps must be at least 1".into()));
    }
    let heldout = (n / 10).max(1);
    let train_n = n - heldout;
    let (train, test) = rows.split_at(train_n * c);
    let batch_size = settings.batch_size.min(train_n);
    let adam = AdamW { lr: settings.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut grads = vec![0.0f32; sae.params.len()];
    let (mut m, mut v) = (vec![0.0f32; grads.len()], vec![0.0f32; grads.len()]);
    let mut rng = Rng::new(settings.seed);
    let mut x = vec![0.0f32; batch_size * c];
    let mut batch = SaeBatch::default();
    let mut fired = vec![false; f];
    let mut resampled = 0usize;
    let mut final_loss = f32::NAN;
    let start = Instant::now();
    for step in 1..=settings.steps {
        for row in x.chunks_exact_mut(c) {
            let pick = rng.below(train_n as u64) as usize;
            row.copy_from_slice(&train[pick * c..(pick + 1) * c]);
        }
        let loss = sae.forward(&x, &mut batch);
        if !loss.loss.is_finite() {
            return Err(invalid("l1/lr", format!("the SAE's loss became {} at step {step}", loss.loss)));
        }
        final_loss = loss.loss;
        batch.mark_fired(&mut fired);
        sae.backward(&x, &batch, &mut grads);
        adam.update(&mut sae.params, &grads, &mut m, &mut v, step);
        sae.normalize_decoder();
        if settings.resample_every > 0 && step.is_multiple_of(settings.resample_every) && step < settings.steps {
            resampled += resample_dead(sae, &x, &batch, &fired, &mut m, &mut v, &mut rng);
            fired.fill(false);
        }
        if step.is_multiple_of(100) || step == settings.steps {
            progress(step, loss.loss, loss.l0);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let activations_per_second = (settings.steps as f64 * batch_size as f64) / seconds.max(1e-9);

    // Held-out figures.
    let loss = sae.forward(test, &mut batch);
    let mut mean = vec![0.0f64; c];
    for row in test.chunks_exact(c) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += f64::from(v) / heldout as f64);
    }
    let variance: f64 = test
        .chunks_exact(c)
        .map(|row| row.iter().zip(&mean).map(|(&v, m)| (f64::from(v) - m).powi(2)).sum::<f64>())
        .sum();
    let error_sum = f64::from(loss.mse_sum) * heldout as f64;
    let mut fired_heldout = vec![false; f];
    batch.mark_fired(&mut fired_heldout);
    let dead_features = fired_heldout.iter().filter(|&&hit| !hit).count();
    Ok(SaeReport {
        steps: settings.steps,
        train_rows: train_n,
        heldout_rows: heldout,
        mse: loss.mse_sum / c as f32,
        fvu: if variance > 0.0 { (error_sum / variance) as f32 } else { 0.0 },
        l0: loss.l0,
        dead_features,
        resampled_features: resampled,
        final_loss,
        activations_per_second,
        seconds,
    })
}

/// Resamples the features that did not fire (Towards Monosemanticity): each gets the direction of a batch
/// row drawn with probability ∝ its squared reconstruction error — decoder row the unit vector of
/// `x − b_pre`, encoder row that vector scaled to 0.2 × the mean norm of the live encoder rows, bias 0 —
/// and fresh optimiser moments. Returns how many were resampled.
fn resample_dead(
    sae: &mut Sae,
    x: &[f32],
    batch: &SaeBatch,
    fired: &[bool],
    m: &mut [f32],
    v: &mut [f32],
    rng: &mut Rng,
) -> usize {
    let c = sae.config.n_embd;
    let dead: Vec<usize> = fired.iter().enumerate().filter(|&(_, &hit)| !hit).map(|(i, _)| i).collect();
    if dead.is_empty() {
        return 0;
    }
    let errors: Vec<f64> = batch
        .reconstruction
        .chunks_exact(c)
        .zip(x.chunks_exact(c))
        .map(|(r, x)| r.iter().zip(x).map(|(a, b)| f64::from(a - b).powi(2)).sum())
        .collect();
    let total: f64 = errors.iter().sum();
    if total <= 0.0 {
        return 0;
    }
    let r = sae.layout();
    let live: Vec<f32> = (0..fired.len())
        .filter(|&i| fired[i])
        .map(|i| {
            sae.params[r.w_enc.start + i * c..r.w_enc.start + (i + 1) * c].iter().map(|w| w * w).sum::<f32>().sqrt()
        })
        .collect();
    let encoder_norm = if live.is_empty() { 1.0 } else { live.iter().sum::<f32>() / live.len() as f32 };
    for &i in &dead {
        let mut target = rng.next_f64() * total;
        let pick = errors.iter().position(|&e| {
            target -= e;
            target <= 0.0
        });
        let row = pick.unwrap_or(errors.len() - 1);
        let direction: Vec<f32> =
            x[row * c..(row + 1) * c].iter().zip(&sae.params[r.b_pre.clone()]).map(|(a, b)| a - b).collect();
        let norm = direction.iter().map(|d| d * d).sum::<f32>().sqrt().max(1e-12);
        let unit = direction.iter().map(|d| d / norm);
        sae.params[r.w_dec.start + i * c..r.w_dec.start + (i + 1) * c]
            .iter_mut()
            .zip(unit.clone())
            .for_each(|(p, u)| *p = u);
        let encoder = unit.map(|u| u * 0.2 * encoder_norm);
        sae.params[r.w_enc.start + i * c..r.w_enc.start + (i + 1) * c]
            .iter_mut()
            .zip(encoder)
            .for_each(|(p, e)| *p = e);
        sae.params[r.b_enc.start + i] = 0.0;
        for range in
            [r.w_dec.start + i * c..r.w_dec.start + (i + 1) * c, r.w_enc.start + i * c..r.w_enc.start + (i + 1) * c]
        {
            m[range.clone()].fill(0.0);
            v[range].fill(0.0);
        }
        m[r.b_enc.start + i] = 0.0;
        v[r.b_enc.start + i] = 0.0;
    }
    dead.len()
}

/// The model's mean next-token loss over some text, clean, with the SAE's reconstruction spliced in for
/// the residual stream it reads, and with that stream zeroed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpliceReport {
    pub tokens: usize,
    pub clean_loss: f32,
    pub spliced_loss: f32,
    pub zero_ablated_loss: f32,
    /// `(zero_ablated − spliced) / (zero_ablated − clean)`: 1 = the reconstruction loses nothing the model
    /// uses, 0 = no better than erasing the stream.
    pub loss_preserved: f32,
}

/// [`SpliceReport`] over `tokens`, in windows of the model's context (each predicting its next tokens),
/// through `Gpt::forward_edited` with `Edit::set(Site::ResidPre { layer }, …, reconstruction)`.
pub fn splice_losses(model: &Gpt, sae: &Sae, tokens: &[u32]) -> Result<SpliceReport> {
    let cfg = &model.config;
    let layer = sae.config.layer;
    let site = Site::ResidPre { layer };
    let window = cfg.block_size;
    if tokens.len() < 2 {
        return Err(invalid("data", "at least 2 tokens are needed to measure the loss".into()));
    }
    // The windows `explain --data` measures its loss over, a batch of equally long ones per forward.
    let windows: Vec<&[u32]> = loss_windows(tokens, window).collect();
    let mut acts = Activations::with_lora(cfg, WINDOWS_PER_BATCH, window.min(tokens.len() - 1), model.lora_shape())?;
    let mut batch = SaeBatch::default();
    let (mut clean, mut spliced, mut zeroed, mut counted) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for group in windows.chunk_by(|a, b| a.len() == b.len()) {
        for part in group.chunks(WINDOWS_PER_BATCH) {
            let t = part[0].len() - 1;
            let inputs: Vec<u32> = part.iter().flat_map(|w| &w[..t]).copied().collect();
            let targets: Vec<u32> = part.iter().flat_map(|w| &w[1..]).copied().collect();
            acts.reshape(part.len(), t)?;
            let loss = |edits: &[Edit], acts: &mut Activations| -> Result<f64> {
                let loss = model.forward_edited(acts, &inputs, Some(&targets), edits)?.unwrap_or(f32::NAN);
                Ok(f64::from(loss) * inputs.len() as f64)
            };
            clean += loss(&[], &mut acts)?;
            let stream = residual_stream(&acts, layer).ok_or_else(|| invalid("layer", format!("{layer}")))?.to_vec();
            sae.forward(&stream, &mut batch);
            spliced += loss(&[Edit::set(site, None, None, batch.reconstruction.clone())], &mut acts)?;
            zeroed += loss(&[Edit::zero(site)], &mut acts)?;
            counted += inputs.len();
        }
    }
    let n = counted.max(1) as f64;
    let (clean, spliced, zeroed) = (clean / n, spliced / n, zeroed / n);
    let loss_preserved = if (zeroed - clean).abs() > 1e-12 { (zeroed - spliced) / (zeroed - clean) } else { f64::NAN };
    Ok(SpliceReport {
        tokens: counted,
        clean_loss: clean as f32,
        spliced_loss: spliced as f32,
        zero_ablated_loss: zeroed as f32,
        loss_preserved: loss_preserved as f32,
    })
}

/// For each feature, its `k` strongest activations over `rows` (N, C) as `(activation, row)`, strongest
/// first; rows are encoded in blocks so memory stays at one block of features.
pub fn top_activations(sae: &Sae, rows: &[f32], k: usize) -> Vec<Vec<(f32, usize)>> {
    let (c, f) = (sae.config.n_embd, sae.config.n_features);
    let mut top: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(k + 1); f];
    let mut batch = SaeBatch::default();
    const BLOCK: usize = 4096;
    for (b, block) in rows.chunks(BLOCK * c).enumerate() {
        sae.encode(block, &mut batch);
        for r in 0..block.len() / c {
            let (features, values) = batch.row(r);
            for (&i, &a) in features.iter().zip(values) {
                let list = &mut top[i as usize];
                if a > 0.0 && (list.len() < k || list.last().is_some_and(|&(least, _)| a > least)) {
                    let at = list.partition_point(|&(other, _)| other >= a);
                    list.insert(at, (a, b * BLOCK + r));
                    list.truncate(k);
                }
            }
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use lushan_model::ModelConfig;
    use lushan_model::features::SaeConfig;

    /// Points along 8 fixed directions in 16 dimensions, one direction per row, with random positive scale.
    fn sparse_data(n: usize) -> Vec<f32> {
        let mut rng = Rng::new(4);
        let dirs: Vec<Vec<f32>> = (0..8).map(|_| (0..16).map(|_| rng.next_normal() as f32).collect()).collect();
        (0..n)
            .flat_map(|_| {
                let d = &dirs[rng.below(8) as usize];
                let s = 1.0 + rng.next_f32() * 2.0;
                d.iter().map(move |v| v * s).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn an_sae_learns_sparse_directions() {
        let config = SaeConfig { n_embd: 16, n_features: 32, layer: 0, model_hash: "t".into(), l1: 0.3 };
        let mut sae = Sae::new(config, 1).unwrap();
        let data = sparse_data(2000);
        let settings = SaeTraining { steps: 600, batch_size: 64, lr: 3e-3, resample_every: 200, seed: 2 };
        let mut calls = 0;
        let report = train_sae(&mut sae, &data, &settings, &mut |_, _, _| calls += 1).unwrap();
        assert_eq!(calls, 6);
        assert!(report.fvu < 0.2, "{report:?}");
        assert!(report.l0 < 8.0, "sparse: {report:?}");
        let top = top_activations(&sae, &data, 3);
        assert_eq!(top.len(), 32);
        assert!(top.iter().all(|l| l.windows(2).all(|w| w[0].0 >= w[1].0)));
    }

    #[test]
    fn residuals_are_collected_per_token_and_layers_are_checked() {
        let model = Gpt::new(ModelConfig::new(20, 8, 2, 2, 8), 1).unwrap();
        let tokens: Vec<u32> = (0..19).map(|i| i % 20).collect();
        let rows = collect_residuals(&model, &tokens, 2, 100).unwrap();
        assert_eq!(rows.len(), 19 * 8);
        // Batched windows give each window's own stream: the tail window (tokens 16..19) run alone.
        let mut acts = Activations::new(&model.config, 1, 3).unwrap();
        model.forward(&mut acts, &tokens[16..], None, Mode::Eval).unwrap();
        let alone = residual_stream(&acts, 2).unwrap();
        assert!(rows[16 * 8..].iter().zip(alone).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(collect_residuals(&model, &tokens, 0, 5).unwrap().len(), 5 * 8);
        let err = collect_residuals(&model, &tokens, 3, 100).unwrap_err().to_string();
        assert!(err.contains("layer") && err.contains("0..=2"), "{err}");
    }

    #[test]
    fn a_perfect_reconstruction_preserves_all_the_loss() {
        let model = Gpt::new(ModelConfig::new(20, 8, 2, 2, 8), 1).unwrap();
        let tokens: Vec<u32> = (0..30).map(|i| (i * 7 % 20) as u32).collect();
        // An SAE whose features are ±each axis: ReLU(x) − ReLU(−x) = x, so x̂ = x exactly.
        let config = SaeConfig { n_embd: 8, n_features: 16, layer: 1, model_hash: "t".into(), l1: 0.0 };
        let mut sae = Sae::new(config, 1).unwrap();
        let r = sae.layout();
        sae.params.fill(0.0);
        for i in 0..8 {
            sae.params[r.w_enc.start + i * 8 + i] = 1.0;
            sae.params[r.w_dec.start + i * 8 + i] = 1.0;
            sae.params[r.w_enc.start + (8 + i) * 8 + i] = -1.0;
            sae.params[r.w_dec.start + (8 + i) * 8 + i] = -1.0;
        }
        let report = splice_losses(&model, &sae, &tokens).unwrap();
        // Every token after the first is a target once: windows of 8 inputs sharing one token, then 5 inputs.
        assert_eq!(report.tokens, 29);
        let mut acts = Activations::new(&model.config, 1, 8).unwrap();
        let mut expected = 0.0f64;
        for window in loss_windows(&tokens, 8) {
            let t = window.len() - 1;
            acts.reshape(1, t).unwrap();
            let loss = model.forward(&mut acts, &window[..t], Some(&window[1..]), Mode::Eval).unwrap().unwrap();
            expected += f64::from(loss) * t as f64 / 29.0;
        }
        assert!((report.clean_loss - expected as f32).abs() < 1e-5, "{report:?} vs {expected}");
        assert!((report.spliced_loss - report.clean_loss).abs() < 1e-4, "{report:?}");
        assert!((report.loss_preserved - 1.0).abs() < 1e-3, "{report:?}");
        // A zero SAE reconstructs only b_pre = 0: the same as the zero ablation.
        sae.params.fill(0.0);
        let report = splice_losses(&model, &sae, &tokens).unwrap();
        assert!(report.loss_preserved.abs() < 1e-3, "{report:?}");
    }
}
