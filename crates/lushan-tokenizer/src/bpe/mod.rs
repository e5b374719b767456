//! Byte-level BPE, identical to tiktoken's `gpt2` encoding on GPT-2's vocabulary.
//!
//! Text is split into pieces by GPT-2's pattern ([`pretokenize`]), each piece's UTF-8 bytes start as
//! single-byte tokens, and merges apply in the order of the merge list ([`merge`]). Any vocabulary that
//! holds all 256 single bytes and a merge list works: GPT-2's (bundled, [`Bpe::gpt2`]), Hugging Face files
//! ([`files`]) or one trained here ([`train`]).
//!
//! # Policies
//!
//! - **Special tokens are plain text by default.** [`Bpe::encode_ordinary`] (and [`crate::Tokenizer::encode`])
//!   encode a literal `<|endoftext|>` in the input as the 7 ordinary tokens of those characters, like
//!   tiktoken's `encode_ordinary`; only [`Bpe::encode_with_special`] (the CLI's `--allow-special`) turns it
//!   into id 50256. Text from users therefore cannot forge a document boundary. (`transformers`' tokenizers
//!   match added tokens in text by default; call `encode_with_special` to compare with them.)
//! - **Input must be UTF-8.** Encoding takes `&str`; bytes from a file go through [`utf8_text`], which
//!   rejects invalid UTF-8 with the offset of the first bad byte rather than guessing.
//! - **Decoding is exact on bytes.** [`Bpe::decode_bytes`] returns the bytes the ids stand for, so
//!   `decode_bytes(encode(x)) == x` byte for byte; ids can split a character, so [`Bpe::decode`] (a `String`)
//!   replaces incomplete or invalid sequences with U+FFFD, and [`decode::StreamDecoder`] holds partial
//!   characters back until they complete. An id outside the vocabulary is an error naming it.
//! - **Parallel encoding equals serial encoding.** [`Bpe::encode_parallel`] cuts the text only where a
//!   character that is not whitespace is followed by whitespace ([`pretokenize::is_safe_cut`]), which never
//!   changes the pieces, so the ids are identical for every thread count.

pub mod bytes;
pub mod decode;
pub mod files;
mod hf_json;
pub mod merge;
pub mod pretokenize;
pub mod train;

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::error::{Result, TokenizerError, VocabError};
use merge::{FxHashMap, PairTable, WordCache};

/// The value of the JSON `"type"` field for a BPE tokenizer in `lushan-tokenizer.json`.
pub const BPE_TYPE: &str = "bpe";
/// The special token that separates documents in GPT-2's training data (id 50256 in GPT-2).
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// [`Bpe::fingerprint`] of GPT-2's vocabulary; [`Bpe::describe`] calls a tokenizer with it `gpt2-bpe`.
pub const GPT2_FINGERPRINT: u64 = 0xb938_0f11_092f_3021;

/// GPT-2's `encoder.json` and `vocab.bpe` (MIT, see `tests/fixtures/gpt2/LICENSE`), built into the binary so
/// `--tokenizer gpt2` works from any directory with no download.
const GPT2_ENCODER_JSON: &[u8] = include_bytes!("../../tests/fixtures/gpt2/encoder.json");
const GPT2_VOCAB_BPE: &[u8] = include_bytes!("../../tests/fixtures/gpt2/vocab.bpe");

/// Texts shorter than this are encoded on one thread: starting threads costs more than it saves.
const MIN_PARALLEL_BYTES: usize = 64 * 1024;

/// A byte-level BPE tokenizer. Cloning is cheap (the tables are shared).
#[derive(Clone)]
pub struct Bpe {
    inner: Arc<Inner>,
}

struct Inner {
    /// id → bytes; a special token's bytes are its UTF-8 text.
    tokens: Vec<Vec<u8>>,
    /// bytes → id for every token that is not special.
    encoder: FxHashMap<Vec<u8>, u32>,
    /// `byte_ids[b]`: the id of the single-byte token `b`.
    byte_ids: [u32; 256],
    /// In rank order: merge `r` joins `(left, right)`.
    merges: Vec<(u32, u32)>,
    pairs: PairTable,
    /// (text, id), sorted by id.
    specials: Vec<(String, u32)>,
    fingerprint: u64,
}

/// What a vocabulary file says, before validation: see [`Bpe::from_parts`].
#[derive(Debug, Clone, Default)]
pub struct BpeParts {
    /// id → bytes, for every id `0..n`.
    pub tokens: Vec<Vec<u8>>,
    /// Merge list in rank order, as (left id, right id).
    pub merges: Vec<(u32, u32)>,
    /// Line numbers of the merges in their file (1-based), for error messages; empty when not from a file.
    pub merge_lines: Vec<usize>,
    /// Ids of special tokens (their bytes must be UTF-8).
    pub specials: Vec<u32>,
    /// Name of the file the merges came from, for error messages.
    pub source: String,
}

impl BpeParts {
    fn merge_location(&self, index: usize) -> String {
        match self.merge_lines.get(index) {
            Some(line) => format!("{} line {line}", self.source),
            None => format!("{} merge {index}", self.source),
        }
    }
}

impl Bpe {
    /// GPT-2's tokenizer (50 257 ids, `<|endoftext|>` = 50256), parsed once per process from the bundled
    /// files.
    pub fn gpt2() -> Result<Self> {
        static GPT2: OnceLock<Bpe> = OnceLock::new();
        if let Some(bpe) = GPT2.get() {
            return Ok(bpe.clone());
        }
        let bpe = files::from_encoder_and_vocab_bpe(GPT2_ENCODER_JSON, GPT2_VOCAB_BPE, "bundled GPT-2")?;
        Ok(GPT2.get_or_init(|| bpe).clone())
    }

    /// Validates and indexes a vocabulary: ids `0..n` each with bytes; all 256 single bytes present among the
    /// non-special tokens, each once; every merge joins two non-special tokens into a token that exists; no
    /// merge repeated; special tokens non-empty UTF-8. Errors name the file, line and token.
    pub fn from_parts(parts: BpeParts) -> Result<Self> {
        let n = parts.tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(VocabError::BpeVocabSize { file: parts.source.clone(), size: n }.into());
        }
        let mut is_special = vec![false; n];
        let mut specials = Vec::with_capacity(parts.specials.len());
        for &id in &parts.specials {
            let bytes = parts.tokens.get(id as usize).ok_or_else(|| VocabError::SpecialIdOutOfRange {
                file: parts.source.clone(),
                id,
                vocab_size: n,
            })?;
            let text = std::str::from_utf8(bytes).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
                VocabError::BadSpecialToken { file: parts.source.clone(), id, token: bytes::token_to_string(bytes) }
            })?;
            if !std::mem::replace(&mut is_special[id as usize], true) {
                specials.push((text.to_owned(), id));
            }
        }
        specials.sort_by_key(|&(_, id)| id);

        let mut encoder: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
        encoder.reserve(n);
        let mut byte_ids = [u32::MAX; 256];
        for (id, bytes) in parts.tokens.iter().enumerate() {
            if is_special[id] {
                continue;
            }
            let id = id as u32;
            if let Some(&first) = encoder.get(bytes) {
                return Err(VocabError::DuplicateToken {
                    file: parts.source.clone(),
                    token: bytes::token_to_string(bytes),
                    first: u64::from(first),
                    second: u64::from(id),
                }
                .into());
            }
            encoder.insert(bytes.clone(), id);
            if let [b] = bytes.as_slice() {
                byte_ids[*b as usize] = id;
            }
        }
        if let Some(byte) = (0..=255u8).find(|&b| byte_ids[b as usize] == u32::MAX) {
            return Err(VocabError::MissingByte { file: parts.source.clone(), byte }.into());
        }

        let mut pairs = PairTable::with_capacity(parts.merges.len());
        let mut concat = Vec::new();
        for (rank, &(left, right)) in parts.merges.iter().enumerate() {
            let name = |id: u32| {
                parts.tokens.get(id as usize).map_or_else(|| format!("id {id}"), |b| bytes::token_to_string(b))
            };
            for id in [left, right] {
                if parts.tokens.get(id as usize).is_none() || is_special[id as usize] {
                    return Err(VocabError::MergeUnknownToken {
                        location: parts.merge_location(rank),
                        token: name(id),
                    }
                    .into());
                }
            }
            concat.clear();
            concat.extend_from_slice(&parts.tokens[left as usize]);
            concat.extend_from_slice(&parts.tokens[right as usize]);
            let Some(&merged) = encoder.get(&concat) else {
                return Err(VocabError::MergeResultMissing {
                    location: parts.merge_location(rank),
                    left: name(left),
                    right: name(right),
                    merged: bytes::token_to_string(&concat),
                }
                .into());
            };
            let rank32 = u32::try_from(rank).unwrap_or(merge::NO_RANK - 1);
            if !pairs.insert(left, right, rank32, merged) {
                let first = parts.merges.iter().position(|&m| m == (left, right)).unwrap_or(0);
                return Err(VocabError::DuplicateMerge {
                    location: parts.merge_location(rank),
                    left: name(left),
                    right: name(right),
                    first: parts.merge_location(first),
                }
                .into());
            }
        }
        let fingerprint = fingerprint(&parts.tokens, &parts.merges, &specials);
        Ok(Self {
            inner: Arc::new(Inner {
                tokens: parts.tokens,
                encoder,
                byte_ids,
                merges: parts.merges,
                pairs,
                specials,
                fingerprint,
            }),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }

    /// id → bytes for every id (a special token's bytes are its text).
    pub fn tokens(&self) -> &[Vec<u8>] {
        &self.inner.tokens
    }

    /// The bytes of one token, if the id exists.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// The id of a non-special token with exactly these bytes.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.inner.encoder.get(bytes).copied()
    }

    /// The merge list in rank order, as (left id, right id).
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.inner.merges
    }

    /// Special tokens as (text, id), sorted by id.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.inner.specials
    }

    /// The id of a special token, e.g. `special_id("<|endoftext|>") == Some(50256)` for GPT-2.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.inner.specials.iter().find(|(t, _)| t == text).map(|&(_, id)| id)
    }

    /// A 64-bit FNV-1a hash of the tokens, merges and special tokens: equal for equal vocabularies.
    pub fn fingerprint(&self) -> u64 {
        self.inner.fingerprint
    }

    /// `gpt2-bpe:50257` for GPT-2's vocabulary, else `bpe:<vocab size>:<12 hex digits of the fingerprint>`,
    /// so shards written with different vocabularies of the same size are told apart.
    pub fn describe(&self) -> String {
        if self.is_gpt2() {
            format!("gpt2-bpe:{}", self.vocab_size())
        } else {
            format!("{BPE_TYPE}:{}:{:012x}", self.vocab_size(), self.fingerprint() >> 16)
        }
    }

    /// Whether this is GPT-2's vocabulary (however it was loaded).
    pub fn is_gpt2(&self) -> bool {
        self.fingerprint() == GPT2_FINGERPRINT
    }

    /// Encodes `text` with every special token's text treated as ordinary text (tiktoken's
    /// `encode_ordinary`).
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_ordinary_into(text, &mut WordCache::for_text(text.len()), &mut out);
        out
    }

    fn encode_ordinary_into<'t>(&self, text: &'t str, cache: &mut WordCache<'t>, out: &mut Vec<u32>) {
        let inner = &*self.inner;
        for piece in pretokenize::pieces(text) {
            merge::encode_piece(piece.as_bytes(), &inner.byte_ids, &inner.pairs, cache, out);
        }
    }

    /// Runs the merges on raw bytes taken as one piece (no pre-tokenization); for inspection and tests.
    pub fn merge_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        merge::encode_piece(bytes, &self.inner.byte_ids, &self.inner.pairs, &mut WordCache::new(), &mut out);
        out
    }

    /// Encodes `text`, turning every occurrence of a special token's text into its id (tiktoken's
    /// `encode(text, allowed_special="all")`). The text between special tokens is encoded on its own, as
    /// tiktoken does.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut cache = WordCache::for_text(text.len());
        for segment in self.split_special(text) {
            match segment {
                Segment::Text(t) => self.encode_ordinary_into(t, &mut cache, &mut out),
                Segment::Special(id) => out.push(id),
            }
        }
        out
    }

    /// [`Bpe::encode_ordinary`] on up to `threads` threads; the ids are identical to the serial ones.
    pub fn encode_parallel(&self, text: &str, threads: usize) -> Vec<u32> {
        let chunks = parallel_chunks(text, threads);
        if chunks.len() <= 1 {
            return self.encode_ordinary(text);
        }
        self.encode_batch(&chunks, threads).concat()
    }

    /// [`Bpe::encode_with_special`] on up to `threads` threads.
    pub fn encode_with_special_parallel(&self, text: &str, threads: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        for segment in self.split_special(text) {
            match segment {
                Segment::Text(t) => out.extend(self.encode_parallel(t, threads)),
                Segment::Special(id) => out.push(id),
            }
        }
        out
    }

    /// [`Bpe::encode_ordinary`] of each text, on up to `threads` threads. Each thread keeps one piece cache
    /// across the texts it takes, so many small texts cost no more than one big one.
    pub fn encode_batch(&self, texts: &[&str], threads: usize) -> Vec<Vec<u32>> {
        let threads = threads.clamp(1, texts.len().max(1));
        let total: usize = texts.iter().map(|t| t.len()).sum();
        let encode_all = |indices: &mut dyn Iterator<Item = usize>| {
            let mut cache = WordCache::for_text(total / threads);
            let mut done = Vec::new();
            for i in indices {
                let Some(text) = texts.get(i) else { break };
                let mut ids = Vec::with_capacity(text.len() / 3 + 1);
                self.encode_ordinary_into(text, &mut cache, &mut ids);
                done.push((i, ids));
            }
            done
        };
        if threads == 1 {
            return encode_all(&mut (0..texts.len())).into_iter().map(|(_, ids)| ids).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let claim = || next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done: Vec<Vec<(usize, Vec<u32>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        encode_all(&mut std::iter::from_fn(|| Some(claim())).take_while(|&i| i < texts.len()))
                    })
                })
                .collect();
            // A worker only encodes; if one panicked anyway its texts stay unfilled and are redone below.
            workers.into_iter().filter_map(|w| w.join().ok()).collect()
        });
        let mut results: Vec<Option<Vec<u32>>> = vec![None; texts.len()];
        for (i, ids) in done.into_iter().flatten() {
            results[i] = Some(ids);
        }
        results.into_iter().zip(texts).map(|(ids, text)| ids.unwrap_or_else(|| self.encode_ordinary(text))).collect()
    }

    /// Splits `text` at occurrences of special tokens (leftmost first; the longest at the same position).
    fn split_special<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        let mut segments = Vec::new();
        let mut rest = text;
        loop {
            let found = self
                .inner
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, std::cmp::Reverse(s.len()), *id)))
                .min();
            match found {
                Some((at, std::cmp::Reverse(len), id)) => {
                    if at > 0 {
                        segments.push(Segment::Text(&rest[..at]));
                    }
                    segments.push(Segment::Special(id));
                    rest = &rest[at + len..];
                }
                None => {
                    if !rest.is_empty() {
                        segments.push(Segment::Text(rest));
                    }
                    return segments;
                }
            }
        }
    }
}

enum Segment<'t> {
    Text(&'t str),
    Special(u32),
}

/// Cuts `text` into about `threads` chunks at safe boundaries (see [`pretokenize::is_safe_cut`]).
pub fn parallel_chunks(text: &str, threads: usize) -> Vec<&str> {
    if threads <= 1 || text.len() < MIN_PARALLEL_BYTES {
        return vec![text];
    }
    let target = text.len() / threads;
    let mut chunks = Vec::with_capacity(threads);
    let mut start = 0;
    for k in 1..threads {
        let want = (k * target).max(start + 1);
        match pretokenize::next_safe_cut(text, want) {
            Some(cut) if cut < text.len() => {
                chunks.push(&text[start..cut]);
                start = cut;
            }
            _ => break,
        }
    }
    chunks.push(&text[start..]);
    chunks
}

/// Checks that `bytes` are UTF-8; the error names the offset of the first invalid byte.
pub fn utf8_text(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        TokenizerError::InvalidUtf8 { offset, byte: bytes.get(offset).copied().unwrap_or(0) }
    })
}

fn fingerprint(tokens: &[Vec<u8>], merges: &[(u32, u32)], specials: &[(String, u32)]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for token in tokens {
        feed(&(token.len() as u64).to_le_bytes());
        feed(token);
    }
    for &(left, right) in merges {
        feed(&left.to_le_bytes());
        feed(&right.to_le_bytes());
    }
    for (_, id) in specials {
        feed(&id.to_le_bytes());
    }
    hash
}

impl PartialEq for Bpe {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.tokens == other.inner.tokens
                && self.inner.merges == other.inner.merges
                && self.inner.specials == other.inner.specials)
    }
}

impl Eq for Bpe {}

impl fmt::Debug for Bpe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bpe")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.inner.merges.len())
            .field("specials", &self.inner.specials)
            .field("describe", &self.describe())
            .finish()
    }
}
