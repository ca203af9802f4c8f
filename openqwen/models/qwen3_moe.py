"""Qwen3-MoE: Qwen3 attention with routed experts and no shared expert (the config has none)."""

from __future__ import annotations

from .qwen2_moe import make_moe_mlp
from .qwen3 import Qwen3ForCausalLM


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    make_mlp = staticmethod(make_moe_mlp)
