//! `model.safetensors` with Hugging Face GPT-2 names (DESIGN.md §6).
//!
//! Saving writes exactly what `GPT2LMHeadModel.save_pretrained` writes: `transformer.`-prefixed names,
//! F32, Conv1D weights as `(in, out)`, the tied `lm_head.weight` omitted, metadata `{"format": "pt"}`.
//! Loading is strict: every tensor in the file is consumed or on the named ignore list, shapes must match
//! `config.json`, and all problems are reported together. The header is validated before anything large
//! is allocated, and a truncated or corrupted file is an error, never a panic.

use super::header::{check_header_entries, check_header_length};
use super::hf_config::check_size;
use super::stream_load::{self, Loaded};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{ParamKind, ParamLayout};
use crate::weights::DType;
use lushan_fs::atomic_write;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// Prefix `GPT2LMHeadModel` puts before `GPT2Model`'s names; files from a bare `GPT2Model` lack it.
pub const HF_PREFIX: &str = "transformer.";

/// The output layer's name; GPT-2 ties it to `wte`, so it is stored only by tools that don't dedupe.
pub const LM_HEAD: &str = "lm_head.weight";

/// Per-layer non-parameter buffers (the causal mask and its fill value) that older `transformers`
/// versions saved; they carry no learned values, so they are skipped by name.
pub const IGNORED_LAYER_BUFFERS: [&str; 2] = ["attn.bias", "attn.masked_bias"];

/// Layers a kind is stored for: one tensor per layer for per-layer kinds, a single tensor otherwise.
pub fn hf_layers(kind: ParamKind, cfg: &ModelConfig) -> Range<usize> {
    0..if !kind.present(cfg) {
        0
    } else if kind.per_layer() {
        cfg.n_layer
    } else {
        1
    }
}

/// The full Hugging Face name of a stored tensor: `transformer.`-prefixed, except the classifier's
/// top-level `score.weight`.
pub fn hf_full_name(kind: ParamKind, layer: usize) -> String {
    if kind.in_transformer() { format!("{HF_PREFIX}{}", kind.hf_name(layer)) } else { kind.hf_name(layer) }
}

/// Shape of one stored tensor in Hugging Face's layout (Conv1D weights transposed to `(in, out)`).
pub fn hf_shape(kind: ParamKind, cfg: &ModelConfig) -> Vec<usize> {
    let mut shape = kind.shape(cfg);
    if kind.hf_transposed() {
        shape.reverse();
    }
    shape
}

/// Writes `params` (in [`ParamLayout`] order) to `path` atomically, as `GPT2LMHeadModel` would.
pub fn save_safetensors(path: &Path, cfg: &ModelConfig, params: &[f32]) -> Result<()> {
    let layout = checked_layout(path, cfg)?;
    if params.len() != layout.total() {
        return Err(checkpoint_error(
            path,
            format!("parameter buffer holds {} floats but the config needs {}", params.len(), layout.total()),
        ));
    }
    let mut tensors = Vec::new();
    for kind in ParamKind::ALL {
        for layer in hf_layers(kind, cfg) {
            let shape = hf_shape(kind, cfg);
            let src = &params[layout.layer_range(kind, layer)];
            tensors.push((hf_full_name(kind, layer), HfTensor { src, shape, kind }));
        }
    }
    // `transformers` refuses safetensors files whose metadata lacks format "pt".
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| checkpoint_error(path, format!("cannot serialize safetensors: {e}")))?;
    atomic_write(path, &bytes).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

/// One tensor as it will be stored; bytes are produced lazily so serialization holds at most one
/// tensor's copy beyond the output buffer.
struct HfTensor<'a> {
    src: &'a [f32],
    shape: Vec<usize>,
    kind: ParamKind,
}

impl View for HfTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::with_capacity(self.data_len());
        if self.kind.hf_transposed() {
            // Ours is (out, in) row-major; Hugging Face's Conv1D is (in, out).
            let (rows, cols) = (self.shape[1], self.shape[0]);
            for i in 0..cols {
                for o in 0..rows {
                    out.extend_from_slice(&self.src[o * cols + i].to_le_bytes());
                }
            }
        } else {
            self.src.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        size_of_val(self.src)
    }
}

/// Opens and memory-maps a safetensors file after validating its header (length, then every entry against
/// the data's size), so nothing is allocated from a hostile header. Shared by every safetensors reader.
#[allow(unsafe_code)]
pub(crate) fn map_checked(path: &Path) -> Result<memmap2::Mmap> {
    let io_err = |source| ModelError::Io { path: path.to_path_buf(), source };
    // Refuses a FIFO, socket or device before `open`, which would block on a FIFO until a writer appears.
    let mut file = lushan_fs::open_regular(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let header_len = check_header_length(path, &mut file, file_len)?;
    // SAFETY: the map is read-only and owned by the caller. Mapped memory can change under us only if
    // another process rewrites this file in place while we read it; lushan never does (every save writes a
    // new file and renames it over the old one, so an open map keeps the old inode's bytes). Every read goes
    // through slices bounds-checked against the header.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
    // `header_len` ≤ file length - 8 was checked above; `get` keeps a file that shrank since then a plain
    // error (from safetensors, later) rather than a panic.
    let header_end = usize::try_from(header_len).map_or(usize::MAX, |n| n.saturating_add(8));
    if let Some(header) = map.get(8..header_end) {
        check_header_entries(path, header, (map.len() - header_end) as u64)?;
    }
    Ok(map)
}

/// Reads `path` into a flat buffer in [`ParamLayout`] order for `cfg` (normally from `config.json`).
///
/// Accepts names with or without the `transformer.` prefix, F32/F16/BF16 data, a `lm_head.weight`
/// equal to `wte`, and the per-layer buffers in [`IGNORED_LAYER_BUFFERS`]. Refuses weights that are not
/// finite (NaN or ±infinity), naming the tensor: a model holding one computes nothing but NaN.
pub fn load_safetensors(path: &Path, cfg: &ModelConfig) -> Result<Vec<f32>> {
    Ok(load_safetensors_as(path, cfg, DType::F32)?.params)
}

/// [`load_safetensors`] with the weight matrices converted to `dtype` as they are read, chunk by chunk:
/// no `f32` copy of them is ever held ([`super::stream_load`]).
pub fn load_safetensors_as(path: &Path, cfg: &ModelConfig, dtype: DType) -> Result<Loaded> {
    let layout = checked_layout(path, cfg)?;
    stream_load::load(path, cfg, &layout, dtype)
}

/// Refuses a tensor holding NaN or ±infinity, naming it, the first such index and how many there are.
pub(crate) fn check_finite(path: &Path, name: &str, values: &[f32]) -> Result<()> {
    check_finite_from(path, name, values, 0)
}

/// [`check_finite`] for `values` read from index `offset` of the tensor: the index it names is the tensor's.
pub(crate) fn check_finite_from(path: &Path, name: &str, values: &[f32], offset: usize) -> Result<()> {
    let Some(first) = values.iter().position(|x| !x.is_finite()) else { return Ok(()) };
    let count = values.iter().filter(|x| !x.is_finite()).count();
    let span = if offset == 0 {
        format!("{count} of its {} values are not finite", values.len())
    } else {
        format!("{count} of its {} values from index {offset} are not finite", values.len())
    };
    Err(checkpoint_error(
        path,
        format!(
            "tensor `{name}` holds {} at index {} ({span}): the weights are corrupt or training diverged, and \
             a model with them computes only NaN",
            values[first],
            offset + first,
        ),
    ))
}

/// Converts F32/F16/BF16 little-endian bytes of `view` to `f32` (`match_tensors` admits no other dtype).
pub(crate) fn decode_into(view: &TensorView<'_>, dst: &mut [f32]) {
    decode_bytes(view.dtype(), view.data(), dst);
}

/// Converts F32/F16/BF16 little-endian `data` to `f32` into `dst`; other types leave `dst` as it is.
pub(crate) fn decode_bytes(dtype: Dtype, data: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        _ => {}
    }
}

/// IEEE half → single, exactly (every f16 value is representable as f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: man · 2⁻²⁴, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 is the top half of an f32.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

fn checked_layout(path: &Path, cfg: &ModelConfig) -> Result<ParamLayout> {
    cfg.validate()?;
    check_size(cfg).map_err(|reason| checkpoint_error(path, format!("config {reason}")))?;
    Ok(ParamLayout::new(cfg))
}

/// safetensors' errors in words a user can act on.
pub(crate) fn describe(e: &SafeTensorError) -> String {
    let what = match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the data section does not match the header's offsets (truncated or padded file)".to_string()
        }
        SafeTensorError::InvalidHeader(_) | SafeTensorError::InvalidHeaderDeserialization(_) => {
            format!("the header is not valid JSON metadata ({e})")
        }
        other => other.to_string(),
    };
    format!("not a valid safetensors file: {what}")
}

fn checkpoint_error(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn f16_matches_the_ieee_formula_for_every_value() {
        for h in 0..=u16::MAX {
            let (sign, exp, man) = (h >> 15, i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
            let got = f16_to_f32(h);
            if exp == 0x1f {
                assert!(if man == 0.0 { got.is_infinite() } else { got.is_nan() }, "{h:#06x}");
                continue;
            }
            let magnitude = if exp == 0 { man * 2f64.powi(-24) } else { (1.0 + man / 1024.0) * 2f64.powi(exp - 15) };
            let want = if sign == 1 { -magnitude } else { magnitude };
            assert_eq!(f64::from(got), want, "{h:#06x}");
            assert_eq!(got.is_sign_negative(), sign == 1, "{h:#06x}");
        }
    }

    #[test]
    fn bf16_is_the_top_half() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x3e80), 0.25);
    }
}
