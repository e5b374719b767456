//! Merge-rank BPE on one pre-tokenization piece.
//!
//! A piece starts as its bytes (one single-byte token each). While some adjacent pair of tokens is a merge,
//! the pair whose merge comes first in the merge list is replaced by the merged token; among equal pairs the
//! leftmost goes first. This is GPT-2's `bpe()`, Hugging Face `tokenizers`' `BPE` and tiktoken's
//! `_byte_pair_merge` (tiktoken ranks the concatenated bytes instead of the pair; for GPT-2's vocabulary every
//! token comes from its listed merge, so the two agree — the parity tests check it on every fixture).
//!
//! Short pieces — nearly all of real text — use tiktoken's loop: one vector of tokens and pair ranks, a
//! linear scan for the minimum, O(n²) but with n a handful of bytes. Long pieces (a run of one character is a
//! single piece, however long) use a linked list of symbols and per-rank buckets of candidate pairs
//! ([`merge_long`]): about linear, so a megabyte of `a` costs milliseconds, not hours.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Pieces longer than this use the bucket merge; at or below it, the linear scan is faster.
const HEAP_THRESHOLD: usize = 48;
/// Pieces longer than this are not cached (a long run of one character would only pin memory).
const CACHE_MAX_PIECE: usize = 256;
/// No merge applies to a pair.
pub const NO_RANK: u32 = u32::MAX;

/// The Fx hash (rustc's): one multiply-rotate per 8 bytes. Keys here are token-id pairs and short pieces
/// from the text being encoded, so flooding resistance buys nothing and costs most of the encode time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// The product's low bits depend only on the key's low bits, and hash tables index by the low bits:
    /// without this rotation every pair with the same right token (and every piece with the same first
    /// bytes) would share a probe sequence. rustc-hash 2 finishes the same way.
    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuild>;

/// Key of the pair (left, right) in a [`PairTable`].
#[inline]
pub fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Merges by pair: (left id, right id) → (rank, merged id). The rank is the merge's index in the merge list.
#[derive(Debug, Clone, Default)]
pub struct PairTable {
    map: FxHashMap<u64, u64>,
}

impl PairTable {
    pub fn with_capacity(n: usize) -> Self {
        Self { map: HashMap::with_capacity_and_hasher(n, FxBuild::default()) }
    }

    /// Adds a merge; returns `false` if the pair was already present (the table keeps the first).
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) -> bool {
        match self.map.entry(pair_key(left, right)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((u64::from(rank) << 32) | u64::from(merged));
                true
            }
        }
    }

    /// `(rank, merged id)` of a pair, or `(NO_RANK, 0)`.
    #[inline]
    pub fn get(&self, left: u32, right: u32) -> (u32, u32) {
        match self.map.get(&pair_key(left, right)) {
            Some(&v) => ((v >> 32) as u32, v as u32),
            None => (NO_RANK, 0),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Per-call memory for encoding: a cache of pieces already merged and scratch vectors reused across pieces.
///
/// Pieces of up to 15 bytes — nearly all of them — are keyed by their bytes packed into a `u128` (so a
/// lookup is one hash of two words and one integer compare, no pointer chase); longer ones by a slice
/// borrowed from the text being encoded, so the cache lives for one call. A value is either one token id
/// (most pieces are a single token) or a range of `ids`.
#[derive(Default)]
pub struct WordCache<'t> {
    short: FxHashMap<u128, u64>,
    long: FxHashMap<&'t [u8], u64>,
    ids: Vec<u32>,
    tokens: Vec<u32>,
    ranks: Vec<u32>,
}

/// Tag bit of a cache value that holds one token id in its low 32 bits.
const SINGLE: u64 = 1 << 63;

impl<'t> WordCache<'t> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache sized for encoding about `bytes` bytes of text.
    pub fn for_text(bytes: usize) -> Self {
        let distinct = (bytes / 64).clamp(16, 1 << 16);
        let mut cache = Self::default();
        cache.short.reserve(distinct);
        cache.ids.reserve(distinct);
        cache
    }

    #[inline]
    fn get(&self, piece: &[u8]) -> Option<u64> {
        match pack(piece) {
            Some(key) => self.short.get(&key).copied(),
            None => self.long.get(piece).copied(),
        }
    }

    #[inline]
    fn insert(&mut self, piece: &'t [u8], value: u64) {
        match pack(piece) {
            Some(key) => self.short.insert(key, value),
            None => self.long.insert(piece, value),
        };
    }
}

/// Up to 15 bytes and their length in one `u128` (zero-padded bytes, length in the top byte); `None` for
/// longer pieces. Built from a few overlapping loads instead of a variable-length copy.
#[inline]
fn pack(piece: &[u8]) -> Option<u128> {
    let n = piece.len();
    let word = |at: usize| <[u8; 8]>::try_from(piece.get(at..at + 8)?).ok().map(u64::from_le_bytes);
    let half = |at: usize| <[u8; 4]>::try_from(piece.get(at..at + 4)?).ok().map(u32::from_le_bytes);
    let (lo, hi) = match n {
        0 => (0, 0),
        1..=3 => {
            let byte = |i: usize| u64::from(piece[i]) << (8 * i);
            (byte(0) | byte(n / 2) | byte(n - 1), 0)
        }
        4..=7 => (u64::from(half(0)?) | (u64::from(half(n - 4)?) << (8 * (n - 4))), 0),
        8..=15 => (word(0)?, word(n - 8)?.checked_shr(8 * (16 - n) as u32).unwrap_or(0)),
        _ => return None,
    };
    Some(u128::from(lo) | (u128::from(hi | ((n as u64) << 56)) << 64))
}

/// Appends the BPE tokens of `piece` to `out`, through `cache`. `byte_ids[b]` is the id of byte `b`.
#[inline]
pub fn encode_piece<'t>(
    piece: &'t [u8],
    byte_ids: &[u32; 256],
    pairs: &PairTable,
    cache: &mut WordCache<'t>,
    out: &mut Vec<u32>,
) {
    match piece {
        [] => {}
        [b] => out.push(byte_ids[*b as usize]),
        _ if piece.len() > CACHE_MAX_PIECE => merge_into(piece, byte_ids, pairs, cache, out),
        _ => {
            if let Some(value) = cache.get(piece) {
                if value & SINGLE != 0 {
                    out.push(value as u32);
                } else {
                    let (start, len) = ((value >> 32) as usize, (value & 0xFFFF_FFFF) as usize);
                    out.extend_from_slice(&cache.ids[start..start + len]);
                }
                return;
            }
            let before = out.len();
            merge_into(piece, byte_ids, pairs, cache, out);
            let value = match &out[before..] {
                [id] => SINGLE | u64::from(*id),
                tokens => {
                    let start = cache.ids.len();
                    cache.ids.extend_from_slice(tokens);
                    // Offsets fit in 31 bits unless one call caches over 2 G tokens; then stop caching.
                    match u32::try_from(start) {
                        Ok(start) if start < 1 << 31 => (u64::from(start) << 32) | tokens.len() as u64,
                        _ => return,
                    }
                }
            };
            cache.insert(piece, value);
        }
    }
}

fn merge_into(piece: &[u8], byte_ids: &[u32; 256], pairs: &PairTable, cache: &mut WordCache, out: &mut Vec<u32>) {
    if piece.len() > HEAP_THRESHOLD {
        merge_long(piece, byte_ids, pairs, out);
    } else {
        merge_small(piece, byte_ids, pairs, &mut cache.tokens, &mut cache.ranks, out);
    }
}

/// tiktoken's loop: `ranks[i]` is the rank of the pair (tokens[i], tokens[i+1]).
fn merge_small(
    piece: &[u8],
    byte_ids: &[u32; 256],
    pairs: &PairTable,
    tokens: &mut Vec<u32>,
    ranks: &mut Vec<u32>,
    out: &mut Vec<u32>,
) {
    tokens.clear();
    tokens.extend(piece.iter().map(|&b| byte_ids[b as usize]));
    ranks.clear();
    ranks.extend(tokens.windows(2).map(|w| pairs.get(w[0], w[1]).0));
    loop {
        // Leftmost minimum.
        let mut best = NO_RANK;
        let mut at = 0;
        for (i, &r) in ranks.iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == NO_RANK {
            break;
        }
        let (_, merged) = pairs.get(tokens[at], tokens[at + 1]);
        tokens[at] = merged;
        tokens.remove(at + 1);
        ranks.remove(at);
        if at > 0 {
            ranks[at - 1] = pairs.get(tokens[at - 1], merged).0;
        }
        if at + 1 < tokens.len() {
            ranks[at] = pairs.get(merged, tokens[at + 1]).0;
        }
    }
    out.extend_from_slice(tokens);
}

const NONE: u32 = u32::MAX;

/// The same merges for long pieces: a linked list over byte positions, and the candidate pairs kept in one
/// bucket of left positions per rank, ranks taken smallest first from a heap.
///
/// A merge list made by training (GPT-2's included) only ever uses a token after the merge that makes it,
/// so every pair a merge creates ranks after the merge itself: when a rank's bucket comes up, all of its
/// pairs are already there. Taking them left to right, and skipping those a previous merge has broken
/// (dead position, or the pair there no longer has this rank), is exactly "leftmost lowest rank first".
/// Should a merge list rank a new pair earlier anyway, the rest of the bucket goes back and the earlier
/// rank is done first, which keeps the same order. Each position enters a bucket once per pair it forms,
/// so the work is linear in the piece apart from sorting buckets (pushes from different ranks interleave).
fn merge_long(piece: &[u8], byte_ids: &[u32; 256], pairs: &PairTable, out: &mut Vec<u32>) {
    let n = piece.len();
    let mut token: Vec<u32> = piece.iter().map(|&b| byte_ids[b as usize]).collect();
    // next/prev: neighbouring alive positions (NONE at the ends); dead positions have token NONE.
    let mut next: Vec<u32> = (1..=n as u32).collect();
    if let Some(last) = next.last_mut() {
        *last = NONE;
    }
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect(); // 0 → NONE
    let mut buckets = Buckets::default();
    for i in 0..n - 1 {
        let (rank, _) = pairs.get(token[i], token[i + 1]);
        if rank != NO_RANK {
            buckets.push(rank, i as u32, false);
        }
    }
    while let Some((rank, positions)) = buckets.pop() {
        let mut k = 0;
        while k < positions.len() {
            let left = positions[k] as usize;
            k += 1;
            let right = next[left];
            if token[left] == NONE || right == NONE {
                continue;
            }
            let right = right as usize;
            let (current, merged) = pairs.get(token[left], token[right]);
            if current != rank {
                continue;
            }
            token[left] = merged;
            token[right] = NONE;
            let after = next[right];
            next[left] = after;
            let mut earliest = NO_RANK;
            if after != NONE {
                prev[after as usize] = left as u32;
                let (r, _) = pairs.get(merged, token[after as usize]);
                if r != NO_RANK {
                    buckets.push(r, left as u32, false);
                    earliest = earliest.min(r);
                }
            }
            let before = prev[left];
            if before != NONE {
                let (r, _) = pairs.get(token[before as usize], merged);
                if r != NO_RANK {
                    buckets.push(r, before, true);
                    earliest = earliest.min(r);
                }
            }
            if earliest <= rank && k < positions.len() {
                // An earlier (or equal) rank appeared: finish it first, then come back to the rest.
                for &pos in &positions[k..] {
                    buckets.push(rank, pos, false);
                }
                break;
            }
        }
        buckets.recycle(positions);
    }
    out.extend(token.iter().copied().filter(|&t| t != NONE));
}

/// Candidate left positions per rank. Within one pass over a bucket, the pairs a merge makes with its
/// right neighbour are pushed in increasing position, and so are those it makes with its left neighbour —
/// but the two streams interleave, so they go to separate lists. A bucket is then a few ascending runs,
/// which the (run-adaptive) stable sort merges in about linear time.
#[derive(Default)]
struct Buckets {
    lists: FxHashMap<u32, (Vec<u32>, Vec<u32>)>,
    ranks: BinaryHeap<std::cmp::Reverse<u32>>,
    spare: Vec<Vec<u32>>,
}

impl Buckets {
    #[inline]
    fn push(&mut self, rank: u32, pos: u32, from_left_side: bool) {
        let (ranks, spare) = (&mut self.ranks, &mut self.spare);
        let lists = self.lists.entry(rank).or_insert_with(|| {
            ranks.push(std::cmp::Reverse(rank));
            (spare.pop().unwrap_or_default(), spare.pop().unwrap_or_default())
        });
        if from_left_side { lists.1.push(pos) } else { lists.0.push(pos) }
    }

    /// The lowest rank and its positions, ascending.
    fn pop(&mut self) -> Option<(u32, Vec<u32>)> {
        while let Some(std::cmp::Reverse(rank)) = self.ranks.pop() {
            if let Some((mut positions, other)) = self.lists.remove(&rank) {
                positions.extend_from_slice(&other);
                self.recycle(other);
                if !positions.is_sorted() {
                    positions.sort();
                }
                return Some((rank, positions));
            }
        }
        None
    }

    fn recycle(&mut self, mut list: Vec<u32>) {
        list.clear();
        self.spare.push(list);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    /// Bytes are their own ids; merges: (a,a)→256 rank 0, (256,a)→257 rank 1, (b,c)→258 rank 2,
    /// (a,258)→259 rank 3, (256,256)→260 rank 4; and, out of training order (a pair using a token ranked
    /// before the merge that makes it), (261,b)→262 rank 5 and (c,c)→261 rank 10.
    fn table() -> ([u32; 256], PairTable) {
        let mut byte_ids = [0u32; 256];
        for (i, id) in byte_ids.iter_mut().enumerate() {
            *id = i as u32;
        }
        let mut pairs = PairTable::with_capacity(8);
        let a = u32::from(b'a');
        pairs.insert(a, a, 0, 256);
        pairs.insert(256, a, 1, 257);
        pairs.insert(u32::from(b'b'), u32::from(b'c'), 2, 258);
        pairs.insert(a, 258, 3, 259);
        pairs.insert(256, 256, 4, 260);
        let (b, c) = (u32::from(b'b'), u32::from(b'c'));
        pairs.insert(261, b, 5, 262);
        pairs.insert(c, c, 10, 261);
        (byte_ids, pairs)
    }

    fn both(piece: &[u8]) -> Vec<u32> {
        let (byte_ids, pairs) = table();
        let (mut small, mut long) = (Vec::new(), Vec::new());
        merge_small(piece, &byte_ids, &pairs, &mut Vec::new(), &mut Vec::new(), &mut small);
        merge_long(piece, &byte_ids, &pairs, &mut long);
        assert_eq!(small, long, "{:?}", String::from_utf8_lossy(piece));
        small
    }

    #[test]
    fn leftmost_lowest_rank_first() {
        assert_eq!(both(b"aaa"), [257]); // (a,a) at 0, then (aa,a)
        assert_eq!(both(b"aaaa"), [260]); // aa a a → (a,a) rank 0 again → aa aa → (aa,aa)
        assert_eq!(both(b"abc"), [259]);
        assert_eq!(both(b"xbcaa"), [u32::from(b'x'), 258, 256]);
        assert_eq!(both(b"z"), [u32::from(b'z')]);
        assert_eq!(both(b"ccb"), [262]); // (c,c) rank 10, then (cc,b) rank 5 comes before anything left
        assert_eq!(both(b"ccbaa"), [262, 256]);
    }

    #[test]
    fn long_merge_agrees_with_scan_on_many_strings() {
        let alphabet = b"aabccbx";
        let mut state = 12345u64;
        for len in 2..200 {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            both(&piece);
        }
    }

    #[test]
    fn pack_is_zero_padded_bytes_and_length() {
        for n in 0..=15usize {
            let piece: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37).wrapping_add(200)).collect();
            let mut buf = [0u8; 16];
            buf[..n].copy_from_slice(&piece);
            buf[15] = n as u8;
            assert_eq!(pack(&piece), Some(u128::from_le_bytes(buf)), "length {n}");
        }
        assert_eq!(pack(&[1; 16]), None);
    }

    #[test]
    fn cache_returns_the_same_tokens() {
        let (byte_ids, pairs) = table();
        let text = b"aaabc aaabc";
        // a a a b c → (a,a) → (aa,a) → (b,c): [aaa, bc]
        let mut cache = WordCache::new();
        let mut out = Vec::new();
        encode_piece(&text[..5], &byte_ids, &pairs, &mut cache, &mut out);
        encode_piece(&text[6..], &byte_ids, &pairs, &mut cache, &mut out);
        assert_eq!(out, [257, 258, 257, 258]);
        assert_eq!(cache.short.len(), 1);
    }
}
