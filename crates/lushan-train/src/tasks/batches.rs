//! Variable-length batches for task data, and the loader that orders examples into them.
//!
//! A batch is padded on the right to its own longest sequence, not to the model's context, so a batch of
//! short texts costs little. The training loader groups examples of similar length the way Hugging Face's
//! `group_by_length` does: shuffle the epoch, cut the order into chunks of [`GROUP_CHUNK_BATCHES`]·B
//! examples, sort each chunk by length, cut it into batches of B, and shuffle those batches — random enough
//! to train well, sorted enough to waste little on padding.

use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::rng::Rng;
use serde::{Deserialize, Serialize};

use super::classify::ClassifyExample;
use super::sft::SftExample;
use crate::error::{Result, TrainError};

/// Batches per length-sorted chunk (Hugging Face's megabatch multiplier).
pub const GROUP_CHUNK_BATCHES: usize = 50;

/// One batch of examples, padded on the right to the longest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskBatch {
    /// Rows (examples).
    pub b: usize,
    /// Columns: the longest input in this batch.
    pub t: usize,
    /// (b, t) row-major input ids; padding is the pad id given when the batch was built.
    pub inputs: Vec<u32>,
    /// Classification: `b` label indices. SFT: (b, t) next-token targets, [`IGNORE_INDEX`] where the target
    /// is not trained and at padding.
    pub targets: Vec<u32>,
    /// Index of each row's example in its data set (evaluation reports per example).
    pub examples: Vec<usize>,
    /// Real (unpadded) input tokens of each row; a classifier reads row `i` at position `lengths[i] - 1`.
    pub lengths: Vec<usize>,
}

impl TaskBatch {
    /// Input tokens that are not padding.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Input tokens including padding: b·t.
    pub fn padded_tokens(&self) -> usize {
        self.inputs.len()
    }
}

/// Real against padded input tokens over many batches, for benches and run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaddingStats {
    pub batches: u64,
    /// Input tokens that belong to examples.
    pub real: u64,
    /// Input tokens computed, padding included (Σ b·t).
    pub padded: u64,
}

impl PaddingStats {
    /// Counts one batch given as example indices into `lengths` (what the loader returns).
    pub fn add(&mut self, lengths: &[usize], indices: &[usize]) {
        let rows: Vec<usize> = indices.iter().map(|&i| lengths.get(i).copied().unwrap_or(0)).collect();
        let longest = rows.iter().copied().max().unwrap_or(0);
        self.batches += 1;
        self.real += rows.iter().sum::<usize>() as u64;
        self.padded += longest.saturating_mul(rows.len()) as u64;
    }

    pub fn add_batch(&mut self, batch: &TaskBatch) {
        self.batches += 1;
        self.real += batch.real_tokens() as u64;
        self.padded += batch.padded_tokens() as u64;
    }

    /// The share of computed tokens that are real (1.0 = no padding).
    pub fn efficiency(&self) -> f64 {
        if self.padded == 0 { 1.0 } else { self.real as f64 / self.padded as f64 }
    }
}

/// [`PaddingStats`] of built batches.
pub fn padding_stats(batches: &[TaskBatch]) -> PaddingStats {
    let mut stats = PaddingStats::default();
    for batch in batches {
        stats.add_batch(batch);
    }
    stats
}

fn bad_indices(value: String, expected: String) -> TrainError {
    TrainError::DataArgument { name: "batch indices", value, expected }
}

/// Looks up the examples of a batch; an empty batch or an index past the end is an error.
fn rows<'a, E>(examples: &'a [E], indices: &[usize]) -> Result<Vec<&'a E>> {
    if indices.is_empty() {
        return Err(bad_indices("[]".to_owned(), "at least one example per batch".to_owned()));
    }
    indices
        .iter()
        .map(|&i| {
            examples.get(i).ok_or_else(|| bad_indices(i.to_string(), format!("an index below {}", examples.len())))
        })
        .collect()
}

fn cells(b: usize, t: usize) -> Result<usize> {
    b.checked_mul(t).ok_or_else(|| bad_indices(format!("{b}×{t}"), "a batch that fits in memory".to_owned()))
}

/// A classification batch: inputs padded with `pad_id` (the model's `pad_token_id`), one label per row.
pub fn classify_batch(examples: &[ClassifyExample], indices: &[usize], pad_id: u32) -> Result<TaskBatch> {
    let rows = rows(examples, indices)?;
    let lengths: Vec<usize> = rows.iter().map(|e| e.ids.len()).collect();
    let (b, t) = (rows.len(), lengths.iter().copied().max().unwrap_or(0));
    if t == 0 {
        return Err(bad_indices(format!("{indices:?}"), "examples with at least one token".to_owned()));
    }
    let mut inputs = vec![pad_id; cells(b, t)?];
    for (row, example) in inputs.chunks_exact_mut(t).zip(&rows) {
        row[..example.ids.len()].copy_from_slice(&example.ids);
    }
    let targets = rows.iter().map(|e| e.label).collect();
    Ok(TaskBatch { b, t, inputs, targets, examples: indices.to_vec(), lengths })
}

/// An SFT batch: row `i` has inputs `ids[..n-1]` and targets `ids[1..]`, the target replaced by
/// [`IGNORE_INDEX`] where it is not trained; padding has input `pad_id` and target [`IGNORE_INDEX`].
pub fn sft_batch(examples: &[SftExample], indices: &[usize], pad_id: u32) -> Result<TaskBatch> {
    let rows = rows(examples, indices)?;
    if let Some(short) = rows.iter().position(|e| e.ids.len() < 2 || e.trained.len() != e.ids.len()) {
        return Err(bad_indices(
            indices[short].to_string(),
            "an SFT example with at least two ids and one mask entry per id".to_owned(),
        ));
    }
    let lengths: Vec<usize> = rows.iter().map(|e| e.ids.len() - 1).collect();
    let (b, t) = (rows.len(), lengths.iter().copied().max().unwrap_or(0));
    let mut inputs = vec![pad_id; cells(b, t)?];
    let mut targets = vec![IGNORE_INDEX; b * t];
    for ((x, y), example) in inputs.chunks_exact_mut(t).zip(targets.chunks_exact_mut(t)).zip(&rows) {
        let n = example.ids.len() - 1;
        x[..n].copy_from_slice(&example.ids[..n]);
        for ((target, &id), &trained) in y.iter_mut().zip(&example.ids[1..]).zip(&example.trained[1..]) {
            if trained {
                *target = id;
            }
        }
    }
    Ok(TaskBatch { b, t, inputs, targets, examples: indices.to_vec(), lengths })
}

/// Evaluation order: every example exactly once, sorted by length (ties by index), in batches of
/// `batch_size` (the last may be smaller). The same lengths always give the same batches.
pub fn eval_order(lengths: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>> {
    check_batch_size(batch_size)?;
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]); // stable: equal lengths keep index order
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(TrainError::DataArgument {
            name: "batch_size",
            value: "0".to_owned(),
            expected: "at least 1".to_owned(),
        });
    }
    Ok(())
}

/// The whole resumable state of a [`TaskLoader`]: where the current chunk started and how many of its
/// batches were taken, plus a fingerprint of the data so a resume on changed data is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLoaderState {
    /// RNG state that drew the current epoch's order.
    pub epoch_rng: u64,
    /// Epochs started before the current one.
    pub epoch: u64,
    /// RNG state when the current chunk was built.
    pub rng: u64,
    /// Position in the epoch's order where the current chunk starts.
    pub position: u64,
    /// Batches of the current chunk already returned.
    pub batch: u64,
    pub examples: u64,
    pub batch_size: u64,
    /// FNV-1a of the example lengths.
    pub lengths_hash: u64,
}

/// An endless stream of training batches (example indices) in length-grouped, shuffled epochs; see the
/// module docs. Every batch has exactly `batch_size` examples: the end of an epoch is completed from the
/// start of the next. All randomness comes from one seeded [`Rng`].
#[derive(Debug, Clone)]
pub struct TaskLoader {
    lengths: Vec<usize>,
    batch_size: usize,
    lengths_hash: u64,
    rng: Rng,
    epoch: u64,
    epoch_rng: u64,
    order: Vec<usize>,
    position: usize,
    /// State just before the current chunk was built; with `next` it is the resumable state.
    chunk_start: TaskLoaderState,
    chunk: Vec<Vec<usize>>,
    next: usize,
}

impl TaskLoader {
    /// A loader over examples with these lengths (tokens per example) drawing batches of `batch_size`.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Result<TaskLoader> {
        check_batch_size(batch_size)?;
        if lengths.is_empty() {
            return Err(TrainError::DataArgument {
                name: "examples",
                value: "0".to_owned(),
                expected: "at least one training example".to_owned(),
            });
        }
        // Bounded here so the chunk size below never overflows.
        if batch_size.checked_mul(GROUP_CHUNK_BATCHES).is_none() {
            return Err(TrainError::DataArgument {
                name: "batch_size",
                value: batch_size.to_string(),
                expected: format!("at most {}", usize::MAX / GROUP_CHUNK_BATCHES),
            });
        }
        let lengths_hash = fnv1a(&lengths);
        let mut loader = TaskLoader {
            order: Vec::new(),
            lengths,
            batch_size,
            lengths_hash,
            rng: Rng::new(seed),
            epoch: 0,
            epoch_rng: 0,
            position: 0,
            chunk_start: TaskLoaderState {
                epoch_rng: 0,
                epoch: 0,
                rng: 0,
                position: 0,
                batch: 0,
                examples: 0,
                batch_size: 0,
                lengths_hash: 0,
            },
            chunk: Vec::new(),
            next: 0,
        };
        loader.epoch_rng = loader.rng.state();
        loader.order = shuffled(loader.lengths.len(), &mut loader.rng);
        loader.chunk_start = loader.live_state();
        Ok(loader)
    }

    /// The example indices of the next batch (exactly `batch_size` of them).
    pub fn next_indices(&mut self) -> Vec<usize> {
        if self.next >= self.chunk.len() {
            self.build_chunk();
        }
        let batch = self.chunk.get(self.next).cloned().unwrap_or_default();
        self.next += 1;
        batch
    }

    /// The state to store in a resume file; [`TaskLoader::set_state`] continues from it.
    pub fn state(&self) -> TaskLoaderState {
        if self.next >= self.chunk.len() {
            return self.live_state();
        }
        TaskLoaderState { batch: self.next as u64, ..self.chunk_start }
    }

    /// Restores a state from [`TaskLoader::state`]: the following batches are bit-identical to those the
    /// saved loader would have drawn. A state saved for other data or another batch size is an error.
    pub fn set_state(&mut self, state: TaskLoaderState) -> Result<()> {
        let refuse = |reason: String| Err(TrainError::TaskLoaderState { reason });
        let n = self.lengths.len();
        if state.examples != n as u64 || state.lengths_hash != self.lengths_hash {
            return refuse(format!(
                "it was saved for {} training examples with other lengths; this data has {n} (the data or \
                 --block-size changed)",
                state.examples
            ));
        }
        if state.batch_size != self.batch_size as u64 {
            return refuse(format!("it was saved for batch size {}, not {}", state.batch_size, self.batch_size));
        }
        let Some(position) = usize::try_from(state.position).ok().filter(|&p| p <= n) else {
            return refuse(format!("position {} is past the {n} examples", state.position));
        };
        let mut epoch_rng = Rng::from_state(state.epoch_rng);
        self.order = shuffled(n, &mut epoch_rng);
        self.epoch_rng = state.epoch_rng;
        self.epoch = state.epoch;
        self.rng = Rng::from_state(state.rng);
        self.position = position;
        self.chunk.clear();
        self.next = 0;
        self.chunk_start = self.live_state();
        if state.batch > 0 {
            self.build_chunk();
            match usize::try_from(state.batch).ok().filter(|&b| b <= self.chunk.len()) {
                Some(batch) => self.next = batch,
                None => return refuse(format!("batch {} is past the chunk of {}", state.batch, self.chunk.len())),
            }
        }
        Ok(())
    }

    /// Epochs started before the one batches are being drawn from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    fn live_state(&self) -> TaskLoaderState {
        TaskLoaderState {
            epoch_rng: self.epoch_rng,
            epoch: self.epoch,
            rng: self.rng.state(),
            position: self.position as u64,
            batch: 0,
            examples: self.lengths.len() as u64,
            batch_size: self.batch_size as u64,
            lengths_hash: self.lengths_hash,
        }
    }

    fn new_epoch(&mut self) {
        self.epoch += 1;
        self.epoch_rng = self.rng.state();
        self.order = shuffled(self.lengths.len(), &mut self.rng);
        self.position = 0;
    }

    /// Takes the next chunk of the epoch order (crossing into the next epoch only to complete the last
    /// batch), sorts it by length, cuts it into batches and shuffles them.
    fn build_chunk(&mut self) {
        self.chunk_start = self.live_state();
        let (n, b) = (self.lengths.len(), self.batch_size);
        let mut want = b * GROUP_CHUNK_BATCHES; // `new` checked the product
        let mut items = Vec::with_capacity(want);
        while items.len() < want {
            if self.position == n {
                self.new_epoch();
            }
            let take = (want - items.len()).min(n - self.position);
            items.extend_from_slice(&self.order[self.position..self.position + take]);
            self.position += take;
            if self.position == n {
                // The epoch ended inside this chunk: stop at the next whole batch.
                want = want.min(items.len().div_ceil(b) * b);
            }
        }
        let lengths = &self.lengths;
        items.sort_by_key(|&i| lengths[i]); // stable: ties keep the shuffled order
        let mut batches: Vec<Vec<usize>> = items.chunks_exact(b).map(<[usize]>::to_vec).collect();
        shuffle(&mut batches, &mut self.rng);
        self.chunk = batches;
        self.next = 0;
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates, drawing from `rng` only).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, rng);
    order
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

fn fnv1a(lengths: &[usize]) -> u64 {
    let mut hash = 0xCBF2_9CE4_8422_2325u64;
    for &len in lengths {
        for byte in (len as u64).to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_when_batches_divide_it() {
        // 2 chunks of 50·4 = 200 = one epoch of 400 examples.
        let lengths: Vec<usize> = (0..400).map(|i| i % 37 + 1).collect();
        let mut loader = TaskLoader::new(lengths, 4, 3).expect("loader");
        let mut seen: Vec<usize> = (0..100).flat_map(|_| loader.next_indices()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..400).collect::<Vec<_>>());
        assert_eq!(loader.epoch(), 0);
        loader.next_indices();
        assert_eq!(loader.epoch(), 1);
    }

    #[test]
    fn a_data_set_smaller_than_a_batch_still_fills_batches() {
        let mut loader = TaskLoader::new(vec![3, 1, 2], 8, 1).expect("loader");
        for _ in 0..5 {
            let batch = loader.next_indices();
            assert_eq!(batch.len(), 8);
            assert!(batch.iter().all(|&i| i < 3));
        }
    }
}
