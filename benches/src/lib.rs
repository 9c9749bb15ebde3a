//! Holder crate for the workspace's criterion benches (`benches/bench_main.rs`); it has
//! no library code of its own.
