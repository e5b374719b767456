//! The one list of tensors (DESIGN.md §3): every GPT-2 parameter, in storage order, with everything derived
//! from it — shapes, weight-decay membership, Hugging Face names and Conv1D transposes.
//!
//! One flat `Vec<f32>` with this layout holds the parameters; the same layout holds the gradients and both
//! AdamW moments. Per-layer kinds are stacked with a leading `n_layer` dimension.

use crate::config::{ModelConfig, PositionEncoding};
use lushan_kernels::{encoder, rng::Rng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Wte,
    Wpe,
    Ln1W,
    Ln1B,
    QkvW,
    QkvB,
    AttnProjW,
    AttnProjB,
    Ln2W,
    Ln2B,
    FcW,
    FcB,
    FcProjW,
    FcProjB,
    LnfW,
    LnfB,
    /// The classifier head `[num_labels, n_embd]`; empty (0 elements) for the language-model head.
    Score,
}

pub const KIND_COUNT: usize = 17;

impl ParamKind {
    /// Storage order.
    pub const ALL: [ParamKind; KIND_COUNT] = [
        ParamKind::Wte,
        ParamKind::Wpe,
        ParamKind::Ln1W,
        ParamKind::Ln1B,
        ParamKind::QkvW,
        ParamKind::QkvB,
        ParamKind::AttnProjW,
        ParamKind::AttnProjB,
        ParamKind::Ln2W,
        ParamKind::Ln2B,
        ParamKind::FcW,
        ParamKind::FcB,
        ParamKind::FcProjW,
        ParamKind::FcProjB,
        ParamKind::LnfW,
        ParamKind::LnfB,
        ParamKind::Score,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// lushan's short name, as used in fixtures and the `Tensors` fields.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Wte => "wte",
            ParamKind::Wpe => "wpe",
            ParamKind::Ln1W => "ln1_w",
            ParamKind::Ln1B => "ln1_b",
            ParamKind::QkvW => "qkv_w",
            ParamKind::QkvB => "qkv_b",
            ParamKind::AttnProjW => "attn_proj_w",
            ParamKind::AttnProjB => "attn_proj_b",
            ParamKind::Ln2W => "ln2_w",
            ParamKind::Ln2B => "ln2_b",
            ParamKind::FcW => "fc_w",
            ParamKind::FcB => "fc_b",
            ParamKind::FcProjW => "fc_proj_w",
            ParamKind::FcProjB => "fc_proj_b",
            ParamKind::LnfW => "lnf_w",
            ParamKind::LnfB => "lnf_b",
            ParamKind::Score => "score",
        }
    }

    /// Stacked once per layer (leading dimension `n_layer`).
    pub fn per_layer(self) -> bool {
        !matches!(self, ParamKind::Wte | ParamKind::Wpe | ParamKind::LnfW | ParamKind::LnfB | ParamKind::Score)
    }

    /// Shape of one layer's tensor (or of the whole tensor for the global kinds), in lushan's layout:
    /// linear weights are `(out, in)` like `torch.nn.Linear`.
    pub fn shape(self, cfg: &ModelConfig) -> Vec<usize> {
        let (c, v, t) = (cfg.n_embd, cfg.vocab_size, cfg.block_size);
        match self {
            ParamKind::Wte => vec![v, c],
            ParamKind::Wpe => vec![t, c],
            ParamKind::QkvW => vec![3 * c, c],
            ParamKind::QkvB => vec![3 * c],
            ParamKind::AttnProjW => vec![c, c],
            ParamKind::FcW => vec![4 * c, c],
            ParamKind::FcB => vec![4 * c],
            ParamKind::FcProjW => vec![c, 4 * c],
            ParamKind::Score => vec![cfg.num_labels(), c],
            ParamKind::Ln1W
            | ParamKind::Ln1B
            | ParamKind::AttnProjB
            | ParamKind::Ln2W
            | ParamKind::Ln2B
            | ParamKind::FcProjB
            | ParamKind::LnfW
            | ParamKind::LnfB => vec![c],
        }
    }

    /// Elements of one layer's tensor (or of the whole tensor for the global kinds).
    pub fn layer_numel(self, cfg: &ModelConfig) -> usize {
        self.shape(cfg).iter().product()
    }

    /// Elements of the whole (stacked) tensor.
    pub fn numel(self, cfg: &ModelConfig) -> usize {
        self.layer_numel(cfg) * if self.per_layer() { cfg.n_layer } else { 1 }
    }

    /// Weight decay applies to 2-D matmul and embedding weights only, as nanoGPT and PyTorch users expect.
    pub fn decays(self) -> bool {
        self.shape(&ModelConfig::new(2, 2, 1, 1, 2)).len() == 2
    }

    /// Whether the optimiser updates this tensor (the sinusoidal position table is fixed).
    pub fn trainable(self, cfg: &ModelConfig) -> bool {
        !(self == ParamKind::Wpe && cfg.position_encoding == PositionEncoding::Sinusoidal)
    }

    /// Residual-branch output projections, whose GPT-2 init is scaled by `1/√(2·n_layer)`.
    pub fn is_residual_projection(self) -> bool {
        matches!(self, ParamKind::AttnProjW | ParamKind::FcProjW)
    }

    /// Whether this tensor exists in a model of this configuration (the score head only in classifiers).
    pub fn present(self, cfg: &ModelConfig) -> bool {
        self != ParamKind::Score || cfg.num_labels() > 0
    }

    /// Whether the Hugging Face name sits under `transformer.` (`GPT2Model`'s tensors) or beside it (the
    /// classifier's `score.weight`).
    pub fn in_transformer(self) -> bool {
        self != ParamKind::Score
    }

    /// Hugging Face `GPT2Model` name (without the `transformer.` prefix) of layer `layer`'s tensor; the
    /// score head's name is top-level (see [`ParamKind::in_transformer`]).
    pub fn hf_name(self, layer: usize) -> String {
        let suffix = match self {
            ParamKind::Score => return "score.weight".into(),
            ParamKind::Wte => return "wte.weight".into(),
            ParamKind::Wpe => return "wpe.weight".into(),
            ParamKind::LnfW => return "ln_f.weight".into(),
            ParamKind::LnfB => return "ln_f.bias".into(),
            ParamKind::Ln1W => "ln_1.weight",
            ParamKind::Ln1B => "ln_1.bias",
            ParamKind::QkvW => "attn.c_attn.weight",
            ParamKind::QkvB => "attn.c_attn.bias",
            ParamKind::AttnProjW => "attn.c_proj.weight",
            ParamKind::AttnProjB => "attn.c_proj.bias",
            ParamKind::Ln2W => "ln_2.weight",
            ParamKind::Ln2B => "ln_2.bias",
            ParamKind::FcW => "mlp.c_fc.weight",
            ParamKind::FcB => "mlp.c_fc.bias",
            ParamKind::FcProjW => "mlp.c_proj.weight",
            ParamKind::FcProjB => "mlp.c_proj.bias",
        };
        format!("h.{layer}.{suffix}")
    }

    /// Hugging Face stores these as `Conv1D` weights, `(in, out)`: the transpose of our `(out, in)`.
    pub fn hf_transposed(self) -> bool {
        matches!(self, ParamKind::QkvW | ParamKind::AttnProjW | ParamKind::FcW | ParamKind::FcProjW)
    }
}

/// Offsets of every kind inside the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    sizes: [usize; KIND_COUNT],
    offsets: [usize; KIND_COUNT],
    layer_sizes: [usize; KIND_COUNT],
    total: usize,
}

/// Named views of one flat buffer (parameters, gradients or moments).
#[derive(Debug)]
pub struct Tensors<S> {
    pub wte: S,
    pub wpe: S,
    pub ln1_w: S,
    pub ln1_b: S,
    pub qkv_w: S,
    pub qkv_b: S,
    pub attn_proj_w: S,
    pub attn_proj_b: S,
    pub ln2_w: S,
    pub ln2_b: S,
    pub fc_w: S,
    pub fc_b: S,
    pub fc_proj_w: S,
    pub fc_proj_b: S,
    pub lnf_w: S,
    pub lnf_b: S,
    pub score: S,
    layer_sizes: [usize; KIND_COUNT],
}

/// One transformer block's tensors.
#[derive(Debug)]
pub struct Layer<S> {
    pub ln1_w: S,
    pub ln1_b: S,
    pub qkv_w: S,
    pub qkv_b: S,
    pub attn_proj_w: S,
    pub attn_proj_b: S,
    pub ln2_w: S,
    pub ln2_b: S,
    pub fc_w: S,
    pub fc_b: S,
    pub fc_proj_w: S,
    pub fc_proj_b: S,
}

macro_rules! layer_of {
    ($t:expr, $l:expr, $($field:ident : $kind:ident),*) => {
        Layer { $($field: { let n = $t.layer_sizes[ParamKind::$kind.index()]; &$t.$field[$l * n..($l + 1) * n] }),* }
    };
}
macro_rules! layer_of_mut {
    ($t:expr, $l:expr, $($field:ident : $kind:ident),*) => {
        Layer { $($field: { let n = $t.layer_sizes[ParamKind::$kind.index()]; &mut $t.$field[$l * n..($l + 1) * n] }),* }
    };
}

impl<'a> Tensors<&'a [f32]> {
    pub fn layer(&self, l: usize) -> Layer<&'a [f32]> {
        layer_of!(self, l, ln1_w: Ln1W, ln1_b: Ln1B, qkv_w: QkvW, qkv_b: QkvB, attn_proj_w: AttnProjW,
            attn_proj_b: AttnProjB, ln2_w: Ln2W, ln2_b: Ln2B, fc_w: FcW, fc_b: FcB, fc_proj_w: FcProjW,
            fc_proj_b: FcProjB)
    }
}

impl Tensors<&mut [f32]> {
    pub fn layer_mut(&mut self, l: usize) -> Layer<&mut [f32]> {
        layer_of_mut!(self, l, ln1_w: Ln1W, ln1_b: Ln1B, qkv_w: QkvW, qkv_b: QkvB, attn_proj_w: AttnProjW,
            attn_proj_b: AttnProjB, ln2_w: Ln2W, ln2_b: Ln2B, fc_w: FcW, fc_b: FcB, fc_proj_w: FcProjW,
            fc_proj_b: FcProjB)
    }
}

impl<S: AsRef<[f32]>> Tensors<S> {
    /// The whole (stacked) tensor of `kind`.
    pub fn tensor(&self, kind: ParamKind) -> &[f32] {
        let t = match kind {
            ParamKind::Wte => &self.wte,
            ParamKind::Wpe => &self.wpe,
            ParamKind::Ln1W => &self.ln1_w,
            ParamKind::Ln1B => &self.ln1_b,
            ParamKind::QkvW => &self.qkv_w,
            ParamKind::QkvB => &self.qkv_b,
            ParamKind::AttnProjW => &self.attn_proj_w,
            ParamKind::AttnProjB => &self.attn_proj_b,
            ParamKind::Ln2W => &self.ln2_w,
            ParamKind::Ln2B => &self.ln2_b,
            ParamKind::FcW => &self.fc_w,
            ParamKind::FcB => &self.fc_b,
            ParamKind::FcProjW => &self.fc_proj_w,
            ParamKind::FcProjB => &self.fc_proj_b,
            ParamKind::LnfW => &self.lnf_w,
            ParamKind::LnfB => &self.lnf_b,
            ParamKind::Score => &self.score,
        };
        t.as_ref()
    }

    /// Layer `layer`'s slice of a per-layer kind (the whole tensor for a global kind), as
    /// [`ParamLayout::layer_range`] places it.
    pub fn layer_tensor(&self, kind: ParamKind, layer: usize) -> &[f32] {
        let whole = self.tensor(kind);
        if !kind.per_layer() {
            return whole;
        }
        let n = self.layer_sizes[kind.index()];
        &whole[layer * n..(layer + 1) * n]
    }
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::without(cfg, &[])
    }

    /// The layout of `cfg` with no room for the kinds in `absent` (their tensors are empty): a model whose
    /// weight matrices are stored in another type keeps everything else in this layout.
    pub fn without(cfg: &ModelConfig, absent: &[ParamKind]) -> Self {
        let mut sizes = [0; KIND_COUNT];
        let mut offsets = [0; KIND_COUNT];
        let mut layer_sizes = [0; KIND_COUNT];
        let mut total = 0;
        for kind in ParamKind::ALL {
            let i = kind.index();
            if absent.contains(&kind) {
                offsets[i] = total;
                continue;
            }
            layer_sizes[i] = kind.layer_numel(cfg);
            sizes[i] = kind.numel(cfg);
            offsets[i] = total;
            total += sizes[i];
        }
        Self { sizes, offsets, layer_sizes, total }
    }

    /// Total number of `f32`s in one buffer of this layout.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn range(&self, kind: ParamKind) -> std::ops::Range<usize> {
        let i = kind.index();
        self.offsets[i]..self.offsets[i] + self.sizes[i]
    }

    /// Range of layer `layer`'s slice of a per-layer kind (the whole tensor for a global kind).
    pub fn layer_range(&self, kind: ParamKind, layer: usize) -> std::ops::Range<usize> {
        let i = kind.index();
        if kind.per_layer() {
            let start = self.offsets[i] + layer * self.layer_sizes[i];
            start..start + self.layer_sizes[i]
        } else {
            self.range(kind)
        }
    }

    pub fn split<'a>(&self, buf: &'a [f32]) -> Tensors<&'a [f32]> {
        assert_eq!(buf.len(), self.total, "buffer does not match the parameter layout");
        let mut rest = buf;
        let parts: [&'a [f32]; KIND_COUNT] = std::array::from_fn(|i| {
            let (head, tail) = rest.split_at(self.sizes[i]);
            rest = tail;
            head
        });
        self.name(parts)
    }

    pub fn split_mut<'a>(&self, buf: &'a mut [f32]) -> Tensors<&'a mut [f32]> {
        assert_eq!(buf.len(), self.total, "buffer does not match the parameter layout");
        let mut rest = buf;
        let parts: [&'a mut [f32]; KIND_COUNT] = std::array::from_fn(|i| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(self.sizes[i]);
            rest = tail;
            head
        });
        self.name(parts)
    }

    fn name<S>(&self, parts: [S; KIND_COUNT]) -> Tensors<S> {
        let [
            wte,
            wpe,
            ln1_w,
            ln1_b,
            qkv_w,
            qkv_b,
            attn_proj_w,
            attn_proj_b,
            ln2_w,
            ln2_b,
            fc_w,
            fc_b,
            fc_proj_w,
            fc_proj_b,
            lnf_w,
            lnf_b,
            score,
        ] = parts;
        Tensors {
            wte,
            wpe,
            ln1_w,
            ln1_b,
            qkv_w,
            qkv_b,
            attn_proj_w,
            attn_proj_b,
            ln2_w,
            ln2_b,
            fc_w,
            fc_b,
            fc_proj_w,
            fc_proj_b,
            lnf_w,
            lnf_b,
            score,
            layer_sizes: self.layer_sizes,
        }
    }
}

/// GPT-2 initialisation: weights `N(0, 0.02)`, residual projections `N(0, 0.02/√(2L))`, biases 0,
/// layer-norm gains 1; a sinusoidal position table when the config asks for one.
pub fn init_gpt2(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut params = vec![0.0f32; layout.total()];
    let mut rng = Rng::new(seed);
    let residual_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    for kind in ParamKind::ALL {
        let slot = &mut params[layout.range(kind)];
        match kind {
            ParamKind::Wpe if cfg.position_encoding == PositionEncoding::Sinusoidal => {
                encoder::sinusoidal_table(slot, cfg.n_embd)
            }
            ParamKind::Ln1W | ParamKind::Ln2W | ParamKind::LnfW => slot.fill(1.0),
            _ if kind.decays() => {
                let std = if kind.is_residual_projection() { residual_std } else { 0.02 };
                slot.iter_mut().for_each(|w| *w = (rng.next_normal() * std) as f32);
            }
            _ => {}
        }
    }
    params
}

/// Parameter count excluding the position table, as nanoGPT reports it.
pub fn count_non_embedding(cfg: &ModelConfig) -> usize {
    ParamKind::ALL.iter().filter(|k| **k != ParamKind::Wpe).map(|k| k.numel(cfg)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_contiguous_in_storage_order_and_gpt2_counts_124m() {
        let cfg = ModelConfig::gpt2();
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.total(), 124_439_808);
        let mut end = 0;
        for kind in ParamKind::ALL {
            assert_eq!(layout.range(kind).start, end);
            end = layout.range(kind).end;
        }
        assert_eq!(end, layout.total());
    }

    #[test]
    fn views_alias_the_right_ranges() {
        let cfg = ModelConfig::new(5, 4, 2, 1, 3);
        let layout = ParamLayout::new(&cfg);
        let mut buf: Vec<f32> = (0..layout.total()).map(|i| i as f32).collect();
        {
            let mut t = layout.split_mut(&mut buf);
            let l1 = t.layer_mut(1);
            l1.fc_b.fill(-1.0);
        }
        let r = layout.layer_range(ParamKind::FcB, 1);
        assert!(buf[r.clone()].iter().all(|&x| x == -1.0));
        assert_eq!(buf[r.start - 1], (r.start - 1) as f32);
        let t = layout.split(&buf);
        assert_eq!(t.layer(0).qkv_w.len(), 27);
        assert_eq!(t.wte[0], 0.0);
    }

    #[test]
    fn decay_membership_and_hf_names() {
        let decays: Vec<_> = ParamKind::ALL.iter().filter(|k| k.decays()).collect();
        assert_eq!(
            decays,
            vec![
                &ParamKind::Wte,
                &ParamKind::Wpe,
                &ParamKind::QkvW,
                &ParamKind::AttnProjW,
                &ParamKind::FcW,
                &ParamKind::FcProjW,
                &ParamKind::Score
            ]
        );
        assert_eq!(ParamKind::FcProjW.hf_name(3), "h.3.mlp.c_proj.weight");
        assert_eq!(ParamKind::LnfB.hf_name(3), "ln_f.bias");
    }

    #[test]
    fn init_statistics_follow_gpt2() {
        let cfg = ModelConfig::new(64, 16, 2, 2, 32);
        let layout = ParamLayout::new(&cfg);
        let p = init_gpt2(&cfg, &layout, 0);
        let std = |k| {
            let s = &p[layout.range(k)];
            (s.iter().map(|x| (x * x) as f64).sum::<f64>() / s.len() as f64).sqrt()
        };
        assert!((std(ParamKind::FcW) - 0.02).abs() < 0.002);
        assert!((std(ParamKind::FcProjW) - 0.01).abs() < 0.001);
        assert!(p[layout.range(ParamKind::LnfW)].iter().all(|&x| x == 1.0));
        assert!(p[layout.range(ParamKind::QkvB)].iter().all(|&x| x == 0.0));
    }
}
