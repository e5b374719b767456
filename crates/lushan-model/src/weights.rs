//! Weight types for inference: a model's matrices stored as `bf16`, `f16`, Q8_0 or Q4_0 instead of `f32`,
//! converted once when the model is loaded (`--dtype`), without keeping the `f32` copy.
//!
//! Only the five weight matrices are converted — the token embedding (which is also the output layer) and
//! each block's four linear layers, ≈ 99.5 % of GPT-2's parameters and of the bytes a decoding step reads.
//! Biases, layer norms and the position table stay `f32`, as in llama.cpp's GGUF files.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::params::{ParamKind, ParamLayout};
use half::{bf16, f16};
use lushan_kernels::encoder;
use lushan_kernels::quant::packed_q4::PackedQ4_0;
use lushan_kernels::quant::{BLOCK, BlockQ4_0, BlockQ8_0, quantize_q8_0};
pub use lushan_kernels::weights::Weights;
pub use lushan_kernels::weights::{forward, forward_gemm, forward_in, forward_rows};

/// How a model's weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    Bf16,
    F16,
    Q8_0,
    Q4_0,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::Bf16, DType::F16, DType::Q8_0, DType::Q4_0];

    /// The name the flags and llama.cpp use (lower case).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
        }
    }

    /// Bits one weight takes, the block scales included (Q8_0: 34 bytes per 32 weights).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            DType::F32 => 32.0,
            DType::Bf16 | DType::F16 => 16.0,
            DType::Q8_0 => (BlockQ8_0::BYTES * 8) as f64 / BLOCK as f64,
            DType::Q4_0 => (BlockQ4_0::BYTES * 8) as f64 / BLOCK as f64,
        }
    }

    /// Whether rows must be whole blocks of [`BLOCK`] weights.
    pub fn is_block_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        DType::ALL.into_iter().find(|d| d.name() == lower).ok_or_else(|| {
            let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
            format!("unknown weight type `{s}`: expected one of {}", names.join(", "))
        })
    }
}

/// One weight matrix `(rows, cols)` in a type other than `f32`, stored by rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    Q8_0(Vec<BlockQ8_0>),
    /// Repacked sixteen rows at a time for the products; [`PackedQ4_0::to_blocks`] gives llama.cpp's blocks.
    Q4_0(PackedQ4_0),
}

impl Matrix {
    /// Converts `w` (rows of `cols` weights) to `dtype`, rounding as llama.cpp does (nearest for the
    /// 16-bit floats; `ggml-quants.c`'s reference quantizers for the blocks).
    ///
    /// # Errors
    /// `dtype` f32 (nothing to convert), or a block type whose rows are not whole blocks — naming `tensor`.
    pub fn convert(dtype: DType, w: &[f32], cols: usize, tensor: &str) -> Result<Matrix> {
        if cols == 0 || !w.len().is_multiple_of(cols) {
            return Err(weight_error(dtype, tensor, format!("holds {} values, not whole rows of {cols}", w.len())));
        }
        if dtype.is_block_quantized() && !cols.is_multiple_of(BLOCK) {
            return Err(weight_error(
                dtype,
                tensor,
                format!(
                    "has rows of {cols} weights, which is not a multiple of {BLOCK} (the block size of {dtype}): \
                     use f32, bf16 or f16 for this model"
                ),
            ));
        }
        Ok(match dtype {
            DType::F32 => {
                return Err(weight_error(dtype, tensor, "is already f32: there is nothing to convert".into()));
            }
            DType::Bf16 => Matrix::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::F16 => Matrix::F16(w.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::Q8_0 => {
                let mut blocks = vec![BlockQ8_0::default(); w.len() / BLOCK];
                quantize_q8_0(w, &mut blocks);
                Matrix::Q8_0(blocks)
            }
            DType::Q4_0 => Matrix::Q4_0(PackedQ4_0::quantize(w, cols)),
        })
    }

    /// Appends the rows of `more` (same type; a different type is a caller bug and is ignored in release
    /// builds after a debug assertion).
    pub fn append(&mut self, more: Matrix) {
        match (self, more) {
            (Matrix::Bf16(a), Matrix::Bf16(b)) => a.extend(b),
            (Matrix::F16(a), Matrix::F16(b)) => a.extend(b),
            (Matrix::Q8_0(a), Matrix::Q8_0(b)) => a.extend(b),
            (Matrix::Q4_0(a), Matrix::Q4_0(b)) => a.append(&b),
            (a, b) => debug_assert!(false, "appending {} rows to a {} matrix", b.dtype(), a.dtype()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Matrix::Bf16(_) => DType::Bf16,
            Matrix::F16(_) => DType::F16,
            Matrix::Q8_0(_) => DType::Q8_0,
            Matrix::Q4_0(_) => DType::Q4_0,
        }
    }

    /// The matrix for the products.
    pub fn view(&self) -> Weights<'_> {
        match self {
            Matrix::Bf16(w) => Weights::Bf16(w),
            Matrix::F16(w) => Weights::F16(w),
            Matrix::Q8_0(w) => Weights::Q8_0(w),
            Matrix::Q4_0(w) => Weights::Q4_0(w),
        }
    }

    /// Bytes the matrix takes (what a decoding step reads of it).
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Bf16(w) => w.len() * 2,
            Matrix::F16(w) => w.len() * 2,
            Matrix::Q8_0(w) => w.len() * BlockQ8_0::BYTES,
            Matrix::Q4_0(w) => w.bytes(),
        }
    }

    /// The whole matrix widened back to `f32` (`cols` weights a row).
    pub fn to_f32(&self, cols: usize) -> Vec<f32> {
        let view = self.view();
        let rows = view.len() / cols.max(1);
        let mut out = vec![0.0; rows * cols];
        view.rows_to_f32(cols, 0..rows, &mut out);
        out
    }
}

fn weight_error(dtype: DType, tensor: &str, reason: String) -> ModelError {
    ModelError::WeightType { dtype: dtype.name(), tensor: tensor.to_string(), reason }
}

/// The converted matrices of a model: every kind of [`PackedWeights::KINDS`], per layer for the per-layer
/// ones. The model's flat `f32` buffer then holds everything else (its layout gives these kinds no room).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub dtype: DType,
    /// `(vocab_size, n_embd)`: the embedding rows and the output layer.
    pub wte: Matrix,
    /// Per layer, in [`PackedWeights::LAYER_KINDS`] order.
    pub layers: Vec<[Matrix; 4]>,
}

impl PackedWeights {
    /// The per-layer matrices, in storage order.
    pub const LAYER_KINDS: [ParamKind; 4] = [ParamKind::QkvW, ParamKind::AttnProjW, ParamKind::FcW, ParamKind::FcProjW];
    /// Every converted kind.
    pub const KINDS: [ParamKind; 5] =
        [ParamKind::Wte, ParamKind::QkvW, ParamKind::AttnProjW, ParamKind::FcW, ParamKind::FcProjW];

    /// Matrix of `kind` (one of [`Self::KINDS`]) at `layer` (ignored for the embedding).
    pub fn matrix(&self, kind: ParamKind, layer: usize) -> Option<&Matrix> {
        if kind == ParamKind::Wte {
            return Some(&self.wte);
        }
        let i = Self::LAYER_KINDS.iter().position(|&k| k == kind)?;
        self.layers.get(layer).map(|m| &m[i])
    }

    /// The matrices of a model of `n_layer` blocks, each made by `matrix(kind, layer)` (the embedding with
    /// layer 0) — the one place the per-kind, per-layer collection is assembled, whatever the source.
    pub fn assemble(
        dtype: DType,
        n_layer: usize,
        mut matrix: impl FnMut(ParamKind, usize) -> Result<Matrix>,
    ) -> Result<PackedWeights> {
        let wte = matrix(ParamKind::Wte, 0)?;
        let layers = (0..n_layer)
            .map(|l| -> Result<[Matrix; 4]> {
                let [a, b, c, d] = Self::LAYER_KINDS.map(|k| matrix(k, l));
                Ok([a?, b?, c?, d?])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PackedWeights { dtype, wte, layers })
    }

    /// Bytes of every converted matrix together.
    pub fn bytes(&self) -> usize {
        self.wte.bytes() + self.layers.iter().flatten().map(Matrix::bytes).sum::<usize>()
    }
}

impl Gpt {
    /// How the weight matrices are stored.
    pub fn dtype(&self) -> DType {
        self.packed.as_ref().map_or(DType::F32, |p| p.dtype)
    }

    /// This model with its weight matrices converted to `dtype` — the `f32` copies are dropped. A model in
    /// another type is widened to `f32` first (so converting twice rounds twice); `f32` widens.
    ///
    /// # Errors
    /// A model with unmerged LoRA adapters (merge them first), or a block type whose rows are not whole
    /// blocks, naming the tensor.
    pub fn with_dtype(self, dtype: DType) -> Result<Gpt> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        let model = self.into_f32_weights();
        if dtype == DType::F32 {
            return Ok(model);
        }
        if model.lora.is_some() {
            return Err(ModelError::InvalidConfig {
                field: "dtype",
                reason: "a model with LoRA adapters attached converts only after they are merged".into(),
            });
        }
        let cfg = &model.config;
        let convert = |kind: ParamKind, layer: usize| {
            let cols = kind.shape(cfg).last().copied().unwrap_or(0);
            Matrix::convert(dtype, &model.params[model.layout.layer_range(kind, layer)], cols, &kind.hf_name(layer))
        };
        let packed = PackedWeights::assemble(dtype, cfg.n_layer, convert)?;
        let layout = ParamLayout::without(cfg, &PackedWeights::KINDS);
        let mut params = Vec::with_capacity(layout.total());
        for kind in ParamKind::ALL {
            params.extend_from_slice(&model.params[model.layout.range(kind)][..layout.range(kind).len()]);
        }
        Ok(Gpt { layout, params, packed: Some(packed), ..model })
    }

    /// A model from a checkpoint loaded as [`crate::checkpoint::load_model_dir_as`] gives it: `params` in the
    /// layout without the converted kinds when `packed` is some, the full layout otherwise.
    pub fn from_parts(config: ModelConfig, params: Vec<f32>, packed: Option<PackedWeights>) -> Result<Gpt> {
        let Some(packed) = packed else { return Gpt::from_params(config, params) };
        config.validate()?;
        let layout = ParamLayout::without(&config, &PackedWeights::KINDS);
        let expected_layers = config.n_layer;
        if params.len() != layout.total() || packed.layers.len() != expected_layers {
            return Err(ModelError::InvalidConfig {
                field: "parameters",
                reason: format!(
                    "expected {} f32 values and {expected_layers} layers of converted matrices, got {} and {}",
                    layout.total(),
                    params.len(),
                    packed.layers.len()
                ),
            });
        }
        Ok(Gpt { config, layout, params, lora: None, packed: Some(packed) })
    }

    /// This model with every weight matrix in `f32` (a converted model's widened values: the weights it
    /// computes with, exactly), for the jobs that need `f32` weights — gradients, inspection by backward.
    pub fn into_f32_weights(self) -> Gpt {
        let Some(packed) = self.packed else { return self };
        let cfg = &self.config;
        let layout = ParamLayout::new(cfg);
        let mut params = vec![0.0f32; layout.total()];
        for kind in ParamKind::ALL {
            let range = layout.range(kind);
            if !PackedWeights::KINDS.contains(&kind) {
                params[range].copy_from_slice(&self.params[self.layout.range(kind)]);
                continue;
            }
            let cols = kind.shape(cfg).last().copied().unwrap_or(0);
            let layers = if kind.per_layer() { cfg.n_layer } else { 1 };
            for l in 0..layers {
                if let Some(m) = packed.matrix(kind, l) {
                    params[layout.layer_range(kind, l)].copy_from_slice(&m.to_f32(cols));
                }
            }
        }
        Gpt { layout, params, packed: None, ..self }
    }

    /// The weight matrix of `kind` (one of [`PackedWeights::KINDS`]) at `layer`, in its stored type.
    pub fn matrix(&self, kind: ParamKind, layer: usize) -> Weights<'_> {
        match self.packed.as_ref().and_then(|p| p.matrix(kind, layer)) {
            Some(m) => m.view(),
            None => Weights::F32(&self.params[self.layout.layer_range(kind, layer)]),
        }
    }

    /// Bytes the parameters take in memory: the `f32` buffer plus the converted matrices.
    pub fn weight_bytes(&self) -> usize {
        4 * self.params.len() + self.packed.as_ref().map_or(0, PackedWeights::bytes)
    }

    /// Refuses `job` on a model whose matrices are not `f32`.
    pub fn require_f32(&self, job: &'static str) -> Result<()> {
        match &self.packed {
            Some(p) => Err(ModelError::NeedsF32Weights { job, dtype: p.dtype.name() }),
            None => Ok(()),
        }
    }

    /// Embeddings of `tokens` (rows of `t`, each row's positions from `pos0`) into `out`: token row plus
    /// position row. An `f32` model uses the encoder kernel; another type widens each token's row first.
    pub(crate) fn embed(&self, out: &mut [f32], tokens: &[u32], t: usize, pos0: usize) {
        let c = self.config.n_embd;
        let p = self.layout.split(&self.params);
        let Some(packed) = &self.packed else {
            return encoder::forward(out, tokens, p.wte, p.wpe, t, pos0, c);
        };
        let wte = packed.wte.view();
        for (i, (row, &token)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
            let token = token as usize;
            wte.rows_to_f32(c, token..token + 1, row);
            let pos = pos0 + i % t.max(1);
            for (o, w) in row.iter_mut().zip(&p.wpe[pos * c..(pos + 1) * c]) {
                *o += w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_list_the_choices() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>(), Ok(d));
            assert_eq!(d.name().to_uppercase().parse::<DType>(), Ok(d));
        }
        let err = "q5_k".parse::<DType>().unwrap_err();
        assert!(err.contains("q5_k") && err.contains("f32, bf16, f16, q8_0, q4_0"), "{err}");
        assert_eq!(DType::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(DType::Q4_0.bits_per_weight(), 4.5);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused_naming_the_tensor() {
        let w = vec![0.5f32; 3 * 40];
        let err = Matrix::convert(DType::Q4_0, &w, 40, "h.0.mlp.c_fc.weight").unwrap_err().to_string();
        assert!(err.contains("h.0.mlp.c_fc.weight") && err.contains("40") && err.contains("q4_0"), "{err}");
        // 16-bit floats have no blocks: any row length converts.
        let m = Matrix::convert(DType::Bf16, &w, 40, "x").expect("bf16");
        assert_eq!(m.to_f32(40), w);
    }

    #[test]
    fn conversion_round_trips_within_each_types_rounding() {
        let w: Vec<f32> = (0..64 * 4).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for (dtype, tol) in [(DType::Bf16, 2e-2), (DType::F16, 2e-3), (DType::Q8_0, 2e-2), (DType::Q4_0, 0.3)] {
            let m = Matrix::convert(dtype, &w, 64, "t").expect("convert");
            assert_eq!(m.dtype(), dtype);
            let back = m.to_f32(64);
            let worst = w.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= tol, "{dtype}: worst round-trip error {worst} > {tol}");
            assert!(worst > 0.0, "{dtype}: conversion changed nothing");
        }
    }
}
