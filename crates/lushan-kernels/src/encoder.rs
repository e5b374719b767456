//! Token + position embedding: `out[i] = wte[token[i]] + wpe[pos0 + i mod T]`.

use rayon::prelude::*;

/// Forward: looks up token and position embeddings and adds them.
///
/// Rows are grouped in sequences of `t` positions; row `i` has position `pos0 + i % t`. Training uses
/// `pos0 = 0`; cached decoding feeds a chunk of a sequence that starts at position `pos0`.
/// Token ids must be `< V` (the model validates them once, on entry).
///
/// # Shapes
/// `out`: (N, C), `tokens`: (N) with N a multiple of `t`, `wte`: (V, C), `wpe`: (maxT, C), `pos0 + t ≤ maxT`.
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, pos0: usize, c: usize) {
    debug_assert_eq!(out.len(), tokens.len() * c);
    debug_assert!(tokens.len().is_multiple_of(t));
    debug_assert!((pos0 + t) * c <= wpe.len());
    out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().for_each(|(i, (row, &tok))| {
        let tok_row = &wte[tok as usize * c..][..c];
        let pos_row = &wpe[(pos0 + i % t) * c..][..c];
        for ((o, &a), &b) in row.iter_mut().zip(tok_row).zip(pos_row) {
            *o = a + b;
        }
    });
}

/// Backward, **accumulating**: forward was `out[i] = wte[tok[i]] + wpe[i mod t]`, so
/// `dwte[tok[i]] += dout[i]` and `dwpe[i mod t] += dout[i]`. `dwpe` is `None` when positions are frozen
/// (sinusoidal encoding). Serial: rows scatter into shared token rows, and the work is tiny.
///
/// # Shapes
/// `dwte`: (V, C), `dwpe`: (maxT, C), `dout`: (N, C), `tokens`: (N).
pub fn backward(dwte: &mut [f32], mut dwpe: Option<&mut [f32]>, dout: &[f32], tokens: &[u32], t: usize, c: usize) {
    debug_assert_eq!(dout.len(), tokens.len() * c);
    for (i, (row, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        for (d, &g) in dwte[tok as usize * c..][..c].iter_mut().zip(row) {
            *d += g;
        }
        if let Some(dwpe) = dwpe.as_deref_mut() {
            for (d, &g) in dwpe[(i % t) * c..][..c].iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

/// The fixed sinusoidal table of "Attention Is All You Need":
/// `pe[p, 2i] = sin(p / 10000^(2i/C))`, `pe[p, 2i+1] = cos(p / 10000^(2i/C))`.
///
/// # Shapes
/// `out`: (maxT, C).
pub fn sinusoidal_table(out: &mut [f32], c: usize) {
    for (p, row) in out.chunks_exact_mut(c).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let pair = (j / 2) * 2;
            let angle = p as f64 / 10000f64.powf(pair as f64 / c as f64);
            *v = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn forward_adds_rows_and_backward_accumulates_the_exact_gradient() {
        let (b, t, c, v) = (2, 3, 5, 7);
        let mut rng = Rng::new(1);
        let wte = random_f32(&mut rng, v * c, 1.0);
        let wpe = random_f32(&mut rng, 4 * c, 1.0);
        let tokens: Vec<u32> = vec![1, 6, 1, 0, 3, 6];
        let mut out = vec![0.0; b * t * c];
        forward(&mut out, &tokens, &wte, &wpe, t, 0, c);
        for i in 0..b * t {
            for j in 0..c {
                let want = wte[tokens[i] as usize * c + j] + wpe[(i % t) * c + j];
                assert_eq!(out[i * c + j], want);
            }
        }
        let dout = random_f32(&mut rng, b * t * c, 1.0);
        let reference = |wte: &[f64], wpe: &[f64]| -> f64 {
            let mut s = 0.0;
            for i in 0..b * t {
                for j in 0..c {
                    s += (wte[tokens[i] as usize * c + j] + wpe[(i % t) * c + j]) * dout[i * c + j] as f64;
                }
            }
            s
        };
        let (wte64, wpe64) = (to_f64(&wte), to_f64(&wpe));
        let num_wte = numeric_grad(|x| reference(x, &wpe64), &wte64, 1e-6);
        let num_wpe = numeric_grad(|x| reference(&wte64, x), &wpe64, 1e-6);
        let mut dwte = vec![0.5; v * c];
        let mut dwpe = vec![0.5; 4 * c];
        backward(&mut dwte, Some(&mut dwpe), &dout, &tokens, t, c);
        let shift = |g: Vec<f64>| g.into_iter().map(|x| x + 0.5).collect::<Vec<_>>();
        assert_close("dwte (accumulated onto 0.5)", &dwte, &shift(num_wte), 1e-6, 1e-5);
        assert_close("dwpe (accumulated onto 0.5)", &dwpe, &shift(num_wpe), 1e-6, 1e-5);
    }

    #[test]
    fn position_offset_shifts_the_position_rows() {
        let c = 2;
        let wte = vec![0.0; 3 * c];
        let wpe: Vec<f32> = (0..8 * c).map(|x| x as f32).collect();
        let mut out = vec![0.0; c];
        forward(&mut out, &[2], &wte, &wpe, 1, 5, c);
        assert_eq!(out, vec![10.0, 11.0]);
    }

    #[test]
    fn sinusoidal_table_matches_the_formula() {
        let c = 6;
        let mut pe = vec![0.0; 10 * c];
        sinusoidal_table(&mut pe, c);
        assert_eq!(pe[0], 0.0);
        assert_eq!(pe[1], 1.0);
        let p = 7.0f64;
        assert!((pe[7 * c + 2] as f64 - (p / 10000f64.powf(2.0 / 6.0)).sin()).abs() < 1e-6);
        assert!((pe[7 * c + 5] as f64 - (p / 10000f64.powf(4.0 / 6.0)).cos()).abs() < 1e-6);
    }
}
