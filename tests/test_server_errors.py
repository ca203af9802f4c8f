"""Bad requests get a 4xx with a clear message in each API's own error shape; API keys, body and
prompt limits and the bounded queue (429) on a server started with tight limits."""

from __future__ import annotations

import threading

import httpx
import pytest

from test_server_support import MODEL_NAME, ServerProcess, server  # noqa: F401

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
HI = [{"role": "user", "content": "hi"}]
OK_CHAT = {"model": MODEL_NAME, "messages": HI, "max_tokens": 2}
OK_MESSAGES = {"model": MODEL_NAME, "messages": HI, "max_tokens": 2}


def openai_error(r: httpx.Response, status: int, needle: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and needle.lower() in err["message"].lower(), err
    return err


def anthropic_error(r: httpx.Response, status: int, kind: str, needle: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and needle.lower() in body["error"]["message"].lower(), body


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("body, needle", [
    ({**OK_CHAT, "messages": []}, "messages"),
    ({**OK_CHAT, "messages": "hi"}, "messages"),
    ({**OK_CHAT, "temperature": "hot"}, "temperature"),
    ({**OK_CHAT, "temperature": -1}, "temperature"),
    ({**OK_CHAT, "max_tokens": 0}, "max_tokens"),
    ({**OK_CHAT, "max_tokens": 10**9}, "max_tokens"),
    ({**OK_CHAT, "n": 1000}, "n"),
    ({**OK_CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"messages": HI}, "model"),
    ({**OK_CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "json schema"),
    ({**OK_CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "not among the tools"),
    ({**OK_CHAT, "tool_choice": "required"}, "needs tools"),
    ({**OK_CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}}, "json schema"),
    ({**OK_CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
    ({**OK_CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ({**OK_CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({**OK_CHAT, "stop_token_ids": [10**9]}, "vocabulary"),
    ({**OK_CHAT, "top_logprobs": 3}, "logprobs"),
    ({**OK_CHAT, "messages": [{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "not json"),
    ({**OK_CHAT, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "not supported"),
])
def test_bad_chat_requests(http, body, needle):
    openai_error(http.post(CHAT, json=body), 400, needle)


def test_malformed_json_and_wrong_body_type(http):
    openai_error(http.post(CHAT, content=b'{"model": ', headers={"content-type": "application/json"}), 400, "not valid JSON")
    openai_error(http.post(CHAT, json=[1, 2]), 400, "")
    anthropic_error(http.post(MESSAGES, content=b"{{", headers={"content-type": "application/json"}), 400, "invalid_request_error", "JSON")


def test_unknown_model_route_and_method(http):
    err = openai_error(http.post(CHAT, json={**OK_CHAT, "model": "gpt-5"}), 404, "gpt-5")
    assert err["code"] == "model_not_found" and err["param"] == "model"
    openai_error(http.get("/v1/models/gpt-5"), 404, "gpt-5")
    openai_error(http.post("/v1/nothing", json={}), 404, "no route")
    openai_error(http.get(CHAT), 405, "")
    anthropic_error(http.post(MESSAGES, json={**OK_MESSAGES, "model": "claude"}), 404, "not_found_error", "claude")


def test_completions_errors(http):
    base = {"model": MODEL_NAME, "max_tokens": 2}
    openai_error(http.post("/v1/completions", json={**base, "prompt": []}), 400, "empty")
    openai_error(http.post("/v1/completions", json={**base, "prompt": ""}), 400, "empty")
    openai_error(http.post("/v1/completions", json={**base, "prompt": [10**8]}), 400, "vocabulary")
    openai_error(http.post("/v1/completions", json={**base, "prompt": "x", "suffix": "y"}), 400, "suffix")


@pytest.mark.parametrize("body, needle", [
    ({**OK_MESSAGES, "messages": []}, "messages"),
    ({"model": MODEL_NAME, "messages": HI}, "max_tokens"),
    ({**OK_MESSAGES, "max_tokens": 10**9}, "max_tokens"),
    ({**OK_MESSAGES, "messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({**OK_MESSAGES, "tools": [{"name": "f", "input_schema": {"type": "wat"}}]}, "json schema"),
    ({**OK_MESSAGES, "tool_choice": {"type": "tool"}}, "name"),
    ({**OK_MESSAGES, "tool_choice": {"type": "any"}}, "needs tools"),
    ({**OK_MESSAGES, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "vision"),
    ({**OK_MESSAGES, "messages": [{"role": "user", "content": [{"type": "mystery"}]}]}, "not supported"),
])
def test_bad_messages_requests(http, body, needle):
    anthropic_error(http.post(MESSAGES, json=body), 400, "invalid_request_error", needle)


@pytest.fixture(scope="module")
def strict():
    server = ServerProcess("--api-key", "s3cret", "--max-body-bytes", "4000", "--max-prompt-tokens", "300",
                           "--max-num-seqs", "1", "--max-queue", "1", "--max-model-len", "2048")
    yield server
    server.stop()


def test_api_keys(strict):
    url = strict.url
    openai_error(httpx.post(url + CHAT, json=OK_CHAT), 401, "API key")
    openai_error(httpx.post(url + CHAT, json=OK_CHAT, headers={"Authorization": "Bearer wrong"}), 401, "API key")
    anthropic_error(httpx.post(url + MESSAGES, json=OK_MESSAGES, headers={"x-api-key": "s3cre"}), 401, "authentication_error", "API key")
    assert httpx.post(url + CHAT, json=OK_CHAT, headers={"Authorization": "Bearer s3cret"}, timeout=60).status_code == 200
    assert httpx.post(url + MESSAGES, json=OK_MESSAGES, headers={"x-api-key": "s3cret"}, timeout=60).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # health, metrics and the page need no key
    assert httpx.get(url + "/").status_code == 200


def test_body_and_prompt_limits(strict):
    auth = {"x-api-key": "s3cret"}
    big = {**OK_CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    openai_error(httpx.post(strict.url + CHAT, json=big, headers=auth), 400, "larger than this server's limit of 4000 bytes")
    anthropic_error(httpx.post(strict.url + MESSAGES, json={**OK_MESSAGES, **{"messages": big["messages"]}}, headers=auth),
                    400, "invalid_request_error", "4000 bytes")
    long = {**OK_CHAT, "messages": [{"role": "user", "content": "hello " * 400}]}
    openai_error(httpx.post(strict.url + CHAT, json=long, headers=auth), 400, "at most 300")


def test_bounded_queue_answers_429(strict):
    auth = {"x-api-key": "s3cret"}
    started, release = threading.Barrier(3), threading.Event()

    def hold():  # two streams fill the one running slot and the one queue place
        body = {**OK_CHAT, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", strict.url + CHAT, json=body, headers=auth, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            started.wait()
            release.wait(60)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        started.wait(60)
        openai_error(httpx.post(strict.url + CHAT, json=OK_CHAT, headers=auth), 429, "busy")
        anthropic_error(httpx.post(strict.url + MESSAGES, json=OK_MESSAGES, headers=auth), 429, "rate_limit_error", "busy")
    finally:
        release.set()
        for t in threads:
            t.join(60)
    strict.wait_idle()
    assert httpx.post(strict.url + CHAT, json=OK_CHAT, headers=auth, timeout=60).status_code == 200
