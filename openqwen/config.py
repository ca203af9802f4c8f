"""ModelArgs: one typed view of a Qwen text model's config.json.

Published checkpoints use `rope_theta` + `rope_scaling`; transformers 5 saves one `rope_parameters`
dict instead. Both forms land in the same fields here, and unknown keys are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


@dataclass
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads (Qwen2); Qwen3 states it
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "yarn", "factor": ..., ...} or None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: bias on q/k/v; Qwen3 `attention_bias`: bias on q/k/v/o
    o_bias: bool = False
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE
    # Mixture of experts (0 experts: dense)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE only
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    def is_sparse_layer(self, idx: int) -> bool:
        """Whether decoder layer `idx` uses the routed experts rather than a dense MLP."""
        return (
            self.num_experts > 0
            and idx not in self.mlp_only_layers
            and (idx + 1) % max(self.decoder_sparse_step, 1) == 0
        )

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "ModelArgs":
        """Build from a config.json dict (either rope form); unknown keys are ignored."""
        cfg = dict(cfg)
        if "text_config" in cfg and "hidden_size" not in cfg:  # a VL wrapper; text part only
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; openqwen supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        rope_theta, rope_scaling = _rope_from_config(cfg)
        qwen3 = model_type.startswith("qwen3")
        eos = cfg.get("eos_token_id")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in known and v is not None}
        kwargs.update(
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=bool(cfg.get("attention_bias", False)) if qwen3 else True,
            o_bias=bool(cfg.get("attention_bias", False)) if qwen3 else False,
            qk_norm=qwen3,
            num_experts=int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
            if model_type.endswith("_moe") else 0,
            eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            mlp_only_layers=list(cfg.get("mlp_only_layers") or []),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )
        if not model_type.endswith("_moe"):
            kwargs["num_experts_per_tok"] = 0
        kwargs.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rope_from_config(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from `rope_parameters` or from `rope_theta` + `rope_scaling`.

    Scaling dicts name their kind with `rope_type` or the older `type`; "default" and "mrope"
    (VL models, handled elsewhere) mean no frequency scaling.
    """
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
        scaling = dict(params)
    else:
        theta = cfg.get("rope_theta", 10_000.0)
        scaling = dict(cfg.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("rope_theta", None)
    if kind in ("default", "mrope"):
        return float(theta), None
    if kind != "yarn":
        raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, yarn)")
    return float(theta), {"rope_type": kind, **scaling}
