//! The terminal summary `lushan explain` prints: the next-token table and what the logit lens sees. Tokens
//! are shown Rust-escaped and quoted (`' '`, `'\n'`), so that spaces and newlines are visible in any terminal.

use std::fmt::Write as _;

use lushan_model::inspect::{Explanation, HeadRole, LensLayer};

use super::pictures::knob_summary;
use super::truncate;

mod causal;

/// Most positions the logit-lens summary shows (the last ones; the report has all).
const LENS_POSITIONS: usize = 12;
/// Width of a token column (quotes included).
const TOKEN_WIDTH: usize = 12;

/// A token quoted and escaped for a terminal.
fn quoted_in_full(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    format!("'{escaped}'")
}

/// [`quoted_in_full`] cut to at most `TOKEN_WIDTH` characters, for aligned columns.
fn quoted(text: &str) -> String {
    truncate(&quoted_in_full(text), TOKEN_WIDTH)
}

/// Characters a string takes on a terminal (counting each `char` as one column is close enough here).
fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

pub fn summary(explanation: &Explanation) -> String {
    let mut out = String::new();
    let m = &explanation.model;
    let _ = writeln!(
        out,
        "{} prompt tokens · model: {} layers × {} heads, n_embd {}, context {}, vocabulary {}",
        explanation.tokens.len(),
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.vocab_size
    );
    if !explanation.notice.is_empty() {
        let _ = writeln!(out, "\nWhat to notice:");
        for notice in &explanation.notice {
            let _ = writeln!(out, "  • {}  [report: #{}]", notice.text, notice.section);
        }
    }
    let _ = writeln!(out, "\nNext-token predictions (p and rank of the actual next token; surprisal in bits):");
    let _ = writeln!(
        out,
        "{:>4}  {}  {}  {:>6} {:>5} {:>6}  top alternatives",
        "pos",
        pad("token", TOKEN_WIDTH),
        pad("→ actual", TOKEN_WIDTH),
        "p",
        "rank",
        "bits"
    );
    for prediction in &explanation.next_token {
        let here = explanation.tokens.get(prediction.position).map_or_else(String::new, |t| quoted(&t.text));
        let (actual, prob, rank) = match &prediction.actual {
            Some(a) => (quoted(&a.text), format!("{:.3}", a.prob), a.rank.to_string()),
            None => ("(end)".to_string(), String::new(), String::new()),
        };
        let bits = prediction.surprisal_bits.map_or_else(String::new, |b| format!("{b:.2}"));
        let top: Vec<String> =
            prediction.top.iter().map(|c| format!("{} {:.2}", quoted_in_full(&c.text), c.prob)).collect();
        let _ = writeln!(
            out,
            "{:>4}  {}  {}  {prob:>6} {rank:>5} {bits:>6}  {}",
            prediction.position,
            pad(&here, TOKEN_WIDTH),
            pad(&actual, TOKEN_WIDTH),
            top.join("  ")
        );
    }
    let surprisals: Vec<f32> = explanation.next_token.iter().filter_map(|p| p.surprisal_bits).collect();
    if !surprisals.is_empty() {
        let mean = surprisals.iter().sum::<f32>() / surprisals.len() as f32;
        let _ = writeln!(out, "mean surprisal: {mean:.2} bits/token over {} predicted tokens", surprisals.len());
    }

    let layers = &explanation.logit_lens.layers;
    let count = layers.iter().map(|l| l.positions.len()).max().unwrap_or(0);
    if count > 0 {
        let first = count.saturating_sub(LENS_POSITIONS);
        let shown = if first > 0 { format!(" (last {} of {count} positions)", count - first) } else { String::new() };
        let _ = writeln!(out, "\nLogit lens: each layer's top-1 token at each position{shown}:");
        let label_width = layers.iter().map(|l| l.label.chars().count()).max().unwrap_or(5).max(5);
        let input = |p: usize| explanation.tokens.get(p).map_or_else(String::new, |t| quoted(&t.text));
        let top1 = |layer: &LensLayer, p: usize| {
            layer.positions.get(p).and_then(|c| c.top.first()).map_or_else(String::new, |c| quoted(&c.text))
        };
        // Columns as wide as their widest token: char-level tokens take 4 columns, not 10.
        let column = (first..count)
            .flat_map(|p| std::iter::once(input(p)).chain(layers.iter().map(move |l| top1(l, p))))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(3);
        let mut header = pad("input", label_width);
        for p in first..count {
            header.push_str("  ");
            header.push_str(&pad(&input(p), column));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for layer in layers {
            let mut line = pad(&layer.label, label_width);
            for p in first..count {
                line.push_str("  ");
                line.push_str(&pad(&top1(layer, p), column));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }

    if let Some(view) = &explanation.sampling {
        let generated: String = view.steps.iter().map(|s| s.chosen.text.as_str()).collect();
        let _ = writeln!(out, "\nGenerated {} tokens ({}):", view.steps.len(), knob_summary(view));
        let _ = writeln!(out, "{generated:?}");
    }
    if let Some(view) = &explanation.embeddings {
        let _ = writeln!(out, "\nNearest tokens in the embedding (cosine similarity):");
        for query in &view.queries {
            let nearest: Vec<String> =
                query.nearest.iter().map(|s| format!("{} {:.2}", quoted_in_full(&s.text), s.cosine)).collect();
            let _ = writeln!(out, "{}  {}", pad(&quoted(&query.token.text), TOKEN_WIDTH), nearest.join("  "));
        }
    }
    if let Some(roles) = &explanation.head_roles {
        let _ = writeln!(
            out,
            "\nHead roles (share of attention on the role's pattern, {} random tokens repeated; layer.head):",
            roles.tokens.len() / 2
        );
        for role in HeadRole::ALL {
            let heads: Vec<String> = roles
                .strongest
                .iter()
                .filter(|s| s.role == role)
                .map(|s| format!("{}.{} {:.2}", s.layer + 1, s.head + 1, s.score))
                .collect();
            let _ = writeln!(out, "{}  {}", pad(role.label(), 16), heads.join("  "));
        }
    }
    if let Some(view) = &explanation.features {
        let _ = writeln!(
            out,
            "\nLearned features (SAE on the residual stream entering block {}, {} features): per token, the most \
             active features and where each fired most in the training text:",
            view.layer, view.n_features
        );
        for position in &view.positions {
            let here = explanation.tokens.get(position.position).map_or_else(String::new, |t| quoted(&t.text));
            let features: Vec<String> = position
                .top
                .iter()
                .take(3)
                .map(|f| {
                    let context = f.contexts.first().map_or_else(String::new, |c| {
                        format!(" {}", quoted_in_full(&format!("{}[{}]{}", c.before, c.token, c.after)))
                    });
                    format!("#{} {:.2}{context}", f.feature, f.activation)
                })
                .collect();
            // Token first: the lines must not read as rows of the next-token table.
            let _ = writeln!(out, "  {} @{:<4} {}", pad(&here, TOKEN_WIDTH), position.position, features.join("  "));
        }
    }
    causal::summary(&mut out, explanation);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::fixture;

    #[test]
    fn summary_lists_every_position_and_the_lens() {
        let explanation = fixture::explanation("a b\nc", 2, 2);
        let text = summary(&explanation);
        assert!(text.contains("Next-token predictions"));
        assert!(text.contains("'\\n'"), "newline tokens are escaped: {text}");
        assert!(text.contains("layer 2"));
        assert!(text.contains("Generated 4 tokens"));
        assert!(text.contains("Nearest tokens"));
        assert!(text.contains("Head roles") && text.contains("induction"), "{text}");
        let notice = text.find("What to notice:").expect("a what-to-notice block");
        assert!(notice < text.find("Next-token predictions").unwrap_or(0), "the notice is not first: {text}");
        assert!(text.contains("The most surprising token is") && text.contains("[report: #attribution]"), "{text}");
        assert!(text.contains("Learned features") && text.contains("#7 1.50"), "{text}");
        assert!(text.contains("Direct logit attribution of logit('e') at position 5"), "{text}");
        assert!(text.contains("Ablation: Δ ln p('e')") && text.contains("  mean: L1H2"), "{text}");
        assert!(text.contains("Activation patching") && text.contains("into layer 2 @ position"), "{text}");
        // One table line per position.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(' ') && l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
                .count(),
            5
        );
    }

    #[test]
    fn long_prompts_show_the_last_lens_positions() {
        let explanation = fixture::explanation(&"x".repeat(40), 1, 1);
        assert!(summary(&explanation).contains("last 12 of 40 positions"));
    }
}
