//! The [`Communicator`] of a job started by `mpirun` / `srun`: MPI's world communicator through rsmpi.
//! MPI is initialised when this is made and finalised when it is dropped, so it must outlive every
//! collective call (the CLI holds it for the whole command).

use super::{Communicator, ProduceBuckets, SumTimes};
use crate::error::{Result, TrainError};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives};
use std::time::Instant;

/// MPI counts are C `int`s: longer buffers are summed in pieces of this many elements (64 MiB of f32).
const PIECE: usize = 1 << 24;

pub struct MpiWorld {
    world: SimpleCommunicator,
    /// A copy of the values being summed: MPI reads the send buffer while it writes the receive buffer.
    send_f32: Vec<f32>,
    /// Declared last: dropped (MPI finalised) after the communicator.
    _universe: Universe,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld").field("rank", &self.rank()).field("size", &self.size()).finish()
    }
}

impl MpiWorld {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        // Serialized: the command's MPI calls come from one rayon worker thread, not necessarily the main one.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or_else(|| {
            TrainError::Distributed("MPI could not be initialised (was it initialised already?)".into())
        })?;
        let world = universe.world();
        Ok(Self { world, send_f32: Vec::new(), _universe: universe })
    }
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        usize::try_from(self.world.rank()).unwrap_or(0)
    }

    fn size(&self) -> usize {
        usize::try_from(self.world.size()).unwrap_or(1)
    }

    fn sum_f32(&mut self, values: &mut [f32]) {
        for piece in values.chunks_mut(PIECE) {
            self.send_f32.clear();
            self.send_f32.extend_from_slice(piece);
            self.world.all_reduce_into(&self.send_f32[..], piece, SystemOperation::sum());
        }
    }

    /// One non-blocking `MPI_Iallreduce` per bucket (per 64 MiB piece of one), started as the bucket is
    /// handed over. Open MPI advances non-blocking collectives only inside MPI calls, so the requests in
    /// flight are tested at every hand-over (once per layer of the backward pass); the last are waited for
    /// once `produce` returns. All calls come from the computing thread (MPI's `Serialized` level).
    fn sum_f32_during(&mut self, sums: &mut [f32], produce: ProduceBuckets<'_>) -> SumTimes {
        let Self { world, send_f32, .. } = self;
        // The send buffer: MPI reads it while it writes the sums (an in-place sum would need unsafe code).
        if send_f32.len() < sums.len() {
            send_f32.resize(sums.len(), 0.0);
        }
        let mut times = SumTimes::default();
        let mut busy_since: Option<Instant> = None;
        mpi::request::scope(|scope| {
            let mut send_rest: &mut [f32] = &mut send_f32[..];
            let mut sums_rest: &mut [f32] = sums;
            let mut pending = Vec::new();
            {
                let mut submit = |pieces: &[&[f32]]| {
                    let start = Instant::now();
                    let len: usize = pieces.iter().map(|p| p.len()).sum();
                    let (Some((send, send_after)), Some((out, out_after))) = (
                        std::mem::take(&mut send_rest).split_at_mut_checked(len),
                        std::mem::take(&mut sums_rest).split_at_mut_checked(len),
                    ) else {
                        debug_assert!(false, "more values handed over than the sum buffer holds");
                        return;
                    };
                    (send_rest, sums_rest) = (send_after, out_after);
                    let mut at = 0;
                    for piece in pieces {
                        send[at..at + piece.len()].copy_from_slice(piece);
                        at += piece.len();
                    }
                    let send: &[f32] = send;
                    for (send, out) in send.chunks(PIECE).zip(out.chunks_mut(PIECE)) {
                        pending.push(world.immediate_all_reduce_into(scope, send, out, SystemOperation::sum()));
                    }
                    busy_since.get_or_insert(start);
                    pending = pending.drain(..).filter_map(|request| request.test().err()).collect();
                    // One clock reading for both figures: the exposed time stays within the time in flight.
                    let done = Instant::now();
                    if pending.is_empty()
                        && let Some(since) = busy_since.take()
                    {
                        times.in_flight += (done - since).as_secs_f64();
                    }
                    times.exposed += (done - start).as_secs_f64();
                };
                produce(&mut submit);
            }
            if let Some(since) = busy_since {
                let waiting = Instant::now();
                for request in pending {
                    request.wait_without_status();
                }
                let done = Instant::now();
                times.exposed += (done - waiting).as_secs_f64();
                times.in_flight += (done - since).as_secs_f64();
            }
        });
        times
    }

    fn sum_f64(&mut self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn all_gather(&mut self, mine: &[u8]) -> Vec<u8> {
        let mut all = vec![0u8; mine.len() * self.size()];
        self.world.all_gather_into(mine, &mut all[..]);
        all
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        let library = mpi::environment::library_version().unwrap_or_default();
        // "Open MPI v4.1.4, package: …" / "MPICH Version: 4.0.2 …": the name and version are enough.
        let library = library.split([',', '\n']).next().unwrap_or("MPI").trim().to_owned();
        format!("{} MPI ranks ({library})", self.size())
    }
}
