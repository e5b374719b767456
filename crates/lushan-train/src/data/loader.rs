//! Batches of (input, target) windows from a shard.
//!
//! Training draws windows at random positions, as nanoGPT's `get_batch` does: `x = data[i..i+T]`,
//! `y = data[i+1..i+T+1]` with `i` uniform in `[0, len-T-1]`. All randomness comes from one seeded
//! [`Rng`] whose single `u64` state is the loader's entire resumable state, so a resumed run draws exactly
//! the batches the uninterrupted run would have drawn.
//!
//! Evaluation uses fixed windows instead ([`eval_batches`]) so successive validation losses are measured
//! on the same text and differences are real, and [`sequential_windows`] scores a whole file once.

use lushan_kernels::rng::Rng;

use super::shard::Shard;
use crate::error::{Result, TrainError};

/// Stream index mixed into the evaluation seed so evaluation windows never coincide with the training
/// stream even when both are given the same seed.
const EVAL_STREAM: u64 = 0x6576_616c; // "eval"

/// Random training windows over one shard; see the module docs.
#[derive(Debug, Clone)]
pub struct Loader {
    shard: Shard,
    batch_size: usize,
    block_size: usize,
    rng: Rng,
}

impl Loader {
    /// A loader over `shard` (shared, not copied) drawing `batch_size` windows of `block_size + 1` tokens.
    pub fn new(shard: &Shard, batch_size: usize, block_size: usize, seed: u64) -> Result<Loader> {
        check_dims(shard, batch_size, block_size)?;
        Ok(Loader { shard: shard.clone(), batch_size, block_size, rng: Rng::new(seed) })
    }

    /// Fills `inputs` and `targets` (each `batch_size × block_size`, row-major) with random windows;
    /// `targets` is `inputs` shifted left by one token. Errors when the shard's file changed since it was
    /// opened.
    ///
    /// # Panics
    /// If a buffer is not exactly `batch_size × block_size` long: buffers are allocated once by the
    /// caller for the loader's shape, so a mismatch is a bug, not bad input.
    pub fn next_batch(&mut self, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        let (b, t) = (self.batch_size, self.block_size);
        assert!(
            inputs.len() == b * t && targets.len() == b * t,
            "batch buffers of {} and {} tokens, expected B×T = {b}×{t} = {}",
            inputs.len(),
            targets.len(),
            b * t
        );
        // `new` guaranteed len ≥ t + 1, so there are len - t ≥ 1 valid start positions.
        let starts = (self.shard.len() - t) as u64;
        for (x, y) in inputs.chunks_exact_mut(t).zip(targets.chunks_exact_mut(t)) {
            let start = self.rng.below(starts) as usize;
            fill_window(&self.shard, start, x, y)?;
        }
        Ok(())
    }

    /// The whole resumable state (the RNG state), to be stored in a resume file.
    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    /// Restores a state from [`Loader::state`]; the following batches are those the saved loader would
    /// have drawn next.
    pub fn set_state(&mut self, state: u64) {
        self.rng = Rng::from_state(state);
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

/// `n_batches` (inputs, targets) pairs, each `batch_size × block_size` tokens, drawn from an RNG seeded
/// only by `seed`, so every call (every evaluation during a run) returns the same windows. nanoGPT's
/// `estimate_loss` draws fresh windows each time; fixing them makes validation losses comparable across
/// evaluations. Materialised once: 200 batches of 12×1024 cost 20 MB, negligible beside the model.
pub fn eval_batches(
    shard: &Shard,
    batch_size: usize,
    block_size: usize,
    n_batches: usize,
    seed: u64,
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let mut loader = Loader::new(shard, batch_size, block_size, seed)?;
    loader.rng = Rng::derive(seed, EVAL_STREAM);
    (0..n_batches)
        .map(|_| {
            let mut inputs = vec![0; batch_size * block_size];
            let mut targets = vec![0; batch_size * block_size];
            loader.next_batch(&mut inputs, &mut targets)?;
            Ok((inputs, targets))
        })
        .collect()
}

/// One window of [`sequential_windows`]: inputs are tokens `start .. start+len`, targets
/// `start+1 .. start+len+1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

impl Window {
    /// Fills the first `len` entries of `inputs` and `targets`; both must hold at least `len`.
    pub fn fill(&self, shard: &Shard, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        for (name, buf) in [("inputs", inputs.len()), ("targets", targets.len())] {
            if buf < self.len {
                return Err(TrainError::DataArgument {
                    name,
                    value: format!("a buffer of {buf} tokens"),
                    expected: format!("at least the window's {} tokens", self.len),
                });
            }
        }
        if self.start + self.len + 1 > shard.len() {
            return Err(TrainError::CorpusTooShort {
                path: shard.path().to_path_buf(),
                tokens: shard.len(),
                window: self.start + self.len + 1,
            });
        }
        fill_window(shard, self.start, &mut inputs[..self.len], &mut targets[..self.len])
    }
}

/// Iterator over the windows of [`sequential_windows`].
#[derive(Debug, Clone)]
pub struct SequentialWindows {
    next: usize,
    /// Number of predicted tokens: every token but the first.
    predictions: usize,
    block_size: usize,
}

impl Iterator for SequentialWindows {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.next >= self.predictions {
            return None;
        }
        let len = self.block_size.min(self.predictions - self.next);
        let window = Window { start: self.next, len };
        self.next += len;
        Some(window)
    }
}

/// Windows of up to `block_size` inputs whose targets tile the shard exactly once: every token after the
/// first is predicted once, from the tokens before it in its window. The last window is shorter when the
/// shard does not divide evenly. For scoring a whole file with `lushan eval`.
pub fn sequential_windows(shard: &Shard, block_size: usize) -> Result<SequentialWindows> {
    if block_size == 0 {
        return Err(TrainError::DataArgument {
            name: "block_size",
            value: "0".to_owned(),
            expected: "at least 1 token per window".to_owned(),
        });
    }
    if shard.len() < 2 {
        return Err(TrainError::CorpusTooShort { path: shard.path().to_path_buf(), tokens: shard.len(), window: 2 });
    }
    Ok(SequentialWindows { next: 0, predictions: shard.len() - 1, block_size })
}

/// Copies `x = data[start..start+T]` and `y = data[start+1..start+T+1]`.
fn fill_window(shard: &Shard, start: usize, x: &mut [u32], y: &mut [u32]) -> Result<()> {
    shard.copy_window(start, x)?;
    shard.copy_window(start + 1, y)
}

fn check_dims(shard: &Shard, batch_size: usize, block_size: usize) -> Result<()> {
    for (name, value) in [("batch_size", batch_size), ("block_size", block_size)] {
        if value == 0 {
            return Err(TrainError::DataArgument { name, value: "0".to_owned(), expected: "at least 1".to_owned() });
        }
    }
    if shard.len() <= block_size {
        return Err(TrainError::CorpusTooShort {
            path: shard.path().to_path_buf(),
            tokens: shard.len(),
            window: block_size + 1,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::data::shard::write_shard;

    /// A shard whose token at position i is i, so a window's contents reveal where it came from. The
    /// temp dir is returned to keep the file alive.
    fn counting_shard(n: u32) -> (tempfile::TempDir, Shard) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        let tokens: Vec<u32> = (0..n).collect();
        write_shard(&path, &tokens, n.max(1) as usize, "test").unwrap();
        let shard = Shard::open(&path, None).unwrap();
        (dir, shard)
    }

    fn batch(loader: &mut Loader) -> (Vec<u32>, Vec<u32>) {
        let n = loader.batch_size() * loader.block_size();
        let (mut x, mut y) = (vec![0; n], vec![0; n]);
        loader.next_batch(&mut x, &mut y).unwrap();
        (x, y)
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let (_dir, shard) = counting_shard(1000);
        let (b, t) = (4, 16);
        let mut loader = Loader::new(&shard, b, t, 1).unwrap();
        for _ in 0..20 {
            let (x, y) = batch(&mut loader);
            for (row_x, row_y) in x.chunks_exact(t).zip(y.chunks_exact(t)) {
                let start = row_x[0];
                assert!((start as usize) < 1000 - t, "start {start} is past len - T - 1");
                for j in 0..t {
                    assert_eq!(row_x[j], start + j as u32);
                    assert_eq!(row_y[j], start + j as u32 + 1);
                }
            }
        }
    }

    #[test]
    fn starts_cover_the_whole_range_including_the_last() {
        let t = 8;
        let (_dir, shard) = counting_shard(t as u32 + 3); // starts 0, 1, 2
        let mut loader = Loader::new(&shard, 1, t, 9).unwrap();
        let mut seen = [false; 3];
        for _ in 0..200 {
            let (x, _) = batch(&mut loader);
            seen[x[0] as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn exactly_one_window_is_enough() {
        let (_dir, shard) = counting_shard(9);
        let mut loader = Loader::new(&shard, 2, 8, 0).unwrap();
        let (x, y) = batch(&mut loader);
        assert_eq!(x[..8], [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(y[8..], [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn corpus_shorter_than_one_window_is_an_error() {
        let (_dir, shard) = counting_shard(8);
        let message = Loader::new(&shard, 1, 8, 0).unwrap_err().to_string();
        assert!(
            message.contains("corpus of 8 tokens is shorter than one window of block_size+1 = 9 tokens"),
            "{message}"
        );
        assert!(message.contains("train.bin"), "{message}");
        let message = eval_batches(&shard, 1, 8, 3, 0).unwrap_err().to_string();
        assert!(message.contains("block_size+1 = 9"), "{message}");
    }

    #[test]
    fn zero_dimensions_name_the_argument() {
        let (_dir, shard) = counting_shard(100);
        let message = Loader::new(&shard, 0, 8, 0).unwrap_err().to_string();
        assert!(message.contains("`batch_size` = 0"), "{message}");
        let message = Loader::new(&shard, 4, 0, 0).unwrap_err().to_string();
        assert!(message.contains("`block_size` = 0"), "{message}");
    }

    #[test]
    fn same_seed_same_batches_different_seed_different() {
        let (_dir, shard) = counting_shard(10_000);
        let mut a = Loader::new(&shard, 4, 32, 42).unwrap();
        let mut b = Loader::new(&shard, 4, 32, 42).unwrap();
        let mut c = Loader::new(&shard, 4, 32, 43).unwrap();
        let first = batch(&mut a);
        assert_eq!(first, batch(&mut b));
        assert_ne!(first, batch(&mut c));
        assert_ne!(first, batch(&mut a));
    }

    #[test]
    fn resume_from_state_continues_bit_identically() {
        let (_dir, shard) = counting_shard(10_000);
        let mut original = Loader::new(&shard, 3, 16, 1337).unwrap();
        for _ in 0..5 {
            batch(&mut original);
        }
        let state = original.state();
        let expected: Vec<_> = (0..3).map(|_| batch(&mut original)).collect();
        let mut resumed = Loader::new(&shard, 3, 16, 999).unwrap();
        resumed.set_state(state);
        let got: Vec<_> = (0..3).map(|_| batch(&mut resumed)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    #[should_panic(expected = "expected B×T")]
    fn wrong_buffer_size_panics() {
        let (_dir, shard) = counting_shard(100);
        let mut loader = Loader::new(&shard, 2, 4, 0).unwrap();
        let _ = loader.next_batch(&mut [0; 8], &mut [0; 7]);
    }

    #[test]
    fn eval_batches_are_identical_across_calls_and_shifted() {
        let (_dir, shard) = counting_shard(5000);
        let first = eval_batches(&shard, 4, 16, 10, 7).unwrap();
        assert_eq!(first.len(), 10);
        assert_eq!(first, eval_batches(&shard, 4, 16, 10, 7).unwrap());
        assert_ne!(first, eval_batches(&shard, 4, 16, 10, 8).unwrap());
        // Not the training stream for the same seed.
        let mut loader = Loader::new(&shard, 4, 16, 7).unwrap();
        assert_ne!(first[0], batch(&mut loader));
        for (x, y) in &first {
            assert_eq!((x.len(), y.len()), (64, 64));
            assert!(x.iter().zip(y).all(|(a, b)| a + 1 == *b));
        }
    }

    #[test]
    fn sequential_windows_predict_every_token_once() {
        let (_dir, shard) = counting_shard(10);
        let windows: Vec<Window> = sequential_windows(&shard, 4).unwrap().collect();
        let spans: Vec<(usize, usize)> = windows.iter().map(|w| (w.start, w.len)).collect();
        assert_eq!(spans, [(0, 4), (4, 4), (8, 1)]);
        let mut predicted = Vec::new();
        let (mut x, mut y) = ([0; 4], [0; 4]);
        for w in &windows {
            w.fill(&shard, &mut x, &mut y).unwrap();
            assert_eq!(x[0] as usize, w.start);
            assert!(x[..w.len].iter().zip(&y[..w.len]).all(|(a, b)| a + 1 == *b));
            predicted.extend_from_slice(&y[..w.len]);
        }
        assert_eq!(predicted, (1..10).collect::<Vec<u32>>());
        // A block longer than the shard gives one short window.
        let spans: Vec<(usize, usize)> = sequential_windows(&shard, 64).unwrap().map(|w| (w.start, w.len)).collect();
        assert_eq!(spans, [(0, 9)]);
    }

    #[test]
    fn sequential_windows_errors_name_the_problem() {
        let (_dir, shard) = counting_shard(1);
        let message = sequential_windows(&shard, 4).unwrap_err().to_string();
        assert!(message.contains("corpus of 1 tokens"), "{message}");
        let (_dir, shard) = counting_shard(10);
        let message = sequential_windows(&shard, 0).unwrap_err().to_string();
        assert!(message.contains("`block_size` = 0"), "{message}");
        let window = Window { start: 0, len: 4 };
        let message = window.fill(&shard, &mut [0; 3], &mut [0; 4]).unwrap_err().to_string();
        assert!(message.contains("`inputs`"), "{message}");
        let window = Window { start: 7, len: 4 };
        let message = window.fill(&shard, &mut [0; 4], &mut [0; 4]).unwrap_err().to_string();
        assert!(message.contains("corpus of 10 tokens"), "{message}");
    }
}
