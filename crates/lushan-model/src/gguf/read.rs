//! Parsing a GGUF file's header, validated before anything is allocated from it.
//!
//! Every count read from the file is checked against the bytes that remain (each metadata entry, tensor
//! description and array element takes at least a known number of bytes), every string's length likewise,
//! array nesting is bounded, and every tensor's type, dimensions, offset, alignment and size are checked
//! against the data section — so a truncated or hostile file is an error naming what is wrong and where,
//! and the memory a file can make us allocate is a small multiple of its own size.

use super::{ALIGNMENT_KEY, Array, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, TensorType, Value, align_up, value_type};
use crate::error::{ModelError, Result};
use std::collections::HashSet;
use std::path::Path;

/// What is wrong with a GGUF file, and at which byte.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid GGUF file at byte {offset}: {message}")]
pub struct GgufError {
    pub offset: u64,
    pub message: String,
}

/// Deepest nesting of arrays in metadata (llama.cpp's files use none; the bound keeps recursion shallow).
const MAX_ARRAY_DEPTH: usize = 4;
/// Fewest bytes one metadata entry takes: key length (8), an empty key, type (4), a 1-byte value.
const MIN_KV_BYTES: u64 = 13;
/// Fewest bytes one tensor description takes: name length (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

/// One tensor's description. `dims` are ggml's `ne`, innermost first: `dims[0]` is the row length.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// From the start of the data section.
    pub offset: u64,
    /// Bytes of data (validated: inside the data section).
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        // Checked when parsed: the product fits.
        self.dims.iter().product()
    }

    /// The shape in row-major order (outermost first), as numpy and lushan write shapes.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file over its bytes.
#[derive(Debug)]
pub struct GgufFile<'a> {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// The data section: tensor offsets count from its start.
    data: &'a [u8],
}

impl<'a> GgufFile<'a> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `tensor` (one of this file's: its range was validated when parsed).
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> &'a [u8] {
        let start = usize::try_from(tensor.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(tensor.size).unwrap_or(usize::MAX));
        self.data.get(start..end).unwrap_or_default()
    }
}

/// Parses `bytes` as a GGUF file.
///
/// # Errors
/// Anything malformed, with the byte offset where it was found.
pub fn parse(bytes: &[u8]) -> std::result::Result<GgufFile<'_>, GgufError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "the magic")?;
    if magic != MAGIC {
        return Err(r.error_at(0, format!("the file does not start with `GGUF` (found {magic:02x?}): not a GGUF file")));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(r.error_at(
            4,
            format!("version {version} is not supported: lushan reads little-endian GGUF versions 2 and 3"),
        ));
    }
    let tensor_count = r.count("the tensor count", MIN_TENSOR_INFO_BYTES)?;
    let kv_count = r.count("the metadata count", MIN_KV_BYTES)?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count);
    let mut keys = HashSet::with_capacity(kv_count);
    for i in 0..kv_count {
        let at = r.pos;
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        if !keys.insert(key.clone()) {
            return Err(r.error_at(at, format!("metadata key `{key}` appears twice")));
        }
        let ty = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(ty, &key)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v {
            Value::U32(a) if a.is_power_of_two() => u64::from(*a),
            other => {
                return Err(r.error_at(0, format!("`{ALIGNMENT_KEY}` must be a u32 power of two, got {other:?}")));
            }
        },
    };

    let mut infos = Vec::with_capacity(tensor_count);
    let mut names = HashSet::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let at = r.pos;
        let name = r.string(&format!("the name of tensor {i}"))?;
        if !names.insert(name.clone()) {
            return Err(r.error_at(at, format!("tensor `{name}` appears twice")));
        }
        let n_dims = r.u32(&format!("the dimension count of `{name}`"))? as usize;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(r.error_at(at, format!("tensor `{name}` has {n_dims} dimensions; ggml allows 1 to {MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            dims.push(r.u64(&format!("dimension {d} of `{name}`"))?);
        }
        let ty_at = r.pos;
        let ty_id = r.u32(&format!("the type of `{name}`"))?;
        let ty = TensorType::from_id(ty_id).ok_or_else(|| {
            r.error_at(ty_at, format!("tensor `{name}` has type id {ty_id}, which lushan does not know"))
        })?;
        let offset = r.u64(&format!("the offset of `{name}`"))?;
        let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        let size = elements.and_then(|n| ty.bytes_for(n, dims[0])).ok_or_else(|| {
            r.error_at(
                at,
                format!(
                    "tensor `{name}` of type {ty} has dimensions {dims:?}: the row length must be a multiple of {} \
                     and the size must fit in 64 bits",
                    ty.block_len()
                ),
            )
        })?;
        if !offset.is_multiple_of(alignment) {
            return Err(r.error_at(
                at,
                format!("tensor `{name}` starts at offset {offset}, not a multiple of the alignment {alignment}"),
            ));
        }
        infos.push(TensorInfo { name, dims, ty, offset, size });
    }

    let data_start = align_up(r.pos as u64, alignment).unwrap_or(u64::MAX);
    let data = usize::try_from(data_start).ok().and_then(|s| bytes.get(s..)).unwrap_or_default();
    for t in &infos {
        let end = t.offset.checked_add(t.size);
        if end.is_none_or(|end| end > data.len() as u64) {
            return Err(GgufError {
                offset: data_start.saturating_add(t.offset),
                message: format!(
                    "tensor `{}` ({} bytes at offset {} of the data section) ends past the end of the file: the \
                     data section holds {} bytes (truncated file?)",
                    t.name,
                    t.size,
                    t.offset,
                    data.len()
                ),
            });
        }
    }
    Ok(GgufFile { version, metadata, tensors: infos, alignment, data })
}

/// Memory-maps and parses the GGUF file at `path`; `then` reads what it needs from it while it is mapped.
///
/// # Errors
/// I/O errors and [`parse`]'s, naming the file.
#[allow(unsafe_code)]
pub fn with_file<T>(path: &Path, then: impl FnOnce(&GgufFile<'_>) -> Result<T>) -> Result<T> {
    let io_err = |source| ModelError::Io { path: path.to_path_buf(), source };
    // Refuses a FIFO, socket or device before `open`, which would block on a FIFO until a writer appears.
    let file = lushan_fs::open_regular(path).map_err(io_err)?;
    // SAFETY: the map is read-only and dropped before this function returns. Mapped memory can change only
    // if another process rewrites the file in place while we read it; lushan never does (saves write a new
    // file and rename it), and every read goes through slices bounds-checked against the validated header.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
    let parsed =
        parse(&map).map_err(|e| ModelError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
    then(&parsed)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error_at(&self, offset: usize, message: String) -> GgufError {
        GgufError { offset: offset as u64, message }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error_at(
                self.pos,
                format!(
                    "the file ends while reading {what} ({n} bytes needed, {} left): truncated file?",
                    self.remaining()
                ),
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], GgufError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items each taking at least `min_bytes`, checked against what remains.
    fn count(&mut self, what: &str, min_bytes: u64) -> std::result::Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let most = self.remaining() / min_bytes;
        if n > most {
            return Err(self.error_at(
                at,
                format!(
                    "{what} is {n}, but the {} bytes left hold at most {most} (truncated or corrupt file?)",
                    self.remaining()
                ),
            ));
        }
        // `n ≤ remaining bytes`, which fit in usize.
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, GgufError> {
        let at = self.pos;
        let len = self.count(&format!("the length of {what}"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.error_at(at, format!("{what} is not UTF-8 (bad byte at {})", e.utf8_error().valid_up_to()))
        })
    }

    fn value(&mut self, ty: u32, key: &str) -> std::result::Result<Value, GgufError> {
        let what = || format!("the value of `{key}`");
        Ok(match ty {
            value_type::U8 => Value::U8(u8::from_le_bytes(self.array(&what())?)),
            value_type::I8 => Value::I8(i8::from_le_bytes(self.array(&what())?)),
            value_type::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            value_type::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            value_type::U32 => Value::U32(self.u32(&what())?),
            value_type::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            value_type::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            value_type::BOOL => Value::Bool(self.bool(&what())?),
            value_type::STRING => Value::String(self.string(&what())?),
            value_type::ARRAY => Value::Array(self.array_value(key, 0)?),
            value_type::U64 => Value::U64(self.u64(&what())?),
            value_type::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            value_type::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(self.error_at(
                    self.pos - 4,
                    format!("`{key}` has value type {other}, which GGUF does not define (0 to 12)"),
                ));
            }
        })
    }

    fn bool(&mut self, what: &str) -> std::result::Result<bool, GgufError> {
        let at = self.pos;
        match self.array::<1>(what)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(self.error_at(at, format!("{what} is a bool of value {b}; a bool is 0 or 1"))),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> std::result::Result<Array, GgufError> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error_at(at, format!("`{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}")));
        }
        let ty = self.u32(&format!("the element type of `{key}`"))?;
        let min_bytes = match ty {
            value_type::U8 | value_type::I8 | value_type::BOOL => 1,
            value_type::U16 | value_type::I16 => 2,
            value_type::U32 | value_type::I32 | value_type::F32 => 4,
            value_type::U64 | value_type::I64 | value_type::F64 | value_type::STRING => 8,
            value_type::ARRAY => 12,
            other => {
                return Err(
                    self.error_at(at, format!("`{key}` is an array of type {other}, which GGUF does not define"))
                );
            }
        };
        let n = self.count(&format!("the length of `{key}`"), min_bytes)?;
        let what = format!("an element of `{key}`");
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(<$t>::from_le_bytes(self.array(&what)?));
                }
                Array::$variant(out)
            }};
        }
        Ok(match ty {
            value_type::U8 => fixed!(U8, u8),
            value_type::I8 => fixed!(I8, i8),
            value_type::U16 => fixed!(U16, u16),
            value_type::I16 => fixed!(I16, i16),
            value_type::U32 => fixed!(U32, u32),
            value_type::I32 => fixed!(I32, i32),
            value_type::F32 => fixed!(F32, f32),
            value_type::U64 => fixed!(U64, u64),
            value_type::I64 => fixed!(I64, i64),
            value_type::F64 => fixed!(F64, f64),
            value_type::BOOL => Array::Bool((0..n).map(|_| self.bool(&what)).collect::<std::result::Result<_, _>>()?),
            value_type::STRING => {
                Array::String((0..n).map(|_| self.string(&what)).collect::<std::result::Result<_, _>>()?)
            }
            _ => Array::Array((0..n).map(|_| self.array_value(key, depth + 1)).collect::<std::result::Result<_, _>>()?),
        })
    }
}
