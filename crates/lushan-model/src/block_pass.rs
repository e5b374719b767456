//! What the blocks of one pass share, and how a pass runs a linear layer: the training GEMM (with this
//! step's packed weights when there are some) or the inference kernels.

use crate::gpt::{Gpt, Mode};
use crate::intervene::Edit;
use crate::params::ParamKind;
use crate::step_weights::StepWeights;
use crate::weights::{self, Weights};
use lushan_kernels::packed_gemm::{PackedB, Precision};
use lushan_kernels::{gelu, matmul};

impl Gpt {
    /// Block `l`'s `kind` weight for a pass's linear layer, with its packed copy when the step has one.
    pub(crate) fn weight<'w>(&'w self, kind: ParamKind, l: usize, pass: &BlockPass<'w>) -> LayerWeight<'w> {
        (self.matrix(kind, l), pass.step.and_then(|s| s.layer(kind, l)))
    }
}

/// A linear layer's weight as a pass reads it: as stored, and packed for this step's products if it was.
pub(crate) type LayerWeight<'a> = (Weights<'a>, Option<&'a PackedB>);

/// What every block of one forward pass shares (see [`Gpt::block_forward`]).
#[derive(Clone, Copy)]
pub(crate) struct BlockPass<'a> {
    pub(crate) mode: Mode,
    pub(crate) edits: &'a [Edit],
    pub(crate) b: usize,
    pub(crate) t: usize,
    /// Keep the attention probabilities (else their log-sum-exp: training buffers).
    pub(crate) attention_maps: bool,
    pub(crate) last_block_rows_only: bool,
    pub(crate) counted_rows: &'a [usize],
    /// The linear layers' matrix products.
    pub(crate) precision: Precision,
    /// This optimizer step's packed weights, when the caller packed them ([`Gpt::pack_for_step`]).
    pub(crate) step: Option<&'a StepWeights<'a>>,
}

impl BlockPass<'_> {
    /// A linear layer `out = inp·Wᵀ + b`: a training pass takes the packed GEMM in the run's precision
    /// ([`weights::forward_in`]), reading the step's packed `Wᵀ` when it has one; an inference pass with
    /// `f32` products the inference kernels ([`weights::forward`]), whose rows are the same bits at every
    /// row count, as in cached decoding.
    pub(crate) fn linear(
        &self,
        out: &mut [f32],
        inp: &[f32],
        w: LayerWeight<'_>,
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
    ) {
        match (self.mode, w) {
            (Mode::Train { .. }, (Weights::F32(values), packed @ Some(_))) => {
                matmul::forward_in(self.precision, out, inp, matmul::Weight { values, packed }, bias, c, oc)
            }
            (Mode::Eval, (w, _)) if self.precision == Precision::F32 => weights::forward(out, inp, w, bias, c, oc),
            (_, (w, _)) => weights::forward_in(self.precision, out, inp, w, bias, c, oc),
        }
    }

    /// [`Self::linear`] and then GELU, `pre = inp·Wᵀ + b` (kept for the backward pass) and `out =
    /// gelu(pre)`: where the layer takes the packed GEMM (training, f32 weights), the GELU runs in the
    /// product's epilogue on each finished tile ([`matmul::forward_gelu_in`]) — the same values.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_gelu(
        &self,
        (pre, out): (&mut [f32], &mut [f32]),
        inp: &[f32],
        w: LayerWeight<'_>,
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
    ) {
        match (self.mode, w) {
            (Mode::Train { .. }, (Weights::F32(values), packed)) => {
                let weight = matmul::Weight { values, packed };
                matmul::forward_gelu_in(self.precision, (pre, out), inp, weight, bias, c, oc)
            }
            _ => {
                self.linear(pre, inp, w, bias, c, oc);
                gelu::forward(out, pre);
            }
        }
    }
}

/// Backward of a linear layer `y = x·Wᵀ + b`, **accumulating** `dx += dy·W` and, unless the weights are
/// frozen (`None`), `dW += dyᵀ·x` and `db += Σ dy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    precision: Precision,
    dx: &mut [f32],
    dweights: Option<(&mut [f32], &mut [f32])>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    c: usize,
    oc: usize,
) {
    match dweights {
        Some((dw, db)) => matmul::backward_in(precision, Some(dx), dw, Some(db), dy, x, w, c, oc),
        None => matmul::backward_input_in(precision, dx, dy, w, c, oc),
    }
}
