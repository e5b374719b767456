use super::*;
use crate::gradcheck::random_f32;
use crate::rng::Rng;

/// `x` rounded to the nearest bf16, as f32: what the bf16 products see of an operand.
fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// `beta·C + A·B (+ bias)` in f64 over the operands as the given precision sees them.
#[allow(clippy::too_many_arguments)]
fn reference(
    precision: Precision,
    (m, k, n): (usize, usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
    (beta, bias): (f32, Option<&[f32]>),
    c: &[f32],
    rsc: usize,
) -> Vec<f64> {
    let see = |x: f32| match precision {
        Precision::F32 => x as f64,
        Precision::Bf16 => round_bf16(x) as f64,
    };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|kk| see(a.data[i * a.rs + kk * a.cs]) * see(b.data[kk * b.rs + j * b.cs])).sum();
            let scaled = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * rsc + j] as f64 };
            out[i * n + j] = dot + scaled + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    out
}

/// Every product of a case: A row-major or transposed, B row-major or transposed, three betas, with and
/// without a bias.
fn cases(kernel: Kernel, precision: Precision) {
    let mut rng = Rng::new(7);
    for (m, k, n) in [(1, 1, 1), (13, 7, 33), (25, 300, 70), (150, 40, 65), (12, 513, 32), (3, 1030, 5), (5, 20, 4100)]
    {
        let a = random_f32(&mut rng, m * k, 1.0);
        let b = random_f32(&mut rng, k * n, 1.0);
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let av = Strided { data: &a, rs: if a_t { 1 } else { k }, cs: if a_t { m } else { 1 } };
            let bv = Strided { data: &b, rs: if b_t { 1 } else { n }, cs: if b_t { k } else { 1 } };
            let bias_values = random_f32(&mut rng, n, 1.0);
            for (beta, bias) in
                [(0.0, None), (1.0, None), (0.5, None), (0.0, Some(&bias_values[..])), (0.5, Some(&bias_values[..]))]
            {
                let rsc = n + 3;
                let c0 = random_f32(&mut rng, m * rsc, 1.0);
                let mut c = c0.clone();
                gemm_with(kernel, precision, (m, k, n), av, bv, (beta, bias, Then::Nothing), &mut c, rsc);
                let want = reference(precision, (m, k, n), av, bv, (beta, bias), &c0, rsc);
                let got: Vec<f32> = (0..m).flat_map(|i| c[i * rsc..][..n].to_vec()).collect();
                // The padding between rows is never written.
                for i in 0..m {
                    assert_eq!(c[i * rsc + n..(i + 1) * rsc], c0[i * rsc + n..(i + 1) * rsc], "padding of row {i}");
                }
                // f32 sums of k terms of size ≤ 1: error ≤ k·2⁻²⁴ per unit of Σ|a·b| (≤ k).
                let tol = 4.0 * k as f64 * f32::EPSILON as f64 + 1e-6;
                assert_within(
                    &got,
                    &want,
                    tol,
                    &format!(
                        "{precision} {kernel:?} m{m} k{k} n{n} a_t {a_t} b_t {b_t} beta {beta} bias {}",
                        bias.is_some()
                    ),
                );
            }
        }
    }
}

fn assert_within(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {idx} is {g}, want {w}");
    }
}

#[test]
fn portable_kernel_matches_the_f64_reference_in_both_precisions() {
    for precision in Precision::ALL {
        cases(Kernel::Portable, precision);
    }
}

#[test]
fn vector_kernels_match_the_reference_and_the_f32_kernel_is_bit_identical_to_its_twin() {
    for precision in Precision::ALL {
        for vector in [Kernel::Avx512, Kernel::Amx] {
            if runs(vector, precision) {
                cases(vector, precision);
            } else {
                eprintln!("skipped {precision} {vector:?}: this CPU does not run it");
            }
        }
    }
    if kernel(Precision::F32) == Kernel::Avx512 {
        // Both kernels sum each output's k products in the same order with fused multiply-adds, and write
        // whole tiles (straight onto C) and ragged ones (through the scratch tile) with the same roundings.
        let mut rng = Rng::new(9);
        let (m, k, n) = (30, 600, 45);
        let a = random_f32(&mut rng, m * k, 1.0);
        let b = random_f32(&mut rng, k * n, 1.0);
        let bias = random_f32(&mut rng, n, 1.0);
        let c0 = random_f32(&mut rng, m * n, 1.0);
        let (av, bv) = (Strided { data: &a, rs: k, cs: 1 }, Strided { data: &b, rs: n, cs: 1 });
        for writeback in [(0.0, None), (0.5, None), (1.0, Some(&bias[..])), (0.0, Some(&bias[..]))] {
            let (mut fast, mut twin) = (c0.clone(), c0.clone());
            gemm_with(
                Kernel::Avx512,
                Precision::F32,
                (m, k, n),
                av,
                bv,
                (writeback.0, writeback.1, Then::Nothing),
                &mut fast,
                n,
            );
            gemm_with(
                Kernel::Portable,
                Precision::F32,
                (m, k, n),
                av,
                bv,
                (writeback.0, writeback.1, Then::Nothing),
                &mut twin,
                n,
            );
            assert_eq!(fast, twin, "beta {}, bias {}", writeback.0, writeback.1.is_some());
        }
    }
}

#[test]
fn bf16_rounds_its_operands_and_f32_does_not() {
    // 1 + 2⁻¹⁰ is not a bf16 (8-bit significand): rounded, it is 1.
    let (a, b) = ([1.0 + 1.0 / 1024.0], [1.0f32]);
    let (av, bv) = (Strided { data: &a, rs: 1, cs: 1 }, Strided { data: &b, rs: 1, cs: 1 });
    for kernel in [Kernel::Portable, kernel(Precision::Bf16)] {
        let mut c = [0.0];
        gemm_with(kernel, Precision::Bf16, (1, 1, 1), av, bv, (0.0, None, Then::Nothing), &mut c, 1);
        assert_eq!(c[0], 1.0, "{kernel:?}");
    }
    for kernel in [Kernel::Portable, kernel(Precision::F32)] {
        let mut c = [0.0];
        gemm_with(kernel, Precision::F32, (1, 1, 1), av, bv, (0.0, None, Then::Nothing), &mut c, 1);
        assert_eq!(c[0], 1.0 + 1.0 / 1024.0, "{kernel:?}");
    }
}

#[test]
fn empty_inner_dimension_scales_c_by_beta() {
    let mut c = vec![2.0; 6];
    let none: [f32; 0] = [];
    let z = Strided { data: &none, rs: 0, cs: 0 };
    gemm(Precision::Bf16, (2, 0, 3), z, z, 0.5, &mut c, 3);
    assert_eq!(c, vec![1.0; 6]);
}

#[test]
#[should_panic(expected = "packed_gemm: C too short")]
fn a_short_output_is_refused() {
    let a = [1.0f32; 4];
    let v = Strided { data: &a, rs: 2, cs: 1 };
    let mut c = [0.0; 3];
    gemm(Precision::F32, (2, 2, 2), v, v, 0.0, &mut c, 2);
}

#[test]
fn precision_names_round_trip_and_unknown_names_are_refused() {
    for p in Precision::ALL {
        assert_eq!(p.name().parse::<Precision>(), Ok(p));
    }
    assert!("fp8".parse::<Precision>().unwrap_err().contains("expected f32 or bf16"));
}

#[test]
fn packing_rounds_to_bf16_exactly_as_half_does() {
    let mut rng = Rng::new(3);
    let mut specials = vec![0.0f32, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX];
    specials.extend([f32::MIN_POSITIVE, 1e-40, f32::from_bits(0x7fff_ffff), f32::from_bits(0x3f80_8000)]);
    specials.extend([f32::from_bits(0x3f81_8000), f32::from_bits(0x3f80_8001), f32::from_bits(0x7f7f_ffff)]);
    let randoms = (0..100_000).map(|_| f32::from_bits(rng.next_u64() as u32));
    for x in specials.into_iter().chain(randoms) {
        let want = half::bf16::from_f32(x).to_bits();
        assert_eq!((bf16_high_bits(x) >> 16) as u16, want, "{x:e} ({:#010x})", x.to_bits());
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(5);
    let (m, k, n) = (203, 530, 77);
    let a = random_f32(&mut rng, m * k, 1.0);
    let b = random_f32(&mut rng, k * n, 1.0);
    let (av, bv) = (Strided { data: &a, rs: k, cs: 1 }, Strided { data: &b, rs: 1, cs: k });
    for precision in Precision::ALL {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0.0; m * n];
            pool.install(|| gemm(precision, (m, k, n), av, bv, 0.0, &mut c, n));
            c
        };
        let one = run(1);
        assert_eq!(one, run(2), "{precision}");
        assert_eq!(one, run(3), "{precision}");
    }
}

#[test]
fn a_b_packed_beforehand_gives_the_same_product_as_packing_as_it_goes() {
    let mut rng = Rng::new(8);
    for precision in Precision::ALL {
        for (m, k, n, b_t) in [(7, 1100, 45, false), (30, 40, 4200, true), (1, 3, 1, false), (13, 513, 33, true)] {
            let a = random_f32(&mut rng, m * k, 1.0);
            let b = random_f32(&mut rng, k * n, 1.0);
            let av = Strided { data: &a, rs: k, cs: 1 };
            let bv = Strided { data: &b, rs: if b_t { 1 } else { n }, cs: if b_t { k } else { 1 } };
            let packed = PackedB::new(precision, (k, n), bv);
            assert_eq!(packed.shape(), (k, n));
            let bias = random_f32(&mut rng, n, 1.0);
            for (beta, bias) in [(0.0, None), (1.0, None), (0.0, Some(&bias[..])), (0.5, Some(&bias[..]))] {
                let c0 = random_f32(&mut rng, m * n, 1.0);
                let (mut once, mut each) = (c0.clone(), c0.clone());
                gemm_packed(m, av, &packed, (beta, bias, Then::Nothing), &mut once, n);
                let kernel = kernel(precision);
                gemm_with(kernel, precision, (m, k, n), av, bv, (beta, bias, Then::Nothing), &mut each, n);
                assert!(once == each, "{precision} m{m} k{k} n{n} beta {beta} bias {}", bias.is_some());
            }
            // The epilogue runs on a packed B's tiles as on any: GELU of the biased product.
            let (mut pre_once, mut pre_each) = (vec![0.0; m * n], vec![0.0; m * n]);
            let (mut out_once, mut out_each) = (vec![0.0; m * n], vec![0.0; m * n]);
            gemm_packed(m, av, &packed, (0.0, Some(&bias), Then::Gelu(&mut out_once)), &mut pre_once, n);
            gemm_epilogue(precision, (m, k, n), av, bv, (Some(&bias), Then::Gelu(&mut out_each)), &mut pre_each, n);
            assert!(pre_once == pre_each && out_once == out_each, "{precision} m{m} k{k} n{n}: GELU epilogue");
        }
    }
}

/// The epilogue's steps give what the separate passes give on the product: C unchanged by them, `gelu(C)`
/// and `C·gelu'(x)` equal to the GELU kernels' (values compared, so a zero's sign may differ), on whole and
/// ragged tiles, one and several blocks of k, every kernel this CPU runs.
#[test]
fn epilogue_steps_equal_the_passes_they_replace() {
    let mut rng = Rng::new(12);
    for precision in Precision::ALL {
        for kernel in [Kernel::Portable, Kernel::Avx512, Kernel::Amx].into_iter().filter(|&k| runs(k, precision)) {
            for (m, k, n) in [(30, 40, 45), (13, 1030, 70), (2, 0, 5), (64, 96, 64)] {
                let a = random_f32(&mut rng, m * k, 1.0);
                let b = random_f32(&mut rng, k * n, 1.0);
                let bias = random_f32(&mut rng, n, 1.0);
                let x = random_f32(&mut rng, m * n, 3.0);
                let (av, bv) = (Strided { data: &a, rs: k, cs: 1 }, Strided { data: &b, rs: n, cs: 1 });
                let what = format!("{precision} {kernel:?} m{m} k{k} n{n}");
                let mut plain = vec![0.0; m * n];
                gemm_with(kernel, precision, (m, k, n), av, bv, (0.0, Some(&bias), Then::Nothing), &mut plain, n);

                let (mut c, mut activated) = (vec![0.0; m * n], vec![0.0; m * n]);
                let then = Then::Gelu(&mut activated);
                gemm_with(kernel, precision, (m, k, n), av, bv, (0.0, Some(&bias), then), &mut c, n);
                let mut want = vec![0.0; m * n];
                crate::gelu::forward(&mut want, &plain);
                assert_eq!(c, plain, "{what}: C with the GELU step");
                assert_eq!(activated, want, "{what}: gelu(C)");

                let (mut c, mut dx) = (vec![0.0; m * n], vec![7.0; m * n]);
                let then = Then::GeluBackward { x: &x, dx: &mut dx };
                gemm_with(kernel, precision, (m, k, n), av, bv, (0.0, None, then), &mut c, n);
                let mut unbiased = vec![0.0; m * n];
                gemm_with(kernel, precision, (m, k, n), av, bv, (0.0, None, Then::Nothing), &mut unbiased, n);
                let mut want = vec![0.0; m * n];
                crate::gelu::backward(&mut want, &x, &unbiased);
                assert_eq!(c, unbiased, "{what}: C with the GELU backward step");
                assert_eq!(dx, want, "{what}: C·gelu'(x)");
            }
        }
    }
}
