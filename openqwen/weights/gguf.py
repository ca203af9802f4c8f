"""Read a GGUF file (llama.cpp's format) as Hugging Face-named tensors plus a config.json-style dict.

The container is parsed here rather than with `gguf.GGUFReader`: the reader builds numpy views for
each of the 151k vocabulary strings and needs about 9 s to open the default model; this parser needs
0.2 s. The `gguf` package still supplies the constants and the reference dequantizers; what the
names, metadata and shapes mean for a Qwen model lives in gguf_qwen.py.
"""

from __future__ import annotations

import copy
import math
import mmap
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import WeightsError
from .gguf_quants import SUPPORTED_TYPES, dequantize
from .gguf_qwen import SUPPORTED_ARCHES, GGUFFormatError, build_config, expected_shapes, hf_tensor

_MAGIC = b"GGUF"
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALARS = {
    GGUFValueType.UINT8: struct.Struct("<B"), GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"), GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: _U32, GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.UINT64: _U64, GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT32: struct.Struct("<f"), GGUFValueType.FLOAT64: struct.Struct("<d"),
    GGUFValueType.BOOL: struct.Struct("<?"),
}

@dataclass(eq=False)
class GGUFTensor:
    name: str  # Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight"
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: (out_features, in_features) for a Linear weight
    raw: np.ndarray  # uint8 view of the mapped file (no copy): the tensor's blocks

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A new tensor of `self.shape`, computed in float32 and then cast to `dtype`."""
        return dequantize(self.raw, self.qtype, self.shape, dtype)


@dataclass(frozen=True)
class _TensorInfo:
    gguf_name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order (ggml lists dimensions innermost first)
    start: int  # absolute file offset
    nbytes: int
    name: str = ""  # Hugging Face name, set by _map


class GGUFFile:
    """An opened, validated GGUF file of a supported Qwen architecture (memory-mapped)."""

    path: Path
    arch: str
    metadata: dict[str, Any]  # every key/value of the header, as parsed

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._size = os.fstat(f.fileno()).st_size
                if self._size < 24:
                    raise WeightsError(f"{self.path}: not a GGUF file (only {self._size} bytes)")
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writable, never saved
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            self.metadata, infos = _parse(self._buf)
            self.arch = self.metadata.get("general.architecture", "")
            if self.arch not in SUPPORTED_ARCHES:
                raise GGUFFormatError(
                    f"unsupported architecture {self.arch!r} (openqwen reads {', '.join(SUPPORTED_ARCHES)})"
                )
            self._infos = [_map(info) for info in infos]
            shapes = {i.gguf_name: i.shape for i in self._infos}
            self._config = build_config(self.arch, self.metadata, shapes)
            _check_tensors(self._infos, expected_shapes(self._config))
        except GGUFFormatError as e:
            raise WeightsError(f"{self.path}: {e}") from None
        except (struct.error, ValueError, OverflowError) as e:  # garbage that slipped past the checks
            raise WeightsError(f"{self.path}: corrupt GGUF file ({' '.join(str(e).split())})") from None
        self._data = np.frombuffer(self._buf, dtype=np.uint8)

    def config(self) -> dict[str, Any]:
        """A config.json-style dict that `ModelArgs.from_dict` accepts."""
        return copy.deepcopy(self._config)

    def tensors(self) -> Iterator[GGUFTensor]:
        """Every tensor, in file order, with its Hugging Face name and torch-order shape."""
        for i in self._infos:
            raw = self._data[i.start:i.start + i.nbytes]
            yield GGUFTensor(name=i.name, qtype=i.qtype, shape=i.shape, raw=raw)

    def release_pages(self, tensor: torch.Tensor) -> None:
        """Drops the resident pages of `tensor`, a view of this file's mapping that was never
        written: the memory is returned, and a later read pages the bytes in from the file again.
        Anything else (a copy, a written view) is left alone. Whole pages inside the tensor only."""
        if not hasattr(mmap, "MADV_DONTNEED") or tensor._version != 0 or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr() - self._data.ctypes.data
        end = start + tensor.numel() * tensor.element_size()
        if start < 0 or end > self._size or not tensor.is_contiguous():
            return
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo:
            self._buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def tokenizer_data(self) -> dict[str, Any]:
        """The tokenizer stored in the metadata (llama.cpp's `tokenizer.ggml.*` keys)."""
        meta = self.metadata
        if "tokenizer.ggml.tokens" not in meta:
            raise WeightsError(f"{self.path}: no tokenizer in the metadata (tokenizer.ggml.tokens)")
        return {
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "tokens": meta["tokenizer.ggml.tokens"],
            "token_type": meta.get("tokenizer.ggml.token_type", []),
            "merges": meta.get("tokenizer.ggml.merges", []),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
            "padding_token_id": meta.get("tokenizer.ggml.padding_token_id"),
            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "chat_template": meta.get("tokenizer.chat_template"),
        }

    def generation_eos_ids(self) -> list[int]:
        """Ids that end a reply: the eos id plus <|im_end|> and <|endoftext|> (chat models emit both)."""
        meta = self.metadata
        ids = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
        tokens = meta.get("tokenizer.ggml.tokens", [])
        for special in ("<|im_end|>", "<|endoftext|>"):
            if special in tokens:
                ids.append(tokens.index(special))
        return list(dict.fromkeys(ids))

    def describe(self) -> dict[str, Any]:
        """A summary for `openqwen info`."""
        by_type: dict[str, dict[str, int]] = {}
        for i in self._infos:
            entry = by_type.setdefault(i.qtype.name, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += i.nbytes
        return {
            "path": str(self.path),
            "file_size": self._size,
            "arch": self.arch,
            "name": self.metadata.get("general.name"),
            "parameters": sum(math.prod(i.shape) for i in self._infos),
            "tensors": len(self._infos),
            "tensor_types": by_type,
            "context_length": self._config["max_position_embeddings"],
        }


def _map(info: _TensorInfo) -> _TensorInfo:
    """The same tensor under its Hugging Face name and shape."""
    name, shape = hf_tensor(info.gguf_name, info.shape)
    return replace(info, name=name, shape=shape)


def _check_tensors(infos: list[_TensorInfo], expected: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor present with the shape the metadata implies, and nothing else."""
    for i in infos:
        if i.gguf_name not in expected:
            raise GGUFFormatError(f"unexpected tensor {i.gguf_name!r} for this model's metadata")
        if i.shape != expected[i.gguf_name]:
            raise GGUFFormatError(
                f"tensor {i.gguf_name!r} has shape {list(i.shape)} but the metadata implies "
                f"{list(expected[i.gguf_name])}"
            )
    missing = expected.keys() - {i.gguf_name for i in infos}
    if missing:
        raise GGUFFormatError(f"missing tensor {min(missing)!r} ({len(missing)} missing in all)")


class _Cursor:
    """Sequential little-endian reads over the mapped file; struct raises on reads past the end."""

    def __init__(self, buf: mmap.mmap, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, st: struct.Struct) -> Any:
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """`count` strings in one tight loop: the 151k-entry vocabulary is the hot path of opening a file."""
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        for _ in range(count):
            (length,) = _U64.unpack_from(buf, pos)
            pos += 8
            if pos + length > size:
                raise GGUFFormatError("truncated GGUF header (a string runs past the end of the file)")
            out.append(buf[pos:pos + length].decode("utf-8"))
            pos += length
        self.pos = pos
        return out

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            itype, count = self.unpack(_U32), self.unpack(_U64)
            if count > len(self.buf) - self.pos:  # every item takes at least one byte
                raise GGUFFormatError("truncated GGUF header (an array runs past the end of the file)")
            if itype in _SCALARS:
                items = np.frombuffer(self.buf, np.dtype(_SCALARS[itype].format), count, self.pos)
                self.pos += items.nbytes
                return items.tolist()
            if itype == GGUFValueType.STRING:
                return self.strings(count)
            return [self.value(itype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise GGUFFormatError(f"corrupt GGUF header (unknown metadata value type {vtype})")
        return self.unpack(_SCALARS[vtype])


def _parse(buf: mmap.mmap) -> tuple[dict[str, Any], list[_TensorInfo]]:
    """Metadata and tensor table of a GGUF v2/v3 file; every tensor is checked to lie inside the file."""
    if buf[:4] != _MAGIC:
        raise GGUFFormatError(f"not a GGUF file (starts with {bytes(buf[:4])!r}, not {_MAGIC!r})")
    version = _U32.unpack_from(buf, 4)[0]
    if version & 0xFFFF == 0:
        raise GGUFFormatError("big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported (only 2 and 3)")
    cur = _Cursor(buf, 8)
    n_tensors, n_kv = cur.unpack(_U64), cur.unpack(_U64)
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.unpack(_U32))
    table = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack(_U32)
        if not 1 <= n_dims <= 4:
            raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions")
        dims = [cur.unpack(_U64) for _ in range(n_dims)]
        table.append((name, dims, cur.unpack(_U32), cur.unpack(_U64)))
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment < 8 or alignment & (alignment - 1):  # spec: a multiple of 8
        raise GGUFFormatError(f"invalid general.alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    infos = [_tensor_info(len(buf), data_start, alignment, *row) for row in table]
    if len({i.gguf_name for i in infos}) != len(infos):
        raise GGUFFormatError("duplicate tensor names")
    return meta, infos


def _tensor_info(size: int, data_start: int, alignment: int, name: str, dims: list[int],
                 type_id: int, offset: int) -> _TensorInfo:
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise GGUFFormatError(f"tensor {name!r} has unknown tensor type id {type_id}") from None
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(t.name for t in sorted(SUPPORTED_TYPES))
        raise GGUFFormatError(f"tensor {name!r} has unsupported tensor type {qtype.name} (supported: {supported})")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if dims[0] % block_size:
        raise GGUFFormatError(f"tensor {name!r}: row length {dims[0]} is not a multiple of the {qtype.name} block")
    if offset % alignment:
        raise GGUFFormatError(f"tensor {name!r} is not aligned to {alignment} bytes")
    nbytes = math.prod(dims) // block_size * type_size
    start = data_start + offset
    if start + nbytes > size:
        raise GGUFFormatError(
            f"truncated: tensor {name!r} needs bytes up to {start + nbytes:,} but the file has {size:,}"
        )
    return _TensorInfo(name, qtype, tuple(reversed(dims)), start, nbytes)
