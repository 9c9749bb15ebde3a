//! criterion benches of the siamese workspace, one module per topic (as candle's
//! `benches/bench_main.rs`). Run with `cargo bench -p siamese-benches`.

mod bench;

criterion::criterion_main!(
    bench::data::benches,
    bench::loss::benches,
    bench::model::benches,
    bench::search::benches
);
