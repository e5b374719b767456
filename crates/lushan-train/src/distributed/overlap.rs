//! The gradient all-reduce overlapped with the backward pass, as PyTorch's DDP does it: the model's
//! backward hands over each bucket of gradients as soon as it is final (the head's, each layer's from the
//! last to the first, the embeddings' — [`lushan_model::grad_buckets`]), and the bucket's non-blocking
//! sum over the ranks starts at once, so the communication of the last layers runs while the first
//! layers' backward still computes.
//!
//! The collective calls are fixed by the model's bucket plan ([`Gpt::gradient_buckets`]), the same on
//! every rank, and not by what a rank's backward happens to hand over: a bucket is started early only
//! when it is the next one in the plan, and whatever was not handed over is summed, in plan order, after
//! the backward pass. So a rank whose backward hands over nothing — one running several thread replicas,
//! whose gradients are complete only after the replicas' sum, or one with no rows in this batch — makes
//! the same calls as the others, only later. Overlap therefore needs one replica per rank.

use super::{Group, RankSlice};
use crate::error::{Result, TrainError};
use crate::parallel::BatchRunner;
use lushan_model::{Gpt, GradSegment, OnGradsFinal, StepWeights};
use std::ops::Range;
use std::time::Instant;

impl Group {
    /// Whether gradient sums overlap the backward pass (the default); off, the last micro-batch's
    /// backward runs first and one blocking all-reduce follows (`lushan bench train --no-overlap`).
    pub fn set_overlap(&mut self, overlap: bool) {
        self.overlap = overlap;
    }

    /// Runs `work` — the update's last forward and backward, accumulating into `grads` and handing buckets
    /// to the hook it is given — and sums `grads` over the ranks, each bucket of `buckets` (the model's
    /// [`Gpt::gradient_buckets`]) as soon as `work` hands it over. Returns `work`'s result once `grads`
    /// holds the sums. For one process `work` alone runs; without overlap, `work` and then
    /// [`Group::sum_gradients`].
    pub fn sum_gradients_during<T>(
        &mut self,
        grads: &mut [f32],
        buckets: &[Vec<Range<usize>>],
        work: impl FnOnce(&mut [f32], OnGradsFinal<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.size() == 1 {
            return work(grads, &mut |_| {});
        }
        if !self.overlap {
            let out = work(grads, &mut |_| {});
            self.sum_gradients(grads);
            return out;
        }
        check_tiling(buckets, grads.len())?;
        if self.sums.len() != grads.len() {
            self.sums = vec![0.0; grads.len()];
        }
        let mut sums = std::mem::take(&mut self.sums);
        let mut work = Some(work);
        let mut result = None;
        let mut next = 0; // the next bucket of the plan to start
        let times = self.comm.borrow_mut().sum_f32_during(&mut sums, &mut |submit| {
            {
                let mut on_final = |segments: &[GradSegment<'_>]| {
                    if buckets.get(next).is_some_and(|planned| is_bucket(planned, segments)) {
                        let pieces: Vec<&[f32]> = segments.iter().map(|s| s.values).collect();
                        submit(&pieces);
                        next += 1;
                    }
                };
                if let Some(work) = work.take() {
                    result = Some(work(grads, &mut on_final));
                }
            }
            // What the backward pass did not hand over, from the final buffer (ranges checked above).
            for bucket in &buckets[next.min(buckets.len())..] {
                let pieces: Vec<&[f32]> = bucket.iter().map(|r| &grads[r.clone()]).collect();
                submit(&pieces);
            }
        });
        let unpacking = Instant::now();
        let mut at = 0;
        for range in buckets.iter().flatten() {
            grads[range.clone()].copy_from_slice(&sums[at..at + range.len()]);
            at += range.len();
        }
        self.sums = sums;
        let unpacked = unpacking.elapsed().as_secs_f64();
        self.stats.seconds += times.exposed + unpacked;
        self.stats.in_flight_seconds += times.in_flight + unpacked;
        self.stats.bytes += std::mem::size_of_val(grads) as u64;
        self.stats.calls += 1;
        result.unwrap_or_else(|| Err(TrainError::Distributed("the gradient sum did not run the backward pass".into())))
    }
}

/// Whether the segments a backward pass handed over are exactly the planned bucket.
fn is_bucket(planned: &[Range<usize>], segments: &[GradSegment<'_>]) -> bool {
    planned.len() == segments.len()
        && planned.iter().zip(segments).all(|(r, s)| r.start == s.offset && r.len() == s.values.len())
}

/// Checks that the buckets' ranges cover a buffer of `len` values exactly once: the sums are unpacked by
/// them, and every rank must sum all of its gradient.
fn check_tiling(buckets: &[Vec<Range<usize>>], len: usize) -> Result<()> {
    let mut ranges: Vec<&Range<usize>> = buckets.iter().flatten().collect();
    ranges.sort_by_key(|r| r.start);
    let mut end = 0;
    for r in ranges {
        if r.start != end || r.end < r.start {
            break;
        }
        end = r.end;
    }
    if end != len {
        return Err(TrainError::Distributed(format!(
            "the model's gradient buckets do not cover its gradient buffer of {len} values exactly once"
        )));
    }
    Ok(())
}

/// One micro-batch of this rank's share of a batch: forward and backward, accumulating
/// `loss_scale × share ×` the gradient of the share's mean loss into `grads`. On the update's `last`
/// micro-batch the ranks' gradient sum runs alongside the backward pass ([`Group::sum_gradients_during`]);
/// a rank without rows in the batch (`slice` is `None`) still takes part in it. Returns the share's mean
/// loss, `None` without rows.
#[allow(clippy::too_many_arguments)]
pub fn micro_batch(
    group: &mut Group,
    runner: &mut BatchRunner,
    (model, step): (&Gpt, Option<&StepWeights<'_>>),
    slice: Option<RankSlice<'_>>,
    t: usize,
    (loss_scale, dropout_seed): (f32, u64),
    grads: &mut [f32],
    last: bool,
) -> Result<Option<f32>> {
    let mut pass = |grads: &mut [f32], on_final: OnGradsFinal<'_>| -> Result<Option<f32>> {
        let Some(s) = slice else { return Ok(None) };
        let scale = loss_scale * s.share;
        runner
            .forward_backward_hooked((model, step), s.inputs, s.targets, (s.b, t), scale, dropout_seed, grads, on_final)
            .map(Some)
    };
    if !last || group.size() == 1 {
        return pass(grads, &mut |_| {});
    }
    group.sum_gradients_during(grads, &model.gradient_buckets(), pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_buckets_that_tile_the_buffer_are_accepted() {
        // Buckets of (start, end) ranges.
        let tiles = |buckets: &[&[(usize, usize)]]| {
            let buckets: Vec<Vec<Range<usize>>> =
                buckets.iter().map(|b| b.iter().map(|&(start, end)| start..end).collect()).collect();
            check_tiling(&buckets, 6).is_ok()
        };
        assert!(tiles(&[&[(4, 6), (0, 2)], &[(2, 4)]]));
        assert!(!tiles(&[&[(0, 2)], &[(2, 4)]]), "a gap at the end");
        assert!(!tiles(&[&[(0, 4)], &[(2, 6)]]), "an overlap");
        assert!(!tiles(&[&[(0, 2)], &[(3, 6)]]), "a hole");
    }
}
