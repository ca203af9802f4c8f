"""What a Qwen GGUF holds, in Hugging Face terms: metadata -> a config.json dict, GGUF tensor names ->
checkpoint names, and the tensor shapes a config implies.

Keys are llama.cpp's (`gguf.constants.Keys`). Where llama.cpp runs a model differently from its
Hugging Face config, the dict states what llama.cpp does, since the file was made to run there:
- qwen3moe: llama.cpp always renormalizes the top-k router weights (norm_topk_prob true);
  qwen2moe never does.
- MoE architectures: every layer is sparse (GGUF has no mlp_only_layers / decoder_sparse_step).
- Missing expert widths fall back as in llama.cpp: n_ff / n_expert_used for the routed experts,
  n_ff for the shared expert.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

SUPPORTED_ARCHES = ("qwen2", "qwen2moe", "qwen3", "qwen3moe")
_MODEL_TYPES = {"qwen2": "qwen2", "qwen2moe": "qwen2_moe", "qwen3": "qwen3", "qwen3moe": "qwen3_moe"}
_REQUIRED = object()

# GGUF tensor name -> Hugging Face name; "blk.N." becomes "model.layers.N.".
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_STACKED = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}  # [E, ...] tensors keep no ".weight"
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)")


class GGUFFormatError(Exception):
    """A problem with a GGUF file's contents; the caller adds the file name."""


def hf_tensor(gguf_name: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Hugging Face name and shape; llama.cpp's 1-D shared-expert gate becomes HF's [1, D] weight.

    llama.cpp's converter does not permute q/k for qwen2/qwen3, so only names change.
    """
    base, _, suffix = gguf_name.rpartition(".")
    block = _BLOCK.fullmatch(base)
    short = block[2] if block else base
    name = None
    if suffix in ("weight", "bias"):
        if base in _GLOBAL_NAMES:
            name = f"{_GLOBAL_NAMES[base]}.{suffix}"
        elif block and short in _LAYER_NAMES and (short not in _STACKED or suffix == "weight"):
            name = f"model.layers.{block[1]}.{_LAYER_NAMES[short]}"
            name += "" if short in _STACKED else f".{suffix}"
    if name is None:
        raise GGUFFormatError(f"unexpected tensor {gguf_name!r} (not part of a Qwen model)")
    return name, (1, *shape) if short == "ffn_gate_inp_shexp" and len(shape) == 1 else shape


def build_config(arch: str, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Config dict from the `{arch}.*` and `tokenizer.ggml.*` keys and the tensor table (torch shapes)."""

    def count(key: str, default: Any = _REQUIRED) -> int:
        full = f"{arch}.{key}"
        value = meta.get(full, default)
        if value is _REQUIRED:
            raise GGUFFormatError(f"missing metadata key {full!r}")
        if isinstance(value, list):  # the per-layer form; Qwen layers are uniform
            if not value or value.count(value[0]) != len(value):
                raise GGUFFormatError(f"per-layer values of {full!r} are not supported")
            value = value[0]
        if not isinstance(value, int) or value < 0:
            raise GGUFFormatError(f"metadata key {full!r} is {value!r}, not a count")
        return value

    def real(key: str, default: Any = _REQUIRED) -> float:
        full = f"{arch}.{key}"
        value = meta.get(full, default)
        if value is _REQUIRED or not isinstance(value, (int, float)):
            raise GGUFFormatError(f"missing or non-numeric metadata key {full!r}")
        # GGUF stores float32: print the shortest decimal that round-trips, so 1e-6 reads as 1e-6
        return float(str(np.float32(value)))

    if "token_embd.weight" not in shapes:
        raise GGUFFormatError("missing tensor 'token_embd.weight'")
    hidden, heads = count("embedding_length"), count("attention.head_count")
    kv_heads = count("attention.head_count_kv", heads)
    if not heads or not kv_heads or heads % kv_heads:
        raise GGUFFormatError(f"{heads} attention heads cannot be grouped over {kv_heads} kv heads")
    head_dim = count("attention.key_length", hidden // heads)
    if count("attention.value_length", head_dim) != head_dim:
        raise GGUFFormatError("value heads narrower or wider than key heads are not supported")
    layers = count("block_count")
    if layers > len(shapes):  # every layer has tensors; also keeps a garbage count from running away
        raise GGUFFormatError(f"{arch}.block_count is {layers}, but the file has only {len(shapes)} tensors")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "yarn"):
        raise GGUFFormatError(f"unsupported rope scaling {scaling!r} (openqwen supports yarn)")
    cfg: dict[str, Any] = {
        "model_type": _MODEL_TYPES[arch],
        "vocab_size": shapes["token_embd.weight"][0],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": real("attention.layer_norm_rms_epsilon"),
        "rope_theta": real("rope.freq_base", 10_000.0),  # llama.cpp's default
        # Qwen conversions write only these three yarn keys; the rest keep HF's defaults.
        "rope_scaling": None if scaling == "none" else {
            "rope_type": "yarn",
            "factor": real("rope.scaling.factor"),
            "original_max_position_embeddings": count("rope.scaling.original_context_length"),
        },
        "max_position_embeddings": count("context_length"),
        "tie_word_embeddings": "output.weight" not in shapes,
    }
    if arch.startswith("qwen3"):
        cfg["attention_bias"] = "blk.0.attn_q.bias" in shapes
    if arch.endswith("moe"):
        experts, used = count("expert_count"), count("expert_used_count")
        if not 0 < used <= experts:
            raise GGUFFormatError(f"cannot route to {used} of {experts} experts")
        ff = count("feed_forward_length", 0)
        expert_ff = count("expert_feed_forward_length", ff // used)
        if not expert_ff:
            raise GGUFFormatError(f"missing metadata key '{arch}.expert_feed_forward_length'")
        cfg.update(
            intermediate_size=ff or expert_ff,
            num_experts=experts,
            num_experts_per_tok=used,
            moe_intermediate_size=expert_ff,
            norm_topk_prob=arch == "qwen3moe",
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
        if arch == "qwen2moe":
            cfg["shared_expert_intermediate_size"] = count("expert_shared_feed_forward_length", ff)
    else:
        cfg["intermediate_size"] = count("feed_forward_length")
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            cfg[key] = meta[f"tokenizer.ggml.{key}"]
    return cfg


def expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> torch-order shape, for every tensor a model with this config has."""
    hidden, vocab, d = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    qwen3 = cfg["model_type"].startswith("qwen3")
    qkv_bias = cfg["attention_bias"] if qwen3 else True  # Qwen2 always has q/k/v biases
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not cfg["tie_word_embeddings"]:
        shapes["output.weight"] = (vocab, hidden)
    for i in range(cfg["num_hidden_layers"]):
        layer = {
            "attn_norm.weight": (hidden,),
            "ffn_norm.weight": (hidden,),
            "attn_q.weight": (q, hidden),
            "attn_k.weight": (kv, hidden),
            "attn_v.weight": (kv, hidden),
            "attn_output.weight": (hidden, q),
        }
        if qkv_bias:
            layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
        if qwen3:
            layer.update({"attn_q_norm.weight": (d,), "attn_k_norm.weight": (d,)})
            if cfg["attention_bias"]:
                layer["attn_output.bias"] = (hidden,)
        if "num_experts" in cfg:
            experts, width = cfg["num_experts"], cfg["moe_intermediate_size"]
            layer.update({
                "ffn_gate_inp.weight": (experts, hidden),
                "ffn_gate_exps.weight": (experts, width, hidden),
                "ffn_up_exps.weight": (experts, width, hidden),
                "ffn_down_exps.weight": (experts, hidden, width),
            })
            if shared := cfg.get("shared_expert_intermediate_size"):
                layer.update({
                    "ffn_gate_inp_shexp.weight": (1, hidden),
                    "ffn_gate_shexp.weight": (shared, hidden),
                    "ffn_up_shexp.weight": (shared, hidden),
                    "ffn_down_shexp.weight": (hidden, shared),
                })
        else:
            width = cfg["intermediate_size"]
            layer.update({
                "ffn_gate.weight": (width, hidden),
                "ffn_up.weight": (width, hidden),
                "ffn_down.weight": (hidden, width),
            })
        shapes.update({f"blk.{i}.{name}": shape for name, shape in layer.items()})
    return shapes
