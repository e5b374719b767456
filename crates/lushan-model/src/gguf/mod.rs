//! GGUF, llama.cpp's model file: a header of typed metadata (key → value) and tensor descriptions, then the
//! tensor data, each tensor at an aligned offset (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! - [`read`]: parses and validates a file before anything is allocated from it (every count and length
//!   is checked against the bytes that remain, every tensor's offset and size against the data section);
//!   [`read::parse`] works on bytes, so the fuzz target drives it directly.
//! - [`write`]: writes metadata and tensors (alignment 32, or `general.alignment`).
//! - [`gpt2`]: GPT-2's tensor names and metadata both ways — a GGUF written by llama.cpp's
//!   `convert_hf_to_gguf.py` / `llama-quantize` loads into a [`crate::Gpt`] (quantized blocks copied as they
//!   are), and a `Gpt` is written as a file llama.cpp runs.
//!
//! Why not a crate: the GGUF crates on crates.io (2026-12) either read only version 3 (llama.cpp's
//! converter still reads and some published files are version 2), map files with "preview" validation, or
//! come inside a whole inference framework; none validated hostile sizes before allocating in the way
//! DESIGN.md §6 asks of checkpoint readers. The format is small (≈ 800 lines here with the types, read and write).

pub mod gpt2;
pub mod read;
pub mod write;

pub use gpt2::{GgufModel, GgufTokenizer, load_gpt2, save_gpt2};
pub use read::{GgufError, GgufFile, TensorInfo, parse};
pub use write::{TensorData, write_gguf};

/// `GGUF` as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version written. Versions 2 and 3 are read: 3 only allows big-endian files, which lushan refuses
/// (their version number reads as a huge one); version 1 had 32-bit counts and is not read.
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor in it when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: every element of one type (kept typed, so a file's bytes bound the memory it takes).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Value type ids of the format, in [`Value`] order.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl Value {
    /// An unsigned integer of any width (llama.cpp writes counts as u32, other writers as u64).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The format's name for the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

/// A tensor element type of ggml (`ggml_type`). Only the types lushan computes with load
/// ([`TensorType::F32`], `F16`, `BF16`, `Q8_0`, `Q4_0`); the others are known so that their sizes validate
/// and an error can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    Bf16,
}

impl TensorType {
    const ALL: [TensorType; 20] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q8_0,
        TensorType::Q8_1,
        TensorType::Q2K,
        TensorType::Q3K,
        TensorType::Q4K,
        TensorType::Q5K,
        TensorType::Q6K,
        TensorType::Q8K,
        TensorType::I8,
        TensorType::I16,
        TensorType::I32,
        TensorType::I64,
        TensorType::F64,
        TensorType::Bf16,
    ];

    /// `(ggml_type id, name, weights a block, bytes a block)`, from ggml.h / ggml.c's type traits.
    fn traits(self) -> (u32, &'static str, u64, u64) {
        match self {
            TensorType::F32 => (0, "F32", 1, 4),
            TensorType::F16 => (1, "F16", 1, 2),
            TensorType::Q4_0 => (2, "Q4_0", 32, 18),
            TensorType::Q4_1 => (3, "Q4_1", 32, 20),
            TensorType::Q5_0 => (6, "Q5_0", 32, 22),
            TensorType::Q5_1 => (7, "Q5_1", 32, 24),
            TensorType::Q8_0 => (8, "Q8_0", 32, 34),
            TensorType::Q8_1 => (9, "Q8_1", 32, 36),
            TensorType::Q2K => (10, "Q2_K", 256, 84),
            TensorType::Q3K => (11, "Q3_K", 256, 110),
            TensorType::Q4K => (12, "Q4_K", 256, 144),
            TensorType::Q5K => (13, "Q5_K", 256, 176),
            TensorType::Q6K => (14, "Q6_K", 256, 210),
            TensorType::Q8K => (15, "Q8_K", 256, 292),
            TensorType::I8 => (24, "I8", 1, 1),
            TensorType::I16 => (25, "I16", 1, 2),
            TensorType::I32 => (26, "I32", 1, 4),
            TensorType::I64 => (27, "I64", 1, 8),
            TensorType::F64 => (28, "F64", 1, 8),
            TensorType::Bf16 => (30, "BF16", 1, 2),
        }
    }

    pub fn from_id(id: u32) -> Option<TensorType> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        self.traits().0
    }

    pub fn name(self) -> &'static str {
        self.traits().1
    }

    /// Weights a block holds (1 for the plain types).
    pub fn block_len(self) -> u64 {
        self.traits().2
    }

    /// Bytes a block takes.
    pub fn block_bytes(self) -> u64 {
        self.traits().3
    }

    /// Bytes of a tensor of `elements` weights whose rows are `row_len` long, or `None` when rows are
    /// not whole blocks or the size overflows.
    pub fn bytes_for(self, elements: u64, row_len: u64) -> Option<u64> {
        if !row_len.is_multiple_of(self.block_len()) {
            return None;
        }
        (elements / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `n` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    Some(n.checked_add(alignment - 1)? & !(alignment - 1))
}
