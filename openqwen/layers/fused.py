"""Packed q/k/v and gate/up weights, and the GEMMs of the CUDA path they run through.

Packing (`pack_model`) is module surgery from outside: q/k/v and gate/up weights are concatenated
into one matrix each, and the original `nn.Linear` weights become views of it, so checkpoint names,
`state_dict()` and memory use are unchanged while one GEMM replaces three (or two): at batch 1 a
decode step is bound by how many kernels run (see `fused_ops` for the rest of the per-layer cut).

The GEMMs go through `linear`: at decode batch sizes (up to GEMV_MAX_M rows) a Triton GEMV, with the
SwiGLU activation fused into its loads and launched with PDL (`pdl`); larger batches use cuBLAS. At
one row the decoder layer's add+RMSNorm moves into the GEMV that reads it too (`DeferredRMSNorm`):
two kernels fewer per layer. Measured on an H100 at M = 1 for the Qwen3-0.6B shapes, in a CUDA
graph: 4.0 / 2.6 / 5.2 / 3.4 us for qkv / o / gate_up / down against cuBLAS's 5.7 / 5.8 / 7.1 /
6.9 us, and 102 us against 112 us for the 151936-row output head. The model runner imports this
module lazily, on the fast path only, so a CPU install needs no Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from .fused_ops import silu_mul
from .pdl import launch_options, pdl_start, use_pdl


# -- small-batch GEMV ------------------------------------------------------------------------------
@dataclass
class DeferredRMSNorm:
    """weight * rmsnorm(x + residual), not yet computed: the GEMV that reads it computes it from x
    and the residual as it loads its inputs, so at decode batch sizes the norm costs no kernel of
    its own (made by `defer_rmsnorm`). That GEMV also stores x + residual, the new residual
    stream, into `residual_out`."""

    x: torch.Tensor
    residual: torch.Tensor | None
    weight: torch.Tensor
    eps: float
    residual_out: torch.Tensor | None

    @property
    def shape(self) -> torch.Size:
        return self.x.shape


@triton.jit
def _input_tile(X, R, Norm_w, inv, offs, K, SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """One row's inputs at `offs` in fp32, rounded to the model dtype at the same points as the
    eager code: with SILU_MUL the row is [gate | up] and the input silu(gate) * up; with NORM the
    input is Norm_w * (x + r) * inv, `inv` being the row's 1 / rms (fused_ops' RMSNorm kernel)."""
    mask = offs < K
    x = tl.load(X + offs, mask=mask, other=0.0)
    if SILU_MUL:
        u = tl.load(X + K + offs, mask=mask, other=0.0)
        g = x.to(tl.float32)
        x = ((g / (1.0 + tl.exp(-g))).to(x.dtype).to(tl.float32) * u.to(tl.float32)).to(x.dtype)
    if NORM:
        if HAS_RESIDUAL:
            x = (x.to(tl.float32) + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        y = (x.to(tl.float32) * inv).to(x.dtype)
        x = (y.to(tl.float32) * tl.load(Norm_w + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
    return x.to(tl.float32)


@triton.jit
def _inverse_rms(X, R, R_out, stride_xm, stride_rm, stride_om, K, eps,
                 M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """[BLOCK_M] 1 / rms(x + r) of the M input rows; program 0 also stores x + r to R_out."""
    inv = tl.zeros([BLOCK_M], tl.float32)
    m_ids = tl.arange(0, BLOCK_M)
    offs = tl.arange(0, BLOCK_K)
    first = tl.program_id(0) == 0
    for m in tl.static_range(M):
        squares = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs
            mask = ks < K
            x = tl.load(X + m * stride_xm + ks, mask=mask, other=0.0)
            if HAS_RESIDUAL:
                r = tl.load(R + m * stride_rm + ks, mask=mask, other=0.0)
                x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
                tl.store(R_out + m * stride_om + ks, x, mask=mask & first)
            squares += x.to(tl.float32) * x.to(tl.float32)
        inv = tl.where(m_ids == m, tl.rsqrt(tl.sum(squares, 0) / K + eps), inv)
    return inv


@triton.jit
def _accumulate(acc, w, X, R, Norm_w, inv, stride_xm, stride_rm, offs, K, M: tl.constexpr, BLOCK_M: tl.constexpr,
                SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """acc[m, n] += sum_k w[n, k] x[m, k] over one weight tile, for each of the M input rows."""
    wf = w.to(tl.float32)
    m_ids = tl.arange(0, BLOCK_M)[:, None]
    for m in tl.static_range(M):
        inv_m = tl.sum(tl.where(tl.arange(0, BLOCK_M) == m, inv, 0.0), 0)
        x = _input_tile(X + m * stride_xm, R + m * stride_rm, Norm_w, inv_m, offs, K, SILU_MUL, NORM, HAS_RESIDUAL)
        part = tl.sum(wf * x[None, :], 1)
        acc += tl.where(m_ids == m, part[None, :], 0.0)
    return acc


@triton.jit
def _gemv_kernel(
    X, W, Bias, Y, R, R_out, Norm_w, N, K, stride_xm, stride_wn, stride_ym, stride_rm, stride_om, eps,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Y[m, n] = sum_k X[m, k] W[n, k] (+ bias) for M small: each program streams a [BLOCK_N, K]
    slice of W once, in [BLOCK_N, BLOCK_K] tiles, and reuses each tile for all M rows. With NORM
    the input rows are RMS-normalized first (see DeferredRMSNorm), each program for itself."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn
    offs = tl.arange(0, BLOCK_K)
    # Weights never depend on earlier kernels: the first tile is in flight before the wait.
    w = tl.load(w_rows + offs[None, :], mask=n_mask[:, None] & (offs < K)[None, :], other=0.0)
    pdl_start(PDL)
    inv = tl.zeros([BLOCK_M], tl.float32)
    if NORM:
        inv = _inverse_rms(X, R, R_out, stride_xm, stride_rm, stride_om, K, eps, M, BLOCK_M, BLOCK_K, HAS_RESIDUAL)
    acc = _accumulate(tl.zeros([BLOCK_M, BLOCK_N], tl.float32), w, X, R, Norm_w, inv, stride_xm, stride_rm, offs, K,
                      M, BLOCK_M, SILU_MUL, NORM, HAS_RESIDUAL)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        ks = k0 + offs
        w = tl.load(w_rows + ks[None, :], mask=n_mask[:, None] & (ks < K)[None, :], other=0.0)
        acc = _accumulate(acc, w, X, R, Norm_w, inv, stride_xm, stride_rm, ks, K, M, BLOCK_M, SILU_MUL, NORM,
                          HAS_RESIDUAL)
    if HAS_BIAS:
        acc += tl.load(Bias + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    m_ids = tl.arange(0, BLOCK_M)
    tl.store(Y + m_ids[:, None] * stride_ym + rows[None, :], acc.to(Y.dtype.element_ty),
             mask=(m_ids[:, None] < M) & n_mask[None, :])


GEMV_MAX_M = 8
GEMV_ON_CPU = False  # tests: run the GEMV on CPU tensors too (interpreted, so slow; off by default)
GEMV_TILE = 8192  # weight elements per program and tile: 32 per thread with 8 warps (fastest measured)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu_mul_input: bool = False,
         norm: DeferredRMSNorm | None = None) -> torch.Tensor:
    """x [M, K] (or [M, 2K] = [gate | up] with `silu_mul_input`), M <= GEMV_MAX_M -> [M, N].
    With `norm` (whose x is `x`), the input is that norm's output."""
    M = x.shape[0]
    N, K = weight.shape
    assert 0 < M <= GEMV_MAX_M and x.stride(1) == 1 and weight.stride(1) == 1
    block_k = min(triton.next_power_of_2(K), 4096)
    block_n = max(1, GEMV_TILE // block_k)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    residual = norm.residual if norm is not None else None
    r_in, r_out = (residual, norm.residual_out) if residual is not None else (x, x)
    pdl = use_pdl(x)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, bias if bias is not None else weight, y, r_in, r_out, norm.weight if norm is not None else x,
        N, K, x.stride(0), weight.stride(0), y.stride(0), r_in.stride(0), r_out.stride(0),
        norm.eps if norm is not None else 0.0,
        M=M, BLOCK_M=triton.next_power_of_2(M), HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input,
        NORM=norm is not None, HAS_RESIDUAL=residual is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl, num_warps=8 if block_n * block_k >= 8192 else 4,
        **launch_options(pdl),
    )
    return y


def _gemv_fits(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether `linear` runs these rows through `gemv`."""
    return (x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_M and x.stride(1) == 1 and (x.is_cuda or GEMV_ON_CPU)
            and (weight is None or weight.stride(1) == 1))


# Rows up to which a norm is left to the GEMV. Every GEMV program reads all M input rows, and with
# the norm inside it reads x and the residual instead of the normed rows: more input traffic from
# L2 against one kernel fewer on the step's critical path. Measured on an H100 (decode graph
# replay, Qwen3-0.6B shapes): at M = 1 834 us with the norm inside against 876 us with the norm
# kernel; at M = 2 1,116 against 1,052. So one row only.
NORM_IN_GEMV_MAX_M = 1


def defer_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm's result as a DeferredRMSNorm when the GEMV it feeds can compute it (same shapes as
    `fused_ops.rmsnorm`: the norm, or (norm, new residual)); None when it cannot."""
    if not (_gemv_fits(x) and x.shape[0] <= NORM_IN_GEMV_MAX_M and weight.dtype == x.dtype
            and (residual is None or residual.stride(1) == 1)):
        return None
    residual_out = torch.empty_like(x) if residual is not None else None
    deferred = DeferredRMSNorm(x, residual, weight, eps, residual_out)
    return deferred if residual is None else (deferred, residual_out)


def linear(x: torch.Tensor | DeferredRMSNorm, weight: torch.Tensor, bias: torch.Tensor | None = None,
           silu_mul_input: bool = False) -> torch.Tensor:
    """F.linear for the fast path; with `silu_mul_input`, x is [M, 2K] = [gate | up] and the input
    is silu(gate) * up. Up to GEMV_MAX_M rows run through `gemv`, more through cuBLAS. A
    DeferredRMSNorm input (made only where the GEMV takes it) is normalized inside the GEMV."""
    if isinstance(x, DeferredRMSNorm):
        assert _gemv_fits(x.x, weight) and not silu_mul_input
        return gemv(x.x, weight, bias, norm=x)
    if _gemv_fits(x, weight):
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
    `linear`. A decoder layer's norm whose only reader is a packed GEMM then leaves its work to
    that GEMM (`RMSNorm.feeds_gemv`). Returns the number of packs made."""
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
    for layer in model.modules():
        for norm, reader, slot in (("input_layernorm", "self_attn", "qkv_packed"),
                                   ("post_attention_layernorm", "mlp", "gate_up_packed")):
            if hasattr(layer, norm) and getattr(getattr(layer, reader, None), slot, None) is not None:
                getattr(layer, norm).feeds_gemv = True
    return made
