//! Presenting an [`Explanation`](lushan_model::inspect::Explanation): the pictures ([`pictures`]), the
//! self-contained HTML report ([`html`]) and the terminal summary ([`text`]). The numbers all come from
//! `lushan_model::inspect`; nothing here runs the model.

pub mod html;
pub mod pictures;
pub mod text;

/// Which attention heads the report draws large: 0-based `(layer, head)` pairs, in drawing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSelection {
    pub heads: Vec<(usize, usize)>,
}

impl HeadSelection {
    /// Every head of layer `layer` (0-based), or only `head` of it.
    pub fn of_layer(layer: usize, head: Option<usize>, n_head: usize) -> Self {
        let heads = match head {
            Some(head) => vec![(layer, head)],
            None => (0..n_head).map(|head| (layer, head)).collect(),
        };
        Self { heads }
    }
}

/// A token's text with the characters that would be invisible or break a layout made visible: space `␣`,
/// newline `↵`, tab `⇥`, other control characters as `\u{..}`. Used for every label, so that a reader can
/// tell `" the"` from `"the"` and a newline token is not an empty cell.
pub fn visible(text: &str) -> String {
    if text.is_empty() {
        return "∅".to_string();
    }
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            ' ' => out.push('␣'),
            '\n' => out.push('↵'),
            '\t' => out.push('⇥'),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max_chars` characters, the cut marked with `…`.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// [`visible`] then [`truncate`]: the label of a token in a picture or a table cell.
pub fn label(text: &str, max_chars: usize) -> String {
    truncate(&visible(text), max_chars)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A hand-built explanation with every section, shaped like a real one (rows sum to one, causal mask).
    use lushan_model::inspect::*;

    fn candidate(id: u32, text: &str, prob: f32, rank: usize) -> Candidate {
        Candidate { id, text: text.to_string(), prob, rank }
    }

    /// `n_layer` layers of `n_head` heads over the tokens of `prompt` (one token per character; the id is
    /// the character's code, the vocabulary is 128).
    pub fn explanation(prompt: &str, n_layer: usize, n_head: usize) -> Explanation {
        let tokens: Vec<TokenText> = prompt.chars().map(|c| TokenText { id: c as u32, text: c.to_string() }).collect();
        let t = tokens.len();
        let alphabet = ["e", " ", "t", "a", "\n", "<&\"'>", "o"];
        let next_token = (0..t)
            .map(|position| {
                let top: Vec<Candidate> = alphabet
                    .iter()
                    .enumerate()
                    .take(5)
                    .map(|(i, s)| candidate(i as u32, s, 0.4 / (i + 1) as f32, i + 1))
                    .collect();
                let actual = tokens.get(position + 1).map(|tok| {
                    let prob = 0.9 / (1.0 + position as f32);
                    candidate(tok.id, &tok.text, prob, 1 + position % 7)
                });
                let surprisal_bits = actual.as_ref().map(|a| -a.prob.log2());
                Prediction { position, actual, surprisal_bits, top, entropy_bits: 2.5 + position as f32 * 0.1 }
            })
            .collect();
        let probs = (0..n_layer)
            .map(|layer| {
                (0..n_head)
                    .map(|head| {
                        (0..t)
                            .map(|query| {
                                // Head-dependent peaks: previous token, first token, self.
                                let mut row = vec![0.0f32; t];
                                let peak = match (layer + head) % 3 {
                                    0 => query.saturating_sub(1),
                                    1 => 0,
                                    _ => query,
                                };
                                let spread = 0.3 / (query + 1) as f32;
                                for (key, value) in row.iter_mut().enumerate().take(query + 1) {
                                    *value = spread;
                                    if key == peak {
                                        *value += 0.7;
                                    }
                                }
                                row
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let layers = (0..=n_layer)
            .map(|l| LensLayer {
                label: if l == 0 { "embed".to_string() } else { format!("layer {l}") },
                positions: (0..t)
                    .map(|p| LensCell {
                        top: vec![
                            candidate(1, alphabet[(l + p) % alphabet.len()], 0.2 + 0.1 * l as f32, 1),
                            candidate(2, "th", 0.1, 2),
                        ],
                        final_token_prob: (l as f32 / n_layer as f32) * (0.3 + 0.7 * ((p % 3) as f32 / 2.0)),
                    })
                    .collect(),
            })
            .collect();
        let steps = (0..4)
            .map(|i| SamplingStep {
                chosen: candidate(i, alphabet[i as usize], 0.5, 1),
                candidates: (0..6)
                    .map(|j| SampledCandidate {
                        id: j,
                        text: alphabet[j as usize].to_string(),
                        raw_prob: 0.5 / (j + 1) as f32,
                        final_prob: if j < 3 { 0.7 / (j + 1) as f32 } else { 0.0 },
                    })
                    .collect(),
                kept: 3,
            })
            .collect();
        let queries = vec![Neighbours {
            token: TokenText { id: 101, text: "e".to_string() },
            nearest: vec![
                Similar { id: 97, text: "a".to_string(), cosine: 0.8 },
                Similar { id: 111, text: "o".to_string(), cosine: 0.7 },
                Similar { id: 60, text: "<".to_string(), cosine: -0.1 },
            ],
        }];
        let pca = vec![
            ProjectedToken { id: 101, text: "e".to_string(), x: 0.5, y: 0.1, query: true },
            ProjectedToken { id: 97, text: "a".to_string(), x: 0.4, y: 0.3, query: false },
            ProjectedToken { id: 111, text: "o".to_string(), x: -0.2, y: 0.2, query: false },
            ProjectedToken { id: 60, text: "<".to_string(), x: -0.6, y: -0.4, query: false },
        ];
        let mut explanation = Explanation {
            model: ModelSummary { n_layer, n_head, n_embd: 32, block_size: 64, vocab_size: 128 },
            tokens,
            next_token,
            attention: Attention { probs },
            logit_lens: LogitLens { layers },
            sampling: Some(SamplingView {
                temperature: 0.8,
                top_k: Some(3),
                top_p: None,
                repetition_penalty: 1.0,
                seed: 7,
                steps,
            }),
            embeddings: Some(EmbeddingView { queries, pca, explained_variance: [0.6, 0.25] }),
            head_roles: Some(head_roles(n_layer, n_head)),
            features: Some(features(t)),
            attribution: Some(attribution(t, n_layer, n_head)),
            ablation: Some(ablation(t, n_layer, n_head)),
            patching: Some(patching(prompt, n_layer, n_head)),
            notice: Vec::new(),
        };
        explanation.notice = what_to_notice(&explanation);
        explanation
    }

    /// Signed values per (layer, head) that differ from cell to cell.
    fn per_head(n_layer: usize, n_head: usize, scale: f32) -> Vec<Vec<f32>> {
        (0..n_layer)
            .map(|l| (0..n_head).map(|h| scale * ((l * 7 + h * 3) % 5) as f32 - scale * 1.5).collect())
            .collect()
    }

    fn e() -> TokenText {
        TokenText { id: 0, text: "e".to_string() }
    }

    fn sweep(n_layer: usize, n_head: usize, scale: f32, first: Component) -> ComponentSweep {
        ComponentSweep {
            heads: per_head(n_layer, n_head, scale),
            mlp: (0..n_layer).map(|l| scale * (l as f32 - 0.5)).collect(),
            top: vec![ComponentValue { component: first, value: -2.0 * scale }],
        }
    }

    fn attribution(t: usize, n_layer: usize, n_head: usize) -> Attribution {
        Attribution {
            position: t.saturating_sub(1),
            target: e(),
            versus: None,
            total: 3.5,
            embed: 0.4,
            heads: per_head(n_layer, n_head, 0.8),
            attn_bias: vec![0.05; n_layer],
            mlp: (0..n_layer).map(|l| 1.0 - l as f32).collect(),
            ln_final_bias: -0.1,
            top: vec![
                ComponentValue { component: Component::Head { layer: n_layer - 1, head: 0 }, value: 1.6 },
                ComponentValue { component: Component::Mlp { layer: 0 }, value: 1.0 },
            ],
        }
    }

    fn ablation(t: usize, n_layer: usize, n_head: usize) -> Ablation {
        let head = Component::Head { layer: 0, head: n_head - 1 };
        Ablation {
            position: t.saturating_sub(1),
            target: e(),
            clean_log_prob: -0.7,
            zero: sweep(n_layer, n_head, 0.5, Component::Mlp { layer: 0 }),
            mean: Some(sweep(n_layer, n_head, 0.3, head)),
            reference_tokens: Some(120),
            data: Some(DataAblation {
                tokens: 200,
                clean_loss: 2.1,
                zero: sweep(n_layer, n_head, 0.2, head),
                mean: None,
            }),
            seconds: 0.25,
        }
    }

    fn patching(prompt: &str, n_layer: usize, n_head: usize) -> Patching {
        let t = prompt.chars().count();
        Patching {
            corrupted_tokens: prompt
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i == 1 {
                        TokenText { id: 120, text: "x".to_string() }
                    } else {
                        TokenText { id: c as u32, text: c.to_string() }
                    }
                })
                .collect(),
            position: t.saturating_sub(1),
            target: e(),
            versus: TokenText { id: 1, text: " ".to_string() },
            clean_diff: 2.0,
            corrupted_diff: -1.0,
            resid: (0..n_layer)
                .map(|l| (0..t).map(|p| if p == 1 { 1.0 - 0.3 * l as f32 } else { 0.1 * l as f32 }).collect())
                .collect(),
            heads: per_head(n_layer, n_head, 0.25),
            top: vec![ComponentValue { component: Component::Head { layer: n_layer - 1, head: 0 }, value: 0.6 }],
        }
    }

    /// Two features per position, each with one context.
    pub fn features(t: usize) -> lushan_model::features::FeatureView {
        use lushan_model::features::{Context, FeatureActivation, FeatureView, TokenFeatures};
        let context = Context { activation: 2.0, before: "O Rome".into(), token: "o".into(), after: ", Rom".into() };
        let activation =
            |feature, activation| FeatureActivation { feature, activation, contexts: vec![context.clone()] };
        FeatureView {
            layer: 1,
            n_features: 64,
            summary: serde_json::json!({"report": {"mse": 0.01, "fvu": 0.1, "l0": 3.0}}),
            positions: (0..t)
                .map(|position| TokenFeatures { position, l0: 2, top: vec![activation(7, 1.5), activation(12, 0.5)] })
                .collect(),
        }
    }

    /// Head roles where head (l, h) scores highest for role (l + h) % 3.
    pub fn head_roles(n_layer: usize, n_head: usize) -> lushan_model::inspect::HeadRoles {
        use lushan_model::inspect::{HeadDetection, HeadRole, HeadRoles};
        // Head (l, h) scores highest for role (l + h) % 3.
        let scores = |role: usize| -> Vec<Vec<f32>> {
            (0..n_layer).map(|l| (0..n_head).map(|h| if (l + h) % 3 == role { 0.9 } else { 0.1 }).collect()).collect()
        };
        let mut roles = HeadRoles {
            tokens: vec![1, 2, 3, 1, 2, 3],
            seed: 1,
            detection: HeadDetection::default(),
            previous_token: scores(0),
            duplicate_token: scores(1),
            induction: scores(2),
            strongest: Vec::new(),
        };
        roles.strongest = HeadRole::ALL.iter().flat_map(|&role| roles.ranked(role).into_iter().take(3)).collect();
        roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_show_invisible_characters() {
        assert_eq!(visible(" the\n"), "␣the↵");
        assert_eq!(visible("a\tb\u{1}"), "a⇥b\\u{1}");
        assert_eq!(visible(""), "∅");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(label(" Romeo and Juliet", 6), "␣Rome…");
    }
}
