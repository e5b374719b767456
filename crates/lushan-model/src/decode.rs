//! Cached decoding: a preallocated KV cache `(L, NH, max_T, hs)` written at a position, prefill of a chunk
//! of tokens, then one position per step. Built from the same kernels as the training forward pass.

use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::params::ParamKind;
use crate::weights::{self, Weights};
use lushan_kernels::{gelu, gemv, layernorm, residual, softmax::softmax_in_place, vector};
use rayon::prelude::*;

/// Keys and values of every position seen so far, for every layer and head.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    capacity: usize,
    n_head: usize,
    head_size: usize,
}

impl KvCache {
    fn new(n_layer: usize, n_head: usize, capacity: usize, head_size: usize) -> Self {
        let size = n_layer * n_head * capacity * head_size;
        Self { k: vec![0.0; size], v: vec![0.0; size], len: 0, capacity, n_head, head_size }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_head + head) * self.capacity + pos) * self.head_size
    }
}

/// Activations of one decoding pass: one row per token fed (`rows` at most).
#[derive(Debug, Clone)]
struct RowBuffers {
    rows: usize,
    x: Vec<f32>,
    ln: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    branch: Vec<f32>,
    residual: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    att_scratch: Vec<f32>,
}

impl RowBuffers {
    fn new(model: &Gpt, rows: usize) -> Self {
        let cfg = &model.config;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        Self {
            rows,
            x: vec![0.0; rows * c],
            ln: vec![0.0; rows * c],
            mean: vec![0.0; rows],
            rstd: vec![0.0; rows],
            qkv: vec![0.0; rows * 3 * c],
            atty: vec![0.0; rows * c],
            branch: vec![0.0; rows * c],
            residual: vec![0.0; rows * c],
            fch: vec![0.0; rows * 4 * c],
            fch_gelu: vec![0.0; rows * 4 * c],
            att_scratch: vec![0.0; rows * nh * cfg.block_size],
        }
    }
}

/// Cache plus the scratch buffers one decoding call needs; owns no gradients.
#[derive(Debug, Clone)]
pub struct DecodeState {
    pub cache: KvCache,
    buffers: RowBuffers,
    logits: Vec<f32>,
}

impl DecodeState {
    /// Buffers for `model`; prompts longer than `max_chunk` tokens are prefilled in several chunks.
    pub fn new(model: &Gpt, max_chunk: usize) -> Self {
        let cfg = &model.config;
        Self {
            cache: KvCache::new(cfg.n_layer, cfg.n_head, cfg.block_size, cfg.head_size()),
            buffers: RowBuffers::new(model, max_chunk.clamp(1, cfg.block_size)),
            logits: vec![0.0; cfg.vocab_size],
        }
    }

    /// Forgets every cached position (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.cache.len = 0;
    }

    /// Whether this state's cache and buffers have `model`'s shape (a state made by [`DecodeState::new`] for
    /// a model of the same configuration), so it can be reused for it.
    pub fn fits(&self, model: &Gpt) -> bool {
        let cfg = &model.config;
        let cache = &self.cache;
        let cache_len = cfg.n_layer * cfg.n_head * cfg.block_size * cfg.head_size();
        let b = &self.buffers;
        cache.capacity == cfg.block_size
            && cache.n_head == cfg.n_head
            && cache.head_size == cfg.head_size()
            && cache.k.len() == cache_len
            && cache.v.len() == cache_len
            && self.logits.len() == cfg.vocab_size
            && b.x.len() == b.rows * cfg.n_embd
            && b.att_scratch.len() == b.rows * cfg.n_head * cfg.block_size
    }

    /// Logits of the last position fed.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

/// Scratch buffers for [`Gpt::decode_batch`]: one row per sequence.
#[derive(Debug, Clone)]
pub struct BatchScratch {
    buffers: RowBuffers,
    logits: Vec<f32>,
}

impl BatchScratch {
    /// Most sequences one [`Gpt::decode_batch`] call takes.
    pub const MAX_ROWS: usize = gemv::MAX_BATCH;

    /// Buffers for up to `rows` sequences of `model` (at most [`Self::MAX_ROWS`]).
    pub fn new(model: &Gpt, rows: usize) -> Self {
        let b = rows.clamp(1, Self::MAX_ROWS);
        Self { buffers: RowBuffers::new(model, b), logits: vec![0.0; b * model.config.vocab_size] }
    }

    pub fn rows(&self) -> usize {
        self.buffers.rows
    }
}

/// Where one row of a decoding pass belongs: which cache (sequence), at which position.
#[derive(Debug, Clone, Copy)]
struct RowAt {
    cache: usize,
    pos: usize,
}

/// `out = inp·Wᵀ + b` as one decoding pass computes its linear layers.
type Linear = fn(&mut [f32], &[f32], Weights<'_>, Option<&[f32]>, usize, usize);

impl Gpt {
    /// Appends `tokens` at the next positions of the cache and returns the logits of the last one.
    /// Errors when the tokens do not fit in the context (the caller decides how to slide the window).
    pub fn decode<'s>(&self, state: &'s mut DecodeState, tokens: &[u32]) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let end = state.cache.len + tokens.len();
        if end > self.config.block_size {
            return Err(ModelError::SequenceTooLong { len: end, block_size: self.config.block_size });
        }
        self.check_tokens(tokens, false)?;
        let DecodeState { cache, buffers, logits } = state;
        for chunk in tokens.chunks(buffers.rows) {
            let rows: Vec<RowAt> = (0..chunk.len()).map(|i| RowAt { cache: 0, pos: cache.len + i }).collect();
            // A chunk of several positions is a real matrix product (GEMM); one position a GEMV.
            self.forward_rows(&mut [&mut *cache], &rows, chunk, buffers, weights::forward);
            cache.len += chunk.len();
            // Only the last position's logits are needed for sampling: skip the rest of the output layer.
            let last = chunk.len() - 1;
            self.output_logits(buffers, last..last + 1, logits, weights::forward);
        }
        Ok(&state.logits)
    }

    /// Feeds one token to each of several sequences at once: `tokens[i]` goes to `states[i]` at that
    /// sequence's next position, and each state's [`DecodeState::logits`] become those of its new token.
    ///
    /// Every weight matrix is read once for all the sequences (a decoding step is bound by that read), and
    /// each sequence's logits are bit-identical to what [`Gpt::decode`] gives it alone: the same kernels,
    /// row by row (the matrix-vector kernel computes each row as it would alone).
    pub fn decode_batch(
        &self,
        states: &mut [&mut DecodeState],
        tokens: &[u32],
        scratch: &mut BatchScratch,
    ) -> Result<()> {
        let b = states.len();
        if b == 0 || tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        if tokens.len() != b || b > scratch.rows() {
            return Err(ModelError::InvalidConfig {
                field: "decode_batch",
                reason: format!(
                    "{} tokens for {b} sequences with scratch for {} (one token per sequence)",
                    tokens.len(),
                    scratch.rows()
                ),
            });
        }
        for state in states.iter() {
            let end = state.cache.len + 1;
            if end > self.config.block_size {
                return Err(ModelError::SequenceTooLong { len: end, block_size: self.config.block_size });
            }
        }
        self.check_tokens(tokens, false)?;
        let rows: Vec<RowAt> = states.iter().enumerate().map(|(i, s)| RowAt { cache: i, pos: s.cache.len }).collect();
        let mut caches: Vec<&mut KvCache> = states.iter_mut().map(|s| &mut s.cache).collect();
        self.forward_rows(&mut caches, &rows, tokens, &mut scratch.buffers, weights::forward_rows);
        self.output_logits(&mut scratch.buffers, 0..b, &mut scratch.logits, weights::forward_rows);
        let v = self.config.vocab_size;
        for (i, state) in states.iter_mut().enumerate() {
            state.cache.len += 1;
            state.logits.copy_from_slice(&scratch.logits[i * v..][..v]);
        }
        Ok(())
    }

    /// Runs every block over `tokens`, row `i` at `rows[i]`: writes each row's keys and values into its cache
    /// and leaves the final residual stream in `buf.x`. Caches' lengths are the caller's to advance.
    fn forward_rows(
        &self,
        caches: &mut [&mut KvCache],
        rows: &[RowAt],
        tokens: &[u32],
        buf: &mut RowBuffers,
        linear: Linear,
    ) {
        let cfg = &self.config;
        let (m, c, nh, hs, eps) = (tokens.len(), cfg.n_embd, cfg.n_head, cfg.head_size(), cfg.layer_norm_epsilon);
        let p = self.layout.split(&self.params);
        let mc = m * c;
        for (i, (at, &token)) in rows.iter().zip(tokens).enumerate() {
            self.embed(&mut buf.x[i * c..][..c], &[token], 1, at.pos);
        }
        for l in 0..cfg.n_layer {
            let w = p.layer(l);
            layernorm::forward(
                &mut buf.ln[..mc],
                &mut buf.mean[..m],
                &mut buf.rstd[..m],
                &buf.x[..mc],
                w.ln1_w,
                w.ln1_b,
                c,
                eps,
            );
            linear(&mut buf.qkv[..3 * mc], &buf.ln[..mc], self.matrix(ParamKind::QkvW, l), Some(w.qkv_b), c, 3 * c);
            for (i, at) in rows.iter().enumerate() {
                let row = &buf.qkv[i * 3 * c..][..3 * c];
                let cache = &mut caches[at.cache];
                for h in 0..nh {
                    let to = cache.offset(l, h, at.pos);
                    cache.k[to..to + hs].copy_from_slice(&row[c + h * hs..][..hs]);
                    cache.v[to..to + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
                }
            }
            cached_attention(&mut buf.atty[..mc], &mut buf.att_scratch, &buf.qkv[..3 * mc], caches, rows, l, c, nh);
            let proj = self.matrix(ParamKind::AttnProjW, l);
            linear(&mut buf.branch[..mc], &buf.atty[..mc], proj, Some(w.attn_proj_b), c, c);
            residual::forward(&mut buf.residual[..mc], &buf.x[..mc], &buf.branch[..mc]);
            layernorm::forward(
                &mut buf.ln[..mc],
                &mut buf.mean[..m],
                &mut buf.rstd[..m],
                &buf.residual[..mc],
                w.ln2_w,
                w.ln2_b,
                c,
                eps,
            );
            linear(&mut buf.fch[..4 * mc], &buf.ln[..mc], self.matrix(ParamKind::FcW, l), Some(w.fc_b), c, 4 * c);
            gelu::forward(&mut buf.fch_gelu[..4 * mc], &buf.fch[..4 * mc]);
            let proj = self.matrix(ParamKind::FcProjW, l);
            linear(&mut buf.branch[..mc], &buf.fch_gelu[..4 * mc], proj, Some(w.fc_proj_b), 4 * c, c);
            residual::forward(&mut buf.x[..mc], &buf.residual[..mc], &buf.branch[..mc]);
        }
    }

    /// Final layer norm and output layer for the rows `which` of `buf.x`, into `logits` (one row each).
    fn output_logits(&self, buf: &mut RowBuffers, which: std::ops::Range<usize>, logits: &mut [f32], linear: Linear) {
        let cfg = &self.config;
        let (c, n) = (cfg.n_embd, which.len());
        let p = self.layout.split(&self.params);
        let x = &buf.x[which.start * c..which.end * c];
        let (ln, mean, rstd) = (&mut buf.ln[..n * c], &mut buf.mean[..n], &mut buf.rstd[..n]);
        layernorm::forward(ln, mean, rstd, x, p.lnf_w, p.lnf_b, c, cfg.layer_norm_epsilon);
        linear(&mut logits[..n * cfg.vocab_size], ln, self.matrix(ParamKind::Wte, 0), None, c, cfg.vocab_size);
    }
}

/// Attention of each row's query over its own cache up to its position, causal.
///
/// One task per (row, head): each reads that head's keys and values, contiguous in the cache, so for one
/// new token the heads (the only parallelism there is) are split over the threads, and a long context is
/// read once at streaming speed.
#[allow(clippy::too_many_arguments)]
fn cached_attention(
    out: &mut [f32],
    scratch: &mut [f32],
    qkv: &[f32],
    caches: &[&mut KvCache],
    rows: &[RowAt],
    layer: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let cap = caches[0].capacity;
    out.par_chunks_mut(hs).zip(scratch.par_chunks_mut(cap)).enumerate().for_each(|(task, (o, scores))| {
        let (i, h) = (task / nh, task % nh);
        let at = rows[i];
        attend_one(o, scores, &qkv[i * 3 * c + h * hs..][..hs], caches[at.cache], layer, h, at.pos + 1);
    });
}

/// Output of one head for one query over the first `visible` cached positions: the scaled dot products
/// ([`vector::dots`], each as [`vector::dot`] computes it), softmax, then the probability-weighted sum of
/// the value rows ([`vector::weighted_sum`]).
fn attend_one(o: &mut [f32], scores: &mut [f32], q: &[f32], cache: &KvCache, layer: usize, h: usize, visible: usize) {
    let hs = cache.head_size;
    let scale = 1.0 / (hs as f32).sqrt();
    let base = cache.offset(layer, h, 0);
    let keys = &cache.k[base..base + visible * hs];
    let values = &cache.v[base..base + visible * hs];
    let probs = &mut scores[..visible];
    vector::dots(q, keys, probs);
    for score in probs.iter_mut() {
        *score *= scale;
    }
    softmax_in_place(probs);
    vector::weighted_sum(o, probs, values);
}
