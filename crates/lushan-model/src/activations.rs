//! Buffers for one training/evaluation batch shape, allocated once by the caller (DESIGN.md §3).
//!
//! Forward activations that backward needs are stored per layer; gradient scratch is shared by all layers
//! because backward visits one layer at a time.
//!
//! Training buffers ([`Activations::for_training`]) keep less: no attention probabilities (the attention
//! keeps each row's log-sum-exp and its backward recomputes them, see `lushan_kernels::flash_attention`),
//! and with block checkpointing only each block's output, the other buffers of a block being one shared set
//! that the backward refills by running the block's forward again.
//!
//! Buffers are allocated for a largest shape (B, T) and can then be [`Activations::reshape`]d to any smaller
//! (b, t) — batches of task examples padded only to their own longest sequence — without allocating:
//! every buffer keeps its capacity and only its length changes.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
pub use crate::head::{HEAD_CHUNK_BYTES, chunk_rows as head_chunk_rows};
use lushan_kernels::flash_attention;
use lushan_kernels::packed_gemm::Precision;
use lushan_kernels::rng::Rng;

/// Per-layer activations kept for backward (and for inspection: `att` is the attention map).
#[derive(Debug, Default)]
pub struct LayerActs {
    pub ln1: Vec<f32>,
    pub ln1_mean: Vec<f32>,
    pub ln1_rstd: Vec<f32>,
    pub qkv: Vec<f32>,
    pub atty: Vec<f32>,
    /// Attention probabilities, (B, NH, T, T); zero above the diagonal. Empty in training buffers.
    pub att: Vec<f32>,
    /// Training buffers instead of `att`: each attention row's log-sum-exp, (B, T, NH).
    pub lse: Vec<f32>,
    pub residual2: Vec<f32>,
    pub ln2: Vec<f32>,
    pub ln2_mean: Vec<f32>,
    pub ln2_rstd: Vec<f32>,
    pub fch: Vec<f32>,
    pub fch_gelu: Vec<f32>,
    /// Output of the block (input of the next one).
    pub residual3: Vec<f32>,
    pub attn_mask: Vec<u8>,
    pub mlp_mask: Vec<u8>,
    /// LoRA: per adapted linear layer (in `LoraTarget::ALL` order), the low-rank hidden `A·drop(x)`
    /// (N, rank) and the adapter's input-dropout mask (N, in); empty without adapters.
    pub lora_hidden: [Vec<f32>; 4],
    pub lora_mask: [Vec<u8>; 4],
}

/// Everything forward and backward need for a (B, T) batch.
#[derive(Debug)]
pub struct Activations {
    pub(crate) b: usize,
    pub(crate) t: usize,
    capacity_b: usize,
    capacity_t: usize,
    dims: Dims,
    /// Token + position embedding (after embedding dropout): the input of layer 0.
    pub encoded: Vec<f32>,
    pub emb_mask: Vec<u8>,
    pub layers: Vec<LayerActs>,
    pub lnf: Vec<f32>,
    pub lnf_mean: Vec<f32>,
    pub lnf_rstd: Vec<f32>,
    /// Language-model head: (B, T, V), or — after a forward with targets some of which are ignored — only
    /// the rows whose target counts, in order ((M, V), M = counted targets), so masked positions of a
    /// fine-tuning batch never pay for the vocabulary projection. Empty in training buffers, whose head
    /// works on one chunk of rows at a time (`crate::head::pass`). Classifier head: (B, num_labels).
    pub logits: Vec<f32>,
    /// Per-position cross-entropy, (B, T) (0 for ignored targets); per sequence (B) for a classifier.
    pub losses: Vec<f32>,
    /// Classifier: the position pooled for each sequence (its last token that is not padding).
    pub pooled: Vec<usize>,
    pub(crate) targets: Vec<u32>,
    pub(crate) inputs: Vec<u32>,
    /// Rows (of B·T) whose target counts, when a forward with targets ignored some; empty otherwise.
    pub(crate) counted_rows: Vec<usize>,
    pub(crate) scratch: Scratch,
    /// How many leading layers (with the embeddings) hold an unedited eval-mode forward of `inputs`, so that
    /// [`Gpt::forward_edited`](crate::Gpt::forward_edited) can start at the first edited layer. 0 when unknown.
    pub(crate) clean_layers: usize,
    /// Set by a reader of counted rows only (explain's sweeps): an eval forward with some targets ignored
    /// then runs the last block past its attention on the counted rows alone, leaving the other rows of
    /// the last residual stream stale.
    pub(crate) last_block_rows_only: bool,
    /// Block checkpointing: the buffers of the block being computed (every [`LayerActs`] buffer but
    /// `residual3`), lent to one layer at a time; `None` when every layer keeps its own.
    pub(crate) work: Option<LayerActs>,
    /// Block checkpointing: the random streams at the start of each block, so that its recomputation draws
    /// the same dropout masks.
    pub(crate) block_seeds: Vec<BlockSeeds>,
    /// How the linear layers' and the output layer's matrix products run (`--precision`).
    pub(crate) precision: Precision,
}

/// The dropout and LoRA-dropout random streams as a block starts drawing from them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSeeds {
    pub dropout: Option<Rng>,
    pub lora: Rng,
}

impl LayerActs {
    /// Exchanges every buffer but the block output `residual3` with `work`: a checkpointed layer borrows the
    /// shared block buffers for its forward (or its recomputation and backward), and a second call gives
    /// them back.
    pub(crate) fn swap_work(&mut self, work: &mut LayerActs) {
        std::mem::swap(self, work);
        std::mem::swap(&mut self.residual3, &mut work.residual3);
    }
}

/// What training buffers keep between the forward and the backward, and how their products run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainingMemory {
    /// Keep only each transformer block's output during the forward; the backward runs each block's
    /// forward again just before its backward (`--checkpoint-activations`).
    pub checkpoint_blocks: bool,
    /// Keep the attention probabilities as inspection buffers do (and train with the kernel that keeps
    /// them): only to measure what the tiled attention saves (`lushan bench train --attention-maps`).
    pub attention_maps: bool,
    /// How the linear layers' and the output layer's matrix products run (`--precision`): f32 master
    /// weights, activations and gradients, only the products' operands rounded, as
    /// `torch.autocast(dtype=torch.bfloat16)` does. Attention, norms and LoRA adapters stay f32.
    pub precision: Precision,
}

/// Gradient and temporary buffers shared across layers.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub branch: Vec<f32>,
    pub branch2: Vec<f32>,
    pub dresidual: Vec<f32>,
    pub dln: Vec<f32>,
    pub dbranch: Vec<f32>,
    pub datty: Vec<f32>,
    pub dqkv: Vec<f32>,
    pub dfch_gelu: Vec<f32>,
    pub dfch: Vec<f32>,
    /// The output layer's chunk of rows (see [`crate::head::pass`]): its logits and then their gradient,
    /// its probabilities, (chunk, width), and its loss gradients, (chunk).
    pub head_z: Vec<f32>,
    pub head_p: Vec<f32>,
    pub head_dlosses: Vec<f32>,
    /// Per-row losses of the counted rows, in order (M), before they are scattered to `losses`.
    pub head_losses: Vec<f32>,
    pub att_grad: Vec<f32>,
    /// Gathered rows feeding the output layer: counted LM rows (M, C) or pooled classifier rows (B, C).
    pub head_in: Vec<f32>,
    pub dhead_in: Vec<f32>,
    /// LoRA: an adapter's dropped input (N, 4C at most) and low-rank gradient (N, rank).
    pub lora_x: Vec<f32>,
    pub lora_dx: Vec<f32>,
    pub lora_dh: Vec<f32>,
    /// Where a frozen base's layer-norm weight gradients go (computed by the kernel, never read).
    pub frozen_dw: Vec<f32>,
    pub frozen_db: Vec<f32>,
}

/// Room for LoRA adapters: their rank, which linear layers carry one (`LoraTarget::ALL` order: attention
/// QKV, attention projection, MLP up, MLP down) and whether adapter dropout needs masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraShape {
    pub rank: usize,
    pub targets: [bool; 4],
    pub dropout: bool,
}

/// The sizes buffers derive from.
#[derive(Debug, Clone, Copy)]
struct Dims {
    c: usize,
    v: usize,
    nh: usize,
    labels: usize,
    masks: bool,
    lora_rank: usize,
    lora_targets: [bool; 4],
    lora_masks: bool,
    /// Input width of each LoRA target (C, C, C, 4C).
    lora_in: [usize; 4],
    /// Keep the attention probabilities (`att`), else their log-sum-exp (`lse`).
    attention_maps: bool,
    checkpoint_blocks: bool,
    /// Keep every row's language-model logits (inspection buffers), else one chunk's (training buffers).
    keep_logits: bool,
    /// Rows per chunk of the output layer ([`crate::head::chunk_rows`] unless set for a test).
    head_chunk: usize,
}

fn fit<T: Clone + Default>(buf: &mut Vec<T>, len: usize) {
    buf.resize(len, T::default());
}

/// Sizes a block's buffers but its output `residual3` for a (b, t) batch, or empties them (`keep` false:
/// a checkpointed layer, whose block buffers are lent by the shared set while it runs).
fn fit_layer(a: &mut LayerActs, d: &Dims, b: usize, t: usize, keep: bool) {
    let (n, c) = (b * t, d.c);
    let on = |len: usize| if keep { len } else { 0 };
    let mask = |len: usize| if d.masks { on(len) } else { 0 };
    fit(&mut a.ln1, on(n * c));
    fit(&mut a.ln1_mean, on(n));
    fit(&mut a.ln1_rstd, on(n));
    fit(&mut a.qkv, on(n * 3 * c));
    fit(&mut a.atty, on(n * c));
    fit(&mut a.att, if d.attention_maps { on(b * d.nh * t * t) } else { 0 });
    fit(&mut a.lse, if d.attention_maps { 0 } else { on(n * d.nh) });
    fit(&mut a.residual2, on(n * c));
    fit(&mut a.ln2, on(n * c));
    fit(&mut a.ln2_mean, on(n));
    fit(&mut a.ln2_rstd, on(n));
    fit(&mut a.fch, on(n * 4 * c));
    fit(&mut a.fch_gelu, on(n * 4 * c));
    fit(&mut a.attn_mask, mask(n * c));
    fit(&mut a.mlp_mask, mask(n * c));
    for i in 0..4 {
        let lora = d.lora_targets[i];
        fit(&mut a.lora_hidden[i], if lora { on(n * d.lora_rank) } else { 0 });
        fit(&mut a.lora_mask[i], if lora && d.lora_masks { on(n * d.lora_in[i]) } else { 0 });
    }
}

impl Activations {
    /// Allocates buffers for batches of up to `b` sequences of up to `t` tokens.
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Result<Self> {
        Self::with_lora(cfg, b, t, None)
    }

    /// Like [`Activations::new`], with room for LoRA adapters of the given shape.
    pub fn with_lora(cfg: &ModelConfig, b: usize, t: usize, lora: Option<LoraShape>) -> Result<Self> {
        Self::allocate(cfg, b, t, lora, true, true, TrainingMemory::default())
    }

    /// Buffers for training passes, which nothing inspects: no attention probabilities (only their
    /// log-sum-exp, (B, T, NH) per layer, instead of (B, NH, T, T)) unless `memory.attention_maps`, with
    /// `memory.checkpoint_blocks` only each block's output per layer plus one shared set of block buffers,
    /// and no (B·T, V) logits: the language-model head and its loss run one chunk of rows at a time.
    pub fn for_training(
        cfg: &ModelConfig,
        b: usize,
        t: usize,
        lora: Option<LoraShape>,
        memory: TrainingMemory,
    ) -> Result<Self> {
        Self::allocate(cfg, b, t, lora, memory.attention_maps, false, memory)
    }

    fn allocate(
        cfg: &ModelConfig,
        b: usize,
        t: usize,
        lora: Option<LoraShape>,
        attention_maps: bool,
        inspection: bool,
        memory: TrainingMemory,
    ) -> Result<Self> {
        cfg.validate()?;
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyInput);
        }
        if t > cfg.block_size {
            return Err(ModelError::SequenceTooLong { len: t, block_size: cfg.block_size });
        }
        let c = cfg.n_embd;
        let lora = lora.filter(|l| l.rank > 0).unwrap_or(LoraShape { rank: 0, targets: [false; 4], dropout: false });
        let dims = Dims {
            c,
            v: cfg.vocab_size,
            nh: cfg.n_head,
            labels: cfg.num_labels(),
            masks: cfg.dropout > 0.0,
            lora_rank: lora.rank,
            lora_targets: lora.targets,
            lora_masks: lora.dropout,
            lora_in: [c, c, c, 4 * c],
            attention_maps,
            checkpoint_blocks: memory.checkpoint_blocks,
            keep_logits: inspection,
            head_chunk: crate::head::chunk_rows(if cfg.num_labels() > 0 { cfg.num_labels() } else { cfg.vocab_size }),
        };
        let mut acts = Self {
            b: 0,
            t: 0,
            capacity_b: b,
            capacity_t: t,
            dims,
            encoded: Vec::new(),
            emb_mask: Vec::new(),
            layers: (0..cfg.n_layer).map(|_| LayerActs::default()).collect(),
            lnf: Vec::new(),
            lnf_mean: Vec::new(),
            lnf_rstd: Vec::new(),
            logits: Vec::new(),
            losses: Vec::new(),
            pooled: Vec::new(),
            targets: Vec::new(),
            inputs: Vec::new(),
            counted_rows: Vec::new(),
            scratch: Scratch::default(),
            clean_layers: 0,
            last_block_rows_only: false,
            work: memory.checkpoint_blocks.then(LayerActs::default),
            block_seeds: vec![
                BlockSeeds { dropout: None, lora: Rng::new(0) };
                if memory.checkpoint_blocks { cfg.n_layer } else { 0 }
            ],
            precision: memory.precision,
        };
        acts.resize_all(b, t);
        Ok(acts)
    }

    /// Sets every buffer's length for a (b, t) batch. Growing within the capacity allocated by `new` does
    /// not allocate; `new` calls this once with the largest shape.
    fn resize_all(&mut self, b: usize, t: usize) {
        let d = self.dims;
        let (n, c) = (b * t, d.c);
        let mask = |len: usize| if d.masks { len } else { 0 };
        // With block checkpointing each layer keeps its output only and the shared `work` set the rest.
        for a in &mut self.layers {
            fit_layer(a, &d, b, t, !d.checkpoint_blocks);
            fit(&mut a.residual3, n * c);
        }
        if let Some(work) = self.work.as_mut() {
            fit_layer(work, &d, b, t, true);
        }
        // The output layer: the vocabulary for a language model, the labels (one row per sequence) for a
        // classifier.
        let head_rows = if d.labels > 0 { b } else { n };
        let head_width = if d.labels > 0 { d.labels } else { d.v };
        fit(&mut self.encoded, n * c);
        fit(&mut self.emb_mask, mask(n * c));
        fit(&mut self.lnf, n * c);
        fit(&mut self.lnf_mean, n);
        fit(&mut self.lnf_rstd, n);
        fit(&mut self.losses, head_rows);
        fit(&mut self.pooled, if d.labels > 0 { b } else { 0 });
        fit(&mut self.inputs, n);
        let s = &mut self.scratch;
        for buf in [&mut s.branch, &mut s.branch2, &mut s.dresidual, &mut s.dln, &mut s.dbranch, &mut s.datty] {
            fit(buf, n * c);
        }
        fit(&mut s.dqkv, n * 3 * c);
        fit(&mut s.dfch_gelu, n * 4 * c);
        fit(&mut s.dfch, n * 4 * c);
        // The attention backward's scratch: a (T, T) block per sequence, or the tiled kernel's head gradients.
        fit(
            &mut s.att_grad,
            if d.attention_maps { n * t } else { b * flash_attention::backward_scratch_len(t, c, d.nh) },
        );
        let lora_on = d.lora_targets.iter().any(|&x| x);
        fit(&mut s.lora_x, if lora_on { n * 4 * c } else { 0 });
        fit(&mut s.lora_dx, if lora_on { n * 4 * c } else { 0 });
        fit(&mut s.frozen_dw, if lora_on { c } else { 0 });
        fit(&mut s.frozen_db, if lora_on { c } else { 0 });
        fit(&mut s.lora_dh, if lora_on { n * d.lora_rank } else { 0 });
        self.fit_head(head_rows, head_width);
        self.b = b;
        self.t = t;
        self.clean_layers = 0;
    }

    /// Whether the forward keeps the attention probabilities `att` (buffers from [`Activations::new`] and
    /// [`Activations::with_lora`]; not training buffers).
    pub fn keeps_attention_maps(&self) -> bool {
        self.dims.attention_maps
    }

    /// The products' precision the buffers were allocated with ([`TrainingMemory::precision`]; f32 for
    /// inspection buffers).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Makes the buffers describe a (b, t) batch, up to the shape they were allocated for, without
    /// allocating.
    pub fn reshape(&mut self, b: usize, t: usize) -> Result<()> {
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyInput);
        }
        if b > self.capacity_b || t > self.capacity_t {
            return Err(ModelError::BatchMismatch { allocated_b: self.capacity_b, allocated_t: self.capacity_t, b, t });
        }
        if (b, t) != (self.b, self.t) {
            self.resize_all(b, t);
        }
        Ok(())
    }

    /// Sets the length of the output-layer rows (`M` counted rows of a language model after a masked
    /// forward, or all of them), within capacity.
    pub(crate) fn set_head_rows(&mut self, rows: usize) {
        let width = if self.dims.labels > 0 { self.dims.labels } else { self.dims.v };
        self.fit_head(rows, width);
    }

    /// Sizes the output layer's buffers for `rows` rows of `width`: every row's logits only when kept (a
    /// classifier's always), the chunk buffers for one chunk of at most [`crate::head::chunk_rows`] rows.
    fn fit_head(&mut self, rows: usize, width: usize) {
        let d = self.dims;
        let keep = d.keep_logits || d.labels > 0;
        let chunk = rows.min(d.head_chunk);
        fit(&mut self.logits, if keep { rows * width } else { 0 });
        fit(&mut self.targets, rows);
        let s = &mut self.scratch;
        fit(&mut s.head_z, chunk * width);
        fit(&mut s.head_p, chunk * width);
        fit(&mut s.head_dlosses, chunk);
        fit(&mut s.head_losses, rows);
        fit(&mut s.head_in, rows * d.c);
        fit(&mut s.dhead_in, rows * d.c);
    }

    /// Makes the output layer work on chunks of at most `rows` rows (at least one) instead of the
    /// [`crate::head::HEAD_CHUNK_BYTES`] default: a test hook, so that chunks that do not divide the batch
    /// can be checked against one whole chunk. Reallocates the chunk buffers when they grow.
    pub fn set_head_chunk_rows(&mut self, rows: usize) {
        self.dims.head_chunk = rows.max(1);
        let (b, t) = (self.b, self.t);
        self.resize_all(b, t);
    }

    /// Bytes the output layer's buffers hold for the current shape: the kept logits (if any), one chunk's
    /// logits or logit gradient and probabilities, and the per-row values.
    pub fn head_bytes(&self) -> usize {
        let s = &self.scratch;
        let floats = [&self.logits, &s.head_z, &s.head_p, &s.head_dlosses, &s.head_losses, &s.head_in, &s.dhead_in];
        4 * floats.iter().map(|v| v.len()).sum::<usize>()
    }

    /// Every element of this batch made to hold the residual streams of `single`'s one sequence (an unedited
    /// eval forward of the same length), so that an edited forward of that sequence repeated in the batch
    /// starts at its first edited layer without running the layers before it B times.
    pub(crate) fn broadcast_clean_streams(&mut self, single: &Activations) {
        if single.b != 1 || single.t != self.t {
            self.clean_layers = 0;
            return;
        }
        let row = single.encoded.len();
        for (element, chunk) in self.encoded.chunks_exact_mut(row).enumerate().take(self.b) {
            chunk.copy_from_slice(&single.encoded);
            self.inputs[element * self.t..(element + 1) * self.t].copy_from_slice(&single.inputs);
        }
        for (layer, from) in self.layers.iter_mut().zip(&single.layers) {
            for chunk in layer.residual3.chunks_exact_mut(row).take(self.b) {
                chunk.copy_from_slice(&from.residual3);
            }
        }
        self.clean_layers = single.clean_layers;
    }

    pub fn batch_size(&self) -> usize {
        self.b
    }

    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Whether these buffers were allocated for adapters of this shape (or a larger rank on more layers).
    pub fn has_room_for(&self, shape: &LoraShape) -> bool {
        let d = &self.dims;
        d.lora_rank == shape.rank
            && (0..4).all(|i| !shape.targets[i] || d.lora_targets[i])
            && (!shape.dropout || d.lora_masks)
    }

    /// The largest (B, T) these buffers hold.
    pub fn capacity(&self) -> (usize, usize) {
        (self.capacity_b, self.capacity_t)
    }
}
