"""Qwen2-MoE: Qwen2 attention; sparse layers route to top-k experts plus a gated shared expert."""

from __future__ import annotations

from torch import nn

from ..config import ModelArgs
from ..layers.mlp import SparseMoE, SwiGLU
from .qwen2 import Qwen2ForCausalLM


def make_moe_mlp(args: ModelArgs, layer_idx: int) -> nn.Module:
    """A sparse MoE block where the config says so (mlp_only_layers, decoder_sparse_step), else dense."""
    if not args.is_sparse_layer(layer_idx):
        return SwiGLU(args.hidden_size, args.intermediate_size)
    return SparseMoE(
        args.hidden_size, args.num_experts, args.num_experts_per_tok, args.moe_intermediate_size,
        args.norm_topk_prob, args.shared_expert_intermediate_size,
    )


class Qwen2MoeForCausalLM(Qwen2ForCausalLM):
    make_mlp = staticmethod(make_moe_mlp)
