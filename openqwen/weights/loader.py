"""Load a checkpoint (Hugging Face directory or GGUF file) into one of our model classes.

The model is built on the meta device (no random init, no memory), then every parameter is
materialized from the checkpoint. Checkpoint names equal our module names except for one declared
rename: per-expert MoE tensors are stacked into one [E, ...] parameter. Anything unexpected, missing
or misshapen is a WeightsError naming the file: a model is either fully loaded or not returned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from ..config import ModelArgs
from ..models import build_model
from .errors import WeightsError

# model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight -> model.layers.{i}.mlp.experts.{proj} [e]
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


class LazyTensor(Protocol):
    """A checkpoint tensor that is only materialized when asked (GGUF blocks stay quantized)."""

    shape: tuple[int, ...]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor: ...


def materialize(tensor: torch.Tensor | LazyTensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(tensor, torch.Tensor):
        return tensor.to(dtype)
    return tensor.dequantize(dtype)


def checkpoint_target(name: str) -> tuple[str, int | None]:
    """Checkpoint name -> (our parameter name, index into a stacked parameter or None)."""
    match = _EXPERT.match(name)
    if match:
        return f"{match.group(1)}.{match.group(3)}", int(match.group(2))
    return name, None


def load_weights(
    model: nn.Module,
    tensors: Iterable[tuple[str, Any]],
    source: Path,
    device: torch.device,
    dtype: torch.dtype,
    total: int | None = None,
    replace_module=None,
) -> None:
    """Fill every parameter of a meta-device `model` from `tensors`.

    `replace_module(module_name, tensor) -> nn.Module | None` lets the caller swap a module for a
    quantized one (module surgery from outside the model files); None keeps the dense path.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    tied = model.args.tie_word_embeddings
    filled: dict[str, set[int | None]] = {}
    for name, tensor in tqdm(tensors, total=total, desc="Loading weights", unit="tensor", leave=False, disable=None):
        if _IGNORED.search(name) or (tied and name == "lm_head.weight"):
            continue
        target, index = checkpoint_target(name)
        module_name, _, attr = target.rpartition(".")
        if target not in params:
            raise WeightsError(f"{source}: unexpected tensor {name} for model_type {model.args.model_type}")
        param = params[target]
        expected = tuple(param.shape[1:] if index is not None else param.shape)
        if tuple(tensor.shape) != expected:
            raise WeightsError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config implies {expected}")
        owner = modules[module_name]
        replacement = replace_module(module_name, tensor) if replace_module and attr == "weight" and index is None else None
        if replacement is not None:
            bias = getattr(owner, "bias", None)
            if isinstance(bias, torch.Tensor) and not bias.is_meta:  # the bias came first
                replacement.bias = bias.detach().float()
            _set_submodule(model, module_name, replacement)
            modules[module_name] = replacement
        elif index is None:
            value = materialize(tensor, dtype).to(device)
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
            else:  # a replaced module keeps this as a buffer (e.g. a quantized layer's fp32 bias)
                setattr(owner, attr, value.float())
        else:
            if param.is_meta:
                param = nn.Parameter(torch.empty(param.shape, dtype=dtype, device=device), requires_grad=False)
                owner._parameters[attr] = param
                params[target] = param
            if index >= param.shape[0]:
                raise WeightsError(f"{source}: tensor {name}: expert {index} >= num_experts {param.shape[0]}")
            param.data[index].copy_(materialize(tensor, dtype).to(device))
        filled.setdefault(target, set()).add(index)
    missing = [key for key in params if key not in filled]
    missing += [f"{key} (experts)" for key, idx in filled.items() if None not in idx and len(idx) != params[key].shape[0]]
    if missing:
        raise WeightsError(f"{source}: missing tensor(s) {', '.join(sorted(missing)[:5])}")
    if tied:
        embed = model.model.embed_tokens
        if isinstance(embed, nn.Embedding):
            model.lm_head.weight = embed.weight
        else:
            model.lm_head = embed.as_linear()


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def build_from_checkpoint(
    args: ModelArgs, tensors: Iterator[tuple[str, Any]], source: Path, device: torch.device, dtype: torch.dtype,
    total: int | None = None, replace_module=None,
) -> nn.Module:
    with torch.device("meta"):
        model = build_model(args)
    load_weights(model, tensors, source, device, dtype, total, replace_module)
    return model.eval()
