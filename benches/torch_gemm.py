"""torch.mm on the matrix products of one training step, for the GEMM ceiling.

Reads the products that `throughput gemm` printed (one JSON line each, on stdin) and
times torch.mm on each shape, the transposes as views as the kernels read them, on the
whole batch at once (PyTorch's own convolutions run them that way, as one product per
layer), with the threads torch is given. Prints one JSON line per product and one for
all of them together, in GFLOP/s, so both tools are compared on the same shapes in
the same session:

    target/release/throughput gemm > /tmp/gemm.jsonl
    python3 benches/torch_gemm.py --threads 2 < /tmp/gemm.jsonl
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def median_ms(reps, f):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_model():
    """The CPU's model name, as the Rust side's `machine.cpu` reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total_gflop, total_ms = 0.0, 0.0
    for line in sys.stdin:
        p = json.loads(line)
        if "m" not in p:
            continue
        # The whole batch as one product: the chunks stacked along m (forward, input
        # gradient: rows are output pixels, channels last) or along k (weight gradient).
        m, k, n, chunks = p["m"], p["k"], p["n"], p["chunks"]
        if "weight grad" in p["product"] and chunks > 1:
            k *= chunks
        else:
            m *= chunks
        a = torch.rand(m, k)
        b = torch.rand(k, n)
        ms = median_ms(args.reps, lambda: torch.mm(a, b))
        gflop = 2.0 * m * k * n / 1e9
        total_gflop += gflop
        total_ms += ms
        print(json.dumps({"product": p["product"], "m": m, "k": k, "n": n, "ms": ms,
                          "gflop_per_s": gflop / ms * 1e3}))
    print(json.dumps({"product": "all of one step", "gflop": total_gflop, "ms": total_ms,
                      "gflop_per_s": total_gflop / total_ms * 1e3,
                      "torch": torch.__version__, "threads": args.threads,
                      "cpu": cpu_model()}))


if __name__ == "__main__":
    main()
