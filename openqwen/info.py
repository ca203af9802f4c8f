"""`openqwen info`: what a checkpoint holds, read from headers only (no weights are loaded)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .config import ModelArgs
from .loading import open_checkpoint
from .registry import resolve_model
from .weights.gguf import GGUFFile


def _safetensors_summary(files) -> tuple[int, Counter, int]:
    """(parameter count, tensors per dtype, bytes) from the safetensors headers."""
    from safetensors import safe_open

    params, kinds, size = 0, Counter(), 0
    for file in files:
        size += file.stat().st_size
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                count = 1
                for dim in piece.get_shape():
                    count *= dim
                params += count
                kinds[piece.get_dtype()] += 1
    return params, kinds, size


def describe_model(name: str) -> dict[str, Any]:
    path = resolve_model(name)
    checkpoint = open_checkpoint(path)
    args = ModelArgs.from_dict(checkpoint.config())
    info: dict[str, Any] = {"path": str(path), "architecture": args.model_type}
    if isinstance(checkpoint, GGUFFile):
        details = checkpoint.describe()
        info["format"] = "GGUF"
        info.update({k: v for k, v in details.items() if k not in info})
    else:
        params, kinds, size = _safetensors_summary(checkpoint.files)
        info.update(format="safetensors", parameters=f"{params / 1e9:.3f} B", tensor_types=dict(kinds),
                    file_size=f"{size / 2**30:.2f} GiB")
    info.update(
        layers=args.num_hidden_layers, hidden_size=args.hidden_size,
        heads=f"{args.num_attention_heads} query / {args.num_key_value_heads} KV, head_dim {args.head_dim}",
        vocab_size=args.vocab_size, context=args.max_position_embeddings,
        rope=f"theta {args.rope_theta:g}" + (f", {args.rope_scaling['rope_type']} x{args.rope_scaling.get('factor')}" if args.rope_scaling else ""),
        tied_embeddings=args.tie_word_embeddings,
    )
    if args.num_experts:
        info["experts"] = f"{args.num_experts} ({args.num_experts_per_tok} active)"
    kv_token = 2 * args.num_hidden_layers * args.num_key_value_heads * args.head_dim
    info["kv_cache_per_token"] = f"{kv_token * 2 / 1024:.1f} KiB bf16, {kv_token * 4 / 1024:.1f} KiB fp32"
    return info
