//! Writing a GGUF file: header, metadata, tensor descriptions, then the data, every tensor at an offset
//! aligned to 32 bytes (or to `general.alignment` when the metadata sets it), as llama.cpp's gguf-py does.

use super::{ALIGNMENT_KEY, Array, DEFAULT_ALIGNMENT, MAGIC, TensorType, VERSION, Value, align_up, value_type};
use std::borrow::Cow;
use std::io::{self, Write};

/// One tensor to write: `dims` innermost first (ggml's `ne`), `bytes` its data in type `ty`.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
    pub bytes: Cow<'a, [u8]>,
}

/// Writes a GGUF file of `metadata` and `tensors` (in the order given) to `out`.
///
/// # Errors
/// I/O errors; `InvalidInput` when a tensor's bytes do not match its type and dimensions or
/// `general.alignment` is not a u32 power of two (caller bugs, named).
pub fn write_gguf(out: &mut impl Write, metadata: &[(String, Value)], tensors: &[TensorData<'_>]) -> io::Result<()> {
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, other)) => {
            return Err(invalid(format!("`{ALIGNMENT_KEY}` must be a u32 power of two, got {other:?}")));
        }
    };
    let mut header = Vec::new();
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend_from_slice(&type_id(value).to_le_bytes());
        put_value(&mut header, value);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let elements = t.dims.iter().product::<u64>();
        let expected = t.ty.bytes_for(elements, t.dims.first().copied().unwrap_or(0));
        if expected != Some(t.bytes.len() as u64) {
            return Err(invalid(format!(
                "tensor `{}`: {} bytes for {} dimensions {:?} (expected {expected:?})",
                t.name,
                t.bytes.len(),
                t.ty,
                t.dims
            )));
        }
        put_string(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&t.ty.id().to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = align_up(offset + t.bytes.len() as u64, alignment).ok_or_else(|| invalid("file too large".into()))?;
    }
    let data_start = align_up(header.len() as u64, alignment).ok_or_else(|| invalid("header too large".into()))?;
    header.resize(data_start as usize, 0);
    out.write_all(&header)?;
    let mut written = 0u64;
    for (t, &at) in tensors.iter().zip(&offsets) {
        out.write_all(&vec![0u8; (at - written) as usize])?;
        out.write_all(&t.bytes)?;
        written = at + t.bytes.len() as u64;
    }
    // The last tensor padded too, as gguf-py does: the file then ends on an aligned offset.
    out.write_all(&vec![0u8; (offset - written) as usize])
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => value_type::U8,
        Value::I8(_) => value_type::I8,
        Value::U16(_) => value_type::U16,
        Value::I16(_) => value_type::I16,
        Value::U32(_) => value_type::U32,
        Value::I32(_) => value_type::I32,
        Value::F32(_) => value_type::F32,
        Value::Bool(_) => value_type::BOOL,
        Value::String(_) => value_type::STRING,
        Value::Array(_) => value_type::ARRAY,
        Value::U64(_) => value_type::U64,
        Value::I64(_) => value_type::I64,
        Value::F64(_) => value_type::F64,
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, array: &Array) {
    macro_rules! fixed {
        ($ty:expr, $values:expr) => {{
            out.extend_from_slice(&$ty.to_le_bytes());
            out.extend_from_slice(&($values.len() as u64).to_le_bytes());
            for v in $values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }};
    }
    match array {
        Array::U8(v) => fixed!(value_type::U8, v),
        Array::I8(v) => fixed!(value_type::I8, v),
        Array::U16(v) => fixed!(value_type::U16, v),
        Array::I16(v) => fixed!(value_type::I16, v),
        Array::U32(v) => fixed!(value_type::U32, v),
        Array::I32(v) => fixed!(value_type::I32, v),
        Array::F32(v) => fixed!(value_type::F32, v),
        Array::U64(v) => fixed!(value_type::U64, v),
        Array::I64(v) => fixed!(value_type::I64, v),
        Array::F64(v) => fixed!(value_type::F64, v),
        Array::Bool(v) => {
            out.extend_from_slice(&value_type::BOOL.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend(v.iter().map(|&b| u8::from(b)));
        }
        Array::String(v) => {
            out.extend_from_slice(&value_type::STRING.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            v.iter().for_each(|s| put_string(out, s));
        }
        Array::Array(v) => {
            out.extend_from_slice(&value_type::ARRAY.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            v.iter().for_each(|a| put_array(out, a));
        }
    }
}
