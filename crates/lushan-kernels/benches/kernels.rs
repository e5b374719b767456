//! `cargo bench -p lushan-kernels`: per-kernel timings at nanoGPT's CPU shapes (B=12, T=64, C=128, NH=4)
//! and the matmul choice (our matrixmultiply path vs the `gemm` crate vs the naive twin) at GPT shapes.
//! Prints figures; asserts nothing (speed is measured, never tested).

use lushan_kernels::weights::{self, Weights};
use lushan_kernels::{attention, dot_gemm, flash_attention, gelu, gemv, layernorm, matmul, quant, rng::Rng};
use std::time::Instant;

/// As in the `lushan` binary: large buffers start on cache lines.
#[global_allocator]
static ALLOC: lushan_kernels::alloc::CacheLineAligned = lushan_kernels::alloc::CacheLineAligned;

fn time(label: &str, flops: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut best = f64::INFINITY;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    if flops > 0.0 {
        println!("{label:<48} {:>9.3} ms {:>7.1} GFLOP/s", best * 1e3, flops / best / 1e9);
    } else {
        println!("{label:<48} {:>9.3} ms", best * 1e3);
    }
    best
}

/// Bytes per second summing a 1 GiB array with every thread (best of a few passes).
fn read_bandwidth() -> f64 {
    let a = vec![1.0f32; 1 << 28];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s = gemv::stream_sum(&a);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(s);
    }
    (a.len() * 4) as f64 / best
}

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.next_f32() - 0.5).collect()
}

fn gemm_crate(out: &mut [f32], inp: &[f32], w: &[f32], n: usize, c: usize, oc: usize) {
    // SAFETY: out is n×oc, inp n×c, w oc×c (read transposed), all row-major with the strides given.
    unsafe {
        gemm::gemm(
            n,
            oc,
            c,
            out.as_mut_ptr(),
            1,
            oc as isize,
            false,
            inp.as_ptr(),
            1,
            c as isize,
            w.as_ptr(),
            c as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

fn main() {
    let mut rng = Rng::new(0);
    println!("threads: {}", rayon::current_num_threads());
    // `cargo bench -p lushan-kernels --bench kernels -- quant`: the quantized decode products alone.
    // `cargo bench -p lushan-kernels --bench kernels -- quant-rows`: 16 rows (batched decoding) and 64 rows
    // (a prompt) through each type's kernel.
    // `cargo bench -p lushan-kernels --bench kernels -- prompt-rows`: many-row products over unpacked weights
    // (`dot_gemm`) against the packed GEMM, at GPT-2 124M's shapes.
    // `cargo bench -p lushan-kernels --bench kernels -- amx-prompts`: a 64-row prompt's products on AMX tiles
    // (bf16 weights in place, Q8_0/Q4_0 dequantized to bf16) against each type's AVX-512 path.
    if std::env::args().any(|a| a == "amx-prompts") {
        amx_prompts(&mut rng);
        return;
    }
    // `cargo bench -p lushan-kernels --bench kernels -- prompt-layers`: a 64-row prompt's products through
    // GPT-2 124M's twelve layers of distinct f32 weights (340 MB: streamed from memory, as in a real prompt).
    // `cargo bench -p lushan-kernels --bench kernels -- alignment`: the tiles with operands on cache lines
    // and 16 bytes off them (where glibc puts large allocations).
    if std::env::args().any(|a| a == "alignment") {
        alignment(&mut rng);
        return;
    }
    if std::env::args().any(|a| a == "prompt-layers") {
        prompt_layers(&mut rng);
        return;
    }
    if std::env::args().any(|a| a == "prompt-rows") {
        prompt_rows(&mut rng);
        return;
    }
    if std::env::args().any(|a| a == "quant-rows") {
        quantized_rows(&mut rng);
        return;
    }
    if std::env::args().any(|a| a == "quant") {
        quantized_decode(&mut rng);
        return;
    }
    // `cargo bench -p lushan-kernels --bench kernels -- f32-gemm`: a training step's f32 products
    // (forward, input gradient, weight gradient) through matrixmultiply and the packed AVX-512 GEMM,
    // alternated, at GPT-2 124M's and baby-GPT's shapes.
    if std::env::args().any(|a| a == "f32-gemm") {
        f32_gemm_side_by_side(&mut rng);
        return;
    }
    // `cargo bench -p lushan-kernels --bench kernels -- pack`: packing GPT-2 124M's weights as the forward
    // products read them (Wᵀ: the transposing pack), as one `PackedB` each.
    if std::env::args().any(|a| a == "pack") {
        transposing_pack(&mut rng);
        return;
    }
    // `cargo bench -p lushan-kernels --bench kernels -- gemm`: one thread, matrixmultiply against the packed
    // AVX-512 kernels (f32 and bf16) at training shapes.
    if std::env::args().any(|a| a == "gemm") {
        packed_gemm_one_thread(&mut rng);
        return;
    }
    long_context_attention(&mut rng);
    // `cargo bench -p lushan-kernels -- attention`: the long-context attention figures alone.
    if std::env::args().any(|a| a == "attention") {
        return;
    }
    println!("-- matmul forward (N×C · Wᵀ, W is OC×C)");
    for (n, c, oc) in [
        (768, 128, 384),
        (768, 128, 512),
        (768, 512, 128),
        (768, 128, 65),
        (256, 768, 2304),
        (256, 768, 50257),
        (16384, 384, 1152),
    ] {
        let x = random(n * c, &mut rng);
        let w = random(oc * c, &mut rng);
        let mut out = vec![0.0; n * oc];
        let flops = 2.0 * (n * c * oc) as f64;
        time(&format!("lushan (matrixmultiply) {n}×{c}×{oc}"), flops, || {
            matmul::forward(&mut out, &x, &w, None, c, oc)
        });
        time(&format!("gemm crate             {n}×{c}×{oc}"), flops, || gemm_crate(&mut out, &x, &w, n, c, oc));
        if n * c * oc <= 768 * 128 * 512 {
            time(&format!("naive twin             {n}×{c}×{oc}"), flops, || {
                matmul::forward_naive(&mut out, &x, &w, None, c, oc)
            });
        }
    }
    println!("-- matmul backward (dinp += dout·W and dW += doutᵀ·inp)");
    for (n, c, oc) in [(768, 128, 384), (768, 512, 128), (16384, 384, 1152)] {
        let x = random(n * c, &mut rng);
        let w = random(oc * c, &mut rng);
        let dout = random(n * oc, &mut rng);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
        let flops = 2.0 * (n * c * oc) as f64;
        time(&format!("backward dW+db only {n}×{c}×{oc}"), flops, || {
            matmul::backward(None, &mut dw, Some(&mut db), &dout, &x, &w, c, oc)
        });
        time(&format!("backward dinp+dW+db {n}×{c}×{oc}"), 2.0 * flops, || {
            matmul::backward(Some(&mut dx), &mut dw, Some(&mut db), &dout, &x, &w, c, oc)
        });
    }
    println!("-- decode GEMV (few rows; weights (OC, C) streamed once)");
    let bandwidth = read_bandwidth();
    println!(
        "{:<48} {:>9.1} GB/s (sum of a 1 GiB f32 array, all threads)",
        "streaming read bandwidth",
        bandwidth / 1e9
    );
    for (n, c, oc) in [(1, 128, 384), (1, 768, 2304), (1, 3072, 768), (1, 768, 50257), (4, 768, 50257)] {
        let x = random(n * c, &mut rng);
        let w = random(oc * c, &mut rng);
        let mut out = vec![0.0; n * oc];
        let secs = time(&format!("gemv {n}×{c}×{oc}"), 2.0 * (n * c * oc) as f64, || {
            matmul::forward(&mut out, &x, &w, None, c, oc)
        });
        println!("{:>58} {:.1} GB/s weights streamed", "", (c * oc * 4) as f64 / secs / 1e9);
    }
    quantized_decode(&mut rng);
    // One GPT-2 124M decode step's products in order (12 × qkv, proj, fc, fc_proj, then the tied output
    // layer): ≈0.5 GB, larger than the caches, so this is the DRAM-bound figure decode can reach.
    let shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];
    let mut mats: Vec<(usize, usize, Vec<f32>)> = Vec::new();
    for _ in 0..12 {
        mats.extend(shapes.iter().map(|&(c, oc)| (c, oc, random(c * oc, &mut rng))));
    }
    mats.push((768, 50257, random(768 * 50257, &mut rng)));
    let bytes: usize = mats.iter().map(|(c, oc, _)| c * oc * 4).sum();
    let x = random(3072, &mut rng);
    let mut out = vec![0.0; 50257];
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for (c, oc, w) in &mats {
                matmul::forward(&mut out[..*oc], &x[..*c], w, None, *c, *oc);
            }
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{:<48} {:>9.3} ms {:>7.1} GB/s = {:.0}% of the read bandwidth",
        format!("GPT-2 124M decode products ({:.0} MB)", bytes as f64 / 1e6),
        median * 1e3,
        bytes as f64 / median / 1e9,
        100.0 * bytes as f64 / median / bandwidth
    );

    let (b, t, c, nh) = (12, 64, 128, 4);
    let n = b * t;
    println!("-- nanoGPT CPU shapes: B={b} T={t} C={c} NH={nh}");
    let x = random(n * c, &mut rng);
    let w = random(c, &mut rng);
    let bias = random(c, &mut rng);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    time("layernorm forward", 0.0, || layernorm::forward(&mut out, &mut mean, &mut rstd, &x, &w, &bias, c, 1e-5));
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    time("layernorm backward", 0.0, || layernorm::backward(&mut dx, &mut dw, &mut db, &x, &x, &w, &mean, &rstd, c));
    let h = random(n * 4 * c, &mut rng);
    let mut hout = vec![0.0; n * 4 * c];
    time("gelu forward (N×4C)", 0.0, || gelu::forward(&mut hout, &h));
    time("gelu backward (N×4C)", 0.0, || gelu::backward(&mut hout, &h, &h));
    let qkv = random(n * 3 * c, &mut rng);
    let mut att = vec![0.0; b * nh * t * t];
    let attn_flops = 4.0 * (b * nh * t * t * (c / nh)) as f64 / 2.0;
    time("attention forward", attn_flops, || attention::forward(&mut out, &mut att, &qkv, t, c, nh));
    let mut dqkv = vec![0.0; n * 3 * c];
    let mut scratch = vec![0.0; n * t];
    time("attention backward", 2.0 * attn_flops, || {
        attention::backward(&mut dqkv, &mut scratch, &x, &qkv, &att, t, c, nh)
    });
}

/// The probabilities kernel against the tiled one at GPT-2 124M's long context (one layer's attention).
fn long_context_attention(rng: &mut Rng) {
    let (b, t, c, nh) = (1, 1024, 768, 12);
    let n = b * t;
    println!("-- attention, GPT-2 124M long context: B={b} T={t} C={c} NH={nh}");
    let qkv = random(n * 3 * c, rng);
    let dout = random(n * c, rng);
    let attn_flops = 4.0 * (b * nh * t * t * (c / nh)) as f64 / 2.0;
    let (mut out, mut att) = (vec![0.0; n * c], vec![0.0; b * nh * t * t]);
    time("attention forward (probabilities kept)", attn_flops, || {
        attention::forward(&mut out, &mut att, &qkv, t, c, nh)
    });
    let (mut dqkv, mut scratch) = (vec![0.0; n * 3 * c], vec![0.0; n * t]);
    time("attention backward (probabilities kept)", 2.0 * attn_flops, || {
        attention::backward(&mut dqkv, &mut scratch, &dout, &qkv, &att, t, c, nh)
    });
    let mut lse = vec![0.0; n * nh];
    time("flash attention forward", attn_flops, || flash_attention::forward(&mut out, &mut lse, &qkv, t, c, nh));
    let mut scratch = vec![0.0; b * flash_attention::backward_scratch_len(t, c, nh)];
    time("flash attention backward", 2.0 * attn_flops, || {
        flash_attention::backward(&mut dqkv, &mut scratch, &dout, &qkv, &out, &lse, t, c, nh)
    });
}

/// The Q8_0 / Q4_0 decode products against f32 at GPT-2 124M's shapes, then one whole decode step's products
/// (12 × qkv, proj, fc, fc_proj, then the tied output layer) in each block type, median of 7.
fn quantized_decode(rng: &mut Rng) {
    println!("-- quantized decode products (weights read as Q8_0 / Q4_0 blocks; input quantized to Q8_0)");
    for (n, c, oc) in [(1, 768, 2304), (1, 768, 3072), (1, 3072, 768), (1, 768, 50257), (4, 768, 50257)] {
        let x = random(n * c, rng);
        let w = random(oc * c, rng);
        let mut out = vec![0.0; n * oc];
        let f32_secs = time(&format!("f32  {n}×{c}×{oc}"), 2.0 * (n * c * oc) as f64, || {
            matmul::forward(&mut out, &x, &w, None, c, oc)
        });
        let mut q8 = vec![quant::BlockQ8_0::default(); oc * c / quant::BLOCK];
        quant::quantize_q8_0(&w, &mut q8);
        let q8_secs = time(&format!("q8_0 {n}×{c}×{oc}"), 2.0 * (n * c * oc) as f64, || {
            quant::dot::matmul(&mut out, &x, &q8, None, c, oc)
        });
        let mut q4 = vec![quant::BlockQ4_0::default(); oc * c / quant::BLOCK];
        quant::quantize_q4_0(&w, &mut q4);
        let packed = quant::packed_q4::PackedQ4_0::from_blocks(&q4, oc, c);
        let q4_secs = time(&format!("q4_0 {n}×{c}×{oc}"), 2.0 * (n * c * oc) as f64, || {
            quant::packed_q4::matmul(&mut out, &x, &packed, None, c, oc)
        });
        let gb = |bytes_per_weight: f64, secs: f64| (c * oc) as f64 * bytes_per_weight / secs / 1e9;
        println!(
            "{:>58} weights streamed: f32 {:.1} GB/s, q8_0 {:.1} GB/s ({:.2}× f32's speed), q4_0 {:.1} GB/s ({:.2}×)",
            "",
            gb(4.0, f32_secs),
            gb(34.0 / 32.0, q8_secs),
            f32_secs / q8_secs,
            gb(18.0 / 32.0, q4_secs),
            f32_secs / q4_secs
        );
    }
    let shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];
    let mut mats: Vec<(usize, usize, Vec<f32>)> = Vec::new();
    for _ in 0..12 {
        mats.extend(shapes.iter().map(|&(c, oc)| (c, oc, random(c * oc, rng))));
    }
    mats.push((768, 50257, random(768 * 50257, rng)));
    let x = random(3072, rng);
    let mut out = vec![0.0; 50257];
    let q8: Vec<Vec<quant::BlockQ8_0>> = mats
        .iter()
        .map(|(c, oc, w)| {
            let mut q = vec![quant::BlockQ8_0::default(); c * oc / quant::BLOCK];
            quant::quantize_q8_0(w, &mut q);
            q
        })
        .collect();
    let q4: Vec<Vec<quant::BlockQ4_0>> = mats
        .iter()
        .map(|(c, oc, w)| {
            let mut q = vec![quant::BlockQ4_0::default(); c * oc / quant::BLOCK];
            quant::quantize_q4_0(w, &mut q);
            q
        })
        .collect();
    let packed: Vec<quant::packed_q4::PackedQ4_0> =
        mats.iter().zip(&q4).map(|((c, oc, _), q)| quant::packed_q4::PackedQ4_0::from_blocks(q, *oc, *c)).collect();
    let weights: usize = mats.iter().map(|(c, oc, _)| c * oc).sum();
    let mut step = |name: &str, bytes_per_weight: f64, product: &mut dyn FnMut(usize, &mut [f32])| {
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for (i, (c, oc, _)) in mats.iter().enumerate() {
                    product(i, &mut out[..*oc]);
                    std::hint::black_box(&out[..*c]);
                }
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let bytes = weights as f64 * bytes_per_weight;
        println!(
            "{:<48} {:>9.3} ms {:>7.1} GB/s",
            format!("GPT-2 124M decode products, {name} ({:.0} MB)", bytes / 1e6),
            median * 1e3,
            bytes / median / 1e9
        );
    };
    step("q8_0", 34.0 / 32.0, &mut |i, out| {
        let (c, oc, _) = &mats[i];
        quant::dot::matmul(out, &x[..*c], &q8[i], None, *c, *oc)
    });
    step("q4_0", 18.0 / 32.0, &mut |i, out| {
        let (c, oc, _) = &mats[i];
        quant::packed_q4::matmul(out, &x[..*c], &packed[i], None, *c, *oc)
    });
}

/// The linear layer's forward and backward at GPT training shapes, f32 (matrixmultiply) against bf16
/// (`packed_gemm`, this CPU's microkernel), with every thread.
fn packed_gemm_one_thread(rng: &mut Rng) {
    use lushan_kernels::packed_gemm::{self, Precision};
    println!(
        "-- linear layer, {} threads; bf16 products: {}",
        rayon::current_num_threads(),
        packed_gemm::describe(Precision::Bf16)
    );
    for (label, n, c, oc) in [
        ("124M qkv B4·T64", 256, 768, 2304),
        ("124M head chunk", 166, 768, 50257),
        ("124M fc T1024", 1024, 768, 3072),
        ("124M fc_proj T1024", 1024, 3072, 768),
        ("baby-GPT fc B64·T256", 16384, 384, 1536),
    ] {
        let x = random(n * c, rng);
        let w = random(oc * c, rng);
        let dout = random(n * oc, rng);
        let (mut out, mut dx, mut dw) = (vec![0.0; n * oc], vec![0.0; n * c], vec![0.0; oc * c]);
        let flops = 2.0 * (n * c * oc) as f64;
        let mut times = Vec::new();
        for precision in Precision::ALL {
            let f = time(&format!("forward {precision:<4} {label} {n}×{c}×{oc}"), flops, || {
                matmul::forward_in(precision, &mut out, &x, &w[..], None, c, oc)
            });
            let b = time(&format!("backward {precision:<4} {label} {n}×{c}×{oc}"), 2.0 * flops, || {
                matmul::backward_in(precision, Some(&mut dx), &mut dw, None, &dout, &x, &w, c, oc)
            });
            times.push(f + b);
        }
        println!("{:>48} bf16 forward+backward {:.2}× f32", "", times[0] / times[1]);
    }
}

/// A linear layer's three f32 products, `out = x·Wᵀ`, `dx = dout·W`, `dW = doutᵀ·x`, through
/// matrixmultiply (`gemm_serial` on row blocks, as `matmul` splits them) and through `packed_gemm`, the two
/// alternated in rounds so both see the same machine; prints each side's best of each round and the ratio.
fn transposing_pack(rng: &mut Rng) {
    use lushan_kernels::packed_gemm::{PackedB, Precision, Strided};
    println!("-- packing Wᵀ of a (n, k) weight, f32, {} threads", rayon::current_num_threads());
    for (label, n, k) in [("qkv", 2304, 768), ("fc", 3072, 768), ("fc_proj", 768, 3072), ("wte", 50257, 768)] {
        let w = random(n * k, rng);
        let best = time(&format!("{label} Wᵀ {k}×{n}"), 0.0, || {
            std::hint::black_box(PackedB::new(Precision::F32, (k, n), Strided { data: &w, rs: 1, cs: k }));
        });
        // Each value read once and written once (4 bytes each way).
        println!("{:<48} {:>9.1} GB/s", "", (8 * n * k) as f64 / best / 1e9);
    }
}

fn f32_gemm_side_by_side(rng: &mut Rng) {
    use lushan_kernels::packed_gemm::{self, Precision, Strided};
    println!("-- f32 training products, {} threads: matrixmultiply vs packed AVX-512", rayon::current_num_threads());
    type Product = (&'static str, (usize, usize, usize), (usize, usize), (usize, usize));
    for (label, n, c, oc) in [
        ("124M qkv B4·T64", 256, 768, 2304),
        ("124M fc B4·T64", 256, 768, 3072),
        ("124M fc_proj B4·T64", 256, 3072, 768),
        ("124M fc T1024", 1024, 768, 3072),
        ("baby-GPT fc B64·T256", 16384, 384, 1536),
    ] {
        let x = random(n * c, rng);
        let w = random(oc * c, rng);
        let dout = random(n * oc, rng);
        let products: [Product; 3] = [
            ("forward", (n, c, oc), (c, 1), (1, c)),
            ("input grad", (n, oc, c), (oc, 1), (c, 1)),
            ("weight grad", (oc, n, c), (1, oc), (c, 1)),
        ];
        for (name, (m, k, nn), a_strides, b_strides) in products {
            let (a, b): (&[f32], &[f32]) = match name {
                "forward" => (&x, &w),
                "input grad" => (&dout, &w),
                _ => (&dout, &x),
            };
            let mut out = vec![0.0f32; m * nn];
            let flops = 2.0 * (m * k * nn) as f64;
            let (a, b) = (
                Strided { data: a, rs: a_strides.0, cs: a_strides.1 },
                Strided { data: b, rs: b_strides.0, cs: b_strides.1 },
            );
            // Call by call, alternated for a second, the best of each: the machine's speed moves by more
            // than the difference within a few hundred milliseconds.
            let mut best = [f64::INFINITY; 2];
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < 1.0 {
                for (side, best) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    if side == 0 {
                        matmul::sgemm_matrixmultiply(m, k, nn, a.data, a_strides, b.data, b_strides, 0.0, &mut out, nn);
                    } else {
                        packed_gemm::gemm(Precision::F32, (m, k, nn), a, b, 0.0, &mut out, nn);
                    }
                    *best = best.min(t.elapsed().as_secs_f64());
                }
            }
            let [mm, packed] = best.map(|t| flops / t / 1e9);
            println!(
                "{label:<22} {name:<11} {m:>5}×{k:>4}×{nn:>4}  matrixmultiply {mm:>6.1}  packed {packed:>6.1} GFLOP/s  {:.2}×",
                packed / mm
            );
        }
    }
}

/// Batched decoding (16 rows, [`weights::forward_rows`]) and a prompt's products (64 rows) at GPT-2 124M's
/// shapes: f32 weights against Q8_0 / Q4_0 through the integer products ([`quant::dot::matmul`]) and through
/// widened tiles and the f32 GEMM ([`weights::forward_tiled`]).
fn amx_prompts(rng: &mut Rng) {
    if !lushan_kernels::amx::available() {
        println!("this CPU (or OS) gives no AMX BF16");
        return;
    }
    println!("-- 64-row products: AMX tiles vs the AVX-512 path of each weight type");
    for (m, c, oc) in [(64, 768, 2304), (64, 768, 3072), (64, 3072, 768), (256, 768, 2304)] {
        let x = random(m * c, rng);
        let w = random(oc * c, rng);
        let mut out = vec![0.0; m * oc];
        let flops = 2.0 * (m * c * oc) as f64;
        let bf: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut q8 = vec![quant::BlockQ8_0::default(); oc * c / quant::BLOCK];
        quant::quantize_q8_0(&w, &mut q8);
        let q4 = quant::packed_q4::PackedQ4_0::quantize(&w, c);
        let mut ratios = Vec::new();
        for (name, weights) in
            [("bf16", Weights::Bf16(&bf)), ("q8_0", Weights::Q8_0(&q8)), ("q4_0", Weights::Q4_0(&q4))]
        {
            // forward_rows keeps each type's AVX-512 path (bit-identical rows); forward takes the tiles.
            let vector = time(&format!("{name} AVX-512 {m}×{c}×{oc}"), flops, || {
                weights::forward_rows(&mut out, &x, weights, None, c, oc)
            });
            let tiles = time(&format!("{name} AMX     {m}×{c}×{oc}"), flops, || {
                lushan_kernels::amx::prompts::forward(&mut out, &x, weights, None, c, oc)
            });
            ratios.push(format!("{name} {:.2}×", vector / tiles));
        }
        println!("{:>58} AMX vs AVX-512: {}", "", ratios.join(", "));
    }
}

fn quantized_rows(rng: &mut Rng) {
    println!("-- quantized products over many rows (integer: input quantized to Q8_0; tiles: weights widened to f32)");
    for (m, c, oc) in [
        (16, 768, 2304),
        (16, 768, 3072),
        (16, 3072, 768),
        (16, 768, 50257),
        (64, 768, 2304),
        (64, 768, 3072),
        (64, 3072, 768),
    ] {
        let x = random(m * c, rng);
        let w = random(oc * c, rng);
        let mut out = vec![0.0; m * oc];
        let flops = 2.0 * (m * c * oc) as f64;
        let f32_secs = time(&format!("f32            {m}×{c}×{oc}"), flops, || {
            if m <= gemv::MAX_BATCH {
                weights::forward_rows(&mut out, &x, Weights::F32(&w), None, c, oc)
            } else {
                weights::forward(&mut out, &x, Weights::F32(&w), None, c, oc)
            }
        });
        let mut q8 = vec![quant::BlockQ8_0::default(); oc * c / quant::BLOCK];
        quant::quantize_q8_0(&w, &mut q8);
        let q4 = quant::packed_q4::PackedQ4_0::quantize(&w, c);
        let mut ratios = Vec::new();
        for (name, weights) in [("q8_0", Weights::Q8_0(&q8)), ("q4_0", Weights::Q4_0(&q4))] {
            let int_secs = time(&format!("{name} integer   {m}×{c}×{oc}"), flops, || match weights {
                Weights::Q8_0(q) => quant::dot::matmul(&mut out, &x, q, None, c, oc),
                Weights::Q4_0(q) => quant::packed_q4::matmul(&mut out, &x, q, None, c, oc),
                _ => unreachable!(),
            });
            let tile_secs = time(&format!("{name} tiles     {m}×{c}×{oc}"), flops, || {
                weights::forward_tiled(&mut out, &x, weights, None, c, oc)
            });
            ratios.push(format!("{name} integer {:.2}×, tiles {:.2}×", f32_secs / int_secs, f32_secs / tile_secs));
        }
        println!("{:>58} speed vs f32: {}", "", ratios.join("; "));
    }
}

/// A prompt's (and an evaluation window's) products at GPT-2 124M's shapes: the tiles over unpacked weights
/// ([`dot_gemm::forward`]) against the packed f32 GEMM ([`matmul::forward`]), and for 16-bit weights against
/// widening tiles into the GEMM ([`weights::forward_tiled`]).
fn prompt_rows(rng: &mut Rng) {
    println!("-- many-row products: dot_gemm (weights read in place) vs the packed GEMM");
    for m in [16, 64, 256, 1024] {
        for (c, oc) in [(768, 2304), (768, 768), (768, 3072), (3072, 768)] {
            let x = random(m * c, rng);
            let w = random(oc * c, rng);
            let mut out = vec![0.0; m * oc];
            let flops = 2.0 * (m * c * oc) as f64;
            let gemm = time(&format!("f32 GEMM       {m}×{c}×{oc}"), flops, || {
                matmul::forward(&mut out, &x, &w, None, c, oc)
            });
            let tiles = time(&format!("f32 dot_gemm   {m}×{c}×{oc}"), flops, || {
                dot_gemm::forward(&mut out, &x, &w, None, c, oc)
            });
            let w16: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let widened = time(&format!("f16 widened    {m}×{c}×{oc}"), flops, || {
                weights::forward_tiled(&mut out, &x, Weights::F16(&w16), None, c, oc)
            });
            let tiles16 = time(&format!("f16 dot_gemm   {m}×{c}×{oc}"), flops, || {
                dot_gemm::forward(&mut out, &x, &w16, None, c, oc)
            });
            println!("{:>58} dot_gemm vs GEMM: f32 {:.2}×, f16 {:.2}×", "", gemm / tiles, widened / tiles16);
        }
    }
}

/// A 64-row prompt's four products per layer over twelve layers of distinct f32 weights, in the model's order,
/// so each matrix comes from memory as in a real prompt (a single matrix repeated stays in cache).
fn prompt_layers(rng: &mut Rng) {
    const SHAPES: [(usize, usize); 4] = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];
    let m = 64;
    let layers: Vec<Vec<Vec<f32>>> =
        (0..12).map(|_| SHAPES.iter().map(|&(c, oc)| random(oc * c, rng)).collect()).collect();
    let x = random(m * 3072, rng);
    let mut out = vec![0.0; m * 3072];
    let flops = 12.0 * SHAPES.iter().map(|&(c, oc)| 2.0 * (m * c * oc) as f64).sum::<f64>();
    let mut passes = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for layer in &layers {
            for (w, &(c, oc)) in layer.iter().zip(&SHAPES) {
                dot_gemm::forward(&mut out[..m * oc], &x[..m * c], w, None, c, oc);
            }
        }
        passes.push(t.elapsed().as_secs_f64());
    }
    passes.sort_by(f64::total_cmp);
    let (best, median) = (passes[0], passes[passes.len() / 2]);
    println!(
        "f32 dot_gemm, 64 rows × 12 layers: best {:.1} ms ({:.1} GFLOP/s), median {:.1} ms ({:.1} GFLOP/s)",
        best * 1e3,
        flops / best / 1e9,
        median * 1e3,
        flops / median / 1e9
    );
}

/// The tiles' speed with both operands on 64-byte boundaries and 16 bytes past them, at a task's block (84
/// weight rows, in L2) and a whole GPT-2 product (768 weight rows).
fn alignment(rng: &mut Rng) {
    println!("-- dot_gemm with operands on cache lines and 16 bytes off");
    for (m, c, oc) in [(64, 768, 84), (64, 768, 768), (64, 3072, 768)] {
        let flops = 2.0 * (m * c * oc) as f64;
        let (x, w) = (random(m * c + 16, rng), random(oc * c + 16, rng));
        let mut out = vec![0.0; m * oc];
        let mut seconds = [0.0; 2];
        for (offset_bytes, seconds) in [0usize, 16].into_iter().zip(&mut seconds) {
            // The first element on a line, then `offset_bytes` past it.
            let start = |v: &[f32]| (16 - v.as_ptr() as usize % 64 / 4) % 16 + offset_bytes / 4;
            let (x, w) = (&x[start(&x)..][..m * c], &w[start(&w)..][..oc * c]);
            let label = format!("f32 dot_gemm {m}×{c}×{oc}, {offset_bytes} bytes off a line");
            *seconds = time(&label, flops, || dot_gemm::forward(&mut out, x, w, None, c, oc));
        }
        println!("{:>58} on lines {:.2}× faster", "", seconds[1] / seconds[0]);
    }
}
