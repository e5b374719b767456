//! Loading `model.safetensors` tensor by tensor, straight into the types the model will run with.
//!
//! The file is memory-mapped only to parse and check its header; tensor data is read with positioned reads,
//! a few thousand rows at a time, converted (to `f32`, or to a weight type of [`crate::weights`]) and
//! dropped. So a model loaded as Q8_0 never holds an `f32` copy of its matrices, and no model holds the
//! file's pages on top of its own parameters: a process's peak memory is its parameters plus one chunk.

use super::safetensors_io::{HF_PREFIX, check_finite_from, decode_bytes, map_checked};
use super::tensor_match::{Mismatch, match_tensors};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{ParamKind, ParamLayout};
use crate::weights::{DType, Matrix, PackedWeights};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Values read and converted at a time: 4 Mi `f32`s (16 MiB).
const CHUNK_VALUES: usize = 1 << 22;

/// The parameters of a checkpoint as a model holds them: the flat `f32` buffer (in the layout without the
/// converted kinds when `packed` is some) and the converted matrices.
pub struct Loaded {
    pub params: Vec<f32>,
    pub packed: Option<PackedWeights>,
}

/// Reads `path` for `cfg`, its weight matrices converted to `dtype` (`f32`: none converted). The checks and
/// errors are [`super::load_safetensors`]'s; `layout` is the full layout of `cfg`, already checked.
pub(super) fn load(path: &Path, cfg: &ModelConfig, layout: &ParamLayout, dtype: DType) -> Result<Loaded> {
    let map = map_checked(path)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| checkpoint_error(path, super::safetensors_io::describe(&e)))?;
    let found = match_tensors(&st, cfg, layout.total()).map_err(|Mismatch { problems, total }| {
        ModelError::TensorMismatch { path: path.to_path_buf(), problems, total }
    })?;
    let file = lushan_fs::open_regular(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let reader = Reader { file: &file, path, map_start: map.as_ptr() as usize };

    let converted: &[ParamKind] = if dtype == DType::F32 { &[] } else { &PackedWeights::KINDS };
    let kept = ParamLayout::without(cfg, converted);
    // Shapes now match the config and the data lies in the file: this is at most the file's size (or twice
    // it for F16 → F32).
    let mut params = vec![0.0f32; kept.total()];
    let mut matrices: HashMap<(ParamKind, usize), Matrix> = HashMap::new();
    let lm_head = found.lm_head.as_ref();
    for ((kind, layer), name, view) in &found.params {
        let (kind, layer) = (*kind, *layer);
        // Row length as the model stores the tensor: HF Conv1D weights are (in, out), ours (out, in).
        let cols = if kind.hf_transposed() { view.shape()[0] } else { *view.shape().last().unwrap_or(&1) };
        let mut sink = |rows: &[f32], first_value: usize| -> Result<()> {
            if converted.contains(&kind) {
                let part = Matrix::convert(dtype, rows, cols, name)?;
                match matrices.get_mut(&(kind, layer)) {
                    Some(m) => m.append(part),
                    None => {
                        matrices.insert((kind, layer), part);
                    }
                }
            } else {
                let dst = &mut params[kept.layer_range(kind, layer)];
                dst[first_value..first_value + rows.len()].copy_from_slice(rows);
            }
            Ok(())
        };
        if kind.hf_transposed() {
            // HF Conv1D (in, out) → ours (out, in); one layer's matrix at a time.
            let hf = reader.read_f32(view, 0..view_len(view), name)?;
            let (inputs, outputs) = (view.shape()[0], view.shape()[1]);
            let mut ours = vec![0.0f32; hf.len()];
            for o in 0..outputs {
                for i in 0..inputs {
                    ours[o * inputs + i] = hf[i * outputs + o];
                }
            }
            sink(&ours, 0)?;
            continue;
        }
        let rows_per_chunk = (CHUNK_VALUES / cols.max(1)).max(1);
        let total = view_len(view);
        for start in (0..total).step_by(rows_per_chunk * cols.max(1)) {
            let end = (start + rows_per_chunk * cols).min(total);
            let values = reader.read_f32(view, start..end, name)?;
            if kind == ParamKind::Wte
                && let Some((head_name, head)) = lm_head
            {
                let head_values = reader.read_f32(head, start..end, head_name)?;
                if !head_values.iter().zip(&values).all(|(a, b)| a == b || a.to_bits() == b.to_bits()) {
                    return Err(checkpoint_error(
                        path,
                        format!(
                            "`{head_name}` differs from `{HF_PREFIX}{}`: untied output layers are unsupported \
                             (lushan ties the output layer to the token embedding, as GPT-2 does)",
                            ParamKind::Wte.hf_name(0)
                        ),
                    ));
                }
            }
            sink(&values, start)?;
        }
    }
    let packed = if dtype == DType::F32 {
        None
    } else {
        Some(PackedWeights::assemble(dtype, cfg.n_layer, |kind, layer| {
            matrices.remove(&(kind, layer)).ok_or_else(|| {
                checkpoint_error(path, format!("tensor `{}` was not found in the file", kind.hf_name(layer)))
            })
        })?)
    };
    Ok(Loaded { params, packed })
}

/// Elements of a tensor (its bytes over the element size: F32, F16 or BF16, as the match admitted).
fn view_len(view: &TensorView<'_>) -> usize {
    view.data().len() / (view.dtype().bitsize() / 8)
}

/// Positioned reads of tensor data: a view's bytes are located by their place in the map (computed from the
/// addresses, never touching the mapped pages) and read from the file.
struct Reader<'a> {
    file: &'a std::fs::File,
    path: &'a Path,
    map_start: usize,
}

impl Reader<'_> {
    /// Elements `range` of `view`, as `f32`; refuses values that are not finite, naming the tensor and the
    /// index within it.
    fn read_f32(&self, view: &TensorView<'_>, range: std::ops::Range<usize>, name: &str) -> Result<Vec<f32>> {
        let size = view.dtype().bitsize() / 8;
        let data = view.data();
        let offset = (data.as_ptr() as usize - self.map_start + range.start * size) as u64;
        let mut bytes = vec![0u8; range.len() * size];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|source| ModelError::Io { path: self.path.to_path_buf(), source })?;
        let mut values = vec![0.0f32; range.len()];
        decode_bytes(view.dtype(), &bytes, &mut values);
        check_finite_from(self.path, name, &values, range.start)?;
        Ok(values)
    }
}

fn checkpoint_error(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}
