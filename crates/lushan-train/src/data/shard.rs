//! Token shards: a corpus encoded once by `lushan prepare`, read by training and evaluation.
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

/// A validated token shard, read with positioned reads (`pread`). Cloning shares the open file (a
/// reference count), so a loader and an evaluator can each hold the same shard.
///
/// Not memory-mapped: a mapped file that another process truncates kills the reader with SIGBUS at the next
/// touch of a vanished page, whereas a read of a truncated file is a short read — here a named error
/// ([`TrainError::ShardChanged`]). Training reads a few windows per step, so the system calls cost nothing
/// measurable; the page cache serves them as it served the mapping.
#[derive(Debug, Clone)]
pub struct Shard {
    path: PathBuf,
    file: Arc<File>,
    /// The file's length when it was validated; every read checks it is unchanged.
    file_len: u64,
    /// Byte offset of the first token.
    body_start: u64,
    len: usize,
    width: u32,
    description: String,
    /// The vocabulary the ids were checked against at open; reads re-check ids, so a file rewritten in
    /// place cannot feed an out-of-range id to the model.
    vocab_size: Option<usize>,
}

/// Bytes read per system call when a read spans many tokens (checking ids, copying a whole shard).
const READ_CHUNK: usize = 1 << 16;

impl Shard {
    /// Opens and validates a shard; with `vocab_size`, also checks every id so a shard from another
    /// tokenizer cannot index past the embedding table.
    pub fn open(path: &Path, vocab_size: Option<usize>) -> Result<Shard> {
        let io = |source: std::io::Error| TrainError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TrainError::ShardMissing { path: path.to_path_buf() },
            _ => io(source),
        })?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len == 0 {
            return Err(TrainError::NotAShard { path: path.to_path_buf() });
        }
        // The fixed header, then the description its length field announces (bounded by the file's size,
        // which `parse_header` checks before anything that long is read).
        let mut fixed = vec![0u8; FIXED_HEADER_LEN.min(usize::try_from(file_len).unwrap_or(usize::MAX))];
        read_exact_at(&file, &mut fixed, 0).map_err(io)?;
        let description_len = if fixed.len() == FIXED_HEADER_LEN { le_u32(&fixed, 24) as u64 } else { 0 };
        let header_len = (FIXED_HEADER_LEN as u64).saturating_add(description_len).min(file_len);
        let mut header = vec![0u8; usize::try_from(header_len).unwrap_or(usize::MAX)];
        read_exact_at(&file, &mut header, 0).map_err(io)?;
        let parsed = parse_header(path, &header, file_len)?;
        let shard = Shard {
            path: path.to_path_buf(),
            file: Arc::new(file),
            file_len,
            body_start: parsed.body_start as u64,
            len: parsed.len,
            width: parsed.width,
            description: parsed.description,
            vocab_size: None,
        };
        match vocab_size {
            Some(vocab_size) => {
                shard.check_ids(vocab_size)?;
                Ok(Shard { vocab_size: Some(vocab_size), ..shard })
            }
            None => Ok(shard),
        }
    }

    /// Opens a shard for a model with `tokenizer`: refuses a shard made by another tokenizer (its stored
    /// description differs) before looking at a single id, then checks every id against the vocabulary.
    /// Training and `lushan eval` both open shards this way.
    pub fn open_for(path: &Path, tokenizer: &lushan_tokenizer::Tokenizer) -> Result<Shard> {
        let shard = Shard::open(path, None)?;
        if shard.description() != tokenizer.describe() {
            return Err(TrainError::VocabMismatch {
                data: format!("{} ({})", shard.description(), path.display()),
                model_vocab: tokenizer.vocab_size(),
            });
        }
        shard.check_ids(tokenizer.vocab_size())?;
        Ok(Shard { vocab_size: Some(tokenizer.vocab_size()), ..shard })
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
    pub fn token(&self, i: usize) -> Result<u32> {
        let mut one = [0u32; 1];
        self.copy_window(i, &mut one)?;
        Ok(one[0])
    }

    /// Copies tokens `start .. start + out.len()` into `out`, widening to u32. Errors when the file changed
    /// size since it was opened (or an id is out of the checked vocabulary's range).
    ///
    /// # Panics
    /// If the window runs past `len()` (a caller bug, like indexing a slice).
    pub fn copy_window(&self, start: usize, out: &mut [u32]) -> Result<()> {
        assert!(
            start <= self.len && out.len() <= self.len - start,
            "window {start}..{} is outside the shard's {} tokens",
            start + out.len(),
            self.len
        );
        self.check_unchanged()?;
        let vocab_size = self.vocab_size;
        let path = &self.path;
        let mut filled = 0;
        self.read_tokens(start, out.len(), |ids| {
            for (o, id) in out[filled..].iter_mut().zip(ids) {
                if vocab_size.is_some_and(|v| id as usize >= v) {
                    return Err(TrainError::TokenOutOfRange {
                        path: path.clone(),
                        id,
                        index: start + filled,
                        vocab_size: vocab_size.unwrap_or(0),
                    });
                }
                *o = id;
                filled += 1;
            }
            Ok(())
        })
    }

    /// Errors on the first id `>= vocab_size`, naming it and its index.
    pub fn check_ids(&self, vocab_size: usize) -> Result<()> {
        if self.width == 2 && vocab_size > usize::from(u16::MAX) {
            return Ok(()); // every u16 is in range
        }
        let mut index = 0;
        self.read_tokens(0, self.len, |ids| {
            for id in ids {
                if id as usize >= vocab_size {
                    return Err(TrainError::TokenOutOfRange { path: self.path.clone(), id, index, vocab_size });
                }
                index += 1;
            }
            Ok(())
        })
    }

    /// The error for a file whose length is no longer the one validated at open, if it is not.
    fn check_unchanged(&self) -> Result<()> {
        let actual = self.file.metadata().map_err(|source| TrainError::Io { path: self.path.clone(), source })?.len();
        if actual != self.file_len {
            return Err(TrainError::ShardChanged { path: self.path.clone(), expected: self.file_len, actual });
        }
        Ok(())
    }

    /// Reads tokens `start .. start + count` in chunks, handing each chunk's ids to `visit`.
    fn read_tokens(
        &self,
        start: usize,
        count: usize,
        mut visit: impl FnMut(&mut dyn Iterator<Item = u32>) -> Result<()>,
    ) -> Result<()> {
        let width = self.width as usize;
        let mut buf = vec![0u8; READ_CHUNK.min(count.saturating_mul(width))];
        let per_chunk = (buf.len() / width).max(1);
        let mut done = 0;
        while done < count {
            let n = per_chunk.min(count - done);
            let bytes = &mut buf[..n * width];
            let offset = self.body_start + ((start + done) * width) as u64;
            read_exact_at(&self.file, bytes, offset).map_err(|source| self.read_error(source))?;
            if width == 2 {
                visit(&mut bytes.chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))))?;
            } else {
                visit(&mut bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])))?;
            }
            done += n;
        }
        Ok(())
    }

    /// A failed read: a file cut short since it was opened says so; other failures are I/O errors.
    fn read_error(&self, source: std::io::Error) -> TrainError {
        if source.kind() == std::io::ErrorKind::UnexpectedEof
            && let Err(changed) = self.check_unchanged()
        {
            return changed;
        }
        TrainError::Io { path: self.path.clone(), source }
    }
}

/// Fills `buf` from `offset` of `file` without moving a shared cursor (clones read concurrently).
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

struct Header {
    body_start: usize,
    len: usize,
    width: u32,
    description: String,
}

/// Validates a shard's header: `bytes` is the start of a file of `file_len` bytes — the fixed header and
/// the description, or as much of them as the file holds.
fn parse_header(path: &Path, bytes: &[u8], file_len: u64) -> Result<Header> {
    let path_buf = || path.to_path_buf();
    if bytes.len() < SHARD_MAGIC.len() || &bytes[..SHARD_MAGIC.len()] != SHARD_MAGIC {
        return Err(TrainError::NotAShard { path: path_buf() });
    }
    let truncated = |expected: u64| TrainError::ShardHeaderTruncated { path: path_buf(), expected, actual: file_len };
    if file_len < FIXED_HEADER_LEN as u64 || bytes.len() < FIXED_HEADER_LEN {
        return Err(truncated(FIXED_HEADER_LEN as u64));
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
    let body_start = FIXED_HEADER_LEN as u64 + u64::from(le_u32(bytes, 24));
    if file_len < body_start || (bytes.len() as u64) < body_start {
        return Err(truncated(body_start));
    }
    // Within `bytes`, so within usize.
    let body_start = body_start as usize;
    let description = std::str::from_utf8(&bytes[FIXED_HEADER_LEN..body_start])
        .map_err(|source| TrainError::ShardDescription { path: path_buf(), source })?
        .to_owned();
    let actual = file_len - body_start as u64;
    let expected = count.saturating_mul(u64::from(width));
    if actual != expected {
        return Err(TrainError::ShardSize { path: path_buf(), count, width, expected, actual });
    }
    let len = usize::try_from(count).map_err(|_| TrainError::ShardSize {
        path: path_buf(),
        count,
        width,
        expected,
        actual,
    })?;
    Ok(Header { body_start, len, width, description })
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
