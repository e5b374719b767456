use super::*;
use crate::quant::dot::quantize_input;
use crate::quant::quantize_q4_0;
use crate::rng::Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() - 0.5).collect()
}

fn blocks(rows: usize, cols: usize, seed: u64) -> Vec<BlockQ4_0> {
    let mut b = vec![BlockQ4_0::default(); rows * cols / BLOCK];
    quantize_q4_0(&random(rows * cols, seed), &mut b);
    b
}

fn input(rows: usize, blocks: usize, seed: u64) -> Vec<InputBlock> {
    let mut xq = vec![InputBlock::default(); rows * blocks];
    for (r, q) in xq.chunks_exact_mut(blocks).enumerate() {
        quantize_input(&random(blocks * BLOCK, seed + r as u64), q);
    }
    xq
}

/// A group product path.
type Path = fn(&[GroupBlock], &[InputBlock], &mut [[f32; GROUP]]);

/// Every group path compiled in, by name.
fn paths() -> Vec<(&'static str, Path)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Path)> = vec![("dispatched", group_products)];
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    v.push(("avx2", avx2::group));
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni",
        target_feature = "fma"
    ))]
    v.push(("avx512 vnni", avx512::group));
    v
}

#[test]
fn packing_round_trips_llama_cpp_blocks_rows_and_dequantization() {
    for (rows, cols) in [(1, 32), (16, 64), (37, 96), (50, 32)] {
        let b = blocks(rows, cols, rows as u64);
        let packed = PackedQ4_0::from_blocks(&b, rows, cols);
        assert_eq!(packed.to_blocks(), b, "({rows}, {cols})");
        assert_eq!((packed.rows(), packed.cols(), packed.len()), (rows, cols, rows * cols));
        assert_eq!(packed.bytes(), rows.div_ceil(GROUP) * cols / BLOCK * 288);
        let mut want = vec![0.0; rows * cols];
        dequantize_q4_0(&b, &mut want);
        let mut got = vec![f32::NAN; (rows - 1) * cols];
        packed.rows_to_f32(1..rows, &mut got);
        assert_eq!(got, want[cols..], "rows 1.. of ({rows}, {cols})");
        // The padding rows stand for zeros.
        let last = &packed.groups[packed.groups.len() - 1];
        for r in rows % GROUP..if rows.is_multiple_of(GROUP) { 0 } else { GROUP } {
            assert_eq!(last.row(r).unpack(), [0; BLOCK]);
            assert_eq!(last.d[r], 0);
        }
    }
    for (first, second) in [(21, 13), (16, 5), (32, 16), (3, 40)] {
        let (a, b) = (blocks(first, 64, 1), blocks(second, 64, 2));
        let mut joined = PackedQ4_0::from_blocks(&a, first, 64);
        joined.append(&PackedQ4_0::from_blocks(&b, second, 64));
        assert_eq!(joined, PackedQ4_0::from_blocks(&[a, b].concat(), first + second, 64), "{first} + {second} rows");
    }
}

#[test]
fn quantize_equals_llama_cpp_blocks_packed() {
    let w = random(40 * 64, 7);
    let mut b = vec![BlockQ4_0::default(); 40 * 2];
    quantize_q4_0(&w, &mut b);
    assert_eq!(PackedQ4_0::quantize(&w, 64), PackedQ4_0::from_blocks(&b, 40, 64));
}

#[test]
fn every_path_equals_the_portable_twin_bit_for_bit() {
    for per_row in [1, 3, 24] {
        let packed = PackedQ4_0::from_blocks(&blocks(GROUP, per_row * BLOCK, 30), GROUP, per_row * BLOCK);
        for rows in 1..=2 * TILE + 1 {
            let x = input(rows, per_row, 100 + rows as u64);
            let mut want = vec![[f32::NAN; GROUP]; rows];
            group_portable(packed.group(0), &x, &mut want);
            // The twin's row is the row alone.
            for (r, want) in want.iter().enumerate() {
                let mut alone = [[f32::NAN; GROUP]];
                group_portable(packed.group(0), &x[r * per_row..][..per_row], &mut alone);
                assert_eq!(alone[0].map(f32::to_bits), want.map(f32::to_bits));
            }
            for (name, path) in paths() {
                if name != "avx2" || rows <= TILE {
                    let mut got = vec![[f32::NAN; GROUP]; rows];
                    path(packed.group(0), &x, &mut got);
                    let bits = |v: &[[f32; GROUP]]| v.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{name}: {per_row} blocks, {rows} input rows");
                }
            }
        }
    }
}

#[test]
fn integer_extremes_are_exact_on_every_path() {
    // Nibbles 0 (−8) or 15 (+7) against inputs −128 (a saturated tiny-scale block) or 127, scales 1.
    for (nibbles, x) in [(0x00u8, -128i8), (0xFF, -128), (0x00, 127), (0xFF, 127), (0xF0, -128)] {
        let row = BlockQ4_0 { d: half::f16::ONE.to_bits(), qs: [nibbles; BLOCK / 2] };
        let packed = PackedQ4_0::from_blocks(&[row; 3 * GROUP], GROUP, 3 * BLOCK);
        let offset = -8 * BLOCK as i32 * i32::from(x);
        let xq = vec![InputBlock { d: 1.0, qs: [x; BLOCK], q4_offset: offset, ..InputBlock::default() }; 3];
        let want: f32 = 3.0 * row.unpack().iter().map(|&q| f32::from(q) * f32::from(x)).sum::<f32>();
        for (name, path) in paths().into_iter().chain([("portable", group_portable as _)]) {
            let mut got = [[f32::NAN; GROUP]];
            path(packed.group(0), &xq, &mut got);
            assert_eq!(got[0], [want; GROUP], "{name}: nibbles {nibbles:#x}, x {x}");
        }
    }
}

#[test]
fn matmul_rows_are_the_twin_s_rows_at_every_row_and_thread_count_and_match_f64() {
    let (c, oc) = (512, 300);
    let w = random(oc * c, 3);
    let bias = random(oc, 4);
    let packed = PackedQ4_0::quantize(&w, c);
    let mut wide = vec![0.0; oc * c];
    packed.rows_to_f32(0..oc, &mut wide);
    let blocks = c / BLOCK;
    for m in [1, 3, 9, 17] {
        let x = random(m * c, 50 + m as u64);
        let mut xq = vec![InputBlock::default(); m * blocks];
        for (q, row) in xq.chunks_exact_mut(blocks).zip(x.chunks_exact(c)) {
            quantize_input(row, q);
        }
        let mut want = vec![0.0f32; m * oc];
        for g in 0..oc.div_ceil(GROUP) {
            for (i, x) in xq.chunks_exact(blocks).enumerate() {
                let mut one = [[0.0; GROUP]];
                group_portable(packed.group(g), x, &mut one);
                for (r, v) in one[0].iter().enumerate().take(oc.saturating_sub(g * GROUP)) {
                    want[i * oc + g * GROUP + r] = v + bias[g * GROUP + r];
                }
            }
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let mut got = vec![f32::NAN; m * oc];
            pool.install(|| matmul(&mut got, &x, &packed, Some(&bias), c, oc));
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "m = {m}, {threads} threads"
            );
        }
        // Against f64 sums of the dequantized weights and the dequantized quantized input.
        for (i, xr) in xq.chunks_exact(blocks).enumerate() {
            let xd: Vec<f64> = xr.iter().flat_map(|b| b.qs.map(|q| f64::from(q) * f64::from(b.d))).collect();
            for o in 0..oc {
                let exact: f64 = wide[o * c..][..c].iter().zip(&xd).map(|(&w, x)| f64::from(w) * x).sum::<f64>()
                    + f64::from(bias[o]);
                let got = f64::from(want[i * oc + o]);
                assert!((got - exact).abs() < 1e-4 * (1.0 + exact.abs()), "row {i}, channel {o}: {got} vs {exact}");
            }
        }
    }
}
