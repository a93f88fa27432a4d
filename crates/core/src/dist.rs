//! Distributed execution: the process's communicator, as `MPI_COMM_WORLD` is MPI's.
//!
//! cryoforge runs data-parallel over MPI ranks (feature `mpi`, Open MPI through the `mpi`
//! crate). Library entry points that split work over particles read [`world`]; the binary
//! installs the MPI communicator at start ([`mpi::init`]). Without the feature, or with one
//! rank, [`world`] is [`SingleProcess`] and every collective is a no-op, so nothing changes.
//!
//! Rules every distributed entry point follows (ARCHITECTURE.md, "Scale out"):
//! - every rank calls the same collectives in the same order: a distributed entry point is
//!   itself collective (all ranks call it, with the same arguments);
//! - particles are split into contiguous blocks in particle order ([`block`]), so that a
//!   gather in rank order is a gather in particle order;
//! - results that every rank needs are all-reduced; outputs are written by rank 0 only.

use std::ops::Range;
use std::sync::OnceLock;

/// A communicator over `size()` ranks. Collectives must be called by every rank, in the same
/// order, with buffers of the same length (but for [`Comm::gather_f32`]).
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place, on every rank.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Element-wise sum over ranks, in place, on every rank.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]);
    /// Element-wise maximum over ranks, in place, on every rank.
    fn all_reduce_max_f64(&self, buf: &mut [f64]);
    /// Every rank's `local` (any lengths below 2³¹ elements, MPI's count type) concatenated in
    /// rank order, on rank 0; `None` elsewhere.
    fn gather_f32(&self, local: &[f32]) -> Option<Vec<f32>>;
    /// Rank 0's bytes on every rank (`buf` is resized on the others).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>);
    /// Every rank's `local` bytes (any lengths, below 2³¹ in all), one entry per rank in rank
    /// order, on every rank.
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>>;
    fn barrier(&self);
    /// Stop every rank (MPI_Abort); with one process, exit.
    fn abort(&self, code: i32) -> !;

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Whether more than one rank runs.
    fn is_distributed(&self) -> bool {
        self.size() > 1
    }
}

/// The communicator of a single process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Comm for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn all_reduce_sum_f32(&self, _: &mut [f32]) {}
    fn all_reduce_max_f64(&self, _: &mut [f64]) {}
    fn gather_f32(&self, local: &[f32]) -> Option<Vec<f32>> {
        Some(local.to_vec())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) {}
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        vec![local.to_vec()]
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// The process's communicator ([`SingleProcess`] unless one was installed).
pub fn world() -> &'static dyn Comm {
    WORLD.get().map(|b| b.as_ref()).unwrap_or(&SingleProcess)
}

/// Install the process's communicator; only the first call takes effect (returns false after).
pub fn install(c: Box<dyn Comm>) -> bool {
    WORLD.set(c).is_ok()
}

/// The contiguous block of `0..n` that `rank` of `size` owns: the first `n % size` ranks
/// get one more. Blocks in rank order tile `0..n` in order.
pub fn block(n: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let (q, r) = (n / size, n % size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// This process's block of `0..n` in [`world`].
pub fn my_block(n: usize) -> Range<usize> {
    let w = world();
    block(n, w.rank(), w.size())
}

/// All-reduce a slice of plain `f32` records (e.g. grid cells) in chunks, so that neither the
/// MPI count (an `i32`) nor the scratch memory grows with the slice.
pub fn all_reduce_sum_f32_chunked(c: &dyn Comm, buf: &mut [f32]) {
    if c.size() <= 1 {
        return;
    }
    for ch in buf.chunks_mut(1 << 24) {
        c.all_reduce_sum_f32(ch);
    }
}

/// Open MPI behind the `mpi` feature.
#[cfg(feature = "mpi")]
pub mod mpi {
    use super::Comm;
    use ::mpi::collective::SystemOperation;
    use ::mpi::datatype::PartitionMut;
    use ::mpi::environment::Universe;
    use ::mpi::topology::SimpleCommunicator;
    use ::mpi::traits::*;
    use ::mpi::Threading;
    use std::sync::Mutex;

    /// MPI_COMM_WORLD. Calls are serialised by a lock (MPI is initialised with
    /// `MPI_THREAD_SERIALIZED`), so any thread may use it, one at a time.
    pub struct MpiComm {
        world: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
    }

    // SAFETY: the communicator is a handle that MPI lets any thread use under
    // MPI_THREAD_SERIALIZED; every use goes through the mutex, so no two threads call MPI at
    // once.
    unsafe impl Send for MpiComm {}
    unsafe impl Sync for MpiComm {}

    /// Offsets of consecutive blocks of `counts` elements (exclusive prefix sums).
    fn displacements(counts: &[i32]) -> Vec<i32> {
        counts
            .iter()
            .scan(0i32, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect()
    }

    /// Keeps MPI initialised; dropping it finalises MPI (at the end of `main`).
    pub struct MpiGuard {
        _universe: Universe,
    }

    /// Initialise MPI and install MPI_COMM_WORLD as [`super::world`]. Returns `None` when MPI
    /// was already initialised or cannot give serialised threading.
    pub fn init() -> Option<MpiGuard> {
        let (universe, provided) = ::mpi::initialize_with_threading(Threading::Serialized)?;
        if provided < Threading::Serialized {
            eprintln!("error: the MPI library does not support MPI_THREAD_SERIALIZED");
            return None;
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        super::install(Box::new(MpiComm { world: Mutex::new(world), rank, size }));
        Some(MpiGuard { _universe: universe })
    }

    impl MpiComm {
        fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
            let g = self.world.lock().unwrap_or_else(|p| p.into_inner());
            f(&g)
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
            if self.size > 1 && !buf.is_empty() {
                let send = buf.to_vec();
                self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
            }
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
            if self.size > 1 && !buf.is_empty() {
                let send = buf.to_vec();
                self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
            }
        }
        fn all_reduce_max_f64(&self, buf: &mut [f64]) {
            if self.size > 1 && !buf.is_empty() {
                let send = buf.to_vec();
                self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::max()));
            }
        }
        fn gather_f32(&self, local: &[f32]) -> Option<Vec<f32>> {
            if self.size == 1 {
                return Some(local.to_vec());
            }
            self.with(|w| {
                let root = w.process_at_rank(0);
                let n = local.len() as i32;
                if self.rank == 0 {
                    let mut counts = vec![0i32; self.size];
                    root.gather_into_root(&n, &mut counts[..]);
                    let displs = displacements(&counts);
                    let total: i32 = counts.iter().sum();
                    let mut out = vec![0f32; total as usize];
                    {
                        let mut part = PartitionMut::new(&mut out[..], counts, &displs[..]);
                        root.gather_varcount_into_root(local, &mut part);
                    }
                    Some(out)
                } else {
                    root.gather_into(&n);
                    root.gather_varcount_into(local);
                    None
                }
            })
        }
        fn broadcast_bytes(&self, buf: &mut Vec<u8>) {
            if self.size == 1 {
                return;
            }
            self.with(|w| {
                let root = w.process_at_rank(0);
                let mut n = buf.len() as u64;
                root.broadcast_into(&mut n);
                buf.resize(n as usize, 0);
                root.broadcast_into(&mut buf[..]);
            })
        }
        fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
            if self.size == 1 {
                return vec![local.to_vec()];
            }
            self.with(|w| {
                let n = local.len() as i32;
                let mut counts = vec![0i32; self.size];
                w.all_gather_into(&n, &mut counts[..]);
                let displs = displacements(&counts);
                let total: usize = counts.iter().map(|&c| c as usize).sum();
                let mut all = vec![0u8; total];
                {
                    let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                    w.all_gather_varcount_into(local, &mut part);
                }
                displs
                    .iter()
                    .zip(&counts)
                    .map(|(&d, &c)| all[d as usize..(d + c) as usize].to_vec())
                    .collect()
            })
        }
        fn barrier(&self) {
            if self.size > 1 {
                self.with(|w| w.barrier());
            }
        }
        fn abort(&self, code: i32) -> ! {
            // No lock: another thread may hold it inside a collective that never completes.
            ::mpi::topology::SimpleCommunicator::world().abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tile_the_range_in_order() {
        for n in [0usize, 1, 5, 7, 64, 1001] {
            for size in 1..6 {
                let mut next = 0;
                for r in 0..size {
                    let b = block(n, r, size);
                    assert_eq!(b.start, next, "n={n} size={size} rank={r}");
                    assert!(b.len() == n / size || b.len() == n / size + 1);
                    next = b.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn single_process_collectives_are_identities() {
        let c = SingleProcess;
        let mut v = vec![1.0f64, 2.0];
        c.all_reduce_sum_f64(&mut v);
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(c.gather_f32(&[3.0, 4.0]), Some(vec![3.0, 4.0]));
        assert!(c.is_root() && !c.is_distributed());
        assert_eq!(world().size(), 1);
    }
}
