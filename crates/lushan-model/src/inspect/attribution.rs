//! Direct logit attribution (DLA): how much each component writes the target's logit straight through the
//! final layer norm and the output layer, as TransformerLens' `apply_ln_to_stack` + `logit_attrs` compute it.
//!
//! # Derivation
//! The final residual at the focus position is a sum of what the components wrote:
//! `r = embed + Σ_l (Σ_h head_{l,h} + attn_bias_l + mlp_l)`, with `head_{l,h} = W_O[:, h-slice] · z_{l,h}`
//! (C) and `mlp_l` including its bias. The final layer norm is `ln_f(r) = (r − mean(r)) · rstd ⊙ g + b`; freezing
//! `rstd` at the value the real forward computed (the scale of the *actual* final residual), it is linear in
//! `r`, and centring distributes over the sum. With `u = W_U[target] (− W_U[versus])` (C):
//!
//! `logit = Σ_components (x − mean(x)) · (rstd · g ⊙ u)  +  b · u`,
//!
//! so each component's share is `(x − mean(x)) · d` with `d = rstd · g ⊙ u`, and `b · u` is the layer norm's
//! own term. Because `Σ_j (x_j − x̄) d_j = x · (d − d̄)`, a head's share is `z · (W_Oᵀ (d − d̄))[h-slice]`: one
//! C × C product per layer serves all its heads.

use super::{Component, ComponentValue, TokenText};
use crate::activations::Activations;
use crate::gpt::Gpt;
use serde::{Deserialize, Serialize};

/// The direct contribution of every component to one logit (or logit difference) at one position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attribution {
    /// The position whose prediction is explained (0-based).
    pub position: usize,
    pub target: TokenText,
    /// With a second token, every number is for `logit(target) − logit(versus)`.
    pub versus: Option<TokenText>,
    /// `logit(target) [− logit(versus)]` as the model computed it; the components add up to it.
    pub total: f32,
    /// Token + position embedding.
    pub embed: f32,
    /// `heads[layer][head]`, 0-based.
    pub heads: Vec<Vec<f32>>,
    /// Each layer's attention output-projection bias (`c_proj.bias`), one per layer.
    pub attn_bias: Vec<f32>,
    /// Each layer's MLP output (bias included), one per layer.
    pub mlp: Vec<f32>,
    /// The final layer norm's bias through the output layer.
    pub ln_final_bias: f32,
    /// The largest contributions by magnitude, largest first (ties: component order).
    pub top: Vec<ComponentValue>,
}

impl Attribution {
    /// Every component with its value, in model order: embed, then per layer heads, attention bias, MLP,
    /// then the final layer norm's bias.
    pub fn components(&self) -> Vec<ComponentValue> {
        let mut all = vec![ComponentValue { component: Component::Embed, value: self.embed }];
        for (layer, heads) in self.heads.iter().enumerate() {
            for (head, &value) in heads.iter().enumerate() {
                all.push(ComponentValue { component: Component::Head { layer, head }, value });
            }
            all.push(ComponentValue { component: Component::AttnBias { layer }, value: self.attn_bias[layer] });
            all.push(ComponentValue { component: Component::Mlp { layer }, value: self.mlp[layer] });
        }
        all.push(ComponentValue { component: Component::LnFinalBias, value: self.ln_final_bias });
        all
    }
}

/// The numbers of an [`Attribution`] read from `acts`, a plain eval forward of the prompt (B = 1).
///
/// # Shapes
/// `acts`: (1, T) with `position < T`; `target`, `versus`: vocabulary ids.
pub(super) fn attribute(
    model: &Gpt,
    acts: &Activations,
    position: usize,
    target: TokenText,
    versus: Option<TokenText>,
    top_n: usize,
) -> Attribution {
    let cfg = &model.config;
    let (c, nh) = (cfg.n_embd, cfg.n_head);
    let hs = c / nh;
    let p = model.layout.split(&model.params);
    let row = |buf: &[f32]| -> Vec<f64> { buf[position * c..(position + 1) * c].iter().map(|&x| x as f64).collect() };

    // u = W_U[target] − W_U[versus] (C); the output layer is the tied token embedding.
    let unembed = |id: u32| &p.wte[id as usize * c..(id as usize + 1) * c];
    let mut u: Vec<f64> = unembed(target.id).iter().map(|&x| x as f64).collect();
    if let Some(versus) = &versus {
        for (uj, &w) in u.iter_mut().zip(unembed(versus.id)) {
            *uj -= w as f64;
        }
    }
    // d = rstd · g ⊙ u, centred: d' = d − mean(d).
    let rstd = acts.lnf_rstd[position] as f64;
    let mut d: Vec<f64> = u.iter().zip(p.lnf_w).map(|(&uj, &g)| rstd * g as f64 * uj).collect();
    let mean_d = d.iter().sum::<f64>() / c as f64;
    d.iter_mut().for_each(|dj| *dj -= mean_d);
    let dot = |x: &[f64]| -> f64 { x.iter().zip(&d).map(|(a, b)| a * b).sum() };

    let embed = dot(&row(&acts.encoded));
    let mut heads = Vec::with_capacity(cfg.n_layer);
    let (mut attn_bias, mut mlp) = (Vec::with_capacity(cfg.n_layer), Vec::with_capacity(cfg.n_layer));
    for (l, layer) in acts.layers.iter().enumerate() {
        let w = p.layer(l);
        // back = W_Oᵀ d' (C): W_O is (C_out, C_in) row-major, so back[k] = Σ_j W_O[j, k] d'_j.
        let mut back = vec![0.0f64; c];
        for (j, &dj) in d.iter().enumerate() {
            for (bk, &wjk) in back.iter_mut().zip(&w.attn_proj_w[j * c..(j + 1) * c]) {
                *bk += wjk as f64 * dj;
            }
        }
        let z = row(&layer.atty);
        heads.push(
            (0..nh)
                .map(|h| {
                    let slice = h * hs..(h + 1) * hs;
                    z[slice.clone()].iter().zip(&back[slice]).map(|(a, b)| a * b).sum::<f64>() as f32
                })
                .collect::<Vec<f32>>(),
        );
        attn_bias.push(dot(&w.attn_proj_b.iter().map(|&x| x as f64).collect::<Vec<_>>()) as f32);
        // The MLP's output is what it added to the stream: residual3 − residual2.
        let after = row(&layer.residual3);
        let before = row(&layer.residual2);
        let mlp_out: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        mlp.push(dot(&mlp_out) as f32);
    }
    let ln_final_bias = p.lnf_b.iter().zip(&u).map(|(&b, &uj)| b as f64 * uj).sum::<f64>() as f32;

    // The total as the model computed it: ln_f's output row · u.
    let total = row(&acts.lnf).iter().zip(&u).map(|(a, b)| a * b).sum::<f64>() as f32;
    let mut attribution = Attribution {
        position,
        target,
        versus,
        total,
        embed: embed as f32,
        heads,
        attn_bias,
        mlp,
        ln_final_bias,
        top: Vec::new(),
    };
    attribution.top = largest(attribution.components(), top_n);
    attribution
}

/// The `n` values largest in magnitude, largest first; ties keep their order in `values`.
pub(super) fn largest(mut values: Vec<ComponentValue>, n: usize) -> Vec<ComponentValue> {
    values.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    values.truncate(n);
    values
}
