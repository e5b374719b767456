//! The report as one self-contained HTML file: inline CSS, pictures as base64 `data:` URIs, tables of every
//! number, no script and no reference to anything outside the file (a Content-Security-Policy says so to
//! the browser too), so it opens offline, from an e-mail attachment or a CI artefact alike.

use std::fmt::Write as _;

use base64::Engine as _;
use lushan_model::features::FeatureView;
use lushan_model::inspect::{Candidate, EmbeddingView, Explanation, HeadRole, HeadRoles, SamplingView};

use super::pictures::{Picture, Pictures, knob_summary, surprisal_css};
use super::visible;

mod causal;

/// What the report shows besides the explanation itself.
pub struct ReportContext<'a> {
    /// The prompt as the user typed it.
    pub prompt: &'a str,
    /// Where the model came from (shown in the header).
    pub model: &'a str,
}

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A token as a chip: its visible form, the exact text (Rust-escaped) and id on hover.
fn token(text: &str, id: u32) -> String {
    format!(r#"<span class="tok" title="{} · id {id}">{}</span>"#, escape(&format!("{text:?}")), escape(&visible(text)))
}

fn candidate(c: &Candidate) -> String {
    token(&c.text, c.id)
}

/// A probability as a number with a small bar under it.
fn prob_bar(prob: f32) -> String {
    let width = (prob.clamp(0.0, 1.0) * 60.0).round();
    format!(r#"<span class="p">{prob:.3}<span class="bar" style="width:{width}px"></span></span>"#)
}

fn picture(p: &Picture) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(&p.png);
    format!(
        "<figure><img src=\"data:image/png;base64,{data}\" width=\"{}\" height=\"{}\" alt=\"{}\">\
         <figcaption>{}</figcaption></figure>\n",
        p.width,
        p.height,
        escape(&p.description),
        escape(&p.description)
    )
}

/// A surprisal cell coloured as in the surprisal strip.
fn surprisal_style(explanation: &Explanation, bits: f32) -> String {
    let (background, color) = surprisal_css(explanation, bits);
    format!("background:{background};color:{color}")
}

const STYLE: &str = r#"
.notice { border: 1px solid #d0d7de; border-left: 4px solid #0969da; border-radius: 6px; padding: 4px 14px; margin: 12px 0; background: #f6f8fa; }
.notice h2 { margin: 6px 0; font-size: 16px; }
.notice li { margin: 3px 0; }
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       margin: 0 auto; max-width: 1240px; padding: 24px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #ddd; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p.how { color: #555; max-width: 900px; margin: 4px 0 12px; }
.meta { color: #555; margin-bottom: 12px; }
nav a { margin-right: 14px; color: #1f77b4; }
.prompt { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f6f6f6; padding: 10px 12px;
          border-radius: 6px; white-space: pre-wrap; word-break: break-word; }
.tok { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; background: #eef3f8;
       border: 1px solid #d6e0ea; border-radius: 3px; padding: 0 3px; }
.chosen .tok { background: #ffe6cc; border-color: #ffbf80; }
figure { margin: 12px 0 20px; overflow-x: auto; }
figure img { display: block; border: 1px solid #eee; }
figcaption { color: #666; font-size: 13px; margin-top: 4px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #e2e2e2; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #fafafa; font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.p { display: inline-block; min-width: 44px; font-variant-numeric: tabular-nums; }
.bar { display: block; height: 3px; background: #1f77b4; margin-top: 1px; }
.alts { display: flex; flex-wrap: wrap; gap: 4px 10px; }
.alt { white-space: nowrap; }
.lens td { min-width: 56px; }
.lens .top1 { font-weight: 600; }
.lens .rest { color: #777; font-size: 11px; }
.muted { color: #888; }
.neighbours { display: flex; flex-wrap: wrap; gap: 0 28px; }
.gen { background: #ffe6cc; border-bottom: 2px solid #ff7f0e; }
.strip { display: flex; flex-wrap: wrap; gap: 2px; margin: 8px 0; }
.strip .cell { text-align: center; padding: 2px 4px; border-radius: 3px; min-width: 18px; }
.strip .cell small { display: block; color: #555; font-size: 10px; }
"#;

/// Renders the whole report.
pub fn render(explanation: &Explanation, pictures: &Pictures, context: &ReportContext) -> String {
    let mut html = String::with_capacity(1 << 20);
    let m = &explanation.model;
    // `default-src 'none'`: the browser itself refuses any resource that is not inside this file.
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; \
         style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>lushan explain</title>\n<style>",
    );
    html.push_str(STYLE);
    html.push_str("</style>\n</head>\n<body>\n");
    let _ = writeln!(html, "<h1>Why the model says what it says</h1>");
    let _ = writeln!(
        html,
        "<div class=\"meta\">model <b>{}</b> · {} layers × {} heads · n_embd {} · context {} · vocabulary {} · \
         prompt of {} tokens</div>",
        escape(context.model),
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.vocab_size,
        explanation.tokens.len()
    );
    let _ = writeln!(html, "<div class=\"prompt\">{}</div>", escape(context.prompt));
    html.push_str("<nav><a href=\"#next\">Next token</a><a href=\"#attention\">Attention</a>");
    html.push_str("<a href=\"#lens\">Logit lens</a>");
    if explanation.sampling.is_some() {
        html.push_str("<a href=\"#sampling\">Sampling</a>");
    }
    if explanation.embeddings.is_some() {
        html.push_str("<a href=\"#embeddings\">Embeddings</a>");
    }
    if explanation.head_roles.is_some() {
        html.push_str("<a href=\"#head-roles\">Head roles</a>");
    }
    if explanation.features.is_some() {
        html.push_str("<a href=\"#features\">Learned features</a>");
    }
    causal::nav(&mut html, explanation);
    html.push_str("</nav>\n");
    notice_section(&mut html, explanation);

    next_token_section(&mut html, explanation, pictures);
    attention_section(&mut html, pictures);
    lens_section(&mut html, explanation, pictures);
    if let Some(view) = &explanation.sampling {
        sampling_section(&mut html, view, context.prompt, pictures.sampling.as_ref());
    }
    if let Some(view) = &explanation.embeddings {
        embedding_section(&mut html, view, pictures.embeddings.as_ref());
    }
    if let Some(roles) = &explanation.head_roles {
        head_roles_section(&mut html, roles, pictures.head_roles.as_ref());
    }
    if let Some(view) = &explanation.features {
        features_section(&mut html, explanation, view);
    }
    causal::sections(&mut html, explanation, pictures);
    html.push_str("<p class=\"muted\">Generated by <code>lushan explain</code>.</p>\n</body>\n</html>\n");
    html
}

/// "What to notice": each sentence with a link to the section that shows it.
fn notice_section(html: &mut String, explanation: &Explanation) {
    if explanation.notice.is_empty() {
        return;
    }
    html.push_str("<div class=\"notice\" id=\"notice\"><h2>What to notice</h2>\n<ul>\n");
    for notice in &explanation.notice {
        let section = escape(&notice.section);
        let _ = writeln!(html, "<li>{} <a href=\"#{section}\">→ {section}</a></li>", escape(&notice.text));
    }
    html.push_str("</ul></div>\n");
}

fn next_token_section(html: &mut String, explanation: &Explanation, pictures: &Pictures) {
    html.push_str("<h2 id=\"next\">1. Next-token predictions</h2>\n");
    html.push_str(
        "<p class=\"how\">At every position the model gives a probability to each possible next token. The table \
         shows the token the text really has next, the probability and rank the model gave it, its surprisal \
         (−log<sub>2</sub> p, in bits: 0 = certain, each extra bit = half as likely) and the model's most likely \
         alternatives. Entropy is how spread out the whole distribution is.</p>\n",
    );
    html.push_str(&picture(&pictures.surprisal));
    html.push_str("<div class=\"scroll\"><table>\n<tr><th>pos</th><th>token</th><th>actual next</th><th>p</th>");
    html.push_str(
        "<th>rank</th><th>surprisal (bits)</th><th>entropy (bits)</th><th>model's top alternatives</th></tr>\n",
    );
    for prediction in &explanation.next_token {
        let here = explanation.tokens.get(prediction.position).map_or_else(String::new, |t| token(&t.text, t.id));
        let (actual, prob, rank) = match &prediction.actual {
            Some(a) => (candidate(a), prob_bar(a.prob), a.rank.to_string()),
            None => ("<span class=\"muted\">(end of prompt)</span>".to_string(), String::new(), String::new()),
        };
        let surprisal = match prediction.surprisal_bits {
            Some(bits) => format!("<td class=\"num\" style=\"{}\">{bits:.2}</td>", surprisal_style(explanation, bits)),
            None => "<td></td>".to_string(),
        };
        let alternatives: String = prediction
            .top
            .iter()
            .map(|c| format!("<span class=\"alt\">{} {}</span>", candidate(c), prob_bar(c.prob)))
            .collect();
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{}</td><td>{here}</td><td>{actual}</td><td>{prob}</td><td class=\"num\">{rank}</td>\
             {surprisal}<td class=\"num\">{:.2}</td><td><div class=\"alts\">{alternatives}</div></td></tr>",
            prediction.position, prediction.entropy_bits
        );
    }
    html.push_str("</table></div>\n");
}

fn attention_section(html: &mut String, pictures: &Pictures) {
    html.push_str("<h2 id=\"attention\">2. Attention</h2>\n");
    html.push_str(
        "<p class=\"how\">Each head mixes information from earlier tokens into each position. In every square, row \
         <i>i</i> is the token doing the looking (the query) and column <i>j</i> a token it looks at (the key); the \
         colour is the attention probability, and each row sums to 1. Only earlier tokens can be seen, so the \
         upper-right triangle is empty. Common patterns: a bright diagonal (attend to self), the line just below \
         it (previous token), a bright first column (a “resting” position).</p>\n",
    );
    html.push_str(&picture(&pictures.attention_grid));
    for head in &pictures.attention_heads {
        html.push_str(&picture(head));
    }
}

fn lens_section(html: &mut String, explanation: &Explanation, pictures: &Pictures) {
    html.push_str("<h2 id=\"lens\">3. Logit lens</h2>\n");
    html.push_str(
        "<p class=\"how\">The residual stream after the embeddings and after each layer, read through the final layer \
         norm and the output layer as if that layer were the last one. The heat map shows, for every layer and \
         position, the probability given to the model's <i>final</i> top prediction there: where a column turns \
         bright is the layer at which the model has settled on its answer. The table lists each layer's own most \
         likely tokens.</p>\n",
    );
    html.push_str(&picture(&pictures.logit_lens));
    html.push_str("<div class=\"scroll\"><table class=\"lens\">\n<tr><th>layer \\ input</th>");
    for t in &explanation.tokens {
        let _ = write!(html, "<th>{}</th>", token(&t.text, t.id));
    }
    html.push_str("</tr>\n");
    for layer in &explanation.logit_lens.layers {
        let _ = write!(html, "<tr><th>{}</th>", escape(&layer.label));
        for cell in &layer.positions {
            let shade = (cell.final_token_prob.clamp(0.0, 1.0) * 0.55).max(0.0);
            let _ = write!(html, "<td style=\"background:rgba(33,145,140,{shade:.2})\">");
            if let Some((first, rest)) = cell.top.split_first() {
                let _ = write!(html, "<div class=\"top1\">{} {:.2}</div>", candidate(first), first.prob);
                for c in rest {
                    let _ = write!(html, "<div class=\"rest\">{} {:.2}</div>", escape(&visible(&c.text)), c.prob);
                }
            }
            html.push_str("</td>");
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table></div>\n");
}

fn sampling_section(html: &mut String, view: &SamplingView, prompt: &str, picture_of_steps: Option<&Picture>) {
    html.push_str("<h2 id=\"sampling\">4. Sampling</h2>\n");
    html.push_str(
        "<p class=\"how\">Each generated token was drawn from the model's distribution after the sampling knobs: \
         <b>temperature</b> sharpens (&lt;1) or flattens (&gt;1) it, <b>top-k</b> keeps only the k most likely \
         tokens, <b>top-p</b> keeps the smallest set whose probability reaches p, and the <b>repetition \
         penalty</b> lowers tokens already in the context. Compare the raw probability with the one the token \
         was really drawn with.</p>\n",
    );
    let _ = writeln!(html, "<div class=\"meta\">{}</div>", escape(&knob_summary(view)));
    // The generated text after the prompt, each token marked, newlines shown as ↵ and kept as line breaks.
    let generated: String = view
        .steps
        .iter()
        .map(|s| {
            let text = escape(&s.chosen.text.replace('\n', "↵\n"));
            format!("<span class=\"gen\" title=\"p {:.3}\">{text}</span>", s.chosen.prob)
        })
        .collect();
    let _ = writeln!(html, "<div class=\"prompt\"><span class=\"muted\">{}</span>{generated}</div>", escape(prompt));
    if let Some(p) = picture_of_steps {
        html.push_str(&picture(p));
    }
    html.push_str("<div class=\"scroll\"><table>\n<tr><th>step</th><th>drawn</th><th>p drawn with</th>");
    html.push_str("<th>tokens kept</th><th>candidates: raw p → p after the knobs</th></tr>\n");
    for (i, step) in view.steps.iter().enumerate() {
        let candidates: String = step
            .candidates
            .iter()
            .map(|c| {
                let class = if c.id == step.chosen.id { "alt chosen" } else { "alt" };
                format!(
                    "<span class=\"{class}\">{} {:.3} → {:.3}</span>",
                    token(&c.text, c.id),
                    c.raw_prob,
                    c.final_prob
                )
            })
            .collect();
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{}</td><td class=\"chosen\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td><div class=\"alts\">{candidates}</div></td></tr>",
            i + 1,
            candidate(&step.chosen),
            prob_bar(step.chosen.prob),
            step.kept
        );
    }
    html.push_str("</table></div>\n");
}

fn embedding_section(html: &mut String, view: &EmbeddingView, scatter: Option<&Picture>) {
    html.push_str("<h2 id=\"embeddings\">5. Embedding neighbours</h2>\n");
    html.push_str(
        "<p class=\"how\">Each token is a vector in the token embedding. Tokens whose vectors point the same way \
         (cosine similarity near 1) are used alike by the model. The scatter plot places the queried tokens and \
         their neighbours on the two directions along which these vectors vary most (PCA).</p>\n",
    );
    // One small table per queried token, side by side.
    html.push_str("<div class=\"neighbours\">\n");
    for query in &view.queries {
        let _ = writeln!(html, "<div><h3>Nearest to {}</h3>", token(&query.token.text, query.token.id));
        html.push_str("<table>\n<tr><th>#</th><th>token</th><th>cosine</th></tr>\n");
        for (i, similar) in query.nearest.iter().enumerate() {
            let _ = writeln!(
                html,
                "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{:.3}</td></tr>",
                i + 1,
                token(&similar.text, similar.id),
                similar.cosine
            );
        }
        html.push_str("</table></div>\n");
    }
    html.push_str("</div>\n");
    if let Some(p) = scatter {
        html.push_str(&picture(p));
    }
}

fn head_roles_section(html: &mut String, roles: &HeadRoles, maps: Option<&Picture>) {
    html.push_str("<h2 id=\"head-roles\">Head roles</h2>\n");
    let _ = writeln!(
        html,
        "<p class=\"how\">Some heads do one recognisable job on any text. To find them the model reads {} random \
         tokens followed by the same {} again (seed {}), and each head is scored, as TransformerLens' head \
         detector does, by the share of its attention that goes where a role would put it: a \
         <b>previous-token</b> head looks at the token just before; a <b>duplicate-token</b> head at an earlier \
         copy of the current token; an <b>induction</b> head at the token that <i>followed</i> that earlier copy, \
         which lets the model continue a pattern it has seen before. A score near 1 means the head does that job \
         almost all the time.</p>",
        roles.tokens.len() / 2,
        roles.tokens.len() / 2,
        roles.seed
    );
    if let Some(p) = maps {
        html.push_str(&picture(p));
    }
    html.push_str("<table>\n<tr><th>role</th><th>strongest heads (layer.head: score)</th></tr>\n");
    for role in HeadRole::ALL {
        let heads: Vec<String> = roles
            .strongest
            .iter()
            .filter(|s| s.role == role)
            .map(|s| format!("<b>{}.{}</b>: {:.3}", s.layer + 1, s.head + 1, s.score))
            .collect();
        let _ = writeln!(html, "<tr><td>{}</td><td>{}</td></tr>", role.label(), heads.join(" · "));
    }
    html.push_str("</table>\n");
}

fn features_section(html: &mut String, explanation: &Explanation, view: &FeatureView) {
    html.push_str("<h2 id=\"features\">Learned features</h2>\n");
    let report = &view.summary["report"];
    let figure = |key: &str| report[key].as_f64().map_or_else(|| "?".to_string(), |v| format!("{v:.4}"));
    let _ = writeln!(
        html,
        "<p class=\"how\">A sparse autoencoder rewrites the residual stream entering block {} as a sum of a few of \
         its {} learned directions (features). For each token, its most active features, and for each feature \
         the places in the training text where it fired most (the activating token highlighted). On held-out \
         text the autoencoder's reconstruction has MSE {} per element, leaves a fraction {} of the variance \
         unexplained and uses on average {} features per token (L0); {} features never fire there. Spliced into \
         the model in place of the stream it reads, it keeps a fraction {} of the model's loss (1 = all, 0 = no \
         better than zeroing the stream).</p>",
        view.layer,
        view.n_features,
        figure("mse"),
        figure("fvu"),
        figure("l0"),
        report["dead_features"].as_u64().map_or_else(|| "?".to_string(), |d| d.to_string()),
        view.summary["splice"]["loss_preserved"].as_f64().map_or_else(|| "?".to_string(), |v| format!("{v:.3}"))
    );
    html.push_str("<div class=\"scroll\"><table>\n<tr><th>pos</th><th>token</th><th>active</th>");
    html.push_str("<th>features: activation and top contexts</th></tr>\n");
    for position in &view.positions {
        let here = explanation.tokens.get(position.position).map_or_else(String::new, |t| token(&t.text, t.id));
        let features: String = position
            .top
            .iter()
            .map(|f| {
                let contexts: String = f
                    .contexts
                    .iter()
                    .map(|c| {
                        format!(
                            "<div class=\"rest\"><span class=\"muted\">{}</span><span class=\"gen\">{}</span>\
                             <span class=\"muted\">{}</span> ({:.2})</div>",
                            escape(&visible(&c.before)),
                            escape(&visible(&c.token)),
                            escape(&visible(&c.after)),
                            c.activation
                        )
                    })
                    .collect();
                format!("<div><b>#{}</b> {:.3}{contexts}</div>", f.feature, f.activation)
            })
            .collect();
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{}</td><td>{here}</td><td class=\"num\">{}</td><td>{features}</td></tr>",
            position.position, position.l0
        );
    }
    html.push_str("</table></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{HeadSelection, fixture, pictures};

    fn report(prompt: &str) -> String {
        let explanation = fixture::explanation(prompt, 2, 2);
        let pictures = pictures::draw_all(&explanation, &HeadSelection::of_layer(1, None, 2)).unwrap();
        render(&explanation, &pictures, &ReportContext { prompt, model: "/tmp/<model>" })
    }

    #[test]
    fn report_has_every_section_and_embeds_its_pictures() {
        let html = report("ROMEO: But soft");
        let ids = [
            "next",
            "attention",
            "lens",
            "sampling",
            "embeddings",
            "head-roles",
            "features",
            "attribution",
            "ablation",
            "patching",
        ];
        for id in ids {
            assert!(html.contains(&format!("id=\"{id}\"")), "missing {id}");
            assert!(html.contains(&format!("href=\"#{id}\"")), "no link to {id}");
        }
        // Surprisal, grid, two heads, lens, sampling, PCA, head roles, attribution, zero / mean ablation, two
        // patching maps.
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 13);
        // "What to notice" leads, each sentence linking to a section that exists.
        let notice = &html[html.find("id=\"notice\"").expect("a what-to-notice block")..];
        let notice = &notice[..notice.find("</ul>").unwrap_or(notice.len())];
        for section in ["next", "attribution", "ablation", "lens", "head-roles", "patching"] {
            assert!(notice.contains(&format!("href=\"#{section}\"")), "no notice links to {section}: {notice}");
        }
        assert!(html.find("id=\"notice\"") < html.find("id=\"next\""), "the notice is not first");
        // The fixture's head (1, 1) is its strongest induction head (0-based (0, 0) scores for role 0).
        assert!(html.contains("<b>1.2</b>: 0.900"), "strongest heads are listed");
        assert!(html.contains("<td>L2H1</td>"), "the top components are named");
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script"));
        if std::env::var_os("LUSHAN_PLOT_DEBUG").is_some() {
            std::fs::write("/tmp/lushan-explain-report.html", &html).unwrap();
        }
    }

    #[test]
    fn token_text_is_escaped() {
        // The fixture's vocabulary has a `<&"'>` token; the prompt has markup.
        let html = report("<script>alert(1)</script>");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("&lt;&amp;&quot;&#39;&gt;"));
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
