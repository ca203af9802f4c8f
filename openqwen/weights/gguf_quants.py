"""Dequantize GGML tensor data into torch tensors.

gguf's numpy dequantizers are the reference, but they need 4-8 s for the default 0.5B model on two
cores (Q5_0 alone is most of it). The torch kernels below cover the types that model and the 1.5B
one use (Q8_0, Q5_0, Q4_K, Q6_K) with the same float32 operations in the same order, so their
output is bit-identical (the tests check this), and run over cache-sized chunks: 1.5 s for the
whole 0.5B model on two idle cores. Other types fall back to gguf's numpy code.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as np_dequantize

Q = GGMLQuantizationType

SUPPORTED_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})

_PLAIN = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}

# Values per chunk. Measured on 2 pinned cores: 2^18-2^20 are best (whole tensors are 2-4x slower, out
# of cache); the larger end also keeps the count of parallel regions low, which matters when other
# processes compete for the cores (each region waits for every thread).
_CHUNK_VALUES = 1 << 20

_NIBBLES = torch.tensor([0, 4], dtype=torch.uint8)
_CRUMBS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_BITS = torch.arange(8, dtype=torch.uint8)


def dequantize(
    raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A new tensor of `shape` from `raw`, the tensor's bytes (rows of `shape[-1]` values each)."""
    if qtype in _PLAIN:
        return torch.from_numpy(raw).view(_PLAIN[qtype]).reshape(shape).to(dtype, copy=True)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    kernel = _KERNELS.get(qtype)
    if kernel is None:
        rows = raw.reshape(-1, shape[-1] // block_size * type_size)
        return torch.from_numpy(np_dequantize(rows, qtype)).reshape(shape).to(dtype)
    blocks = torch.from_numpy(raw).view(-1, type_size)
    out = torch.empty(blocks.shape[0], block_size, dtype=dtype)
    step = max(1, _CHUNK_VALUES // block_size)
    for start in range(0, blocks.shape[0], step):
        target = out[start:start + step]
        result = target if dtype == torch.float32 else torch.empty(target.shape)
        kernel(blocks[start:start + step], result)
        if result is not target:
            target.copy_(result)
    return out.view(shape)


# Kernels: [n, type_size] uint8 blocks -> float32 values written into `out` [n, block_size].
# In-place integer ops and `torch.mul(ints, floats, out=...)` (which promotes the ints to float32
# exactly) save a pass and an allocation per step; the float math matches gguf's numpy order.


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes holding one fp16 per block -> [n, 1] float32 (block strides are even)."""
    return b.view(torch.float16).float()


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # block [34]: d fp16 | 32 x int8
    torch.mul(b[:, 2:].view(torch.int8), _f16(b[:, :2]), out=out)


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # block [22]: d fp16 | qh: 32 high bits (u32 LE) | qs: 16 bytes, low nibbles = values 0..15
    n = b.shape[0]
    q = torch.bitwise_right_shift(b[:, None, 6:], _NIBBLES.view(1, 2, 1))  # [n, 2, 16]
    q &= 0xF
    high = torch.bitwise_right_shift(b[:, 2:6, None], _BITS)  # [n, 4, 8]: bit j of the u32 is value j
    high &= 1
    high <<= 4
    q = q.view(n, 32)
    q |= high.view(n, 32)
    q = q.view(torch.int8)
    q -= 16
    torch.mul(q, _f16(b[:, :2]), out=out)


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # block [144]: d fp16 | dmin fp16 | 12 bytes of 6-bit scales and mins for 8 groups | 128 qs
    n = b.shape[0]
    packed = b[:, 4:16].reshape(n, 3, 4)
    lo, mid, hi = packed[:, 0], packed[:, 1], packed[:, 2]
    scales = torch.cat([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], dim=-1)
    mins = torch.cat([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], dim=-1)
    d = (_f16(b[:, 0:2]) * scales.float()).view(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).view(n, 8, 1)
    # each 32-byte run holds two groups: low nibbles, then high nibbles
    q = torch.bitwise_right_shift(b[:, 16:].reshape(n, 4, 1, 32), _NIBBLES.view(1, 1, 2, 1))
    q &= 0xF
    values = out.view(n, 8, 32)
    torch.mul(q.view(n, 8, 32), d, out=values)
    values -= dm


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # block [210]: ql 128 (low 4 bits) | qh 64 (high 2 bits) | 16 int8 scales | d fp16
    n = b.shape[0]
    d = (_f16(b[:, 208:210]) * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    q = torch.bitwise_right_shift(b[:, :128].reshape(n, 2, 1, 64), _NIBBLES.view(1, 1, 2, 1))
    q &= 0xF
    high = torch.bitwise_right_shift(b[:, 128:192].reshape(n, 2, 1, 32), _CRUMBS.view(1, 1, 4, 1))
    high &= 3
    high <<= 4
    q = q.view(n, 8, 32)
    q |= high.view(n, 8, 32)
    q = q.view(torch.int8)
    q -= 32
    torch.mul(q.view(n, 16, 16), d, out=out.view(n, 16, 16))


_KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor, torch.Tensor], None]] = {
    Q.Q8_0: _q8_0, Q.Q5_0: _q5_0, Q.Q4_K: _q4_k, Q.Q6_K: _q6_k,
}
