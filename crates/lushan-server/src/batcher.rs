//! Continuous batching: one thread owns the model's decoding and advances every running completion together.
//!
//! Each step feeds the last token of every running sequence through [`Gpt::decode_batch`], which reads each
//! weight matrix once for all of them (a decoding step is bound by reading the weights, so several
//! sequences cost little more than one). New requests join between steps: their prompt is prefilled and
//! their first token sampled, then they ride along with the others. A sequence leaves the batch as soon as
//! it finishes or its client goes away; nothing waits for the slowest.
//!
//! Results do not depend on what else is running: batched logits are bit-identical to decoding alone, and
//! each sequence has its own seeded sampler.

use crate::Metrics;
use crate::engine::{Job, Outcome, Sequence, Sink};
use lushan_model::{BatchScratch, DecodeState, Gpt};
use lushan_tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use tokio::sync::oneshot;

/// Prompt tokens prefilled between two decoding steps, at most (one prompt more than this may start it).
const PREFILL_BUDGET: usize = 64;

/// What a submitted completion ends with: its outcome, or why generation failed.
pub type Done = Result<Outcome, String>;

/// A completion to run and where its text goes.
pub struct Work {
    pub job: Job,
    pub sink: Box<dyn Sink + Send>,
    /// Called once per sampled token (the server's counters).
    pub on_token: Arc<dyn Fn() + Send + Sync>,
    pub done: oneshot::Sender<Done>,
}

/// Handle to the decoding thread; dropping every handle ends the thread once its sequences finish.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Work>,
}

impl Batcher {
    /// Starts the decoding thread; it runs at most `max_batch` sequences at once (more wait their turn).
    pub fn start(
        model: Arc<Gpt>,
        tokenizer: Arc<Tokenizer>,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Work>();
        let max_batch = max_batch.clamp(1, BatchScratch::MAX_ROWS);
        // Kernels called from inside a pool start their parallel loops as cheap local pushes instead of
        // injecting work from outside (a thread wake-up per kernel call).
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("lushan-decode-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("lushan-batcher".into())
            .spawn(move || pool.install(move || run(&model, &tokenizer, &rx, max_batch, &metrics)))?;
        Ok(Self { tx })
    }

    /// Queues `work`; its `done` channel answers when it ends. Errs when the decoding thread has stopped.
    pub fn submit(&self, work: Work) -> Result<(), BatcherStopped> {
        self.tx.send(work).map_err(|_| BatcherStopped)
    }
}

/// The decoding thread is gone (it ends only when the server is dropped).
#[derive(Debug, Clone, Copy)]
pub struct BatcherStopped;

/// A sequence in the batch with everything that belongs to it.
struct Running<'t> {
    seq: Sequence<'t>,
    state: DecodeState,
    sink: Box<dyn Sink + Send>,
    on_token: Arc<dyn Fn() + Send + Sync>,
    done: oneshot::Sender<Done>,
    /// Set when sampling failed; reported instead of the outcome.
    error: Option<String>,
}

impl Running<'_> {
    fn abandoned(&self) -> bool {
        abandoned(self.sink.as_ref(), &self.done)
    }
}

/// Nobody listens any more: neither the stream's reader nor the request waiting for the outcome.
fn abandoned(sink: &(dyn Sink + Send), done: &oneshot::Sender<Done>) -> bool {
    !sink.alive() || done.is_closed()
}

fn run(model: &Gpt, tokenizer: &Tokenizer, rx: &Receiver<Work>, max_batch: usize, metrics: &Metrics) {
    let mut running: Vec<Running> = Vec::new();
    let mut waiting: VecDeque<Work> = VecDeque::new();
    let mut scratch = BatchScratch::new(model, max_batch);
    loop {
        // Take every request that has arrived; wait for one when there is nothing else to do.
        if running.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(work) => waiting.push_back(work),
                Err(_) => return, // every handle dropped: the server is gone
            }
        }
        while let Ok(work) = rx.try_recv() {
            waiting.push_back(work);
        }
        // Admit up to the batch size, but prefill at most about PREFILL_BUDGET prompt tokens between two steps
        // (always at least one prompt) so that a burst of arrivals does not stall the running streams.
        let mut prefilled = 0;
        while running.len() < max_batch && prefilled < PREFILL_BUDGET {
            let Some(work) = waiting.pop_front() else { break };
            prefilled += work.job.prompt.len();
            // A fresh cache per sequence: its pages are touched only as far as the sequence gets, and freed
            // when it ends (a GPT-2 124M cache of 1024 positions is 75 MB).
            if let Some(r) = admit(model, tokenizer, work, DecodeState::new(model, 256)) {
                running.push(r);
            }
        }
        // Sequences whose client left stop here, before costing another step; one whose context is full
        // (requests are checked to fit, so this is a safeguard) ends as `max_tokens` would.
        for r in running.iter_mut() {
            if r.seq.wants_more() && r.abandoned() {
                r.seq.cancel();
            }
            if r.state.cache.len() >= model.config.block_size {
                r.seq.end_at_context();
            }
        }
        retire_finished(&mut running);
        if running.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = running.iter().map(|r| r.seq.last_token()).collect();
        metrics.batch_steps.fetch_add(1, Ordering::Relaxed);
        metrics.peak_batch.fetch_max(tokens.len() as u64, Ordering::Relaxed);
        let mut states: Vec<&mut DecodeState> = running.iter_mut().map(|r| &mut r.state).collect();
        if model.decode_batch(&mut states, &tokens, &mut scratch).is_err() {
            // The batch checks every sequence before it changes any: decode them one by one instead, so that
            // only the sequence at fault fails and the others go on.
            decode_one_by_one(model, &mut running);
        }
        for r in running.iter_mut() {
            let Running { seq, state, sink, on_token, error, .. } = r;
            if !seq.wants_more() {
                continue;
            }
            match seq.step(state.logits(), sink.as_mut()) {
                Ok(()) => on_token(),
                Err(e) => {
                    seq.cancel();
                    *error = Some(format!("sampling failed: {e}"));
                }
            }
        }
        retire_finished(&mut running);
    }
}

/// Prefills `work`'s prompt and samples its first token; `None` when it already ended (an error, a client
/// gone, or a one-token completion), after answering its `done`.
fn admit<'t>(model: &Gpt, tokenizer: &'t Tokenizer, work: Work, mut state: DecodeState) -> Option<Running<'t>> {
    let Work { job, mut sink, on_token, done } = work;
    let mut seq = match Sequence::new(job, tokenizer) {
        Ok(seq) => seq,
        Err(e) => {
            let _ = done.send(Err(format!("invalid sampling settings: {e}")));
            return None;
        }
    };
    if abandoned(sink.as_ref(), &done) {
        // Gone before its turn came: cancelled like one that left mid-stream.
        seq.cancel();
    } else if seq.wants_more() {
        let prompt = seq.prompt().to_vec();
        let stepped = model.decode(&mut state, &prompt).and_then(|logits| seq.step(logits, sink.as_mut()));
        match stepped {
            Ok(()) => on_token(),
            Err(e) => {
                let _ = done.send(Err(format!("prefill failed: {e}")));
                return None;
            }
        }
    }
    let r = Running { seq, state, sink, on_token, done, error: None };
    if r.seq.wants_more() {
        return Some(r);
    }
    finish(r);
    None
}

/// Feeds each running sequence its last token alone; one that fails is cancelled with its error.
fn decode_one_by_one(model: &Gpt, running: &mut [Running]) {
    for r in running.iter_mut() {
        let token = r.seq.last_token();
        if let Err(e) = model.decode(&mut r.state, &[token]) {
            r.seq.cancel();
            r.error = Some(format!("decoding failed: {e}"));
        }
    }
}

fn retire_finished(running: &mut Vec<Running>) {
    let mut i = 0;
    while i < running.len() {
        if running[i].seq.wants_more() {
            i += 1;
        } else {
            finish(running.swap_remove(i));
        }
    }
}

fn finish(r: Running) {
    let Running { seq, mut sink, done, error, .. } = r;
    let outcome = seq.finish(sink.as_mut());
    let _ = done.send(error.map_or(Ok(outcome), Err));
}
