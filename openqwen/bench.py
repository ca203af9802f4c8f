"""`openqwen bench`: load time, prefill and decode speed, peak memory, side by side with peers.

Each runtime runs in its own subprocess so that peak RSS and load time are its own. All of them
get the same weights, the same prompt token ids and greedy decoding with EOS ignored.
Timing: prefill = one generation of a single token; decode = (N-1) tokens over the time after the
first one, from a separate N-token run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .hardware import describe, peak_rss_mb, usable_cores

RUNTIMES = ("openqwen", "transformers", "llama-cpp")


def bench_prompt(num_tokens: int, vocab_size: int = 150000) -> list[int]:
    """A fixed, reproducible prompt of ordinary token ids (no special tokens)."""
    return [(1000 + 7919 * i) % vocab_size for i in range(num_tokens)]


def _time_openqwen(model: str, prompt: list[int], new_tokens: int, device: str | None, dtype: str | None,
                   quantize: str | None = None, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    from .engine.sampling_params import SamplingParams
    from .llm import LLM

    start = time.perf_counter()
    llm = LLM(model, device=device, dtype=dtype, enable_prefix_caching=False, quantize=quantize,
              kv_cache_dtype=kv_cache_dtype)
    load = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate([prompt[:16]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    first = None
    for out in llm.stream(prompt, params):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return {"load_s": load, "prefill_s": first - t0, "decode_s": end - first, "tokens": out.outputs[0].token_ids}


def _time_transformers(model: str, prompt: list[int], new_tokens: int, device: str | None, dtype: str | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype or "", torch.float32)
    path = Path(model)
    start = time.perf_counter()
    if path.suffix == ".gguf":
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    hf = hf.to(device or "cpu").eval()
    load = time.perf_counter() - start
    ids = torch.tensor([prompt], device=hf.device)
    kwargs = dict(do_sample=False, pad_token_id=151643, eos_token_id=None)  # pad id absent from the prompt
    hf.generation_config.eos_token_id = None
    with torch.inference_mode():
        hf.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        total = time.perf_counter() - t0
    return {"load_s": load, "prefill_s": prefill, "decode_s": total - prefill, "tokens": out[0, len(prompt):].tolist()}


def _time_llama_cpp(model: str, prompt: list[int], new_tokens: int, device: str | None, dtype: str | None) -> dict[str, Any]:
    from llama_cpp import Llama

    threads = usable_cores()
    start = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=max(2048, len(prompt) + new_tokens + 16), n_threads=threads, verbose=False)
    load = time.perf_counter() - start

    def run(count: int) -> tuple[float, list[int]]:
        llm.reset()
        tokens: list[int] = []
        t0 = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, reset=True):
            tokens.append(token)
            if len(tokens) == count:
                break
        return time.perf_counter() - t0, tokens

    run(4)  # warm-up
    prefill, _ = run(1)
    total, tokens = run(new_tokens)
    return {"load_s": load, "prefill_s": prefill, "decode_s": total - prefill, "tokens": tokens}


WORKERS = {"openqwen": _time_openqwen, "transformers": _time_transformers, "llama-cpp": _time_llama_cpp}


def worker_main(argv: list[str]) -> None:
    """Subprocess entry: time one runtime, print one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("runtime", choices=RUNTIMES)
    p.add_argument("model")
    p.add_argument("--prompt-tokens", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--quantize")
    p.add_argument("--kv-cache-dtype", default="auto")
    a = p.parse_args(argv)
    prompt = bench_prompt(a.prompt_tokens)
    if a.runtime == "openqwen":
        result = _time_openqwen(a.model, prompt, a.new_tokens, a.device, a.dtype, a.quantize, a.kv_cache_dtype)
    else:
        result = WORKERS[a.runtime](a.model, prompt, a.new_tokens, a.device, a.dtype)
    n = len(result["tokens"])
    # None where there is no decode to time: one new token, or (llama-cpp's two runs subtracted)
    # a difference lost in the noise
    decode = (n - 1) / result["decode_s"] if n > 1 and result["decode_s"] > 0 else None
    result.update(runtime=a.runtime, prompt_tokens=len(prompt), new_tokens=n,
                  prefill_tok_s=len(prompt) / result["prefill_s"], decode_tok_s=decode, peak_rss_mb=peak_rss_mb())
    print("BENCH " + json.dumps(result))


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .registry import resolve_model

    if args.prompt_tokens < 1 or args.new_tokens < 1:
        raise ValueError("--prompt-tokens and --new-tokens must be at least 1")
    peers = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in peers if p not in RUNTIMES[1:]]
    if unknown:
        raise ValueError(f"unknown peer {unknown[0]!r}; choose from {', '.join(RUNTIMES[1:])}")
    model = str(resolve_model(args.model))
    results = []
    for runtime in ["openqwen", *peers]:
        if runtime == "llama-cpp" and not model.endswith(".gguf"):
            continue
        cmd = [sys.executable, "-m", "openqwen.bench", runtime, model, "--prompt-tokens", str(args.prompt_tokens),
               "--new-tokens", str(args.new_tokens)] + (["--device", args.device] if args.device else []) + (
               ["--dtype", args.dtype] if args.dtype else []) + (
               ["--quantize", args.quantize] if runtime == "openqwen" and args.quantize else []) + (
               ["--kv-cache-dtype", args.kv_cache_dtype] if runtime == "openqwen" else [])
        print(f"running {runtime} ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            if runtime == "openqwen":  # the row every other one is compared with
                raise RuntimeError(f"openqwen failed: {last}")
            print(f"  {runtime} skipped: {last}", file=sys.stderr)
            continue
        results.append(json.loads(line[6:]))
    _report(results, args)
    return results


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    reference = results[0]["tokens"] if results else []
    print(f"\nmodel {args.model}; {args.prompt_tokens} prompt tokens, {args.new_tokens} new (greedy); {describe()}")
    print("| runtime | load s | prefill tok/s | decode tok/s | peak RSS MB | same tokens as openqwen |")
    print("|---|---|---|---|---|---|")
    for r in results:
        same = sum(a == b for a, b in zip(r["tokens"], reference))
        decode = "-" if r["decode_tok_s"] is None else f"{r['decode_tok_s']:.1f}"
        print(f"| {r['runtime']} | {r['load_s']:.1f} | {r['prefill_tok_s']:.1f} | {decode} | "
              f"{r['peak_rss_mb']:.0f} | {same}/{len(reference)} |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"hardware": describe(), "model": args.model, "results": results}, indent=1))


if __name__ == "__main__":
    worker_main(sys.argv[1:])
