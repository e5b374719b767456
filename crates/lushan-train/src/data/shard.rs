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

use super::atomic::atomic_write;
use crate::error::{Result, TrainError};

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

/// Writes `tokens` to `path` atomically (temp file, fsync, rename, fsync dir).
///
/// Every id is checked against `vocab_size` first, so a shard on disk always satisfies its own header.
pub fn write_shard(
    path: &Path,
    tokens: &[u32],
    vocab_size: usize,
    tokenizer_description: &str,
) -> Result<()> {
    if vocab_size == 0 || vocab_size as u64 > u64::from(u32::MAX) + 1 {
        return Err(TrainError::DataArgument {
            name: "vocab_size",
            value: vocab_size.to_string(),
            expected: "token ids are u32, so the vocabulary must have 1..=2^32 entries".to_owned(),
        });
    }
    let description_len =
        u32::try_from(tokenizer_description.len()).map_err(|_| TrainError::DataArgument {
            name: "tokenizer_description",
            value: format!("{} bytes", tokenizer_description.len()),
            expected: "a description shorter than 4 GiB".to_owned(),
        })?;
    if let Some(index) = tokens.iter().position(|&id| id as usize >= vocab_size) {
        return Err(TrainError::TokenOutOfRange {
            path: path.to_path_buf(),
            id: tokens[index],
            index,
            vocab_size,
        });
    }
    let width = token_width(vocab_size);
    atomic_write(path, |w| {
        w.write_all(SHARD_MAGIC)?;
        w.write_all(&SHARD_VERSION.to_le_bytes())?;
        w.write_all(&width.to_le_bytes())?;
        w.write_all(&(tokens.len() as u64).to_le_bytes())?;
        w.write_all(&description_len.to_le_bytes())?;
        w.write_all(tokenizer_description.as_bytes())?;
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
    .map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
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
        let io = |source: std::io::Error| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TrainError::ShardMissing {
                path: path.to_path_buf(),
            },
            _ => io(source),
        })?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(TrainError::NotAShard {
                path: path.to_path_buf(),
            });
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
            Some((index, id)) => Err(TrainError::TokenOutOfRange {
                path: self.path.clone(),
                id,
                index,
                vocab_size,
            }),
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
        return Err(TrainError::ShardVersion {
            path: path_buf(),
            found: version,
            expected: SHARD_VERSION,
        });
    }
    let width = le_u32(bytes, 12);
    if width != 2 && width != 4 {
        return Err(TrainError::ShardWidth {
            path: path_buf(),
            found: width,
        });
    }
    let count = le_u64(bytes, 16);
    let body_start = FIXED_HEADER_LEN.saturating_add(le_u32(bytes, 24) as usize);
    if bytes.len() < body_start {
        return Err(truncated(body_start));
    }
    let description = std::str::from_utf8(&bytes[FIXED_HEADER_LEN..body_start])
        .map_err(|source| TrainError::ShardDescription {
            path: path_buf(),
            source,
        })?
        .to_owned();
    let actual = (bytes.len() - body_start) as u64;
    let expected = count.saturating_mul(u64::from(width));
    if actual != expected {
        return Err(TrainError::ShardSize {
            path: path_buf(),
            count,
            width,
            expected,
            actual,
        });
    }
    Ok(Header {
        body_start,
        len: (bytes.len() - body_start) / width as usize,
        width,
        description,
    })
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
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    /// Shard bytes with every header field chosen by the test, for corrupting one at a time.
    fn raw(version: u32, width: u32, count: u64, description: &[u8], body: &[u8]) -> Vec<u8> {
        let mut bytes = SHARD_MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&width.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&(description.len() as u32).to_le_bytes());
        bytes.extend_from_slice(description);
        bytes.extend_from_slice(body);
        bytes
    }

    /// A valid u16 shard of ids 0..10 described as `char:10`.
    fn valid() -> Vec<u8> {
        let body: Vec<u8> = (0u16..10).flat_map(|i| i.to_le_bytes()).collect();
        raw(1, 2, 10, b"char:10", &body)
    }

    /// Writes `bytes` to a temp file, opens it expecting an error, and checks the path is named.
    fn open_err(bytes: &[u8], vocab_size: Option<usize>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.bin");
        std::fs::write(&path, bytes).unwrap();
        let message = Shard::open(&path, vocab_size).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        message
    }

    #[test]
    fn round_trip_u16() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRAIN_SHARD);
        let tokens: Vec<u32> = (0..1000).map(|i| (i * 7) % 65).collect();
        write_shard(&path, &tokens, 65, "char:65").unwrap();
        let expected_size = FIXED_HEADER_LEN + "char:65".len() + 2 * tokens.len();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), expected_size as u64);
        let shard = Shard::open(&path, Some(65)).unwrap();
        assert_eq!((shard.len(), shard.token_width()), (1000, 2));
        assert_eq!(shard.description(), "char:65");
        assert!((0..1000).all(|i| shard.token(i) == tokens[i]));
        let mut window = vec![0; 37];
        shard.copy_window(963, &mut window);
        assert_eq!(window, tokens[963..]);
    }

    #[test]
    fn round_trip_u32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAL_SHARD);
        let tokens = vec![0, 65_535, 65_536, 69_999, 12_345, 1];
        write_shard(&path, &tokens, 70_000, "bpe:70000").unwrap();
        let shard = Shard::open(&path, Some(70_000)).unwrap();
        assert_eq!(shard.token_width(), 4);
        let mut all = vec![0; tokens.len()];
        shard.copy_window(0, &mut all);
        assert_eq!(all, tokens);
        assert_eq!(shard.description(), "bpe:70000");
    }

    #[test]
    fn width_switches_above_65536() {
        assert_eq!(token_width(65), 2);
        assert_eq!(token_width(65_536), 2);
        assert_eq!(token_width(65_537), 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.bin");
        write_shard(&path, &[65_535, 0], 65_536, "x").unwrap();
        let shard = Shard::open(&path, Some(65_536)).unwrap();
        assert_eq!((shard.token_width(), shard.token(0)), (2, 65_535));
    }

    #[test]
    fn empty_shard_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.bin");
        write_shard(&path, &[], 65, "char:65").unwrap();
        let shard = Shard::open(&path, Some(65)).unwrap();
        assert!(shard.is_empty());
    }

    #[test]
    fn valid_fixture_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.bin");
        std::fs::write(&path, valid()).unwrap();
        assert_eq!(Shard::open(&path, Some(10)).unwrap().token(9), 9);
    }

    #[test]
    fn bad_magic_says_not_a_shard() {
        let message = open_err(b"First Citizen:\nBefore we proceed any further", None);
        assert!(message.contains("not a lushan token shard"), "{message}");
        assert!(message.contains("re-run `lushan prepare`"), "{message}");
        let message = open_err(b"", None);
        assert!(message.contains("not a lushan token shard"), "{message}");
    }

    #[test]
    fn wrong_version_names_both_versions() {
        let message = open_err(&raw(2, 2, 0, b"", b""), None);
        assert!(message.contains("version 2"), "{message}");
        assert!(message.contains("reads version 1"), "{message}");
    }

    #[test]
    fn bad_width_is_named() {
        let message = open_err(&raw(1, 3, 0, b"", b""), None);
        assert!(message.contains("width is 3 bytes"), "{message}");
    }

    #[test]
    fn truncated_header_names_sizes() {
        let message = open_err(&valid()[..20], None);
        assert!(message.contains("needs 28 bytes but the file has 20"), "{message}");
        // The description length points past the end of the file.
        let message = open_err(&valid()[..30], None);
        assert!(message.contains("needs 35 bytes but the file has 30"), "{message}");
    }

    #[test]
    fn description_must_be_utf8() {
        let message = open_err(&raw(1, 2, 0, b"char\xff", b""), None);
        assert!(message.contains("not valid UTF-8"), "{message}");
    }

    #[test]
    fn truncated_body_names_expected_and_actual_bytes() {
        let bytes = valid();
        let message = open_err(&bytes[..bytes.len() - 1], None);
        assert!(message.contains("10 tokens × 2 bytes = 20 bytes but has 19 bytes"), "{message}");
        assert!(message.contains("truncated"), "{message}");
    }

    #[test]
    fn trailing_bytes_name_expected_and_actual_bytes() {
        let mut bytes = valid();
        bytes.extend_from_slice(&[0, 0, 0]);
        let message = open_err(&bytes, None);
        assert!(message.contains("= 20 bytes but has 23 bytes"), "{message}");
    }

    #[test]
    fn huge_count_does_not_overflow() {
        let message = open_err(&raw(1, 4, u64::MAX, b"", b"abcd"), None);
        assert!(message.contains("but has 4 bytes"), "{message}");
    }

    #[test]
    fn ids_out_of_range_name_first_id_index_and_vocab() {
        let message = open_err(&valid(), Some(7));
        assert!(message.contains("token id 7 at index 7"), "{message}");
        assert!(message.contains("vocabulary of 7 tokens"), "{message}");
        let body: Vec<u8> = [5u32, 70_000, 80_000].iter().flat_map(|i| i.to_le_bytes()).collect();
        let message = open_err(&raw(1, 4, 3, b"", &body), Some(70_000));
        assert!(message.contains("token id 70000 at index 1"), "{message}");
    }

    #[test]
    fn write_rejects_bad_ids_and_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let message = write_shard(&path, &[1, 2, 65], 65, "char:65").unwrap_err().to_string();
        assert!(message.contains("token id 65 at index 2"), "{message}");
        let message = write_shard(&path, &[], 0, "").unwrap_err().to_string();
        assert!(message.contains("`vocab_size` = 0"), "{message}");
        assert!(!path.exists());
    }

    #[test]
    fn missing_shard_names_path_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        let message = Shard::open(&path, None).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("lushan prepare"), "{message}");
    }

    #[test]
    #[should_panic(expected = "outside the shard")]
    fn window_past_the_end_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.bin");
        std::fs::write(&path, valid()).unwrap();
        let shard = Shard::open(&path, None).unwrap();
        shard.copy_window(8, &mut [0; 3]);
    }
}
