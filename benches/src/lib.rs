//! Holder crate for the workspace's criterion benches (`benches/bench_main.rs`) and the
//! `throughput` binary; its only library code says which machine a figure came from.

/// The machine a speed figure was measured on, for the bench JSON: a figure counts on
/// its machine only (CPUs here differ from session to session).
///
/// `cpu` is `/proc/cpuinfo`'s model name; `simd` the vector extensions this process
/// detects at run time; `gemm_kernel` the f32 microkernel the `gemm` crate dispatches
/// to on this CPU (its own rule: AVX-512 when compiled in and present, else FMA/AVX2,
/// else scalar); `threads` the worker threads of the rayon pool our kernels and
/// candle's matmuls run on.
pub fn machine() -> serde_json::Value {
    serde_json::json!({
        "cpu": cpu_model(),
        "simd": simd_features(),
        "gemm_kernel": gemm_kernel(),
        "threads": rayon::current_num_threads(),
        "logical_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(target_arch = "x86_64")]
fn simd_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    macro_rules! check {
        ($($name:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($name) { found.push($name); })*
        };
    }
    check!(
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avx512fp16"
    );
    // AMX is not in std's detection list on every toolchain: read the kernel's flags.
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|i| i.contains(" amx_tile")) {
        found.push("amx-tile");
    }
    found
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_features() -> Vec<&'static str> {
    Vec::new()
}

/// gemm 0.19's dispatch rule (gemm-common's `init_gemm_fn`), with the workspace's
/// `x86-v4` feature on.
fn gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "fma (AVX2)"
        } else {
            "scalar"
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "not x86_64: see gemm's dispatch"
    }
}
