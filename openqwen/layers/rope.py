"""Rotary position embeddings: one factory for every variant (default and YaRN).

The inverse frequencies are fixed at build time; cos/sin are computed per step for the positions
in the batch (cheap: T x d/2), once per forward and shared by all layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .attention import fast_path


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))


def yarn_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any], max_positions: int) -> tuple[torch.Tensor, float]:
    """YaRN (static): blend interpolated and extrapolated frequencies over a linear ramp.

    Returns (inv_freq, attention_factor); the factor scales cos and sin, not the softmax.
    """
    factor = float(scaling.get("factor") or 1.0)
    original = scaling.get("original_max_position_embeddings") or max_positions
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = _mscale(factor, mscale) / _mscale(factor, mscale_all_dim) if mscale and mscale_all_dim else _mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, device="cpu").float() / head_dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 where the original (extrapolated) frequency is kept
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class RotaryEmbedding(nn.Module):
    """Rotate-half (NeoX) RoPE: q' = q*cos + rotate_half(q)*sin."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None, max_positions: int = 32768) -> None:
        super().__init__()
        if scaling is None:
            inv_freq, self.attention_factor = default_inv_freq(head_dim, theta), 1.0
        elif scaling["rope_type"] == "yarn":
            inv_freq, self.attention_factor = yarn_inv_freq(head_dim, theta, scaling, max_positions)
        else:
            raise ValueError(f"unsupported rope scaling {scaling['rope_type']!r}")
        # A plain attribute, not a buffer: models are built on the meta device and this must survive.
        self.inv_freq = inv_freq

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, head_dim] for flat positions [T], computed in fp32 then cast."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_factor).to(dtype), (emb.sin() * self.attention_factor).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d]; cos/sin [T, d]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin


def rope_kernel_fits(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether q and k go through the fused CUDA kernel (`fused_ops.qk_norm_rope`)."""
    d = q.shape[-1]
    return fast_path(q) and d % 2 == 0 and (d // 2) & (d // 2 - 1) == 0 and q.stride(-1) == 1 and k.stride(-1) == 1


def apply_rotary_qk(q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optional per-head RMSNorm of q and k (Qwen3), then RoPE on both: q [T, H, d], k [T, Hkv, d].
    On CUDA one fused kernel rotates q and k in place."""
    cos, sin = rope
    if rope_kernel_fits(q, k):
        from .fused_ops import qk_norm_rope

        return qk_norm_rope(q, k, cos, sin, q_norm, k_norm)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
