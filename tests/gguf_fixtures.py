"""Tiny random GGUF models for tests, written with `gguf.GGUFWriter` the way llama.cpp's converter
lays them out: every Qwen architecture, any supported tensor type, with a byte-level BPE tokenizer
and a ChatML template in the metadata, so a whole model can be loaded from one file end to end.

    tiny = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen3", qtype=GGMLQuantizationType.Q8_0)
    tiny.config     # what GGUFFile(tiny.path).config() must return
    tiny.weights    # Hugging Face name -> float32 values the stored bytes decode to
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import TokenType

ARCHES = ("qwen2", "qwen2moe", "qwen3", "qwen3moe")
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 256
EXPERTS, EXPERTS_USED, EXPERT_FFN, SHARED_FFN = 4, 2, 64, 96
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ w"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 288  # padded past the tokenizer's 267 tokens with [PAD] entries, as Qwen checkpoints are
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Byte offsets of the fp16 super-block scales, set to small values in random K-quant blocks.
_K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


@dataclass
class TinyGGUF:
    path: Path
    config: dict  # the Hugging Face-style config the file describes
    weights: dict[str, np.ndarray]  # HF name -> exact decoded values (gguf's numpy dequantizer)
    originals: dict[str, np.ndarray]  # HF name -> values before quantization
    qtypes: dict[str, Q]  # HF name -> stored tensor type


def byte_level_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet, in GPT-2's order (printable bytes first)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def tokenizer_tokens() -> tuple[list[str], list[int]]:
    """Tokens and token types: 256 bytes, one token per merge, the specials, then padding."""
    tokens = byte_level_tokens() + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [TokenType.CONTROL] * len(SPECIALS)
    pads = range(len(tokens), VOCAB)
    return tokens + [f"[PAD{i}]" for i in pads], [int(t) for t in types] + [int(TokenType.UNUSED)] * len(pads)


def random_blocks(shape: tuple[int, ...], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random bytes in `qtype`'s block layout, with small fp16 scales (gguf cannot quantize K-types)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (*shape[:-1], shape[-1] // block_size, type_size), dtype=np.uint8)
    for offset in _K_SCALES.get(qtype, ()):
        scale = rng.uniform(1e-5, 1e-4, raw.shape[:-1]).astype(np.float16)
        raw[..., offset:offset + 2] = scale[..., None].view(np.uint8)
    return raw.reshape(*shape[:-1], -1)


def encode(data: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes to store, exact decoded values, values before quantization) for float32 `data`."""
    if qtype == Q.F32:
        return data, data, data
    if qtype == Q.F16:
        return data.astype(np.float16), data.astype(np.float16).astype(np.float32), data
    if qtype in _K_SCALES:
        raw = random_blocks(data.shape, qtype, rng)
        values = gguf.quants.dequantize(raw, qtype)
        return raw, values, values
    raw = gguf.quants.quantize(data, qtype)
    return raw, gguf.quants.dequantize(raw, qtype), data


def tiny_config(arch: str, tie: bool = False, yarn: bool = False) -> dict:
    """The config a tiny file of `arch` describes, written out by hand as the reference."""
    qwen3 = arch.startswith("qwen3")
    cfg = {
        "model_type": {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(arch, arch),
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": 32 if qwen3 else HIDDEN // HEADS,  # Qwen3 heads are wider than hidden / heads
        "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 4096,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
        if yarn else None,
        "tie_word_embeddings": tie,
        "bos_token_id": 256 + len(MERGES),  # <|endoftext|>
        "eos_token_id": 256 + len(MERGES) + 2,  # <|im_end|>
    }
    if qwen3:
        cfg["attention_bias"] = False
    if arch.endswith("moe"):
        cfg.update(num_experts=EXPERTS, num_experts_per_tok=EXPERTS_USED, moe_intermediate_size=EXPERT_FFN,
                   norm_topk_prob=arch == "qwen3moe", decoder_sparse_step=1, mlp_only_layers=[])
    if arch == "qwen2moe":
        cfg["shared_expert_intermediate_size"] = SHARED_FFN
    return cfg


def tiny_tensors(cfg: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF name -> (GGUF name, torch shape), restating llama.cpp's naming independently of openqwen."""
    D, d = HIDDEN, cfg["head_dim"]
    q, kv = HEADS * d, KV_HEADS * d
    out = {
        "model.embed_tokens.weight": ("token_embd.weight", (VOCAB, D)),
        "model.norm.weight": ("output_norm.weight", (D,)),
    }
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = ("output.weight", (VOCAB, D))
    layer = [  # (HF name, GGUF name, shape) within a layer
        ("input_layernorm.weight", "attn_norm.weight", (D,)),
        ("post_attention_layernorm.weight", "ffn_norm.weight", (D,)),
        ("self_attn.q_proj.weight", "attn_q.weight", (q, D)),
        ("self_attn.k_proj.weight", "attn_k.weight", (kv, D)),
        ("self_attn.v_proj.weight", "attn_v.weight", (kv, D)),
        ("self_attn.o_proj.weight", "attn_output.weight", (D, q)),
    ]
    if cfg["model_type"].startswith("qwen3"):
        layer += [("self_attn.q_norm.weight", "attn_q_norm.weight", (d,)),
                  ("self_attn.k_norm.weight", "attn_k_norm.weight", (d,))]
    else:
        layer += [("self_attn.q_proj.bias", "attn_q.bias", (q,)),
                  ("self_attn.k_proj.bias", "attn_k.bias", (kv,)),
                  ("self_attn.v_proj.bias", "attn_v.bias", (kv,))]
    if "num_experts" in cfg:
        layer += [("mlp.gate.weight", "ffn_gate_inp.weight", (EXPERTS, D)),
                  ("mlp.experts.gate_proj", "ffn_gate_exps.weight", (EXPERTS, EXPERT_FFN, D)),
                  ("mlp.experts.up_proj", "ffn_up_exps.weight", (EXPERTS, EXPERT_FFN, D)),
                  ("mlp.experts.down_proj", "ffn_down_exps.weight", (EXPERTS, D, EXPERT_FFN))]
    else:
        layer += [("mlp.gate_proj.weight", "ffn_gate.weight", (FFN, D)),
                  ("mlp.up_proj.weight", "ffn_up.weight", (FFN, D)),
                  ("mlp.down_proj.weight", "ffn_down.weight", (D, FFN))]
    if "shared_expert_intermediate_size" in cfg:
        layer += [("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight", (SHARED_FFN, D)),
                  ("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight", (SHARED_FFN, D)),
                  ("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight", (D, SHARED_FFN)),
                  ("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight", (1, D))]
    for i in range(LAYERS):
        out.update({f"model.layers.{i}.{hf}": (f"blk.{i}.{gg}", shape) for hf, gg, shape in layer})
    return out


def write_tiny_gguf(path: str | Path, arch: str = "qwen2", qtype: Q = Q.Q8_0, *, tie: bool = False,
                    yarn: bool = False, seed: int = 0, drop: frozenset[str] = frozenset(),
                    counts: dict[str, int] | None = None, extra: dict[str, np.ndarray] | None = None,
                    embed_qtype: Q | None = None) -> TinyGGUF:
    """Write a tiny random `arch` model. Matrices use `qtype` where their rows fit its blocks (else
    F16), norms and biases F32. `drop` omits GGUF tensors, `extra` adds float32 ones, and `counts`
    overrides `{arch}.*` integers. `embed_qtype` (untied models): the token embedding in that type
    and the output head a `qtype` copy of the same matrix, as llama.cpp stores tied Qwen2.5 models
    quantized with a finer output head (the default model: Q5_0 and Q8_0)."""
    path, rng, cfg = Path(path), np.random.default_rng(seed), tiny_config(arch, tie, yarn)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny {arch}")
    keys = {"block_count": LAYERS, "context_length": 4096, "embedding_length": HIDDEN,
            "feed_forward_length": FFN, "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS}
    if arch.startswith("qwen3"):
        keys.update({"attention.key_length": cfg["head_dim"], "attention.value_length": cfg["head_dim"]})
    if arch.endswith("moe"):
        keys.update({"expert_count": EXPERTS, "expert_used_count": EXPERTS_USED,
                     "expert_feed_forward_length": EXPERT_FFN})
    if arch == "qwen2moe":
        keys["expert_shared_feed_forward_length"] = SHARED_FFN
    for key, value in {**keys, **(counts or {})}.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(1024)
    tokens, types = tokenizer_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_pad_token_id(cfg["bos_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    weights, originals, qtypes = {}, {}, {}
    for name, (gguf_name, shape) in tiny_tensors(cfg).items():
        norm = "norm" in name
        data = (rng.uniform(0.5, 1.5, shape) if norm else rng.normal(0.0, 0.02, shape)).astype(np.float32)
        # llama.cpp quantizes matrices only; the shared-expert gate is a vector in GGUF
        kind = qtype if len(shape) > 1 and "shared_expert_gate" not in name else Q.F32
        if embed_qtype is not None and name == "model.embed_tokens.weight":
            kind = embed_qtype
        if embed_qtype is not None and name == "lm_head.weight":
            data = originals["model.embed_tokens.weight"]
        if shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
            kind = Q.F16
        raw, weights[name], originals[name] = encode(data, kind, rng)
        qtypes[name] = kind
        if gguf_name in drop:
            continue
        if gguf_name.endswith("ffn_gate_inp_shexp.weight"):
            raw = raw.reshape(-1)  # llama.cpp stores the shared-expert gate as a vector
        writer.add_tensor(gguf_name, raw, raw_dtype=kind)
    for gguf_name, data in (extra or {}).items():
        writer.add_tensor(gguf_name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path, cfg, weights, originals, qtypes)
