"""Quantized matmul throughput at the default model's shapes (Qwen2.5-Coder-0.5B, hidden 896).

For each GGUF type and weight shape [N, K]: microseconds per QuantLinear call and the weight bytes
streamed per second, next to fp32 F.linear on the dequantized weight in the same run. Weights are
cycled through enough copies to exceed the last-level cache, so the numbers are DRAM-bound as in a
real decode step. Also measures the fixed cost of one call and, for prefill, where the int8 kernels
stop beating dequantize-then-sgemm.

    python benchmarks/bench_quant_kernels.py [--threads 2] [--min-time 0.3] [--isa avx2 --out F]
Writes benchmarks/results/quant_kernels_cpu.json and prints markdown tables. --isa times another
kernel table the CPU has (e.g. avx2 on an AVX-512 machine, whose default is avx512-vnni), for a
side-by-side run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from openqwen.kernels import quant as kq
from openqwen.kernels.quant import QuantLinear

Q = GGMLQuantizationType
# (N, K): q/o projections, k/v projections, gate/up, down, output head.
SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]
TYPES = [Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
CACHE_FLUSH_BYTES = 96 << 20  # > 2x a 32 MiB L3
RESULTS = Path(__file__).parent / "results" / "quant_kernels_cpu.json"


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Random quants with fp16 scales in a realistic range (speed does not depend on values)."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, k // block, size), dtype=np.uint8)
    scale = np.full((n, k // block), 0.01, np.float16).view(np.uint8).reshape(n, -1, 2)
    if qtype == Q.Q6_K:
        raw[..., 208:210] = scale
    else:
        raw[..., 0:2] = scale
    return torch.from_numpy(raw.reshape(n, -1))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_calls(fns: list, min_time: float) -> float:
    """Median seconds per call, cycling through `fns` (one per weight copy)."""
    for fn in fns[:2]:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fns[i % len(fns)]()
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(times)


def copies_for(nbytes: int) -> int:
    return max(1, -(-CACHE_FLUSH_BYTES // nbytes))


def bench_decode(types: list[GGMLQuantizationType], tokens: list[int], min_time: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        dense = [torch.randn(n, k) * 0.02 for _ in range(copies_for(4 * n * k))]
        for t in tokens:
            x = torch.randn(t, k)
            dense_s = time_calls([lambda w=w: F.linear(x, w) for w in dense], min_time)
            for qtype in types:
                if k % GGML_QUANT_SIZES[qtype][0]:
                    continue  # K-quants need rows of whole 256-value super-blocks
                raw = random_raw(qtype, n, k, rng)
                copies = copies_for(raw.numel())
                layers = [QuantLinear.from_raw(raw.clone(), qtype, n, k) for _ in range(copies)]
                s = time_calls([lambda m=m: m(x) for m in layers], min_time)
                rows.append({
                    "N": n, "K": k, "T": t, "type": qtype.name, "weight_bytes": raw.numel(),
                    "us": s * 1e6, "GBps": raw.numel() / s / 1e9,
                    "f32_linear_us": dense_s * 1e6, "f32_linear_GBps": 4 * n * k / dense_s / 1e9,
                    "speedup_vs_f32": dense_s / s,
                })
                print(f"  {qtype.name:5s} [{n:6d}, {k:4d}] T={t}: {s * 1e6:9.1f} us "
                      f"{rows[-1]['GBps']:6.2f} GB/s (F.linear fp32 {dense_s * 1e6:9.1f} us)", flush=True)
                del layers  # the copies of the largest shape take ~100 MB
    return rows


def bench_overhead(min_time: float) -> dict:
    """Fixed cost of a call: a 1x32 Q8_0 weight, so the arithmetic is negligible."""
    layer = QuantLinear.from_raw(random_raw(Q.Q8_0, 1, 32, np.random.default_rng(0)), Q.Q8_0, 1, 32)
    x = torch.randn(1, 32)
    y = torch.empty(1, 1)
    out = {"QuantLinear_us": time_calls([lambda: layer(x)], min_time) * 1e6,
           "F.linear_1x32_us": time_calls([lambda: F.linear(x, torch.ones(1, 32))], min_time) * 1e6}
    if kq.native_available():
        args = (int(Q.Q8_0), layer.qweight.data_ptr(), x.data_ptr(), y.data_ptr(), 1, 1, 32)
        out["native_call_us"] = time_calls([lambda: kq._native.mul_mat(*args)], min_time) * 1e6
        # Smallest weight that uses the pool: cost of waking and joining the workers.
        big = QuantLinear.from_raw(random_raw(Q.Q8_0, 64, 1024, np.random.default_rng(0)), Q.Q8_0, 64, 1024)
        xb = torch.randn(1, 1024)
        threads = kq.get_num_threads()
        per_threads = {}
        for n in sorted({1, threads}):
            kq.set_num_threads(n)
            per_threads[n] = time_calls([lambda: big(xb)], min_time) * 1e6
        kq.set_num_threads(threads)
        out["pool_64x1024_q8_0_us_by_threads"] = per_threads
    return out


def bench_prefill(
    qtype: GGMLQuantizationType, n: int, k: int, tokens: list[int], min_time: float
) -> list[dict]:
    """Native int8 kernels vs dequantizing the weight then fp32 sgemm, as T grows."""
    layer = QuantLinear.from_raw(random_raw(qtype, n, k, np.random.default_rng(0)), qtype, n, k)
    rows = []
    for t in tokens:
        x = torch.randn(t, k)
        native_s = time_calls([lambda: layer(x)], min_time)
        deq_s = time_calls([lambda: F.linear(x, layer.dequantize())], min_time)
        rows.append({"type": qtype.name, "N": n, "K": k, "T": t, "native_us": native_s * 1e6,
                     "dequant_sgemm_us": deq_s * 1e6, "native_GFLOPs": 2 * t * n * k / native_s / 1e9})
        print(f"  prefill {qtype.name} [{n}, {k}] T={t}: native {native_s * 1e3:8.2f} ms, "
              f"dequantize+F.linear {deq_s * 1e3:8.2f} ms", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| shape [N, K] | T | type | µs/call | GB/s | F.linear fp32 µs | F.linear GB/s | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']}x{r['K']} | {r['T']} | {r['type']} | {r['us']:.1f} | {r['GBps']:.2f} | "
                     f"{r['f32_linear_us']:.1f} | {r['f32_linear_GBps']:.2f} | {r['speedup_vs_f32']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=kq.get_num_threads())
    parser.add_argument("--types", default=",".join(t.name for t in TYPES))
    parser.add_argument("--tokens", default="1,8", help="activation rows T for the decode table")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--no-prefill", action="store_true")
    parser.add_argument("--isa", help="kernel table to time, e.g. avx2 or scalar (default: the CPU's best)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.isa and not (kq.native_available() and kq._native.set_isa(args.isa)):
        parser.error(f"--isa {args.isa}: not a kernel table this build has for this CPU (it uses {kq.native_isa()})")

    kq.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    types = [Q[name] for name in args.types.split(",")]
    print(f"native={kq.native_available()} isa={kq.native_isa()} threads={kq.get_num_threads()}",
          flush=True)
    result = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                    "isa": kq.native_isa(), "loadavg_before": os.getloadavg()},
        "overhead": bench_overhead(args.min_time),
        "decode": bench_decode(types, [int(t) for t in args.tokens.split(",")], args.min_time),
    }
    if not args.no_prefill:
        result["prefill"] = (bench_prefill(Q.Q8_0, 4864, 896, [16, 64, 256], args.min_time)
                             + bench_prefill(Q.Q4_K, 896, 4864, [16, 64, 256], args.min_time))
    print("\n" + markdown(result["decode"]))
    print("\noverhead:", json.dumps(result["overhead"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
