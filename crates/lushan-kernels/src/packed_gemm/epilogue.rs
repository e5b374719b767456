//! What a product does with each finished tile of C besides keeping it: the element-wise step that follows
//! the product in the model, run while the tile's rows are still in L1 instead of in a pass over C after.

use crate::gelu;

/// The step after the product, on C's final values (applied in the last block of k). Its matrices have C's
/// shape and row stride.
pub enum Then<'a> {
    /// C only.
    Nothing,
    /// `out = gelu(C)`: the MLP's activation after its first layer (C is the pre-activation, kept for the
    /// backward pass).
    Gelu(&'a mut [f32]),
    /// `dx = C·gelu'(x)` (overwriting `dx`): the GELU's backward, C being the gradient of its output.
    GeluBackward { x: &'a [f32], dx: &'a mut [f32] },
}

impl Then<'_> {
    /// Whether the step needs `len` values (C's extent) in each of its matrices.
    pub(super) fn fits(&self, len: usize) -> bool {
        match self {
            Then::Nothing => true,
            Then::Gelu(out) => out.len() >= len,
            Then::GeluBackward { x, dx } => x.len() >= len && dx.len() >= len,
        }
    }

    /// The step cut into the row blocks `chunk` values long that C is cut into for its tasks.
    pub(super) fn split(&mut self, chunk: usize, blocks: usize) -> Vec<Then<'_>> {
        match self {
            Then::Nothing => (0..blocks).map(|_| Then::Nothing).collect(),
            Then::Gelu(out) => out.chunks_mut(chunk).take(blocks).map(Then::Gelu).collect(),
            Then::GeluBackward { x, dx } => x
                .chunks(chunk)
                .zip(dx.chunks_mut(chunk))
                .take(blocks)
                .map(|(x, dx)| Then::GeluBackward { x, dx })
                .collect(),
        }
    }

    /// The step as one pass over the whole of `c` (rows contiguous), for the products that have no
    /// epilogue: the same values as tile by tile (the GELU's backward into zeros, so but for a zero's sign).
    pub fn as_pass(self, c: &[f32]) {
        match self {
            Then::Nothing => {}
            Then::Gelu(out) => gelu::forward(&mut out[..c.len()], c),
            Then::GeluBackward { x, dx } => {
                let dx = &mut dx[..c.len()];
                dx.fill(0.0);
                gelu::backward(dx, &x[..c.len()], c);
            }
        }
    }

    /// The step on `c_row`, the finished values at offset `at` of this block's C.
    pub(super) fn apply(&mut self, at: usize, c_row: &[f32]) {
        let n = c_row.len();
        match self {
            Then::Nothing => {}
            Then::Gelu(out) => gelu::forward_row(&mut out[at..][..n], c_row),
            Then::GeluBackward { x, dx } => gelu::backward_row_into(&mut dx[at..][..n], &x[at..][..n], c_row),
        }
    }
}
