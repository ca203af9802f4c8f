"""From a model name or path to a ready engine: resolve, open the checkpoint, build, size the cache."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from .config import ModelArgs
from .kernels.quant import SUPPORTED_TYPES, QuantLinear
from .kernels.quant_embedding import QuantEmbedding
from .layers.attention import check_kv_cache_dtype
from .engine.llm_engine import LLMEngine
from .engine.model_runner import ModelRunner, kv_bytes_per_token
from .registry import resolve_model
from .tokenizer.tokenizer import Tokenizer
from .weights.errors import WeightsError
from .weights.gguf import GGUFFile, GGUFTensor
from .weights.loader import build_from_checkpoint
from .weights.safetensors_dir import SafetensorsDir

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# Published generation_config.json defaults per family, for checkpoints (GGUF) that carry none.
FAMILY_SAMPLING = {
    "qwen2": dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),
    "qwen3": dict(temperature=0.6, top_p=0.95, top_k=20),
}
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
QUANTIZE_MODES = (None, "none", "q8_0", "q4_k")
_DENSE_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
# Layers kept dense: the MoE routers are tiny and decide which experts run, so they stay exact.
_KEEP_DENSE = re.compile(r"(\.mlp\.gate|shared_expert_gate)$")


@dataclass
class LoadedModel:
    path: Path
    args: ModelArgs
    model: nn.Module
    tokenizer: Tokenizer
    engine: LLMEngine
    device: torch.device
    dtype: torch.dtype
    sampling_defaults: dict[str, Any]
    checkpoint: SafetensorsDir | GGUFFile


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU (bf16 matmuls are ~20x slower on AVX2 CPUs), bf16 on a GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return DTYPES[dtype]


def open_checkpoint(path: Path) -> SafetensorsDir | GGUFFile:
    if path.is_dir():
        return SafetensorsDir(path)
    if path.is_file():
        return GGUFFile(path)
    if path.exists():  # a device, a pipe, a socket
        raise WeightsError(f"{path}: not a model file or directory")
    raise WeightsError(f"{path}: no such file or directory")


def load_model(model: str, device: str | None = None, dtype: str | None = None, *, max_model_len: int | None = None,
               max_num_seqs: int = 64, max_num_batched_tokens: int = 2048, block_size: int = 16,
               kv_cache_gb: float | None = None, gpu_memory_utilization: float = 0.9,
               enable_prefix_caching: bool = True, quantize: str | None = None, enforce_eager: bool = False,
               kv_cache_dtype: str = "auto") -> LoadedModel:
    """`quantize`: None keeps GGUF-quantized weights quantized on the CPU (our kernels) and dense
    weights dense; "none" dequantizes everything to `dtype`; "q8_0" / "q4_k" quantize the dense
    linear weights of any checkpoint for the CPU kernels. `enforce_eager`: no CUDA graphs (otherwise
    the runner decides: on for CUDA unless OPENQWEN_ENFORCE_EAGER=1). `kv_cache_dtype`: "auto" (the
    model dtype) or "fp8" (half the cache bytes of bf16: twice the tokens, faster long-context
    decode on a GPU; on the CPU decode then leaves the native step for the PyTorch path)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; use one of none, q8_0, q4_k")
    # before the weights load, so a bad option costs no loading time
    check_kv_cache_dtype(kv_cache_dtype)
    _check_engine_sizes(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, block_size=block_size, kv_cache_gb=kv_cache_gb)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    path = resolve_model(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    checkpoint = open_checkpoint(path)
    args = ModelArgs.from_dict(checkpoint.config())
    if isinstance(checkpoint, GGUFFile):
        tokenizer = Tokenizer.from_gguf_metadata(checkpoint.tokenizer_data())
        tensors = ((t.name, t) for t in checkpoint.tensors())
        total = None
        generation: dict[str, Any] = {}
        eos = checkpoint.generation_eos_ids()
    else:
        tokenizer = Tokenizer.from_dir(path)
        tensors, total = checkpoint.tensors(), checkpoint.num_tensors()
        generation = checkpoint.generation_config()
        eos = generation.get("eos_token_id", args.eos_token_id)
    eos_ids = sorted({*([eos] if isinstance(eos, int) else eos or []), *args.eos_token_id})
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [tokenizer.eos_token_id]
    replacer = _quantized_module_factory(quantize, dev, torch_dtype)
    net = build_from_checkpoint(args, tensors, path, dev, torch_dtype, total, replacer)

    max_len = min(max_model_len or args.max_position_embeddings, args.max_position_embeddings)
    num_blocks = _num_kv_blocks(kv_bytes_per_token(net, torch_dtype, kv_cache_dtype) * block_size, dev, block_size,
                                max_len, kv_cache_gb, gpu_memory_utilization)
    runner = ModelRunner(net, dev, torch_dtype, block_size, num_blocks, kv_cache_dtype=kv_cache_dtype,
                         use_cuda_graphs=False if enforce_eager else None,
                         release_pages=checkpoint.release_pages if isinstance(checkpoint, GGUFFile) else None)
    engine = LLMEngine(runner, tokenizer, eos_ids, max_len, max_num_seqs, max(max_num_batched_tokens, block_size),
                       enable_prefix_caching)
    sampling = {k: generation[k] for k in _SAMPLING_KEYS if k in generation}
    if not sampling:
        sampling = dict(FAMILY_SAMPLING["qwen3" if args.model_type.startswith("qwen3") else "qwen2"])
    return LoadedModel(path, args, net, tokenizer, engine, dev, torch_dtype, sampling, checkpoint)


def _check_engine_sizes(**sizes: float | None) -> None:
    """Every size given (None: the default) must be positive."""
    for name, value in sizes.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _num_kv_blocks(per_block: int, device: torch.device, block_size: int, max_len: int,
                   kv_cache_gb: float | None, gpu_memory_utilization: float) -> int:
    """Blocks of `per_block` bytes for the paged KV cache: a GPU takes its share of free memory; a
    CPU takes kv_cache_gb (default 4 GiB, committed only as it fills). At least one full-length
    sequence must fit."""
    if kv_cache_gb is not None:
        budget = kv_cache_gb * 2**30
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - total * (1 - gpu_memory_utilization)
    else:
        budget = 4 * 2**30
    blocks = int(budget // per_block)
    needed = -(-max_len // block_size) + 1
    if blocks < needed:
        if kv_cache_gb is not None or device.type == "cuda":
            raise ValueError(
                f"the KV cache fits {blocks * block_size} tokens, less than max_model_len {max_len}; "
                "lower max_model_len or give the cache more memory"
            )
        blocks = needed
    return blocks


def _quantized_module_factory(quantize: str | None, device: torch.device, dtype: torch.dtype):
    """The loader's module-surgery hook: which weights become QuantLinear / QuantEmbedding.

    Quantized kernels run on the CPU only; on a GPU everything is dequantized to `dtype`.
    """
    if quantize == "none" or device.type != "cpu":
        return None
    target = {"q8_0": GGMLQuantizationType.Q8_0, "q4_k": GGMLQuantizationType.Q4_K}.get(quantize or "")

    def replace(module_name: str, tensor) -> nn.Module | None:
        if _KEEP_DENSE.search(module_name) or len(tensor.shape) != 2:
            return None
        rows, cols = tensor.shape
        if isinstance(tensor, GGUFTensor) and tensor.qtype not in _DENSE_TYPES:
            if tensor.qtype not in SUPPORTED_TYPES:
                return None  # dequantized to dtype at load instead
            table = QuantLinear.from_raw(tensor.raw, tensor.qtype, rows, cols)
        elif target is not None and cols % GGML_QUANT_SIZES[target][0] == 0:
            table = QuantLinear.from_float(tensor.dequantize(torch.float32) if isinstance(tensor, GGUFTensor)
                                           else tensor.float(), target)
        else:
            return None
        return QuantEmbedding(table, dtype) if module_name.endswith("embed_tokens") else table

    return replace
