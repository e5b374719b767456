//! The output layer after the final layer norm (DESIGN.md §12): the tied language-model head or the
//! sequence-classification score head, forward and backward.
//!
//! - Language model: `logits = lnf · wteᵀ` per position. With targets of which some are ignored (the prompt
//!   tokens of a fine-tuning example, padding), only the counted rows are projected onto the vocabulary —
//!   the masked half of an SFT batch never pays for the largest product of the model.
//! - Classifier (`GPT2ForSequenceClassification`): each sequence is pooled at its last token that is not
//!   `pad_token_id` (Hugging Face's rule: the rightmost non-padding position, 0 when the row is all
//!   padding), then `logits = pooled · scoreᵀ` (no bias) and the loss is the mean cross-entropy over
//!   sequences.
//!
//! Both run through one loop over chunks of rows ([`pass`]): a chunk's logits, softmax and losses, and in a
//! training pass its gradient at once, so a language model's (rows, V) logits, probabilities and logit
//! gradient never exist whole — only inspection buffers keep every row's logits, for their readers.

use crate::activations::{Activations, LayerActs, Scratch};
use crate::config::{Head, ModelConfig};
use crate::gpt::Gpt;
use crate::intervene::{self, Edit, Site};
use crate::lora::Lora;
use crate::params::{Layer, ParamKind};
use crate::step_weights::{HeadPacks, StepWeights};
use lushan_kernels::crossentropy::{self, IGNORE_INDEX};
use lushan_kernels::matmul;
use lushan_kernels::packed_gemm::{self, PackedB, Precision, Strided, Then};
use lushan_kernels::weights::{self, Weights};
use lushan_kernels::{gelu, layernorm};

/// A training pass's gradient buffer (the model's trainable layout) and the weight of this batch's mean
/// loss in it (gradient accumulation over k micro-batches passes `1/k`).
pub(crate) struct LossGradient<'g> {
    pub grads: &'g mut [f32],
    pub loss_scale: f32,
}

impl Gpt {
    /// The output layer over the rows the last forward set up in `acts` — a language model's every row or
    /// its counted rows, a classifier's pooled ones — and their loss against `acts.targets` when `targets`
    /// ([`pass`]). With `gradient`, also the loss's gradient: into the head weight's part of the gradient
    /// buffer, unless frozen, and onto the final norm's output, `scratch.dln` (which it overwrites), where
    /// the rest of the backward starts. Returns the mean loss (`None` without targets).
    pub(crate) fn head_pass(
        &self,
        acts: &mut Activations,
        targets: bool,
        project: Project,
        (gradient, step): (Option<LossGradient<'_>>, Option<&StepWeights<'_>>),
        logits_ready: bool,
    ) -> Option<f32> {
        let cfg = &self.config;
        let (t, c) = (acts.t, cfg.n_embd);
        let p = self.layout.split(&self.params);
        let precision = acts.precision;
        let Activations { lnf, logits, losses, pooled, inputs, targets: kept, counted_rows, scratch: s, .. } = acts;
        let (weight, width, f32_weight) = match &cfg.head {
            Head::LanguageModel => (self.matrix(ParamKind::Wte, 0), cfg.vocab_size, p.wte),
            Head::Classifier { labels, .. } => {
                let score = self.lora.as_ref().and_then(Lora::score).unwrap_or(p.score);
                (Weights::F32(score), labels.len(), score)
            }
        };
        // The rows the head reads: all of lnf, or rows gathered from it (each row's gradient scattered back),
        // as (list, stride): row k is `k·stride + list[k]`.
        let rows: Option<(&[usize], usize)> = match &cfg.head {
            Head::LanguageModel if counted_rows.is_empty() => None,
            Head::LanguageModel => Some((counted_rows.as_slice(), 0)),
            Head::Classifier { pad_token_id, .. } => {
                pool_positions(pooled, inputs, t, *pad_token_id);
                Some((pooled.as_slice(), t))
            }
        };
        if let Some(rows) = rows {
            gather_rows(&mut s.head_in, lnf, row_indices(rows), c);
        }
        let counted_lm_rows = rows.is_some() && matches!(cfg.head, Head::LanguageModel);
        let has_gradient = gradient.is_some();
        let gradient = match gradient {
            Some(LossGradient { grads, loss_scale }) => {
                // The pass accumulates into dinp; gathered rows are then scattered (added) into dln.
                s.dln.fill(0.0);
                let dinp: &mut [f32] = if rows.is_some() {
                    s.dhead_in.fill(0.0);
                    &mut s.dhead_in
                } else {
                    &mut s.dln
                };
                Some(HeadGradient { weight: f32_weight, dweight: self.head_weight_grad(grads), dinp, loss_scale })
            }
            None => None,
        };
        let inp: &[f32] = if rows.is_some() { &s.head_in } else { lnf };
        let row_losses: &mut [f32] = if counted_lm_rows { &mut s.head_losses } else { &mut losses[..] };
        let bufs = HeadBuffers {
            logits,
            logits_ready,
            chunk_z: &mut s.head_z,
            chunk_p: &mut s.head_p,
            chunk_dlosses: &mut s.head_dlosses,
            losses: row_losses,
        };
        // The step's packs hold the language model's embedding (a classifier's score head is not packed).
        let packs = step.and_then(StepWeights::head).filter(|_| matches!(cfg.head, Head::LanguageModel));
        let products = Products { project, precision, packs };
        let mean = pass(inp, weight, products, targets.then_some(&kept[..]), gradient, bufs, c, width);
        if let Some(rows) = rows {
            if has_gradient {
                scatter_add_rows(&mut s.dln, &s.dhead_in, row_indices(rows), c);
            }
            if counted_lm_rows && targets {
                losses.fill(0.0);
                for (r, &l) in row_indices(rows).zip(s.head_losses.iter()) {
                    losses[r] = l;
                }
            }
        }
        mean
    }

    /// The part of `grads` (this model's trainable layout) that receives the output layer's weight
    /// gradient: the token embedding or the score head; `None` when that weight is frozen (the base under
    /// LoRA adapters, unless the adapter carries the classifier's score head).
    fn head_weight_grad<'g>(&self, grads: &'g mut [f32]) -> Option<&'g mut [f32]> {
        match (&self.lora, &self.config.head) {
            (None, Head::LanguageModel) => grads.get_mut(self.layout.range(ParamKind::Wte)),
            (None, Head::Classifier { .. }) => grads.get_mut(self.layout.range(ParamKind::Score)),
            (Some(_), Head::LanguageModel) => None,
            (Some(lora), Head::Classifier { .. }) => lora.layout.score_range().and_then(|r| grads.get_mut(r)),
        }
    }
}

/// Rows of `targets` that count (not [`IGNORE_INDEX`]); `None` when all of them do.
pub(crate) fn counted_rows(targets: &[u32]) -> Option<Vec<usize>> {
    if targets.iter().all(|&t| t != IGNORE_INDEX) {
        return None;
    }
    Some(targets.iter().enumerate().filter(|&(_, &t)| t != IGNORE_INDEX).map(|(i, _)| i).collect())
}

/// The position each sequence is pooled at: its last token that is not `pad` (0 if there is none).
///
/// # Shapes
/// `inputs`: (B, T); `pooled`: (B).
pub(crate) fn pool_positions(pooled: &mut [usize], inputs: &[u32], t: usize, pad: u32) {
    for (p, row) in pooled.iter_mut().zip(inputs.chunks_exact(t)) {
        *p = row.iter().rposition(|&tok| tok != pad).unwrap_or(0);
    }
}

/// Rows of lnf a list names: row `k` is `k·stride + list[k]` — counted rows (stride 0) or each sequence's
/// pooled position (stride T).
fn row_indices((list, stride): (&[usize], usize)) -> impl Iterator<Item = usize> + '_ {
    list.iter().enumerate().map(move |(k, &r)| k * stride + r)
}

/// Copies rows `rows` of `src` (row width `c`) into consecutive rows of `dst`.
pub(crate) fn gather_rows(dst: &mut [f32], src: &[f32], rows: impl Iterator<Item = usize>, c: usize) {
    for (out, r) in dst.chunks_exact_mut(c).zip(rows) {
        out.copy_from_slice(&src[r * c..(r + 1) * c]);
    }
}

/// Backward of [`gather_rows`], **accumulating**: row `k` of `dsrc_rows` is added to row `rows[k]` of `dst`.
pub(crate) fn scatter_add_rows(dst: &mut [f32], dsrc_rows: &[f32], rows: impl Iterator<Item = usize>, c: usize) {
    for (g, r) in dsrc_rows.chunks_exact(c).zip(rows) {
        for (d, &x) in dst[r * c..(r + 1) * c].iter_mut().zip(g) {
            *d += x;
        }
    }
}

/// Bytes of one chunk of output-layer rows (`rows × width` floats): the language-model head never holds
/// the logits, probabilities or logit gradient of more rows than fit in this, in each of its two chunk
/// buffers.
///
/// 32 MiB is 166 rows of GPT-2's 50 257-token vocabulary: at T = 1024 the two buffers take 64 MiB where
/// three (T, V) buffers took 589 MiB. Smaller chunks would save little more and cost time: each chunk's
/// products stream the whole (V, C) embedding once more (the logits and `dh = dlogits·Wte` read it, `dWte
/// += dlogitsᵀ·h` reads and writes its gradient, with only `rows` as the inner dimension), so with fewer
/// than ~128 rows per chunk that traffic starts to rival the arithmetic. A small vocabulary (a character
/// model's 65) fits every row of a batch in one chunk: such models run the head as one product, as before.
pub const HEAD_CHUNK_BYTES: usize = 32 << 20;

/// Rows of a `width`-wide output layer that fit in [`HEAD_CHUNK_BYTES`] (at least one).
pub fn chunk_rows(width: usize) -> usize {
    (HEAD_CHUNK_BYTES / (4 * width.max(1))).max(1)
}

/// How the output layer computes `out = inp · Wᵀ` (no bias) in f32.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Project {
    /// The inference kernels ([`weights::forward`]): each row the same bits at every row count.
    Inference,
    /// Row by row ([`weights::forward_rows`]), for explain's sweeps, whose rows must not depend on how many
    /// are projected.
    Rows,
    /// A training pass's GEMM ([`weights::forward_gemm`]), whose weight may be packed beforehand.
    Training,
}

impl Project {
    fn run(self, out: &mut [f32], inp: &[f32], w: Weights<'_>, c: usize, width: usize) {
        let project = match self {
            Project::Inference => weights::forward,
            Project::Rows => weights::forward_rows,
            Project::Training => weights::forward_gemm,
        };
        project(out, inp, w, None, c, width)
    }
}

/// How [`pass`] computes its products: `project` for the logits inspection buffers keep, the training
/// products in `precision`, reading the step's packed weight when given.
pub(crate) struct Products<'a> {
    pub project: Project,
    pub precision: Precision,
    pub packs: Option<&'a HeadPacks>,
}

/// The gradient a training pass takes through the output layer at once, chunk by chunk.
pub(crate) struct HeadGradient<'a> {
    /// The weight in `f32` (training refuses other types), (width, C).
    pub weight: &'a [f32],
    /// Its gradient, **accumulated**; `None` when it is frozen (the embedding under LoRA adapters).
    pub dweight: Option<&'a mut [f32]>,
    /// The gradient of the input rows, (rows, C), **accumulated**: where the rest of the backward starts.
    pub dinp: &'a mut [f32],
    /// Gradient accumulation's weight of this batch's mean loss.
    pub loss_scale: f32,
}

/// Where the output layer's pass reads and writes.
pub(crate) struct HeadBuffers<'a> {
    /// Every row's logits, (rows, width), when the buffers keep them (inspection buffers, a classifier's
    /// few); empty for training buffers, which hold one chunk's at a time.
    pub logits: &'a mut [f32],
    /// `logits` already hold this pass's values (a backward after a forward that kept them).
    pub logits_ready: bool,
    /// One chunk's logits, then the same chunk's logit gradient, (chunk, width); its length sets the chunk.
    pub chunk_z: &'a mut [f32],
    /// One chunk's probabilities, (chunk, width).
    pub chunk_p: &'a mut [f32],
    /// One chunk's loss gradients, (chunk).
    pub chunk_dlosses: &'a mut [f32],
    /// Per-row cross-entropy, (rows).
    pub losses: &'a mut [f32],
}

/// The output layer and its loss, chunk by chunk — the forward of every pass and, when `gradient` is given,
/// its backward fused in (Liger-Kernel's "fused linear cross-entropy"): per chunk of rows,
/// `z = inp·Wᵀ`, `p = softmax(z)`, `loss_i = −ln p[i, y_i]`, then `dz = s·(p − onehot(y))` with
/// `s = loss_scale / counted rows` (the mean's gradient, see [`backward`]), `dW += dzᵀ·inp` and
/// `dinp += dz·W`. No more than one chunk's (rows, width) values exist at a time unless `bufs.logits` keeps
/// them all. Returns the mean loss over counted targets; `None` without targets (logits only).
///
/// The chunks' products run in `precision` when the weight is `f32` (training, evaluation in training),
/// reading the weight packed beforehand when several chunks share it (`products.packs`, or packed here);
/// `project` computes the logits `bufs.logits` keeps (inspection), always in f32.
///
/// # Shapes
/// `inp`: (rows, C); `weight`: (width, C); `targets`: (rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pass(
    inp: &[f32],
    weight: Weights<'_>,
    Products { project, precision, packs }: Products<'_>,
    targets: Option<&[u32]>,
    mut gradient: Option<HeadGradient<'_>>,
    bufs: HeadBuffers<'_>,
    c: usize,
    width: usize,
) -> Option<f32> {
    let HeadBuffers { logits, logits_ready, chunk_z, chunk_p, chunk_dlosses, losses } = bufs;
    let rows = inp.len() / c;
    if !logits.is_empty() && !logits_ready {
        project.run(logits, inp, weight, c, width);
    }
    let targets = targets?;
    let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let dloss = gradient.as_ref().map_or(0.0, |g| g.loss_scale / counted.max(1) as f32);
    let chunk = (chunk_z.len() / width.max(1)).max(1);
    // Products over several chunks read the weight packed once for all of them — the step's packs, or packed
    // here: as Wᵀ for the logits and, with a gradient, as W for the input gradient.
    // A pass of its own packs only reduced-precision operands: in f32 the two packed copies (the whole
    // embedding twice, 300 MB at GPT-2's size) measured no faster than packing block by block as the chunks
    // go (2026-12-03, 124M B1·T1024), and they would cost a long-context run that memory.
    let packed_here = match weight {
        Weights::F32(w) if packs.is_none() && logits.is_empty() && rows > chunk && precision != Precision::F32 => {
            matmul::pack_forward(precision, w, c, width).map(|forward| {
                let input_grad = gradient.as_ref().and_then(|_| matmul::pack_input_gradient(precision, w, c, width));
                (forward, input_grad)
            })
        }
        _ => None,
    };
    let prepacked: Option<(&PackedB, Option<&PackedB>)> = match (packs, &packed_here) {
        // (f32 products other than a training pass's take the inference kernels, which read no packs.)
        (Some(p), _) if logits.is_empty() && (precision != Precision::F32 || project == Project::Training) => {
            Some((&p.forward, Some(&p.input_grad)))
        }
        (_, Some((forward, input_grad))) => Some((forward, input_grad.as_ref())),
        _ => None,
    };
    for start in (0..rows).step_by(chunk) {
        let end = rows.min(start + chunk);
        let (n, cols, ins) = (end - start, start * width..end * width, start * c..end * c);
        let (z_buf, p) = (&mut chunk_z[..n * width], &mut chunk_p[..n * width]);
        let z: &[f32] = if logits.is_empty() {
            match (weight, prepacked) {
                (Weights::F32(values), Some((forward, _))) => {
                    // Through the layer's routing (a chunk of a few rows takes the matrix-vector kernel), so
                    // a packed weight changes no value.
                    let w = matmul::Weight { values, packed: Some(forward) };
                    matmul::forward_in(precision, z_buf, &inp[ins.clone()], w, None, c, width)
                }
                (Weights::F32(w), None) if precision != Precision::F32 => {
                    matmul::forward_in(precision, z_buf, &inp[ins.clone()], w, None, c, width)
                }
                _ => project.run(z_buf, &inp[ins.clone()], weight, c, width),
            }
            z_buf
        } else {
            &logits[cols]
        };
        crossentropy::forward(&mut losses[start..end], p, z, &targets[start..end], width);
        if let Some(g) = gradient.as_mut() {
            // z is spent: its buffer takes the chunk's logit gradient.
            let dinp = &mut g.dinp[ins.clone()];
            let dlosses = &mut chunk_dlosses[..n];
            backward(
                (precision, prepacked.and_then(|(_, input_grad)| input_grad)),
                dinp,
                g.dweight.as_deref_mut(),
                z_buf,
                dlosses,
                p,
                &targets[start..end],
                &inp[ins],
                g.weight,
                dloss,
                c,
                width,
            );
        }
    }
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    Some(if counted == 0 { 0.0 } else { (total / counted as f64) as f32 })
}

/// Backward of the loss through the head's projection `logits = inp · Wᵀ`: with every counted row's loss
/// weighted `dloss` (`loss_scale / counted rows` for a mean), fills `dlogits`, then **accumulates**
/// `dinp += dlogits·W` (with `W` packed beforehand when `input_grad` is given) and, when given,
/// `dweight += dlogitsᵀ·inp`, both products in `precision`.
///
/// # Shapes
/// `dlogits`, `probs`: (rows, width); `dlosses`, `targets`: (rows); `dinp`, `inp`: (rows, C);
/// `weight`, `dweight`: (width, C).
#[allow(clippy::too_many_arguments)]
fn backward(
    (precision, input_grad): (Precision, Option<&PackedB>),
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dlogits: &mut [f32],
    dlosses: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    inp: &[f32],
    weight: &[f32],
    dloss: f32,
    c: usize,
    width: usize,
) {
    dlosses.fill(dloss);
    // loss = Σ dloss · crossentropy(logits, targets)
    dlogits.fill(0.0);
    crossentropy::backward(dlogits, dlosses, probs, targets, width);
    // logits = inp · Wᵀ
    match (dweight, input_grad) {
        (dweight, Some(packed)) => {
            let rows = dinp.len() / c;
            let dlogits_rows = Strided { data: dlogits, rs: width, cs: 1 };
            packed_gemm::gemm_packed(rows, dlogits_rows, packed, (1.0, None, Then::Nothing), dinp, c);
            if let Some(dweight) = dweight {
                matmul::backward_in(precision, None, dweight, None, dlogits, inp, weight, c, width);
            }
        }
        (Some(dweight), None) => {
            matmul::backward_in(precision, Some(dinp), dweight, None, dlogits, inp, weight, c, width)
        }
        (None, None) => matmul::backward_input_in(precision, dinp, dlogits, weight, c, width),
    }
}

/// The last block past its attention (the head outputs `a.atty`, already edited) for `rows` only, for a
/// forward whose reader needs only those rows' logits: the output projection, the MLP and both residual
/// adds run on the gathered rows, and their results are scattered into the block's output stream
/// `a.residual3`. Its other rows, and the first rows of the block's later buffers (which hold the compact
/// rows), are left stale. Eval mode, no adapters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn last_block_on_rows(
    a: &mut LayerActs,
    x: &[f32],
    w: &Layer<&[f32]>,
    edits: &[Edit],
    rows: &[usize],
    scratch: &mut Scratch,
    cfg: &ModelConfig,
    layer: usize,
    t: usize,
) {
    let (c, k, eps) = (cfg.n_embd, rows.len(), cfg.layer_norm_epsilon);
    let (gathered, branch) = (&mut scratch.branch2[..k * c], &mut scratch.branch[..k * c]);
    gather_rows(gathered, &a.atty, rows.iter().copied(), c);
    // Row by row (`forward_rows`): each counted row's result does not depend on how many rows are counted,
    // so a batched sweep reads exactly what each variant's own pass gives.
    weights::forward_rows(branch, gathered, Weights::F32(w.attn_proj_w), Some(w.attn_proj_b), c, c);
    intervene::apply_rows(edits, Site::AttnOut { layer }, branch, rows, cfg, t);
    gather_rows(gathered, x, rows.iter().copied(), c);
    let residual2 = &mut a.residual2[..k * c];
    let (ln2, mean, rstd) = (&mut a.ln2[..k * c], &mut a.ln2_mean[..k], &mut a.ln2_rstd[..k]);
    layernorm::forward_residual((residual2, ln2), mean, rstd, (gathered, branch), w.ln2_w, w.ln2_b, c, eps);
    let (fch, fch_gelu) = (&mut a.fch[..k * 4 * c], &mut a.fch_gelu[..k * 4 * c]);
    weights::forward_rows(fch, ln2, Weights::F32(w.fc_w), Some(w.fc_b), c, 4 * c);
    gelu::forward(fch_gelu, fch);
    weights::forward_rows(branch, fch_gelu, Weights::F32(w.fc_proj_w), Some(w.fc_proj_b), 4 * c, c);
    intervene::apply_rows(edits, Site::MlpOut { layer }, branch, rows, cfg, t);
    for (i, &r) in rows.iter().enumerate() {
        let out = &mut a.residual3[r * c..(r + 1) * c];
        out.iter_mut()
            .zip(&residual2[i * c..(i + 1) * c])
            .zip(&branch[i * c..(i + 1) * c])
            .for_each(|((o, x), y)| *o = x + y);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_transformers_last_non_pad_rule() {
        let inputs = [5, 6, 9, 9, /**/ 9, 9, 9, 9, /**/ 1, 9, 2, 9, /**/ 1, 2, 3, 4];
        let mut pooled = [0; 4];
        pool_positions(&mut pooled, &inputs, 4, 9);
        // All padding → 0 (argmax of an all-zero mask); a pad token inside the text does not end it.
        assert_eq!(pooled, [1, 0, 2, 3]);
    }

    #[test]
    fn gather_and_scatter_are_adjoint() {
        let src: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut dst = vec![0.0; 4];
        gather_rows(&mut dst, &src, [2, 0].into_iter(), 2);
        assert_eq!(dst, [4.0, 5.0, 0.0, 1.0]);
        let mut back = vec![1.0; 12];
        scatter_add_rows(&mut back, &dst, [2, 0].into_iter(), 2);
        assert_eq!(&back[..6], &[1.0, 2.0, 1.0, 1.0, 5.0, 6.0]);
        assert_eq!(counted_rows(&[1, IGNORE_INDEX, 3]), Some(vec![0, 2]));
        assert_eq!(counted_rows(&[1, 2]), None);
    }

    /// Loss, weight gradient and input gradient of [`pass`] over `rows` rows in chunks of `chunk` rows, on
    /// buffers that keep no logits; `dweight` and `dinp` start at 0.5 (accumulation).
    fn chunked(inp: &[f32], w: &[f32], targets: &[u32], chunk: usize, c: usize, v: usize) -> (f32, Vec<f32>, Vec<f32>) {
        let rows = targets.len();
        let (mut dw, mut dinp) = (vec![0.5; v * c], vec![0.5; rows * c]);
        let (mut z, mut p, mut dl, mut losses) =
            (vec![0.0; chunk * v], vec![0.0; chunk * v], vec![0.0; chunk], vec![0.0; rows]);
        let gradient = HeadGradient { weight: w, dweight: Some(&mut dw), dinp: &mut dinp, loss_scale: 0.25 };
        let bufs = HeadBuffers {
            logits: &mut [],
            logits_ready: false,
            chunk_z: &mut z,
            chunk_p: &mut p,
            chunk_dlosses: &mut dl,
            losses: &mut losses,
        };
        let loss = pass(
            inp,
            Weights::F32(w),
            Products { project: Project::Inference, precision: Precision::F32, packs: None },
            Some(targets),
            Some(gradient),
            bufs,
            c,
            v,
        );
        (loss.unwrap(), dw, dinp)
    }

    #[test]
    fn chunks_that_do_not_divide_the_rows_give_one_chunks_results() {
        let (rows, c, v) = (11, 5, 13);
        let mut rng = lushan_kernels::rng::Rng::new(4);
        let inp: Vec<f32> = (0..rows * c).map(|_| rng.next_normal() as f32).collect();
        let w: Vec<f32> = (0..v * c).map(|_| rng.next_normal() as f32).collect();
        let targets: Vec<u32> = (0..rows).map(|i| if i % 4 == 1 { IGNORE_INDEX } else { (i * 5 % v) as u32 }).collect();
        let (want_loss, want_dw, want_dinp) = chunked(&inp, &w, &targets, rows, c, v);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()));
        for chunk in [1, 3, 4, 10] {
            let (loss, dw, dinp) = chunked(&inp, &w, &targets, chunk, c, v);
            assert!((loss - want_loss).abs() <= 1e-6 * want_loss, "chunk {chunk}: loss {loss} vs {want_loss}");
            assert!(close(&dw, &want_dw) && close(&dinp, &want_dinp), "chunk {chunk}: gradients differ");
        }
        // The ignored rows receive nothing; the others something, weighted 0.25 / 8 counted rows.
        assert!(want_dinp[c..2 * c].iter().all(|&x| x == 0.5));
        assert!(want_dinp[..c].iter().any(|&x| x != 0.5));
    }
}
