"""Compile every Triton kernel of the CUDA path for an H100 (sm_90) on a machine without a GPU.

Run as a script by tests/test_triton_compile.py (in its own process: @triton.jit must not be in
interpreter mode). A stand-in Triton driver reports an sm_90 device, and every kernel launch stops
once Triton's compiler (with the ptxas its wheel ships) has built the cubin. The launches come from
the real code: decode and prefill forwards of Qwen3-, Qwen2.5- and odd-shaped layers through the
fast path (with a bf16 and an fp8 KV cache), on CPU tensors whose contents are never computed, plus
the sampler. Prints one JSON object: {"kernels": {name: {"variants": n, "pdl_asked": launched with
PDL=True, "pdl": its PTX waits on the grid dependency, "fp8": compiled for an fp8 cache
(QUANT=True), "local_bytes": the most local memory a variant uses}}}.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver
from triton.runtime.jit import JITFunction

H100 = GPUTarget("cuda", 90, 32)


class StandInDriver(DriverBase):
    """What JITFunction.run asks of a driver before it compiles; nothing here launches."""

    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError

    def get_current_target(self) -> GPUTarget:
        return H100

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0


def local_memory_bytes(cubin: bytes) -> int:
    """Per-thread local memory (register spills, stack arrays) of a cubin, from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return max((int(n) for n in re.findall(r"LOCAL:(\d+)", usage)), default=0)


def compile_only(record: dict) -> None:
    """Every launch compiles and returns without running; `record` collects what was built."""
    run = JITFunction.run

    def compile_and_stop(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        entry = record.setdefault(self.fn.__name__, {"variants": set(), "pdl_asked": False, "pdl": False,
                                                      "fp8": False, "local_bytes": 0})
        if kernel.hash not in entry["variants"]:
            entry["variants"].add(kernel.hash)
            entry["pdl_asked"] |= bool(kwargs.get("PDL"))
            entry["fp8"] |= bool(kwargs.get("QUANT"))
            entry["pdl"] |= "griddepcontrol.wait" in kernel.asm["ptx"]
            entry["local_bytes"] = max(entry["local_bytes"], local_memory_bytes(kernel.asm["cubin"]))
        return kernel

    JITFunction.run = compile_and_stop


def forward_steps(model_type: str, fp8_cache: bool = False, **shape) -> None:
    """One prefill chunk (with a cached prefix), then decode at batch 1 and 8 (split-K and not)."""
    from openqwen.config import ModelArgs
    from openqwen.engine.triton_sampler import gumbel_argmax
    from openqwen.layers import fused
    from openqwen.layers.attention import Attention, AttentionContext
    from openqwen.models import build_model

    args = ModelArgs(model_type=model_type, num_hidden_layers=1, vocab_size=4096, **shape)
    with torch.device("meta"):
        model = build_model(args)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    fused.pack_model(model)
    page, blocks = 16, 8
    cache = torch.empty(2, blocks, page, args.num_key_value_heads, args.head_dim,
                        dtype=torch.float8_e4m3fn if fp8_cache else torch.bfloat16)
    scales = torch.empty(2, blocks, page, args.num_key_value_heads)
    for layer in model.modules():
        if isinstance(layer, Attention):
            layer.k_cache, layer.v_cache = cache[0], cache[1]
            if fp8_cache:
                layer.k_scale, layer.v_scale = scales[0], scales[1]

    def step(query_lens: list[int], context_lens: list[int], splits: int = 1) -> None:
        tokens = sum(query_lens)
        ctx = AttentionContext(
            slot_mapping=torch.arange(tokens), block_tables=torch.arange(blocks).repeat(len(query_lens), 1),
            context_lens=torch.tensor(context_lens), query_lens=query_lens, context_lens_host=context_lens,
            block_size=page, cu_query_lens=torch.tensor([0, *query_lens]).cumsum(0, dtype=torch.int32),
            max_query_len=max(query_lens), decode_splits=splits)
        hidden = model(torch.zeros(tokens, dtype=torch.long), torch.arange(tokens), ctx)
        logits = model.compute_logits(hidden[-len(query_lens):])
        gumbel_argmax(logits, torch.ones(len(query_lens)), torch.zeros(len(query_lens), dtype=torch.long))

    with torch.no_grad():
        step([40], [56])
        step([1], [57], splits=16)
        step([1] * 8, [57] * 8)


def main() -> None:
    from openqwen.layers import attention, fused, pdl

    driver.set_active(StandInDriver())
    record: dict = {}
    compile_only(record)
    attention._TRITON_ON_CPU = True  # the fast path for CPU tensors; with this driver, compile only
    fused.GEMV_ON_CPU = True
    device_test = pdl.use_pdl
    for module in list(sys.modules.values()):  # PDL as on an H100 (use_pdl tests the tensor's device)
        if getattr(module, "use_pdl", None) is device_test:
            module.use_pdl = lambda t: True
    # Qwen3-0.6B's layer shapes (q/k norms, no biases), Qwen2.5-0.5B's (q/k/v biases, head_dim 64),
    # and a head_dim of 80, which the fused RoPE kernel does not take (RoPE and cache write apart)
    for fp8_cache in (False, True):
        forward_steps("qwen3", fp8_cache, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128, qk_norm=True, tie_word_embeddings=True)
        forward_steps("qwen2", fp8_cache, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                      num_key_value_heads=2, qkv_bias=True)
        forward_steps("qwen2", fp8_cache, hidden_size=640, intermediate_size=1792, num_attention_heads=8,
                      num_key_value_heads=2)
    print(json.dumps({"kernels": {name: {**entry, "variants": len(entry["variants"])}
                                  for name, entry in sorted(record.items())}}))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: this compiles the kernels")
    main()
