//! Pure `f32` kernels for a GPT: each module owns one operation with a `forward` and a `backward`.
//!
//! Conventions shared by every kernel:
//! - Arguments come in the order outputs, caches, inputs, weights, dimensions.
//! - Per-position operations take flat rows (`N = B·T`) and a channel count `C`; only attention and the
//!   encoder need `B` and `T`.
//! - `backward` takes the input gradients first and **accumulates** into them (`+=`), so a caller must zero
//!   a gradient buffer before the first contribution of a step.
//! - Kernels never allocate per element, never do I/O, and know nothing about model configurations.
//!   Wrong shapes are caller bugs: extents that unsafe code relies on are `assert!`ed in release builds too,
//!   the rest are caught by `debug_assert!` (safe indexing bounds-checks them anyway).
//! - Only loops whose outputs are disjoint per thread are parallel, so a result is bit-identical for a given
//!   thread count; reductions use fixed-size chunks so they are bit-identical for any thread count.
// Unsafe code is allowed only item by item, in kernels that measure faster for it, each with a SAFETY note.
#![deny(unsafe_code)]

pub mod adamw;
pub mod alloc;
pub mod amx;
pub mod attention;
pub mod crossentropy;
pub mod dot_gemm;
pub mod dropout;
pub mod encoder;
pub mod flash_attention;
pub mod gelu;
pub mod gemv;
pub mod layernorm;
pub mod matmul;
pub mod packed_gemm;
pub mod quant;
pub mod reduce;
pub mod residual;
pub mod rng;
pub mod softmax;
pub mod vector;
pub mod weights;

/// Finite-difference and comparison helpers for tests (this crate's and the model crate's).
#[doc(hidden)]
pub mod gradcheck;

/// Rows handed to one parallel task: big enough to amortise scheduling, small enough to balance two cores.
pub(crate) const PAR_ROWS: usize = 16;

/// Whether a `rows × cols` matrix (both ≥ 1) with strides `(rs, cs)` lies inside a slice of `len` elements:
/// its last element, `(rows-1)·rs + (cols-1)·cs`, computed without overflow, is below `len`. The check the
/// GEMMs' raw-pointer paths rely on.
pub(crate) fn fits((rows, cols): (usize, usize), (rs, cs): (usize, usize), len: usize) -> bool {
    let last = (rows - 1).checked_mul(rs).zip((cols - 1).checked_mul(cs)).and_then(|(r, c)| r.checked_add(c));
    last.is_some_and(|last| last < len)
}
