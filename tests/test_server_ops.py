"""Operations: /health, Prometheus /metrics, request ids and JSON access logs, a client disconnect
aborting its generation and freeing its KV blocks, and SIGTERM draining open streams."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from test_server_support import MODEL_NAME, ServerProcess, server  # noqa: F401

CHAT = "/v1/chat/completions"
LONG = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 1000,
        "temperature": 0, "ignore_eos": True}


def test_health(server):
    h = server.health()
    assert h["status"] == "ok" and h["model"] == MODEL_NAME
    assert h["kv_total_blocks"] > 0 and 0 <= h["kv_usage"] <= 1


def test_metrics_after_traffic(server):
    for stream in (False, True):
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}
        assert httpx.post(server.url + CHAT, json=body, timeout=60).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ("openqwen_time_to_first_token_seconds_count", "openqwen_inter_token_latency_seconds_count",
                 "openqwen_e2e_request_latency_seconds_count", "openqwen_generation_tokens_total",
                 "openqwen_prompt_tokens_total", "openqwen_num_requests_waiting", "openqwen_num_requests_running",
                 "openqwen_kv_cache_usage_perc", 'openqwen_http_requests_total{path="/v1/chat/completions",status="200"}'):
        assert name in text, name
    ttft = [line for line in text.splitlines() if line.startswith('openqwen_time_to_first_token_seconds_count{api="openai"}')]
    assert ttft and float(ttft[0].split()[-1]) >= 2


def test_request_id_and_structured_log(server):
    r = httpx.post(server.url + CHAT, headers={"x-request-id": "trace-abc-123"}, timeout=60,
                   json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.headers["x-request-id"] == "trace-abc-123"
    generated = httpx.get(server.url + "/v1/models").headers["x-request-id"]
    assert generated.startswith("req-")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        hits = [e for e in entries if e.get("request_id") == "trace-abc-123"]
        if hits:
            break
        time.sleep(0.1)
    assert hits and hits[0]["status"] == 200 and hits[0]["path"] == CHAT and hits[0]["ms"] > 0 and hits[0]["level"] == "info"


def test_disconnect_aborts_and_frees_kv(server):
    base = server.wait_idle()
    assert base["kv_free_blocks"] == base["kv_total_blocks"]
    started = time.monotonic()
    with httpx.stream("POST", server.url + CHAT, json={**LONG, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert server.health()["running"] == 1
    after = server.wait_idle(timeout=15)  # 1000 tokens would take far longer
    assert after["kv_free_blocks"] == base["kv_free_blocks"]
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: the client gives up after 1.5 s
        httpx.post(server.url + CHAT, json=LONG, timeout=httpx.Timeout(60, read=1.5))
    after = server.wait_idle(timeout=15)
    assert after["kv_free_blocks"] == base["kv_free_blocks"]
    assert time.monotonic() - started < 40


def test_sigterm_drains_open_streams_then_exits():
    srv = ServerProcess("--drain-timeout", "60")
    try:
        first_chunk, result = threading.Event(), {}

        def stream():
            body = {**LONG, "max_tokens": 40, "stream": True}
            with httpx.stream("POST", srv.url + CHAT, json=body, timeout=120) as r:
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    first_chunk.set()
                result["lines"] = lines

        t = threading.Thread(target=stream)
        t.start()
        assert first_chunk.wait(60)
        srv.terminate()
        t.join(120)
        data = [line[6:] for line in result["lines"] if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        finish = [json.loads(d)["choices"][0]["finish_reason"] for d in data[:-1]]
        assert finish[-1] == "length"
        assert srv.proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/health", timeout=5)
    finally:
        srv.stop()
