"""The CUDA path's Triton kernels compile for an H100 (sm_90), on a machine without a GPU.

test_triton_attention.py checks what the kernels compute, in Triton's interpreter, which never
compiles them; an error only the compiler sees (a type, a layout, the griddepcontrol instructions
of PDL) would otherwise first show on a GPU. tests/sm90_compile.py launches every kernel from the
real code with a stand-in driver, so Triton compiles each launch to an sm_90 cubin and stops.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launched_kernels() -> set[str]:
    """The package's @triton.jit functions that its source launches (`name[grid](...)`)."""
    sources = [path.read_text() for path in (ROOT / "openqwen").rglob("*.py")]
    jitted = {name for src in sources for name in re.findall(r"@triton\.jit[^\n]*\ndef (\w+)", src)}
    return {name for name in jitted if any(re.search(rf"\b{name}\[", src) for src in sources)}


@pytest.fixture(scope="module")
def compiled() -> dict:
    spec = importlib.util.find_spec("triton")
    if spec is None:
        pytest.skip("needs Triton (pip install triton)")
    ptxas = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip(f"this Triton wheel ships no ptxas ({ptxas}), so it cannot build CUDA binaries")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sm90_compile.py")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["kernels"]


def test_every_kernel_compiles_for_sm90(compiled):
    assert launched_kernels() == set(compiled), "a kernel the package launches was not compiled (or vice versa)"


def test_pdl_kernels_wait_on_their_grid_dependency(compiled):
    asked = {name for name, k in compiled.items() if k["pdl_asked"]}
    assert {"_gemv_kernel", "_rmsnorm_kernel", "_decode_kernel"} <= asked
    assert {name for name, k in compiled.items() if k["pdl"]} == asked


def test_kv_cache_kernels_compile_for_an_fp8_cache(compiled):
    assert {name for name, k in compiled.items() if k["fp8"]} == {
        "_store_kv_kernel", "_qk_norm_rope_kernel", "_decode_kernel", "_prefill_kernel"}


def test_no_kernel_spills_registers(compiled):
    assert {name: k["local_bytes"] for name, k in compiled.items() if k["local_bytes"]} == {}
