//! A weight matrix in any of the storage types inference reads — `f32`, `bf16`, `f16`, Q8_0, Q4_0 — and the
//! one linear layer over it, `out = inp·Wᵀ + b` with `W` stored `(OC, C)` by rows as in `torch.nn.Linear`.
//!
//! Which kernel runs depends on the number of input rows:
//! - a few rows (decoding): the weights are streamed once and consumed in their own type — 16-bit floats
//!   widened in registers ([`crate::gemv`]), quantized blocks by integer dot products against the inputs
//!   quantized to Q8_0 ([`crate::quant::dot`]), as llama.cpp's CPU backend does;
//! - many rows (a prompt, an evaluation window): the product is compute-bound. Where AVX-512 is compiled
//!   in, `f32` and 16-bit weights take register tiles that read the weights in place ([`crate::dot_gemm`]),
//!   with the matrix-vector kernel's arithmetic: a row's result is the same bits at every row count, so a
//!   prompt's row equals what decoding it alone gives and a batched sweep's row equals its own pass.
//!   Quantized weights keep the integer products where AVX-512 VNNI is compiled in ([`INTEGER_MANY_ROWS`]):
//!   eight weight rows unpacked once per call × eight input rows in registers, 128 products per pair of
//!   `vpdpbusd` (the inputs are then rounded to Q8_0 as in decoding). Otherwise `f32` weights take the
//!   packed GEMM ([`crate::matmul::forward`]), and 16-bit and quantized ones tiles of [`TILE_ROWS`] weight
//!   rows widened to `f32` and handed to that GEMM: the widening is read once per tile and amortised over
//!   every input row.
//!
//! Training passes take the packed GEMM for `f32` weights at every row count ([`forward_in`]): at a
//! training batch's hundreds to thousands of rows packing is amortised and it is the faster kernel.

use crate::packed_gemm::Precision;
use crate::quant::packed_q4::{self, PackedQ4_0};
use crate::quant::{BLOCK, BlockQ8_0, dequantize_q8_0, dot};
use crate::{amx, dot_gemm, gemv, matmul};
use half::{bf16, f16};
use rayon::prelude::*;
use std::ops::Range;

/// Whether quantized weights take the integer products at every row count (AVX-512 VNNI compiled in), not
/// only up to [`gemv::MAX_ROWS`]: without VNNI, `maddubs`/`madd` make the integer products no faster per
/// input row than at batch 1, and the widened tiles win on prompts.
pub const INTEGER_MANY_ROWS: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni",
    target_feature = "fma"
));

/// Weight rows widened per GEMM tile: 128 rows of C = 768 are 384 KiB, which stay in a core's L2 cache
/// while the GEMM packs them.
pub const TILE_ROWS: usize = 128;

/// A borrowed `(OC, C)` weight matrix in one storage type. Quantized matrices hold `OC·C/32` blocks, row
/// `o` being blocks `o·C/32 .. (o+1)·C/32`.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    /// Repacked sixteen rows at a time ([`packed_q4`]).
    Q4_0(&'a PackedQ4_0),
}

impl Weights<'_> {
    /// Rows `rows` of the matrix (rows of `c` weights) widened to `f32` into `out` (`rows.len()·c` values).
    ///
    /// # Panics
    /// When the rows lie outside the matrix or `out` has the wrong length (caller bugs).
    pub fn rows_to_f32(&self, c: usize, rows: Range<usize>, out: &mut [f32]) {
        let (start, end) = (rows.start * c, rows.end * c);
        assert_eq!(out.len(), end - start, "weights: output length for rows {rows:?}");
        match self {
            Weights::F32(w) => out.copy_from_slice(&w[start..end]),
            Weights::Bf16(w) => out.iter_mut().zip(&w[start..end]).for_each(|(o, v)| *o = v.to_f32()),
            Weights::F16(w) => out.iter_mut().zip(&w[start..end]).for_each(|(o, v)| *o = v.to_f32()),
            Weights::Q8_0(w) => dequantize_q8_0(&w[start / BLOCK..end / BLOCK], out),
            Weights::Q4_0(w) => {
                assert_eq!(w.cols(), c, "weights: rows of {c}");
                w.rows_to_f32(rows, out)
            }
        }
    }

    /// Number of stored elements, in weights (blocks count 32 each).
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::Bf16(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::Q8_0(w) => w.len() * BLOCK,
            Weights::Q4_0(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, out: &[f32], inp: &[f32], bias: Option<&[f32]>, c: usize, oc: usize) -> usize {
        assert!(c > 0, "weights: C = 0");
        let m = inp.len() / c;
        assert_eq!(inp.len(), m * c, "weights: input is not whole rows of C");
        assert_eq!(out.len(), m * oc, "weights: output shape");
        assert_eq!(self.len(), oc * c, "weights: matrix shape ({oc}, {c})");
        assert!(bias.is_none_or(|b| b.len() == oc), "weights: bias length");
        m
    }
}

/// `out = inp·Wᵀ (+ bias)` for any number of rows, for inference: `out` (M, OC), `inp` (M, C).
///
/// bf16, f16 and quantized weights with at least [`amx::prompts::MIN_ROWS`] rows go to the AMX tiles where the CPU has them
/// (inputs rounded to bf16). Otherwise up to [`gemv::MAX_ROWS`] rows take the few-rows kernels; beyond, `f32` and 16-bit weights the tiles of
/// [`dot_gemm`] where they are compiled in (else the packed GEMM, or widened tiles into it), quantized
/// weights the integer products where [`INTEGER_MANY_ROWS`], else widened tiles.
pub fn forward(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    let m = w.check(out, inp, bias, c, oc);
    match w {
        // bf16, f16 and quantized prompts on AMX: inputs (and converted weights) rounded to bf16, so not
        // bit-identical to `forward_rows`.
        _ if amx::prompts::takes(w, m, c) => amx::prompts::forward(out, inp, w, bias, c, oc),
        // `forward_rows` takes the few-rows kernels, and more rows of float weights to dot_gemm's tiles.
        _ if m <= gemv::MAX_ROWS => forward_rows(out, inp, w, bias, c, oc),
        Weights::F32(_) | Weights::Bf16(_) | Weights::F16(_) if dot_gemm::TILED => {
            forward_rows(out, inp, w, bias, c, oc)
        }
        Weights::F32(w) => matmul::forward(out, inp, w, bias, c, oc),
        Weights::Q8_0(w) if INTEGER_MANY_ROWS => dot::matmul(out, inp, w, bias, c, oc),
        Weights::Q4_0(w) if INTEGER_MANY_ROWS => packed_q4::matmul(out, inp, w, bias, c, oc),
        _ => forward_tiled(out, inp, w, bias, c, oc),
    }
}

/// `out = inp·Wᵀ (+ bias)` for a training pass: `f32` weights through the packed GEMM with its products in
/// `precision` ([`matmul::forward_in`]) at every row count; other weight types compute as [`forward`] does.
pub fn forward_in(
    precision: Precision,
    out: &mut [f32],
    inp: &[f32],
    w: Weights<'_>,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    match w {
        Weights::F32(weight) => {
            w.check(out, inp, bias, c, oc);
            matmul::forward_in(precision, out, inp, weight, bias, c, oc)
        }
        _ => forward(out, inp, w, bias, c, oc),
    }
}

/// [`forward_in`] in `f32`, in the shape of [`forward`]: the output layer's projection in a training pass.
pub fn forward_gemm(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    forward_in(Precision::F32, out, inp, w, bias, c, oc)
}

/// `out = inp·Wᵀ (+ bias)` for any number of rows, each computed exactly as it would be alone (batched
/// decoding of several sequences reads the weights once for all of them; a batched sweep of edited forward
/// passes gets each row's logits bit-identical to its own pass). Rows go [`gemv::MAX_BATCH`] at a time through
/// the few-rows kernels, except that with AVX-512 compiled in more than [`gemv::MAX_ROWS`] rows of `f32` or
/// 16-bit weights take the tiles of [`dot_gemm`], whose rows are those of [`gemv`] bit for bit.
pub fn forward_rows(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    let m = w.check(out, inp, bias, c, oc);
    if dot_gemm::TILED && m > gemv::MAX_ROWS {
        match w {
            Weights::F32(w) => return dot_gemm::forward(out, inp, w, bias, c, oc),
            Weights::Bf16(w) => return dot_gemm::forward(out, inp, w, bias, c, oc),
            Weights::F16(w) => return dot_gemm::forward(out, inp, w, bias, c, oc),
            Weights::Q8_0(_) | Weights::Q4_0(_) => {}
        }
    }
    let per_call = gemv::MAX_BATCH;
    for (out, inp) in out.chunks_mut(per_call * oc).zip(inp.chunks(per_call * c)) {
        rows_at_most_max_batch(out, inp, w, bias, c, oc);
    }
}

fn rows_at_most_max_batch(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    match w {
        Weights::F32(w) => gemv::forward(out, inp, w, bias, c, oc),
        Weights::Bf16(w) => gemv::forward(out, inp, w, bias, c, oc),
        Weights::F16(w) => gemv::forward(out, inp, w, bias, c, oc),
        Weights::Q8_0(w) => dot::matmul(out, inp, w, bias, c, oc),
        Weights::Q4_0(w) => packed_q4::matmul(out, inp, w, bias, c, oc),
    }
}

/// Many rows: tiles of [`TILE_ROWS`] output channels, each widened to `f32` and multiplied by the whole
/// input with the serial GEMM, the tiles split over the threads; then each tile's columns are copied into
/// place with the bias. `out` (M, OC), `inp` (M, C).
pub fn forward_tiled(out: &mut [f32], inp: &[f32], w: Weights<'_>, bias: Option<&[f32]>, c: usize, oc: usize) {
    let m = w.check(out, inp, bias, c, oc);
    let tiles: Vec<Vec<f32>> = (0..oc.div_ceil(TILE_ROWS))
        .into_par_iter()
        .map(|t| {
            let rows = t * TILE_ROWS..((t + 1) * TILE_ROWS).min(oc);
            let n = rows.len();
            let mut wide = vec![0.0f32; n * c];
            w.rows_to_f32(c, rows, &mut wide);
            let mut part = vec![0.0f32; m * n];
            // part (M×n) = inp (M×C) · wideᵀ (C×n); wideᵀ[k][j] = wide[j·C + k] → strides (1, C).
            matmul::gemm_serial((m, c, n), 1.0, inp, (c, 1), &wide, (1, c), 0.0, &mut part, (n, 1));
            part
        })
        .collect();
    out.par_chunks_mut(oc).enumerate().for_each(|(r, row)| {
        for (t, part) in tiles.iter().enumerate() {
            let j0 = t * TILE_ROWS;
            let n = part.len() / m;
            let dst = &mut row[j0..j0 + n];
            dst.copy_from_slice(&part[r * n..(r + 1) * n]);
            if let Some(b) = bias {
                dst.iter_mut().zip(&b[j0..j0 + n]).for_each(|(d, b)| *d += b);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::quant::quantize_q8_0;
    use crate::rng::Rng;

    /// Every type against the reference the issue names: dequantize the matrix, then the `f32` product.
    /// 16-bit floats widen exactly, so they match to rounding of the summation order; quantized types also
    /// quantize the activations to Q8_0 on the few-rows path, which bounds their agreement by that rounding.
    #[test]
    fn every_type_agrees_with_dequantize_then_f32_at_every_row_count() {
        let mut rng = Rng::new(21);
        let (c, oc) = (96, 300);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let b = random_f32(&mut rng, oc, 1.0);
        let bf: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let hf: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mut q8 = vec![BlockQ8_0::default(); oc * c / BLOCK];
        quantize_q8_0(&w, &mut q8);
        let q4 = PackedQ4_0::quantize(&w, c);
        for m in [1, 2, 4, 5, 33, 70] {
            let x = random_f32(&mut rng, m * c, 1.0);
            for (name, weights, activation_tol) in [
                ("bf16", Weights::Bf16(&bf), 0.05),
                ("f16", Weights::F16(&hf), 0.05),
                ("q8_0", Weights::Q8_0(&q8), 0.05),
                ("q4_0", Weights::Q4_0(&q4), 0.05),
            ] {
                let mut wide = vec![0.0; oc * c];
                weights.rows_to_f32(c, 0..oc, &mut wide);
                let mut want = vec![0.0; m * oc];
                matmul::forward_naive(&mut want, &x, &wide, Some(&b), c, oc);
                let mut got = vec![f32::NAN; m * oc];
                forward(&mut got, &x, weights, Some(&b), c, oc);
                // A quantized type's integer products (few rows, or any number where INTEGER_MANY_ROWS):
                // activations rounded to 8 bits (relative error ≤ 1/254 per block), so the tolerance scales
                // with the size of the dot products (≈ √C).
                // On AMX (enough rows) activations rounded to bf16 (relative error ≤ 2⁻⁹ each), and Q8_0/Q4_0
                // weights' d·q too.
                let rounded = match weights {
                    Weights::Bf16(_) | Weights::F16(_) => amx::prompts::takes(weights, m, c),
                    Weights::F32(_) => false,
                    Weights::Q8_0(_) | Weights::Q4_0(_) => {
                        amx::prompts::takes(weights, m, c) || m <= gemv::MAX_ROWS || INTEGER_MANY_ROWS
                    }
                };
                let tol = if rounded { activation_tol } else { 0.0 } + 1e-4;
                assert_close(&format!("{name} m={m}"), &got, &to_f64(&want), tol, tol);
            }
        }
    }

    /// With the integer products at every row count, a prompt's rows get exactly the results each row gets
    /// alone (as in decoding); otherwise the widened tiles differ from them by the activations' rounding.
    #[test]
    fn many_quantized_rows_equal_rows_alone_where_the_integer_path_takes_them() {
        let mut rng = Rng::new(23);
        let (c, oc, m) = (64, 70, 40);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let mut q8 = vec![BlockQ8_0::default(); oc * c / BLOCK];
        quantize_q8_0(&w, &mut q8);
        let q4 = PackedQ4_0::quantize(&w, c);
        let x = random_f32(&mut rng, m * c, 1.0);
        for (name, weights) in [("q8_0", Weights::Q8_0(&q8)), ("q4_0", Weights::Q4_0(&q4))] {
            let mut many = vec![0.0; m * oc];
            forward(&mut many, &x, weights, None, c, oc);
            let mut tiled = vec![0.0; m * oc];
            forward_tiled(&mut tiled, &x, weights, None, c, oc);
            // On AMX, `forward` rounds a prompt's inputs and weights to bf16; `forward_rows` keeps rows exact.
            let amx = amx::prompts::takes(weights, m, c);
            let mut exact = vec![0.0; m * oc];
            forward_rows(&mut exact, &x, weights, None, c, oc);
            for r in 0..m {
                let mut alone = vec![0.0; oc];
                forward(&mut alone, &x[r * c..(r + 1) * c], weights, None, c, oc);
                let row = &many[r * oc..(r + 1) * oc];
                if amx {
                    assert_eq!(&exact[r * oc..(r + 1) * oc], &alone[..], "{name} row {r} (forward_rows)");
                    assert_close(&format!("{name} row {r} (AMX)"), row, &to_f64(&alone), 0.05, 0.05);
                    continue;
                }
                let want = if INTEGER_MANY_ROWS { &alone[..] } else { &tiled[r * oc..(r + 1) * oc] };
                assert_eq!(row, want, "{name} row {r}");
            }
        }
    }

    #[test]
    fn batched_rows_equal_rows_alone_for_every_type() {
        let mut rng = Rng::new(22);
        let (c, oc, m) = (64, 130, 9);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let mut q8 = vec![BlockQ8_0::default(); oc * c / BLOCK];
        quantize_q8_0(&w, &mut q8);
        let q4 = PackedQ4_0::quantize(&w, c);
        let bf: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x = random_f32(&mut rng, m * c, 1.0);
        for (name, weights) in [
            ("f32", Weights::F32(&w)),
            ("bf16", Weights::Bf16(&bf)),
            ("q8_0", Weights::Q8_0(&q8)),
            ("q4_0", Weights::Q4_0(&q4)),
        ] {
            let mut together = vec![0.0; m * oc];
            forward_rows(&mut together, &x, weights, None, c, oc);
            for r in 0..m {
                let mut alone = vec![0.0; oc];
                forward(&mut alone, &x[r * c..(r + 1) * c], weights, None, c, oc);
                assert_eq!(alone, together[r * oc..(r + 1) * oc], "{name} row {r}");
            }
        }
    }
}
