//! The MPI world through rsmpi: `mpiexec -n N program` starts N processes, each of which
//! makes one [`Mpi`] (MPI is initialised once per process, finalised when it drops).

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::{check_root, Collective, CollectiveError};

/// This process's place in the MPI world (`MPI_COMM_WORLD`). Errors in MPI itself abort
/// the job (MPI's default handler), and the launcher ends the other ranks: a lost rank
/// never leaves the others waiting.
pub struct Mpi {
    world: SimpleCommunicator,
    // Finalises MPI when dropped, after the communicator.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI; `None` when it already was in this process.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        Some(Self {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Whether this process was started by an MPI launcher (`mpiexec`, `mpirun`,
    /// `srun`), from the variables MPICH, Open MPI and Slurm set.
    pub fn launched() -> bool {
        [
            "PMI_RANK",
            "PMI_SIZE",
            "OMPI_COMM_WORLD_SIZE",
            "PMIX_RANK",
            "SLURM_PROCID",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    }
}

impl Mpi {
    /// An error on every rank (never on some only) unless all pass the same `len`: MPI
    /// itself would abort the job, or read past a buffer, on a mismatch.
    fn same_length(&self, len: usize, what: &str) -> Result<(), CollectiveError> {
        let mut lens = vec![0u64; self.world_size()];
        self.world.all_gather_into(&(len as u64), &mut lens[..]);
        if lens.iter().any(|&l| l != len as u64) {
            return Err(CollectiveError::Mismatch(format!(
                "{what} of lengths {lens:?} by rank (rank {} has {len})",
                self.rank()
            )));
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.same_length(values.len(), "all_reduce_sum")?;
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.world_size())?;
        // Lengths first, and every rank told whether all agree: a rank with another
        // length would otherwise truncate the root's message (MPI aborts the job), and
        // ranks that stopped at different points would call different operations next.
        let mut len = [values.len() as u64];
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(&mut len[..]);
        let agree = i32::from(len[0] == values.len() as u64);
        let mut all_agree = 0i32;
        self.world
            .all_reduce_into(&agree, &mut all_agree, SystemOperation::min());
        if all_agree == 0 {
            return Err(CollectiveError::Mismatch(format!(
                "broadcast of {} values from rank {root} into {} on rank {}",
                len[0],
                values.len(),
                self.rank()
            )));
        }
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(values);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.world_size())?;
        let mut len = [bytes.len() as u64];
        let root_process = self.world.process_at_rank(root as i32);
        root_process.broadcast_into(&mut len[..]);
        bytes.resize(len[0] as usize, 0);
        root_process.broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        self.same_length(local.len(), "all_gather")?;
        let mut out = vec![0f32; local.len() * self.world_size()];
        self.world.all_gather_into(local, &mut out[..]);
        Ok(out)
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        self.world.barrier();
        Ok(())
    }
}
