use super::*;
use crate::gemv;
use crate::rng::Rng;

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_normal() as f32 * 0.5).collect()
}

/// Shapes that exercise every edge: C below, at and past multiples of 16; weight rows and input rows that
/// leave partial tiles and partial tasks; several tasks of rows (C = 3000 gives tasks of 18 rows).
const SHAPES: [(usize, usize, usize); 11] = [
    (5, 1, 1),
    (5, 15, 3),
    (6, 16, 4),
    (7, 17, 5),
    (13, 33, 9),
    (11, 100, 67),
    (20, 48, 130),
    (64, 768, 70),
    (40, 3000, 6),
    (1, 31, 7),
    (9, 1100, 11),
];

fn product<T: Element>(
    m: usize,
    c: usize,
    oc: usize,
    widen: impl Fn(f32) -> T,
    bias: bool,
    seed: u64,
) -> [Vec<f32>; 3] {
    let mut rng = Rng::new(seed);
    let inp = random(&mut rng, m * c);
    let weight: Vec<T> = random(&mut rng, oc * c).into_iter().map(&widen).collect();
    let bias = bias.then(|| random(&mut rng, oc));
    let mut tiled = vec![f32::NAN; m * oc];
    forward(&mut tiled, &inp, &weight, bias.as_deref(), c, oc);
    let mut twin = vec![f32::NAN; m * oc];
    forward_portable(&mut twin, &inp, &weight, bias.as_deref(), c, oc);
    // The reference in f64 over the weights as stored (widened exactly).
    let reference = (0..m * oc)
        .map(|at| {
            let (i, j) = (at / oc, at % oc);
            let dot: f64 = (0..c).map(|k| f64::from(inp[i * c + k]) * f64::from(weight[j * c + k].to_f32())).sum();
            (dot + bias.as_ref().map_or(0.0, |b| f64::from(b[j]))) as f32
        })
        .collect();
    [tiled, twin, reference]
}

fn check_type<T: Element>(widen: impl Fn(f32) -> T + Copy) {
    for (n, &(m, c, oc)) in SHAPES.iter().enumerate() {
        for bias in [false, true] {
            let [tiled, twin, reference] = product(m, c, oc, widen, bias, n as u64 + 1);
            assert_eq!(
                tiled.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                twin.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "tiled ≠ twin at M {m} C {c} OC {oc} bias {bias}"
            );
            for (at, (&got, &want)) in tiled.iter().zip(&reference).enumerate() {
                let tolerance = 1e-5 * (c as f32).sqrt() * want.abs().max(1.0);
                assert!((got - want).abs() <= tolerance, "M {m} C {c} OC {oc}: output {at} {got} vs f64 {want}");
            }
        }
    }
}

#[test]
fn tiles_equal_their_portable_twin_bit_for_bit_and_an_f64_product() {
    check_type(|v| v);
    check_type(half::bf16::from_f32);
    check_type(half::f16::from_f32);
}

#[test]
fn every_output_equals_the_matrix_vector_kernel_bit_for_bit() {
    // The guarantee the callers build on: a row's result is the same in a prompt as in decoding.
    for &(m, c, oc) in &SHAPES {
        let mut rng = Rng::new(7);
        let inp = random(&mut rng, m * c);
        let weight = random(&mut rng, oc * c);
        let bias = random(&mut rng, oc);
        let mut tiled = vec![0.0; m * oc];
        forward(&mut tiled, &inp, &weight, Some(&bias), c, oc);
        for (i, row) in inp.chunks_exact(c).enumerate() {
            let mut alone = vec![0.0; oc];
            gemv::forward(&mut alone, row, &weight, Some(&bias), c, oc);
            let got = &tiled[i * oc..(i + 1) * oc];
            assert!(got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()), "row {i} at M {m} C {c} OC {oc}");
        }
        let few = m.min(gemv::MAX_BATCH);
        let mut batched = vec![0.0; few * oc];
        gemv::forward(&mut batched, &inp[..few * c], &weight, Some(&bias), c, oc);
        assert_eq!(batched, tiled[..few * oc], "first {few} rows through gemv at M {m} C {c} OC {oc}");
    }
}

#[test]
fn results_do_not_depend_on_the_threads() {
    let (m, c, oc) = (50, 200, 300);
    let mut rng = Rng::new(3);
    let inp = random(&mut rng, m * c);
    let weight = random(&mut rng, oc * c);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut out = vec![0.0; m * oc];
        pool.install(|| forward(&mut out, &inp, &weight, None, c, oc));
        out
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn empty_products_write_nothing_and_bad_extents_are_refused() {
    let mut out: Vec<f32> = vec![];
    forward::<f32>(&mut out, &[], &[1.0; 6], None, 3, 2);
    forward::<f32>(&mut out, &[1.0; 6], &[], None, 3, 0);
    let refused = |f: fn()| std::panic::catch_unwind(f).is_err();
    assert!(refused(|| forward::<f32>(&mut [0.0; 2], &[1.0; 5], &[1.0; 6], None, 3, 2)), "ragged input");
    assert!(refused(|| forward::<f32>(&mut [0.0; 3], &[1.0; 3], &[1.0; 6], None, 3, 2)), "output shape");
    assert!(refused(|| forward::<f32>(&mut [0.0; 2], &[1.0; 3], &[1.0; 5], None, 3, 2)), "weight shape");
    assert!(refused(|| forward::<f32>(&mut [0.0; 2], &[1.0; 3], &[1.0; 6], Some(&[0.0]), 3, 2)), "bias");
    assert!(refused(|| forward::<f32>(&mut [], &[], &[], None, 0, 0)), "C = 0");
}

#[test]
fn the_next_block_is_prefetched_a_line_a_step_then_no_more() {
    let next = vec![0.0f32; 1000]; // 4 000 bytes: 63 lines
    let mut prefetch = Prefetch::of(&next);
    for step in 1..=100 {
        prefetch.step();
        assert_eq!(prefetch.line, step.min(63), "line asked for after {step} steps");
    }
    let mut none = Prefetch::of::<f32>(&[]);
    none.step();
    assert_eq!((none.line, none.lines), (0, 0));
}
