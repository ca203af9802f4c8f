"""The command line as a user runs it: real subprocesses, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_qwen3_dir):
    return tiny_qwen3_dir


def openqwen(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openqwen", *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_generate_json(tiny):
    proc = openqwen("generate", "Hello", "--model", tiny, "--greedy", "--max-tokens", "8", "--json", "--logprobs", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["token_ids"]) == 8 and result["finish_reason"] == "length"
    assert len(result["logprobs"]) == 8 and len(result["logprobs"][0]["top"]) == 2


def test_generate_is_reproducible_with_seed(tiny):
    runs = [openqwen("generate", "Hi", "--model", tiny, "--seed", "7", "--temperature", "1.0", "--max-tokens", "6", "--json")
            for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert json.loads(runs[0].stdout)["token_ids"] == json.loads(runs[1].stdout)["token_ids"]


def test_chat_reads_piped_stdin(tiny):
    proc = openqwen("chat", "--model", tiny, "--max-tokens", "5", "--greedy", stdin="What is 2+2?\n")
    assert proc.returncode == 0, proc.stderr
    assert "tokens" in proc.stderr and "tok/s" in proc.stderr


def test_chat_session_outlives_a_too_long_conversation(tiny):
    """In the terminal chat, a message that no longer fits the context is one error line and the
    session goes on: /reset, then the next message gets its reply."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "openqwen", "chat", "--model", tiny, "--max-model-len", "64",
                             "--max-tokens", "4", "--greedy"], stdin=terminal, stdout=terminal, stderr=subprocess.PIPE,
                            text=True)
    os.close(terminal)
    for line in ("word " * 80, "/reset", "Hi", "/exit"):
        os.write(controller, (line + "\n").encode())
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        os.close(controller)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "openqwen: error: the prompt has" in stderr and "(/reset starts a new conversation)" in stderr
    assert "conversation cleared" in stderr and "finish: length" in stderr


def test_generate_from_empty_stdin_is_an_error(tiny):
    proc = openqwen("generate", "-", "--model", tiny, stdin="")
    assert proc.returncode == 1 and proc.stderr.strip() == "openqwen: error: no input on stdin"


def test_info(tiny):
    proc = openqwen("info", tiny)
    assert proc.returncode == 0, proc.stderr
    assert "qwen3" in proc.stdout and "layers" in proc.stdout


@pytest.mark.parametrize("new_tokens", [1, 6])
def test_bench_against_transformers(tiny, tmp_path, new_tokens):
    """Side by side with a peer in its own process: the same greedy tokens, and no decode speed
    where there is no decode to time."""
    out = tmp_path / "bench.json"
    proc = openqwen("bench", "--model", tiny, "--device", "cpu", "--prompt-tokens", "16", "--new-tokens",
                    str(new_tokens), "--peers", "transformers", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {r["runtime"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"openqwen", "transformers"}
    assert rows["openqwen"]["tokens"] == rows["transformers"]["tokens"] and len(rows["openqwen"]["tokens"]) == new_tokens
    assert (rows["openqwen"]["decode_tok_s"] is None) == (new_tokens == 1)
    assert f"| {new_tokens}/{new_tokens} |" in proc.stdout


def test_models_lists_default():
    proc = openqwen("models")
    assert proc.returncode == 0, proc.stderr
    assert "qwen2.5-coder-0.5b-instruct" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("generate", "x", "--model", "/nonexistent/model"), "/nonexistent/model"),
    (("generate", "x", "--model", "no-such-model"), "no-such-model"),
    (("info", "/dev/null"), "/dev/null: not a model file or directory"),
    (("generate", "x", "--model", "__TINY__", "--top-p", "0"), "top_p"),
    (("generate", "x", "--model", "__TINY__", "--dtype", "int3"), "dtype"),
    (("generate", "x", "--model", "__TINY__", "--max-tokens", "0"), "max_tokens must be at least 1"),
    (("generate", "x", "--model", "__TINY__", "--stop", ""), "stop strings must not be empty"),
    # engine sizes are checked before the model is even looked up
    (("generate", "x", "--model", "/nonexistent", "--max-model-len", "0"), "max_model_len must be positive"),
    (("serve", "--model", "/nonexistent", "--port", "0", "--kv-cache-gb", "-1"), "kv_cache_gb must be positive"),
    (("serve", "--model", "/nonexistent", "--port", "70000"), "--port must be in 0-65535"),
    (("serve", "--model", "/nonexistent", "--host", "no-such-host.invalid"), "cannot listen on"),
    (("serve", "--model", "/nonexistent", "--max-prompt-tokens", "0"), "--max-prompt-tokens must be positive"),
    (("serve", "--model", "/nonexistent", "--drain-timeout", "-1"), "--drain-timeout must be non-negative"),
    (("serve", "--model", "/nonexistent", "--served-model-name", " "), "--served-model-name must not be empty"),
    (("bench", "--model", "/nonexistent", "--new-tokens", "0"), "--new-tokens must be at least 1"),
    (("bench", "--model", "/nonexistent", "--peers", "vllm"), "unknown peer 'vllm'"),
])
def test_errors_are_one_line(tiny, args, message):
    proc = openqwen(*[tiny if a == "__TINY__" else a for a in args])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("openqwen: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr


def test_serve_fails_on_a_taken_port_before_loading():
    """The socket is bound before the model loads: a taken port is one line at once (the model
    given does not even exist), not a traceback after the load."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = openqwen("serve", "--model", "/nonexistent", "--port", str(port), "--log-level", "error")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"openqwen: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_think_flags_exclude_each_other(tiny):
    proc = openqwen("generate", "x", "--model", tiny, "--think", "--no-think")
    assert proc.returncode == 2 and "not allowed with argument --think" in proc.stderr


def test_serve_enforce_eager_flag_reaches_llm(monkeypatch):
    """`openqwen serve --enforce-eager` builds its LLM with enforce_eager=True (stopped before serving)."""
    pytest.importorskip("uvicorn")
    import openqwen.llm
    from openqwen.cli import build_parser
    from openqwen.server import cli_serve

    class Loaded(Exception):
        pass

    def fake_llm(*args, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(openqwen.llm, "LLM", fake_llm)
    monkeypatch.setattr(cli_serve, "configure_logging", lambda level: None)
    for flags, expected in (([], False), (["--enforce-eager"], True)):
        with pytest.raises(Loaded) as loaded:
            cli_serve.cmd_serve(build_parser().parse_args(["serve", "--model", "m", "--port", "0", *flags]))
        assert loaded.value.args[0]["enforce_eager"] is expected


def test_serve_without_server_packages_says_what_to_install(tmp_path):
    """Without the [serve] extra, `openqwen serve` fails with one line naming the extra."""
    (tmp_path / "uvicorn.py").write_text("raise ModuleNotFoundError('No module named uvicorn', name='uvicorn')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "openqwen", "serve", "--model", "m"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "openqwen: error: `openqwen serve` needs uvicorn: pip install 'openqwen[serve]'"
