//! Byte-level BPE training, GPT-2 style.
//!
//! The corpus is split into pieces by GPT-2's pattern and counted ([`BpeTrainer::add_text`]); each distinct
//! piece is a word of single-byte symbols. Then, until the vocabulary is full, the most frequent adjacent
//! pair of symbols over all words (weighted by word count) becomes a new token, and every occurrence of it
//! (left to right, not overlapping) is merged. Ties go to the pair whose (left bytes, right bytes) is
//! lexicographically smallest, so the result depends only on the corpus, never on hash order or threads.
//!
//! Pair counts are updated incrementally: only the words that contain the merged pair are touched (an index
//! from pair to words says which), and a max-heap with lazy deletion finds the next pair. A stale heap entry
//! (its count has dropped since it was pushed) is re-pushed with the current count when popped.
//!
//! Ids: the 256 bytes first, in GPT-2's order (so ids 0..256 mean what they mean in GPT-2), then one id per
//! merge, then the special tokens (by default `<|endoftext|>`, last, as in GPT-2). The requested vocabulary
//! size counts all three. Training stops early — with a smaller vocabulary, reported in [`TrainReport`] —
//! when no pair occurs at least `min_frequency` times. If a merge's bytes equal an existing token (two
//! different splits of the same string), the merge is recorded with the existing id and adds no token.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::bytes::GPT2_BYTE_ORDER;
use super::merge::{FxHashMap, pair_key};
use super::pretokenize::pieces;
use super::{Bpe, BpeParts, END_OF_TEXT};
use crate::error::{Result, TokenizerError};

/// Training settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainOptions {
    /// Total ids wanted: 256 bytes + merges + special tokens.
    pub vocab_size: usize,
    /// A pair seen fewer times than this is never merged (2: a pair seen once is not a pattern).
    pub min_frequency: u64,
    /// Special tokens, appended after the merges.
    pub special_tokens: Vec<String>,
}

impl TrainOptions {
    pub fn new(vocab_size: usize) -> Self {
        Self { vocab_size, min_frequency: 2, special_tokens: vec![END_OF_TEXT.to_owned()] }
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainReport {
    pub requested_vocab_size: usize,
    pub vocab_size: usize,
    pub merges: usize,
    /// Bytes of text seen.
    pub corpus_bytes: u64,
    /// Pre-tokenization pieces seen, and how many were distinct.
    pub pieces: u64,
    pub distinct_pieces: usize,
    /// True when training ran out of pairs at `min_frequency` before reaching the requested size.
    pub stopped_early: bool,
}

/// Counts pieces of a corpus (one or more texts), then trains.
#[derive(Debug, Default)]
pub struct BpeTrainer {
    counts: HashMap<String, u64>,
    corpus_bytes: u64,
    pieces: u64,
}

/// A candidate pair in the heap: highest count first, then the smallest (left bytes, right bytes).
#[derive(PartialEq, Eq)]
struct Candidate {
    count: u64,
    left_bytes: Vec<u8>,
    right_bytes: Vec<u8>,
    left: u32,
    right: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.left_bytes.cmp(&self.left_bytes))
            .then_with(|| other.right_bytes.cmp(&self.right_bytes))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Word {
    symbols: Vec<u32>,
    count: u64,
}

impl BpeTrainer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the pieces of one text (a file, a document).
    pub fn add_text(&mut self, text: &str) {
        let mut local: FxHashMap<&str, u64> = FxHashMap::default();
        for piece in pieces(text) {
            *local.entry(piece).or_insert(0) += 1;
            self.pieces += 1;
        }
        for (piece, n) in local {
            *self.counts.entry(piece.to_owned()).or_insert(0) += n;
        }
        self.corpus_bytes += text.len() as u64;
    }

    /// Learns merges until the vocabulary has `options.vocab_size` ids (or no pair is frequent enough).
    pub fn train(self, options: &TrainOptions) -> Result<(Bpe, TrainReport)> {
        let minimum = 256 + options.special_tokens.len();
        let maximum = u32::MAX as usize;
        if !(minimum..=maximum).contains(&options.vocab_size) {
            return Err(TokenizerError::VocabSizeOutOfRange { requested: options.vocab_size, minimum, maximum });
        }
        if self.counts.is_empty() {
            return Err(TokenizerError::EmptyCorpus);
        }
        let mut tokens: Vec<Vec<u8>> = GPT2_BYTE_ORDER.iter().map(|&b| vec![b]).collect();
        let mut byte_ids = [0u32; 256];
        for (id, &b) in GPT2_BYTE_ORDER.iter().enumerate() {
            byte_ids[b as usize] = id as u32;
        }
        let mut existing: HashMap<Vec<u8>, u32> = tokens.iter().cloned().zip(0..).collect();
        // Sorted words: the same corpus gives the same word order however the counts were gathered.
        let mut sorted: Vec<(String, u64)> = self.counts.into_iter().collect();
        sorted.sort_unstable();
        let distinct_pieces = sorted.len();
        let mut words: Vec<Word> = sorted
            .into_iter()
            .map(|(piece, count)| Word { symbols: piece.bytes().map(|b| byte_ids[b as usize]).collect(), count })
            .collect();

        let mut counts: FxHashMap<u64, u64> = FxHashMap::default();
        let mut where_: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
        for (w, word) in words.iter().enumerate() {
            for pair in word.symbols.windows(2) {
                let key = pair_key(pair[0], pair[1]);
                *counts.entry(key).or_insert(0) += word.count;
                let list = where_.entry(key).or_default();
                if list.last() != Some(&(w as u32)) {
                    list.push(w as u32);
                }
            }
        }
        let candidate = |tokens: &[Vec<u8>], key: u64, count: u64| {
            let (left, right) = ((key >> 32) as u32, key as u32);
            Candidate {
                count,
                left_bytes: tokens[left as usize].clone(),
                right_bytes: tokens[right as usize].clone(),
                left,
                right,
            }
        };
        let mut heap: BinaryHeap<Candidate> = counts
            .iter()
            .filter(|&(_, &c)| c >= options.min_frequency.max(1))
            .map(|(&key, &c)| candidate(&tokens, key, c))
            .collect();

        let mut merges: Vec<(u32, u32)> = Vec::with_capacity(options.vocab_size - minimum);
        let mut merged_pairs: std::collections::HashSet<u64, super::merge::FxBuild> = Default::default();
        let mut new_pairs: Vec<u64> = Vec::new();
        let mut old_pairs: Vec<u64> = Vec::new();
        let token_target = options.vocab_size - options.special_tokens.len();
        while tokens.len() < token_target {
            let Some(top) = heap.pop() else { break };
            let key = pair_key(top.left, top.right);
            let current = counts.get(&key).copied().unwrap_or(0);
            if current != top.count {
                if current >= options.min_frequency.max(1) {
                    heap.push(candidate(&tokens, key, current));
                }
                continue;
            }
            let mut merged_bytes = top.left_bytes.clone();
            merged_bytes.extend_from_slice(&top.right_bytes);
            let merged = match existing.get(&merged_bytes) {
                Some(&id) => id,
                None => {
                    let id = tokens.len() as u32;
                    existing.insert(merged_bytes.clone(), id);
                    tokens.push(merged_bytes);
                    id
                }
            };
            // A pair can come back only if a duplicate-bytes merge re-created one of its tokens; it keeps its
            // first rank (a merge list must not repeat a pair) and is applied again here.
            if merged_pairs.insert(key) {
                merges.push((top.left, top.right));
            }
            new_pairs.clear();
            for w in where_.remove(&key).unwrap_or_default() {
                let word = &mut words[w as usize];
                if !merge_word(&mut word.symbols, top.left, top.right, merged, &mut old_pairs) {
                    continue;
                }
                for &p in &old_pairs {
                    if let Some(c) = counts.get_mut(&p) {
                        *c = c.saturating_sub(word.count);
                    }
                }
                for pair in word.symbols.windows(2) {
                    let p = pair_key(pair[0], pair[1]);
                    *counts.entry(p).or_insert(0) += word.count;
                    if pair[0] == merged || pair[1] == merged {
                        new_pairs.push(p);
                        let list = where_.entry(p).or_default();
                        if list.last() != Some(&w) {
                            list.push(w);
                        }
                    }
                }
            }
            counts.remove(&key);
            new_pairs.sort_unstable();
            new_pairs.dedup();
            for &p in &new_pairs {
                let c = counts.get(&p).copied().unwrap_or(0);
                if c >= options.min_frequency.max(1) {
                    heap.push(candidate(&tokens, p, c));
                }
            }
        }

        let merge_count = merges.len();
        let specials_start = tokens.len() as u32;
        let mut specials = Vec::with_capacity(options.special_tokens.len());
        for (i, special) in options.special_tokens.iter().enumerate() {
            specials.push(specials_start + i as u32);
            tokens.push(special.as_bytes().to_vec());
        }
        let vocab_size = tokens.len();
        let bpe = Bpe::from_parts(BpeParts {
            tokens,
            merges,
            merge_lines: Vec::new(),
            specials,
            source: "trained vocabulary".to_owned(),
        })?;
        let report = TrainReport {
            requested_vocab_size: options.vocab_size,
            vocab_size,
            merges: merge_count,
            corpus_bytes: self.corpus_bytes,
            pieces: self.pieces,
            distinct_pieces,
            stopped_early: vocab_size < options.vocab_size,
        };
        Ok((bpe, report))
    }
}

/// Merges every non-overlapping (left, right) in `symbols`, left to right. Fills `old_pairs` with the word's
/// pairs before the merge (their counts are then subtracted and the new pairs added). Returns whether the
/// pair occurred.
fn merge_word(symbols: &mut Vec<u32>, left: u32, right: u32, merged: u32, old_pairs: &mut Vec<u64>) -> bool {
    if !symbols.windows(2).any(|p| p[0] == left && p[1] == right) {
        return false;
    }
    old_pairs.clear();
    old_pairs.extend(symbols.windows(2).map(|p| pair_key(p[0], p[1])));
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
            out.push(merged);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    *symbols = out;
    true
}
