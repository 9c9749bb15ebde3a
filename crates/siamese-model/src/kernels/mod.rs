//! Fused CPU kernels for the tower's layers, as candle custom ops with their own
//! backward passes: [`Conv2dRelu`] (im2col + GEMM, bias and ReLU folded in),
//! [`LinearAct`] (one GEMM, bias and optional ReLU folded in) and [`DropoutBatchNorm`]
//! (a hidden layer's dropout and training-mode batch norm, without candle's temporaries)
//! and [`MaxPoolRelu`] (the end of a Snell block).
//!
//! They compute what the plain candle layers compute (the tests compare both, forward
//! and backward, on random inputs) with fewer passes over memory and fewer
//! allocations. They run on CPU f32 tensors; [`fused_path`] tells the tower when to use
//! them, and every other device or dtype keeps the plain candle layers, so the same
//! model trains on a GPU through candle's `cuda` feature.

mod batch_norm;
mod conv;
mod gemm;
mod linear;
mod pool;

pub use batch_norm::{batch_statistics, DropoutBatchNorm};
pub use conv::{conv_stack_inference, Conv2dRelu, ConvGeometry};
/// The bounds-checked matrix product the kernels run on, public so that benchmarks
/// measure exactly what a step does.
pub use gemm::{matmul, Mat};
pub use linear::LinearAct;
pub use pool::MaxPoolRelu;

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Storage};

/// `max(x, floor)` that keeps a NaN, as PyTorch's and candle's ReLU do. `f32::max`
/// returns the other argument for a NaN, so a layer whose products overflowed (inf -
/// inf) gave 0 instead of NaN, and a broken model answered with constant, finite
/// embeddings.
#[inline(always)]
fn relu_to(x: f32, floor: f32) -> f32 {
    if x < floor {
        floor
    } else {
        x
    }
}

/// Whether the fused kernels serve tensors of this device and dtype.
pub fn fused_path(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// The contiguous f32 elements of a CPU storage under `layout`.
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: the fused kernels take f32 tensors")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: the fused kernels take contiguous tensors")
    };
    Ok(&data[start..end])
}

/// [`cpu_f32`] for a tensor's storage, which must be on the CPU.
fn cpu_f32_tensor<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => cpu_f32(s, layout, what),
        _ => bail!("{what}: the fused kernels run on the CPU"),
    }
}

/// Runs candle's own element-wise ops on the calling thread, leaving the cores to
/// rayon's workers (which run the fused kernels). Returns whether the setting took.
///
/// candle 0.11 parallelises large element-wise ops on a thread pool of its own, besides
/// rayon's, and its workers spin for 25,000 rounds after each op before they sleep. On
/// 2 cores that spinning takes turns away from the fused kernels' threads: measured
/// (`throughput train 20`, alternating) 524 and 559 training pairs/s with candle's
/// pool, 616 and 612 without it. The setting is candle's `CANDLE_NUM_THREADS=1`, read
/// once when candle first needs its pool, so binaries call this first thing in
/// `main` (`siamese` does); a value the user has set is kept.
///
/// # Safety
///
/// candle offers no setting but the environment, and changing the environment races
/// with any other thread reading it (undefined behaviour in libc): call this before
/// the program starts a thread, as the first line of `main`.
#[allow(unsafe_code)]
pub unsafe fn candle_ops_on_calling_thread() -> bool {
    const VAR: &str = "CANDLE_NUM_THREADS";
    if std::env::var_os(VAR).is_some() {
        return false;
    }
    std::env::set_var(VAR, "1");
    true
}

/// Asks the C allocator to keep freed memory for reuse rather than hand it back to the
/// operating system. Returns whether the setting took.
///
/// Every training step frees and reallocates the same large buffers (activations,
/// gradients: `fc1`'s alone is 25 MB). With glibc's defaults those come from fresh
/// `mmap`s or a heap top that is trimmed on every free, so each step faults in and
/// zeroes hundreds of megabytes of pages and pays the TLB shootdowns of giving them
/// back: measured on 2 cores (`throughput train 20`), 381 training pairs/s with glibc's
/// defaults and 518 with this call, peak memory 234 and 241 MiB (the buffers are reused
/// instead of multiplied). Process-wide, so it is
/// for binaries to call once at start (`siamese` does); a no-op off glibc.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Allocations below 1 GiB come from the heap, and its free top is kept.
        const LIMIT: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock, and
        // both parameters are documented as safe to change at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
