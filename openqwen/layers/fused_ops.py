"""Triton kernels for the per-token steps between a layer's GEMMs on the CUDA path.

At batch 1 a decode step is bound by how many kernels run, not by arithmetic (ASSETS.md: 0.4 ms of
weight reads against ~5 ms for an unfused step), so each layer is cut to about ten kernels:

    add+RMSNorm | qkv GEMM | q/k-norm+RoPE | KV store | attention | o GEMM | add+RMSNorm |
    gate_up GEMM | SiLU*mul | down GEMM

This module holds the norm, RoPE and SiLU*mul ones (`fused` the GEMMs, `triton_attention` the rest).
Fewer run than listed: the RoPE kernel also does the KV store, and at decode batch sizes the GEMVs
in `fused` take SiLU*mul into their loads, and at one or two rows the add+RMSNorm as well: six
kernels a layer at batch 1. They round to the model dtype at the same points as the eager PyTorch
code they replace (which computes each op in fp32 and rounds its result), so the CUDA path computes
the same function as the CPU path, op for op. The layers call them only for CUDA tensors and import
this module lazily, so a CPU install needs no Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from .pdl import launch_options, pdl_start, use_pdl
from .triton_attention import checked_scales, fp8_scale


# -- RMSNorm, optionally fused with the residual add -------------------------------------------------
@triton.jit
def _rmsnorm_kernel(
    X, R, W, Y, R_out, stride_x, stride_r, stride_y, stride_ro, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr,
):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # x + residual, rounded to the model dtype as the eager add does; that sum is the new residual
        x = (x.to(tl.float32) + tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(R_out + row * stride_ro + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, 0) / N
    y = (xf * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(W + offs, mask=mask, other=0.0)
    tl.store(Y + row * stride_y + offs, (y.to(tl.float32) * w.to(tl.float32)).to(Y.dtype.element_ty), mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, N] -> weight * norm(x); with a residual: (weight * norm(x + residual), x + residual)."""
    T, N = x.shape
    block = triton.next_power_of_2(N)
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty(T, N, dtype=out_dtype, device=x.device)
    r_out = torch.empty_like(x) if residual is not None else y
    r = residual if residual is not None else x
    warps = 1 if block <= 512 else 4 if block <= 4096 else 8
    pdl = use_pdl(x)
    _rmsnorm_kernel[(T,)](x, r, weight, y, r_out, x.stride(0), r.stride(0), y.stride(0), r_out.stride(0), eps,
                          N=N, BLOCK=block, HAS_RESIDUAL=residual is not None, PDL=pdl, num_warps=warps,
                          **launch_options(pdl))
    return y if residual is None else (y, r_out)


# -- Qwen3 q/k RMSNorm + rotary embedding, in place; optionally the KV cache write --------------------
@triton.jit
def _norm_rope_heads(X, W, Cos, Sin, t, stride_t, stride_h, eps,
                     NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr):
    """Token t's heads of X, normalized (HAS_NORM) and rotated, written back; returns the two halves."""
    heads = tl.arange(0, BLOCK_H)
    offs = tl.arange(0, HALF)
    mask = heads[:, None] < NUM_HEADS
    ptr = X + t * stride_t + heads[:, None] * stride_h + offs[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)  # [heads, d/2]: first halves
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0)
    if HAS_NORM:
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        inv = tl.rsqrt((tl.sum(a * a, 1) + tl.sum(b * b, 1)) / (2 * HALF) + eps)[:, None]
        w1 = tl.load(W + offs).to(tl.float32)[None, :]
        w2 = tl.load(W + HALF + offs).to(tl.float32)[None, :]
        x1 = ((a * inv).to(x1.dtype).to(tl.float32) * w1).to(x1.dtype)
        x2 = ((b * inv).to(x2.dtype).to(tl.float32) * w2).to(x2.dtype)
    # cos/sin rows are [c, c] and [s, s] (the halves repeat), already rounded to the model dtype.
    c = tl.load(Cos + offs).to(tl.float32)[None, :]
    s = tl.load(Sin + offs).to(tl.float32)[None, :]
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    # x * cos + rotate_half(x) * sin, each product rounded as in the eager code
    y1 = ((a * c).to(x1.dtype).to(tl.float32) + (-b * s).to(x1.dtype).to(tl.float32)).to(x1.dtype)
    y2 = ((b * c).to(x1.dtype).to(tl.float32) + (a * s).to(x1.dtype).to(tl.float32)).to(x1.dtype)
    tl.store(ptr, y1, mask=mask)
    tl.store(ptr + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def _qk_norm_rope_kernel(
    Q, K, V, Cos, Sin, Wq, Wk, K_cache, V_cache, K_scale, V_scale, Slots,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_st, eps,
    HQ: tl.constexpr, HK: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr,
    STORE: tl.constexpr, QUANT: tl.constexpr, PDL: tl.constexpr,
):
    pdl_start(PDL)
    t = tl.program_id(0).to(tl.int64)
    cos, sin = Cos + t * stride_ct, Sin + t * stride_st
    if tl.program_id(1) == 0:  # the query heads
        _norm_rope_heads(Q, Wq, cos, sin, t, stride_qt, stride_qh, eps, HQ, BLOCK_H, HALF, HAS_NORM)
    else:  # the key heads, and with STORE the token's keys and values into its cache slot (-1: none)
        k1, k2 = _norm_rope_heads(K, Wk, cos, sin, t, stride_kt, stride_kh, eps, HK, BLOCK_H, HALF, HAS_NORM)
        if STORE:
            slot = tl.load(Slots + t).to(tl.int64)
            heads = tl.arange(0, BLOCK_H)[:, None]
            offs = tl.arange(0, HALF)[None, :]
            mask = (heads < HK) & (slot >= 0)
            row = slot * (HK * 2 * HALF) + heads * (2 * HALF) + offs  # cache [blocks, page, Hkv, d], contiguous
            v = V + t * stride_vt + heads * stride_vh + offs
            v1, v2 = tl.load(v, mask=mask, other=0.0), tl.load(v + HALF, mask=mask, other=0.0)
            _store_halves(k1, k2, K_cache + row, K_scale + slot * HK + heads, mask, HALF, QUANT)
            _store_halves(v1, v2, V_cache + row, V_scale + slot * HK + heads, mask, HALF, QUANT)


@triton.jit
def _store_halves(x1, x2, Cache_row, Scale_row, mask, HALF: tl.constexpr, QUANT: tl.constexpr):
    """Head rows given as their two halves [heads, d/2] into the cache; with QUANT as fp8 with one
    scale per row (Scale_row and mask: [heads, 1]), as `triton_attention.store_kv` does."""
    if QUANT:
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        inv, scale = fp8_scale(tl.maximum(tl.max(tl.abs(a), 1), tl.max(tl.abs(b), 1)))
        x1, x2 = a * inv[:, None], b * inv[:, None]
        tl.store(Scale_row, scale[:, None], mask=mask)
    tl.store(Cache_row, x1.to(Cache_row.dtype.element_ty), mask=mask)
    tl.store(Cache_row + HALF, x2.to(Cache_row.dtype.element_ty), mask=mask)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 kv_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: q [T, H, d], k [T, Hkv, d] (head rows contiguous); cos/sin [T, d]. Optional
    per-head RMSNorm modules (weight [d], eps) before the rotation. With `kv_cache` = (v, k_cache,
    v_cache, slot_mapping) the same kernel also writes the rotated keys and v into the cache rows
    `slot_mapping` (what `triton_attention.store_kv` does, fp8 with `kv_scales` too), one kernel
    fewer per layer."""
    T, hq, d = q.shape
    hk = k.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos.stride(1) == 1 and sin.stride(1) == 1 and d % 2 == 0
    if T == 0:
        return q, k
    has_norm = q_norm is not None
    wq = q_norm.weight if has_norm else cos
    wk = k_norm.weight if has_norm else cos
    eps = q_norm.eps if has_norm else 0.0
    half = d // 2
    assert half == triton.next_power_of_2(half), "head_dim must be a power of two on the fused path"
    if kv_cache is not None:
        v, k_cache, v_cache, slots = kv_cache
        assert v.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
        k_scale, v_scale = checked_scales(k_cache, kv_scales)
    else:
        v, k_cache, v_cache, slots = k, k, k, cos  # unused
        k_scale = v_scale = k
    pdl = use_pdl(q)
    _qk_norm_rope_kernel[(T, 2)](
        q, k, v, cos, sin, wq, wk, k_cache, v_cache, k_scale, v_scale, slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0), eps,
        HQ=hq, HK=hk, BLOCK_H=triton.next_power_of_2(max(hq, hk)), HALF=half, HAS_NORM=has_norm,
        STORE=kv_cache is not None, QUANT=kv_scales is not None, PDL=pdl, num_warps=4 if hq * d >= 2048 else 1,
        **launch_options(pdl),
    )
    return q, k


# -- SwiGLU activation over a packed [gate | up] projection ------------------------------------------
@triton.jit
def _silu_mul_kernel(X, Y, stride_x, stride_y, N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    u = tl.load(X + row * stride_x + N + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # F.silu, rounded
    tl.store(Y + row * stride_y + offs, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2N] = [gate | up] -> silu(gate) * up [T, N]."""
    T, two_n = x.shape
    n = two_n // 2
    y = torch.empty(T, n, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    pdl = use_pdl(x)
    _silu_mul_kernel[(T, triton.cdiv(n, block))](x, y, x.stride(0), y.stride(0), N=n, BLOCK=block, PDL=pdl,
                                                 num_warps=4, **launch_options(pdl))
    return y
