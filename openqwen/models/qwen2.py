"""Qwen2 / Qwen2.5 (also QwQ and Qwen2.5-Coder): the decoder every Qwen text family builds on.

Module names equal the Hugging Face checkpoint keys, so weights load by name. Shapes: T tokens of
a flat batch (all sequences concatenated), D hidden, H query heads, Hkv KV heads, d head_dim.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelArgs
from ..layers.attention import Attention, AttentionContext
from ..layers.mlp import SwiGLU
from ..layers.norm import RMSNorm
from ..layers.rope import RotaryEmbedding, apply_rotary


class Qwen2Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        D, d = args.hidden_size, args.head_dim
        self.q_proj = nn.Linear(D, self.num_heads * d, bias=args.qkv_bias)
        self.k_proj = nn.Linear(D, self.num_kv_heads * d, bias=args.qkv_bias)
        self.v_proj = nn.Linear(D, self.num_kv_heads * d, bias=args.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, D, bias=args.o_bias)
        self.attn = Attention(self.num_heads, self.num_kv_heads, d)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook for Qwen3's per-head q/k RMSNorm (applied before RoPE); Qwen2 has none."""
        return q, k

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], ctx: AttentionContext) -> torch.Tensor:
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        q, k = self.normalize_qk(q, k)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.o_proj(self.attn(q, k, v, ctx))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, attention: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], ctx: AttentionContext) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, ctx)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen2Model(nn.Module):
    def __init__(self, args: ModelArgs, make_attention, make_mlp) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(args, make_attention(args), make_mlp(args, i)) for i in range(args.num_hidden_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(args.head_dim, args.rope_theta, args.rope_scaling, args.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, ctx)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    """The family's causal LM. Subclasses swap the attention or MLP factory, nothing else."""

    attention_class: type[nn.Module] = Qwen2Attention

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Qwen2Model(args, self.attention_class, self.make_mlp)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def make_mlp(args: ModelArgs, layer_idx: int) -> nn.Module:
        return SwiGLU(args.hidden_size, args.intermediate_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, D]."""
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of the rows to sample [B, D] -> fp32 logits [B, V] (the padded vocab, untrimmed)."""
        return self.lm_head(hidden).float()
