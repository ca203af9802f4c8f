"""Bounded load: 256 concurrent streaming requests (tiny model, a few tokens each) all complete
without error, and afterwards the server's RSS is back near its warm baseline and every KV block
is free again."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from test_server_support import MODEL_NAME, server  # noqa: F401

CONCURRENCY = 256
# glibc and torch keep freed memory around: after a warm-up burst of the same shape, RSS readings
# of an idle server still wander by about +-100 MiB between bursts (measured). The exact checks are
# the KV blocks and the in-flight counts; RSS catches leaks of more than ~0.75 MiB per request.
RSS_MARGIN = 192 * 2**20


async def _one(client: httpx.AsyncClient, i: int, api: str) -> int:
    """One streaming request; returns the number of content pieces received."""
    text = f"Request {i}: count to {i % 7 + 2}"
    if api == "openai":
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": True, "temperature": 0}
        path, done = "/v1/chat/completions", "data: [DONE]"
    else:
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": True}
        path, done = "/v1/messages", "event: message_stop"
    pieces, finished = 0, False
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                payload = json.loads(line[6:])
                assert "error" not in payload or api == "anthropic" and payload.get("type") != "error", payload
                pieces += 1
            finished = finished or line == done
    assert finished, f"request {i} ended without its final event"
    return pieces


async def _burst(url: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), limits=limits) as client:
        return await asyncio.gather(*(_one(client, i, "openai" if i % 2 else "anthropic") for i in range(n)))


def test_256_concurrent_streams_complete_and_memory_returns(server):
    asyncio.run(_burst(server.url, CONCURRENCY))  # warm up: allocator pools, KV pages, lazy imports
    base = server.wait_idle()
    rss_before = server.rss_bytes()
    start = time.perf_counter()
    results = asyncio.run(_burst(server.url, CONCURRENCY))
    seconds = time.perf_counter() - start
    after = server.wait_idle()
    rss_after = server.rss_bytes()
    print(f"\n{CONCURRENCY} streams in {seconds:.1f} s; RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB; "
          f"KV free {base['kv_free_blocks']} -> {after['kv_free_blocks']} of {after['kv_total_blocks']}")
    assert len(results) == CONCURRENCY and all(p > 0 for p in results)
    assert after["kv_free_blocks"] == base["kv_free_blocks"] == after["kv_total_blocks"]
    assert rss_after - rss_before < RSS_MARGIN
