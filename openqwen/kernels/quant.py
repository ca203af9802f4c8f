"""QuantLinear: a linear layer whose weight stays in its GGUF block format.

Batch-1 decode on a CPU is bound by memory bandwidth, so the weight is never expanded: a Q4_K
weight streams 144 bytes per 256 values instead of 1 KiB of fp32. The native kernels
(openqwen._quant_native, csrc/) quantize the activations to int8 with one fp32 scale per block
(round half to even), 32 values per block for the legacy types and 256 for the K-quants (so their
sub-block products add up in integers), and take integer dot products against the raw blocks,
like llama.cpp's Q8_0 and Q8_K.

Without the extension (no compiler at install time) the same math runs in PyTorch: activations
quantized identically, weights dequantized per call in row tiles of about 8 MiB. Tiles rather than
a cached fp32 copy, because the copy would cost 4-8x the memory the format exists to save; a caller
that prefers speed can keep `layer.dequantize()` and use F.linear itself.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from openqwen.hardware import usable_cores
from openqwen.weights.gguf_quants import dequantize as dequantize_blocks

from .huge_pages import HugePageArena

try:
    from openqwen import _quant_native as _native
except ImportError:  # built without a compiler: pure PyTorch
    _native = None

Q = GGMLQuantizationType

SUPPORTED_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)
_Q5_0 = int(Q.Q5_0)

_TILE_BYTES = 8 << 20  # fp32 weight tile of the PyTorch path
# From this many rows on (a long prefill chunk), dequantizing the weight once and running PyTorch's
# sgemm beats the integer kernels. Prefill tok/s measured on 2 cores, kernels vs sgemm: 128 tokens
# 153 vs 96, 512 tokens 141 vs 147, 2,000 tokens 65 vs 99.
DENSE_MIN_ROWS = 512


def native_available() -> bool:
    """Whether the compiled kernels are loaded (else QuantLinear runs in PyTorch)."""
    return _native is not None


def native_isa() -> str | None:
    """Kernels the native code uses on this CPU: 'avx512-vnni', 'avx-vnni', 'avx2', 'neon', 'neon-dotprod', 'scalar', or None."""
    return _native.isa() if _native is not None else None


def set_num_threads(n: int) -> None:
    """Threads per native matmul (the calling thread included). The PyTorch path follows torch."""
    if _native is not None:
        _native.set_num_threads(int(n))


def get_num_threads() -> int:
    return _native.get_num_threads() if _native is not None else torch.get_num_threads()


def _default_num_threads() -> int:
    # torch defaults to the physical cores; stay within the cores this process may run on.
    return max(1, min(torch.get_num_threads(), usable_cores()))


if _native is not None:
    _native.set_num_threads(_default_num_threads())


def row_bytes(qtype: GGMLQuantizationType, in_features: int) -> int:
    """Bytes per weight row of `in_features` values; raises if the row does not fill whole blocks."""
    if qtype not in SUPPORTED_TYPES:
        names = [t.name for t in SUPPORTED_TYPES]
        raise ValueError(f"unsupported quantization type {qtype!r}; supported: {names}")
    block, size = GGML_QUANT_SIZES[qtype]
    if in_features <= 0 or in_features % block:
        raise ValueError(f"{qtype.name} needs in_features to be a multiple of {block}, got {in_features}")
    return in_features // block * size


def activation_block(qtype: GGMLQuantizationType) -> int:
    """Values per activation scale for weights of `qtype`: 32, or 256 for the K-quants."""
    return GGML_QUANT_SIZES[qtype][0]


def quantize_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """x[T, K] fp32 -> the values the native kernels multiply with: q * d per block of `block`.

    Bit-identical to the kernels' quantizer: d = amax / 127, q = round_half_even(x * (127 / amax)).
    Tensor-by-tensor division on purpose: scalar / tensor in PyTorch multiplies by a reciprocal.
    """
    blocks = x.reshape(x.shape[0], x.shape[1] // block, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax != 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv)
    return (q * (amax / 127.0)).reshape(x.shape)


class QuantLinear(torch.nn.Module):
    """y = x @ W^T + b with W[out_features, in_features] held as raw GGUF blocks (`qweight`)."""

    def __init__(
        self, in_features: int, out_features: int, qtype: GGMLQuantizationType, bias: bool = False
    ) -> None:
        super().__init__()
        self.qtype = GGMLQuantizationType(qtype)
        self._qtype_id = int(self.qtype)
        self.in_features = in_features
        self.out_features = out_features
        nbytes = row_bytes(self.qtype, in_features)
        self.register_buffer("qweight", torch.empty(out_features, nbytes, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_raw(
        cls,
        raw: np.ndarray | torch.Tensor,
        qtype: GGMLQuantizationType,
        out_features: int,
        in_features: int,
        bias: torch.Tensor | None = None,
    ) -> QuantLinear:
        """Wraps the GGUF tensor bytes `raw` without copying them where possible (e.g. a memmap)."""
        layer = cls(in_features, out_features, qtype, bias=bias is not None)
        nbytes = layer.qweight.shape[1]
        if isinstance(raw, np.ndarray):
            with warnings.catch_warnings():  # read-only memmaps: the kernels never write weights
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8))
        if raw.dtype != torch.uint8 or raw.numel() != out_features * nbytes:
            raise ValueError(
                f"expected {out_features * nbytes} bytes of {layer.qtype.name} blocks for "
                f"[{out_features}, {in_features}], got {raw.numel()} elements of {raw.dtype}"
            )
        layer.qweight = raw.reshape(out_features, nbytes).contiguous()
        if bias is not None:
            if bias.shape != (out_features,):
                raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
            layer.bias = bias.detach().float().contiguous()
        return layer

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, qtype: GGMLQuantizationType, bias: torch.Tensor | None = None
    ) -> QuantLinear:
        """Quantizes weight[out_features, in_features] (see openqwen.kernels.quantize)."""
        from openqwen.kernels.quantize import quantize

        out_features, in_features = weight.shape
        return cls.from_raw(quantize(weight, qtype), qtype, out_features, in_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Batch-1 decode makes this call tens of times per token, so the common case (2-D fp32
        # input, no bias) skips every no-op conversion and reads the buffers without the
        # nn.Module.__getattr__ detour.
        k, n = self.in_features, self.out_features
        if x.shape[-1] != k:
            raise ValueError(f"expected last dimension {k}, got {tuple(x.shape)}")
        x2 = x if x.dim() == 2 else x.reshape(-1, k)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        qweight, bias = self._buffers["qweight"], self._buffers["bias"]
        if x2.shape[0] >= DENSE_MIN_ROWS:
            y = F.linear(x2, self.dequantize().to(x2.device))
        elif _native is not None and x2.device.type == "cpu" and qweight.device.type == "cpu":
            y = torch.empty(x2.shape[0], n)
            t = x2.shape[0]
            wtype, wptr = self.native_weight()
            _native.mul_mat(wtype, wptr, x2.data_ptr(), y.data_ptr(), t, n, k)
        else:
            y = self._forward_torch(x2)
        if bias is not None:
            y += bias
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def native_weight(self) -> tuple[int, int]:
        """(type id, address) of the weight as the native kernels read it (needs the extension).

        Usually the GGUF blocks in `qweight`. For Q5_0 under the AVX2 kernels, a copy laid out once
        for them (Q5_0_PAIRS in csrc/quant_common.h): same size, fewer operations per weight, results
        bit-identical. Native calls and row reads (row_source) see it; qweight, state_dict and the
        PyTorch path keep the GGUF bytes. The copy follows qweight: it is rebuilt, at the same address,
        when qweight is replaced or written in place (its version counter moves).
        """
        qweight = self._buffers["qweight"]
        if self._qtype_id != _Q5_0:
            return self._qtype_id, qweight.data_ptr()
        packed = self.__dict__.get("_packed")  # (weakref to qweight, its version, type id, copy or None)
        if packed is None or packed[0]() is not qweight or packed[1] != qweight._version:
            packed = self._repack(qweight, packed)
        return packed[2], (packed[3] if packed[3] is not None else qweight).data_ptr()

    def place_native_weight(self, memory: torch.Tensor) -> torch.Tensor | None:
        """Move the bytes the native kernels read into `memory` (uint8, as many bytes as qweight;
        e.g. huge pages): the re-laid copy where the kernels use one, else qweight itself. Returns
        the qweight this replaced (to release its file pages), or None. Call it before a decode
        plan holds the weight's address."""
        qweight = self._buffers["qweight"]
        memory = memory.view(qweight.shape)
        wtype = _native.packed_type(self._qtype_id)
        if wtype != self._qtype_id:
            self._repack(qweight, (None, None, wtype, memory))  # writes the copy into `memory`
            return None
        memory.copy_(qweight)
        self._buffers["qweight"] = memory
        self.__dict__.pop("_packed", None)
        return qweight

    def has_packed_copy(self) -> bool:
        """Whether the native kernels already read this weight from its own copy (native_weight)."""
        packed = self.__dict__.get("_packed")
        return packed is not None and packed[3] is not None

    def _repack(self, qweight: torch.Tensor, old: tuple | None) -> tuple:
        # The first decision sticks, and a rebuild writes into the same copy: a decode plan may
        # hold the type and the address.
        wtype = old[2] if old is not None else _native.packed_type(self._qtype_id)
        copy = None
        if wtype != self._qtype_id:
            reuse = old is not None and old[3] is not None and old[3].shape == qweight.shape
            copy = old[3] if reuse else torch.empty_like(qweight)
            _native.repack(self._qtype_id, qweight.data_ptr(), copy.data_ptr(), qweight.shape[0],
                           self.in_features)
        packed = (weakref.ref(qweight), qweight._version, wtype, copy)
        self.__dict__["_packed"] = packed
        return packed

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_packed", None)  # pickles and deep copies rebuild the native copy when used
        return state

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        xq = quantize_activations(x, activation_block(self.qtype))
        y = torch.empty(x.shape[0], self.out_features, device=x.device)
        step = max(1, _TILE_BYTES // (4 * self.in_features))
        for start in range(0, self.out_features, step):
            w = dequantize_rows(self.qweight[start:start + step], self.qtype, self.in_features).to(x.device)
            y[:, start:start + step] = F.linear(xq, w)
        return y

    def row_source(self) -> tuple[int, torch.Tensor]:
        """(type, bytes) to read rows from outside the matmul kernels: their own copy where there is
        one, since the GGUF bytes' pages may have been released (place_native_weights) and reading
        them back would keep both copies resident; else qweight."""
        if not self.has_packed_copy():
            return self.qtype, self._buffers["qweight"]
        wtype, _ = self.native_weight()  # rebuilt first if qweight changed
        return wtype, self.__dict__["_packed"][3]

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as fp32 [out_features, in_features] (only `rows`, when given), bit-identical
        to gguf's dequantizer."""
        qtype, raw = self.row_source()
        return dequantize_rows(raw if rows is None else raw[rows], qtype, self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"qtype={self.qtype.name}, bias={self.bias is not None}"
        )


def place_native_weights(modules: Iterable[torch.nn.Module], arena: HugePageArena,
                         release_pages: Callable[[torch.Tensor], None] | None = None) -> None:
    """Every QuantLinear among `modules` reads its weight from `arena` (see huge_pages.py). The file
    pages of each weight are released as soon as it is there (moved, or re-laid into a copy that
    every reader now uses), so loading never holds both."""
    for module in modules:
        if isinstance(module, QuantLinear) and module.qweight.device.type == "cpu":
            replaced = module.place_native_weight(arena.empty(module.qweight.numel()))
            if release_pages is not None:
                release_pages(module.qweight if replaced is None else replaced)


def dequantize_rows(raw: torch.Tensor, qtype: GGMLQuantizationType | int, in_features: int) -> torch.Tensor:
    """fp32 [rows, in_features] from GGUF blocks [rows, row bytes] (or the native Q5_0_PAIRS copy),
    bit-identical to gguf's dequantizer."""
    if _native is not None and raw.device.type == "cpu":
        raw = raw.contiguous()
        out = torch.empty(raw.shape[0], in_features)
        _native.dequantize(int(qtype), raw.data_ptr(), out.data_ptr(), *out.shape)
        return out
    return dequantize_blocks(raw.cpu().numpy(), qtype, (raw.shape[0], in_features))
