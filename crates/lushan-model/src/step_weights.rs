//! Weights packed once per optimizer step.
//!
//! Every linear layer's forward product reads its weight `W` as `Wᵀ`, which [`packed_gemm`] repacks into
//! column panels on each call — a transposing copy of the whole weight per product. Within one optimizer
//! step the weights do not change, so a step that reads them more than once (gradient accumulation's
//! micro-batches, the recomputation of checkpointed blocks) can pack them once and hand the panels to every
//! pass: [`Gpt::pack_for_step`], then [`Gpt::forward_backward_packed`].
//!
//! [`StepWeights`] borrows the model, so the weights cannot change while their packed copy lives (the
//! optimizer's update needs the model mutably, after the step's passes). The products are the same bit for
//! bit: a packed-beforehand operand goes through the same blocks in the same order.
//!
//! ```compile_fail,E0502
//! # use lushan_model::{Gpt, ModelConfig};
//! # use lushan_kernels::packed_gemm::Precision;
//! let mut model = Gpt::new(ModelConfig::new(50, 16, 1, 2, 32), 1).unwrap();
//! let step = model.pack_for_step(Precision::Bf16);
//! model.params[0] = 1.0; // refused: the packs borrow the weights
//! drop(step);
//! ```
//!
//! Memory: about one more copy of the weight matrices (≈ 600 MB for GPT-2 124M in f32, the embedding in
//! both layouts its output layer reads; about half in bf16) — the trainer packs only for a step of several
//! micro-batches of a model large enough to gain from it (`lushan_train::parallel::packs_per_step`).

use crate::config::Head;
use crate::gpt::Gpt;
use crate::params::ParamKind;
use lushan_kernels::matmul;
use lushan_kernels::packed_gemm::{PackedB, Precision};

/// The four linear layers of a block, in the order [`StepWeights::layer`] takes.
const LAYER_MATRICES: [ParamKind; 4] = [ParamKind::QkvW, ParamKind::AttnProjW, ParamKind::FcW, ParamKind::FcProjW];

/// A model's weight matrices packed for one optimizer step's products in one precision; see the module
/// documentation.
pub struct StepWeights<'m> {
    model: &'m Gpt,
    precision: Precision,
    /// Per block, `Wᵀ` of each of [`LAYER_MATRICES`] as the forward product reads it.
    layers: Vec<[PackedB; 4]>,
    /// The language-model head's embedding: `Wteᵀ` for the logits and `Wte` for the input gradient.
    head: Option<HeadPacks>,
}

/// The output layer's weight in both layouts its chunks of rows read.
pub(crate) struct HeadPacks {
    pub forward: PackedB,
    pub input_grad: PackedB,
}

impl Gpt {
    /// This model's weight matrices packed for products in `precision`, for the passes of one optimizer
    /// step ([`Gpt::forward_backward_packed`]); `None` where packing beforehand does not apply: weights
    /// stored in another type than `f32`, or f32 products on a CPU whose GEMM packs nothing (without
    /// AVX-512 F).
    pub fn pack_for_step(&self, precision: Precision) -> Option<StepWeights<'_>> {
        if self.packed.is_some() || !matmul::packs_weights(precision) {
            return None;
        }
        let (c, p) = (self.config.n_embd, self.layout.split(&self.params));
        let shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
        let layers = (0..self.config.n_layer)
            .map(|l| {
                let w = p.layer(l);
                let values = [w.qkv_w, w.attn_proj_w, w.fc_w, w.fc_proj_w];
                let pack = |i: usize| {
                    let (c, oc) = shapes[i];
                    matmul::pack_forward(precision, values[i], c, oc)
                };
                Some([pack(0)?, pack(1)?, pack(2)?, pack(3)?])
            })
            .collect::<Option<Vec<_>>>()?;
        let head = match self.config.head {
            Head::LanguageModel => {
                let v = self.config.vocab_size;
                Some(HeadPacks {
                    forward: matmul::pack_forward(precision, p.wte, c, v)?,
                    input_grad: matmul::pack_input_gradient(precision, p.wte, c, v)?,
                })
            }
            Head::Classifier { .. } => None,
        };
        Some(StepWeights { model: self, precision, layers, head })
    }
}

impl StepWeights<'_> {
    /// The precision the products that read these packs run in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes the packed copies take.
    pub fn bytes(&self) -> usize {
        let layers: usize = self.layers.iter().flatten().map(PackedB::bytes).sum();
        layers + self.head.as_ref().map_or(0, |h| h.forward.bytes() + h.input_grad.bytes())
    }

    /// Whether these packs were made from `model`'s weights (the same model value, which they borrow).
    pub(crate) fn belongs_to(&self, model: &Gpt) -> bool {
        std::ptr::eq(self.model, model)
    }

    /// The packed `Wᵀ` of block `l`'s `kind` (one of the four linear layers' weights).
    pub(crate) fn layer(&self, kind: ParamKind, l: usize) -> Option<&PackedB> {
        let i = LAYER_MATRICES.iter().position(|&k| k == kind)?;
        self.layers.get(l).map(|m| &m[i])
    }

    /// The language-model head's packs (none for a classifier).
    pub(crate) fn head(&self) -> Option<&HeadPacks> {
        self.head.as_ref()
    }
}
