"""Qwen3 dense: Qwen2 with its own head_dim, optional bias on all four projections (config-driven),
and per-head RMSNorm on q and k before RoPE."""

from __future__ import annotations

from ..config import ModelArgs
from ..layers.norm import RMSNorm
from .qwen2 import Qwen2Attention, Qwen2ForCausalLM


class Qwen3Attention(Qwen2Attention):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps)

    def qk_norms(self) -> tuple[RMSNorm, RMSNorm]:
        return self.q_norm, self.k_norm


class Qwen3ForCausalLM(Qwen2ForCausalLM):
    attention_class = Qwen3Attention
