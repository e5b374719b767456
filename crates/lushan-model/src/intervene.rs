//! Edits to the forward pass for interpretability: zero or overwrite the residual stream, one head's output,
//! or a block's attention / MLP output at chosen rows — the hooks TransformerLens calls `hook_resid_pre`,
//! `hook_z`, `hook_attn_out` and `hook_mlp_out`. Ablation, activation patching and a sparse autoencoder
//! spliced into the residual stream are all one [`Edit`] list given to [`Gpt::forward_edited`].
//!
//! [`Gpt::forward_edited`]: crate::Gpt::forward_edited

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Where in the forward pass an edit applies (0-based layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The residual stream entering block `layer`; `layer == n_layer` is the stream entering the final layer
    /// norm. Width C.
    ResidPre { layer: usize },
    /// One head's attention-weighted values before the output projection (TransformerLens' `z`): channels
    /// `head·hs .. (head+1)·hs` of the attention output. Width `hs = C / n_head`. Zeroing it removes the head's
    /// contribution; the projection's bias stays.
    HeadZ { layer: usize, head: usize },
    /// What the attention sub-block adds to the residual stream (after the projection and its bias). Width C.
    AttnOut { layer: usize },
    /// What the MLP sub-block adds to the residual stream (after its down projection and bias). Width C.
    MlpOut { layer: usize },
}

impl Site {
    /// The layer whose computation the edit changes first: nothing before it needs recomputing.
    pub fn layer(self) -> usize {
        match self {
            Site::ResidPre { layer } | Site::HeadZ { layer, .. } | Site::AttnOut { layer } | Site::MlpOut { layer } => {
                layer
            }
        }
    }

    /// `(offset, width)` of the edited channels within a row of C values.
    fn channels(self, cfg: &ModelConfig) -> (usize, usize) {
        match self {
            Site::HeadZ { head, .. } => {
                let hs = cfg.n_embd / cfg.n_head;
                (head * hs, hs)
            }
            _ => (0, cfg.n_embd),
        }
    }
}

/// What an edit writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// Zero ablation.
    Zero,
    /// Values for the edited channels: either one row (`width` values) written at every selected row — mean
    /// ablation — or one row per selected row, in (batch, position) order — patching from another run.
    Set(Vec<f32>),
}

/// One edit: `patch` written at `site` for the selected rows (`None` selects every batch element / position).
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub site: Site,
    pub batch: Option<usize>,
    pub position: Option<usize>,
    pub patch: Patch,
}

impl Edit {
    /// Zero-ablates `site` everywhere.
    pub fn zero(site: Site) -> Self {
        Self { site, batch: None, position: None, patch: Patch::Zero }
    }

    /// Writes `values` (one row, or one per selected row) at `site`.
    pub fn set(site: Site, batch: Option<usize>, position: Option<usize>, values: Vec<f32>) -> Self {
        Self { site, batch, position, patch: Patch::Set(values) }
    }

    /// Checks the site, the rows and the patch's length against the model and a (b, t) batch.
    pub(crate) fn validate(&self, cfg: &ModelConfig, b: usize, t: usize) -> Result<()> {
        let bad = |reason: String| Err(ModelError::InvalidEdit { reason });
        let (layer, layers) = match self.site {
            Site::ResidPre { layer } => (layer, cfg.n_layer + 1),
            site => (site.layer(), cfg.n_layer),
        };
        if layer >= layers {
            return bad(format!("layer {layer} is out of range: the model has {} layers (0-based)", cfg.n_layer));
        }
        if let Site::HeadZ { head, .. } = self.site
            && head >= cfg.n_head
        {
            return bad(format!("head {head} is out of range: each layer has {} heads (0-based)", cfg.n_head));
        }
        if let Some(batch) = self.batch.filter(|&x| x >= b) {
            return bad(format!("batch element {batch} is out of range: the batch has {b}"));
        }
        if let Some(position) = self.position.filter(|&x| x >= t) {
            return bad(format!("position {position} is out of range: the sequence has {t} tokens"));
        }
        if let Patch::Set(values) = &self.patch {
            let (_, width) = self.site.channels(cfg);
            let rows = self.batch.map_or(b, |_| 1) * self.position.map_or(t, |_| 1);
            if values.len() != width && values.len() != width * rows {
                return bad(format!(
                    "{} values given for {:?}: expected {width} (one row) or {} ({rows} rows of {width})",
                    values.len(),
                    self.site,
                    width * rows
                ));
            }
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return bad(format!("value {index} of the patch for {:?} is not finite", self.site));
            }
        }
        Ok(())
    }
}

/// Applies every edit of `edits` at `site` to `buf`, a (b, t, C) buffer.
pub(crate) fn apply(edits: &[Edit], site: Site, buf: &mut [f32], cfg: &ModelConfig, b: usize, t: usize) {
    let c = cfg.n_embd;
    for edit in edits.iter().filter(|e| e.site == site) {
        let batches = edit.batch.map_or(0..b, |x| x..x + 1);
        for bi in batches {
            let positions = edit.position.map_or(0..t, |x| x..x + 1);
            for ti in positions {
                patch_row(edit, &mut buf[(bi * t + ti) * c..][..c], bi, ti, cfg, t);
            }
        }
    }
}

/// [`apply`] on a compact buffer that holds only `rows` (indices into the b·t rows), in that order.
pub(crate) fn apply_rows(edits: &[Edit], site: Site, buf: &mut [f32], rows: &[usize], cfg: &ModelConfig, t: usize) {
    let c = cfg.n_embd;
    for edit in edits.iter().filter(|e| e.site == site) {
        for (k, &r) in rows.iter().enumerate() {
            let (bi, ti) = (r / t, r % t);
            if edit.batch.is_none_or(|x| x == bi) && edit.position.is_none_or(|x| x == ti) {
                patch_row(edit, &mut buf[k * c..][..c], bi, ti, cfg, t);
            }
        }
    }
}

/// Writes `edit`'s patch into one row (C values) of its site's buffer: the row of batch element `bi`,
/// position `ti`, which the edit selects. A patch with one value row per selected row takes the row at
/// the index of (`bi`, `ti`) among the selected rows, in (batch, position) order.
fn patch_row(edit: &Edit, row: &mut [f32], bi: usize, ti: usize, cfg: &ModelConfig, t: usize) {
    let (offset, width) = edit.site.channels(cfg);
    let row = &mut row[offset..][..width];
    match &edit.patch {
        Patch::Zero => row.fill(0.0),
        Patch::Set(values) if values.len() == width => row.copy_from_slice(values),
        Patch::Set(values) => {
            let positions = if edit.position.is_some() { 1 } else { t };
            let index = edit.batch.map_or(bi, |_| 0) * positions + edit.position.map_or(ti, |_| 0);
            row.copy_from_slice(&values[index * width..][..width]);
        }
    }
}

pub(crate) fn touches(edits: &[Edit], site: Site) -> bool {
    edits.iter().any(|e| e.site == site)
}

/// A component knocked out (switched off) for a whole generation: zero ablation folded into the weights, so that every
/// path that runs a model — cached decoding, sampling, serving — runs the ablated one unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knockout {
    /// Zero the head's `z`: the columns `head·hs .. (head+1)·hs` of its layer's attention projection
    /// (`y = z·Wᵀ + b`, W of shape (C, C)), so the head adds nothing; the projection's bias stays.
    Head { layer: usize, head: usize },
    /// Zero the MLP's output: its down projection's weight and bias.
    Mlp { layer: usize },
}

impl Knockout {
    /// The forward-pass edit with the same effect, for [`Gpt::forward_edited`](crate::Gpt::forward_edited).
    pub fn edit(self) -> Edit {
        match self {
            Knockout::Head { layer, head } => Edit::zero(Site::HeadZ { layer, head }),
            Knockout::Mlp { layer } => Edit::zero(Site::MlpOut { layer }),
        }
    }
}

impl crate::Gpt {
    /// A copy of this model with `knockouts` folded into its weights (adapters merged first).
    ///
    /// # Errors
    /// [`ModelError::InvalidEdit`] for a layer or head out of range.
    pub fn ablated(&self, knockouts: &[Knockout]) -> Result<crate::Gpt> {
        self.require_f32("switching components off")?;
        let cfg = &self.config;
        for knockout in knockouts {
            knockout.edit().validate(cfg, 1, 1)?;
        }
        let mut model = self.clone();
        model.merge_lora()?;
        let c = cfg.n_embd;
        let hs = c / cfg.n_head;
        for &knockout in knockouts {
            match knockout {
                Knockout::Head { layer, head } => {
                    let range = model.layout.layer_range(crate::ParamKind::AttnProjW, layer);
                    for row in model.params[range].chunks_exact_mut(c) {
                        row[head * hs..(head + 1) * hs].fill(0.0);
                    }
                }
                Knockout::Mlp { layer } => {
                    for kind in [crate::ParamKind::FcProjW, crate::ParamKind::FcProjB] {
                        let range = model.layout.layer_range(kind, layer);
                        model.params[range].fill(0.0);
                    }
                }
            }
        }
        Ok(model)
    }
}
