//! Matching a weights file's tensors to what `config.json` describes.
//!
//! The expected names are looked up by parsing (`h.{layer}.{suffix}`), never enumerated, so a config that
//! claims a billion layers costs nothing: the work is bounded by the file's own tensors, which the header
//! check caps. Each kind of problem lists its first few tensors and counts the rest.

use super::safetensors_io::{HF_PREFIX, IGNORED_LAYER_BUFFERS, LM_HEAD, hf_full_name, hf_shape};
use crate::config::ModelConfig;
use crate::params::ParamKind;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

/// How many tensors of each kind of problem are named before the rest is summarised as a count.
pub const LISTED_PER_PROBLEM: usize = 5;

/// The file's tensors, matched against the config: each parameter with the name it has in the file.
pub(super) struct Found<'data> {
    pub params: Vec<((ParamKind, usize), String, TensorView<'data>)>,
    pub lm_head: Option<(String, TensorView<'data>)>,
}

/// Why a file does not fit its config: the lines to show, and how many problems there are in all.
pub(super) struct Mismatch {
    pub problems: Vec<String>,
    pub total: u64,
}

/// Matches every tensor in the file to a parameter, the ignore list or `lm_head`. Missing, unexpected,
/// duplicated, mis-shaped or mistyped tensors are reported together; a config describing more tensors or
/// bytes than the file holds is said first, in one line each.
pub(super) fn match_tensors<'data>(
    st: &SafeTensors<'data>,
    cfg: &ModelConfig,
    num_params: usize,
) -> Result<Found<'data>, Mismatch> {
    let expected = ExpectedNames::new(cfg);
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = Vec::new();
    let expected_count = expected.count();
    if expected_count > tensors.len() as u128 {
        summary.push(format!(
            "config.json describes {expected_count} tensors (n_layer = {}) but the file holds {}",
            cfg.n_layer,
            tensors.len()
        ));
    }
    // Every stored value takes at least 2 bytes (F16/BF16).
    let data_bytes: u128 = tensors.iter().map(|(_, v)| v.data().len() as u128).sum();
    let min_bytes = num_params as u128 * 2;
    if min_bytes > data_bytes {
        summary.push(format!(
            "config.json describes {num_params} parameters, at least {min_bytes} bytes even in F16, but the file \
             holds {data_bytes} bytes of tensor data"
        ));
    }

    let lm_head_allowed = cfg.num_labels() == 0;
    let (mut unexpected, mut misshaped, mut duplicated) = (Problems::new(), Problems::new(), Problems::new());
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut matched: u128 = 0;
    let mut params = Vec::new();
    let mut lm_head = None;
    for (name, view) in tensors {
        let short = name.strip_prefix(HF_PREFIX).unwrap_or(&name).to_string();
        if let Some(first) = seen.insert(short.clone(), name.clone()) {
            duplicated.push(|| format!("`{name}` and `{first}` are the same tensor, stored twice"));
            continue;
        }
        let slot = expected.lookup(&short);
        let expected_shape = if name == LM_HEAD && lm_head_allowed {
            ParamKind::Wte.shape(cfg)
        } else if let Some((kind, _)) = slot {
            matched += 1;
            hf_shape(kind, cfg)
        } else if expected.is_ignored(&short) {
            continue;
        } else {
            unexpected.push(|| format!("unexpected tensor `{name}` (shape {:?})", view.shape()));
            continue;
        };
        if view.shape() != expected_shape.as_slice() {
            misshaped.push(|| format!("`{name}` has shape {:?}, expected {expected_shape:?}", view.shape()));
        } else if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            misshaped.push(|| format!("`{name}` has dtype {:?}; only F32, F16 and BF16 are supported", view.dtype()));
        } else if name == LM_HEAD && lm_head_allowed {
            lm_head = Some((name, view));
        } else if let Some(key) = slot {
            params.push((key, name, view));
        }
    }
    // Each expected name that is not missing was seen, so this walk stops after at most
    // `matched + LISTED_PER_PROBLEM` names, however many layers the config claims.
    let mut missing = Problems::new();
    missing.count = expected_count - matched;
    missing.lines = expected
        .in_order()
        .filter(|&(kind, layer)| !seen.contains_key(&kind.hf_name(layer)))
        .take(LISTED_PER_PROBLEM)
        .map(|(kind, layer)| {
            format!("missing tensor `{}` (shape {:?})", hf_full_name(kind, layer), hf_shape(kind, cfg))
        })
        .collect();

    let groups = [
        (missing, "missing tensors"),
        (unexpected, "unexpected tensors"),
        (misshaped, "tensors of the wrong shape or dtype"),
        (duplicated, "duplicated tensors"),
    ];
    let total: u128 = groups.iter().map(|(p, _)| p.count).sum();
    if total == 0 && summary.is_empty() {
        return Ok(Found { params, lm_head });
    }
    let mut problems = summary;
    for (group, what) in groups {
        let unlisted = group.count - group.lines.len() as u128;
        problems.extend(group.lines);
        if unlisted > 0 {
            problems.push(format!("… and {unlisted} more {what}"));
        }
    }
    Err(Mismatch { problems, total: u64::try_from(total).unwrap_or(u64::MAX) })
}

/// One kind of problem: the first few lines and how many there are.
struct Problems {
    lines: Vec<String>,
    count: u128,
}

impl Problems {
    fn new() -> Self {
        Self { lines: Vec::new(), count: 0 }
    }

    /// Counts a problem, describing it only while fewer than [`LISTED_PER_PROBLEM`] are listed.
    fn push(&mut self, line: impl FnOnce() -> String) {
        if self.lines.len() < LISTED_PER_PROBLEM {
            self.lines.push(line());
        }
        self.count += 1;
    }
}

/// The names (without `transformer.`) a config expects, found by parsing instead of listing.
struct ExpectedNames<'c> {
    cfg: &'c ModelConfig,
    /// Tensors stored once: `wte.weight`, `ln_f.bias`, `score.weight`…
    global: Vec<(String, ParamKind)>,
    /// Per-layer tensors by the part after `h.{layer}.`.
    per_layer: Vec<(String, ParamKind)>,
}

impl<'c> ExpectedNames<'c> {
    fn new(cfg: &'c ModelConfig) -> Self {
        let (mut global, mut per_layer) = (Vec::new(), Vec::new());
        for kind in ParamKind::ALL.into_iter().filter(|k| k.present(cfg)) {
            if kind.per_layer() {
                let name = kind.hf_name(0);
                per_layer.push((name.strip_prefix("h.0.").unwrap_or(&name).to_string(), kind));
            } else {
                global.push((kind.hf_name(0), kind));
            }
        }
        Self { cfg, global, per_layer }
    }

    fn count(&self) -> u128 {
        self.global.len() as u128 + self.per_layer.len() as u128 * self.cfg.n_layer as u128
    }

    fn lookup(&self, short: &str) -> Option<(ParamKind, usize)> {
        if let Some((_, kind)) = self.global.iter().find(|(name, _)| name == short) {
            return Some((*kind, 0));
        }
        let (layer, suffix) = self.split_layer(short)?;
        self.per_layer.iter().find(|(name, _)| name == suffix).map(|(_, kind)| (*kind, layer))
    }

    /// Whether `short` is one of the per-layer buffers older `transformers` saved.
    fn is_ignored(&self, short: &str) -> bool {
        self.split_layer(short).is_some_and(|(_, suffix)| IGNORED_LAYER_BUFFERS.contains(&suffix))
    }

    /// `h.{layer}.{suffix}` with `layer` written as `hf_name` writes it and below `n_layer`.
    fn split_layer<'s>(&self, short: &'s str) -> Option<(usize, &'s str)> {
        let (layer, suffix) = short.strip_prefix("h.")?.split_once('.')?;
        let number: usize = layer.parse().ok()?;
        (number.to_string() == layer && number < self.cfg.n_layer).then_some((number, suffix))
    }

    /// Every expected tensor, lazily: the global ones before the layers, then layer by layer.
    fn in_order(&self) -> impl Iterator<Item = (ParamKind, usize)> + '_ {
        let global = ParamKind::ALL.into_iter().filter(|k| !k.per_layer() && k.present(self.cfg)).map(|k| (k, 0));
        let layers = (0..self.cfg.n_layer)
            .flat_map(|layer| ParamKind::ALL.into_iter().filter(|k| k.per_layer()).map(move |k| (k, layer)));
        global.chain(layers)
    }
}
