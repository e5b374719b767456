//! "What to notice": a few sentences read off an [`Explanation`] — the most surprising token, the components
//! that write the explained prediction, the layer where the prediction settles, the strongest induction and
//! previous-token heads, what patching restores — each naming the report section that shows it. The terminal
//! summary and the HTML report print them first; the JSON carries them as `notice`. Tokens are counted
//! from 1, as `lushan explain --position` counts them.

use super::components::{Component, ComponentValue};
use super::{Explanation, HeadRole};
use serde::{Deserialize, Serialize};

/// One sentence and the id of the report section (`#next`, `#attribution`, …) that shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub section: String,
    pub text: String,
}

/// Components named per sentence.
const NAMED: usize = 3;

/// A token's text quoted for a sentence, its invisible characters escaped.
fn quoted(text: &str) -> String {
    format!("'{}'", text.chars().flat_map(char::escape_debug).collect::<String>())
}

fn percent(p: f32) -> String {
    format!("{:.1} %", 100.0 * p)
}

fn signed(components: &[ComponentValue]) -> String {
    components
        .iter()
        .take(NAMED)
        .map(|c| format!("{} ({:+.2})", c.component.label(), c.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sentences for `explanation`, in reading order; a view that is absent gives none.
pub fn what_to_notice(explanation: &Explanation) -> Vec<Notice> {
    let mut notices = Vec::new();
    let mut say = |section: &str, text: String| notices.push(Notice { section: section.to_string(), text });

    // The most surprising token of the prompt.
    let surprising = explanation
        .next_token
        .iter()
        .filter_map(|p| Some((p, p.actual.as_ref()?, p.surprisal_bits?)))
        .max_by(|a, b| a.2.total_cmp(&b.2));
    if let Some((prediction, actual, bits)) = surprising {
        let expected = prediction
            .top
            .first()
            .map_or_else(String::new, |top| format!("; it expected {} ({})", quoted(&top.text), percent(top.prob)));
        say(
            "next",
            format!(
                "The most surprising token is {}, token {} of the prompt: the model gave it {} ({:.1} bits, rank {}){expected}.",
                quoted(&actual.text),
                prediction.position + 2,
                percent(actual.prob),
                bits,
                actual.rank
            ),
        );
    }

    // Who writes the explained logit, and what knocking components out does.
    if let Some(a) = &explanation.attribution {
        let target = quoted(&a.target.text);
        let what = match &a.versus {
            Some(versus) => format!("logit({target}) − logit({})", quoted(&versus.text)),
            None => format!("the logit of {target}"),
        };
        say(
            "attribution",
            format!(
                "After token {} of the prompt, {what} = {:.2}; the largest direct contributions are {}.",
                a.position + 1,
                a.total,
                signed(&a.top)
            ),
        );
    }
    if let Some(ablation) = &explanation.ablation {
        let knocked: Vec<ComponentValue> = ablation
            .zero
            .top
            .iter()
            .copied()
            .filter(|c| matches!(c.component, Component::Head { .. } | Component::Mlp { .. }))
            .collect();
        if !knocked.is_empty() {
            say(
                "ablation",
                format!(
                    "Switching off one component at a time, ln p({}) moves most for {}.",
                    quoted(&ablation.target.text),
                    signed(&knocked)
                ),
            );
        }
    }

    // The layer from which the logit lens already shows the final prediction at the last position.
    let layers = &explanation.logit_lens.layers;
    let last = explanation.tokens.len().saturating_sub(1);
    let top_at = |layer: usize| layers.get(layer)?.positions.get(last)?.top.first().map(|c| c.id);
    if let Some(final_id) = layers.len().checked_sub(1).and_then(top_at) {
        let settles = (0..layers.len()).rev().take_while(|&l| top_at(l) == Some(final_id)).last();
        let final_text = layers.last().and_then(|l| l.positions.get(last)?.top.first()).map(|c| quoted(&c.text));
        if let (Some(settles), Some(final_text)) = (settles, final_text) {
            let text = if settles + 1 == layers.len() {
                format!(
                    "The prediction after the last token, {final_text}, appears only at the output: no earlier layer of the logit lens ranks it first."
                )
            } else {
                format!(
                    "The prediction after the last token, {final_text}, settles at {}: from there on the logit lens ranks it first.",
                    layers[settles].label
                )
            };
            say("lens", text);
        }
    }

    // The strongest induction and previous-token heads.
    if let Some(roles) = &explanation.head_roles {
        let heads: Vec<String> = [HeadRole::Induction, HeadRole::PreviousToken]
            .into_iter()
            .filter_map(|role| roles.strongest(role).map(|s| (role, s)))
            .map(|(role, s)| format!("{} head L{}H{} ({:.2})", role.label(), s.layer + 1, s.head + 1, s.score))
            .collect();
        if !heads.is_empty() {
            say("head-roles", format!("Strongest heads on a repeated random sequence: {}.", heads.join("; ")));
        }
    }

    // What patching from the clean prompt restores.
    if let Some(patching) = &explanation.patching
        && let Some(best) = patching.top.first()
    {
        say(
            "patching",
            format!(
                "Patching {} from the clean prompt into the corrupted one restores {:.0} % of logit({}) − logit({}).",
                best.component.label(),
                100.0 * best.value,
                quoted(&patching.target.text),
                quoted(&patching.versus.text)
            ),
        );
    }
    notices
}
