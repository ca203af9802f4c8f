"""What this machine offers: the cores a process may use and a one-line description for benchmarks.

Torch-free, so that a benchmark's peer (llama-cpp-python in its own process) can ask without
paying for torch's import in its measured memory.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask on Linux, every core elsewhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


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
