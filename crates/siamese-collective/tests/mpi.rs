//! The MPI implementation across real processes: `mpiexec -n 2` and `-n 3` run
//! `siamese-mpi-selftest` on this machine. Only with the `mpi` feature (CI turns it on;
//! see `.ci/run`).
#![cfg(feature = "mpi")]

use std::process::Command;

#[test]
fn every_collective_is_right_across_processes() {
    for ranks in ["2", "3"] {
        let out = Command::new("mpiexec")
            .args(["-n", ranks, env!("CARGO_BIN_EXE_siamese-mpi-selftest")])
            .output()
            .expect("mpiexec (Debian: apt-get install mpich libmpich-dev)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ranks} ranks: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = ranks.parse().unwrap();
        for rank in 0..n {
            assert!(text.contains(&format!("rank {rank} of {n}: ok")), "{text}");
        }
    }
}
