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
use lushan_kernels::vector::{axpy, dot};

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
    /// The active (f > 0) features of every row, compressed by row: row `n`'s are
    /// `active_features[active_rows[n]..active_rows[n + 1]]` with values `active_values[…]`.
    pub active_rows: Vec<usize>,
    pub active_features: Vec<u32>,
    pub active_values: Vec<f32>,
    /// Reconstructions, (N, C).
    pub reconstruction: Vec<f32>,
    /// `‖d_i‖` of every decoder row at the forward (the backward of that forward reads them too).
    pub decoder_norms: Vec<f32>,
}

impl SaeBatch {
    /// Sets `fired[i]` for every feature `i` active on some row (from the compressed rows); flags already
    /// set stay set, so calls over several batches accumulate.
    pub fn mark_fired(&self, fired: &mut [bool]) {
        for &i in &self.active_features {
            fired[i as usize] = true;
        }
    }

    /// Applies the ReLU to the pre-activations in `features` (N, F) and compresses the rows: the scan is
    /// split over the workers, each collecting its rows' active features, then the pieces are joined in row
    /// order.
    fn relu_and_compress(&mut self, f: usize) {
        let n = self.features.len() / f.max(1);
        let chunk_rows = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let pieces: Vec<(Vec<usize>, Vec<u32>, Vec<f32>)> = self
            .features
            .par_chunks_mut(chunk_rows * f)
            .map(|rows| {
                let mut counts = Vec::with_capacity(rows.len() / f);
                let (mut indices, mut values) = (vec![0u32; rows.len()], vec![0.0f32; rows.len()]);
                let mut kept = 0;
                for row in rows.chunks_exact_mut(f) {
                    let before = kept;
                    // Branch-free: every feature is written at the cursor, which moves past the active ones
                    // only (about half of them are active early in training, so a branch would mispredict).
                    for (i, a) in row.iter_mut().enumerate() {
                        *a = a.max(0.0);
                        indices[kept] = i as u32;
                        values[kept] = *a;
                        kept += usize::from(*a > 0.0);
                    }
                    counts.push(kept - before);
                }
                indices.truncate(kept);
                values.truncate(kept);
                (counts, indices, values)
            })
            .collect();
        self.active_rows.clear();
        self.active_rows.push(0);
        self.active_features.clear();
        self.active_values.clear();
        for (counts, indices, values) in pieces {
            for count in counts {
                let last = self.active_rows[self.active_rows.len() - 1];
                self.active_rows.push(last + count);
            }
            self.active_features.extend_from_slice(&indices);
            self.active_values.extend_from_slice(&values);
        }
    }

    /// Row `n`'s active features and their values.
    pub fn row(&self, n: usize) -> (&[u32], &[f32]) {
        let span = self.active_rows[n]..self.active_rows[n + 1];
        (&self.active_features[span.clone()], &self.active_values[span])
    }
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
        batch.relu_and_compress(f);
    }

    /// Forward over `x` (N, C): features, reconstruction and the loss terms.
    pub fn forward(&self, x: &[f32], batch: &mut SaeBatch) -> SaeLoss {
        let c = self.config.n_embd;
        let n = (x.len() / c).max(1);
        self.encode(x, batch);
        let p = self.parts();
        batch.decoder_norms.clear();
        batch.decoder_norms.par_extend(p.w_dec.par_chunks(c).map(|d| dot(d, d).sqrt()));
        let norms = &batch.decoder_norms;
        let mut reconstruction = std::mem::take(&mut batch.reconstruction);
        reconstruction.resize(x.len(), 0.0);
        // x̂_n = b_pre + Σ_{i active} f_ni d_i, visiting only the active features.
        let (mse_sum, sparsity, l0) = reconstruction
            .par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .enumerate()
            .map(|(row, (out, xs))| {
                out.copy_from_slice(p.b_pre);
                let (features, values) = batch.row(row);
                let mut sparsity = 0.0f64;
                for (&i, &a) in features.iter().zip(values) {
                    let i = i as usize;
                    axpy(out, a, &p.w_dec[i * c..(i + 1) * c]);
                    sparsity += f64::from(a * norms[i]);
                }
                let mse: f64 = out.iter().zip(xs).map(|(o, v)| f64::from(o - v).powi(2)).sum();
                (mse, sparsity, features.len() as f64)
            })
            .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        batch.reconstruction = reconstruction;
        let n = n as f64;
        let (mse_sum, sparsity, l0) = ((mse_sum / n) as f32, (sparsity / n) as f32, (l0 / n) as f32);
        SaeLoss { loss: mse_sum + self.config.l1 * sparsity, mse_sum, sparsity, l0 }
    }

    /// Gradient of the last [`Sae::forward`]'s loss into `grads` (overwritten; the flat layout).
    ///
    /// Two sparse passes, each writing only what it owns, so no worker needs a private copy of the
    /// gradient: a pass over rows (`e_n`, every `∂L/∂a_ni` of an active feature, and `∂L/∂b_pre`), then a
    /// pass over features, which visits each feature's active rows (the compressed rows transposed) and
    /// writes that feature's encoder row, bias and decoder row.
    pub fn backward(&self, x: &[f32], batch: &SaeBatch, grads: &mut [f32]) {
        let (c, f) = (self.config.n_embd, self.config.n_features);
        let n = x.len() / c;
        let scale = 2.0 / n.max(1) as f32;
        let l1_scale = self.config.l1 / n.max(1) as f32;
        let p = self.parts();
        let norms = &batch.decoder_norms;
        let active = batch.active_features.len();

        // Rows: e_n = (2/N)(x̂_n − x_n); ∂L/∂a_ni = e_n·d_i + (l1/N)‖d_i‖ for active i (ReLU passes it);
        // ∂L/∂b_pre = Σ_n [e_n − Σ_i ∂L/∂a_ni W_enc[i]].
        let mut errors = vec![0.0f32; n * c];
        let mut pre_grads = vec![0.0f32; active];
        let chunk_rows = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let mut pieces = Vec::new();
        let mut rest = pre_grads.as_mut_slice();
        for first in (0..n).step_by(chunk_rows) {
            let last = (first + chunk_rows).min(n);
            let (piece, tail) = rest.split_at_mut(batch.active_rows[last] - batch.active_rows[first]);
            pieces.push(piece);
            rest = tail;
        }
        let b_pre_grad = errors
            .par_chunks_mut(chunk_rows * c)
            .zip(pieces.into_par_iter())
            .enumerate()
            .map(|(chunk, (error_rows, pre_grads))| {
                let mut g = vec![0.0f32; c];
                let mut dxc = vec![0.0f32; c];
                let mut k = 0;
                for (r, e) in error_rows.chunks_exact_mut(c).enumerate() {
                    let row = chunk * chunk_rows + r;
                    let (xs, recon) = (&x[row * c..(row + 1) * c], &batch.reconstruction[row * c..(row + 1) * c]);
                    e.iter_mut().zip(recon.iter().zip(xs)).for_each(|(e, (a, b))| *e = scale * (a - b));
                    dxc.fill(0.0);
                    for &i in batch.row(row).0 {
                        let i = i as usize;
                        let da = dot(e, &p.w_dec[i * c..(i + 1) * c]) + l1_scale * norms[i];
                        pre_grads[k] = da;
                        k += 1;
                        axpy(&mut dxc, da, &p.w_enc[i * c..(i + 1) * c]);
                    }
                    g.iter_mut().zip(e.iter().zip(&dxc)).for_each(|(g, (e, d))| *g += e - d);
                }
                g
            })
            .reduce(
                || vec![0.0f32; c],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );

        // The compressed rows transposed: for each feature, the (row, entry) pairs where it is active.
        let mut feature_start = vec![0usize; f + 1];
        for &i in &batch.active_features {
            feature_start[i as usize + 1] += 1;
        }
        for i in 0..f {
            feature_start[i + 1] += feature_start[i];
        }
        let mut cursor = feature_start.clone();
        let mut entries = vec![(0u32, 0u32); active];
        for row in 0..n {
            for k in batch.active_rows[row]..batch.active_rows[row + 1] {
                let i = batch.active_features[k] as usize;
                entries[cursor[i]] = (row as u32, k as u32);
                cursor[i] += 1;
            }
        }

        // Features: ∂L/∂W_enc[i] = Σ_n ∂L/∂a_ni xc_n, ∂L/∂b_enc[i] = Σ_n ∂L/∂a_ni,
        // ∂L/∂d_i = Σ_n f_ni e_n + (l1/N)(Σ_n f_ni) d_i/‖d_i‖.
        let (b_pre_g, rest) = grads.split_at_mut(c);
        let (w_enc_g, rest) = rest.split_at_mut(f * c);
        let (b_enc_g, w_dec_g) = rest.split_at_mut(f);
        b_pre_g.copy_from_slice(&b_pre_grad);
        w_enc_g.par_chunks_mut(c).zip(w_dec_g.par_chunks_mut(c)).zip(b_enc_g.par_iter_mut()).enumerate().for_each(
            |(i, ((ge, gd), gb))| {
                ge.fill(0.0);
                gd.fill(0.0);
                let (mut bias, mut activity) = (0.0f32, 0.0f32);
                for &(row, k) in &entries[feature_start[i]..feature_start[i + 1]] {
                    let (row, k) = (row as usize, k as usize);
                    let (a, da) = (batch.active_values[k], pre_grads[k]);
                    axpy(gd, a, &errors[row * c..(row + 1) * c]);
                    axpy(ge, da, &batch.centred[row * c..(row + 1) * c]);
                    bias += da;
                    activity += a;
                }
                *gb = bias;
                if activity > 0.0 && norms[i] > 0.0 {
                    axpy(gd, l1_scale * activity / norms[i], &p.w_dec[i * c..(i + 1) * c]);
                }
            },
        );
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
        // The compressed rows list exactly the positive features, in order.
        for n in 0..3 {
            let dense: Vec<(u32, f32)> = (0..8)
                .filter(|&i| batch.features[n * 8 + i] > 0.0)
                .map(|i| (i as u32, batch.features[n * 8 + i]))
                .collect();
            let (features, values) = batch.row(n);
            assert_eq!(dense, features.iter().copied().zip(values.iter().copied()).collect::<Vec<_>>());
        }
        assert_eq!(batch.active_rows.len(), 4);
        assert!(
            {
                let mut fired = [false; 8];
                batch.mark_fired(&mut fired);
                fired
            }
            .iter()
            .enumerate()
            .all(|(i, &hit)| hit == (0..3).any(|n| batch.features[n * 8 + i] > 0.0))
        );
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
