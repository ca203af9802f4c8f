"""Live servers for the server tests (this module holds helpers only, no tests).

Each server is a real `openqwen serve` subprocess on a free 127.0.0.1 port, loading a tiny random
Qwen3 checkpoint (real Qwen3 tokenizer and chat template) written once per test session. A
subprocess keeps torch's thread setting, RSS readings and SIGTERM handling those of a real server.
The default server is shared by every module and stopped when the session ends.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
for _module in ("fastapi", "uvicorn", "llguidance", "prometheus_client", "jsonschema"):  # the `serve` extra
    pytest.importorskip(_module)

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "tiny-qwen3"


@functools.lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    from tiny_models import make_hf_model, require_qwen3_tokenizer

    require_qwen3_tokenizer()
    root = Path(tempfile.mkdtemp(prefix="openqwen-server-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    make_hf_model("qwen3", root / "tiny")
    return root / "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *flags: str, model: str | None = None, name: str = MODEL_NAME, startup_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="openqwen-serve-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "openqwen.server.cli_serve", "--model", model or str(tiny_model_dir()),
               "--port", str(self.port), "--served-model-name", name]
        if model is None:
            cmd += ["--device", "cpu", "--dtype", "float32", "--kv-cache-gb", "0.05"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*cmd, *flags], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start in {startup_timeout} s:\n{self.log()}")
            time.sleep(0.25)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Poll /health until nothing runs, waits or is in flight; returns the last reading."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["running"] == 0 and h["waiting"] == 0 and h["in_flight"] == 0:
                return h
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout} s: {h}")
            time.sleep(0.1)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def shared_server() -> ServerProcess:
    """The default tiny-model server, started on first use and stopped at exit."""
    server = ServerProcess("--max-model-len", "1024")
    atexit.register(server.stop)
    return server


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    return shared_server()
