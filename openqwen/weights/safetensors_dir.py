"""Hugging Face model directories: config.json, single or sharded safetensors, generation_config.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import WeightsError


class SafetensorsDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise WeightsError(f"{self.path}: no config.json (not a Hugging Face model directory)")
        self._config = _read_json(config_path)
        self.files = self._weight_files()

    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f"{index}: no weight_map")
            files = [self.path / name for name in dict.fromkeys(weight_map.values())]
        else:
            files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"{self.path}: no .safetensors files")
        for file in files:
            if not file.is_file():
                raise WeightsError(f"{file}: listed in the index but missing")
        return files

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def generation_config(self) -> dict[str, Any]:
        path = self.path / "generation_config.json"
        return _read_json(path) if path.is_file() else {}

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs, memory-mapped; a truncated or corrupt file raises WeightsError."""
        for file in self.files:
            try:
                handle = safe_open(str(file), framework="pt")
                names = list(handle.keys())
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise WeightsError(f"{file}: not a valid safetensors file ({_first_line(exc)})") from None
            for name in names:
                try:
                    tensor = handle.get_tensor(name)
                except Exception as exc:
                    raise WeightsError(f"{file}: cannot read tensor {name} ({_first_line(exc)})") from None
                yield name, tensor

    def num_tensors(self) -> int:
        count = 0
        for file in self.files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    count += len(list(handle.keys()))
            except Exception as exc:
                raise WeightsError(f"{file}: not a valid safetensors file ({_first_line(exc)})") from None
        return count


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
