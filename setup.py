"""Builds the optional native kernels, openqwen._quant_native: quantized matmuls and the decode step.

The extension is a plain CPython module (no torch headers), so it builds inside pip's isolated
build environment with only a C++ compiler. `optional=True` lets `pip install` succeed without one;
openqwen.kernels then falls back to pure PyTorch.
"""

import sys

from setuptools import Extension, setup

SOURCES = [
    "csrc/quant_module.cpp",
    "csrc/matmul.cpp",
    "csrc/decode.cpp",
    "csrc/proxy_head.cpp",
    "csrc/vec_ops.cpp",
    "csrc/quant_scalar.cpp",
    "csrc/quant_avx2.cpp",
    "csrc/quant_avx512.cpp",
    "csrc/quant_neon.cpp",
    "csrc/thread_pool.cpp",
]
HEADERS = [
    "csrc/quant_common.h",
    "csrc/thread_pool.h",
    "csrc/matmul.h",
    "csrc/decode.h",
    "csrc/proxy_head.h",
    "csrc/py_args.h",
    "csrc/vec_ops.h",
    "csrc/avx2_common.h",
    "csrc/quant_avx2_rows.inc",  # included twice by quant_avx2.cpp
    "csrc/quant_neon_rows.inc",  # included twice by quant_neon.cpp
]

if sys.platform == "win32":
    COMPILE_ARGS = ["/std:c++20", "/O2", "/fp:precise"]
    LINK_ARGS: list[str] = []
else:
    # No -march: SIMD paths carry target attributes and are chosen at runtime, so the binary runs
    # on any CPU of the architecture. -ffp-contract=off keeps the activation quantizer and the
    # dequantizer bit-identical to their PyTorch/NumPy counterparts.
    COMPILE_ARGS = ["-std=c++20", "-O3", "-ffp-contract=off", "-fvisibility=hidden"]
    LINK_ARGS = ["-pthread"]
if sys.platform == "darwin":
    # The thread pool sleeps in std::atomic::wait, which Apple's libc++ has from macOS 11 on.
    # python.org's Pythons target 10.9, where the (optional) build would fail and leave only the
    # PyTorch path; the last -mmacosx-version-min on the command line wins.
    COMPILE_ARGS.append("-mmacosx-version-min=11.0")
    LINK_ARGS.append("-mmacosx-version-min=11.0")

setup(
    ext_modules=[
        Extension(
            "openqwen._quant_native",
            sources=SOURCES,
            depends=HEADERS,
            language="c++",
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
            optional=True,
        )
    ]
)
