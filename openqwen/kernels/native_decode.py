"""NativeDecoder: a CPU decode step of a dense Qwen2/Qwen3 model as one call into C++.

At batch-1 decode on a small CPU the quantized matmuls are only part of the time: each layer also
runs ~25 small PyTorch ops (norms, RoPE, cache writes, attention, SwiGLU), and their dispatch cost
about as much as the matmuls (measured on 2 cores: 13.8 of 33.5 ms per token). `decode_step` in
csrc/decode.cpp runs every layer of a decode-only step between the same quantized kernels, with
the model's own weights, KV cache and RoPE tables; the model code in openqwen/models stays the
reference, and tests check the two against each other.

It applies when every decoder layer is the dense pre-norm block of qwen2.py/qwen3.py with all seven
projections held as QuantLinear (GGUF weights, or --quantize) and the KV cache is fp32 on the CPU.
Anything else (MoE layers, dense fp32 weights, prefill chunks) runs through the PyTorch modules.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import AttentionContext
from ..layers.mlp import SwiGLU
from . import quant
from .quant import QuantLinear
from .quant_embedding import QuantEmbedding

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Unsupported(Exception):
    """A model part the native step does not cover: the model keeps the PyTorch path."""


def _linear_fields(linear: QuantLinear) -> tuple[int, ...]:
    bias = linear.bias.data_ptr() if linear.bias is not None else 0
    wtype, wptr = linear.native_weight()
    return wtype, wptr, bias, linear.out_features, linear.in_features


def _linears(layer: nn.Module) -> list:
    attn, mlp = layer.self_attn, layer.mlp
    return [getattr(attn, name, None) for name in _PROJECTIONS[:4]] + [getattr(mlp, n) for n in _PROJECTIONS[4:]]


def _fp32_ptr(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise _Unsupported
    return t.data_ptr()


class NativeDecoder:
    """Runs the decoder layers of decode-only steps in C++, and the embedding when it is quantized;
    the logits stay outside. Per step the Python side only checks the weights and passes pointers:
    after a step has streamed ~250 MB of weights through the caches, every PyTorch op it runs in
    between costs several times its warm price (embedding and RoPE tables took ~0.4 ms a token)."""

    def __init__(self, model: nn.Module, layer_fields: list[tuple[int, ...]]) -> None:
        args, inner = model.args, model.model
        self.model = model  # keeps every weight and cache tensor the plan points into alive
        attention = inner.layers[0].self_attn.attn
        dims = (args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim,
                args.intermediate_size, attention.k_cache.shape[1])
        # Weights the plan reads through a native-only copy (QuantLinear.native_weight). A step
        # after an in-place write to one of them (its version counter moves) rebuilds the copies,
        # at the same addresses, so the plan sees the write as it would on the GGUF bytes.
        self._copied = [lin for layer in inner.layers for lin in _linears(layer) if lin._qtype_id == quant._Q5_0]
        embed = inner.embed_tokens
        self._embeds = isinstance(embed, QuantEmbedding) and embed.table.qweight.device.type == "cpu"
        embedding = None
        if self._embeds:  # rows read from the kernels' copy where the proxy head made one
            table_type, table = embed.table.row_source()
            embedding = (int(table_type), table.data_ptr(), embed.table.out_features)
            if embed.table.has_packed_copy():
                self._copied.append(embed.table)
        self._copied_weights = [lin.qweight for lin in self._copied]
        self._copied_version = sum(w._version for w in self._copied_weights)
        self._rope = torch.empty(2, 0, args.head_dim)  # cos and sin rows of positions 0 .. n-1
        self._plan = quant._native.make_decode_plan(dims, inner.norm.eps, attention.scale,
                                                    _fp32_ptr(inner.norm.weight), embedding, layer_fields)

    @classmethod
    def build(cls, model: nn.Module) -> NativeDecoder | None:
        """The decoder for `model` (its KV cache already bound), or None where it does not apply."""
        inner = getattr(model, "model", None)
        if quant._native is None or inner is None or not hasattr(inner, "layers") or not len(inner.layers):
            return None
        try:
            return cls(model, [cls._layer_fields(layer) for layer in inner.layers])
        except _Unsupported:
            return None

    @staticmethod
    def _layer_fields(layer: nn.Module) -> tuple[int, ...]:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if type(mlp) is not SwiGLU or attn is None or mlp.gate_up_packed is not None or attn.qkv_packed is not None:
            raise _Unsupported
        linears = _linears(layer)
        if not all(type(lin) is QuantLinear and lin.qweight.device.type == "cpu" for lin in linears):
            raise _Unsupported
        q_norm, k_norm = attn.qk_norms()
        cache = attn.attn
        if cache.k_cache.dim() != 4 or cache.k_cache.dtype != torch.float32:
            raise _Unsupported
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                 q_norm.weight if q_norm is not None else None, k_norm.weight if k_norm is not None else None)
        fields = tuple(_fp32_ptr(t) for t in norms) + (_fp32_ptr(cache.k_cache), _fp32_ptr(cache.v_cache))
        return fields + tuple(f for lin in linears for f in _linear_fields(lin))

    def _rope_table(self, positions: int) -> torch.Tensor:
        """cos and sin [2, n, head_dim] from the model's own rotary embedding for n >= positions,
        grown by doubling (a table for the whole context length would cost memory for nothing)."""
        if self._rope.shape[1] < positions:
            n = max(positions, 2 * self._rope.shape[1], 256)
            self._rope = torch.stack(self.model.model.rotary_emb(torch.arange(n), torch.float32)).contiguous()
        return self._rope

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Final hidden states [T, D] of T sequences with one new token each (ctx.decode_only)."""
        version = sum(w._version for w in self._copied_weights)
        if version != self._copied_version:
            for lin in self._copied:
                lin.native_weight()
            self._copied_version = version
        ids, positions, slots, tables, lens = (t.to(torch.int64).contiguous() for t in (
            input_ids, positions, ctx.slot_mapping, ctx.block_tables, ctx.context_lens))
        if self._embeds:
            x = torch.empty(ids.shape[0], self.model.args.hidden_size)
        else:
            x = self.model.model.embed_tokens(ids).float().contiguous()
        rope = self._rope_table(max(ctx.context_lens_host))
        out = torch.empty_like(x)
        quant._native.decode_step(self._plan, ids.data_ptr(), x.data_ptr(), out.data_ptr(), x.shape[0],
                                  positions.data_ptr(), rope.data_ptr(), rope.shape[1], slots.data_ptr(),
                                  tables.data_ptr(), tables.shape[1], lens.data_ptr())
        return out
