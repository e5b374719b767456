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
        Ok(Loader {
            shard: shard.clone(),
            batch_size,
            block_size,
            rng: Rng::new(seed),
        })
    }

    /// Fills `inputs` and `targets` (each `batch_size × block_size`, row-major) with random windows;
    /// `targets` is `inputs` shifted left by one token.
    ///
    /// # Panics
    /// If a buffer is not exactly `batch_size × block_size` long: buffers are allocated once by the
    /// caller for the loader's shape, so a mismatch is a bug, not bad input.
    pub fn next_batch(&mut self, inputs: &mut [u32], targets: &mut [u32]) {
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
            fill_window(&self.shard, start, x, y);
        }
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
    Ok((0..n_batches)
        .map(|_| {
            let mut inputs = vec![0; batch_size * block_size];
            let mut targets = vec![0; batch_size * block_size];
            loader.next_batch(&mut inputs, &mut targets);
            (inputs, targets)
        })
        .collect())
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
        fill_window(
            shard,
            self.start,
            &mut inputs[..self.len],
            &mut targets[..self.len],
        );
        Ok(())
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
        let window = Window {
            start: self.next,
            len,
        };
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
        return Err(TrainError::CorpusTooShort {
            path: shard.path().to_path_buf(),
            tokens: shard.len(),
            window: 2,
        });
    }
    Ok(SequentialWindows {
        next: 0,
        predictions: shard.len() - 1,
        block_size,
    })
}

/// Copies `x = data[start..start+T]` and `y = data[start+1..start+T+1]`.
fn fill_window(shard: &Shard, start: usize, x: &mut [u32], y: &mut [u32]) {
    shard.copy_window(start, x);
    shard.copy_window(start + 1, y);
}

fn check_dims(shard: &Shard, batch_size: usize, block_size: usize) -> Result<()> {
    for (name, value) in [("batch_size", batch_size), ("block_size", block_size)] {
        if value == 0 {
            return Err(TrainError::DataArgument {
                name,
                value: "0".to_owned(),
                expected: "at least 1".to_owned(),
            });
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
