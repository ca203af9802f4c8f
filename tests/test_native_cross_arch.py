"""The SIMD kernels of every CPU architecture we ship, checked on this one.

tests/native/simd_kernels_check.cpp compares each kernel table a build has for the CPU with the
portable scalar one, and the decode step's vector primitives with fp64, in plain C++. Here it runs
natively with GCC and clang (AVX2, and AVX-512 or AVX-VNNI where the CPU has them), built over
SIMDe's portable intrinsics (the AVX-512 and AVX-VNNI kernels on a CPU with neither), and,
cross-compiled, under qemu-user as AArch64 (NEON, with widening multiplies and with SDOT, the
dot-product extension, picked at build time or at run time), so that the paths that Xeon, Zen 4,
recent Intel laptop, Apple-silicon, Graviton and Raspberry Pi users get are checked on a machine
that has none of those CPUs.
.ci/run installs clang, the cross compiler and qemu-user from Debian's packages and fetches SIMDe 0.8.2
(Debian bookworm's 0.7.4 lacks intrinsics the kernels use) into $OQ_SIMDE_INCLUDE.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The kernels, their dispatch, the thread pool and the vector primitives: setup.py's sources less
# the Python-facing ones.
SOURCES = ["matmul.cpp", "quant_scalar.cpp", "quant_avx2.cpp", "quant_avx512.cpp", "quant_neon.cpp", "thread_pool.cpp",
           "vec_ops.cpp"]
# setup.py's flags: -ffp-contract=off is what keeps the quantizers bit-identical across paths.
FLAGS = ["-std=c++20", "-O3", "-ffp-contract=off"]


def build_check(compiler: str, out: Path, extra: list[str]) -> Path:
    """The kernels with setup.py's flags; the driver at -O2 (Debian's AArch64 GCC 12 crashes on it at -O3)."""
    objects = []
    for source in [ROOT / "csrc" / name for name in SOURCES] + [ROOT / "tests" / "native" / "simd_kernels_check.cpp"]:
        objects.append(str(out.parent / f"{source.stem}.o"))
        flags = FLAGS if source.parent.name == "csrc" else [*FLAGS, "-O2"]
        compile_step = subprocess.run(
            [compiler, *flags, *extra, "-c", str(source), "-o", objects[-1]], capture_output=True, text=True
        )
        assert compile_step.returncode == 0, f"{compiler} failed on {source.name}:\n{compile_step.stderr[-2000:]}"
    link = subprocess.run([compiler, *extra, "-pthread", *objects, "-o", str(out)], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-2000:]
    return out


@pytest.mark.parametrize("compiler", ["g++", "clang++"])  # clang: Apple's compiler, and that of some Linux Pythons
def test_simd_kernels_match_scalar_on_this_cpu(tmp_path, compiler):
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler} to build the kernel check (Debian: .ci/run installs clang)")
    binary = build_check(compiler, tmp_path / "check", [])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    if result.returncode == 2:
        pytest.skip(f"this CPU has no SIMD path: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failures" in result.stdout and all(line.endswith(": 0 failures") for line in result.stdout.splitlines())


def simde_include() -> Path | None:
    """A SIMDe of at least 0.8 ($OQ_SIMDE_INCLUDE, else the system's), or None."""
    for root in (os.environ.get("OQ_SIMDE_INCLUDE"), "/usr/include"):
        header = Path(root or "/nonexistent") / "simde" / "simde-common.h"
        if header.is_file():
            text = header.read_text()
            version = [int(re.search(rf"#define SIMDE_VERSION_{part} (\d+)", text).group(1))
                       for part in ("MAJOR", "MINOR")]
            if version >= [0, 8]:
                return header.parent.parent
    return None


def linux_x86_with_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return platform.machine() == "x86_64" and cpuinfo.is_file() and " avx2" in cpuinfo.read_text()


@pytest.mark.skipif(not linux_x86_with_avx2(),
                    reason="the emulated build runs SIMDe over AVX2: needs Linux x86-64 with AVX2")
def test_avx512_and_avx_vnni_kernels_match_scalar_under_simde(tmp_path):
    """The kernels built with OQ_SIMDE: the same code over SIMDe's AVX-512 and VNNI intrinsics,
    which are written to give the hardware's results; the CPU checks are bypassed."""
    include = simde_include()
    if include is None:
        pytest.skip("needs SIMDe >= 0.8 headers in $OQ_SIMDE_INCLUDE or /usr/include (.ci/run fetches them)")
    emulate = ["-DOQ_SIMDE", f"-I{include}", "-mavx2", "-mfma", "-mf16c", "-Wno-psabi"]
    binary = build_check("g++", tmp_path / "check", emulate)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("avx512-vnni vs scalar: 80 type x row-count cases, threads, Q5_0_PAIRS: 0 failures",
                 "avx-vnni vs scalar: 80 type x row-count cases, threads, Q5_0_PAIRS: 0 failures",
                 "avx-vnni vs avx2: 32 type x row-count cases bit for bit: 0 failures"):
        assert line in result.stdout, result.stdout


CROSS = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"


@pytest.fixture(scope="module")
def aarch64_build(tmp_path_factory):
    """Builds the check once per -march for AArch64 (statically, so qemu needs no sysroot)."""
    if shutil.which(CROSS) is None or shutil.which(QEMU) is None:
        pytest.skip(f"needs {CROSS} and {QEMU} (Debian: g++-aarch64-linux-gnu qemu-user; .ci/run installs them)")
    builds: dict[str, Path] = {}

    def build(march: str) -> Path:
        if march not in builds:
            out = tmp_path_factory.mktemp(march.replace("+", "_")) / "check"
            builds[march] = build_check(CROSS, out, ["-static", f"-march={march}"])
        return builds[march]

    return build


@pytest.mark.parametrize(
    "march, cpu, kernels",
    [
        ("armv8-a", "cortex-a53", "neon"),  # setup.py's build on a CPU without SDOT (Raspberry Pi 3)
        ("armv8-a", "neoverse-n1", "neon-dotprod"),  # the same build picks SDOT at run time (Graviton 2)
        ("armv8.2-a+dotprod", "max", "neon-dotprod"),  # a build whose target has SDOT (Apple's clang)
    ],
)
def test_neon_kernels_match_scalar_under_qemu(aarch64_build, march, cpu, kernels):
    """qemu enforces the CPU model: an SDOT instruction on the Cortex-A53 would raise SIGILL."""
    binary = aarch64_build(march)
    result = subprocess.run([QEMU, "-cpu", cpu, str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{kernels} vs scalar") and "0 failures" in result.stdout
