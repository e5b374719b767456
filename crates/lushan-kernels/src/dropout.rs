//! Inverted dropout: keep each element with probability `1 - p` and scale kept ones by `1 / (1 - p)`.
//!
//! The mask is generated in fixed-size chunks, each from its own generator derived from `seed` and the chunk
//! index, so it is identical for any thread count and can be regenerated from the seed alone.

use crate::rng::Rng;
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// Forward. Writes the keep-mask (1 = kept) so backward reuses it.
///
/// # Shapes
/// `out`, `mask`, `inp`: any length, equal. `p` in `[0, 1)`.
pub fn forward(out: &mut [f32], mask: &mut [u8], inp: &[f32], p: f32, seed: u64) {
    debug_assert!((0.0..1.0).contains(&p));
    debug_assert_eq!(out.len(), inp.len());
    debug_assert_eq!(mask.len(), inp.len());
    let scale = 1.0 / (1.0 - p);
    out.par_chunks_mut(CHUNK).zip(mask.par_chunks_mut(CHUNK)).zip(inp.par_chunks(CHUNK)).enumerate().for_each(
        |(chunk, ((out, mask), inp))| {
            let mut rng = Rng::derive(seed, chunk as u64);
            for ((o, m), &x) in out.iter_mut().zip(mask).zip(inp) {
                let keep = rng.next_f32() >= p;
                *m = keep as u8;
                *o = if keep { x * scale } else { 0.0 };
            }
        },
    );
}

/// Backward, **accumulating**: forward was `out = x·mask/(1-p)`, so `dinp += dout·mask/(1-p)`.
///
/// # Shapes
/// `dinp`, `dout`, `mask`: any length, equal.
pub fn backward(dinp: &mut [f32], dout: &[f32], mask: &[u8], p: f32) {
    let scale = 1.0 / (1.0 - p);
    dinp.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)).zip(mask.par_chunks(CHUNK)).for_each(|((d, g), m)| {
        for ((d, &g), &m) in d.iter_mut().zip(g).zip(m) {
            if m != 0 {
                *d += g * scale;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;

    #[test]
    fn keeps_the_expected_fraction_scales_and_reuses_the_mask() {
        let n = 100_000;
        let p = 0.3;
        let inp = vec![1.0f32; n];
        let (mut out, mut mask) = (vec![0.0; n], vec![0u8; n]);
        forward(&mut out, &mut mask, &inp, p, 99);
        let kept = mask.iter().filter(|&&m| m == 1).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
        for (&o, &m) in out.iter().zip(&mask) {
            assert_eq!(o, if m == 1 { 1.0 / 0.7 } else { 0.0 });
        }
        // Same seed, same mask; a different seed, a different one.
        let (mut out2, mut mask2) = (vec![0.0; n], vec![0u8; n]);
        forward(&mut out2, &mut mask2, &inp, p, 99);
        assert_eq!(mask, mask2);
        forward(&mut out2, &mut mask2, &inp, p, 100);
        assert_ne!(mask, mask2);

        // With the mask fixed the op is linear, so the finite-difference gradient is exact.
        let dout = vec![0.5f32; n];
        let mut dinp = vec![1.0; n];
        backward(&mut dinp, &dout, &mask, p);
        let want: Vec<f64> = mask.iter().map(|&m| 1.0 + if m == 1 { 0.5 / 0.7 } else { 0.0 }).collect();
        assert_close("dropout dinp", &dinp, &want, 1e-6, 1e-6);
    }
}
