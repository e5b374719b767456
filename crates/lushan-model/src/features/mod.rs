//! Learned features: a sparse autoencoder (SAE) over one layer's residual stream, as in Anthropic's
//! "Towards Monosemanticity" and SAELens.
//!
//! # The model
//! For a residual vector `x` (C):
//! ```text
//! f = ReLU(W_enc · (x − b_pre) + b_enc)        (F)   features, F = expansion · C
//! x̂ = b_pre + Σ_i f_i · d_i                    (C)   d_i = row i of W_dec (F, C): feature i's direction
//! ```
//! Loss over a batch of N rows: `L = (1/N) Σ_n [ ‖x̂_n − x_n‖² + l1 · Σ_i f_ni · ‖d_i‖ ]` (f ≥ 0, so
//! `|f| = f`). The trainer renormalises every `d_i` to unit length after each step, so the norm factor is 1
//! at every forward; it stays in the loss so that shrinking `d_i` cannot buy a smaller penalty.
//!
//! # Backward (derived per row n; `e_n = x̂_n − x_n`, `xc_n = x_n − b_pre`, `a_ni` = pre-activation)
//! ```text
//! ∂L/∂x̂_n   = (2/N) e_n
//! ∂L/∂f_ni  = (2/N) e_n·d_i + (l1/N) ‖d_i‖
//! ∂L/∂a_ni  = ∂L/∂f_ni  if a_ni > 0, else 0            (ReLU)
//! ∂L/∂d_i   = Σ_n (2/N) f_ni e_n + (l1/N) (Σ_n f_ni) d_i/‖d_i‖
//! ∂L/∂W_enc[i] = Σ_n ∂L/∂a_ni · xc_n,   ∂L/∂b_enc[i] = Σ_n ∂L/∂a_ni
//! ∂L/∂b_pre = Σ_n [ (2/N) e_n − Σ_i ∂L/∂a_ni · W_enc[i] ]  (b_pre enters x̂ directly and xc with a minus)
//! ```
//! Only active features (f > 0) contribute anywhere but the dense encoder product, so the decoder forward
//! and every weight gradient visit `L0` features per row, not `F`; the encoder is one dense GEMM
//! (`lushan_kernels::matmul`).
//!
//! Parameters live in one flat buffer `[b_pre (C), W_enc (F·C), b_enc (F), W_dec (F·C)]`, so one AdamW call
//! updates them all.

mod io;
mod view;

pub use io::{
    SAE_CONFIG_FILE, SAE_CONTEXTS_FILE, SAE_WEIGHTS_FILE, SavedSae, default_sae_dir, load_sae_dir, model_fingerprint,
    save_sae_dir,
};
pub use view::{Context, FeatureActivation, FeatureView, TokenFeatures, feature_view};

use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::activations::Activations;
use crate::error::{ModelError, Result};
use lushan_kernels::matmul;
use lushan_kernels::rng::Rng;

/// What an SAE is and which model and layer it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    /// Width of the residual stream (the model's n_embd).
    pub n_embd: usize,
    /// Dictionary size: `expansion · n_embd`.
    pub n_features: usize,
    /// The residual stream entering block `layer` (0 = the embeddings, n_layer = after the last block).
    pub layer: usize,
    /// [`model_fingerprint`] of the model it was trained on.
    pub model_hash: String,
    /// L1 coefficient of the sparsity penalty.
    pub l1: f32,
}

impl SaeConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(ModelError::InvalidConfig { field, reason });
        if self.n_embd == 0 || self.n_features == 0 {
            return invalid(
                "sae sizes",
                format!("n_embd {} and n_features {} must be > 0", self.n_embd, self.n_features),
            );
        }
        if self.n_features.checked_mul(self.n_embd).and_then(|x| x.checked_mul(2)).is_none_or(|x| x > 1 << 31) {
            return invalid("n_features", format!("{} × n_embd {} is too large", self.n_features, self.n_embd));
        }
        if !(self.l1.is_finite() && self.l1 >= 0.0) {
            return invalid("l1", format!("must be a finite number ≥ 0, got {}", self.l1));
        }
        Ok(())
    }
}

/// A sparse autoencoder: its configuration and parameters.
#[derive(Debug, Clone)]
pub struct Sae {
    pub config: SaeConfig,
    pub params: Vec<f32>,
}

/// The pieces of the flat buffer.
pub struct SaeParts<'a> {
    pub b_pre: &'a [f32],
    pub w_enc: &'a [f32],
    pub b_enc: &'a [f32],
    pub w_dec: &'a [f32],
}

/// Forward results of one batch that backward reads.
#[derive(Debug, Default)]
pub struct SaeBatch {
    /// `x − b_pre`, (N, C).
    pub centred: Vec<f32>,
    /// Feature activations after ReLU, (N, F).
    pub features: Vec<f32>,
    /// Reconstructions, (N, C).
    pub reconstruction: Vec<f32>,
}

/// Loss terms of one batch, each a mean over its rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaeLoss {
    /// The training loss: `mse_sum + l1 · sparsity`.
    pub loss: f32,
    /// `‖x̂ − x‖²` per row.
    pub mse_sum: f32,
    /// `Σ_i f_i · ‖d_i‖` per row.
    pub sparsity: f32,
    /// Active features per row.
    pub l0: f32,
}

impl Sae {
    /// A new SAE: decoder rows random unit vectors, encoder rows equal to them (tied initialisation, as
    /// SAELens does), biases zero.
    pub fn new(config: SaeConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let layout = Self::ranges(config.n_embd, config.n_features);
        let mut params = vec![0.0f32; layout.w_dec.end];
        let mut rng = Rng::new(seed);
        for v in &mut params[layout.w_dec.clone()] {
            *v = rng.next_normal() as f32;
        }
        let mut sae = Self { config, params };
        sae.normalize_decoder();
        let (enc, rest) = sae.params.split_at_mut(layout.b_enc.start);
        enc[layout.w_enc].copy_from_slice(&rest[layout.w_dec.start - layout.b_enc.start..]);
        Ok(sae)
    }

    /// An SAE from saved parameters; the buffer must match the configuration.
    pub fn from_params(config: SaeConfig, params: Vec<f32>) -> Result<Self> {
        config.validate()?;
        let expected = Self::ranges(config.n_embd, config.n_features).w_dec.end;
        if params.len() != expected {
            return Err(ModelError::InvalidConfig {
                field: "sae parameters",
                reason: format!("expected {expected} values for this configuration, got {}", params.len()),
            });
        }
        Ok(Self { config, params })
    }

    /// Where each tensor lives in the flat buffer.
    pub fn ranges(c: usize, f: usize) -> SaeRanges {
        let w_enc = c..c + f * c;
        let b_enc = w_enc.end..w_enc.end + f;
        let w_dec = b_enc.end..b_enc.end + f * c;
        SaeRanges { b_pre: 0..c, w_enc, b_enc, w_dec }
    }

    pub fn layout(&self) -> SaeRanges {
        Self::ranges(self.config.n_embd, self.config.n_features)
    }

    pub fn parts(&self) -> SaeParts<'_> {
        let r = self.layout();
        SaeParts {
            b_pre: &self.params[r.b_pre],
            w_enc: &self.params[r.w_enc],
            b_enc: &self.params[r.b_enc],
            w_dec: &self.params[r.w_dec],
        }
    }

    /// Makes every decoder row `d_i` unit length (a zero row stays zero).
    pub fn normalize_decoder(&mut self) {
        let c = self.config.n_embd;
        let r = self.layout();
        self.params[r.w_dec].par_chunks_mut(c).for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        });
    }

    /// Feature activations `f` (N, F) of `x` (N, C), written into `batch.features` (and `x − b_pre` into
    /// `batch.centred`).
    pub fn encode(&self, x: &[f32], batch: &mut SaeBatch) {
        let (c, f) = (self.config.n_embd, self.config.n_features);
        let n = x.len() / c;
        let p = self.parts();
        batch.centred.resize(n * c, 0.0);
        batch.centred.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(out, row)| {
            out.iter_mut().zip(row.iter().zip(p.b_pre)).for_each(|(o, (v, b))| *o = v - b);
        });
        batch.features.resize(n * f, 0.0);
        matmul::forward(&mut batch.features, &batch.centred, p.w_enc, Some(p.b_enc), c, f);
        batch.features.par_iter_mut().for_each(|a| *a = a.max(0.0));
    }

    /// Forward over `x` (N, C): features, reconstruction and the loss terms.
    pub fn forward(&self, x: &[f32], batch: &mut SaeBatch) -> SaeLoss {
        let (c, f) = (self.config.n_embd, self.config.n_features);
        let n = (x.len() / c).max(1);
        self.encode(x, batch);
        let p = self.parts();
        let norms: Vec<f32> = p.w_dec.par_chunks(c).map(|d| d.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
        batch.reconstruction.resize(x.len(), 0.0);
        // x̂_n = b_pre + Σ_{i active} f_ni d_i, visiting only the active features.
        let (mse_sum, sparsity, l0) = batch
            .reconstruction
            .par_chunks_mut(c)
            .zip(batch.features.par_chunks(f))
            .zip(x.par_chunks(c))
            .map(|((out, feats), row)| {
                out.copy_from_slice(p.b_pre);
                let (mut sparsity, mut active) = (0.0f64, 0u32);
                for (i, &a) in feats.iter().enumerate() {
                    if a > 0.0 {
                        let d = &p.w_dec[i * c..(i + 1) * c];
                        out.iter_mut().zip(d).for_each(|(o, v)| *o += a * v);
                        sparsity += f64::from(a * norms[i]);
                        active += 1;
                    }
                }
                let mse: f64 = out.iter().zip(row).map(|(o, v)| f64::from(o - v).powi(2)).sum();
                (mse, sparsity, f64::from(active))
            })
            .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        let n = n as f64;
        let (mse_sum, sparsity, l0) = ((mse_sum / n) as f32, (sparsity / n) as f32, (l0 / n) as f32);
        SaeLoss { loss: mse_sum + self.config.l1 * sparsity, mse_sum, sparsity, l0 }
    }

    /// Gradient of the last [`Sae::forward`]'s loss into `grads` (overwritten; the flat layout).
    pub fn backward(&self, x: &[f32], batch: &SaeBatch, grads: &mut [f32]) {
        let (c, f) = (self.config.n_embd, self.config.n_features);
        let n = x.len() / c;
        let scale = 2.0 / n.max(1) as f32;
        let l1_scale = self.config.l1 / n.max(1) as f32;
        let p = self.parts();
        let r = self.layout();
        let norms: Vec<f32> = p.w_dec.par_chunks(c).map(|d| d.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
        // Rows are split into one chunk per worker; each accumulates its own gradient, then they are added.
        let chunk_rows = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let zero = || (vec![0.0f32; grads.len()], vec![0.0f32; f]);
        let (mut total, feature_sums) = (0..n.div_ceil(chunk_rows))
            .into_par_iter()
            .map(|chunk| {
                let (mut g, mut fsum) = zero();
                let mut e = vec![0.0f32; c];
                let mut dxc = vec![0.0f32; c];
                for row in chunk * chunk_rows..((chunk + 1) * chunk_rows).min(n) {
                    let xs = &x[row * c..(row + 1) * c];
                    let recon = &batch.reconstruction[row * c..(row + 1) * c];
                    let xc = &batch.centred[row * c..(row + 1) * c];
                    let feats = &batch.features[row * f..(row + 1) * f];
                    e.iter_mut().zip(recon.iter().zip(xs)).for_each(|(e, (a, b))| *e = scale * (a - b));
                    dxc.fill(0.0);
                    for (i, &a) in feats.iter().enumerate() {
                        if a <= 0.0 {
                            continue;
                        }
                        let d = &p.w_dec[i * c..(i + 1) * c];
                        let da = e.iter().zip(d).map(|(e, d)| e * d).sum::<f32>() + l1_scale * norms[i];
                        fsum[i] += a;
                        let gd = &mut g[r.w_dec.start + i * c..r.w_dec.start + (i + 1) * c];
                        gd.iter_mut().zip(&e).for_each(|(g, e)| *g += a * e);
                        let ge = &mut g[r.w_enc.start + i * c..r.w_enc.start + (i + 1) * c];
                        ge.iter_mut().zip(xc).for_each(|(g, v)| *g += da * v);
                        g[r.b_enc.start + i] += da;
                        let we = &p.w_enc[i * c..(i + 1) * c];
                        dxc.iter_mut().zip(we).for_each(|(g, w)| *g += da * w);
                    }
                    g[r.b_pre.clone()].iter_mut().zip(e.iter().zip(&dxc)).for_each(|(g, (e, d))| *g += e - d);
                }
                (g, fsum)
            })
            .reduce(zero, |(mut ga, mut fa), (gb, fb)| {
                ga.iter_mut().zip(&gb).for_each(|(a, b)| *a += b);
                fa.iter_mut().zip(&fb).for_each(|(a, b)| *a += b);
                (ga, fa)
            });
        // The penalty's pull on the decoder norms: (l1/N) (Σ_n f_ni) d_i/‖d_i‖.
        for (i, (&sum, &norm)) in feature_sums.iter().zip(&norms).enumerate() {
            if sum > 0.0 && norm > 0.0 {
                let d = &p.w_dec[i * c..(i + 1) * c];
                let gd = &mut total[r.w_dec.start + i * c..r.w_dec.start + (i + 1) * c];
                gd.iter_mut().zip(d).for_each(|(g, v)| *g += l1_scale * sum * v / norm);
            }
        }
        grads.copy_from_slice(&total);
    }
}

/// The residual stream entering block `layer` of the last forward, (B·T, C): the embeddings for layer 0,
/// block `layer`'s input otherwise, the last block's output for `layer == n_layer`; `None` past that.
pub fn residual_stream(acts: &Activations, layer: usize) -> Option<&[f32]> {
    match layer {
        0 => Some(&acts.encoded),
        l => acts.layers.get(l - 1).map(|a| a.residual3.as_slice()),
    }
}

/// Ranges of the tensors in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeRanges {
    pub b_pre: Range<usize>,
    pub w_enc: Range<usize>,
    pub b_enc: Range<usize>,
    pub w_dec: Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(l1: f32) -> Sae {
        let config = SaeConfig { n_embd: 4, n_features: 8, layer: 0, model_hash: "x".into(), l1 };
        let mut sae = Sae::new(config, 5).unwrap();
        // Non-zero biases and an untied encoder, so that every term of the backward is exercised.
        let mut rng = Rng::new(11);
        for v in &mut sae.params {
            *v += 0.3 * rng.next_normal() as f32;
        }
        sae
    }

    fn data(n: usize, c: usize) -> Vec<f32> {
        let mut rng = Rng::new(3);
        (0..n * c).map(|_| rng.next_normal() as f32).collect()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut sae = tiny(0.7);
        let x = data(6, 4);
        let mut batch = SaeBatch::default();
        sae.forward(&x, &mut batch);
        let mut grads = vec![0.0f32; sae.params.len()];
        sae.backward(&x, &batch, &mut grads);
        let h = 1e-3f32;
        let mut checked = 0;
        for (k, &grad) in grads.iter().enumerate() {
            let original = sae.params[k];
            sae.params[k] = original + h;
            let plus = sae.forward(&x, &mut batch).loss;
            sae.params[k] = original - h;
            let minus = sae.forward(&x, &mut batch).loss;
            sae.params[k] = original;
            let numeric = (plus - minus) / (2.0 * h);
            let tolerance = 2e-2 * numeric.abs().max(grad.abs()).max(1.0);
            assert!((numeric - grad).abs() < tolerance, "param {k}: analytic {grad} numeric {numeric}");
            checked += usize::from(grad != 0.0);
        }
        assert!(checked > sae.params.len() / 2, "most gradients are non-zero ({checked})");
    }

    #[test]
    fn reconstruction_is_bias_plus_active_directions() {
        let sae = tiny(0.0);
        let x = data(3, 4);
        let mut batch = SaeBatch::default();
        let loss = sae.forward(&x, &mut batch);
        let p = sae.parts();
        for n in 0..3 {
            let mut expected = p.b_pre.to_vec();
            for (a, d) in batch.features[n * 8..(n + 1) * 8].iter().zip(p.w_dec.chunks(4)) {
                assert!(*a >= 0.0);
                expected.iter_mut().zip(d).for_each(|(e, v)| *e += a * v);
            }
            for (e, r) in expected.iter().zip(&batch.reconstruction[n * 4..(n + 1) * 4]) {
                assert!((e - r).abs() < 1e-5);
            }
        }
        assert!(loss.l0 > 0.0 && loss.l0 <= 8.0);
    }

    #[test]
    fn new_sae_has_unit_decoder_rows_and_bad_sizes_are_refused() {
        let sae =
            Sae::new(SaeConfig { n_embd: 6, n_features: 12, layer: 1, model_hash: "h".into(), l1: 1.0 }, 1).unwrap();
        for d in sae.parts().w_dec.chunks(6) {
            assert!((d.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert_eq!(sae.parts().w_enc, sae.parts().w_dec);
        let bad = SaeConfig { n_embd: 6, n_features: 0, layer: 1, model_hash: "h".into(), l1: 1.0 };
        assert!(Sae::new(bad, 1).is_err());
        let huge = SaeConfig { n_embd: 1 << 20, n_features: 1 << 20, layer: 1, model_hash: "h".into(), l1: 1.0 };
        assert!(Sae::new(huge, 1).is_err());
        let config = SaeConfig { n_embd: 6, n_features: 12, layer: 1, model_hash: "h".into(), l1: f32::NAN };
        assert!(Sae::from_params(config, vec![0.0; 10]).is_err());
    }
}
