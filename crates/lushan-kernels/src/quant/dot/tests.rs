use super::super::packed_q4::{self, PackedQ4_0};
use super::super::{BlockQ4_0, dequantize_q4_0, dequantize_q8_0, quantize_q4_0};
use super::*;
use crate::rng::Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() - 0.5).collect()
}

type Dot<B> = fn(&[B], &[InputBlock]) -> f32;
type Dot4Rows<B> = fn([&[B]; 4], &[InputBlock], &mut [[f32; 4]]);
type Dot8Rows<B> = fn([&[B]; 8], &[InputBlock], &mut [[f32; 8]]);
/// A path's name and products.
type Path<B> = (&'static str, Dot<B>, Dot4Rows<B>, Dot8Rows<B>);

/// Every vector path compiled in for a block type, by name: its single-row product, its four-row tile and
/// its eight-row product.
trait Paths: QuantBlock {
    fn paths() -> Vec<Path<Self>>;
}

macro_rules! paths {
    ($t:ty, $dot:ident, $rows:ident, $rows8:ident) => {
        impl Paths for $t {
            #[allow(unused_mut)]
            fn paths() -> Vec<Path<Self>> {
                let mut v: Vec<Path<Self>> = vec![(
                    "dispatched",
                    <$t as QuantBlock>::dot,
                    <$t as QuantBlock>::dot4_rows,
                    <$t as QuantBlock>::dot8_rows,
                )];
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
                v.push((
                    if cfg!(target_feature = "avxvnni") { "avx2 (avx-vnni)" } else { "avx2" },
                    avx2::$dot,
                    avx2::$rows,
                    avx2::$rows8,
                ));
                #[cfg(all(
                    target_arch = "x86_64",
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512vnni",
                    target_feature = "fma"
                ))]
                v.push(("avx512 vnni", avx512::$dot, avx512::$rows, avx512::$rows8));
                v
            }
        }
    };
}
paths!(BlockQ8_0, dot_q8_0, dot4_rows_q8_0, dot8_rows_q8_0);

fn input(rows: usize, blocks: usize, seed: u64) -> Vec<InputBlock> {
    let mut xq = vec![InputBlock::default(); rows * blocks];
    for (r, q) in xq.chunks_exact_mut(blocks).enumerate() {
        quantize_input(&random(blocks * BLOCK, seed + r as u64), q);
    }
    xq
}

/// Each path's single-row product, its four-row tiles and its eight-row products (1 to 19 input rows: full
/// AVX-512 tiles of 8 and every remainder) against the portable twin, bit for bit.
fn check_paths<B: Paths + std::fmt::Debug>(rows: &[Vec<B>; 8], blocks: usize) {
    for m in 1..=19 {
        let xq = input(m, blocks, 100 * m as u64);
        for (name, dot, dot4_rows, dot8_rows) in B::paths() {
            let w8: [&[B]; 8] = std::array::from_fn(|i| &rows[i][..]);
            let mut out8 = vec![[f32::NAN; 8]; m];
            dot8_rows(w8, &xq, &mut out8);
            for (r, (got, x)) in out8.iter().zip(xq.chunks_exact(blocks)).enumerate() {
                for (i, got) in got.iter().enumerate() {
                    let want = dot_portable(w8[i], x);
                    assert_eq!(got.to_bits(), want.to_bits(), "{name}: eight rows, m = {m}, input {r}, weight {i}");
                }
            }
            let w = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let mut out = vec![[f32::NAN; 4]; m];
            dot4_rows(w, &xq, &mut out);
            for (r, (got, x)) in out.iter().zip(xq.chunks_exact(blocks)).enumerate() {
                for i in 0..4 {
                    let want = dot_portable(w[i], x);
                    assert_eq!(got[i].to_bits(), want.to_bits(), "{name}: m = {m}, input row {r}, weight row {i}");
                    assert_eq!(dot(w[i], x).to_bits(), want.to_bits(), "{name}: single row {i}, input row {r}");
                }
            }
        }
    }
}

#[test]
fn every_path_equals_the_portable_twin_bit_for_bit() {
    let blocks = 24;
    let q8: [Vec<BlockQ8_0>; 8] = std::array::from_fn(|i| {
        let mut q = vec![BlockQ8_0::default(); blocks];
        quantize_q8_0(&random(BLOCK * blocks, 10 + i as u64), &mut q);
        q
    });
    let mut hostile = q8.clone();
    // A hostile file may hold −128, outside what the quantizer makes: still exact.
    hostile[1][3].qs[5] = -128;
    hostile[2][7].qs = [-128; BLOCK];
    hostile[3][0].qs = [127; BLOCK];
    hostile[6][2].qs = [-128; BLOCK];
    check_paths(&q8, blocks);
    check_paths(&hostile, blocks);
    // One block a row: the loop bodies run once.
    check_paths(&q8.clone().map(|r| r[..1].to_vec()), 1);
}

/// The extremes of the integer paths: every weight at its most negative or most positive value against
/// inputs of ±127 in every position, where the unsigned sums and the offsets are largest. Exact integers
/// times a scale of 1: the result is exact, and every path gives it.
#[test]
fn integer_extremes_are_exact_on_every_path() {
    let exact = |ints: &[[i8; BLOCK]], xq: &[InputBlock]| -> f64 {
        ints.iter()
            .zip(xq)
            .map(|(w, x)| {
                let s: i32 = w.iter().zip(&x.qs).map(|(&q, &x)| i32::from(q) * i32::from(x)).sum();
                f64::from(s) * f64::from(x.d)
            })
            .sum()
    };
    for input in [1.0f32, -1.0] {
        let mut xq = vec![InputBlock::default(); 3];
        quantize_input(&[input; 3 * BLOCK], &mut xq);
        assert!(xq.iter().all(|b| b.qs == [(127.0 * input) as i8; BLOCK]));
        for q in [-128i8, -127, 127] {
            let w = vec![BlockQ8_0 { d: half::f16::ONE.to_bits(), qs: [q; BLOCK] }; 3];
            let want = exact(&w.iter().map(|b| b.qs).collect::<Vec<_>>(), &xq);
            for (name, dot, dot4_rows, dot8_rows) in BlockQ8_0::paths() {
                let got = dot(&w, &xq);
                assert!((f64::from(got) - want).abs() <= 1e-6 * want.abs(), "{name}: {got} vs {want}");
                assert_eq!(got.to_bits(), dot_portable(&w, &xq).to_bits(), "{name}, weights {q}");
                let mut four = [[0.0; 4]; 2];
                dot4_rows([&w, &w, &w, &w], &[xq.clone(), xq.clone()].concat(), &mut four);
                assert!(four.iter().flatten().all(|v| v.to_bits() == got.to_bits()), "{name}");
                let mut eight = [[0.0; 8]; 9];
                dot8_rows([&w[..]; 8], &xq.repeat(9), &mut eight);
                assert!(eight.iter().flatten().all(|v| v.to_bits() == got.to_bits()), "{name}: eight rows");
            }
        }
    }
}

#[test]
fn input_blocks_hold_the_q8_0_block_and_each_lane_s_offsets() {
    let x = random(2 * BLOCK, 9);
    let mut q8 = vec![BlockQ8_0::default(); 2];
    quantize_q8_0(&x, &mut q8);
    let mut input = vec![InputBlock::default(); 2];
    quantize_input(&x, &mut input);
    for (block, q8) in input.iter().zip(&q8) {
        assert_eq!((block.d, block.qs), (q8.scale(), q8.qs));
        for i in 0..LANES {
            let sum: i32 = (4 * i..4 * i + 4).chain(16 + 4 * i..16 + 4 * i + 4).map(|j| i32::from(q8.qs[j])).sum();
            assert!((4 * i..4 * i + 4).chain(16 + 4 * i..16 + 4 * i + 4).all(|j| lane(j) == i));
            assert_eq!(block.q8_offsets[i], -128 * sum, "lane {i}");
        }
        assert_eq!(block.q4_offset, -8 * q8.qs.iter().map(|&q| i32::from(q)).sum::<i32>());
    }
}

/// Plain loops over the dequantized weights and the dequantized quantized input, in f64.
fn reference(w: &[f32], x: &[f32], bias: &[f32], c: usize, oc: usize) -> Vec<f32> {
    let m = x.len() / c;
    let mut xq = vec![BlockQ8_0::default(); x.len() / BLOCK];
    quantize_q8_0(x, &mut xq);
    let mut xd = vec![0.0f32; x.len()];
    dequantize_q8_0(&xq, &mut xd);
    let mut out = vec![0.0f32; m * oc];
    for r in 0..m {
        for o in 0..oc {
            let s: f64 = (0..c).map(|k| f64::from(w[o * c + k]) * f64::from(xd[r * c + k])).sum();
            out[r * oc + o] = (s + f64::from(bias[o])) as f32;
        }
    }
    out
}

/// `matmul` (and Q4_0's [`packed_q4::matmul`]) against the dequantize-then-f32 reference at row counts that exercise one input row, partial
/// and full tiles and more than one tile; the tolerance is the f32 accumulation's rounding (results of
/// order 1 over C = 96 products).
#[test]
fn products_match_dequantize_then_f32_loops() {
    let (c, oc) = (96, 70);
    let w = random(oc * c, 3);
    let bias = random(oc, 4);
    let (mut w8, mut w4) = (vec![BlockQ8_0::default(); oc * c / BLOCK], vec![BlockQ4_0::default(); oc * c / BLOCK]);
    quantize_q8_0(&w, &mut w8);
    quantize_q4_0(&w, &mut w4);
    let (mut w8d, mut w4d) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    dequantize_q8_0(&w8, &mut w8d);
    dequantize_q4_0(&w4, &mut w4d);
    for m in [1, 3, 8, 19, 64] {
        let x = random(m * c, 5 + m as u64);
        let mut out = vec![0.0f32; m * oc];
        matmul(&mut out, &x, &w8, Some(&bias), c, oc);
        let expected = reference(&w8d, &x, &bias, c, oc);
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5), "q8_0, m = {m}");
        packed_q4::matmul(&mut out, &x, &PackedQ4_0::from_blocks(&w4, oc, c), Some(&bias), c, oc);
        let expected = reference(&w4d, &x, &bias, c, oc);
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5), "q4_0, m = {m}");
        // And near the unquantized product (the quantization error, not a kernel error).
        let exact = {
            let mut e = vec![0.0f32; m * oc];
            crate::matmul::forward_naive(&mut e, &x, &w, Some(&bias), c, oc);
            e
        };
        matmul(&mut out, &x, &w8, Some(&bias), c, oc);
        assert!(out.iter().zip(&exact).all(|(a, b)| (a - b).abs() < 0.02), "q8_0 vs f32, m = {m}");
    }
}

/// The dispatched input quantizer (vectorised where AVX-512 is compiled in) against its portable twin, bit
/// for bit: random rows, halves that C's `roundf` rounds away from zero, values just below a half, a zero
/// block, tiny and subnormal scales, and non-finite values (which the scalar code takes).
#[test]
fn input_quantizer_equals_its_portable_twin_bit_for_bit() {
    let mut blocks: Vec<[f32; BLOCK]> = (0..64).map(|s| random(BLOCK, 500 + s).try_into().unwrap()).collect();
    let mut halves = [0.0f32; BLOCK];
    for (j, h) in halves.iter_mut().enumerate() {
        // max |x| = 127 makes the scale 1: the products are the values themselves.
        *h = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
    }
    blocks.push(halves);
    blocks.push(halves.map(|v| -v));
    let mut below = halves;
    below.iter_mut().skip(1).for_each(|v| *v = f32::from_bits(v.to_bits() - 1));
    blocks.push(below);
    blocks.push([0.0; BLOCK]);
    let mut tiny = [0.0f32; BLOCK];
    tiny[3] = 1e-40;
    tiny[9] = -7e-41;
    blocks.push(tiny);
    blocks.push(random(BLOCK, 7).iter().map(|v| v * 1e-36).collect::<Vec<_>>().try_into().unwrap());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut b = halves;
        b[5] = bad;
        blocks.push(b);
    }
    let x: Vec<f32> = blocks.concat();
    let mut got = vec![InputBlock::default(); blocks.len()];
    quantize_input(&x, &mut got);
    for (i, (got, xs)) in got.iter().zip(&blocks).enumerate() {
        let want = quantize_block_portable(xs);
        assert_eq!(got.d.to_bits(), want.d.to_bits(), "block {i}: scale");
        assert_eq!((got.qs, got.q4_offset, got.q8_offsets), (want.qs, want.q4_offset, want.q8_offsets), "block {i}");
    }
    // The halves really were rounded away from zero (the test covers the case it names).
    let h = quantize_block_portable(&halves);
    assert_eq!((h.qs[1], h.qs[16], h.qs[15]), (-15, 1, -1), "−14.5, 0.5, −0.5");
}
