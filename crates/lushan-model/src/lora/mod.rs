//! LoRA adapters (DESIGN.md §12): a second, small flat buffer laid out by one list, like the base parameters.
//!
//! A LoRA adapter adds a low-rank update to some of GPT-2's four linear layers: `W' = W + (α/r)·B·A`, with
//! `A: (r, in)` and `B: (out, r)`, where lushan stores `W` as `(out, in)` (see [`ParamKind::shape`]). Hugging
//! Face's `Conv1D` stores the transpose, so the same update reads `W_hf += (α/r)·(B·A)ᵀ` there.
//!
//! The buffer holds, for each adapted layer kind in canonical order ([`LoraTarget::ALL`]), every layer's `A`
//! stacked (`[n_layer, r, in]`) then every layer's `B` (`[n_layer, out, r]`) — PEFT's `lora_A.weight`
//! `[r, in_features]` and `lora_B.weight` `[out_features, r]`, so no transposes are needed in the files —
//! and, for a classifier, the trainable score head `[num_labels, n_embd]` last (PEFT's `modules_to_save`
//! copy for `SEQ_CLS`). The same layout serves the gradients and the optimiser moments. PEFT's names and
//! shapes are the file format ([`peft`]).

pub mod peft;
mod peft_config;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{ParamKind, ParamLayout};
use lushan_kernels::rng::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// A linear layer of every transformer block that LoRA can adapt. The variant order is the storage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LoraTarget {
    /// `attn.c_attn`: the fused query/key/value projection, `C → 3C`.
    #[serde(rename = "attn.c_attn")]
    Qkv,
    /// `attn.c_proj`: the attention output projection, `C → C`.
    #[serde(rename = "attn.c_proj")]
    AttnProj,
    /// `mlp.c_fc`: the MLP expansion, `C → 4C`.
    #[serde(rename = "mlp.c_fc")]
    Fc,
    /// `mlp.c_proj`: the MLP contraction, `4C → C`.
    #[serde(rename = "mlp.c_proj")]
    FcProj,
}

/// The names [`LoraTarget::parse_list`] accepts, for error messages.
const VALID_TARGET_NAMES: &str = "c_attn, attn.c_attn, c_proj (both attn.c_proj and mlp.c_proj), attn.c_proj, c_fc, \
                                  mlp.c_fc, mlp.c_proj, all-linear";

/// PEFT's shorthand for every linear (and `Conv1D`) layer except the output head.
pub const ALL_LINEAR: &str = "all-linear";

impl LoraTarget {
    /// Canonical (storage) order.
    pub const ALL: [LoraTarget; 4] = [LoraTarget::Qkv, LoraTarget::AttnProj, LoraTarget::Fc, LoraTarget::FcProj];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The base weight this target adds its update to.
    pub fn base_kind(self) -> ParamKind {
        match self {
            LoraTarget::Qkv => ParamKind::QkvW,
            LoraTarget::AttnProj => ParamKind::AttnProjW,
            LoraTarget::Fc => ParamKind::FcW,
            LoraTarget::FcProj => ParamKind::FcProjW,
        }
    }

    /// `(in_features, out_features)` of the adapted layer.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let c = cfg.n_embd;
        match self {
            LoraTarget::Qkv => (c, 3 * c),
            LoraTarget::AttnProj => (c, c),
            LoraTarget::Fc => (c, 4 * c),
            LoraTarget::FcProj => (4 * c, c),
        }
    }

    /// The module's path inside a GPT-2 block (`transformer.h.{l}.` + this), as PEFT names it.
    pub fn peft_module(self) -> &'static str {
        match self {
            LoraTarget::Qkv => "attn.c_attn",
            LoraTarget::AttnProj => "attn.c_proj",
            LoraTarget::Fc => "mlp.c_fc",
            LoraTarget::FcProj => "mlp.c_proj",
        }
    }

    /// Whether the PEFT `target_modules` entry `name` selects this module in every block: PEFT matches a
    /// module whose path equals the entry or ends with `.` + entry, so `c_proj` selects both projections.
    pub fn matches_peft_name(self, name: &str) -> bool {
        let module = self.peft_module();
        module == name || module.strip_suffix(name).is_some_and(|head| head.ends_with('.'))
    }

    /// Parses a comma-separated list of module names with PEFT's suffix semantics — `c_attn`, `c_fc`,
    /// `c_proj` (both `attn.c_proj` and `mlp.c_proj`), the full names `attn.c_attn` … `mlp.c_proj`, or
    /// `all-linear` — into targets in canonical order, without duplicates. A name that selects no module
    /// lushan adapts is an error naming it and listing the valid names.
    pub fn parse_list(list: &str) -> Result<Vec<LoraTarget>> {
        let mut targets = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name.eq_ignore_ascii_case(ALL_LINEAR) {
                targets.extend(LoraTarget::ALL);
                continue;
            }
            let matched: Vec<LoraTarget> = LoraTarget::ALL.into_iter().filter(|t| t.matches_peft_name(name)).collect();
            if matched.is_empty() {
                let per_layer = if name.contains("h.") && name.chars().any(|c| c.is_ascii_digit()) {
                    " (a single layer's module: lushan adapts the named module in every layer)"
                } else {
                    ""
                };
                return Err(invalid(
                    "targets",
                    format!("`{name}` names no module lushan can adapt{per_layer}; valid names: {VALID_TARGET_NAMES}"),
                ));
            }
            targets.extend(matched);
        }
        if targets.is_empty() {
            return Err(invalid("targets", format!("no module named in `{list}`; valid names: {VALID_TARGET_NAMES}")));
        }
        targets.sort();
        targets.dedup();
        Ok(targets)
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.peft_module())
    }
}

/// The hyper-parameters of an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// `r`: the inner dimension of `B·A`.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// `lora_dropout`: dropout on the adapter's input while training (the base path never sees it).
    pub dropout: f32,
    /// The adapted layers (in every block).
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// The factor on `B·A`: `alpha / rank` (PEFT's default; rank-stabilised LoRA is not supported).
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Rejects settings without meaning for `model`, naming the setting.
    pub fn validate(&self, model: &ModelConfig) -> Result<()> {
        if self.rank == 0 || self.rank > model.n_embd {
            return Err(invalid("rank", format!("must be in 1..={} (n_embd), got {}", model.n_embd, self.rank)));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(invalid("alpha", format!("must be a finite number above 0, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(invalid(
                "targets",
                format!("at least one module is needed; valid names: {VALID_TARGET_NAMES}"),
            ));
        }
        Ok(())
    }

    /// The same configuration with its targets in canonical order and without duplicates.
    fn canonical(mut self) -> Self {
        self.targets.sort();
        self.targets.dedup();
        self
    }
}

/// One tensor of a LoRA buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraSlot {
    /// Layer `.1`'s `A` of target `.0`: `[rank, in]`.
    A(LoraTarget, usize),
    /// Layer `.1`'s `B` of target `.0`: `[out, rank]`.
    B(LoraTarget, usize),
    /// The classifier's trainable score head `[num_labels, n_embd]`.
    Score,
}

impl LoraSlot {
    /// The tensor's name in a PEFT `adapter_model.safetensors`.
    pub fn peft_name(self) -> String {
        match self {
            LoraSlot::A(t, l) => format!("{}transformer.h.{l}.{}.lora_A.weight", peft::PEFT_PREFIX, t.peft_module()),
            LoraSlot::B(t, l) => format!("{}transformer.h.{l}.{}.lora_B.weight", peft::PEFT_PREFIX, t.peft_module()),
            LoraSlot::Score => format!("{}score.weight", peft::PEFT_PREFIX),
        }
    }

    /// Weight decay applies: `A`, `B` and the score head are all 2-D matmul weights (DESIGN.md §3's rule).
    pub fn decays(self) -> bool {
        true
    }
}

/// A named tensor of a LoRA buffer: where it lies and its (row-major) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraEntry {
    pub slot: LoraSlot,
    pub range: Range<usize>,
    pub shape: [usize; 2],
}

/// Where one target's factors lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    a_start: usize,
    b_start: usize,
    in_dim: usize,
    out_dim: usize,
}

/// Offsets of every LoRA tensor inside the flat adapter buffer (see the module docs for the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraLayout {
    n_layer: usize,
    rank: usize,
    blocks: [Option<Block>; 4],
    /// Start, rows (labels) and columns (`n_embd`) of the score head.
    score: Option<(usize, usize, usize)>,
    total: usize,
}

impl LoraLayout {
    /// The layout of `config`'s adapter on `model` (validated; sizes computed with checked arithmetic).
    pub fn new(config: &LoraConfig, model: &ModelConfig) -> Result<Self> {
        model.validate()?;
        config.validate(model)?;
        let overflow = || invalid("rank", format!("{} is too large for a model of this size", config.rank));
        let (n_layer, rank) = (model.n_layer, config.rank);
        let mut blocks = [None; 4];
        let mut total = 0usize;
        for target in LoraTarget::ALL.into_iter().filter(|t| config.targets.contains(t)) {
            let (in_dim, out_dim) = target.dims(model);
            let a_len = n_layer.checked_mul(rank).and_then(|n| n.checked_mul(in_dim)).ok_or_else(overflow)?;
            let b_len = n_layer.checked_mul(rank).and_then(|n| n.checked_mul(out_dim)).ok_or_else(overflow)?;
            let b_start = total.checked_add(a_len).ok_or_else(overflow)?;
            blocks[target.index()] = Some(Block { a_start: total, b_start, in_dim, out_dim });
            total = b_start.checked_add(b_len).ok_or_else(overflow)?;
        }
        let labels = model.num_labels();
        let score = (labels > 0).then_some((total, labels, model.n_embd));
        if labels > 0 {
            total = labels.checked_mul(model.n_embd).and_then(|n| n.checked_add(total)).ok_or_else(overflow)?;
        }
        Ok(Self { n_layer, rank, blocks, score, total })
    }

    /// Number of `f32`s in one buffer of this layout.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Whether this adapter adapts `target`.
    pub fn has(&self, target: LoraTarget) -> bool {
        self.blocks[target.index()].is_some()
    }

    /// The adapted targets, in canonical order.
    pub fn targets(&self) -> impl Iterator<Item = LoraTarget> + '_ {
        LoraTarget::ALL.into_iter().filter(|t| self.has(*t))
    }

    fn block(&self, target: LoraTarget, layer: usize) -> Block {
        assert!(layer < self.n_layer, "LoRA layer {layer} out of range: the adapter has {} layers", self.n_layer);
        match self.blocks[target.index()] {
            Some(block) => block,
            None => panic!("this LoRA adapter does not adapt {target}; check `LoraLayout::has` first"),
        }
    }

    /// Range of layer `layer`'s `A` (`[rank, in]`, row-major).
    ///
    /// # Panics
    /// If the adapter does not adapt `target` ([`LoraLayout::has`]) or `layer >= n_layer`: caller bugs.
    pub fn a_range(&self, target: LoraTarget, layer: usize) -> Range<usize> {
        let block = self.block(target, layer);
        let n = self.rank * block.in_dim;
        let start = block.a_start + layer * n;
        start..start + n
    }

    /// Range of layer `layer`'s `B` (`[out, rank]`, row-major).
    ///
    /// # Panics
    /// As [`LoraLayout::a_range`].
    pub fn b_range(&self, target: LoraTarget, layer: usize) -> Range<usize> {
        let block = self.block(target, layer);
        let n = block.out_dim * self.rank;
        let start = block.b_start + layer * n;
        start..start + n
    }

    /// Range of the classifier's score head (`[num_labels, n_embd]`); `None` for a language model.
    pub fn score_range(&self) -> Option<Range<usize>> {
        self.score.map(|(start, rows, cols)| start..start + rows * cols)
    }

    /// Shape of `slot`'s tensor.
    ///
    /// # Panics
    /// As [`LoraLayout::a_range`], or for [`LoraSlot::Score`] in a language model's adapter.
    pub fn shape(&self, slot: LoraSlot) -> [usize; 2] {
        match slot {
            LoraSlot::A(t, l) => [self.rank, self.block(t, l).in_dim],
            LoraSlot::B(t, l) => [self.block(t, l).out_dim, self.rank],
            LoraSlot::Score => match self.score {
                Some((_, rows, cols)) => [rows, cols],
                None => panic!("a language model's LoRA adapter has no score head"),
            },
        }
    }

    /// Every tensor in storage order, named, for saving and for the optimiser's weight-decay decisions.
    pub fn entries(&self) -> Vec<LoraEntry> {
        let mut out = Vec::new();
        for target in self.targets() {
            for make in [LoraSlot::A as fn(LoraTarget, usize) -> LoraSlot, LoraSlot::B] {
                for layer in 0..self.n_layer {
                    let slot = make(target, layer);
                    let range = match slot {
                        LoraSlot::A(..) => self.a_range(target, layer),
                        _ => self.b_range(target, layer),
                    };
                    out.push(LoraEntry { slot, range, shape: self.shape(slot) });
                }
            }
        }
        if let Some(range) = self.score_range() {
            out.push(LoraEntry { slot: LoraSlot::Score, range, shape: self.shape(LoraSlot::Score) });
        }
        out
    }
}

/// An adapter: its configuration, layout and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub config: LoraConfig,
    pub layout: LoraLayout,
    pub params: Vec<f32>,
}

impl Lora {
    /// A fresh adapter initialised like PEFT's `init_lora_weights=True`: every `A` kaiming-uniform with
    /// `a = √5` — `U(−1/√in, 1/√in)` — from one seeded stream (targets in canonical order, layers, rows);
    /// every `B` zero, so the adapted model starts equal to the base; the score slot zero (copy the base's
    /// head in with [`Lora::copy_score_from`]).
    pub fn new(config: LoraConfig, model: &ModelConfig, seed: u64) -> Result<Self> {
        let config = config.canonical();
        let layout = LoraLayout::new(&config, model)?;
        let mut params = vec![0.0f32; layout.total()];
        let mut rng = Rng::new(seed);
        for target in layout.targets() {
            let (in_dim, _) = target.dims(model);
            let bound = 1.0 / (in_dim as f64).sqrt();
            for layer in 0..layout.n_layer() {
                for a in &mut params[layout.a_range(target, layer)] {
                    *a = ((2.0 * rng.next_f64() - 1.0) * bound) as f32;
                }
            }
        }
        Ok(Self { config, layout, params })
    }

    /// An adapter from existing values (a checkpoint or resume state) in [`LoraLayout`] order.
    pub fn from_params(config: LoraConfig, model: &ModelConfig, params: Vec<f32>) -> Result<Self> {
        let config = config.canonical();
        let layout = LoraLayout::new(&config, model)?;
        if params.len() != layout.total() {
            return Err(invalid(
                "parameters",
                format!("expected {} values for this adapter, got {}", layout.total(), params.len()),
            ));
        }
        Ok(Self { config, layout, params })
    }

    pub fn scale(&self) -> f32 {
        self.config.scale()
    }

    /// Layer `layer`'s `A` of `target` (`[rank, in]`). Panics as [`LoraLayout::a_range`].
    pub fn a(&self, target: LoraTarget, layer: usize) -> &[f32] {
        &self.params[self.layout.a_range(target, layer)]
    }

    /// Layer `layer`'s `B` of `target` (`[out, rank]`). Panics as [`LoraLayout::b_range`].
    pub fn b(&self, target: LoraTarget, layer: usize) -> &[f32] {
        &self.params[self.layout.b_range(target, layer)]
    }

    /// The classifier's score head (`[num_labels, n_embd]`); `None` for a language model.
    pub fn score(&self) -> Option<&[f32]> {
        self.layout.score_range().map(|r| &self.params[r])
    }

    pub fn score_mut(&mut self) -> Option<&mut [f32]> {
        self.layout.score_range().map(|r| &mut self.params[r])
    }

    /// Copies the base model's score head into the adapter's trainable copy (PEFT's `modules_to_save`
    /// starts from the base head).
    pub fn copy_score_from(&mut self, cfg: &ModelConfig, layout: &ParamLayout, params: &[f32]) -> Result<()> {
        self.check_base(cfg, layout, params.len())?;
        let src = &params[layout.range(ParamKind::Score)];
        if let Some(dst) = self.score_mut() {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Folds the adapter into base parameters (one way; there is no unmerge): for every adapted layer
    /// `W += scale · B·A` in lushan's `(out, in)` layout — `W_hf += scale·(B·A)ᵀ` in Hugging Face's `Conv1D`
    /// view — and, for a classifier, the adapter's score head replaces the base's. `B·A` is formed first and
    /// then scaled and added, as PEFT's `merge_and_unload` does.
    pub fn merge_into(&self, cfg: &ModelConfig, layout: &ParamLayout, params: &mut [f32]) -> Result<()> {
        self.check_base(cfg, layout, params.len())?;
        let (rank, scale) = (self.layout.rank(), self.scale());
        let mut delta = Vec::new();
        for target in self.layout.targets() {
            let (in_dim, out_dim) = target.dims(cfg);
            delta.resize(in_dim, 0.0f32);
            for layer in 0..cfg.n_layer {
                let (a, b) = (self.a(target, layer), self.b(target, layer));
                let w = &mut params[layout.layer_range(target.base_kind(), layer)];
                for o in 0..out_dim {
                    delta.fill(0.0);
                    for (k, &bk) in b[o * rank..(o + 1) * rank].iter().enumerate() {
                        for (d, &ak) in delta.iter_mut().zip(&a[k * in_dim..(k + 1) * in_dim]) {
                            *d += bk * ak;
                        }
                    }
                    for (wi, &d) in w[o * in_dim..(o + 1) * in_dim].iter_mut().zip(&delta) {
                        *wi += d * scale;
                    }
                }
            }
        }
        if let Some(score) = self.score() {
            params[layout.range(ParamKind::Score)].copy_from_slice(score);
        }
        Ok(())
    }

    /// Rejects a base model of another shape than the adapter's.
    fn check_base(&self, cfg: &ModelConfig, layout: &ParamLayout, len: usize) -> Result<()> {
        let want = LoraLayout::new(&self.config, cfg)?;
        if want != self.layout {
            return Err(invalid(
                "base model",
                format!(
                    "the adapter does not fit a model with n_layer={}, n_embd={}, {} labels (adapter: n_layer={}, \
                     {} values)",
                    cfg.n_layer,
                    cfg.n_embd,
                    cfg.num_labels(),
                    self.layout.n_layer(),
                    self.layout.total()
                ),
            ));
        }
        if *layout != ParamLayout::new(cfg) || len != layout.total() {
            return Err(invalid(
                "base model",
                format!("the parameter buffer ({len} values) does not match the model configuration"),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> ModelError {
    ModelError::InvalidLora { field, reason }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::config::Head;

    fn model() -> ModelConfig {
        ModelConfig::new(11, 8, 3, 2, 8)
    }

    fn classifier() -> ModelConfig {
        let mut cfg = model();
        cfg.head = Head::Classifier { labels: vec!["a".into(), "b".into(), "c".into()], pad_token_id: 0 };
        cfg
    }

    fn config(targets: &[LoraTarget]) -> LoraConfig {
        LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: targets.to_vec() }
    }

    #[test]
    fn parse_list_follows_peft_suffix_semantics() {
        use LoraTarget::*;
        assert_eq!(LoraTarget::parse_list("c_attn").unwrap(), vec![Qkv]);
        assert_eq!(LoraTarget::parse_list("c_proj").unwrap(), vec![AttnProj, FcProj]);
        assert_eq!(LoraTarget::parse_list("mlp.c_proj, c_attn").unwrap(), vec![Qkv, FcProj]);
        assert_eq!(LoraTarget::parse_list("c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj").unwrap(), LoraTarget::ALL);
        assert_eq!(LoraTarget::parse_list("c_fc,all-linear").unwrap(), LoraTarget::ALL);
        assert_eq!(LoraTarget::parse_list("ALL-LINEAR").unwrap(), LoraTarget::ALL);
        for bad in ["wte", "attn", "proj", "_proj", "h.0.attn.c_attn", "lm_head", "", " , "] {
            let e = LoraTarget::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains("targets") && e.contains("attn.c_attn") && e.contains("all-linear"), "{bad}: {e}");
        }
        assert!(LoraTarget::parse_list("wte").unwrap_err().to_string().contains("`wte`"));
        assert!(LoraTarget::parse_list("h.0.attn.c_attn").unwrap_err().to_string().contains("every layer"));
    }

    #[test]
    fn config_validation_names_the_setting() {
        let m = model();
        assert!(config(&[LoraTarget::Qkv]).validate(&m).is_ok());
        type Edit = fn(&mut LoraConfig);
        let cases: [(&str, Edit); 7] = [
            ("rank", |c| c.rank = 0),
            ("rank", |c| c.rank = 9),
            ("alpha", |c| c.alpha = 0.0),
            ("alpha", |c| c.alpha = f32::NAN),
            ("dropout", |c| c.dropout = 1.0),
            ("dropout", |c| c.dropout = -0.1),
            ("targets", |c| c.targets.clear()),
        ];
        for (field, edit) in cases {
            let mut c = config(&[LoraTarget::Qkv]);
            edit(&mut c);
            let e = c.validate(&m).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        assert_eq!(config(&[LoraTarget::Qkv]).scale(), 2.0);
    }

    #[test]
    fn layout_is_contiguous_in_canonical_order() {
        let m = classifier();
        let layout = LoraLayout::new(&config(&[LoraTarget::FcProj, LoraTarget::Qkv]), &m).unwrap();
        assert!(layout.has(LoraTarget::Qkv) && !layout.has(LoraTarget::Fc));
        let entries = layout.entries();
        // Qkv: A ×3 then B ×3; FcProj: A ×3 then B ×3; score.
        assert_eq!(entries.len(), 13);
        let mut end = 0;
        for e in &entries {
            assert_eq!(e.range.start, end, "{:?}", e.slot);
            assert_eq!(e.range.len(), e.shape[0] * e.shape[1]);
            end = e.range.end;
        }
        assert_eq!(end, layout.total());
        assert_eq!(entries[0].slot, LoraSlot::A(LoraTarget::Qkv, 0));
        assert_eq!(entries[0].shape, [2, 8]);
        assert_eq!(entries[3].slot, LoraSlot::B(LoraTarget::Qkv, 0));
        assert_eq!(entries[3].shape, [24, 2]);
        assert_eq!(entries[6].shape, [2, 32]); // FcProj A: in = 4C
        assert_eq!(entries[12].slot, LoraSlot::Score);
        assert_eq!(layout.score_range().unwrap().len(), 3 * 8);
        assert_eq!(layout.total(), 3 * (2 * 8 + 24 * 2) + 3 * (2 * 32 + 8 * 2) + 24);
        assert!(LoraLayout::new(&config(&[LoraTarget::Qkv]), &model()).unwrap().score_range().is_none());
        assert_eq!(
            LoraSlot::B(LoraTarget::FcProj, 1).peft_name(),
            "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"
        );
        assert_eq!(LoraSlot::Score.peft_name(), "base_model.model.score.weight");
    }

    #[test]
    fn new_initialises_like_peft() {
        let m = ModelConfig::new(11, 8, 2, 2, 64);
        let lora = Lora::new(config(&[LoraTarget::FcProj, LoraTarget::Qkv, LoraTarget::Qkv]), &m, 7).unwrap();
        assert_eq!(lora.config.targets, vec![LoraTarget::Qkv, LoraTarget::FcProj]);
        for (target, in_dim) in [(LoraTarget::Qkv, 64.0f32), (LoraTarget::FcProj, 256.0)] {
            let bound = 1.0 / in_dim.sqrt();
            let a = lora.a(target, 1);
            assert!(a.iter().all(|x| x.abs() <= bound));
            // U(-b, b) has variance b²/3.
            let var = a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32;
            assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.25, "{target}: {var}");
            assert!(lora.b(target, 1).iter().all(|&x| x == 0.0));
        }
        assert_ne!(lora.a(LoraTarget::Qkv, 0), lora.a(LoraTarget::Qkv, 1));
        assert_eq!(lora, Lora::new(config(&[LoraTarget::Qkv, LoraTarget::FcProj]), &m, 7).unwrap());
    }

    #[test]
    fn merge_adds_scaled_ba_and_copies_the_score() {
        let m = classifier();
        let layout = ParamLayout::new(&m);
        let mut base: Vec<f32> = (0..layout.total()).map(|i| (i % 7) as f32 * 0.25).collect();
        let mut lora = Lora::new(config(&[LoraTarget::AttnProj]), &m, 1).unwrap();
        lora.params.iter_mut().enumerate().for_each(|(i, x)| *x += (i % 5) as f32 * 0.5 - 1.0);
        let before = base.clone();
        lora.merge_into(&m, &layout, &mut base).unwrap();
        let (c, r) = (m.n_embd, 2);
        for l in 0..m.n_layer {
            let (a, b) = (lora.a(LoraTarget::AttnProj, l), lora.b(LoraTarget::AttnProj, l));
            let range = layout.layer_range(ParamKind::AttnProjW, l);
            for o in 0..c {
                for i in 0..c {
                    let ba: f32 = (0..r).map(|k| b[o * r + k] * a[k * c + i]).sum();
                    let want = before[range.start + o * c + i] + 2.0 * ba;
                    assert!((base[range.start + o * c + i] - want).abs() < 1e-5);
                }
            }
        }
        assert_eq!(&base[layout.range(ParamKind::Score)], lora.score().unwrap());
        let untouched = layout.range(ParamKind::QkvW);
        assert_eq!(base[untouched.clone()], before[untouched]);
        let mut other = ModelConfig::new(11, 8, 2, 2, 8);
        other.head = m.head.clone();
        let e = lora.merge_into(&other, &ParamLayout::new(&other), &mut base).unwrap_err().to_string();
        assert!(e.contains("n_layer=2"), "{e}");
    }
}
