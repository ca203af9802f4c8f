"""Packed q/k/v and gate/up weights, and the GEMMs of the CUDA path they run through.

Packing (`pack_model`) is module surgery from outside: q/k/v and gate/up weights are concatenated
into one matrix each, and the original `nn.Linear` weights become views of it, so checkpoint names,
`state_dict()` and memory use are unchanged while one GEMM replaces three (or two): at batch 1 a
decode step is bound by how many kernels run (see `fused_ops` for the rest of the per-layer cut).

The GEMMs go through `linear`: at decode batch sizes (up to GEMV_MAX_M rows) a Triton GEMV, with
the SwiGLU activation fused into its loads and launched with PDL (`pdl`); larger batches use
cuBLAS. Measured on an H100 at M = 1 for the Qwen3-0.6B shapes, in a CUDA graph: 4.0 / 2.6 / 5.2 /
3.4 us for qkv / o / gate_up / down against cuBLAS's 5.7 / 5.8 / 7.1 / 6.9 us, and 102 us against
112 us for the 151936-row output head. The model runner imports this module lazily, on the fast
path only, so a CPU install needs no Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from .fused_ops import silu_mul
from .pdl import launch_options, pdl_start, use_pdl


# -- small-batch GEMV ------------------------------------------------------------------------------
@triton.jit
def _input_tile(X, offs, K, SILU_MUL: tl.constexpr):
    """One row's inputs at `offs` in fp32; with SILU_MUL the row is [gate | up] and the input is
    silu(gate) * up, rounded to the model dtype at the same points as the eager code."""
    mask = offs < K
    x = tl.load(X + offs, mask=mask, other=0.0)
    if SILU_MUL:
        u = tl.load(X + K + offs, mask=mask, other=0.0)
        g = x.to(tl.float32)
        x = ((g / (1.0 + tl.exp(-g))).to(x.dtype).to(tl.float32) * u.to(tl.float32)).to(x.dtype)
    return x.to(tl.float32)


@triton.jit
def _accumulate(acc, w, X, stride_xm, offs, K, M: tl.constexpr, BLOCK_M: tl.constexpr, SILU_MUL: tl.constexpr):
    """acc[m, n] += sum_k w[n, k] x[m, k] over one weight tile, for each of the M input rows."""
    wf = w.to(tl.float32)
    m_ids = tl.arange(0, BLOCK_M)[:, None]
    for m in tl.static_range(M):
        part = tl.sum(wf * _input_tile(X + m * stride_xm, offs, K, SILU_MUL)[None, :], 1)
        acc += tl.where(m_ids == m, part[None, :], 0.0)
    return acc


@triton.jit
def _gemv_kernel(
    X, W, Bias, Y, N, K, stride_xm, stride_wn, stride_ym,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Y[m, n] = sum_k X[m, k] W[n, k] (+ bias) for M small: each program streams a [BLOCK_N, K]
    slice of W once, in [BLOCK_N, BLOCK_K] tiles, and reuses each tile for all M rows."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn
    offs = tl.arange(0, BLOCK_K)
    # Weights never depend on earlier kernels: the first tile is in flight before the wait.
    w = tl.load(w_rows + offs[None, :], mask=n_mask[:, None] & (offs < K)[None, :], other=0.0)
    pdl_start(PDL)
    acc = _accumulate(tl.zeros([BLOCK_M, BLOCK_N], tl.float32), w, X, stride_xm, offs, K, M, BLOCK_M, SILU_MUL)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        ks = k0 + offs
        w = tl.load(w_rows + ks[None, :], mask=n_mask[:, None] & (ks < K)[None, :], other=0.0)
        acc = _accumulate(acc, w, X, stride_xm, ks, K, M, BLOCK_M, SILU_MUL)
    if HAS_BIAS:
        acc += tl.load(Bias + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    m_ids = tl.arange(0, BLOCK_M)
    tl.store(Y + m_ids[:, None] * stride_ym + rows[None, :], acc.to(Y.dtype.element_ty),
             mask=(m_ids[:, None] < M) & n_mask[None, :])


GEMV_MAX_M = 8
GEMV_ON_CPU = False  # tests: run the GEMV on CPU tensors too (interpreted, so slow; off by default)
GEMV_TILE = 8192  # weight elements per program and tile: 32 per thread with 8 warps (fastest measured)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False) -> torch.Tensor:
    """x [M, K] (or [M, 2K] = [gate | up] with `silu_mul_input`), M <= GEMV_MAX_M -> [M, N]."""
    M = x.shape[0]
    N, K = weight.shape
    assert 0 < M <= GEMV_MAX_M and x.stride(1) == 1 and weight.stride(1) == 1
    block_k = min(triton.next_power_of_2(K), 4096)
    block_n = max(1, GEMV_TILE // block_k)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    pdl = use_pdl(x)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, bias if bias is not None else weight, y, N, K, x.stride(0), weight.stride(0), y.stride(0),
        M=M, BLOCK_M=triton.next_power_of_2(M), HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input,
        BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl, num_warps=8 if block_n * block_k >= 8192 else 4,
        **launch_options(pdl),
    )
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False) -> torch.Tensor:
    """F.linear for the fast path; with `silu_mul_input`, x is [M, 2K] = [gate | up] and the input
    is silu(gate) * up. Up to GEMV_MAX_M rows run through `gemv`, more through cuBLAS."""
    small = x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_M and x.stride(1) == 1 and weight.stride(1) == 1
    if small and (x.is_cuda or GEMV_ON_CPU):
        return gemv(x, weight, bias, silu_mul_input)
    return F.linear(silu_mul(x) if silu_mul_input else x, weight, bias)


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
    slots and holds plain linears, and route o_proj, down_proj and the output head through
    `linear`. Returns the number of packs made."""
    made = 0
    for module in model.modules():
        for name in ("o_proj", "down_proj", "lm_head"):
            if type(getattr(module, name, None)) is nn.Linear:
                getattr(module, name).__class__ = FastLinear
        for slot, names in (("qkv_packed", ("q_proj", "k_proj", "v_proj")), ("gate_up_packed", ("gate_proj", "up_proj"))):
            if hasattr(module, slot) and getattr(module, slot) is None:
                linears = _plain_linears(module, names)
                if linears is not None:
                    setattr(module, slot, PackedLinear(linears))
                    made += 1
    return made
