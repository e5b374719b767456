//! Fully connected layer: `out = inp · Wᵀ + bias`, with `W` stored `(OC, C)` as in `torch.nn.Linear`.
//!
//! The heavy lifting is [`packed_gemm`]'s AVX-512 kernel where the CPU has AVX-512 F, and
//! `matrixmultiply::sgemm` elsewhere (it beat the `gemm` crate at our small shapes, builds five times faster,
//! and accepts arbitrary strides). Both read operands through strides, so every transpose below is free.
//! [`forward_naive`] and [`backward_naive`] are the plain loops the optimised path is tested against.

use crate::fits;
use crate::packed_gemm::{self, Kernel, PackedB, Precision, Strided, Then};
use rayon::prelude::*;

/// Rows of the output handed to one single-threaded GEMM call. Splitting the output rows over rayon
/// (instead of using matrixmultiply's own thread pool) keeps one pool on the machine — two pools spinning
/// on two cores fight each other — and each output element is computed by one thread in a fixed order, so
/// results do not depend on the thread count.
const ROWS_PER_TASK: usize = 64;

/// `C = A·B + beta·C` on row/column strides; the one place that chooses the GEMM. Bf16 products, and f32
/// ones where the CPU has AVX-512, run on [`packed_gemm`]; other f32 products on matrixmultiply.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    precision: Precision,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if takes_packed(precision) {
        let (a, b) = (Strided { data: a, rs: rsa, cs: csa }, Strided { data: b, rs: rsb, cs: csb });
        return packed_gemm::gemm(precision, (m, k, n), a, b, beta, c, rsc);
    }
    sgemm_matrixmultiply(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc);
}

/// Whether products in `precision` take [`packed_gemm`]: bf16 always; f32 where the CPU has AVX-512 F
/// (there it measured 0.9–1.6× matrixmultiply's at training shapes, faster at most: `cargo bench -p
/// lushan-kernels --bench kernels -- f32-gemm`) unless `LUSHAN_F32_GEMM=matrixmultiply` asks for the
/// other (for comparisons); elsewhere matrixmultiply's AVX2/FMA kernels are the fast path.
fn takes_packed(precision: Precision) -> bool {
    static F32_PACKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    precision == Precision::Bf16
        || *F32_PACKED.get_or_init(|| {
            packed_gemm::runs(Kernel::Avx512, Precision::F32)
                && std::env::var("LUSHAN_F32_GEMM").as_deref() != Ok("matrixmultiply")
        })
}

/// Whether [`forward_in`]'s product in `precision` takes [`packed_gemm`], so that its weight can be packed
/// beforehand ([`pack_forward`]).
pub fn packs_weights(precision: Precision) -> bool {
    takes_packed(precision)
}

/// A linear layer's weight `(OC, C)` as its forward product reads it: the values, and optionally the
/// product's operand `Wᵀ` packed beforehand ([`pack_forward`]) — packed once per optimizer step for every
/// pass that reads the same weights, instead of once per product.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub values: &'a [f32],
    pub packed: Option<&'a PackedB>,
}

impl<'a> From<&'a [f32]> for Weight<'a> {
    fn from(values: &'a [f32]) -> Self {
        Self { values, packed: None }
    }
}

/// `Wᵀ` of a `(OC, C)` weight packed for [`forward_in`]'s product in `precision`; `None` where that product
/// does not take [`packed_gemm`] (f32 on a CPU without AVX-512 F).
pub fn pack_forward(precision: Precision, weight: &[f32], c: usize, oc: usize) -> Option<PackedB> {
    assert_eq!(Some(weight.len()), oc.checked_mul(c), "matmul: weight shape");
    // Wᵀ[k][j] = W[j·C + k] → strides (1, C), as the forward product reads it.
    takes_packed(precision).then(|| PackedB::new(precision, (c, oc), Strided { data: weight, rs: 1, cs: c }))
}

/// `W` of a `(OC, C)` weight packed for the input-gradient product `dinp += dout·W` in `precision` (the
/// output layer's, shared by its chunks of rows); `None` as for [`pack_forward`].
pub fn pack_input_gradient(precision: Precision, weight: &[f32], c: usize, oc: usize) -> Option<PackedB> {
    assert_eq!(Some(weight.len()), oc.checked_mul(c), "matmul: weight shape");
    takes_packed(precision).then(|| PackedB::new(precision, (oc, c), Strided { data: weight, rs: c, cs: 1 }))
}

/// [`sgemm`] in f32 through matrixmultiply, its output rows (or, short and wide, its columns) split over
/// rayon. Public for the bench that compares it with [`packed_gemm`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_matrixmultiply(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Checked in release builds too: the column-split path below hands raw pointers to the GEMM, so these
    // extents are what make it sound, and they cost nothing next to the product.
    assert!(k == 0 || fits((m, k), (rsa, csa), a.len()), "matmul: A too short for its shape");
    assert!(k == 0 || fits((k, n), (rsb, csb), b.len()), "matmul: B too short for its shape");
    assert!(fits((m, n), (rsc, 1), c.len()), "matmul: C too short for its shape");
    let tasks = rayon::current_num_threads().max(1);
    if tasks > 1 && n > m {
        // Short and wide (prefill, small batches, big output layers): split the output columns, so each task
        // packs half of the larger operand B instead of all of it.
        return sgemm_split_columns(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc, tasks);
    }
    let rows = m.div_ceil(tasks).max(ROWS_PER_TASK.min(m)).div_ceil(8) * 8;
    c[..(m - 1) * rsc + n].par_chunks_mut(rows * rsc).enumerate().for_each(|(i, c_rows)| {
        let r0 = i * rows;
        let mr = rows.min(m - r0);
        // This task owns output rows r0..r0+mr: the bounds-checked serial GEMM on those rows of A and C.
        gemm_serial((mr, k, n), 1.0, &a[r0 * rsa..], (rsa, csa), b, (rsb, csb), beta, c_rows, (rsc, 1));
    });
}

/// The output matrix shared by column-split tasks, each of which writes only its own columns.
struct SharedOutput(*mut f32);
// SAFETY: tasks write disjoint column ranges of the matrix behind the pointer (see `sgemm_split_columns`),
// and the borrow it came from outlives the parallel loop.
#[allow(unsafe_code)]
unsafe impl Sync for SharedOutput {}

#[allow(clippy::too_many_arguments, unsafe_code)]
fn sgemm_split_columns(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    tasks: usize,
) {
    // Column blocks in multiples of 16 (a whole AVX-512 register of outputs).
    let cols = n.div_ceil(tasks).div_ceil(16) * 16;
    let out = SharedOutput(c.as_mut_ptr());
    let out = &out;
    (0..n.div_ceil(cols)).into_par_iter().for_each(|t| {
        let j0 = t * cols;
        let nj = cols.min(n - j0);
        // SAFETY: A is read within its asserted extent; columns j0..j0+nj of B start at j0·csb and stay within
        // its asserted extent; this task writes C[i][j0..j0+nj] for i < m, all inside the asserted extent of C
        // (c.len() ≥ (m-1)·rsc + n), and no two tasks share a column.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nj,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr().add(j0 * csb),
                rsb as isize,
                csb as isize,
                beta,
                out.0.add(j0),
                rsc as isize,
                1,
            );
        }
    });
}

/// Single-threaded strided GEMM, `C = alpha·A·B + beta·C`, for callers that are already inside a
/// parallel task (attention works per batch element). Strides are `(row, column)` in elements.
#[allow(clippy::too_many_arguments, unsafe_code)]
pub fn gemm_serial(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    (rsc, csc): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds are checked in release builds too: these are cheap next to the product.
    assert!(k == 0 || fits((m, k), (rsa, csa), a.len()), "gemm_serial: A too short");
    assert!(k == 0 || fits((k, n), (rsb, csb), b.len()), "gemm_serial: B too short");
    assert!(fits((m, n), (rsc, csc), c.len()), "gemm_serial: C too short");
    // SAFETY: the assertions above bound every element sgemm reads from A and B and writes to C.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// Forward.
///
/// # Shapes
/// `out`: (N, OC), `inp`: (N, C), `weight`: (OC, C), `bias`: (OC).
pub fn forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, c: usize, oc: usize) {
    forward_in(Precision::F32, out, inp, weight, bias, c, oc);
}

/// [`forward`] with the product in `precision` (bias added in f32). Up to [`crate::gemv::MAX_ROWS`] rows
/// take the f32 matrix-vector path whatever the precision: there the weights' bytes, not the arithmetic,
/// bound the time.
pub fn forward_in<'w>(
    precision: Precision,
    out: &mut [f32],
    inp: &[f32],
    weight: impl Into<Weight<'w>>,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    forward_then(precision, out, inp, weight.into(), bias, Then::Nothing, c, oc);
}

/// [`forward_in`] and then `then` on its output: in the packed GEMM's epilogue (the bias too, as each tile
/// is written), else as passes over the output before (the bias) and after (`then`) the product.
#[allow(clippy::too_many_arguments)]
fn forward_then(
    precision: Precision,
    out: &mut [f32],
    inp: &[f32],
    Weight { values: weight, packed }: Weight<'_>,
    bias: Option<&[f32]>,
    then: Then<'_>,
    c: usize,
    oc: usize,
) {
    let n = inp.len() / c;
    assert_eq!(inp.len(), n * c, "matmul: input is not whole rows of C");
    assert_eq!(out.len(), n * oc, "matmul: output shape");
    assert_eq!(weight.len(), oc * c, "matmul: weight shape");
    if n <= GEMV_MAX_ROWS {
        forward_few_rows(out, inp, weight, bias, c, oc);
        return then.as_pass(out);
    }
    // out (N×OC) = inp (N×C) · Wᵀ (C×OC); Wᵀ[k][j] = W[j·C + k] → strides (1, C).
    if takes_packed(precision) {
        let a = Strided { data: inp, rs: c, cs: 1 };
        if let Some(packed) = packed {
            assert!(packed.shape() == (c, oc), "matmul: the packed weight is not this layer's Wᵀ");
            assert!(packed.precision() == precision, "matmul: the packed weight is in another precision");
            return packed_gemm::gemm_packed(n, a, packed, (0.0, bias, then), out, oc);
        }
        let b = Strided { data: weight, rs: 1, cs: c };
        return packed_gemm::gemm_epilogue(precision, (n, c, oc), a, b, (bias, then), out, oc);
    }
    let beta = match bias {
        Some(bias) => {
            out.par_chunks_mut(oc).for_each(|row| row.copy_from_slice(bias));
            1.0
        }
        None => 0.0,
    };
    sgemm(precision, n, c, oc, inp, (c, 1), weight, (1, c), beta, out, oc);
    then.as_pass(out);
}

/// [`forward_in`] followed by GELU: `pre = inp·Wᵀ + bias` (kept for the backward pass) and `out =
/// gelu(pre)` — on the packed GEMM the GELU runs on each finished tile (its epilogue) instead of in a second
/// pass over `pre`; the values are [`forward_in`]'s and [`crate::gelu::forward`]'s bit for bit.
///
/// # Shapes
/// `pre`, `out`: (N, OC), `inp`: (N, C), `weight`: (OC, C), `bias`: (OC).
#[allow(clippy::too_many_arguments)]
pub fn forward_gelu_in<'w>(
    precision: Precision,
    (pre, out): (&mut [f32], &mut [f32]),
    inp: &[f32],
    weight: impl Into<Weight<'w>>,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), pre.len(), "matmul: GELU output shape");
    forward_then(precision, pre, inp, weight.into(), bias, Then::Gelu(out), c, oc);
}

/// `out += inp·Wᵀ` (no bias): adds a second product onto an output, as a LoRA adapter adds
/// `scale·(x·Aᵀ)·Bᵀ` onto its base layer's output.
///
/// # Shapes
/// `out`: (N, OC), `inp`: (N, C), `weight`: (OC, C).
pub fn forward_accumulate(out: &mut [f32], inp: &[f32], weight: &[f32], c: usize, oc: usize) {
    let n = inp.len() / c;
    assert_eq!(inp.len(), n * c, "matmul: input is not whole rows of C");
    assert_eq!(out.len(), n * oc, "matmul: output shape");
    assert_eq!(weight.len(), oc * c, "matmul: weight shape");
    sgemm(Precision::F32, n, c, oc, inp, (c, 1), weight, (1, c), 1.0, out, oc);
}

/// Backward to the input only, **accumulating** `dinp += dout·W`: for a frozen weight (LoRA fine-tuning
/// trains adapters, so the base weights' gradients — a third of a step's products — are never computed).
///
/// # Shapes
/// `dinp`: (N, C); `dout`: (N, OC); `weight`: (OC, C).
pub fn backward_input(dinp: &mut [f32], dout: &[f32], weight: &[f32], c: usize, oc: usize) {
    backward_input_in(Precision::F32, dinp, dout, weight, c, oc);
}

/// [`backward_input`] with the product in `precision`.
pub fn backward_input_in(precision: Precision, dinp: &mut [f32], dout: &[f32], weight: &[f32], c: usize, oc: usize) {
    let n = dinp.len() / c;
    assert_eq!(dout.len(), n * oc, "matmul: output-gradient shape");
    assert_eq!(weight.len(), oc * c, "matmul: weight shape");
    sgemm(precision, n, oc, c, dout, (oc, 1), weight, (c, 1), 1.0, dinp, c);
}

/// Up to this many rows (cached decoding) a GEMM cannot block its work; the matrix-vector kernel in
/// [`crate::gemv`] streams the weights once, at memory bandwidth, for all the rows together.
const GEMV_MAX_ROWS: usize = crate::gemv::MAX_ROWS;

/// `out = inp·Wᵀ + b` for a handful of rows: see [`crate::gemv::forward`].
fn forward_few_rows(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, c: usize, oc: usize) {
    crate::gemv::forward(out, inp, weight, bias, c, oc);
}

/// Backward, **accumulating** into `dinp`, `dweight` and `dbias`.
///
/// Forward was `out = inp·Wᵀ + b`, so `dinp += dout·W`, `dW += doutᵀ·inp` and `db += Σ_rows dout`.
/// `dinp` may be `None` when the input needs no gradient (the token embedding is a parameter, not an input).
///
/// # Shapes
/// `dinp`, `inp`: (N, C); `dweight`, `weight`: (OC, C); `dbias`: (OC); `dout`: (N, OC).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    c: usize,
    oc: usize,
) {
    backward_in(Precision::F32, dinp, dweight, dbias, dout, inp, weight, c, oc);
}

/// [`backward`] with both products in `precision` (the bias gradient is an f32 sum).
#[allow(clippy::too_many_arguments)]
pub fn backward_in(
    precision: Precision,
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    c: usize,
    oc: usize,
) {
    let n = inp.len() / c;
    assert_eq!(dout.len(), n * oc, "matmul: output-gradient shape");
    assert_eq!(dweight.len(), oc * c, "matmul: weight-gradient shape");
    if let Some(dinp) = dinp {
        assert_eq!(dinp.len(), n * c, "matmul: input-gradient shape");
        // dinp (N×C) += dout (N×OC) · W (OC×C).
        sgemm(precision, n, oc, c, dout, (oc, 1), weight, (c, 1), 1.0, dinp, c);
    }
    // dW (OC×C) += doutᵀ (OC×N) · inp (N×C); doutᵀ[j][i] = dout[i·OC + j] → strides (1, OC).
    sgemm(precision, oc, n, c, dout, (1, oc), inp, (c, 1), 1.0, dweight, c);
    if let Some(dbias) = dbias {
        bias_backward(dbias, dout, oc);
    }
}

/// The backward of [`forward_gelu_in`]'s layer *after* the GELU, through the GELU: with `post = gelu(pre)`
/// the layer's input, `dpost = dout·W` and `dpre = dpost·gelu'(pre)`, both **overwritten**, and, unless
/// the weights are frozen (`None`), `dW += doutᵀ·post` and `db += Σ_rows dout`. On the packed GEMM the
/// GELU's backward runs on each finished tile of `dpost` (its epilogue); the values equal
/// [`backward_in`] into zeros followed by [`crate::gelu::backward`] into zeros (but for a zero's sign).
///
/// # Shapes
/// `dpost`, `dpre`, `pre`, `post`: (N, C); `dweight`, `weight`: (OC, C); `dbias`: (OC); `dout`: (N, OC).
#[allow(clippy::too_many_arguments)]
pub fn backward_through_gelu_in(
    precision: Precision,
    (dpost, dpre): (&mut [f32], &mut [f32]),
    pre: &[f32],
    dweights: Option<(&mut [f32], &mut [f32])>,
    dout: &[f32],
    post: &[f32],
    weight: &[f32],
    c: usize,
    oc: usize,
) {
    let n = post.len() / c;
    assert!(
        dpost.len() == n * c && dpre.len() == n * c && pre.len() == n * c,
        "matmul: GELU gradient shapes are not the input's"
    );
    assert_eq!(dout.len(), n * oc, "matmul: output-gradient shape");
    assert_eq!(weight.len(), oc * c, "matmul: weight shape");
    // dpost (N×C) = dout (N×OC) · W (OC×C), then dpre = dpost·gelu'(pre): tile by tile on the packed GEMM.
    let then = Then::GeluBackward { x: pre, dx: dpre };
    if takes_packed(precision) {
        let (a, b) = (Strided { data: dout, rs: oc, cs: 1 }, Strided { data: weight, rs: c, cs: 1 });
        packed_gemm::gemm_epilogue(precision, (n, oc, c), a, b, (None, then), dpost, c);
    } else {
        sgemm(precision, n, oc, c, dout, (oc, 1), weight, (c, 1), 0.0, dpost, c);
        then.as_pass(dpost);
    }
    if let Some((dweight, dbias)) = dweights {
        backward_in(precision, None, dweight, Some(dbias), dout, post, weight, c, oc);
    }
}

/// `dbias += Σ_rows dout`, split by output channel so each task owns its outputs.
fn bias_backward(dbias: &mut [f32], dout: &[f32], oc: usize) {
    const PAR_CHANNELS: usize = 64;
    dbias.par_chunks_mut(PAR_CHANNELS).enumerate().for_each(|(chunk, db)| {
        let j0 = chunk * PAR_CHANNELS;
        let width = db.len();
        for row in dout.chunks_exact(oc) {
            for (d, &g) in db.iter_mut().zip(&row[j0..j0 + width]) {
                *d += g;
            }
        }
    });
}

/// The plain triple loop [`forward`] must agree with.
pub fn forward_naive(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, c: usize, oc: usize) {
    for (o_row, x_row) in out.chunks_exact_mut(oc).zip(inp.chunks_exact(c)) {
        for (j, o) in o_row.iter_mut().enumerate() {
            let w_row = &weight[j * c..][..c];
            let dot: f32 = x_row.iter().zip(w_row).map(|(a, b)| a * b).sum();
            *o = dot + bias.map_or(0.0, |b| b[j]);
        }
    }
}

/// The plain loops [`backward`] must agree with (accumulating, like it).
#[allow(clippy::too_many_arguments)]
pub fn backward_naive(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    c: usize,
    oc: usize,
) {
    for ((d_row, x_row), g_row) in dinp.chunks_exact_mut(c).zip(inp.chunks_exact(c)).zip(dout.chunks_exact(oc)) {
        for (j, &g) in g_row.iter().enumerate() {
            let w_row = &weight[j * c..][..c];
            let dw_row = &mut dweight[j * c..][..c];
            for k in 0..c {
                d_row[k] += g * w_row[k];
                dw_row[k] += g * x_row[k];
            }
            dbias[j] += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::*;
    use crate::rng::Rng;

    // Release builds (the test profile here) must refuse slices too short for the shape before the GEMM's
    // raw pointers could read or write past them.
    #[test]
    #[should_panic(expected = "matmul: weight shape")]
    fn forward_refuses_a_short_weight_in_release_builds() {
        let (n, c, oc) = (80, 16, 48); // more rows than the matrix-vector path takes: the GEMM path
        let mut out = vec![0.0; n * oc];
        forward(&mut out, &vec![1.0; n * c], &vec![1.0; oc * c - 1], None, c, oc);
    }

    #[test]
    #[should_panic(expected = "C too short")]
    fn gemm_serial_refuses_a_short_output() {
        let mut c = vec![0.0; 8 * 8 - 1];
        gemm_serial((8, 8, 8), 1.0, &[1.0; 64], (8, 1), &[1.0; 64], (8, 1), 0.0, &mut c, (8, 1));
    }

    #[test]
    fn extents_do_not_overflow() {
        assert!(fits((2, 3), (3, 1), 6));
        assert!(!fits((2, 3), (3, 1), 5));
        assert!(!fits((2, 2), (usize::MAX, 1), usize::MAX));
    }

    fn reference(x: &[f64], w: &[f64], b: &[f64], c: usize, oc: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for row in x.chunks_exact(c) {
            for j in 0..oc {
                out.push(row.iter().zip(&w[j * c..(j + 1) * c]).map(|(a, b)| a * b).sum::<f64>() + b[j]);
            }
        }
        out
    }

    fn check(n: usize, c: usize, oc: usize) {
        let mut rng = Rng::new((n * 1000 + c * 10 + oc) as u64);
        let x = random_f32(&mut rng, n * c, 1.0);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let b = random_f32(&mut rng, oc, 1.0);
        let dout = random_f32(&mut rng, n * oc, 1.0);
        let mut out = vec![0.0; n * oc];
        forward(&mut out, &x, &w, Some(&b), c, oc);
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
        assert_close("matmul out", &out, &reference(&x64, &w64, &b64, c, oc), 1e-5, 1e-4);
        let mut naive = vec![0.0; n * oc];
        forward_naive(&mut naive, &x, &w, Some(&b), c, oc);
        assert_close("matmul out vs naive", &out, &to_f64(&naive), 1e-5, 1e-4);

        let (mut dx, mut dw, mut db) = (vec![0.5; n * c], vec![0.5; oc * c], vec![0.5; oc]);
        backward(Some(&mut dx), &mut dw, Some(&mut db), &dout, &x, &w, c, oc);
        let (mut ndx, mut ndw, mut ndb) = (vec![0.5; n * c], vec![0.5; oc * c], vec![0.5; oc]);
        backward_naive(&mut ndx, &mut ndw, &mut ndb, &dout, &x, &w, c, oc);
        assert_close("matmul dinp vs naive", &dx, &to_f64(&ndx), 1e-4, 1e-4);
        assert_close("matmul dweight vs naive", &dw, &to_f64(&ndw), 1e-4, 1e-4);
        assert_close("matmul dbias vs naive", &db, &to_f64(&ndb), 1e-4, 1e-4);

        let loss = |x: &[f64], w: &[f64], b: &[f64]| weighted_sum(&reference(x, w, b, c, oc), &dout);
        let plus = |g: Vec<f64>| g.into_iter().map(|v| v + 0.5).collect::<Vec<_>>();
        assert_close("matmul dinp", &dx, &plus(numeric_grad(|p| loss(p, &w64, &b64), &x64, 1e-6)), 1e-4, 1e-4);
        assert_close("matmul dweight", &dw, &plus(numeric_grad(|p| loss(&x64, p, &b64), &w64, 1e-6)), 1e-4, 1e-4);
        assert_close("matmul dbias", &db, &plus(numeric_grad(|p| loss(&x64, &w64, p), &b64, 1e-6)), 1e-4, 1e-4);
    }

    #[test]
    fn matches_reference_naive_twin_and_finite_differences_on_ragged_shapes() {
        check(1, 1, 1);
        check(3, 5, 7);
        check(17, 13, 70);
        check(9, 33, 3);
    }

    #[test]
    fn short_wide_products_split_by_column_agree_with_naive() {
        let mut rng = Rng::new(6);
        for (n, c, oc) in [(5, 33, 300), (64, 40, 517), (9, 7, 1000)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            let (mut fast, mut slow) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward(&mut fast, &x, &w, Some(&b), c, oc);
            forward_naive(&mut slow, &x, &w, Some(&b), c, oc);
            assert_close("matmul column split vs naive", &fast, &to_f64(&slow), 1e-4, 1e-4);
            let dout = random_f32(&mut rng, n * oc, 1.0);
            let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
            backward(Some(&mut dx), &mut dw, Some(&mut db), &dout, &x, &w, c, oc);
            let (mut ndx, mut ndw, mut ndb) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
            backward_naive(&mut ndx, &mut ndw, &mut ndb, &dout, &x, &w, c, oc);
            assert_close("matmul column split dinp vs naive", &dx, &to_f64(&ndx), 1e-4, 1e-4);
            assert_close("matmul column split dweight vs naive", &dw, &to_f64(&ndw), 1e-4, 1e-4);
        }
    }

    /// On a CPU with AVX-512 the layers take the packed kernel, so matrixmultiply's route (the path on
    /// other CPUs) is checked here directly: row-split and column-split products, with and without beta.
    #[test]
    fn matrixmultiply_route_agrees_with_naive() {
        let mut rng = Rng::new(8);
        for (n, c, oc) in [(70, 33, 20), (5, 33, 300), (130, 64, 96)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            let mut slow = vec![0.0; n * oc];
            forward_naive(&mut slow, &x, &w, Some(&b), c, oc);
            let mut fast: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
            sgemm_matrixmultiply(n, c, oc, &x, (c, 1), &w, (1, c), 1.0, &mut fast, oc);
            assert_close("matrixmultiply route vs naive", &fast, &to_f64(&slow), 1e-4, 1e-4);
        }
    }

    /// The MLP's layers with the GELU in the products' epilogues equal the products and the GELU passes:
    /// the forward bit for bit, the backward by value (a zero's sign may differ), with trained and frozen
    /// weights, at a few rows (the matrix-vector path) and many.
    #[test]
    fn gelu_in_the_epilogue_equals_the_separate_passes() {
        let mut rng = Rng::new(13);
        for (n, c, oc) in [(3, 16, 64), (70, 24, 96), (130, 64, 33)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            let (mut pre, mut post) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward_gelu_in(Precision::F32, (&mut pre, &mut post), &x, &w[..], Some(&b), c, oc);
            let (mut want_pre, mut want_post) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward(&mut want_pre, &x, &w, Some(&b), c, oc);
            crate::gelu::forward(&mut want_post, &want_pre);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pre), bits(&want_pre), "pre-activation n{n}");
            assert_eq!(bits(&post), bits(&want_post), "activation n{n}");

            // The next layer (oc → c) and its backward through the GELU.
            let w2 = random_f32(&mut rng, c * oc, 1.0);
            let dout = random_f32(&mut rng, n * c, 1.0);
            for trained in [true, false] {
                let (mut dpost, mut dpre) = (vec![3.0; n * oc], vec![5.0; n * oc]);
                let (mut dw, mut db) = (vec![0.5; c * oc], vec![0.5; c]);
                let dweights = trained.then_some((&mut dw[..], &mut db[..]));
                backward_through_gelu_in(
                    Precision::F32,
                    (&mut dpost, &mut dpre),
                    &pre,
                    dweights,
                    &dout,
                    &post,
                    &w2,
                    oc,
                    c,
                );
                let (mut want_dpost, mut want_dpre) = (vec![0.0; n * oc], vec![0.0; n * oc]);
                let (mut want_dw, mut want_db) = (vec![0.5; c * oc], vec![0.5; c]);
                backward(Some(&mut want_dpost), &mut want_dw, Some(&mut want_db), &dout, &post, &w2, oc, c);
                crate::gelu::backward(&mut want_dpre, &pre, &want_dpost);
                assert_eq!(dpost, want_dpost, "gradient of the activation n{n}");
                assert_eq!(dpre, want_dpre, "gradient of the pre-activation n{n}");
                if trained {
                    assert_eq!((&dw, &db), (&want_dw, &want_db), "weight and bias gradients n{n}");
                } else {
                    assert!(dw.iter().chain(&db).all(|&v| v == 0.5), "frozen weights' gradients untouched");
                }
            }
        }
    }

    #[test]
    fn a_weight_packed_beforehand_gives_the_layers_values_bit_for_bit() {
        let mut rng = Rng::new(17);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for precision in Precision::ALL {
            for (n, c, oc) in [(3, 16, 64), (70, 24, 96), (130, 600, 33)] {
                let x = random_f32(&mut rng, n * c, 1.0);
                let w = random_f32(&mut rng, oc * c, 1.0);
                let b = random_f32(&mut rng, oc, 1.0);
                let Some(packed) = pack_forward(precision, &w, c, oc) else {
                    assert!(!packs_weights(precision), "{precision}: the packed route packs its weights");
                    continue;
                };
                let weight = Weight { values: &w, packed: Some(&packed) };
                let (mut got, mut want) = (vec![0.0; n * oc], vec![0.0; n * oc]);
                forward_in(precision, &mut got, &x, weight, Some(&b), c, oc);
                forward_in(precision, &mut want, &x, &w[..], Some(&b), c, oc);
                assert_eq!(bits(&got), bits(&want), "{precision} n{n}: forward");
                if n > GEMV_MAX_ROWS {
                    // The product reads the packed copy, not the values beside it.
                    let other = random_f32(&mut rng, oc * c, 1.0);
                    let stale = Weight { values: &other, packed: Some(&packed) };
                    let mut from_packed = vec![0.0; n * oc];
                    forward_in(precision, &mut from_packed, &x, stale, Some(&b), c, oc);
                    assert_eq!(bits(&from_packed), bits(&want), "{precision} n{n}: the packed copy is read");
                }
                let (mut pre, mut post) = (vec![0.0; n * oc], vec![0.0; n * oc]);
                let (mut want_pre, mut want_post) = (vec![0.0; n * oc], vec![0.0; n * oc]);
                forward_gelu_in(precision, (&mut pre, &mut post), &x, weight, Some(&b), c, oc);
                forward_gelu_in(precision, (&mut want_pre, &mut want_post), &x, &w[..], Some(&b), c, oc);
                assert_eq!((bits(&pre), bits(&post)), (bits(&want_pre), bits(&want_post)), "{precision} n{n}: GELU");
                // The input-gradient layout, as the output layer's chunks use it: dx += dy·W.
                let input_grad = pack_input_gradient(precision, &w, c, oc).expect("the same route packs both");
                let dy = random_f32(&mut rng, n * oc, 1.0);
                let (mut dx, mut want_dx) = (vec![0.5; n * c], vec![0.5; n * c]);
                let dy_rows = Strided { data: &dy, rs: oc, cs: 1 };
                packed_gemm::gemm_packed(n, dy_rows, &input_grad, (1.0, None, Then::Nothing), &mut dx, c);
                backward_input_in(precision, &mut want_dx, &dy, &w, c, oc);
                assert_eq!(bits(&dx), bits(&want_dx), "{precision} n{n}: input gradient");
            }
        }
    }

    #[test]
    fn few_row_path_agrees_with_naive() {
        let mut rng = Rng::new(4);
        for (n, c, oc) in [(1, 13, 200), (4, 129, 67), (2, 8, 1), (3, 770, 1027), (1, 768, 2304)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let b = random_f32(&mut rng, oc, 1.0);
            let (mut fast, mut slow) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward(&mut fast, &x, &w, Some(&b), c, oc);
            forward_naive(&mut slow, &x, &w, Some(&b), c, oc);
            assert_close("matmul few rows vs naive", &fast, &to_f64(&slow), 1e-5, 1e-5);
        }
    }

    #[test]
    fn optimised_agrees_with_naive_on_larger_shapes_without_bias() {
        let (n, c, oc) = (67, 129, 95);
        let mut rng = Rng::new(3);
        let x = random_f32(&mut rng, n * c, 1.0);
        let w = random_f32(&mut rng, oc * c, 1.0);
        let mut fast = vec![9.0; n * oc];
        let mut slow = vec![0.0; n * oc];
        forward(&mut fast, &x, &w, None, c, oc);
        forward_naive(&mut slow, &x, &w, None, c, oc);
        assert_close("matmul (no bias) vs naive", &fast, &to_f64(&slow), 1e-4, 1e-4);
        let dout = random_f32(&mut rng, n * oc, 1.0);
        let mut dw = vec![0.0; oc * c];
        backward(None, &mut dw, None, &dout, &x, &w, c, oc);
        let (mut ndx, mut ndw, mut ndb) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
        backward_naive(&mut ndx, &mut ndw, &mut ndb, &dout, &x, &w, c, oc);
        assert_close("matmul dweight (no dinp) vs naive", &dw, &to_f64(&ndw), 1e-3, 1e-4);
    }

    #[test]
    fn accumulating_forward_and_input_only_backward_agree_with_naive() {
        let mut rng = Rng::new(11);
        for (n, c, oc) in [(1, 5, 3), (37, 16, 4), (70, 4, 96)] {
            let x = random_f32(&mut rng, n * c, 1.0);
            let w = random_f32(&mut rng, oc * c, 1.0);
            let base = random_f32(&mut rng, n * oc, 1.0);
            let mut out = base.clone();
            forward_accumulate(&mut out, &x, &w, c, oc);
            let mut product = vec![0.0; n * oc];
            forward_naive(&mut product, &x, &w, None, c, oc);
            let want: Vec<f64> = base.iter().zip(&product).map(|(a, b)| (a + b) as f64).collect();
            assert_close("forward_accumulate vs naive", &out, &want, 1e-4, 1e-4);
            let dout = random_f32(&mut rng, n * oc, 1.0);
            let mut dx = vec![0.25; n * c];
            backward_input(&mut dx, &dout, &w, c, oc);
            let (mut ndx, mut ndw, mut ndb) = (vec![0.25; n * c], vec![0.0; oc * c], vec![0.0; oc]);
            backward_naive(&mut ndx, &mut ndw, &mut ndb, &dout, &x, &w, c, oc);
            assert_close("backward_input vs naive (accumulates)", &dx, &to_f64(&ndx), 1e-4, 1e-4);
        }
    }
}
