//! The [`Communicator`] of a job started by `mpirun` / `srun`: MPI's world communicator through rsmpi.
//! MPI is initialised when this is made and finalised when it is dropped, so it must outlive every
//! collective call (the CLI holds it for the whole command).

use super::Communicator;
use crate::error::{Result, TrainError};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives};

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
