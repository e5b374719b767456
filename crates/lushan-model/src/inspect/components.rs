//! The parts of the network the causal views (attribution, ablation, patching) name, and the ways they
//! run several edited forwards of one prompt as the elements of one batch.

use crate::activations::Activations;
use crate::error::Result;
use crate::gpt::{Gpt, Mode};
use crate::intervene::Edit;
use serde::{Deserialize, Serialize};

/// One part of the network whose output is added to the residual stream. Layers and heads are 0-based
/// here; [`Component::label`] names them 1-based, as `lushan explain --layer/--head` count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Component {
    /// Token + position embedding.
    Embed,
    /// One attention head (its `z` through its slice of the output projection, without the bias).
    Head { layer: usize, head: usize },
    /// A layer's attention output-projection bias.
    AttnBias { layer: usize },
    /// A layer's MLP output, its bias included.
    Mlp { layer: usize },
    /// The final layer norm's bias.
    LnFinalBias,
}

impl Component {
    /// A short 1-based name: `embed`, `L2H3` (layer 2, head 3), `L2 attn bias`, `L2 MLP`, `ln_f bias`.
    pub fn label(&self) -> String {
        match *self {
            Component::Embed => "embed".to_string(),
            Component::Head { layer, head } => format!("L{}H{}", layer + 1, head + 1),
            Component::AttnBias { layer } => format!("L{} attn bias", layer + 1),
            Component::Mlp { layer } => format!("L{} MLP", layer + 1),
            Component::LnFinalBias => "ln_f bias".to_string(),
        }
    }
}

/// A component and a number about it (a logit contribution, a change of log-probability or loss, a
/// recovered fraction).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ComponentValue {
    pub component: Component,
    pub value: f32,
}

/// One number per head and per MLP, from a sweep that edits one of them at a time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComponentSweep {
    /// `heads[layer][head]`, 0-based.
    pub heads: Vec<Vec<f32>>,
    /// One per layer.
    pub mlp: Vec<f32>,
    /// The largest values by magnitude, largest first.
    pub top: Vec<ComponentValue>,
}

impl ComponentSweep {
    /// From values in sweep order: per layer, its heads then its MLP (`n_head + 1` values a layer).
    pub(super) fn from_layers(per_layer: &[Vec<f32>], top_n: usize) -> Self {
        let heads: Vec<Vec<f32>> = per_layer.iter().map(|v| v[..v.len() - 1].to_vec()).collect();
        let mlp: Vec<f32> = per_layer.iter().map(|v| v[v.len() - 1]).collect();
        let mut all = Vec::new();
        for (layer, (layer_heads, &mlp_value)) in heads.iter().zip(&mlp).enumerate() {
            for (head, &value) in layer_heads.iter().enumerate() {
                all.push(ComponentValue { component: Component::Head { layer, head }, value });
            }
            all.push(ComponentValue { component: Component::Mlp { layer }, value: mlp_value });
        }
        let top = super::attribution::largest(all, top_n);
        Self { heads, mlp, top }
    }
}

/// Rows (batch × positions) one batched forward of a sweep holds at most: enough rows for the matrix
/// products to run at full speed, few enough that the buffers (a vocabulary-wide row each for the logits)
/// stay small.
const MAX_BATCH_ROWS: usize = 512;

/// Runs `inputs` (T tokens) once unedited, then once per variant with that variant's edits, `B` variants
/// at a time as the elements of one batch (each edit restricted to its element). Returns what `read`
/// reads from the buffers for the unedited run (element 0) and for each variant, in order.
///
/// `targets` (T, [`IGNORE_INDEX`](lushan_kernels::crossentropy::IGNORE_INDEX) where not wanted) are the
/// same for every element. The unedited run is one sequence, its residual streams copied into every
/// element; a batch holds variants whose first edited layer is the same (B = the largest such group that
/// fits), so each batch recomputes exactly the layers from there on — variants sorted from the last layer to
/// the first never recompute a layer for a neighbour's sake.
pub(super) fn run_variants<R>(
    model: &Gpt,
    inputs: &[u32],
    targets: &[u32],
    variants: &[Vec<Edit>],
    mut read: impl FnMut(&Activations, usize) -> R,
) -> Result<(R, Vec<R>)> {
    let t = inputs.len();
    let first_layer = |edits: &Vec<Edit>| edits.iter().map(|e| e.site.layer()).min().unwrap_or(usize::MAX);
    // Runs of consecutive variants with the same first edited layer, each cut to what one batch holds.
    let max_b = (MAX_BATCH_ROWS / t.max(1)).max(1);
    let mut groups: Vec<&[Vec<Edit>]> = Vec::new();
    let mut rest = variants;
    while let Some(first) = rest.first() {
        let layer = first_layer(first);
        let same = rest.iter().take(max_b).take_while(|v| first_layer(v) == layer).count();
        let (group, tail) = rest.split_at(same.max(1));
        groups.push(group);
        rest = tail;
    }
    let b = groups.iter().map(|g| g.len()).max().unwrap_or(1);

    let mut single = Activations::new(&model.config, 1, t)?;
    // The unedited pass takes the variants' path (the last block on the counted rows, row by row), so a
    // variant whose edit changes nothing reads exactly the unedited value.
    single.last_block_rows_only = true;
    model.forward(&mut single, inputs, Some(targets), Mode::Eval)?;
    let clean = read(&single, 0);
    let mut acts = Activations::new(&model.config, b, t)?;
    let batch_inputs: Vec<u32> = inputs.repeat(b);
    let batch_targets: Vec<u32> = targets.repeat(b);
    acts.broadcast_clean_streams(&single);
    // Every reader here reads the counted rows (or, with no target ignored, every row).
    acts.last_block_rows_only = true;
    let mut results = Vec::with_capacity(variants.len());
    for chunk in groups {
        let edits: Vec<Edit> = chunk
            .iter()
            .enumerate()
            .flat_map(|(element, edits)| edits.iter().map(move |e| Edit { batch: Some(element), ..e.clone() }))
            .collect();
        model.forward_edited(&mut acts, &batch_inputs, Some(&batch_targets), &edits)?;
        results.extend((0..chunk.len()).map(|element| read(&acts, element)));
    }
    Ok((clean, results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::intervene::Site;
    use lushan_kernels::crossentropy::IGNORE_INDEX;

    /// The batched sweep (the last block on the counted rows only, unedited layers reused) reads the same
    /// log-probabilities as separate full passes, with edits in the last block of every kind and selection.
    #[test]
    fn the_batched_sweep_equals_separate_full_passes() {
        let model = Gpt::new(ModelConfig::new(23, 8, 3, 2, 16), 3).unwrap();
        let (t, c, last) = (7, 16, 2);
        let inputs: Vec<u32> = (0..t as u32).map(|i| (i * 5 + 2) % 23).collect();
        let mut targets = vec![IGNORE_INDEX; t];
        targets[4] = 9;
        let row = |seed: f32| (0..c).map(|i| (i as f32 * 0.37 + seed).sin()).collect::<Vec<f32>>();
        let variants: Vec<Vec<Edit>> = vec![
            vec![Edit::zero(Site::MlpOut { layer: last })],
            vec![Edit::set(Site::AttnOut { layer: last }, None, Some(4), row(1.0))],
            vec![Edit::set(Site::MlpOut { layer: last }, None, None, (0..t).flat_map(|p| row(p as f32)).collect())],
            vec![Edit::zero(Site::HeadZ { layer: last, head: 1 })],
            vec![Edit::set(Site::AttnOut { layer: last }, None, Some(3), row(2.0))],
            vec![Edit::zero(Site::HeadZ { layer: 1, head: 0 }), Edit::zero(Site::MlpOut { layer: last })],
            vec![Edit::zero(Site::ResidPre { layer: 0 })],
        ];
        let log_prob = |acts: &Activations, element: usize| -acts.losses[element * t + 4];
        let (clean, results) = run_variants(&model, &inputs, &targets, &variants, log_prob).unwrap();
        let mut alone = Activations::new(&model.config, 1, t).unwrap();
        model.forward(&mut alone, &inputs, Some(&targets), Mode::Eval).unwrap();
        assert!((clean - log_prob(&alone, 0)).abs() < 1e-6);
        for (edits, &batched) in variants.iter().zip(&results) {
            let mut acts = Activations::new(&model.config, 1, t).unwrap();
            model.forward_edited(&mut acts, &inputs, Some(&targets), edits).unwrap();
            let full = log_prob(&acts, 0);
            assert!((batched - full).abs() < 1e-5, "{edits:?}: batched {batched}, full pass {full}");
        }
        // The edits at position 3 do not reach position 4's prediction through the last block's own
        // position-wise layers, but the one at position 4 does.
        assert!((results[1] - clean).abs() > 1e-4);
    }
}
