//! Block-quantized weights as llama.cpp defines them (`ggml-quants.c`), so GGUF files are read and written
//! byte for byte:
//! - **Q8_0**: 32 weights share one f16 scale `d = max|x| / 127`; each weight is `round(x / d)` as an `i8`
//!   (34 bytes a block, 8.5 bits a weight).
//! - **Q4_0**: 32 weights share one f16 scale `d = m / −8`, `m` the value of largest magnitude (its sign
//!   kept); each weight is a nibble `q = min(15, trunc(x / d + 8.5))` standing for `(q − 8)·d`; byte `j` holds
//!   weight `j` in its low nibble and weight `j + 16` in its high one (18 bytes a block, 4.5 bits a weight).
//!
//! The scale is stored rounded to f16 but the weights are quantized with the unrounded one, as llama.cpp
//! does. [`dot`] has the products that consume these blocks directly.

pub mod dot;
pub mod packed_q4;

use half::f16;

/// Weights per block (both types).
pub const BLOCK: usize = 32;

/// 32 weights in 8 bits each and their shared scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The scale's f16 bits.
    pub d: u16,
    pub qs: [i8; BLOCK],
}

/// 32 weights in 4 bits each and their shared scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// The scale's f16 bits.
    pub d: u16,
    /// Byte `j`: weight `j` in the low nibble, weight `j + 16` in the high nibble.
    pub qs: [u8; BLOCK / 2],
}

impl BlockQ8_0 {
    /// Bytes a block takes in a GGUF file: the scale (little-endian f16), then the 32 weights.
    pub const BYTES: usize = 2 + BLOCK;

    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }

    /// The block from its file bytes (`bytes.len()` must be [`Self::BYTES`]).
    pub fn from_bytes(bytes: &[u8; Self::BYTES]) -> Self {
        Self { d: u16::from_le_bytes([bytes[0], bytes[1]]), qs: std::array::from_fn(|j| bytes[2 + j] as i8) }
    }

    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, &q) in out[2..].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        out
    }
}

impl BlockQ4_0 {
    /// Bytes a block takes in a GGUF file: the scale (little-endian f16), then the 16 nibble pairs.
    pub const BYTES: usize = 2 + BLOCK / 2;

    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }

    pub fn from_bytes(bytes: &[u8; Self::BYTES]) -> Self {
        Self { d: u16::from_le_bytes([bytes[0], bytes[1]]), qs: std::array::from_fn(|j| bytes[2 + j]) }
    }

    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..].copy_from_slice(&self.qs);
        out
    }

    /// The 32 weights as signed integers `q − 8` in `−8..=7`, in order.
    pub fn unpack(&self) -> [i8; BLOCK] {
        std::array::from_fn(|j| {
            let byte = self.qs[j % (BLOCK / 2)];
            let nibble = if j < BLOCK / 2 { byte & 0x0F } else { byte >> 4 };
            nibble as i8 - 8
        })
    }
}

/// Quantizes `x` into Q8_0 blocks: `out.len() · 32 == x.len()`.
///
/// # Panics
/// If the lengths disagree (a caller bug: model code checks row lengths with a named error first).
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_q8_0: {} values for {} blocks", x.len(), out.len());
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_bits();
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            // `round` is C's `roundf` (halves away from zero); the value is within ±127.
            *q = (v * id).round() as i8;
        }
    }
}

/// Quantizes `x` into Q4_0 blocks: `out.len() · 32 == x.len()`.
///
/// # Panics
/// If the lengths disagree.
pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_q4_0: {} values for {} blocks", x.len(), out.len());
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        // The first value of largest magnitude, with its sign: it maps to nibble 0, i.e. −8·d.
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_bits();
        let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..BLOCK / 2 {
            block.qs[j] = nibble(xs[j]) | (nibble(xs[j + BLOCK / 2]) << 4);
        }
    }
}

/// `out[i] = d · q[i]` for every block.
pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * BLOCK, "dequantize_q8_0: output length");
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = block.scale();
        out.iter_mut().zip(&block.qs).for_each(|(o, &q)| *o = d * f32::from(q));
    }
}

/// `out[i] = d · (q[i] − 8)` for every block.
pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * BLOCK, "dequantize_q4_0: output length");
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = block.scale();
        out.iter_mut().zip(block.unpack()).for_each(|(o, q)| *o = d * f32::from(q));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_block_has_zero_scale_and_round_trips() {
        let mut q8 = [BlockQ8_0::default()];
        quantize_q8_0(&[0.0; BLOCK], &mut q8);
        assert_eq!(q8[0].d, 0);
        let mut q4 = [BlockQ4_0::default()];
        quantize_q4_0(&[0.0; BLOCK], &mut q4);
        assert_eq!(q4[0].unpack(), [0i8; BLOCK]);
        let mut out = [1.0f32; BLOCK];
        dequantize_q4_0(&q4, &mut out);
        assert_eq!(out, [0.0; BLOCK]);
    }

    #[test]
    fn bytes_round_trip() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13).collect();
        let mut q8 = [BlockQ8_0::default(); 2];
        quantize_q8_0(&x, &mut q8);
        assert!(q8.iter().all(|b| BlockQ8_0::from_bytes(&b.to_bytes()) == *b));
        let mut q4 = [BlockQ4_0::default(); 2];
        quantize_q4_0(&x, &mut q4);
        assert!(q4.iter().all(|b| BlockQ4_0::from_bytes(&b.to_bytes()) == *b));
    }
}
