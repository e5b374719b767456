//! Buffers for one training/evaluation batch shape, allocated once by the caller (DESIGN.md §3).
//!
//! Forward activations that backward needs are stored per layer; gradient scratch is shared by all layers
//! because backward visits one layer at a time.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Per-layer activations kept for backward (and for inspection: `att` is the attention map).
#[derive(Debug)]
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
}

/// Everything forward and backward need for a (B, T) batch.
#[derive(Debug)]
pub struct Activations {
    pub(crate) b: usize,
    pub(crate) t: usize,
    /// Token + position embedding (after embedding dropout): the input of layer 0.
    pub encoded: Vec<f32>,
    pub emb_mask: Vec<u8>,
    pub layers: Vec<LayerActs>,
    pub lnf: Vec<f32>,
    pub lnf_mean: Vec<f32>,
    pub lnf_rstd: Vec<f32>,
    /// (B, T, V).
    pub logits: Vec<f32>,
    /// softmax(logits), (B, T, V); filled when targets are given.
    pub probs: Vec<f32>,
    /// Per-position cross-entropy, (B, T); 0 for ignored targets.
    pub losses: Vec<f32>,
    pub(crate) targets: Vec<u32>,
    pub(crate) inputs: Vec<u32>,
    pub(crate) scratch: Scratch,
}

/// Gradient and temporary buffers shared across layers.
#[derive(Debug)]
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
}

impl Activations {
    /// Allocates buffers for batches of `b` sequences of `t` tokens.
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Result<Self> {
        cfg.validate()?;
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyInput);
        }
        if t > cfg.block_size {
            return Err(ModelError::SequenceTooLong { len: t, block_size: cfg.block_size });
        }
        let (n, c, v, nh) = (b * t, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let masks = cfg.dropout > 0.0;
        let mask = |len: usize| if masks { vec![0u8; len] } else { Vec::new() };
        let layers = (0..cfg.n_layer)
            .map(|_| LayerActs {
                ln1: vec![0.0; n * c],
                ln1_mean: vec![0.0; n],
                ln1_rstd: vec![0.0; n],
                qkv: vec![0.0; n * 3 * c],
                atty: vec![0.0; n * c],
                att: vec![0.0; b * nh * t * t],
                residual2: vec![0.0; n * c],
                ln2: vec![0.0; n * c],
                ln2_mean: vec![0.0; n],
                ln2_rstd: vec![0.0; n],
                fch: vec![0.0; n * 4 * c],
                fch_gelu: vec![0.0; n * 4 * c],
                residual3: vec![0.0; n * c],
                attn_mask: mask(n * c),
                mlp_mask: mask(n * c),
            })
            .collect();
        Ok(Self {
            b,
            t,
            encoded: vec![0.0; n * c],
            emb_mask: mask(n * c),
            layers,
            lnf: vec![0.0; n * c],
            lnf_mean: vec![0.0; n],
            lnf_rstd: vec![0.0; n],
            logits: vec![0.0; n * v],
            probs: vec![0.0; n * v],
            losses: vec![0.0; n],
            targets: vec![0; n],
            inputs: vec![0; n],
            scratch: Scratch {
                branch: vec![0.0; n * c],
                branch2: vec![0.0; n * c],
                dresidual: vec![0.0; n * c],
                dln: vec![0.0; n * c],
                dbranch: vec![0.0; n * c],
                datty: vec![0.0; n * c],
                dqkv: vec![0.0; n * 3 * c],
                dfch_gelu: vec![0.0; n * 4 * c],
                dfch: vec![0.0; n * 4 * c],
                dlogits: vec![0.0; n * v],
                dlosses: vec![0.0; n],
                att_grad: vec![0.0; n * t],
            },
        })
    }

    pub fn batch_size(&self) -> usize {
        self.b
    }

    pub fn seq_len(&self) -> usize {
        self.t
    }
}
