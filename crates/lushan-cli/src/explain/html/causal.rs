//! The report's causal sections: direct logit attribution, ablation and activation patching — each a
//! picture, a sentence on how to read it and a table of its top components.

use std::fmt::Write as _;

use lushan_model::inspect::{Ablation, Attribution, ComponentSweep, ComponentValue, Explanation, Patching};

use super::{escape, picture, token};
use crate::explain::pictures::{Picture, Pictures};

/// Navigation links of the causal sections the explanation has.
pub(super) fn nav(html: &mut String, explanation: &Explanation) {
    if explanation.attribution.is_some() {
        html.push_str("<a href=\"#attribution\">Attribution</a>");
    }
    if explanation.ablation.is_some() {
        html.push_str("<a href=\"#ablation\">Ablation</a>");
    }
    if explanation.patching.is_some() {
        html.push_str("<a href=\"#patching\">Patching</a>");
    }
}

/// Every causal section the explanation has.
pub(super) fn sections(html: &mut String, explanation: &Explanation, pictures: &Pictures) {
    if let Some(attribution) = &explanation.attribution {
        attribution_section(html, attribution, pictures);
    }
    if let Some(ablation) = &explanation.ablation {
        ablation_section(html, ablation, pictures);
    }
    if let Some(patching) = &explanation.patching {
        patching_section(html, patching, pictures);
    }
}

fn find<'a>(pictures: &'a Pictures, file_name: &str) -> Option<&'a Picture> {
    pictures.causal.iter().find(|p| p.file_name == file_name)
}

/// A table of components and their values, `value_name` heading the numbers.
fn top_table(html: &mut String, values: &[ComponentValue], value_name: &str) {
    let _ = writeln!(html, "<table>\n<tr><th>#</th><th>component</th><th>{}</th></tr>", escape(value_name));
    for (i, value) in values.iter().enumerate() {
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{:+.4}</td></tr>",
            i + 1,
            escape(&value.component.label()),
            value.value
        );
    }
    html.push_str("</table>\n");
}

fn attribution_section(html: &mut String, a: &Attribution, pictures: &Pictures) {
    html.push_str("<h2 id=\"attribution\">6. Direct logit attribution</h2>\n");
    let what = match &a.versus {
        Some(v) => format!("logit({}) − logit({})", token(&a.target.text, a.target.id), token(&v.text, v.id)),
        None => format!("the logit of {}", token(&a.target.text, a.target.id)),
    };
    let _ = writeln!(
        html,
        "<p class=\"how\">The final residual stream at position {} is the sum of what the embeddings, every attention \
         head and every MLP wrote into it. Read through the final layer norm (its scale frozen at the value the \
         model computed, as TransformerLens does) each part adds a share of {what}: red raises it, blue lowers it. \
         The shares add up exactly to {:.4}. This is the <i>direct</i> effect only: a head whose output is used by \
         a later layer shows up in that layer, not here (the ablation below measures total effects).</p>",
        a.position + 1,
        a.total
    );
    if let Some(p) = find(pictures, "attribution.png") {
        html.push_str(&picture(p));
    }
    let _ = writeln!(
        html,
        "<div class=\"meta\">embeddings {:+.4} · final layer norm bias {:+.4} · total {:.4}</div>",
        a.embed, a.ln_final_bias, a.total
    );
    top_table(html, &a.top, "contribution (logits)");
}

fn sweep_tables(html: &mut String, zero: &ComponentSweep, mean: Option<&ComponentSweep>, value_name: &str) {
    html.push_str("<div class=\"neighbours\">\n<div><h3>Zero ablation</h3>\n");
    top_table(html, &zero.top, value_name);
    html.push_str("</div>\n");
    if let Some(mean) = mean {
        html.push_str("<div><h3>Mean ablation</h3>\n");
        top_table(html, &mean.top, value_name);
        html.push_str("</div>\n");
    }
    html.push_str("</div>\n");
}

fn ablation_section(html: &mut String, ablation: &Ablation, pictures: &Pictures) {
    html.push_str("<h2 id=\"ablation\">7. Ablation</h2>\n");
    let _ = writeln!(
        html,
        "<p class=\"how\">Each head and each MLP is switched off in turn — its output set to zero, or (mean \
         ablation) to its average over a reference text — and the model run again. The change of ln p({}) at \
         position {} is the component's <i>total</i> effect on the prediction, through every later layer: strongly \
         negative cells are components the prediction needs. Unablated: ln p = {:.4} (p = {:.4}). The attribution \
         and this sweep took {:.2} s.</p>",
        token(&ablation.target.text, ablation.target.id),
        ablation.position + 1,
        ablation.clean_log_prob,
        ablation.clean_log_prob.exp(),
        ablation.seconds
    );
    for name in ["ablation-zero.png", "ablation-mean.png"] {
        if let Some(p) = find(pictures, name) {
            html.push_str(&picture(p));
        }
    }
    if let Some(tokens) = ablation.reference_tokens {
        let _ = writeln!(html, "<div class=\"meta\">means taken over {tokens} reference tokens</div>");
    }
    sweep_tables(html, &ablation.zero, ablation.mean.as_ref(), "Δ ln p(target)");
    if let Some(data) = &ablation.data {
        let _ = writeln!(
            html,
            "<h3>Over a whole text</h3>\n<p class=\"how\">The change of the mean next-token loss (nats per token) \
             over {} tokens of the --data text when each component is switched off; the unablated loss is {:.4}. \
             Large positive values are components the model needs everywhere, not only for this prompt.</p>",
            data.tokens, data.clean_loss
        );
        sweep_tables(html, &data.zero, data.mean.as_ref(), "Δ mean loss");
    }
}

fn patching_section(html: &mut String, patching: &Patching, pictures: &Pictures) {
    html.push_str("<h2 id=\"patching\">8. Activation patching</h2>\n");
    let corrupted: String = patching.corrupted_tokens.iter().map(|t| token(&t.text, t.id)).collect();
    let _ = writeln!(
        html,
        "<p class=\"how\">The model runs on a corrupted prompt of the same length ({corrupted}); then one \
         activation at a time is copied from the clean run into it. The measure is logit({}) − logit({}) at \
         position {}: {:.4} on the clean prompt, {:.4} on the corrupted one. Each cell is the fraction of that \
         difference the copied activation brings back: 1 means it carries everything that distinguishes the \
         prompts, 0 nothing. The residual-stream map is the causal-tracing picture: where along the layers the \
         information moves from the changed tokens to the last position.</p>",
        token(&patching.target.text, patching.target.id),
        token(&patching.versus.text, patching.versus.id),
        patching.position + 1,
        patching.clean_diff,
        patching.corrupted_diff
    );
    for name in ["patching.png", "patching-heads.png"] {
        if let Some(p) = find(pictures, name) {
            html.push_str(&picture(p));
        }
    }
    top_table(html, &patching.top, "recovered fraction");
}
