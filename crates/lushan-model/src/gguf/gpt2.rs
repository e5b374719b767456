//! GPT-2 in GGUF, both ways: llama.cpp's names (`gguf-py/gguf/constants.py`, `MODEL_ARCH.GPT2`) and
//! metadata, mapped onto lushan's [`ParamKind`]s.
//!
//! Layout: ggml lists dimensions innermost first, so a GGUF matrix of `ne = [in, out]` is a row-major
//! `(out, in)` matrix — lushan's layout for every weight (`torch.nn.Linear`'s, not HF's Conv1D: the
//! converter transposes Conv1D weights). Tensors are copied as they are: F32 into the `f32` buffer, F16,
//! BF16, Q8_0 and Q4_0 matrices into [`Matrix`]es of that type (blocks byte for byte, no `f32` round
//! trip); small tensors in another type than F32 are widened (exactly: every value is representable).
//!
//! GPT-2 ties its output layer to the token embedding; llama.cpp's converter stores the matrix twice
//! (`token_embd.weight` and `output.weight`) and `llama-quantize` may give the two different types (a
//! Q4_0 file keeps the output in Q6_K, or Q8_0 when rows are not whole 256-blocks). lushan keeps one
//! matrix for both uses: the more precise of the two types it reads, after checking that they hold the
//! same matrix; [`GgufModel::notes`] says so.

use super::read::{GgufFile, TensorInfo, with_file};
use super::write::{TensorData, write_gguf};
use super::{Array, TensorType, Value};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::params::{ParamKind, ParamLayout};
use crate::weights::{DType, Matrix, PackedWeights};
use half::{bf16, f16};
use lushan_kernels::quant::packed_q4::PackedQ4_0;
use lushan_kernels::quant::{BLOCK, BlockQ4_0, BlockQ8_0};
use std::borrow::Cow;
use std::io::Write as _;
use std::path::Path;

/// `general.architecture` of GPT-2 files.
pub const ARCHITECTURE: &str = "gpt2";
/// The tied output layer's name.
pub const OUTPUT: &str = "output.weight";

/// The tokenizer a GGUF file embeds (`tokenizer.ggml.*`), as stored: token strings in GPT-2's byte ↔
/// character map, merges as `"left right"`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer (`gpt-2`).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// Per token: 1 normal, 3 control (special), as llama.cpp's `LLAMA_TOKEN_TYPE_*`; empty when absent.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unknown: Option<u32>,
}

/// A GPT-2 read from a GGUF file.
#[derive(Debug)]
pub struct GgufModel {
    pub model: Gpt,
    pub tokenizer: GgufTokenizer,
    /// What loading changed, for the user (the tied output layer's type, widened matrices).
    pub notes: Vec<String>,
}

/// GGUF name of `kind` at `layer` (`None` for the classifier score, which GPT-2 GGUF files lack).
pub fn tensor_name(kind: ParamKind, layer: usize) -> Option<String> {
    let global = match kind {
        ParamKind::Wte => Some("token_embd.weight"),
        ParamKind::Wpe => Some("position_embd.weight"),
        ParamKind::LnfW => Some("output_norm.weight"),
        ParamKind::LnfB => Some("output_norm.bias"),
        ParamKind::Score => return None,
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_string());
    }
    let suffix = match kind {
        ParamKind::Ln1W => "attn_norm.weight",
        ParamKind::Ln1B => "attn_norm.bias",
        ParamKind::QkvW => "attn_qkv.weight",
        ParamKind::QkvB => "attn_qkv.bias",
        ParamKind::AttnProjW => "attn_output.weight",
        ParamKind::AttnProjB => "attn_output.bias",
        ParamKind::Ln2W => "ffn_norm.weight",
        ParamKind::Ln2B => "ffn_norm.bias",
        ParamKind::FcW => "ffn_up.weight",
        ParamKind::FcB => "ffn_up.bias",
        ParamKind::FcProjW => "ffn_down.weight",
        _ => "ffn_down.bias",
    };
    Some(format!("blk.{layer}.{suffix}"))
}

/// Every tensor of a GPT-2 of shape `cfg`: (kind, layer, GGUF name, ggml dims innermost first).
fn expected_tensors(cfg: &ModelConfig) -> Vec<(ParamKind, usize, String, Vec<u64>)> {
    let mut out = Vec::new();
    for kind in ParamKind::ALL {
        let layers = if kind.per_layer() { cfg.n_layer } else { 1 };
        for layer in 0..layers {
            if let Some(name) = tensor_name(kind, layer) {
                let dims = kind.shape(cfg).iter().rev().map(|&d| d as u64).collect();
                out.push((kind, layer, name, dims));
            }
        }
    }
    out
}

/// The weight type lushan computes with for a tensor type, if it reads that type.
fn dtype_of(ty: TensorType) -> Option<DType> {
    match ty {
        TensorType::F32 => Some(DType::F32),
        TensorType::F16 => Some(DType::F16),
        TensorType::Bf16 => Some(DType::Bf16),
        TensorType::Q8_0 => Some(DType::Q8_0),
        TensorType::Q4_0 => Some(DType::Q4_0),
        _ => None,
    }
}

/// The tensor type that stores `dtype`.
pub fn tensor_type_of(dtype: DType) -> TensorType {
    match dtype {
        DType::F32 => TensorType::F32,
        DType::F16 => TensorType::F16,
        DType::Bf16 => TensorType::Bf16,
        DType::Q8_0 => TensorType::Q8_0,
        DType::Q4_0 => TensorType::Q4_0,
    }
}

fn unsupported(path: &Path, t: &TensorInfo) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: format!(
            "tensor `{}` has type {}, which lushan does not read (it reads F32, F16, BF16, Q8_0 and Q4_0): \
             quantize the model to one of those, e.g. `llama-quantize --pure IN OUT Q8_0`",
            t.name, t.ty
        ),
    }
}

/// Reads the GPT-2 in the GGUF file at `path`, with its tokenizer.
///
/// # Errors
/// Everything [`super::parse`] refuses; another architecture or tokenizer; missing, unexpected or
/// mis-shaped tensors (listed together); a tensor type lushan does not read, naming the tensor.
pub fn load_gpt2(path: &Path) -> Result<GgufModel> {
    with_file(path, |file| from_file(file, path))
}

fn from_file(file: &GgufFile<'_>, path: &Path) -> Result<GgufModel> {
    let err = |message: String| ModelError::Checkpoint { path: path.to_path_buf(), message };
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| err("has no string `general.architecture`: not a model file".into()))?;
    if arch != ARCHITECTURE {
        return Err(err(format!(
            "architecture `{arch}` is not supported: lushan runs GPT-2 models (general.architecture = gpt2)"
        )));
    }
    let config = read_config(file, &err)?;
    check_tensors(file, &config, &err)?;
    let tokenizer = read_tokenizer(file, &err)?;
    let (model, notes) = read_weights(file, config, path)?;
    Ok(GgufModel { model, tokenizer, notes })
}

fn read_config(file: &GgufFile<'_>, err: &dyn Fn(String) -> ModelError) -> Result<ModelConfig> {
    let number = |key: &str| -> Result<usize> {
        let key = format!("{ARCHITECTURE}.{key}");
        let value = file.get(&key).ok_or_else(|| err(format!("metadata `{key}` is missing")))?;
        value.as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(|| {
            err(format!("metadata `{key}` must be a non-negative integer, got {} {value:?}", value.type_name()))
        })
    };
    let (n_layer, block_size, n_embd) =
        (number("block_count")?, number("context_length")?, number("embedding_length")?);
    let (n_head, n_ff) = (number("attention.head_count")?, number("feed_forward_length")?);
    let eps_key = "gpt2.attention.layer_norm_epsilon";
    let eps = file
        .get(eps_key)
        .and_then(Value::as_f32)
        .ok_or_else(|| err(format!("metadata `{eps_key}` is missing or not a float")))?;
    // Sizes come from the token embedding, whose bytes lie inside the file, so no product below overflows.
    let embd = file.tensor("token_embd.weight").ok_or_else(|| err("tensor `token_embd.weight` is missing".into()))?;
    let [cols, vocab] = embd.dims[..] else {
        return Err(err(format!("tensor `token_embd.weight` has dimensions {:?}; expected 2", embd.dims)));
    };
    if cols != n_embd as u64 {
        return Err(err(format!("`token_embd.weight` has rows of {cols}, but gpt2.embedding_length is {n_embd}")));
    }
    if n_ff != 4 * n_embd {
        return Err(err(format!(
            "gpt2.feed_forward_length is {n_ff}; lushan's GPT-2 has 4 × embedding_length = {}",
            4 * n_embd
        )));
    }
    // Each layer has 12 tensors: a count beyond what the file holds is refused before lists are built.
    if n_layer.saturating_mul(12) > file.tensors.len() {
        return Err(err(format!(
            "gpt2.block_count is {n_layer}, but the file holds only {} tensors (12 a layer)",
            file.tensors.len()
        )));
    }
    let wpe = file.tensor("position_embd.weight");
    if let Some(wpe) = wpe.filter(|t| t.dims.get(1).is_some_and(|&n| n != block_size as u64)) {
        return Err(err(format!(
            "`position_embd.weight` has {:?} dimensions, but gpt2.context_length is {block_size}",
            wpe.dims
        )));
    }
    let vocab = usize::try_from(vocab).map_err(|_| err(format!("vocabulary of {vocab} tokens")))?;
    let mut config = ModelConfig::new(vocab, block_size, n_layer, n_head, n_embd);
    config.layer_norm_epsilon = eps;
    config.validate().map_err(|e| err(e.to_string()))?;
    Ok(config)
}

/// Every expected tensor present with its shape, and nothing else (the tied output aside).
fn check_tensors(file: &GgufFile<'_>, cfg: &ModelConfig, err: &dyn Fn(String) -> ModelError) -> Result<()> {
    let expected = expected_tensors(cfg);
    let mut problems = Vec::new();
    for (_, _, name, dims) in &expected {
        match file.tensor(name) {
            None => problems.push(format!("`{name}` is missing")),
            Some(t) if &t.dims != dims => {
                problems.push(format!("`{name}` has dimensions {:?}, expected {dims:?}", t.dims));
            }
            Some(_) => {}
        }
    }
    let embd_dims = &expected[0].3;
    for t in &file.tensors {
        if t.name == OUTPUT {
            if &t.dims != embd_dims {
                problems.push(format!("`{OUTPUT}` has dimensions {:?}, expected {embd_dims:?}", t.dims));
            }
        } else if !expected.iter().any(|(_, _, name, _)| *name == t.name) {
            problems.push(format!("`{}` is not a GPT-2 tensor", t.name));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    problems.truncate(12);
    Err(err(format!(
        "the tensors do not fit a GPT-2 of the shape in its metadata ({total} problem(s)):\n  - {}",
        problems.join("\n  - ")
    )))
}

fn read_tokenizer(file: &GgufFile<'_>, err: &dyn Fn(String) -> ModelError) -> Result<GgufTokenizer> {
    let model = file.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or_default();
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer `{model}` (tokenizer.ggml.model) is not supported: lushan reads GPT-2's byte-level BPE (gpt2)"
        )));
    }
    let strings = |key: &str| match file.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(Array::String(v))) => Ok(v.clone()),
        Some(other) => Err(err(format!("`{key}` must be an array of strings, got {}", other.type_name()))),
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(err("`tokenizer.ggml.tokens` is missing or empty".into()));
    }
    let token_types = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(Array::I32(v))) if v.len() == tokens.len() => v.clone(),
        None => Vec::new(),
        Some(_) => return Err(err("`tokenizer.ggml.token_type` must be an i32 per token".into())),
    };
    let id = |key: &str| file.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    Ok(GgufTokenizer {
        model: model.to_string(),
        pre: file.get("tokenizer.ggml.pre").and_then(Value::as_str).map(str::to_string),
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        unknown: id("tokenizer.ggml.unknown_token_id"),
    })
}

/// A tensor's values widened to `f32`.
fn to_f32(file: &GgufFile<'_>, t: &TensorInfo, path: &Path) -> Result<Vec<f32>> {
    let bytes = file.tensor_bytes(t);
    Ok(match t.ty {
        TensorType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        TensorType::F16 | TensorType::Bf16 | TensorType::Q8_0 | TensorType::Q4_0 => {
            let cols = t.dims[0] as usize;
            matrix(file, t, path)?.to_f32(cols)
        }
        _ => return Err(unsupported(path, t)),
    })
}

/// A tensor of a non-`f32` type lushan reads, as a [`Matrix`] of that type (bytes copied as they are).
fn matrix(file: &GgufFile<'_>, t: &TensorInfo, path: &Path) -> Result<Matrix> {
    let bytes = file.tensor_bytes(t);
    let halves = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    Ok(match t.ty {
        TensorType::F16 => Matrix::F16(halves().map(f16::from_bits).collect()),
        TensorType::Bf16 => Matrix::Bf16(halves().map(bf16::from_bits).collect()),
        TensorType::Q8_0 => Matrix::Q8_0(
            bytes.chunks_exact(BlockQ8_0::BYTES).filter_map(|b| b.try_into().ok()).map(BlockQ8_0::from_bytes).collect(),
        ),
        TensorType::Q4_0 => {
            let blocks: Vec<BlockQ4_0> = bytes
                .chunks_exact(BlockQ4_0::BYTES)
                .filter_map(|b| b.try_into().ok())
                .map(BlockQ4_0::from_bytes)
                .collect();
            // The reader checked that the bytes are whole rows of whole blocks; checked again here, since
            // packing takes the shape as given.
            let per_row = usize::try_from(t.dims.first().copied().unwrap_or(0)).unwrap_or(0) / BLOCK;
            if per_row == 0 || !blocks.len().is_multiple_of(per_row) {
                return Err(ModelError::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{}`: {} Q4_0 blocks are not whole rows of {:?}",
                        t.name,
                        blocks.len(),
                        t.dims
                    ),
                });
            }
            Matrix::Q4_0(PackedQ4_0::from_blocks(&blocks, blocks.len() / per_row, per_row * BLOCK))
        }
        _ => return Err(unsupported(path, t)),
    })
}

/// The tensor lushan uses for the tied embedding / output layer, and a note when there was a choice.
fn tied_embedding<'f>(file: &'f GgufFile<'_>, path: &Path) -> Result<(&'f TensorInfo, Option<String>)> {
    let err = |message: String| ModelError::Checkpoint { path: path.to_path_buf(), message };
    let embd = file.tensor("token_embd.weight").ok_or_else(|| err("`token_embd.weight` is missing".into()))?;
    let Some(output) = file.tensor(OUTPUT) else { return Ok((embd, None)) };
    if output.ty == embd.ty {
        if file.tensor_bytes(output) != file.tensor_bytes(embd) {
            return Err(err(format!(
                "`{OUTPUT}` differs from `token_embd.weight`: GPT-2 ties them, and lushan runs tied models only"
            )));
        }
        return Ok((embd, None));
    }
    let precision = |t: &TensorInfo| dtype_of(t.ty).map(|d| -d.bits_per_weight());
    let best = match (precision(embd), precision(output)) {
        (None, None) => return Err(unsupported(path, embd)),
        (Some(_), None) => embd,
        (None, Some(_)) => output,
        (Some(e), Some(o)) => {
            // Both readable: they must be one matrix in two roundings.
            let (a, b) = (to_f32(file, embd, path)?, to_f32(file, output, path)?);
            let cols = embd.dims[0] as usize;
            for (row, (ra, rb)) in a.chunks_exact(cols).zip(b.chunks_exact(cols)).enumerate() {
                let scale = ra.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if ra.iter().zip(rb).any(|(x, y)| (x - y).abs() > scale / 4.0 + 1e-6) {
                    return Err(err(format!(
                        "`{OUTPUT}` ({}) and `token_embd.weight` ({}) differ beyond rounding at row {row}: GPT-2 \
                         ties them, and lushan runs tied models only",
                        output.ty, embd.ty
                    )));
                }
            }
            if e <= o { embd } else { output }
        }
    };
    let note = format!(
        "`token_embd.weight` is {} and `{OUTPUT}` is {}: lushan ties them as GPT-2 does, and uses `{}` ({}) for \
         both the embedding and the output layer",
        embd.ty, output.ty, best.name, best.ty
    );
    Ok((best, Some(note)))
}

fn read_weights(file: &GgufFile<'_>, config: ModelConfig, path: &Path) -> Result<(Gpt, Vec<String>)> {
    let mut notes = Vec::new();
    let (embd, note) = tied_embedding(file, path)?;
    notes.extend(note);
    let expected = expected_tensors(&config);
    let info = |kind: ParamKind, name: &str| -> &TensorInfo {
        // Checked present by `check_tensors`; the embedding is the tied choice.
        if kind == ParamKind::Wte { embd } else { file.tensor(name).unwrap_or(embd) }
    };
    let is_matrix = |kind: ParamKind| PackedWeights::KINDS.contains(&kind);
    let all_f32 = expected.iter().filter(|e| is_matrix(e.0)).all(|(k, _, n, _)| info(*k, n).ty == TensorType::F32);
    let layout = if all_f32 { ParamLayout::new(&config) } else { ParamLayout::without(&config, &PackedWeights::KINDS) };
    let mut params = vec![0.0f32; layout.total()];
    for (kind, layer, name, _) in &expected {
        if all_f32 || !is_matrix(*kind) {
            let values = to_f32(file, info(*kind, name), path)?;
            params[layout.layer_range(*kind, *layer)].copy_from_slice(&values);
        }
    }
    if all_f32 {
        return Ok((Gpt::from_params(config, params)?, notes));
    }
    // Every matrix in a type lushan reads, before any conversion work.
    let matrices: Vec<&TensorInfo> =
        expected.iter().filter(|e| is_matrix(e.0)).map(|(k, _, n, _)| info(*k, n)).collect();
    if let Some(t) = matrices.iter().find(|t| dtype_of(t.ty).is_none()) {
        return Err(unsupported(path, t));
    }
    // The block matrices' type: the first that is not F32 (the embedding's when every block is F32).
    let blocks_first = matrices.iter().skip(1).chain(matrices.first()).filter_map(|t| dtype_of(t.ty));
    let dtype = blocks_first.into_iter().find(|&d| d != DType::F32).unwrap_or(DType::F16);
    let mut widened = Vec::new();
    let mut load = |kind: ParamKind, layer: usize| -> Result<Matrix> {
        let name = tensor_name(kind, layer).unwrap_or_default();
        let t = info(kind, &name);
        if t.ty != TensorType::F32 {
            return matrix(file, t, path);
        }
        widened.push(t.name.clone());
        Matrix::convert(dtype, &to_f32(file, t, path)?, t.dims[0] as usize, &t.name)
    };
    let packed = PackedWeights::assemble(dtype, config.n_layer, &mut load)?;
    if !widened.is_empty() {
        notes.push(format!(
            "{} F32 matri(ces) converted to {dtype}, the type of the others: {}",
            widened.len(),
            widened.join(", ")
        ));
    }
    Ok((Gpt { config, layout, params, lora: None, packed: Some(packed) }, notes))
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of a model whose matrices are `dtype`.
fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        DType::Bf16 => 32,
    }
}

/// A matrix's bytes as GGUF stores them (little-endian halves; blocks as llama.cpp lays them out).
fn matrix_bytes(m: &Matrix) -> Vec<u8> {
    match m {
        Matrix::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        Matrix::Bf16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        Matrix::Q8_0(v) => v.iter().flat_map(BlockQ8_0::to_bytes).collect(),
        Matrix::Q4_0(v) => v.to_blocks().iter().flat_map(BlockQ4_0::to_bytes).collect(),
    }
}

/// Writes `model` (its matrices in their stored type; everything else F32) and `tokenizer` as a GGUF file
/// llama.cpp runs: the metadata and tensor names `convert_hf_to_gguf.py` writes for GPT-2, the tied
/// embedding stored twice (`token_embd.weight` and `output.weight`, which llama.cpp requires).
///
/// # Errors
/// A model with LoRA adapters (merge first) or a classifier head; I/O errors naming `path`.
pub fn save_gpt2(path: &Path, model: &Gpt, tokenizer: &GgufTokenizer, name: &str) -> Result<()> {
    let invalid = |reason: String| ModelError::InvalidConfig { field: "model", reason };
    if model.lora.is_some() {
        return Err(invalid("has LoRA adapters attached: merge them first (`lushan merge`)".into()));
    }
    let cfg = &model.config;
    if cfg.head != crate::config::Head::LanguageModel {
        return Err(invalid("is a classifier: GGUF GPT-2 files hold language models only".into()));
    }
    let dtype = model.dtype();
    let u32_of = |field: &'static str, v: usize| {
        u32::try_from(v).map(Value::U32).map_err(|_| invalid(format!("{field} {v} does not fit GGUF's u32")))
    };
    let mut metadata = vec![
        ("general.architecture".to_string(), Value::String(ARCHITECTURE.into())),
        ("general.type".to_string(), Value::String("model".into())),
        ("general.name".to_string(), Value::String(name.into())),
        ("gpt2.block_count".to_string(), u32_of("n_layer", cfg.n_layer)?),
        ("gpt2.context_length".to_string(), u32_of("block_size", cfg.block_size)?),
        ("gpt2.embedding_length".to_string(), u32_of("n_embd", cfg.n_embd)?),
        ("gpt2.feed_forward_length".to_string(), u32_of("n_embd", 4 * cfg.n_embd)?),
        ("gpt2.attention.head_count".to_string(), u32_of("n_head", cfg.n_head)?),
        ("gpt2.attention.layer_norm_epsilon".to_string(), Value::F32(cfg.layer_norm_epsilon)),
        ("general.file_type".to_string(), Value::U32(file_type(dtype))),
    ];
    if dtype.is_block_quantized() {
        metadata.push(("general.quantization_version".to_string(), Value::U32(2)));
    }
    metadata.extend(tokenizer_metadata(tokenizer));

    let mut tensors: Vec<TensorData<'_>> = Vec::new();
    for (kind, layer, tensor, dims) in expected_tensors(cfg) {
        let (ty, bytes) = match model.packed.as_ref().and_then(|packed| packed.matrix(kind, layer)) {
            Some(m) => (tensor_type_of(m.dtype()), matrix_bytes(m)),
            None => {
                let values = &model.params[model.layout.layer_range(kind, layer)];
                (TensorType::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
        };
        if kind == ParamKind::Wte {
            let output = TensorData { name: OUTPUT.into(), dims: dims.clone(), ty, bytes: Cow::Owned(bytes.clone()) };
            tensors.push(TensorData { name: tensor, dims, ty, bytes: Cow::Owned(bytes) });
            tensors.push(output);
        } else {
            tensors.push(TensorData { name: tensor, dims, ty, bytes: Cow::Owned(bytes) });
        }
    }
    let io_err = |source| ModelError::Io { path: path.to_path_buf(), source };
    lushan_fs::atomic_write_with(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        write_gguf(&mut out, &metadata, &tensors)?;
        out.flush()
    })
    .map_err(io_err)
}

/// The `tokenizer.ggml.*` entries `convert_hf_to_gguf.py` writes for a GPT-2 tokenizer.
fn tokenizer_metadata(t: &GgufTokenizer) -> Vec<(String, Value)> {
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), Value::String(t.model.clone())),
        ("tokenizer.ggml.pre".to_string(), Value::String(t.pre.clone().unwrap_or_else(|| "gpt-2".into()))),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(t.tokens.clone()))),
    ];
    if !t.token_types.is_empty() {
        out.push(("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(t.token_types.clone()))));
    }
    out.push(("tokenizer.ggml.merges".to_string(), Value::Array(Array::String(t.merges.clone()))));
    let ids = [
        ("tokenizer.ggml.bos_token_id", t.bos),
        ("tokenizer.ggml.eos_token_id", t.eos),
        ("tokenizer.ggml.unknown_token_id", t.unknown),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            out.push((key.to_string(), Value::U32(id)));
        }
    }
    out
}
