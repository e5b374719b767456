//! `out = inp·Wᵀ + b` over bf16 weights `(OC, C)` read in place by AMX tiles: the prompt's products of a model
//! loaded with `--dtype bf16` on a CPU with AMX.
//!
//! The weights are the tiles' A operand as they lie (16 weight rows × 32 bf16, rows `2·C` bytes apart), so
//! nothing the size of the model is copied; the input rows (a few dozen) are rounded to bf16 and packed as the
//! B operand, pairs of `k` for 32 rows side by side. Each call of [`super::block`] gives a 32 (weights) × 32
//! (inputs) block of `out` transposed.
//!
//! Arithmetic: the inputs are rounded to bf16, as llama.cpp's BF16 products and PyTorch's bf16 autocast round
//! them; products are exact and summed in f32 by the tiles. So a prompt row here differs from the same row
//! decoded alone by the matrix-vector kernel (which keeps the input in f32) by that rounding — within bf16's
//! relative error, not bit for bit ([`crate::weights::forward_rows`] keeps the bit-identical path).

use super::{BLOCK, K_STEP, Tiles, WORD_STEP, available, block};
use crate::packed_gemm::pair;
use half::bf16;
use rayon::prelude::*;

/// Fewest input rows worth a tile: below, most of each 32-row block would be padding.
pub const MIN_ROWS: usize = 16;

/// Whether [`forward`] takes `m` rows of length `c` here: AMX usable, enough rows, and rows a whole number of
/// tile steps (the weights are read in place, so they cannot be padded).
pub fn takes(m: usize, c: usize) -> bool {
    m >= MIN_ROWS && c > 0 && c.is_multiple_of(K_STEP) && available()
}

/// `out = inp·Wᵀ (+ bias)`.
///
/// # Shapes
/// `out`: (M, OC), `inp`: (M, C), `weight`: (OC, C), `bias`: (OC).
///
/// # Panics
/// Unless [`takes`]`(M, C)`, or on extents that do not match these shapes.
pub fn forward(out: &mut [f32], inp: &[f32], weight: &[bf16], bias: Option<&[f32]>, c: usize, oc: usize) {
    assert!(c > 0 && inp.len().is_multiple_of(c), "amx bf16: input length {} is not a multiple of C = {c}", inp.len());
    let m = inp.len() / c;
    assert!(takes(m, c), "amx bf16: {m} rows of {c} are not for the tiles");
    assert_eq!(out.len(), m * oc, "amx bf16: output extent");
    assert_eq!(weight.len(), oc * c, "amx bf16: weight extent");
    assert!(bias.is_none_or(|b| b.len() == oc), "amx bf16: bias extent");
    if oc == 0 {
        return;
    }
    // Inputs: panels of 32 rows (zero past M), each `C/2` steps of 32 words.
    let panel_words = BLOCK * c / 2;
    let mut panels = vec![0u32; m.div_ceil(BLOCK) * panel_words];
    panels.par_chunks_mut(panel_words).enumerate().for_each(|(p, panel)| {
        for (r, row) in inp.chunks_exact(c).skip(p * BLOCK).take(BLOCK).enumerate() {
            for (s, pr) in row.chunks_exact(2).enumerate() {
                panel[s * BLOCK + r] = pair(pr[0], pr[1]);
            }
        }
    });
    let steps = c / K_STEP;
    let row_bytes = 2 * c;
    let weight_tiles = Tiles { half: 16 * row_bytes, row: row_bytes, step: 2 * K_STEP };
    let input_tiles = Tiles { half: 64, row: BLOCK * 4, step: WORD_STEP * BLOCK * 4 };
    let weight_bytes: &[u8] = bytemuck::cast_slice(weight);
    // Each task: 32 weight rows by every input panel, its block of `out` transposed into a (M, 32) part.
    let parts: Vec<Vec<f32>> = (0..oc.div_ceil(BLOCK))
        .into_par_iter()
        .map(|wb| {
            let rows = BLOCK.min(oc - wb * BLOCK);
            // The last block of a matrix whose OC is not a multiple of 32 is copied, padded with zero rows:
            // the tiles read 32 rows.
            let padded: Vec<u8>;
            let w = if rows == BLOCK {
                &weight_bytes[wb * BLOCK * row_bytes..][..BLOCK * row_bytes]
            } else {
                let mut copy = vec![0u8; BLOCK * row_bytes];
                copy[..rows * row_bytes].copy_from_slice(&weight_bytes[wb * BLOCK * row_bytes..]);
                padded = copy;
                &padded
            };
            let mut part = vec![0.0f32; m * BLOCK];
            let mut tile = [0.0f32; BLOCK * BLOCK];
            for (p, panel) in panels.chunks_exact(panel_words).enumerate() {
                block(&mut tile, w, weight_tiles, bytemuck::cast_slice(panel), input_tiles, steps);
                // tile[i·32 + j] = Σ_k W[wb·32 + i][k] · inp[p·32 + j][k]
                for j in 0..BLOCK.min(m - p * BLOCK) {
                    let dst = &mut part[(p * BLOCK + j) * BLOCK..][..BLOCK];
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = tile[i * BLOCK + j];
                    }
                }
            }
            part
        })
        .collect();
    out.par_chunks_mut(oc).enumerate().for_each(|(r, row)| {
        for (wb, part) in parts.iter().enumerate() {
            let j0 = wb * BLOCK;
            let n = BLOCK.min(oc - j0);
            let dst = &mut row[j0..j0 + n];
            dst.copy_from_slice(&part[r * BLOCK..][..n]);
            if let Some(b) = bias {
                dst.iter_mut().zip(&b[j0..j0 + n]).for_each(|(d, b)| *d += b);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::random_f32;
    use crate::rng::Rng;

    /// f64 products of the bf16 weights and the inputs rounded to bf16, plus the bias.
    fn reference(inp: &[f32], w: &[bf16], bias: &[f32], c: usize, oc: usize) -> Vec<f64> {
        let see = |x: f32| bf16::from_f32(x).to_f64();
        inp.chunks_exact(c)
            .flat_map(|row| {
                (0..oc).map(move |o| {
                    let dot: f64 = row.iter().zip(&w[o * c..][..c]).map(|(&x, wv)| see(x) * wv.to_f64()).sum();
                    dot + bias[o] as f64
                })
            })
            .collect()
    }

    #[test]
    fn tiles_over_weights_in_place_match_the_bf16_reference() {
        if !available() {
            eprintln!("skipped: this CPU (or OS) gives no AMX BF16");
            assert!(!takes(64, 768));
            return;
        }
        let mut rng = Rng::new(11);
        // Ragged M (partial input panels) and OC (a padded last weight block), C of 1 and of 24 tile steps.
        for (m, c, oc) in [(16, 32, 1), (33, 64, 70), (64, 768, 96), (70, 96, 33), (17, 3072, 40)] {
            assert!(takes(m, c));
            let inp = random_f32(&mut rng, m * c, 1.0);
            let w: Vec<bf16> = random_f32(&mut rng, oc * c, 1.0).into_iter().map(bf16::from_f32).collect();
            let bias = random_f32(&mut rng, oc, 1.0);
            let mut out = vec![f32::NAN; m * oc];
            forward(&mut out, &inp, &w, Some(&bias), c, oc);
            let want = reference(&inp, &w, &bias, c, oc);
            // f32 sums of C products of size ≤ 1.
            let tol = 4.0 * c as f64 * f32::EPSILON as f64 + 1e-6;
            for (idx, (&g, &r)) in out.iter().zip(&want).enumerate() {
                assert!((g as f64 - r).abs() <= tol * (1.0 + r.abs()), "m{m} c{c} oc{oc} [{idx}]: {g} vs {r}");
            }
        }
    }

    #[test]
    fn shapes_the_tiles_cannot_read_in_place_are_not_taken() {
        assert!(!takes(64, 48), "C not a multiple of 32");
        assert!(!takes(MIN_ROWS - 1, 768), "too few rows");
        assert!(!takes(64, 0));
    }
}
