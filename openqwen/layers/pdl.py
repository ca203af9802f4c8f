"""Programmatic dependent launch (PDL) for the CUDA path's Triton kernels, on Hopper and newer.

A decode step at small batch is a chain of about ten short kernels per layer, and between two
kernels the GPU normally idles while the next one launches and ramps up. With PDL each kernel lets
the next one launch as soon as its own programs run (`griddepcontrol.launch_dependents`), and the
next one waits (`griddepcontrol.wait`) only before it touches what earlier kernels wrote. The GEMVs
read their first weight tile before waiting, so weight streaming overlaps the previous kernel.
Measured on an H100 (benchmarks/results/gpu_h100.md): 28 layers of decode GEMVs in a CUDA graph
took 676 us through cuBLAS, 556 us through our GEMV launched plainly and 429 us with PDL.

The rule for every kernel launched with `launch_options(True)`: call `pdl_start` before reading
anything an earlier kernel wrote and before writing anything. OPENQWEN_NO_PDL=1 turns it off.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # Triton without the griddepcontrol wrappers: PDL stays off
    gdc_launch_dependents = gdc_wait = None

_OFF = os.environ.get("OPENQWEN_NO_PDL", "") not in ("", "0") or gdc_wait is None


@functools.cache
def _supported(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def use_pdl(t: torch.Tensor) -> bool:
    """Whether kernels on this tensor's device launch with PDL (CUDA, compute capability >= 9)."""
    if _OFF or not t.is_cuda:
        return False
    return _supported(t.device.index if t.device.index is not None else torch.cuda.current_device())


def launch_options(pdl: bool) -> dict:
    """Extra launch keywords: named only when on, for Triton versions that do not know them."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """Let the next kernel launch, then wait until every earlier kernel's writes are visible."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
