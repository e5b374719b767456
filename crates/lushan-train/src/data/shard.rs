//! Token shards: a corpus encoded once by `lushan prepare`, memory-mapped by training and evaluation.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `LUSHANTK` |
//! | 4 | format version (u32) = 1 |
//! | 4 | token width in bytes (u32): 2 for u16 ids, 4 for u32 ids |
//! | 8 | token count (u64) |
//! | 4 | tokenizer description length (u32), then that many UTF-8 bytes (`Tokenizer::describe()`) |
//! | count × width | the token ids |
//!
//! u16 ids halve the file and page-cache footprint whenever the vocabulary allows it (char-level and GPT-2's
//! 50257 both fit). The header is validated completely before any token is read, so a truncated or foreign
//! file is a named error, never a garbage batch.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Result, TrainError};
use lushan_model::checkpoint::atomic_write_with as atomic_write;

pub const SHARD_MAGIC: &[u8; 8] = b"LUSHANTK";
pub const SHARD_VERSION: u32 = 1;
/// File names of the two splits inside a data directory.
pub const TRAIN_SHARD: &str = "train.bin";
pub const VAL_SHARD: &str = "val.bin";

/// Magic, version, width, count and description length: everything before the description bytes.
const FIXED_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4;
/// Tokens converted per write call, so writing needs neither a per-token call nor a full-size copy.
const WRITE_CHUNK: usize = 1 << 16;

/// Bytes per token for a vocabulary: 2 when every id fits in a u16, else 4.
pub fn token_width(vocab_size: usize) -> u32 {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

/// Writes a shard header for `count` tokens of `width` bytes (the body follows it).
pub(crate) fn write_header(w: &mut impl Write, width: u32, count: u64, description: &str) -> std::io::Result<()> {
    let description_len = u32::try_from(description.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "tokenizer description over 4 GiB"))?;
    w.write_all(SHARD_MAGIC)?;
    w.write_all(&SHARD_VERSION.to_le_bytes())?;
    w.write_all(&width.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    w.write_all(&description_len.to_le_bytes())?;
    w.write_all(description.as_bytes())
}

/// Writes `tokens` to `path` atomically (temp file, fsync, rename, fsync dir).
///
/// Every id is checked against `vocab_size` first, so a shard on disk always satisfies its own header.
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize, tokenizer_description: &str) -> Result<()> {
    if vocab_size == 0 || vocab_size as u64 > u64::from(u32::MAX) + 1 {
        return Err(TrainError::DataArgument {
            name: "vocab_size",
            value: vocab_size.to_string(),
            expected: "token ids are u32, so the vocabulary must have 1..=2^32 entries".to_owned(),
        });
    }
    u32::try_from(tokenizer_description.len()).map_err(|_| TrainError::DataArgument {
        name: "tokenizer_description",
        value: format!("{} bytes", tokenizer_description.len()),
        expected: "a description shorter than 4 GiB".to_owned(),
    })?;
    if let Some(index) = tokens.iter().position(|&id| id as usize >= vocab_size) {
        return Err(TrainError::TokenOutOfRange { path: path.to_path_buf(), id: tokens[index], index, vocab_size });
    }
    let width = token_width(vocab_size);
    atomic_write(path, |w| {
        write_header(w, width, tokens.len() as u64, tokenizer_description)?;
        let mut buf = Vec::with_capacity(WRITE_CHUNK * width as usize);
        for chunk in tokens.chunks(WRITE_CHUNK) {
            buf.clear();
            if width == 2 {
                // Lossless: every id was checked to be < vocab_size ≤ 2^16 above.
                chunk.iter().for_each(|&id| buf.extend_from_slice(&(id as u16).to_le_bytes()));
            } else {
                chunk.iter().for_each(|&id| buf.extend_from_slice(&id.to_le_bytes()));
            }
            w.write_all(&buf)?;
        }
        Ok(())
    })
    .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// A validated, memory-mapped token shard. Cloning shares the mapping (a reference count), so a loader
/// and an evaluator can each hold the same shard.
#[derive(Debug, Clone)]
pub struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Byte offset of the first token.
    body_start: usize,
    len: usize,
    width: u32,
    description: String,
}

impl Shard {
    /// Maps and validates a shard; with `vocab_size`, also checks every id so a shard from another
    /// tokenizer cannot index past the embedding table.
    pub fn open(path: &Path, vocab_size: Option<usize>) -> Result<Shard> {
        let io = |source: std::io::Error| TrainError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TrainError::ShardMissing { path: path.to_path_buf() },
            _ => io(source),
        })?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(TrainError::NotAShard { path: path.to_path_buf() });
        }
        // SAFETY: the file is opened read-only and the map is only read, through bounds-checked slices, after
        // the header and body length below have been validated. The remaining hazard of any file mapping is
        // another process truncating the file while it is mapped; our own writers never do that (they
        // replace shards by renaming a new file over the name, which leaves this inode intact).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse_header(path, &map)?;
        let shard = Shard {
            path: path.to_path_buf(),
            map: Arc::new(map),
            body_start: header.body_start,
            len: header.len,
            width: header.width,
            description: header.description,
        };
        if let Some(vocab_size) = vocab_size {
            shard.check_ids(vocab_size)?;
        }
        Ok(shard)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokenizer description stored by `lushan prepare`, e.g. `char:65`.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes per stored token (2 or 4).
    pub fn token_width(&self) -> u32 {
        self.width
    }

    /// Token `i`.
    ///
    /// # Panics
    /// If `i >= len()` (a caller bug, like indexing a slice).
    pub fn token(&self, i: usize) -> u32 {
        let mut one = [0u32; 1];
        self.copy_window(i, &mut one);
        one[0]
    }

    /// Copies tokens `start .. start + out.len()` into `out`, widening to u32, without allocating.
    ///
    /// # Panics
    /// If the window runs past `len()` (a caller bug, like indexing a slice).
    pub fn copy_window(&self, start: usize, out: &mut [u32]) {
        assert!(
            start <= self.len && out.len() <= self.len - start,
            "window {start}..{} is outside the shard's {} tokens",
            start + out.len(),
            self.len
        );
        let width = self.width as usize;
        let from = self.body_start + start * width;
        let bytes = &self.map[from..from + out.len() * width];
        if width == 2 {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
            }
        } else {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }

    /// Errors on the first id `>= vocab_size`, naming it and its index.
    pub fn check_ids(&self, vocab_size: usize) -> Result<()> {
        let body = &self.map[self.body_start..];
        let bad = if self.width == 2 {
            if vocab_size > usize::from(u16::MAX) {
                return Ok(()); // every u16 is in range
            }
            body.chunks_exact(2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
                .enumerate()
                .find(|&(_, id)| id as usize >= vocab_size)
        } else {
            body.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .enumerate()
                .find(|&(_, id)| id as usize >= vocab_size)
        };
        match bad {
            Some((index, id)) => Err(TrainError::TokenOutOfRange { path: self.path.clone(), id, index, vocab_size }),
            None => Ok(()),
        }
    }
}

struct Header {
    body_start: usize,
    len: usize,
    width: u32,
    description: String,
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let path_buf = || path.to_path_buf();
    if bytes.len() < SHARD_MAGIC.len() || &bytes[..SHARD_MAGIC.len()] != SHARD_MAGIC {
        return Err(TrainError::NotAShard { path: path_buf() });
    }
    let truncated = |expected: usize| TrainError::ShardHeaderTruncated {
        path: path_buf(),
        expected: expected as u64,
        actual: bytes.len() as u64,
    };
    if bytes.len() < FIXED_HEADER_LEN {
        return Err(truncated(FIXED_HEADER_LEN));
    }
    let version = le_u32(bytes, 8);
    if version != SHARD_VERSION {
        return Err(TrainError::ShardVersion { path: path_buf(), found: version, expected: SHARD_VERSION });
    }
    let width = le_u32(bytes, 12);
    if width != 2 && width != 4 {
        return Err(TrainError::ShardWidth { path: path_buf(), found: width });
    }
    let count = le_u64(bytes, 16);
    let body_start = FIXED_HEADER_LEN.saturating_add(le_u32(bytes, 24) as usize);
    if bytes.len() < body_start {
        return Err(truncated(body_start));
    }
    let description = std::str::from_utf8(&bytes[FIXED_HEADER_LEN..body_start])
        .map_err(|source| TrainError::ShardDescription { path: path_buf(), source })?
        .to_owned();
    let actual = (bytes.len() - body_start) as u64;
    let expected = count.saturating_mul(u64::from(width));
    if actual != expected {
        return Err(TrainError::ShardSize { path: path_buf(), count, width, expected, actual });
    }
    Ok(Header { body_start, len: (bytes.len() - body_start) / width as usize, width, description })
}

/// Reads a little-endian u32 at `at`; the caller has checked that `bytes` is long enough.
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
