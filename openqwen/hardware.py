"""What this machine offers and what a process took: usable cores, peak memory, a one-line
description for benchmarks.

Torch-free, so that a benchmark's peer (llama-cpp-python in its own process) can ask without
paying for torch's import in its measured memory.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask on Linux, every core elsewhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (getrusage counts KiB on Linux, bytes on macOS)."""
    import resource  # POSIX only: imported here so that the module loads on Windows

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def describe() -> str:
    """'<CPU model>, <n> cores, Python <version>' (the model from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {usable_cores()} cores, Python {platform.python_version()}"
