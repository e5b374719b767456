//! Validation of a safetensors header before safetensors itself parses it: its length, the number of
//! entries, and every tensor entry against the data section, so a hostile header never turns into a large
//! allocation, a long parse or a flood of messages, and every problem names the tensor.

use crate::error::{ModelError, Result};
use safetensors::Dtype;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest header accepted. GPT-2 XL's header is about 80 KB; safetensors' own limit (100 MB) would let a
/// hostile file make every load parse a hundred megabytes of JSON.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Most entries (tensors, ignored buffers and `__metadata__`) a header may list: GPT-2 XL has under 700,
/// and this admits models of over a thousand layers. Checked while the header is read, so a header listing
/// a hundred thousand tensors is refused at once with one message.
pub const MAX_HEADER_ENTRIES: usize = 16_384;

/// Rejects files too short for a header, or whose header length is absurd or beyond the file, before
/// the file is mapped and parsed. Returns the header length.
pub(super) fn check_header_length(path: &Path, file: &mut File, file_len: u64) -> Result<u64> {
    let not_safetensors = |what: String| checkpoint_error(path, format!("not a valid safetensors file: {what}"));
    if file_len < 8 {
        return Err(not_safetensors(format!(
            "it is {file_len} bytes long, too short for the 8-byte header length (empty or truncated)"
        )));
    }
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > file_len - 8 {
        return Err(not_safetensors(format!(
            "the header claims {header_len} bytes but only {} follow the length prefix (truncated or not safetensors)",
            file_len - 8
        )));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(not_safetensors(format!(
            "the header is {header_len} bytes, over the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    Ok(header_len)
}

/// Checks the header's tensor entries by name before safetensors parses them, for what safetensors would
/// let through or report without naming the tensor: too many entries, a name listed twice (a JSON map
/// silently keeps only the last), an unknown dtype, offsets reversed or beyond the data section, a byte
/// span other than shape × dtype, and overlapping tensors. A header that is not a JSON object, or an entry
/// that is not a tensor description, is left to safetensors' own errors.
pub(super) fn check_header_entries(path: &Path, header: &[u8], data_len: u64) -> Result<()> {
    let bad = |what: String| checkpoint_error(path, format!("not a valid safetensors file: {what}"));
    let parsed = std::str::from_utf8(header).ok().and_then(|text| serde_json::from_str::<Entries>(text).ok());
    let Some(Entries { kept: entries, total }) = parsed else { return Ok(()) };
    if total > MAX_HEADER_ENTRIES {
        return Err(bad(format!(
            "the header lists {total} entries, over the limit of {MAX_HEADER_ENTRIES} (no GPT-2 checkpoint or \
             adapter has that many tensors)"
        )));
    }
    let mut seen = HashSet::new();
    let mut spans = Vec::new();
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(bad(format!("the header lists `{name}` twice")));
        }
        if name == "__metadata__" {
            continue;
        }
        let Ok(RawInfo { dtype, shape, data_offsets: (start, end) }) = serde_json::from_value::<RawInfo>(value) else {
            continue;
        };
        let Ok(known) = serde_json::from_value::<Dtype>(Value::String(dtype.clone())) else {
            return Err(bad(format!("tensor `{name}` has unknown dtype `{dtype}`")));
        };
        if end < start {
            return Err(bad(format!("tensor `{name}` has data_offsets [{start}, {end}], which end before they start")));
        }
        if end > data_len {
            return Err(bad(format!(
                "tensor `{name}` has data_offsets [{start}, {end}], beyond the {data_len}-byte data section \
                 (truncated file?)"
            )));
        }
        let bits = shape.iter().try_fold(known.bitsize() as u64, |acc, &d| acc.checked_mul(d));
        match bits {
            Some(bits) if bits % 8 == 0 && bits / 8 == end - start => {}
            Some(bits) => {
                return Err(bad(format!(
                    "tensor `{name}` of dtype {known} and shape {shape:?} needs {} bytes, but its data_offsets \
                     [{start}, {end}] span {} bytes",
                    bits.div_ceil(8),
                    end - start
                )));
            }
            None => return Err(bad(format!("tensor `{name}` has shape {shape:?}, too large to address"))),
        }
        spans.push((start, end, name));
    }
    spans.sort();
    for pair in spans.windows(2) {
        let ((s0, e0, a), (s1, e1, b)) = (&pair[0], &pair[1]);
        if s1 < e0 {
            return Err(bad(format!("tensors `{a}` [{s0}, {e0}] and `{b}` [{s1}, {e1}] overlap")));
        }
    }
    Ok(())
}

/// One tensor's header entry as written, before any check.
#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// A JSON object's entries in file order, duplicates kept (a map would drop them): the first
/// [`MAX_HEADER_ENTRIES`] + 1 parsed, the rest only counted (skipped without allocating).
struct Entries {
    kept: Vec<(String, Value)>,
    total: usize,
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut kept = Vec::new();
                while kept.len() <= MAX_HEADER_ENTRIES {
                    match map.next_entry::<String, Value>()? {
                        Some(entry) => kept.push(entry),
                        None => return Ok(Entries { total: kept.len(), kept }),
                    }
                }
                let mut total = kept.len();
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Entries { kept, total })
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

fn checkpoint_error(path: &Path, message: String) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message }
}
