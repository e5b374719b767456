//! Buffers for one training/evaluation batch shape, allocated once by the caller (DESIGN.md §3).
//!
//! Forward activations that backward needs are stored per layer; gradient scratch is shared by all layers
//! because backward visits one layer at a time.
//!
//! Buffers are allocated for a largest shape (B, T) and can then be [`Activations::reshape`]d to any smaller
//! (b, t) — batches of task examples padded only to their own longest sequence — without allocating:
//! every buffer keeps its capacity and only its length changes.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Per-layer activations kept for backward (and for inspection: `att` is the attention map).
#[derive(Debug, Default)]
pub struct LayerActs {
    pub ln1: Vec<f32>,
    pub ln1_mean: Vec<f32>,
    pub ln1_rstd: Vec<f32>,
    pub qkv: Vec<f32>,
    pub atty: Vec<f32>,
    /// Attention probabilities, (B, NH, T, T); zero above the diagonal.
    pub att: Vec<f32>,
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
    /// fine-tuning batch never pay for the vocabulary projection. Classifier head: (B, num_labels).
    pub logits: Vec<f32>,
    /// softmax(logits), the same rows; filled when targets are given.
    pub probs: Vec<f32>,
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
    pub dlogits: Vec<f32>,
    pub dlosses: Vec<f32>,
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
}

fn fit<T: Clone + Default>(buf: &mut Vec<T>, len: usize) {
    buf.resize(len, T::default());
}

impl Activations {
    /// Allocates buffers for batches of up to `b` sequences of up to `t` tokens.
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Result<Self> {
        Self::with_lora(cfg, b, t, None)
    }

    /// Like [`Activations::new`], with room for LoRA adapters of the given shape.
    pub fn with_lora(cfg: &ModelConfig, b: usize, t: usize, lora: Option<LoraShape>) -> Result<Self> {
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
            probs: Vec::new(),
            losses: Vec::new(),
            pooled: Vec::new(),
            targets: Vec::new(),
            inputs: Vec::new(),
            counted_rows: Vec::new(),
            scratch: Scratch::default(),
            clean_layers: 0,
            last_block_rows_only: false,
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
        for a in &mut self.layers {
            fit(&mut a.ln1, n * c);
            fit(&mut a.ln1_mean, n);
            fit(&mut a.ln1_rstd, n);
            fit(&mut a.qkv, n * 3 * c);
            fit(&mut a.atty, n * c);
            fit(&mut a.att, b * d.nh * t * t);
            fit(&mut a.residual2, n * c);
            fit(&mut a.ln2, n * c);
            fit(&mut a.ln2_mean, n);
            fit(&mut a.ln2_rstd, n);
            fit(&mut a.fch, n * 4 * c);
            fit(&mut a.fch_gelu, n * 4 * c);
            fit(&mut a.residual3, n * c);
            fit(&mut a.attn_mask, mask(n * c));
            fit(&mut a.mlp_mask, mask(n * c));
            for i in 0..4 {
                let on = d.lora_targets[i];
                fit(&mut a.lora_hidden[i], if on { n * d.lora_rank } else { 0 });
                fit(&mut a.lora_mask[i], if on && d.lora_masks { n * d.lora_in[i] } else { 0 });
            }
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
        fit(&mut self.logits, head_rows * head_width);
        fit(&mut self.probs, head_rows * head_width);
        fit(&mut self.losses, head_rows);
        fit(&mut self.pooled, if d.labels > 0 { b } else { 0 });
        fit(&mut self.targets, head_rows);
        fit(&mut self.inputs, n);
        let s = &mut self.scratch;
        for buf in [&mut s.branch, &mut s.branch2, &mut s.dresidual, &mut s.dln, &mut s.dbranch, &mut s.datty] {
            fit(buf, n * c);
        }
        fit(&mut s.dqkv, n * 3 * c);
        fit(&mut s.dfch_gelu, n * 4 * c);
        fit(&mut s.dfch, n * 4 * c);
        fit(&mut s.dlogits, head_rows * head_width);
        fit(&mut s.dlosses, head_rows);
        fit(&mut s.att_grad, n * t);
        fit(&mut s.head_in, head_rows * c);
        fit(&mut s.dhead_in, head_rows * c);
        let lora_on = d.lora_targets.iter().any(|&x| x);
        fit(&mut s.lora_x, if lora_on { n * 4 * c } else { 0 });
        fit(&mut s.lora_dx, if lora_on { n * 4 * c } else { 0 });
        fit(&mut s.frozen_dw, if lora_on { c } else { 0 });
        fit(&mut s.frozen_db, if lora_on { c } else { 0 });
        fit(&mut s.lora_dh, if lora_on { n * d.lora_rank } else { 0 });
        self.b = b;
        self.t = t;
        self.clean_layers = 0;
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
        fit(&mut self.logits, rows * width);
        fit(&mut self.probs, rows * width);
        fit(&mut self.targets, rows);
        fit(&mut self.scratch.dlosses, rows);
        fit(&mut self.scratch.dlogits, rows * width);
        fit(&mut self.scratch.head_in, rows * self.dims.c);
        fit(&mut self.scratch.dhead_in, rows * self.dims.c);
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
