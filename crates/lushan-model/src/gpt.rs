//! The GPT-2 forward and backward passes over preallocated [`Activations`].
//!
//! `forward` is a list of kernel calls per layer; `backward` is that list reversed, each step naming the
//! forward line it undoes.

use crate::activations::{Activations, BlockSeeds, LayerActs, LoraShape, Scratch};
use crate::adapter_pass::{self, Adapter};
use crate::block_pass::{BlockPass, linear_backward};
use crate::config::{Head, ModelConfig, PositionEncoding};
use crate::error::{ModelError, Result};
use crate::grad_buckets::{self, OnGradsFinal};
use crate::head::{self, LossGradient};
use crate::intervene::{self, Edit, Site};
use crate::lora::{Lora, LoraTarget};
use crate::params::{ParamKind, ParamLayout, init_gpt2};
use crate::step_weights::StepWeights;
use crate::weights::PackedWeights;
use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::{attention, dropout, encoder, flash_attention, gelu, layernorm, matmul, residual, rng::Rng};

/// Whether dropout is active. Training mode carries the seed its masks are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { dropout_seed: u64 },
}

/// A GPT-2 model: its configuration and its parameters in one flat buffer, and optionally LoRA adapters
/// being trained on top of it.
///
/// With adapters the base is frozen: `backward` writes gradients in the adapter's layout (every `A`, `B`
/// and, for a classifier, the score head the adapter carries), never the base's.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    pub lora: Option<Lora>,
    /// The weight matrices when they are stored in another type than `f32` (`--dtype`, a quantized GGUF
    /// file); `params` then has no room for them ([`crate::weights`]).
    pub packed: Option<PackedWeights>,
}

impl Gpt {
    /// A freshly initialised model (GPT-2 init, seeded).
    pub fn new(config: ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let params = init_gpt2(&config, &layout, seed);
        Ok(Self { config, layout, params, lora: None, packed: None })
    }

    /// A model from existing parameters (a checkpoint); the buffer must match the layout.
    pub fn from_params(config: ModelConfig, params: Vec<f32>) -> Result<Self> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        if params.len() != layout.total() {
            return Err(ModelError::InvalidConfig {
                field: "parameters",
                reason: format!("expected {} values for this configuration, got {}", layout.total(), params.len()),
            });
        }
        Ok(Self { config, layout, params, lora: None, packed: None })
    }

    /// This model with a classifier head of `labels` (pooling at the last token that is not `pad_token_id`):
    /// a language model gets a new score head drawn from `N(0, 0.02)` as `transformers` initialises one; a
    /// classifier keeps its head when its labels are `labels` and gets a new one otherwise.
    pub fn with_classifier_head(self, labels: Vec<String>, pad_token_id: u32, seed: u64) -> Result<Self> {
        let Self { mut config, layout, mut params, packed, .. } = self;
        if let Some(packed) = packed {
            return Err(ModelError::NeedsF32Weights { job: "a classifier head", dtype: packed.dtype.name() });
        }
        if let Head::Classifier { labels: old, pad_token_id: old_pad } = &config.head
            && *old == labels
            && *old_pad == pad_token_id
        {
            return Ok(Self { config, layout, params, lora: None, packed: None });
        }
        // The score head is the last tensor of the layout: drop the old one, append the new.
        params.truncate(layout.range(ParamKind::Score).start);
        config.head = Head::Classifier { labels, pad_token_id };
        config.validate()?;
        let mut rng = Rng::new(seed ^ 0x0073_636f_7265);
        params.extend((0..ParamKind::Score.numel(&config)).map(|_| (rng.next_normal() * 0.02) as f32));
        Self::from_params(config, params)
    }

    pub fn num_params(&self) -> usize {
        ParamLayout::new(&self.config).total()
    }

    /// Values the optimiser updates: the adapter's when there is one, else every parameter.
    pub fn num_trainable(&self) -> usize {
        self.lora.as_ref().map_or(self.layout.total(), |l| l.params.len())
    }

    /// Room [`Activations`] need for this model's adapters.
    pub fn lora_shape(&self) -> Option<LoraShape> {
        self.lora.as_ref().map(|l| LoraShape {
            rank: l.config.rank,
            targets: LoraTarget::ALL.map(|t| l.layout.has(t)),
            dropout: l.config.dropout > 0.0,
        })
    }

    /// Attaches adapters to train (the base becomes frozen); a classifier's adapter takes the current score
    /// head as its starting point.
    pub fn attach_lora(&mut self, mut lora: Lora) -> Result<()> {
        lora.copy_score_from(&self.config, &self.layout, &self.params)?;
        self.lora = Some(lora);
        Ok(())
    }

    /// Folds the adapters into the weights (`W += s·B·A`, the adapter's score head replacing the base's),
    /// leaving a plain model.
    pub fn merge_lora(&mut self) -> Result<()> {
        if let Some(lora) = self.lora.take() {
            lora.merge_into(&self.config, &self.layout, &mut self.params)?;
        }
        Ok(())
    }

    /// One adapter of layer `l` in the form the passes use.
    fn adapter(&self, target: LoraTarget, l: usize, mode: Mode) -> Option<Adapter<'_>> {
        let lora = self.lora.as_ref().filter(|lora| lora.layout.has(target))?;
        let (in_dim, out_dim) = target.dims(&self.config);
        Some(Adapter {
            a: lora.a(target, l),
            b: lora.b(target, l),
            scale: lora.scale(),
            in_dim,
            out_dim,
            rank: lora.config.rank,
            dropout: if matches!(mode, Mode::Train { .. }) { lora.config.dropout } else { 0.0 },
        })
    }

    /// Rejects token ids outside the vocabulary (targets may also be [`IGNORE_INDEX`]).
    pub fn check_tokens(&self, tokens: &[u32], allow_ignore: bool) -> Result<()> {
        let vocab_size = self.config.vocab_size;
        match tokens.iter().position(|&tok| tok as usize >= vocab_size && !(allow_ignore && tok == IGNORE_INDEX)) {
            Some(position) => Err(ModelError::TokenOutOfRange { token: tokens[position], position, vocab_size }),
            None => Ok(()),
        }
    }

    /// Forward over a (B, T) batch (the shape `acts` currently has, see [`Activations::reshape`]). With
    /// targets, also computes the losses and returns their mean over counted targets.
    ///
    /// # Shapes
    /// `inputs`: (B, T). `targets`: (B, T) next-token ids ([`IGNORE_INDEX`] = not trained) for the
    /// language-model head; (B) label indices for a classifier.
    pub fn forward(
        &self,
        acts: &mut Activations,
        inputs: &[u32],
        targets: Option<&[u32]>,
        mode: Mode,
    ) -> Result<Option<f32>> {
        acts.clean_layers = 0;
        let loss = self.run_forward(acts, inputs, targets, mode, &[], 0, (None, None))?;
        if mode == Mode::Eval {
            // A pass that ran the last block on the counted rows only left the final stream incomplete.
            acts.clean_layers = self.config.n_layer + usize::from(!acts.last_block_rows_only);
        }
        Ok(loss)
    }

    /// An eval-mode [`forward`](Self::forward) with `edits` applied where they name (ablation, activation
    /// patching, a spliced-in reconstruction of the residual stream); see [`crate::intervene`].
    ///
    /// When `acts` already hold a forward of the same `inputs` whose residual streams up to the first edited
    /// layer were not edited (a plain eval forward, or an edited one whose edits sat at later layers), the
    /// layers before the first edit are not recomputed: a sweep over every head costs about half the forwards
    /// it names, and less when it visits the layers last to first.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`ModelError::InvalidEdit`] for a layer, head, batch element or
    /// position out of range or a patch of the wrong length.
    pub fn forward_edited(
        &self,
        acts: &mut Activations,
        inputs: &[u32],
        targets: Option<&[u32]>,
        edits: &[Edit],
    ) -> Result<Option<f32>> {
        for edit in edits {
            edit.validate(&self.config, acts.b, acts.t)?;
        }
        // Residual stream `s` is the input of layer `s` (0: the embeddings; `n_layer`: the final layer norm's).
        let first_dirty_stream = |edit: &Edit| match edit.site {
            Site::ResidPre { layer } => layer,
            site => site.layer() + 1,
        };
        let first_edited_layer = edits.iter().map(|e| e.site.layer()).min().unwrap_or(self.config.n_layer);
        let clean = if acts.inputs.as_slice() == inputs { acts.clean_layers } else { 0 };
        let start = if clean == 0 { 0 } else { first_edited_layer.min(clean - 1) };
        let resume_from = if clean == 0 { None } else { Some(start) };
        acts.clean_layers = 0;
        let resume = resume_from.map_or(0, |s| s + 1);
        let loss = self.run_forward(acts, inputs, targets, Mode::Eval, edits, resume, (None, None))?;
        let complete = self.config.n_layer + usize::from(!acts.last_block_rows_only);
        acts.clean_layers = edits.iter().map(first_dirty_stream).min().unwrap_or(complete).min(complete);
        Ok(loss)
    }

    /// The forward pass behind [`forward`](Self::forward), [`forward_edited`](Self::forward_edited) and
    /// [`forward_backward_packed`](Self::forward_backward_packed) (which passes the head's `gradient`, and
    /// the step's packed weights when it has them). `resume` is 0 for a whole pass, or `1 + l` to start at
    /// layer `l` over residual streams already in `acts`.
    #[allow(clippy::too_many_arguments)]
    fn run_forward(
        &self,
        acts: &mut Activations,
        inputs: &[u32],
        targets: Option<&[u32]>,
        mode: Mode,
        edits: &[Edit],
        resume: usize,
        (gradient, step): (Option<LossGradient<'_>>, Option<&StepWeights<'_>>),
    ) -> Result<Option<f32>> {
        let (b, t) = (acts.b, acts.t);
        let cfg = &self.config;
        if let (Some(packed), Mode::Train { .. }) = (&self.packed, mode) {
            return Err(ModelError::NeedsF32Weights { job: "training", dtype: packed.dtype.name() });
        }
        let labels = cfg.num_labels();
        let target_len = if labels > 0 { b } else { b * t };
        if inputs.len() != b * t || targets.is_some_and(|tg| tg.len() != target_len) {
            let got = inputs.len();
            return Err(ModelError::BatchMismatch { allocated_b: b, allocated_t: t, b: got / t.max(1), t });
        }
        self.check_tokens(inputs, false)?;
        if let Some(targets) = targets {
            if labels > 0 {
                if let Some((sequence, &label)) = targets.iter().enumerate().find(|&(_, &l)| l as usize >= labels) {
                    return Err(ModelError::LabelOutOfRange { label, sequence, num_labels: labels });
                }
            } else {
                self.check_tokens(targets, true)?;
            }
        }
        let counted = if labels == 0 { targets.and_then(head::counted_rows) } else { None };
        acts.set_head_rows(match (&counted, labels) {
            (_, 0) => counted.as_ref().map_or(b * t, Vec::len),
            _ => b,
        });
        acts.counted_rows = counted.unwrap_or_default();
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let p = self.layout.split(&self.params);
        let mut seeds = match mode {
            Mode::Train { dropout_seed } if cfg.dropout > 0.0 => Some(Rng::new(dropout_seed)),
            _ => None,
        };
        if let Some(shape) = self.lora_shape()
            && !acts.has_room_for(&shape)
        {
            return Err(ModelError::InvalidConfig {
                field: "lora",
                reason: "the activations were allocated without room for this model's LoRA adapters".into(),
            });
        }
        let lora_seeds = match mode {
            Mode::Train { dropout_seed } => Rng::derive(dropout_seed, 0x6c6f_7261),
            Mode::Eval => Rng::new(0),
        };
        // Readers that asked for it and read only the counted rows' logits skip the rest of the last block.
        let last_block_rows_only = acts.last_block_rows_only
            && matches!(mode, Mode::Eval)
            && self.packed.is_none()
            && self.lora.is_none()
            && matches!(cfg.head, Head::LanguageModel)
            && !acts.counted_rows.is_empty();
        acts.inputs.copy_from_slice(inputs);
        let attention_maps = acts.keeps_attention_maps();
        let precision = acts.precision;
        let Activations {
            encoded,
            emb_mask,
            layers,
            lnf,
            lnf_mean,
            lnf_rstd,
            targets: kept_targets,
            counted_rows,
            scratch,
            work,
            block_seeds: block_seeds_kept,
            ..
        } = acts;

        let first_layer = resume.saturating_sub(1);
        if resume == 0 {
            self.embed(encoded, inputs, t, 0);
            if let Some(rng) = seeds.as_mut() {
                scratch.branch.copy_from_slice(encoded);
                dropout::forward(encoded, emb_mask, &scratch.branch, cfg.dropout, rng.next_u64());
            }
        }
        let pass = BlockPass { mode, edits, b, t, attention_maps, last_block_rows_only, counted_rows, precision, step };
        let mut block_seeds = BlockSeeds { dropout: seeds, lora: lora_seeds };
        for l in first_layer..cfg.n_layer {
            let (before, rest) = layers.split_at_mut(l);
            if intervene::touches(edits, Site::ResidPre { layer: l }) {
                let stream = if l == 0 { &mut *encoded } else { &mut before[l - 1].residual3 };
                intervene::apply(edits, Site::ResidPre { layer: l }, stream, cfg, b, t);
            }
            let x: &[f32] = if l == 0 { encoded } else { &before[l - 1].residual3 };
            // A checkpointed layer keeps its output only: it borrows the shared block buffers while it runs,
            // and the seeds it starts from are kept for the backward's recomputation.
            if let Some(work) = work.as_mut() {
                rest[0].swap_work(work);
                block_seeds_kept[l] = block_seeds;
            }
            let whole = self.block_forward(&mut rest[0], x, l, &mut block_seeds, scratch, &pass);
            if let Some(work) = work.as_mut() {
                rest[0].swap_work(work);
            }
            if !whole {
                break;
            }
        }
        let final_stream = Site::ResidPre { layer: cfg.n_layer };
        if intervene::touches(edits, final_stream) {
            let last = layers.last_mut().map_or(&mut *encoded, |a| &mut a.residual3);
            intervene::apply(edits, final_stream, last, cfg, b, t);
        }
        let last = layers.last().map_or(&*encoded, |a| &a.residual3);
        layernorm::forward(lnf, lnf_mean, lnf_rstd, last, p.lnf_w, p.lnf_b, c, eps);

        // The head reads the targets of its rows: every row's, the counted rows' in order, or one label per
        // sequence.
        if let Some(targets) = targets {
            match (&cfg.head, counted_rows.is_empty()) {
                (Head::LanguageModel, false) => {
                    for (k, &r) in kept_targets.iter_mut().zip(counted_rows.iter()) {
                        *k = targets[r];
                    }
                }
                _ => kept_targets.copy_from_slice(targets),
            }
        }
        let project = match mode {
            _ if last_block_rows_only => head::Project::Rows,
            Mode::Train { .. } => head::Project::Training,
            Mode::Eval => head::Project::Inference,
        };
        Ok(self.head_pass(acts, targets.is_some(), project, (gradient, step), false))
    }

    /// One transformer block's forward, `a.residual3 = block(x)` with every buffer its backward reads kept in
    /// `a`; the forward of a whole pass and a checkpointed block's recomputation in the backward. Returns
    /// false when it stopped after the attention for a reader of counted rows only (`head::last_block_on_rows`).
    fn block_forward(
        &self,
        a: &mut LayerActs,
        x: &[f32],
        l: usize,
        seeds: &mut BlockSeeds,
        scratch: &mut Scratch,
        pass: &BlockPass<'_>,
    ) -> bool {
        let cfg = &self.config;
        let BlockPass { mode, edits, b, t, .. } = *pass;
        let (c, nh, eps) = (cfg.n_embd, cfg.n_head, cfg.layer_norm_epsilon);
        let w = self.layout.split(&self.params).layer(l);
        layernorm::forward(&mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd, x, w.ln1_w, w.ln1_b, c, eps);
        pass.linear(&mut a.qkv, &a.ln1, self.weight(ParamKind::QkvW, l, pass), Some(w.qkv_b), c, 3 * c);
        if let Some(ad) = self.adapter(LoraTarget::Qkv, l, mode) {
            let [h, ..] = &mut a.lora_hidden;
            let [m, ..] = &mut a.lora_mask;
            adapter_pass::forward(&ad, &mut a.qkv, &a.ln1, h, m, &mut scratch.lora_x, seeds.lora.next_u64());
        }
        if pass.attention_maps {
            attention::forward(&mut a.atty, &mut a.att, &a.qkv, t, c, nh);
        } else {
            flash_attention::forward(&mut a.atty, &mut a.lse, &a.qkv, t, c, nh);
        }
        for head in 0..nh {
            intervene::apply(edits, Site::HeadZ { layer: l, head }, &mut a.atty, cfg, b, t);
        }
        if pass.last_block_rows_only && l + 1 == cfg.n_layer {
            head::last_block_on_rows(a, x, &w, edits, pass.counted_rows, scratch, cfg, l, t);
            return false;
        }
        let proj = self.weight(ParamKind::AttnProjW, l, pass);
        pass.linear(&mut scratch.branch, &a.atty, proj, Some(w.attn_proj_b), c, c);
        if let Some(ad) = self.adapter(LoraTarget::AttnProj, l, mode) {
            let [_, h, ..] = &mut a.lora_hidden;
            let [_, m, ..] = &mut a.lora_mask;
            adapter_pass::forward(&ad, &mut scratch.branch, &a.atty, h, m, &mut scratch.lora_x, seeds.lora.next_u64());
        }
        if let Some(rng) = seeds.dropout.as_mut() {
            dropout::forward(&mut scratch.branch2, &mut a.attn_mask, &scratch.branch, cfg.dropout, rng.next_u64());
            std::mem::swap(&mut scratch.branch, &mut scratch.branch2);
        }
        intervene::apply(edits, Site::AttnOut { layer: l }, &mut scratch.branch, cfg, b, t);
        let (sum, norm) = (&mut a.residual2, &mut a.ln2);
        layernorm::forward_residual(
            (sum, norm),
            &mut a.ln2_mean,
            &mut a.ln2_rstd,
            (x, &scratch.branch),
            w.ln2_w,
            w.ln2_b,
            c,
            eps,
        );
        let fc = self.weight(ParamKind::FcW, l, pass);
        if let Some(ad) = self.adapter(LoraTarget::Fc, l, mode) {
            // The adapter adds onto the pre-activation, so the GELU waits for it.
            pass.linear(&mut a.fch, &a.ln2, fc, Some(w.fc_b), c, 4 * c);
            let [_, _, h, _] = &mut a.lora_hidden;
            let [_, _, m, _] = &mut a.lora_mask;
            adapter_pass::forward(&ad, &mut a.fch, &a.ln2, h, m, &mut scratch.lora_x, seeds.lora.next_u64());
            gelu::forward(&mut a.fch_gelu, &a.fch);
        } else {
            pass.linear_gelu((&mut a.fch, &mut a.fch_gelu), &a.ln2, fc, Some(w.fc_b), c, 4 * c);
        }
        let proj = self.weight(ParamKind::FcProjW, l, pass);
        pass.linear(&mut scratch.branch, &a.fch_gelu, proj, Some(w.fc_proj_b), 4 * c, c);
        if let Some(ad) = self.adapter(LoraTarget::FcProj, l, mode) {
            let [.., h] = &mut a.lora_hidden;
            let [.., m] = &mut a.lora_mask;
            adapter_pass::forward(
                &ad,
                &mut scratch.branch,
                &a.fch_gelu,
                h,
                m,
                &mut scratch.lora_x,
                seeds.lora.next_u64(),
            );
        }
        if let Some(rng) = seeds.dropout.as_mut() {
            dropout::forward(&mut scratch.branch2, &mut a.mlp_mask, &scratch.branch, cfg.dropout, rng.next_u64());
            std::mem::swap(&mut scratch.branch, &mut scratch.branch2);
        }
        intervene::apply(edits, Site::MlpOut { layer: l }, &mut scratch.branch, cfg, b, t);
        residual::forward(&mut a.residual3, &a.residual2, &scratch.branch);
        true
    }

    /// Backward of the mean loss of the last `forward` (which must have had targets), **accumulating**
    /// `loss_scale ×` its gradient into `grads`: the parameters' layout, or — when the model carries LoRA
    /// adapters — the adapter's layout (the frozen base's weight gradients are never computed). Gradient
    /// accumulation over k micro-batches passes `loss_scale = 1/k`.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32], loss_scale: f32, mode: Mode) {
        self.backward_with(acts, grads, loss_scale, mode, &mut |_| {});
    }

    /// The ranges of the gradient buffer that [`Gpt::backward_with`] hands to its hook, bucket by bucket in
    /// the order it does (see [`crate::grad_buckets`]); one bucket, the whole adapter buffer, for a model
    /// with LoRA adapters, whose backward hands over nothing. Together they cover the buffer exactly once.
    pub fn gradient_buckets(&self) -> Vec<Vec<std::ops::Range<usize>>> {
        match &self.lora {
            Some(lora) => vec![vec![0..lora.layout.total()]],
            None => grad_buckets::buckets(&self.config, &self.layout),
        }
    }

    /// [`Gpt::backward`], calling `on_final` with each bucket of gradients as soon as the pass will not
    /// change it again — the head's, each layer's from the last to the first, then the embeddings'
    /// ([`crate::grad_buckets`]) — so that data-parallel training can start summing it over processes
    /// while the pass goes on. The values handed over include what `grads` held before (accumulation).
    ///
    /// The output layer's gradient is taken here from the final norm's output kept by the forward: a
    /// language model's logits are computed again, chunk by chunk, unless the buffers kept them (inspection
    /// buffers). Training passes use [`Gpt::forward_backward`], whose forward takes it at once.
    pub fn backward_with(
        &self,
        acts: &mut Activations,
        grads: &mut [f32],
        loss_scale: f32,
        mode: Mode,
        on_final: OnGradsFinal<'_>,
    ) {
        // A forward in training mode refuses such a model, so there is never a pass to undo.
        assert!(self.packed.is_none(), "backward needs f32 weights: the forward refuses training mode without them");
        let logits_kept = !acts.logits.is_empty();
        let gradient = LossGradient { grads: &mut *grads, loss_scale };
        let project = match mode {
            Mode::Train { .. } => head::Project::Training,
            Mode::Eval => head::Project::Inference,
        };
        self.head_pass(acts, true, project, (Some(gradient), None), logits_kept);
        self.backward_from_head(acts, grads, mode, on_final, None);
    }

    /// Forward and backward of one training batch, **accumulating** `loss_scale ×` the gradient of its mean
    /// loss into `grads` (as [`Gpt::forward`] then [`Gpt::backward_with`]) and returning that loss. The
    /// output layer's gradient is taken during the forward, chunk by chunk of rows, right after each
    /// chunk's logits and loss (`crate::head::pass`): no (rows, V) logits, probabilities or logit gradient
    /// are ever held, and the backward starts from the final norm's output gradient the forward left.
    ///
    /// The token embedding's gradient thus receives the head's part during the forward and the
    /// embedding's in the backward; `on_final` still hands it over last ([`crate::grad_buckets`]).
    ///
    /// # Errors
    /// As [`Gpt::forward`]; [`ModelError::NeedsF32Weights`] for weights in another type, and
    /// [`ModelError::InvalidConfig`] when `grads` is not the trainable layout's length.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        acts: &mut Activations,
        inputs: &[u32],
        targets: &[u32],
        mode: Mode,
        grads: &mut [f32],
        loss_scale: f32,
        on_final: OnGradsFinal<'_>,
    ) -> Result<f32> {
        self.forward_backward_packed(acts, inputs, targets, mode, (grads, loss_scale), on_final, None)
    }

    /// [`Gpt::forward_backward`] with this optimizer step's weights packed beforehand ([`Gpt::pack_for_step`]):
    /// every linear layer's forward product, a checkpointed block's recomputation and the output layer's
    /// chunks read the packed copies instead of packing the weights again. The same values bit for bit.
    ///
    /// # Errors
    /// As [`Gpt::forward_backward`], and [`ModelError::InvalidConfig`] for packs made from another model or
    /// for another precision than the buffers'.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_packed(
        &self,
        acts: &mut Activations,
        inputs: &[u32],
        targets: &[u32],
        mode: Mode,
        (grads, loss_scale): (&mut [f32], f32),
        on_final: OnGradsFinal<'_>,
        step: Option<&StepWeights<'_>>,
    ) -> Result<f32> {
        self.require_f32("training")?;
        let mismatch = match step {
            Some(s) if !s.belongs_to(self) => Some("they were packed from another model's weights"),
            Some(s) if s.precision() != acts.precision => {
                Some("they were packed for another precision than the training buffers'")
            }
            _ => None,
        };
        if let Some(reason) = mismatch {
            return Err(ModelError::InvalidConfig { field: "packed weights", reason: reason.into() });
        }
        if grads.len() != self.num_trainable() {
            return Err(ModelError::InvalidConfig {
                field: "gradient buffer",
                reason: format!("expected {} values (the trainable layout), got {}", self.num_trainable(), grads.len()),
            });
        }
        let gradient = LossGradient { grads: &mut *grads, loss_scale };
        let loss = self.run_forward(acts, inputs, Some(targets), mode, &[], 0, (Some(gradient), step))?;
        self.backward_from_head(acts, grads, mode, on_final, step);
        Ok(loss.unwrap_or(f32::NAN))
    }

    /// The backward below the output layer, from the gradient of the final norm's output in `scratch.dln`
    /// (left by [`Gpt::head_pass`]); a checkpointed block's recomputation reads `step`'s packed weights.
    fn backward_from_head(
        &self,
        acts: &mut Activations,
        grads: &mut [f32],
        mode: Mode,
        on_final: OnGradsFinal<'_>,
        step: Option<&StepWeights<'_>>,
    ) {
        let cfg = &self.config;
        let (b, t, c, nh) = (acts.b, acts.t, cfg.n_embd, cfg.n_head);
        let attention_maps = acts.keeps_attention_maps();
        // A checkpointed block is recomputed as the training forward ran it: no edits, every row.
        let precision = acts.precision;
        let pass = BlockPass {
            mode,
            edits: &[],
            b,
            t,
            attention_maps,
            last_block_rows_only: false,
            counted_rows: &[],
            precision,
            step,
        };
        let dropout_on = matches!(mode, Mode::Train { .. }) && cfg.dropout > 0.0;
        let p = self.layout.split(&self.params);
        let lora = self.lora.as_ref();
        let (mut g, mut lora_grads) = match lora {
            Some(_) => (None, Some(grads)),
            None => (Some(self.layout.split_mut(grads)), None),
        };
        let Activations { encoded, emb_mask, layers, lnf_mean, lnf_rstd, inputs, scratch, work, block_seeds, .. } =
            acts;
        let s = scratch;

        // lnf = layernorm(last residual); a frozen base's layer-norm gradients go to scratch.
        let last = layers.last().map_or(&*encoded, |a| &a.residual3);
        s.dresidual.fill(0.0);
        let (dlnf_w, dlnf_b) = match g.as_mut() {
            Some(g) => (&mut *g.lnf_w, &mut *g.lnf_b),
            None => (&mut s.frozen_dw[..], &mut s.frozen_db[..]),
        };
        layernorm::backward(&mut s.dresidual, dlnf_w, dlnf_b, &s.dln, last, p.lnf_w, lnf_mean, lnf_rstd, c);
        if let Some(g) = g.as_ref() {
            grad_buckets::head_done(&self.layout, g, on_final);
        }

        // An adapter's backward onto the gradient of its layer's input, and its A/B gradients.
        macro_rules! adapter_backward {
            ($target:expr, $a:expr, $l:expr, $dx:expr, $dout:expr, $x:expr) => {
                if let (Some(ad), Some(lora), Some(lg)) =
                    (self.adapter($target, $l, mode), lora, lora_grads.as_deref_mut())
                {
                    let i = $target.index();
                    let (da, db) =
                        adapter_pass::two_mut(lg, lora.layout.a_range($target, $l), lora.layout.b_range($target, $l));
                    adapter_pass::backward(
                        &ad,
                        $dx,
                        da,
                        db,
                        $dout,
                        $x,
                        &$a.lora_hidden[i],
                        &$a.lora_mask[i],
                        &mut s.lora_dh,
                        &mut s.lora_x,
                        &mut s.lora_dx,
                    );
                }
            };
        }

        for l in (0..cfg.n_layer).rev() {
            let w = p.layer(l);
            let mut dw = g.as_mut().map(|g| g.layer_mut(l));
            let (before, rest) = layers.split_at_mut(l);
            let x: &[f32] = if l == 0 { encoded } else { &before[l - 1].residual3 };
            // A checkpointed block: borrow the shared buffers and refill them by running its forward again
            // from its kept input, with the random streams it started from (the same dropout masks).
            if let Some(work) = work.as_mut() {
                rest[0].swap_work(work);
                let mut seeds = block_seeds[l];
                self.block_forward(&mut rest[0], x, l, &mut seeds, s, &pass);
            }
            let a = &rest[0];
            // residual3 = residual2 + drop(fcproj): both inputs receive dresidual (see residual::backward).
            let dfcproj: &[f32] = if dropout_on {
                s.dbranch.fill(0.0);
                dropout::backward(&mut s.dbranch, &s.dresidual, &a.mlp_mask, cfg.dropout);
                &s.dbranch
            } else {
                &s.dresidual
            };
            // fcproj = fch_gelu · fc_projᵀ + b (+ adapter), fch_gelu = gelu(fch)
            let frozen = dw.as_mut().map(|d| (&mut *d.fc_proj_w, &mut *d.fc_proj_b));
            if self.adapter(LoraTarget::FcProj, l, mode).is_none() {
                // The GELU's backward in the input-gradient product's epilogue.
                let (grads, x) = ((&mut s.dfch_gelu[..], &mut s.dfch[..]), &a.fch_gelu);
                matmul::backward_through_gelu_in(precision, grads, &a.fch, frozen, dfcproj, x, w.fc_proj_w, 4 * c, c);
            } else {
                s.dfch_gelu.fill(0.0);
                linear_backward(precision, &mut s.dfch_gelu, frozen, dfcproj, &a.fch_gelu, w.fc_proj_w, 4 * c, c);
                adapter_backward!(LoraTarget::FcProj, a, l, &mut s.dfch_gelu, dfcproj, &a.fch_gelu);
                s.dfch.fill(0.0);
                gelu::backward(&mut s.dfch, &a.fch, &s.dfch_gelu);
            }
            // fch = ln2 · fcᵀ + b (+ adapter)
            s.dln.fill(0.0);
            let frozen = dw.as_mut().map(|d| (&mut *d.fc_w, &mut *d.fc_b));
            linear_backward(precision, &mut s.dln, frozen, &s.dfch, &a.ln2, w.fc_w, c, 4 * c);
            adapter_backward!(LoraTarget::Fc, a, l, &mut s.dln, &s.dfch, &a.ln2);
            // ln2 = layernorm(residual2)
            let (dln2_w, dln2_b) = match dw.as_mut() {
                Some(d) => (&mut *d.ln2_w, &mut *d.ln2_b),
                None => (&mut s.frozen_dw[..], &mut s.frozen_db[..]),
            };
            layernorm::backward(
                &mut s.dresidual,
                dln2_w,
                dln2_b,
                &s.dln,
                &a.residual2,
                w.ln2_w,
                &a.ln2_mean,
                &a.ln2_rstd,
                c,
            );
            // residual2 = x + drop(attproj)
            let dattproj: &[f32] = if dropout_on {
                s.dbranch.fill(0.0);
                dropout::backward(&mut s.dbranch, &s.dresidual, &a.attn_mask, cfg.dropout);
                &s.dbranch
            } else {
                &s.dresidual
            };
            // attproj = atty · attn_projᵀ + b (+ adapter)
            s.datty.fill(0.0);
            let frozen = dw.as_mut().map(|d| (&mut *d.attn_proj_w, &mut *d.attn_proj_b));
            linear_backward(precision, &mut s.datty, frozen, dattproj, &a.atty, w.attn_proj_w, c, c);
            adapter_backward!(LoraTarget::AttnProj, a, l, &mut s.datty, dattproj, &a.atty);
            // atty = attention(qkv)
            s.dqkv.fill(0.0);
            if attention_maps {
                attention::backward(&mut s.dqkv, &mut s.att_grad, &s.datty, &a.qkv, &a.att, t, c, nh);
            } else {
                flash_attention::backward(&mut s.dqkv, &mut s.att_grad, &s.datty, &a.qkv, &a.atty, &a.lse, t, c, nh);
            }
            // qkv = ln1 · qkvᵀ + b (+ adapter)
            s.dln.fill(0.0);
            let frozen = dw.as_mut().map(|d| (&mut *d.qkv_w, &mut *d.qkv_b));
            linear_backward(precision, &mut s.dln, frozen, &s.dqkv, &a.ln1, w.qkv_w, c, 3 * c);
            adapter_backward!(LoraTarget::Qkv, a, l, &mut s.dln, &s.dqkv, &a.ln1);
            // ln1 = layernorm(x)
            let (dln1_w, dln1_b) = match dw.as_mut() {
                Some(d) => (&mut *d.ln1_w, &mut *d.ln1_b),
                None => (&mut s.frozen_dw[..], &mut s.frozen_db[..]),
            };
            layernorm::backward(&mut s.dresidual, dln1_w, dln1_b, &s.dln, x, w.ln1_w, &a.ln1_mean, &a.ln1_rstd, c);
            if let Some(work) = work.as_mut() {
                rest[0].swap_work(work);
            }
            if let Some(g) = g.as_ref() {
                grad_buckets::layer_done(&self.layout, g, l, on_final);
            }
        }
        // encoded = drop(wte[inputs] + wpe): only the base's embeddings receive this, and a frozen base none.
        let Some(g) = g else { return };
        let dencoded: &[f32] = if dropout_on {
            s.dbranch.fill(0.0);
            dropout::backward(&mut s.dbranch, &s.dresidual, emb_mask, cfg.dropout);
            &s.dbranch
        } else {
            &s.dresidual
        };
        let dwpe = (cfg.position_encoding == PositionEncoding::Learned).then_some(&mut *g.wpe);
        encoder::backward(g.wte, dwpe, dencoded, inputs, t, c);
        grad_buckets::embeddings_done(&self.layout, &g, on_final);
    }

    /// Trainable flag per kind, for optimisers (the sinusoidal table is fixed).
    pub fn trainable(&self, kind: ParamKind) -> bool {
        kind.trainable(&self.config)
    }
}
