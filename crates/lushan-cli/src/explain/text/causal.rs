//! The terminal summary of the causal views: the top components of attribution, ablation and patching.

use std::fmt::Write as _;

use lushan_model::inspect::{ComponentValue, Explanation};

use super::quoted_in_full;

/// Top components on one line: `L2H3 +1.234  L1 MLP −0.567 …`.
fn line(values: &[ComponentValue]) -> String {
    values.iter().map(|v| format!("{} {:+.3}", v.component.label(), v.value)).collect::<Vec<_>>().join("  ")
}

pub(super) fn summary(out: &mut String, explanation: &Explanation) {
    if let Some(a) = &explanation.attribution {
        let what = match &a.versus {
            Some(v) => format!("logit({}) − logit({})", quoted_in_full(&a.target.text), quoted_in_full(&v.text)),
            None => format!("logit({})", quoted_in_full(&a.target.text)),
        };
        let _ = writeln!(
            out,
            "\nDirect logit attribution of {what} at position {} = {:.3} (embeddings {:+.3}, ln_f bias {:+.3}):",
            a.position + 1,
            a.total,
            a.embed,
            a.ln_final_bias
        );
        let _ = writeln!(out, "  top: {}", line(&a.top));
    }
    if let Some(ab) = &explanation.ablation {
        let _ = writeln!(
            out,
            "\nAblation: Δ ln p({}) at position {} (unablated ln p {:.3}); attribution + ablation sweep took {:.2} s:",
            quoted_in_full(&ab.target.text),
            ab.position + 1,
            ab.clean_log_prob,
            ab.seconds
        );
        let _ = writeln!(out, "  zero: {}", line(&ab.zero.top));
        if let Some(mean) = &ab.mean {
            let _ = writeln!(out, "  mean: {}", line(&mean.top));
        }
        if let Some(data) = &ab.data {
            let _ = writeln!(
                out,
                "  Δ mean loss over {} --data tokens (unablated {:.3} nats/token):",
                data.tokens, data.clean_loss
            );
            let _ = writeln!(out, "    zero: {}", line(&data.zero.top));
            if let Some(mean) = &data.mean {
                let _ = writeln!(out, "    mean: {}", line(&mean.top));
            }
        }
    }
    if let Some(p) = &explanation.patching {
        let _ = writeln!(
            out,
            "\nActivation patching: logit({}) − logit({}) at position {}: clean {:.3}, corrupted {:.3}",
            quoted_in_full(&p.target.text),
            quoted_in_full(&p.versus.text),
            p.position + 1,
            p.clean_diff,
            p.corrupted_diff
        );
        // The residual-stream cells recovering the most: where the information sits.
        let mut cells: Vec<(usize, usize, f32)> = p
            .resid
            .iter()
            .enumerate()
            .flat_map(|(l, row)| row.iter().enumerate().map(move |(pos, &v)| (l, pos, v)))
            .collect();
        cells.sort_by(|a, b| b.2.total_cmp(&a.2));
        let best: Vec<String> = cells
            .iter()
            .take(5)
            .map(|&(l, pos, v)| {
                let at = if l == 0 { "embed".to_string() } else { format!("into layer {}", l + 1) };
                format!("{at} @ position {} {v:.2}", pos + 1)
            })
            .collect();
        let _ = writeln!(out, "  residual stream, most recovered: {}", best.join("  "));
        let _ = writeln!(out, "  heads (recovered fraction): {}", line(&p.top));
    }
}
