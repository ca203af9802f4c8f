"""Packed q/k/v and gate/up weights, and the GEMMs of the CUDA path they run through.

Packing (`pack_model`) is module surgery from outside: q/k/v and gate/up weights are concatenated
into one matrix each, and the original `nn.Linear` weights become views of it, so checkpoint names,
`state_dict()` and memory use are unchanged while one GEMM replaces three (or two): at batch 1 a
decode step is bound by how many kernels run (see `fused_ops` for the rest of the per-layer cut).

The GEMMs go through `linear`: cuBLAS, or a small-batch Triton GEMV with the SwiGLU activation
fused into its loads, which measured slower than cuBLAS on an H100 and is off unless
OPENQWEN_GEMV=1. The model runner imports this module lazily, on the fast path only, so a CPU
install needs no Triton.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from .fused_ops import silu_mul


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
