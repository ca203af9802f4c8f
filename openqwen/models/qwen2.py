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
from ..layers.rope import RotaryEmbedding


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
        self.qkv_packed = None  # set by layers.fused.pack_model: q/k/v as one GEMM

    def qk_norms(self) -> tuple[nn.Module | None, nn.Module | None]:
        """Hook for Qwen3's per-head q/k RMSNorm (applied before RoPE); Qwen2 has none."""
        return None, None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], ctx: AttentionContext) -> torch.Tensor:
        T = x.shape[0]
        if self.qkv_packed is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv_packed(x)
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        return self.o_proj(self.attn(q, k, v, ctx, rope, *self.qk_norms()))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, attention: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
                ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block with the residual stream carried separately, so each residual add is
        fused into the norm that follows it: returns (mlp output, residual); their sum is the
        layer's output."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, rope, ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Qwen2Model(nn.Module):
    def __init__(self, args: ModelArgs, make_attention, make_mlp) -> None:
        super().__init__()
        # Given its (empty) weight, nn.Embedding skips the random init: on the meta device that init
        # imports torch._dynamo, 1.2-1.9 s of every load.
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size,
                                         _weight=torch.empty(args.vocab_size, args.hidden_size))
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(args, make_attention(args), make_mlp(args, i)) for i in range(args.num_hidden_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(args.head_dim, args.rope_theta, args.rope_scaling, args.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, ctx)
        return self.norm(x, residual)[0]


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
