"""Bad checkpoints and names: each is one clear error naming the problem, and nothing half-loads."""

from __future__ import annotations

import json
import shutil

import pytest

from openqwen import LLM
from openqwen.weights.errors import WeightsError


@pytest.fixture(scope="module")
def good_dir(tiny_qwen3_dir):
    return tiny_qwen3_dir


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _load(path):
    return LLM(str(path), device="cpu", dtype="float32", kv_cache_gb=0.05)


def test_truncated_safetensors(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="model.safetensors"):
        _load(path)


def test_corrupt_safetensors_header(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"{not json at all" + b" " * 16
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        _load(path)


def test_wrong_architecture(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        _load(path)


def test_shape_mismatch(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"mlp\.\w+_proj\.weight has shape"):
        _load(path)


def test_missing_tensor(good_dir, tmp_path):
    path = _copy(good_dir, tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing tensor.*model.norm.weight"):
        _load(path)


def test_unknown_registry_name():
    with pytest.raises(ValueError, match="no-such-model"):
        _load("no-such-model")


def test_missing_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="no config.json"):
        _load(tmp_path)
