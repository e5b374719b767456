//! The token embedding (`wte`) seen from a few tokens: their nearest tokens by cosine similarity, and the
//! queries with their neighbours on the plane of their first two principal components.

use super::pca;
use super::ranking;
use super::text::{TokenTextFn, token};
use super::{EmbeddingView, Neighbours, ProjectedToken, Similar};
use crate::gpt::Gpt;
use crate::params::ParamKind;
use rayon::prelude::*;

/// Neighbours of each id in `queries` (ids already checked against the vocabulary), and the projection of
/// the queries and their neighbours.
pub(super) fn embedding_view(
    model: &Gpt,
    queries: &[u32],
    neighbor_count: usize,
    token_text: TokenTextFn,
) -> EmbeddingView {
    let c = model.config.n_embd;
    let wte = &model.params[model.layout.range(ParamKind::Wte)];
    let row = |id: u32| &wte[id as usize * c..(id as usize + 1) * c];
    let norms: Vec<f64> = wte.par_chunks_exact(c).map(|r| dot(r, r).sqrt()).collect();

    let nearest: Vec<Vec<ranking::Ranked>> = queries
        .iter()
        .map(|&query| {
            let (q, q_norm) = (row(query), norms[query as usize]);
            let cosines: Vec<f64> = wte
                .par_chunks_exact(c)
                .zip(&norms)
                // A zero vector points nowhere: similarity 0 to everything.
                .map(|(r, &norm)| if norm == 0.0 || q_norm == 0.0 { 0.0 } else { dot(q, r) / (q_norm * norm) })
                .collect();
            ranking::top_k(&cosines, neighbor_count, Some(query))
        })
        .collect();

    // Queries first, then each query's neighbours in order, every token once.
    let mut projected_ids: Vec<(u32, bool)> = Vec::new();
    for (id, is_query) in queries.iter().map(|&q| (q, true)).chain(nearest.iter().flatten().map(|n| (n.id, false))) {
        if !projected_ids.iter().any(|&(seen, _)| seen == id) {
            projected_ids.push((id, is_query));
        }
    }
    let points: Vec<Vec<f64>> =
        projected_ids.iter().map(|&(id, _)| row(id).iter().map(|&x| x as f64).collect()).collect();
    let projection = pca::project_2d(&points);

    EmbeddingView {
        queries: queries
            .iter()
            .zip(&nearest)
            .map(|(&query, nearest)| Neighbours {
                token: token(query, token_text),
                nearest: nearest
                    .iter()
                    .map(|n| Similar { id: n.id, text: token_text(n.id), cosine: n.value as f32 })
                    .collect(),
            })
            .collect(),
        pca: projected_ids
            .iter()
            .zip(&projection.coords)
            .map(|(&(id, query), &[x, y])| ProjectedToken { id, text: token_text(id), x: x as f32, y: y as f32, query })
            .collect(),
        explained_variance: projection.explained_variance.map(|v| v as f32),
    }
}

/// Dot product accumulated in f64: cosines of nearly parallel embeddings differ in the last f32 digits.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}
