//! Data parallelism across processes (`mpirun -np N lushan train …`, Slurm's `srun`): every rank holds the
//! whole model, draws the same global batch from the same RNG stream, trains on its own slice of it, and the
//! ranks sum their gradients before clipping and AdamW — the design of [`crate::parallel`]'s replicas, with
//! processes instead of threads (and threads inside each process still working: ranks × threads).
//!
//! `--batch-size` stays the *global* batch, so N ranks × B/N sequences train exactly as one process with B
//! (within float rounding of the sums), a run resumes with any number of ranks, and a resume state does not
//! depend on how the job was started. Rank 0 alone writes into the output directory.
//!
//! The [`Communicator`] is the one seam: [`Solo`] for a single process, [`mpi_world::MpiWorld`] (feature
//! `mpi`, rsmpi over Open MPI or MPICH) for a job.

#[cfg(feature = "mpi")]
pub mod mpi_world;
mod overlap;

pub use overlap::micro_batch;

use crate::error::{Result, TrainError};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// What the training loop needs from the processes of a job. Every call is collective: every rank makes the
/// same calls in the same order.
pub trait Communicator: std::fmt::Debug {
    /// This process's index, 0 ..< [`Communicator::size`].
    fn rank(&self) -> usize;
    /// The number of processes in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place: every rank receives the same sums.
    fn sum_f32(&mut self, values: &mut [f32]);
    /// Sums buckets of values over the ranks while `produce` computes them: `produce` is given a callback
    /// through which it hands over each bucket (its pieces, in order) as soon as the values are final, and
    /// the sums are written to `sums`, bucket after bucket, back to back in the order handed over. Every
    /// rank must hand over buckets of the same sizes in the same order (each is a collective call), at
    /// most `sums.len()` values in all. Returns once every sum has arrived, with what that cost.
    ///
    /// This default sums everything after `produce` returns, so nothing overlaps; [`mpi_world::MpiWorld`]
    /// starts a non-blocking all-reduce per bucket.
    fn sum_f32_during(&mut self, sums: &mut [f32], produce: ProduceBuckets<'_>) -> SumTimes {
        let mut filled = 0;
        produce(&mut |pieces| {
            for piece in pieces {
                if let Some(place) = sums.get_mut(filled..filled + piece.len()) {
                    place.copy_from_slice(piece);
                    filled += piece.len();
                }
            }
        });
        let start = Instant::now();
        self.sum_f32(&mut sums[..filled]);
        let seconds = start.elapsed().as_secs_f64();
        SumTimes { in_flight: seconds, exposed: seconds }
    }
    /// Element-wise sum over the ranks, in place (counts and loss sums of evaluation).
    fn sum_f64(&mut self, values: &mut [f64]);
    /// Every rank's `mine` (of one length on every rank), concatenated in rank order.
    fn all_gather(&mut self, mine: &[u8]) -> Vec<u8>;
    /// Ends every process of the job with `code`: a rank that fails mid-run would leave the others waiting
    /// in their next collective call forever.
    fn abort(&self, code: i32) -> !;
    /// One line naming the transport ("one process", "MPI: Open MPI v4.1.4 …").
    fn describe(&self) -> String;
}

/// A job of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&mut self, _values: &mut [f32]) {}
    fn sum_f64(&mut self, _values: &mut [f64]) {}
    fn all_gather(&mut self, mine: &[u8]) -> Vec<u8> {
        mine.to_vec()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "one process".into()
    }
}

/// Hands one bucket (its pieces, in order) to [`Communicator::sum_f32_during`] to be summed.
pub type SubmitBucket<'s> = &'s mut dyn FnMut(&[&[f32]]);

/// The computation of [`Communicator::sum_f32_during`]: hands each bucket over as soon as it is final.
pub type ProduceBuckets<'p> = &'p mut dyn FnMut(SubmitBucket<'_>);

/// What one [`Communicator::sum_f32_during`] cost, in seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SumTimes {
    /// While at least one sum was under way: from the start of a bucket's hand-over (its copy included)
    /// until the computing thread saw its sum complete.
    pub in_flight: f64,
    /// Spent by the computing thread on the sums instead of computing: copying buckets, starting and
    /// testing the non-blocking all-reduces, and waiting for the last ones after the backward pass.
    pub exposed: f64,
}

/// Time and volume of the gradient sums so far (bench train reports them per step). The overlap achieved
/// is `1 − seconds / in_flight_seconds`: the share of the all-reduce time hidden behind computation.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CommStats {
    /// Seconds the computing thread spent on gradient sums (a blocking all-reduce entirely; with overlap
    /// the copies, the calls and the wait after the backward pass) — what the sums added to the steps.
    pub seconds: f64,
    /// Seconds during which a gradient sum was under way (see [`SumTimes::in_flight`]); equal to
    /// `seconds` for blocking sums.
    pub in_flight_seconds: f64,
    /// Bytes of gradients each rank contributed to all-reduces.
    pub bytes: u64,
    pub calls: u64,
}

/// A job's communicator and what its gradient sums cost. Clones share the communicator (the CLI keeps one
/// to agree on the outcome of building the trainer that owns another), each counting its own sums.
#[derive(Debug, Clone)]
pub struct Group {
    comm: Rc<RefCell<Box<dyn Communicator>>>,
    stats: CommStats,
    /// Whether gradient sums overlap the backward pass ([`Group::sum_gradients_during`]).
    overlap: bool,
    /// The sums of overlapped gradient buckets, packed in bucket order (one gradient buffer's size).
    sums: Vec<f32>,
}

impl Default for Group {
    fn default() -> Self {
        Self::new(Box::new(Solo))
    }
}

impl Group {
    pub fn new(comm: Box<dyn Communicator>) -> Self {
        Self { comm: Rc::new(RefCell::new(comm)), stats: CommStats::default(), overlap: true, sums: Vec::new() }
    }

    pub fn rank(&self) -> usize {
        self.comm.borrow().rank()
    }

    pub fn size(&self) -> usize {
        self.comm.borrow().size()
    }

    /// Whether this process writes the run's files (rank 0 alone does).
    pub fn is_writer(&self) -> bool {
        self.comm.borrow().rank() == 0
    }

    pub fn stats(&self) -> CommStats {
        self.stats
    }

    pub fn describe(&self) -> String {
        self.comm.borrow().describe()
    }

    /// Sums the ranks' gradients (no-op, and not counted, for one process).
    pub fn sum_gradients(&mut self, grads: &mut [f32]) {
        if self.size() == 1 {
            return;
        }
        let start = Instant::now();
        self.comm.borrow_mut().sum_f32(grads);
        let seconds = start.elapsed().as_secs_f64();
        self.stats.seconds += seconds;
        self.stats.in_flight_seconds += seconds;
        self.stats.bytes += (std::mem::size_of_val(grads)) as u64;
        self.stats.calls += 1;
    }

    pub fn sum_f64(&mut self, values: &mut [f64]) {
        if self.size() > 1 {
            self.comm.borrow_mut().sum_f64(values);
        }
    }

    /// Whether any rank raised its stop flag: ranks must stop at the same step, so they decide together.
    pub fn any(&mut self, flag: bool) -> bool {
        let mut value = [f64::from(u8::from(flag))];
        self.sum_f64(&mut value);
        value[0] > 0.0
    }

    /// Combines every rank's outcome of a start-up stage: all ranks go on, or all return one error that names
    /// each failed rank and its reason (so rank 0 can print it for the job).
    pub fn agree<T>(&mut self, stage: &str, local: Result<T>) -> Result<T> {
        if self.size() == 1 {
            return local;
        }
        let mut mine = vec![0u8; STATUS_BYTES];
        if let Err(e) = &local {
            mine[0] = 1;
            let text = match e {
                TrainError::Distributed(message) => message.clone(),
                e => e.to_string(),
            };
            let cut = floor_char_boundary(&text, STATUS_BYTES - 3);
            let len = u16::try_from(cut).unwrap_or(0);
            mine[1..3].copy_from_slice(&len.to_le_bytes());
            mine[3..3 + usize::from(len)].copy_from_slice(&text.as_bytes()[..usize::from(len)]);
        }
        let all = self.comm.borrow_mut().all_gather(&mine);
        // (message, ranks that failed with it), in rank order: one line for ranks that failed alike.
        let mut failures: Vec<(String, Vec<usize>)> = Vec::new();
        for (rank, status) in all.chunks_exact(STATUS_BYTES).enumerate().filter(|(_, status)| status[0] != 0) {
            let len = usize::from(u16::from_le_bytes([status[1], status[2]])).min(STATUS_BYTES - 3);
            let message = String::from_utf8_lossy(&status[3..3 + len]).into_owned();
            match failures.iter_mut().find(|(m, _)| *m == message) {
                Some((_, ranks)) => ranks.push(rank),
                None => failures.push((message, vec![rank])),
            }
        }
        if failures.is_empty() {
            return local;
        }
        let lines: Vec<String> = failures
            .into_iter()
            .map(|(message, ranks)| {
                let names: Vec<String> = ranks.iter().map(usize::to_string).collect();
                let plural = if ranks.len() > 1 { "s" } else { "" };
                format!("rank{plural} {}: {message}", names.join(", "))
            })
            .collect();
        Err(TrainError::Distributed(format!("{stage} failed on {}", lines.join("; "))))
    }

    /// Checks that every rank runs the same settings on the same data: ranks started with different
    /// configurations or corpora would silently train on a mixture.
    pub fn check_same_inputs(&mut self, config_hash: u64, data_hash: u64) -> Result<()> {
        let mut mine = config_hash.to_le_bytes().to_vec();
        mine.extend_from_slice(&data_hash.to_le_bytes());
        let all = self.comm.borrow_mut().all_gather(&mine);
        let mut problems = Vec::new();
        let word = |chunk: &[u8], at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let first = &all[..16];
        for (rank, theirs) in all.chunks_exact(16).enumerate().skip(1) {
            if word(theirs, 0) != word(first, 0) {
                problems.push(format!("rank {rank}'s training settings differ from rank 0's"));
            }
            if word(theirs, 8) != word(first, 8) {
                problems.push(format!("rank {rank}'s data differ from rank 0's"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(TrainError::Distributed(format!(
            "{}: every rank must be started with the same flags and read the same data files",
            problems.join("; ")
        )))
    }

    pub fn abort(&self, code: i32) -> ! {
        self.comm.borrow().abort(code)
    }
}

/// Room for one rank's status in [`Group::agree`]: a flag, a length and the start of its error message.
const STATUS_BYTES: usize = 1024;

fn floor_char_boundary(text: &str, max: usize) -> usize {
    (0..=max.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// The rows (sequences) of a global batch of `b` that rank `rank` of `size` trains on: the first `b % size`
/// ranks take one more, as replicas do.
pub fn rank_share(rank: usize, size: usize, b: usize) -> std::ops::Range<usize> {
    crate::parallel::share_of(rank, size.max(1), b)
}

/// A rank's share of one batch of `b` sequences of `t` tokens: its rows, and its part of the batch's counted
/// targets (exactly 1 for one process). `None` when the rank has nothing to do in this batch (fewer
/// sequences than ranks, or nothing counted in its rows).
#[derive(Debug, Clone, Copy)]
pub struct RankSlice<'a> {
    pub inputs: &'a [u32],
    pub targets: &'a [u32],
    pub b: usize,
    pub share: f32,
}

impl<'a> RankSlice<'a> {
    pub fn of(
        rank: usize,
        ranks: usize,
        inputs: &'a [u32],
        targets: &'a [u32],
        (b, t): (usize, usize),
    ) -> Option<Self> {
        if ranks <= 1 {
            return Some(Self { inputs, targets, b, share: 1.0 });
        }
        let rows = rank_share(rank, ranks, b);
        let per_sequence = targets.len() / b.max(1);
        let inputs = inputs.get(rows.start * t..rows.end * t)?;
        let mine = targets.get(rows.start * per_sequence..rows.end * per_sequence)?;
        let counted_here = crate::parallel::counted(mine);
        if rows.is_empty() || counted_here == 0 {
            return None;
        }
        let share = counted_here as f32 / crate::parallel::counted(targets).max(1) as f32;
        Some(Self { inputs, targets: mine, b: rows.len(), share })
    }
}

/// Environment variables through which launchers announce the job's size: Open MPI's `mpirun`, MPICH's
/// Hydra and Slurm's PMI, MPICH, Slurm's `srun`.
pub const LAUNCHER_SIZE_VARIABLES: [&str; 5] =
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The job size a launcher announced in `env` (the largest among [`LAUNCHER_SIZE_VARIABLES`]) and the
/// variable saying so; `None` when no launcher started this process (or announced one process).
pub fn launched_size(env: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    LAUNCHER_SIZE_VARIABLES
        .iter()
        .filter_map(|&name| env(name).and_then(|v| v.trim().parse::<usize>().ok()).map(|n| (n, name)))
        .filter(|&(n, _)| n > 1)
        .max_by_key(|&(n, _)| n)
}

/// The communicator of this process: MPI's world when a launcher started it (and this build has the `mpi`
/// feature), else [`Solo`]. A build without MPI that finds itself one of N > 1 launched processes refuses
/// to run: each would train its own copy of the model and write into the same directory.
pub fn connect() -> Result<Group> {
    let launched = launched_size(|name| std::env::var(name).ok());
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Group::new(Box::new(mpi_world::MpiWorld::init()?)));
    }
    match launched {
        Some((n, variable)) if !cfg!(feature = "mpi") => Err(TrainError::Distributed(format!(
            "this lushan was built without MPI support, but it was started as one of {n} processes \
             ({variable}={n}): each would train its own copy of the model. Rebuild it with \
             `cargo build --release --features mpi` (needs an MPI library and libclang), or run one process"
        ))),
        _ => Ok(Group::default()),
    }
}

/// A fingerprint of the data a rank loaded: its summary (sizes, labels, tokenizer), for token shards a
/// sample of up to 4096 tokens spread over each shard, and for task records the record files' bytes.
pub fn data_fingerprint(config: &crate::TrainConfig, data: &crate::TrainData) -> Result<u64> {
    let mut f = Fingerprint::default();
    f.add(data.summary().as_bytes());
    match &data.source {
        crate::DataSource::Shards { train, val } => {
            for shard in [train, val] {
                let step = (shard.len() / 4096).max(1);
                for i in (0..shard.len()).step_by(step) {
                    f.add(&shard.token(i)?.to_le_bytes());
                }
            }
        }
        crate::DataSource::Task(_) => {
            for path in std::iter::once(config.data.as_path()).chain(config.val_data_path()) {
                let bytes = lushan_fs::read_regular(path)
                    .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
                f.add(&bytes);
            }
        }
    }
    Ok(f.value())
}

/// FNV-1a, 64 bits: fingerprints settings and data to compare across ranks (not a cryptographic hash; it
/// catches mistakes, not adversaries).
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_sizes_are_read_from_any_launcher_and_one_process_is_no_job() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(launched_size(env(&[("OMPI_COMM_WORLD_SIZE", "2")])), Some((2, "OMPI_COMM_WORLD_SIZE")));
        assert_eq!(launched_size(env(&[("PMI_SIZE", "4"), ("SLURM_STEP_NUM_TASKS", "4")])).map(|s| s.0), Some(4));
        assert_eq!(launched_size(env(&[("OMPI_COMM_WORLD_SIZE", "1")])), None);
        assert_eq!(launched_size(env(&[("PMI_SIZE", "many")])), None);
        assert_eq!(launched_size(env(&[])), None);
    }

    #[test]
    fn rank_shares_cover_the_global_batch_once() {
        for (size, b) in [(1, 5), (2, 4), (2, 5), (3, 7), (4, 4)] {
            let rows: Vec<usize> = (0..size).flat_map(|r| rank_share(r, size, b)).collect();
            assert_eq!(rows, (0..b).collect::<Vec<_>>(), "{size} ranks, batch {b}");
        }
    }

    #[test]
    fn a_single_process_agrees_with_itself() {
        let mut group = Group::default();
        assert!(group.is_writer());
        assert_eq!(group.agree("start", Ok(3)).ok(), Some(3));
        assert!(group.check_same_inputs(1, 2).is_ok());
        assert!(!group.any(false) && group.any(true));
        let mut grads = vec![1.0f32; 4];
        group.sum_gradients(&mut grads);
        assert_eq!(grads, vec![1.0; 4]);
        assert_eq!(group.stats().calls, 0);
    }

    /// What another rank of a pretend job contributes to an all-gather, given rank 0's contribution.
    type OtherRank = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// Rank 0 of a pretend job whose other ranks contribute `others` to every all-gather.
    struct PretendJob {
        others: Vec<OtherRank>,
    }

    impl std::fmt::Debug for PretendJob {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PretendJob of {} ranks", self.size())
        }
    }

    impl Communicator for PretendJob {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            1 + self.others.len()
        }
        fn sum_f32(&mut self, values: &mut [f32]) {
            values.iter_mut().for_each(|v| *v *= self.size() as f32);
        }
        fn sum_f64(&mut self, values: &mut [f64]) {
            values.iter_mut().for_each(|v| *v *= self.size() as f64);
        }
        fn all_gather(&mut self, mine: &[u8]) -> Vec<u8> {
            let mut all = mine.to_vec();
            for other in &self.others {
                all.extend(other(mine));
            }
            all
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
        fn describe(&self) -> String {
            "pretend".into()
        }
    }

    fn failing(message: &'static str) -> OtherRank {
        Box::new(move |mine: &[u8]| {
            let mut status = vec![0u8; mine.len()];
            status[0] = 1;
            status[1..3].copy_from_slice(&(message.len() as u16).to_le_bytes());
            status[3..3 + message.len()].copy_from_slice(message.as_bytes());
            status
        })
    }

    #[test]
    fn every_rank_learns_which_rank_failed_and_why() {
        let same = || -> OtherRank { Box::new(|mine: &[u8]| mine.to_vec()) };
        let mut group = Group::new(Box::new(PretendJob { others: vec![same(), failing("data.txt: no such file")] }));
        let err = group.agree("reading the data", Ok(())).unwrap_err().to_string();
        assert!(err.contains("reading the data failed on rank 2: data.txt: no such file"), "{err}");
        assert!(!err.contains("rank 1"), "{err}");

        let mut group = Group::new(Box::new(PretendJob { others: vec![failing("bad"), failing("bad")] }));
        let err = group.agree::<()>("setting up", Err(TrainError::Distributed("bad".into()))).unwrap_err();
        assert!(err.to_string().contains("failed on ranks 0, 1, 2: bad"), "{err}");

        let mut group = Group::new(Box::new(PretendJob { others: vec![same()] }));
        assert_eq!(group.agree("start", Ok(5)).ok(), Some(5));
        assert!(group.check_same_inputs(1, 2).is_ok());
        let mut grads = vec![1.0f32, 2.0];
        group.sum_gradients(&mut grads);
        assert_eq!((grads, group.stats().bytes, group.stats().calls), (vec![2.0, 4.0], 8, 1));
    }

    #[test]
    fn overlapped_sums_cover_buckets_handed_over_early_late_or_not_at_all() {
        use lushan_model::GradSegment;
        // Buckets in the order a backward pass hands them over: [4..6, 0..1], [1..4].
        let plan = vec![vec![4..6, 0..1], vec![1..4]];
        for hand_over in [2, 1, 0] {
            let mut group = Group::new(Box::new(PretendJob { others: vec![Box::new(|mine: &[u8]| mine.to_vec())] }));
            let mut grads = vec![0.0f32; 6];
            let loss = group
                .sum_gradients_during(&mut grads, &plan, |grads, on_final| {
                    grads.iter_mut().enumerate().for_each(|(i, g)| *g = i as f32 + 1.0);
                    let segments = |ranges: &[std::ops::Range<usize>]| -> Vec<(usize, Vec<f32>)> {
                        ranges.iter().map(|r| (r.start, grads[r.clone()].to_vec())).collect()
                    };
                    // A bucket that is not the plan's next one is not started early.
                    on_final(&[GradSegment { offset: 1, values: &grads[1..2] }]);
                    for bucket in &plan[..hand_over] {
                        let owned = segments(bucket);
                        let view: Vec<GradSegment<'_>> =
                            owned.iter().map(|(offset, v)| GradSegment { offset: *offset, values: v }).collect();
                        on_final(&view);
                    }
                    Ok(0.5)
                })
                .unwrap();
            assert_eq!(loss, 0.5);
            // The pretend job's other rank contributes the same values: every gradient doubles, once.
            assert_eq!(grads, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0], "{hand_over} buckets handed over early");
            assert_eq!((group.stats().bytes, group.stats().calls), (24, 1));
        }
        let mut group = Group::new(Box::new(PretendJob { others: vec![Box::new(|mine: &[u8]| mine.to_vec())] }));
        let mut grads = vec![1.0f32; 4];
        let err =
            group.sum_gradients_during(&mut grads, &[(0..3).map(|i| i..i + 1).collect()], |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("do not cover its gradient buffer of 4 values"), "{err}");
    }

    #[test]
    fn ranks_with_other_settings_or_data_are_named() {
        let other_config: OtherRank = Box::new(|mine: &[u8]| {
            let mut theirs = mine.to_vec();
            theirs[0] ^= 1;
            theirs
        });
        let other_data: OtherRank = Box::new(|mine: &[u8]| {
            let mut theirs = mine.to_vec();
            theirs[8] ^= 1;
            theirs
        });
        let mut group = Group::new(Box::new(PretendJob { others: vec![other_config, other_data] }));
        let err = group.check_same_inputs(7, 9).unwrap_err().to_string();
        assert!(err.contains("rank 1's training settings differ from rank 0's"), "{err}");
        assert!(err.contains("rank 2's data differ from rank 0's"), "{err}");
    }

    #[test]
    fn fingerprints_tell_inputs_apart() {
        let of = |s: &str| {
            let mut f = Fingerprint::default();
            f.add(s.as_bytes());
            f.value()
        };
        assert_eq!(of("batch_size = 8"), of("batch_size = 8"));
        assert_ne!(of("batch_size = 8"), of("batch_size = 9"));
    }
}
