"""Fused kernels for the CUDA path and the weight packing they pair with.

At batch 1 a decode step is bound by how many kernels run, not by arithmetic (ASSETS.md: 0.4 ms of
weight reads against ~5 ms for an unfused step), so each layer is cut to about ten kernels:

    add+RMSNorm | qkv GEMM | q/k-norm+RoPE | KV store | attention | o GEMM | add+RMSNorm |
    gate_up GEMM | SiLU*mul | down GEMM

The Triton kernels round to the model dtype at the same points as the eager PyTorch code they
replace (which computes each op in fp32 and rounds its result), so the CUDA path computes the same
function as the CPU path, op for op. The layers call them only for CUDA tensors; this module is
imported lazily, so a CPU install needs no Triton.

Also here: `gumbel_argmax`, the CUDA sampler's single pass over the vocabulary (temperature +
Gumbel-max, greedy rows included), and a small-batch GEMV with the SwiGLU activation fused into its
loads, which measured slower than cuBLAS on an H100 and is off unless OPENQWEN_GEMV=1.

Packing (`pack_model`) is module surgery from outside: q/k/v and gate/up weights are concatenated
into one matrix each, and the original `nn.Linear` weights become views of it, so checkpoint names,
`state_dict()` and memory use are unchanged while one GEMM replaces three (or two).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn


# -- RMSNorm, optionally fused with the residual add -------------------------------------------------
@triton.jit
def _rmsnorm_kernel(
    X, R, W, Y, R_out, stride_x, stride_r, stride_y, stride_ro, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
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
    _rmsnorm_kernel[(T,)](x, r, weight, y, r_out, x.stride(0), r.stride(0), y.stride(0), r_out.stride(0), eps,
                          N=N, BLOCK=block, HAS_RESIDUAL=residual is not None, num_warps=warps)
    return y if residual is None else (y, r_out)


# -- Qwen3 q/k RMSNorm + rotary embedding, in place --------------------------------------------------
@triton.jit
def _norm_rope_heads(X, W, Cos, Sin, t, stride_t, stride_h, eps,
                     NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr):
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


@triton.jit
def _qk_norm_rope_kernel(
    Q, K, Cos, Sin, Wq, Wk, stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st, eps,
    HQ: tl.constexpr, HK: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, HAS_NORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cos, sin = Cos + t * stride_ct, Sin + t * stride_st
    if tl.program_id(1) == 0:  # the query heads
        _norm_rope_heads(Q, Wq, cos, sin, t, stride_qt, stride_qh, eps, HQ, BLOCK_H, HALF, HAS_NORM)
    else:  # the key heads
        _norm_rope_heads(K, Wk, cos, sin, t, stride_kt, stride_kh, eps, HK, BLOCK_H, HALF, HAS_NORM)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: q [T, H, d], k [T, Hkv, d] (head rows contiguous); cos/sin [T, d]. Optional
    per-head RMSNorm modules (weight [d], eps) before the rotation."""
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
    _qk_norm_rope_kernel[(T, 2)](
        q, k, cos, sin, wq, wk, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0), eps,
        HQ=hq, HK=hk, BLOCK_H=triton.next_power_of_2(max(hq, hk)), HALF=half, HAS_NORM=has_norm,
        num_warps=4 if hq * d >= 2048 else 1,
    )
    return q, k


# -- SwiGLU activation over a packed [gate | up] projection ------------------------------------------
@triton.jit
def _silu_mul_kernel(X, Y, stride_x, stride_y, N: tl.constexpr, BLOCK: tl.constexpr):
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
    _silu_mul_kernel[(T, triton.cdiv(n, block))](x, y, x.stride(0), y.stride(0), N=n, BLOCK=block, num_warps=4)
    return y


# -- small-batch GEMV ------------------------------------------------------------------------------
@triton.jit
def _gemv_kernel(
    X, W, Bias, Y, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Y[m, n] = sum_k X[m, k] W[n, k] (+ bias) for M <= BLOCK_M rows: each program streams a
    [BLOCK_N, K] slice of W once. With SILU_MUL, X is [M, 2K] = [gate | up] and the GEMV reads
    silu(gate) * up (rounded as the eager code rounds) without materializing it."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x_ptr = X + offs_m[:, None] * stride_xm + offs_k[None, :]
        x_mask = m_mask[:, None] & k_mask[None, :]
        x = tl.load(x_ptr, mask=x_mask, other=0.0)
        if SILU_MUL:
            u = tl.load(x_ptr + K, mask=x_mask, other=0.0)
            g = x.to(tl.float32)
            x = ((g / (1.0 + tl.exp(-g))).to(x.dtype).to(tl.float32) * u.to(tl.float32)).to(x.dtype)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


GEMV_MAX_M = 8
# (BLOCK_N, BLOCK_K, num_warps, num_stages); which one wins (or cuBLAS) is measured per shape.
GEMV_CONFIGS = ((16, 256, 4, 3), (32, 256, 4, 3), (16, 512, 4, 2), (64, 128, 4, 4))
# Off by default: measured on an H100 (benchmarks/results/gpu_h100.md), this GEMV has no split-K,
# so the N = 1024 projections (o_proj, down_proj) get only 64 programs and ran at 27 us against
# cuBLAS's 7 us; OPENQWEN_GEMV=1 turns the per-shape selection back on for experiments.
GEMV_ENABLED = os.environ.get("OPENQWEN_GEMV", "") == "1"
_choices: dict[tuple, tuple | None] = {}
FORCE_GEMV: tuple | None = None  # tests: use this config everywhere (the interpreter cannot time)


def _gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_mul_input: bool, config: tuple) -> torch.Tensor:
    block_n, block_k, warps, stages = config
    M = x.shape[0]
    N, K = weight.shape
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, bias if bias is not None else weight, y, M, N, K, x.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return y


def _library_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_mul_input: bool) -> torch.Tensor:
    return F.linear(silu_mul(x) if silu_mul_input else x, weight, bias)


def _time_us(fn, weights: list[torch.Tensor], reps: int = 4) -> float:
    """Mean time of one call over `reps` passes through all `weights` (together larger than the
    L2 cache, as in a forward pass, where each layer's weights come from HBM: timing one weight
    over and over measures the cache and once picked a GEMV 4x slower in the model)."""
    for w in weights[:3]:
        fn(w)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        for w in weights:
            fn(w)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(weights))


def _pick(x, weight, bias, silu_mul_input) -> tuple | None:
    """The fastest of cuBLAS (None) and the GEMV configs for this shape, timed on the device."""
    if FORCE_GEMV is not None:
        return FORCE_GEMV
    if not x.is_cuda or not GEMV_ENABLED:
        return None
    l2 = torch.cuda.get_device_properties(x.device).L2_cache_size
    copies = max(2, -(-4 * l2 // (weight.numel() * weight.element_size())))
    weights = [weight.clone() for _ in range(copies)]
    best, best_us = None, _time_us(lambda w: _library_linear(x, w, bias, silu_mul_input), weights)
    for config in GEMV_CONFIGS:
        try:
            us = _time_us(lambda w: _gemv(x, w, bias, silu_mul_input, config), weights)
        except Exception:  # noqa: BLE001 (a config that does not compile here is not a candidate)
            continue
        if us < best_us * 0.97:
            best, best_us = config, us
    return best


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False) -> torch.Tensor:
    """F.linear for the fast path; with `silu_mul_input`, x is [M, 2K] = [gate | up] and the input
    is silu(gate) * up. With OPENQWEN_GEMV=1, at decode batch sizes (M <= 8, bf16/fp16) a Triton
    GEMV replaces cuBLAS where it measured faster for the shape (decided once per shape, outside
    graph capture), with the activation fused into its loads."""
    M = x.shape[0]
    if FORCE_GEMV is None and (not GEMV_ENABLED or x.dtype == torch.float32):
        return _library_linear(x, weight, bias, silu_mul_input)
    if x.dim() != 2 or not 0 < M <= GEMV_MAX_M or x.stride(1) != 1:
        return _library_linear(x, weight, bias, silu_mul_input)
    key = (M, *weight.shape, bias is not None, silu_mul_input, x.dtype)
    if key not in _choices:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return _library_linear(x, weight, bias, silu_mul_input)
        _choices[key] = _pick(x, weight, bias, silu_mul_input)
    config = _choices[key]
    if config is None:
        return _library_linear(x, weight, bias, silu_mul_input)
    return _gemv(x, weight, bias, silu_mul_input, config)


class FastLinear(nn.Linear):
    """An nn.Linear whose forward goes through `linear` (class swapped in by `pack_model`: same
    parameters, same state_dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# -- sampling: temperature + Gumbel-max over the vocabulary in one pass ------------------------------
@triton.jit
def _gumbel_argmax_partial(
    Logits, Temps, Seeds, Part_val, Part_idx, V, stride_l, chunk,
    NUM_PARTS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    temp = tl.load(Temps + row)
    seed = tl.load(Seeds + row)
    start = part * chunk
    end = tl.minimum(start + chunk, V)
    best_v = float("-inf")
    best_i = start
    for k0 in range(start, end, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < end
        x = tl.load(Logits + row.to(tl.int64) * stride_l + offs, mask=mask, other=float("-inf")).to(tl.float32)
        # Gumbel-max: argmax(x / T + G), G = -log(-log(U)), picks token i with probability
        # softmax(x / T)_i; the same race as argmax(p / E) with E ~ Exp(1). Greedy rows: T = 0.
        u = tl.minimum(tl.maximum(tl.rand(seed, offs), 1e-20), 1.0 - 1e-7)
        score = tl.where(temp > 0, x / tl.where(temp > 0, temp, 1.0) - tl.log(-tl.log(u)), x)
        score = tl.where(mask, score, float("-inf"))
        m = tl.max(score, 0)
        i = tl.argmax(score, 0)
        better = m > best_v
        best_i = tl.where(better, k0 + i, best_i)
        best_v = tl.where(better, m, best_v)
    tl.store(Part_val + row * NUM_PARTS + part, best_v)
    tl.store(Part_idx + row * NUM_PARTS + part, best_i)


@triton.jit
def _gumbel_argmax_merge(Part_val, Part_idx, Out, NUM_PARTS: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, NUM_PARTS)
    vals = tl.load(Part_val + row * NUM_PARTS + offs)
    best = tl.argmax(vals, 0)
    tl.store(Out + row, tl.load(Part_idx + row * NUM_PARTS + best))


def gumbel_argmax(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor, num_parts: int = 32) -> torch.Tensor:
    """logits [B, V] (any float dtype; -inf = filtered out), temperatures [B] fp32 (0: greedy),
    seeds [B] int64 (one Philox key per row and draw) -> sampled token ids [B] int64."""
    B, V = logits.shape
    assert logits.stride(1) == 1 and num_parts & (num_parts - 1) == 0
    block = min(1024, triton.next_power_of_2(triton.cdiv(V, num_parts)))
    chunk = triton.cdiv(triton.cdiv(V, num_parts), block) * block
    part_val = torch.empty(B, num_parts, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(B, num_parts, dtype=torch.int64, device=logits.device)
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    _gumbel_argmax_partial[(B, num_parts)](logits, temperatures, seeds, part_val, part_idx, V, logits.stride(0), chunk,
                                           NUM_PARTS=num_parts, BLOCK=block, num_warps=4)
    _gumbel_argmax_merge[(B,)](part_val, part_idx, out, NUM_PARTS=num_parts, num_warps=1)
    return out


# -- packing --------------------------------------------------------------------------------------
class PackedLinear:
    """One GEMM for several `nn.Linear`s that read the same input; returns their outputs split.
    A plain object, not a module: it owns no parameters, only views of the originals' storage."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.sizes = [lin.out_features for lin in linears]
        with torch.no_grad():
            self.weight = torch.cat([lin.weight for lin in linears])
            self.bias = torch.cat([lin.bias for lin in linears]) if linears[0].bias is not None else None
        start = 0
        for lin, size in zip(linears, self.sizes):  # the originals now alias the packed storage
            lin.weight = nn.Parameter(self.weight[start:start + size], requires_grad=False)
            if self.bias is not None:
                lin.bias = nn.Parameter(self.bias[start:start + size], requires_grad=False)
            start += size

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.packed(x).split(self.sizes, dim=-1)

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _plain_linears(module: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    linears = [getattr(module, n, None) for n in names]
    if not all(type(lin) is nn.Linear for lin in linears):  # quantized or replaced: leave alone
        return None
    if len({lin.in_features for lin in linears}) != 1 or len({lin.bias is None for lin in linears}) != 1:
        return None
    if len({(lin.weight.dtype, lin.weight.device) for lin in linears}) != 1:
        return None
    return linears


def pack_model(model: nn.Module) -> int:
    """Pack q/k/v (`qkv_packed`) and gate/up (`gate_up_packed`) wherever a module declares those
    slots and holds plain linears, and route o_proj/down_proj through `linear`. Returns the number
    of packs made."""
    made = 0
    for module in model.modules():
        for name in ("o_proj", "down_proj"):
            if type(getattr(module, name, None)) is nn.Linear:
                getattr(module, name).__class__ = FastLinear
        for slot, names in (("qkv_packed", ("q_proj", "k_proj", "v_proj")), ("gate_up_packed", ("gate_proj", "up_proj"))):
            if hasattr(module, slot) and getattr(module, slot) is None:
                linears = _plain_linears(module, names)
                if linears is not None:
                    setattr(module, slot, PackedLinear(linears))
                    made += 1
    return made
