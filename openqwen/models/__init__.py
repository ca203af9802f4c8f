"""model_type -> model class: the one place that knows which families exist."""

from __future__ import annotations

from torch import nn

from ..config import ModelArgs
from .qwen2 import Qwen2ForCausalLM
from .qwen2_moe import Qwen2MoeForCausalLM
from .qwen3 import Qwen3ForCausalLM
from .qwen3_moe import Qwen3MoeForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "qwen2": Qwen2ForCausalLM,
    "qwen2_moe": Qwen2MoeForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
}


def build_model(args: ModelArgs) -> nn.Module:
    return MODEL_CLASSES[args.model_type](args)
