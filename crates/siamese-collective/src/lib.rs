//! Collective operations for data-parallel training, behind one trait: the rank of this
//! process, the world size, an all-reduce sum of an f32 buffer, broadcast, all-gather
//! and a barrier.
//!
//! Three implementations:
//! - [`SingleProcess`]: a world of one, the default; every operation is free.
//! - [`ThreadGroup`]: ranks as threads of one process, for tests of distributed logic
//!   without an MPI installation (and with a rank that can be made to fail).
//! - `Mpi` (feature `mpi`): rsmpi over the system MPI (MPICH or Open MPI), for
//!   `mpiexec -n N` on one machine or many. An NCCL implementation for GPUs would be one
//!   more type behind the same trait.
//!
//! ```
//! use siamese_collective::{Collective, ThreadGroup};
//!
//! // Two ranks add their gradients; both get the same sum.
//! let sums = ThreadGroup::run(2, |c| {
//!     let mut grad = vec![c.rank() as f32 + 1.0; 3];
//!     c.all_reduce_sum(&mut grad).unwrap();
//!     grad
//! });
//! assert_eq!(sums, [vec![3.0; 3], vec![3.0; 3]]);
//! ```

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "mpi")]
pub use mpi_world::Mpi;

/// What can stop a collective operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CollectiveError {
    /// Another rank is gone (it failed or exited): the operation cannot complete.
    #[error("rank {rank} of {world} left the group: {why}")]
    RankLost {
        /// The rank that left.
        rank: usize,
        /// The world size.
        world: usize,
        /// What it said, or how it ended.
        why: String,
    },
    /// The other ranks did not arrive in time.
    #[error("rank {rank} waited {seconds} s for the other ranks at {what}")]
    Timeout {
        /// The rank that waited.
        rank: usize,
        /// How long.
        seconds: u64,
        /// The operation.
        what: &'static str,
    },
    /// The ranks called the operation with buffers of different lengths, or a root
    /// outside the world.
    #[error("{0}")]
    Mismatch(String),
}

/// The operations data-parallel training needs, on one group of processes (a world).
/// Every rank calls the same operations in the same order; each returns when all have.
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `values` on every rank with their element-wise sum over the ranks.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError>;
    /// Replaces `values` on every rank with rank `root`'s.
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), CollectiveError>;
    /// Rank `root`'s bytes on every rank (of any length: a config, a file's hash).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError>;
    /// Every rank's `local` (the same length on all), concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CollectiveError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), CollectiveError>;
}

/// A collective shared by the parts of a training step that talk to the other ranks
/// (the gradient all-reduce, batch norm's statistics inside the backward pass).
pub type SharedCollective = Arc<dyn Collective + Send + Sync>;

/// A world of one process: rank 0 of 1, every operation a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(root, 1)
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        check_root(root, 1)
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        Ok(local.to_vec())
    }
    fn barrier(&self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

fn check_root(root: usize, world: usize) -> Result<(), CollectiveError> {
    if root < world {
        Ok(())
    } else {
        Err(CollectiveError::Mismatch(format!(
            "root {root} is not a rank of a world of {world}"
        )))
    }
}

/// The rows `shard(n, rank, world)` of a global batch of `n` that `rank` handles:
/// contiguous, in rank order, sizes differing by one at most (the first `n % world`
/// ranks take one more). Their union over the ranks is `0..n`, in order.
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(rank < world, "rank {rank} of a world of {world}");
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Where each part lies in a buffer that holds several parts end to end: gradients of
/// many tensors all-reduced in one call (Horovod's tensor fusion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fusion {
    ranges: Vec<Range<usize>>,
}

impl Fusion {
    /// The parts laid end to end, and where each lies.
    pub fn fuse(parts: &[&[f32]]) -> (Self, Vec<f32>) {
        let mut buffer = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ranges = Vec::with_capacity(parts.len());
        for part in parts {
            let start = buffer.len();
            buffer.extend_from_slice(part);
            ranges.push(start..buffer.len());
        }
        (Self { ranges }, buffer)
    }

    /// The parts of `buffer`, in the order they were fused.
    pub fn split<'a>(&self, buffer: &'a [f32]) -> Vec<&'a [f32]> {
        self.ranges.iter().map(|r| &buffer[r.clone()]).collect()
    }

    /// The fused length.
    pub fn len(&self) -> usize {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// Whether no values were fused.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a [`ThreadGroup`] rank waits for the others before giving up.
pub const THREAD_GROUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Ranks as threads of one process, sharing memory: the distributed logic of a training
/// step tested without MPI. Sums are taken in rank order, so every rank gets the same
/// bits. A rank whose closure panics or returns leaves the group, and the others'
/// operations fail naming it instead of waiting.
#[derive(Clone)]
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    arrived: Condvar,
}

struct State {
    /// Completed barriers (each operation is two: deposit, then collect).
    generation: u64,
    waiting: usize,
    slots: Vec<Vec<f32>>,
    bytes: Vec<u8>,
    left: Option<(usize, String)>,
}

impl ThreadGroup {
    /// Runs `body` on `world` threads, one rank each, and returns their results in rank
    /// order. A panic in one rank's `body` is resumed here after every rank has ended.
    pub fn run<T: Send>(world: usize, body: impl Fn(&ThreadGroup) -> T + Sync) -> Vec<T> {
        assert!(world > 0, "a world of at least one rank");
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                generation: 0,
                waiting: 0,
                slots: vec![Vec::new(); world],
                bytes: Vec::new(),
                left: None,
            }),
            arrived: Condvar::new(),
        });
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let group = ThreadGroup {
                        rank,
                        shared: Arc::clone(&shared),
                    };
                    let body = &body;
                    scope.spawn(move || {
                        let result =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&group)));
                        let why = match &result {
                            Ok(_) => "it returned".to_string(),
                            Err(e) => panic_text(e.as_ref()),
                        };
                        group.leave(why);
                        result
                    })
                })
                .collect();
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("caught"))
                .collect();
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks this rank gone, waking the others so they fail instead of waiting.
    fn leave(&self, why: String) {
        let mut state = self.lock();
        if state.left.is_none() {
            state.left = Some((self.rank, why));
        }
        self.shared.arrived.notify_all();
    }

    /// Waits until every rank has arrived, with `state` held; a rank that left, or
    /// a wait past [`THREAD_GROUP_TIMEOUT`], is an error.
    fn sync<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        what: &'static str,
    ) -> Result<MutexGuard<'a, State>, CollectiveError> {
        let lost = |state: &State| {
            state
                .left
                .clone()
                .map(|(rank, why)| CollectiveError::RankLost {
                    rank,
                    world: self.shared.world,
                    why,
                })
        };
        if let Some(e) = lost(&state) {
            return Err(e);
        }
        let generation = state.generation;
        state.waiting += 1;
        if state.waiting == self.shared.world {
            state.waiting = 0;
            state.generation += 1;
            self.shared.arrived.notify_all();
            return Ok(state);
        }
        let deadline = Instant::now() + THREAD_GROUP_TIMEOUT;
        while state.generation == generation {
            if let Some(e) = lost(&state) {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CollectiveError::Timeout {
                    rank: self.rank,
                    seconds: THREAD_GROUP_TIMEOUT.as_secs(),
                    what,
                });
            }
            state = self
                .shared
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(state)
    }

    /// Puts `values` in this rank's slot and waits for every rank's.
    fn deposit(
        &self,
        values: &[f32],
        what: &'static str,
    ) -> Result<Vec<Vec<f32>>, CollectiveError> {
        let mut state = self.lock();
        state.slots[self.rank] = values.to_vec();
        let state = self.sync(state, what)?;
        let slots = state.slots.clone();
        // Nobody overwrites a slot before every rank has read them all.
        drop(self.sync(state, what)?);
        Ok(slots)
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("it panicked: {text}")
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let slots = self.deposit(values, "all_reduce_sum")?;
        if let Some(other) = slots.iter().find(|s| s.len() != values.len()) {
            return Err(CollectiveError::Mismatch(format!(
                "all_reduce_sum of {} values on rank {}, {} on another",
                values.len(),
                self.rank,
                other.len()
            )));
        }
        // In rank order on every rank: the same bits everywhere.
        for (i, v) in values.iter_mut().enumerate() {
            *v = slots.iter().fold(0.0, |sum, s| sum + s[i]);
        }
        Ok(())
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.shared.world)?;
        let slots = self.deposit(values, "broadcast")?;
        if slots[root].len() != values.len() {
            return Err(CollectiveError::Mismatch(format!(
                "broadcast of {} values from rank {root} into {} on rank {}",
                slots[root].len(),
                values.len(),
                self.rank
            )));
        }
        values.copy_from_slice(&slots[root]);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.shared.world)?;
        let mut state = self.lock();
        if self.rank == root {
            state.bytes = bytes.clone();
        }
        let state = self.sync(state, "broadcast_bytes")?;
        *bytes = state.bytes.clone();
        drop(self.sync(state, "broadcast_bytes")?);
        Ok(())
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        let slots = self.deposit(local, "all_gather")?;
        if slots.iter().any(|s| s.len() != local.len()) {
            return Err(CollectiveError::Mismatch(format!(
                "all_gather of {} values on rank {}, another length elsewhere",
                local.len(),
                self.rank
            )));
        }
        Ok(slots.concat())
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        let state = self.lock();
        self.sync(state, "barrier").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_their_union_is_the_batch() {
        for n in 0..40 {
            for world in 1..7 {
                let mut covered = Vec::new();
                for rank in 0..world {
                    let part = shard(n, rank, world);
                    assert!(part.len() == n / world || part.len() == n / world + 1);
                    covered.extend(part);
                }
                assert_eq!(covered, (0..n).collect::<Vec<_>>(), "n {n}, world {world}");
            }
        }
    }

    #[test]
    fn a_fused_buffer_gives_back_every_part_in_order() {
        let parts: [&[f32]; 4] = [&[1.0, 2.0], &[], &[3.0], &[4.0, 5.0, 6.0]];
        let (fusion, buffer) = Fusion::fuse(&parts);
        assert_eq!(buffer, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(fusion.split(&buffer), parts);
        assert_eq!(fusion.len(), 6);
    }

    #[test]
    fn thread_ranks_reduce_broadcast_and_gather_like_one_process() {
        let results = ThreadGroup::run(3, |c| {
            let r = c.rank() as f32;
            let mut sum = vec![r, 10.0 * r];
            c.all_reduce_sum(&mut sum).unwrap();
            let mut b = vec![r; 2];
            c.broadcast(&mut b, 2).unwrap();
            let mut bytes = if c.rank() == 1 {
                b"config".to_vec()
            } else {
                Vec::new()
            };
            c.broadcast_bytes(&mut bytes, 1).unwrap();
            let gathered = c.all_gather(&[r, r + 0.5]).unwrap();
            c.barrier().unwrap();
            (sum, b, bytes, gathered)
        });
        for (sum, b, bytes, gathered) in results {
            assert_eq!(sum, [3.0, 30.0]);
            assert_eq!(b, [2.0, 2.0]);
            assert_eq!(bytes, b"config");
            assert_eq!(gathered, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        }
    }

    #[test]
    fn a_rank_that_fails_is_named_and_the_others_do_not_wait() {
        let start = Instant::now();
        let results = ThreadGroup::run(3, |c| {
            if c.rank() == 1 {
                return Err(CollectiveError::Mismatch("rank 1 stops".into()));
            }
            let mut v = [1.0];
            c.all_reduce_sum(&mut v)
        });
        assert!(start.elapsed() < Duration::from_secs(10));
        for (rank, r) in results.iter().enumerate() {
            if rank == 1 {
                continue;
            }
            match r {
                Err(CollectiveError::RankLost {
                    rank: 1, world: 3, ..
                }) => {}
                other => panic!("rank {rank}: {other:?}"),
            }
        }
        let text = results[0].clone().unwrap_err().to_string();
        assert!(text.contains("rank 1 of 3 left"), "{text}");
    }

    #[test]
    fn mismatched_buffers_and_roots_are_errors() {
        let results = ThreadGroup::run(2, |c| {
            let mut v = vec![0.0; 1 + c.rank()];
            c.all_reduce_sum(&mut v)
        });
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(CollectiveError::Mismatch(_)))));
        assert!(SingleProcess.broadcast(&mut [0.0], 1).is_err());
    }
}
