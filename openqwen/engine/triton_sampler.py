"""The CUDA sampler's draw: temperature + Gumbel-max in one Triton pass over the vocabulary.

Used by `sampler.sample_on_device` on CUDA (greedy rows included, T = 0); imported lazily, so a
CPU install needs no Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
