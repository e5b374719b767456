//! Cached decoding: a preallocated KV cache `(L, NH, max_T, hs)` written at a position, prefill of a chunk
//! of tokens, then one position per step. Built from the same kernels as the training forward pass.

use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use lushan_kernels::{encoder, gelu, gemv, layernorm, matmul, residual, softmax::softmax_in_place, vector};
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

/// Cache plus the scratch buffers one decoding call needs; owns no gradients.
#[derive(Debug, Clone)]
pub struct DecodeState {
    pub cache: KvCache,
    max_chunk: usize,
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
    logits: Vec<f32>,
    att_scratch: Vec<f32>,
}

impl DecodeState {
    /// Buffers for `model`; prompts longer than `max_chunk` tokens are prefilled in several chunks.
    pub fn new(model: &Gpt, max_chunk: usize) -> Self {
        let cfg = &model.config;
        let m = max_chunk.clamp(1, cfg.block_size);
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        Self {
            cache: KvCache::new(cfg.n_layer, nh, cfg.block_size, cfg.head_size()),
            max_chunk: m,
            x: vec![0.0; m * c],
            ln: vec![0.0; m * c],
            mean: vec![0.0; m],
            rstd: vec![0.0; m],
            qkv: vec![0.0; m * 3 * c],
            atty: vec![0.0; m * c],
            branch: vec![0.0; m * c],
            residual: vec![0.0; m * c],
            fch: vec![0.0; m * 4 * c],
            fch_gelu: vec![0.0; m * 4 * c],
            logits: vec![0.0; cfg.vocab_size],
            att_scratch: vec![0.0; m * nh * cfg.block_size],
        }
    }

    /// Forgets every cached position (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.cache.len = 0;
    }

    /// Logits of the last position fed.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

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
        for chunk in tokens.chunks(state.max_chunk) {
            self.decode_chunk(state, chunk);
        }
        Ok(&state.logits)
    }

    fn decode_chunk(&self, st: &mut DecodeState, tokens: &[u32]) {
        let cfg = &self.config;
        let (m, c, nh, hs, eps) = (tokens.len(), cfg.n_embd, cfg.n_head, cfg.head_size(), cfg.layer_norm_epsilon);
        let pos0 = st.cache.len;
        let p = self.layout.split(&self.params);
        let mc = m * c;
        encoder::forward(&mut st.x[..mc], tokens, p.wte, p.wpe, m, pos0, c);
        for l in 0..cfg.n_layer {
            let w = p.layer(l);
            layernorm::forward(
                &mut st.ln[..mc],
                &mut st.mean[..m],
                &mut st.rstd[..m],
                &st.x[..mc],
                w.ln1_w,
                w.ln1_b,
                c,
                eps,
            );
            matmul::forward(&mut st.qkv[..3 * mc], &st.ln[..mc], w.qkv_w, Some(w.qkv_b), c, 3 * c);
            // Write this chunk's keys and values at their positions.
            for i in 0..m {
                let row = &st.qkv[i * 3 * c..][..3 * c];
                for h in 0..nh {
                    let at = st.cache.offset(l, h, pos0 + i);
                    st.cache.k[at..at + hs].copy_from_slice(&row[c + h * hs..][..hs]);
                    st.cache.v[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
                }
            }
            cached_attention(&mut st.atty[..mc], &mut st.att_scratch, &st.qkv[..3 * mc], &st.cache, l, pos0, c, nh);
            matmul::forward(&mut st.branch[..mc], &st.atty[..mc], w.attn_proj_w, Some(w.attn_proj_b), c, c);
            residual::forward(&mut st.residual[..mc], &st.x[..mc], &st.branch[..mc]);
            layernorm::forward(
                &mut st.ln[..mc],
                &mut st.mean[..m],
                &mut st.rstd[..m],
                &st.residual[..mc],
                w.ln2_w,
                w.ln2_b,
                c,
                eps,
            );
            matmul::forward(&mut st.fch[..4 * mc], &st.ln[..mc], w.fc_w, Some(w.fc_b), c, 4 * c);
            gelu::forward(&mut st.fch_gelu[..4 * mc], &st.fch[..4 * mc]);
            matmul::forward(&mut st.branch[..mc], &st.fch_gelu[..4 * mc], w.fc_proj_w, Some(w.fc_proj_b), 4 * c, c);
            residual::forward(&mut st.x[..mc], &st.residual[..mc], &st.branch[..mc]);
        }
        st.cache.len = pos0 + m;
        // Only the last position's logits are needed for sampling: skip the rest of the output layer.
        let last = &st.x[(m - 1) * c..mc];
        layernorm::forward(&mut st.ln[..c], &mut st.mean[..1], &mut st.rstd[..1], last, p.lnf_w, p.lnf_b, c, eps);
        matmul::forward(&mut st.logits, &st.ln[..c], p.wte, None, c, cfg.vocab_size);
    }
}

/// Attention of `m` new queries (at positions `pos0..pos0+m`) over the cache, causal.
///
/// One task per (query, head): each reads that head's keys and values, contiguous in the cache, so for one
/// new token the heads (the only parallelism there is) are split over the threads, and a long context is
/// read once at streaming speed.
#[allow(clippy::too_many_arguments)]
fn cached_attention(
    out: &mut [f32],
    scratch: &mut [f32],
    qkv: &[f32],
    cache: &KvCache,
    layer: usize,
    pos0: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    out.par_chunks_mut(hs).zip(scratch.par_chunks_mut(cache.capacity)).enumerate().for_each(|(task, (o, scores))| {
        let (i, h) = (task / nh, task % nh);
        attend_one(o, scores, &qkv[i * 3 * c + h * hs..][..hs], cache, layer, h, pos0 + i + 1);
    });
}

/// Output of one head for one query over the first `visible` cached positions: the scaled dot products
/// with several accumulators ([`vector::dot`]), softmax, then a sum of value rows ([`vector::axpy`]).
/// Batched and single-sequence decoding both go through here, so their results are the same bit for bit.
fn attend_one(o: &mut [f32], scores: &mut [f32], q: &[f32], cache: &KvCache, layer: usize, h: usize, visible: usize) {
    let hs = cache.head_size;
    let scale = 1.0 / (hs as f32).sqrt();
    let base = cache.offset(layer, h, 0);
    let keys = &cache.k[base..base + visible * hs];
    let values = &cache.v[base..base + visible * hs];
    let probs = &mut scores[..visible];
    for (score, k) in probs.iter_mut().zip(keys.chunks_exact(hs)) {
        *score = vector::dot(q, k) * scale;
    }
    softmax_in_place(probs);
    o.fill(0.0);
    for (&a, v) in probs.iter().zip(values.chunks_exact(hs)) {
        vector::axpy(o, a, v);
    }
}

/// Scratch buffers for [`Gpt::decode_batch`]: one row per sequence.
#[derive(Debug, Clone)]
pub struct BatchScratch {
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
    logits: Vec<f32>,
    att_scratch: Vec<f32>,
}

impl BatchScratch {
    /// Most sequences one [`Gpt::decode_batch`] call takes.
    pub const MAX_ROWS: usize = gemv::MAX_BATCH;

    /// Buffers for up to `rows` sequences of `model` (at most [`Self::MAX_ROWS`]).
    pub fn new(model: &Gpt, rows: usize) -> Self {
        let cfg = &model.config;
        let b = rows.clamp(1, Self::MAX_ROWS);
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        Self {
            rows: b,
            x: vec![0.0; b * c],
            ln: vec![0.0; b * c],
            mean: vec![0.0; b],
            rstd: vec![0.0; b],
            qkv: vec![0.0; b * 3 * c],
            atty: vec![0.0; b * c],
            branch: vec![0.0; b * c],
            residual: vec![0.0; b * c],
            fch: vec![0.0; b * 4 * c],
            fch_gelu: vec![0.0; b * 4 * c],
            logits: vec![0.0; b * cfg.vocab_size],
            att_scratch: vec![0.0; b * nh * cfg.block_size],
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl Gpt {
    /// Feeds one token to each of several sequences at once: `tokens[i]` goes to `states[i]` at that
    /// sequence's next position, and each state's [`DecodeState::logits`] become those of its new token.
    ///
    /// Every weight matrix is read once for all the sequences (a decoding step is bound by that read), and
    /// each sequence's logits are bit-identical to what [`Gpt::decode`] gives it alone: the same kernels,
    /// row by row.
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
        if tokens.len() != b || b > scratch.rows {
            return Err(ModelError::InvalidConfig {
                field: "decode_batch",
                reason: format!(
                    "{} tokens for {b} sequences with scratch for {} (one token per sequence)",
                    tokens.len(),
                    scratch.rows
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
        let cfg = &self.config;
        let (c, nh, hs, eps, v) = (cfg.n_embd, cfg.n_head, cfg.head_size(), cfg.layer_norm_epsilon, cfg.vocab_size);
        let p = self.layout.split(&self.params);
        let st = scratch;
        let bc = b * c;
        for (i, (state, &token)) in states.iter().zip(tokens).enumerate() {
            encoder::forward(&mut st.x[i * c..][..c], &[token], p.wte, p.wpe, 1, state.cache.len, c);
        }
        for l in 0..cfg.n_layer {
            let w = p.layer(l);
            layernorm::forward(
                &mut st.ln[..bc],
                &mut st.mean[..b],
                &mut st.rstd[..b],
                &st.x[..bc],
                w.ln1_w,
                w.ln1_b,
                c,
                eps,
            );
            gemv::forward(&mut st.qkv[..3 * bc], &st.ln[..bc], w.qkv_w, Some(w.qkv_b), c, 3 * c);
            for (i, state) in states.iter_mut().enumerate() {
                let row = &st.qkv[i * 3 * c..][..3 * c];
                let pos = state.cache.len;
                for h in 0..nh {
                    let at = state.cache.offset(l, h, pos);
                    state.cache.k[at..at + hs].copy_from_slice(&row[c + h * hs..][..hs]);
                    state.cache.v[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
                }
            }
            let caches: Vec<&KvCache> = states.iter().map(|s| &s.cache).collect();
            let cap = cfg.block_size;
            let qkv = &st.qkv;
            st.atty[..bc].par_chunks_mut(hs).zip(st.att_scratch.par_chunks_mut(cap)).enumerate().for_each(
                |(task, (o, scores))| {
                    let (i, h) = (task / nh, task % nh);
                    let cache = caches[i];
                    attend_one(o, scores, &qkv[i * 3 * c + h * hs..][..hs], cache, l, h, cache.len + 1);
                },
            );
            gemv::forward(&mut st.branch[..bc], &st.atty[..bc], w.attn_proj_w, Some(w.attn_proj_b), c, c);
            residual::forward(&mut st.residual[..bc], &st.x[..bc], &st.branch[..bc]);
            layernorm::forward(
                &mut st.ln[..bc],
                &mut st.mean[..b],
                &mut st.rstd[..b],
                &st.residual[..bc],
                w.ln2_w,
                w.ln2_b,
                c,
                eps,
            );
            gemv::forward(&mut st.fch[..4 * bc], &st.ln[..bc], w.fc_w, Some(w.fc_b), c, 4 * c);
            gelu::forward(&mut st.fch_gelu[..4 * bc], &st.fch[..4 * bc]);
            gemv::forward(&mut st.branch[..bc], &st.fch_gelu[..4 * bc], w.fc_proj_w, Some(w.fc_proj_b), 4 * c, c);
            residual::forward(&mut st.x[..bc], &st.residual[..bc], &st.branch[..bc]);
        }
        layernorm::forward(
            &mut st.ln[..bc],
            &mut st.mean[..b],
            &mut st.rstd[..b],
            &st.x[..bc],
            p.lnf_w,
            p.lnf_b,
            c,
            eps,
        );
        gemv::forward(&mut st.logits[..b * v], &st.ln[..bc], p.wte, None, c, v);
        for (i, state) in states.iter_mut().enumerate() {
            state.cache.len += 1;
            state.logits.copy_from_slice(&st.logits[i * v..][..v]);
        }
        Ok(())
    }
}
