//! Checks every collective of [`siamese_collective::Mpi`] across real processes:
//! `mpiexec -n N siamese-mpi-selftest`. Each rank prints one line; any wrong value
//! exits non-zero (and the launcher ends the job).

use siamese_collective::{Collective, Mpi};

fn main() {
    let mpi = Mpi::init().expect("MPI is initialised once");
    let (rank, world) = (mpi.rank(), mpi.world_size());
    let fail = |what: &str| -> ! {
        eprintln!("rank {rank} of {world}: {what}");
        std::process::exit(1);
    };
    if !Mpi::launched() && world > 1 {
        fail("more than one rank, but no launcher variables");
    }
    // All-reduce of a buffer larger than one message: sum over r of (r + 1) * i.
    let n = 100_000;
    let mut values: Vec<f32> = (0..n)
        .map(|i| (rank + 1) as f32 * (i % 97) as f32)
        .collect();
    mpi.all_reduce_sum(&mut values).unwrap();
    let factor = (world * (world + 1) / 2) as f32;
    if values
        .iter()
        .enumerate()
        .any(|(i, &v)| v != factor * (i % 97) as f32)
    {
        fail("all_reduce_sum gave a wrong sum");
    }
    let root = world - 1;
    let mut b: Vec<f32> = vec![rank as f32; 5];
    mpi.broadcast(&mut b, root).unwrap();
    if b != vec![root as f32; 5] {
        fail("broadcast did not give the root's values");
    }
    let mut bytes = if rank == 0 {
        b"{\"steps\": 20}".to_vec()
    } else {
        Vec::new()
    };
    mpi.broadcast_bytes(&mut bytes, 0).unwrap();
    if bytes != b"{\"steps\": 20}" {
        fail("broadcast_bytes did not give rank 0's bytes");
    }
    let gathered = mpi.all_gather(&[rank as f32, -(rank as f32)]).unwrap();
    let expected: Vec<f32> = (0..world).flat_map(|r| [r as f32, -(r as f32)]).collect();
    if gathered != expected {
        fail("all_gather is not every rank's values in rank order");
    }
    // A length mismatch is an error on every rank, not a hang or a crash.
    let mut wrong = vec![0f32; 3 + usize::from(rank == 0)];
    if mpi.broadcast(&mut wrong, 0).is_ok() {
        fail("a broadcast into a buffer of another length passed");
    }
    if mpi.all_gather(&wrong).is_ok() {
        fail("an all_gather of different lengths passed");
    }
    if mpi.all_reduce_sum(&mut wrong).is_ok() {
        fail("an all_reduce_sum of different lengths passed");
    }
    mpi.barrier().unwrap();
    println!("rank {rank} of {world}: ok");
}
