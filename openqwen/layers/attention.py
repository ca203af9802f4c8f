"""Attention over a paged KV cache.

The model runner builds one `AttentionContext` per step and passes it down explicitly. Every step is
a flat batch of sequences: sequence i contributes `query_lens[i]` new tokens whose positions are the
last ones of its `context_lens[i]` cached tokens. Decode is the case query_len == 1.

The KV cache of a layer is two tensors [num_blocks, block_size, kv_heads, head_dim]; a token's
slot is block_id * block_size + offset. This module applies the rotary embeddings to the new
queries and keys, writes the new keys/values into their slots, then attends each query to its
sequence's context (causal within the new tokens).

The cache holds the model dtype, or with kv_cache_dtype "fp8" float8 e4m3 with one fp32 scale per
token and KV head (amax / 448, set as the row is written; [num_blocks, block_size, kv_heads]).
Decode attention reads the whole context every step, so at large batches it is bound by reading
the cache, and fp8 halves those bytes (vLLM's `--kv-cache-dtype fp8`). Attention then sees keys and
values as the cache holds them, also where it could use the fresh ones (prefill, scoring), so every
path computes the same function.

On CUDA (with Triton installed) the same steps run as Triton kernels: RoPE and the cache store in
one (`fused_ops.qk_norm_rope`), paged decode attention and variable-length paged prefill attention
(`triton_attention`); they read only device tensors, so a decode step can be captured in a CUDA
graph. The CPU path is plain PyTorch.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_HAS_TRITON = importlib.util.find_spec("triton") is not None
# OPENQWEN_NO_TRITON=1 keeps CUDA tensors on the PyTorch code (for comparisons and debugging).
_TRITON_OFF = os.environ.get("OPENQWEN_NO_TRITON", "") not in ("", "0")
# Tests only: set True (with TRITON_INTERPRET=1) to run the Triton path on CPU tensors, interpreted.
_TRITON_ON_CPU = False


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3 value
KV_CACHE_DTYPES = ("auto", "fp8")


def check_kv_cache_dtype(name: str) -> None:
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown kv_cache_dtype {name!r}; use one of {', '.join(KV_CACHE_DTYPES)}")


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., d] -> (fp8 [..., d], fp32 scales [...]): each row scaled so its largest |value| is 448.
    The Triton store kernels compute the same: x * (448 / amax) rounded to nearest, scale amax / 448."""
    xf = x.float()
    amax = xf.abs().amax(-1).clamp_min(1e-12)
    return (xf * (FP8_MAX / amax)[..., None]).to(FP8), amax / FP8_MAX


def dequantize_kv(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scales[..., None]).to(dtype)


def fast_path(x: torch.Tensor) -> bool:
    """Whether the layers run their Triton kernels for this tensor (CUDA with Triton)."""
    return (x.is_cuda or _TRITON_ON_CPU) and _HAS_TRITON and not _TRITON_OFF


@dataclass
class AttentionContext:
    slot_mapping: torch.Tensor | None  # [T] int64: cache slot of each new token (-1: none); None: no cache (scoring)
    block_tables: torch.Tensor  # [B, max_blocks] int64 or int32 (padded with 0)
    context_lens: torch.Tensor  # [B] int64: tokens in cache after this step (cached + new)
    query_lens: list[int]  # host copy, per sequence
    context_lens_host: list[int]  # host copy of context_lens
    block_size: int
    # Device-side metadata for the Triton kernels (built by the model runner on CUDA):
    cu_query_lens: torch.Tensor | None = None  # [B+1] int32: offsets of each sequence's new tokens
    max_query_len: int = 0
    decode_splits: int = 1  # split-K factor of the decode kernel (fixed per CUDA graph)

    @property
    def decode_only(self) -> bool:
        return all(n == 1 for n in self.query_lens)


class Attention(nn.Module):
    """Cache write + scaled dot-product attention with grouped KV heads (GQA)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.k_cache = torch.empty(0)  # set by the model runner
        self.v_cache = torch.empty(0)
        self.k_scale: torch.Tensor | None = None  # [blocks, block_size, Hkv] fp32 when the cache is fp8
        self.v_scale: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext,
                rope: tuple[torch.Tensor, torch.Tensor], q_norm: nn.Module | None = None,
                k_norm: nn.Module | None = None) -> torch.Tensor:
        """q [T, H, d], k/v [T, Hkv, d] -> [T, H*d]. Rotary embeddings first (`rope`: cos, sin
        [T, d]; after Qwen3's per-head q/k norms when given): on CUDA they share a kernel with
        the cache write."""
        from .rope import apply_rotary_qk  # here: rope.py imports this module

        use_cache = ctx.slot_mapping is not None and self.k_cache.numel() > 0
        if use_cache and fast_path(q):
            return self._forward_triton(q, k, v, ctx, rope, q_norm, k_norm)
        q, k = apply_rotary_qk(q, k, rope, q_norm, k_norm)
        if self.k_scale is not None:
            k, v = self._store_fp8(k, v, ctx.slot_mapping if use_cache else None)
        elif use_cache:
            self.k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, ctx.slot_mapping, k)
            self.v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, ctx.slot_mapping, v)
        if use_cache and ctx.decode_only:
            out = self._decode(q, ctx)
        else:
            out = self._prefill(q, k, v, ctx)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)

    def _forward_triton(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext,
                        rope: tuple[torch.Tensor, torch.Tensor], q_norm: nn.Module | None,
                        k_norm: nn.Module | None) -> torch.Tensor:
        from . import triton_attention as ta
        from .rope import apply_rotary_qk, rope_kernel_fits

        if rope_kernel_fits(q, k):
            from .fused_ops import qk_norm_rope

            qk_norm_rope(q, k, *rope, q_norm, k_norm, kv_cache=(v, self.k_cache, self.v_cache, ctx.slot_mapping),
                         kv_scales=self._scales())
        else:
            q, k = apply_rotary_qk(q, k, rope, q_norm, k_norm)
            ta.store_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping, self._scales())
        if ctx.decode_only:
            out = ta.decode_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.context_lens, self.scale,
                                      ctx.decode_splits, kv_scales=self._scales())
        else:
            cu, max_q = ctx.cu_query_lens, ctx.max_query_len
            if cu is None:  # a context built without device metadata
                lens = torch.tensor([0] + ctx.query_lens, dtype=torch.int32)
                cu, max_q = lens.cumsum(0, dtype=torch.int32).to(q.device), max(ctx.query_lens)
            out = ta.prefill_attention(q, self.k_cache, self.v_cache, ctx.block_tables, cu, ctx.context_lens, max_q,
                                       self.scale, kv_scales=self._scales())
        return out.view(q.shape[0], self.num_heads * self.head_dim)

    def _scales(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.k_scale is None else (self.k_scale, self.v_scale)

    def _store_fp8(self, k: torch.Tensor, v: torch.Tensor,
                   slots: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize the new keys and values, write them to `slots` (None: no cache), and return
        them as the cache holds them."""
        (kq, ks), (vq, vs) = quantize_kv(k), quantize_kv(v)
        if slots is not None:
            for cache, scales, rows, row_scales in ((self.k_cache, self.k_scale, kq, ks),
                                                    (self.v_cache, self.v_scale, vq, vs)):
                # through uint8: PyTorch has no index_copy_ for float8 on the CPU
                flat = cache.view(torch.uint8).view(-1, self.num_kv_heads, self.head_dim)
                flat.index_copy_(0, slots, rows.view(torch.uint8))
                scales.view(-1, self.num_kv_heads).index_copy_(0, slots, row_scales)
        return dequantize_kv(kq, ks, k.dtype), dequantize_kv(vq, vs, v.dtype)

    def _cached(self, index: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V blocks `index` (any shape of block ids) -> [*index.shape, block_size, Hkv, d]."""
        k, v = self.k_cache[index], self.v_cache[index]
        if self.k_scale is not None:
            k, v = dequantize_kv(k, self.k_scale[index], dtype), dequantize_kv(v, self.v_scale[index], dtype)
        return k, v

    def _gather(self, block_table: torch.Tensor, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence's first `length` cached K and V rows: [length, Hkv, d] each."""
        k, v = self._cached(block_table[:-(-length // self.k_cache.shape[1])], dtype)
        return k.flatten(0, 1)[:length], v.flatten(0, 1)[:length]

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """One SDPA call per sequence; a sequence with a cached prefix reads its keys from the cache."""
        outputs, start = [], 0
        for i, (q_len, ctx_len) in enumerate(zip(ctx.query_lens, ctx.context_lens_host)):
            qi = q[start:start + q_len]
            if ctx_len == q_len:
                ki, vi = k[start:start + q_len], v[start:start + q_len]
            else:
                ki, vi = self._gather(ctx.block_tables[i], ctx_len, q.dtype)
            outputs.append(self._sdpa(qi, ki, vi, causal_offset=ctx_len - q_len))
            start += q_len
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_offset: int) -> torch.Tensor:
        """q [L, H, d], k/v [S, Hkv, d]; query i sees keys j <= i + causal_offset."""
        group = self.num_heads // self.num_kv_heads
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # heads first
        if group > 1:
            k = k.repeat_interleave(group, dim=0)
            v = v.repeat_interleave(group, dim=0)
        # A batch dimension of one: 4-D inputs reach PyTorch's fused CPU kernel, 3-D ones the
        # unfused math path (5x slower for 1,000 tokens on 2 cores).
        q, k, v = q[None], k[None], v[None]
        if causal_offset == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            rows = torch.arange(q.shape[2], device=q.device)[:, None] + causal_offset
            mask = torch.arange(k.shape[2], device=q.device)[None, :] <= rows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return out[0].transpose(0, 1)

    def _decode(self, q: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """One query per sequence against its padded context: grouped matmuls, softmax in fp32."""
        batch, group = q.shape[0], self.num_heads // self.num_kv_heads
        max_len = max(ctx.context_lens_host)
        blocks = -(-max_len // ctx.block_size)
        table = ctx.block_tables[:, :blocks]
        k, v = self._cached(table, q.dtype)
        # [B, S, Hkv, d] -> [B, Hkv, S, d]
        k = k.flatten(1, 2)[:, :max_len].transpose(1, 2)
        v = v.flatten(1, 2)[:, :max_len].transpose(1, 2)
        qg = q.view(batch, self.num_kv_heads, group, self.head_dim)
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * self.scale  # [B, Hkv, g, S]
        if batch > 1 or max_len != ctx.context_lens_host[0]:
            pad = torch.arange(max_len, device=q.device)[None, :] >= ctx.context_lens[:, None]
            scores.masked_fill_(pad[:, None, None, :], float("-inf"))
            # Padding rows come from blocks of other sequences or never-written memory: zero them,
            # since a weight of 0 times a NaN there would still be NaN.
            v = v.masked_fill(pad[:, None, :, None], 0)
        probs = scores.softmax(dim=-1).to(v.dtype)
        return torch.matmul(probs, v).view(batch, self.num_heads, self.head_dim)
